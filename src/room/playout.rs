//! The agent's voice queue: [`AgentAudioOutput`] for the room. The consultation queues PCM
//! (24 kHz) of assistant items; the room's media loop takes one 20 ms frame per tick of its
//! clock. Barge-in empties the queue under the same lock the media loop takes frames with,
//! so nothing queued before `interrupt()` is sent after it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use consultant_actors::ports::{AgentAudioOutput, AgentState, PlayedAudio};
use consultant_actors::SessionStatus;
use consultant_actors::DialogueMessage;
use tokio::sync::Notify;

use super::codec::{FRAME_24K, PCM_RATE};
use super::display::RoomDisplay;

/// Transcripts waiting for the room's data channel; more are dropped and counted.
const MAX_PENDING_TRANSCRIPTS: usize = 64;

/// The most agent audio held at once (5 minutes); more is dropped and counted.
pub const MAX_QUEUED_SAMPLES: usize = PCM_RATE as usize * 300;

struct Chunk {
    item_id: Arc<str>,
    pcm: Arc<[i16]>,
    offset: usize,
    /// When it came off the realtime socket (unknown, or held for a caller: None).
    received: Option<Instant>,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    queued_samples: usize,
    /// The item being played and how many of its samples were sent.
    current: Option<(Arc<str>, u64)>,
    /// The item whose audio was sent last (kept through an underrun, unlike `current`).
    last_item: Option<Arc<str>>,
    /// Set by `interrupt()`: the next frame starts from a clean codec state.
    cut: bool,
}

/// What one tick of the clock produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Samples of agent speech in the frame (the rest is silence).
    pub speech_samples: usize,
    /// The queue was cut since the previous frame.
    pub after_cut: bool,
    /// The frame starts an answer after silence: when its audio came off the realtime socket.
    pub answer_received: Option<Instant>,
}

#[derive(Default)]
pub struct PlayoutStats {
    pub dropped_samples: AtomicU64,
    pub dropped_transcripts: AtomicU64,
    pub interrupts: AtomicU64,
    pub frames: AtomicU64,
    /// 20 ms ticks of the agent-voice clock skipped because the room had not written the
    /// frames it was given (its actor was behind).
    pub room_behind: AtomicU64,
}

/// Shared between the consultation (play/interrupt) and the media loop (next_frame).
#[derive(Default)]
pub struct Playout {
    queue: Mutex<Queue>,
    /// Wakes the media loop when speech arrives while it is idle, so the first frame of an
    /// answer leaves at once instead of on the next 20 ms tick.
    wake: Notify,
    /// While set, speech stays queued (nobody would hear it: no caller in the room yet).
    held: std::sync::atomic::AtomicBool,
    /// Dialogue messages for the room (`lk.transcription`), taken by the Room actor.
    transcripts: Mutex<VecDeque<DialogueMessage>>,
    /// The agent's state, the status, the anketa and the transcript history for the room.
    pub display: RoomDisplay,
    pub stats: PlayoutStats,
}

impl Playout {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds speech in the queue until [`Playout::release`].
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Lets held speech play (wakes the clock).
    pub fn release(&self) {
        if self.held.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Resolves when `play` queued audio (the media loop awaits this while idle).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Fills `frame` (one 20 ms frame at 24 kHz) from the queue, zero-padding the rest.
    pub fn next_frame(&self, frame: &mut [i16; FRAME_24K]) -> Frame {
        let mut q = self.lock();
        let after_cut = std::mem::take(&mut q.cut);
        if self.held.load(Ordering::SeqCst) {
            frame.fill(0);
            return Frame { speech_samples: 0, after_cut, answer_received: None };
        }
        // The first frame of an item is what the caller waits for; an underrun inside an item
        // is not a new wait.
        let answer_received = match q.chunks.front() {
            Some(c) if q.last_item.as_ref() != Some(&c.item_id) => c.received,
            _ => None,
        };
        let mut filled = 0;
        while filled < FRAME_24K {
            let Some(chunk) = q.chunks.front_mut() else { break };
            let take = (chunk.pcm.len() - chunk.offset).min(FRAME_24K - filled);
            frame[filled..filled + take].copy_from_slice(&chunk.pcm[chunk.offset..chunk.offset + take]);
            chunk.offset += take;
            filled += take;
            let item = chunk.item_id.clone();
            let done = chunk.offset == chunk.pcm.len();
            if done {
                q.chunks.pop_front();
            }
            q.queued_samples -= take;
            if q.last_item.as_ref() != Some(&item) {
                q.last_item = Some(item.clone());
            }
            match &mut q.current {
                Some((id, played)) if *id == item => *played += take as u64,
                cur => *cur = Some((item, take as u64)),
            }
        }
        frame[filled..].fill(0);
        if filled == 0 {
            q.current = None;
        }
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        Frame { speech_samples: filled, after_cut, answer_received: answer_received.filter(|_| filled > 0) }
    }

    /// Transcripts queued since the last call.
    pub fn take_transcripts(&self) -> Vec<DialogueMessage> {
        self.transcripts.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect()
    }

    pub fn queued_samples(&self) -> usize {
        self.lock().queued_samples
    }

    fn enqueue(&self, item_id: &str, pcm: Arc<[i16]>, received: Option<Instant>) {
        if pcm.is_empty() {
            return;
        }
        let was_idle = {
            let mut q = self.lock();
            if q.queued_samples + pcm.len() > MAX_QUEUED_SAMPLES {
                self.stats.dropped_samples.fetch_add(pcm.len() as u64, Ordering::Relaxed);
                return;
            }
            let item_id: Arc<str> = match q.chunks.back() {
                Some(c) if &*c.item_id == item_id => c.item_id.clone(),
                _ => Arc::from(item_id),
            };
            let was_idle = q.chunks.is_empty() && q.current.is_none();
            q.queued_samples += pcm.len();
            q.chunks.push_back(Chunk { item_id, pcm, offset: 0, received });
            was_idle
        };
        if was_idle {
            self.wake.notify_one();
        }
    }
}

impl AgentAudioOutput for Playout {
    fn play(&self, item_id: &str, pcm: Arc<[i16]>) {
        self.enqueue(item_id, pcm, None);
    }

    fn play_received(&self, item_id: &str, pcm: Arc<[i16]>, received: Instant) {
        // Speech held for a caller waits by design: not the worker's latency.
        let received = (!self.is_held()).then_some(received);
        self.enqueue(item_id, pcm, received);
    }

    fn interrupt(&self) -> Option<PlayedAudio> {
        let mut q = self.lock();
        let played = match (&q.current, q.chunks.front()) {
            (Some((id, samples)), _) => Some(PlayedAudio { item_id: id.to_string(), played_ms: samples * 1000 / PCM_RATE as u64 }),
            (None, Some(c)) => Some(PlayedAudio { item_id: c.item_id.to_string(), played_ms: 0 }),
            (None, None) => None,
        };
        if played.is_some() {
            q.chunks.clear();
            q.queued_samples = 0;
            q.current = None;
            q.cut = true;
            self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        }
        played
    }

    fn is_playing(&self) -> bool {
        let q = self.lock();
        !q.chunks.is_empty() || q.current.is_some()
    }

    fn queued_ms(&self) -> u64 {
        self.lock().queued_samples as u64 * 1000 / super::codec::PCM_RATE as u64
    }

    fn transcript(&self, message: &DialogueMessage) {
        let mut t = self.transcripts.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() >= MAX_PENDING_TRANSCRIPTS {
            self.stats.dropped_transcripts.fetch_add(1, Ordering::Relaxed);
            return;
        }
        t.push_back(message.clone());
    }

    fn agent_state(&self, state: AgentState) {
        self.display.set_state(state);
    }

    fn call_status(&self, status: SessionStatus, ends_at: chrono::DateTime<chrono::Utc>) {
        self.display.set_status(status, ends_at.timestamp());
    }

    fn anketa(&self, text: &str) {
        self.display.set_anketa(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(n: usize, v: i16) -> Arc<[i16]> {
        vec![v; n].into()
    }

    #[test]
    fn frames_drain_the_queue_in_order_and_pad_with_silence() {
        let p = Playout::new();
        p.play("a", pcm(600, 1));
        p.play("b", pcm(200, 2));
        let mut f = [0i16; FRAME_24K];
        assert_eq!(p.next_frame(&mut f).speech_samples, 480);
        assert!(f.iter().all(|&s| s == 1));
        assert_eq!(p.next_frame(&mut f).speech_samples, 320);
        assert!(f[..120].iter().all(|&s| s == 1) && f[120..320].iter().all(|&s| s == 2) && f[320..].iter().all(|&s| s == 0));
        assert!(p.is_playing(), "the last frame is still being heard");
        assert_eq!(p.next_frame(&mut f).speech_samples, 0);
        assert!(!p.is_playing());
        assert_eq!(p.interrupt(), None);
    }

    #[test]
    fn interrupt_reports_what_was_sent_of_the_current_item_and_flushes_at_once() {
        let p = Playout::new();
        p.play("item1", pcm(24_000, 100)); // 1 s
        p.play("item1", pcm(24_000, 100));
        let mut f = [0i16; FRAME_24K];
        for _ in 0..25 {
            p.next_frame(&mut f); // 500 ms
        }
        let played = p.interrupt().expect("was playing");
        assert_eq!(played, PlayedAudio { item_id: "item1".into(), played_ms: 500 });
        let next = p.next_frame(&mut f);
        assert_eq!(next, Frame { speech_samples: 0, after_cut: true, answer_received: None });
        assert!(f.iter().all(|&s| s == 0));
        assert!(!p.is_playing());
        assert_eq!(p.queued_samples(), 0);
    }

    #[test]
    fn played_time_restarts_with_each_item() {
        let p = Playout::new();
        p.play("a", pcm(480, 1));
        p.play("b", pcm(4800, 1));
        let mut f = [0i16; FRAME_24K];
        for _ in 0..3 {
            p.next_frame(&mut f);
        }
        assert_eq!(p.interrupt(), Some(PlayedAudio { item_id: "b".into(), played_ms: 40 }));
    }

    #[test]
    fn held_speech_waits_in_the_queue_until_released() {
        let p = Playout::new();
        p.hold();
        p.play("greeting", pcm(960, 7));
        let mut f = [0i16; FRAME_24K];
        assert_eq!(p.next_frame(&mut f).speech_samples, 0);
        assert!(p.is_playing(), "held speech is still to be played");
        assert_eq!(p.queued_samples(), 960);
        p.release();
        assert_eq!(p.next_frame(&mut f).speech_samples, 480);
        assert!(f.iter().all(|&s| s == 7));
    }

    #[test]
    fn queued_but_unplayed_audio_interrupts_at_zero() {
        let p = Playout::new();
        p.play("x", pcm(100, 1));
        assert_eq!(p.interrupt(), Some(PlayedAudio { item_id: "x".into(), played_ms: 0 }));
    }

    #[test]
    fn audio_beyond_the_bound_is_dropped_and_counted() {
        let p = Playout::new();
        p.play("a", pcm(MAX_QUEUED_SAMPLES, 1));
        p.play("a", pcm(10, 1));
        assert_eq!(p.stats.dropped_samples.load(Ordering::Relaxed), 10);
        assert_eq!(p.queued_samples(), MAX_QUEUED_SAMPLES);
    }

    #[test]
    fn the_queue_depth_is_what_is_still_to_play() {
        use consultant_actors::ports::AgentAudioOutput;
        let p = Playout::new();
        assert_eq!(p.queued_ms(), 0);
        p.play("a", pcm(24_000, 1));
        assert_eq!(p.queued_ms(), 1000);
        let mut frame = [0i16; 480];
        for _ in 0..10 {
            p.next_frame(&mut frame);
        }
        assert_eq!(p.queued_ms(), 800, "ten 20 ms frames played");
    }
}
