//! Health HTTP endpoint (as livekit-agents' :8081): `GET /` answers 200 while the worker is
//! registered with LiveKit and 503 (with the reason) while the link is down; `GET /worker`
//! gives the worker view as JSON (registration, status, load, jobs, draining, RSS/CPU, and the
//! metrics); `GET /metrics` gives the same figures in the Prometheus text format.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use consultant_actors::telemetry::Telemetry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::livekit::link::LinkStatus;

#[derive(Clone)]
struct HealthState {
    link: watch::Receiver<LinkStatus>,
    telemetry: Telemetry,
    metrics: Arc<prometheus_client::registry::Registry>,
}

pub struct HealthServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// Binds `listen` (before the LiveKit link starts, so the endpoint answers from the start).
pub async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on livekit.health_listen {listen}: {e} (is another worker running? change the port in config.toml)"))
}

/// Serves on `listener` in the background.
pub fn serve(listener: tokio::net::TcpListener, link: watch::Receiver<LinkStatus>, telemetry: Telemetry) -> anyhow::Result<HealthServer> {
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/", get(root))
        .route("/worker", get(worker))
        .route("/metrics", get(metrics))
        .with_state(HealthState { link, metrics: Arc::new(crate::metrics::registry(telemetry.clone())), telemetry });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoint failed");
        }
    });
    tracing::info!(%addr, "health endpoint listening");
    Ok(HealthServer { addr, task })
}

async fn root(State(s): State<HealthState>) -> impl IntoResponse {
    let status = s.link.borrow().clone();
    if status.registered {
        (StatusCode::OK, format!("OK: registered with LiveKit as {}\n", status.worker_id.unwrap_or_default()))
    } else {
        let why = status.fatal.or(status.last_error).unwrap_or_else(|| "connecting".into());
        (StatusCode::SERVICE_UNAVAILABLE, format!("LiveKit link down: {why}\n"))
    }
}

async fn worker(State(s): State<HealthState>) -> impl IntoResponse {
    Json(s.telemetry.worker())
}

async fn metrics(State(s): State<HealthState>) -> axum::response::Response {
    match crate::metrics::render(&s.metrics) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics failed: {e}\n")).into_response(),
    }
}
