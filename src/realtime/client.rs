//! `AzureRealtimeClient`: the [`RealtimeConnector`] over a WebSocket (tokio-tungstenite, rustls).
//!
//! One `connect` = one socket: handshake, session.update, history replay, then two tasks - a
//! reader that parses server events into `RealtimeEvent`s and a writer that turns
//! `RealtimeCommand`s into client events (`session_tasks`). The actor only ever `try_send`s to
//! the writer.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consultant_actors::ports::{RealtimeConnection, RealtimeConnector, RealtimeEvent, RealtimeFailure, RealtimeSetup};
use consultant_actors::Role;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::config::{RealtimeConfig, RealtimeFlavour, DEFAULT_AZURE_PREVIEW_API_VERSION};
use super::protocol::{self, is_fatal_code, ErrorInfo, ParseError, ServerEvent};
use super::session_tasks::{Reader, Writer};
use super::stats::RealtimeStats;
use crate::tls::{self, ClientTls};

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Depth of the command queue (the actor drops audio beyond it rather than wait).
pub const COMMAND_QUEUE: usize = consultant_actors::realtime::COMMAND_QUEUE;
/// Depth of the event queue towards the actor.
pub const EVENT_QUEUE: usize = 1024;
/// Largest caller-audio append: 1 s of PCM16 (the service accepts up to 15 MiB).
pub const MAX_APPEND_SAMPLES: usize = 24_000;
/// Keep-alive ping interval, and how long a silent socket is trusted.
pub(super) const PING_EVERY: Duration = Duration::from_secs(15);
pub(super) const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// A generic server_error this close to the session limit is the limit.
pub(super) const EXPIRY_SLACK_SECS: i64 = 90;
/// Azure's limit when the server did not say (30 min).
pub(super) const DEFAULT_SESSION_LIMIT: Duration = Duration::from_secs(30 * 60);

/// A refused or failed [`AzureRealtimeClient::probe`]: the handshake's HTTP status, if the
/// server answered one, and the failure with its advice.
#[derive(Debug)]
pub struct ProbeFailure {
    pub status: Option<u16>,
    pub failure: RealtimeFailure,
}

/// The Python module's AzureRealtimeClient: connects to Azure (preview or GA) or OpenAI Realtime.
#[derive(Clone)]
pub struct AzureRealtimeClient {
    config: Arc<RealtimeConfig>,
    tls: ClientTls,
    pub(super) stats: Arc<RealtimeStats>,
}

impl std::fmt::Debug for AzureRealtimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureRealtimeClient").field("config", &self.config).finish()
    }
}

impl AzureRealtimeClient {
    /// Checks the configuration (a bad value is named with its fix); `wss://` trusts `tls`.
    pub fn new(config: RealtimeConfig, tls: ClientTls) -> Result<Self, String> {
        config.websocket_url()?;
        Ok(Self { config: Arc::new(config), tls, stats: Arc::new(RealtimeStats::default()) })
    }

    pub fn config(&self) -> &RealtimeConfig {
        &self.config
    }

    /// Counters shared by every connection of this client.
    pub fn stats(&self) -> Arc<RealtimeStats> {
        self.stats.clone()
    }

    fn request(&self) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, RealtimeFailure> {
        let url = self.config.websocket_url().map_err(RealtimeFailure::Fatal)?;
        let mut request = url.as_str().into_client_request().map_err(|e| RealtimeFailure::Fatal(format!("bad realtime URL {url}: {e}")))?;
        let key = self.config.api_key.expose().trim();
        let headers = request.headers_mut();
        let secret_header = |v: String| {
            HeaderValue::from_str(&v)
                .map(|mut h| {
                    h.set_sensitive(true);
                    h
                })
                .map_err(|_| RealtimeFailure::Fatal("the realtime API key contains characters not allowed in an HTTP header".into()))
        };
        if self.config.flavour.is_azure() {
            headers.insert("api-key", secret_header(key.to_owned())?);
        } else {
            headers.insert("authorization", secret_header(format!("Bearer {key}"))?);
        }
        if self.config.flavour == RealtimeFlavour::OpenAiBeta {
            headers.insert("openai-beta", HeaderValue::from_static("realtime=v1"));
        }
        Ok(request)
    }

    /// Turns a refused handshake into a failure with the Python module's advice.
    fn handshake_failure(&self, status: StatusCode, body: Option<&[u8]>) -> RealtimeFailure {
        let url = self.config.websocket_url().map(|u| u.to_string()).unwrap_or_default();
        let body = body.map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).trim().to_owned()).filter(|b| !b.is_empty());
        let detail = body.map(|b| format!(" (server said: {b})")).unwrap_or_default();
        let flavour = self.config.flavour;
        match status.as_u16() {
            401 | 403 => {
                let extra = match flavour {
                    RealtimeFlavour::AzureGa => format!(
                        "; the GA endpoint /openai/v1/realtime also answers 401 when an api-version is sent: keep {} (realtime.api_version / AZURE_OPENAI_REALTIME_API_VERSION is then unused) or switch to {}",
                        RealtimeFlavour::AzureGa.setting(),
                        RealtimeFlavour::AzurePreview.setting()
                    ),
                    RealtimeFlavour::AzurePreview => "; check that the key belongs to this resource".to_owned(),
                    _ => "; check the OpenAI API key".to_owned(),
                };
                let var = if flavour.is_azure() { "AZURE_OPENAI_API_KEY" } else { "OPENAI_API_KEY" };
                RealtimeFailure::Fatal(format!("realtime handshake refused with {status} at {url}: check {var}{extra}{detail}"))
            }
            404 => {
                let advice = match flavour {
                    RealtimeFlavour::AzurePreview => format!(
                        "wrong api-version ({}) or path (/openai/realtime) for this resource, or no deployment named {:?}: set realtime.api_version (AZURE_OPENAI_REALTIME_API_VERSION) to a live preview version (e.g. {DEFAULT_AZURE_PREVIEW_API_VERSION}) or use {} (path /openai/v1/realtime)",
                        self.config.api_version,
                        self.config.deployment,
                        RealtimeFlavour::AzureGa.setting()
                    ),
                    RealtimeFlavour::AzureGa => format!(
                        "wrong path (/openai/v1/realtime) or deployment {:?} for this resource: check realtime.deployment (AZURE_OPENAI_DEPLOYMENT_NAME), or use {} with realtime.api_version (AZURE_OPENAI_REALTIME_API_VERSION) set (path /openai/realtime)",
                        self.config.deployment,
                        RealtimeFlavour::AzurePreview.setting()
                    ),
                    _ => format!("wrong path (/v1/realtime) or model {:?}", self.config.model),
                };
                RealtimeFailure::Fatal(format!("realtime handshake got 404 Not Found at {url}: {advice}{detail}"))
            }
            429 => RealtimeFailure::Transient(format!("realtime handshake rate limited (429) at {url}: the deployment's requests-per-minute limit is reached; retrying{detail}")),
            400 => RealtimeFailure::Fatal(format!("realtime handshake rejected as a bad request (400) at {url}{detail}")),
            _ => RealtimeFailure::Transient(format!("realtime handshake failed with {status} at {url}{detail}")),
        }
    }

    async fn open(&self) -> Result<Socket, RealtimeFailure> {
        self.handshake().await.map_err(|refused| refused.failure)
    }

    async fn handshake(&self) -> Result<Socket, ProbeFailure> {
        let request = self.request().map_err(|failure| ProbeFailure { status: None, failure })?;
        match tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(self.tls.connector())).await {
            Ok((socket, _response)) => Ok(socket),
            Err(WsError::Http(response)) => {
                Err(ProbeFailure { status: Some(response.status().as_u16()), failure: self.handshake_failure(response.status(), response.body().as_deref()) })
            }
            Err(e) => {
                let url = self.config.websocket_url().map_err(|m| ProbeFailure { status: None, failure: RealtimeFailure::Fatal(m) })?;
                let failure = match tls::explain(&tls::target(&url), &e) {
                    // A refused certificate stays refused: no point in retrying.
                    Some(failure) if failure.certificate => RealtimeFailure::Fatal(failure.message),
                    Some(failure) => RealtimeFailure::Transient(failure.message),
                    None => RealtimeFailure::Transient(format!("cannot open the realtime WebSocket at {url}: {e}")),
                };
                Err(ProbeFailure { status: None, failure })
            }
        }
    }

    /// Opens a socket, waits for `session.created` and closes it (`consultant doctor`). It
    /// sends nothing, so no model time is used; a refusal keeps the handshake's status.
    pub async fn probe(&self) -> Result<protocol::SessionInfo, ProbeFailure> {
        let mut socket = self.handshake().await?;
        let failed = |failure| ProbeFailure { status: None, failure };
        let outcome = loop {
            let text = match socket.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => break Err(failed(RealtimeFailure::Transient(format!("the realtime server accepted the WebSocket and closed it ({}) before session.created", describe_close(frame.as_ref()))))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(failed(RealtimeFailure::Transient(format!("realtime socket failed before session.created: {e}")))),
                None => break Err(failed(RealtimeFailure::Transient("the realtime server closed the connection before session.created".into()))),
            };
            match self.parse(&text) {
                Some(ServerEvent::SessionCreated(info)) => break Ok(info),
                Some(ServerEvent::Error(error)) => break Err(failed(self.setup_error(&error))),
                _ => {}
            }
        };
        let _ = socket.close(None).await;
        outcome
    }

    /// session.update and the replayed history; waits for session.created, session.updated and
    /// the last replayed item.
    async fn configure(&self, socket: &mut Socket, setup: &RealtimeSetup) -> Result<protocol::SessionInfo, RealtimeFailure> {
        let protocol = self.config.flavour.protocol();
        let update = protocol::session_update(&self.config, &setup.instructions, &setup.tools);
        send_json(socket, &update).await?;
        let mut previous = "root".to_owned();
        let mut last_item = None;
        let salt = uuid::Uuid::new_v4().simple().to_string();
        for (n, message) in setup.history.iter().enumerate() {
            // Item ids are ours (max 32 chars); old ids do not exist on a new session.
            let id = format!("h{}_{n}", &salt[..12]);
            let item = match (message.role.is_spoken(), message.tool()) {
                (true, _) => protocol::history_item(protocol, &id, &previous, message.role == Role::Assistant, &message.text),
                (false, Some(entry)) => protocol::history_tool_item(&id, &previous, &entry),
                // An unreadable tool entry: nothing the model could use.
                (false, None) => continue,
            };
            send_json(socket, &item).await?;
            previous = id.clone();
            last_item = Some(id);
        }
        let mut created = None;
        let mut updated = false;
        loop {
            if updated && created.is_some() && last_item.is_none() {
                return Ok(created.unwrap_or_default());
            }
            let frame = match socket.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Err(RealtimeFailure::Transient(format!("realtime socket failed while configuring the session: {e}"))),
                None => return Err(RealtimeFailure::Transient("the realtime server accepted the WebSocket and closed it at once (before the session was configured)".into())),
            };
            let text = match frame {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    return Err(RealtimeFailure::Transient(format!(
                        "the realtime server accepted the WebSocket and closed it at once ({}) before the session was configured",
                        describe_close(frame.as_ref())
                    )))
                }
                _ => continue,
            };
            match self.parse(&text) {
                Some(ServerEvent::SessionCreated(info)) => created = Some(info),
                Some(ServerEvent::SessionUpdated(_)) => updated = true,
                Some(ServerEvent::ItemCreated { item, .. })
                    if item.id.is_some() && item.id == last_item => {
                        last_item = None;
                    }
                Some(ServerEvent::Error(error)) => return Err(self.setup_error(&error)),
                _ => {}
            }
        }
    }

    fn setup_error(&self, error: &ErrorInfo) -> RealtimeFailure {
        if is_fatal_code(error.code.as_deref()) {
            return RealtimeFailure::Fatal(format!("realtime session refused: {}", error.describe()));
        }
        if error.kind.as_deref() == Some("invalid_request_error") && !names_something_else(error) {
            return RealtimeFailure::Fatal(format!(
                "the realtime service rejected the session configuration for flavour {} ({}): if the endpoint speaks the other protocol generation, switch realtime.flavour between \"{}\" and \"{}\"",
                self.config.flavour,
                error.describe(),
                RealtimeFlavour::AzurePreview,
                RealtimeFlavour::AzureGa
            ));
        }
        RealtimeFailure::Transient(format!("realtime error while configuring the session: {}", error.describe()))
    }

    pub(super) fn parse(&self, text: &str) -> Option<ServerEvent> {
        match protocol::parse_server_event(text) {
            Ok(ServerEvent::Unknown(kind)) => {
                self.stats.unknown(&kind);
                tracing::debug!(event_type = %kind, "unknown realtime event type ignored");
                None
            }
            Ok(event) => {
                RealtimeStats::add(&self.stats.events_parsed, 1);
                Some(event)
            }
            Err(e) => {
                RealtimeStats::add(&self.stats.malformed_events, 1);
                let shown: String = text.chars().take(120).collect();
                match e {
                    ParseError::Malformed(_) => tracing::warn!(error = %e, frame = %shown, "malformed realtime frame ignored"),
                    ParseError::BadShape { .. } => tracing::warn!(error = %e, "realtime event with an unexpected shape ignored"),
                }
                None
            }
        }
    }
}

/// An error met while configuring that names something other than what configure sent (a
/// decoder error, a rate limit...): not a rejection of the configuration, so retrying may
/// work. One that names a session field or a replayed item, or names nothing, is taken as one.
fn names_something_else(error: &ErrorInfo) -> bool {
    const VALIDATION: [&str; 5] = ["unknown_parameter", "missing_required_parameter", "invalid_value", "invalid_type", "string_above_max_length"];
    let other_param = error.param.as_deref().is_some_and(|p| !["session", "item", "previous_item_id", "type"].iter().any(|ours| p.starts_with(ours)));
    let other_code = error.code.as_deref().is_some_and(|c| !VALIDATION.contains(&c));
    other_param || other_code
}

async fn send_json(socket: &mut Socket, value: &serde_json::Value) -> Result<(), RealtimeFailure> {
    socket
        .send(Message::text(value.to_string()))
        .await
        .map_err(|e| RealtimeFailure::Transient(format!("realtime socket failed while configuring the session: {e}")))
}

pub(super) fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("close code {}", u16::from(f.code)),
        Some(f) => format!("close code {}: {}", u16::from(f.code), f.reason),
        None => "no close frame".into(),
    }
}

#[async_trait]
impl RealtimeConnector for AzureRealtimeClient {
    async fn connect(&self, setup: RealtimeSetup) -> Result<RealtimeConnection, RealtimeFailure> {
        let result = async {
            let mut socket = self.open().await?;
            let info = self.configure(&mut socket, &setup).await?;
            Ok::<_, RealtimeFailure>((socket, info))
        }
        .await;
        let (socket, info) = match result {
            Ok(ok) => ok,
            Err(failure) => {
                RealtimeStats::add(&self.stats.connect_failures, 1);
                return Err(failure);
            }
        };
        RealtimeStats::add(&self.stats.connects, 1);
        tracing::info!(session_id = %setup.session_id, flavour = %self.config.flavour, provider_session = info.id.as_deref().unwrap_or(""), replayed = setup.history.len(), "realtime session ready");
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let ready = RealtimeEvent::SessionReady { provider_session_id: info.id.clone().unwrap_or_default(), expires_at: info.expires_at };
        let _ = events_tx.try_send(ready);
        let (sink, stream) = socket.split();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (writer_failed_tx, writer_failed_rx) = mpsc::channel(1);
        let closing = Arc::new(AtomicBool::new(false));
        let writer = Writer::new(sink, self.config.flavour.protocol(), self.stats.clone(), closing.clone());
        tokio::spawn(writer.run(commands_rx, stop_rx, writer_failed_tx));
        let reader = Reader::new(self.clone(), events_tx, closing, info.expires_at);
        tokio::spawn(reader.run(stream, writer_failed_rx, stop_tx));
        Ok(RealtimeConnection { commands: commands_tx, events: events_rx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// Words of `text` that look like a flavour name (lowercase, starting azure/openai).
    fn flavour_words(text: &str) -> Vec<&str> {
        text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
            .filter(|w| w.starts_with("azure") || w.starts_with("openai"))
            .collect()
    }

    fn messages(flavour: RealtimeFlavour) -> Vec<String> {
        // An endpoint whose host names no flavour-like word, so only the advice is scanned.
        let client = AzureRealtimeClient::new(RealtimeConfig::new(flavour, "http://127.0.0.1:9", Secret::new("k")), ClientTls::default()).unwrap();
        let rejected = ErrorInfo { kind: Some("invalid_request_error".into()), code: Some("unknown_parameter".into()), param: Some("session.type".into()), ..Default::default() };
        let text = |f: RealtimeFailure| match f {
            RealtimeFailure::Fatal(m) | RealtimeFailure::Transient(m) => m,
            other => panic!("handshake and setup errors are fatal or transient: {other:?}"),
        };
        vec![
            text(client.handshake_failure(StatusCode::UNAUTHORIZED, None)),
            text(client.handshake_failure(StatusCode::NOT_FOUND, None)),
            text(client.setup_error(&rejected)),
        ]
    }

    /// A stray error while configuring (the soak injected a decoder_error into a reconnect)
    /// used to end the whole call as a rejected configuration; only a rejection of what
    /// configure sent is fatal now.
    #[test]
    fn only_a_rejection_of_the_configuration_is_fatal_while_configuring() {
        let client = AzureRealtimeClient::new(RealtimeConfig::new(RealtimeFlavour::AzureGa, "http://127.0.0.1:9", Secret::new("k")), ClientTls::default()).unwrap();
        let error = |code: Option<&str>, param: Option<&str>| ErrorInfo {
            kind: Some("invalid_request_error".into()),
            code: code.map(str::to_owned),
            param: param.map(str::to_owned),
            ..Default::default()
        };
        for rejection in [
            error(Some("missing_required_parameter"), Some("session.type")),
            error(Some("unknown_parameter"), Some("session.modalities")),
            error(Some("invalid_value"), Some("item.content[0].type")),
            error(None, None),
        ] {
            let failure = client.setup_error(&rejection);
            assert!(failure.is_fatal() && failure.to_string().contains("rejected the session configuration"), "{rejection:?}: {failure:?}");
        }
        for stray in [error(Some("decoder_error"), None), error(Some("input_audio_buffer_commit_empty"), None), error(None, Some("audio"))] {
            assert!(matches!(client.setup_error(&stray), RealtimeFailure::Transient(_)), "{stray:?}");
        }
        let quota = ErrorInfo { kind: Some("insufficient_quota".into()), code: Some("insufficient_quota".into()), ..Default::default() };
        assert!(client.setup_error(&quota).is_fatal());
    }

    #[test]
    fn advice_names_only_flavours_the_config_accepts() {
        for flavour in RealtimeFlavour::CONFIGURABLE {
            let texts = messages(flavour);
            for text in &texts {
                for word in flavour_words(text) {
                    assert!(word.parse::<RealtimeFlavour>().is_ok(), "{flavour}: `{word}` is no realtime.flavour in: {text}");
                }
                assert!(!text.contains("api_version") || text.contains("realtime.api_version"), "{flavour}: {text}");
            }
            if flavour.is_azure() {
                // The 404 advice points at the other Azure flavour, in config.toml's words.
                let other = if flavour == RealtimeFlavour::AzureGa { RealtimeFlavour::AzurePreview } else { RealtimeFlavour::AzureGa };
                assert!(texts[1].contains(&format!("realtime.flavour = \"{other}\"")), "{}", texts[1]);
                assert!(texts[1].contains("AZURE_OPENAI_REALTIME_API_VERSION"), "{}", texts[1]);
            }
        }
    }
}
