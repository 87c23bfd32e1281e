//! The board's views, and the console's wire schema: the hub serializes these types and the
//! console client reads the same types back, so there is one definition per thing on the wire.
//!
//! Unknown fields are ignored when reading, so an older client still reads a newer server.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::anketa::{Anketa, AnketaField};
use crate::dialogue::{Role, SessionId};
use crate::ports::TokenUsage;
use crate::provenance::{PastValue, Provenance};
use crate::session::SessionStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Starting,
    Running,
    Restarting,
    Stopped,
    Failed,
}

impl ActorStatus {
    /// The name as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorStatus::Starting => "starting",
            ActorStatus::Running => "running",
            ActorStatus::Restarting => "restarting",
            ActorStatus::Stopped => "stopped",
            ActorStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for ActorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so column widths like `{:<10}` apply.
        f.pad(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorInfo {
    /// e.g. `worker/consultation/abc/realtime`
    pub path: String,
    /// Borrowed on the server (a static name), owned when read by a client.
    pub kind: Cow<'static, str>,
    pub status: ActorStatus,
    pub started_at: DateTime<Utc>,
    pub restarts_in_window: usize,
    pub total_restarts: u64,
    pub last_failure: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RealtimeLinkState {
    #[default]
    Idle,
    Connecting { attempt: u32 },
    Connected,
    Reconnecting { attempt: u32 },
    Down,
}

impl fmt::Display for RealtimeLinkState {
    /// `connected`, `reconnecting (attempt 2)`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RealtimeLinkState::Idle => f.write_str("idle"),
            RealtimeLinkState::Connecting { attempt } => write!(f, "connecting (attempt {attempt})"),
            RealtimeLinkState::Connected => f.write_str("connected"),
            RealtimeLinkState::Reconnecting { attempt } => write!(f, "reconnecting (attempt {attempt})"),
            RealtimeLinkState::Down => f.write_str("down"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RealtimeView {
    pub link: RealtimeLinkState,
    pub connected_at: Option<DateTime<Utc>>,
    pub recycle_after_secs: Option<u64>,
    pub last_close_cause: Option<String>,
    pub reconnects: u64,
    pub unknown_events: u64,
}

impl RealtimeView {
    /// The link state as operators read it.
    pub fn link_state(&self) -> String {
        self.link.to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptLine {
    pub seq: u32,
    pub role: Role,
    pub text: String,
}

/// One filled anketa field as the console shows it: named, with where its value came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnketaFieldView {
    pub name: String,
    /// The configured description (what operators read); empty for a field no longer configured.
    pub description: String,
    pub value: serde_json::Value,
    /// Messages (seq) the value was read from.
    pub evidence: Vec<u32>,
    /// Message count of the extraction that set it.
    pub set_at: usize,
    #[serde(default)]
    pub history: Vec<PastValue>,
}

impl AnketaFieldView {
    /// The anketa's values in the configured order (fields no longer configured last).
    pub fn list(anketa: &Anketa, provenance: &Provenance, fields: &[AnketaField]) -> Vec<Self> {
        let configured = fields.iter().filter(|f| anketa.0.contains_key(&f.name)).map(|f| (f.name.as_str(), f.description.as_str()));
        let others = anketa.0.keys().filter(|k| !fields.iter().any(|f| &f.name == *k)).map(|k| (k.as_str(), ""));
        configured
            .chain(others)
            .map(|(name, description)| {
                let origin = provenance.get(name).cloned().unwrap_or_default();
                Self {
                    name: name.to_owned(),
                    description: description.to_owned(),
                    value: anketa.0[name].clone(),
                    evidence: origin.evidence,
                    set_at: origin.set_at,
                    history: origin.history,
                }
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The anketa so far, with its evidence; absent from older servers.
    #[serde(default)]
    pub anketa: Vec<AnketaFieldView>,
    /// Citations of the extractor dropped by validation in this consultation.
    #[serde(default)]
    pub evidence_dropped: u64,
    /// Messages handed to persistence and not yet durable.
    pub persistence_backlog: usize,
    /// Caller audio held while the realtime link is down (ms) and dropped from it.
    pub caller_buffer_ms: u64,
    pub caller_dropped_ms: u64,
    pub failure: Option<String>,
    /// Queue depths, sampled every second: caller frames waiting in the consultation's
    /// mailbox, and agent audio waiting to be played (ms); absent from older servers.
    #[serde(default)]
    pub caller_backlog_frames: usize,
    #[serde(default)]
    pub agent_queue_ms: u64,
    /// The worker this consultation was resumed from (its worker died mid-call); absent
    /// from older servers.
    #[serde(default)]
    pub resumed_from: Option<String>,
}

impl ConsultationView {
    /// A consultation that has just started: nothing counted yet.
    pub fn starting(session_id: SessionId, room: String, status: SessionStatus, started_at: DateTime<Utc>, max_duration_secs: u64, anketa_fields: usize) -> Self {
        Self {
            session_id,
            room,
            status,
            started_at,
            max_duration_secs,
            messages: 0,
            transcript_tail: VecDeque::new(),
            turn_latency_ms: VecDeque::new(),
            usage: TokenUsage::default(),
            realtime: RealtimeView::default(),
            anketa_filled: 0,
            anketa_fields,
            last_extraction_at_message: None,
            extractions: 0,
            extraction_failures: 0,
            anketa: Vec::new(),
            evidence_dropped: 0,
            persistence_backlog: 0,
            caller_buffer_ms: 0,
            caller_dropped_ms: 0,
            failure: None,
            caller_backlog_frames: 0,
            agent_queue_ms: 0,
            resumed_from: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// failure, restart, reconnect, status, extraction, audit, ...
    /// Borrowed on the server (a static name), owned when read by a client.
    pub kind: Cow<'static, str>,
    pub path: String,
    pub message: String,
}

/// The worker as a whole: its LiveKit registration and jobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// `cpu_percent` shared out over the running consultations (the cost of one call under
    /// the current load); 0 when idle. Absent from older servers.
    #[serde(default)]
    pub cpu_percent_per_call: f64,
    /// Counters of the realtime client, shared by all consultations.
    pub realtime: RealtimeCounters,
    /// Consultations this worker resumed from a worker that died, and sessions it dispatched
    /// again to rooms whose worker died (their caller still there); absent from older servers.
    #[serde(default)]
    pub resumed_consultations: u64,
    #[serde(default)]
    pub redispatched_sessions: u64,
    /// Process-wide metrics (the same figures `/metrics` exports); absent from older servers.
    /// Boxed: the console's frames carry worker views by value.
    #[serde(default)]
    pub metrics: Box<super::MetricsSnapshot>,
}

/// What the realtime client has seen since start: unknown event types and malformed frames
/// are tolerated, and counted here for operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: String,
    pub room: String,
    pub session_id: Option<SessionId>,
    /// running, success, failed
    pub state: String,
    pub started_at: DateTime<Utc>,
}

/// Everything the console shows, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySnapshot {
    pub worker: WorkerView,
    pub actors: Vec<ActorInfo>,
    pub consultations: Vec<ConsultationView>,
    pub events: Vec<TelemetryEvent>,
    pub events_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_link_states_read_as_on_the_wire() {
        for status in [ActorStatus::Starting, ActorStatus::Running, ActorStatus::Restarting, ActorStatus::Stopped, ActorStatus::Failed] {
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{status}\""));
        }
        assert_eq!(format!("[{:<8}]", ActorStatus::Running), "[running ]");
        let link = RealtimeLinkState::Reconnecting { attempt: 2 };
        assert_eq!(serde_json::to_string(&link).unwrap(), r#"{"state":"reconnecting","attempt":2}"#);
        assert_eq!(link.to_string(), "reconnecting (attempt 2)");
        assert_eq!(serde_json::from_str::<RealtimeLinkState>(r#"{"state":"connected"}"#).unwrap(), RealtimeLinkState::Connected);
    }
}
