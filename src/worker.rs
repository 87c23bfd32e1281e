//! The worker process (`consultant start` / `consultant dev`): the VoiceHandler and its
//! supervisor, the LiveKit link under it, the entrypoint, the health endpoint, and the signal
//! policy (start: drain; dev: stop at once). Every consultation is finalized before exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use consultant_actors::consultation::{EndReason, Ports};
use consultant_actors::ports::{AnketaExtractor, DialogueStore, RealtimeConnector};
use consultant_actors::supervisor::SupervisorMsg;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::VoiceHandler;
use ractor::ActorRef;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;

use crate::config::{Config, RealtimeFlavour};
use crate::console::{self, ConsoleControl};
use crate::logging::LevelControl;
use crate::entrypoint::{AgentDescription, Entrypoint, JobRooms};
use crate::health::{self, HealthServer};
use crate::livekit::link::{spawn_link, LinkArgs, LinkHandle, LinkSettings};
use crate::livekit::{LiveKitClient, WorkerMode};
use crate::process_stats::ProcessSampler;
use crate::tls::ClientTls;

/// How long the link gets to report the last job statuses before the process exits.
const FINAL_REPORT_WAIT: Duration = Duration::from_secs(3);

/// The adapters a worker runs with (real ones in `start`/`dev`, in-memory ones in tests).
pub struct WorkerParts {
    pub connector: Arc<dyn RealtimeConnector>,
    pub extractor: Arc<dyn AnketaExtractor>,
    pub store: Arc<dyn DialogueStore>,
    pub rooms: Arc<dyn JobRooms>,
    /// The trust policy of the LiveKit link and Twirp (the adapters above hold theirs).
    pub tls: ClientTls,
    /// How often to finalize sessions whose worker died (their lease expired) while this one
    /// runs; `None`: only at start-up. Only for a store with an owner (else it would take the
    /// sessions this worker runs).
    pub sweep_every: Option<Duration>,
    /// The worker's metrics; made before the adapters so they can observe into it.
    pub telemetry: Telemetry,
}

/// Puts the worker into drain: LiveKit sees FULL, new jobs and sessions are refused, running
/// consultations go on. Cheap to clone (for the console's "drain" action).
#[derive(Clone)]
pub struct DrainHook {
    link: LinkHandle,
    supervisor: ActorRef<SupervisorMsg>,
}

impl DrainHook {
    pub fn drain(&self) {
        self.link.drain();
        if self.supervisor.send_message(SupervisorMsg::Drain).is_err() {
            tracing::warn!("drain asked of a stopped worker supervisor");
        }
    }
}

/// A running worker.
pub struct Worker {
    mode: WorkerMode,
    handler: Arc<VoiceHandler>,
    telemetry: Telemetry,
    link: LinkHandle,
    /// None once it has been seen to end.
    link_task: Option<JoinHandle<()>>,
    health: HealthServer,
    drain_timeout: Duration,
    /// Read by the LiveKit link and the console alike.
    process: ProcessSampler,
    sweep: Option<JoinHandle<()>>,
}

/// Every `every`, the sessions a dead peer (or a previous process) left open once their lease
/// has expired: dispatched again where their caller still waits, finalized otherwise. A failed
/// sweep is retried at the next tick.
async fn sweep_orphans(handler: Arc<VoiceHandler>, livekit: Arc<LiveKitClient>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match handler.sweep_orphans(Some(livekit.as_ref())).await {
            Ok(done) => {
                if !done.finalized.is_empty() {
                    tracing::warn!(count = done.finalized.len(), "finalized sessions whose worker stopped renewing their lease");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping orphaned sessions failed; will retry"),
        }
    }
}

fn describe_model(config: &Config) -> String {
    let r = &config.realtime;
    match r.flavour {
        RealtimeFlavour::AzurePreview => format!("Azure OpenAI Realtime (preview {}), deployment {}", r.api_version, r.deployment),
        RealtimeFlavour::AzureGa => format!("Azure OpenAI Realtime (GA), deployment {}", r.deployment),
        RealtimeFlavour::OpenAi | RealtimeFlavour::OpenAiBeta => format!("OpenAI Realtime, model {}", r.model),
    }
}

impl Worker {
    /// Starts the supervisor (recovering sessions a previous process left open), the LiveKit
    /// link and the health endpoint.
    pub async fn start(config: &Config, mode: WorkerMode, parts: WorkerParts) -> anyhow::Result<Worker> {
        let telemetry = parts.telemetry;
        let settings = Arc::new(config.consultation_settings());
        let ports = Ports { connector: parts.connector, store: parts.store, extractor: parts.extractor };
        let handler = VoiceHandler::start(settings, ports, telemetry.clone()).await.context("starting the worker supervisor")?;
        let client = Arc::new(LiveKitClient::new(&config.livekit, &parts.tls)?);
        let recovered = handler.sweep_orphans(Some(client.as_ref())).await.context("recovering interrupted sessions")?;
        if !recovered.finalized.is_empty() {
            tracing::warn!(count = recovered.finalized.len(), "finalized sessions a previous worker left open");
        }
        let handler = Arc::new(handler);
        let sweep = parts.sweep_every.map(|every| tokio::spawn(sweep_orphans(handler.clone(), client.clone(), every)));
        let agent = AgentDescription { model: describe_model(config), system_prompt: config.consultation.system_prompt.clone() };
        let runner = Arc::new(Entrypoint::new(handler.clone(), parts.rooms, agent));
        let process = ProcessSampler::new();
        let args = LinkArgs {
            settings: LinkSettings::from_config(&config.livekit, mode),
            client,
            runner,
            telemetry: telemetry.clone(),
            process: process.clone(),
        };
        let listener = health::bind(&config.livekit.health_listen).await?;
        let (link, link_task) = spawn_link(args, handler.supervisor().get_cell()).await.context("starting the LiveKit link")?;
        let health = health::serve(listener, link.status.clone(), telemetry.clone())?;
        tracing::info!(mode = mode.as_str(), url = %config.livekit.url, agent_name = %config.livekit.agent_name, "worker started");
        Ok(Worker {
            mode,
            handler,
            telemetry,
            link,
            link_task: Some(link_task),
            health,
            drain_timeout: Duration::from_secs(config.livekit.drain_timeout_secs),
            process,
            sweep,
        })
    }

    pub fn handler(&self) -> &Arc<VoiceHandler> {
        &self.handler
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub fn link(&self) -> &LinkHandle {
        &self.link
    }

    pub fn process_sampler(&self) -> &ProcessSampler {
        &self.process
    }

    pub fn health_addr(&self) -> SocketAddr {
        self.health.addr()
    }

    pub fn drain_hook(&self) -> DrainHook {
        DrainHook { link: self.link.clone(), supervisor: self.handler.supervisor().clone() }
    }

    /// Ends every consultation (finalized), lets the link report the jobs, and stops.
    pub async fn shutdown(self) {
        self.handler.end_all(EndReason::Shutdown).await;
        self.stop_after_final_reports().await;
    }

    async fn stop_after_final_reports(self) {
        if tokio::time::timeout(FINAL_REPORT_WAIT, self.link.wait_for(|s| s.jobs == 0 || s.out_of_service())).await.is_err() {
            tracing::warn!(wait = ?FINAL_REPORT_WAIT, "stopping before LiveKit was told every job's final status");
        }
        self.link.shutdown();
        if let Some(sweep) = &self.sweep {
            sweep.abort();
        }
        if let Some(task) = self.link_task {
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                tracing::warn!("the LiveKit link did not stop within 2 s");
            }
        }
        self.health.stop();
        // Everything under the supervisor, and every task the actors started, has ended after this.
        self.handler.stop().await;
    }

    /// Runs until a signal (or the link gives up), with the mode's policy. `Err` carries the
    /// reason for a non-zero exit.
    pub async fn run_until_signal(mut self, signals: &mut Signals) -> anyhow::Result<()> {
        let link = self.link.clone();
        enum First {
            Signal(&'static str),
            Fatal(String),
            LinkStopped,
        }
        let first = {
            let task = self.link_task.as_mut().expect("the link task is kept until shutdown");
            tokio::select! {
                sig = signals.next() => First::Signal(sig),
                fatal = link.wait_for(|s| s.fatal.is_some()) => {
                    First::Fatal(fatal.and_then(|s| s.fatal).unwrap_or_else(|| "the LiveKit link stopped".into()))
                }
                _ = task => First::LinkStopped,
            }
        };
        let first = match first {
            First::Signal(sig) => sig,
            First::Fatal(reason) => return self.exit_with(signals, anyhow::anyhow!(reason)).await,
            First::LinkStopped => {
                self.link_task = None;
                return self.exit_with(signals, anyhow::anyhow!("the LiveKit link actor stopped unexpectedly")).await;
            }
        };
        if self.mode == WorkerMode::Start {
            let running = link.current().jobs;
            tracing::info!(signal = first, running_jobs = running, timeout = ?self.drain_timeout, "draining: no new jobs; running consultations may finish (signal again to stop now)");
            self.drain_hook().drain();
            // LiveKit hears FULL before anything else happens (even if nothing is running).
            let _ = tokio::time::timeout(Duration::from_secs(2), link.wait_for(|s| s.draining || s.out_of_service())).await;
            tokio::select! {
                _ = link.wait_for(|s| s.jobs == 0) => tracing::info!("drained: no consultation is running"),
                _ = tokio::time::sleep(self.drain_timeout) => tracing::warn!("drain timeout reached; ending the running consultations"),
                sig = signals.next() => tracing::warn!(signal = sig, "second signal: ending the running consultations now"),
                fatal = link.wait_for(|s| s.fatal.is_some()) => {
                    let reason = fatal.and_then(|s| s.fatal).unwrap_or_default();
                    return self.exit_with(signals, anyhow::anyhow!(reason)).await;
                }
            }
        } else {
            tracing::info!(signal = first, "dev mode: stopping now (consultations are finalized first)");
        }
        self.finalize(signals).await
    }

    /// Ends and finalizes all consultations; another signal meanwhile gives up on them.
    async fn finalize(self, signals: &mut Signals) -> anyhow::Result<()> {
        let handler = self.handler.clone();
        tokio::select! {
            _ = handler.end_all(EndReason::Shutdown) => {}
            sig = signals.next() => {
                tracing::error!(signal = sig, "forced exit before every consultation was finalized; the next start (or a peer's sweep) finishes them");
                return Err(anyhow::anyhow!("forced exit by {sig} during finalization"));
            }
        }
        self.stop_after_final_reports().await;
        tracing::info!("worker stopped");
        Ok(())
    }

    async fn exit_with(self, signals: &mut Signals, error: anyhow::Error) -> anyhow::Result<()> {
        tracing::error!(error = %error, "worker exiting");
        self.finalize(signals).await?;
        Err(error)
    }
}

/// SIGTERM and SIGINT, installed before anything starts so an early signal is not fatal.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// `consultant start` / `dev` once the adapters are built: the worker and, when enabled, the
/// debug console (its drain action drains like SIGTERM); runs until a signal.
pub async fn run(
    config: &Config,
    mode: WorkerMode,
    parts: WorkerParts,
    level: Option<LevelControl>,
    realtime_stats: Option<Arc<crate::realtime::RealtimeStats>>,
) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let worker = Worker::start(config, mode, parts).await?;
    // The realtime client's counters (unknown events, malformed frames) on the console's worker view.
    let _stats_copier = realtime_stats.map(|stats| {
        let telemetry = worker.telemetry().clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                let counters = stats.snapshot().into();
                telemetry.worker_update(|w| w.realtime = counters);
            }
        }))
    });
    let console = if config.console.enabled {
        let drain = worker.drain_hook();
        let control = ConsoleControl::new(worker.handler(), level, Arc::new(move || drain.drain()))
            .with_process_sampler(worker.process_sampler().clone());
        match console::serve(&config.console, control).await {
            Ok(server) => {
                tracing::info!(url = %server.url(), "debug console listening");
                Some(server)
            }
            Err(e) => {
                worker.shutdown().await;
                return Err(anyhow::anyhow!("debug console: {e}"));
            }
        }
    } else {
        None
    };
    let result = worker.run_until_signal(&mut signals).await;
    if let Some(console) = console {
        console.shutdown().await;
    }
    result
}

/// Stops a background task when the worker's run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
