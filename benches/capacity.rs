//! Capacity: how many calls one release worker carries. The fake realtime answers in espeak-ng
//! speech (what libopus encodes costs as real speech does). Starts the loopback LiveKit server and
//! the fake realtime and DeepSeek servers (in this process), the release `consultant start`
//! with room for every call, and steps `consultant loadtest` through N calls (10, 50, 100, 200;
//! `CAPACITY_STEPS=10,20` to choose, `CAPACITY_DURATION=SECS` per call, default 30), printing
//! one table row per step: the worker's CPU and RSS per call, voice-to-voice latency, agent
//! audio quality, failures, and the CPU of the load test, of the loopback server (this process)
//! and of the fakes (a child process: this program again) so a reader sees which of them was
//! the bottleneck. The run's directory (worker log, load test stderr and JSON) is kept when a call failed
//! or `CAPACITY_KEEP` is set.
//!
//! `cargo bench -p consultant --bench capacity`

#[allow(unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use consultant_fakes::deepseek::{FakeDeepSeek, TEST_API_KEY};
use consultant_fakes::realtime::{AgentVoice, FakeFlavour, FakeRealtime, FakeRealtimeOptions, ScriptTurn};
use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent};
use serde_json::Value;

const AGENT: &str = "consultant-capacity";
const PHRASES: [&str; 3] = ["Здравствуйте, меня зовут Иван.", "Мне нужен сайт для компании.", "Спасибо, до свидания."];

fn config(dir: &Path, url: &str, health: &str) -> String {
    let replace = |t: String, from: &str, to: &str| {
        assert!(t.contains(from), "config.toml no longer contains `{from}`");
        t.replacen(from, to, 1)
    };
    let mut t = include_str!("../config.toml").to_owned();
    t = replace(t, "url = \"ws://127.0.0.1:7880\"", &format!("url = \"{url}\""));
    t = replace(t, "agent_name = \"consultant\"", &format!("agent_name = \"{AGENT}\""));
    t = replace(t, "health_listen = \"127.0.0.1:8081\"", &format!("health_listen = \"{health}\""));
    t = replace(t, "path = \"data/consultations.db\"", &format!("path = \"{}\"", dir.join("db.sqlite").display()));
    t = replace(t, "dir = \"logs\"", &format!("dir = \"{}\"", dir.join("logs").display()));
    t = replace(t, "listen = \"127.0.0.1:7700\"", "listen = \"127.0.0.1:0\"");
    // Room for every call: the benchmark finds the limit, the load report must not.
    t = replace(t, "capacity = 100", "capacity = 1000");
    t = replace(t, "load_threshold = 0.7", "load_threshold = 1.0");
    t
}


/// Set in the child that serves the fakes.
const FAKES_CHILD: &str = "CAPACITY_FAKES_CHILD";

/// CPU seconds of a process (`self` or a pid).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn main() {
    if std::env::var_os(FAKES_CHILD).is_some() {
        return fakes_child();
    }
    let steps: Vec<usize> = std::env::var("CAPACITY_STEPS").unwrap_or_else(|_| "10,50,100,200".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let duration: u64 = std::env::var("CAPACITY_DURATION").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench(&steps, duration));
}

/// The fake realtime and DeepSeek servers, in their own process so their CPU is not the
/// loopback server's: prints both addresses, serves until stdin closes.
fn fakes_child() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut options = FakeRealtimeOptions::new(FakeFlavour::AzurePreview { api_version: "2025-04-01-preview".into() });
        options.api_key = "test-key-capacity".into();
        options.voice = AgentVoice::Pcm(agent_speech());
        options.turns = PHRASES.iter().zip(["Очень приятно, Иван.", "Хорошо, сайт для компании.", "До свидания!"]).map(|(p, a)| ScriptTurn::new(*p, a)).collect();
        let realtime = FakeRealtime::start(options).await.unwrap();
        let deepseek = FakeDeepSeek::start().await;
        println!("{} {}", realtime.endpoint(), deepseek.base_url());
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    });
}

/// The agent's answer: espeak-ng speech at 24 kHz (about 2.5 s; no pause inside it long enough
/// to count as a gap). Speech, not a tone: libopus spends several times more on speech.
fn agent_speech() -> std::sync::Arc<[i16]> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answer.wav");
    support::espeak("Очень приятно расскажите подробнее о вашей компании", &path);
    consultant::audio::wav::read_as_realtime_pcm(&path).expect("espeak's answer reads as 24 kHz PCM").into()
}

async fn bench(steps: &[usize], duration: u64) {
    let dir = tempfile::tempdir().unwrap();
    // Forwarding as livekit-server does: str0m's default would hold audio behind a lost packet.
    let server = LoopbackServer::start(LoopbackConfig { forward_audio_at_once: true, ..Default::default() }).await.unwrap();
    let mut fakes = std::process::Command::new(std::env::current_exe().unwrap())
        .env(FAKES_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the fakes' process starts");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(fakes.stdout.take().unwrap()), &mut line).unwrap();
    let mut addrs = line.split_whitespace().map(str::to_owned);
    let (realtime_endpoint, deepseek_url) = (addrs.next().expect("realtime endpoint"), addrs.next().expect("deepseek url"));
    let fakes_pid = fakes.id().to_string();
    let health = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    std::fs::write(dir.path().join("config.toml"), config(dir.path(), &server.url(), &health)).unwrap();
    let wav = support::caller_wav(dir.path(), &PHRASES);
    let bin = env!("CARGO_BIN_EXE_consultant");
    let env = [
        ("LIVEKIT_API_KEY", server.api_key().to_owned()),
        ("LIVEKIT_API_SECRET", server.api_secret().to_owned()),
        ("AZURE_OPENAI_ENDPOINT", realtime_endpoint),
        ("AZURE_OPENAI_API_KEY", "test-key-capacity".to_owned()),
        ("CONSULTANT_REALTIME_FLAVOUR", "azure-preview".to_owned()),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-realtime-preview".to_owned()),
        ("DEEPSEEK_BASE_URL", deepseek_url),
        ("DEEPSEEK_API_KEY", TEST_API_KEY.to_owned()),
    ];
    let mut worker = tokio::process::Command::new(bin)
        .current_dir(dir.path())
        .args(["--config", dir.path().join("config.toml").to_str().unwrap(), "start"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("worker.stderr")).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("the release worker starts");
    server
        .wait_for_event(Duration::from_secs(30), |e| matches!(e, ServerEvent::WorkerRegistered { agent_name, .. } if agent_name == AGENT).then_some(()))
        .await
        .expect("the worker registers");
    let pid = worker.id().unwrap().to_string();
    println!("capacity of one release worker ({} cores), {duration} s per call, caller {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), wav.display());
    println!(
        "{:>5} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7} {:>8} {:>9} {:>8} {:>6} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>13} {:>13} {:>6} {:>12} {:>6} {:>12}",
        "calls", "conn", "greet", "answered", "p50ms", "p95ms", "p99ms", "wCPU%", "wCPU%/call", "wMB/call", "lost", "late", "gaps", "fail", "loadCPU%", "srvCPU%", "fakeCPU%", "in:p50/p99ms", "out:p50/p99ms", "wlate", "wlag:p50/p99", "slate", "slag:p50/p99"
    );
    println!("(in/out: the worker's own added latency, caller -> realtime and realtime -> room, as bucket bounds of its histograms;");
    println!(" wlate: agent frames the worker wrote more than 40 ms after their slot, wlag: every frame's write behind its slot, ms;");
    println!(" slate, slag: the same for the loopback server, packets forwarded more than 40 ms after their read, and read to forward)");
    let mut failed_calls = 0;
    for &n in steps {
        let ramp = (n as f64 / 10.0).max(1.0);
        let (cpu0, fakes0, t0) = (cpu_secs("self"), cpu_secs(&fakes_pid), std::time::Instant::now());
        let added0 = AddedLatency::scrape(&health).await;
        let lag0 = Buckets::of(server.forward_lag());
        let out = tokio::process::Command::new(bin)
            .current_dir(dir.path())
            .args(["--config", dir.path().join("config.toml").to_str().unwrap(), "loadtest", "--json", "--worker-pid", &pid])
            .args(["--rooms", &n.to_string(), "--ramp", &ramp.to_string(), "--duration", &duration.to_string(), "--caller", wav.to_str().unwrap()])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("RUST_LOG")
            .stderr(Stdio::from(std::fs::File::create(dir.path().join(format!("loadtest-{n}.stderr"))).unwrap()))
            .output()
            .await
            .expect("loadtest runs");
        let secs = t0.elapsed().as_secs_f64();
        let (server_cpu, fakes_cpu) = ((cpu_secs("self") - cpu0) / secs * 100.0, (cpu_secs(&fakes_pid) - fakes0) / secs * 100.0);
        // Each step's whole report (per-call numbers included) stays with the run's logs.
        let _ = std::fs::write(dir.path().join(format!("loadtest-{n}.json")), &out.stdout);
        let Ok(r) = serde_json::from_slice::<Value>(&out.stdout) else {
            println!("{n:>5} loadtest failed: {}", std::fs::read_to_string(dir.path().join(format!("loadtest-{n}.stderr"))).unwrap_or_default().lines().last().unwrap_or(""));
            continue;
        };
        let added = AddedLatency::scrape(&health).await.since(&added0);
        let lag = Buckets::of(server.forward_lag()).since(&lag0);
        let (t, l, a, w) = (&r["totals"], &r["latency"], &r["audio"], &r["worker"]);
        let f = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.0}"));
        println!(
            "{n:>5} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7} {:>8} {:>10} {:>8} {:>6} {:>5} {:>5} {:>5} {:>9} {:>9.0} {:>9.0} {:>13} {:>13} {:>6} {:>12} {:>6} {:>12}",
            t["connected"],
            t["greeted"],
            format!("{}/{}", t["answered"], t["phrases"]),
            f(&l["p50_ms"]),
            f(&l["p95_ms"]),
            f(&l["p99_ms"]),
            f(&w["loaded"]["cpu_percent_mean"]),
            w["cpu_percent_per_call"].as_f64().map_or("-".into(), |v| format!("{v:.2}")),
            w["rss_bytes_per_call"].as_f64().map_or("-".into(), |v| format!("{:.2}", v / 1048576.0)),
            a["lost_packets"],
            a["late_frames"],
            a["silent_gaps"],
            t["failed"],
            f(&r["loadtest"]["cpu_percent_mean"]),
            server_cpu,
            fakes_cpu,
            added.caller.percentiles(),
            added.agent.percentiles(),
            added.lateness.above(0.04),
            added.lateness.percentiles(),
            lag.above(0.04),
            lag.percentiles(),
        );
        failed_calls += t["failed"].as_u64().unwrap_or(0);
        for fl in r["failures"].as_array().into_iter().flatten().take(3) {
            println!("        failure {}: {}", fl["room"], fl["message"]);
        }
        // Let the worker finish the step's consultations before the next step's baseline.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let _ = worker.start_kill();
    server.shutdown().await;
    drop(fakes.stdin.take());
    let _ = fakes.wait();
    // A failed call is explained by the worker's log: keep it (and the load tests' stderr).
    if failed_calls > 0 || std::env::var_os("CAPACITY_KEEP").is_some() {
        println!("{failed_calls} failed calls; the worker's logs and the load tests' stderr and JSON reports are kept in {}", dir.keep().display());
    }
}

/// The worker's added-latency histograms from its `/metrics`: cumulative (upper bound s, count).
#[derive(Default)]
struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    fn of(counts: Vec<(f64, u64)>) -> Buckets {
        Buckets(counts.into_iter().map(|(le, n)| (le, n as f64)).collect())
    }

    fn since(&self, before: &Buckets) -> Buckets {
        Buckets(self.0.iter().map(|(le, n)| (*le, n - before.0.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m))).collect())
    }

    /// The bucket bound under which `q` of the observations fall (ms).
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        (total > 0.0).then(|| self.0.iter().find(|(_, n)| *n >= q * total).map_or(f64::INFINITY, |(le, _)| le * 1000.0))
    }

    fn percentiles(&self) -> String {
        let top = self.0.iter().map(|(le, _)| *le).filter(|le| le.is_finite()).fold(0.0, f64::max) * 1000.0;
        let f = |q| self.quantile_ms(q).map_or("-".into(), |v: f64| if v.is_finite() { format!("{v}") } else { format!(">{top}") });
        format!("{}/{}", f(0.5), f(0.99))
    }

    /// Observations above the bound `le` (s).
    fn above(&self, le: f64) -> f64 {
        let total = self.0.last().map_or(0.0, |(_, n)| *n);
        total - self.0.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, n)| *n)
    }
}

struct AddedLatency {
    caller: Buckets,
    agent: Buckets,
    /// Every agent frame's write behind its slot.
    lateness: Buckets,
}

impl AddedLatency {
    async fn scrape(health: &str) -> AddedLatency {
        let (_, text) = support::http_get(health, "/metrics").await;
        let buckets = |name: &str| {
            let prefix = format!("{name}_bucket{{le=\"");
            Buckets(
                text.lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .filter_map(|l| {
                        let (le, n) = l.split_once("\"} ")?;
                        Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, n.trim().parse().ok()?))
                    })
                    .collect(),
            )
        };
        AddedLatency {
            caller: buckets("consultant_caller_added_latency_seconds"),
            agent: buckets("consultant_worker_added_latency_seconds"),
            lateness: buckets("consultant_agent_frame_lateness_seconds"),
        }
    }

    fn since(&self, before: &AddedLatency) -> AddedLatency {
        AddedLatency { caller: self.caller.since(&before.caller), agent: self.agent.since(&before.agent), lateness: self.lateness.since(&before.lateness) }
    }
}
