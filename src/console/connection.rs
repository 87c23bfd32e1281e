//! One console connection: WebSocket handshake with bearer-token check, then commands in and
//! frames out. Every write has a deadline, so a stuck client costs one task until the
//! deadline passes, never an actor's time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::actions::{self, Outcome};
use super::auth::{Scope, Tokens};
use super::hub::{Counters, Frame, HubRequest, Topics};
use super::protocol::{self, code, error_frame, frame, Command, FrameError, MAX_MESSAGE_BYTES};
use super::{ConsoleControl, ConsoleOptions};

/// What every connection shares.
pub struct Shared {
    pub tokens: Tokens,
    pub control: ConsoleControl,
    pub options: ConsoleOptions,
    pub counters: Arc<Counters>,
    pub hub: mpsc::Sender<HubRequest>,
    pub shutdown: watch::Receiver<bool>,
    pub next_client: AtomicU64,
    pub max_clients: usize,
}

/// Holds one of the `max_clients` places; gives it back when the connection ends.
pub struct Place(Arc<Counters>);

impl Place {
    /// Takes a place, or None when all are taken.
    pub fn take(counters: &Arc<Counters>, max: usize) -> Option<Place> {
        let taken = counters.clients.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            counters.clients.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            Some(Place(counters.clone()))
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the handshake decided.
enum Admission {
    /// A valid bearer token.
    Authorized(Scope),
    /// No Authorization header: the first message must be `auth`.
    AuthByMessage,
}

fn reject(status: u16, code: &str, message: &str) -> ErrorResponse {
    let body = frame("error", json!({ "code": code, "message": message }));
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status).expect("valid status");
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json".parse().expect("static header"));
    if status == 401 {
        headers.insert("www-authenticate", "Bearer".parse().expect("static header"));
    }
    response
}

/// Serves one accepted stream (plain TCP or TLS) until it closes.
pub async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>, place: Option<Place>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shared.counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let mut admission: Option<Admission> = None;
    let full = place.is_none();
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if full {
            shared.counters.rejected_full.fetch_add(1, Ordering::Relaxed);
            let msg = format!("the console already serves {} clients (console.max_clients); try again later", shared.max_clients);
            return Err(reject(503, code::TOO_MANY_CLIENTS, &msg));
        }
        if request.uri().query().is_some_and(|q| q.to_ascii_lowercase().contains("token")) {
            shared.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(reject(
                400,
                code::UNAUTHORIZED,
                "tokens are never accepted in URLs (they end up in logs); send `Authorization: Bearer <token>` or an `auth` message",
            ));
        }
        match request.headers().get("authorization") {
            None => {
                admission = Some(Admission::AuthByMessage);
                Ok(response)
            }
            Some(value) => {
                let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
                match presented.and_then(|t| shared.tokens.check(t)) {
                    Some(scope) => {
                        admission = Some(Admission::Authorized(scope));
                        Ok(response)
                    }
                    None => {
                        shared.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, "console connection refused: wrong token");
                        Err(reject(401, code::UNAUTHORIZED, "the console token is wrong; use the token from console.token_file or CONSULTANT_CONSOLE_TOKEN"))
                    }
                }
            }
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .max_write_buffer_size(4 * MAX_MESSAGE_BYTES.max(1 << 20));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let ws = match tokio::time::timeout(shared.options.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "console handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "console handshake timed out");
            return;
        }
    };
    let Some(admission) = admission else { return };
    let mut conn = Connection { ws, peer, shared: shared.clone(), scope: Scope::ReadOnly, _place: place };
    let scope = match admission {
        Admission::Authorized(scope) => scope,
        Admission::AuthByMessage => match conn.auth_by_message().await {
            Some(scope) => scope,
            None => return,
        },
    };
    conn.scope = scope;
    tracing::info!(%peer, scope = %scope, "console client connected");
    conn.run().await;
    tracing::info!(%peer, "console client disconnected");
}

struct Connection<S> {
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    scope: Scope,
    _place: Option<Place>,
}

/// Why the loop ended.
enum End {
    Closed,
    Close(CloseCode, String),
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn who(&self) -> String {
        format!("{}@{}", self.scope, self.peer)
    }

    async fn send(&mut self, text: impl Into<String>) -> bool {
        let text: String = text.into();
        matches!(tokio::time::timeout(self.shared.options.write_timeout, self.ws.send(Message::text(text))).await, Ok(Ok(())))
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame { code, reason: reason.chars().take(120).collect::<String>().into() };
        let _ = tokio::time::timeout(self.shared.options.write_timeout, self.ws.close(Some(frame))).await;
    }

    async fn bad_frame(&mut self, error: FrameError) -> bool {
        self.shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
        self.send(error_frame(&error)).await
    }

    /// The first message must be `{"v":1,"type":"auth","token":..}`.
    async fn auth_by_message(&mut self) -> Option<Scope> {
        let first = tokio::time::timeout(self.shared.options.handshake_timeout, self.ws.next()).await;
        let refusal = match first {
            Ok(Some(Ok(Message::Text(text)))) => match protocol::parse_command(&text) {
                Ok(Command::Auth { token }) => match self.shared.tokens.check(&token) {
                    Some(scope) => return Some(scope),
                    None => "the console token is wrong; use the token from console.token_file or CONSULTANT_CONSOLE_TOKEN",
                },
                _ => "authenticate first: send `Authorization: Bearer <token>` on the upgrade or {\"v\":1,\"type\":\"auth\",\"token\":..} as the first message",
            },
            Err(_) => "no auth message in time; send `Authorization: Bearer <token>` on the upgrade",
            _ => return None,
        };
        self.shared.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %self.peer, "console connection refused: {refusal}");
        let error = FrameError { code: code::UNAUTHORIZED, message: refusal.into(), id: None };
        self.send(error_frame(&error)).await;
        self.close(CloseCode::Policy, "unauthorized").await;
        None
    }

    async fn run(&mut self) {
        let hello = frame(
            "hello",
            json!({
                "scope": self.scope.as_str(),
                "server": concat!("consultant ", env!("CARGO_PKG_VERSION")),
                "delta_interval_ms": self.shared.options.delta_interval.as_millis() as u64,
                "topics": protocol::TOPICS,
                "actions": protocol::ACTIONS,
                "max_command_bytes": protocol::MAX_COMMAND_BYTES,
            }),
        );
        if !self.send(hello).await {
            return;
        }
        let client = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Frame>(self.shared.options.client_queue);
        let dropped = Arc::new(AtomicBool::new(false));
        let mut joined = false;
        let mut shutdown = self.shared.shutdown.clone();
        let end = loop {
            tokio::select! {
                incoming = self.ws.next() => match incoming {
                    None | Some(Ok(Message::Close(_))) => break End::Closed,
                    Some(Ok(Message::Text(text))) => {
                        if !self.on_text(&text, client, &tx, &dropped, &mut joined).await {
                            break End::Closed;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = FrameError { code: code::BINARY_FRAME, message: "binary frames are not supported; send JSON text frames".into(), id: None };
                        if !self.bad_frame(error).await { break End::Closed; }
                    }
                    Some(Ok(_)) => {} // ping/pong are answered by the WebSocket layer
                    Some(Err(WsError::Capacity(e))) => {
                        self.shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                        let message = format!("message too large ({e}); the limit is {MAX_MESSAGE_BYTES} bytes, commands must stay under {} bytes", protocol::MAX_COMMAND_BYTES);
                        let _ = self.send(error_frame(&FrameError { code: code::FRAME_TOO_LARGE, message, id: None })).await;
                        break End::Close(CloseCode::Size, "message too large".into());
                    }
                    Some(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "console read failed");
                        break End::Closed;
                    }
                },
                outgoing = rx.recv() => match outgoing {
                    Some(frame) => {
                        if !self.send(frame.to_string()).await {
                            // The socket would not take the frame in time: a stuck client.
                            self.shared.counters.slow_clients_dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(peer = %self.peer, "console client not reading; dropping it");
                            break End::Closed;
                        }
                    }
                    None => break End::Closed, // unreachable while `tx` lives here
                },
                _ = shutdown.changed() => break End::Close(CloseCode::Away, "worker console shutting down".into()),
            }
            if dropped.load(Ordering::Relaxed) {
                let message = format!("dropped: this console fell behind by {} frames; reconnect to get a fresh snapshot", self.shared.options.client_queue);
                let _ = self.send(error_frame(&FrameError { code: code::SLOW_CLIENT, message, id: None })).await;
                break End::Close(CloseCode::Again, "slow client".into());
            }
        };
        if joined {
            let _ = self.shared.hub.send(HubRequest::Leave { client }).await;
        }
        if let End::Close(code, reason) = end {
            self.close(code, &reason).await;
        }
    }

    /// Handles one text frame; false ends the connection.
    async fn on_text(&mut self, text: &str, client: u64, tx: &mpsc::Sender<Frame>, dropped: &Arc<AtomicBool>, joined: &mut bool) -> bool {
        let command = match protocol::parse_command(text) {
            Ok(c) => c,
            Err(e) => return self.bad_frame(e).await,
        };
        match command {
            Command::Auth { .. } => self.send(frame("error", json!({ "code": code::BAD_REQUEST, "message": "already authenticated" }))).await,
            Command::Ping { id } => self.send(frame("pong", json!({ "id": id }))).await,
            Command::Subscribe { topics } => {
                let topics = match Topics::parse(topics.as_deref()) {
                    Ok(t) => t,
                    Err(message) => return self.bad_frame(FrameError { code: code::BAD_REQUEST, message, id: None }).await,
                };
                if *joined {
                    let _ = self.shared.hub.send(HubRequest::Leave { client }).await;
                }
                let join = HubRequest::Join { client, topics, tx: tx.clone(), dropped: dropped.clone() };
                if self.shared.hub.send(join).await.is_err() {
                    let _ = self.send(frame("error", json!({ "code": code::SHUTTING_DOWN, "message": "the console is shutting down" }))).await;
                    return false;
                }
                *joined = true;
                true
            }
            Command::Snapshot => {
                let (reply, rx) = oneshot::channel();
                if self.shared.hub.send(HubRequest::Snapshot { reply }).await.is_err() {
                    return false;
                }
                match rx.await {
                    Ok(snapshot) => self.send(snapshot.to_string()).await,
                    Err(_) => false,
                }
            }
            Command::Action { id, action } => {
                let who = self.who();
                if self.scope != Scope::Operator {
                    actions::audit_denied(&self.shared.control, &who, &action);
                    self.shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    let message = format!("action `{}` needs the operator token; this connection uses the read-only token", action.name());
                    return self.send(error_frame(&FrameError { code: code::FORBIDDEN, message, id })).await;
                }
                self.shared.counters.actions.fetch_add(1, Ordering::Relaxed);
                match actions::perform(&self.shared.control, &who, &action).await {
                    Outcome::Done { ok: true, message, .. } => self.send(actions::result_frame(id, &action, true, &message)).await,
                    Outcome::Done { ok: false, message, code } => {
                        let code = code.unwrap_or(code::ACTION_FAILED);
                        self.send(frame("error", json!({ "code": code, "message": message, "id": id, "action": action.name() }))).await
                    }
                    Outcome::Pending { message, result } => {
                        let ack = actions::ack_frame(id, &action, &message);
                        let tx = tx.clone();
                        let control = self.shared.control.clone();
                        tokio::spawn(async move {
                            let (ok, message) = result.await.unwrap_or_else(|e| (false, format!("the action task failed: {e}")));
                            actions::audit(&control, &who, &action, &format!("{}: {message}", if ok { "done" } else { "failed" }));
                            let _ = tx.try_send(actions::result_frame(id, &action, ok, &message).into());
                        });
                        self.send(ack).await
                    }
                }
            }
        }
    }
}
