//! The job entrypoint (the seed's `entrypoint(ctx)`): runs one LiveKit job through the five
//! logged steps and then until the consultation ends. Operators grep for its markers, so they
//! are the seed's, verbatim: `=== AGENT ENTRYPOINT CALLED ===`, `AGENT STEP n/5: ...`,
//! `=== AGENT FULLY READY ===`, and `STEP n/5 FAILED: <cause>`.

use std::sync::Arc;

use async_trait::async_trait;
use consultant_actors::consultation::{ConsultationMsg, EndReason};
use consultant_actors::handler::{ConsultationHandle, SessionOutcome};
use consultant_actors::ports::AgentAudioOutput;
use consultant_actors::{SessionId, SessionStatus, VoiceHandler};
use tokio::sync::{mpsc, watch};

use crate::livekit::link::{AcceptedJob, JobRunner};
use crate::secret::Secret;

/// A joined LiveKit room, as the consultation needs it.
pub struct JoinedRoom {
    /// Where the agent's voice goes (published to the room).
    pub audio_out: Arc<dyn AgentAudioOutput>,
    /// The caller's audio, PCM16 mono 24 kHz. The channel closing means the caller left or the
    /// room closed: the consultation then ends.
    pub caller_audio: mpsc::Receiver<Arc<[i16]>>,
    /// Leaves the room (called once, when the consultation is over).
    pub leave: Box<dyn FnOnce() + Send>,
    /// Asked when `caller_audio` closes: the cause if room media failed beyond repair (the
    /// consultation then fails with it), None if the caller left or the room closed.
    pub media_failure: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

/// Joins a job's room (entrypoint step 3). The room-audio issue (#7) implements it over
/// LiveKit signalling + WebRTC.
#[async_trait]
pub trait RoomConnector: Send + Sync + 'static {
    /// Joins `url` with the assignment's `token` as the agent of `session_id`'s room.
    async fn join(&self, url: &str, token: &Secret, session_id: &SessionId) -> Result<JoinedRoom, String>;
}

/// The production connector until room media lands: it fails step 3 and says why.
pub struct RoomMediaMissing;

pub const ROOM_MEDIA_MISSING: &str = "room media is not implemented yet (issue 7)";

#[async_trait]
impl RoomConnector for RoomMediaMissing {
    async fn join(&self, _url: &str, _token: &Secret, _session_id: &SessionId) -> Result<JoinedRoom, String> {
        Err(ROOM_MEDIA_MISSING.to_owned())
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
    rooms: Arc<dyn RoomConnector>,
    agent: AgentDescription,
}

impl Entrypoint {
    pub fn new(handler: Arc<VoiceHandler>, rooms: Arc<dyn RoomConnector>, agent: AgentDescription) -> Self {
        Self { handler, rooms, agent }
    }
}

fn step_failed(step: u8, cause: impl std::fmt::Display) -> String {
    let message = format!("STEP {step}/5 FAILED: {cause}");
    tracing::error!("{message}");
    message
}

/// Ends the consultation (idempotent) and waits for its outcome.
async fn end(handle: &ConsultationHandle, reason: EndReason) -> Result<SessionOutcome, String> {
    let _ = handle.actor.send_message(ConsultationMsg::End(reason));
    handle.wait_finished().await
}

fn job_result(outcome: Result<SessionOutcome, String>) -> Result<(), String> {
    match outcome {
        Ok(o) if o.status == SessionStatus::Failed => Err(o.failure.unwrap_or_else(|| "the consultation failed".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
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
        let room = tokio::select! {
            joined = self.rooms.join(&job.url, &job.token, &session_id) => joined.map_err(|cause| step_failed(3, cause))?,
            _ = wait_terminated(&mut terminated) => return Err(step_failed(3, "LiveKit terminated the job before the room was joined")),
        };
        let JoinedRoom { audio_out, mut caller_audio, leave, media_failure } = room;

        tracing::info!("AGENT STEP 4/5: Creating AgentSession and registering event handlers");
        let handle = match self.handler.create_session(session_id.clone(), job.room.clone(), audio_out).await {
            Ok(h) => h,
            Err(e) => {
                leave();
                return Err(step_failed(4, e));
            }
        };
        // Caller audio into the consultation; the stream ending means the caller left.
        let pump = {
            let actor = handle.actor.clone();
            tokio::spawn(async move {
                while let Some(pcm) = caller_audio.recv().await {
                    if actor.send_message(ConsultationMsg::CallerAudio(pcm)).is_err() {
                        return;
                    }
                }
                let reason = match media_failure() {
                    Some(cause) => EndReason::Failed(format!("room media failed: {cause}")),
                    None => EndReason::CallerLeft,
                };
                let _ = actor.send_message(ConsultationMsg::End(reason));
            })
        };

        tracing::info!("AGENT STEP 5/5: Starting the session and sending the greeting");
        let ready = tokio::select! {
            ready = handle.wait_ready() => ready,
            _ = wait_terminated(&mut terminated) => Err("LiveKit terminated the job before the session was ready".to_owned()),
        };
        if let Err(cause) = ready {
            let message = step_failed(5, &cause);
            let _ = end(&handle, EndReason::Failed(cause)).await;
            pump.abort();
            leave();
            return Err(message);
        }
        tracing::info!(%session_id, "=== AGENT FULLY READY ===");

        let outcome = tokio::select! {
            outcome = handle.wait_finished() => outcome,
            _ = wait_terminated(&mut terminated) => end(&handle, terminated_reason()).await,
        };
        pump.abort();
        leave();
        job_result(outcome)
    }
}
