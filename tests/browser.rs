//! A caller in a real browser: Debian's Chromium (headless, `web/browser-call.mjs` driving it
//! with playwright-core) opens the page of `consultant web`, starts a consultation with
//! livekit-client's default options and a fake microphone playing an espeak-ng phrase, talks to
//! the real worker through the loopback LiveKit server and the fakes, and hangs up. Chromium's
//! WebRTC stack is the third peer, beside libwebrtc in the Python SDK and our str0m.

mod support;
#[path = "support/call.rs"]
mod call;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use call::*;
use consultant_fakes::deepseek::FakeDeepSeek;
use consultant_fakes::realtime::{AgentVoice, FakeFlavour, FakeRealtime, FakeRealtimeOptions, ScriptTurn};
use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const PHRASE: &str = "Здравствуйте, меня зовут Иван.";
const ANSWER: &str = "Очень приятно, Иван. Чем я могу помочь?";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs sox with these arguments (48 kHz mono 16-bit wherever a format is given).
fn sox(args: &[&std::ffi::OsStr]) {
    let status = std::process::Command::new("sox").args(args).status().expect("sox runs");
    assert!(status.success(), "sox {args:?} failed");
}

/// The fake microphone: 4 s of silence, the phrase, 40 s of silence (Chromium loops the file;
/// the call is over before it comes round again).
fn microphone(dir: &Path) -> PathBuf {
    let format = ["-r", "48000", "-c", "1", "-b", "16"].map(std::ffi::OsStr::new);
    let (spoken, phrase, lead, tail, mic) = (dir.join("spoken.wav"), dir.join("phrase.wav"), dir.join("lead.wav"), dir.join("tail.wav"), dir.join("microphone.wav"));
    espeak(PHRASE, &spoken);
    sox(&[&[spoken.as_os_str()][..], &format, &[phrase.as_os_str()]].concat());
    for (silence, secs) in [(&lead, "4"), (&tail, "40")] {
        sox(&[&[std::ffi::OsStr::new("-n")][..], &format, &[silence.as_os_str(), "trim".as_ref(), "0".as_ref(), secs.as_ref()]].concat());
    }
    sox(&[&[lead.as_os_str(), phrase.as_os_str(), tail.as_os_str()][..], &format, &[mic.as_os_str()]].concat());
    mic
}

/// `consultant web` with the test's config; returns the page's address once it listens.
async fn spawn_web(dir: &Path, server: &LoopbackServer) -> (tokio::process::Child, String) {
    let mut web = tokio::process::Command::new(env!("CARGO_BIN_EXE_consultant"))
        .current_dir(dir)
        .args(["--config", dir.join("config.toml").to_str().unwrap(), "web"])
        .env("LIVEKIT_API_KEY", server.api_key())
        .env("LIVEKIT_API_SECRET", server.api_secret())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.join("web.stderr")).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("consultant web starts");
    let mut lines = BufReader::new(web.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("the page listens").unwrap().expect("a line");
    let url = line.strip_prefix("caller page: ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_owned();
    (web, url)
}


/// One call from headless Chromium through the page at `page`, `seconds` long: the page's
/// events (printed, but for the audio level steps).
async fn browser_call(dir: &Path, page: &str, out: &Path, seconds: u32) -> Vec<Value> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).is_file(), "{chromium} is missing: install Debian's chromium (scripts/test.sh does)");
    let mic = microphone(dir);
    std::fs::create_dir_all(out).unwrap();
    let driver = tokio::process::Command::new("node")
        .current_dir(root().join("web"))
        .args(["browser-call.mjs", page, mic.to_str().unwrap(), out.to_str().unwrap(), &seconds.to_string()])
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), driver).await.expect("the browser call ends").expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the browser driver failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let events: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    for e in &events {
        if e["event"] != "agent_audio" {
            println!("{e}");
        }
    }
    events
}

fn client_js() -> PathBuf {
    let js = root().join("web/node_modules/livekit-client/dist/livekit-client.umd.js");
    assert!(js.is_file(), "{} is missing: run `npm ci` in web/ (scripts/test.sh does)", js.display());
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_caller_talks_to_the_consultant_with_livekit_clients_defaults() {
    let client_js = client_js();
    let _lock = livekit_loopback::peers::peers_lock().await;

    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let mut options = FakeRealtimeOptions::new(FakeFlavour::AzurePreview { api_version: "2025-04-01-preview".into() });
    options.api_key = "test-key-e2e".into();
    options.voice = AgentVoice::Tone { ms_per_char: MS_PER_CHAR };
    options.turns = vec![ScriptTurn::new(PHRASE, ANSWER)];
    let realtime = FakeRealtime::start(options).await.unwrap();
    let deepseek = FakeDeepSeek::start().await;
    deepseek.set_answer_rule(anketa_rule);
    let mut text = config_text(&server.url(), dir.path());
    // An extraction after the first exchange, so the anketa panel fills in during the call.
    text = text.replacen("extraction_interval = 4", "extraction_interval = 2", 1);
    text = text.replacen("listen = \"127.0.0.1:8090\"", "listen = \"127.0.0.1:0\"", 1);
    text = text.replacen(
        "livekit_client_js = \"web/node_modules/livekit-client/dist/livekit-client.umd.js\"",
        &format!("livekit_client_js = \"{}\"", client_js.display()),
        1,
    );
    std::fs::write(dir.path().join("config.toml"), text).unwrap();
    let mut worker = spawn_worker(dir.path(), &server, &realtime, &deepseek, "dev", 1);
    server
        .wait_for_event(Duration::from_secs(30), |e| matches!(e, ServerEvent::WorkerRegistered { agent_name, .. } if agent_name == AGENT).then_some(()))
        .await
        .expect("the worker registers");
    let (mut web, page) = spawn_web(dir.path(), &server).await;

    let out = dir.path().join("screenshots");
    let events = browser_call(dir.path(), &page, &out, 20).await;
    let of = |name: &'static str| events.iter().filter(move |e| e["event"] == name);
    assert!(of("page_error").next().is_none(), "the page threw");
    assert!(of("error").next().is_none(), "the page reported an error");
    let connected = of("connected").next().expect("the page joined the room with the client's defaults");
    assert!(connected["room"].as_str().unwrap().starts_with("consultation-"));
    assert!(of("subscribed").next().is_some(), "the page subscribed to the agent's voice");
    let heard = of("agent_audio").count() as f64 / 10.0;
    println!("agent audio heard in the page: {heard:.1} s");
    assert!(heard >= 2.0, "the page heard {heard:.1} s of the agent (greeting + answer)");

    let transcripts: Vec<&str> = of("transcript").map(|e| e["text"].as_str().unwrap_or_default()).collect();
    for expected in ["Здравствуйте! Как вас зовут?", PHRASE, ANSWER] {
        assert!(transcripts.contains(&expected), "no transcript {expected:?} in the page: {transcripts:?}");
    }

    let me = connected["identity"].as_str().unwrap();
    let caller_line = of("transcript").find(|e| e["text"] == PHRASE).unwrap();
    assert_eq!(caller_line["from"], me, "the caller's words are sent on the caller's behalf: {caller_line}");
    let agent_line = of("transcript").find(|e| e["text"] == ANSWER).unwrap();
    assert_ne!(agent_line["from"], me);
    assert_eq!(agent_line["final"], "true");

    let states: Vec<&str> = of("attributes").filter_map(|e| e["changed"]["lk.agent.state"].as_str()).collect();
    println!("agent states seen by the page: {states:?}");
    for state in ["listening", "speaking"] {
        assert!(states.contains(&state), "the page never saw lk.agent.state = {state}: {states:?}");
    }
    // The end time is told once; the page counts down itself.
    let timers = of("attributes").filter(|e| e["changed"].get("consultant.ends_at").is_some()).count();
    assert_eq!(timers, 1, "consultant.ends_at sent {timers} times");
    let anketa: Vec<&str> = of("anketa").map(|e| e["text"].as_str().unwrap_or_default()).collect();
    assert!(anketa.iter().any(|t| t.contains("Иван")), "the anketa panel never showed the name: {anketa:?}");
    let final_anketa = of("final_anketa").next().expect("the final anketa reached the page after the hang-up");
    assert!(final_anketa["text"].as_str().unwrap().contains("Имя клиента: Иван"), "{final_anketa}");
    for shot in ["mid-call.png", "end.png"] {
        assert!(std::fs::metadata(out.join(shot)).map(|m| m.len() > 1000).unwrap_or(false), "no screenshot {shot}");
    }
    // Kept for a person to look at (the README says where).
    let keep = root().join("target/browser-test");
    std::fs::create_dir_all(&keep).unwrap();
    for shot in ["mid-call.png", "end.png"] {
        std::fs::copy(out.join(shot), keep.join(shot)).unwrap();
    }

    // The stored dialogue: the greeting, the caller's phrase and the answer, in that order.
    let session = connected["room"].as_str().unwrap().trim_start_matches("consultation-").to_owned();
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_consultant"))
        .current_dir(dir.path())
        .args(["--config", dir.path().join("config.toml").to_str().unwrap(), "sessions", "show", &session, "--json"])
        .output()
        .unwrap();
    let detail: Value = serde_json::from_slice(&shown.stdout).unwrap_or_else(|e| panic!("sessions show: {e}: {}", String::from_utf8_lossy(&shown.stderr)));
    let spoken: Vec<(&str, &str)> = detail["messages"].as_array().unwrap().iter().map(|m| (m["role"].as_str().unwrap(), m["text"].as_str().unwrap())).collect();
    assert_eq!(spoken[..3], [("assistant", "Здравствуйте! Как вас зовут?"), ("user", PHRASE), ("assistant", ANSWER)], "{spoken:#?}");
    let _ = web.kill().await;
    let _ = worker.kill().await;
    server.shutdown().await;
}

/// `consultant dev` with only an Azure and a DeepSeek key: no LiveKit URL, so it serves the
/// embedded development LiveKit server and the caller page itself; a browser talks to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultant_dev_without_livekit_serves_its_own_server_and_page_for_a_browser() {
    let client_js = client_js();
    let _lock = livekit_loopback::peers::peers_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = FakeRealtimeOptions::new(FakeFlavour::AzurePreview { api_version: "2025-04-01-preview".into() });
    options.api_key = "test-key-dev".into();
    options.voice = AgentVoice::Tone { ms_per_char: MS_PER_CHAR };
    options.turns = vec![ScriptTurn::new(PHRASE, ANSWER)];
    let realtime = FakeRealtime::start(options).await.unwrap();
    let deepseek = FakeDeepSeek::start().await;
    // Only what a person trying it out would set: no [livekit] section at all.
    let config = format!(
        "[storage]\npath = \"{db}\"\n[logging]\ndir = \"{logs}\"\n[console]\nlisten = \"127.0.0.1:0\"\n[web]\nlisten = \"127.0.0.1:0\"\nlivekit_client_js = \"{js}\"\n",
        db = dir.path().join("c.db").display(),
        logs = dir.path().join("logs").display(),
        js = client_js.display(),
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_consultant"))
        .current_dir(dir.path())
        .args(["--config", dir.path().join("config.toml").to_str().unwrap(), "dev"])
        .env_remove("LIVEKIT_URL")
        .env_remove("LIVEKIT_API_KEY")
        .env_remove("LIVEKIT_API_SECRET")
        .env_remove("RUST_LOG")
        .env("CONSULTANT_LIVEKIT_HEALTH_LISTEN", "127.0.0.1:0")
        .env("AZURE_OPENAI_ENDPOINT", realtime.endpoint())
        .env("AZURE_OPENAI_API_KEY", "test-key-dev")
        .env("CONSULTANT_REALTIME_FLAVOUR", "azure-preview")
        .env("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-realtime-preview")
        .env("DEEPSEEK_BASE_URL", deepseek.base_url())
        .env("DEEPSEEK_API_KEY", consultant_fakes::deepseek::TEST_API_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("worker.stderr")).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("consultant dev starts");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(line))) => line,
        other => panic!("no page address from `consultant dev` ({other:?}): {}", std::fs::read_to_string(dir.path().join("worker.stderr")).unwrap_or_default()),
    };
    let page = line.strip_prefix("caller page: ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_owned();
    let log = std::fs::read_to_string(dir.path().join("logs/agent.log")).unwrap_or_default();
    assert!(log.contains("embedded development LiveKit server"), "the log says what runs: {log}");

    let events = browser_call(dir.path(), &page, &dir.path().join("shots"), 12).await;
    let of = |name: &'static str| events.iter().filter(move |e| e["event"] == name);
    assert!(of("connected").next().is_some(), "the browser joined the embedded server");
    let heard = of("agent_audio").count() as f64 / 10.0;
    assert!(heard >= 1.0, "the browser heard {heard:.1} s of the agent");
    let transcripts: Vec<&str> = of("transcript").map(|e| e["text"].as_str().unwrap_or_default()).collect();
    assert!(transcripts.contains(&"Здравствуйте! Как вас зовут?"), "{transcripts:?}");
    assert!(transcripts.contains(&PHRASE), "{transcripts:?}");
    let _ = worker.kill().await;
}
