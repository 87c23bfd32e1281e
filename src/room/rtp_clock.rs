//! RTP time of the agent's voice (48 kHz ticks): each frame is stamped with the slot the pacer
//! scheduled it for, measured from the first frame, never with when it happened to leave.
//!
//! A frame that leaves late is then late at the far end once, and the frames after it are on
//! time again. Stamping send times instead (rounded to whole frames, as this worker first did)
//! marks the catch-up frame after a late one as early, and every rounding of an idle gap adds
//! up to ±10 ms: over a consultation the timeline walks tens of milliseconds off its slots,
//! which a receiver's jitter buffer (and the load test) sees as late frames.

use std::time::Instant;

/// One 20 ms Opus frame in 48 kHz RTP ticks.
pub const FRAME_TICKS: u64 = 960;

#[derive(Debug, Default)]
pub struct RtpClock {
    epoch: Option<Instant>,
    last: Option<u64>,
}

impl RtpClock {
    /// The RTP time of the frame scheduled for `due`. Slots 20 ms apart are exactly one frame
    /// apart; a slot sooner than one frame after the last (the pacer restarted its cadence)
    /// still gets one frame more, so no two frames ever overlap.
    pub fn stamp(&mut self, due: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(due);
        let nanos = due.saturating_duration_since(epoch).as_nanos();
        let slot = ((nanos * 48 + 500_000) / 1_000_000) as u64;
        let ticks = self.last.map_or(0, |last| slot.max(last + FRAME_TICKS));
        self.last = Some(ticks);
        ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_stamped_exactly_and_frames_never_overlap() {
        let t0 = Instant::now();
        let mut clock = RtpClock::default();
        let at = |us: u64| t0 + Duration::from_micros(us);
        // A cadence of 20 ms slots: one frame apart.
        assert_eq!([0, 20_000, 40_000, 60_000].map(|us| clock.stamp(at(us))), [0, 960, 1920, 2880]);
        // Idle for 1234.5 ms: exactly the time that passed, not rounded to frames.
        assert_eq!(clock.stamp(at(1_294_500)), 1_294_500 * 48 / 1000);
        // A slot sooner than a frame after the last: one frame on.
        assert_eq!(clock.stamp(at(1_300_000)), 1_294_500 * 48 / 1000 + FRAME_TICKS);
    }

    /// Five hundred answers with idle gaps of every length and phase: every frame's RTP time
    /// is its slot (whole-frame rounding of each gap walked the timeline ~50 ms away).
    #[test]
    fn over_a_long_consultation_the_timeline_never_drifts_from_the_slots() {
        let t0 = Instant::now();
        let mut clock = RtpClock::default();
        let mut now_ns: u64 = 0;
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut worst_us: f64 = 0.0;
        assert_eq!(clock.stamp(t0), 0, "the greeting's first frame starts the timeline");
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let start = now_ns + 300_000_000 + seed % 2_000_000_000; // idle 0.3-2.3 s
            for f in 0..25 {
                let due = start + f * 20_000_000;
                let ticks = clock.stamp(t0 + Duration::from_nanos(due));
                worst_us = worst_us.max((ticks as f64 / 0.048 - due as f64 / 1000.0).abs());
            }
            now_ns = start + 24 * 20_000_000;
        }
        assert!(worst_us <= 11.0, "RTP time strayed {worst_us:.1} us from the slots");
    }
}
