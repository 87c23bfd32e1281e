//! `PacedRecorder`: an [`AgentAudioOutput`] that "plays" agent speech on a real-time clock
//! without a device, keeps what was actually heard (interrupts cut it), and can write it to a
//! WAV file. `simulate` uses it in place of the LiveKit audio track.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consultant_actors::ports::{AgentAudioOutput, PlayedAudio};

use super::RATE;

struct Segment {
    item_id: String,
    start: Instant,
    pcm: Arc<[i16]>,
    /// Samples really played (set when cut; full length otherwise).
    kept: usize,
}

struct Timeline {
    origin: Instant,
    busy_until: Instant,
    segments: Vec<Segment>,
    interruptions: u64,
}

/// Plays queued audio back to back at 24 kHz real-time pace. Never blocks: the play head is
/// computed from the clock when asked.
pub struct PacedRecorder {
    timeline: Mutex<Timeline>,
}

fn samples_in(d: Duration) -> usize {
    (d.as_micros() as u64 * RATE / 1_000_000) as usize
}

fn duration_of(samples: usize) -> Duration {
    Duration::from_micros(samples as u64 * 1_000_000 / RATE)
}

impl Default for PacedRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl PacedRecorder {
    pub fn new() -> Self {
        let now = Instant::now();
        Self { timeline: Mutex::new(Timeline { origin: now, busy_until: now, segments: Vec::new(), interruptions: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the queued audio will have finished playing.
    pub fn busy_until(&self) -> Instant {
        self.lock().busy_until
    }

    pub fn interruptions(&self) -> u64 {
        self.lock().interruptions
    }

    /// Milliseconds of agent audio heard so far (cut parts excluded, future parts too).
    pub fn played_ms(&self) -> u64 {
        let t = self.lock();
        let now = Instant::now();
        let samples: usize = t.segments.iter().map(|s| samples_in(now.saturating_duration_since(s.start)).min(s.kept)).sum();
        samples as u64 * 1000 / RATE
    }

    /// The heard agent audio laid out on the call's timeline (silence between answers),
    /// up to now.
    pub fn timeline_pcm(&self) -> Vec<i16> {
        let t = self.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        for s in &t.segments {
            let offset = samples_in(s.start.saturating_duration_since(t.origin));
            let heard = samples_in(now.saturating_duration_since(s.start)).min(s.kept);
            if out.len() < offset {
                out.resize(offset, 0);
            }
            out.truncate(offset);
            out.extend_from_slice(&s.pcm[..heard]);
        }
        out
    }
}

impl AgentAudioOutput for PacedRecorder {
    fn play(&self, item_id: &str, pcm: Arc<[i16]>) {
        let mut t = self.lock();
        let now = Instant::now();
        let start = t.busy_until.max(now);
        t.busy_until = start + duration_of(pcm.len());
        let kept = pcm.len();
        t.segments.push(Segment { item_id: item_id.to_owned(), start, pcm, kept });
    }

    fn interrupt(&self) -> Option<PlayedAudio> {
        let mut t = self.lock();
        let now = Instant::now();
        if now >= t.busy_until {
            return None;
        }
        t.interruptions += 1;
        t.busy_until = now;
        // The item being heard now: the last segment that has started.
        let current = t.segments.iter().rev().find(|s| s.start <= now).map(|s| s.item_id.clone());
        for s in t.segments.iter_mut() {
            s.kept = s.kept.min(samples_in(now.saturating_duration_since(s.start)));
        }
        t.segments.retain(|s| s.kept > 0);
        let item_id = current?;
        let played: usize = t.segments.iter().filter(|s| s.item_id == item_id).map(|s| s.kept).sum();
        Some(PlayedAudio { item_id, played_ms: played as u64 * 1000 / RATE })
    }

    fn is_playing(&self) -> bool {
        Instant::now() < self.lock().busy_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_reports_what_was_heard() {
        let p = PacedRecorder::new();
        assert!(p.interrupt().is_none());
        p.play("a", vec![1i16; 24_000].into());
        assert!(p.is_playing());
        std::thread::sleep(Duration::from_millis(120));
        let played = p.interrupt().expect("playing");
        assert_eq!(played.item_id, "a");
        assert!((100..400).contains(&played.played_ms), "{played:?}");
        assert!(!p.is_playing());
        // The timeline starts at the recorder's creation: count the heard samples, not the
        // silence before the answer began.
        let heard = p.timeline_pcm().iter().filter(|&&s| s != 0).count();
        assert_eq!(heard as u64 * 1000 / RATE, played.played_ms);
    }
}
