//! The Consultation as a supervisor: spawning its children linked, telling them apart in
//! supervision events, and deciding what a failure means (restart with backoff inside the
//! intensity window, or give up with the cause).

use std::sync::Arc;

use chrono::Utc;
use tokio::time::Instant;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

use super::{CallMedia, ChildKind, ConsultationActor, ConsultationMsg, ConsultationState, EndReason};
use crate::caller_audio::RoomInbox;
use crate::extraction::{ExtractionActor, ExtractionArgs};
use crate::persistence::{PersistenceActor, PersistenceArgs, PersistenceMsg};
use crate::ports::RealtimeSetup;
use crate::realtime::{RealtimeActor, RealtimeArgs};
use crate::restart::RestartDecision;
use crate::telemetry::RealtimeLinkState;

impl ConsultationState {
    /// What a new realtime session is told: the dialogue, and the answer the caller is still
    /// hearing from the session that failed (not stored yet: it may still be cut).
    fn replay_history(&self) -> Vec<crate::dialogue::DialogueMessage> {
        let mut history = self.session.dialogue.clone();
        if let Some(answer) = self.turns.playing_out() {
            let seq = history.last().map_or(0, |m| m.seq) + 1;
            history.push(crate::dialogue::DialogueMessage { seq, role: answer.role, text: answer.text, at: Utc::now(), interrupted: answer.interrupted });
        }
        history
    }
}

impl ConsultationActor {
    pub(super) async fn spawn_child(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, kind: ChildKind) -> Result<(), ActorProcessingErr> {
        let cell: ActorCell = myself.get_cell();
        match kind {
            ChildKind::Room => {
                let CallMedia::Room(connector) = &state.args.media else { return Ok(()) };
                state.room.generation += 1;
                let inbox = RoomInbox::new(myself.clone(), state.room.generation, state.room.backlog.clone());
                // The connector returns at once: the Room joins from its own mailbox.
                match connector.spawn_room(cell, Arc::new(inbox)).await {
                    Ok(actor) => state.room.actor = Some(actor),
                    Err(failure) => {
                        let fatal = failure.is_fatal();
                        Self::on_child_failure(myself, state, kind, failure.to_string(), fatal);
                        return Ok(());
                    }
                }
            }
            ChildKind::Realtime => {
                state.realtime.last_generation += 1;
                state.realtime.generation = state.realtime.last_generation;
                state.realtime.connected_at = None;
                state.realtime.audio = None;
                let setup = RealtimeSetup {
                    session_id: state.session.session_id.clone(),
                    instructions: state.current_instructions(),
                    history: state.replay_history(),
                    tools: state.tools(),
                };
                state.instructions_sent = Some(setup.instructions.clone());
                state.instructions_pending = false;
                let args = RealtimeArgs {
                    connector: state.args.ports.connector.clone(),
                    setup,
                    policy: state.args.settings.connect,
                    parent: myself.clone(),
                    generation: state.realtime.generation,
                };
                let (actor, _) = Actor::spawn_linked(None, RealtimeActor, args, cell).await?;
                state.realtime.actor = Some(actor);
            }
            ChildKind::Persistence => {
                let args = PersistenceArgs {
                    session_id: state.session.session_id.clone(),
                    store: state.args.ports.store.clone(),
                    parent: myself.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, PersistenceActor, args, cell).await?;
                // Re-send what the previous instance did not confirm (writes are idempotent):
                // messages, the status, and periodic anketas, in that order.
                for message in state.session.dialogue.iter().filter(|m| m.seq > state.persisted_upto) {
                    actor.send_message(PersistenceMsg::Append(message.clone()))?;
                }
                if state.session.status != crate::session::SessionStatus::Starting {
                    actor.send_message(PersistenceMsg::SetStatus { status: state.session.status, failure: None, ended_at: None })?;
                }
                for record in &state.unsaved_anketas {
                    actor.send_message(PersistenceMsg::SaveAnketa(record.clone()))?;
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

    pub(super) fn which_child(state: &ConsultationState, cell: &ActorCell) -> Option<ChildKind> {
        let id = cell.get_id();
        if state.room.actor.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(ChildKind::Room)
        } else if state.realtime.actor.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(ChildKind::Realtime)
        } else if state.persistence.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(ChildKind::Persistence)
        } else if state.extraction.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(ChildKind::Extraction)
        } else {
            None
        }
    }

    pub(super) fn forget_child(state: &mut ConsultationState, kind: ChildKind) {
        match kind {
            ChildKind::Room => state.room.actor = None,
            ChildKind::Realtime => {
                state.realtime.actor = None;
                state.realtime.connected_at = None;
                state.realtime.audio = None;
            }
            ChildKind::Persistence => state.persistence = None,
            ChildKind::Extraction => state.extraction = None,
        }
    }

    /// The Realtime child `id` failed, and every event it sent before is handled: unless it is no
    /// longer the current session (a standby took over, the call ended), restart or give up.
    pub(super) fn on_realtime_failed(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, id: ractor::ActorId, reason: String, fatal: bool) {
        if state.realtime.actor.as_ref().is_some_and(|a| a.get_id() == id) {
            Self::on_child_failure(myself, state, ChildKind::Realtime, reason, fatal);
        }
    }

    /// A child failed: restart it with backoff, or give up past the intensity window.
    pub(super) fn on_child_failure(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, kind: ChildKind, reason: String, fatal: bool) {
        Self::forget_child(state, kind);
        if state.finalizing {
            return;
        }
        // A room never joined is the entrypoint's step 3 failing: the job fails with the cause.
        let fatal = fatal || (kind == ChildKind::Room && !state.room.joined_once);
        let path = state.child_path(kind);
        if kind == ChildKind::Realtime {
            // Whatever the caller heard of an answer cut by the drop stays in the dialogue.
            state.caller_speaking = false;
            let ready = state.turns.realtime_lost(state.audio_out.is_playing());
            state.store_final(ready);
            if state.turns.awaiting_playout() {
                // What was received still plays: stored once heard out, or as far as heard.
                myself.send_after(super::conversation::HEARD_POLL, || ConsultationMsg::CheckHeard);
            }
            state.response_active = false;
            // A call whose answer never finished belongs to the lost session: the next one
            // never heard of it (and it was not stored, so it is not replayed).
            state.pending_tool_calls.clear();
            state.args.telemetry.consultation_update(&state.session.session_id, |v| {
                v.realtime.last_close_cause = Some(reason.clone());
            });
            if !fatal && Self::switch_to_standby(state) {
                // The session ended (its limit, a drop) with a current standby: it takes over.
                tracing::warn!(session_id = %state.session.session_id, %reason, "realtime session ended; the standby took over");
                return;
            }
        }
        if fatal {
            state.args.telemetry.actor_failed(&path, &reason, 0, false);
            tracing::error!(session_id = %state.session.session_id, child = kind.name(), %reason, "child failed with a fatal error");
            Self::end_soon(myself, state, EndReason::Failed(format!("{}: {reason}", kind.name())));
            return;
        }
        let policy = state.args.settings.restart;
        let decision = state.restarts[kind as usize].on_failure(&policy, Instant::now(), reason.clone());
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
                match kind {
                    ChildKind::Extraction => {
                        // The anketa is a by-product: the call goes on without periodic extraction.
                        tracing::error!(session_id = %state.session.session_id, %reason, "extraction keeps failing; periodic extraction disabled");
                    }
                    ChildKind::Persistence => {
                        // A full or failing disk must not cut the call: the dialogue is kept in
                        // memory, re-sent when storage works again, and written by finalize.
                        let retry = policy.backoff_max;
                        let unsaved = state.session.dialogue.len() as u32 - state.persisted_upto;
                        tracing::error!(session_id = %state.session.session_id, %reason, ?retry, unsaved, "storage keeps failing; dialogue kept in memory, retrying");
                        myself.send_after(retry, move || ConsultationMsg::RestartChild(kind));
                    }
                    ChildKind::Realtime | ChildKind::Room => {
                        if kind == ChildKind::Realtime {
                            state.set_link(RealtimeLinkState::Down);
                        }
                        let why = format!("{} failed {} times within {:?}; last: {reason}", kind.name(), restarts_in_window + 1, policy.window);
                        Self::end_soon(myself, state, EndReason::Failed(why));
                    }
                }
            }
        }
    }

    fn end_soon(myself: &ActorRef<ConsultationMsg>, state: &ConsultationState, reason: EndReason) {
        if myself.send_message(ConsultationMsg::End(reason)).is_err() {
            tracing::error!(session_id = %state.session.session_id, "consultation mailbox closed while ending");
        }
    }
}
