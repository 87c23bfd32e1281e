use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::*;

const SHIPPED: &str = include_str!("../../config.toml");

fn lookup(env: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("config.toml"), lookup(env))
}

fn resolved(text: Option<&str>, env: &[(&str, &str)]) -> Resolved {
    let env = lookup(env);
    let none = HashSet::new();
    resolve(text.map(|t| (PathBuf::from("site.toml"), t)), &Env { lookup: &env, from_dotenv: &none }).unwrap()
}

fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    resolved(Some(text), env).problems.iter().map(ToString::to_string).collect()
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

#[test]
fn an_unusable_tls_ca_file_is_a_config_error_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let err = load(SHIPPED, &[("CONSULTANT_TLS_CA_FILE", missing.to_str().unwrap())]).unwrap_err().to_string();
    assert!(err.contains("tls.ca_file") && err.contains("CONSULTANT_TLS_CA_FILE") && err.contains("no-such-ca.pem") && err.contains("cannot be read"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let text = format!("[tls]\nca_file = {:?}\n", empty.to_str().unwrap());
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("tls.ca_file") && err.contains("empty.pem") && err.contains("is empty"), "{err}");
    assert_eq!(load(SHIPPED, &[]).unwrap().tls.ca_file, None, "no CA file by default");
}

#[test]
fn a_file_may_hold_any_subset_of_keys() {
    let c = load("[storage]\npath = \"elsewhere.db\"\n", &[]).unwrap();
    let d = Config::from_env(|_| None).unwrap();
    assert_eq!(c.storage.path, PathBuf::from("elsewhere.db"));
    assert_eq!((c.deepseek.base_url.as_str(), c.livekit.capacity), (d.deepseek.base_url.as_str(), d.livekit.capacity));
    assert!(load("", &[]).is_ok(), "an empty file is the defaults");
    let r = resolved(Some("[realtime]\nvoice = \"marin\"\n"), &[]);
    assert_eq!(r.layered.origin("realtime.voice"), Origin::File(PathBuf::from("site.toml")));
    assert_eq!(r.layered.origin("realtime.model"), Origin::Default);
}

#[test]
fn defaults_are_the_ones_azure_offers_for_ga() {
    let c = Config::from_env(|_| None).unwrap();
    assert_eq!(c.realtime.flavour, RealtimeFlavour::AzureGa);
    assert_eq!((c.realtime.deployment.as_str(), c.realtime.model.as_str()), ("gpt-realtime", "gpt-realtime"));
    assert_eq!((c.realtime.voice.as_str(), c.realtime.transcription_model.as_str()), ("alloy", "whisper-1"));
    assert_eq!(c.realtime.turn_detection, TurnDetection::ServerVad);
    assert_eq!(c.logging.format(), LogFormat::Text);
}

#[test]
fn no_file_runs_from_defaults_and_the_environment() {
    let env = [("LIVEKIT_URL", "wss://x.livekit.cloud"), ("LIVEKIT_API_KEY", "k"), ("LIVEKIT_API_SECRET", "s"), ("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com/"), ("AZURE_OPENAI_API_KEY", "a"), ("DEEPSEEK_API_KEY", "d")];
    let c = Config::from_env(lookup(&env)).unwrap();
    assert_eq!(c.livekit.url, "wss://x.livekit.cloud");
    assert!(c.require(&[Service::LiveKit, Service::Realtime, Service::DeepSeek]).is_ok());
    assert!(resolved(None, &env).file.is_none());
}

#[test]
fn unknown_keys_and_sections_suggest_the_closest() {
    let p = problems("[realtime]\nvoise = \"x\"\n[realtme]\nflavour = \"openai\"\n[logging]\ndeployment = \"x\"\n", &[]);
    assert_eq!(p.len(), 3, "{p:#?}");
    let about = |what: &str| p.iter().find(|m| m.contains(what)).unwrap_or_else(|| panic!("{what} in {p:#?}")).clone();
    assert!(about("`realtime.voise`").contains("in site.toml; did you mean `realtime.voice`?"), "{p:#?}");
    assert!(about("`[realtme]`").contains("did you mean `[realtime]`?"), "{p:#?}");
    assert!(about("`logging.deployment`").contains("did you mean `realtime.deployment`?"), "{p:#?}");
}

#[test]
fn every_problem_is_listed_at_once_with_the_accepted_form() {
    let text = "[livekit]\ncapacity = \"eight\"\nload_threshold = 3\n[realtime]\nturn_detection = \"semantc_vad\"\n[storage]\nsynchronous = \"off\"\n";
    let p = problems(text, &[("CONSULTANT_CONSOLE_MAX_CLIENTS", "-1")]);
    assert_eq!(p.len(), 5, "{p:#?}");
    let all = p.join("\n");
    assert!(all.contains("`livekit.capacity` (from site.toml): got \"eight\" (string); accepted: a whole number"), "{all}");
    assert!(all.contains("`livekit.load_threshold`") && all.contains("(0, 1]"), "{all}");
    assert!(all.contains("did you mean `semantic_vad`?") && all.contains("one of: server_vad, semantic_vad"), "{all}");
    assert!(all.contains("storage.synchronous") && all.contains("one of: normal, full"), "{all}");
    assert!(all.contains("`console.max_clients` (from environment variable CONSULTANT_CONSOLE_MAX_CLIENTS): got -1 (integer)"), "{all}");
    let err = load(text, &[]).unwrap_err().to_string();
    assert!(err.starts_with("4 problems in the configuration:\n  - "), "{err}");
}

#[test]
fn consultant_variables_set_every_key_and_win_over_the_python_ones() {
    let fields = r#"[{ name = "who", description = "Имя", kind = "text" }]"#;
    let env = [
        ("CONSULTANT_LIVEKIT_CAPACITY", "3"),
        ("CONSULTANT_REALTIME_DEPLOYMENT", "ours"),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "python"),
        ("CONSULTANT_REALTIME_VAD_THRESHOLD", "1"),
        ("CONSULTANT_CONSOLE_ENABLED", "false"),
        ("CONSULTANT_LOGGING_FORMAT", "json"),
        ("CONSULTANT_CONSULTATION_ANKETA_FIELDS", fields),
        ("CONSULTANT_STORAGE_PATH", "new.db"),
        ("CONSULTANT_DB_PATH", "old.db"),
        ("CONSULTANT_REALTIME_TEMPERATURE", ""),
    ];
    let r = resolved(Some(SHIPPED), &env);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let c = r.config.as_ref().unwrap();
    assert_eq!((c.livekit.capacity, c.realtime.deployment.as_str(), c.realtime.vad_threshold), (3, "ours", 1.0));
    assert!(!c.console.enabled && c.logging.json);
    assert_eq!(c.consultation.anketa_fields.len(), 1);
    assert_eq!(c.storage.path, PathBuf::from("new.db"));
    assert_eq!(c.realtime.temperature, None, "empty variables are unset");
    assert_eq!(r.layered.shadowed["realtime.deployment"], ["AZURE_OPENAI_DEPLOYMENT_NAME"]);
    assert_eq!(r.layered.origin("realtime.deployment"), Origin::Env { var: "CONSULTANT_REALTIME_DEPLOYMENT".into(), dotenv: false });
    // Only the Python name: it still works.
    assert_eq!(load(SHIPPED, &[("AZURE_OPENAI_DEPLOYMENT_NAME", "python")]).unwrap().realtime.deployment, "python");
}

#[test]
fn the_report_shows_sources_and_never_secrets() {
    let r = resolved(Some("[livekit]\nagent_name = \"a1\"\n"), &[("LIVEKIT_API_SECRET", "s3cr3t-value"), ("CONSULTANT_CONSOLE_TOKEN", "tok-value")]);
    let text = report::render(&r);
    assert!(!text.contains("s3cr3t") && !text.contains("tok-value"), "{text}");
    let line = |key: &str| text.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap_or_else(|| panic!("{key} in {text}")).to_owned();
    assert!(line("livekit.api_secret").contains(" set  (env LIVEKIT_API_SECRET)"), "{}", line("livekit.api_secret"));
    assert!(line("livekit.api_key").contains(" unset  (default)"), "{}", line("livekit.api_key"));
    assert!(line("livekit.agent_name").contains("\"a1\"  (file site.toml)"), "{}", line("livekit.agent_name"));
    assert!(line("console.token").contains(" set  (env CONSULTANT_CONSOLE_TOKEN)"));
    assert!(line("consultation.anketa_fields").contains("7 fields: client_name"), "{}", line("consultation.anketa_fields"));
    assert!(line("realtime.temperature").contains("(unset)"));
    assert_eq!(text.lines().filter(|l| l.contains('.') && l.ends_with(')')).count(), schema::KEYS.len(), "{text}");
}

#[test]
fn flavour_specific_settings_are_refused_on_the_preview_protocol() {
    let ga = "[realtime]\nturn_detection = \"semantic_vad\"\nvad_eagerness = \"high\"\nnoise_reduction = \"near_field\"\n";
    let c = load(ga, &[]).unwrap();
    assert_eq!((c.realtime.turn_detection, c.realtime.vad_eagerness, c.realtime.noise_reduction), (TurnDetection::SemanticVad, Eagerness::High, NoiseReduction::NearField));
    let preview = format!("{ga}flavour = \"azure-preview\"\nidle_timeout_ms = 8000\n");
    let p = problems(&preview, &[]);
    assert_eq!(p.len(), 4, "{p:#?}");
    for key in ["realtime.turn_detection", "realtime.noise_reduction", "realtime.idle_timeout_ms"] {
        assert!(p.iter().any(|m| m.contains(key) && m.contains("GA protocol") && m.contains("realtime.flavour = \"azure-ga\"")), "{key}: {p:#?}");
    }
    let p = problems("[realtime]\ntemperature = 0.7\n", &[]);
    assert!(p.len() == 1 && p[0].contains("realtime.temperature") && p[0].contains("no session temperature"), "{p:#?}");
    assert!(load("[realtime]\nflavour = \"azure-preview\"\ntemperature = 0.7\n", &[]).is_ok());
}

#[test]
fn files_written_for_earlier_releases_still_load() {
    let old = SHIPPED.replace("format = \"text\"", "json = false").replace("flavour = \"azure-ga\"", "flavour = \"azure-preview\"");
    assert!(old.contains("json = false") && old.contains("azure-preview"));
    let c = load(&old, &[]).unwrap();
    assert_eq!((c.logging.format(), c.realtime.flavour), (LogFormat::Text, RealtimeFlavour::AzurePreview));
    assert_eq!(load("[logging]\njson = true\n", &[]).unwrap().logging.format(), LogFormat::Json);
}

#[test]
fn a_file_that_is_not_toml_is_one_clear_error() {
    let err = load("[livekit\nurl = ", &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }) && err.to_string().contains("config.toml"), "{err}");
    let err = read_file(Some(Path::new("/nonexistent/dir/site.toml"))).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/dir/site.toml") && err.contains("--config") && !err.contains('\n'), "{err}");
}

/// Names of environment variables the source reads directly.
fn variables_read_by(dir: &Path, out: &mut HashSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            variables_read_by(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for marker in ["env::var(\"", "env::var_os(\"", "env = \""] {
                for piece in text.split(marker).skip(1) {
                    let name: String = piece.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
                    if !name.is_empty() && piece[name.len()..].starts_with('"') {
                        out.insert(name);
                    }
                }
            }
        }
    }
}

#[test]
fn env_example_lists_every_variable_with_a_meaning() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    let lines: Vec<&str> = example.lines().collect();
    let mut wanted: HashSet<String> = schema::KEYS.iter().flat_map(|k| [Some(k.env()), k.legacy_env.map(str::to_owned)]).flatten().collect();
    wanted.extend(schema::OTHER_ENV.iter().map(|(v, _)| v.to_string()));
    let mut read = HashSet::new();
    variables_read_by(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut read);
    assert!(read.contains("RUST_LOG") && read.contains("NO_COLOR"), "the scan finds direct reads: {read:?}");
    wanted.extend(read);
    for var in &wanted {
        let at = lines.iter().position(|l| l.trim_start_matches("# ").starts_with(&format!("{var}="))).unwrap_or_else(|| panic!(".env.example lacks {var}"));
        let meaning = at.checked_sub(1).map(|i| lines[i]).unwrap_or_default();
        let is_meaning = meaning.starts_with("# ") && meaning[2..].split('=').next().is_some_and(|head| head.contains(' '));
        assert!(is_meaning, ".env.example: {var} needs a one-line meaning above it, got {meaning:?}");
    }
}
