//! Configuration of the realtime client: which provider flavour, where, with which key, and
//! how the session is configured (voice, server VAD, transcription). `src/config.rs` builds it
//! from config.toml and the environment; it is self-contained so tests build it directly.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::secret::Secret;

/// Which realtime service and protocol generation to speak: `realtime.flavour` of config.toml
/// (and `CONSULTANT_REALTIME_FLAVOUR`). Parsed, displayed and deserialized under one set of
/// names, the ones config.toml uses, so advice naming a flavour can be pasted back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RealtimeFlavour {
    /// `azure-preview`: `/openai/realtime?api-version=&deployment=`, flat session, beta names.
    AzurePreview,
    /// `azure-ga`: `/openai/v1/realtime?model=<deployment>`, `session.type`, GA names.
    AzureGa,
    /// `openai`: OpenAI direct, GA protocol (no OpenAI-Beta header).
    OpenAi,
    /// OpenAI direct, beta protocol (`OpenAI-Beta: realtime=v1`). Not configurable (tests
    /// reach the beta protocol through it); displayed as `openai-beta`.
    OpenAiBeta,
}

/// A `realtime.flavour` value that is none of [`RealtimeFlavour::CONFIGURABLE`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown realtime flavour `{0}`; realtime.flavour is one of: azure-preview, azure-ga, openai")]
pub struct UnknownFlavour(pub String);

/// The two protocol generations: event names and session shape differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Beta,
    Ga,
}

impl RealtimeFlavour {
    pub fn protocol(self) -> Protocol {
        match self {
            RealtimeFlavour::AzurePreview | RealtimeFlavour::OpenAiBeta => Protocol::Beta,
            RealtimeFlavour::AzureGa | RealtimeFlavour::OpenAi => Protocol::Ga,
        }
    }

    pub fn is_azure(self) -> bool {
        matches!(self, RealtimeFlavour::AzurePreview | RealtimeFlavour::AzureGa)
    }

    /// The flavours config.toml accepts, in the order its comment lists them.
    pub const CONFIGURABLE: [RealtimeFlavour; 3] = [RealtimeFlavour::AzurePreview, RealtimeFlavour::AzureGa, RealtimeFlavour::OpenAi];

    /// Their names, for the configuration schema.
    pub const CONFIGURABLE_NAMES: &'static [&'static str] = &["azure-preview", "azure-ga", "openai"];

    /// The name config.toml uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RealtimeFlavour::AzurePreview => "azure-preview",
            RealtimeFlavour::AzureGa => "azure-ga",
            RealtimeFlavour::OpenAi => "openai",
            RealtimeFlavour::OpenAiBeta => "openai-beta",
        }
    }

    /// How to select this flavour, as an operator would write it in config.toml.
    pub fn setting(self) -> String {
        format!("realtime.flavour = \"{self}\"")
    }
}

impl fmt::Display for RealtimeFlavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RealtimeFlavour {
    type Err = UnknownFlavour;

    /// Exactly the names config.toml accepts (surrounding blanks aside).
    fn from_str(raw: &str) -> Result<Self, UnknownFlavour> {
        let name = raw.trim();
        RealtimeFlavour::CONFIGURABLE.into_iter().find(|f| f.as_str() == name).ok_or_else(|| UnknownFlavour(raw.to_owned()))
    }
}

impl TryFrom<String> for RealtimeFlavour {
    type Error = UnknownFlavour;

    fn try_from(raw: String) -> Result<Self, UnknownFlavour> {
        raw.parse()
    }
}

/// A setting spelled as one of a few names (config.toml's words).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}; use one of: {}", .accepted.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
    pub accepted: &'static [&'static str],
}

/// An enum parsed, displayed and deserialized under config.toml's names.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(raw: &str) -> Result<Self, UnknownName> {
                match raw.trim() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { what: $what, value: raw.to_owned(), accepted: Self::NAMES }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownName;

            fn try_from(raw: String) -> Result<Self, UnknownName> {
                raw.parse()
            }
        }
    };
}

named!(
    /// `realtime.turn_detection`: how the service decides the caller has finished.
    TurnDetection, "turn detection", {
        /// Silence-based (threshold, padding, silence duration).
        ServerVad = "server_vad",
        /// Model-based end-of-turn (GA protocol only here).
        SemanticVad = "semantic_vad",
    }
);

named!(
    /// `realtime.vad_eagerness` (semantic_vad): how soon the model takes the turn.
    Eagerness, "semantic_vad eagerness", { Auto = "auto", Low = "low", Medium = "medium", High = "high" }
);

named!(
    /// `realtime.noise_reduction`: input noise filtering before VAD and the model.
    NoiseReduction, "noise reduction", {
        Off = "off",
        /// Close-talking microphones (headsets).
        NearField = "near_field",
        /// Laptop or conference-room microphones.
        FarField = "far_field",
    }
);

/// Server VAD parameters (`turn_detection` of type `server_vad`).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VadSettings {
    /// Activation threshold 0.0-1.0; higher needs louder speech.
    pub threshold: f32,
    /// Audio kept before detected speech, ms.
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn, ms.
    pub silence_duration_ms: u32,
}

impl Default for VadSettings {
    fn default() -> Self {
        Self { threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 }
    }
}

pub const DEFAULT_AZURE_PREVIEW_API_VERSION: &str = "2025-04-01-preview";
pub const DEFAULT_OPENAI_ENDPOINT: &str = "https://api.openai.com";

/// Everything the realtime client needs.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    pub flavour: RealtimeFlavour,
    /// `https://<resource>.openai.azure.com/` (Azure) or `https://api.openai.com` (OpenAI);
    /// `http://` maps to `ws://` (loopback fakes).
    pub endpoint: String,
    pub api_key: Secret,
    /// Azure deployment name (AZURE_OPENAI_DEPLOYMENT_NAME).
    pub deployment: String,
    /// Azure preview only (AZURE_OPENAI_REALTIME_API_VERSION).
    pub api_version: String,
    /// OpenAI direct only: the model name.
    pub model: String,
    pub voice: String,
    pub vad: VadSettings,
    pub turn_detection: TurnDetection,
    /// semantic_vad only.
    pub eagerness: Eagerness,
    /// server_vad on the GA protocol: a response is triggered after this much caller silence; 0 = off.
    pub idle_timeout_ms: u32,
    /// GA protocol only.
    pub noise_reduction: NoiseReduction,
    /// Caller transcription model (on Azure: the name of a transcription deployment).
    pub transcription_model: String,
    /// Transcription language hint (ISO-639-1), e.g. "ru".
    pub transcription_language: Option<String>,
    /// Sampling temperature; the beta protocol only (GA has none).
    pub temperature: Option<f64>,
}

impl RealtimeConfig {
    /// Defaults for a flavour; endpoint, key and deployment/model still have to be set.
    pub fn new(flavour: RealtimeFlavour, endpoint: impl Into<String>, api_key: Secret) -> Self {
        Self {
            flavour,
            endpoint: endpoint.into(),
            api_key,
            deployment: "gpt-realtime".into(),
            api_version: DEFAULT_AZURE_PREVIEW_API_VERSION.into(),
            model: "gpt-realtime".into(),
            voice: "alloy".into(),
            vad: VadSettings::default(),
            turn_detection: TurnDetection::ServerVad,
            eagerness: Eagerness::Auto,
            idle_timeout_ms: 0,
            noise_reduction: NoiseReduction::Off,
            transcription_model: "whisper-1".into(),
            transcription_language: Some("ru".into()),
            temperature: None,
        }
    }

    /// From the `[realtime]` section of config.toml (already env-overridden and validated)
    /// and the consultation language.
    pub fn from_section(section: &crate::config::RealtimeSection, language: &str) -> Self {
        let flavour = section.flavour;
        let endpoint = if section.endpoint.trim().is_empty() && !flavour.is_azure() { DEFAULT_OPENAI_ENDPOINT.to_owned() } else { section.endpoint.clone() };
        let language = language.trim();
        Self {
            flavour,
            endpoint,
            api_key: section.api_key.clone(),
            deployment: section.deployment.clone(),
            api_version: section.api_version.clone(),
            model: section.model.clone(),
            voice: section.voice.clone(),
            vad: VadSettings {
                threshold: section.vad_threshold as f32,
                prefix_padding_ms: section.vad_prefix_padding_ms,
                silence_duration_ms: section.vad_silence_duration_ms,
            },
            turn_detection: section.turn_detection,
            eagerness: section.vad_eagerness,
            idle_timeout_ms: section.idle_timeout_ms,
            noise_reduction: section.noise_reduction,
            transcription_model: section.transcription_model.clone(),
            transcription_language: (!language.is_empty()).then(|| language.to_owned()),
            temperature: section.temperature,
        }
    }

    /// The model/deployment name as the URL carries it.
    pub fn model_name(&self) -> &str {
        if self.flavour.is_azure() {
            &self.deployment
        } else {
            &self.model
        }
    }

    /// Checks every value and names the setting that is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        let endpoint = url::Url::parse(self.endpoint.trim())
            .map_err(|e| format!("realtime endpoint {:?} is not a URL ({e}); use https://<resource>.openai.azure.com/", self.endpoint))?;
        if !matches!(endpoint.scheme(), "https" | "http" | "wss" | "ws") {
            return Err(format!("realtime endpoint {:?} must start with https:// (or http:// for a local test server)", self.endpoint));
        }
        if endpoint.host_str().is_none_or(str::is_empty) {
            return Err(format!("realtime endpoint {:?} has no host", self.endpoint));
        }
        if self.api_key.is_empty() {
            // AZURE_OPENAI_API_KEY is read for every flavour (the Python module's name).
            return Err("the realtime API key is empty; set AZURE_OPENAI_API_KEY (or CONSULTANT_REALTIME_API_KEY)".into());
        }
        if self.flavour.is_azure() && self.deployment.trim().is_empty() {
            return Err("the Azure realtime deployment name is empty; set AZURE_OPENAI_DEPLOYMENT_NAME".into());
        }
        if !self.flavour.is_azure() && self.model.trim().is_empty() {
            return Err("the OpenAI realtime model is empty; set realtime.model (e.g. gpt-realtime)".into());
        }
        if self.flavour == RealtimeFlavour::AzurePreview && self.api_version.trim().is_empty() {
            return Err(format!(
                "the Azure preview realtime api-version is empty; set realtime.api_version or AZURE_OPENAI_REALTIME_API_VERSION (e.g. {DEFAULT_AZURE_PREVIEW_API_VERSION}), or use {}",
                RealtimeFlavour::AzureGa.setting()
            ));
        }
        if !(0.0..=1.0).contains(&self.vad.threshold) {
            return Err(format!("realtime VAD threshold {} is outside 0.0-1.0", self.vad.threshold));
        }
        if self.vad.silence_duration_ms == 0 {
            return Err("realtime VAD silence_duration_ms must be above 0 (typical: 500)".into());
        }
        if self.voice.trim().is_empty() {
            return Err("the realtime voice is empty; use e.g. alloy".into());
        }
        if self.transcription_model.trim().is_empty() {
            return Err("the realtime transcription model is empty; use whisper-1".into());
        }
        match self.unsupported().into_iter().next() {
            Some((key, reason)) => Err(format!("{key}: {reason}")),
            None => Ok(()),
        }
    }

    /// Settings this flavour (or this turn detection) does not accept, as (key, reason): they
    /// are refused at start-up rather than sent and rejected mid-call.
    pub fn unsupported(&self) -> Vec<(&'static str, String)> {
        let flavour = self.flavour;
        let mut out = Vec::new();
        let ga_only = |what: &str| {
            format!("{what} needs the GA protocol, and realtime.flavour = \"{flavour}\" speaks the preview one; use {} (or \"openai\")", RealtimeFlavour::AzureGa.setting())
        };
        if flavour.protocol() == Protocol::Beta {
            if self.turn_detection == TurnDetection::SemanticVad {
                out.push(("realtime.turn_detection", ga_only("semantic_vad")));
            }
            if self.noise_reduction != NoiseReduction::Off {
                out.push(("realtime.noise_reduction", ga_only("input noise reduction")));
            }
            if self.idle_timeout_ms > 0 {
                out.push(("realtime.idle_timeout_ms", ga_only("idle_timeout_ms")));
            }
        } else if self.temperature.is_some() {
            out.push(("realtime.temperature", format!("the GA protocol (realtime.flavour = \"{flavour}\") has no session temperature; remove realtime.temperature")));
        }
        if self.turn_detection == TurnDetection::SemanticVad && self.idle_timeout_ms > 0 {
            out.push(("realtime.idle_timeout_ms", "applies to server_vad only; set it to 0 with realtime.turn_detection = \"semantic_vad\"".into()));
        }
        if self.turn_detection == TurnDetection::ServerVad && self.eagerness != Eagerness::Auto {
            out.push(("realtime.vad_eagerness", "applies to semantic_vad only; set realtime.turn_detection = \"semantic_vad\" or leave it \"auto\"".into()));
        }
        out
    }

    /// The WebSocket URL of this flavour (never contains the key).
    pub fn websocket_url(&self) -> Result<url::Url, String> {
        self.validate()?;
        let mut url = url::Url::parse(self.endpoint.trim()).map_err(|e| e.to_string())?;
        let scheme = match url.scheme() {
            "https" | "wss" => "wss",
            _ => "ws",
        };
        url.set_scheme(scheme).map_err(|_| format!("cannot use scheme {scheme} with {:?}", self.endpoint))?;
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_query(None);
        url.set_fragment(None);
        match self.flavour {
            RealtimeFlavour::AzurePreview => {
                url.set_path(&format!("{base}/openai/realtime"));
                url.query_pairs_mut().append_pair("api-version", self.api_version.trim()).append_pair("deployment", self.deployment.trim());
            }
            RealtimeFlavour::AzureGa => {
                url.set_path(&format!("{base}/openai/v1/realtime"));
                url.query_pairs_mut().append_pair("model", self.deployment.trim());
            }
            RealtimeFlavour::OpenAi | RealtimeFlavour::OpenAiBeta => {
                let base = base.trim_end_matches("/v1");
                url.set_path(&format!("{base}/v1/realtime"));
                url.query_pairs_mut().append_pair("model", self.model.trim());
            }
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flavour: RealtimeFlavour, endpoint: &str) -> RealtimeConfig {
        let mut c = RealtimeConfig::new(flavour, endpoint, Secret::new("k"));
        c.deployment = "dep".into();
        c.api_version = "2025-04-01-preview".into();
        c.model = "gpt-realtime".into();
        c
    }

    #[test]
    fn urls_per_flavour() {
        let u = config(RealtimeFlavour::AzurePreview, "https://res.openai.azure.com/").websocket_url().unwrap();
        assert_eq!(u.as_str(), "wss://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=dep");
        let u = config(RealtimeFlavour::AzureGa, "https://res.openai.azure.com").websocket_url().unwrap();
        assert_eq!(u.as_str(), "wss://res.openai.azure.com/openai/v1/realtime?model=dep");
        let u = config(RealtimeFlavour::OpenAi, "https://api.openai.com/v1").websocket_url().unwrap();
        assert_eq!(u.as_str(), "wss://api.openai.com/v1/realtime?model=gpt-realtime");
        let u = config(RealtimeFlavour::AzureGa, "http://127.0.0.1:4000").websocket_url().unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:4000/openai/v1/realtime?model=dep");
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = config(RealtimeFlavour::AzurePreview, "res.openai.azure.com");
        assert!(c.validate().unwrap_err().contains("endpoint"));
        c.endpoint = "https://res.openai.azure.com".into();
        c.api_version.clear();
        assert!(c.validate().unwrap_err().contains("AZURE_OPENAI_REALTIME_API_VERSION"));
        c.api_version = "v".into();
        c.api_key = Secret::new("");
        assert!(c.validate().unwrap_err().contains("AZURE_OPENAI_API_KEY"));
        assert!(!format!("{:?}", config(RealtimeFlavour::AzureGa, "https://x").api_key).contains('k'));
    }

    #[test]
    fn flavours_round_trip_under_config_names() {
        for flavour in RealtimeFlavour::CONFIGURABLE {
            let name = flavour.to_string();
            assert_eq!(name.parse::<RealtimeFlavour>(), Ok(flavour));
            let section: std::collections::HashMap<String, RealtimeFlavour> = toml::from_str(&format!("flavour = \"{name}\"")).unwrap();
            assert_eq!(section["flavour"], flavour, "{name} deserializes as it displays");
        }
        assert_eq!(RealtimeFlavour::CONFIGURABLE.map(|f| f.as_str()), ["azure-preview", "azure-ga", "openai"]);
        assert_eq!(RealtimeFlavour::CONFIGURABLE.map(|f| f.as_str()), RealtimeFlavour::CONFIGURABLE_NAMES);
        // The beta protocol is for tests only: its name is not a setting.
        assert!("openai-beta".parse::<RealtimeFlavour>().is_err());
        for old in ["azure_ga", "azure_preview", "azure", "Azure-GA"] {
            let err = old.parse::<RealtimeFlavour>().unwrap_err();
            assert!(err.to_string().contains("azure-preview, azure-ga, openai"), "{err}");
        }
    }
}
