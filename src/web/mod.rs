//! `consultant web`: the caller's page. A person opens it, presses the button, and talks: the
//! server creates `consultation-<new id>` with our agent's dispatch (RoomService.CreateRoom, as
//! the backend in front of the Python module did) and hands the page a caller token; the page
//! joins with `livekit-client` (served from the npm install, never committed) and shows the
//! transcript, the agent's state, the timer and the anketa as they come.
//!
//! The token endpoint only mints tokens for consultations it created, limits how many an
//! address may start per minute, and never returns the API secret.

mod limit;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use consultant_actors::anketa::AnketaField;
use consultant_actors::SessionId;
use serde_json::json;

use crate::livekit::LiveKitClient;
use crate::store::Store;

pub use limit::RateLimit;

const PAGE: &str = include_str!("page.html");

/// What the page server needs.
pub struct WebServer {
    pub livekit: LiveKitClient,
    /// The LiveKit URL as the browser reaches it.
    pub public_url: String,
    pub client_js: PathBuf,
    pub store: Arc<Store>,
    pub fields: Vec<AnketaField>,
    pub limit: RateLimit,
}

struct Shared {
    server: WebServer,
    /// Consultations this server created: only these get tokens and anketas.
    ours: Mutex<HashSet<SessionId>>,
}

/// The routes of the page server.
pub fn router(server: WebServer) -> axum::Router {
    let shared = Arc::new(Shared { server, ours: Mutex::new(HashSet::new()) });
    axum::Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/livekit-client.js", get(client_js))
        .route("/api/consultations", post(start))
        .route("/api/consultations/{id}/token", post(rejoin))
        .route("/api/consultations/{id}/anketa", get(final_anketa))
        .with_state(shared)
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (status, why.into()).into_response()
}

async fn client_js(State(sh): State<Arc<Shared>>) -> Response {
    match tokio::fs::read(&sh.server.client_js).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], bytes).into_response(),
        Err(e) => {
            tracing::error!(path = %sh.server.client_js.display(), error = %e, "livekit-client bundle missing");
            let why = format!("livekit-client is not installed at {} ({e}): run `npm ci` in web/ or set web.livekit_client_js", sh.server.client_js.display());
            refuse(StatusCode::SERVICE_UNAVAILABLE, why)
        }
    }
}

/// A new consultation: its room with our agent's dispatch, and the caller's token.
async fn start(State(sh): State<Arc<Shared>>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Err(wait) = sh.server.limit.admit(peer.ip()) {
        tracing::warn!(peer = %peer.ip(), "consultation start refused: rate limit");
        return ([(header::RETRY_AFTER, wait.as_secs().max(1).to_string())], refuse(StatusCode::TOO_MANY_REQUESTS, "too many consultations started from this address; try again shortly")).into_response();
    }
    let session_id = match SessionId::parse(&uuid::Uuid::new_v4().to_string()) {
        Ok(id) => id,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(e) = sh.server.livekit.create_room(&session_id).await {
        tracing::error!(%session_id, error = %e, "could not create the consultation room");
        return refuse(StatusCode::BAD_GATEWAY, format!("could not create the consultation room: {e}"));
    }
    sh.ours.lock().unwrap_or_else(|p| p.into_inner()).insert(session_id.clone());
    tracing::info!(%session_id, peer = %peer.ip(), "consultation started from the caller page");
    token(&sh, &session_id)
}

/// A token for a consultation this server started (a page that reconnects).
async fn rejoin(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match ours(&sh, &id) {
        Ok(session_id) => token(&sh, &session_id),
        Err(refused) => refused,
    }
}

fn ours(sh: &Shared, raw: &str) -> Result<SessionId, Response> {
    let id = SessionId::parse(raw).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("bad session id: {e}")))?;
    if !sh.ours.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
        return Err(refuse(StatusCode::NOT_FOUND, "no such consultation was started here"));
    }
    Ok(id)
}

fn token(sh: &Shared, session_id: &SessionId) -> Response {
    let identity = format!("caller-{}", &session_id.as_str()[..8]);
    match sh.server.livekit.join_info(session_id, &identity) {
        Ok(info) => Json(json!({ "url": sh.server.public_url, "room": info.room, "identity": info.identity, "token": info.token, "session_id": session_id })).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("could not sign the caller's token: {e}")),
    }
}

/// The final anketa once the consultation is finalized (404 until then).
async fn final_anketa(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let session_id = match ours(&sh, &id) {
        Ok(id) => id,
        Err(refused) => return refused,
    };
    let detail = match sh.server.store.session_detail(&session_id).await {
        Ok(d) => d,
        Err(e) => return refuse(StatusCode::NOT_FOUND, format!("not finalized yet: {e}")),
    };
    if !detail.anketa_history.iter().any(|a| a.is_final) {
        return refuse(StatusCode::NOT_FOUND, "not finalized yet");
    }
    // The same text the room's anketa panel got during the call.
    let text = detail.anketa.readable(&sh.server.fields);
    Json(json!({ "status": detail.record.status, "anketa": detail.anketa, "text": text })).into_response()
}

/// Serves the page until `shutdown` resolves.
pub async fn serve(listener: tokio::net::TcpListener, server: WebServer, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = router(server).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
