//! `consultant start` (production) and `consultant dev` (the seed's `run_voice_agent.py dev`).

use std::sync::Arc;

use consultant_actors::ports::{AnketaExtractor, RealtimeConnector};

use crate::config::{Config, RealtimeFlavour as ConfigFlavour, Service};
use crate::deepseek::{DeepSeekConfig, DeepSeekExtractor};
use crate::livekit::WorkerMode;
use crate::realtime::{AzureRealtimeClient, RealtimeConfig, RealtimeFlavour, VadSettings};
use crate::store::SqliteStore;
use crate::worker::{self, WorkerParts};

pub async fn run(config: &Config, mode: WorkerMode) -> anyhow::Result<()> {
    config.require(&[Service::LiveKit, Service::Realtime, Service::DeepSeek])?;
    let log = crate::logging::init(&config.logging, mode == WorkerMode::Dev)
        .map_err(|e| anyhow::anyhow!("cannot open the log file in {}: {e}", config.logging.dir.display()))?;
    let store = Arc::new(SqliteStore::open(&config.storage.path, &config.storage.synchronous)?);
    let (connector, extractor) = adapters(config)?;
    let parts = WorkerParts { connector, extractor, store, rooms: Arc::new(crate::room::LiveKitRooms::default()) };
    let result = worker::run(config, mode, parts, Some(log.level.clone())).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "worker failed");
    }
    result
}

/// The realtime connector (Azure/OpenAI) and the anketa extractor (DeepSeek) from config.
fn adapters(config: &Config) -> anyhow::Result<(Arc<dyn RealtimeConnector>, Arc<dyn AnketaExtractor>)> {
    let realtime = AzureRealtimeClient::new(realtime_config(config)).map_err(|e| anyhow::anyhow!("realtime settings: {e}"))?;
    let extractor = DeepSeekExtractor::new(DeepSeekConfig::from_section(&config.deepseek), config.consultation.anketa_fields.clone())
        .map_err(|e| anyhow::anyhow!("deepseek settings: {e}"))?;
    Ok((Arc::new(realtime), Arc::new(extractor)))
}

/// The `[realtime]` section in the realtime client's terms.
pub fn realtime_config(config: &Config) -> RealtimeConfig {
    let r = &config.realtime;
    let flavour = match r.flavour {
        ConfigFlavour::AzurePreview => RealtimeFlavour::AzurePreview,
        ConfigFlavour::AzureGa => RealtimeFlavour::AzureGa,
        ConfigFlavour::Openai => RealtimeFlavour::OpenAi,
    };
    let endpoint = if r.endpoint.is_empty() && flavour == RealtimeFlavour::OpenAi {
        crate::realtime::config::DEFAULT_OPENAI_ENDPOINT.to_owned()
    } else {
        r.endpoint.clone()
    };
    let mut c = RealtimeConfig::new(flavour, endpoint, r.api_key.clone());
    c.deployment = r.deployment.clone();
    c.api_version = r.api_version.clone();
    c.model = r.model.clone();
    c.voice = r.voice.clone();
    c.transcription_model = r.transcription_model.clone();
    c.transcription_language = Some(config.consultation.language.clone()).filter(|l| !l.is_empty());
    c.vad = VadSettings {
        threshold: r.vad_threshold as f32,
        prefix_padding_ms: r.vad_prefix_padding_ms,
        silence_duration_ms: r.vad_silence_duration_ms,
    };
    c
}
