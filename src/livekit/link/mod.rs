//! The agent-worker link: one actor, linked under the WorkerSupervisor, that keeps the
//! `/agent` WebSocket to LiveKit, answers availability requests, runs assigned jobs through a
//! [`JobRunner`] (the entrypoint), reports their status, and reconnects on its own.
//!
//! The socket lives in a connection task owned by the actor; every frame becomes an actor
//! message tagged with the connection's generation, so frames of a dead connection are ignored.
//! Jobs run in their own tasks: a dropped link never touches a running consultation; after a
//! re-registration the jobs still running are claimed back with `migrate_job`, and job status
//! updates made while the link was down are sent then.
//!
//! Split by concern: `socket` is the connection task, `jobs` the job bookkeeping; this
//! module is the actor that ties them together and publishes the link's status.

mod jobs;
mod socket;

pub use jobs::{AcceptedJob, JobRunner};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use consultant_actors::telemetry::Telemetry;
use livekit_protocol as proto;
use proto::server_message::Message as ServerMsg;
use proto::worker_message::Message as WorkerMsg;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::load::{worker_load, ProcessSampler, ProcessStats};
use super::{LiveKitClient, WorkerMode};
use jobs::JobBook;

/// How often `update_worker` is sent (as the Python worker does).
pub const UPDATE_INTERVAL: Duration = Duration::from_millis(2500);

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
    /// Shared with the console, so the worker view and the load report agree.
    pub process: ProcessSampler,
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
    jobs: JobBook,
    draining: bool,
    /// The last sample of the shared process sampler (`args.process`).
    stats: ProcessStats,
    last_status: proto::WorkerStatus,
    ticker: Option<JoinHandle<()>>,
}

pub struct WorkerLink;

impl LinkState {
    fn load(&self) -> f64 {
        worker_load(self.jobs.busy(), self.args.settings.capacity, self.stats.cpu)
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
            jobs: self.jobs.running(),
            draining: self.draining,
            status: status.into(),
            load,
            last_error: self.last_error.clone(),
            fatal: self.fatal.clone(),
        });
        let s = &self.args.settings;
        let jobs = self.jobs.views();
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
            self.stats.show(w);
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
            job_count: self.jobs.running() as u32,
            draining: self.draining,
            ..Default::default()
        };
        self.send(WorkerMsg::UpdateWorker(update));
        self.publish();
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
        let stats = args.process.sample();
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
            jobs: JobBook::default(),
            draining: false,
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
                let register = socket::register_request(&state.args.settings);
                tracing::debug!(%url, attempt = state.failures, "connecting to LiveKit");
                state.connection = Some(tokio::spawn(socket::run_connection(myself.clone(), state.generation, url, token, register, state.args.client.tls().clone())));
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
                state.reclaim_jobs(again);
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
                let running = state.jobs.running();
                tracing::warn!(%reason, running_jobs = running, "LiveKit link lost; running consultations continue");
                state.out = None;
                state.connection = None;
                // Accepted but unassigned jobs go to another worker.
                state.jobs.forget_reservations();
                schedule_reconnect(&myself, state, reason);
            }
            LinkMsg::Server { generation, message } => {
                if generation != state.generation {
                    return Ok(());
                }
                on_server_message(&myself, state, *message);
            }
            LinkMsg::Tick => {
                state.stats = state.args.process.sample();
                state.send_status();
            }
            LinkMsg::AssignmentOverdue { job_id } => state.on_assignment_overdue(&job_id),
            LinkMsg::JobFinished { job_id, result } => state.on_job_finished(&job_id, result),
            LinkMsg::Drain => {
                if !state.draining {
                    state.draining = true;
                    tracing::info!(running_jobs = state.jobs.running(), "draining: reporting FULL and refusing new jobs");
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
        ServerMsg::Availability(request) => state.on_availability(myself, request),
        ServerMsg::Assignment(assignment) => state.on_assignment(myself, assignment),
        ServerMsg::Termination(t) => state.on_termination(t),
        ServerMsg::Pong(_) => {}
        ServerMsg::GoAway(_) => {
            tracing::info!("LiveKit asked the worker to go away; reconnecting");
            state.drop_connection();
            schedule_reconnect(myself, state, "server sent go_away".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_min_2n_10() {
        let secs: Vec<u64> = (0..8).map(|n| reconnect_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 2, 4, 6, 8, 10, 10, 10]);
    }
}
