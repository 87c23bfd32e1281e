//! Realtime adapter benchmarks (prints numbers; not a pass/fail test):
//! 1. server events parsed per second for audio deltas of 100 ms (parse + base64 decode);
//! 2. caller-audio appends encoded per second (20 ms and 100 ms frames);
//! 3. 200 concurrent consultations on loopback, streaming both ways through the real actors
//!    and the real client against the fake realtime server (run in a child process so its CPU
//!    is not counted): CPU per session (target < 0.5% of a core) and the latency from a delta
//!    leaving the server to its PCM reaching the consultation's audio output (target p99 < 2 ms;
//!    includes the loopback TCP hop).
//!
//! Run: `cargo bench --bench realtime` (REALTIME_BENCH_SESSIONS, REALTIME_BENCH_SECS override).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consultant::realtime::protocol::{decode_pcm, parse_server_event, write_audio_append, ServerEvent};
use consultant::realtime::{AzureRealtimeClient, RealtimeConfig, RealtimeFlavour};
use consultant::secret::Secret;
use consultant::store::SqliteStore;
use consultant::tls::ClientTls;
use consultant_actors::consultation::{EndReason, Ports};
use consultant_actors::ports::{AgentAudioOutput, PlayedAudio};
use consultant_actors::settings::ConsultationSettings;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{AnketaField, FieldKind, SessionId, VoiceHandler};
use consultant_fakes::memory::CountingExtractor;
use consultant_fakes::realtime::{read_stamp, send_stamp, AgentVoice, FakeFlavour, FakeRealtime, FakeRealtimeOptions};

const CHILD_ENV: &str = "REALTIME_BENCH_FAKE_SERVER";

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        fake_server_process();
        return;
    }
    parse_benchmark();
    append_benchmark();
    let sessions = std::env::var("REALTIME_BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let secs = std::env::var("REALTIME_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    sessions_benchmark(sessions, Duration::from_secs(secs));
}

fn parse_benchmark() {
    let pcm: Vec<u8> = (0..2400u32).flat_map(|i| ((i * 31 % 20000) as i16).to_le_bytes()).collect();
    use base64::Engine;
    let delta = base64::engine::general_purpose::STANDARD.encode(&pcm);
    let frame = format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_123","response_id":"resp_abc","item_id":"item_def","output_index":0,"content_index":0,"delta":"{delta}","obfuscation":"x9Qw"}}"#
    );
    let mut scratch = Vec::new();
    let n = 20_000;
    let started = Instant::now();
    let mut samples = 0usize;
    for _ in 0..n {
        match parse_server_event(std::hint::black_box(&frame)).unwrap() {
            ServerEvent::AudioDelta { delta, .. } => samples += decode_pcm(&delta, &mut scratch).unwrap().len(),
            other => panic!("{other:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(samples, n * 2400);
    println!(
        "audio deltas (100 ms, {} B frame) parsed+decoded: {:.0} events/s ({:.1} us each; {:.0}x real time per core)",
        frame.len(),
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64,
        n as f64 * 0.1 / elapsed.as_secs_f64()
    );
}

fn append_benchmark() {
    for frame_ms in [20usize, 100] {
        let pcm: Vec<i16> = (0..frame_ms * 24).map(|i| (i as i16).wrapping_mul(7)).collect();
        let mut out = String::new();
        let mut scratch = Vec::new();
        let n = 100_000 / frame_ms * 20;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..n {
            out.clear();
            write_audio_append(&mut out, std::hint::black_box(&pcm), &mut scratch);
            bytes += out.len();
        }
        let elapsed = started.elapsed();
        std::hint::black_box(bytes);
        println!(
            "caller appends encoded ({frame_ms} ms frames): {:.0} appends/s ({:.2} us each)",
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / n as f64
        );
    }
}

/// The child: a fake Azure GA endpoint whose greeting is a minute of real-time audio.
fn fake_server_process() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut options = FakeRealtimeOptions::new(FakeFlavour::AzureGa);
        options.speed = Some(1.0);
        options.greeting = "Здравствуйте! Это длинное приветствие.".into();
        options.voice = AgentVoice::Tone { ms_per_char: 2_000 };
        options.stamp_deltas = true;
        let fake = FakeRealtime::start(options).await.unwrap();
        println!("{} {}", fake.endpoint(), fake.options().api_key);
        // Serve until the parent closes stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {}
        })
        .await;
    });
}

/// Records how long each delta took from the server to the consultation's audio output.
struct LatencyProbe {
    measuring: Arc<AtomicBool>,
    latencies_ns: Arc<Mutex<Vec<u64>>>,
}

impl AgentAudioOutput for LatencyProbe {
    fn play(&self, _item_id: &str, pcm: Arc<[i16]>) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        if let Some(sent) = read_stamp(&pcm) {
            let now = send_stamp();
            self.latencies_ns.lock().unwrap().push(now.saturating_sub(sent));
        }
    }
    fn interrupt(&self) -> Option<PlayedAudio> {
        None
    }
    fn is_playing(&self) -> bool {
        false
    }
}

fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Linux USER_HZ is 100 on every mainstream kernel configuration.
const TICKS_PER_SEC: f64 = 100.0;

fn sessions_benchmark(sessions: usize, window: Duration) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the fake server process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let (endpoint, key) = (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
    let child_pid = child.id().to_string();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db"), "normal").unwrap());
        let mut config = RealtimeConfig::new(RealtimeFlavour::AzureGa, endpoint, Secret::new(key));
        config.deployment = "gpt-4o-realtime-preview".into();
        let client = AzureRealtimeClient::new(config, ClientTls::default()).unwrap();
        let stats = client.stats();
        let ports = Ports { connector: Arc::new(client), store, extractor: CountingExtractor::new() };
        let fields = vec![AnketaField { name: "client_name".into(), description: "Имя".into(), kind: FieldKind::Text, required: true }];
        let settings = Arc::new(ConsultationSettings::for_tests(fields));
        let handler = Arc::new(VoiceHandler::start(settings, ports, Telemetry::new()).await.unwrap());
        let measuring = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(sessions * 10 * window.as_secs() as usize)));
        let setup_started = Instant::now();
        let mut handles = Vec::new();
        for i in 0..sessions {
            let probe = Arc::new(LatencyProbe { measuring: measuring.clone(), latencies_ns: latencies.clone() });
            let handle = handler.create_session(SessionId::parse(&format!("bench-{i}")).unwrap(), format!("room-{i}"), probe).await.unwrap();
            handles.push(handle);
        }
        for h in &handles {
            h.wait_ready().await.expect("session ready");
        }
        println!("{sessions} realtime sessions connected and configured in {:.2} s", setup_started.elapsed().as_secs_f64());

        // Caller side: 20 ms of (quiet) audio per session every 20 ms. Each session has its own
        // clock with its own phase, as each room's track does (not all 200 in one burst).
        let frame: Arc<[i16]> = vec![3i16; 480].into();
        let count = handles.len().max(1) as u32;
        let caller: Vec<tokio::task::JoinHandle<()>> = handles
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, h)| {
                let handler = handler.clone();
                let frame = frame.clone();
                let phase = Duration::from_millis(20) * i as u32 / count;
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_millis(20));
                    loop {
                        tick.tick().await;
                        handler.process_user_audio(&h, frame.clone());
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = stats.snapshot();
        let (self_before, child_before) = (cpu_ticks("self"), cpu_ticks(&child_pid));
        measuring.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        measuring.store(false, Ordering::SeqCst);
        let wall = t0.elapsed().as_secs_f64();
        let (self_after, child_after) = (cpu_ticks("self"), cpu_ticks(&child_pid));
        let after = stats.snapshot();
        for clock in &caller {
            clock.abort();
        }

        let worker_cpu = (self_after - self_before) as f64 / TICKS_PER_SEC / wall;
        let fake_cpu = (child_after - child_before) as f64 / TICKS_PER_SEC / wall;
        let deltas = after.audio_deltas_received - before.audio_deltas_received;
        let appends = after.audio_appends_sent - before.audio_appends_sent;
        println!(
            "{sessions} sessions streaming both ways for {wall:.1} s: {:.0} agent deltas/s in, {:.0} caller appends/s out",
            deltas as f64 / wall,
            appends as f64 / wall
        );
        println!(
            "worker CPU: {:.1}% of a core in total, {:.3}% of a core per session (target < 0.5%); fake server process: {:.1}% of a core",
            worker_cpu * 100.0,
            worker_cpu * 100.0 / sessions as f64,
            fake_cpu * 100.0
        );
        let mut l = std::mem::take(&mut *latencies.lock().unwrap());
        l.sort_unstable();
        if l.is_empty() {
            println!("no agent audio arrived during the window");
        } else {
            let pct = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize] as f64 / 1e6;
            println!(
                "delta server-send -> PCM at the consultation's audio output ({} deltas): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 < 2 ms)",
                l.len(),
                pct(0.5),
                pct(0.99),
                pct(1.0)
            );
        }
        let ended = Instant::now();
        for h in &handles {
            let _ = handler.end_session(&h.session_id, EndReason::Shutdown).await;
        }
        println!("ended {sessions} sessions in {:.2} s", ended.elapsed().as_secs_f64());
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
