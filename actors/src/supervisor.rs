//! The WorkerSupervisor: spawns one Consultation per session and outlives them all. A
//! consultation that crashes is finalized from what the store holds, so its dialogue and
//! anketa are never lost.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::consultation::{
    finalize_consultation, CallMedia, ConsultationActor, ConsultationArgs, ConsultationMsg, EndReason, FinalizeJob,
    Lifecycle, Ports, SessionOutcome,
};
use crate::dialogue::SessionId;
use crate::ports::SessionRecord;
use crate::session::SessionStatus;
use crate::settings::ConsultationSettings;
use crate::telemetry::Telemetry;

/// A running consultation as seen from outside.
#[derive(Clone)]
pub struct ConsultationHandle {
    pub session_id: SessionId,
    pub actor: ActorRef<ConsultationMsg>,
    pub lifecycle: watch::Receiver<Lifecycle>,
}

/// Why a wait on a consultation ended without what it waited for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConsultationEnded {
    /// The consultation failed; the cause is the one finalize stored.
    #[error("{0}")]
    Failed(String),
    /// It ended (without failing) before the awaited moment: the caller left, a time limit.
    #[error("ended as {0}")]
    Ended(SessionStatus),
    /// Its actor stopped without a lifecycle update (a crash the supervisor is finalizing).
    #[error("the consultation stopped without an outcome")]
    Vanished,
}

impl ConsultationHandle {
    /// Waits until the agent is in the room (at once without a room), or the consultation
    /// ended before that (then its failure is returned).
    pub async fn wait_joined(&self) -> Result<(), ConsultationEnded> {
        self.wait_past(|l| matches!(l, Lifecycle::Starting)).await
    }

    /// Waits until the realtime session is up and the greeting requested, or the consultation
    /// ended before that (then its failure is returned).
    pub async fn wait_ready(&self) -> Result<(), ConsultationEnded> {
        self.wait_past(|l| matches!(l, Lifecycle::Starting | Lifecycle::Joined)).await
    }

    async fn wait_past(&self, before: impl Fn(&Lifecycle) -> bool) -> Result<(), ConsultationEnded> {
        let mut rx = self.lifecycle.clone();
        let seen = rx.wait_for(|l| !before(l)).await.map_err(|_| ConsultationEnded::Vanished)?.clone();
        match seen {
            Lifecycle::Finished(outcome) => Err(match outcome.failure {
                Some(cause) => ConsultationEnded::Failed(cause),
                None => ConsultationEnded::Ended(outcome.status),
            }),
            _ => Ok(()),
        }
    }

    /// The outcome, if the consultation has been finalized.
    pub fn outcome(&self) -> Option<SessionOutcome> {
        match &*self.lifecycle.borrow() {
            Lifecycle::Finished(outcome) => Some((**outcome).clone()),
            _ => None,
        }
    }

    /// Waits for the consultation to be finalized.
    pub async fn wait_finished(&self) -> Result<SessionOutcome, ConsultationEnded> {
        let mut rx = self.lifecycle.clone();
        let seen = rx.wait_for(|l| matches!(l, Lifecycle::Finished(_))).await.map_err(|_| ConsultationEnded::Vanished)?.clone();
        match seen {
            Lifecycle::Finished(outcome) => Ok(*outcome),
            _ => unreachable!("wait_for returned a state it did not ask for"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error("a consultation for session {0} is already running")]
    AlreadyRunning(SessionId),
    #[error("the worker is draining and takes no new consultations")]
    Draining,
    #[error("could not start the consultation: {0}")]
    Spawn(String),
}

pub struct SupervisorArgs {
    pub settings: Arc<ConsultationSettings>,
    pub ports: Ports,
    pub telemetry: Telemetry,
    /// Every task the consultations start (finalization); awaited at shutdown.
    pub tasks: TaskTracker,
}

pub enum SupervisorMsg {
    Start {
        session_id: SessionId,
        room: String,
        media: CallMedia,
        reply: RpcReplyPort<Result<ConsultationHandle, StartError>>,
    },
    End { session_id: SessionId, reason: EndReason },
    EndAll { reason: EndReason },
    Get { session_id: SessionId, reply: RpcReplyPort<Option<ConsultationHandle>> },
    List(RpcReplyPort<Vec<SessionId>>),
    /// Refuse new consultations from now on.
    Drain,
}

struct Running {
    handle: ConsultationHandle,
    lifecycle: Arc<watch::Sender<Lifecycle>>,
    room: String,
    started_at: chrono::DateTime<chrono::Utc>,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    running: HashMap<SessionId, Running>,
    draining: bool,
}

pub struct WorkerSupervisor;

/// Reads a crashed consultation back from the store, retrying a failing store a few times
/// (a busy or briefly full disk) before leaving the session to start-up recovery.
async fn read_back<F, Fut>(mut attempt: F) -> Result<FinalizeJob, crate::ports::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<FinalizeJob, crate::ports::StoreError>>,
{
    let mut delay = std::time::Duration::from_millis(200);
    for _ in 1..READ_BACK_ATTEMPTS {
        match attempt().await {
            Ok(job) => return Ok(job),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "could not read a crashed consultation back; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    attempt().await
}

const READ_BACK_ATTEMPTS: usize = 4;

/// A consultation that cannot take the message has already stopped: its supervision event
/// finalizes it.
fn end(running: &Running, reason: EndReason) {
    if running.handle.actor.send_message(ConsultationMsg::End(reason)).is_err() {
        tracing::debug!(session_id = %running.handle.session_id, "consultation already stopped");
    }
}

#[ractor::async_trait]
impl Actor for WorkerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: SupervisorArgs) -> Result<SupervisorState, ActorProcessingErr> {
        args.telemetry.actor_started("worker", "supervisor");
        Ok(SupervisorState { args, running: HashMap::new(), draining: false })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: SupervisorMsg, state: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Start { session_id, room, media, reply } => {
                if state.draining {
                    let _ = reply.send(Err(StartError::Draining));
                    return Ok(());
                }
                if state.running.contains_key(&session_id) {
                    let _ = reply.send(Err(StartError::AlreadyRunning(session_id)));
                    return Ok(());
                }
                let (tx, rx) = watch::channel(Lifecycle::Starting);
                let lifecycle = Arc::new(tx);
                let args = ConsultationArgs {
                    session_id: session_id.clone(),
                    room: room.clone(),
                    settings: state.args.settings.clone(),
                    ports: state.args.ports.clone(),
                    media,
                    telemetry: state.args.telemetry.clone(),
                    lifecycle: lifecycle.clone(),
                    tasks: state.args.tasks.clone(),
                };
                match Actor::spawn_linked(None, ConsultationActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        let handle = ConsultationHandle { session_id: session_id.clone(), actor, lifecycle: rx };
                        state.running.insert(
                            session_id,
                            Running { handle: handle.clone(), lifecycle, room, started_at: chrono::Utc::now() },
                        );
                        let _ = reply.send(Ok(handle));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(StartError::Spawn(e.to_string())));
                    }
                }
            }
            SupervisorMsg::End { session_id, reason } => {
                if let Some(r) = state.running.get(&session_id) {
                    end(r, reason);
                }
            }
            SupervisorMsg::EndAll { reason } => {
                for r in state.running.values() {
                    end(r, reason.clone());
                }
            }
            SupervisorMsg::Get { session_id, reply } => {
                let _ = reply.send(state.running.get(&session_id).map(|r| r.handle.clone()));
            }
            SupervisorMsg::List(reply) => {
                let mut ids: Vec<_> = state.running.keys().cloned().collect();
                ids.sort();
                let _ = reply.send(ids);
            }
            SupervisorMsg::Drain => {
                state.draining = true;
                state.args.telemetry.event("status", "worker", "draining: no new consultations");
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, _myself: ActorRef<Self::Msg>, event: SupervisionEvent, state: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        // Never stop the worker because one consultation ended or crashed.
        let (cell, crash) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let Some(session_id) = state.running.iter().find(|(_, r)| r.handle.actor.get_id() == id).map(|(k, _)| k.clone()) else {
            // The LiveKit link and the console run under the supervisor too; they restart
            // themselves, so their end is only reported.
            if let Some(error) = crash {
                let name = cell.get_name().unwrap_or_else(|| format!("actor {id}"));
                tracing::error!(child = %name, %error, "a worker child failed");
                state.args.telemetry.event("failure", "worker", format!("{name}: {error}"));
            }
            return Ok(());
        };
        let running = state.running.remove(&session_id).expect("found above");
        let path = format!("worker/consultation/{session_id}");
        if let Some(error) = crash {
            tracing::error!(%session_id, %error, "consultation crashed; finalizing it from the store");
            state.args.telemetry.actor_failed(&path, &error, 0, false);
            state.args.telemetry.actor_removed(&path);
            state.args.telemetry.consultation_removed(&session_id);
            let store = state.args.ports.store.clone();
            let extractor = state.args.ports.extractor.clone();
            let timeout = state.args.settings.final_extraction_timeout;
            let record = SessionRecord {
                session_id,
                room: running.room,
                status: SessionStatus::Active,
                started_at: running.started_at,
                ended_at: None,
                failure: None,
            };
            state.args.tasks.spawn(async move {
                let failure = format!("consultation crashed: {error}");
                let reason = format!("crash: {error}");
                let job = read_back(|| FinalizeJob::from_store(&record, store.clone(), extractor.clone(), SessionStatus::Failed, failure.clone(), reason.clone(), timeout)).await;
                match job {
                    Ok(job) => {
                        let outcome = finalize_consultation(job).await;
                        running.lifecycle.send_replace(Lifecycle::Finished(Box::new(outcome)));
                    }
                    // Left open in the store: start-up recovery finalizes it from there.
                    Err(e) => tracing::error!(session_id = %record.session_id, error = %e, "could not read the crashed consultation back; left for recovery"),
                }
            });
        }
        Ok(())
    }
}
