//! RTP time of the agent's voice (48 kHz ticks). Frames of one talk spurt are contiguous audio,
//! one frame apart; a frame that leaves well after its contiguous time (the first after idle,
//! or after the room was starved) takes the wall-clock time instead, so the far end plays it
//! when it arrives rather than keeping the delay.
//!
//! The wall clock is measured from the first frame, not rounded from the previous one: rounding
//! each idle gap to whole frames adds up to ±10 ms of error per answer, and over a consultation
//! those errors walk the timeline tens of milliseconds away from real time, which a receiver
//! (and the load test) sees as late or early frames.

use std::time::Instant;

/// One 20 ms Opus frame in 48 kHz RTP ticks.
pub const FRAME_TICKS: u64 = 960;
const TICKS_PER_SECOND: f64 = 48_000.0;
/// Later than its contiguous time by more than this, a frame is stamped with the wall clock.
const RESYNC_AFTER_TICKS: u64 = FRAME_TICKS / 2;

#[derive(Debug, Default)]
pub struct RtpClock {
    epoch: Option<Instant>,
    last: Option<u64>,
}

impl RtpClock {
    /// The RTP time of a frame that leaves `at`.
    pub fn stamp(&mut self, at: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(at);
        let wall = (at.saturating_duration_since(epoch).as_secs_f64() * TICKS_PER_SECOND).round() as u64;
        let ticks = match self.last {
            None => 0,
            Some(last) if wall > last + FRAME_TICKS + RESYNC_AFTER_TICKS => wall,
            Some(last) => last + FRAME_TICKS,
        };
        self.last = Some(ticks);
        ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(ticks: u64) -> f64 {
        ticks as f64 / 48.0
    }

    #[test]
    fn a_spurt_is_contiguous_and_a_late_or_idle_frame_takes_the_wall_clock() {
        let t0 = Instant::now();
        let mut clock = RtpClock::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Pacer jitter of a few ms inside a spurt: one frame apart regardless.
        assert_eq!([0, 21, 39, 61].map(|m| clock.stamp(at(m))), [0, 960, 1920, 2880]);
        // A wake-up 25 ms late (the room was starved): the wall clock, not one frame on.
        assert_eq!(clock.stamp(at(105)), 105 * 48);
        // Idle for 1234.5 ms: exactly the time that passed, not rounded to frames.
        assert_eq!(clock.stamp(t0 + Duration::from_micros(1_339_500)), 1_339_500 * 48 / 1000);
        // A frame sent early (speech queued during the trailing silence) is still one frame on:
        // timestamps never overlap.
        let last = clock.stamp(t0 + Duration::from_micros(1_345_000));
        assert_eq!(last, 1_339_500 * 48 / 1000 + FRAME_TICKS);
    }

    /// Five hundred answers with idle gaps of every length: the RTP timeline stays within half a
    /// frame of the wall clock (whole-frame rounding of each gap walked it ~50 ms away).
    #[test]
    fn over_a_long_consultation_the_timeline_never_drifts_from_real_time() {
        let t0 = Instant::now();
        let mut clock = RtpClock::default();
        let mut now_us: u64 = 0;
        let mut worst: f64 = 0.0;
        let mut first: Option<u64> = None;
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now_us += 300_000 + seed % 2_000_000; // idle 0.3-2.3 s, any phase
            let start = now_us;
            for f in 0..25 {
                let at = start + f * 20_000;
                let ticks = clock.stamp(t0 + Duration::from_micros(at));
                let since_first = at - *first.get_or_insert(at);
                worst = worst.max((ms(ticks) - since_first as f64 / 1000.0).abs());
            }
            now_us = start + 24 * 20_000;
        }
        assert!(worst <= 10.0, "RTP time strayed {worst:.1} ms from the wall clock");
    }
}
