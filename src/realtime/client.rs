//! `AzureRealtimeClient`: the [`RealtimeConnector`] over a WebSocket (tokio-tungstenite, rustls).
//!
//! One `connect` = one socket: handshake, session.update, history replay, then two tasks - a
//! reader that parses server events into [`RealtimeEvent`]s and a writer that turns
//! [`RealtimeCommand`]s into client events. The actor only ever `try_send`s to the writer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use consultant_actors::ports::{
    RealtimeCommand, RealtimeConnection, RealtimeConnector, RealtimeEvent, RealtimeFailure, RealtimeSetup, ResponseStatus,
    TokenUsage,
};
use consultant_actors::Role;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::config::{Protocol, RealtimeConfig, RealtimeFlavour, DEFAULT_AZURE_PREVIEW_API_VERSION};
use super::protocol::{self, is_fatal_code, ErrorInfo, ParseError, ServerEvent};
use super::stats::RealtimeStats;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Depth of the command queue (the actor drops audio beyond it rather than wait).
pub const COMMAND_QUEUE: usize = consultant_actors::realtime::COMMAND_QUEUE;
/// Depth of the event queue towards the actor.
pub const EVENT_QUEUE: usize = 1024;
/// Largest caller-audio append: 1 s of PCM16 (the service accepts up to 15 MiB).
pub const MAX_APPEND_SAMPLES: usize = 24_000;
/// Keep-alive ping interval, and how long a silent socket is trusted.
const PING_EVERY: Duration = Duration::from_secs(15);
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// A generic server_error this close to the session limit is the limit.
const EXPIRY_SLACK_SECS: i64 = 90;
/// Azure's limit when the server did not say (30 min).
const DEFAULT_SESSION_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The Python module's AzureRealtimeClient: connects to Azure (preview or GA) or OpenAI Realtime.
#[derive(Clone)]
pub struct AzureRealtimeClient {
    config: Arc<RealtimeConfig>,
    stats: Arc<RealtimeStats>,
}

impl std::fmt::Debug for AzureRealtimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureRealtimeClient").field("config", &self.config).finish()
    }
}

impl AzureRealtimeClient {
    /// Checks the configuration (a bad value is named with its fix).
    pub fn new(config: RealtimeConfig) -> Result<Self, String> {
        config.websocket_url()?;
        // rustls needs a process-wide provider; another component may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self { config: Arc::new(config), stats: Arc::new(RealtimeStats::default()) })
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
        let request = self.request()?;
        match tokio_tungstenite::connect_async_with_config(request, None, true).await {
            Ok((socket, _response)) => Ok(socket),
            Err(WsError::Http(response)) => Err(self.handshake_failure(response.status(), response.body().as_deref())),
            Err(e) => Err(RealtimeFailure::Transient(format!("cannot open the realtime WebSocket at {}: {e}", self.config.websocket_url().map(|u| u.to_string()).unwrap_or_default()))),
        }
    }

    /// session.update and the replayed history; waits for session.created, session.updated and
    /// the last replayed item.
    async fn configure(&self, socket: &mut Socket, setup: &RealtimeSetup) -> Result<protocol::SessionInfo, RealtimeFailure> {
        let protocol = self.config.flavour.protocol();
        let update = protocol::session_update(&self.config, &setup.instructions);
        send_json(socket, &update).await?;
        let mut previous = "root".to_owned();
        let mut last_item = None;
        let salt = uuid::Uuid::new_v4().simple().to_string();
        for (n, message) in setup.history.iter().enumerate() {
            // Item ids are ours (max 32 chars); old ids do not exist on a new session.
            let id = format!("h{}_{n}", &salt[..12]);
            let item = protocol::history_item(protocol, &id, &previous, message.role == Role::Assistant, &message.text);
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
        if error.kind.as_deref() == Some("invalid_request_error") {
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

    fn parse(&self, text: &str) -> Option<ServerEvent> {
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

async fn send_json(socket: &mut Socket, value: &serde_json::Value) -> Result<(), RealtimeFailure> {
    socket
        .send(Message::text(value.to_string()))
        .await
        .map_err(|e| RealtimeFailure::Transient(format!("realtime socket failed while configuring the session: {e}")))
}

fn describe_close(frame: Option<&CloseFrame>) -> String {
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
        let writer = Writer {
            sink,
            protocol: self.config.flavour.protocol(),
            stats: self.stats.clone(),
            closing: closing.clone(),
            text: String::new(),
            scratch: Vec::new(),
        };
        tokio::spawn(writer.run(commands_rx, stop_rx, writer_failed_tx));
        let reader = Reader {
            client: self.clone(),
            events: events_tx,
            closing,
            expires_at: info.expires_at,
            connected_at: Instant::now(),
            last_server_error: None,
            scratch: Vec::new(),
        };
        tokio::spawn(reader.run(stream, writer_failed_rx, stop_tx));
        Ok(RealtimeConnection { commands: commands_tx, events: events_rx })
    }
}

struct Writer {
    sink: SplitSink<Socket, Message>,
    protocol: Protocol,
    stats: Arc<RealtimeStats>,
    closing: Arc<AtomicBool>,
    text: String,
    scratch: Vec<u8>,
}

impl Writer {
    async fn run(mut self, mut commands: mpsc::Receiver<RealtimeCommand>, mut stop: watch::Receiver<bool>, failed: mpsc::Sender<String>) {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut pending: Option<RealtimeCommand> = None;
        loop {
            let command = match pending.take() {
                Some(c) => c,
                None => tokio::select! {
                    c = commands.recv() => match c {
                        Some(c) => c,
                        None => RealtimeCommand::Close,
                    },
                    _ = stop.changed() => return,
                    _ = ping.tick() => {
                        if let Err(e) = self.sink.send(Message::Ping(Default::default())).await {
                            let _ = failed.try_send(format!("realtime socket write failed: {e}"));
                            return;
                        }
                        continue;
                    }
                },
            };
            let result = match command {
                RealtimeCommand::AppendAudio(pcm) => {
                    // Frames already waiting are merged (never past MAX_APPEND_SAMPLES): fewer,
                    // larger appends when the socket is slower than the caller.
                    let mut batch: Vec<Arc<[i16]>> = vec![pcm];
                    let mut total = batch[0].len();
                    while total < MAX_APPEND_SAMPLES {
                        match commands.try_recv() {
                            Ok(RealtimeCommand::AppendAudio(more)) if total + more.len() <= MAX_APPEND_SAMPLES => {
                                total += more.len();
                                batch.push(more);
                            }
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.send_audio(&batch).await
                }
                RealtimeCommand::CreateResponse { instructions } => self.send_value(protocol::response_create(instructions.as_deref())).await,
                RealtimeCommand::CancelResponse => self.send_value(serde_json::json!({ "type": "response.cancel" })).await,
                RealtimeCommand::Truncate { item_id, content_index, audio_end_ms } => {
                    self.send_value(protocol::truncate(&item_id, content_index, audio_end_ms)).await
                }
                RealtimeCommand::UpdateInstructions(instructions) => {
                    self.send_value(protocol::instructions_update(self.protocol, &instructions)).await
                }
                RealtimeCommand::Close => {
                    self.closing.store(true, Ordering::SeqCst);
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "consultation ended".into() };
                    let _ = self.sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            };
            if let Err(e) = result {
                let _ = failed.try_send(format!("realtime socket write failed: {e}"));
                return;
            }
        }
    }

    async fn send_value(&mut self, value: serde_json::Value) -> Result<(), WsError> {
        self.sink.send(Message::text(value.to_string())).await
    }

    /// Sends the batch as appends of at most MAX_APPEND_SAMPLES whole samples each.
    async fn send_audio(&mut self, batch: &[Arc<[i16]>]) -> Result<(), WsError> {
        let mut joined: Vec<i16>;
        let samples: &[i16] = if batch.len() == 1 {
            &batch[0]
        } else {
            joined = Vec::with_capacity(batch.iter().map(|b| b.len()).sum());
            for b in batch {
                joined.extend_from_slice(b);
            }
            &joined
        };
        for chunk in samples.chunks(MAX_APPEND_SAMPLES) {
            self.text.clear();
            protocol::write_audio_append(&mut self.text, chunk, &mut self.scratch);
            let message = Message::text(std::mem::take(&mut self.text));
            self.sink.send(message).await?;
            RealtimeStats::add(&self.stats.audio_appends_sent, 1);
            RealtimeStats::add(&self.stats.audio_bytes_sent, chunk.len() as u64 * 2);
        }
        Ok(())
    }
}

struct Reader {
    client: AzureRealtimeClient,
    events: mpsc::Sender<RealtimeEvent>,
    closing: Arc<AtomicBool>,
    expires_at: Option<i64>,
    connected_at: Instant,
    last_server_error: Option<String>,
    scratch: Vec<u8>,
}

enum Step {
    Continue,
    End(RealtimeFailure),
}

impl Reader {
    async fn run(mut self, mut stream: SplitStream<Socket>, mut writer_failed: mpsc::Receiver<String>, stop: watch::Sender<bool>) {
        let cause = loop {
            let frame = tokio::select! {
                frame = tokio::time::timeout(SILENCE_LIMIT, stream.next()) => frame,
                Some(reason) = writer_failed.recv() => break RealtimeFailure::Transient(reason),
            };
            let step = match frame {
                Err(_) => Step::End(RealtimeFailure::Transient(format!("no data from the realtime server for {SILENCE_LIMIT:?} (not even a pong)"))),
                Ok(None) => Step::End(self.lost("the realtime connection was closed without a close frame")),
                Ok(Some(Err(e))) => Step::End(self.lost(&format!("the realtime connection dropped: {e}"))),
                Ok(Some(Ok(Message::Close(frame)))) => Step::End(self.closed(frame.as_ref())),
                Ok(Some(Ok(Message::Text(text)))) => self.on_text(&text).await,
                Ok(Some(Ok(_))) => Step::Continue,
            };
            match step {
                Step::Continue => {}
                Step::End(cause) => break cause,
            }
        };
        let _ = stop.send(true);
        RealtimeStats::add(&self.client.stats.disconnects, 1);
        if !matches!(cause, RealtimeFailure::Closed) {
            tracing::warn!(cause = %cause, "realtime connection ended");
        }
        let _ = self.events.send(RealtimeEvent::Disconnected { cause }).await;
    }

    fn near_expiry(&self) -> bool {
        match self.expires_at {
            Some(at) => chrono::Utc::now().timestamp() >= at - EXPIRY_SLACK_SECS,
            None => self.connected_at.elapsed() + Duration::from_secs(EXPIRY_SLACK_SECS as u64) >= DEFAULT_SESSION_LIMIT,
        }
    }

    fn lost(&self, what: &str) -> RealtimeFailure {
        if self.closing.load(Ordering::SeqCst) {
            return RealtimeFailure::Closed;
        }
        match &self.last_server_error {
            Some(error) if self.near_expiry() => RealtimeFailure::Expired(format!("{what} after a server_error at the session limit ({error})")),
            Some(error) => RealtimeFailure::Transient(format!("{what} after a server_error ({error})")),
            None => RealtimeFailure::Transient(what.to_owned()),
        }
    }

    fn closed(&self, frame: Option<&CloseFrame>) -> RealtimeFailure {
        self.lost(&format!("the realtime server closed the connection ({})", describe_close(frame)))
    }

    async fn emit(&mut self, event: RealtimeEvent) -> Step {
        match self.events.send(event).await {
            Ok(()) => Step::Continue,
            // Nobody listens any more: the actor is gone.
            Err(_) => Step::End(RealtimeFailure::Closed),
        }
    }

    async fn on_text(&mut self, text: &str) -> Step {
        let Some(event) = self.client.parse(text) else { return Step::Continue };
        let stats = &self.client.stats;
        let out = match event {
            ServerEvent::AudioDelta { item_id, delta } => match protocol::decode_pcm(&delta, &mut self.scratch) {
                Ok(pcm) => {
                    RealtimeStats::add(&stats.audio_deltas_received, 1);
                    RealtimeStats::add(&stats.audio_bytes_received, pcm.len() as u64 * 2);
                    RealtimeEvent::AgentAudio { item_id, pcm: pcm.into() }
                }
                Err(e) => {
                    RealtimeStats::add(&stats.malformed_events, 1);
                    tracing::warn!(error = %e, "agent audio delta is not valid base64; skipped");
                    return Step::Continue;
                }
            },
            ServerEvent::TranscriptDelta { item_id, delta } => RealtimeEvent::AgentTranscriptDelta { item_id, delta },
            ServerEvent::TranscriptDone { item_id, transcript } => RealtimeEvent::AgentTranscriptDone { item_id, text: transcript },
            ServerEvent::SpeechStarted { item_id, audio_start_ms } => RealtimeEvent::SpeechStarted { item_id, audio_start_ms },
            ServerEvent::SpeechStopped { item_id, audio_end_ms } => RealtimeEvent::SpeechStopped { item_id, audio_end_ms },
            ServerEvent::Committed { item_id, .. } => RealtimeEvent::UserItemCommitted { item_id },
            ServerEvent::UserTranscriptCompleted { item_id, transcript } => RealtimeEvent::UserTranscript { item_id, text: transcript },
            ServerEvent::UserTranscriptFailed { item_id, error } => RealtimeEvent::UserTranscriptFailed { item_id, reason: error.describe() },
            ServerEvent::ResponseCreated(response) => RealtimeEvent::ResponseStarted { response_id: response.id.unwrap_or_default() },
            ServerEvent::OutputItemAdded { response_id, item } => {
                let is_agent_message = item.role.as_deref().is_none_or(|r| r == "assistant") && item.kind.as_deref().is_none_or(|k| k == "message");
                match item.id {
                    Some(item_id) if is_agent_message => RealtimeEvent::AgentItemStarted { response_id, item_id },
                    _ => return Step::Continue,
                }
            }
            ServerEvent::ResponseDone(response) => {
                let status = match response.status.as_deref() {
                    Some("completed") => ResponseStatus::Completed,
                    Some("cancelled") => ResponseStatus::Cancelled,
                    Some("incomplete") => ResponseStatus::Incomplete,
                    _ => ResponseStatus::Failed,
                };
                let reason = response.reason();
                let usage = response.usage.as_ref().map(|u| TokenUsage { input_tokens: u.input_tokens, output_tokens: u.output_tokens });
                RealtimeEvent::ResponseDone { response_id: response.id, status, reason, usage }
            }
            ServerEvent::Error(error) => {
                RealtimeStats::add(&stats.error_events, 1);
                let code = error.code.as_deref();
                if is_fatal_code(code) {
                    return Step::End(RealtimeFailure::Fatal(format!("realtime service: {}", error.describe())));
                }
                if code == Some("session_expired") {
                    return Step::End(RealtimeFailure::Expired(error.describe()));
                }
                if error.kind.as_deref() == Some("server_error") {
                    if self.near_expiry() {
                        return Step::End(RealtimeFailure::Expired(format!("server_error at the session limit: {}", error.describe())));
                    }
                    self.last_server_error = Some(error.describe());
                }
                RealtimeEvent::Error { code: error.code.clone(), message: error.describe() }
            }
            ServerEvent::RateLimits(limits) => {
                for limit in limits.iter().filter(|l| l.remaining.is_some_and(|r| r <= 0.0)) {
                    tracing::warn!(name = limit.name.as_deref().unwrap_or(""), reset_seconds = limit.reset_seconds.unwrap_or(0.0), "realtime rate limit exhausted");
                }
                return Step::Continue;
            }
            ServerEvent::SessionCreated(info) => {
                self.expires_at = info.expires_at.or(self.expires_at);
                return Step::Continue;
            }
            ServerEvent::SessionUpdated(_)
            | ServerEvent::BufferCleared
            | ServerEvent::ItemCreated { .. }
            | ServerEvent::ItemTruncated { .. }
            | ServerEvent::ItemDeleted { .. }
            | ServerEvent::UserTranscriptDelta { .. }
            | ServerEvent::OutputItemDone { .. }
            | ServerEvent::ContentPartAdded { .. }
            | ServerEvent::ContentPartDone { .. }
            | ServerEvent::AudioDone { .. }
            | ServerEvent::TextDelta { .. }
            | ServerEvent::TextDone { .. }
            | ServerEvent::Unknown(_) => return Step::Continue,
        };
        self.emit(out).await
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
        let client = AzureRealtimeClient::new(RealtimeConfig::new(flavour, "http://127.0.0.1:9", Secret::new("k"))).unwrap();
        let rejected = ErrorInfo { kind: Some("invalid_request_error".into()), ..Default::default() };
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
