//! What a test tells the fake realtime server (flavour, script, voice, faults) and what the
//! fake records of each connection.

use super::*;

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
    /// `speech_started` events sent (the VAD heard the caller begin).
    pub speech_starts: u32,
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
