//! Operator actions: drain, end a consultation, force a realtime reconnect, extract now, log
//! level. Each one is written to the audit log (target `audit`) and to the telemetry event
//! log with who asked for it.

use std::time::Duration;

use consultant_actors::consultation::{ConsultationMsg, EndReason};
use consultant_actors::handler::ConsultationHandle;
use consultant_actors::supervisor::SupervisorMsg;
use consultant_actors::SessionId;
use serde_json::json;

use super::protocol::{code, frame, Action};
use super::ConsoleControl;

/// How long the supervisor may take to find a consultation.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an `end_consultation` result waits for the finalize (final extraction included).
const FINALIZE_WAIT: Duration = Duration::from_secs(180);

/// The telemetry path audit events are filed under.
pub const AUDIT_PATH: &str = "worker/console";

/// What an action produced for the client.
pub enum Outcome {
    /// Done: a `result` frame.
    Done { ok: bool, message: String, code: Option<&'static str> },
    /// Accepted; the `result` follows later from the returned task.
    Pending { message: String, result: tokio::task::JoinHandle<(bool, String)> },
}

/// Writes the audit line and the audit telemetry event.
pub fn audit(control: &ConsoleControl, who: &str, action: &Action, outcome: &str) {
    let what = action.describe();
    tracing::info!(target: "audit", who, action = action.name(), what = %what, outcome, "console action");
    control.telemetry.event("audit", AUDIT_PATH, format!("{who}: {what} -> {outcome}"));
}

/// Records a refused action (read-only token).
pub fn audit_denied(control: &ConsoleControl, who: &str, action: &Action) {
    let what = action.describe();
    tracing::warn!(target: "audit", who, action = action.name(), what = %what, outcome = "denied", "console action refused: read-only token");
    control.telemetry.event("audit", AUDIT_PATH, format!("{who}: {what} -> denied (read-only token)"));
}

pub async fn perform(control: &ConsoleControl, who: &str, action: &Action) -> Outcome {
    let outcome = run(control, who, action).await;
    let summary = match &outcome {
        Outcome::Done { ok: true, message, .. } => format!("ok: {message}"),
        Outcome::Done { ok: false, message, .. } => format!("failed: {message}"),
        Outcome::Pending { message, .. } => format!("accepted: {message}"),
    };
    audit(control, who, action, &summary);
    outcome
}

fn done(ok: bool, message: impl Into<String>) -> Outcome {
    Outcome::Done { ok, message: message.into(), code: if ok { None } else { Some(code::ACTION_FAILED) } }
}

async fn run(control: &ConsoleControl, who: &str, action: &Action) -> Outcome {
    match action {
        Action::Drain => {
            let _ = control.supervisor.send_message(SupervisorMsg::Drain);
            control.telemetry.worker_update(|w| w.draining = true);
            (control.drain)();
            done(true, "worker draining: no new consultations; running ones continue")
        }
        Action::LogLevel { filter } => match &control.level {
            Some(level) => match level.set(filter) {
                Ok(()) => done(true, format!("log filter is now `{filter}`")),
                Err(e) => done(false, e),
            },
            None => done(false, "this process has no adjustable log level (logging was not initialised by the worker)"),
        },
        Action::EndConsultation { session_id } | Action::ForceReconnect { session_id } | Action::ExtractNow { session_id } => {
            let handle = match find(control, session_id).await {
                Ok(h) => h,
                Err(outcome) => return outcome,
            };
            match action {
                Action::ForceReconnect { .. } => {
                    let _ = handle.actor.send_message(ConsultationMsg::ForceReconnect);
                    done(true, format!("realtime reconnect of {session_id} requested (dialogue is replayed)"))
                }
                Action::ExtractNow { .. } => {
                    let _ = handle.actor.send_message(ConsultationMsg::ExtractNow);
                    done(true, format!("anketa extraction of {session_id} requested"))
                }
                _ => {
                    let _ = handle.actor.send_message(ConsultationMsg::End(EndReason::Operator(who.to_owned())));
                    let id = session_id.clone();
                    let result = tokio::spawn(async move {
                        match tokio::time::timeout(FINALIZE_WAIT, handle.wait_finished()).await {
                            Ok(Ok(outcome)) => (
                                true,
                                format!(
                                    "consultation {id} finalized: status {}, {} messages, {} anketa fields",
                                    outcome.status,
                                    outcome.dialogue.len(),
                                    outcome.anketa.filled()
                                ),
                            ),
                            Ok(Err(e)) => (false, format!("consultation {id} ended without an outcome: {e}")),
                            Err(_) => (false, format!("consultation {id} was not finalized within {FINALIZE_WAIT:?}")),
                        }
                    });
                    Outcome::Pending { message: format!("ending consultation {session_id}; finalizing"), result }
                }
            }
        }
    }
}

async fn find(control: &ConsoleControl, raw: &str) -> Result<ConsultationHandle, Outcome> {
    let session_id = SessionId::parse(raw).map_err(|e| Outcome::Done { ok: false, message: e.to_string(), code: Some(code::BAD_REQUEST) })?;
    let lookup = control
        .supervisor
        .call(|reply| SupervisorMsg::Get { session_id: session_id.clone(), reply }, Some(LOOKUP_TIMEOUT))
        .await;
    match lookup {
        Ok(ractor::rpc::CallResult::Success(Some(handle))) => Ok(handle),
        Ok(ractor::rpc::CallResult::Success(None)) => Err(Outcome::Done {
            ok: false,
            message: format!("no running consultation `{session_id}`; the tree lists the running ones"),
            code: Some(code::UNKNOWN_SESSION),
        }),
        Ok(_) | Err(_) => Err(done(false, "the worker supervisor did not answer; try again")),
    }
}

/// A `result` frame.
pub fn result_frame(id: Option<u64>, action: &Action, ok: bool, message: &str) -> String {
    frame("result", json!({ "id": id, "action": action.name(), "ok": ok, "message": message }))
}

/// An `ack` frame (the result follows).
pub fn ack_frame(id: Option<u64>, action: &Action, message: &str) -> String {
    frame("ack", json!({ "id": id, "action": action.name(), "message": message }))
}
