//! The network checks: LiveKit (URL and key pair), the agent name, the realtime handshake and
//! DeepSeek, each through the client the worker itself uses.

use crate::tls::ClientTls;
use std::time::{Duration, Instant};

use consultant_actors::ports::RealtimeFailure;

use super::{within, Verdict};
use crate::config::{Config, Service};
use crate::deepseek::{DeepSeekConfig, DeepSeekError, DeepSeekExtractor};
use crate::livekit::{LiveKitClient, LiveKitError};
use crate::realtime::{AzureRealtimeClient, ProbeFailure, RealtimeConfig, RealtimeFlavour};

/// The Python module's advice for "no dispatch", which starts with these three variables.
const LIVEKIT_VARS: &str = "check that LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are the project's (the Python module's \"no ENTRYPOINT CALLED\" advice)";

fn missing(check: &'static str, config: &Config, service: Service) -> Option<Verdict> {
    let vars = config.missing_secrets(&[service]);
    (!vars.is_empty()).then(|| Verdict::fail(check, format!("not set: {}", vars.join(", "))).hint("set them in the environment or in .env (see .env.example)"))
}

/// `RoomService.ListRooms` with a token signed by the configured key pair.
pub async fn livekit(config: &Config, tls: &ClientTls, timeout: Duration) -> Verdict {
    const CHECK: &str = "livekit";
    if let Some(verdict) = missing(CHECK, config, Service::LiveKit) {
        return verdict;
    }
    let url = &config.livekit.url;
    let client = match LiveKitClient::new(&config.livekit, tls) {
        Ok(client) => client,
        Err(e) => return Verdict::fail(CHECK, e.to_string()).hint("LIVEKIT_URL is wss://<project>.livekit.cloud, or ws://127.0.0.1:7880 for a local server"),
    };
    within(CHECK, timeout, &format!("RoomService.ListRooms at {url}"), async {
        match client.list_rooms().await {
            Ok(rooms) => Verdict::ok(CHECK, format!("{url} reachable, key pair accepted (RoomService.ListRooms: {} room(s))", rooms.len())),
            Err(e @ LiveKitError::Refused { status: 401 | 403, .. }) => Verdict::fail(CHECK, e.to_string())
                .hint("the server does not accept tokens signed with this key pair: LIVEKIT_API_SECRET must be the secret of LIVEKIT_API_KEY, both of this project")
                .hint(LIVEKIT_VARS),
            Err(e @ LiveKitError::Unreachable { .. }) => Verdict::fail(CHECK, e.to_string())
                .hint("is LIVEKIT_URL right and the server up? (wss://<project>.livekit.cloud, or ws://127.0.0.1:7880 locally)")
                .hint(LIVEKIT_VARS),
            Err(e) => Verdict::fail(CHECK, e.to_string()).hint(LIVEKIT_VARS),
        }
    })
    .await
}

/// What name the worker registers under; no network (LiveKit accepts any name at register).
pub fn agent_name(config: &Config) -> Verdict {
    const CHECK: &str = "agent";
    let name = &config.livekit.agent_name;
    let fix = "set livekit.agent_name (CONSULTANT_LIVEKIT_AGENT_NAME), e.g. \"consultant\"";
    if name.is_empty() {
        return Verdict::fail(CHECK, "livekit.agent_name is empty: LiveKit would dispatch this worker automatically to every new room, consultation or not, and explicit dispatch could not name it")
            .hint(fix);
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Verdict::fail(CHECK, format!("livekit.agent_name {name:?} has surrounding spaces or control characters; a RoomAgentDispatch must repeat it exactly")).hint(fix);
    }
    Verdict::ok(
        CHECK,
        format!("registers as {name:?}; rooms must carry a RoomAgentDispatch for it (`consultant room create` adds one, `consultant token --dispatch` puts it in the caller's token)"),
    )
}

/// `consultant doctor`'s name for the realtime check: the provider's.
fn realtime_check(flavour: RealtimeFlavour) -> &'static str {
    if flavour.is_azure() {
        "azure"
    } else {
        "openai"
    }
}

/// Opens the realtime WebSocket for the configured flavour, waits for session.created, closes.
pub async fn realtime(config: &Config, tls: &ClientTls, timeout: Duration) -> Verdict {
    let flavour = config.realtime.flavour;
    let check = realtime_check(flavour);
    if let Some(verdict) = missing(check, config, Service::Realtime) {
        return verdict;
    }
    let client = match AzureRealtimeClient::new(RealtimeConfig::from_section(&config.realtime, &config.consultation.language), tls.clone()) {
        Ok(client) => client,
        Err(e) => return Verdict::fail(check, format!("realtime settings: {e}")),
    };
    let url = client.config().websocket_url().map(|u| u.to_string()).unwrap_or_default();
    let started = Instant::now();
    within(check, timeout, &format!("{flavour} handshake at {url}"), async {
        match client.probe().await {
            Ok(session) => {
                let model = session.model.map(|m| format!(", model {m}")).unwrap_or_default();
                Verdict::ok(check, format!("{flavour} handshake at {url} accepted, session.created in {} ms{model}", started.elapsed().as_millis()))
            }
            Err(failure) => realtime_failure(check, flavour, failure),
        }
    })
    .await
}

fn realtime_failure(check: &'static str, flavour: RealtimeFlavour, ProbeFailure { status, failure }: ProbeFailure) -> Verdict {
    let text = match &failure {
        RealtimeFailure::Fatal(m) | RealtimeFailure::Transient(m) | RealtimeFailure::Expired(m) => m.clone(),
        RealtimeFailure::Closed => failure.to_string(),
    };
    let verdict = Verdict::fail(check, text);
    let python = "the Python module's `APIConnectionError: connection failed after 3 attempts`: check AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY, and that the deployment exists (Azure AI Foundry)";
    match (status, flavour) {
        (Some(404), RealtimeFlavour::AzurePreview) => verdict
            .hint(format!("a resource that only serves the GA protocol answers 404 on the preview path /openai/realtime: try {} (CONSULTANT_REALTIME_FLAVOUR=azure-ga)", RealtimeFlavour::AzureGa.setting()))
            .hint("the Python module's `WSServerHandshakeError: 404` is this: a wrong API version or path (2024-10-01-preview is retired; 2025-04-01-preview is documented)"),
        (Some(404), RealtimeFlavour::AzureGa) => verdict
            .hint(format!("a resource that only serves the preview protocol answers 404 on /openai/v1/realtime: try {} (CONSULTANT_REALTIME_FLAVOUR=azure-preview) with AZURE_OPENAI_REALTIME_API_VERSION", RealtimeFlavour::AzurePreview.setting()))
            .hint("or the deployment is missing: AZURE_OPENAI_DEPLOYMENT_NAME must name a realtime deployment of this resource"),
        (Some(401 | 403), RealtimeFlavour::AzureGa) => verdict
            .hint("AZURE_OPENAI_API_KEY must be a key of the resource in AZURE_OPENAI_ENDPOINT; the GA endpoint also refuses (401) a request that carries an api-version")
            .hint(python),
        (Some(401 | 403), _) => verdict.hint("the key is not accepted by this endpoint").hint(python),
        (Some(429), _) => verdict.hint("the deployment's rate limit is reached (the doctor does not retry): wait a minute, or raise the deployment's quota"),
        (Some(_), _) => verdict.hint(python),
        (None, _) if failure.is_fatal() => verdict,
        (None, _) => verdict.hint("is AZURE_OPENAI_ENDPOINT right (https://<resource>.openai.azure.com/) and reachable from here?").hint(python),
    }
}

/// A tiny JSON-mode request with the configured key and model.
pub async fn deepseek(config: &Config, tls: &ClientTls, timeout: Duration) -> Verdict {
    const CHECK: &str = "deepseek";
    if let Some(verdict) = missing(CHECK, config, Service::DeepSeek) {
        return verdict;
    }
    let mut settings = DeepSeekConfig::from_section(&config.deepseek);
    settings.attempts = 1;
    settings.timeout = timeout;
    let model = settings.model.clone();
    let base_url = settings.base_url.clone();
    let client = match DeepSeekExtractor::new(settings, config.consultation.anketa_fields.clone(), tls) {
        Ok(client) => client,
        Err(e) => return Verdict::fail(CHECK, e.to_string()),
    };
    let started = Instant::now();
    within(CHECK, timeout, &format!("JSON-mode request to {base_url}"), async {
        match client.ping().await {
            Ok(()) => Verdict::ok(CHECK, format!("key accepted, model {model} answered in JSON mode at {base_url} in {} ms", started.elapsed().as_millis())),
            Err(e) => deepseek_failure(CHECK, &model, e),
        }
    })
    .await
}

fn deepseek_failure(check: &'static str, model: &str, error: DeepSeekError) -> Verdict {
    let hint = match &error {
        DeepSeekError::Rejected { status: Some(401), .. } => "DEEPSEEK_API_KEY is not a live key: create one at platform.deepseek.com (API keys)".to_owned(),
        DeepSeekError::Rejected { status: Some(400 | 422), .. } => {
            format!("check DEEPSEEK_MODEL (deepseek.model, now {model:?}): deepseek-chat, deepseek-reasoner, deepseek-v4-flash or deepseek-v4-pro")
        }
        DeepSeekError::Rejected { status: Some(402), .. } => "the extraction cannot run until the balance is topped up".to_owned(),
        DeepSeekError::Rejected { status: Some(404), .. } => "DEEPSEEK_BASE_URL is https://api.deepseek.com (or .../v1)".to_owned(),
        _ => "DeepSeek is unreachable or busy: check DEEPSEEK_BASE_URL and the network; busy answers pass, the worker retries them".to_owned(),
    };
    Verdict::fail(check, error.to_string()).hint(hint)
}
