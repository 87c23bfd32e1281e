//! Live state of the actor system for operators (the remote debug console reads it).
//!
//! Actors write small updates under short locks and never wait: events go to a bounded ring
//! (oldest dropped) and to a bounded broadcast channel whose slow receivers lag and lose
//! messages (counted) instead of growing memory or blocking a consultation.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use tokio::sync::broadcast;

use crate::dialogue::{Role, SessionId};
use crate::ports::TokenUsage;

mod metered;
pub mod metrics;
mod schema;
pub use metered::metered_ports;
pub use metrics::{Histogram, HistogramSnapshot, Metrics, MetricsSnapshot};
pub use schema::*;

/// Events kept for a console that attaches late.
pub const EVENT_RING: usize = 512;
/// Live events buffered per subscriber before it starts losing them.
pub const EVENT_CHANNEL: usize = 256;
/// Dialogue lines kept per consultation for the console.
pub const TRANSCRIPT_TAIL: usize = 12;
/// Per-turn latencies kept per consultation.
pub const LATENCY_TAIL: usize = 32;

#[derive(Default)]
struct Board {
    worker: WorkerView,
    actors: BTreeMap<String, ActorInfo>,
    consultations: BTreeMap<SessionId, ConsultationView>,
    events: VecDeque<TelemetryEvent>,
}

struct Inner {
    board: Mutex<Board>,
    tx: broadcast::Sender<TelemetryEvent>,
    next_event: AtomicU64,
    events_dropped: AtomicU64,
    metrics: Metrics,
}

/// Shared handle to the live state board. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_CHANNEL);
        Self {
            inner: Arc::new(Inner {
                board: Mutex::new(Board::default()),
                tx,
                next_event: AtomicU64::new(1),
                events_dropped: AtomicU64::new(0),
                metrics: Metrics::default(),
            }),
        }
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event: kept in the ring and pushed to live subscribers at once.
    pub fn event(&self, kind: &'static str, path: impl Into<String>, message: impl Into<String>) {
        let event = TelemetryEvent {
            seq: self.inner.next_event.fetch_add(1, Ordering::Relaxed),
            at: Utc::now(),
            kind: Cow::Borrowed(kind),
            path: path.into(),
            message: message.into(),
        };
        {
            let mut board = self.board();
            if board.events.len() == EVENT_RING {
                board.events.pop_front();
                self.inner.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
            board.events.push_back(event.clone());
        }
        // No receivers is fine; lagging receivers lose the oldest.
        let _ = self.inner.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TelemetryEvent> {
        self.inner.tx.subscribe()
    }

    pub fn actor_started(&self, path: &str, kind: &'static str) {
        let mut board = self.board();
        let entry = board.actors.entry(path.to_owned()).or_insert_with(|| ActorInfo {
            path: path.to_owned(),
            kind: Cow::Borrowed(kind),
            status: ActorStatus::Starting,
            started_at: Utc::now(),
            restarts_in_window: 0,
            total_restarts: 0,
            last_failure: None,
        });
        entry.status = ActorStatus::Running;
        entry.started_at = Utc::now();
    }

    pub fn actor_status(&self, path: &str, status: ActorStatus) {
        if let Some(a) = self.board().actors.get_mut(path) {
            a.status = status;
        }
    }

    /// A child failed and is being restarted (or not).
    pub fn actor_failed(&self, path: &str, reason: &str, restarts_in_window: usize, restarting: bool) {
        {
            let mut board = self.board();
            if let Some(a) = board.actors.get_mut(path) {
                a.status = if restarting { ActorStatus::Restarting } else { ActorStatus::Failed };
                a.last_failure = Some(reason.to_owned());
                a.restarts_in_window = restarts_in_window;
                if restarting {
                    a.total_restarts += 1;
                }
            }
        }
        let kind = if restarting { "restart" } else { "failure" };
        self.event(kind, path, reason.to_owned());
    }

    /// Removes an actor and everything below it from the tree.
    pub fn actor_removed(&self, path: &str) {
        let prefix = format!("{path}/");
        self.board().actors.retain(|p, _| p != path && !p.starts_with(&prefix));
    }

    pub fn worker_update(&self, change: impl FnOnce(&mut WorkerView)) {
        change(&mut self.board().worker);
    }

    /// The worker view, with the process-wide metrics as of now.
    pub fn worker(&self) -> WorkerView {
        let mut worker = self.board().worker.clone();
        worker.metrics = Box::new(self.inner.metrics.snapshot());
        worker
    }

    /// Counters and histograms since start (recorded lock-free; see [`Metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn consultation_upsert(&self, view: ConsultationView) {
        self.board().consultations.insert(view.session_id.clone(), view);
    }

    /// Applies a small change to a consultation's view (no-op if it is not on the board).
    /// What the change added to the view's running figures (latencies, tokens, reconnects,
    /// dropped audio) goes to the process-wide metrics too, so the consultation needs no
    /// second hook; this runs per caller frame, so it copies scalars only.
    pub fn consultation_update(&self, id: &SessionId, change: impl FnOnce(&mut ConsultationView)) {
        if let Some(view) = self.board().consultations.get_mut(id) {
            let before = Figures::of(view);
            change(view);
            self.record_growth(&before, view);
        }
    }

    fn record_growth(&self, before: &Figures, view: &mut ConsultationView) {
        let m = &self.inner.metrics;
        // `push_latency` leaves trimming to here, so every new latency is seen exactly once.
        let latencies = &mut view.turn_latency_ms;
        for ms in latencies.iter().skip(before.latencies) {
            m.voice_latency.observe_secs(*ms as f64 / 1000.0);
        }
        while latencies.len() > LATENCY_TAIL {
            latencies.pop_front();
        }
        m.tokens(&view.usage.since(&before.usage));
        metrics::add(&m.caller_dropped_ms, view.caller_dropped_ms.saturating_sub(before.caller_dropped_ms));
        for _ in before.reconnects..view.realtime.reconnects {
            // A make-before-break switch is counted with the link already up again.
            let cause = if view.realtime.link == RealtimeLinkState::Connected {
                "rollover"
            } else {
                metrics::reconnect_cause(view.realtime.last_close_cause.as_deref())
            };
            m.reconnect(cause);
        }
    }

    pub fn consultation_removed(&self, id: &SessionId) {
        self.board().consultations.remove(id);
    }

    pub fn consultation(&self, id: &SessionId) -> Option<ConsultationView> {
        self.board().consultations.get(id).cloned()
    }

    pub fn snapshot(&self) -> TelemetrySnapshot {
        let board = self.board();
        let mut worker = board.worker.clone();
        worker.metrics = Box::new(self.inner.metrics.snapshot());
        TelemetrySnapshot {
            worker,
            actors: board.actors.values().cloned().collect(),
            consultations: board.consultations.values().cloned().collect(),
            events: board.events.iter().cloned().collect(),
            events_dropped: self.inner.events_dropped.load(Ordering::Relaxed),
        }
    }
}

impl ConsultationView {
    pub fn push_line(&mut self, seq: u32, role: Role, text: &str) {
        if self.transcript_tail.len() == TRANSCRIPT_TAIL {
            self.transcript_tail.pop_front();
        }
        self.transcript_tail.push_back(TranscriptLine { seq, role, text: text.to_owned() });
        self.messages = seq as usize;
    }

    /// On the board, [`Telemetry::consultation_update`] trims the tail to [`LATENCY_TAIL`]
    /// after counting what was pushed; off it, twice that bounds the tail.
    pub fn push_latency(&mut self, ms: u64) {
        if self.turn_latency_ms.len() >= 2 * LATENCY_TAIL {
            self.turn_latency_ms.pop_front();
        }
        self.turn_latency_ms.push_back(ms);
    }
}

/// A view's running figures before a change (scalars only: copied on every update).
struct Figures {
    latencies: usize,
    usage: TokenUsage,
    caller_dropped_ms: u64,
    reconnects: u64,
}

impl Figures {
    fn of(v: &ConsultationView) -> Self {
        Self {
            latencies: v.turn_latency_ms.len(),
            usage: v.usage,
            caller_dropped_ms: v.caller_dropped_ms,
            reconnects: v.realtime.reconnects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ring_is_bounded_and_counts_drops() {
        let t = Telemetry::new();
        for i in 0..(EVENT_RING + 10) {
            t.event("status", "worker", format!("e{i}"));
        }
        let snap = t.snapshot();
        assert_eq!(snap.events.len(), EVENT_RING);
        assert_eq!(snap.events_dropped, 10);
        assert_eq!(snap.events.first().unwrap().message, "e10");
    }

    #[test]
    fn view_updates_feed_the_metrics_once_and_keep_the_tail_bounded() {
        let t = Telemetry::new();
        let id = SessionId::parse("m1").unwrap();
        t.consultation_upsert(ConsultationView::starting(id.clone(), "r".into(), crate::session::SessionStatus::Active, Utc::now(), 60, 0));
        for ms in 0..(LATENCY_TAIL as u64 + 8) {
            t.consultation_update(&id, |v| v.push_latency(ms));
        }
        t.consultation_update(&id, |v| {
            v.usage.input_tokens += 10;
            v.caller_dropped_ms = 250;
        });
        t.consultation_update(&id, |v| v.caller_dropped_ms = 400);
        let split = TokenUsage { input_tokens: 5, input_audio_tokens: 5, output_tokens: 9, output_audio_tokens: 6, output_text_tokens: 3, ..Default::default() };
        t.consultation_update(&id, |v| v.usage.add(&split));
        t.consultation_update(&id, |v| {
            v.realtime.link = RealtimeLinkState::Reconnecting { attempt: 1 };
            v.realtime.last_close_cause = Some("realtime session expired: limit".into());
            v.realtime.reconnects += 1;
        });
        t.consultation_update(&id, |v| {
            v.realtime.link = RealtimeLinkState::Connected;
            v.realtime.reconnects += 1;
        });
        let view = t.consultation(&id).unwrap();
        assert_eq!(view.turn_latency_ms.len(), LATENCY_TAIL);
        assert_eq!(view.turn_latency_ms.back(), Some(&(LATENCY_TAIL as u64 + 7)));
        let m = t.worker().metrics;
        assert_eq!(m.voice_latency.count, LATENCY_TAIL as u64 + 8);
        assert_eq!((m.input_tokens, m.output_tokens, m.caller_dropped_ms), (15, 9, 400));
        assert_eq!((m.tokens_of("input", "other"), m.tokens_of("input", "audio")), (10, 5), "the unsplit 10 and the split 5");
        assert_eq!((m.tokens_of("output", "audio"), m.tokens_of("output", "text")), (6, 3));
        let cause = |c: &str| m.reconnects.iter().find(|(k, _)| k == c).unwrap().1;
        assert_eq!((cause("expired"), cause("rollover"), cause("transient")), (1, 1, 0));
    }

    #[test]
    fn removing_an_actor_removes_its_subtree() {
        let t = Telemetry::new();
        t.actor_started("worker/consultation/a", "consultation");
        t.actor_started("worker/consultation/a/realtime", "realtime");
        t.actor_started("worker/consultation/ab", "consultation");
        t.actor_removed("worker/consultation/a");
        let paths: Vec<_> = t.snapshot().actors.into_iter().map(|a| a.path).collect();
        assert_eq!(paths, vec!["worker/consultation/ab"]);
    }
}
