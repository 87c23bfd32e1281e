//! The end-to-end harness: one call through the real `consultant` binary, the loopback LiveKit
//! server, the fake realtime and DeepSeek servers, and the official Python SDK caller. Used by
//! `tests/e2e.rs` and `tests/call_end.rs` (included with `#[path]`, beside `mod support`).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use consultant_fakes::deepseek::{FakeDeepSeek, Prompt, TEST_API_KEY};
use consultant_fakes::realtime::{AgentVoice, FakeFlavour, FakeRealtime, FakeRealtimeOptions, ScriptTurn};
use livekit_loopback::{JobStatus, LoopbackConfig, LoopbackServer, ServerEvent};
use serde_json::{json, Value};

use crate::support::*;

pub const AGENT: &str = "consultant-e2e";
pub const SHIPPED_CONFIG: &str = include_str!("../../config.toml");
pub const MS_PER_CHAR: u32 = 40;

pub fn config_text(url: &str, dir: &Path) -> String {
    let replace = |text: String, from: &str, to: String| {
        assert!(text.contains(from), "config.toml no longer contains `{from}`");
        text.replacen(from, &to, 1)
    };
    let mut t = SHIPPED_CONFIG.to_owned();
    t = replace(t, "url = \"ws://127.0.0.1:7880\"", format!("url = \"{url}\""));
    t = replace(t, "agent_name = \"consultant\"", format!("agent_name = \"{AGENT}\""));
    t = replace(t, "health_listen = \"127.0.0.1:8081\"", "health_listen = \"127.0.0.1:0\"".to_owned());
    t = replace(t, "path = \"data/consultations.db\"", format!("path = \"{}\"", dir.join("consultations.db").display()));
    t = replace(t, "dir = \"logs\"", format!("dir = \"{}\"", dir.join("logs").display()));
    t = replace(t, "listen = \"127.0.0.1:7700\"", "listen = \"127.0.0.1:0\"".to_owned());
    t = replace(t, "extraction_interval = 6", "extraction_interval = 4".to_owned());
    t
}

/// The anketa the fake DeepSeek extracts: the caller's name once they said anything.
pub fn anketa_rule(p: &Prompt) -> Value {
    if p.client_lines.is_empty() {
        json!({})
    } else {
        json!({ "client_name": "Иван", "task": format!("{} реплик клиента", p.client_lines.len()) })
    }
}

pub fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

/// The real binary (`dev` or `start`) with the test's config and the fakes' addresses.
pub fn spawn_worker(dir: &Path, server: &LoopbackServer, realtime: &FakeRealtime, deepseek: &FakeDeepSeek, mode: &str, nth: u32) -> tokio::process::Child {
    let stderr = std::fs::File::create(dir.join(format!("worker{nth}.stderr"))).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_consultant"))
        .current_dir(dir)
        .args(["--config", dir.join("config.toml").to_str().unwrap(), mode])
        .env("LIVEKIT_API_KEY", server.api_key())
        .env("LIVEKIT_API_SECRET", server.api_secret())
        .env("AZURE_OPENAI_ENDPOINT", realtime.endpoint())
        .env("AZURE_OPENAI_API_KEY", "test-key-e2e")
        // The fake speaks the preview protocol; azure-ga is the default now.
        .env("CONSULTANT_REALTIME_FLAVOUR", "azure-preview")
        .env("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-realtime-preview")
        .env("DEEPSEEK_BASE_URL", deepseek.base_url())
        .env("DEEPSEEK_API_KEY", TEST_API_KEY)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .expect("the consultant binary starts")
}

/// One call through the real binary: the loopback server, the fake realtime and DeepSeek, the
/// worker with the shipped config (edited by `config`), and the official SDK caller speaking
/// `phrases` (with `extra` caller arguments) into `consultation-e2e-<n>`.
pub struct Call {
    pub dir: tempfile::TempDir,
    pub server: LoopbackServer,
    pub realtime: FakeRealtime,
    pub deepseek: FakeDeepSeek,
    pub worker: tokio::process::Child,
    pub caller: PythonPeer,
    pub job: String,
    pub session_id: String,
}

pub async fn start_call(
    n: u32,
    config: impl Fn(String) -> String,
    realtime: impl FnOnce(&mut FakeRealtimeOptions),
    phrases: &[&str],
    answers: &[&str],
    extra: &[&str],
) -> Call {
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let mut options = FakeRealtimeOptions::new(FakeFlavour::AzurePreview { api_version: "2025-04-01-preview".into() });
    options.api_key = "test-key-e2e".into();
    options.voice = AgentVoice::Tone { ms_per_char: MS_PER_CHAR };
    options.turns = phrases.iter().zip(answers).map(|(p, a)| ScriptTurn::new(*p, *a)).collect();
    realtime(&mut options);
    let realtime = FakeRealtime::start(options).await.unwrap();
    let deepseek = FakeDeepSeek::start().await;
    deepseek.set_answer_rule(anketa_rule);

    std::fs::write(dir.path().join("config.toml"), config(config_text(&server.url(), dir.path()))).unwrap();
    let worker = spawn_worker(dir.path(), &server, &realtime, &deepseek, "dev", 1);

    server
        .wait_for_event(Duration::from_secs(30), |e| matches!(e, ServerEvent::WorkerRegistered { agent_name, .. } if agent_name == AGENT).then_some(()))
        .await
        .expect("the worker registers");

    // The Python module's server: the room is created with an explicit dispatch for our agent.
    let room = format!("consultation-e2e-{n}");
    server.create_room(&room, &[AGENT]);
    let job = server
        .wait_for_event(Duration::from_secs(10), |e| match e {
            ServerEvent::JobCreated { job_id, room: r, .. } if *r == room => Some(job_id.clone()),
            _ => None,
        })
        .await
        .expect("job created");
    server.wait_for_job_status(&job, JobStatus::JsRunning, Duration::from_secs(20)).await.expect("job running");

    let mut args: Vec<String> = vec!["--url".into(), server.url(), "--token".into(), server.participant_token(&room, "caller-ivan")];
    for (i, p) in phrases.iter().enumerate() {
        let wav = dir.path().join(format!("phrase{i}.wav"));
        espeak(p, &wav);
        args.extend(["--wav".into(), wav.to_str().unwrap().into()]);
    }
    let record = dir.path().join("heard.wav");
    let envelope = dir.path().join("heard.json");
    args.extend(
        ["--lead-in", "3", "--pause", "4", "--tail", "6", "--record", record.to_str().unwrap(), "--envelope", envelope.to_str().unwrap()]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    let caller = PythonPeer::spawn("caller", "caller.py", &args, &[], dir.path());
    Call { dir, server, realtime, deepseek, worker, caller, job, session_id: format!("e2e-{n}") }
}

impl Call {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/agent.log")).unwrap_or_default()
    }

    /// The caller is done and left: the job succeeds and the session is finalized. The log then.
    pub async fn finished(&mut self) -> String {
        self.caller.wait_success(Duration::from_secs(90)).await;
        self.server.wait_for_job_status(&self.job, JobStatus::JsSuccess, Duration::from_secs(60)).await.expect("JS_SUCCESS after the caller left");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.log().contains("=== FINALIZE START ===") {
            assert!(tokio::time::Instant::now() < deadline, "no finalization in the log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.log()
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("consultations.db")).unwrap()
    }

    /// The stored dialogue: (seq, role, text, interrupted), in order.
    pub fn dialogue(&self) -> Vec<(u32, String, String, bool)> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT seq, role, text, interrupted FROM messages WHERE session_id = ?1 ORDER BY seq").unwrap();
        let rows = stmt.query_map([&self.session_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect();
        rows
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.worker.id() {
            if let Err(e) = Command::new("kill").args(["-s", "INT", &pid.to_string()]).status() {
                eprintln!("could not signal the worker: {e}");
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.worker.wait()).await.is_err() {
            eprintln!("the worker did not stop within 10 s after SIGINT");
        }
        self.server.shutdown().await;
    }
}

