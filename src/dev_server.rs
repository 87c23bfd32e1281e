//! `consultant dev` with no LiveKit URL configured: our LiveKit-compatible server
//! (`livekit-loopback`) runs in-process as a development server, the way `livekit-server --dev`
//! is used with LiveKit Agents, and the caller page beside it. With only an Azure and a DeepSeek
//! key a person can then talk to the consultant in a browser. It is for local development and
//! tests, not production media: one process, no TURN, no scaling, audio only.

use std::net::SocketAddr;
use std::sync::Arc;

use livekit_loopback::{LoopbackConfig, LoopbackServer};

use crate::config::Config;
use crate::livekit::LiveKitClient;
use crate::secret::Secret;
use crate::store::Store;
use crate::tls::ClientTls;
use crate::web::{self, RateLimit, WebServer};

/// The keys `livekit-server --dev` uses, when none are configured.
const DEV_KEY: &str = "devkey";
const DEV_SECRET: &str = "secret";

/// The embedded server and the page; they stop with the process.
pub struct DevServer {
    pub livekit: LoopbackServer,
    pub page: SocketAddr,
}

/// Starts the server on `livekit.url`'s address and the page on `web.listen`, and points the
/// configuration at them (the dev keys when none are set).
pub async fn start(config: &mut Config, store: Arc<Store>) -> anyhow::Result<DevServer> {
    let lk = &mut config.livekit;
    if lk.api_key.is_empty() || lk.api_secret.is_empty() {
        lk.api_key = Secret::new(DEV_KEY);
        lk.api_secret = Secret::new(DEV_SECRET);
    }
    let url = url::Url::parse(&lk.url).map_err(|e| anyhow::anyhow!("livekit.url `{}`: {e}", lk.url))?;
    let bind = url
        .socket_addrs(|| Some(7880))
        .ok()
        .and_then(|a| a.into_iter().next())
        .ok_or_else(|| anyhow::anyhow!("livekit.url `{}` names no address to serve the development server on", lk.url))?;
    let mut server_config = LoopbackConfig::with_keys(lk.api_key.expose(), lk.api_secret.expose());
    server_config.bind = bind;
    server_config.max_logged_events = Some(10_000);
    let livekit = LoopbackServer::start(server_config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the development LiveKit server on {bind}: {e} (set LIVEKIT_URL to use another server)"))?;
    lk.url = livekit.url();
    tracing::warn!(url = %lk.url, "no LiveKit URL configured: serving an embedded development LiveKit server (not for production media)");

    let client = LiveKitClient::new(&config.livekit, &ClientTls::default())?;
    let page = WebServer {
        public_url: config.web.livekit_url.clone().unwrap_or_else(|| config.livekit.url.clone()),
        livekit: client,
        client_js: config.web.livekit_client_js.clone(),
        store,
        fields: config.consultation.anketa_fields.clone(),
        limit: RateLimit::per_minute(config.web.starts_per_minute),
    };
    let listener = tokio::net::TcpListener::bind(&config.web.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on web.listen = {}: {e}", config.web.listen))?;
    let page_addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = web::serve(listener, page, std::future::pending()).await {
            tracing::error!(error = %e, "the caller page stopped");
        }
    });
    tracing::info!(page = %format!("http://{page_addr}/"), "caller page listening");
    println!("caller page: http://{page_addr}/");
    Ok(DevServer { livekit, page: page_addr })
}
