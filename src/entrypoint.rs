//! The job entrypoint (the Python module's `entrypoint(ctx)`): runs one LiveKit job through the five
//! logged steps and then until the consultation ends. Operators grep for its markers, so they
//! are the Python module's, verbatim: `=== AGENT ENTRYPOINT CALLED ===`, `AGENT STEP n/5: ...`,
//! `=== AGENT FULLY READY ===`, and `STEP n/5 FAILED: <cause>`.

use std::sync::Arc;

use async_trait::async_trait;
use consultant_actors::consultation::{ConsultationMsg, EndReason};
use consultant_actors::handler::{ConsultationEnded, ConsultationHandle, SessionOutcome};
use consultant_actors::ports::RoomConnector;
use consultant_actors::{SessionId, SessionStatus, VoiceHandler};
use tokio::sync::watch;

use crate::livekit::link::{AcceptedJob, JobRunner};
use crate::room::LiveKitRooms;
use crate::secret::Secret;

/// Makes each job's room (entrypoint step 3): the consultation spawns its Room through it.
pub trait JobRooms: Send + Sync + 'static {
    fn room(&self, url: &str, token: &Secret, session_id: &SessionId) -> Arc<dyn RoomConnector>;
}

impl JobRooms for LiveKitRooms {
    fn room(&self, url: &str, token: &Secret, _session_id: &SessionId) -> Arc<dyn RoomConnector> {
        Arc::new(LiveKitRooms::room(self, url, token.clone()))
    }
}

/// What the entrypoint logs about the model and the agent (steps 1-2).
#[derive(Clone, Debug)]
pub struct AgentDescription {
    /// e.g. "Azure OpenAI Realtime, deployment gpt-4o-realtime-preview".
    pub model: String,
    pub system_prompt: String,
}

/// Runs jobs: one consultation per job through the [`VoiceHandler`].
pub struct Entrypoint {
    handler: Arc<VoiceHandler>,
    rooms: Arc<dyn JobRooms>,
    agent: AgentDescription,
}

impl Entrypoint {
    pub fn new(handler: Arc<VoiceHandler>, rooms: Arc<dyn JobRooms>, agent: AgentDescription) -> Self {
        Self { handler, rooms, agent }
    }
}

/// Why an entrypoint step did not complete.
#[derive(Debug, thiserror::Error)]
enum StepCause {
    #[error(transparent)]
    Ended(#[from] ConsultationEnded),
    #[error("LiveKit terminated the job before {0}")]
    Terminated(&'static str),
}

fn step_failed(step: u8, cause: impl std::fmt::Display) -> String {
    let message = format!("STEP {step}/5 FAILED: {cause}");
    tracing::error!("{message}");
    message
}

/// Ends the consultation (idempotent) and waits for its outcome.
async fn end(handle: &ConsultationHandle, reason: EndReason) -> Result<SessionOutcome, ConsultationEnded> {
    // A consultation that is already gone has its outcome in the lifecycle: wait for it anyway.
    if handle.actor.send_message(ConsultationMsg::End(reason)).is_err() {
        tracing::debug!(session_id = %handle.session_id, "consultation already stopped");
    }
    handle.wait_finished().await
}

/// Waits for the consultation to reach a step (joined, ready). Err holds the job's result: the
/// step failed (the consultation is ended as failed), or the call ended before it normally.
async fn step(
    n: u8,
    handle: &ConsultationHandle,
    reached: impl std::future::Future<Output = Result<(), ConsultationEnded>>,
    terminated: &mut watch::Receiver<bool>,
    before: &'static str,
) -> Result<(), Result<(), String>> {
    let reached = tokio::select! {
        reached = reached => reached.map_err(StepCause::Ended),
        _ = wait_terminated(terminated) => Err(StepCause::Terminated(before)),
    };
    let Err(cause) = reached else { return Ok(()) };
    if let Some(done) = ended_without_failure(handle) {
        return Err(done);
    }
    let message = step_failed(n, &cause);
    finish_failed(handle, cause).await;
    Err(Err(message))
}

/// A consultation that ended before it was ready without failing (the caller hung up first):
/// the job is done, not failed.
fn ended_without_failure(handle: &ConsultationHandle) -> Option<Result<(), String>> {
    let outcome = handle.outcome().filter(|o| o.status != SessionStatus::Failed)?;
    tracing::info!(session_id = %outcome.session_id, status = %outcome.status, "the consultation ended before the agent was ready");
    Some(job_result(Ok(outcome)))
}

/// Ends a consultation that failed before it was ready; the job's result is the step's failure.
async fn finish_failed(handle: &ConsultationHandle, cause: StepCause) {
    if let Err(e) = end(handle, EndReason::Failed(cause.to_string())).await {
        tracing::error!(session_id = %handle.session_id, error = %e, "the failed consultation was not finalized");
    }
}

/// The job's result as LiveKit is told it (the failure text is the job's error).
fn job_result(outcome: Result<SessionOutcome, ConsultationEnded>) -> Result<(), String> {
    match outcome {
        Ok(o) if o.status == SessionStatus::Failed => Err(o.failure.unwrap_or_else(|| "the consultation failed".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Resolves when LiveKit terminates the job; never if the link let go of the job without it.
async fn wait_terminated(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|t| *t).await.is_err() {
        std::future::pending::<()>().await
    }
}

fn terminated_reason() -> EndReason {
    EndReason::Operator("LiveKit (job terminated)".into())
}

#[async_trait]
impl JobRunner for Entrypoint {
    async fn run(&self, job: AcceptedJob, mut terminated: watch::Receiver<bool>) -> Result<(), String> {
        let session_id = job.session_id.clone();
        tracing::info!(job_id = %job.job_id, room = %job.room, %session_id, identity = %job.identity, "=== AGENT ENTRYPOINT CALLED ===");

        tracing::info!(model = %self.agent.model, "AGENT STEP 1/5: Creating RealtimeModel (Azure OpenAI WSS)");
        tracing::info!(prompt_chars = self.agent.system_prompt.chars().count(), "AGENT STEP 2/5: Creating VoiceAgent with the system prompt");

        tracing::info!(url = %job.url, "AGENT STEP 3/5: Connecting to the LiveKit room");
        // The consultation owns the room: its Room child joins first, then the realtime session opens.
        let media = self.rooms.room(&job.url, &job.token, &session_id);
        let handle = self.handler.create_room_session(session_id.clone(), job.room.clone(), media).await.map_err(|e| step_failed(3, e))?;
        if let Err(done) = step(3, &handle, handle.wait_joined(), &mut terminated, "the room was joined").await {
            return done;
        }

        tracing::info!("AGENT STEP 4/5: Creating AgentSession and registering event handlers");

        tracing::info!("AGENT STEP 5/5: Starting the session and sending the greeting");
        if let Err(done) = step(5, &handle, handle.wait_ready(), &mut terminated, "the session was ready").await {
            return done;
        }
        tracing::info!(%session_id, "=== AGENT FULLY READY ===");

        let outcome = tokio::select! {
            outcome = handle.wait_finished() => outcome,
            _ = wait_terminated(&mut terminated) => end(&handle, terminated_reason()).await,
        };
        job_result(outcome)
    }
}
