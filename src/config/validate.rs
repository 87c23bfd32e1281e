//! Checks across values (ranges, addresses, URLs, what the realtime flavour accepts), each
//! naming where the value came from. All of them run, so `consultant config --check` lists
//! every problem at once.

use std::net::SocketAddr;

use super::layers::{Layered, Problem};
use super::Config;
use crate::realtime::RealtimeConfig;

struct Checks<'a> {
    layered: &'a Layered,
    problems: Vec<Problem>,
}

impl Checks<'_> {
    fn bad(&mut self, key: &str, problem: impl Into<String>, accepted: impl Into<String>) {
        // A value the layers already refused was replaced by its default: say it once.
        if self.layered.problems.iter().any(|p| matches!(p, Problem::Invalid { key: k, .. } if k == key)) {
            return;
        }
        self.problems.push(Problem::Invalid { key: key.to_owned(), origin: self.layered.origin(key), problem: problem.into(), accepted: accepted.into() });
    }

    fn at_least_one(&mut self, key: &str, value: u64, unit: &str) {
        if value == 0 {
            self.bad(key, "is 0", format!("a whole number of {unit}, at least 1"));
        }
    }

    fn url(&mut self, key: &str, url: &str) {
        let accepted = "an https:// or wss:// URL (http:// or ws:// for local tests)";
        match url::Url::parse(url.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https" | "ws" | "wss") && u.host_str().is_some_and(|h| !h.is_empty()) => {}
            Ok(u) if matches!(u.scheme(), "http" | "https" | "ws" | "wss") => self.bad(key, format!("`{url}` has no host"), accepted),
            Ok(u) => self.bad(key, format!("scheme `{}` is not supported", u.scheme()), accepted),
            Err(e) => self.bad(key, format!("`{url}` is not a URL ({e})"), accepted),
        }
    }

    fn address(&mut self, key: &str, addr: &str) -> Option<SocketAddr> {
        match addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                self.bad(key, format!("`{addr}` is not an address ({e})"), "IP:port, e.g. 127.0.0.1:7700");
                None
            }
        }
    }
}

pub fn check(config: &Config, layered: &Layered) -> Vec<Problem> {
    let mut c = Checks { layered, problems: Vec::new() };
    let lk = &config.livekit;
    c.url("livekit.url", &lk.url);
    if !(lk.load_threshold > 0.0 && lk.load_threshold <= 1.0) {
        c.bad("livekit.load_threshold", format!("{} is outside (0, 1]", lk.load_threshold), "a number above 0.0, at most 1.0");
    }
    c.at_least_one("livekit.capacity", lk.capacity as u64, "consultations");
    c.address("livekit.health_listen", &lk.health_listen);

    let rt = &config.realtime;
    if !rt.endpoint.trim().is_empty() {
        c.url("realtime.endpoint", &rt.endpoint);
    }
    if !(0.0..=1.0).contains(&rt.vad_threshold) {
        c.bad("realtime.vad_threshold", format!("{} is outside the range", rt.vad_threshold), "a number between 0.0 and 1.0");
    }
    c.at_least_one("realtime.vad_silence_duration_ms", rt.vad_silence_duration_ms.into(), "ms (typical: 500)");
    c.at_least_one("realtime.connect_attempts", rt.connect_attempts.into(), "attempts");
    for (key, value) in [("realtime.deployment", &rt.deployment), ("realtime.model", &rt.model), ("realtime.voice", &rt.voice), ("realtime.transcription_model", &rt.transcription_model)] {
        if value.trim().is_empty() {
            c.bad(key, "is empty", "a name, see config.toml");
        }
    }
    let realtime = RealtimeConfig::from_section(rt, &config.consultation.language);
    for (key, reason) in realtime.unsupported() {
        c.bad(key, reason, "a setting the chosen realtime.flavour accepts");
    }

    let ds = &config.deepseek;
    c.url("deepseek.base_url", &ds.base_url);
    if ds.model.trim().is_empty() {
        c.bad("deepseek.model", "is empty", "a model name, e.g. deepseek-chat");
    }
    c.at_least_one("deepseek.max_tokens", ds.max_tokens.into(), "tokens");
    c.at_least_one("deepseek.timeout_secs", ds.timeout_secs, "seconds");
    c.at_least_one("deepseek.attempts", ds.attempts.into(), "attempts (1 = no retries)");
    if !(0.0..=2.0).contains(&ds.temperature) {
        c.bad("deepseek.temperature", format!("{} is outside the range", ds.temperature), "a number between 0.0 and 2.0");
    }

    let cs = &config.consultation;
    c.at_least_one("consultation.extraction_interval", cs.extraction_interval as u64, "messages");
    c.at_least_one("consultation.max_duration_secs", cs.max_duration_secs, "seconds");
    if cs.max_duration_secs > 0 && cs.wrapup_before_secs >= cs.max_duration_secs {
        let problem = format!("{} s is not shorter than consultation.max_duration_secs ({} s)", cs.wrapup_before_secs, cs.max_duration_secs);
        c.bad("consultation.wrapup_before_secs", problem, "fewer seconds than max_duration_secs");
    }
    if cs.anketa_fields.is_empty() {
        c.bad("consultation.anketa_fields", "is empty", "at least one field");
    }
    let mut names = std::collections::HashSet::new();
    for f in &cs.anketa_fields {
        if f.name.trim().is_empty() || !names.insert(f.name.as_str()) {
            c.bad("consultation.anketa_fields", format!("field name `{}` is empty or repeated", f.name), "unique, non-empty field names");
        }
    }

    if tracing_subscriber::EnvFilter::try_new(&config.logging.level).is_err() {
        c.bad("logging.level", format!("`{}` is not a level or filter", config.logging.level), "error, warn, info, debug, trace, or a filter like consultant=debug,info");
    }
    c.at_least_one("logging.max_files", config.logging.max_files as u64, "files");
    if config.logging.max_file_bytes < 4096 {
        c.bad("logging.max_file_bytes", format!("{} is below 4096", config.logging.max_file_bytes), "a whole number of bytes, at least 4096");
    }

    let storage = &config.storage;
    if !storage.url.is_empty() {
        // The message carries the masked URL only.
        if let Err(e) = crate::store::DatabaseUrl::parse(storage.url.expose()) {
            c.bad("storage.url", e, crate::store::url::ACCEPTED);
        }
    }
    c.at_least_one("storage.lease_secs", storage.lease_secs, "seconds (default 10)");

    let console = &config.console;
    if console.tls_cert.is_some() != console.tls_key.is_some() {
        let key = if console.tls_cert.is_some() { "console.tls_key" } else { "console.tls_cert" };
        c.bad(key, "is missing while the other half of the pair is set", "both console.tls_cert and console.tls_key, or neither");
    }
    if console.enabled {
        c.at_least_one("console.max_clients", console.max_clients as u64, "clients");
        let tls = console.tls_cert.is_some() && console.tls_key.is_some();
        if let Some(addr) = c.address("console.listen", &console.listen) {
            if !addr.ip().is_loopback() && !tls {
                c.bad(
                    "console.listen",
                    format!("binding the console to the non-loopback address {addr} needs TLS"),
                    "a loopback address (127.0.0.1:7700), or console.tls_cert and console.tls_key set",
                );
            }
        }
    }
    for file in config.tls.ca_files() {
        if let Err(e) = crate::tls::read_ca_file(file) {
            c.bad(file.origin, format!("the file {} {}", e.path.display(), e.problem), "a readable PEM file of CA certificates");
        }
    }
    c.problems
}
