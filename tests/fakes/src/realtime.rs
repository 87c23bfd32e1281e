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
#[path = "realtime_options.rs"]
mod options;
#[path = "realtime_serve.rs"]
mod serve;
#[path = "realtime_items.rs"]
mod items;
#[path = "realtime_turns.rs"]
mod turns;
#[path = "realtime_answers.rs"]
mod answers;

pub use options::*;
use serve::serve;
pub use spoken::Spoken;
pub use tools::ScriptedCall;

const RATE: u64 = 24_000;
/// VAD frame: 10 ms.
const FRAME: usize = 240;

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
