//! The ports: what the actors need from the outside world, at the domain level.
//!
//! `src/` implements them over the real protocols (Azure/OpenAI Realtime, LiveKit room media,
//! SQLite or PostgreSQL, DeepSeek); tests implement them in memory.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ractor::ActorCell;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::anketa::Anketa;
use crate::dialogue::{DialogueMessage, SessionId, ToolCall, ToolResult};
use crate::provenance::{ExtractedAnketa, Provenance};
use crate::session::SessionStatus;

// ---------------------------------------------------------------------------------------------
// Realtime (Azure / OpenAI Realtime: speech in, speech out, server VAD, transcripts)
// ---------------------------------------------------------------------------------------------

/// What a new realtime session must be configured with. On a reconnect `history` carries the
/// dialogue so far, replayed as text items (tool entries as their call and output items) so
/// the model keeps its context.
#[derive(Clone, Debug)]
pub struct RealtimeSetup {
    pub session_id: SessionId,
    pub instructions: String,
    pub history: Vec<DialogueMessage>,
    /// Function tools the model may call.
    pub tools: Vec<ToolSpec>,
}

/// A function tool declared in the realtime session.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// A connected realtime session: commands go in, events come out. The event stream ends with
/// exactly one [`RealtimeEvent::Disconnected`] (or the channel closing, which means the same).
pub struct RealtimeConnection {
    pub commands: mpsc::Sender<RealtimeCommand>,
    pub events: mpsc::Receiver<RealtimeEvent>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RealtimeCommand {
    /// Caller audio: PCM16 mono 24 kHz.
    AppendAudio(Arc<[i16]>),
    /// Ask for a response, optionally with extra instructions for this response only.
    CreateResponse { instructions: Option<String> },
    CancelResponse,
    /// Barge-in: cut the assistant item at what the caller actually heard.
    Truncate { item_id: String, content_index: u32, audio_end_ms: u64 },
    /// Replace the session instructions.
    UpdateInstructions(String),
    /// Our output for a function call of the model's (`function_call_output`).
    ToolResult(ToolResult),
    /// Close the socket politely.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStatus {
    Completed,
    Cancelled,
    Failed,
    Incomplete,
}

/// A response's token usage. The totals are what the provider bills; the split (from
/// `input_token_details` / `output_token_details`) is absent from some deployments, so it may
/// cover less than the total (image tokens, or no details at all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    // Defaults: a console reading an older worker's views.
    #[serde(default)]
    pub input_audio_tokens: u64,
    #[serde(default)]
    pub input_text_tokens: u64,
    /// Input tokens served from the provider's prompt cache (part of the input, billed lower).
    #[serde(default)]
    pub input_cached_tokens: u64,
    #[serde(default)]
    pub output_audio_tokens: u64,
    #[serde(default)]
    pub output_text_tokens: u64,
}

impl TokenUsage {
    pub fn add(&mut self, other: &TokenUsage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.input_audio_tokens += other.input_audio_tokens;
        self.input_text_tokens += other.input_text_tokens;
        self.input_cached_tokens += other.input_cached_tokens;
        self.output_audio_tokens += other.output_audio_tokens;
        self.output_text_tokens += other.output_text_tokens;
    }

    /// What `self` holds beyond `earlier` (counters only grow; a reset reads as nothing new).
    pub fn since(&self, earlier: &TokenUsage) -> TokenUsage {
        TokenUsage {
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            input_audio_tokens: self.input_audio_tokens.saturating_sub(earlier.input_audio_tokens),
            input_text_tokens: self.input_text_tokens.saturating_sub(earlier.input_text_tokens),
            input_cached_tokens: self.input_cached_tokens.saturating_sub(earlier.input_cached_tokens),
            output_audio_tokens: self.output_audio_tokens.saturating_sub(earlier.output_audio_tokens),
            output_text_tokens: self.output_text_tokens.saturating_sub(earlier.output_text_tokens),
        }
    }
}

/// Server events, flavour-independent (preview/beta and GA names map to the same events).
#[derive(Clone, Debug, PartialEq)]
pub enum RealtimeEvent {
    /// The session is configured (and the history replayed): audio may flow.
    SessionReady { provider_session_id: String, expires_at: Option<i64> },
    SpeechStarted { item_id: Option<String>, audio_start_ms: u64 },
    SpeechStopped { item_id: Option<String>, audio_end_ms: u64 },
    /// The caller's turn was committed as a conversation item; its transcript follows later.
    UserItemCommitted { item_id: String },
    UserTranscript { item_id: String, text: String },
    UserTranscriptFailed { item_id: String, reason: String },
    ResponseStarted { response_id: String },
    /// An assistant item of the current response.
    AgentItemStarted { response_id: Option<String>, item_id: String },
    /// Agent speech: PCM16 mono 24 kHz. `received`: when its frame came off the socket (wall
    /// clock, not tokio's), so the worker's own share of the latency can be measured.
    AgentAudio { item_id: String, pcm: Arc<[i16]>, received: std::time::Instant },
    AgentTranscriptDelta { item_id: String, delta: String },
    AgentTranscriptDone { item_id: String, text: String },
    /// The model called a function (its finished `function_call` item).
    ToolCall(ToolCall),
    ResponseDone {
        response_id: Option<String>,
        status: ResponseStatus,
        reason: Option<String>,
        usage: Option<TokenUsage>,
    },
    /// A non-fatal error event (most leave the session open).
    Error { code: Option<String>, message: String },
    /// The connection is gone; no more events follow.
    Disconnected { cause: RealtimeFailure },
}

/// Why a realtime connection failed or ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RealtimeFailure {
    /// Retrying cannot help (bad key, quota, billing, 401...).
    #[error("fatal realtime error: {0}")]
    Fatal(String),
    /// The connection failed or dropped; a new one may work.
    #[error("realtime connection lost: {0}")]
    Transient(String),
    /// The provider ended the session at its time limit.
    #[error("realtime session expired: {0}")]
    Expired(String),
    /// We closed it.
    #[error("closed by the worker")]
    Closed,
}

impl RealtimeFailure {
    pub fn is_fatal(&self) -> bool {
        matches!(self, RealtimeFailure::Fatal(_))
    }
}

#[async_trait]
pub trait RealtimeConnector: Send + Sync + 'static {
    /// Opens one connection and configures the session (instructions, audio formats, server
    /// VAD, transcription), replays `setup.history`, and returns once the session is ready.
    /// One attempt: retries and timeouts are the Realtime actor's business.
    async fn connect(&self, setup: RealtimeSetup) -> Result<RealtimeConnection, RealtimeFailure>;
}

// ---------------------------------------------------------------------------------------------
// Agent audio output (the LiveKit room, or a WAV file in `simulate`)
// ---------------------------------------------------------------------------------------------

/// What has been played of an assistant item when playback was interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayedAudio {
    pub item_id: String,
    pub played_ms: u64,
}

/// What the agent is doing, as LiveKit's frontends read it from the agent participant's
/// `lk.agent.state` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    Initializing,
    Listening,
    Thinking,
    Speaking,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Initializing => "initializing",
            AgentState::Listening => "listening",
            AgentState::Thinking => "thinking",
            AgentState::Speaking => "speaking",
        }
    }
}

/// Where the agent's voice goes. Both calls return at once: an implementation queues audio and
/// plays it paced by its own clock; it never blocks the caller.
pub trait AgentAudioOutput: Send + Sync + 'static {
    /// Queue agent speech (PCM16 mono 24 kHz) of an assistant item.
    fn play(&self, item_id: &str, pcm: Arc<[i16]>);
    /// As [`AgentAudioOutput::play`], for audio that came off the realtime socket at `received`:
    /// an output that sends packets measures the worker's share of an answer's latency with it.
    fn play_received(&self, item_id: &str, pcm: Arc<[i16]>, received: std::time::Instant) {
        let _ = received;
        self.play(item_id, pcm);
    }
    /// Barge-in: drop everything queued, stop at once, and say how much of the current item
    /// the caller heard (None if nothing was playing).
    fn interrupt(&self) -> Option<PlayedAudio>;
    /// Whether audio is still queued or playing.
    fn is_playing(&self) -> bool;
    /// Agent audio queued and not yet played, in ms (the console's queue depth).
    fn queued_ms(&self) -> u64 {
        0
    }
    /// A dialogue message as stored (for an interrupted answer, the part heard), to be shown
    /// to the room's participants. Never blocks. Default: not shown.
    fn transcript(&self, _message: &DialogueMessage) {}
    /// What the agent does now; the output itself shows `speaking` while it plays. Default:
    /// not shown.
    fn agent_state(&self, _state: AgentState) {}
    /// The consultation's status and when its time is up (fixed for the call, so a page
    /// counts down itself instead of being told every second). Default: not shown.
    fn call_status(&self, _status: SessionStatus, _ends_at: DateTime<Utc>) {}
    /// The anketa as it fills in, as readable text. Default: not shown.
    fn anketa(&self, _text: &str) {}
}

// ---------------------------------------------------------------------------------------------
// Room (LiveKit media: the caller's audio in, the agent's voice out)
// ---------------------------------------------------------------------------------------------

/// Why the room is over for a consultation, when nothing failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomEnd {
    /// The caller hung up (a client-initiated leave), or left and did not come back within the
    /// rejoin grace.
    CallerLeft,
    /// The server closed the room or removed the agent from it.
    RoomClosed(String),
}

/// What a Room tells its Consultation, as typed messages in the Consultation's mailbox.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    /// The agent joined: its track is published and the publisher's peer connection is up.
    Joined { identity: String },
    /// One frame of the caller's audio, PCM16 mono 24 kHz; `heard`: when its packet reached the
    /// worker, so the worker's own share of the latency can be measured.
    CallerAudio { pcm: Arc<[i16]>, heard: std::time::Instant },
    /// The room is over; the Room actor stops after sending this.
    Ended(RoomEnd),
}

/// Why room media failed. The Room actor fails with it; its Consultation restarts the Room
/// inside the restart window, and past it ends the consultation as failed with this cause.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomFailure {
    /// The server refused the agent (bad or expired token, room full): a rejoin cannot help.
    #[error("the server refused the join ({0}); check the LiveKit API key and secret")]
    Refused(String),
    /// Joining did not complete (signalling, peer connections, publishing the agent's track).
    #[error("could not join the room: {0}")]
    Join(String),
    /// Signalling or media failed beyond what a resume or an ICE restart could repair.
    #[error("room media failed: {0}")]
    Media(String),
}

impl RoomFailure {
    pub fn is_fatal(&self) -> bool {
        matches!(self, RoomFailure::Refused(_))
    }
}

/// Where a Room delivers its events. The Consultation implements it over its own mailbox;
/// the caller's audio is the only thing it may shed, and only when the consultation is behind.
pub trait RoomEvents: Send + Sync + 'static {
    /// Never blocks. False when the event was not taken: caller audio shed (the room counts
    /// it), or the receiver is gone.
    fn deliver(&self, event: RoomEvent) -> bool;
}

/// One call's room. The Consultation spawns it as a linked child and restarts it after a
/// failure, so an implementation keeps what must survive a restart (the latest token, the
/// agent's audio output) in itself, not in the actor.
#[async_trait]
pub trait RoomConnector: Send + Sync + 'static {
    /// Where the agent's voice goes: the same output for every restart of the Room.
    fn audio_out(&self) -> Arc<dyn AgentAudioOutput>;
    /// Spawns the Room actor linked under `supervisor` and returns its cell at once: the actor
    /// joins from its own mailbox, reports [`RoomEvent::Joined`], sends the caller's audio, and
    /// fails with a [`RoomFailure`] when media cannot be repaired.
    async fn spawn_room(&self, supervisor: ActorCell, events: Arc<dyn RoomEvents>) -> Result<ActorCell, RoomFailure>;
}

// ---------------------------------------------------------------------------------------------
// Store (SQLite)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionRecord {
    pub session_id: SessionId,
    pub room: String,
    pub status: SessionStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub failure: Option<String>,
}

/// A stored session and the worker that holds its lease (none: unowned or from before leases).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSession {
    pub record: SessionRecord,
    pub owner: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnketaRecord {
    /// The anketa as the Python module stored it: field name -> value.
    pub anketa: Anketa,
    /// Where each value came from; empty in snapshots stored before provenance was kept.
    pub provenance: Provenance,
    /// Dialogue length that produced it.
    pub message_count: usize,
    pub is_final: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Io(String),
    #[error("no session {0}")]
    UnknownSession(SessionId),
}

#[async_trait]
pub trait DialogueStore: Send + Sync + 'static {
    /// Creates the session row (or updates room/status of an existing one).
    async fn open_session(&self, record: &SessionRecord) -> Result<(), StoreError>;
    /// Makes one dialogue message durable. Idempotent on (session, seq).
    async fn append_message(&self, session_id: &SessionId, message: &DialogueMessage) -> Result<(), StoreError>;
    async fn set_status(
        &self,
        session_id: &SessionId,
        status: SessionStatus,
        failure: Option<&str>,
        ended_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;
    /// Stores an anketa version (history is kept).
    async fn save_anketa(&self, session_id: &SessionId, record: &AnketaRecord) -> Result<(), StoreError>;
    async fn sessions_with_status(&self, status: SessionStatus) -> Result<Vec<SessionRecord>, StoreError>;
    async fn load_messages(&self, session_id: &SessionId) -> Result<Vec<DialogueMessage>, StoreError>;
    async fn latest_anketa(&self, session_id: &SessionId) -> Result<Option<AnketaRecord>, StoreError>;
    /// Atomically takes the open sessions no live worker holds (lease expired, or no owner:
    /// rows from before leases) and makes this store their owner with a fresh lease. Two
    /// stores claiming at once never both get the same session.
    async fn claim_orphans(&self) -> Result<Vec<SessionRecord>, StoreError>;
    /// One session, if stored.
    async fn session(&self, session_id: &SessionId) -> Result<Option<StoredSession>, StoreError>;
    /// The worker this store writes as the owner of the sessions it opens (none: unowned).
    fn owner(&self) -> Option<String> {
        None
    }
}

/// What a sweeping worker asks LiveKit about the room of a session whose worker died.
#[async_trait]
pub trait RoomDirectory: Send + Sync + 'static {
    /// Whether a caller (a participant that is not an agent) is in the room now; a room that
    /// no longer exists has none.
    async fn caller_present(&self, room: &str) -> Result<bool, String>;
    /// Dispatches our agent to the room again (`AgentDispatchService.CreateDispatch`): a new
    /// job, which whichever worker takes it resumes from the store.
    async fn dispatch_agent(&self, room: &str) -> Result<(), String>;
}

// ---------------------------------------------------------------------------------------------
// Extractor (DeepSeek)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExtractError {
    /// Retries were exhausted or the request cannot succeed (auth, balance, bad request).
    #[error("anketa extraction failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait AnketaExtractor: Send + Sync + 'static {
    /// Extracts the anketa from the dialogue, given the previous one; returns only validated,
    /// configured fields, each with the messages (`seq`) it was read from when the extractor
    /// cited them (validated: see [`crate::provenance::validate_evidence`]). Retries and
    /// timeouts are the adapter's business.
    async fn extract(&self, dialogue: &[DialogueMessage], previous: &Anketa) -> Result<ExtractedAnketa, ExtractError>;
}
