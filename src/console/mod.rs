//! The remote debug console: a WebSocket + JSON server in the worker (this module) and its
//! client, `consultant console` (a terminal UI or one-shot JSON for scripts).
//!
//! Server shape: a `ConsoleActor` (ractor, `worker/console` in the tree) owns two tasks: the
//! accept loop (one task per connection) and the [`hub`], the single owner of what consoles
//! were told. Actors never talk to the console: they write the telemetry board, the hub
//! reads it once a tick. Protocol: [`protocol`]. Security: bearer tokens in two scopes
//! ([`auth`]), TLS for anything but loopback ([`tls`]), an audit line per action.

pub mod actions;
pub mod auth;
pub mod client;
mod connection;
pub mod hub;
pub mod protocol;
pub mod tls;
pub mod tui;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consultant_actors::handler::VoiceHandler;
use consultant_actors::restart::{RestartDecision, RestartPolicy, RestartTracker};
use consultant_actors::supervisor::SupervisorMsg;
use consultant_actors::telemetry::Telemetry;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::ConsoleConfig;
use crate::logging::LevelControl;
use crate::process_stats::ProcessSampler;
use auth::Tokens;
use connection::{Place, Shared};
use hub::{Counters, Hub};
pub use protocol::ConsoleStats;

/// Called when an operator drains the worker (the LiveKit link then reports FULL).
pub type DrainHook = Arc<dyn Fn() + Send + Sync>;

/// What the console needs from the worker.
#[derive(Clone)]
pub struct ConsoleControl {
    pub telemetry: Telemetry,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// None when the process did not install the reloadable logger (tests).
    pub level: Option<LevelControl>,
    pub drain: DrainHook,
    /// The process sampler the worker view's CPU and RSS come from; the worker passes the
    /// one its LiveKit link reads, so both report the same figures.
    pub process: ProcessSampler,
}

impl ConsoleControl {
    /// With a sampler of its own; [`ConsoleControl::with_process_sampler`] shares one.
    pub fn new(handler: &VoiceHandler, level: Option<LevelControl>, drain: DrainHook) -> Self {
        Self {
            telemetry: handler.telemetry().clone(),
            supervisor: handler.supervisor().clone(),
            level,
            drain,
            process: ProcessSampler::new(),
        }
    }

    pub fn with_process_sampler(mut self, process: ProcessSampler) -> Self {
        self.process = process;
        self
    }
}

/// Tunables; the defaults are what the worker runs with.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    /// Deltas go out at most this often per topic.
    pub delta_interval: Duration,
    /// Frames buffered per client; a client that lets more pile up is dropped.
    pub client_queue: usize,
    /// A frame the socket does not take within this long drops the client.
    pub write_timeout: Duration,
    /// TLS + WebSocket handshake and the `auth` message must complete within this long.
    pub handshake_timeout: Duration,
}

/// One delta per topic per second at most.
pub const DELTA_INTERVAL: Duration = Duration::from_secs(1);
/// About a minute of deltas plus bursts of events.
pub const CLIENT_QUEUE: usize = 64;
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests from connections to the hub waiting to be handled.
const HUB_REQUESTS: usize = 64;

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            delta_interval: DELTA_INTERVAL,
            client_queue: CLIENT_QUEUE,
            write_timeout: WRITE_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console.listen `{0}` is not an address like 127.0.0.1:7700")]
    Address(String),
    #[error("cannot listen on {addr} for the console: {source} (is another worker running? change console.listen)")]
    Bind { addr: String, source: std::io::Error },
    #[error("the console on {0} is not loopback and has no TLS: set console.tls_cert and console.tls_key, or listen on 127.0.0.1")]
    NeedsTls(SocketAddr),
    #[error(transparent)]
    Tokens(#[from] auth::TokenError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the console actor did not start: {0}")]
    Spawn(String),
}

/// The running console server.
pub struct ConsoleServer {
    addr: SocketAddr,
    tls: bool,
    actor: ActorRef<ConsoleMsg>,
    /// The actor's task, awaited by [`ConsoleServer::shutdown`].
    task: JoinHandle<()>,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
}

impl ConsoleServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://` or `wss://` URL of the server.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "wss" } else { "ws" }, self.addr)
    }

    pub fn stats(&self) -> ConsoleStats {
        self.counters.stats()
    }

    /// The ConsoleActor's cell (a child of the WorkerSupervisor).
    pub fn actor(&self) -> ractor::ActorCell {
        self.actor.get_cell()
    }

    /// Time the hub has spent building and sending frames.
    pub fn publish_time(&self) -> Duration {
        Duration::from_nanos(self.counters.publish_nanos.load(Ordering::Relaxed))
    }

    /// Frames queued to clients so far.
    pub fn frames_sent(&self) -> u64 {
        self.counters.deltas_sent.load(Ordering::Relaxed)
    }

    /// Closes every connection (1001) and stops the server.
    pub async fn shutdown(self) {
        // Connections watch this to send their close frames; none may be open.
        self.shutdown.send_replace(true);
        // Give connections a moment to send their close frames.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.actor.stop(Some("shutdown".into()));
        if tokio::time::timeout(Duration::from_secs(2), self.task).await.is_err() {
            tracing::warn!("the console actor did not stop within 2 s");
        }
    }
}

/// Starts the console on `config.listen` with the default options.
pub async fn serve(config: &ConsoleConfig, control: ConsoleControl) -> Result<ConsoleServer, ConsoleError> {
    serve_with(config, control, ConsoleOptions::default()).await
}

pub async fn serve_with(config: &ConsoleConfig, control: ConsoleControl, options: ConsoleOptions) -> Result<ConsoleServer, ConsoleError> {
    let addr: SocketAddr = config.listen.parse().map_err(|_| ConsoleError::Address(config.listen.clone()))?;
    let acceptor = tls::acceptor(config.tls_cert.as_deref(), config.tls_key.as_deref())?;
    if !addr.ip().is_loopback() && acceptor.is_none() {
        return Err(ConsoleError::NeedsTls(addr));
    }
    let config_for_tokens = config.clone();
    let (tokens, generated) = tokio::task::spawn_blocking(move || Tokens::load(&config_for_tokens))
        .await
        .map_err(|e| ConsoleError::Spawn(e.to_string()))??;
    if let Some(path) = generated {
        tracing::info!(path = %path.display(), "console tokens generated (read-only and operator) and written to this file, mode 0600; read them from there");
    }
    let listener = TcpListener::bind(addr).await.map_err(|source| ConsoleError::Bind { addr: addr.to_string(), source })?;
    let bound = listener.local_addr().map_err(|source| ConsoleError::Bind { addr: addr.to_string(), source })?;
    let counters = Arc::new(Counters::default());
    counters.max_clients.store(config.max_clients, Ordering::Relaxed);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let args = ConsoleArgs {
        listener: Arc::new(listener),
        acceptor,
        tokens,
        control: control.clone(),
        options,
        counters: counters.clone(),
        shutdown: shutdown_rx,
        max_clients: config.max_clients.max(1),
    };
    // Linked under the WorkerSupervisor: the worker's shutdown stops it with everything else.
    let supervisor = control.supervisor.get_cell();
    let (actor, task) = Actor::spawn_linked(None, ConsoleActor, args, supervisor).await.map_err(|e| ConsoleError::Spawn(e.to_string()))?;
    tracing::info!(addr = %bound, tls = acceptor_kind(config), "console listening");
    Ok(ConsoleServer { addr: bound, tls: config.tls_cert.is_some() && config.tls_key.is_some(), actor, task, counters, shutdown })
}

fn acceptor_kind(config: &ConsoleConfig) -> bool {
    config.tls_cert.is_some() && config.tls_key.is_some()
}

/// The telemetry path of the console in the supervision tree.
pub const CONSOLE_PATH: &str = "worker/console";

struct ConsoleArgs {
    listener: Arc<TcpListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    tokens: Tokens,
    control: ConsoleControl,
    options: ConsoleOptions,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
    max_clients: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    Hub,
    Accept,
}

enum ConsoleMsg {
    /// A task of the console ended (a panic, or the hub lost the board).
    TaskEnded(Task, String),
    Restart(Task),
}

struct ConsoleState {
    args: ConsoleArgs,
    /// Rebuilt with each hub (connections reach the hub through it).
    shared: Option<Arc<Shared>>,
    hub: Option<JoinHandle<()>>,
    accept: Option<JoinHandle<()>>,
    restarts: RestartTracker,
    policy: RestartPolicy,
}

use hub::HubRequest;

struct ConsoleActor;

/// Runs a console task; its end (or panic) is reported to the actor.
fn supervised(me: ActorRef<ConsoleMsg>, task: Task, body: impl std::future::Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
    use futures_util::FutureExt as _;
    tokio::spawn(async move {
        let why = match std::panic::AssertUnwindSafe(body).catch_unwind().await {
            Ok(()) => format!("the {task:?} task stopped"),
            Err(panic) => {
                let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                format!("the {task:?} task panicked: {}", text.unwrap_or_default())
            }
        };
        let _ = me.send_message(ConsoleMsg::TaskEnded(task, why));
    })
}

impl ConsoleActor {
    /// Starts the hub (with a fresh request channel) and then the accept loop that hands it
    /// to connections.
    fn start_hub(myself: &ActorRef<ConsoleMsg>, state: &mut ConsoleState) {
        let (tx, rx) = mpsc::channel(HUB_REQUESTS);
        state.shared = Some(Arc::new(shared(&state.args, tx)));
        let hub = Hub::new(state.args.control.telemetry.clone(), state.args.counters.clone(), state.args.control.process.clone());
        let body = hub.run(rx, state.args.options.delta_interval, state.args.shutdown.clone());
        if let Some(old) = state.hub.replace(supervised(myself.clone(), Task::Hub, body)) {
            old.abort();
        }
        Self::start_accept(myself, state);
    }

    fn start_accept(myself: &ActorRef<ConsoleMsg>, state: &mut ConsoleState) {
        let listener = state.args.listener.clone();
        let acceptor = state.args.acceptor.clone();
        let shared = state.shared.clone().expect("the hub starts first");
        let counters = state.args.counters.clone();
        let max = state.args.max_clients;
        let mut shutdown = state.args.shutdown.clone();
        let body = async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = shutdown.changed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "console accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let place = Place::take(&counters, max);
                let shared = shared.clone();
                match acceptor.clone() {
                    None => {
                        tokio::spawn(connection::serve(stream, peer, shared, place));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            match tokio::time::timeout(shared.options.handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => connection::serve(tls, peer, shared, place).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "console TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "console TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
        };
        if let Some(old) = state.accept.replace(supervised(myself.clone(), Task::Accept, body)) {
            old.abort();
        }
    }
}

fn shared(args: &ConsoleArgs, hub: mpsc::Sender<HubRequest>) -> Shared {
    Shared {
        tokens: args.tokens.clone(),
        control: args.control.clone(),
        options: args.options.clone(),
        counters: args.counters.clone(),
        hub,
        shutdown: args.shutdown.clone(),
        next_client: AtomicU64::new(1),
        max_clients: args.max_clients,
    }
}

#[ractor::async_trait]
impl Actor for ConsoleActor {
    type Msg = ConsoleMsg;
    type State = ConsoleState;
    type Arguments = ConsoleArgs;

    async fn pre_start(&self, myself: ActorRef<ConsoleMsg>, args: ConsoleArgs) -> Result<ConsoleState, ActorProcessingErr> {
        let mut state = ConsoleState {
            args,
            shared: None,
            hub: None,
            accept: None,
            restarts: RestartTracker::default(),
            policy: RestartPolicy::default(),
        };
        Self::start_hub(&myself, &mut state);
        state.args.control.telemetry.actor_started(CONSOLE_PATH, "console");
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<ConsoleMsg>, state: &mut ConsoleState) -> Result<(), ActorProcessingErr> {
        for task in [state.hub.take(), state.accept.take()].into_iter().flatten() {
            task.abort();
        }
        state.args.control.telemetry.actor_removed(CONSOLE_PATH);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<ConsoleMsg>, message: ConsoleMsg, state: &mut ConsoleState) -> Result<(), ActorProcessingErr> {
        match message {
            ConsoleMsg::TaskEnded(task, why) => {
                if *state.args.shutdown.borrow() {
                    return Ok(());
                }
                let telemetry = &state.args.control.telemetry;
                match state.restarts.on_failure(&state.policy, tokio::time::Instant::now(), why.clone()) {
                    RestartDecision::Restart { delay, attempt } => {
                        tracing::error!(?task, %why, attempt, "console task ended; restarting it");
                        telemetry.actor_failed(CONSOLE_PATH, &why, attempt, true);
                        myself.send_after(delay, move || ConsoleMsg::Restart(task));
                    }
                    RestartDecision::GiveUp { restarts_in_window } => {
                        telemetry.actor_failed(CONSOLE_PATH, &why, restarts_in_window, false);
                        return Err(format!("console task {task:?} keeps failing: {why}").into());
                    }
                }
            }
            ConsoleMsg::Restart(task) => {
                match task {
                    Task::Hub => Self::start_hub(&myself, state),
                    Task::Accept => Self::start_accept(&myself, state),
                }
                state.args.control.telemetry.actor_status(CONSOLE_PATH, consultant_actors::telemetry::ActorStatus::Running);
            }
        }
        Ok(())
    }
}
