//! The console client: connects with the bearer token in the Authorization header, sends
//! commands and reads frames. Used by `consultant console` and by the tests.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::protocol::{encode_command, Command, ServerFrame};
use crate::tls::ClientTls;

/// How long connecting (TCP, TLS, upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("console URL `{0}` is not valid: {1}; use ws://HOST:PORT (or wss:// with TLS)")]
    Url(String, String),
    #[error("cannot reach the worker console at {url}: {reason}; is the worker running with [console] enabled, and is the address right?")]
    Unreachable { url: String, reason: String },
    #[error("the console refused the token (HTTP {status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("the console refused the connection (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the console sent an error: {code}: {message}")]
    Server { code: String, message: String },
    #[error("the console connection closed{0}")]
    Closed(String),
    #[error("the console sent a frame this client does not understand: {0}")]
    Protocol(String),
    #[error("cannot connect to the worker console: {0}")]
    Tls(crate::tls::TlsFailure),
    #[error("console connection failed: {0}")]
    Transport(String),
    #[error("timed out waiting for the console")]
    Timeout,
}

impl ClientError {
    /// An authentication failure (wrong or missing token).
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Unauthorized { .. }) || matches!(self, ClientError::Server { code, .. } if code == "unauthorized")
    }
}

pub struct ConsoleClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    scope: String,
}

/// The `message` of a JSON error body, or the body itself.
fn body_message(body: Option<&Vec<u8>>) -> String {
    let Some(body) = body else { return String::new() };
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

impl ConsoleClient {
    /// Connects and authenticates with `token` (sent only in the Authorization header);
    /// `wss://` trusts the built-in and system roots.
    pub async fn connect(url: &str, token: &str) -> Result<Self, ClientError> {
        Self::connect_with_tls(url, token, &ClientTls::default()).await
    }

    /// [`ConsoleClient::connect`] with `wss://` trusting `tls` (e.g. a private CA).
    pub async fn connect_with_tls(url: &str, token: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        let mut request = url.into_client_request().map_err(|e| ClientError::Url(url.to_owned(), e.to_string()))?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::Url(url.to_owned(), "the token contains characters not allowed in a header".into()))?;
        request.headers_mut().insert("authorization", value);
        let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(tls.connector()));
        let (ws, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return Err(ClientError::Unreachable { url: url.to_owned(), reason: format!("no answer within {CONNECT_TIMEOUT:?}") }),
            Ok(Ok(ok)) => ok,
            Ok(Err(WsError::Http(response))) => {
                let status = response.status().as_u16();
                let message = body_message(response.body().as_ref());
                return Err(if status == 401 || status == 403 {
                    ClientError::Unauthorized { status, message }
                } else {
                    ClientError::Refused { status, message }
                });
            }
            Ok(Err(e)) => return Err(Self::failure(url, e)),
        };
        let mut client = Self { ws, scope: String::new() };
        match client.next_frame().await? {
            ServerFrame::Hello { scope, .. } => {
                client.scope = scope;
                Ok(client)
            }
            ServerFrame::Error { code, message, .. } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!("expected hello, got {other:?}"))),
        }
    }

    /// Why connecting failed; a TLS failure in the trust policy's words.
    fn failure(url: &str, e: WsError) -> ClientError {
        let target = url::Url::parse(url).map(|u| crate::tls::target(&u)).unwrap_or_else(|_| url.to_owned());
        if let Some(failure) = crate::tls::explain(&target, &e) {
            return ClientError::Tls(failure);
        }
        match e {
            WsError::Io(e) => ClientError::Unreachable { url: url.to_owned(), reason: e.to_string() },
            WsError::Url(e) => ClientError::Url(url.to_owned(), e.to_string()),
            e => ClientError::Transport(e.to_string()),
        }
    }

    /// The scope the server granted: `read-only` or `operator`.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub async fn send(&mut self, command: &Command) -> Result<(), ClientError> {
        self.send_raw(encode_command(command)).await
    }

    /// Sends any text (tests use it for malformed frames).
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.ws.send(Message::text(text.into())).await.map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// The next frame as text (None when the connection closed), with the close reason.
    pub async fn next_text(&mut self) -> Result<String, ClientError> {
        loop {
            match self.ws.next().await {
                None => return Err(ClientError::Closed(String::new())),
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| format!(": {} ({})", f.reason, u16::from(f.code))).unwrap_or_default();
                    return Err(ClientError::Closed(why));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
            }
        }
    }

    pub async fn next_frame(&mut self) -> Result<ServerFrame, ClientError> {
        let text = self.next_text().await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("{e}: {}", text.chars().take(200).collect::<String>())))
    }

    /// The next frame within `limit`.
    pub async fn next_frame_within(&mut self, limit: Duration) -> Result<ServerFrame, ClientError> {
        tokio::time::timeout(limit, self.next_frame()).await.map_err(|_| ClientError::Timeout)?
    }

    /// Asks for one snapshot and waits for it (skipping live frames in between).
    pub async fn snapshot(&mut self) -> Result<super::protocol::Snapshot, ClientError> {
        self.send(&Command::Snapshot).await?;
        loop {
            match self.next_frame_within(CONNECT_TIMEOUT).await? {
                ServerFrame::Snapshot(s) => return Ok(*s),
                ServerFrame::Error { code, message, .. } => return Err(ClientError::Server { code, message }),
                _ => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
