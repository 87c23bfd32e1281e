//! `consultant start` (production) and `consultant dev` (the Python module's `run_voice_agent.py dev`).

use std::sync::Arc;

use consultant_actors::ports::AnketaExtractor;
use consultant_actors::telemetry::Telemetry;

use crate::config::{Config, Service};
use crate::deepseek::{DeepSeekConfig, DeepSeekExtractor};
use crate::livekit::WorkerMode;
use crate::realtime::{AzureRealtimeClient, RealtimeConfig};
use crate::room::{LiveKitRooms, RoomOptions};
use crate::store::{default_worker_id, Store};
use crate::tls::ClientTls;
use crate::worker::{self, WorkerParts};

pub async fn run(config: &Config, mode: WorkerMode) -> anyhow::Result<()> {
    let mut config = config.clone();
    // `dev` with no LiveKit URL configured serves its own development server (and the page).
    let embedded = mode == WorkerMode::Dev && !config.livekit.url_given;
    let services: &[Service] = if embedded { &[Service::Realtime, Service::DeepSeek] } else { &[Service::LiveKit, Service::Realtime, Service::DeepSeek] };
    config.require(services)?;
    let log = crate::logging::init(&config.logging, mode == WorkerMode::Dev)
        .map_err(|e| anyhow::anyhow!("cannot open the log file in {}: {e}", config.logging.dir.display()))?;
    let worker_id = Some(config.storage.worker_id.trim()).filter(|id| !id.is_empty()).map_or_else(default_worker_id, str::to_owned);
    let store = Arc::new(Store::from_config(&config.storage, Some(&worker_id)).await?);
    tracing::info!(store = %store.location(), worker_id, lease = ?store.lease().duration, "dialogue store open");
    // Orphans are swept twice a lease, so a dead peer's call is taken up within 1.5 leases.
    let sweep_every = Some((store.lease().duration / 2).max(std::time::Duration::from_millis(500)));
    let _dev_server = match embedded {
        true => Some(crate::dev_server::start(&mut config, store.clone()).await?),
        false => None,
    };
    let config = &config;
    // One trust policy for every connection the worker makes.
    let tls = ClientTls::from_config(&config.tls)?;
    tracing::info!(trusts = %tls.summary(), "outgoing TLS trust");
    let (realtime, extractor) = adapters(config, &tls)?;
    let stats = realtime.stats();
    let telemetry = Telemetry::new();
    let agent_latency = Some(telemetry.metrics().worker_added_latency.clone());
    let agent_lateness = Some(telemetry.metrics().agent_frame_lateness.clone());
    let rooms = LiveKitRooms { options: RoomOptions { tls: tls.clone(), agent_latency, agent_lateness, ..Default::default() } };
    let parts = WorkerParts { connector: realtime, extractor, store, rooms: Arc::new(rooms), tls, sweep_every, telemetry };
    let result = worker::run(config, mode, parts, Some(log.level.clone()), Some(stats)).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "worker failed");
    }
    result
}

/// The realtime connector (Azure/OpenAI) and the anketa extractor (DeepSeek) from config.
fn adapters(config: &Config, tls: &ClientTls) -> anyhow::Result<(Arc<AzureRealtimeClient>, Arc<dyn AnketaExtractor>)> {
    let realtime = AzureRealtimeClient::new(RealtimeConfig::from_section(&config.realtime, &config.consultation.language), tls.clone())
        .map_err(|e| anyhow::anyhow!("realtime settings: {e}"))?;
    let extractor = DeepSeekExtractor::new(DeepSeekConfig::from_section(&config.deepseek), config.consultation.anketa_fields.clone(), tls)
        .map_err(|e| anyhow::anyhow!("deepseek settings: {e}"))?;
    Ok((Arc::new(realtime), Arc::new(extractor)))
}

