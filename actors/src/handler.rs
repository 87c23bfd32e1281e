//! `VoiceHandler` (the Python module's handler.py): creates, feeds and ends voice sessions. LiveKit jobs
//! and `consultant simulate` both drive consultations through it.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio_util::task::TaskTracker;

pub use crate::consultation::SessionOutcome;
use crate::consultation::{CallMedia, ConsultationMsg, EndReason, Ports};
use crate::dialogue::SessionId;
use crate::ports::{AgentAudioOutput, RoomConnector, StoreError};
use crate::settings::ConsultationSettings;
pub use crate::supervisor::{ConsultationEnded, ConsultationHandle, StartError};
use crate::supervisor::{SupervisorArgs, SupervisorMsg, WorkerSupervisor};
use crate::telemetry::Telemetry;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each stage of shutdown may take before it is reported and skipped.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("no running consultation for session {0}")]
    UnknownSession(SessionId),
    #[error("the worker supervisor is not answering: {0}")]
    Supervisor(String),
    #[error("the consultation ended without an outcome: {0}")]
    NoOutcome(#[from] crate::supervisor::ConsultationEnded),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct VoiceHandler {
    supervisor: ActorRef<SupervisorMsg>,
    /// The supervisor's task, awaited by [`VoiceHandler::stop`].
    supervisor_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Tasks the actors start outside their mailboxes (finalization).
    tasks: TaskTracker,
    pub(crate) ports: Ports,
    pub(crate) settings: Arc<ConsultationSettings>,
    telemetry: Telemetry,
    /// Sessions of dead workers dispatched again, until a worker has taken them up.
    pub(crate) redispatched: std::sync::Mutex<std::collections::HashMap<SessionId, tokio::time::Instant>>,
}

impl VoiceHandler {
    /// Starts the WorkerSupervisor. Call [`VoiceHandler::sweep_orphans`] at start-up and then
    /// periodically.
    pub async fn start(settings: Arc<ConsultationSettings>, ports: Ports, telemetry: Telemetry) -> Result<Self, HandlerError> {
        let tasks = TaskTracker::new();
        // Store commits, extractions and final statuses are measured at the ports.
        let ports = crate::telemetry::metered_ports(ports, &telemetry);
        let args = SupervisorArgs { settings: settings.clone(), ports: ports.clone(), telemetry: telemetry.clone(), tasks: tasks.clone() };
        let (supervisor, task) = Actor::spawn(None, WorkerSupervisor, args)
            .await
            .map_err(|e| HandlerError::Supervisor(e.to_string()))?;
        Ok(Self { supervisor, supervisor_task: std::sync::Mutex::new(Some(task)), tasks, ports, settings, telemetry, redispatched: Default::default() })
    }

    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Starts a consultation without a room: its Persistence, Extraction and Realtime actors
    /// are spawned and the realtime connection is opened; the caller's audio is fed with
    /// [`VoiceHandler::process_user_audio`]. Wait with [`ConsultationHandle::wait_ready`].
    pub async fn create_session(&self, session_id: SessionId, room: String, audio_out: Arc<dyn AgentAudioOutput>) -> Result<ConsultationHandle, HandlerError> {
        self.start_consultation(session_id, room, CallMedia::Local(audio_out)).await
    }

    /// Starts a consultation in a LiveKit room: the Room is its child too, joined first; the
    /// realtime session opens once the agent is in the room. Wait with
    /// [`ConsultationHandle::wait_joined`], then [`ConsultationHandle::wait_ready`].
    pub async fn create_room_session(&self, session_id: SessionId, room: String, media: Arc<dyn RoomConnector>) -> Result<ConsultationHandle, HandlerError> {
        self.start_consultation(session_id, room, CallMedia::Room(media)).await
    }

    async fn start_consultation(&self, session_id: SessionId, room: String, media: CallMedia) -> Result<ConsultationHandle, HandlerError> {
        let result = self
            .supervisor
            .call(|reply| SupervisorMsg::Start { session_id, room, media, reply }, Some(CALL_TIMEOUT))
            .await
            .map_err(|e| HandlerError::Supervisor(e.to_string()))?;
        match result {
            ractor::rpc::CallResult::Success(r) => Ok(r?),
            ractor::rpc::CallResult::Timeout => Err(HandlerError::Supervisor("timed out".into())),
            ractor::rpc::CallResult::SenderError => Err(HandlerError::Supervisor("no reply".into())),
        }
    }

    /// Feeds caller audio (PCM16 mono 24 kHz). Never blocks.
    pub fn process_user_audio(&self, handle: &ConsultationHandle, pcm: Arc<[i16]>) {
        if handle.actor.send_message(ConsultationMsg::CallerAudio(pcm)).is_err() {
            tracing::debug!(session_id = %handle.session_id, "caller audio for a consultation that has ended");
        }
    }

    pub async fn get(&self, session_id: &SessionId) -> Option<ConsultationHandle> {
        let id = session_id.clone();
        match self.supervisor.call(|reply| SupervisorMsg::Get { session_id: id, reply }, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(h)) => h,
            _ => None,
        }
    }

    pub async fn list(&self) -> Vec<SessionId> {
        match self.supervisor.call(SupervisorMsg::List, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(ids)) => ids,
            _ => Vec::new(),
        }
    }

    /// Ends a consultation properly (final anketa, status) and returns its dialogue and anketa.
    pub async fn end_session(&self, session_id: &SessionId, reason: EndReason) -> Result<SessionOutcome, HandlerError> {
        let handle = self.get(session_id).await.ok_or_else(|| HandlerError::UnknownSession(session_id.clone()))?;
        // Gone already: its outcome is in the lifecycle all the same.
        if handle.actor.send_message(ConsultationMsg::End(reason)).is_err() {
            tracing::debug!(%session_id, "consultation already stopped");
        }
        handle.wait_finished().await.map_err(HandlerError::NoOutcome)
    }

    /// Refuse new sessions (drain).
    pub fn drain(&self) {
        if self.supervisor.send_message(SupervisorMsg::Drain).is_err() {
            tracing::warn!("drain asked of a stopped worker supervisor");
        }
    }

    /// Ends every consultation with `reason` and waits until all are finalized.
    pub async fn end_all(&self, reason: EndReason) {
        let ids = self.list().await;
        let mut handles = Vec::new();
        for id in ids {
            if let Some(h) = self.get(&id).await {
                handles.push(h);
            }
        }
        if self.supervisor.send_message(SupervisorMsg::EndAll { reason }).is_err() {
            tracing::warn!("the worker supervisor has stopped; consultations cannot be ended through it");
        }
        for h in handles {
            if let Err(e) = h.wait_finished().await {
                tracing::error!(session_id = %h.session_id, error = %e, "consultation ended without an outcome");
            }
        }
    }

    /// The one shutdown path: every consultation finalized, every child of the supervisor
    /// (the LiveKit link, the console) stopped, the supervisor stopped, and every task the
    /// actors started ended. Idempotent.
    pub async fn stop(&self) {
        self.end_all(EndReason::Shutdown).await;
        self.supervisor.stop_children_and_wait(Some("worker shutdown".into()), Some(STOP_TIMEOUT)).await;
        self.supervisor.stop(Some("worker shutdown".into()));
        let task = self.supervisor_task.lock().expect("supervisor task lock").take();
        if let Some(task) = task {
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                tracing::error!(timeout = ?STOP_TIMEOUT, "the worker supervisor did not stop in time");
            }
        }
        self.tasks.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait()).await.is_err() {
            tracing::error!(running = self.tasks.len(), "tasks still running at shutdown");
        }
    }

    /// Tasks started by the actors that have not ended (0 after [`VoiceHandler::stop`]).
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the supervisor (and so every actor under it) has stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self.supervisor.get_status(), ractor::ActorStatus::Stopped)
    }

    pub async fn shutdown(self) {
        self.stop().await;
    }
}
