//! Configuration: `config.toml` (every setting documented there, with working defaults),
//! overridden by the Python module's environment variables (and a `.env` file in the working
//! directory). Errors name the file, the key and the reason; missing secrets are listed by
//! environment variable, only for the services the command needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consultant_actors::anketa::{AnketaField, FieldKind};
use consultant_actors::settings::ConsultationSettings;
use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}. Pass --config PATH or create it (see the README).")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}` (from {origin}): {reason}")]
    Invalid { key: String, origin: String, reason: String },
    #[error("missing secrets: {} (set them in the environment or in .env)", .0.join(", "))]
    MissingSecrets(Vec<&'static str>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub livekit: LivekitConfig,
    pub realtime: RealtimeSection,
    pub deepseek: DeepSeekSection,
    pub consultation: ConsultationSection,
    pub storage: StorageConfig,
    pub console: ConsoleConfig,
    pub logging: LoggingConfig,
    /// Where the values came from (for error messages); not in the file.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivekitConfig {
    pub url: String,
    #[serde(default)]
    pub api_key: Secret,
    #[serde(default)]
    pub api_secret: Secret,
    pub agent_name: String,
    pub identity_prefix: String,
    pub participant_token_ttl_secs: u64,
    pub capacity: usize,
    pub load_threshold: f64,
    pub drain_timeout_secs: u64,
    pub health_listen: String,
    pub reconnect_max_tries: u32,
}

/// `realtime.flavour`: one type for the file, the environment and the realtime client.
pub use crate::realtime::RealtimeFlavour;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeSection {
    pub flavour: RealtimeFlavour,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub api_key: Secret,
    pub deployment: String,
    pub api_version: String,
    pub model: String,
    pub voice: String,
    pub transcription_model: String,
    pub vad_threshold: f64,
    pub vad_prefix_padding_ms: u32,
    pub vad_silence_duration_ms: u32,
    pub connect_attempts: u32,
    pub connect_timeout_secs: u64,
    pub recycle_after_secs: u64,
    pub temperature: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepSeekSection {
    pub base_url: String,
    #[serde(default)]
    pub api_key: Secret,
    pub model: String,
    pub max_tokens: u32,
    pub timeout_secs: u64,
    pub attempts: u32,
    pub backoff_initial_ms: u64,
    pub temperature: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsultationSection {
    pub language: String,
    pub system_prompt: String,
    pub greeting: String,
    pub wrapup_instruction: String,
    pub goodbye_instruction: String,
    pub max_duration_secs: u64,
    pub wrapup_before_secs: u64,
    pub extraction_interval: usize,
    pub transcript_wait_secs: u64,
    pub final_extraction_timeout_secs: u64,
    pub restart_max: usize,
    pub restart_window_secs: u64,
    pub caller_gap_buffer_ms: u64,
    pub anketa_fields: Vec<AnketaField>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub path: PathBuf,
    /// "normal" (durable across process crashes) or "full" (also across power loss).
    pub synchronous: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    pub listen: String,
    /// Read-only token; empty = generated on first start into `token_file`.
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub operator_token: Secret,
    pub token_file: PathBuf,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    pub max_clients: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    pub level: String,
    pub dir: PathBuf,
    pub file: String,
    pub max_file_bytes: u64,
    pub max_files: usize,
    pub json: bool,
}

/// Which external services a command talks to: only their secrets are required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    LiveKit,
    Realtime,
    DeepSeek,
}

/// The environment variables that override the file (the Python module's, plus DeepSeek's and ours).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("AZURE_OPENAI_ENDPOINT", "realtime.endpoint"),
    ("AZURE_OPENAI_API_KEY", "realtime.api_key"),
    ("AZURE_OPENAI_DEPLOYMENT_NAME", "realtime.deployment"),
    ("AZURE_OPENAI_REALTIME_API_VERSION", "realtime.api_version"),
    ("CONSULTANT_REALTIME_FLAVOUR", "realtime.flavour"),
    ("LIVEKIT_URL", "livekit.url"),
    ("LIVEKIT_API_KEY", "livekit.api_key"),
    ("LIVEKIT_API_SECRET", "livekit.api_secret"),
    ("DEEPSEEK_API_KEY", "deepseek.api_key"),
    ("DEEPSEEK_BASE_URL", "deepseek.base_url"),
    ("DEEPSEEK_MODEL", "deepseek.model"),
    ("CONSULTANT_DB_PATH", "storage.path"),
    ("CONSULTANT_CONSOLE_TOKEN", "console.token"),
    ("CONSULTANT_CONSOLE_OPERATOR_TOKEN", "console.operator_token"),
];

impl Config {
    /// Reads `.env` (if present, never overriding the real environment), the file, and the
    /// environment overrides, then validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses and validates; `env` looks up overrides (tests pass their own).
    pub fn from_toml(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        for (var, key) in ENV_OVERRIDES {
            if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
                let (section, field) = key.split_once('.').expect("override keys are section.field");
                let table = value
                    .entry(section.to_owned())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                if let Some(t) = table.as_table_mut() {
                    t.insert(field.to_owned(), toml::Value::String(v.trim().to_owned()));
                }
            }
        }
        let mut config: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.source = path.to_owned();
        config.validate(&env)?;
        Ok(config)
    }

    fn invalid(&self, key: &str, env: &impl Fn(&str) -> Option<String>, reason: impl Into<String>) -> ConfigError {
        let origin = ENV_OVERRIDES
            .iter()
            .find(|(var, k)| *k == key && env(var).is_some_and(|v| !v.trim().is_empty()))
            .map(|(var, _)| format!("environment variable {var}"))
            .unwrap_or_else(|| self.source.display().to_string());
        ConfigError::Invalid { key: key.to_owned(), origin, reason: reason.into() }
    }

    fn validate(&self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let c = &self.consultation;
        if c.extraction_interval == 0 {
            return Err(self.invalid("consultation.extraction_interval", env, "must be at least 1 message"));
        }
        if c.max_duration_secs == 0 {
            return Err(self.invalid("consultation.max_duration_secs", env, "must be positive"));
        }
        if c.wrapup_before_secs >= c.max_duration_secs {
            return Err(self.invalid("consultation.wrapup_before_secs", env, "must be shorter than max_duration_secs"));
        }
        if c.anketa_fields.is_empty() {
            return Err(self.invalid("consultation.anketa_fields", env, "at least one field is needed"));
        }
        let mut names = std::collections::HashSet::new();
        for f in &c.anketa_fields {
            if f.name.trim().is_empty() || !names.insert(f.name.as_str()) {
                return Err(self.invalid("consultation.anketa_fields", env, format!("field names must be unique and non-empty (`{}`)", f.name)));
            }
        }
        for (key, url) in [("livekit.url", &self.livekit.url), ("deepseek.base_url", &self.deepseek.base_url)] {
            check_url(url).map_err(|r| self.invalid(key, env, r))?;
        }
        if !self.realtime.endpoint.is_empty() {
            check_url(&self.realtime.endpoint).map_err(|r| self.invalid("realtime.endpoint", env, r))?;
        }
        if !(0.0..=1.0).contains(&self.livekit.load_threshold) || self.livekit.load_threshold == 0.0 {
            return Err(self.invalid("livekit.load_threshold", env, "must be in (0, 1]"));
        }
        if self.livekit.capacity == 0 {
            return Err(self.invalid("livekit.capacity", env, "must be at least 1 consultation"));
        }
        if !(0.0..=1.0).contains(&self.realtime.vad_threshold) {
            return Err(self.invalid("realtime.vad_threshold", env, "must be between 0.0 and 1.0"));
        }
        if self.realtime.connect_attempts == 0 {
            return Err(self.invalid("realtime.connect_attempts", env, "must be at least 1"));
        }
        if !matches!(self.storage.synchronous.as_str(), "normal" | "full") {
            return Err(self.invalid("storage.synchronous", env, "must be \"normal\" or \"full\""));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(self.invalid("logging.level", env, "not a valid level/filter (e.g. info, debug, consultant=debug)"));
        }
        if self.logging.max_files == 0 || self.logging.max_file_bytes < 4096 {
            return Err(self.invalid("logging.max_files", env, "keep at least 1 file of at least 4096 bytes"));
        }
        if self.console.enabled {
            let addr: SocketAddr = self.console.listen.parse().map_err(|e| self.invalid("console.listen", env, format!("not an address: {e}")))?;
            let tls = self.console.tls_cert.is_some() && self.console.tls_key.is_some();
            if !addr.ip().is_loopback() && !tls {
                return Err(self.invalid(
                    "console.listen",
                    env,
                    "binding the console to a non-loopback address needs TLS: set console.tls_cert and console.tls_key, or listen on 127.0.0.1",
                ));
            }
        }
        self.livekit
            .health_listen
            .parse::<SocketAddr>()
            .map_err(|e| self.invalid("livekit.health_listen", env, format!("not an address: {e}")))?;
        Ok(())
    }

    /// Fails with every missing secret of the services this command uses, by variable name.
    pub fn require(&self, services: &[Service]) -> Result<(), ConfigError> {
        let mut missing = Vec::new();
        for service in services {
            match service {
                Service::LiveKit => {
                    if self.livekit.api_key.is_empty() {
                        missing.push("LIVEKIT_API_KEY");
                    }
                    if self.livekit.api_secret.is_empty() {
                        missing.push("LIVEKIT_API_SECRET");
                    }
                }
                Service::Realtime => {
                    if self.realtime.endpoint.is_empty() && self.realtime.flavour != RealtimeFlavour::OpenAi {
                        missing.push("AZURE_OPENAI_ENDPOINT");
                    }
                    if self.realtime.api_key.is_empty() {
                        missing.push("AZURE_OPENAI_API_KEY");
                    }
                }
                Service::DeepSeek => {
                    if self.deepseek.api_key.is_empty() {
                        missing.push("DEEPSEEK_API_KEY");
                    }
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::MissingSecrets(missing))
        }
    }

    /// The actors' view of the consultation settings.
    pub fn consultation_settings(&self) -> ConsultationSettings {
        let c = &self.consultation;
        let r = &self.realtime;
        ConsultationSettings {
            system_prompt: c.system_prompt.clone(),
            greeting_instruction: c.greeting.clone(),
            wrapup_instruction: c.wrapup_instruction.clone(),
            goodbye_instruction: c.goodbye_instruction.clone(),
            language: c.language.clone(),
            max_duration: Duration::from_secs(c.max_duration_secs),
            wrapup_before: Duration::from_secs(c.wrapup_before_secs),
            extraction_interval: c.extraction_interval,
            anketa_fields: c.anketa_fields.clone(),
            goodbye_grace: Duration::from_secs(20),
            final_extraction_timeout: Duration::from_secs(c.final_extraction_timeout_secs),
            transcript_wait: Duration::from_secs(c.transcript_wait_secs),
            restart: consultant_actors::restart::RestartPolicy {
                max_restarts: c.restart_max,
                window: Duration::from_secs(c.restart_window_secs),
                ..Default::default()
            },
            connect: consultant_actors::realtime::ConnectPolicy {
                attempts: r.connect_attempts,
                timeout: Duration::from_secs(r.connect_timeout_secs),
                ..Default::default()
            },
            caller_gap_buffer: Duration::from_millis(c.caller_gap_buffer_ms),
            realtime_recycle_after: (r.recycle_after_secs > 0).then(|| Duration::from_secs(r.recycle_after_secs)),
        }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" | "ws" | "wss" => Ok(()),
        other => Err(format!("scheme `{other}` is not supported; use https:// or wss:// (http:// or ws:// for local tests)")),
    }
}

/// The default anketa field kind for documentation.
pub fn field_kinds() -> &'static [FieldKind] {
    &[FieldKind::Text, FieldKind::List, FieldKind::Number, FieldKind::Bool]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config.toml");

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Config::from_toml(text, Path::new("config.toml"), move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn shipped_file_is_valid_and_env_overrides_it() {
        let c = load(SHIPPED, &[("AZURE_OPENAI_DEPLOYMENT_NAME", "my-dep"), ("DEEPSEEK_API_KEY", "sk-1")]).unwrap();
        assert_eq!(c.realtime.deployment, "my-dep");
        assert_eq!(c.deepseek.api_key.expose(), "sk-1");
        assert_eq!(c.consultation.extraction_interval, 6);
        assert_eq!(c.storage.path, PathBuf::from("data/consultations.db"));
        assert!(!format!("{c:?}").contains("sk-1"));
    }

    #[test]
    fn missing_secrets_are_named_per_service() {
        let c = load(SHIPPED, &[]).unwrap();
        let err = c.require(&[Service::DeepSeek]).unwrap_err().to_string();
        assert!(err.contains("DEEPSEEK_API_KEY") && !err.contains("LIVEKIT"), "{err}");
        let err = c.require(&[Service::LiveKit, Service::Realtime]).unwrap_err().to_string();
        assert!(err.contains("LIVEKIT_API_SECRET") && err.contains("AZURE_OPENAI_API_KEY"), "{err}");
    }

    #[test]
    fn bad_values_name_file_key_and_reason() {
        let text = SHIPPED.replace("extraction_interval = 6", "extraction_interval = 0");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("consultation.extraction_interval") && err.contains("config.toml"), "{err}");
        let err = load(SHIPPED, &[("LIVEKIT_URL", "ftp://x")]).unwrap_err().to_string();
        assert!(err.contains("LIVEKIT_URL") && err.contains("livekit.url"), "{err}");
        let text = SHIPPED.replace("[storage]", "[storage]\ntypo_key = 1");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("typo_key"), "{err}");
    }

    #[test]
    fn flavours_are_spelled_as_in_config_toml() {
        for flavour in RealtimeFlavour::CONFIGURABLE {
            let c = load(SHIPPED, &[("CONSULTANT_REALTIME_FLAVOUR", flavour.as_str())]).unwrap();
            assert_eq!(c.realtime.flavour, flavour);
            assert!(SHIPPED.contains(&format!("\"{flavour}\"")), "config.toml documents {flavour}");
        }
        let err = load(SHIPPED, &[("CONSULTANT_REALTIME_FLAVOUR", "azure_ga")]).unwrap_err().to_string();
        assert!(err.contains("azure_ga") && err.contains("azure-preview, azure-ga, openai"), "{err}");
    }

    #[test]
    fn console_off_loopback_needs_tls() {
        let text = SHIPPED.replace("listen = \"127.0.0.1:7700\"", "listen = \"0.0.0.0:7700\"");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("TLS"), "{err}");
    }
}
