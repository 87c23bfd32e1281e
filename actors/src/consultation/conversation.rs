//! What the call does: realtime events into turns and speech, barge-in, the timer (wrap-up,
//! goodbye, time limit), the proactive realtime recycle, and the start of finalization.

use tokio::time::Instant;

use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use super::{ChildKind, ConsultationActor, ConsultationMsg, ConsultationState, EndReason, FinalizeJob, Lifecycle};
use crate::finalize::finalize_consultation;
use crate::persistence::PersistenceMsg;
use crate::ports::{AgentState, RealtimeCommand, RealtimeEvent, ResponseStatus, RoomEvent};
use crate::telemetry::{ActorStatus, RealtimeLinkState};
use crate::session::{SessionStatus, TimerPhase};
use crate::turns::FinalText;

/// Failed responses asked again in a row, and the pause before the first retry.
const RESPONSE_RETRIES: u32 = 2;
const RESPONSE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often an answer that ended while still playing is looked at until it has been heard.
pub(super) const HEARD_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl ConsultationState {
    /// Final messages join the dialogue, the console, the room's transcript and the store.
    pub(super) fn store_final(&mut self, ready: Vec<FinalText>) {
        for FinalText { role, text, interrupted } in ready {
            let message = self.session.push_message(role, text, interrupted);
            self.args.telemetry.consultation_update(&self.session.session_id, |v| {
                v.push_line(message.seq, message.role, &message.text);
                v.persistence_backlog += 1;
            });
            if message.role.is_spoken() {
                self.audio_out.transcript(&message);
            }
            if let Some(p) = &self.persistence {
                if let Err(e) = p.send_message(PersistenceMsg::Append(message)) {
                    // Kept in the dialogue: the next Persistence (or finalize) writes it.
                    tracing::warn!(session_id = %self.session.session_id, error = %e, "persistence gone; message kept for its restart");
                }
            }
        }
    }
}

impl ConsultationState {
    /// Asks again for the response that failed when `started` responses had started. Not if
    /// another has started since, nor while the caller speaks: the caller was (or is about to
    /// be) answered, and a second answer would repeat it or talk over them.
    pub(super) fn retry_response(&mut self, started: u64) {
        if self.finalizing || self.response_active || self.is_ending() || self.caller_speaking || self.responses_started != started {
            return;
        }
        // Before the greeting there is nothing to answer yet: ask for the greeting again.
        let greeted = self.session.dialogue.iter().any(|m| m.role == crate::dialogue::Role::Assistant);
        let instructions = (!greeted).then(|| self.args.settings.greeting_instruction.clone());
        self.send_realtime(RealtimeCommand::CreateResponse { instructions });
    }
}

impl ConsultationActor {
    pub(super) fn on_realtime_event(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, event: RealtimeEvent) {
        if matches!(event, RealtimeEvent::SpeechStarted { .. } | RealtimeEvent::SpeechStopped { .. } | RealtimeEvent::ResponseDone { .. }) {
            // Someone spoke: the caller's silence counts from here (see `silence_tick`).
            state.quiet_since = Some(Instant::now());
        }
        match event {
            RealtimeEvent::SessionReady { .. } => {}
            RealtimeEvent::SpeechStarted { .. } => {
                // Barge-in: stop the agent at once and tell the model what was really heard.
                if let Some(played) = state.audio_out.interrupt() {
                    if let Some(heard) = state.turns.agent_interrupted(&played) {
                        state.args.telemetry.metrics().barge_in();
                        state.send_realtime(RealtimeCommand::Truncate { item_id: played.item_id.clone(), content_index: 0, audio_end_ms: heard });
                        tracing::info!(session_id = %state.session.session_id, item_id = %played.item_id, played_ms = heard, "barge-in: agent interrupted");
                    }
                }
                // An ended answer, heard out or just cut, is final before the caller's turn.
                let ready = state.turns.agent_heard();
                state.store_final(ready);
                state.speech_stopped_at = None;
                state.caller_speaking = true;
                state.silence_prompted = false;
                state.audio_out.agent_state(AgentState::Listening);
            }
            RealtimeEvent::SpeechStopped { .. } => {
                state.caller_speaking = false;
                state.speech_stopped_at = Some(Instant::now());
                state.awaiting_first_audio = true;
                state.audio_out.agent_state(AgentState::Thinking);
            }
            RealtimeEvent::UserItemCommitted { item_id } => {
                let ready = state.turns.agent_heard();
                state.store_final(ready);
                if state.turns.user_committed(&item_id) {
                    let wait = state.args.settings.transcript_wait;
                    myself.send_after(wait, move || ConsultationMsg::TranscriptTimeout { item_id });
                }
            }
            RealtimeEvent::UserTranscript { item_id, text } => {
                let ready = state.turns.user_transcript(&item_id, Some(&text));
                state.store_final(ready);
            }
            RealtimeEvent::UserTranscriptFailed { item_id, reason } => {
                tracing::warn!(session_id = %state.session.session_id, %item_id, %reason, "caller transcription failed");
                let ready = state.turns.user_transcript(&item_id, None);
                state.store_final(ready);
            }
            RealtimeEvent::ResponseStarted { .. } => {
                state.responses_started += 1;
                state.response_active = true;
                state.response_audio = false;
                state.audio_out.agent_state(AgentState::Thinking);
            }
            RealtimeEvent::AgentItemStarted { item_id, .. } => {
                let ready = state.turns.agent_item_started(&item_id);
                state.store_final(ready);
            }
            RealtimeEvent::AgentAudio { item_id, pcm, received } => {
                let (ready, play) = state.turns.agent_audio(&item_id, pcm.len());
                state.store_final(ready);
                if !play {
                    return; // interrupted: late audio of a cut answer is not played
                }
                if state.awaiting_first_audio {
                    state.awaiting_first_audio = false;
                    if let Some(stopped) = state.speech_stopped_at.take() {
                        let ms = stopped.elapsed().as_millis() as u64;
                        state.turn_latency_ms.push(ms);
                        state.args.telemetry.consultation_update(&state.session.session_id, |v| v.push_latency(ms));
                    }
                }
                state.response_audio = true;
                // The output measures the worker's share of the latency up to the first packet.
                state.audio_out.play_received(&item_id, pcm, received);
            }
            RealtimeEvent::AgentTranscriptDelta { item_id, delta } => {
                let ready = state.turns.agent_transcript_delta(&item_id, &delta);
                state.store_final(ready);
            }
            RealtimeEvent::AgentTranscriptDone { item_id, text } => state.turns.agent_transcript_done(&item_id, &text),
            RealtimeEvent::ToolCall(call) => state.pending_tool_calls.push(call),
            RealtimeEvent::ResponseDone { status, reason, usage, .. } => {
                state.response_active = false;
                // What is still queued plays out as `speaking`; then the agent listens.
                state.audio_out.agent_state(AgentState::Listening);
                if let Some(usage) = usage {
                    state.args.telemetry.consultation_update(&state.session.session_id, |v| v.usage.add(&usage));
                }
                if status == ResponseStatus::Failed {
                    tracing::warn!(session_id = %state.session.session_id, reason = reason.as_deref().unwrap_or(""), "realtime response failed");
                    // Nothing was said (a rate limit mid-session): ask again rather than leave the
                    // caller waiting, a couple of times with a growing pause.
                    if !state.response_audio && !state.is_ending() && state.response_retries < RESPONSE_RETRIES {
                        state.response_retries += 1;
                        let delay = RESPONSE_RETRY_DELAY * state.response_retries;
                        tracing::info!(session_id = %state.session.session_id, attempt = state.response_retries, ?delay, "asking for the failed response again");
                        let started = state.responses_started;
                        myself.send_after(delay, move || ConsultationMsg::RetryResponse { started });
                    }
                } else if status == ResponseStatus::Completed {
                    state.response_retries = 0;
                }
                // The model speaks faster than the caller hears: an answer still playing is final
                // once heard (a barge-in may cut it yet). Tool entries follow their answer at once.
                let playing = state.audio_out.is_playing() && state.pending_tool_calls.is_empty();
                let ready = state.turns.agent_response_done(status, playing);
                state.store_final(ready);
                if state.turns.awaiting_playout() {
                    myself.send_after(HEARD_POLL, || ConsultationMsg::CheckHeard);
                }
                // A goodbye said before this answer's tool call stays the goodbye.
                let ending_before = state.is_ending();
                Self::on_tool_calls(myself, state);
                if ending_before {
                    Self::ending_on_response_done(myself, state);
                }
                state.flush_instructions();
            }
            RealtimeEvent::Error { code, message } => {
                tracing::warn!(session_id = %state.session.session_id, code = code.as_deref().unwrap_or(""), %message, "realtime error event");
                state.args.telemetry.event("realtime_error", state.child_path(ChildKind::Realtime), format!("{}: {message}", code.unwrap_or_default()));
            }
            RealtimeEvent::Disconnected { .. } => {} // handled by the Realtime actor failing
        }
    }

    /// An answer that ended while playing: final once it is no longer heard.
    pub(super) fn check_heard(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) {
        if state.finalizing || !state.turns.awaiting_playout() {
            return;
        }
        if state.audio_out.is_playing() {
            myself.send_after(HEARD_POLL, || ConsultationMsg::CheckHeard);
        } else {
            let ready = state.turns.agent_heard();
            state.store_final(ready);
        }
    }

    pub(super) fn on_tick(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) {
        let (backlog, queued) = (state.room.backlog.load(std::sync::atomic::Ordering::Relaxed), state.audio_out.queued_ms());
        state.args.telemetry.consultation_update(&state.session.session_id, |v| {
            v.caller_backlog_frames = backlog;
            v.agent_queue_ms = queued;
        });
        let settings = state.args.settings.clone();
        let elapsed = state.session.elapsed();
        let wrapup_at = settings.max_duration.saturating_sub(settings.wrapup_before);
        if state.session.timer == TimerPhase::Running && elapsed >= wrapup_at && elapsed < settings.max_duration {
            state.session.timer = TimerPhase::WrappingUp;
            tracing::info!(session_id = %state.session.session_id, remaining = ?state.session.remaining(), "wrap-up instruction sent");
            state.instructions_changed();
        }
        if state.session.timer != TimerPhase::Expired && elapsed >= settings.max_duration {
            state.session.timer = TimerPhase::Expired;
            tracing::info!(session_id = %state.session.session_id, "time limit reached; saying goodbye");
            Self::begin_ending(myself, state, EndReason::TimeLimit, settings.goodbye_instruction.clone(), false);
        }
        Self::silence_tick(myself, state);
        Self::check_ended(myself, state);
        let ends_at = state.session.started_at + state.session.max_duration;
        state.audio_out.call_status(state.session.status, ends_at);
        if state.finalizing {
            return;
        }
        state.publish_caller_buffer();
    }

    pub(super) fn begin_finalize(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, reason: EndReason) {
        if state.finalizing {
            return;
        }
        tracing::info!(session_id = %state.session.session_id, reason = %reason.describe(), "consultation ending");
        state.finalizing = true;
        // What is in flight becomes final now: the caller heard what was played.
        if state.audio_out.is_playing() {
            if let Some(played) = state.audio_out.interrupt() {
                state.turns.agent_interrupted(&played);
            }
        }
        let mut ready = state.turns.finish_agent(Some(ResponseStatus::Incomplete));
        // Caller turns still waiting for a transcript are given up.
        ready.extend(state.turns.close());
        state.store_final(ready);
        state.stop_standby("finalizing");
        let realtime_up = state.realtime.audio.is_some();
        for (kind, actor) in [
            (ChildKind::Realtime, state.realtime.actor.take().map(|a| a.get_cell())),
            (ChildKind::Extraction, state.extraction.take().map(|a| a.get_cell())),
            // Leaving the room ends the job's media at once; the caller hears nothing more.
            (ChildKind::Room, state.room.actor.take()),
        ] {
            let Some(cell) = actor else { continue };
            // Commands already sent to a live session (a tool's output, a truncate) reach its
            // socket before it closes: a stop would overtake them in the mailbox.
            let drained = kind == ChildKind::Realtime && realtime_up && cell.drain().is_ok();
            if !drained {
                cell.stop(Some(format!("finalizing ({})", kind.name())));
            }
        }
        state.realtime.audio = None;
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
            provenance: state.session.provenance.clone(),
            fields_timeout: state.args.settings.final_extraction_timeout,
            store: state.args.ports.store.clone(),
            extractor: state.args.ports.extractor.clone(),
            persistence: state.persistence.clone(),
            unsaved_anketas: state.unsaved_anketas.clone(),
            turn_latency_ms: state.turn_latency_ms.clone(),
        };
        let me = myself.clone();
        state.args.tasks.spawn(async move {
            let outcome = finalize_consultation(job).await;
            if me.send_message(ConsultationMsg::FinalizeDone(Box::new(outcome))).is_err() {
                tracing::error!("consultation stopped before its finalization finished");
            }
        });
    }
}

impl ConsultationActor {
    pub(super) async fn on_room_event(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, event: RoomEvent) -> Result<(), ActorProcessingErr> {
        match event {
            RoomEvent::CallerAudio { pcm, heard } => state.caller_audio(pcm, Some(heard)),
            RoomEvent::Joined { identity } => {
                let path = state.child_path(ChildKind::Room);
                state.args.telemetry.actor_status(&path, ActorStatus::Running);
                if state.room.joined_once {
                    tracing::info!(session_id = %state.session.session_id, %identity, "room rejoined");
                    state.args.telemetry.event("room", path, format!("rejoined as {identity}"));
                    return Ok(());
                }
                state.room.joined_once = true;
                state.args.telemetry.event("room", path, format!("joined as {identity}"));
                state.args.lifecycle.send_replace(Lifecycle::Joined);
                if !state.finalizing && state.realtime.actor.is_none() {
                    Self::spawn_child(myself, state, ChildKind::Realtime).await?;
                }
            }
            RoomEvent::Ended(end) => {
                let reason = match end {
                    crate::ports::RoomEnd::CallerLeft => EndReason::CallerLeft,
                    crate::ports::RoomEnd::RoomClosed(why) => EndReason::RoomClosed(why),
                };
                Self::begin_finalize(myself, state, reason);
            }
        }
        Ok(())
    }

    pub(super) fn on_realtime_ready(state: &mut ConsultationState, generation: u64, audio: mpsc::Sender<RealtimeCommand>) {
        state.realtime.connected_at = Some(Instant::now());
        state.realtime.audio = Some(audio);
        state.set_link(RealtimeLinkState::Connected);
        state.args.telemetry.actor_status(&state.child_path(ChildKind::Realtime), ActorStatus::Running);
        // Audio held during the gap goes out after the replay, oldest first.
        for pcm in state.caller_gap.drain() {
            state.caller_audio(pcm, None);
        }
        state.publish_caller_buffer();
        if !state.realtime.ready_once {
            state.realtime.ready_once = true;
            // The agent greets first (the entrypoint's step 5); a resumed call is not greeted
            // again: the agent says the line dropped and goes on.
            let first = match &state.resumed_from {
                Some(_) if !state.session.dialogue.is_empty() => state.args.settings.resume_instruction.clone(),
                _ => state.args.settings.greeting_instruction.clone(),
            };
            state.send_realtime(RealtimeCommand::CreateResponse { instructions: Some(first) });
            state.set_status(SessionStatus::Active);
            state.args.lifecycle.send_replace(Lifecycle::Ready);
        } else {
            let replayed = state.session.dialogue.len();
            tracing::info!(session_id = %state.session.session_id, generation, replayed, "realtime reconnected; dialogue replayed");
            state.args.telemetry.event("reconnect", state.child_path(ChildKind::Realtime), format!("generation {generation}, {replayed} messages replayed"));
        }
    }

    /// Stops the Realtime child so that it is restarted at once without counting a failure.
    pub(super) fn stop_realtime_for_restart(state: &mut ConsultationState, why: &str) {
        if let Some(rt) = state.realtime.actor.take() {
            state.realtime.planned_restart = true;
            state.realtime.connected_at = None;
            state.realtime.audio = None;
            rt.stop(Some(why.into()));
        }
    }
}
