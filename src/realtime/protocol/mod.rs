//! The wire protocol of Azure/OpenAI Realtime, both generations (preview/beta and GA).
//!
//! Server events are parsed in two steps: a cheap envelope read of `type`, then the typed body
//! of that event. Unknown event types and unknown fields are tolerated (the caller counts
//! them); fields are optional wherever a provider has been seen to omit them. Client events
//! are built in [`client`].

use serde::Deserialize;
use serde_json::Value;

use consultant_actors::dialogue::ToolCall;

mod client;

pub use client::*;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SessionInfo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ItemInfo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// Function-call items: which call, of which tool, with what (a JSON text).
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

impl ItemInfo {
    /// A finished function call of the model's, if this item is one.
    pub fn function_call(&self) -> Option<ToolCall> {
        if self.kind.as_deref() != Some("function_call") {
            return None;
        }
        Some(ToolCall { call_id: self.call_id.clone()?, name: self.name.clone()?, arguments: self.arguments.clone().unwrap_or_else(|| "{}".into()) })
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ErrorInfo {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

impl ErrorInfo {
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(kind) = &self.kind {
            s.push_str(kind);
        }
        if let Some(code) = &self.code {
            s.push_str(if s.is_empty() { "" } else { "/" });
            s.push_str(code);
        }
        if let Some(param) = &self.param {
            s.push_str(&format!(" (param {param})"));
        }
        if let Some(message) = &self.message {
            s.push_str(if s.is_empty() { "" } else { ": " });
            s.push_str(message);
        }
        if s.is_empty() {
            s.push_str("unspecified error");
        }
        s
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub input_token_details: TokenDetails,
    #[serde(default)]
    pub output_token_details: TokenDetails,
}

/// `input_token_details` / `output_token_details` (both generations; GA adds image tokens
/// and a per-kind split of the cached ones, which the totals already cover).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TokenDetails {
    #[serde(default)]
    pub audio_tokens: u64,
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn to_token_usage(&self) -> consultant_actors::ports::TokenUsage {
        let (i, o) = (&self.input_token_details, &self.output_token_details);
        consultant_actors::ports::TokenUsage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            input_audio_tokens: i.audio_tokens,
            input_text_tokens: i.text_tokens,
            input_cached_tokens: i.cached_tokens,
            output_audio_tokens: o.audio_tokens,
            output_text_tokens: o.text_tokens,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ResponseInfo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// An object `{type, reason, error}` - or, from some deployments, a plain string.
    #[serde(default)]
    pub status_details: Option<Value>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl ResponseInfo {
    /// Why a response ended other than completed: reason, else error code, else type.
    pub fn reason(&self) -> Option<String> {
        match self.status_details.as_ref()? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Object(map) => {
                let error_code = map.get("error").and_then(|e| e.get("code").or_else(|| e.get("type"))).and_then(Value::as_str);
                map.get("reason")
                    .and_then(Value::as_str)
                    .or(error_code)
                    .or_else(|| map.get("type").and_then(Value::as_str))
                    .map(str::to_owned)
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RateLimit {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub limit: Option<f64>,
    #[serde(default)]
    pub remaining: Option<f64>,
    #[serde(default)]
    pub reset_seconds: Option<f64>,
}

/// Every server event of the protocol, both generations mapped onto one set.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    SessionCreated(SessionInfo),
    SessionUpdated(SessionInfo),
    SpeechStarted { item_id: Option<String>, audio_start_ms: u64 },
    SpeechStopped { item_id: Option<String>, audio_end_ms: u64 },
    Committed { item_id: String, previous_item_id: Option<String> },
    BufferCleared,
    /// conversation.item.created (beta) / .added / .done (GA).
    ItemCreated { previous_item_id: Option<String>, item: ItemInfo },
    ItemTruncated { item_id: String, audio_end_ms: u64 },
    ItemDeleted { item_id: String },
    UserTranscriptDelta { item_id: String, delta: String },
    UserTranscriptCompleted { item_id: String, transcript: String },
    UserTranscriptFailed { item_id: String, error: ErrorInfo },
    ResponseCreated(ResponseInfo),
    OutputItemAdded { response_id: Option<String>, item: ItemInfo },
    OutputItemDone { response_id: Option<String>, item: ItemInfo },
    ContentPartAdded { item_id: Option<String> },
    ContentPartDone { item_id: Option<String> },
    /// Base64 PCM16 (still encoded: decoding is the caller's).
    AudioDelta { item_id: String, delta: String },
    AudioDone { item_id: Option<String> },
    TranscriptDelta { item_id: String, delta: String },
    TranscriptDone { item_id: String, transcript: String },
    TextDelta { item_id: Option<String>, delta: String },
    TextDone { item_id: Option<String>, text: String },
    /// response.function_call_arguments.delta / .done: the call itself is taken from its
    /// finished item (response.output_item.done), which carries the name on every flavour.
    FunctionArguments,
    ResponseDone(ResponseInfo),
    RateLimits(Vec<RateLimit>),
    Error(ErrorInfo),
    /// A well-formed event of a type this client does not know.
    Unknown(String),
}

/// A frame that is not a usable event.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON or no string `type`: {0}")]
    Malformed(serde_json::Error),
    #[error("event {kind} has an unexpected shape: {error}")]
    BadShape { kind: String, error: serde_json::Error },
}

#[derive(Deserialize)]
struct WithSession {
    #[serde(default)]
    session: SessionInfo,
}

#[derive(Deserialize)]
struct Speech {
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    audio_start_ms: u64,
    #[serde(default)]
    audio_end_ms: u64,
}

#[derive(Deserialize)]
struct WithItemId {
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    previous_item_id: Option<String>,
    #[serde(default)]
    audio_end_ms: u64,
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    transcript: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    error: Option<ErrorInfo>,
}

#[derive(Deserialize)]
struct WithItem {
    #[serde(default)]
    previous_item_id: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    item: ItemInfo,
}

#[derive(Deserialize)]
struct WithResponse {
    #[serde(default)]
    response: ResponseInfo,
}

#[derive(Deserialize)]
struct WithRateLimits {
    #[serde(default)]
    rate_limits: Vec<RateLimit>,
}

#[derive(Deserialize)]
struct WithError {
    #[serde(default)]
    error: ErrorInfo,
}

/// Audio deltas are the hot path: borrow the base64 text instead of copying it twice.
#[derive(Deserialize)]
struct AudioDeltaBody<'a> {
    #[serde(default, borrow)]
    item_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    delta: std::borrow::Cow<'a, str>,
}

fn body<'a, T: Deserialize<'a>>(kind: &str, text: &'a str) -> Result<T, ParseError> {
    serde_json::from_str(text).map_err(|error| ParseError::BadShape { kind: kind.to_owned(), error })
}

fn id_or_empty(id: Option<String>) -> String {
    id.unwrap_or_default()
}

/// Parses one server frame. Beta and GA names land on the same variants.
pub fn parse_server_event(text: &str) -> Result<ServerEvent, ParseError> {
    let envelope: Envelope = serde_json::from_str(text).map_err(ParseError::Malformed)?;
    let kind = envelope.kind.as_ref();
    let event = match kind {
        "response.audio.delta" | "response.output_audio.delta" => {
            let b: AudioDeltaBody = body(kind, text)?;
            ServerEvent::AudioDelta { item_id: b.item_id.map(|s| s.into_owned()).unwrap_or_default(), delta: b.delta.into_owned() }
        }
        "response.audio_transcript.delta" | "response.output_audio_transcript.delta" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::TranscriptDelta { item_id: id_or_empty(b.item_id), delta: b.delta.unwrap_or_default() }
        }
        "session.created" => ServerEvent::SessionCreated(body::<WithSession>(kind, text)?.session),
        "session.updated" => ServerEvent::SessionUpdated(body::<WithSession>(kind, text)?.session),
        "input_audio_buffer.speech_started" => {
            let b: Speech = body(kind, text)?;
            ServerEvent::SpeechStarted { item_id: b.item_id, audio_start_ms: b.audio_start_ms }
        }
        "input_audio_buffer.speech_stopped" => {
            let b: Speech = body(kind, text)?;
            ServerEvent::SpeechStopped { item_id: b.item_id, audio_end_ms: b.audio_end_ms }
        }
        "input_audio_buffer.committed" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::Committed { item_id: id_or_empty(b.item_id), previous_item_id: b.previous_item_id }
        }
        "input_audio_buffer.cleared" => ServerEvent::BufferCleared,
        "conversation.item.created" | "conversation.item.added" | "conversation.item.done" => {
            let b: WithItem = body(kind, text)?;
            ServerEvent::ItemCreated { previous_item_id: b.previous_item_id, item: b.item }
        }
        "conversation.item.truncated" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::ItemTruncated { item_id: id_or_empty(b.item_id), audio_end_ms: b.audio_end_ms }
        }
        "conversation.item.deleted" => ServerEvent::ItemDeleted { item_id: id_or_empty(body::<WithItemId>(kind, text)?.item_id) },
        "conversation.item.input_audio_transcription.delta" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::UserTranscriptDelta { item_id: id_or_empty(b.item_id), delta: b.delta.unwrap_or_default() }
        }
        "conversation.item.input_audio_transcription.completed" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::UserTranscriptCompleted { item_id: id_or_empty(b.item_id), transcript: b.transcript.unwrap_or_default() }
        }
        "conversation.item.input_audio_transcription.failed" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::UserTranscriptFailed { item_id: id_or_empty(b.item_id), error: b.error.unwrap_or_default() }
        }
        "response.created" => ServerEvent::ResponseCreated(body::<WithResponse>(kind, text)?.response),
        "response.done" => ServerEvent::ResponseDone(body::<WithResponse>(kind, text)?.response),
        "response.output_item.added" => {
            let b: WithItem = body(kind, text)?;
            ServerEvent::OutputItemAdded { response_id: b.response_id, item: b.item }
        }
        "response.output_item.done" => {
            let b: WithItem = body(kind, text)?;
            ServerEvent::OutputItemDone { response_id: b.response_id, item: b.item }
        }
        "response.content_part.added" => ServerEvent::ContentPartAdded { item_id: body::<WithItemId>(kind, text)?.item_id },
        "response.content_part.done" => ServerEvent::ContentPartDone { item_id: body::<WithItemId>(kind, text)?.item_id },
        "response.audio.done" | "response.output_audio.done" => ServerEvent::AudioDone { item_id: body::<WithItemId>(kind, text)?.item_id },
        "response.audio_transcript.done" | "response.output_audio_transcript.done" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::TranscriptDone { item_id: id_or_empty(b.item_id), transcript: b.transcript.unwrap_or_default() }
        }
        "response.text.delta" | "response.output_text.delta" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::TextDelta { item_id: b.item_id, delta: b.delta.unwrap_or_default() }
        }
        "response.text.done" | "response.output_text.done" => {
            let b: WithItemId = body(kind, text)?;
            ServerEvent::TextDone { item_id: b.item_id, text: b.text.unwrap_or_default() }
        }
        "response.function_call_arguments.delta" | "response.function_call_arguments.done" => ServerEvent::FunctionArguments,
        "rate_limits.updated" => ServerEvent::RateLimits(body::<WithRateLimits>(kind, text)?.rate_limits),
        "error" => ServerEvent::Error(body::<WithError>(kind, text)?.error),
        other => ServerEvent::Unknown(other.to_owned()),
    };
    Ok(event)
}

/// Error codes after which retrying cannot help.
pub const FATAL_ERROR_CODES: [&str; 4] = ["invalid_api_key", "insufficient_quota", "account_deactivated", "billing_hard_limit_reached"];

pub fn is_fatal_code(code: Option<&str>) -> bool {
    code.is_some_and(|c| FATAL_ERROR_CODES.contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::config::{NoiseReduction, RealtimeConfig, TurnDetection};
    use consultant_actors::ports::ToolSpec;
    use serde_json::json;

    #[test]
    fn beta_and_ga_names_map_to_the_same_event() {
        let beta = parse_server_event(r#"{"type":"response.audio.delta","item_id":"i1","delta":"AAA=","response_id":"r"}"#).unwrap();
        let ga = parse_server_event(r#"{"type":"response.output_audio.delta","item_id":"i1","delta":"AAA=","obfuscation":"x"}"#).unwrap();
        assert_eq!(beta, ga);
        assert!(matches!(parse_server_event(r#"{"type":"conversation.item.added","item":{"id":"a","role":"user"}}"#).unwrap(), ServerEvent::ItemCreated { .. }));
    }

    #[test]
    fn status_details_as_string_or_object() {
        let e = parse_server_event(r#"{"type":"response.done","response":{"id":"r","status":"cancelled","status_details":"turn_detected"}}"#).unwrap();
        let ServerEvent::ResponseDone(r) = e else { panic!() };
        assert_eq!(r.reason().as_deref(), Some("turn_detected"));
        let e = parse_server_event(r#"{"type":"response.done","response":{"status":"failed","status_details":{"type":"failed","error":{"code":"inference_rate_limit_exceeded"}}}}"#).unwrap();
        let ServerEvent::ResponseDone(r) = e else { panic!() };
        assert_eq!(r.reason().as_deref(), Some("inference_rate_limit_exceeded"));
    }

    #[test]
    fn usage_splits_audio_text_and_cached_tokens() {
        // GA's shape (image tokens and cached_tokens_details are covered by the totals).
        let e = parse_server_event(r#"{"type":"response.done","response":{"status":"completed","usage":{"total_tokens":300,"input_tokens":200,"output_tokens":100,"input_token_details":{"text_tokens":150,"audio_tokens":40,"image_tokens":10,"cached_tokens":128,"cached_tokens_details":{"text_tokens":128,"audio_tokens":0}},"output_token_details":{"text_tokens":25,"audio_tokens":75}}}}"#).unwrap();
        let ServerEvent::ResponseDone(r) = e else { panic!() };
        let u = r.usage.unwrap().to_token_usage();
        assert_eq!((u.input_tokens, u.input_audio_tokens, u.input_text_tokens, u.input_cached_tokens), (200, 40, 150, 128));
        assert_eq!((u.output_tokens, u.output_audio_tokens, u.output_text_tokens), (100, 75, 25));
        // A deployment that sends only the totals.
        let e = parse_server_event(r#"{"type":"response.done","response":{"usage":{"input_tokens":7,"output_tokens":3}}}"#).unwrap();
        let ServerEvent::ResponseDone(r) = e else { panic!() };
        let u = r.usage.unwrap().to_token_usage();
        assert_eq!((u.input_tokens, u.output_tokens, u.input_audio_tokens, u.output_text_tokens), (7, 3, 0, 0));
    }

    #[test]
    fn unknown_and_malformed() {
        assert_eq!(parse_server_event(r#"{"type":"response.new_thing","x":1}"#).unwrap(), ServerEvent::Unknown("response.new_thing".into()));
        assert!(matches!(parse_server_event("{not json"), Err(ParseError::Malformed(_))));
        assert!(matches!(parse_server_event(r#"{"type":"response.audio.delta"}"#), Err(ParseError::BadShape { .. })));
    }

    #[test]
    fn ga_session_carries_semantic_vad_noise_reduction_and_idle_timeout() {
        use crate::realtime::{Eagerness, RealtimeFlavour};
        let mut c = RealtimeConfig::new(RealtimeFlavour::AzureGa, "https://r.openai.azure.com", crate::secret::Secret::new("k"));
        c.noise_reduction = NoiseReduction::FarField;
        c.idle_timeout_ms = 6000;
        let s = &session_update(&c, "i", &[])["session"];
        assert_eq!(s["audio"]["input"]["noise_reduction"], json!({ "type": "far_field" }));
        assert_eq!(s["audio"]["input"]["turn_detection"]["idle_timeout_ms"], 6000);
        c.idle_timeout_ms = 0;
        c.turn_detection = TurnDetection::SemanticVad;
        c.eagerness = Eagerness::Low;
        let td = &session_update(&c, "i", &[])["session"]["audio"]["input"]["turn_detection"];
        assert_eq!(td, &json!({ "type": "semantic_vad", "eagerness": "low", "create_response": true, "interrupt_response": true }));
        assert!(c.validate().is_ok());
        // The preview protocol: refused before anything is sent.
        c.flavour = RealtimeFlavour::AzurePreview;
        let refused: Vec<&str> = c.unsupported().into_iter().map(|(k, _)| k).collect();
        assert_eq!(refused, ["realtime.turn_detection", "realtime.noise_reduction"]);
        assert!(c.validate().unwrap_err().contains("azure-ga"));
    }

    #[test]
    fn tools_are_declared_and_function_call_items_read_on_both_generations() {
        use crate::realtime::RealtimeFlavour;
        let spec = ToolSpec { name: "end_consultation".into(), description: "d".into(), parameters: json!({ "type": "object", "properties": {} }) };
        for flavour in [RealtimeFlavour::AzurePreview, RealtimeFlavour::AzureGa] {
            let c = RealtimeConfig::new(flavour, "https://r.openai.azure.com", crate::secret::Secret::new("k"));
            let s = &session_update(&c, "i", std::slice::from_ref(&spec))["session"];
            assert_eq!(s["tools"], json!([{ "type": "function", "name": "end_consultation", "description": "d", "parameters": { "type": "object", "properties": {} } }]));
            assert_eq!(s["tool_choice"], "auto");
            assert!(session_update(&c, "i", &[])["session"].get("tools").is_none());
        }
        let done = r#"{"type":"response.output_item.done","response_id":"r","output_index":1,"item":{"id":"it","type":"function_call","status":"completed","call_id":"call_9","name":"end_consultation","arguments":"{\"reason\":\"bye\"}"}}"#;
        let ServerEvent::OutputItemDone { item, .. } = parse_server_event(done).unwrap() else { panic!() };
        assert_eq!(item.function_call(), Some(ToolCall { call_id: "call_9".into(), name: "end_consultation".into(), arguments: r#"{"reason":"bye"}"#.into() }));
        let message = r#"{"type":"response.output_item.done","item":{"id":"m","type":"message","role":"assistant"}}"#;
        let ServerEvent::OutputItemDone { item, .. } = parse_server_event(message).unwrap() else { panic!() };
        assert_eq!(item.function_call(), None);
        let delta = r#"{"type":"response.function_call_arguments.delta","item_id":"it","call_id":"call_9","delta":"{\"re"}"#;
        assert_eq!(parse_server_event(delta).unwrap(), ServerEvent::FunctionArguments);
    }

    #[test]
    fn audio_roundtrip() {
        let pcm: Vec<i16> = (0..480).map(|i| (i * 37 - 9000) as i16).collect();
        let mut out = String::new();
        let mut scratch = Vec::new();
        write_audio_append(&mut out, &pcm, &mut scratch);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["type"], "input_audio_buffer.append");
        assert_eq!(decode_pcm(v["audio"].as_str().unwrap(), &mut scratch).unwrap(), pcm);
    }
}
