//! How a call comes to its end besides the caller hanging up: the time limit, the model's
//! `end_consultation` tool when the caller says goodbye, and a caller who falls silent. Each
//! time the agent says goodbye, and the consultation is finalized as soon as the goodbye has
//! played out (checked every 50 ms, not on the 1 s timer), or at the grace deadline if the
//! goodbye never completes.

use std::time::Duration;

use ractor::ActorRef;
use serde_json::json;
use tokio::time::Instant;

use super::{ConsultationActor, ConsultationMsg, ConsultationState, EndReason};
use crate::dialogue::{ToolEntry, ToolResult};
use crate::ports::{RealtimeCommand, ToolSpec};
use crate::turns::FinalText;

/// The function tool the model calls when the caller says goodbye.
pub const END_CONSULTATION: &str = "end_consultation";

/// How often a finished goodbye is checked for having played out.
const PLAYOUT_POLL: Duration = Duration::from_millis(50);

enum Goodbye {
    /// The answer in progress was cut; the goodbye is asked for once it reports done.
    AfterResponse,
    Requested,
    /// Said (or failed): the call ends once its audio has played out.
    Said,
}

pub(super) struct Ending {
    reason: EndReason,
    instruction: String,
    goodbye: Goodbye,
    deadline: Instant,
}

impl ConsultationState {
    /// The function tools declared in every realtime session of this call.
    pub(super) fn tools(&self) -> Vec<ToolSpec> {
        if !self.args.settings.ending.end_tool {
            return Vec::new();
        }
        vec![ToolSpec {
            name: END_CONSULTATION.into(),
            description: "Заверши консультацию, когда клиент прощается или просит закончить разговор. \
                          Сначала коротко попрощайся с клиентом, затем вызови эту функцию."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": { "reason": { "type": "string", "description": "Почему разговор заканчивается, в двух-трёх словах" } },
                "required": [],
            }),
        }]
    }

    pub(super) fn is_ending(&self) -> bool {
        self.ending.is_some()
    }

    fn ask_goodbye(&self, instruction: &str) {
        self.send_realtime(RealtimeCommand::CreateResponse { instructions: Some(instruction.to_owned()) });
    }
}

impl ConsultationActor {
    /// Starts the end of the call. `said`: the answer that just finished was the goodbye.
    pub(super) fn begin_ending(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState, reason: EndReason, instruction: String, said: bool) {
        if state.ending.is_some() || state.finalizing {
            return;
        }
        tracing::info!(session_id = %state.session.session_id, reason = %reason.describe(), "ending the consultation with a goodbye");
        let goodbye = if said {
            Goodbye::Said
        } else if state.response_active {
            // A goodbye cannot be asked for while an answer runs: cut it (the caller hears the
            // goodbye instead of the rest of it).
            if let Some(played) = state.audio_out.interrupt() {
                state.turns.agent_interrupted(&played);
            }
            state.send_realtime(RealtimeCommand::CancelResponse);
            Goodbye::AfterResponse
        } else {
            state.ask_goodbye(&instruction);
            Goodbye::Requested
        };
        let deadline = Instant::now() + state.args.settings.goodbye_grace;
        state.ending = Some(Ending { reason, instruction, goodbye, deadline });
        Self::check_ended(myself, state);
    }

    /// At `response.done`: the next step of a goodbye in progress.
    pub(super) fn ending_on_response_done(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) {
        let Some(ending) = state.ending.as_mut() else { return };
        match ending.goodbye {
            Goodbye::AfterResponse => {
                ending.goodbye = Goodbye::Requested;
                let instruction = ending.instruction.clone();
                state.ask_goodbye(&instruction);
            }
            Goodbye::Requested => {
                ending.goodbye = Goodbye::Said;
                Self::check_ended(myself, state);
            }
            Goodbye::Said => Self::check_ended(myself, state),
        }
    }

    /// Ends the call once the goodbye has been heard, or at its deadline; else looks again soon.
    pub(super) fn check_ended(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) {
        let Some(ending) = state.ending.as_ref() else { return };
        if state.finalizing {
            return;
        }
        let said = matches!(ending.goodbye, Goodbye::Said);
        if said && !state.audio_out.is_playing() {
            let reason = ending.reason.clone();
            Self::begin_finalize(myself, state, reason);
        } else if Instant::now() >= ending.deadline {
            tracing::warn!(session_id = %state.session.session_id, said, "the goodbye did not finish in time; ending anyway");
            let reason = ending.reason.clone();
            Self::begin_finalize(myself, state, reason);
        } else if said {
            myself.send_after(PLAYOUT_POLL, || ConsultationMsg::CheckEnded);
        }
    }

    /// The function calls of the answer that just finished: stored as tool entries, answered
    /// with `function_call_output`; `end_consultation` ends the call after the goodbye.
    pub(super) fn on_tool_calls(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) {
        for call in std::mem::take(&mut state.pending_tool_calls) {
            let ends = call.name == END_CONSULTATION && state.args.settings.ending.end_tool;
            let output = if ends {
                json!({ "status": "ending", "detail": "the call ends once your goodbye has been heard" })
            } else {
                json!({ "error": format!("unknown function `{}`", call.name) })
            };
            tracing::info!(session_id = %state.session.session_id, name = %call.name, call_id = %call.call_id, arguments = %call.arguments, "realtime function call");
            let result = ToolResult { call_id: call.call_id.clone(), output: output.to_string() };
            let entries = [ToolEntry::Call(call), ToolEntry::Result(result.clone())];
            state.store_final(entries.iter().map(|e| FinalText { role: e.role(), text: e.to_text(), interrupted: false }).collect());
            state.send_realtime(RealtimeCommand::ToolResult(result));
            if ends {
                // The model usually says goodbye and then calls the tool in the same answer.
                let said = state.response_audio;
                let instruction = state.args.settings.ending.tool_goodbye_instruction.clone();
                Self::begin_ending(myself, state, EndReason::Goodbye, instruction, said);
            }
        }
    }

    /// Every tick: a caller silent while the agent is idle is asked once whether they are still
    /// there; after a second period of silence the agent says goodbye.
    pub(super) fn silence_tick(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) {
        let Some(prompt_after) = state.args.settings.ending.silence_prompt_after else { return };
        // Only the caller's silence counts: not before the greeting, not while the link is down.
        if state.ending.is_some() || !state.realtime.ready_once || state.realtime.audio.is_none() {
            state.quiet_since = None;
            return;
        }
        let now = Instant::now();
        let busy = state.caller_speaking || state.response_active || state.audio_out.is_playing() || !state.turns.is_idle();
        if busy {
            state.quiet_since = Some(now);
            return;
        }
        let quiet = now - *state.quiet_since.get_or_insert(now);
        let ending = &state.args.settings.ending;
        if !state.silence_prompted && quiet >= prompt_after {
            state.silence_prompted = true;
            state.quiet_since = Some(now);
            tracing::info!(session_id = %state.session.session_id, quiet = ?quiet, "the caller is silent; asking whether they are still there");
            state.send_realtime(RealtimeCommand::CreateResponse { instructions: Some(ending.silence_prompt_instruction.clone()) });
        } else if state.silence_prompted && quiet >= ending.silence_end_after {
            let instruction = ending.silence_goodbye_instruction.clone();
            Self::begin_ending(myself, state, EndReason::Silence, instruction, false);
        }
    }
}

