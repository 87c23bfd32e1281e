//! Live state of the actor system for operators (the remote debug console reads it).
//!
//! Actors write small updates under short locks and never wait: events go to a bounded ring
//! (oldest dropped) and to a bounded broadcast channel whose slow receivers lag and lose
//! messages (counted) instead of growing memory or blocking a consultation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::dialogue::{Role, SessionId};
use crate::ports::TokenUsage;
use crate::session::SessionStatus;

/// Events kept for a console that attaches late.
pub const EVENT_RING: usize = 512;
/// Live events buffered per subscriber before it starts losing them.
pub const EVENT_CHANNEL: usize = 256;
/// Dialogue lines kept per consultation for the console.
pub const TRANSCRIPT_TAIL: usize = 12;
/// Per-turn latencies kept per consultation.
pub const LATENCY_TAIL: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Starting,
    Running,
    Restarting,
    Stopped,
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct ActorInfo {
    /// e.g. `worker/consultation/abc/realtime`
    pub path: String,
    pub kind: &'static str,
    pub status: ActorStatus,
    pub started_at: DateTime<Utc>,
    pub restarts_in_window: usize,
    pub total_restarts: u64,
    pub last_failure: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RealtimeLinkState {
    #[default]
    Idle,
    Connecting { attempt: u32 },
    Connected,
    Reconnecting { attempt: u32 },
    Down,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RealtimeView {
    pub link: RealtimeLinkState,
    pub connected_at: Option<DateTime<Utc>>,
    pub recycle_after_secs: Option<u64>,
    pub last_close_cause: Option<String>,
    pub reconnects: u64,
    pub unknown_events: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TranscriptLine {
    pub seq: u32,
    pub role: Role,
    pub text: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConsultationView {
    pub session_id: SessionId,
    pub room: String,
    pub status: SessionStatus,
    pub started_at: DateTime<Utc>,
    pub max_duration_secs: u64,
    pub messages: usize,
    pub transcript_tail: VecDeque<TranscriptLine>,
    /// Caller speech end -> first agent audio, per turn (ms).
    pub turn_latency_ms: VecDeque<u64>,
    pub usage: TokenUsage,
    pub realtime: RealtimeView,
    pub anketa_filled: usize,
    pub anketa_fields: usize,
    pub last_extraction_at_message: Option<usize>,
    pub extractions: u64,
    pub extraction_failures: u64,
    /// Messages handed to persistence and not yet durable.
    pub persistence_backlog: usize,
    /// Caller audio held while the realtime link is down (ms) and dropped from it.
    pub caller_buffer_ms: u64,
    pub caller_dropped_ms: u64,
    pub failure: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TelemetryEvent {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// failure, restart, reconnect, status, extraction, audit, ...
    pub kind: &'static str,
    pub path: String,
    pub message: String,
}

/// The worker as a whole: its LiveKit registration and jobs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerView {
    /// "start" (production) or "dev".
    pub mode: String,
    pub agent_name: String,
    /// connecting, registered, reconnecting, down
    pub registration: String,
    pub worker_id: Option<String>,
    pub reconnect_attempt: u32,
    /// available or full, as last reported to LiveKit.
    pub status: String,
    pub load: f64,
    pub capacity: usize,
    pub draining: bool,
    pub jobs: Vec<JobView>,
    pub started_at: Option<DateTime<Utc>>,
    pub rss_bytes: u64,
    /// CPU of the worker process in percent of one core (100 = one core busy), averaged
    /// over the last 10 s; the load report's CPU share is this / (100 x cores).
    pub cpu_percent: f64,
    /// Counters of the realtime client, shared by all consultations.
    pub realtime: RealtimeCounters,
}

/// What the realtime client has seen since start: unknown event types and malformed frames
/// are tolerated, and counted here for operators.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RealtimeCounters {
    pub connects: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub events_parsed: u64,
    pub unknown_events: u64,
    pub malformed_events: u64,
    pub error_events: u64,
    /// (event type, count) of the unknown ones.
    pub unknown_event_types: Vec<(String, u64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub room: String,
    pub session_id: Option<SessionId>,
    /// running, success, failed
    pub state: String,
    pub started_at: DateTime<Utc>,
}

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

/// Everything the console shows, at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct TelemetrySnapshot {
    pub worker: WorkerView,
    pub actors: Vec<ActorInfo>,
    pub consultations: Vec<ConsultationView>,
    pub events: Vec<TelemetryEvent>,
    pub events_dropped: u64,
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
            kind,
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
            kind,
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

    pub fn worker(&self) -> WorkerView {
        self.board().worker.clone()
    }

    pub fn consultation_upsert(&self, view: ConsultationView) {
        self.board().consultations.insert(view.session_id.clone(), view);
    }

    /// Applies a small change to a consultation's view (no-op if it is not on the board).
    pub fn consultation_update(&self, id: &SessionId, change: impl FnOnce(&mut ConsultationView)) {
        if let Some(view) = self.board().consultations.get_mut(id) {
            change(view);
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
        TelemetrySnapshot {
            worker: board.worker.clone(),
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

    pub fn push_latency(&mut self, ms: u64) {
        if self.turn_latency_ms.len() == LATENCY_TAIL {
            self.turn_latency_ms.pop_front();
        }
        self.turn_latency_ms.push_back(ms);
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
