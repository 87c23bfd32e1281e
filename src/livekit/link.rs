//! The agent-worker link: one actor, linked under the WorkerSupervisor, that keeps the
//! `/agent` WebSocket to LiveKit, answers availability requests, runs assigned jobs through a
//! [`JobRunner`] (the entrypoint), reports their status, and reconnects on its own.
//!
//! The socket lives in a connection task owned by the actor; every frame becomes an actor
//! message tagged with the connection's generation, so frames of a dead connection are ignored.
//! Jobs run in their own tasks: a dropped link never touches a running consultation; after a
//! re-registration the jobs still running are claimed back with `migrate_job`, and job status
//! updates made while the link was down are sent then.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use consultant_actors::telemetry::{JobView, Telemetry};
use consultant_actors::SessionId;
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::server_message::Message as ServerMsg;
use proto::worker_message::Message as WorkerMsg;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message as Frame};

use super::load::{worker_load, ProcessSampler, ProcessStats};
use super::{parse_room_name, LiveKitClient, WorkerMode};
use crate::secret::Secret;

/// How often `update_worker` is sent (as the Python worker does).
pub const UPDATE_INTERVAL: Duration = Duration::from_millis(2500);
/// TCP + TLS + upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server answers `register` at once; a silent server is a broken one.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// We ping too, so a half-open connection is noticed even if the server never pings.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// No frame at all (pongs included) for this long: the connection is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// An accepted job whose assignment does not come within this is forgotten (Python: 7.5 s).
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_millis(7500);
/// Outgoing frames queued for the socket; a socket this far behind is dropped and reconnected.
const OUT_QUEUE: usize = 256;

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

#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub agent_name: String,
    pub identity_prefix: String,
    pub capacity: usize,
    pub load_threshold: f64,
    pub mode: WorkerMode,
    /// Reconnection attempts after a drop before giving up.
    pub reconnect_max_tries: u32,
    pub update_interval: Duration,
    pub version: String,
}

impl LinkSettings {
    pub fn from_config(config: &crate::config::LivekitConfig, mode: WorkerMode) -> Self {
        Self {
            agent_name: config.agent_name.clone(),
            identity_prefix: config.identity_prefix.clone(),
            capacity: config.capacity,
            load_threshold: config.load_threshold,
            mode,
            reconnect_max_tries: config.reconnect_max_tries,
            update_interval: UPDATE_INTERVAL,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// The link as the rest of the worker sees it (health endpoint, drain, shutdown).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinkStatus {
    pub registered: bool,
    pub worker_id: Option<String>,
    /// Jobs running (assigned and not finished).
    pub jobs: usize,
    pub draining: bool,
    /// "available" or "full", as last reported.
    pub status: String,
    pub load: f64,
    /// Why the link is down, when it is.
    pub last_error: Option<String>,
    /// The link gave up: the worker must exit with this reason.
    pub fatal: Option<String>,
}

impl LinkStatus {
    /// Nothing reaches LiveKit now (not registered, or given up).
    pub fn out_of_service(&self) -> bool {
        self.fatal.is_some() || !self.registered
    }
}

pub struct LinkArgs {
    pub settings: LinkSettings,
    pub client: Arc<LiveKitClient>,
    pub runner: Arc<dyn JobRunner>,
    pub telemetry: Telemetry,
}

pub enum LinkMsg {
    Connect,
    Registered { generation: u64, worker_id: String, out: mpsc::Sender<proto::WorkerMessage> },
    ConnectFailed { generation: u64, error: String, fatal: bool },
    Server { generation: u64, message: Box<ServerMsg> },
    Disconnected { generation: u64, reason: String },
    Tick,
    AssignmentOverdue { job_id: String },
    JobFinished { job_id: String, result: Result<(), String> },
    /// Refuse new jobs and report FULL from now on.
    Drain,
    /// Stop after what is already queued (a plain `stop` would jump the queue).
    Shutdown,
}

/// A running link: its actor and its published status.
#[derive(Clone)]
pub struct LinkHandle {
    pub actor: ActorRef<LinkMsg>,
    pub status: watch::Receiver<LinkStatus>,
}

impl LinkHandle {
    pub fn drain(&self) {
        let _ = self.actor.send_message(LinkMsg::Drain);
    }

    /// Stops the link once the messages already sent to it are handled.
    pub fn shutdown(&self) {
        let _ = self.actor.send_message(LinkMsg::Shutdown);
    }

    pub fn current(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    /// Waits until `f` holds for the status (or the link is gone).
    pub async fn wait_for(&self, f: impl FnMut(&LinkStatus) -> bool) -> Option<LinkStatus> {
        let mut rx = self.status.clone();
        rx.wait_for(f).await.ok().map(|s| s.clone())
    }
}

/// Spawns the link linked under `supervisor` (the WorkerSupervisor's cell); it connects at once.
pub async fn spawn_link(args: LinkArgs, supervisor: ActorCell) -> Result<(LinkHandle, JoinHandle<()>), ractor::SpawnErr> {
    let (status_tx, status_rx) = watch::channel(LinkStatus { status: "available".into(), ..Default::default() });
    let (actor, join) = Actor::spawn_linked(None, WorkerLink, (args, status_tx), supervisor).await?;
    Ok((LinkHandle { actor, status: status_rx }, join))
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

pub struct LinkState {
    args: LinkArgs,
    status_tx: watch::Sender<LinkStatus>,
    generation: u64,
    connection: Option<JoinHandle<()>>,
    out: Option<mpsc::Sender<proto::WorkerMessage>>,
    worker_id: Option<String>,
    registered_once: bool,
    /// Consecutive failed connections since the last registration.
    failures: u32,
    last_error: Option<String>,
    fatal: Option<String>,
    reservations: HashMap<String, Reservation>,
    jobs: BTreeMap<String, RunningJob>,
    /// `update_job` messages made while the link was down, sent after re-registration.
    pending_updates: Vec<proto::UpdateJobStatus>,
    draining: bool,
    sampler: ProcessSampler,
    stats: ProcessStats,
    last_status: proto::WorkerStatus,
    ticker: Option<JoinHandle<()>>,
}

pub struct WorkerLink;

impl LinkState {
    fn load(&self) -> f64 {
        worker_load(self.jobs.len() + self.reservations.len(), self.args.settings.capacity, self.stats.cpu)
    }

    fn worker_status(&self) -> proto::WorkerStatus {
        let s = &self.args.settings;
        if self.draining || (s.mode == WorkerMode::Start && self.load() >= s.load_threshold) {
            proto::WorkerStatus::WsFull
        } else {
            proto::WorkerStatus::WsAvailable
        }
    }

    fn registration(&self) -> &'static str {
        if self.fatal.is_some() {
            "down"
        } else if self.out.is_some() {
            "registered"
        } else if self.registered_once || self.failures > 0 {
            "reconnecting"
        } else {
            "connecting"
        }
    }

    /// Publishes the state to the status watch and the console's worker view.
    fn publish(&self) {
        let status = match self.last_status {
            proto::WorkerStatus::WsFull => "full",
            proto::WorkerStatus::WsAvailable => "available",
        };
        let load = self.load();
        self.status_tx.send_replace(LinkStatus {
            registered: self.out.is_some(),
            worker_id: self.worker_id.clone(),
            jobs: self.jobs.len(),
            draining: self.draining,
            status: status.into(),
            load,
            last_error: self.last_error.clone(),
            fatal: self.fatal.clone(),
        });
        let s = &self.args.settings;
        let jobs: Vec<JobView> = self
            .jobs
            .iter()
            .map(|(id, j)| JobView {
                job_id: id.clone(),
                room: j.room.clone(),
                session_id: Some(j.session_id.clone()),
                state: if *j.terminate.borrow() { "terminating".into() } else { "running".into() },
                started_at: j.started_at,
            })
            .collect();
        let registration = self.registration();
        self.args.telemetry.worker_update(|w| {
            w.mode = s.mode.as_str().into();
            w.agent_name = s.agent_name.clone();
            w.registration = registration.into();
            w.worker_id = self.worker_id.clone();
            w.reconnect_attempt = self.failures;
            w.status = status.into();
            w.load = load;
            w.capacity = s.capacity;
            w.draining = self.draining;
            w.jobs = jobs;
            w.started_at.get_or_insert_with(Utc::now);
            w.rss_bytes = self.stats.rss_bytes;
            w.cpu_percent = self.stats.cpu * 100.0;
        });
    }

    /// Queues a frame for the socket. False if the link is down (or was just dropped).
    fn send(&mut self, message: WorkerMsg) -> bool {
        let Some(out) = &self.out else { return false };
        match out.try_send(proto::WorkerMessage { message: Some(message) }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("the LiveKit socket is not draining its queue; dropping the connection");
                self.drop_connection();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn drop_connection(&mut self) {
        self.out = None;
        if let Some(c) = self.connection.take() {
            c.abort();
        }
    }

    fn send_status(&mut self) {
        let status = self.worker_status();
        let load = self.load();
        if status != self.last_status {
            let what = if status == proto::WorkerStatus::WsFull { "full" } else { "available" };
            tracing::info!(status = what, load, draining = self.draining, "worker status changed");
            self.args.telemetry.event("status", "worker/livekit", format!("worker {what} (load {load:.2})"));
        }
        self.last_status = status;
        let update = proto::UpdateWorkerStatus {
            status: Some(status as i32),
            load: load as f32,
            job_count: self.jobs.len() as u32,
            draining: self.draining,
            ..Default::default()
        };
        self.send(WorkerMsg::UpdateWorker(update));
        self.publish();
    }

    fn update_job(&mut self, job_id: &str, status: proto::JobStatus, error: String) {
        let update = proto::UpdateJobStatus { job_id: job_id.to_owned(), status: status as i32, error };
        if !self.send(WorkerMsg::UpdateJob(update.clone())) {
            tracing::info!(%job_id, ?status, "LiveKit link down; the job status will be sent after re-registration");
            self.pending_updates.push(update);
        }
    }

    /// Whether a job for `job` may be taken; the session id on success, the reason otherwise.
    fn admit(&self, job: &proto::Job) -> Result<SessionId, String> {
        let room = job.room.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
        let session_id = parse_room_name(room).map_err(|e| e.to_string())?;
        if self.draining {
            return Err("the worker is draining".into());
        }
        let busy = self.jobs.len() + self.reservations.len();
        if busy >= self.args.settings.capacity {
            return Err(format!("at capacity ({busy} of {} consultations)", self.args.settings.capacity));
        }
        let duplicate = self.jobs.values().any(|j| j.session_id == session_id)
            || self.reservations.values().any(|r| r.session_id == session_id);
        if duplicate {
            return Err(format!("a consultation for session {session_id} is already running here"));
        }
        Ok(session_id)
    }

    fn identity(&self, job_id: &str) -> String {
        format!("{}{}", self.args.settings.identity_prefix, job_id)
    }
}

#[async_trait]
impl Actor for WorkerLink {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = (LinkArgs, watch::Sender<LinkStatus>);

    async fn pre_start(&self, myself: ActorRef<LinkMsg>, (args, status_tx): Self::Arguments) -> Result<LinkState, ActorProcessingErr> {
        args.telemetry.actor_started("worker/livekit", "livekit_link");
        let ticker = myself.send_interval(args.settings.update_interval, || LinkMsg::Tick);
        myself.send_message(LinkMsg::Connect)?;
        let mut sampler = ProcessSampler::new();
        let stats = sampler.sample();
        let state = LinkState {
            args,
            status_tx,
            generation: 0,
            connection: None,
            out: None,
            worker_id: None,
            registered_once: false,
            failures: 0,
            last_error: None,
            fatal: None,
            reservations: HashMap::new(),
            jobs: BTreeMap::new(),
            pending_updates: Vec::new(),
            draining: false,
            sampler,
            stats,
            last_status: proto::WorkerStatus::WsAvailable,
            ticker: Some(ticker),
        };
        state.publish();
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<LinkMsg>, state: &mut LinkState) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        // Dropping the sender makes the connection task close the socket politely.
        state.out = None;
        if let Some(c) = state.connection.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), c).await;
        }
        state.args.telemetry.actor_status("worker/livekit", consultant_actors::telemetry::ActorStatus::Stopped);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<LinkMsg>, message: LinkMsg, state: &mut LinkState) -> Result<(), ActorProcessingErr> {
        match message {
            LinkMsg::Connect => {
                if state.fatal.is_some() {
                    return Ok(());
                }
                state.drop_connection();
                state.generation += 1;
                let (url, token) = match (state.args.client.agent_ws_url(), state.args.client.worker_token()) {
                    (Ok(url), Ok(token)) => (url, token),
                    (Err(e), _) | (_, Err(e)) => {
                        give_up(state, e.to_string());
                        return Ok(());
                    }
                };
                let s = &state.args.settings;
                // `agent` is deprecated in the proto but still what the Python worker sends.
                #[allow(deprecated)]
                let register = proto::RegisterWorkerRequest {
                    r#type: proto::JobType::JtRoom as i32,
                    agent_name: s.agent_name.clone(),
                    version: s.version.clone(),
                    allowed_permissions: Some(proto::ParticipantPermission {
                        can_subscribe: true,
                        can_publish: true,
                        can_publish_data: true,
                        can_update_metadata: true,
                        agent: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                tracing::debug!(%url, attempt = state.failures, "connecting to LiveKit");
                state.connection = Some(tokio::spawn(run_connection(myself.clone(), state.generation, url, token, register)));
                state.publish();
            }
            LinkMsg::Registered { generation, worker_id, out } => {
                if generation != state.generation {
                    return Ok(());
                }
                let again = state.registered_once;
                tracing::info!(%worker_id, agent_name = %state.args.settings.agent_name, reregistration = again, "registered with LiveKit");
                state.args.telemetry.event("reconnect", "worker/livekit", format!("registered as {worker_id}"));
                state.out = Some(out);
                state.worker_id = Some(worker_id);
                state.registered_once = true;
                state.failures = 0;
                state.last_error = None;
                // Jobs still running, and those that ended while the link was down (their final
                // status follows the migration).
                let mut job_ids: Vec<String> = state.jobs.keys().cloned().collect();
                for update in &state.pending_updates {
                    if !job_ids.contains(&update.job_id) {
                        job_ids.push(update.job_id.clone());
                    }
                }
                if again && !job_ids.is_empty() {
                    tracing::info!(?job_ids, "claiming the jobs still running with migrate_job");
                    state.send(WorkerMsg::MigrateJob(proto::MigrateJobRequest { job_ids }));
                }
                for update in std::mem::take(&mut state.pending_updates) {
                    if !state.send(WorkerMsg::UpdateJob(update.clone())) {
                        state.pending_updates.push(update);
                    }
                }
                state.send_status();
            }
            LinkMsg::ConnectFailed { generation, error, fatal } => {
                if generation != state.generation {
                    return Ok(());
                }
                if fatal {
                    give_up(state, error);
                } else {
                    schedule_reconnect(&myself, state, error);
                }
            }
            LinkMsg::Disconnected { generation, reason } => {
                if generation != state.generation {
                    return Ok(());
                }
                let running = state.jobs.len();
                tracing::warn!(%reason, running_jobs = running, "LiveKit link lost; running consultations continue");
                state.out = None;
                state.connection = None;
                // Accepted but unassigned jobs go to another worker.
                state.reservations.clear();
                schedule_reconnect(&myself, state, reason);
            }
            LinkMsg::Server { generation, message } => {
                if generation != state.generation {
                    return Ok(());
                }
                on_server_message(&myself, state, *message);
            }
            LinkMsg::Tick => {
                state.stats = state.sampler.sample();
                state.send_status();
            }
            LinkMsg::AssignmentOverdue { job_id } => {
                if state.reservations.remove(&job_id).is_some() {
                    tracing::warn!(%job_id, "accepted job was never assigned; slot released");
                    state.publish();
                }
            }
            LinkMsg::JobFinished { job_id, result } => {
                let Some(job) = state.jobs.remove(&job_id) else { return Ok(()) };
                let path = format!("worker/livekit/job/{job_id}");
                match result {
                    Ok(()) => {
                        tracing::info!(%job_id, session_id = %job.session_id, "job finished");
                        state.update_job(&job_id, proto::JobStatus::JsSuccess, String::new());
                    }
                    Err(error) => {
                        tracing::error!(%job_id, session_id = %job.session_id, %error, "job failed");
                        state.args.telemetry.event("failure", path, error.clone());
                        state.update_job(&job_id, proto::JobStatus::JsFailed, error);
                    }
                }
                state.send_status();
            }
            LinkMsg::Drain => {
                if !state.draining {
                    state.draining = true;
                    tracing::info!(running_jobs = state.jobs.len(), "draining: reporting FULL and refusing new jobs");
                    state.args.telemetry.event("status", "worker/livekit", "draining");
                }
                state.send_status();
            }
            LinkMsg::Shutdown => myself.stop(Some("worker shutdown".into())),
        }
        Ok(())
    }
}

fn give_up(state: &mut LinkState, reason: String) {
    tracing::error!(%reason, "LiveKit link gave up");
    state.last_error = Some(reason.clone());
    state.fatal = Some(reason);
    state.out = None;
    state.publish();
}

/// Backoff min(2n, 10) s for the n-th consecutive failure (the first retry is immediate).
pub fn reconnect_delay(failures: u32) -> Duration {
    Duration::from_secs(u64::from(failures.saturating_mul(2)).min(10))
}

fn schedule_reconnect(myself: &ActorRef<LinkMsg>, state: &mut LinkState, error: String) {
    state.last_error = Some(error.clone());
    let max = state.args.settings.reconnect_max_tries;
    if state.failures >= max {
        let url = state.args.client.url().to_owned();
        give_up(state, format!("could not reconnect to LiveKit at {url} after {max} attempts; last error: {error}"));
        return;
    }
    let delay = reconnect_delay(state.failures);
    state.failures += 1;
    tracing::warn!(%error, attempt = state.failures, max, ?delay, "reconnecting to LiveKit");
    state.args.telemetry.event("reconnect", "worker/livekit", format!("attempt {} in {delay:?}: {error}", state.failures));
    myself.send_after(delay, || LinkMsg::Connect);
    state.publish();
}

fn on_server_message(myself: &ActorRef<LinkMsg>, state: &mut LinkState, message: ServerMsg) {
    match message {
        ServerMsg::Register(_) => tracing::debug!("duplicate register answer ignored"),
        ServerMsg::Availability(request) => on_availability(myself, state, request),
        ServerMsg::Assignment(assignment) => on_assignment(myself, state, assignment),
        ServerMsg::Termination(t) => {
            if let Some(job) = state.jobs.get(&t.job_id) {
                if *job.terminate.borrow() {
                    tracing::debug!(job_id = %t.job_id, "repeated termination ignored");
                } else {
                    tracing::info!(job_id = %t.job_id, session_id = %job.session_id, "LiveKit terminated the job; ending the consultation");
                    job.terminate.send_replace(true);
                    state.publish();
                }
            } else if state.reservations.remove(&t.job_id).is_some() {
                tracing::info!(job_id = %t.job_id, "job terminated before its assignment");
                state.publish();
            } else {
                tracing::debug!(job_id = %t.job_id, "termination for a job that is not running here ignored");
            }
        }
        ServerMsg::Pong(_) => {}
        ServerMsg::GoAway(_) => {
            tracing::info!("LiveKit asked the worker to go away; reconnecting");
            state.drop_connection();
            schedule_reconnect(myself, state, "server sent go_away".into());
        }
    }
}

fn on_availability(myself: &ActorRef<LinkMsg>, state: &mut LinkState, request: proto::AvailabilityRequest) {
    let Some(job) = request.job else {
        tracing::warn!("availability request without a job ignored");
        return;
    };
    let room = job.room.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let known = state.jobs.contains_key(&job.id);
    let answer = if known {
        // A resumed job we are already running.
        Ok(state.jobs[&job.id].session_id.clone())
    } else {
        state.admit(&job)
    };
    let response = match answer {
        Ok(session_id) => {
            let identity = state.identity(&job.id);
            tracing::info!(job_id = %job.id, %room, %session_id, resuming = request.resuming, "accepting job");
            if !known {
                state.reservations.insert(job.id.clone(), Reservation { session_id, room, identity: identity.clone() });
                let job_id = job.id.clone();
                myself.send_after(ASSIGNMENT_TIMEOUT, move || LinkMsg::AssignmentOverdue { job_id });
            }
            proto::AvailabilityResponse {
                job_id: job.id.clone(),
                available: true,
                participant_identity: identity,
                participant_name: state.args.settings.agent_name.clone(),
                ..Default::default()
            }
        }
        Err(reason) => {
            tracing::warn!(job_id = %job.id, room = %super::printable(&room), %reason, "refusing job");
            proto::AvailabilityResponse { job_id: job.id.clone(), available: false, ..Default::default() }
        }
    };
    state.send(WorkerMsg::Availability(response));
    state.publish();
}

fn on_assignment(myself: &ActorRef<LinkMsg>, state: &mut LinkState, assignment: proto::JobAssignment) {
    let Some(job) = assignment.job else {
        tracing::warn!("assignment without a job ignored");
        return;
    };
    if state.jobs.contains_key(&job.id) {
        tracing::debug!(job_id = %job.id, "repeated assignment ignored");
        return;
    }
    let reservation = match state.reservations.remove(&job.id) {
        Some(r) => r,
        None => match state.admit(&job) {
            // Late (after the reservation expired) but still acceptable.
            Ok(session_id) => Reservation {
                session_id,
                room: job.room.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                identity: state.identity(&job.id),
            },
            Err(reason) => {
                tracing::warn!(job_id = %job.id, %reason, "refusing an assignment that was not accepted");
                state.update_job(&job.id, proto::JobStatus::JsFailed, format!("worker cannot take this job: {reason}"));
                return;
            }
        },
    };
    let url = assignment.url.filter(|u| !u.is_empty()).unwrap_or_else(|| state.args.client.url().to_owned());
    let accepted = AcceptedJob {
        job_id: job.id.clone(),
        room: reservation.room.clone(),
        session_id: reservation.session_id.clone(),
        identity: reservation.identity,
        url,
        token: Secret::new(assignment.token),
    };
    let (terminate, terminated) = watch::channel(false);
    state.jobs.insert(
        job.id.clone(),
        RunningJob { room: reservation.room, session_id: reservation.session_id, started_at: Utc::now(), terminate },
    );
    state.update_job(&job.id, proto::JobStatus::JsRunning, String::new());
    let runner = state.args.runner.clone();
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
    state.send_status();
}

/// One `/agent` connection: connect, register, then pump frames both ways until it breaks.
async fn run_connection(me: ActorRef<LinkMsg>, generation: u64, url: url::Url, token: Secret, register: proto::RegisterWorkerRequest) {
    let failed = |error: String, fatal: bool| LinkMsg::ConnectFailed { generation, error, fatal };
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            let _ = me.send_message(failed(format!("invalid LiveKit URL {url}: {e}"), true));
            return;
        }
    };
    let bearer = match format!("Bearer {}", token.expose()).parse() {
        Ok(v) => v,
        Err(_) => {
            let _ = me.send_message(failed("the worker token is not a valid header value".into(), true));
            return;
        }
    };
    request.headers_mut().insert(tungstenite::http::header::AUTHORIZATION, bearer);
    // Nagle off: an update_worker right after an update_job must not wait for an ACK.
    let ws = match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async_with_config(request, None, true)).await {
        Err(_) => {
            let _ = me.send_message(failed(format!("connecting to {url} timed out after {CONNECT_TIMEOUT:?}"), false));
            return;
        }
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).trim().to_owned()).unwrap_or_default();
            let (fatal, hint) = match status {
                401 | 403 => (true, "LiveKit refused the worker token: check that LIVEKIT_API_KEY / LIVEKIT_API_SECRET belong to this server"),
                404 => (true, "no agent endpoint there: is livekit.url the LiveKit server?"),
                _ => (false, "the LiveKit server refused the connection"),
            };
            let _ = me.send_message(failed(format!("{hint} (HTTP {status} from {url}: {body})"), fatal));
            return;
        }
        Ok(Err(e)) => {
            let _ = me.send_message(failed(format!("cannot connect to {url}: {}", super::error_chain(&e)), false));
            return;
        }
        Ok(Ok((ws, _))) => ws,
    };
    let (mut sink, mut stream) = ws.split();
    let hello = proto::WorkerMessage { message: Some(WorkerMsg::Register(register)) };
    if let Err(e) = sink.send(Frame::Binary(hello.encode_to_vec().into())).await {
        let _ = me.send_message(failed(format!("sending register failed: {e}"), false));
        return;
    }
    let registered = tokio::time::timeout(REGISTER_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(frame)) => match decode(&frame) {
                    Some(Ok(ServerMsg::Register(r))) => return Ok(r),
                    Some(Ok(_)) => tracing::debug!("message before the register answer ignored"),
                    Some(Err(detail)) => tracing::warn!(%detail, "garbage frame from LiveKit ignored"),
                    None => {}
                },
                Some(Err(e)) => return Err(format!("connection failed before registration: {e}")),
                None => return Err("connection closed before registration".to_owned()),
            }
        }
    })
    .await;
    let response = match registered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let _ = me.send_message(failed(e, false));
            return;
        }
        Err(_) => {
            let _ = me.send_message(failed(format!("no register answer within {REGISTER_TIMEOUT:?}"), false));
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<proto::WorkerMessage>(OUT_QUEUE);
    if me.send_message(LinkMsg::Registered { generation, worker_id: response.worker_id, out: out_tx }).is_err() {
        return;
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_frame = Instant::now();
    let reason = loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(m) => {
                    if let Err(e) = sink.send(Frame::Binary(m.encode_to_vec().into())).await {
                        break format!("send failed: {e}");
                    }
                }
                None => {
                    // The actor let go of the connection: close politely.
                    let _ = sink.send(Frame::Close(None)).await;
                    return;
                }
            },
            frame = stream.next() => {
                last_frame = Instant::now();
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => break format!("connection failed: {e}"),
                    None => break "connection closed by the server".to_owned(),
                };
                if let Frame::Close(c) = &frame {
                    break format!("closed by the server: {}", c.as_ref().map(|c| format!("{} {}", c.code, c.reason)).unwrap_or_default());
                }
                match decode(&frame) {
                    Some(Ok(message)) => {
                        let delivered = me.send_message(LinkMsg::Server { generation, message: Box::new(message) });
                        if delivered.is_err() {
                            return;
                        }
                    }
                    Some(Err(detail)) => tracing::warn!(%detail, "garbage frame from LiveKit ignored"),
                    None => {}
                }
            }
            _ = ping.tick() => {
                if last_frame.elapsed() > IDLE_TIMEOUT {
                    break format!("no frame from the server for {:?}", last_frame.elapsed());
                }
                if let Err(e) = sink.send(Frame::Ping(Vec::new().into())).await {
                    break format!("ping failed: {e}");
                }
            }
        }
    };
    let _ = me.send_message(LinkMsg::Disconnected { generation, reason });
}

/// A server frame: protobuf (binary) or protojson (text). `None` for control frames.
fn decode(frame: &Frame) -> Option<Result<ServerMsg, String>> {
    let message = match frame {
        Frame::Binary(b) => proto::ServerMessage::decode(b.as_ref())
            .map_err(|e| format!("undecodable binary ServerMessage ({} bytes): {e}", b.len())),
        Frame::Text(t) => serde_json::from_str::<proto::ServerMessage>(t.as_str())
            .map_err(|e| format!("unparsable JSON ServerMessage ({} bytes): {e}", t.len())),
        _ => return None,
    };
    Some(message.and_then(|m| m.message.ok_or_else(|| "empty ServerMessage".to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_min_2n_10() {
        let secs: Vec<u64> = (0..8).map(|n| reconnect_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 2, 4, 6, 8, 10, 10, 10]);
    }

    #[test]
    fn garbage_frames_decode_to_errors() {
        assert!(decode(&Frame::Binary(vec![0xff, 0xff, 0xff].into())).unwrap().is_err());
        assert!(decode(&Frame::Text("{not json".into())).unwrap().is_err());
        assert!(decode(&Frame::Binary(Vec::new().into())).unwrap().is_err());
        assert!(decode(&Frame::Ping(Vec::new().into())).is_none());
    }
}
