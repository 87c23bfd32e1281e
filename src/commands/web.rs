//! `consultant web`: serves the caller's page on `web.listen` until Ctrl-C / SIGTERM.

use std::sync::Arc;

use crate::config::{Config, Service};
use crate::livekit::LiveKitClient;
use crate::store::Store;
use crate::tls::ClientTls;
use crate::web::{self, RateLimit, WebServer};

pub async fn run(config: &Config) -> anyhow::Result<()> {
    config.require(&[Service::LiveKit])?;
    let livekit = LiveKitClient::new(&config.livekit, &ClientTls::from_config(&config.tls)?)?;
    let store = Arc::new(Store::from_config(&config.storage, None).await?);
    let w = &config.web;
    if !w.livekit_client_js.is_file() {
        tracing::warn!(path = %w.livekit_client_js.display(), "livekit-client bundle not found: run `npm ci` in web/ (the page cannot connect without it)");
    }
    let server = WebServer {
        public_url: w.livekit_url.clone().unwrap_or_else(|| config.livekit.url.clone()),
        livekit,
        client_js: w.livekit_client_js.clone(),
        store,
        fields: config.consultation.anketa_fields.clone(),
        limit: RateLimit::per_minute(w.starts_per_minute),
    };
    let listener = tokio::net::TcpListener::bind(&w.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on web.listen = {}: {e}", w.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "caller page listening");
    println!("caller page: http://{addr}/");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    web::serve(listener, server, shutdown).await?;
    Ok(())
}
