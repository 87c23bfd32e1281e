//! The binary as operators run it: no file at all, a partial file, `consultant config` and
//! `consultant config --check`.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary in `dir` with only `env` (plus PATH) in its environment.
fn consultant(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_consultant"));
    cmd.args(args).current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn without_any_file_the_defaults_and_the_environment_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let out = consultant(dir.path(), &["sessions", "list", "--json"], &[("CONSULTANT_DB_PATH", db.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(db.exists(), "the database the environment named was used");
    // A named file must exist: one sentence naming it.
    let out = consultant(dir.path(), &["--config", "nowhere.toml", "sessions", "list"], &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("nowhere.toml") && err.contains("does not exist") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn config_prints_sources_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "[livekit]\nagent_name = \"site-agent\"\n").unwrap();
    std::fs::write(dir.path().join(".env"), "DEEPSEEK_API_KEY=sk-from-dotenv-123\n").unwrap();
    let env = [("LIVEKIT_API_SECRET", "lk-secret-456"), ("CONSULTANT_LIVEKIT_CAPACITY", "2"), ("AZURE_OPENAI_DEPLOYMENT_NAME", "dep-a"), ("CONSULTANT_REALTIME_DEPLOYMENT", "dep-b")];
    let out = consultant(dir.path(), &["config"], &env);
    let report = text(&out.stdout);
    assert!(!report.contains("sk-from-dotenv") && !report.contains("lk-secret"), "{report}");
    let line = |key: &str| report.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap_or_else(|| panic!("{key}: {report}")).to_owned();
    assert!(line("livekit.agent_name").contains("\"site-agent\"  (file config.toml)"), "{report}");
    assert!(line("livekit.capacity").contains("2  (env CONSULTANT_LIVEKIT_CAPACITY)"), "{report}");
    assert!(line("livekit.api_secret").contains("set  (env LIVEKIT_API_SECRET)"), "{report}");
    assert!(line("deepseek.api_key").contains("set  (env DEEPSEEK_API_KEY (.env))"), "{report}");
    assert!(line("realtime.deployment").contains("\"dep-b\"") && line("realtime.deployment").contains("ignored: AZURE_OPENAI_DEPLOYMENT_NAME"), "{report}");
    assert!(line("realtime.flavour").contains("\"azure-ga\"  (default)"), "{report}");
    // Secrets the worker needs are missing: the report is printed, and the exit says so.
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("LIVEKIT_API_KEY") && text(&out.stderr).contains("AZURE_OPENAI_API_KEY"), "{}", text(&out.stderr));
}

#[test]
fn check_lists_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.toml"), "[realtime]\nvoise = \"alloy\"\nflavour = \"azure-preview\"\nturn_detection = \"semantic_vad\"\n[livekit]\ncapacity = 0\n").unwrap();
    let out = consultant(dir.path(), &["--config", "site.toml", "config", "--check"], &[("LIVEKIT_URL", "ftp://x")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "--check prints no report");
    for part in ["5 problems", "`realtime.voise` in site.toml; did you mean `realtime.voice`?", "realtime.turn_detection", "livekit.capacity", "environment variable LIVEKIT_URL", "missing secrets"] {
        assert!(err.contains(part), "{part}: {err}");
    }

    let secrets = [("LIVEKIT_API_KEY", "k"), ("LIVEKIT_API_SECRET", "s"), ("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com/"), ("AZURE_OPENAI_API_KEY", "a"), ("DEEPSEEK_API_KEY", "d")];
    let out = consultant(dir.path(), &["config", "--check"], &secrets);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration is valid (built-in defaults"), "{}", text(&out.stdout));
}
