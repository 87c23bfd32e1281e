//! Job bookkeeping of the link: jobs accepted (reserved until LiveKit assigns them), jobs
//! running, and the status updates owed to LiveKit (kept while the link is down and sent,
//! after a `migrate_job`, once it is registered again). The link's answers to availability
//! requests, assignments and terminations live here too.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use consultant_actors::telemetry::JobView;
use consultant_actors::SessionId;
use livekit_protocol as proto;
use proto::worker_message::Message as WorkerMsg;
use ractor::ActorRef;
use tokio::sync::watch;

use super::{LinkMsg, LinkState};
use crate::livekit::parse_room_name;
use crate::secret::Secret;

/// An accepted job whose assignment does not come within this is forgotten (Python: 7.5 s).
const ASSIGNMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(7500);

/// A job this worker accepted and LiveKit assigned.
#[derive(Clone)]
pub struct AcceptedJob {
    pub job_id: String,
    pub room: String,
    pub session_id: SessionId,
    /// Our participant identity in the room (`<identity_prefix><job id>`).
    pub identity: String,
    /// Where to join: the assignment's URL, or the configured one.
    pub url: String,
    /// The room token minted by the server for this job.
    pub token: Secret,
}

impl std::fmt::Debug for AcceptedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptedJob")
            .field("job_id", &self.job_id)
            .field("room", &self.room)
            .field("identity", &self.identity)
            .field("url", &self.url)
            .field("token", &self.token)
            .finish()
    }
}

/// Runs one job to its end (the entrypoint).
#[async_trait]
pub trait JobRunner: Send + Sync + 'static {
    /// `Ok` when the consultation ended normally, `Err(cause)` when it failed (reported as
    /// JS_FAILED with the cause). `terminated` turns true when LiveKit ends the job: finish
    /// the consultation properly and return.
    async fn run(&self, job: AcceptedJob, terminated: watch::Receiver<bool>) -> Result<(), String>;
}

struct Reservation {
    session_id: SessionId,
    room: String,
    identity: String,
}

struct RunningJob {
    room: String,
    session_id: SessionId,
    started_at: DateTime<Utc>,
    terminate: watch::Sender<bool>,
}

/// The jobs of this worker, as far as LiveKit is concerned.
#[derive(Default)]
pub(super) struct JobBook {
    reservations: HashMap<String, Reservation>,
    running: BTreeMap<String, RunningJob>,
    /// `update_job` messages made while the link was down, sent after re-registration.
    pending_updates: Vec<proto::UpdateJobStatus>,
}

impl JobBook {
    /// Jobs running (assigned and not finished).
    pub(super) fn running(&self) -> usize {
        self.running.len()
    }

    /// Accepted or running: what counts against capacity.
    pub(super) fn busy(&self) -> usize {
        self.running.len() + self.reservations.len()
    }

    /// The running jobs for the console's worker view.
    pub(super) fn views(&self) -> Vec<JobView> {
        self.running
            .iter()
            .map(|(id, j)| JobView {
                job_id: id.clone(),
                room: j.room.clone(),
                session_id: Some(j.session_id.clone()),
                state: if *j.terminate.borrow() { "terminating".into() } else { "running".into() },
                started_at: j.started_at,
            })
            .collect()
    }

    /// Accepted but unassigned jobs go to another worker when the link drops.
    pub(super) fn forget_reservations(&mut self) {
        self.reservations.clear();
    }
}

impl LinkState {
    /// Reports a job's status now, or after re-registration if the link is down.
    fn update_job(&mut self, job_id: &str, status: proto::JobStatus, error: String) {
        let update = proto::UpdateJobStatus { job_id: job_id.to_owned(), status: status as i32, error };
        if !self.send(WorkerMsg::UpdateJob(update.clone())) {
            tracing::info!(%job_id, ?status, "LiveKit link down; the job status will be sent after re-registration");
            self.jobs.pending_updates.push(update);
        }
    }

    /// After a (re-)registration: claims back the jobs still running, and those that ended
    /// while the link was down (their final status follows the migration), then sends the
    /// held status updates.
    pub(super) fn reclaim_jobs(&mut self, reregistration: bool) {
        let mut job_ids: Vec<String> = self.jobs.running.keys().cloned().collect();
        for update in &self.jobs.pending_updates {
            if !job_ids.contains(&update.job_id) {
                job_ids.push(update.job_id.clone());
            }
        }
        if reregistration && !job_ids.is_empty() {
            tracing::info!(?job_ids, "claiming the jobs still running with migrate_job");
            self.send(WorkerMsg::MigrateJob(proto::MigrateJobRequest { job_ids }));
        }
        for update in std::mem::take(&mut self.jobs.pending_updates) {
            if !self.send(WorkerMsg::UpdateJob(update.clone())) {
                self.jobs.pending_updates.push(update);
            }
        }
    }

    /// Whether a job for `job` may be taken; the session id on success, the reason otherwise.
    fn admit(&self, job: &proto::Job) -> Result<SessionId, String> {
        let room = job.room.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
        let session_id = parse_room_name(room).map_err(|e| e.to_string())?;
        if self.draining {
            return Err("the worker is draining".into());
        }
        let busy = self.jobs.busy();
        if busy >= self.args.settings.capacity {
            return Err(format!("at capacity ({busy} of {} consultations)", self.args.settings.capacity));
        }
        let duplicate = self.jobs.running.values().any(|j| j.session_id == session_id)
            || self.jobs.reservations.values().any(|r| r.session_id == session_id);
        if duplicate {
            return Err(format!("a consultation for session {session_id} is already running here"));
        }
        Ok(session_id)
    }

    fn identity(&self, job_id: &str) -> String {
        format!("{}{}", self.args.settings.identity_prefix, job_id)
    }

    pub(super) fn on_availability(&mut self, myself: &ActorRef<LinkMsg>, request: proto::AvailabilityRequest) {
        let Some(job) = request.job else {
            tracing::warn!("availability request without a job ignored");
            return;
        };
        let room = job.room.as_ref().map(|r| r.name.clone()).unwrap_or_default();
        let known = self.jobs.running.contains_key(&job.id);
        let answer = if known {
            // A resumed job we are already running.
            Ok(self.jobs.running[&job.id].session_id.clone())
        } else {
            self.admit(&job)
        };
        let response = match answer {
            Ok(session_id) => {
                let identity = self.identity(&job.id);
                tracing::info!(job_id = %job.id, %room, %session_id, resuming = request.resuming, "accepting job");
                if !known {
                    self.jobs.reservations.insert(job.id.clone(), Reservation { session_id, room, identity: identity.clone() });
                    let job_id = job.id.clone();
                    myself.send_after(ASSIGNMENT_TIMEOUT, move || LinkMsg::AssignmentOverdue { job_id });
                }
                proto::AvailabilityResponse {
                    job_id: job.id.clone(),
                    available: true,
                    participant_identity: identity,
                    participant_name: self.args.settings.agent_name.clone(),
                    ..Default::default()
                }
            }
            Err(reason) => {
                tracing::warn!(job_id = %job.id, room = %crate::livekit::printable(&room), %reason, "refusing job");
                proto::AvailabilityResponse { job_id: job.id.clone(), available: false, ..Default::default() }
            }
        };
        self.send(WorkerMsg::Availability(response));
        self.publish();
    }

    pub(super) fn on_assignment(&mut self, myself: &ActorRef<LinkMsg>, assignment: proto::JobAssignment) {
        let Some(job) = assignment.job else {
            tracing::warn!("assignment without a job ignored");
            return;
        };
        if self.jobs.running.contains_key(&job.id) {
            tracing::debug!(job_id = %job.id, "repeated assignment ignored");
            return;
        }
        let reservation = match self.jobs.reservations.remove(&job.id) {
            Some(r) => r,
            None => match self.admit(&job) {
                // Late (after the reservation expired) but still acceptable.
                Ok(session_id) => Reservation {
                    session_id,
                    room: job.room.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                    identity: self.identity(&job.id),
                },
                Err(reason) => {
                    tracing::warn!(job_id = %job.id, %reason, "refusing an assignment that was not accepted");
                    self.update_job(&job.id, proto::JobStatus::JsFailed, format!("worker cannot take this job: {reason}"));
                    return;
                }
            },
        };
        let url = assignment.url.filter(|u| !u.is_empty()).unwrap_or_else(|| self.args.client.url().to_owned());
        let accepted = AcceptedJob {
            job_id: job.id.clone(),
            room: reservation.room.clone(),
            session_id: reservation.session_id.clone(),
            identity: reservation.identity,
            url,
            token: Secret::new(assignment.token),
        };
        let (terminate, terminated) = watch::channel(false);
        self.jobs.running.insert(
            job.id.clone(),
            RunningJob { room: reservation.room, session_id: reservation.session_id, started_at: Utc::now(), terminate },
        );
        self.update_job(&job.id, proto::JobStatus::JsRunning, String::new());
        let runner = self.args.runner.clone();
        let me = myself.clone();
        let job_id = job.id;
        tokio::spawn(async move {
            // A panicking entrypoint is a failed job, not a dead link.
            let result = match tokio::spawn(async move { runner.run(accepted, terminated).await }).await {
                Ok(result) => result,
                Err(e) => Err(format!("the entrypoint crashed: {e}")),
            };
            let _ = me.send_message(LinkMsg::JobFinished { job_id, result });
        });
        self.send_status();
    }

    pub(super) fn on_termination(&mut self, t: proto::JobTermination) {
        if let Some(job) = self.jobs.running.get(&t.job_id) {
            if *job.terminate.borrow() {
                tracing::debug!(job_id = %t.job_id, "repeated termination ignored");
            } else {
                tracing::info!(job_id = %t.job_id, session_id = %job.session_id, "LiveKit terminated the job; ending the consultation");
                job.terminate.send_replace(true);
                self.publish();
            }
        } else if self.jobs.reservations.remove(&t.job_id).is_some() {
            tracing::info!(job_id = %t.job_id, "job terminated before its assignment");
            self.publish();
        } else {
            tracing::debug!(job_id = %t.job_id, "termination for a job that is not running here ignored");
        }
    }

    pub(super) fn on_assignment_overdue(&mut self, job_id: &str) {
        if self.jobs.reservations.remove(job_id).is_some() {
            tracing::warn!(%job_id, "accepted job was never assigned; slot released");
            self.publish();
        }
    }

    pub(super) fn on_job_finished(&mut self, job_id: &str, result: Result<(), String>) {
        let Some(job) = self.jobs.running.remove(job_id) else { return };
        let path = format!("worker/livekit/job/{job_id}");
        match result {
            Ok(()) => {
                tracing::info!(%job_id, session_id = %job.session_id, "job finished");
                self.update_job(job_id, proto::JobStatus::JsSuccess, String::new());
            }
            Err(error) => {
                tracing::error!(%job_id, session_id = %job.session_id, %error, "job failed");
                self.args.telemetry.event("failure", path, error.clone());
                self.update_job(job_id, proto::JobStatus::JsFailed, error);
            }
        }
        self.send_status();
    }
}
