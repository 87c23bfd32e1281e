//! `consultant loadtest` against the loopback LiveKit server: five calls through the real
//! worker binary and the fake realtime/DeepSeek servers, every call greeted and every phrase
//! answered; and each bad input (unreachable URL, wrong secret, no worker, unreadable WAV)
//! ends the run with one clear error and a non-zero exit; and a worker stopped (SIGSTOP) in the
//! middle of its callers' phrases catches up without cutting them; and two workers at their
//! capacity report FULL and share the rooms, no call degraded.

mod support;
#[path = "support/call.rs"]
mod call;

use std::path::Path;
use std::time::Duration;

use call::*;
use consultant_fakes::deepseek::FakeDeepSeek;
use consultant_fakes::realtime::{AgentVoice, FakeFlavour, FakeRealtime, FakeRealtimeOptions, ScriptTurn};
use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent};
use serde_json::Value;
use support::*;

const PHRASES: [&str; 3] = ["Здравствуйте, меня зовут Иван.", "Мне нужен сайт.", "Спасибо, до свидания."];


/// The real-time tests of this file run one at a time: calls of one would make another's late.
static REAL_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ANSWERS: [&str; 3] = ["Очень приятно.", "Хорошо, сайт.", "До свидания!"];

/// The fake realtime (scripted for `turns` phrases, the caller's three in a loop, answered with
/// a tone) and the fake DeepSeek.
async fn fakes(turns: usize) -> (std::sync::Arc<FakeRealtime>, FakeDeepSeek) {
    let mut options = FakeRealtimeOptions::new(FakeFlavour::AzurePreview { api_version: "2025-04-01-preview".into() });
    options.api_key = "test-key-e2e".into();
    options.voice = AgentVoice::Tone { ms_per_char: 30 };
    options.turns = (0..turns).map(|i| ScriptTurn::new(PHRASES[i % 3], ANSWERS[i % 3])).collect();
    let realtime = std::sync::Arc::new(FakeRealtime::start(options).await.unwrap());
    let deepseek = FakeDeepSeek::start().await;
    deepseek.set_answer_rule(anketa_rule);
    (realtime, deepseek)
}

/// The worker binary in `mode`, once LiveKit has its registration.
async fn registered_worker(dir: &Path, server: &LoopbackServer, realtime: &FakeRealtime, deepseek: &FakeDeepSeek, mode: &str, nth: u32) -> tokio::process::Child {
    let worker = spawn_worker(dir, server, realtime, deepseek, mode, nth);
    server
        .wait_for_event(Duration::from_secs(30), |e| matches!(e, ServerEvent::WorkerRegistered { agent_name, .. } if agent_name == AGENT).then_some(()))
        .await
        .expect("the worker registers");
    worker
}

/// Writes the worker's config; returns its health address (`/metrics`).
fn write_config(dir: &Path, url: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let health = format!("127.0.0.1:{port}");
    let text = config_text(url, dir).replacen("load_threshold = 0.7", "load_threshold = 1.0", 1).replacen("health_listen = \"127.0.0.1:0\"", &format!("health_listen = \"{health}\""), 1);
    std::fs::write(dir.join("config.toml"), text).unwrap();
    health
}

/// `name`'s value in a Prometheus text exposition.
fn series(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

/// Runs `consultant loadtest` with the test's config; (exit success, stdout, stderr).
async fn loadtest(dir: &Path, key: &str, secret: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_consultant"))
        .current_dir(dir)
        .args(["--config", dir.join("config.toml").to_str().unwrap(), "loadtest"])
        .args(args)
        .env("LIVEKIT_API_KEY", key)
        .env("LIVEKIT_API_SECRET", secret)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("loadtest ends").unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_calls_are_greeted_and_every_phrase_is_answered() {
    let _one_at_a_time = REAL_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let (realtime, deepseek) = fakes(3).await;
    let health = write_config(dir.path(), &server.url());
    let mut worker = registered_worker(dir.path(), &server, &realtime, &deepseek, "dev", 1).await;
    let wav = caller_wav(dir.path(), &PHRASES);
    let pid = worker.id().unwrap().to_string();

    let (ok, stdout, stderr) = loadtest(dir.path(), server.api_key(), server.api_secret(), &["--rooms", "5", "--ramp", "2", "--duration", "20", "--caller", wav.to_str().unwrap(), "--worker-pid", &pid, "--json"]).await;
    let worker_log = std::fs::read_to_string(dir.path().join("worker1.stderr")).unwrap_or_default();
    assert!(ok, "loadtest failed:\n{stderr}\nworker:\n{worker_log}");
    assert!(stderr.contains("connected") && stderr.contains("loadtest"), "a progress line on stderr: {stderr}");
    assert!(!stdout.contains(server.api_secret()) && !stderr.contains(server.api_secret()), "the secret is never printed");
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON report ({e}):\n{stdout}"));
    eprintln!("totals {}\nlatency {}\naudio {}\nworker {}\nloadtest {}", r["totals"], r["latency"], r["audio"], r["worker"], r["loadtest"]);
    eprintln!("caller wake-ups per second: {:?}", r["calls"].as_array().unwrap().iter().map(|c| c["wakeups_per_s"].as_f64().unwrap().round()).collect::<Vec<_>>());
    let t = &r["totals"];
    for field in ["calls", "connected", "agent_joined", "greeted"] {
        assert_eq!(t[field], 5, "{field}: {r:#}");
    }
    assert_eq!(t["failed"], 0, "{r:#}");
    assert!(r["failures"].as_array().unwrap().is_empty(), "{r:#}");
    let (phrases, answered) = (t["phrases"].as_u64().unwrap(), t["answered"].as_u64().unwrap());
    assert!(phrases >= 10 && answered == phrases, "every call had 2+ phrases, all answered: {t}");
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 5);
    for c in calls {
        assert!(c["room"].as_str().unwrap().starts_with("consultation-load-"), "{c}");
        assert!(c["phrases"].as_u64().unwrap() >= 2 && c["answered"] == c["phrases"], "{c}");
        assert_eq!(c["latencies_ms"].as_array().unwrap().len() as u64, c["answered"].as_u64().unwrap());
        assert!(c["audio"]["speech_packets"].as_u64().unwrap() > 50, "{c}");
    }
    let l = &r["latency"];
    assert_eq!(l["count"].as_u64().unwrap(), answered);
    let (p50, p95, p99) = (l["p50_ms"].as_f64().unwrap(), l["p95_ms"].as_f64().unwrap(), l["p99_ms"].as_f64().unwrap());
    // The VAD's 500 ms of silence are part of voice-to-voice; a few seconds would be broken.
    assert!(p50 > 400.0 && p50 <= p95 && p95 <= p99 && p99 < 4000.0, "{l}");
    let a = &r["audio"];
    assert!(a["packets"].as_u64().unwrap() >= a["speech_packets"].as_u64().unwrap());
    assert!(a["lost_packets"].as_u64().unwrap() <= 5 && a["jitter_ms_max"].as_f64().unwrap() < 40.0, "{a}");
    let w = &r["worker"];
    assert_eq!(w["pid"].as_u64().unwrap().to_string(), pid);
    assert_eq!(w["loaded_calls"], 5, "{w}");
    assert!(w["loaded"]["cpu_percent_mean"].as_f64().unwrap() > 0.0 && w["loaded"]["rss_bytes_max"].as_u64().unwrap() > 1 << 20, "{w}");
    assert!(w["cpu_percent_per_call"].is_number() && w["baseline"]["samples"].as_u64().unwrap() >= 2, "{w}");
    assert!(r["loadtest"]["samples"].as_u64().unwrap() >= 10, "{r:#}");

    // The worker measured its own share of the latency on both paths: every answer from the
    // realtime socket to its first packet, every caller frame from the room's socket to the
    // realtime writer's queue. The capacity bench prints the percentiles.
    let (_, metrics) = http_get(health.as_str(), "/metrics").await;
    let answers = series(&metrics, "consultant_worker_added_latency_seconds_count");
    assert!(answers >= answered as f64, "{answers} answers timed for {answered} turns");
    let frames = series(&metrics, "consultant_caller_added_latency_seconds_count");
    let seconds: f64 = calls.iter().map(|c| c["seconds"].as_f64().unwrap()).sum();
    assert!(frames > seconds * 50.0 * 0.8, "{frames} caller frames timed over {seconds:.0} s of calls");

    // The rooms were deleted: no consultation of the run is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.rooms().iter().all(|room| !room.name.starts_with("consultation-load-")), "rooms left: {:?}", server.rooms().iter().map(|r| &r.name).collect::<Vec<_>>());
    let _ = worker.start_kill();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_with_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let wav = caller_wav(dir.path(), &PHRASES);
    let wav = wav.to_str().unwrap();
    let (key, secret) = (server.api_key().to_owned(), server.api_secret().to_owned());
    let base = ["--rooms", "2", "--duration", "5", "--caller"];

    // No worker: the rooms wait for an agent that never comes.
    write_config(dir.path(), &server.url());
    let (ok, _, err) = loadtest(dir.path(), &key, &secret, &[&base[..], &[wav, "--join-timeout", "2"]].concat()).await;
    assert!(!ok, "{err}");
    assert!(err.contains("no agent joined consultation-load-") && err.contains("within 2 s") && err.contains(AGENT), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.rooms().iter().all(|room| !room.name.starts_with("consultation-load-")), "the rooms are deleted");

    // A wrong secret: the server refuses to create the room.
    let (ok, _, err) = loadtest(dir.path(), &key, "not-the-secret-at-all-0123456789", &[&base[..], &[wav]].concat()).await;
    assert!(!ok && err.contains("cannot create room consultation-load-") && err.contains("refused") && err.contains("LIVEKIT_API_SECRET"), "{err}");
    assert!(!err.contains("not-the-secret-at-all"), "{err}");

    // An unreadable WAV, named with the reason; nothing is asked of the server first.
    for (path, why) in [(dir.path().join("missing.wav"), "No such file"), (dir.path().join("config.toml"), "cannot read")] {
        let (ok, _, err) = loadtest(dir.path(), &key, &secret, &[&base[..], &[path.to_str().unwrap()]].concat()).await;
        assert!(!ok && err.contains(path.to_str().unwrap()) && err.contains(why), "{err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    }

    // An unreachable server.
    server.shutdown().await;
    write_config(dir.path(), "ws://127.0.0.1:9");
    let (ok, _, err) = loadtest(dir.path(), &key, &secret, &[&base[..], &[wav]].concat()).await;
    assert!(!ok && err.contains("cannot reach") && err.contains("127.0.0.1:9"), "{err}");
}

/// Stops the worker process (SIGSTOP) for `hold`, `times` times, each `into` after the model
/// heard a caller begin a phrase: a worker starved of all CPU while the caller speaks, the
/// extreme of a transient overload.
fn stall_worker_mid_phrase(pid: u32, realtime: std::sync::Arc<FakeRealtime>, times: usize, into: Duration, hold: Duration) -> tokio::task::JoinHandle<()> {
    let starts = move || realtime.sessions().iter().map(|s| s.speech_starts).sum::<u32>();
    tokio::spawn(async move {
        for _ in 0..times {
            let seen = starts();
            while starts() == seen {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(into).await;
            let signal = |s: &str| std::process::Command::new("kill").args([s, &pid.to_string()]).status().unwrap();
            assert!(signal("-STOP").success());
            tokio::time::sleep(hold).await;
            assert!(signal("-CONT").success());
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_being_starved_the_worker_catches_up_and_no_phrase_is_cut_in_two() {
    let _one_at_a_time = REAL_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let (realtime, deepseek) = fakes(30).await;
    write_config(dir.path(), &server.url());
    let mut worker = registered_worker(dir.path(), &server, &realtime, &deepseek, "dev", 1).await;
    let wav = caller_wav(dir.path(), &PHRASES);

    // Three stalls of a second, each 300 ms into a caller's phrase.
    let stalls = stall_worker_mid_phrase(worker.id().unwrap(), realtime.clone(), 3, Duration::from_millis(300), Duration::from_secs(1));
    let (ok, stdout, stderr) = loadtest(dir.path(), server.api_key(), server.api_secret(), &["--rooms", "2", "--ramp", "1", "--duration", "34", "--caller", wav.to_str().unwrap(), "--json"]).await;
    stalls.await.unwrap();
    let worker_log = std::fs::read_to_string(dir.path().join("worker1.stderr")).unwrap_or_default();
    assert!(ok, "loadtest failed:\n{stderr}\nworker:\n{worker_log}");
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON report ({e}):\n{stdout}"));
    let t = &r["totals"];
    assert_eq!((t["greeted"].as_u64(), t["failed"].as_u64()), (Some(2), Some(0)), "{r:#}");

    // Every phrase was one turn of the model's: none was cut in two by silence put in front of
    // the caller's delayed words.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = r["calls"].as_array().unwrap();
    let count = |field: &str| calls.iter().map(|c| c[field].as_u64().unwrap()).sum::<u64>();
    // The last phrase of a call may have ended as the caller left, before the model's turn.
    let (settled, pending) = (count("phrases"), count("pending_phrases"));
    let turns: u64 = realtime.sessions().iter().map(|s| u64::from(s.user_turns)).sum();
    assert!((settled..=settled + pending).contains(&turns), "the model heard {turns} turns for {settled} phrases (+{pending} at the end):\n{r:#}");
    eprintln!("latencies {:?}, turns {turns}", calls.iter().map(|c| c["latencies_ms"].clone()).collect::<Vec<_>>());
    // Every phrase was answered, and once the stalls are over the answers come as fast as
    // before them: no delay is left behind.
    for c in calls {
        assert!(c["phrases"].as_u64().unwrap() >= 5 && c["answered"] == c["phrases"], "{c}");
        let l: Vec<f64> = c["latencies_ms"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let (before, after) = (l[0], *l.last().unwrap());
        assert!(after < before + 150.0, "voice-to-voice {before:.0} ms before the stalls, {after:.0} ms after: {l:?}");
    }
    let _ = worker.start_kill();
    server.shutdown().await;
}

/// At its capacity a worker reports FULL, and LiveKit sends the next rooms to another worker:
/// two `start` workers of capacity 3 under six loadtest calls take three each, both report
/// FULL, and no call degrades (every phrase answered, no late frame, no gap in an answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_leaves_the_next_rooms_to_another_and_no_call_degrades() {
    let _one_at_a_time = REAL_TIME.lock().await;
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let (realtime, deepseek) = fakes(60).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut workers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let text = config_text(&server.url(), dir.path()).replacen("capacity = 100", "capacity = 3", 1).replacen("load_threshold = 0.7", "load_threshold = 1.0", 1);
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        workers.push(registered_worker(dir.path(), &server, &realtime, &deepseek, "start", i as u32 + 1).await);
    }
    let wav = caller_wav(dirs[0].path(), &PHRASES);
    let (ok, stdout, stderr) = loadtest(dirs[0].path(), server.api_key(), server.api_secret(), &["--rooms", "6", "--ramp", "3", "--duration", "20", "--caller", wav.to_str().unwrap(), "--json"]).await;
    let logs: Vec<String> = (1..=2).map(|i| std::fs::read_to_string(dirs[i - 1].path().join(format!("worker{i}.stderr"))).unwrap_or_default()).collect();
    assert!(ok, "loadtest failed:\n{stderr}\nworkers:\n{}", logs.join("\n----\n"));
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON report ({e}):\n{stdout}"));

    let events = server.events();
    let mut assigned: std::collections::HashMap<String, usize> = Default::default();
    for e in &events {
        if let ServerEvent::JobAssigned { worker_id, .. } = e {
            *assigned.entry(worker_id.clone()).or_default() += 1;
        }
    }
    let mut counts: Vec<usize> = assigned.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![3, 3], "each worker took its capacity and no more: {assigned:?}");
    for worker_id in assigned.keys() {
        let full = events.iter().any(|e| matches!(e, ServerEvent::WorkerUpdated { worker_id: id, status: livekit_loopback::WorkerStatus::WsFull, job_count: 3, .. } if id == worker_id));
        assert!(full, "{worker_id} reported FULL at 3 jobs");
    }
    let refused = events.iter().filter(|e| matches!(e, ServerEvent::AvailabilityAnswered { available: false, .. })).count();
    eprintln!("totals {}\nlatency {}\naudio {}\nrefused offers {refused}", r["totals"], r["latency"], r["audio"]);

    let t = &r["totals"];
    assert_eq!((t["greeted"].as_u64(), t["failed"].as_u64()), (Some(6), Some(0)), "{r:#}");
    for c in r["calls"].as_array().unwrap() {
        let session = c["room"].as_str().unwrap().trim_start_matches("consultation-");
        assert!(c["phrases"].as_u64().unwrap() >= 2 && c["answered"] == c["phrases"], "{c}\nthe workers on it:\n{}", evidence(&dirs, session));
    }
    let a = &r["audio"];
    // No gap in any answer; a frame late past 40 ms on a busy test machine is what a jitter
    // buffer absorbs, so up to 0.5 % of them.
    let (late, packets) = (a["late_frames"].as_u64().unwrap(), a["packets"].as_u64().unwrap());
    assert!(a["silent_gaps"] == 0 && late * 200 <= packets, "no degraded call: {a}");
    assert!(r["latency"]["p99_ms"].as_f64().unwrap() < 700.0, "{}", r["latency"]);
    for mut w in workers {
        let _ = w.start_kill();
    }
    server.shutdown().await;
}

/// What the workers logged about `session` and every warning or error, for a failed call.
fn evidence(dirs: &[tempfile::TempDir], session: &str) -> String {
    let mut out = String::new();
    for (i, dir) in dirs.iter().enumerate() {
        let log = std::fs::read_to_string(dir.path().join("logs/agent.log")).unwrap_or_default();
        out.push_str(&format!("-- worker {}\n", i + 1));
        for line in log.lines().filter(|l| l.contains(session) || l.contains(" WARN ") || l.contains(" ERROR ")) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
