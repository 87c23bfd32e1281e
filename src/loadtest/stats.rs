//! What one caller measures of the agent's audio, from RTP packets alone: which packets carry
//! speech (by size: nothing is decoded), sequence gaps, RFC 3550 inter-arrival jitter, late
//! frames and silent gaps inside an answer.
//!
//! Speech by packet size: the worker sends Opus only while the agent speaks (plus a short tail
//! of digital silence), and libopus codes digital silence in a few bytes while speech at the
//! worker's 32 kbit/s takes tens of bytes. Decoding every packet to measure its energy would
//! cost a caller more than everything else it does.

use std::time::{Duration, Instant};

/// Opus packets up to this size are silence (libopus: 1-3 bytes for digital silence).
pub const SILENT_PACKET_BYTES: usize = 8;
/// A frame arriving later than this after its expected time (the fastest transit seen) is late.
pub const LATE_AFTER: Duration = Duration::from_millis(40);
/// Speech that stops for longer than this and resumes before the caller's next phrase ended
/// left a silent gap inside the answer.
pub const GAP_INSIDE_ANSWER: Duration = Duration::from_millis(120);
/// Arrivals further apart than this start a new talk spurt (the agent was idle): the jitter
/// estimate does not compare across the idle time.
const SPURT_GAP: Duration = Duration::from_millis(200);
const RTP_RATE: f64 = 48_000.0;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct AudioQuality {
    pub packets: u64,
    pub speech_packets: u64,
    /// Packets missing from the sequence (sequence gaps).
    pub lost_packets: u64,
    /// RFC 3550 interarrival jitter at the end of the call, ms.
    pub jitter_ms: f64,
    /// The largest jitter estimate seen, ms.
    pub max_jitter_ms: f64,
    /// Frames arriving more than 40 ms after their expected time.
    pub late_frames: u64,
    /// Silences over 120 ms inside one answer.
    pub silent_gaps: u64,
}

pub struct AgentAudio {
    pub quality: AudioQuality,
    epoch: Instant,
    last_seq: Option<u64>,
    last_arrival: Option<Instant>,
    last_transit: Option<f64>,
    min_transit: Option<f64>,
    jitter: f64,
    pub last_speech_at: Option<Instant>,
}

impl AgentAudio {
    pub fn new(epoch: Instant) -> Self {
        Self { quality: AudioQuality::default(), epoch, last_seq: None, last_arrival: None, last_transit: None, min_transit: None, jitter: 0.0, last_speech_at: None }
    }

    /// One agent packet (`seq` extended, `rtp` in 48 kHz ticks) that arrived `at`;
    /// `phrase_ended` is when the caller last finished a phrase. Returns whether it is speech.
    pub fn on_packet(&mut self, seq: u64, rtp: u64, at: Instant, bytes: usize, phrase_ended: Option<Instant>) -> bool {
        let q = &mut self.quality;
        q.packets += 1;
        match self.last_seq {
            Some(last) if seq > last => q.lost_packets += seq - last - 1,
            Some(_) => {} // a late duplicate or reordering: not a gap
            None => {}
        }
        self.last_seq = Some(self.last_seq.map_or(seq, |l| l.max(seq)));

        let transit = at.saturating_duration_since(self.epoch).as_secs_f64() - rtp as f64 / RTP_RATE;
        let new_spurt = self.last_arrival.is_none_or(|prev| at.saturating_duration_since(prev) > SPURT_GAP);
        if let (Some(prev), false) = (self.last_transit, new_spurt) {
            self.jitter += ((transit - prev).abs() - self.jitter) / 16.0;
            q.jitter_ms = self.jitter * 1000.0;
            q.max_jitter_ms = q.max_jitter_ms.max(q.jitter_ms);
        }
        self.last_transit = Some(transit);
        self.last_arrival = Some(at);
        let min = self.min_transit.map_or(transit, |m| m.min(transit));
        self.min_transit = Some(min);
        if transit - min > LATE_AFTER.as_secs_f64() {
            q.late_frames += 1;
        }

        let speech = bytes > SILENT_PACKET_BYTES;
        if speech {
            q.speech_packets += 1;
            if let Some(prev) = self.last_speech_at {
                let same_answer = phrase_ended.is_none_or(|end| end < prev);
                if same_answer && at.saturating_duration_since(prev) > GAP_INSIDE_ANSWER {
                    q.silent_gaps += 1;
                }
            }
            self.last_speech_at = Some(at);
        }
        speech
    }
}

/// Nearest-rank percentile of sorted values (None when there are none).
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_jitter_late_frames_and_silences_inside_an_answer() {
        let t0 = Instant::now();
        let mut a = AgentAudio::new(t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // 10 frames on time, then seq 11-12 lost, then one 60 ms late.
        for i in 0..10u64 {
            assert!(a.on_packet(i, i * 960, ms(i * 20), 80, None));
        }
        a.on_packet(12, 12 * 960, ms(12 * 20), 80, None);
        a.on_packet(13, 13 * 960, ms(13 * 20 + 60), 80, None);
        assert_eq!(a.quality.lost_packets, 2);
        assert_eq!(a.quality.late_frames, 1);
        assert!(a.quality.jitter_ms > 3.0 && a.quality.jitter_ms < 5.0, "{}", a.quality.jitter_ms);
        // Speech resumes 300 ms later with no caller phrase in between: a gap inside the answer.
        a.on_packet(14, 29 * 960, ms(29 * 20), 80, None);
        assert_eq!(a.quality.silent_gaps, 1);
        // After the caller spoke, the next answer's start is no gap.
        let spoke = ms(700);
        a.on_packet(15, 100 * 960, ms(2000), 80, Some(spoke));
        assert_eq!(a.quality.silent_gaps, 1);
        assert!(!a.on_packet(16, 101 * 960, ms(2020), 3, Some(spoke)), "a 3-byte packet is silence");
        assert_eq!((a.quality.packets, a.quality.speech_packets), (15, 14));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
