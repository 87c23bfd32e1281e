//! Shared server state: workers, jobs, dispatches, rooms, and the event log.
//!
//! One `std::sync::Mutex` guards everything; nothing awaits while holding it. Every change
//! that a test may want to await is recorded as a [`ServerEvent`] in an append-only log and
//! broadcast; the log and the broadcast are updated under the same lock, so
//! [`crate::LoopbackServer::wait_for_event`] can scan the past and subscribe to the future
//! without a gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livekit_protocol as proto;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::LoopbackConfig;

/// Something that happened on the server, in order. Tests await these instead of sleeping.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A worker connection was accepted and registered.
    WorkerRegistered { worker_id: String, agent_name: String },
    /// A worker sent `update_worker`.
    WorkerUpdated { worker_id: String, status: WorkerStatus, load: f32, job_count: u32 },
    /// A worker connection ended (closed, dropped by a fault hook, or failed).
    WorkerDisconnected { worker_id: String, reason: String },
    /// An `/agent` or `/rtc` upgrade was refused (bad/missing token, missing grant).
    AuthRejected { path: String, reason: String },
    /// A frame or request could not be understood. The connection is kept unless said.
    ProtocolError { peer: String, detail: String },
    /// A dispatch was created (Twirp CreateDispatch, CreateRoom with agents, auto dispatch).
    DispatchCreated { dispatch_id: String, room: String, agent_name: String },
    /// A dispatch was deleted.
    DispatchDeleted { dispatch_id: String, room: String },
    /// A job exists for a dispatch and waits for a worker.
    JobCreated { job_id: String, dispatch_id: String, room: String, agent_name: String },
    /// An availability request was sent to a worker.
    AvailabilityRequested { job_id: String, worker_id: String, resuming: bool },
    /// A worker answered (or did not, `timed_out`) an availability request.
    AvailabilityAnswered { job_id: String, worker_id: String, available: bool, timed_out: bool },
    /// The assignment (with its minted token) was sent.
    JobAssigned { job_id: String, worker_id: String, participant_identity: String },
    /// No eligible worker could take the job right now; the job stays pending and is retried
    /// when a worker registers or reports itself available.
    JobUnassigned { job_id: String, reason: String },
    /// A worker reported a job status with `update_job`.
    JobStatusChanged { job_id: String, status: JobStatus, error: String },
    /// A `termination` was sent to the worker holding the job.
    JobTerminated { job_id: String, worker_id: String, reason: String },
    /// A worker claimed jobs with `migrate_job` after re-registering.
    JobsMigrated { worker_id: String, job_ids: Vec<String>, unknown: Vec<String> },
    RoomCreated { room: String, sid: String },
    RoomClosed { room: String, reason: String },
    ParticipantJoined { room: String, identity: String, sid: String, kind: ParticipantKind },
    ParticipantLeft { room: String, identity: String, reason: String },
    TrackPublished { room: String, identity: String, track_sid: String, cid: String },
    /// A subscriber answered an offer; the audio codecs it accepted, preferred first.
    SubscriberAnswered { room: String, identity: String, audio_codecs: Vec<String> },
    /// A participant's subscriber PC receives the track (it was added to an offer).
    TrackSubscribed { room: String, subscriber: String, track_sid: String },
    /// The first RTP packet of a published track reached the SFU.
    MediaFlowing { room: String, identity: String, track_sid: String },
    /// A participant's signalling socket ended without leave; it may resume within the grace.
    SignalLost { room: String, identity: String, reason: String },
    /// A participant re-attached its signalling with `reconnect=1&sid=`.
    ParticipantResumed { room: String, identity: String },
    /// A client's DataPacket (user data, text/byte stream, transcription, RPC...) was relayed
    /// to the other participants (`recipients`) on the channel `label`.
    DataForwarded { room: String, from: String, label: String, kind: String, topic: String, recipients: Vec<String> },
    /// A peer connection reached ICE connected (`target` is "publisher"/"subscriber").
    PeerConnected { room: String, identity: String, target: String },
}

pub use proto::JobStatus;
pub use proto::WorkerStatus;

/// Participant kind as the server sees it (from the token's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantKind {
    Standard,
    Agent,
    Other(i32),
}

impl ParticipantKind {
    pub fn from_claim(kind: &str) -> Self {
        match kind {
            "" | "standard" => ParticipantKind::Standard,
            "agent" => ParticipantKind::Agent,
            "ingress" => ParticipantKind::Other(proto::participant_info::Kind::Ingress as i32),
            "egress" => ParticipantKind::Other(proto::participant_info::Kind::Egress as i32),
            "sip" => ParticipantKind::Other(proto::participant_info::Kind::Sip as i32),
            _ => ParticipantKind::Standard,
        }
    }
    pub fn as_proto(self) -> i32 {
        match self {
            ParticipantKind::Standard => proto::participant_info::Kind::Standard as i32,
            ParticipantKind::Agent => proto::participant_info::Kind::Agent as i32,
            ParticipantKind::Other(k) => k,
        }
    }
}

/// A worker as seen by tests.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    pub id: String,
    pub agent_name: String,
    pub namespace: String,
    pub version: String,
    pub status: WorkerStatus,
    pub load: f32,
    pub job_count: u32,
    pub connected: bool,
    /// Number of `update_worker` messages applied (stale ones, by `seq`, are not).
    pub updates: u64,
    /// The worker said it wants no new work (`update_worker.draining`).
    pub draining: bool,
    /// Job ids currently held by this worker (assigned and not ended).
    pub jobs: Vec<String>,
    /// `allowed_permissions` from the registration.
    pub permissions: Option<proto::ParticipantPermission>,
}

/// A job as seen by tests.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    pub id: String,
    pub dispatch_id: String,
    pub room: String,
    pub agent_name: String,
    pub metadata: String,
    pub worker_id: Option<String>,
    pub participant_identity: String,
    pub status: JobStatus,
    pub error: String,
    /// Every status the job went through, first is `JsPending`.
    pub history: Vec<JobStatus>,
    pub assigned: bool,
    pub terminated: bool,
}

/// A room as seen by tests.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    pub name: String,
    pub sid: String,
    pub metadata: String,
    pub participants: Vec<ParticipantSnapshot>,
    pub dispatch_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ParticipantSnapshot {
    pub identity: String,
    pub sid: String,
    pub kind: ParticipantKind,
    pub tracks: Vec<String>,
}

/// A dispatch as seen by tests.
#[derive(Debug, Clone)]
pub struct DispatchSnapshot {
    pub id: String,
    pub room: String,
    pub agent_name: String,
    pub metadata: String,
    pub job_ids: Vec<String>,
    pub deleted: bool,
}

/// What the connection task of a worker can be asked to do.
#[derive(Debug)]
pub enum WorkerOut {
    Msg(Box<proto::ServerMessage>),
    /// Send this frame as is (fault injection).
    Raw(RawFrame),
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// A raw WebSocket frame for fault injection.
#[derive(Debug, Clone)]
pub enum RawFrame {
    Binary(Vec<u8>),
    Text(String),
}

pub(crate) struct Worker {
    pub id: String,
    pub agent_name: String,
    pub namespace: String,
    pub version: String,
    pub status: WorkerStatus,
    pub load: f32,
    pub job_count: u32,
    pub connected: bool,
    pub updates: u64,
    pub draining: bool,
    pub last_seq: u64,
    pub permissions: Option<proto::ParticipantPermission>,
    pub tx: mpsc::UnboundedSender<WorkerOut>,
    /// Pending availability answers, by job id.
    pub pending: HashMap<String, oneshot::Sender<proto::AvailabilityResponse>>,
}

pub(crate) struct Job {
    pub id: String,
    pub dispatch_id: String,
    pub room: String,
    pub agent_name: String,
    pub metadata: String,
    pub worker_id: Option<String>,
    pub participant_identity: String,
    pub status: JobStatus,
    pub error: String,
    pub history: Vec<JobStatus>,
    pub assigned: bool,
    pub terminated: bool,
    /// Workers that refused it (or timed out), not asked again.
    pub refused_by: Vec<String>,
    pub updated_at: i64,
    pub started_at: i64,
    pub ended_at: i64,
}

impl Job {
    pub fn ended(&self) -> bool {
        self.terminated || matches!(self.status, JobStatus::JsSuccess | JobStatus::JsFailed)
    }
}

pub(crate) struct Dispatch {
    pub id: String,
    pub room: String,
    pub agent_name: String,
    pub metadata: String,
    pub job_ids: Vec<String>,
    pub created_at: i64,
    pub deleted_at: i64,
}

pub(crate) struct Participant {
    pub identity: String,
    pub sid: String,
    pub name: String,
    pub metadata: String,
    pub kind: ParticipantKind,
    pub attributes: HashMap<String, String>,
    pub permission: proto::ParticipantPermission,
    pub joined_at: i64,
    pub tracks: Vec<proto::TrackInfo>,
    /// Signalling sink of this participant (to push updates, offers, leave).
    pub signal: Option<mpsc::UnboundedSender<crate::rtc::SignalOut>>,
    /// Per-connection token; a newer connection with the same identity replaces it.
    pub conn_id: u64,
    /// (publisher PC id, subscriber PC id) in the media engine.
    pub pcs: (u64, u64),
    pub auto_subscribe: bool,
    /// Bumped by every resume; a grace timer only removes the participant of its generation.
    pub signal_gen: u64,
    /// `ParticipantInfo.version`: bumped by every change of its own info.
    pub version: u32,
    /// Who may subscribe to its tracks; `None` = everyone (livekit-server's default).
    pub subscription_permission: Option<proto::SubscriptionPermission>,
}

impl Participant {
    pub fn info(&self) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: self.sid.clone(),
            identity: self.identity.clone(),
            state: proto::participant_info::State::Active as i32,
            tracks: self.tracks.clone(),
            metadata: self.metadata.clone(),
            joined_at: self.joined_at,
            joined_at_ms: self.joined_at * 1000,
            name: self.name.clone(),
            version: self.version,
            permission: Some(self.permission.clone()),
            is_publisher: !self.tracks.is_empty(),
            kind: self.kind.as_proto(),
            attributes: self.attributes.clone(),
            ..Default::default()
        }
    }
}

pub(crate) struct Room {
    pub name: String,
    pub sid: String,
    pub metadata: String,
    pub empty_timeout: u32,
    pub departure_timeout: u32,
    pub max_participants: u32,
    pub created_at: i64,
    /// Insertion order kept: identities in join order.
    pub participants: BTreeMap<u64, Participant>,
    pub next_seq: u64,
    pub dispatch_ids: Vec<String>,
    /// For the empty and departure timeouts: when the room was made, whether anyone ever
    /// joined, when the last participant left.
    pub created: std::time::Instant,
    pub ever_joined: bool,
    pub last_left: Option<std::time::Instant>,
}

impl Room {
    pub fn proto(&self) -> proto::Room {
        proto::Room {
            sid: self.sid.clone(),
            name: self.name.clone(),
            empty_timeout: self.empty_timeout,
            departure_timeout: self.departure_timeout,
            max_participants: self.max_participants,
            creation_time: self.created_at,
            creation_time_ms: self.created_at * 1000,
            metadata: self.metadata.clone(),
            // As livekit-server: agents (dependent participants) are not counted.
            num_participants: self.participants.values().filter(|p| p.kind != ParticipantKind::Agent).count() as u32,
            num_publishers: self.participants.values().filter(|p| !p.tracks.is_empty()).count()
                as u32,
            enabled_codecs: vec![proto::Codec { mime: "audio/opus".into(), fmtp_line: String::new() }],
            ..Default::default()
        }
    }
    pub fn participant(&self, identity: &str) -> Option<&Participant> {
        self.participants.values().find(|p| p.identity == identity)
    }
}

#[derive(Default)]
pub(crate) struct Inner {
    pub workers: BTreeMap<String, Worker>,
    pub worker_order: Vec<String>,
    pub jobs: BTreeMap<String, Job>,
    pub job_order: Vec<String>,
    pub dispatches: BTreeMap<String, Dispatch>,
    pub dispatch_order: Vec<String>,
    pub rooms: BTreeMap<String, Room>,
    pub events: Vec<ServerEvent>,
    pub next_conn_id: u64,
}

pub(crate) struct Shared {
    pub cfg: LoopbackConfig,
    pub inner: Mutex<Inner>,
    pub events_tx: broadcast::Sender<ServerEvent>,
    /// Pinged whenever a pending job might now find a worker.
    pub dispatch_kick: Notify,
    pub shutdown: watch::Sender<bool>,
    pub media: crate::sfu::MediaHandle,
}

pub(crate) type SharedRef = Arc<Shared>;

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record and broadcast an event. Call with the lock held (pass the guard).
    pub fn emit(&self, inner: &mut Inner, ev: ServerEvent) {
        tracing::debug!(event = ?ev, "loopback event");
        if let Some(max) = self.cfg.max_logged_events {
            if inner.events.len() >= max {
                // Long manual runs: forget the oldest half (tests keep everything by default).
                let drop = inner.events.len() / 2;
                inner.events.drain(..drop);
            }
        }
        inner.events.push(ev.clone());
        let _ = self.events_tx.send(ev);
    }

    pub fn emit_now(&self, ev: ServerEvent) {
        let mut g = self.lock();
        self.emit(&mut g, ev);
    }
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64
}

/// A LiveKit-style id: prefix + 12 random base62 characters.
pub(crate) fn new_id(prefix: &str) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let tail: String =
        (0..12).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect();
    format!("{prefix}{tail}")
}
