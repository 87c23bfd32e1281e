//! A fake Azure/OpenAI Realtime server: a real WebSocket server on 127.0.0.1:0 that is as
//! strict as the real service (handshake checks per flavour, session field validation, error
//! codes) and as quirky (asynchronous user transcripts, `obfuscation` fields, unknown events).
//!
//! It runs energy-based VAD on the PCM it receives and answers each caller turn from a test
//! script with a tone (or given PCM) streamed in deltas with transcript deltas, paced at real
//! time or faster. Everything received is recorded for assertions; faults are injected on
//! demand.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response as HandshakeResponse};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[path = "realtime_response.rs"]
mod response_rules;
#[path = "realtime_session.rs"]
mod session_rules;
#[path = "realtime_spoken.rs"]
mod spoken;
#[path = "realtime_tools.rs"]
mod tools;

pub use spoken::Spoken;
pub use tools::ScriptedCall;

const RATE: u64 = 24_000;
/// VAD frame: 10 ms.
const FRAME: usize = 240;

/// Which service the fake impersonates. OpenAI speaks beta when the client sends
/// `OpenAI-Beta: realtime=v1`, GA otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeFlavour {
    AzurePreview { api_version: String },
    AzureGa,
    OpenAi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeProtocol {
    Beta,
    Ga,
}

/// When the caller's transcript of a turn is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranscriptTiming {
    /// Right after the user item, before the response starts.
    BeforeResponse,
    /// After the response's first audio delta (it really happens).
    AfterResponseStarted,
    /// transcription.failed instead.
    Failed,
    /// Streamed (`transcription.delta`s, then `completed`) before the turn's
    /// `input_audio_buffer.committed` and item event: it happens with fast transcription.
    BeforeItem,
}

#[derive(Clone, Debug)]
pub struct ScriptTurn {
    /// What the caller "said" (delivered as the transcript).
    pub user: String,
    /// What the agent answers.
    pub agent: String,
    pub transcript: TranscriptTiming,
    /// The model calls this function at the end of its answer.
    pub call: Option<ScriptedCall>,
    /// ... and says nothing before it.
    pub call_only: bool,
}

impl ScriptTurn {
    pub fn new(user: impl Into<String>, agent: impl Into<String>) -> Self {
        Self { user: user.into(), agent: agent.into(), transcript: TranscriptTiming::BeforeResponse, call: None, call_only: false }
    }

    /// The model says its answer, then calls `name` with `arguments` (a JSON text).
    pub fn then_calls(mut self, name: &str, arguments: &str) -> Self {
        self.call = Some(ScriptedCall { name: name.into(), arguments: arguments.into() });
        self
    }

    /// The model answers only with a call of `name`, saying nothing.
    pub fn calls_silently(mut self, name: &str, arguments: &str) -> Self {
        self.call_only = true;
        self.then_calls(name, arguments)
    }

    pub fn late(mut self) -> Self {
        self.transcript = TranscriptTiming::AfterResponseStarted;
        self
    }

    pub fn failed(mut self) -> Self {
        self.transcript = TranscriptTiming::Failed;
        self
    }

    pub fn early(mut self) -> Self {
        self.transcript = TranscriptTiming::BeforeItem;
        self
    }
}

/// The agent's voice.
#[derive(Clone, Debug)]
pub enum AgentVoice {
    /// A 440 Hz tone lasting `ms_per_char` per character of the answer.
    Tone { ms_per_char: u32 },
    /// This PCM (24 kHz mono) for every answer.
    Pcm(Arc<[i16]>),
}

#[derive(Clone, Debug)]
pub struct FakeRealtimeOptions {
    pub flavour: FakeFlavour,
    pub api_key: String,
    /// Azure deployment (preview `deployment=`, GA `model=`) or OpenAI model.
    pub deployment: String,
    /// The answer to the first response.create that follows no caller turn.
    pub greeting: String,
    pub turns: Vec<ScriptTurn>,
    /// Answer when the script is exhausted or a response is requested without a turn.
    pub fallback_answer: String,
    pub voice: AgentVoice,
    /// Audio per delta.
    pub delta_ms: u32,
    /// Pace of agent audio: 1.0 = real time, 4.0 = four times faster; None = no pacing.
    pub speed: Option<f64>,
    /// Session limit: session.created's expires_at, and at that moment the provider's way of
    /// ending it (Azure: generic server_error then close; OpenAI: session_expired, close 1001).
    pub session_limit: Duration,
    pub enforce_session_limit: bool,
    /// Send events and fields this client does not know (as newer services do).
    pub unknown_noise: bool,
    /// Send response.done status_details as a plain string.
    pub status_details_as_string: bool,
    /// Benchmarks: the first four samples of every audio delta carry the send time (ns since
    /// the Unix epoch, little-endian u64) so another process can measure arrival latency.
    pub stamp_deltas: bool,
}

impl FakeRealtimeOptions {
    pub fn new(flavour: FakeFlavour) -> Self {
        Self {
            flavour,
            api_key: "test-key-123".into(),
            deployment: "gpt-4o-realtime-preview".into(),
            greeting: "Здравствуйте! Как вас зовут?".into(),
            turns: Vec::new(),
            fallback_answer: "Понятно, спасибо.".into(),
            voice: AgentVoice::Tone { ms_per_char: 20 },
            delta_ms: 100,
            speed: Some(1.0),
            session_limit: Duration::from_secs(30 * 60),
            enforce_session_limit: false,
            unknown_noise: true,
            status_details_as_string: false,
            stamp_deltas: false,
        }
    }
}

/// Refuse or disturb the next connection's handshake.
#[derive(Clone, Debug, PartialEq)]
pub enum HandshakeFault {
    /// Answer this HTTP status instead of 101.
    Status(u16),
    /// Complete the handshake, then close at once.
    CloseAfterHandshake,
    /// Hold the TCP connection this long before answering.
    Slow(Duration),
}

/// Faults injected into the live session.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Drop the TCP connection (no close frame) at this audio delta of the next response.
    DropMidResponse { after_deltas: u32 },
    /// Drop the TCP connection now.
    DropNow,
    /// The provider's session limit now (see `FakeRealtimeOptions::session_limit`).
    SessionLimitNow,
    /// A generic `server_error` (code null); `then_close` closes with 1011 afterwards.
    ServerError { then_close: bool },
    /// A frame that is not JSON.
    MalformedJson,
    /// Close frame with this code.
    Close(u16),
    /// An `error` event of this type and code (e.g. insufficient_quota); the session stays
    /// open, as the real service leaves it.
    ErrorEvent { kind: String, code: String },
    /// The next response ends at once with `response.done` status `failed` and this error
    /// code (e.g. `inference_rate_limit_exceeded` mid-session), no audio; the next
    /// `response.create` gives the answer it would have given.
    FailNextResponse { code: String },
}

#[derive(Clone, Debug, Default)]
pub struct ResponseRecord {
    pub response_id: String,
    pub item_id: String,
    pub text: String,
    pub status: String,
    pub audio_ms_sent: u64,
    /// The answer's words sent so far (transcript deltas, then the done event's text).
    pub transcript_sent: String,
}

/// Everything one connection received and did.
#[derive(Clone, Debug, Default)]
pub struct ConnectionRecord {
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// The HTTP status answered (101 when accepted).
    pub status: u16,
    pub protocol: Option<FakeProtocol>,
    pub session_updates: Vec<Value>,
    /// conversation.item.create payloads that were accepted.
    pub items: Vec<Value>,
    pub appended_samples: u64,
    pub appends: u64,
    pub truncates: Vec<Value>,
    pub response_creates: Vec<Value>,
    pub client_event_types: Vec<String>,
    /// Error codes (or types when no code) sent to the client.
    pub errors_sent: Vec<String>,
    pub responses: Vec<ResponseRecord>,
    /// Function calls the model made.
    pub tool_calls: Vec<ScriptedCall>,
    pub user_turns: u32,
    pub ended: Option<String>,
}

impl ConnectionRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn appended_ms(&self) -> u64 {
        self.appended_samples * 1000 / RATE
    }

    /// Text of each replayed item, with its role, in the order received.
    pub fn replayed(&self) -> Vec<(String, String)> {
        self.items
            .iter()
            .map(|i| {
                let role = i["item"]["role"].as_str().unwrap_or_default().to_owned();
                let text = i["item"]["content"][0]["text"].as_str().unwrap_or_default().to_owned();
                (role, text)
            })
            .collect()
    }
}

struct Shared {
    options: FakeRealtimeOptions,
    connections: Mutex<Vec<ConnectionRecord>>,
    handshake_faults: Mutex<VecDeque<HandshakeFault>>,
    faults: Mutex<VecDeque<Fault>>,
    fault_signal: watch::Sender<u64>,
    script: Mutex<Script>,
    /// Audio deltas sent, with when (benchmarks measure arrival latency against these).
    delta_log: Mutex<Option<Vec<Instant>>>,
    spoken: Mutex<Vec<Spoken>>,
    /// Faults as they took effect.
    applied: Mutex<Vec<String>>,
}

#[derive(Default)]
struct Script {
    next_turn: usize,
    greeted: bool,
}

/// The running fake; dropped = stopped.
pub struct FakeRealtime {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRealtime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRealtime {
    pub async fn start(options: FakeRealtimeOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            connections: Mutex::new(Vec::new()),
            handshake_faults: Mutex::new(VecDeque::new()),
            faults: Mutex::new(VecDeque::new()),
            fault_signal: watch::channel(0).0,
            script: Mutex::new(Script::default()),
            delta_log: Mutex::new(None),
            spoken: Mutex::new(Vec::new()),
            applied: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(s.clone(), stream));
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>` (clients map it to ws://).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn options(&self) -> &FakeRealtimeOptions {
        &self.shared.options
    }

    /// The next connections meet these handshake faults, one each, in order.
    pub fn fail_next_handshakes(&self, faults: impl IntoIterator<Item = HandshakeFault>) {
        self.shared.handshake_faults.lock().unwrap().extend(faults);
    }

    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push_back(fault);
        self.shared.fault_signal.send_modify(|n| *n += 1);
    }

    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.shared.connections.lock().unwrap().clone()
    }

    /// Only connections that got past the handshake.
    pub fn sessions(&self) -> Vec<ConnectionRecord> {
        self.connections().into_iter().filter(|c| c.status == 101).collect()
    }

    /// Starts recording the send instant of every audio delta.
    pub fn log_deltas(&self) {
        *self.shared.delta_log.lock().unwrap() = Some(Vec::new());
    }

    /// Every injected fault (handshake faults included) that took effect, in order: a
    /// `DropMidResponse` once it dropped, a `FailNextResponse` once a response failed.
    pub fn faults_applied(&self) -> Vec<String> {
        self.shared.applied.lock().unwrap().clone()
    }

    /// The conversation as the fake lived it, across its connections (see [`Spoken`]).
    pub fn spoken(&self) -> Vec<Spoken> {
        self.shared.spoken.lock().unwrap().clone()
    }

    pub fn take_delta_log(&self) -> Vec<Instant> {
        self.shared.delta_log.lock().unwrap().as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Polls the records until `check` holds; panics with the records after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&[ConnectionRecord]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.connections();
            if check(&records) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("fake realtime: timed out waiting for {what}; records: {records:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// -------------------------------------------------------------------------------------------
// Handshake
// -------------------------------------------------------------------------------------------

fn check_request(options: &FakeRealtimeOptions, request: &Request) -> Result<FakeProtocol, (u16, String)> {
    let path = request.uri().path();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match &options.flavour {
        FakeFlavour::AzurePreview { api_version } => {
            if path != "/openai/realtime" {
                return Err((404, r#"{"error":{"code":"404","message":"Resource not found"}}"#.into()));
            }
            if query.get("api-version") != Some(api_version) {
                return Err((404, r#"{"error":{"code":"404","message":"Resource not found"}}"#.into()));
            }
            if query.get("deployment") != Some(&options.deployment) {
                return Err((404, r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#.into()));
            }
            if header("api-key").as_deref() != Some(options.api_key.as_str()) {
                return Err((401, r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#.into()));
            }
            Ok(FakeProtocol::Beta)
        }
        FakeFlavour::AzureGa => {
            if path != "/openai/v1/realtime" {
                return Err((404, r#"{"error":{"code":"404","message":"Resource not found"}}"#.into()));
            }
            if query.contains_key("api-version") {
                return Err((401, r#"{"error":{"code":"401","message":"api-version is not allowed on the v1 API"}}"#.into()));
            }
            if query.get("model") != Some(&options.deployment) {
                return Err((404, r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#.into()));
            }
            if header("openai-beta").is_some() {
                return Err((400, r#"{"error":{"code":"invalid_request_error","message":"The OpenAI-Beta header is not supported on the GA API"}}"#.into()));
            }
            if header("api-key").as_deref() != Some(options.api_key.as_str()) {
                return Err((401, r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#.into()));
            }
            Ok(FakeProtocol::Ga)
        }
        FakeFlavour::OpenAi => {
            if path != "/v1/realtime" {
                return Err((404, r#"{"error":{"type":"invalid_request_error","message":"Not found"}}"#.into()));
            }
            if query.get("model") != Some(&options.deployment) {
                return Err((404, r#"{"error":{"type":"invalid_request_error","code":"model_not_found","message":"The model does not exist or you do not have access to it."}}"#.into()));
            }
            if header("authorization").as_deref() != Some(format!("Bearer {}", options.api_key).as_str()) {
                return Err((401, r#"{"error":{"type":"invalid_request_error","code":"invalid_api_key","message":"Incorrect API key provided."}}"#.into()));
            }
            Ok(if header("openai-beta").as_deref() == Some("realtime=v1") { FakeProtocol::Beta } else { FakeProtocol::Ga })
        }
    }
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let fault = shared.handshake_faults.lock().unwrap().pop_front();
    if let Some(f) = &fault {
        shared.applied(format!("handshake {f:?}"));
    }
    if let Some(HandshakeFault::Slow(delay)) = &fault {
        tokio::time::sleep(*delay).await;
    }
    let index = {
        let mut connections = shared.connections.lock().unwrap();
        connections.push(ConnectionRecord::default());
        connections.len() - 1
    };
    let outcome: Arc<Mutex<Option<FakeProtocol>>> = Arc::default();
    let (s, out) = (shared.clone(), outcome.clone());
    let forced_status = match &fault {
        Some(HandshakeFault::Status(code)) => Some(*code),
        _ => None,
    };
    let callback = move |request: &Request, response: HandshakeResponse| -> Result<HandshakeResponse, ErrorResponse> {
        let mut connections = s.connections.lock().unwrap();
        let record = &mut connections[index];
        record.path = request.uri().path().to_owned();
        record.query = request
            .uri()
            .query()
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        record.headers = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let verdict = match forced_status {
            Some(code) => Err((code, format!(r#"{{"error":{{"code":"{code}","message":"injected by the test"}}}}"#))),
            None => check_request(&s.options, request),
        };
        match verdict {
            Ok(protocol) => {
                record.status = 101;
                record.protocol = Some(protocol);
                *out.lock().unwrap() = Some(protocol);
                Ok(response)
            }
            Err((code, body)) => {
                record.status = code;
                let mut refusal = ErrorResponse::new(Some(body));
                *refusal.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                Err(refusal)
            }
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let Some(protocol) = *outcome.lock().unwrap() else { return };
    if fault == Some(HandshakeFault::CloseAfterHandshake) {
        let _ = ws.close(Some(CloseFrame { code: CloseCode::Error, reason: "".into() })).await;
        shared.connections.lock().unwrap()[index].ended = Some("closed after handshake (injected)".into());
        return;
    }
    let mut session = Session::new(shared.clone(), index, protocol);
    let ended = session.run(ws).await;
    shared.connections.lock().unwrap()[index].ended = Some(ended);
}

// -------------------------------------------------------------------------------------------
// Session
// -------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Vad {
    threshold: f64,
    prefix_padding_ms: u64,
    silence_duration_ms: u64,
    create_response: bool,
    interrupt_response: bool,
}

impl Default for Vad {
    fn default() -> Self {
        Self { threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500, create_response: true, interrupt_response: true }
    }
}

impl Vad {
    /// Energy threshold: the model's 0-1 probability mapped onto RMS of full scale.
    fn rms_threshold(&self) -> f64 {
        self.threshold * 0.05 * 32768.0
    }
}

struct Config {
    instructions: String,
    voice: String,
    vad: Option<Vad>,
    transcription: Option<String>,
}

struct Response {
    id: String,
    item_id: String,
    text: String,
    words: Vec<String>,
    pcm: Arc<[i16]>,
    sent_samples: usize,
    words_sent: usize,
    deltas_sent: u32,
    started: Instant,
    /// A user transcript to deliver after the first audio delta.
    late_transcript: Option<(String, ScriptTurn)>,
    record_index: usize,
    /// Called once the answer is said.
    call: Option<ScriptedCall>,
}

struct Session {
    shared: Arc<Shared>,
    index: usize,
    protocol: FakeProtocol,
    config: Config,
    opened: Instant,
    event_seq: u64,
    item_seq: u64,
    last_item: Option<String>,
    items: Vec<String>,
    /// Audio ms sent per assistant item (truncate validation).
    item_audio_ms: HashMap<String, u64>,
    // VAD state
    received_samples: u64,
    carry: Vec<i16>,
    in_speech: bool,
    speech_run: u32,
    silence_ms: u64,
    user_item: Option<String>,
    buffered_samples: u64,
    response: Option<Response>,
    drop_after: Option<u32>,
    fail_next: Option<String>,
    /// The answer of a response that failed, given to the next `response.create`.
    pending_answer: Option<String>,
    /// Function call ids in the conversation (made or replayed).
    calls: Vec<String>,
}

enum Flow {
    Continue,
    End(String),
}

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

impl Session {
    fn new(shared: Arc<Shared>, index: usize, protocol: FakeProtocol) -> Self {
        Self {
            shared,
            index,
            protocol,
            config: Config { instructions: String::new(), voice: "alloy".into(), vad: Some(Vad::default()), transcription: None },
            opened: Instant::now(),
            event_seq: 0,
            item_seq: 0,
            last_item: None,
            items: Vec::new(),
            item_audio_ms: HashMap::new(),
            received_samples: 0,
            carry: Vec::new(),
            in_speech: false,
            speech_run: 0,
            silence_ms: 0,
            user_item: None,
            buffered_samples: 0,
            response: None,
            drop_after: None,
            fail_next: None,
            pending_answer: None,
            calls: Vec::new(),
        }
    }

    fn record(&self, change: impl FnOnce(&mut ConnectionRecord)) {
        change(&mut self.shared.connections.lock().unwrap()[self.index]);
    }

    fn options(&self) -> &FakeRealtimeOptions {
        &self.shared.options
    }

    fn azure(&self) -> bool {
        !matches!(self.options().flavour, FakeFlavour::OpenAi)
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.item_seq += 1;
        format!("{prefix}_{:04}{:016x}", self.index, self.item_seq)
    }

    async fn send(&mut self, sink: &mut Sink, mut event: Value) -> Result<(), String> {
        self.event_seq += 1;
        event["event_id"] = json!(format!("event_{}_{}", self.index, self.event_seq));
        sink.send(Message::text(event.to_string())).await.map_err(|e| format!("send failed: {e}"))
    }

    async fn error(&mut self, sink: &mut Sink, kind: &str, code: Option<&str>, message: &str, param: Option<&str>, event_id: Option<&str>) -> Result<(), String> {
        let label = code.unwrap_or(kind).to_owned();
        self.record(|r| r.errors_sent.push(label));
        let error = json!({ "type": kind, "code": code, "message": message, "param": param, "event_id": event_id });
        self.send(sink, json!({ "type": "error", "error": error })).await
    }

    fn name<'a>(&self, beta: &'a str, ga: &'a str) -> &'a str {
        match self.protocol {
            FakeProtocol::Beta => beta,
            FakeProtocol::Ga => ga,
        }
    }

    fn session_json(&self, expires_at: i64) -> Value {
        let vad = self.config.vad.as_ref().map(|v| {
            json!({
                "type": "server_vad", "threshold": v.threshold, "prefix_padding_ms": v.prefix_padding_ms,
                "silence_duration_ms": v.silence_duration_ms, "create_response": v.create_response,
                "interrupt_response": v.interrupt_response,
            })
        });
        let transcription = self.config.transcription.as_ref().map(|m| json!({ "model": m }));
        let id = format!("sess_{:04}", self.index);
        match self.protocol {
            FakeProtocol::Beta => json!({
                "id": id, "object": "realtime.session", "model": self.options().deployment, "expires_at": expires_at,
                "modalities": ["audio", "text"], "instructions": self.config.instructions, "voice": self.config.voice,
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": transcription, "turn_detection": vad, "tools": [], "tool_choice": "auto",
                "temperature": 0.8, "max_response_output_tokens": "inf",
            }),
            FakeProtocol::Ga => json!({
                "type": "realtime", "object": "realtime.session", "id": id, "model": self.options().deployment,
                "expires_at": expires_at, "output_modalities": ["audio"], "instructions": self.config.instructions,
                "audio": {
                    "input": { "format": { "type": "audio/pcm", "rate": 24000 }, "transcription": transcription, "turn_detection": vad },
                    "output": { "format": { "type": "audio/pcm", "rate": 24000 }, "voice": self.config.voice },
                },
                "max_output_tokens": "inf",
            }),
        }
    }

    fn expires_at(&self) -> i64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (now + self.options().session_limit).as_secs() as i64 - self.opened.elapsed().as_secs() as i64
    }

    async fn run(&mut self, ws: WebSocketStream<TcpStream>) -> String {
        let (mut sink, mut stream) = ws.split();
        let created = json!({ "type": "session.created", "session": self.session_json(self.expires_at()) });
        if let Err(e) = self.send(&mut sink, created).await {
            return e;
        }
        let mut faults = self.shared.fault_signal.subscribe();
        faults.mark_changed();
        let limit_at = tokio::time::Instant::from_std(self.opened + self.options().session_limit);
        loop {
            let due = self.next_delta_due();
            let flow = tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_client_event(&mut sink, &text).await,
                    Some(Ok(Message::Close(_))) | None => Flow::End("client closed".into()),
                    Some(Ok(_)) => Flow::Continue,
                    Some(Err(e)) => Flow::End(format!("client socket error: {e}")),
                },
                _ = async { tokio::time::sleep_until(due.unwrap()).await }, if due.is_some() => self.send_next_delta(&mut sink).await,
                changed = faults.changed() => match changed {
                    Ok(()) => self.on_faults(&mut sink).await,
                    Err(_) => Flow::End("fake stopped".into()),
                },
                _ = tokio::time::sleep_until(limit_at), if self.options().enforce_session_limit => self.session_limit(&mut sink).await,
            };
            if let Flow::End(why) = flow {
                return why;
            }
        }
    }

    async fn on_faults(&mut self, sink: &mut Sink) -> Flow {
        loop {
            let Some(fault) = self.shared.faults.lock().unwrap().pop_front() else { return Flow::Continue };
            // These two act later, and are logged when they do.
            if !matches!(fault, Fault::DropMidResponse { .. } | Fault::FailNextResponse { .. }) {
                self.shared.applied(format!("{fault:?}"));
            }
            let flow = match fault {
                Fault::DropMidResponse { after_deltas } => {
                    self.drop_after = Some(after_deltas);
                    Flow::Continue
                }
                Fault::FailNextResponse { code } => {
                    self.fail_next = Some(code);
                    Flow::Continue
                }
                Fault::DropNow => Flow::End("dropped (injected)".into()),
                Fault::SessionLimitNow => self.session_limit(sink).await,
                Fault::ServerError { then_close } => {
                    let message = "The server had an error while processing your request. Sorry about that!";
                    if let Err(e) = self.error(sink, "server_error", None, message, None, None).await {
                        return Flow::End(e);
                    }
                    if then_close {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Error, reason: "".into() }))).await;
                        Flow::End("closed after server_error (injected)".into())
                    } else {
                        Flow::Continue
                    }
                }
                Fault::MalformedJson => match sink.send(Message::text(r#"{"type":"response.audio.delta","delta":"AAAA"#)).await {
                    Ok(()) => Flow::Continue,
                    Err(e) => Flow::End(e.to_string()),
                },
                Fault::ErrorEvent { kind, code } => {
                    let result = self.error(sink, &kind, Some(&code), "injected by the test", None, None).await;
                    self.flow(result)
                }
                Fault::Close(code) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: "injected".into() }))).await;
                    Flow::End(format!("closed with {code} (injected)"))
                }
            };
            if let Flow::End(_) = flow {
                return flow;
            }
        }
    }

    /// The provider's way of ending a session at its limit.
    async fn session_limit(&mut self, sink: &mut Sink) -> Flow {
        if self.azure() {
            let message = "The server had an error while processing your request. Sorry about that!";
            let _ = self.error(sink, "server_error", None, message, None, None).await;
            let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Error, reason: "".into() }))).await;
        } else {
            let message = "Your session hit the maximum duration of 60 minutes.";
            let _ = self.error(sink, "invalid_request_error", Some("session_expired"), message, None, None).await;
            let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "".into() }))).await;
        }
        Flow::End("session limit".into())
    }

    async fn on_client_event(&mut self, sink: &mut Sink, text: &str) -> Flow {
        let event: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let result = self.error(sink, "invalid_request_error", Some("invalid_json"), &format!("Invalid JSON: {e}"), None, None).await;
                return self.flow(result);
            }
        };
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        let event_id = event["event_id"].as_str().map(str::to_owned);
        if kind != "input_audio_buffer.append" {
            let k = kind.clone();
            self.record(|r| r.client_event_types.push(k));
        }
        let result = match kind.as_str() {
            "input_audio_buffer.append" => self.on_append(sink, &event).await,
            "session.update" => self.on_session_update(sink, &event, event_id.as_deref()).await,
            "conversation.item.create" => self.on_item_create(sink, &event, event_id.as_deref()).await,
            "conversation.item.truncate" => self.on_truncate(sink, &event, event_id.as_deref()).await,
            "conversation.item.delete" => {
                let id = event["item_id"].as_str().unwrap_or_default().to_owned();
                if self.items.contains(&id) {
                    self.items.retain(|i| *i != id);
                    self.send(sink, json!({ "type": "conversation.item.deleted", "item_id": id })).await
                } else {
                    self.error(sink, "invalid_request_error", Some("invalid_value"), &format!("Item with id '{id}' not found"), Some("item_id"), event_id.as_deref()).await
                }
            }
            "input_audio_buffer.commit" => {
                if self.buffered_samples * 1000 / RATE < 100 {
                    self.error(sink, "invalid_request_error", Some("input_audio_buffer_commit_empty"), "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio.", None, event_id.as_deref()).await
                } else {
                    self.commit_user_turn(sink, None).await
                }
            }
            "input_audio_buffer.clear" => {
                self.buffered_samples = 0;
                self.send(sink, json!({ "type": "input_audio_buffer.cleared" })).await
            }
            "response.create" => {
                let e = event.clone();
                self.record(|r| r.response_creates.push(e));
                if let Err((code, message, param)) = response_rules::validate(self.protocol, &event) {
                    self.error(sink, "invalid_request_error", Some(code), &message, Some(&param), event_id.as_deref()).await
                } else if self.response.is_some() {
                    self.error(sink, "invalid_request_error", Some("conversation_already_has_active_response"), "Conversation already has an active response in progress.", None, event_id.as_deref()).await
                } else {
                    let pending = self.pending_answer.take();
                    let text = pending.unwrap_or_else(|| {
                        let mut script = self.shared.script.lock().unwrap();
                        if script.greeted {
                            self.options().fallback_answer.clone()
                        } else {
                            script.greeted = true;
                            self.options().greeting.clone()
                        }
                    });
                    self.start_response(sink, text, None, None).await
                }
            }
            "response.cancel" => {
                if self.response.is_some() {
                    self.cancel_response(sink, "client_cancelled").await
                } else {
                    self.error(sink, "invalid_request_error", Some("response_cancel_not_active"), "Cancellation failed: no active response found", None, event_id.as_deref()).await
                }
            }
            other => {
                let message = format!("Invalid value: '{other}'. Supported values are: 'session.update', 'input_audio_buffer.append', ...");
                self.error(sink, "invalid_request_error", Some("invalid_value"), &message, Some("type"), event_id.as_deref()).await
            }
        };
        self.flow(result)
    }

    fn flow(&self, result: Result<(), String>) -> Flow {
        match result {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::End(e),
        }
    }

    fn validate_session(&self, session: &Value) -> Result<(), (&'static str, String, String)> {
        session_rules::validate(self.protocol, self.azure(), session)?;
        tools::validate(session)
    }

    async fn on_session_update(&mut self, sink: &mut Sink, event: &Value, event_id: Option<&str>) -> Result<(), String> {
        let session = &event["session"];
        let update = event.clone();
        self.record(|r| r.session_updates.push(update));
        if let Err((code, message, param)) = self.validate_session(session) {
            return self.error(sink, "invalid_request_error", Some(code), &message, Some(&param), event_id).await;
        }
        if let Some(i) = session["instructions"].as_str() {
            self.config.instructions = i.to_owned();
        }
        let (voice, transcription, turn_detection) = match self.protocol {
            FakeProtocol::Beta => (session.get("voice"), session.get("input_audio_transcription"), session.get("turn_detection")),
            FakeProtocol::Ga => (session.pointer("/audio/output/voice"), session.pointer("/audio/input/transcription"), session.pointer("/audio/input/turn_detection")),
        };
        if let Some(v) = voice.and_then(Value::as_str) {
            if v != self.config.voice && self.item_audio_ms.values().any(|ms| *ms > 0) {
                return self.error(sink, "invalid_request_error", Some("cannot_update_voice"), "Cannot update a conversation's voice if assistant audio is present.", Some("session.voice"), event_id).await;
            }
            self.config.voice = v.to_owned();
        }
        if let Some(t) = transcription {
            self.config.transcription = t["model"].as_str().map(str::to_owned);
        }
        if let Some(td) = turn_detection {
            self.config.vad = if td.is_null() {
                None
            } else {
                let d = Vad::default();
                Some(Vad {
                    threshold: td["threshold"].as_f64().unwrap_or(d.threshold),
                    prefix_padding_ms: td["prefix_padding_ms"].as_u64().unwrap_or(d.prefix_padding_ms),
                    silence_duration_ms: td["silence_duration_ms"].as_u64().unwrap_or(d.silence_duration_ms),
                    create_response: td["create_response"].as_bool().unwrap_or(true),
                    interrupt_response: td["interrupt_response"].as_bool().unwrap_or(true),
                })
            };
        }
        let full = self.session_json(self.expires_at());
        self.send(sink, json!({ "type": "session.updated", "session": full })).await
    }

    async fn on_item_create(&mut self, sink: &mut Sink, event: &Value, event_id: Option<&str>) -> Result<(), String> {
        let item = &event["item"];
        let previous = event["previous_item_id"].as_str();
        if let Some(p) = previous {
            if p != "root" && !self.items.iter().any(|i| i == p) {
                return self.error(sink, "invalid_request_error", Some("invalid_value"), &format!("Previous item with id '{p}' not found"), Some("previous_item_id"), event_id).await;
            }
        }
        match self.check_tool_item(item) {
            Some(Err((code, message, param))) => return self.error(sink, "invalid_request_error", Some(code), &message, Some(&param), event_id).await,
            Some(Ok(())) => {
                if item["type"] == "function_call" {
                    self.calls.push(item["call_id"].as_str().unwrap_or_default().to_owned());
                }
                return self.create_item(sink, event, item, previous).await;
            }
            None => {}
        }
        let role = item["role"].as_str().unwrap_or_default();
        let allowed: &[&str] = match (role, self.protocol) {
            ("user", _) | ("system", _) => &["input_text", "input_audio"],
            ("assistant", FakeProtocol::Beta) => &["text", "audio"],
            ("assistant", FakeProtocol::Ga) => &["output_text", "output_audio"],
            _ => return self.error(sink, "invalid_request_error", Some("invalid_value"), &format!("Invalid value: '{role}'. Supported values are: 'user', 'assistant', and 'system'."), Some("item.role"), event_id).await,
        };
        if let Some(content) = item["content"].as_array() {
            for (i, part) in content.iter().enumerate() {
                let t = part["type"].as_str().unwrap_or_default();
                if !allowed.contains(&t) {
                    let message = format!("Invalid value: '{t}'. Supported values are: {}.", allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" and "));
                    return self.error(sink, "invalid_request_error", Some("invalid_value"), &message, Some(&format!("item.content[{i}].type")), event_id).await;
                }
            }
        }
        self.create_item(sink, event, item, previous).await
    }

    /// Creates a checked item: its id (ours or the client's), the created/added events.
    async fn create_item(&mut self, sink: &mut Sink, event: &Value, item: &Value, previous: Option<&str>) -> Result<(), String> {
        let event_id = event["event_id"].as_str();
        let id = match item["id"].as_str() {
            Some(id) if id.len() > 32 => {
                return self.error(sink, "invalid_request_error", Some("string_above_max_length"), "Invalid 'item.id': string too long. Expected a string with maximum length 32.", Some("item.id"), event_id).await;
            }
            Some(id) if self.items.iter().any(|i| i == id) => {
                return self.error(sink, "invalid_request_error", Some("item_id_already_exists"), &format!("Item with id '{id}' already exists"), Some("item.id"), event_id).await;
            }
            Some(id) => id.to_owned(),
            None => self.next_id("item"),
        };
        let e = event.clone();
        self.record(|r| r.items.push(e));
        self.items.push(id.clone());
        let mut created = item.clone();
        created["id"] = json!(id);
        created["object"] = json!("realtime.item");
        created["status"] = json!("completed");
        let previous = previous.map(str::to_owned).or_else(|| self.last_item.clone());
        self.last_item = Some(id);
        let name = self.name("conversation.item.created", "conversation.item.added");
        self.send(sink, json!({ "type": name, "previous_item_id": previous, "item": created })).await?;
        if self.protocol == FakeProtocol::Ga {
            self.send(sink, json!({ "type": "conversation.item.done", "previous_item_id": previous, "item": created })).await?;
        }
        Ok(())
    }

    async fn on_truncate(&mut self, sink: &mut Sink, event: &Value, event_id: Option<&str>) -> Result<(), String> {
        let item_id = event["item_id"].as_str().unwrap_or_default().to_owned();
        let end = event["audio_end_ms"].as_u64().unwrap_or(0);
        let e = event.clone();
        self.record(|r| r.truncates.push(e));
        match self.item_audio_ms.get(&item_id).copied() {
            None => self.error(sink, "invalid_request_error", Some("invalid_value"), &format!("Item with item_id '{item_id}' not found or has no audio"), Some("item_id"), event_id).await,
            Some(sent) if end > sent => {
                let message = format!("Audio content of {sent}ms is already shorter than {end}ms");
                self.error(sink, "invalid_request_error", Some("invalid_value"), &message, Some("audio_end_ms"), event_id).await
            }
            Some(_) => {
                self.item_audio_ms.insert(item_id.clone(), end);
                self.send(sink, json!({ "type": "conversation.item.truncated", "item_id": item_id, "content_index": event["content_index"], "audio_end_ms": end })).await
            }
        }
    }

    async fn on_append(&mut self, sink: &mut Sink, event: &Value) -> Result<(), String> {
        let Some(b64) = event["audio"].as_str() else {
            return self.error(sink, "invalid_request_error", Some("missing_required_parameter"), "Missing required parameter: 'audio'.", Some("audio"), None).await;
        };
        let bytes = match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(b) if b.len() % 2 == 0 => b,
            _ => return self.error(sink, "invalid_request_error", Some("invalid_value"), "Invalid 'audio'. Expected base64-encoded PCM16 audio.", Some("audio"), None).await,
        };
        let samples = (bytes.len() / 2) as u64;
        self.record(|r| {
            r.appended_samples += samples;
            r.appends += 1;
        });
        self.buffered_samples += samples;
        let Some(vad) = self.config.vad.clone() else {
            self.received_samples += samples;
            return Ok(());
        };
        self.carry.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
        let threshold = vad.rms_threshold();
        let mut offset = 0;
        while self.carry.len() - offset >= FRAME {
            let frame = &self.carry[offset..offset + FRAME];
            offset += FRAME;
            self.received_samples += FRAME as u64;
            let energy = frame.iter().map(|s| (*s as f64) * (*s as f64)).sum::<f64>() / FRAME as f64;
            let loud = energy.sqrt() > threshold;
            let now_ms = self.received_samples * 1000 / RATE;
            if loud {
                self.silence_ms = 0;
                if !self.in_speech {
                    self.speech_run += 1;
                    if self.speech_run >= 2 {
                        self.in_speech = true;
                        let start = now_ms.saturating_sub(20 + vad.prefix_padding_ms);
                        self.speech_started(sink, start, &vad).await?;
                    }
                }
            } else {
                self.speech_run = 0;
                if self.in_speech {
                    self.silence_ms += 10;
                    if self.silence_ms >= vad.silence_duration_ms {
                        self.in_speech = false;
                        let end = now_ms.saturating_sub(self.silence_ms) + 10;
                        self.silence_ms = 0;
                        let item_id = self.user_item.clone().unwrap_or_default();
                        self.send(sink, json!({ "type": "input_audio_buffer.speech_stopped", "audio_end_ms": end, "item_id": item_id })).await?;
                        self.commit_user_turn(sink, Some(vad.create_response)).await?;
                    }
                }
            }
        }
        self.carry.drain(..offset);
        Ok(())
    }

    async fn speech_started(&mut self, sink: &mut Sink, start_ms: u64, vad: &Vad) -> Result<(), String> {
        let item_id = self.next_id("item");
        self.user_item = Some(item_id.clone());
        self.send(sink, json!({ "type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms, "item_id": item_id })).await?;
        if self.response.is_some() && vad.interrupt_response {
            self.cancel_response(sink, "turn_detected").await?;
        }
        Ok(())
    }

    /// The caller's turn becomes a user item; its transcript comes from the script.
    async fn commit_user_turn(&mut self, sink: &mut Sink, create_response: Option<bool>) -> Result<(), String> {
        let item_id = self.user_item.take().unwrap_or_else(|| self.next_id("item"));
        self.buffered_samples = 0;
        let turn = {
            let mut script = self.shared.script.lock().unwrap();
            let turn = self.options().turns.get(script.next_turn).cloned();
            script.next_turn += 1;
            script.greeted = true;
            turn.unwrap_or_else(|| ScriptTurn::new("", self.options().fallback_answer.clone()))
        };
        if turn.transcript == TranscriptTiming::BeforeItem {
            self.deliver_transcript(sink, &item_id, &turn).await?;
        }
        let previous = self.last_item.clone();
        self.send(sink, json!({ "type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id })).await?;
        let item = json!({ "id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user", "content": [{ "type": "input_audio", "transcript": null }] });
        let name = self.name("conversation.item.created", "conversation.item.added");
        self.send(sink, json!({ "type": name, "previous_item_id": previous, "item": item })).await?;
        if self.protocol == FakeProtocol::Ga {
            // GA finishes every item, the caller's too: a second event naming the same turn.
            self.send(sink, json!({ "type": "conversation.item.done", "previous_item_id": previous, "item": item })).await?;
        }
        self.items.push(item_id.clone());
        self.last_item = Some(item_id.clone());
        self.spoke_user(&item_id);
        self.record(|r| r.user_turns += 1);
        let responding = create_response.unwrap_or(false) && self.response.is_none();
        let delivered = turn.transcript == TranscriptTiming::BeforeItem;
        if !delivered && (turn.transcript != TranscriptTiming::AfterResponseStarted || !responding) {
            self.deliver_transcript(sink, &item_id, &turn).await?;
        }
        if responding {
            let late = (turn.transcript == TranscriptTiming::AfterResponseStarted).then(|| (item_id, turn.clone()));
            if turn.call_only {
                if let Some((item, turn)) = late {
                    self.deliver_transcript(sink, &item, &turn).await?;
                }
                let call = turn.call.clone().expect("calls_silently sets the call");
                self.call_only_response(sink, &call).await?;
            } else {
                self.start_response(sink, turn.agent.clone(), late, turn.call.clone()).await?;
            }
        }
        Ok(())
    }

    async fn deliver_transcript(&mut self, sink: &mut Sink, item_id: &str, turn: &ScriptTurn) -> Result<(), String> {
        if self.config.transcription.is_none() {
            return Ok(()); // no transcription configured: the real service sends nothing
        }
        if self.options().unknown_noise {
            self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.segment", "item_id": item_id, "content_index": 0, "text": turn.user, "id": "seg_1", "speaker": "A", "start": 0.0, "end": 1.0 })).await?;
        }
        if turn.transcript == TranscriptTiming::Failed {
            let error = json!({ "type": "transcription_error", "code": "audio_unintelligible", "message": "Audio could not be transcribed", "param": null });
            self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.failed", "item_id": item_id, "content_index": 0, "error": error })).await?;
            self.told_transcript(item_id, None);
            return Ok(());
        }
        if turn.transcript == TranscriptTiming::BeforeItem {
            // Streamed word by word first, as the GA transcription models do.
            for word in turn.user.split_inclusive(' ') {
                self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.delta", "item_id": item_id, "content_index": 0, "delta": word })).await?;
            }
        }
        self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.completed", "item_id": item_id, "content_index": 0, "transcript": turn.user, "usage": { "type": "duration", "seconds": 2 } })).await?;
        self.told_transcript(item_id, Some(&turn.user));
        Ok(())
    }

    fn voice_for(&self, text: &str) -> Arc<[i16]> {
        match &self.options().voice {
            AgentVoice::Pcm(pcm) => pcm.clone(),
            AgentVoice::Tone { ms_per_char } => {
                let samples = (text.chars().count() as u64 * *ms_per_char as u64 * RATE / 1000).max(RATE / 10) as usize;
                (0..samples).map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / RATE as f64).sin() * 6000.0) as i16).collect()
            }
        }
    }

    async fn start_response(&mut self, sink: &mut Sink, text: String, late_transcript: Option<(String, ScriptTurn)>, call: Option<ScriptedCall>) -> Result<(), String> {
        let response_id = self.next_id("resp");
        let item_id = self.next_id("item");
        self.send(sink, json!({ "type": "response.created", "response": { "id": response_id, "object": "realtime.response", "status": "in_progress", "status_details": null, "output": [], "usage": null } })).await?;
        if let Some(code) = self.fail_next.take() {
            self.shared.applied(format!("FailNextResponse {code}"));
            // As the service ends a rate-limited response: no output, the reason in status_details.
            if let Some((item, turn)) = late_transcript {
                self.deliver_transcript(sink, &item, &turn).await?;
            }
            let details = json!({ "type": "failed", "error": { "type": "invalid_request_error", "code": code, "message": "injected by the test" } });
            {
                let mut connections = self.shared.connections.lock().unwrap();
                let record = ResponseRecord { response_id: response_id.clone(), item_id, text: text.clone(), status: "failed".into(), ..Default::default() };
                connections[self.index].responses.push(record);
                self.spoke_agent(connections[self.index].responses.len() - 1);
            }
            self.pending_answer = Some(text);
            return self.send(sink, json!({ "type": "response.done", "response": { "id": response_id, "object": "realtime.response", "status": "failed", "status_details": details, "output": [], "usage": null } })).await;
        }
        self.send(sink, json!({ "type": "rate_limits.updated", "rate_limits": [
            { "name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06 },
            { "name": "tokens", "limit": 20000, "remaining": 19000, "reset_seconds": 3.2 },
        ] })).await?;
        let item = json!({ "id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant", "content": [] });
        self.send(sink, json!({ "type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item })).await?;
        let previous = self.last_item.clone();
        let name = self.name("conversation.item.created", "conversation.item.added");
        self.send(sink, json!({ "type": name, "previous_item_id": previous, "item": item })).await?;
        self.send(sink, json!({ "type": "response.content_part.added", "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0, "part": { "type": "audio", "transcript": "" } })).await?;
        self.items.push(item_id.clone());
        self.last_item = Some(item_id.clone());
        self.item_audio_ms.insert(item_id.clone(), 0);
        let record_index = {
            let mut connections = self.shared.connections.lock().unwrap();
            let responses = &mut connections[self.index].responses;
            responses.push(ResponseRecord { response_id: response_id.clone(), item_id: item_id.clone(), text: text.clone(), status: "in_progress".into(), ..Default::default() });
            responses.len() - 1
        };
        self.spoke_agent(record_index);
        let pcm = self.voice_for(&text);
        let words = text.split_inclusive(' ').map(str::to_owned).collect();
        self.response = Some(Response { id: response_id, item_id, text, words, pcm, sent_samples: 0, words_sent: 0, deltas_sent: 0, started: Instant::now(), late_transcript, record_index, call });
        Ok(())
    }

    fn next_delta_due(&self) -> Option<tokio::time::Instant> {
        let r = self.response.as_ref()?;
        let at = match self.options().speed {
            Some(speed) if speed > 0.0 => r.started + Duration::from_secs_f64(r.sent_samples as f64 / RATE as f64 / speed),
            _ => r.started,
        };
        Some(tokio::time::Instant::from_std(at))
    }

    async fn send_next_delta(&mut self, sink: &mut Sink) -> Flow {
        let result = self.next_delta(sink).await;
        match result {
            Ok(flow) => flow,
            Err(e) => Flow::End(e),
        }
    }

    async fn next_delta(&mut self, sink: &mut Sink) -> Result<Flow, String> {
        let delta_samples = (self.options().delta_ms as u64 * RATE / 1000).max(1) as usize;
        let protocol = self.protocol;
        let noise = self.options().unknown_noise;
        let stamp = self.options().stamp_deltas;
        let Some(r) = self.response.as_mut() else { return Ok(Flow::Continue) };
        if r.sent_samples < r.pcm.len() {
            let end = (r.sent_samples + delta_samples).min(r.pcm.len());
            let mut bytes = Vec::with_capacity((end - r.sent_samples) * 2);
            for s in &r.pcm[r.sent_samples..end] {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            if stamp && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&send_stamp().to_le_bytes());
            }
            r.sent_samples = end;
            r.deltas_sent += 1;
            let words_due = (r.words.len() * r.sent_samples).div_ceil(r.pcm.len());
            let words: String = r.words[r.words_sent..words_due].concat();
            r.words_sent = words_due;
            let (id, item_id, deltas, sent_ms, record_index) = (r.id.clone(), r.item_id.clone(), r.deltas_sent, r.sent_samples as u64 * 1000 / RATE, r.record_index);
            let late = if deltas == 1 { r.late_transcript.take() } else { None };
            let audio_name = if protocol == FakeProtocol::Beta { "response.audio.delta" } else { "response.output_audio.delta" };
            let mut delta = json!({ "type": audio_name, "response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": base64::engine::general_purpose::STANDARD.encode(&bytes) });
            if noise {
                delta["obfuscation"] = json!("x9Qw");
            }
            self.send(sink, delta).await?;
            if let Some(log) = self.shared.delta_log.lock().unwrap().as_mut() {
                log.push(Instant::now());
            }
            self.item_audio_ms.insert(item_id.clone(), sent_ms);
            self.record(|rec| rec.responses[record_index].audio_ms_sent = sent_ms);
            if !words.is_empty() {
                let name = if protocol == FakeProtocol::Beta { "response.audio_transcript.delta" } else { "response.output_audio_transcript.delta" };
                self.send(sink, json!({ "type": name, "response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": words })).await?;
                self.record(|rec| rec.responses[record_index].transcript_sent.push_str(&words));
            }
            if let Some((user_item, turn)) = late {
                self.deliver_transcript(sink, &user_item, &turn).await?;
            }
            if self.drop_after.is_some_and(|n| deltas >= n) {
                self.drop_after = None;
                self.shared.applied(format!("DropMidResponse after {deltas} deltas"));
                return Ok(Flow::End("dropped mid-response (injected)".into()));
            }
            return Ok(Flow::Continue);
        }
        self.finish_response(sink, "completed", None).await?;
        Ok(Flow::Continue)
    }

    async fn cancel_response(&mut self, sink: &mut Sink, reason: &str) -> Result<(), String> {
        self.finish_response(sink, "cancelled", Some(reason)).await
    }

    async fn finish_response(&mut self, sink: &mut Sink, status: &str, reason: Option<&str>) -> Result<(), String> {
        let Some(mut r) = self.response.take() else { return Ok(()) };
        let completed = status == "completed";
        let item_status = if completed { "completed" } else { "incomplete" };
        let sent_text: String = r.words[..r.words_sent].concat();
        if completed {
            let rest: String = r.words[r.words_sent..].concat();
            r.words_sent = r.words.len();
            if !rest.is_empty() {
                let name = self.name("response.audio_transcript.delta", "response.output_audio_transcript.delta");
                self.send(sink, json!({ "type": name, "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0, "delta": rest })).await?;
            }
        }
        let transcript = if completed { r.text.clone() } else { sent_text };
        if let Some((user_item, turn)) = r.late_transcript.take() {
            self.deliver_transcript(sink, &user_item, &turn).await?;
        }
        let (tdone, adone) = match self.protocol {
            FakeProtocol::Beta => ("response.audio_transcript.done", "response.audio.done"),
            FakeProtocol::Ga => ("response.output_audio_transcript.done", "response.output_audio.done"),
        };
        self.send(sink, json!({ "type": tdone, "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0, "transcript": transcript })).await?;
        let told = transcript.clone();
        self.record(|rec| rec.responses[r.record_index].transcript_sent = told);
        self.send(sink, json!({ "type": adone, "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0 })).await?;
        self.send(sink, json!({ "type": "response.content_part.done", "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0, "part": { "type": "audio", "transcript": transcript } })).await?;
        let content_type = self.name("audio", "output_audio");
        let item = json!({ "id": r.item_id, "object": "realtime.item", "type": "message", "status": item_status, "role": "assistant", "content": [{ "type": content_type, "transcript": transcript }] });
        self.send(sink, json!({ "type": "response.output_item.done", "response_id": r.id, "output_index": 0, "item": item })).await?;
        if self.protocol == FakeProtocol::Ga {
            self.send(sink, json!({ "type": "conversation.item.done", "item": item })).await?;
        }
        let details = match (reason, self.options().status_details_as_string) {
            (None, _) => Value::Null,
            (Some(reason), true) => json!(reason),
            (Some(reason), false) => json!({ "type": status, "reason": reason }),
        };
        let mut output = vec![item];
        if let (true, Some(call)) = (completed, r.call.take()) {
            output.push(self.function_call(sink, &r.id, 1, &call).await?);
        }
        let words = r.words.len() as u64;
        // As the services count: totals = text + audio; GA also itemises image tokens and the
        // cached part (nothing is cached: prompts under 1024 tokens never are).
        let mut input_details = json!({ "text_tokens": 100, "audio_tokens": 20, "cached_tokens": 0 });
        if self.protocol == FakeProtocol::Ga {
            input_details["image_tokens"] = json!(0);
            input_details["cached_tokens_details"] = json!({ "text_tokens": 0, "audio_tokens": 0, "image_tokens": 0 });
        }
        let usage = json!({ "total_tokens": 120 + words * 3, "input_tokens": 120, "output_tokens": words * 3, "input_token_details": input_details, "output_token_details": { "text_tokens": words, "audio_tokens": words * 2 } });
        self.send(sink, json!({ "type": "response.done", "response": { "id": r.id, "object": "realtime.response", "status": status, "status_details": details, "output": output, "usage": usage } })).await?;
        let status = status.to_owned();
        self.record(|rec| rec.responses[r.record_index].status = status);
        Ok(())
    }
}

/// Nanoseconds since the Unix epoch (shared by processes on one machine).
pub fn send_stamp() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Reads the stamp `stamp_deltas` put into a delta's first samples.
pub fn read_stamp(pcm: &[i16]) -> Option<u64> {
    let mut bytes = [0u8; 8];
    for (i, s) in pcm.get(..4)?.iter().enumerate() {
        bytes[i * 2..i * 2 + 2].copy_from_slice(&s.to_le_bytes());
    }
    Some(u64::from_le_bytes(bytes))
}

/// Caller audio for tests: `speech_ms` of a loud 220 Hz tone then `silence_ms` of silence,
/// PCM16 mono 24 kHz.
pub fn caller_turn(speech_ms: u32, silence_ms: u32) -> Vec<i16> {
    let speech = speech_ms as usize * 24;
    let silence = silence_ms as usize * 24;
    (0..speech)
        .map(|i| ((i as f64 * 220.0 * std::f64::consts::TAU / RATE as f64).sin() * 9000.0) as i16)
        .chain(std::iter::repeat_n(0, silence))
        .collect()
}
