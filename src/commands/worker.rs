//! `consultant start` (production) and `consultant dev` (the seed's `run_voice_agent.py dev`).

use std::sync::Arc;

use crate::config::{Config, Service};
use crate::entrypoint::RoomMediaMissing;
use crate::livekit::WorkerMode;
use crate::store::SqliteStore;
use crate::worker::{self, WorkerParts};

pub async fn run(config: &Config, mode: WorkerMode) -> anyhow::Result<()> {
    config.require(&[Service::LiveKit, Service::Realtime, Service::DeepSeek])?;
    let _log = crate::logging::init(&config.logging, mode == WorkerMode::Dev)
        .map_err(|e| anyhow::anyhow!("cannot open the log file in {}: {e}", config.logging.dir.display()))?;
    let store = Arc::new(SqliteStore::open(&config.storage.path, &config.storage.synchronous)?);
    let (connector, extractor) = adapters(config)?;
    let parts = WorkerParts { connector, extractor, store, rooms: Arc::new(RoomMediaMissing) };
    let result = worker::run(config, mode, parts).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "worker failed");
    }
    result
}

/// The realtime connector and the anketa extractor.
fn adapters(
    _config: &Config,
) -> anyhow::Result<(Arc<dyn consultant_actors::ports::RealtimeConnector>, Arc<dyn consultant_actors::ports::AnketaExtractor>)> {
    anyhow::bail!("this build has no realtime (Azure OpenAI) and DeepSeek adapters yet; they are wired here when they land")
}
