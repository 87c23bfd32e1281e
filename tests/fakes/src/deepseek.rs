//! A fake DeepSeek chat-completions server: real HTTP on 127.0.0.1:0.
//!
//! It is as strict as the real API about what it accepts (Bearer key, path, body shape, JSON
//! mode needing the word "json" in the prompt, parameter ranges) and serves, on demand, the
//! failures the real service produces: error statuses with OpenAI-shaped bodies, empty or
//! all-space content, invalid JSON, `insufficient_system_resource`, and slow answers preceded
//! by blank lines. Tests script behaviours with [`FakeDeepSeek::push`]; once the script is used
//! up every valid request gets [`Behaviour::Answer`], computed from the dialogue by the answer
//! rule ([`FakeDeepSeek::set_answer_rule`]). The rule sees each dialogue line with the number
//! the prompt gave it ([`Prompt::messages`]), so it can cite evidence as the real model does,
//! good or bad ([`with_evidence`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The key the fake accepts unless started with another one.
pub const TEST_API_KEY: &str = "sk-fake-deepseek-7f3a9c1e5b2d4f60";

/// The largest max_tokens the real API accepts for deepseek-chat.
const MAX_TOKENS_LIMIT: i64 = 8192;
const KNOWN_MODELS: &[&str] = &["deepseek-chat", "deepseek-reasoner", "deepseek-v4-flash", "deepseek-v4-pro"];

/// What the fake does with the next valid request.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// 200 with the answer rule's JSON as content, finish_reason "stop".
    Answer,
    /// 200 with exactly this content and finish_reason.
    Content { content: String, finish_reason: String },
    /// This status with the body the real API sends for it (400, 401, 402, 422, 429, 500, 503).
    Status(u16),
    /// 429 with a `Retry-After` of this many seconds, as rate limiters send it.
    RateLimited { retry_after_secs: u64 },
    /// 200 headers at once, then a blank line every `interval` for `hold`, then the answer
    /// (as the real service does while it is busy).
    Slow { hold: Duration, interval: Duration },
    /// 200 headers, one blank line, then the connection breaks mid-body.
    Disconnect,
}

impl Behaviour {
    pub fn empty_content() -> Self {
        Self::content("", "stop")
    }

    pub fn spaces_content() -> Self {
        Self::content("   \n\n   ", "stop")
    }

    pub fn invalid_json() -> Self {
        Self::content("{\"name\": \"Анна\", \"goals\": [", "stop")
    }

    pub fn insufficient_system_resource() -> Self {
        Self::content("", "insufficient_system_resource")
    }

    /// 200 with this JSON value as content.
    pub fn json_content(value: Value) -> Self {
        Self::content(&value.to_string(), "stop")
    }

    pub fn content(content: &str, finish_reason: &str) -> Self {
        Self::Content { content: content.to_owned(), finish_reason: finish_reason.to_owned() }
    }

    pub fn slow(hold: Duration) -> Self {
        Self::Slow { hold, interval: Duration::from_millis(50) }
    }
}

/// One dialogue line of the prompt: `[seq] Клиент: text` (the number is absent from prompts
/// that do not number their lines).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptMessage {
    pub seq: Option<u32>,
    /// A "Клиент" line (else "Консультант").
    pub client: bool,
    pub text: String,
}

/// The parts of a request's prompt the answer rule works from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    /// Concatenated system messages.
    pub system: String,
    /// Concatenated user messages.
    pub user: String,
    /// Text of the "Клиент: ..." lines, in order.
    pub client_lines: Vec<String>,
    /// Text of the "Консультант: ..." lines, in order.
    pub consultant_lines: Vec<String>,
    /// Every dialogue line, in order, with its number.
    pub messages: Vec<PromptMessage>,
}

impl Prompt {
    /// The number of the first client line containing `needle`.
    pub fn client_seq(&self, needle: &str) -> Option<u32> {
        self.messages.iter().find(|m| m.client && m.text.contains(needle)).and_then(|m| m.seq)
    }

    /// The highest line number of the prompt.
    pub fn last_seq(&self) -> Option<u32> {
        self.messages.iter().filter_map(|m| m.seq).max()
    }
}

/// An answer in the shape the extractor asks for: `{"anketa": ..., "evidence": ...}`.
pub fn with_evidence(anketa: Value, evidence: Value) -> Value {
    json!({"anketa": anketa, "evidence": evidence})
}

pub type AnswerRule = Arc<dyn Fn(&Prompt) -> Value + Send + Sync>;

/// One request the fake received (valid or not).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    pub path: String,
    /// Whether it carried the right Bearer key.
    pub authorized: bool,
    /// The JSON body, or None if the body was not JSON.
    pub body: Option<Value>,
    /// What the fake answered with.
    pub status: u16,
}

struct Shared {
    api_key: String,
    script: Mutex<VecDeque<Behaviour>>,
    requests: Mutex<Vec<RecordedRequest>>,
    rule: Mutex<AnswerRule>,
    /// Streamed answers the client stopped reading before the end.
    abandoned: AtomicUsize,
}

pub struct FakeDeepSeek {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for FakeDeepSeek {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeDeepSeek {
    /// Starts a fake that accepts [`TEST_API_KEY`].
    pub async fn start() -> Self {
        Self::start_with_key(TEST_API_KEY).await
    }

    pub async fn start_with_key(api_key: &str) -> Self {
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            rule: Mutex::new(Arc::new(|_: &Prompt| json!({}))),
            abandoned: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/chat/completions", post(chat_completions))
            .route("/v1/chat/completions", post(chat_completions))
            .fallback(unknown_path)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, server }
    }

    /// `http://127.0.0.1:PORT`, what DEEPSEEK_BASE_URL would be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a behaviour for the next valid request.
    pub fn push(&self, behaviour: Behaviour) {
        self.shared.script.lock().unwrap().push_back(behaviour);
    }

    pub fn push_all(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.shared.script.lock().unwrap().extend(behaviours);
    }

    /// Scripted behaviours not used yet.
    pub fn pending(&self) -> usize {
        self.shared.script.lock().unwrap().len()
    }

    /// How [`Behaviour::Answer`] computes the anketa from the prompt (default: `{}`).
    pub fn set_answer_rule(&self, rule: impl Fn(&Prompt) -> Value + Send + Sync + 'static) {
        *self.shared.rule.lock().unwrap() = Arc::new(rule);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Slow answers whose connection the client closed before the body ended.
    pub fn abandoned_responses(&self) -> usize {
        self.shared.abandoned.load(Ordering::SeqCst)
    }
}

fn error_body(message: &str, kind: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": "invalid_request_error"}})
}

fn error_response(status: u16, message: &str, kind: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    (status, axum::Json(error_body(message, kind))).into_response()
}

/// The body the real API sends with each status.
fn status_response(status: u16, api_key_hint: &str) -> Response {
    match status {
        400 => error_response(400, "Invalid request: the request body is malformed", "invalid_request_error"),
        401 => error_response(
            401,
            &format!("Authentication Fails, Your api key: ****{api_key_hint} is invalid"),
            "authentication_error",
        ),
        402 => error_response(402, "Insufficient Balance", "unknown_error"),
        422 => error_response(
            422,
            "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]",
            "invalid_request_error",
        ),
        429 => error_response(429, "Rate Limit Reached", "rate_limit_reached_error"),
        500 => error_response(500, "Internal Server Error", "internal_error"),
        503 => error_response(503, "Server is busy, please try again later", "service_unavailable_error"),
        other => error_response(other, "Unexpected status from the fake", "unknown_error"),
    }
}

fn last4(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

async fn unknown_path(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let response = error_response(404, &format!("Not Found: {path}"), "invalid_request_error");
    record(&shared, &path, false, serde_json::from_slice(&body).ok(), 404);
    response
}

fn record(shared: &Shared, path: &str, authorized: bool, body: Option<Value>, status: u16) {
    shared.requests.lock().unwrap().push(RecordedRequest { path: path.to_owned(), authorized, body, status });
}

/// Checks the request as strictly as the real API; Err is the status and message to refuse with.
fn check_request(body: &Value) -> Result<(), (u16, String)> {
    let reject = |status: u16, message: String| Err((status, message));
    let Some(object) = body.as_object() else {
        return reject(422, "Failed to deserialize the JSON body into the target type: expected a JSON object".into());
    };
    let Some(model) = object.get("model").and_then(Value::as_str) else {
        return reject(422, "Failed to deserialize the JSON body into the target type: missing field `model`".into());
    };
    if !KNOWN_MODELS.contains(&model) {
        return reject(400, "Model Not Exist".into());
    }
    let Some(messages) = object.get("messages").and_then(Value::as_array) else {
        return reject(422, "Failed to deserialize the JSON body into the target type: missing field `messages`".into());
    };
    if messages.is_empty() {
        return reject(400, "Empty input messages".into());
    }
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if !matches!(role, Some("system" | "user" | "assistant" | "tool")) {
            return reject(
                422,
                format!("Failed to deserialize the JSON body into the target type: messages[{i}]: unknown variant role {role:?}"),
            );
        }
        if !message.get("content").is_some_and(Value::is_string) {
            return reject(
                422,
                format!("Failed to deserialize the JSON body into the target type: messages[{i}].content must be a string"),
            );
        }
    }
    if let Some(max_tokens) = object.get("max_tokens") {
        if !max_tokens.as_i64().is_some_and(|n| (1..=MAX_TOKENS_LIMIT).contains(&n)) {
            return reject(422, format!("Invalid max_tokens value, the valid range of max_tokens is [1, {MAX_TOKENS_LIMIT}]"));
        }
    }
    if let Some(temperature) = object.get("temperature") {
        if !temperature.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
            return reject(422, "Invalid temperature value, the valid range of temperature is [0, 2]".into());
        }
    }
    if object.get("stream").and_then(Value::as_bool) == Some(true) {
        return reject(400, "fake DeepSeek: streaming is not served; send stream false".into());
    }
    match object.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str) {
        Some("json_object") => {}
        Some("text") | None => {
            return reject(400, "fake DeepSeek: only JSON mode is served; send response_format {\"type\": \"json_object\"}".into())
        }
        Some(other) => {
            return reject(
                422,
                format!("Failed to deserialize the JSON body into the target type: response_format.type: unknown variant `{other}`"),
            )
        }
    }
    let mentions_json = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .any(|c| c.to_lowercase().contains("json"));
    if !mentions_json {
        return reject(
            400,
            "Prompt must contain the word 'json' in some form to use 'response_format' of type 'json_object'.".into(),
        );
    }
    Ok(())
}

fn prompt_of(body: &Value) -> Prompt {
    let mut prompt = Prompt::default();
    for message in body["messages"].as_array().into_iter().flatten() {
        let content = message["content"].as_str().unwrap_or_default();
        match message["role"].as_str() {
            Some("system") => prompt.system.push_str(content),
            Some("user") => {
                prompt.user.push_str(content);
                for line in content.lines() {
                    let Some(message) = dialogue_line(line) else { continue };
                    if message.client {
                        prompt.client_lines.push(message.text.clone());
                    } else {
                        prompt.consultant_lines.push(message.text.clone());
                    }
                    prompt.messages.push(message);
                }
            }
            _ => {}
        }
    }
    prompt
}

/// `[7] Клиент: text`, `Консультант: text`, ...
fn dialogue_line(line: &str) -> Option<PromptMessage> {
    let (seq, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((n, rest)) => (Some(n.parse().ok()?), rest),
        None => (None, line),
    };
    let (client, text) = if let Some(text) = rest.strip_prefix("Клиент:") {
        (true, text)
    } else {
        (false, rest.strip_prefix("Консультант:")?)
    };
    Some(PromptMessage { seq, client, text: text.trim().to_owned() })
}

fn completion(model: &str, content: &str, finish_reason: &str) -> Value {
    json!({
        "id": "fake-chatcmpl-1",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        "system_fingerprint": "fp_fake",
    })
}

async fn chat_completions(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let authorized = presented == format!("Bearer {}", shared.api_key);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    if !authorized {
        let hint = last4(presented.strip_prefix("Bearer ").unwrap_or(""));
        record(&shared, &path, false, parsed, 401);
        return status_response(401, &hint);
    }
    let Some(request) = parsed else {
        record(&shared, &path, true, None, 422);
        return error_response(
            422,
            "Failed to deserialize the JSON body into the target type: the body is not JSON",
            "invalid_request_error",
        );
    };
    if let Err((status, message)) = check_request(&request) {
        record(&shared, &path, true, Some(request), status);
        return error_response(status, &message, "invalid_request_error");
    }
    let behaviour = shared.script.lock().unwrap().pop_front().unwrap_or(Behaviour::Answer);
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let answer = || {
        let rule = shared.rule.lock().unwrap().clone();
        rule(&prompt_of(&request)).to_string()
    };
    let (status, response) = match behaviour {
        Behaviour::Answer => (200, axum::Json(completion(&model, &answer(), "stop")).into_response()),
        Behaviour::Content { content, finish_reason } => {
            (200, axum::Json(completion(&model, &content, &finish_reason)).into_response())
        }
        Behaviour::Status(code) => (code, status_response(code, &last4(&shared.api_key))),
        Behaviour::RateLimited { retry_after_secs } => {
            let mut response = status_response(429, &last4(&shared.api_key));
            let value = axum::http::HeaderValue::from_str(&retry_after_secs.to_string()).expect("digits");
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
            (429, response)
        }
        Behaviour::Slow { hold, interval } => {
            let full = completion(&model, &answer(), "stop").to_string();
            (200, slow_response(shared.clone(), hold, interval, full))
        }
        Behaviour::Disconnect => (200, broken_response()),
    };
    record(&shared, &path, true, Some(request), status);
    response
}

/// Counts a streamed answer as abandoned if it is dropped before its last chunk went out.
struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn slow_response(shared: Arc<Shared>, hold: Duration, interval: Duration, full: String) -> Response {
    let until = Instant::now() + hold;
    let guard = StreamGuard { shared, finished: false };
    let stream = futures_util::stream::unfold((guard, Some(full)), move |(mut guard, full)| async move {
        let full = full?;
        if Instant::now() < until {
            tokio::time::sleep(interval.min(until.saturating_duration_since(Instant::now()))).await;
            return Some((Ok::<Bytes, std::io::Error>(Bytes::from_static(b"\n")), (guard, Some(full))));
        }
        guard.finished = true;
        Some((Ok(Bytes::from(full)), (guard, None)))
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

fn broken_response() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"\n")),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fake DeepSeek dropped the connection")),
    ];
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("valid response")
}
