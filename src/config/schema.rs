//! Every setting: section, key, type, environment variables and a one-line meaning. The
//! defaults are `config.toml` itself, compiled in, so the shipped file documents exactly what
//! runs when a key is absent (or when there is no file at all).

use crate::realtime::{Eagerness, NoiseReduction, RealtimeFlavour, TurnDetection};

/// The shipped config.toml: the built-in defaults.
pub const DEFAULTS_TOML: &str = include_str!("../../config.toml");

/// The TOML type a key takes, and so how an environment string is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A non-empty path.
    Path,
    U32,
    U64,
    F64,
    Bool,
    Choice(&'static [&'static str]),
    /// `consultation.anketa_fields`: an array of `{name, description, kind, required}` tables.
    Fields,
}

impl Kind {
    /// The accepted form, for error messages.
    pub fn accepted(self) -> String {
        match self {
            Kind::Str => "a string".into(),
            Kind::Path => "a non-empty path string".into(),
            Kind::U32 => format!("a whole number from 0 to {}", u32::MAX),
            Kind::U64 => "a whole number, 0 or more".into(),
            Kind::F64 => "a number".into(),
            Kind::Bool => "true or false".into(),
            Kind::Choice(names) => format!("one of: {}", names.join(", ")),
            Kind::Fields => "an array of tables {name = \"..\", description = \"..\", kind = \"text|list|number|bool\", required = true|false}".into(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    /// Reported as set/unset, never shown.
    pub secret: bool,
    /// A URL whose password is secret: shown with the password masked.
    pub masked: bool,
    /// Not in config.toml: unset unless given.
    pub optional: bool,
    /// The Python module's (or an earlier release's) variable. CONSULTANT_<SECTION>_<KEY> wins over it.
    pub legacy_env: Option<&'static str>,
    pub doc: &'static str,
}

const fn key(section: &'static str, name: &'static str, kind: Kind, doc: &'static str) -> Key {
    Key { section, name, kind, secret: false, masked: false, optional: false, legacy_env: None, doc }
}

impl Key {
    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    const fn masked(mut self) -> Self {
        self.masked = true;
        self
    }

    const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    const fn legacy(mut self, var: &'static str) -> Self {
        self.legacy_env = Some(var);
        self
    }

    /// `section.key`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// `CONSULTANT_<SECTION>_<KEY>`.
    pub fn env(&self) -> String {
        format!("CONSULTANT_{}_{}", self.section.to_ascii_uppercase(), self.name.to_ascii_uppercase())
    }
}

const FLAVOURS: Kind = Kind::Choice(RealtimeFlavour::CONFIGURABLE_NAMES);
const TURN: Kind = Kind::Choice(TurnDetection::NAMES);
const EAGERNESS: Kind = Kind::Choice(Eagerness::NAMES);
const NOISE: Kind = Kind::Choice(NoiseReduction::NAMES);
pub const LOG_FORMATS: &[&str] = &["text", "json"];
pub const SYNCHRONOUS: &[&str] = &["normal", "full"];

use Kind::{Bool, Fields, Path, Str, F64, U32, U64};

pub const KEYS: &[Key] = &[
    key("livekit", "url", Str, "LiveKit server URL (wss://<project>.livekit.cloud)").legacy("LIVEKIT_URL"),
    key("livekit", "api_key", Str, "LiveKit API key").secret().legacy("LIVEKIT_API_KEY"),
    key("livekit", "api_secret", Str, "LiveKit API secret").secret().legacy("LIVEKIT_API_SECRET"),
    key("livekit", "agent_name", Str, "agent name the worker registers under"),
    key("livekit", "identity_prefix", Str, "the agent joins rooms as <prefix><job id>"),
    key("livekit", "participant_token_ttl_secs", U64, "lifetime of tokens made by `token` / `room create`, seconds"),
    key("livekit", "capacity", U64, "concurrent consultations this worker takes"),
    key("livekit", "load_threshold", F64, "load at which `start` mode reports FULL, (0, 1]"),
    key("livekit", "drain_timeout_secs", U64, "time running consultations get on SIGTERM in `start` mode, seconds"),
    key("livekit", "health_listen", Str, "health HTTP endpoint address (GET / and /worker)"),
    key("livekit", "reconnect_max_tries", U32, "re-registration attempts after the LiveKit link drops"),
    key("realtime", "flavour", FLAVOURS, "realtime protocol: azure-ga, azure-preview or openai"),
    key("realtime", "endpoint", Str, "Azure OpenAI endpoint https://<resource>.openai.azure.com/").legacy("AZURE_OPENAI_ENDPOINT"),
    key("realtime", "api_key", Str, "Azure OpenAI (or OpenAI) API key").secret().legacy("AZURE_OPENAI_API_KEY"),
    key("realtime", "deployment", Str, "Azure realtime deployment name").legacy("AZURE_OPENAI_DEPLOYMENT_NAME"),
    key("realtime", "api_version", Str, "api-version for the azure-preview flavour").legacy("AZURE_OPENAI_REALTIME_API_VERSION"),
    key("realtime", "model", Str, "model for the openai flavour"),
    key("realtime", "voice", Str, "the agent's voice"),
    key("realtime", "transcription_model", Str, "caller transcription model (Azure: a transcription deployment)"),
    key("realtime", "turn_detection", TURN, "turn detection: server_vad or semantic_vad (GA flavours)"),
    key("realtime", "vad_threshold", F64, "server_vad activation threshold, 0.0-1.0"),
    key("realtime", "vad_prefix_padding_ms", U32, "server_vad audio kept before speech, ms"),
    key("realtime", "vad_silence_duration_ms", U32, "server_vad silence that ends a turn, ms"),
    key("realtime", "vad_eagerness", EAGERNESS, "semantic_vad eagerness: auto, low, medium, high"),
    key("realtime", "idle_timeout_ms", U32, "server_vad idle timeout on GA flavours, ms (0 = off)"),
    key("realtime", "noise_reduction", NOISE, "input noise reduction on GA flavours: off, near_field, far_field"),
    key("realtime", "connect_attempts", U32, "connection attempts before a consultation fails"),
    key("realtime", "connect_timeout_secs", U64, "timeout per connection attempt, seconds"),
    key("realtime", "recycle_after_secs", U64, "reconnect before the provider's session limit, seconds (0 = never)"),
    key("realtime", "temperature", F64, "sampling temperature (azure-preview only)").optional(),
    key("deepseek", "base_url", Str, "DeepSeek API base URL").legacy("DEEPSEEK_BASE_URL"),
    key("deepseek", "api_key", Str, "DeepSeek API key").secret().legacy("DEEPSEEK_API_KEY"),
    key("deepseek", "model", Str, "DeepSeek model for the anketa").legacy("DEEPSEEK_MODEL"),
    key("deepseek", "max_tokens", U32, "maximum tokens of one extraction answer"),
    key("deepseek", "timeout_secs", U64, "overall time of one extraction, retries included, seconds"),
    key("deepseek", "attempts", U32, "attempts for retryable DeepSeek failures"),
    key("deepseek", "backoff_initial_ms", U64, "first retry delay, ms (doubles)"),
    key("deepseek", "temperature", F64, "DeepSeek sampling temperature, 0.0-2.0"),
    key("consultation", "language", Str, "consultation language (ISO-639-1), also the transcription hint"),
    key("consultation", "system_prompt", Str, "the consultant's instructions"),
    key("consultation", "greeting", Str, "instruction for the agent's first words"),
    key("consultation", "wrapup_instruction", Str, "instruction given wrapup_before_secs before the limit"),
    key("consultation", "goodbye_instruction", Str, "instruction when the time is up"),
    key("consultation", "max_duration_secs", U64, "maximum length of a consultation, seconds"),
    key("consultation", "wrapup_before_secs", U64, "when the wrap-up instruction is given before the limit, seconds"),
    key("consultation", "extraction_interval", U64, "extract the anketa every this many dialogue messages"),
    key("consultation", "transcript_wait_secs", U64, "how long a caller turn waits for its transcript, seconds"),
    key("consultation", "final_extraction_timeout_secs", U64, "time the final extraction may take, seconds"),
    key("consultation", "restart_max", U64, "child actor restarts allowed per window"),
    key("consultation", "restart_window_secs", U64, "the restart window, seconds"),
    key("consultation", "caller_gap_buffer_ms", U64, "caller audio held while the realtime link reconnects, ms"),
    key("consultation", "steer_with_anketa", Bool, "tell the model after each extraction which required fields are still unknown"),
    key("consultation", "missing_fields_addendum", Str, "added to the instructions while fields are missing; {fields} lists them"),
    key("consultation", "complete_fields_addendum", Str, "added to the instructions once every required field is known"),
    key("consultation", "wrapup_missing_addendum", Str, "added to the wrap-up while fields are missing; {fields} lists them"),
    key("consultation", "end_tool", Bool, "declare the end_consultation tool: the model ends the call when the caller says goodbye"),
    key("consultation", "tool_goodbye_instruction", Str, "instruction when the model ended the call without a goodbye"),
    key("consultation", "resume_instruction", Str, "instruction instead of the greeting when a call resumes on another worker"),
    key("consultation", "silence_prompt_secs", U64, "caller silence before the agent asks whether they are there, seconds (0 = off)"),
    key("consultation", "silence_prompt_instruction", Str, "instruction for that question"),
    key("consultation", "silence_end_secs", U64, "further silence before the agent says goodbye and ends the call, seconds"),
    key("consultation", "silence_goodbye_instruction", Str, "instruction for the goodbye to a silent caller"),
    key("consultation", "anketa_fields", Fields, "the anketa fields, as a TOML array of tables"),
    key("storage", "url", Str, "database URL: empty (sqlite:// + storage.path), sqlite://PATH or postgres://USER:PASSWORD@HOST/DB")
        .masked()
        .legacy("CONSULTANT_DATABASE_URL"),
    key("storage", "path", Path, "the SQLite database (when storage.url is empty)").legacy("CONSULTANT_DB_PATH"),
    key("storage", "synchronous", Kind::Choice(SYNCHRONOUS), "SQLite durability: normal or full"),
    key("storage", "lease_secs", U64, "a worker's claim on its open sessions lasts this long without renewal, seconds"),
    key("storage", "worker_id", Str, "this worker's name as session owner (empty: <hostname>-<pid>-<random>)"),
    key("console", "enabled", Bool, "serve the remote debug console"),
    key("console", "listen", Str, "console address (non-loopback needs TLS)"),
    key("console", "token", Str, "read-only console token (empty: generated into token_file)").secret(),
    key("console", "operator_token", Str, "operator console token (empty: generated into token_file)").secret(),
    key("console", "token_file", Path, "where generated console tokens are kept"),
    key("console", "tls_cert", Path, "console TLS certificate (PEM)").optional(),
    key("console", "tls_key", Path, "console TLS private key (PEM)").optional(),
    key("console", "max_clients", U64, "concurrent console clients"),
    key("web", "listen", Str, "address of the caller page (consultant web)"),
    key("web", "livekit_client_js", Path, "the livekit-client browser bundle (npm ci in web/)"),
    key("web", "livekit_url", Str, "the LiveKit URL as the browser reaches it (default livekit.url)").optional(),
    key("web", "starts_per_minute", U32, "consultations one address may start per minute"),
    key("logging", "level", Str, "log level or filter (RUST_LOG overrides it)"),
    key("logging", "dir", Path, "log directory"),
    key("logging", "file", Path, "log file name in the directory"),
    key("logging", "max_file_bytes", U64, "log file size before rotation, bytes"),
    key("logging", "max_files", U64, "rotated log files kept"),
    key("logging", "format", Kind::Choice(LOG_FORMATS), "log file format: text or json (one object per line)"),
    key("logging", "json", Bool, "deprecated: true means format = \"json\"").optional(),
    key("tls", "ca_file", Path, "extra CA certificates (PEM) trusted by every outgoing TLS connection").optional(),
];

/// Variables read outside the schema.
pub const OTHER_ENV: &[(&str, &str)] = &[
    ("RUST_LOG", "log filter; overrides logging.level (e.g. consultant=debug,info)"),
    ("NO_COLOR", "any value: no colour on the console even on a terminal"),
    ("SSL_CERT_FILE", "a PEM file of CA certificates trusted instead of the system store (tls.ca_file adds to it)"),
    ("SSL_CERT_DIR", "directories of CA certificates trusted instead of the system store (':'-separated)"),
];

pub fn sections() -> impl Iterator<Item = &'static str> {
    let mut seen: Vec<&'static str> = Vec::new();
    for k in KEYS {
        if !seen.contains(&k.section) {
            seen.push(k.section);
        }
    }
    seen.into_iter()
}

pub fn find(section: &str, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The candidate closest to `word`, if it is close enough to be a typo of it.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_default_in_config_toml_unless_optional() {
        let defaults: toml::Table = toml::from_str(DEFAULTS_TOML).expect("config.toml parses");
        for k in KEYS {
            let present = defaults.get(k.section).and_then(|s| s.get(k.name)).is_some();
            assert_eq!(present, !k.optional, "{}: in config.toml iff not optional", k.path());
        }
        for (section, table) in &defaults {
            for name in table.as_table().expect("sections are tables").keys() {
                assert!(find(section, name).is_some(), "config.toml has {section}.{name}, the schema does not");
            }
        }
    }

    #[test]
    fn typos_find_the_closest_key() {
        assert_eq!(edit_distance("voise", "voice"), 1);
        assert_eq!(closest("voise", ["voice", "model", "flavour"]), Some("voice"));
        assert_eq!(closest("flavor", ["voice", "flavour"]), Some("flavour"));
        assert_eq!(closest("zzzzzz", ["voice", "flavour"]), None);
    }
}
