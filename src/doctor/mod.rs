//! `consultant doctor`: every dependency of the worker checked in turn with the configured
//! settings, one verdict per line (`ok   name: ...` or `FAIL name: ...` followed by hints),
//! each check bounded by a timeout so the doctor never hangs.
//!
//! The network checks ([`services`]) go through the worker's own clients, so they fail the
//! way the worker would; the local ones ([`local`]) look without changing anything.

pub mod local;
pub mod services;

use std::future::Future;
use std::time::Duration;

use crate::config::{Config, Resolved};
use crate::secret::Secret;

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do about it (the Python module's troubleshooting where it applies).
    pub hints: Vec<String>,
}

impl Verdict {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self { check, ok: true, detail: detail.into(), hints: Vec::new() }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>) -> Self {
        Self { check, ok: false, detail: detail.into(), hints: Vec::new() }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    /// `ok   name: detail`, or `FAIL name: detail` and one indented line per hint; every
    /// configured secret replaced by `***` (servers echo what they were sent).
    pub fn render(&self, secrets: &[Secret]) -> String {
        let mut text = format!("{:<4} {}: {}", if self.ok { "ok" } else { "FAIL" }, self.check, self.detail);
        for hint in &self.hints {
            text.push_str("\n     hint: ");
            text.push_str(hint);
        }
        redact(text, secrets)
    }
}

/// Short secrets are left alone: "secret" would also hit `livekit.api_secret` in a hint,
/// and real keys are long.
const REDACT_MIN_LEN: usize = 8;

fn redact(mut text: String, secrets: &[Secret]) -> String {
    for secret in secrets {
        let value = secret.expose().trim();
        if value.len() >= REDACT_MIN_LEN {
            text = text.replace(value, "***");
        }
    }
    text
}

/// Every secret value the configuration holds.
pub fn secrets(config: &Config) -> Vec<Secret> {
    vec![
        config.livekit.api_key.clone(),
        config.livekit.api_secret.clone(),
        config.realtime.api_key.clone(),
        config.deepseek.api_key.clone(),
        config.console.token.clone(),
        config.console.operator_token.clone(),
    ]
}

/// The configuration itself: which file, and every problem `consultant config --check` names.
pub fn config_verdict(resolved: &Resolved) -> Verdict {
    let source = match &resolved.file {
        Some(path) => format!("file {} over the built-in defaults, then the environment", path.display()),
        None => "no file (built-in defaults, then the environment)".to_owned(),
    };
    if resolved.problems.is_empty() {
        return Verdict::ok("config", source);
    }
    let mut verdict = Verdict::fail("config", format!("{} problem(s) in the configuration ({source})", resolved.problems.len()));
    for problem in &resolved.problems {
        verdict = verdict.hint(problem.to_string());
    }
    verdict.hint("`consultant config` shows every value and where it came from")
}

/// Runs `check`; past `timeout` it is a failure that says so (and the check is dropped).
pub async fn within(check: &'static str, timeout: Duration, what: &str, run: impl Future<Output = Verdict>) -> Verdict {
    match tokio::time::timeout(timeout, run).await {
        Ok(verdict) => verdict,
        Err(_) => Verdict::fail(check, format!("{what}: no answer within {} s", timeout.as_secs_f64()))
            .hint("the service or the network is too slow or silently dropping packets; raise --timeout to wait longer"),
    }
}

/// Blocking file-system work off the runtime, bounded like the network checks (a hung
/// network mount must not hang the doctor).
pub async fn blocking(check: &'static str, timeout: Duration, what: &str, run: impl FnOnce() -> Verdict + Send + 'static) -> Verdict {
    within(check, timeout, what, async move {
        tokio::task::spawn_blocking(run).await.unwrap_or_else(|e| Verdict::fail(check, format!("{what}: the check itself failed: {e}")))
    })
    .await
}

/// The checks after the configuration, in order; `each` sees every verdict as it comes.
pub async fn run_checks(config: &Config, timeout: Duration, mut each: impl FnMut(&Verdict)) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    let mut record = |verdict: Verdict| {
        each(&verdict);
        verdicts.push(verdict);
    };
    // The worker's own trust policy; an unusable tls.ca_file is already the config check's FAIL.
    let tls = crate::tls::ClientTls::from_config(&config.tls).unwrap_or_default();
    record(services::livekit(config, &tls, timeout).await);
    record(services::agent_name(config));
    record(services::realtime(config, &tls, timeout).await);
    record(services::deepseek(config, &tls, timeout).await);
    let storage = config.storage.clone();
    record(blocking("storage", timeout, "checking the database path", move || local::storage(&storage)).await);
    let console = config.console.clone();
    record(blocking("console", timeout, "checking the console address and tokens", move || local::console(&console)).await);
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_render_one_line_each_with_hints_below_and_secrets_hidden() {
        let key = Secret::new("sk-very-secret-key-1234");
        let ok = Verdict::ok("livekit", "reachable");
        assert_eq!(ok.render(&[]), "ok   livekit: reachable");
        let fail = Verdict::fail("deepseek", "server said: bad key sk-very-secret-key-1234").hint("check DEEPSEEK_API_KEY");
        let text = fail.render(&[key, Secret::new("secret")]);
        assert_eq!(text, "FAIL deepseek: server said: bad key ***\n     hint: check DEEPSEEK_API_KEY");
    }

    #[tokio::test]
    async fn a_check_past_its_timeout_fails_and_says_so() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Verdict::ok("azure", "never")
        };
        let verdict = within("azure", Duration::from_millis(50), "realtime handshake", slow).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.detail, "realtime handshake: no answer within 0.05 s");
    }
}
