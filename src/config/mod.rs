//! Configuration: built-in defaults (the shipped `config.toml`, compiled in), then a file
//! holding any subset of its keys, then the environment (and a `.env` file): the Python
//! module's variables and `CONSULTANT_<SECTION>_<KEY>` for every setting. Every problem is
//! collected before failing; each names where the value came from, the key, what is wrong and
//! the accepted form. Missing secrets are listed by variable, only for the services a command
//! needs.

mod layers;
pub mod report;
pub mod schema;
mod validate;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consultant_actors::anketa::{AnketaField, FieldKind};
use consultant_actors::settings::ConsultationSettings;
use serde::Deserialize;

pub use layers::{Env, Layered, Origin, Problem};

use crate::realtime::{Eagerness, NoiseReduction, TurnDetection};
use crate::secret::Secret;

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_FILE: &str = "config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} given by --config does not exist; pass an existing file, or leave --config out to use ./config.toml if present, else the built-in defaults", .path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read config file {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("cannot read .env: {0}")]
    DotEnv(String),
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
    #[error("missing secrets: {} (set them in the environment or in .env)", .0.join(", "))]
    MissingSecrets(Vec<&'static str>),
}

/// One problem on one line; several as a list.
struct Problems<'a>(&'a [Problem]);

impl std::fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems in the configuration:", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
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
    pub tls: TlsSection,
    pub web: WebConfig,
}

/// `[web]`: the caller's page (`consultant web`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    pub listen: String,
    /// The `livekit-client` browser bundle, as `npm ci` in `web/` installs it.
    pub livekit_client_js: PathBuf,
    /// The LiveKit URL as the browser reaches it; unset: `livekit.url`.
    #[serde(default)]
    pub livekit_url: Option<String>,
    /// Consultations one address may start per minute.
    pub starts_per_minute: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivekitConfig {
    pub url: String,
    /// `url` was set (file or environment), not left at the built-in default: without it
    /// `consultant dev` serves an embedded development LiveKit server there.
    #[serde(skip)]
    pub url_given: bool,
    pub api_key: Secret,
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
    pub endpoint: String,
    pub api_key: Secret,
    pub deployment: String,
    pub api_version: String,
    pub model: String,
    pub voice: String,
    pub transcription_model: String,
    pub turn_detection: TurnDetection,
    pub vad_threshold: f64,
    pub vad_prefix_padding_ms: u32,
    pub vad_silence_duration_ms: u32,
    pub vad_eagerness: Eagerness,
    pub idle_timeout_ms: u32,
    pub noise_reduction: NoiseReduction,
    pub connect_attempts: u32,
    pub connect_timeout_secs: u64,
    pub recycle_after_secs: u64,
    pub temperature: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepSeekSection {
    pub base_url: String,
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
    pub steer_with_anketa: bool,
    pub missing_fields_addendum: String,
    pub complete_fields_addendum: String,
    pub wrapup_missing_addendum: String,
    pub end_tool: bool,
    pub tool_goodbye_instruction: String,
    pub resume_instruction: String,
    pub silence_prompt_secs: u64,
    pub silence_prompt_instruction: String,
    pub silence_end_secs: u64,
    pub silence_goodbye_instruction: String,
    pub anketa_fields: Vec<AnketaField>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Empty: `sqlite://` + `path`. A PostgreSQL URL's password is secret (see store::url).
    pub url: Secret,
    pub path: PathBuf,
    /// "normal" (durable across process crashes) or "full" (also across power loss).
    pub synchronous: String,
    /// How long a worker's claim on its open sessions lasts without renewal, seconds.
    pub lease_secs: u64,
    /// The worker's identity as session owner; empty: `<hostname>-<pid>-<8 hex>`.
    pub worker_id: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    pub listen: String,
    /// Read-only token; empty = generated on first start into `token_file`.
    pub token: Secret,
    pub operator_token: Secret,
    pub token_file: PathBuf,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    pub max_clients: usize,
}

/// `[tls]`: the trust policy of outgoing TLS connections (see `crate::tls`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// A PEM file of extra CA certificates trusted besides the built-in and system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl TlsSection {
    /// The CA files this section names.
    pub fn ca_files(&self) -> Vec<crate::tls::CaFile<'_>> {
        self.ca_file.iter().map(|path| crate::tls::CaFile { origin: "tls.ca_file", path }).collect()
    }
}

/// `logging.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(from = "LoggingSection")]
pub struct LoggingConfig {
    pub level: String,
    pub dir: PathBuf,
    pub file: String,
    pub max_file_bytes: u64,
    pub max_files: usize,
    /// The file is JSON lines (`logging.format = "json"`, or the older `logging.json = true`).
    pub json: bool,
}

impl LoggingConfig {
    pub fn format(&self) -> LogFormat {
        if self.json {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

/// `[logging]` as written: `json` is the older spelling of `format`, kept so old files load.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingSection {
    level: String,
    dir: PathBuf,
    file: String,
    max_file_bytes: u64,
    max_files: usize,
    format: LogFormat,
    json: Option<bool>,
}

impl From<LoggingSection> for LoggingConfig {
    fn from(s: LoggingSection) -> Self {
        let json = s.format == LogFormat::Json || s.json == Some(true);
        Self { level: s.level, dir: s.dir, file: s.file, max_file_bytes: s.max_file_bytes, max_files: s.max_files, json }
    }
}

/// Which external services a command talks to: only their secrets are required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    LiveKit,
    Realtime,
    DeepSeek,
}

/// The layers and, when they hold no problem, the typed configuration.
pub struct Resolved {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    pub layered: Layered,
    /// Every problem: the layers' and validation's.
    pub problems: Vec<Problem>,
    pub config: Option<Config>,
}

impl Resolved {
    fn into_config(self) -> Result<Config, ConfigError> {
        match (self.config, self.problems.is_empty()) {
            (Some(config), true) => Ok(config),
            _ => Err(ConfigError::Invalid(self.problems)),
        }
    }
}

/// Reads the file: `path` must exist when given; without it `./config.toml` is used if present.
fn read_file(path: Option<&Path>) -> Result<Option<(PathBuf, String)>, ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (p.to_owned(), true),
        None => (PathBuf::from(DEFAULT_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((path, text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit => Err(ConfigError::NotFound { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

/// Loads `.env` (found like python-dotenv's, from the working directory up) into the process
/// environment without overriding it; returns the names it set.
fn read_dotenv() -> Result<HashSet<String>, ConfigError> {
    let iter = match dotenvy::dotenv_iter() {
        Ok(iter) => iter,
        Err(e) if e.not_found() => return Ok(HashSet::new()),
        Err(e) => return Err(ConfigError::DotEnv(e.to_string())),
    };
    let mut set = HashSet::new();
    for item in iter {
        let (name, value) = item.map_err(|e| ConfigError::DotEnv(e.to_string()))?;
        if std::env::var_os(&name).is_none() {
            std::env::set_var(&name, value);
            set.insert(name);
        }
    }
    Ok(set)
}

/// Layers, deserializes and validates. Only a file that is not TOML at all fails outright.
pub fn resolve(file: Option<(PathBuf, &str)>, env: &Env<'_>) -> Result<Resolved, ConfigError> {
    let (path, table) = match file {
        Some((path, text)) => {
            let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?;
            (Some(path.clone()), Some((path, table)))
        }
        None => (None, None),
    };
    let layered = layers::layer(table, env);
    let mut problems = layered.problems.clone();
    let config = match toml::Value::Table(layered.table.clone()).try_into::<Config>() {
        Ok(mut config) => {
            problems.extend(validate::check(&config, &layered));
            config.livekit.url_given = layered.origin("livekit.url") != Origin::Default;
            Some(config)
        }
        Err(e) => {
            // The layers type-check every key, so this is a schema/struct mismatch.
            problems.push(Problem::Invalid { key: "(configuration)".into(), origin: Origin::Default, problem: e.message().to_owned(), accepted: "see config.toml".into() });
            None
        }
    };
    Ok(Resolved { file: path, layered, problems, config })
}

impl Config {
    /// `--config PATH` (must exist), else `./config.toml` if present, else the built-in
    /// defaults; then `.env` and the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::resolve_process(path)?.into_config()
    }

    /// What `load` sees, problems included (for `consultant config`).
    pub fn resolve_process(path: Option<&Path>) -> Result<Resolved, ConfigError> {
        let file = read_file(path)?;
        let from_dotenv = read_dotenv()?;
        let lookup = |name: &str| std::env::var(name).ok();
        let env = Env { lookup: &lookup, from_dotenv: &from_dotenv };
        resolve(file.as_ref().map(|(p, t)| (p.clone(), t.as_str())), &env)
    }

    /// Parses `text` as the file at `path` and validates; `env` looks up variables (tests pass
    /// their own).
    pub fn from_toml(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let none = HashSet::new();
        resolve(Some((path.to_owned(), text)), &Env { lookup: &env, from_dotenv: &none })?.into_config()
    }

    /// Built-in defaults and `env` only, as when no file exists.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let none = HashSet::new();
        resolve(None, &Env { lookup: &env, from_dotenv: &none })?.into_config()
    }

    /// Fails with every missing secret of the services this command uses, by variable name.
    pub fn require(&self, services: &[Service]) -> Result<(), ConfigError> {
        let missing = self.missing_secrets(services);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::MissingSecrets(missing))
        }
    }

    /// The variables to set for the secrets `services` need.
    pub fn missing_secrets(&self, services: &[Service]) -> Vec<&'static str> {
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
        missing
    }

    /// The actors' view of the consultation settings.
    pub fn consultation_settings(&self) -> ConsultationSettings {
        let c = &self.consultation;
        let r = &self.realtime;
        ConsultationSettings {
            system_prompt: c.system_prompt.clone(),
            greeting_instruction: c.greeting.clone(),
            resume_instruction: c.resume_instruction.clone(),
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
            steering: consultant_actors::settings::Steering {
                enabled: c.steer_with_anketa,
                missing_addendum: c.missing_fields_addendum.clone(),
                complete_addendum: c.complete_fields_addendum.clone(),
                wrapup_missing: c.wrapup_missing_addendum.clone(),
            },
            ending: consultant_actors::settings::Ending {
                end_tool: c.end_tool,
                tool_goodbye_instruction: c.tool_goodbye_instruction.clone(),
                silence_prompt_after: (c.silence_prompt_secs > 0).then(|| Duration::from_secs(c.silence_prompt_secs)),
                silence_prompt_instruction: c.silence_prompt_instruction.clone(),
                silence_end_after: Duration::from_secs(c.silence_end_secs),
                silence_goodbye_instruction: c.silence_goodbye_instruction.clone(),
            },
        }
    }
}


/// The default anketa field kind for documentation.
pub fn field_kinds() -> &'static [FieldKind] {
    &[FieldKind::Text, FieldKind::List, FieldKind::Number, FieldKind::Bool]
}

#[cfg(test)]
mod tests;
