//! DeepSeek chat-completions adapter: extracts the anketa from a dialogue in JSON mode.
//!
//! Facts it is built on (../shared/notes/realtime.md): errors come with an OpenAI-shaped body;
//! 429/500/503 are transient, 400/401/402/422 are not; JSON mode sometimes answers with empty
//! or all-space content, or with `finish_reason: insufficient_system_resource`; under load the
//! server holds the connection and sends blank lines before the JSON body. So: exponential
//! backoff on the transient cases, one named error for the permanent ones, and one deadline
//! for the whole extraction (blank lines keep an idle timeout alive forever).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use consultant_actors::anketa::ValidationReport;
use consultant_actors::ports::{AnketaExtractor, ExtractError};
use consultant_actors::provenance::{validate_evidence, EvidenceReport};
use consultant_actors::{Anketa, AnketaField, DialogueMessage, Evidence, ExtractedAnketa};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

mod prompt;

use prompt::{kind_name, split_answer, system_prompt, user_prompt};

use crate::config::DeepSeekSection;
use crate::secret::Secret;
use crate::tls::{self, ClientTls};

pub const DEFAULT_BASE_URL: &str = "https://api.deepseek.com";
/// `deepseek-chat` was announced as deprecated on 2026-07-24 in favour of `deepseek-v4-flash`
/// (and `deepseek-reasoner` in favour of `deepseek-v4-pro`); switch with DEEPSEEK_MODEL.
pub const DEFAULT_MODEL: &str = "deepseek-chat";
/// Backoff never waits longer than this between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct DeepSeekConfig {
    /// `https://api.deepseek.com` (or `.../v1`); a trailing slash is fine.
    pub base_url: String,
    /// Debug, Display and logs show it as `***`.
    pub api_key: Secret,
    pub model: String,
    /// Room for the whole anketa: a truncated answer is invalid JSON.
    pub max_tokens: u32,
    /// Deadline of one whole extraction: every attempt and every backoff pause included.
    pub timeout: Duration,
    /// How many requests one extraction may make (1 = no retries).
    pub attempts: u32,
    /// First backoff pause; each retry doubles it.
    pub backoff_initial: Duration,
    pub temperature: f64,
}

impl DeepSeekConfig {
    /// The defaults used by `config.toml`, with the given key.
    pub fn new(api_key: Secret) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key,
            model: DEFAULT_MODEL.to_owned(),
            max_tokens: 2048,
            timeout: Duration::from_secs(60),
            attempts: 4,
            backoff_initial: Duration::from_millis(500),
            // Extraction wants the same answer for the same dialogue, not creativity.
            temperature: 0.0,
        }
    }

    /// The `[deepseek]` section of config.toml (environment overrides already applied).
    pub fn from_section(section: &DeepSeekSection) -> Self {
        Self {
            base_url: section.base_url.clone(),
            api_key: section.api_key.clone(),
            model: section.model.clone(),
            max_tokens: section.max_tokens,
            timeout: Duration::from_secs(section.timeout_secs),
            attempts: section.attempts,
            backoff_initial: Duration::from_millis(section.backoff_initial_ms),
            temperature: section.temperature,
        }
    }

    fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim().trim_end_matches('/'))
    }

    /// Checks every value, naming the setting and what to do.
    pub fn validate(&self) -> Result<(), DeepSeekConfigError> {
        let bad = |key: &'static str, reason: String| Err(DeepSeekConfigError { key, reason });
        if self.api_key.is_empty() {
            return bad("DEEPSEEK_API_KEY", "is empty; set it to the key from platform.deepseek.com".into());
        }
        match url::Url::parse(self.base_url.trim()) {
            Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {}
            Ok(url) => return bad("deepseek.base_url", format!("has scheme {:?}; use https://", url.scheme())),
            Err(e) => {
                return bad(
                    "deepseek.base_url",
                    format!("{:?} is not a URL ({e}); use e.g. {DEFAULT_BASE_URL}", self.base_url),
                )
            }
        }
        if self.model.trim().is_empty() {
            return bad("deepseek.model", format!("is empty; use e.g. {DEFAULT_MODEL} or deepseek-v4-flash"));
        }
        if self.max_tokens == 0 {
            return bad("deepseek.max_tokens", "is 0; use e.g. 2048".into());
        }
        if self.timeout.is_zero() {
            return bad("deepseek.timeout", "is 0; use e.g. 60 s".into());
        }
        if self.attempts == 0 {
            return bad("deepseek.attempts", "is 0; use 1 for no retries, e.g. 4".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("deepseek.temperature", format!("is {}; DeepSeek accepts 0.0-2.0", self.temperature));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad DeepSeek setting {key}: {reason}")]
pub struct DeepSeekConfigError {
    pub key: &'static str,
    pub reason: String,
}

/// One successful extraction.
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    /// Only configured fields of the right type.
    pub anketa: Anketa,
    /// What validation dropped from DeepSeek's answer.
    pub dropped: ValidationReport,
    /// The messages (seq) each field was read from, as DeepSeek cited them and validation kept.
    pub evidence: Evidence,
    /// The citations validation dropped.
    pub evidence_dropped: EvidenceReport,
    /// Requests made, the successful one included.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeepSeekError {
    /// Retrying cannot help: bad key, no balance, bad request or parameters, a truncated answer.
    #[error("{reason}")]
    Rejected { status: Option<u16>, reason: String },
    #[error("DeepSeek extraction gave up after {attempts} attempts; last: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("DeepSeek extraction timed out after {timeout:?} ({attempts} attempts; last: {last}); raise deepseek.timeout if this repeats")]
    TimedOut { timeout: Duration, attempts: u32, last: String },
}

/// A validated answer of one attempt.
struct Answer {
    anketa: Anketa,
    dropped: ValidationReport,
    evidence: Evidence,
    evidence_dropped: EvidenceReport,
}

/// What one attempt ended with, when it did not succeed.
enum AttemptError {
    Retryable { reason: String, retry_after: Option<Duration> },
    Fatal { status: Option<u16>, reason: String },
}

impl AttemptError {
    fn retry(reason: impl Into<String>) -> Self {
        AttemptError::Retryable { reason: reason.into(), retry_after: None }
    }
}

pub struct DeepSeekExtractor {
    config: DeepSeekConfig,
    endpoint: String,
    fields: Vec<AnketaField>,
    system_prompt: String,
    http: reqwest::Client,
}

impl fmt::Debug for DeepSeekExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepSeekExtractor")
            .field("config", &self.config)
            .field("fields", &self.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl DeepSeekExtractor {
    /// `https://` trusts `tls`.
    pub fn new(config: DeepSeekConfig, fields: Vec<AnketaField>, tls: &ClientTls) -> Result<Self, DeepSeekConfigError> {
        config.validate()?;
        if fields.is_empty() {
            return Err(DeepSeekConfigError {
                key: "consultation.anketa_fields",
                reason: "is empty; configure at least one anketa field to extract".into(),
            });
        }
        let http = tls
            .http_client()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| DeepSeekConfigError { key: "deepseek", reason: format!("cannot build the HTTP client: {e}") })?;
        let system_prompt = system_prompt(&fields);
        Ok(Self { endpoint: config.endpoint(), config, fields, system_prompt, http })
    }

    pub fn config(&self) -> &DeepSeekConfig {
        &self.config
    }

    /// The request body for a dialogue (public so tests and `--dry-run`s can see the prompt).
    pub fn request_body(&self, dialogue: &[DialogueMessage], previous: &Anketa) -> Value {
        json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user_prompt(dialogue, previous)},
            ],
            "response_format": {"type": "json_object"},
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "stream": false,
        })
    }

    /// Extracts with retries inside one deadline; the error says why it failed.
    pub async fn extract_anketa(&self, dialogue: &[DialogueMessage], previous: &Anketa) -> Result<Extraction, DeepSeekError> {
        let body = self.request_body(dialogue, previous);
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let attempts = self.config.attempts;
        let mut last = String::from("no answer yet");
        for attempt in 1..=attempts {
            let outcome = match tokio::time::timeout_at(deadline, self.attempt(&body, dialogue)).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(self.timed_out(attempt, last)),
            };
            match outcome {
                Ok(Answer { anketa, dropped, evidence, evidence_dropped }) => {
                    tracing::info!(
                        model = %self.config.model,
                        attempt,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        filled = anketa.filled(),
                        cited = evidence.len(),
                        "DeepSeek anketa extracted"
                    );
                    return Ok(Extraction { anketa, dropped, evidence, evidence_dropped, attempts: attempt });
                }
                Err(AttemptError::Fatal { status, reason }) => {
                    tracing::error!(status, model = %self.config.model, "{reason}");
                    return Err(DeepSeekError::Rejected { status, reason });
                }
                Err(AttemptError::Retryable { reason, retry_after }) => {
                    last = reason;
                    if attempt == attempts {
                        break;
                    }
                    let delay = backoff(self.config.backoff_initial, attempt).max(retry_after.unwrap_or_default());
                    if Instant::now() + delay >= deadline {
                        return Err(self.timed_out(attempt, last));
                    }
                    tracing::warn!(
                        attempt,
                        of = attempts,
                        delay_ms = delay.as_millis() as u64,
                        "DeepSeek extraction attempt failed, retrying: {last}"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let error = DeepSeekError::Exhausted { attempts, last };
        tracing::error!("{error}");
        Err(error)
    }

    fn timed_out(&self, attempts: u32, last: String) -> DeepSeekError {
        let error = DeepSeekError::TimedOut { timeout: self.config.timeout, attempts, last };
        tracing::error!("{error}");
        error
    }

    /// A refused certificate is final; other network errors are worth a retry.
    fn send_error(&self, e: &reqwest::Error) -> AttemptError {
        let target = url::Url::parse(&self.endpoint).map(|u| tls::target(&u)).unwrap_or_else(|_| self.endpoint.clone());
        match tls::explain(&target, e) {
            Some(failure) if failure.certificate => AttemptError::Fatal { status: None, reason: format!("DeepSeek: {failure}") },
            Some(failure) => AttemptError::retry(format!("network error: {failure}")),
            None => AttemptError::retry(format!("network error: {e}")),
        }
    }

    /// One JSON-mode request of a few tokens, no retries (`consultant doctor`): proves the
    /// key, the model and JSON mode for a fraction of an extraction's cost.
    pub async fn ping(&self) -> Result<(), DeepSeekError> {
        let body = json!({
            "model": self.config.model,
            "messages": [{"role": "system", "content": "Answer with the json object {\"ok\": true}."}, {"role": "user", "content": "ping"}],
            "response_format": {"type": "json_object"},
            "max_tokens": 16,
            "temperature": 0.0,
            "stream": false,
        });
        let once = |reason: String| DeepSeekError::Exhausted { attempts: 1, last: reason };
        let (content, _) = self.complete(&body).await.map_err(|e| match e {
            AttemptError::Fatal { status, reason } => DeepSeekError::Rejected { status, reason },
            AttemptError::Retryable { reason, .. } => once(reason),
        })?;
        serde_json::from_str::<Value>(strip_code_fence(content.trim())).map_err(|e| once(format!("DeepSeek content is not valid JSON ({e})")))?;
        Ok(())
    }

    async fn attempt(&self, body: &Value, dialogue: &[DialogueMessage]) -> Result<Answer, AttemptError> {
        let (content, finish_reason) = self.complete(body).await?;
        let raw: Value = match serde_json::from_str(strip_code_fence(content.trim())) {
            Ok(value) => value,
            Err(e) if finish_reason == "length" => {
                return Err(AttemptError::Fatal {
                    status: None,
                    reason: format!(
                        "DeepSeek cut the answer at max_tokens = {} (finish_reason length, {e}): raise deepseek.max_tokens",
                        self.config.max_tokens
                    ),
                })
            }
            Err(e) => return Err(AttemptError::retry(format!("DeepSeek content is not valid JSON ({e})"))),
        };
        let (raw, raw_evidence) = split_answer(raw, &self.fields);
        let (anketa, report) = Anketa::validate(&raw, &self.fields)
            .map_err(|e| AttemptError::retry(format!("DeepSeek content is not an anketa: {e}")))?;
        if !report.unknown_fields.is_empty() || !report.wrong_types.is_empty() {
            let wrong: Vec<String> = report
                .wrong_types
                .iter()
                .map(|(name, kind, got)| format!("{name} (expected {}, got {got})", kind_name(*kind)))
                .collect();
            tracing::warn!(
                unknown_fields = ?report.unknown_fields,
                wrong_types = ?wrong,
                "DeepSeek answer had fields outside the anketa or of the wrong type; dropped them"
            );
        }
        let (evidence, evidence_dropped) = validate_evidence(raw_evidence.as_ref(), &anketa, &self.fields, dialogue);
        if evidence_dropped.dropped > 0 {
            tracing::warn!(
                evidence_dropped = evidence_dropped.dropped,
                unknown_messages = ?evidence_dropped.unknown_messages,
                unknown_fields = ?evidence_dropped.unknown_fields,
                without_value = ?evidence_dropped.without_value,
                "DeepSeek cited messages or fields that do not hold; dropped those citations"
            );
        }
        Ok(Answer { anketa, dropped: report, evidence, evidence_dropped })
    }

    /// One request: the answer's content and finish_reason, or why there is none.
    async fn complete(&self, body: &Value) -> Result<(String, String), AttemptError> {
        let response = self
            .http
            .post(&self.endpoint)
            .bearer_auth(self.config.api_key.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| self.send_error(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| AttemptError::retry(format!("network error reading the answer: {e}")))?;
        // The body may start with the blank lines the server sends while it holds the connection.
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        if !status.is_success() {
            return Err(self.classify_error(status, text, retry_after));
        }
        let completion: ChatCompletion = serde_json::from_str(text).map_err(|e| {
            AttemptError::retry(format!("DeepSeek answered 200 with a body that is not a chat completion ({e})"))
        })?;
        let choice = completion
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| AttemptError::retry("DeepSeek answered with no choices"))?;
        let finish_reason = choice.finish_reason.unwrap_or_default();
        if finish_reason == "insufficient_system_resource" {
            return Err(AttemptError::retry(
                "DeepSeek stopped for lack of resources (finish_reason insufficient_system_resource)",
            ));
        }
        let content = choice.message.content.unwrap_or_default();
        if content.trim().is_empty() {
            return Err(AttemptError::retry(format!(
                "DeepSeek answered with empty content ({} characters, finish_reason {finish_reason:?})",
                content.len()
            )));
        }
        Ok((content, finish_reason))
    }

    fn classify_error(&self, status: StatusCode, text: &str, retry_after: Option<Duration>) -> AttemptError {
        let detail = serde_json::from_str::<ErrorBody>(text)
            .ok()
            .and_then(|b| b.error.message)
            .map(|m| self.redact(&m))
            .unwrap_or_else(|| "no error message".to_owned());
        let code = status.as_u16();
        let fatal = |reason: String| AttemptError::Fatal { status: Some(code), reason };
        match code {
            // The server's 401 message quotes part of the key: never repeat it.
            401 => fatal("DeepSeek rejected the API key (401): check DEEPSEEK_API_KEY".into()),
            402 => fatal("DeepSeek account has insufficient balance (402): top up at platform.deepseek.com".into()),
            400 => fatal(format!("DeepSeek rejected the request format (400): {detail}")),
            422 => fatal(format!(
                "DeepSeek rejected the request parameters (422): {detail}; check deepseek.model, max_tokens, temperature"
            )),
            404 => fatal(format!("DeepSeek has no {} (404): check DEEPSEEK_BASE_URL", self.endpoint)),
            429 => AttemptError::Retryable { reason: format!("DeepSeek rate limit (429): {detail}"), retry_after },
            500 => AttemptError::retry(format!("DeepSeek server error (500): {detail}")),
            503 => AttemptError::Retryable { reason: format!("DeepSeek overloaded (503): {detail}"), retry_after },
            // Gateways in front of the service (502, 504) fail transiently too.
            other if (500..600).contains(&other) => AttemptError::retry(format!("DeepSeek answered {status}: {detail}")),
            _ => fatal(format!("DeepSeek answered {status}: {detail}")),
        }
    }

    fn redact(&self, text: &str) -> String {
        let key = self.config.api_key.expose();
        if key.len() >= 4 {
            text.replace(key, "***")
        } else {
            text.to_owned()
        }
    }
}

#[async_trait]
impl AnketaExtractor for DeepSeekExtractor {
    async fn extract(&self, dialogue: &[DialogueMessage], previous: &Anketa) -> Result<ExtractedAnketa, ExtractError> {
        self.extract_anketa(dialogue, previous)
            .await
            .map(|e| ExtractedAnketa { anketa: e.anketa, evidence: e.evidence, evidence_dropped: e.evidence_dropped.dropped })
            .map_err(|e| ExtractError::Failed(e.to_string()))
    }
}

fn backoff(initial: Duration, attempt: u32) -> Duration {
    let exponential = initial.saturating_mul(1u32 << (attempt - 1).min(16)).min(MAX_BACKOFF);
    // Up to +25 % jitter so that consultations rate-limited together do not retry together.
    exponential.mul_f64(1.0 + rand::random_range(0.0..0.25))
}

/// JSON mode should never fence its answer, but a fenced object is still the object.
fn strip_code_fence(content: &str) -> &str {
    let Some(inner) = content.strip_prefix("```") else {
        return content;
    };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.strip_suffix("```").unwrap_or(inner).trim()
}

#[derive(Deserialize)]
struct ChatCompletion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let first = backoff(Duration::from_millis(100), 1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        let third = backoff(Duration::from_millis(100), 3);
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(500));
        assert!(backoff(Duration::from_secs(10), 20) <= MAX_BACKOFF.mul_f64(1.25));
    }

    #[test]
    fn fences_are_stripped() {
        assert_eq!(strip_code_fence("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_code_fence("{\"a\":1}"), "{\"a\":1}");
    }

    #[test]
    fn config_comes_from_the_section() {
        let section = DeepSeekSection {
            base_url: "https://api.deepseek.com/".into(),
            api_key: Secret::new("sk-1"),
            model: "deepseek-v4-flash".into(),
            max_tokens: 3000,
            timeout_secs: 45,
            attempts: 3,
            backoff_initial_ms: 250,
            temperature: 0.5,
        };
        let config = DeepSeekConfig::from_section(&section);
        assert_eq!(config.api_key.expose(), "sk-1");
        assert_eq!(config.model, "deepseek-v4-flash");
        assert_eq!((config.max_tokens, config.attempts, config.temperature), (3000, 3, 0.5));
        assert_eq!(config.timeout, Duration::from_secs(45));
        assert_eq!(config.backoff_initial, Duration::from_millis(250));
        assert_eq!(config.endpoint(), "https://api.deepseek.com/chat/completions");
        config.validate().unwrap();
    }

    #[test]
    fn endpoint_tolerates_trailing_slash() {
        let mut config = DeepSeekConfig::new(Secret::new("k"));
        config.base_url = "https://api.deepseek.com/".into();
        assert_eq!(config.endpoint(), "https://api.deepseek.com/chat/completions");
        config.base_url = "https://api.deepseek.com/v1".into();
        assert_eq!(config.endpoint(), "https://api.deepseek.com/v1/chat/completions");
    }
}
