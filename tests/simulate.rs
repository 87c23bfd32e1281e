//! `consultant simulate` end to end: the real binary against the fake realtime and the fake
//! DeepSeek, with espeak-ng speech (44.1 kHz stereo, so the resampler and the down-mix run).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use consultant_fakes::deepseek::{with_evidence, FakeDeepSeek, Prompt};
use consultant_fakes::realtime::{FakeFlavour, FakeRealtime, FakeRealtimeOptions, ScriptTurn};
use serde_json::{json, Value};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?} (run scripts/install-test-deps.sh): {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two Russian sentences with a pause between them, as a 44.1 kHz stereo WAV.
fn caller_wav(dir: &Path) -> std::path::PathBuf {
    run(Command::new("espeak-ng").args(["-v", "ru", "-w"]).arg(dir.join("a.wav")).arg("Меня зовут Иван"));
    run(Command::new("espeak-ng").args(["-v", "ru", "-w"]).arg(dir.join("b.wav")).arg("Хочу открыть вклад на год"));
    run(Command::new("sox").arg(dir.join("a.wav")).arg(dir.join("a-pause.wav")).args(["pad", "0.2", "1.5"]));
    let caller = dir.join("caller.wav");
    run(Command::new("sox").arg(dir.join("a-pause.wav")).arg(dir.join("b.wav")).args(["-r", "44100", "-c", "2"]).arg(&caller));
    caller
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_runs_a_whole_consultation_against_the_fakes() {
    let dir = tempfile::tempdir().unwrap();
    let caller = caller_wav(dir.path());

    let mut options = FakeRealtimeOptions::new(FakeFlavour::AzurePreview { api_version: "2025-04-01-preview".into() });
    options.turns = vec![
        ScriptTurn::new("Меня зовут Иван.", "Очень приятно, Иван. Чем могу помочь?"),
        ScriptTurn::new("Хочу открыть вклад на год.", "Отлично, подберём вклад на год.").late(),
    ];
    let realtime = FakeRealtime::start(options).await.unwrap();
    let deepseek = FakeDeepSeek::start_with_key("ds-test-key").await;
    deepseek.set_answer_rule(|prompt: &Prompt| {
        let (mut anketa, mut evidence) = (json!({}), json!({}));
        if let Some(seq) = prompt.client_seq("Иван") {
            anketa["client_name"] = json!("Иван");
            evidence["client_name"] = json!([seq]);
        }
        if let Some(seq) = prompt.client_seq("вклад") {
            anketa["task"] = json!("открыть вклад на год");
            evidence["task"] = json!([seq]);
        }
        with_evidence(anketa, evidence)
    });

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out_wav = dir.path().join("agent.wav");
    let db = dir.path().join("consultations.db");
    let output = tokio::task::spawn_blocking({
        let (endpoint, deepseek_url, out_wav, db, cwd, caller) = (realtime.endpoint(), deepseek.base_url(), out_wav.clone(), db.clone(), dir.path().to_owned(), caller.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_consultant"))
                .current_dir(cwd)
                .arg("--config")
                .arg(config)
                .args(["simulate", "--session-id", "sim-1", "--json", "--caller"])
                .arg(&caller)
                .arg("--out")
                .arg(&out_wav)
                .env("AZURE_OPENAI_ENDPOINT", endpoint)
                .env("AZURE_OPENAI_API_KEY", "test-key-123")
                .env("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-realtime-preview")
                .env("AZURE_OPENAI_REALTIME_API_VERSION", "2025-04-01-preview")
                .env("CONSULTANT_REALTIME_FLAVOUR", "azure-preview")
                .env("DEEPSEEK_API_KEY", "ds-test-key")
                .env("DEEPSEEK_BASE_URL", deepseek_url)
                .env("CONSULTANT_DB_PATH", db)
                .env("RUST_LOG", "info")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "simulate failed: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)));

    assert_eq!(summary["session_id"], "sim-1");
    assert_eq!(summary["room"], "consultation-sim-1");
    assert_eq!(summary["status"], "completed");
    let dialogue: Vec<(String, String)> = summary["dialogue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_owned(), m["text"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        ("assistant", realtime.options().greeting.as_str()),
        ("user", "Меня зовут Иван."),
        ("assistant", "Очень приятно, Иван. Чем могу помочь?"),
        ("user", "Хочу открыть вклад на год."),
        ("assistant", "Отлично, подберём вклад на год."),
    ];
    assert_eq!(dialogue, expected.map(|(r, t)| (r.to_owned(), t.to_owned())), "{summary:#}");
    assert_eq!(summary["anketa"]["client_name"], "Иван");
    assert_eq!(summary["anketa"]["task"], "открыть вклад на год");
    // Each value with the message it was read from, set by the final extraction over all five.
    let provenance = json!({"client_name": {"evidence": [2], "set_at": 5}, "task": {"evidence": [4], "set_at": 5}});
    assert_eq!(summary["provenance"], provenance, "{summary:#}");
    let latencies = summary["turn_latency_ms"].as_array().unwrap();
    assert_eq!(latencies.len(), 2, "{summary:#}");
    assert!(latencies.iter().all(|l| l.as_u64().unwrap() < 2_000));

    // The fake heard the whole WAV (resampled to 24 kHz mono) as two caller turns.
    let session = &realtime.sessions()[0];
    assert_eq!(session.user_turns, 2);
    let reader = hound::WavReader::open(&caller).unwrap();
    let caller_ms = reader.duration() as u64 * 1000 / reader.spec().sample_rate as u64;
    assert!(session.appended_ms() >= caller_ms, "appended {} ms of a {caller_ms} ms WAV", session.appended_ms());
    assert!(summary["caller_audio_ms"].as_u64().unwrap().abs_diff(caller_ms) <= 1);

    // The agent's voice, as heard, is in --out: 24 kHz mono, as long as the three answers.
    let agent = hound::WavReader::open(&out_wav).unwrap();
    assert_eq!((agent.spec().sample_rate, agent.spec().channels), (24_000, 1));
    let sent_ms: u64 = session.responses.iter().map(|r| r.audio_ms_sent).sum();
    assert!(summary["agent_audio_ms"].as_u64().unwrap().abs_diff(sent_ms) <= 5, "{summary:#} vs {sent_ms}");
    let agent_ms = agent.duration() as u64 * 1000 / 24_000;
    assert!(agent_ms >= sent_ms, "the WAV holds the answers on the call's timeline ({agent_ms} ms >= {sent_ms} ms)");

    // Durable: the store has the session with the same dialogue and a final anketa.
    let show = Command::new(env!("CARGO_BIN_EXE_consultant"))
        .current_dir(dir.path())
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
        .args(["sessions", "show", "sim-1", "--json"])
        .env("CONSULTANT_DB_PATH", &db)
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    let stored: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(stored["messages"].as_array().unwrap().len(), 5, "{stored:#}");
    assert_eq!(stored["status"], "completed");
    assert_eq!(stored["provenance"], provenance, "{stored:#}");
    assert!(deepseek.request_count() >= 1);
    assert!(stderr.contains("DIALOGUE_MESSAGE") && stderr.contains("=== FINALIZE START ==="), "{stderr}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
