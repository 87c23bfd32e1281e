//! The Consultation actor: one per session. It owns the `VoiceConsultationSession` (dialogue,
//! timer, status) and supervises its Room, Realtime, Persistence and Extraction children: a
//! failed child is restarted with backoff inside an intensity window; past it the consultation
//! is finalized as failed (a failed Extraction never ends the call, a failing store never cuts
//! it).
//!
//! - [`children`]: spawning, telling children apart, and the restart decisions.
//! - [`conversation`]: what the call does with room and realtime events, the timer and the end.
//! - [`rollover`]: the make-before-break switch to a standby realtime session.
//! - [`steering`]: what the anketa still lacks, in the session's instructions.
//! - [`ending`]: the goodbye (time limit, `end_consultation`, silence) and the hang-up after it.
//! - `crate::turns` assembles the dialogue; `crate::finalize` ends it.

mod children;
mod conversation;
mod ending;
mod lifecycle;
mod resume;
mod rollover;
mod steering;

pub use ending::END_CONSULTATION;
pub use lifecycle::{ChildKind, EndReason, Lifecycle};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::caller_audio::CallerGap;
pub use crate::caller_audio::CALLER_BACKLOG;
use crate::dialogue::{DialogueMessage, SessionId};
use crate::extraction::{ExtractionMsg, ExtractionRequest};
pub use crate::finalize::{finalize_consultation, FinalizeJob, SessionOutcome};
use crate::persistence::PersistenceMsg;
use crate::provenance::ExtractedAnketa;
use crate::ports::{
    AgentAudioOutput, AnketaExtractor, AnketaRecord, DialogueStore, RealtimeCommand, RealtimeConnector, RealtimeEvent,
    RealtimeFailure, RoomConnector, RoomEvent, RoomFailure, SessionRecord,
};
use crate::realtime::RealtimeMsg;
use crate::restart::RestartTracker;
use crate::session::{SessionStatus, VoiceConsultationSession};
use crate::settings::ConsultationSettings;
use crate::telemetry::{AnketaFieldView, ConsultationView, RealtimeLinkState, Telemetry};
use crate::turns::Turns;
pub use crate::turns::{heard_prefix, REALTIME_RATE, UNINTELLIGIBLE};

/// The external services a consultation uses.
#[derive(Clone)]
pub struct Ports {
    pub connector: Arc<dyn RealtimeConnector>,
    pub store: Arc<dyn DialogueStore>,
    pub extractor: Arc<dyn AnketaExtractor>,
}

/// Where the call's audio comes from and goes.
#[derive(Clone)]
pub enum CallMedia {
    /// A LiveKit room, run by a Room child of the consultation.
    Room(Arc<dyn RoomConnector>),
    /// No room: the caller's audio is fed through `VoiceHandler::process_user_audio`
    /// (`consultant simulate`, tests) and the agent's voice goes to this output.
    Local(Arc<dyn AgentAudioOutput>),
}

impl CallMedia {
    fn audio_out(&self) -> Arc<dyn AgentAudioOutput> {
        match self {
            CallMedia::Room(room) => room.audio_out(),
            CallMedia::Local(out) => out.clone(),
        }
    }
}

pub enum ConsultationMsg {
    /// Caller audio fed directly (no room), PCM16 mono 24 kHz.
    CallerAudio(Arc<[i16]>),
    /// From the Room child of this generation.
    Room { generation: u64, event: RoomEvent },
    RealtimeConnecting { generation: u64, attempt: u32 },
    /// The realtime session is up; caller audio goes straight into its socket writer's queue.
    RealtimeReady { generation: u64, audio: mpsc::Sender<RealtimeCommand> },
    Realtime { generation: u64, event: RealtimeEvent },
    /// The Realtime child `id` failed: posted behind the events it sent before failing.
    RealtimeFailed { id: ractor::ActorId, reason: String, fatal: bool },
    Persisted { seq: u32 },
    /// The periodic anketa of this dialogue length is durable.
    AnketaPersisted { message_count: usize },
    AnketaExtracted { extracted: ExtractedAnketa, message_count: usize },
    ExtractionFailed { error: String, message_count: usize },
    RestartChild(ChildKind),
    TranscriptTimeout { item_id: String },
    /// Ask again for a response that failed before any audio (a provider rate limit), unless
    /// another started since (`started`: how many had started when it failed).
    RetryResponse { started: u64 },
    /// Has the goodbye played out? (polled while it plays)
    CheckEnded,
    /// Has the answer that ended while playing been heard? (polled)
    CheckHeard,
    Tick,
    End(EndReason),
    /// Operator: run an extraction now.
    ExtractNow,
    /// Operator: reconnect the realtime session (dialogue replayed).
    ForceReconnect,
    FinalizeDone(Box<SessionOutcome>),
}

pub struct ConsultationArgs {
    pub session_id: SessionId,
    pub room: String,
    pub settings: Arc<ConsultationSettings>,
    pub ports: Ports,
    pub media: CallMedia,
    pub telemetry: Telemetry,
    pub lifecycle: Arc<watch::Sender<Lifecycle>>,
    /// Where finalization runs, so that shutdown can wait for it.
    pub tasks: tokio_util::task::TaskTracker,
}

/// The Room child and what outlives its restarts.
#[derive(Default)]
struct RoomChild {
    actor: Option<ActorCell>,
    generation: u64,
    joined_once: bool,
    /// Caller frames sent by the room and not yet handled here.
    backlog: Arc<AtomicUsize>,
}

/// The Realtime child and its link.
#[derive(Default)]
struct RealtimeChild {
    actor: Option<ActorRef<RealtimeMsg>>,
    /// The current session's generation; events of any other are stale (or the standby's).
    generation: u64,
    /// The last generation handed out (current sessions and standbys alike).
    last_generation: u64,
    /// The session being prepared to take over before the provider's limit.
    standby: Option<rollover::Standby>,
    standby_retry_at: Option<Instant>,
    /// The socket writer's queue while the session is up: caller audio skips the actor.
    audio: Option<mpsc::Sender<RealtimeCommand>>,
    connected_at: Option<Instant>,
    ready_once: bool,
    /// Stopped on purpose (recycle, forced reconnect): restart without counting a failure.
    planned_restart: bool,
}

pub struct ConsultationState {
    args: ConsultationArgs,
    audio_out: Arc<dyn AgentAudioOutput>,
    path: String,
    session: VoiceConsultationSession,
    room: RoomChild,
    realtime: RealtimeChild,
    persistence: Option<ActorRef<PersistenceMsg>>,
    extraction: Option<ActorRef<ExtractionMsg>>,
    restarts: [RestartTracker; 4],
    turns: Turns,
    response_active: bool,
    /// The current response has produced audio.
    response_audio: bool,
    /// Failed responses asked again in a row.
    response_retries: u32,
    /// Responses started in this call (a retry is moot once another has started).
    responses_started: u64,
    /// The goodbye in progress, once the call is ending.
    ending: Option<ending::Ending>,
    /// Function calls of the current answer, handled when it is done.
    pending_tool_calls: Vec<crate::dialogue::ToolCall>,
    /// The instructions the current realtime session has.
    instructions_sent: Option<String>,
    /// New instructions wait for the current answer to end.
    instructions_pending: bool,
    /// Since when nobody has spoken (for the silence prompt).
    quiet_since: Option<Instant>,
    /// The caller was asked whether they are still there.
    silence_prompted: bool,
    persisted_upto: u32,
    /// The worker this consultation was resumed from (its worker died mid-call).
    resumed_from: Option<String>,
    /// Periodic anketas sent to Persistence and not yet confirmed: re-sent to its restart.
    unsaved_anketas: Vec<AnketaRecord>,
    /// The dialogue length the last periodic extraction was asked for (once per count, whatever
    /// the notices: re-sent messages are confirmed twice).
    extraction_requested_at: usize,
    /// Between the caller's speech start and stop: no realtime recycle then.
    caller_speaking: bool,
    caller_gap: CallerGap,
    speech_stopped_at: Option<Instant>,
    awaiting_first_audio: bool,
    turn_latency_ms: Vec<u64>,
    finalizing: bool,
}

pub struct ConsultationActor;

impl ConsultationState {
    fn child_path(&self, kind: ChildKind) -> String {
        format!("{}/{}", self.path, kind.name())
    }

    fn set_link(&self, link: RealtimeLinkState) {
        let connected = matches!(link, RealtimeLinkState::Connected);
        self.args.telemetry.consultation_update(&self.session.session_id, |v| {
            if connected {
                v.realtime.connected_at = Some(Utc::now());
            }
            v.realtime.link = link;
        });
    }

    fn send_realtime(&self, command: RealtimeCommand) {
        if let Some(rt) = &self.realtime.actor {
            if rt.send_message(RealtimeMsg::Command(command)).is_err() {
                tracing::debug!(session_id = %self.session.session_id, "realtime actor gone; command dropped (it is being restarted)");
            }
        }
    }

    fn gap_limit(&self) -> usize {
        (self.args.settings.caller_gap_buffer.as_millis() as u64 * REALTIME_RATE / 1000) as usize
    }

    /// The caller's audio: straight into the realtime socket's queue while the session is up,
    /// held in the gap buffer while it is not. Only this audio is ever shed, and it is counted.
    /// `heard`: when the frame's packet reached the worker (None when fed without a room).
    fn caller_audio(&mut self, pcm: Arc<[i16]>, heard: Option<std::time::Instant>) {
        if self.finalizing {
            return;
        }
        if let Some(audio) = &self.realtime.audio {
            match audio.try_send(RealtimeCommand::AppendAudio(pcm)) {
                Ok(()) => {
                    if let Some(heard) = heard {
                        self.args.telemetry.metrics().caller_added_latency.observe(heard.elapsed());
                    }
                    return;
                }
                Err(mpsc::error::TrySendError::Full(RealtimeCommand::AppendAudio(pcm))) => {
                    self.caller_gap.dropped_samples += pcm.len() as u64;
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(RealtimeCommand::AppendAudio(pcm))) => {
                    // The socket is gone; the Realtime actor fails next. Hold until the restart.
                    self.realtime.audio = None;
                    let limit = self.gap_limit();
                    self.caller_gap.hold(pcm, limit);
                }
                Err(_) => unreachable!("only audio is sent on this queue"),
            }
        } else {
            let limit = self.gap_limit();
            self.caller_gap.hold(pcm, limit);
        }
        self.publish_caller_buffer();
    }

    fn publish_caller_buffer(&self) {
        let (held, dropped) = (self.caller_gap.held_ms(), self.caller_gap.dropped_ms());
        self.args.telemetry.consultation_update(&self.session.session_id, |v| {
            v.caller_buffer_ms = held;
            v.caller_dropped_ms = dropped;
        });
    }

    fn view(&self) -> ConsultationView {
        let mut view = ConsultationView::starting(
            self.session.session_id.clone(),
            self.session.room.clone(),
            self.session.status,
            self.session.started_at,
            self.session.max_duration.as_secs(),
            self.args.settings.anketa_fields.len(),
        );
        view.messages = self.session.dialogue.len();
        view.resumed_from = self.resumed_from.clone();
        view.realtime.recycle_after_secs = self.args.settings.realtime_recycle_after.map(|d| d.as_secs());
        view
    }

    fn set_status(&mut self, status: SessionStatus) {
        self.session.status = status;
        self.args.telemetry.consultation_update(&self.session.session_id, |v| v.status = status);
        self.args.telemetry.event("status", self.path.clone(), status.as_str());
        if let Some(p) = &self.persistence {
            if p.send_message(PersistenceMsg::SetStatus { status, failure: None, ended_at: None }).is_err() {
                tracing::warn!(session_id = %self.session.session_id, %status, "persistence gone; the status is stored by its restart or by finalize");
            }
        }
    }

    fn request_extraction(&self, dialogue: Arc<[DialogueMessage]>) {
        if let Some(ex) = &self.extraction {
            let request = ExtractionRequest { dialogue, previous: self.session.anketa.clone() };
            if ex.send_message(ExtractionMsg::Extract(request)).is_err() {
                tracing::warn!(session_id = %self.session.session_id, "extraction actor gone; this extraction is skipped");
            }
        }
    }
}

#[ractor::async_trait]
impl Actor for ConsultationActor {
    type Msg = ConsultationMsg;
    type State = ConsultationState;
    type Arguments = ConsultationArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: ConsultationArgs) -> Result<ConsultationState, ActorProcessingErr> {
        let session = VoiceConsultationSession::new(args.session_id.clone(), args.room.clone(), args.settings.max_duration);
        let path = format!("worker/consultation/{}", args.session_id);
        let audio_out = args.media.audio_out();
        let mut state = ConsultationState {
            args,
            audio_out,
            path,
            session,
            room: RoomChild::default(),
            realtime: RealtimeChild::default(),
            persistence: None,
            extraction: None,
            restarts: Default::default(),
            turns: Turns::default(),
            response_active: false,
            response_audio: false,
            response_retries: 0,
            responses_started: 0,
            ending: None,
            pending_tool_calls: Vec::new(),
            instructions_sent: None,
            instructions_pending: false,
            quiet_since: None,
            silence_prompted: false,
            persisted_upto: 0,
            resumed_from: None,
            unsaved_anketas: Vec::new(),
            extraction_requested_at: 0,
            caller_speaking: false,
            caller_gap: CallerGap::default(),
            speech_stopped_at: None,
            awaiting_first_audio: false,
            turn_latency_ms: Vec::new(),
            finalizing: false,
        };
        state.args.telemetry.actor_started(&state.path, "consultation");
        state.args.telemetry.consultation_upsert(state.view());
        Self::spawn_child(&myself, &mut state, ChildKind::Persistence).await?;
        Self::resume_if_stored(&mut state).await?;
        let record = SessionRecord {
            session_id: state.session.session_id.clone(),
            room: state.session.room.clone(),
            status: SessionStatus::Starting,
            started_at: state.session.started_at,
            ended_at: None,
            failure: None,
        };
        // The session row must exist before any message: wait for it here.
        state.args.ports.store.open_session(&record).await?;
        Self::spawn_child(&myself, &mut state, ChildKind::Extraction).await?;
        // As the entrypoint's steps go: the room first, the realtime session once the agent is in it.
        let first = if matches!(state.args.media, CallMedia::Room(_)) { ChildKind::Room } else { ChildKind::Realtime };
        Self::spawn_child(&myself, &mut state, first).await?;
        myself.send_interval(Duration::from_secs(1), || ConsultationMsg::Tick);
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut ConsultationState) -> Result<(), ActorProcessingErr> {
        state.args.telemetry.actor_removed(&state.path);
        state.args.telemetry.consultation_removed(&state.session.session_id);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: ConsultationMsg, state: &mut ConsultationState) -> Result<(), ActorProcessingErr> {
        match message {
            ConsultationMsg::CallerAudio(pcm) => state.caller_audio(pcm, None),
            ConsultationMsg::Room { generation, event } => {
                if let RoomEvent::CallerAudio { .. } = &event {
                    state.room.backlog.fetch_sub(1, Ordering::AcqRel);
                }
                if generation == state.room.generation {
                    Self::on_room_event(&myself, state, event).await?;
                }
            }
            ConsultationMsg::RealtimeConnecting { generation, attempt } => {
                // A late notice from an actor that has already failed must not hide the restart.
                if generation == state.realtime.generation && state.realtime.actor.is_some() {
                    let link = if state.realtime.ready_once {
                        RealtimeLinkState::Reconnecting { attempt }
                    } else {
                        RealtimeLinkState::Connecting { attempt }
                    };
                    state.set_link(link);
                }
            }
            ConsultationMsg::RealtimeReady { generation, audio } => {
                if generation == state.realtime.generation && state.realtime.actor.is_some() && !state.finalizing {
                    Self::on_realtime_ready(state, generation, audio);
                } else if !state.finalizing {
                    Self::on_standby_ready(state, generation, audio);
                }
            }
            ConsultationMsg::Realtime { generation, event } => {
                // Events of a session that was replaced (restart, rollover) are stale. A failed
                // current session's are not: its failure is handled behind them.
                if generation == state.realtime.generation && state.realtime.actor.is_some() && !state.finalizing {
                    Self::on_realtime_event(&myself, state, event);
                }
            }
            ConsultationMsg::RealtimeFailed { id, reason, fatal } => Self::on_realtime_failed(&myself, state, id, reason, fatal),
            ConsultationMsg::Persisted { seq } => {
                state.persisted_upto = state.persisted_upto.max(seq);
                let interval = state.args.settings.extraction_interval.max(1);
                state.args.telemetry.consultation_update(&state.session.session_id, |v| {
                    v.persistence_backlog = v.persistence_backlog.saturating_sub(1);
                });
                let count = seq as usize;
                if count % interval == 0 && count > state.extraction_requested_at && !state.finalizing {
                    state.extraction_requested_at = count;
                    state.request_extraction(state.session.dialogue[..count].to_vec().into());
                }
            }
            ConsultationMsg::AnketaPersisted { message_count } => {
                state.unsaved_anketas.retain(|a| a.message_count != message_count);
            }
            ConsultationMsg::AnketaExtracted { extracted, message_count } => {
                state.session.apply_extraction(&extracted, message_count);
                let filled = state.session.anketa.filled();
                let dropped = extracted.evidence_dropped;
                tracing::info!(session_id = %state.session.session_id, message_count, fields_filled = filled, evidence_dropped = dropped, "periodic_anketa_extracted");
                let fields = AnketaFieldView::list(&state.session.anketa, &state.session.provenance, &state.args.settings.anketa_fields);
                state.args.telemetry.consultation_update(&state.session.session_id, |v| {
                    v.anketa_filled = filled;
                    v.anketa = fields;
                    v.evidence_dropped += dropped as u64;
                    v.last_extraction_at_message = Some(message_count);
                    v.extractions += 1;
                });
                // What is still missing steers the dialogue from here on.
                state.instructions_changed();
                state.audio_out.anketa(&state.session.anketa.readable(&state.args.settings.anketa_fields));
                let (anketa, provenance) = (state.session.anketa.clone(), state.session.provenance.clone());
                let record = AnketaRecord { anketa, provenance, message_count, is_final: false, at: Utc::now() };
                state.unsaved_anketas.retain(|a| a.message_count != message_count);
                state.unsaved_anketas.push(record.clone());
                if let Some(p) = &state.persistence {
                    if p.send_message(PersistenceMsg::SaveAnketa(record)).is_err() {
                        tracing::warn!(session_id = %state.session.session_id, message_count, "persistence gone; this periodic anketa is re-sent to its restart");
                    }
                }
            }
            ConsultationMsg::ExtractionFailed { error, message_count } => {
                tracing::warn!(session_id = %state.session.session_id, message_count, %error, "periodic anketa extraction failed; the dialogue goes on");
                state.args.telemetry.consultation_update(&state.session.session_id, |v| v.extraction_failures += 1);
                state.args.telemetry.event("extraction", state.child_path(ChildKind::Extraction), error);
            }
            ConsultationMsg::RestartChild(kind) => {
                if !state.finalizing {
                    Self::spawn_child(&myself, state, kind).await?;
                }
            }
            ConsultationMsg::TranscriptTimeout { item_id } => {
                if let Some(ready) = state.turns.transcript_timed_out(&item_id) {
                    tracing::warn!(session_id = %state.session.session_id, %item_id, "no transcript for a caller turn; moving on (a late one is still kept)");
                    state.store_final(ready);
                }
            }
            ConsultationMsg::CheckEnded => Self::check_ended(&myself, state),
            ConsultationMsg::CheckHeard => Self::check_heard(&myself, state),
            ConsultationMsg::RetryResponse { started } => state.retry_response(started),
            ConsultationMsg::Tick => {
                if !state.finalizing {
                    Self::on_tick(&myself, state);
                    Self::rollover_tick(&myself, state).await?;
                }
            }
            ConsultationMsg::End(reason) => Self::begin_finalize(&myself, state, reason),
            ConsultationMsg::ExtractNow => state.request_extraction(state.session.dialogue.clone().into()),
            ConsultationMsg::ForceReconnect => Self::stop_realtime_for_restart(state, "operator forced reconnect"),
            ConsultationMsg::FinalizeDone(outcome) => {
                state.session.status = outcome.status;
                state.args.telemetry.event("status", state.path.clone(), format!("{} ({} messages)", outcome.status, outcome.dialogue.len()));
                state.args.lifecycle.send_replace(Lifecycle::Finished(outcome));
                if let Some(p) = state.persistence.take() {
                    p.stop(None);
                }
                myself.stop(Some("finalized".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, myself: ActorRef<Self::Msg>, event: SupervisionEvent, state: &mut ConsultationState) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) if state.is_standby(&cell) => Self::on_standby_failed(state, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) if state.is_standby(&cell) => {
                Self::on_standby_failed(state, format!("stopped: {}", reason.unwrap_or_default()))
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(kind) = Self::which_child(state, &cell) else { return Ok(()) };
                let fatal = error.downcast_ref::<RealtimeFailure>().is_some_and(RealtimeFailure::is_fatal)
                    || error.downcast_ref::<RoomFailure>().is_some_and(RoomFailure::is_fatal);
                if kind == ChildKind::Realtime {
                    // ractor delivers supervision events ahead of the mailbox, where the session's
                    // last events (the caller's late words, the answer's last words) may still
                    // wait. Handled behind them, the failure closes the turn only once they are in.
                    let failed = ConsultationMsg::RealtimeFailed { id: cell.get_id(), reason: error.to_string(), fatal };
                    if myself.send_message(failed).is_ok() {
                        return Ok(());
                    }
                }
                Self::on_child_failure(&myself, state, kind, error.to_string(), fatal);
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_default();
                match Self::which_child(state, &cell) {
                    Some(ChildKind::Room) if !state.finalizing => {
                        // A Room stops by itself only after telling why (RoomEvent::Ended).
                        Self::forget_child(state, ChildKind::Room);
                        tracing::info!(session_id = %state.session.session_id, %reason, "room left");
                    }
                    Some(kind) if !state.finalizing => {
                        Self::on_child_failure(&myself, state, kind, format!("stopped unexpectedly: {reason}"), false);
                    }
                    Some(_) => {}
                    // A planned stop (recycle, forced reconnect) has already cleared the child's ref.
                    None if state.realtime.planned_restart && state.realtime.actor.is_none() && !state.finalizing => {
                        state.realtime.planned_restart = false;
                        state.args.telemetry.metrics().reconnect("planned");
                        tracing::info!(session_id = %state.session.session_id, %reason, "restarting realtime (planned)");
                        state.set_link(RealtimeLinkState::Reconnecting { attempt: 1 });
                        Self::spawn_child(&myself, state, ChildKind::Realtime).await?;
                    }
                    None => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}
