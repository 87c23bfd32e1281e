//! What the console costs a busy worker: 200 consultations with caller audio every 20 ms
//! (and an exchange every 5 s each), measured without consoles, with 5 consoles attached
//! (subscribed to everything, in a separate process so their own work is not counted), and
//! without again. Prints process CPU (% of one core, from /proc/self/stat), the hub's own
//! publishing time, frames and bytes sent, and the caller-audio latency through the actors
//! (feeder -> Consultation mailbox -> Realtime mailbox -> connection), p50/p99/max.
//!
//! Run: `cargo bench -p consultant --bench console` (target: console < 2% of one core, no
//! added audio latency).

#[path = "../tests/console_ports/mod.rs"]
mod ports;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consultant::config::ConsoleConfig;
use consultant::console::client::ConsoleClient;
use consultant::console::hub::cpu_ticks;
use consultant::console::protocol::Command;
use consultant::console::{serve, ConsoleControl};
use consultant::secret::Secret;
use consultant_actors::consultation::Ports;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{ConsultationSettings, SessionId, VoiceHandler};
use consultant_fakes::memory::MemoryStore;
use ports::{NameExtractor, SilentAudio, TestConnector};

const CONSULTATIONS: usize = 200;
const CONSOLES: usize = 5;
const PHASE: Duration = Duration::from_secs(10);
const FRAME: Duration = Duration::from_millis(20);
const TOKEN: &str = "bench-read-only-token";
/// USER_HZ: /proc/self/stat counts CPU time in 1/100 s.
const TICKS_PER_SEC: f64 = 100.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--consoles") {
        // Child process: the attached consoles.
        let url = args[i + 1].clone();
        let secs: u64 = args[i + 2].parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(consoles(url, Duration::from_secs(secs)));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(bench());
}

/// 5 consoles subscribed to every topic, reading everything; prints frames and bytes.
async fn consoles(url: String, duration: Duration) {
    let mut tasks = Vec::new();
    for _ in 0..CONSOLES {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = ConsoleClient::connect(&url, TOKEN).await.expect("console connects");
            c.send(&Command::Subscribe { topics: None }).await.unwrap();
            let end = Instant::now() + duration;
            let (mut frames, mut bytes) = (0u64, 0u64);
            while Instant::now() < end {
                match tokio::time::timeout(end.saturating_duration_since(Instant::now()), c.next_text()).await {
                    Ok(Ok(text)) => {
                        frames += 1;
                        bytes += text.len() as u64;
                    }
                    Ok(Err(e)) => panic!("console lost: {e}"),
                    Err(_) => break,
                }
            }
            c.close().await;
            (frames, bytes)
        }));
    }
    let (mut frames, mut bytes) = (0, 0);
    for t in tasks {
        let (f, b) = t.await.unwrap();
        frames += f;
        bytes += b;
    }
    println!("{frames} {bytes}");
}

struct Phase {
    cpu_percent: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    frames: usize,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Feeds caller audio to every consultation for `PHASE` and measures.
async fn run_phase(handler: &VoiceHandler, handles: &[consultant_actors::handler::ConsultationHandle], connector: &TestConnector) -> Phase {
    connector.take_latencies();
    let started = Instant::now();
    let ticks_before = cpu_ticks().unwrap();
    let mut interval = tokio::time::interval(FRAME);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < PHASE {
        interval.tick().await;
        for h in handles {
            handler.process_user_audio(h, ports::stamped_frame());
        }
    }
    // Let the last frames arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks().unwrap() - ticks_before) as f64 / TICKS_PER_SEC / wall * 100.0;
    let mut lat = connector.take_latencies();
    lat.sort_unstable();
    Phase { cpu_percent: cpu, p50_us: percentile(&lat, 0.5), p99_us: percentile(&lat, 0.99), max_us: lat.last().copied().unwrap_or(0), frames: lat.len() }
}

fn report(name: &str, p: &Phase) {
    println!(
        "{name:<28} process CPU {:>6.1}% of one core | caller audio latency p50 {:>5} us, p99 {:>6} us, max {:>7} us ({} frames)",
        p.cpu_percent, p.p50_us, p.p99_us, p.max_us, p.frames
    );
}

async fn bench() {
    let mut settings = ConsultationSettings::for_tests(ports::fields());
    settings.max_duration = Duration::from_secs(3600);
    let connector = TestConnector::new();
    // One caller turn and one answer every 5 s per consultation: the board keeps changing.
    connector.chatter_every.store(250, Ordering::Relaxed);
    let ports_ = Ports { connector: connector.clone(), store: Arc::new(MemoryStore::default()), extractor: Arc::new(NameExtractor::default()) };
    let telemetry = Telemetry::new();
    let handler = VoiceHandler::start(Arc::new(settings), ports_, telemetry.clone()).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..CONSULTATIONS {
        let id = SessionId::parse(&format!("bench-{i:03}")).unwrap();
        let h = handler.create_session(id, format!("consultation-bench-{i:03}"), Arc::new(SilentAudio)).await.unwrap();
        handles.push(h);
    }
    for h in &handles {
        h.wait_ready().await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = ConsoleConfig {
        enabled: true,
        listen: "127.0.0.1:0".into(),
        token: Secret::new(TOKEN),
        operator_token: Secret::new("bench-operator-token"),
        token_file: dir.path().join("tokens.toml"),
        tls_cert: None,
        tls_key: None,
        max_clients: 16,
    };
    let control = ConsoleControl::new(&handler, None, Arc::new(|| {}));
    let server = serve(&config, control).await.unwrap();
    println!("console bench: {CONSULTATIONS} consultations, caller audio every {FRAME:?} each, {CONSOLES} consoles, {PHASE:?} per phase");

    let without = run_phase(&handler, &handles, &connector).await;
    report("no console attached", &without);

    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new(exe)
        .args(["--consoles", &server.url(), &(PHASE.as_secs() + 2).to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the consoles connect and take their snapshots before measuring.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let publish_before = server.publish_time();
    let frames_before = server.frames_sent();
    let with = run_phase(&handler, &handles, &connector).await;
    let publish = server.publish_time() - publish_before;
    let frames = server.frames_sent() - frames_before;
    let out = child.wait_with_output().await.unwrap();
    let received = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    report(&format!("{CONSOLES} consoles attached"), &with);

    let again = run_phase(&handler, &handles, &connector).await;
    report("no console attached (again)", &again);

    let baseline = (without.cpu_percent + again.cpu_percent) / 2.0;
    let hub_percent = publish.as_secs_f64() / PHASE.as_secs_f64() * 100.0;
    println!("hub publishing time: {:.1} ms over {:?} = {:.3}% of one core ({} frames queued to clients)", publish.as_secs_f64() * 1000.0, PHASE, hub_percent, frames);
    println!("consoles received (frames bytes): {received}");
    println!(
        "console cost: process CPU {:+.2} percentage points of one core vs the mean without consoles (target < 2); hub alone {:.3}%",
        with.cpu_percent - baseline,
        hub_percent
    );
    println!(
        "audio latency with consoles vs without: p50 {:+} us, p99 {:+} us",
        with.p50_us as i64 - without.p50_us.min(again.p50_us) as i64,
        with.p99_us as i64 - without.p99_us.min(again.p99_us) as i64
    );
    println!("console stats: {:?}", server.stats());
    server.shutdown().await;
    handler.shutdown().await;
}
