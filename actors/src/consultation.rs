//! The Consultation actor: one per session. It owns the `VoiceConsultationSession` (dialogue,
//! timer, status) and supervises its Realtime, Persistence and Extraction children: a failed
//! child is restarted with backoff inside an intensity window; past it the consultation is
//! finalized as failed. A failed Extraction never ends the call.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::anketa::Anketa;
use crate::dialogue::{DialogueMessage, Role, SessionId};
use crate::extraction::{ExtractionActor, ExtractionArgs, ExtractionMsg, ExtractionRequest};
use crate::persistence::{PersistenceActor, PersistenceArgs, PersistenceMsg};
use crate::ports::{
    AgentAudioOutput, AnketaExtractor, AnketaRecord, DialogueStore, RealtimeCommand, RealtimeConnector,
    RealtimeEvent, RealtimeFailure, RealtimeSetup, ResponseStatus, SessionRecord,
};
use crate::realtime::{RealtimeActor, RealtimeArgs, RealtimeMsg};
use crate::restart::{RestartDecision, RestartTracker};
use crate::session::{SessionStatus, TimerPhase, VoiceConsultationSession};
use crate::settings::ConsultationSettings;
use crate::telemetry::{ActorStatus, ConsultationView, RealtimeLinkState, RealtimeView, Telemetry};

/// Text stored for a caller turn whose transcription failed: the turn happened, its words are
/// unknown.
pub const UNINTELLIGIBLE: &str = "[неразборчиво]";

/// Samples per second of the realtime audio (PCM16 mono).
pub const REALTIME_RATE: u64 = 24_000;

/// The external services a consultation uses.
#[derive(Clone)]
pub struct Ports {
    pub connector: Arc<dyn RealtimeConnector>,
    pub store: Arc<dyn DialogueStore>,
    pub extractor: Arc<dyn AnketaExtractor>,
}

/// Why a consultation ends.
#[derive(Clone, Debug, PartialEq)]
pub enum EndReason {
    CallerLeft,
    TimeLimit,
    Operator(String),
    Shutdown,
    Failed(String),
}

impl EndReason {
    fn status(&self) -> (SessionStatus, Option<String>) {
        match self {
            EndReason::Failed(why) => (SessionStatus::Failed, Some(why.clone())),
            _ => (SessionStatus::Completed, None),
        }
    }

    fn describe(&self) -> String {
        match self {
            EndReason::CallerLeft => "caller left".into(),
            EndReason::TimeLimit => "time limit reached".into(),
            EndReason::Operator(who) => format!("ended by operator {who}"),
            EndReason::Shutdown => "worker shutdown".into(),
            EndReason::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// The result of a finished consultation (what `end_session` returns).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionOutcome {
    pub session_id: SessionId,
    pub room: String,
    pub status: SessionStatus,
    pub failure: Option<String>,
    pub dialogue: Vec<DialogueMessage>,
    pub anketa: Anketa,
    pub started_at: chrono::DateTime<Utc>,
    pub ended_at: chrono::DateTime<Utc>,
    /// Caller speech end -> first agent audio, per turn.
    pub turn_latency_ms: Vec<u64>,
}

/// Lifecycle as seen from outside (VoiceHandler, the LiveKit job, simulate).
#[derive(Clone, Debug)]
pub enum Lifecycle {
    Starting,
    /// Realtime connected and the greeting requested (the entrypoint's step 5 is done).
    Ready,
    Finished(Box<SessionOutcome>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    Realtime,
    Persistence,
    Extraction,
}

impl ChildKind {
    fn name(self) -> &'static str {
        match self {
            ChildKind::Realtime => "realtime",
            ChildKind::Persistence => "persistence",
            ChildKind::Extraction => "extraction",
        }
    }
}

pub enum ConsultationMsg {
    /// Caller audio, PCM16 mono 24 kHz.
    CallerAudio(Arc<[i16]>),
    RealtimeConnecting { generation: u64, attempt: u32 },
    RealtimeReady { generation: u64 },
    Realtime { generation: u64, event: RealtimeEvent },
    Persisted { seq: u32 },
    AnketaExtracted { anketa: Anketa, message_count: usize },
    ExtractionFailed { error: String, message_count: usize },
    RestartChild(ChildKind),
    TranscriptTimeout { item_id: String },
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
    pub audio_out: Arc<dyn AgentAudioOutput>,
    pub telemetry: Telemetry,
    pub lifecycle: Arc<watch::Sender<Lifecycle>>,
}

/// A dialogue position waiting for its final text.
enum Slot {
    PendingUser { item_id: String },
    Ready { role: Role, text: String, interrupted: bool },
}

/// The assistant item being spoken.
struct AgentTurn {
    item_id: String,
    transcript: String,
    transcript_done: bool,
    received_samples: u64,
    /// Set on barge-in: how much the caller heard.
    played_ms: Option<u64>,
}

pub struct ConsultationState {
    args: ConsultationArgs,
    path: String,
    session: VoiceConsultationSession,
    realtime: Option<ActorRef<RealtimeMsg>>,
    realtime_generation: u64,
    realtime_connected_at: Option<Instant>,
    realtime_ready_once: bool,
    persistence: Option<ActorRef<PersistenceMsg>>,
    extraction: Option<ActorRef<ExtractionMsg>>,
    restarts: [RestartTracker; 3],
    /// A child stopped on purpose (recycle, forced reconnect): restart without counting.
    planned_restart: bool,
    slots: VecDeque<Slot>,
    seen_user_items: HashSet<String>,
    agent: Option<AgentTurn>,
    response_active: bool,
    goodbye_requested: bool,
    goodbye_spoken: bool,
    goodbye_deadline: Option<Instant>,
    persisted_upto: u32,
    caller_gap: VecDeque<Arc<[i16]>>,
    caller_gap_samples: usize,
    caller_dropped_samples: u64,
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

    fn tracker(&mut self, kind: ChildKind) -> &mut RestartTracker {
        &mut self.restarts[kind as usize]
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
        if let Some(rt) = &self.realtime {
            let _ = rt.send_message(RealtimeMsg::Command(command));
        }
    }

    fn realtime_ready(&self) -> bool {
        self.realtime.is_some() && self.realtime_connected_at.is_some()
    }

    fn gap_limit(&self) -> usize {
        (self.args.settings.caller_gap_buffer.as_millis() as u64 * REALTIME_RATE / 1000) as usize
    }

    fn hold_caller_audio(&mut self, pcm: Arc<[i16]>) {
        self.caller_gap_samples += pcm.len();
        self.caller_gap.push_back(pcm);
        let limit = self.gap_limit();
        while self.caller_gap_samples > limit {
            match self.caller_gap.pop_front() {
                Some(old) => {
                    self.caller_gap_samples -= old.len();
                    self.caller_dropped_samples += old.len() as u64;
                }
                None => break,
            }
        }
        let (held, dropped) = (self.caller_gap_samples as u64, self.caller_dropped_samples);
        self.args.telemetry.consultation_update(&self.session.session_id, |v| {
            v.caller_buffer_ms = held * 1000 / REALTIME_RATE;
            v.caller_dropped_ms = dropped * 1000 / REALTIME_RATE;
        });
    }

    /// Moves final messages from the front of the slot queue into the dialogue.
    fn flush_slots(&mut self) {
        while let Some(Slot::Ready { .. }) = self.slots.front() {
            let Some(Slot::Ready { role, text, interrupted }) = self.slots.pop_front() else { break };
            let message = self.session.push_message(role, text, interrupted);
            self.args.telemetry.consultation_update(&self.session.session_id, |v| {
                v.push_line(message.seq, message.role, &message.text);
                v.persistence_backlog += 1;
            });
            self.args.audio_out.transcript(&message);
            if let Some(p) = &self.persistence {
                let _ = p.send_message(PersistenceMsg::Append(message));
            }
        }
    }

    /// Ends the assistant item in flight: the stored text is what the caller actually heard.
    fn finish_agent_turn(&mut self, status: Option<ResponseStatus>) {
        let Some(turn) = self.agent.take() else { return };
        let received_ms = turn.received_samples * 1000 / REALTIME_RATE;
        let (text, interrupted) = match turn.played_ms {
            Some(played) if played < received_ms => (heard_prefix(&turn.transcript, played, received_ms), true),
            _ => (turn.transcript.clone(), !matches!(status, Some(ResponseStatus::Completed) | None)),
        };
        let text = text.trim().to_owned();
        if text.is_empty() {
            return;
        }
        self.slots.push_back(Slot::Ready { role: Role::Assistant, text, interrupted });
        self.flush_slots();
    }

    fn view(&self) -> ConsultationView {
        ConsultationView {
            session_id: self.session.session_id.clone(),
            room: self.session.room.clone(),
            status: self.session.status,
            started_at: self.session.started_at,
            max_duration_secs: self.session.max_duration.as_secs(),
            messages: self.session.dialogue.len(),
            transcript_tail: Default::default(),
            turn_latency_ms: Default::default(),
            usage: Default::default(),
            realtime: RealtimeView {
                recycle_after_secs: self.args.settings.realtime_recycle_after.map(|d| d.as_secs()),
                ..Default::default()
            },
            anketa_filled: 0,
            anketa_fields: self.args.settings.anketa_fields.len(),
            last_extraction_at_message: None,
            extractions: 0,
            extraction_failures: 0,
            persistence_backlog: 0,
            caller_buffer_ms: 0,
            caller_dropped_ms: 0,
            failure: None,
        }
    }

    fn set_status(&mut self, status: SessionStatus) {
        self.session.status = status;
        self.args.telemetry.consultation_update(&self.session.session_id, |v| v.status = status);
        self.args.telemetry.event("status", self.path.clone(), status.as_str());
        if let Some(p) = &self.persistence {
            let _ = p.send_message(PersistenceMsg::SetStatus { status, failure: None, ended_at: None });
        }
    }
}

/// The part of an interrupted agent answer the caller heard, cut at a word boundary in
/// proportion to the audio played (the model gives no word timings).
pub fn heard_prefix(transcript: &str, played_ms: u64, received_ms: u64) -> String {
    if received_ms == 0 || played_ms == 0 {
        return String::new();
    }
    let chars: Vec<char> = transcript.chars().collect();
    let keep = ((chars.len() as u64 * played_ms) / received_ms) as usize;
    let mut cut: String = chars[..keep.min(chars.len())].iter().collect();
    if keep < chars.len() && !chars[keep].is_whitespace() {
        // Drop the partly heard word.
        if let Some(space) = cut.rfind(char::is_whitespace) {
            cut.truncate(space);
        } else {
            cut.clear();
        }
    }
    cut.trim_end().to_owned()
}

impl ConsultationActor {
    async fn spawn_child(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, kind: ChildKind) -> Result<(), ActorProcessingErr> {
        let cell: ActorCell = myself.get_cell();
        match kind {
            ChildKind::Realtime => {
                state.realtime_generation += 1;
                state.realtime_connected_at = None;
                let setup = RealtimeSetup {
                    session_id: state.session.session_id.clone(),
                    instructions: current_instructions(state),
                    history: state.session.dialogue.clone(),
                };
                let args = RealtimeArgs {
                    connector: state.args.ports.connector.clone(),
                    setup,
                    policy: state.args.settings.connect,
                    parent: myself.clone(),
                    generation: state.realtime_generation,
                };
                let (actor, _) = Actor::spawn_linked(None, RealtimeActor, args, cell).await?;
                state.realtime = Some(actor);
            }
            ChildKind::Persistence => {
                let args = PersistenceArgs {
                    session_id: state.session.session_id.clone(),
                    store: state.args.ports.store.clone(),
                    parent: myself.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, PersistenceActor, args, cell).await?;
                // Re-send what the previous instance did not confirm (appends are idempotent).
                for message in state.session.dialogue.iter().filter(|m| m.seq > state.persisted_upto) {
                    actor.send_message(PersistenceMsg::Append(message.clone()))?;
                }
                state.persistence = Some(actor);
            }
            ChildKind::Extraction => {
                let args = ExtractionArgs { extractor: state.args.ports.extractor.clone(), parent: myself.clone() };
                let (actor, _) = Actor::spawn_linked(None, ExtractionActor, args, cell).await?;
                state.extraction = Some(actor);
            }
        }
        state.args.telemetry.actor_started(&state.child_path(kind), kind.name());
        Ok(())
    }

    fn which_child(state: &ConsultationState, cell: &ActorCell) -> Option<ChildKind> {
        let id = cell.get_id();
        if state.realtime.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(ChildKind::Realtime)
        } else if state.persistence.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(ChildKind::Persistence)
        } else if state.extraction.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(ChildKind::Extraction)
        } else {
            None
        }
    }

    fn forget_child(state: &mut ConsultationState, kind: ChildKind) {
        match kind {
            ChildKind::Realtime => {
                state.realtime = None;
                state.realtime_connected_at = None;
            }
            ChildKind::Persistence => state.persistence = None,
            ChildKind::Extraction => state.extraction = None,
        }
    }

    /// A child failed: restart it with backoff, or give up past the intensity window.
    fn on_child_failure(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, kind: ChildKind, reason: String, fatal: bool) {
        Self::forget_child(state, kind);
        if state.finalizing {
            return;
        }
        let path = state.child_path(kind);
        if kind == ChildKind::Realtime {
            // Whatever the caller heard of an answer cut by the drop stays in the dialogue.
            let played = state.args.audio_out.is_playing();
            if let Some(turn) = state.agent.as_mut() {
                if !played {
                    turn.played_ms = None;
                }
            }
            state.finish_agent_turn(Some(ResponseStatus::Incomplete));
            state.response_active = false;
            state.args.telemetry.consultation_update(&state.session.session_id, |v| {
                v.realtime.last_close_cause = Some(reason.clone());
            });
        }
        if fatal {
            state.args.telemetry.actor_failed(&path, &reason, 0, false);
            tracing::error!(session_id = %state.session.session_id, child = kind.name(), %reason, "child failed with a fatal error");
            let _ = myself.send_message(ConsultationMsg::End(EndReason::Failed(format!("{}: {reason}", kind.name()))));
            return;
        }
        let policy = state.args.settings.restart;
        let decision = state.tracker(kind).on_failure(&policy, Instant::now(), reason.clone());
        match decision {
            RestartDecision::Restart { delay, attempt } => {
                tracing::warn!(session_id = %state.session.session_id, child = kind.name(), attempt, ?delay, %reason, "child failed; restarting");
                state.args.telemetry.actor_failed(&path, &reason, attempt, true);
                if kind == ChildKind::Realtime {
                    state.set_link(RealtimeLinkState::Reconnecting { attempt: attempt as u32 });
                    state.args.telemetry.consultation_update(&state.session.session_id, |v| v.realtime.reconnects += 1);
                }
                myself.send_after(delay, move || ConsultationMsg::RestartChild(kind));
            }
            RestartDecision::GiveUp { restarts_in_window } => {
                state.args.telemetry.actor_failed(&path, &reason, restarts_in_window, false);
                if kind == ChildKind::Extraction {
                    // The anketa is a by-product: the call goes on without periodic extraction.
                    tracing::error!(session_id = %state.session.session_id, %reason, "extraction keeps failing; periodic extraction disabled");
                    return;
                }
                if kind == ChildKind::Persistence {
                    // A full or failing disk must not cut the call: the dialogue is kept in
                    // memory, re-sent when storage works again, and written by finalize.
                    let retry = policy.backoff_max;
                    tracing::error!(session_id = %state.session.session_id, %reason, ?retry, unsaved = state.session.dialogue.len() as u32 - state.persisted_upto, "storage keeps failing; dialogue kept in memory, retrying");
                    myself.send_after(retry, move || ConsultationMsg::RestartChild(kind));
                    return;
                }
                if kind == ChildKind::Realtime {
                    state.set_link(RealtimeLinkState::Down);
                }
                let why = format!("{} failed {} times within {:?}; last: {reason}", kind.name(), restarts_in_window + 1, policy.window);
                let _ = myself.send_message(ConsultationMsg::End(EndReason::Failed(why)));
            }
        }
    }

    fn on_realtime_event(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, event: RealtimeEvent) {
        match event {
            RealtimeEvent::SessionReady { .. } => {}
            RealtimeEvent::SpeechStarted { .. } => {
                // Barge-in: stop the agent at once and tell the model what was really heard.
                if let Some(played) = state.args.audio_out.interrupt() {
                    if let Some(turn) = state.agent.as_mut().filter(|t| t.item_id == played.item_id) {
                        let received_ms = turn.received_samples * 1000 / REALTIME_RATE;
                        let heard = played.played_ms.min(received_ms);
                        turn.played_ms = Some(heard);
                        state.send_realtime(RealtimeCommand::Truncate { item_id: played.item_id.clone(), content_index: 0, audio_end_ms: heard });
                        tracing::info!(session_id = %state.session.session_id, item_id = %played.item_id, played_ms = heard, "barge-in: agent interrupted");
                    }
                }
                state.speech_stopped_at = None;
            }
            RealtimeEvent::SpeechStopped { .. } => {
                state.speech_stopped_at = Some(Instant::now());
                state.awaiting_first_audio = true;
            }
            RealtimeEvent::UserItemCommitted { item_id } => {
                if state.seen_user_items.insert(item_id.clone()) {
                    state.slots.push_back(Slot::PendingUser { item_id: item_id.clone() });
                    let wait = state.args.settings.transcript_wait;
                    myself.send_after(wait, move || ConsultationMsg::TranscriptTimeout { item_id });
                }
            }
            RealtimeEvent::UserTranscript { item_id, text } => Self::resolve_user(state, item_id, Some(text)),
            RealtimeEvent::UserTranscriptFailed { item_id, reason } => {
                tracing::warn!(session_id = %state.session.session_id, %item_id, %reason, "caller transcription failed");
                Self::resolve_user(state, item_id, None)
            }
            RealtimeEvent::ResponseStarted { .. } => state.response_active = true,
            RealtimeEvent::AgentItemStarted { item_id, .. } => {
                if state.agent.as_ref().is_some_and(|t| t.item_id != item_id) {
                    state.finish_agent_turn(Some(ResponseStatus::Completed));
                }
                if state.agent.is_none() {
                    state.agent = Some(AgentTurn { item_id, transcript: String::new(), transcript_done: false, received_samples: 0, played_ms: None });
                }
            }
            RealtimeEvent::AgentAudio { item_id, pcm } => {
                if state.agent.as_ref().is_none_or(|t| t.item_id != item_id) {
                    state.finish_agent_turn(Some(ResponseStatus::Completed));
                    state.agent = Some(AgentTurn { item_id: item_id.clone(), transcript: String::new(), transcript_done: false, received_samples: 0, played_ms: None });
                }
                let turn = state.agent.as_mut().expect("agent turn just ensured");
                if turn.played_ms.is_some() {
                    return; // interrupted: late audio of a cut answer is not played
                }
                turn.received_samples += pcm.len() as u64;
                if state.awaiting_first_audio {
                    state.awaiting_first_audio = false;
                    if let Some(stopped) = state.speech_stopped_at.take() {
                        let ms = stopped.elapsed().as_millis() as u64;
                        state.turn_latency_ms.push(ms);
                        state.args.telemetry.consultation_update(&state.session.session_id, |v| v.push_latency(ms));
                    }
                }
                state.args.audio_out.play(&item_id, pcm);
            }
            RealtimeEvent::AgentTranscriptDelta { item_id, delta } => {
                if let Some(turn) = state.agent.as_mut().filter(|t| t.item_id == item_id && !t.transcript_done) {
                    turn.transcript.push_str(&delta);
                } else if state.agent.is_none() {
                    state.agent = Some(AgentTurn { item_id, transcript: delta, transcript_done: false, received_samples: 0, played_ms: None });
                }
            }
            RealtimeEvent::AgentTranscriptDone { item_id, text } => {
                if let Some(turn) = state.agent.as_mut().filter(|t| t.item_id == item_id) {
                    turn.transcript = text;
                    turn.transcript_done = true;
                }
            }
            RealtimeEvent::ResponseDone { status, reason, usage, .. } => {
                state.response_active = false;
                if let Some(usage) = usage {
                    state.args.telemetry.consultation_update(&state.session.session_id, |v| {
                        v.usage.input_tokens += usage.input_tokens;
                        v.usage.output_tokens += usage.output_tokens;
                    });
                }
                if status == ResponseStatus::Failed {
                    tracing::warn!(session_id = %state.session.session_id, reason = reason.as_deref().unwrap_or(""), "realtime response failed");
                }
                state.finish_agent_turn(Some(status));
                if state.goodbye_requested {
                    state.goodbye_spoken = true;
                } else if state.session.timer == TimerPhase::Expired {
                    state.goodbye_requested = true;
                    state.send_realtime(RealtimeCommand::CreateResponse { instructions: Some(state.args.settings.goodbye_instruction.clone()) });
                }
            }
            RealtimeEvent::Error { code, message } => {
                tracing::warn!(session_id = %state.session.session_id, code = code.as_deref().unwrap_or(""), %message, "realtime error event");
                state.args.telemetry.event("realtime_error", state.child_path(ChildKind::Realtime), format!("{}: {message}", code.unwrap_or_default()));
            }
            RealtimeEvent::Disconnected { .. } => {} // handled by the Realtime actor failing
        }
    }

    fn resolve_user(state: &mut ConsultationState, item_id: String, text: Option<String>) {
        let text = match text {
            // An empty transcript (noise) is no message.
            Some(t) if t.trim().is_empty() => None,
            Some(t) => Some(t.trim().to_owned()),
            None => Some(UNINTELLIGIBLE.to_owned()),
        };
        let position = state.slots.iter().position(|s| matches!(s, Slot::PendingUser { item_id: id } if *id == item_id));
        match (position, text) {
            (Some(i), Some(text)) => state.slots[i] = Slot::Ready { role: Role::User, text, interrupted: false },
            (Some(i), None) => {
                state.slots.remove(i);
            }
            (None, Some(text)) => {
                // A transcript for an item we never saw committed (or that timed out): keep it.
                state.seen_user_items.insert(item_id);
                state.slots.push_back(Slot::Ready { role: Role::User, text, interrupted: false });
            }
            (None, None) => {}
        }
        state.flush_slots();
    }

    fn on_tick(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) {
        let settings = state.args.settings.clone();
        let elapsed = state.session.elapsed();
        let wrapup_at = settings.max_duration.saturating_sub(settings.wrapup_before);
        if state.session.timer == TimerPhase::Running && elapsed >= wrapup_at && elapsed < settings.max_duration {
            state.session.timer = TimerPhase::WrappingUp;
            tracing::info!(session_id = %state.session.session_id, remaining = ?state.session.remaining(), "wrap-up instruction sent");
            state.send_realtime(RealtimeCommand::UpdateInstructions(current_instructions(state)));
        }
        if state.session.timer != TimerPhase::Expired && elapsed >= settings.max_duration {
            state.session.timer = TimerPhase::Expired;
            state.goodbye_deadline = Some(Instant::now() + settings.goodbye_grace);
            tracing::info!(session_id = %state.session.session_id, "time limit reached; saying goodbye");
            if state.response_active {
                state.args.audio_out.interrupt();
                state.send_realtime(RealtimeCommand::CancelResponse);
            } else {
                state.goodbye_requested = true;
                state.send_realtime(RealtimeCommand::CreateResponse { instructions: Some(settings.goodbye_instruction.clone()) });
            }
        }
        if state.session.timer == TimerPhase::Expired {
            let said = state.goodbye_spoken && !state.args.audio_out.is_playing();
            let overdue = state.goodbye_deadline.is_some_and(|d| Instant::now() >= d);
            if said || overdue {
                let _ = myself.send_message(ConsultationMsg::End(EndReason::TimeLimit));
            }
        }
        // Proactive recycle before the provider's session limit, while nobody is speaking.
        if let (Some(after), Some(since)) = (settings.realtime_recycle_after, state.realtime_connected_at) {
            let quiet = !state.response_active && state.agent.is_none() && !state.args.audio_out.is_playing()
                && state.slots.is_empty() && state.speech_stopped_at.is_none();
            if since.elapsed() >= after && quiet {
                if let Some(rt) = state.realtime.take() {
                    tracing::info!(session_id = %state.session.session_id, "recycling the realtime session before its limit");
                    state.planned_restart = true;
                    state.realtime_connected_at = None;
                    rt.stop(Some("recycle".into()));
                }
            }
        }
        let (held, dropped) = (state.caller_gap_samples as u64, state.caller_dropped_samples);
        state.args.telemetry.consultation_update(&state.session.session_id, |v| {
            v.caller_buffer_ms = held * 1000 / REALTIME_RATE;
            v.caller_dropped_ms = dropped * 1000 / REALTIME_RATE;
        });
    }

    fn begin_finalize(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, reason: EndReason) {
        if state.finalizing {
            return;
        }
        state.finalizing = true;
        // What is in flight becomes final now: the caller heard what was played.
        if state.args.audio_out.is_playing() {
            if let Some(played) = state.args.audio_out.interrupt() {
                if let Some(turn) = state.agent.as_mut().filter(|t| t.item_id == played.item_id) {
                    turn.played_ms = Some(played.played_ms);
                }
            }
        }
        state.finish_agent_turn(Some(ResponseStatus::Incomplete));
        // Caller turns still waiting for a transcript are given up.
        state.slots.retain(|s| matches!(s, Slot::Ready { .. }));
        state.flush_slots();
        if let Some(rt) = state.realtime.take() {
            rt.stop(Some("finalizing".into()));
        }
        if let Some(ex) = state.extraction.take() {
            ex.stop(Some("finalizing".into()));
        }
        state.session.status = SessionStatus::Finalizing;
        state.args.telemetry.consultation_update(&state.session.session_id, |v| v.status = SessionStatus::Finalizing);
        let (status, failure) = reason.status();
        let job = FinalizeJob {
            session_id: state.session.session_id.clone(),
            room: state.session.room.clone(),
            status,
            failure,
            reason: reason.describe(),
            started_at: state.session.started_at,
            dialogue: state.session.dialogue.clone(),
            anketa: state.session.anketa.clone(),
            fields_timeout: state.args.settings.final_extraction_timeout,
            store: state.args.ports.store.clone(),
            extractor: state.args.ports.extractor.clone(),
            persistence: state.persistence.clone(),
            turn_latency_ms: state.turn_latency_ms.clone(),
        };
        let me = myself.clone();
        tokio::spawn(async move {
            let outcome = finalize_consultation(job).await;
            let _ = me.send_message(ConsultationMsg::FinalizeDone(Box::new(outcome)));
        });
    }
}

fn current_instructions(state: &ConsultationState) -> String {
    let s = &state.args.settings;
    match state.session.timer {
        TimerPhase::Running => s.system_prompt.clone(),
        TimerPhase::WrappingUp | TimerPhase::Expired => format!("{}\n\n{}", s.system_prompt, s.wrapup_instruction),
    }
}

/// Everything `finalize_consultation` needs; it runs off the actor so that a slow DeepSeek
/// never blocks a mailbox.
pub struct FinalizeJob {
    pub session_id: SessionId,
    pub room: String,
    pub status: SessionStatus,
    pub failure: Option<String>,
    pub reason: String,
    pub started_at: chrono::DateTime<Utc>,
    pub dialogue: Vec<DialogueMessage>,
    pub anketa: Anketa,
    pub fields_timeout: Duration,
    pub store: Arc<dyn DialogueStore>,
    pub extractor: Arc<dyn AnketaExtractor>,
    /// The live Persistence actor, drained first so every message is durable; None when it is
    /// gone (messages are then written directly).
    pub persistence: Option<ActorRef<PersistenceMsg>>,
    pub turn_latency_ms: Vec<u64>,
}

/// Generates the final anketa from the whole dialogue and stores it with the final status.
/// Used at the end of every consultation and by start-up recovery of interrupted sessions.
pub async fn finalize_consultation(job: FinalizeJob) -> SessionOutcome {
    tracing::info!(session_id = %job.session_id, reason = %job.reason, messages = job.dialogue.len(), "=== FINALIZE START ===");
    let drained = match &job.persistence {
        Some(p) => p.call(PersistenceMsg::Flush, Some(Duration::from_secs(10))).await.is_ok_and(|r| r.is_success()),
        None => false,
    };
    if !drained {
        for message in &job.dialogue {
            if let Err(e) = job.store.append_message(&job.session_id, message).await {
                tracing::error!(session_id = %job.session_id, seq = message.seq, error = %e, "could not store a dialogue message during finalize");
            }
        }
    }
    let mut anketa = job.anketa.clone();
    let mut failure = job.failure.clone();
    let mut status = job.status;
    if !job.dialogue.is_empty() {
        match tokio::time::timeout(job.fields_timeout, job.extractor.extract(&job.dialogue, &job.anketa)).await {
            Ok(Ok(extracted)) => anketa.merge(&extracted),
            Ok(Err(e)) => {
                tracing::error!(session_id = %job.session_id, error = %e, "final anketa extraction failed; keeping the last periodic anketa");
            }
            Err(_) => {
                tracing::error!(session_id = %job.session_id, timeout = ?job.fields_timeout, "final anketa extraction timed out; keeping the last periodic anketa");
            }
        }
    }
    let ended_at = Utc::now();
    let record = AnketaRecord { anketa: anketa.clone(), message_count: job.dialogue.len(), is_final: true, at: ended_at };
    if let Err(e) = job.store.save_anketa(&job.session_id, &record).await {
        tracing::error!(session_id = %job.session_id, error = %e, "could not store the final anketa");
        status = SessionStatus::Failed;
        failure = Some(format!("final anketa not stored: {e}"));
    }
    if let Err(e) = job.store.set_status(&job.session_id, status, failure.as_deref(), Some(ended_at)).await {
        tracing::error!(session_id = %job.session_id, error = %e, "could not store the final status");
    }
    tracing::info!(session_id = %job.session_id, status = %status, fields = anketa.filled(), "final_anketa_saved");
    SessionOutcome {
        session_id: job.session_id,
        room: job.room,
        status,
        failure,
        dialogue: job.dialogue,
        anketa,
        started_at: job.started_at,
        ended_at,
        turn_latency_ms: job.turn_latency_ms,
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
        let mut state = ConsultationState {
            args,
            path,
            session,
            realtime: None,
            realtime_generation: 0,
            realtime_connected_at: None,
            realtime_ready_once: false,
            persistence: None,
            extraction: None,
            restarts: Default::default(),
            planned_restart: false,
            slots: VecDeque::new(),
            seen_user_items: HashSet::new(),
            agent: None,
            response_active: false,
            goodbye_requested: false,
            goodbye_spoken: false,
            goodbye_deadline: None,
            persisted_upto: 0,
            caller_gap: VecDeque::new(),
            caller_gap_samples: 0,
            caller_dropped_samples: 0,
            speech_stopped_at: None,
            awaiting_first_audio: false,
            turn_latency_ms: Vec::new(),
            finalizing: false,
        };
        state.args.telemetry.actor_started(&state.path, "consultation");
        state.args.telemetry.consultation_upsert(state.view());
        Self::spawn_child(&myself, &mut state, ChildKind::Persistence).await?;
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
        Self::spawn_child(&myself, &mut state, ChildKind::Realtime).await?;
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
            ConsultationMsg::CallerAudio(pcm) => {
                if state.finalizing {
                    return Ok(());
                }
                if state.realtime_ready() {
                    state.send_realtime(RealtimeCommand::AppendAudio(pcm));
                } else {
                    state.hold_caller_audio(pcm);
                }
            }
            ConsultationMsg::RealtimeConnecting { generation, attempt } => {
                // A late notice from an actor that has already failed must not hide the restart.
                if generation == state.realtime_generation && state.realtime.is_some() {
                    let link = if state.realtime_ready_once {
                        RealtimeLinkState::Reconnecting { attempt }
                    } else {
                        RealtimeLinkState::Connecting { attempt }
                    };
                    state.set_link(link);
                }
            }
            ConsultationMsg::RealtimeReady { generation } => {
                if generation != state.realtime_generation || state.finalizing {
                    return Ok(());
                }
                state.realtime_connected_at = Some(Instant::now());
                state.set_link(RealtimeLinkState::Connected);
                state.args.telemetry.actor_status(&state.child_path(ChildKind::Realtime), ActorStatus::Running);
                // Audio held during the gap goes out after the replay, oldest first.
                let held: Vec<_> = state.caller_gap.drain(..).collect();
                state.caller_gap_samples = 0;
                for pcm in held {
                    state.send_realtime(RealtimeCommand::AppendAudio(pcm));
                }
                if !state.realtime_ready_once {
                    state.realtime_ready_once = true;
                    // The agent greets first (the entrypoint's step 5).
                    state.send_realtime(RealtimeCommand::CreateResponse { instructions: Some(state.args.settings.greeting_instruction.clone()) });
                    state.set_status(SessionStatus::Active);
                    let _ = state.args.lifecycle.send(Lifecycle::Ready);
                } else {
                    tracing::info!(session_id = %state.session.session_id, generation, replayed = state.session.dialogue.len(), "realtime reconnected; dialogue replayed");
                    state.args.telemetry.event("reconnect", state.child_path(ChildKind::Realtime), format!("generation {generation}, {} messages replayed", state.session.dialogue.len()));
                }
            }
            ConsultationMsg::Realtime { generation, event } => {
                // Supervision events overtake mailbox messages: once the child is known to have
                // failed, its events still queued here are stale (the turn was already closed).
                if generation == state.realtime_generation && state.realtime.is_some() && !state.finalizing {
                    Self::on_realtime_event(&myself, state, event);
                }
            }
            ConsultationMsg::Persisted { seq } => {
                state.persisted_upto = state.persisted_upto.max(seq);
                let interval = state.args.settings.extraction_interval.max(1);
                state.args.telemetry.consultation_update(&state.session.session_id, |v| {
                    v.persistence_backlog = v.persistence_backlog.saturating_sub(1);
                });
                if seq as usize % interval == 0 && !state.finalizing {
                    if let Some(ex) = &state.extraction {
                        let dialogue: Arc<[DialogueMessage]> = state.session.dialogue[..seq as usize].to_vec().into();
                        let _ = ex.send_message(ExtractionMsg::Extract(ExtractionRequest { dialogue, previous: state.session.anketa.clone() }));
                    }
                }
            }
            ConsultationMsg::AnketaExtracted { anketa, message_count } => {
                state.session.anketa.merge(&anketa);
                state.session.anketa_at_message = message_count;
                let filled = state.session.anketa.filled();
                tracing::info!(session_id = %state.session.session_id, message_count, fields_filled = filled, "periodic_anketa_extracted");
                state.args.telemetry.consultation_update(&state.session.session_id, |v| {
                    v.anketa_filled = filled;
                    v.last_extraction_at_message = Some(message_count);
                    v.extractions += 1;
                });
                if let Some(p) = &state.persistence {
                    let record = AnketaRecord { anketa: state.session.anketa.clone(), message_count, is_final: false, at: Utc::now() };
                    let _ = p.send_message(PersistenceMsg::SaveAnketa(record));
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
                let before = state.slots.len();
                state.slots.retain(|s| !matches!(s, Slot::PendingUser { item_id: id } if *id == item_id));
                if state.slots.len() != before {
                    tracing::warn!(session_id = %state.session.session_id, %item_id, "no transcript for a caller turn; moving on (a late one is still kept)");
                    state.flush_slots();
                }
            }
            ConsultationMsg::Tick => {
                if !state.finalizing {
                    Self::on_tick(&myself, state);
                }
            }
            ConsultationMsg::End(reason) => {
                tracing::info!(session_id = %state.session.session_id, reason = %reason.describe(), "consultation ending");
                Self::begin_finalize(&myself, state, reason);
            }
            ConsultationMsg::ExtractNow => {
                if let Some(ex) = &state.extraction {
                    let dialogue: Arc<[DialogueMessage]> = state.session.dialogue.clone().into();
                    let _ = ex.send_message(ExtractionMsg::Extract(ExtractionRequest { dialogue, previous: state.session.anketa.clone() }));
                }
            }
            ConsultationMsg::ForceReconnect => {
                if let Some(rt) = state.realtime.take() {
                    state.planned_restart = true;
                    state.realtime_connected_at = None;
                    rt.stop(Some("operator forced reconnect".into()));
                }
            }
            ConsultationMsg::FinalizeDone(outcome) => {
                state.session.status = outcome.status;
                state.args.telemetry.event("status", state.path.clone(), format!("{} ({} messages)", outcome.status, outcome.dialogue.len()));
                let _ = state.args.lifecycle.send(Lifecycle::Finished(outcome));
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
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(kind) = Self::which_child(state, &cell) else { return Ok(()) };
                let fatal = error.downcast_ref::<RealtimeFailure>().is_some_and(RealtimeFailure::is_fatal);
                Self::on_child_failure(&myself, state, kind, error.to_string(), fatal);
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // A planned stop (recycle, forced reconnect) has already cleared the child's ref.
                if Self::which_child(state, &cell).is_none() && state.planned_restart && state.realtime.is_none() && !state.finalizing {
                    state.planned_restart = false;
                    tracing::info!(session_id = %state.session.session_id, reason = reason.as_deref().unwrap_or(""), "restarting realtime (planned)");
                    state.set_link(RealtimeLinkState::Reconnecting { attempt: 1 });
                    Self::spawn_child(&myself, state, ChildKind::Realtime).await?;
                } else if let Some(kind) = Self::which_child(state, &cell) {
                    if !state.finalizing {
                        Self::on_child_failure(&myself, state, kind, format!("stopped unexpectedly: {}", reason.unwrap_or_default()), false);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::heard_prefix;

    #[test]
    fn heard_prefix_cuts_at_word_boundary() {
        let t = "Здравствуйте, меня зовут Анна, чем могу помочь?";
        assert_eq!(heard_prefix(t, 0, 1000), "");
        assert_eq!(heard_prefix(t, 1000, 1000), t);
        let half = heard_prefix(t, 500, 1000);
        assert!(t.starts_with(&half) && half.len() < t.len() && !half.ends_with(' '));
        assert!(half.split_whitespace().all(|w| t.split_whitespace().any(|x| x == w)));
    }
}
