//! Worker-link benchmarks on the loopback LiveKit server (prints numbers):
//! 1. worker start (supervisor, link actor, health endpoint) to registered (target < 100 ms);
//! 2. 500 availability requests back to back: dispatch created -> answer received by the
//!    server, each accepted job then fails step 3 at once (no room media), freeing its slot.
//!
//! `cargo bench -p consultant --bench worker`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consultant::config::Config;
use consultant::entrypoint::JobRooms;
use consultant::secret::Secret;
use consultant_actors::ports::RoomConnector;
use consultant_actors::SessionId;
use consultant::livekit::WorkerMode;
use consultant::store::SqliteStore;
use consultant::tls::ClientTls;
use consultant::worker::{Worker, WorkerParts};
use consultant_fakes::memory::{CountingExtractor, RecordingAudio, ScriptedRealtime};
use consultant_fakes::rooms::RefusingRoom;
use livekit_loopback::{JobStatus, LoopbackConfig, LoopbackServer, ServerEvent};

const AGENT: &str = "consultant-bench";
const STARTS: usize = 30;
const REQUESTS: usize = 500;

fn config(url: &str, dir: &Path) -> Config {
    let text = include_str!("../config.toml")
        .replacen("url = \"ws://127.0.0.1:7880\"", &format!("url = \"{url}\""), 1)
        .replacen("agent_name = \"consultant\"", &format!("agent_name = \"{AGENT}\""), 1)
        .replacen("health_listen = \"127.0.0.1:8081\"", "health_listen = \"127.0.0.1:0\"", 1)
        .replacen("path = \"data/consultations.db\"", &format!("path = \"{}\"", dir.join("db.sqlite").display()), 1)
        .replacen("dir = \"logs\"", &format!("dir = \"{}\"", dir.join("logs").display()), 1);
    Config::from_toml(&text, &dir.join("config.toml"), |n| match n {
        "LIVEKIT_API_KEY" => Some("devkey".into()),
        "LIVEKIT_API_SECRET" => Some("secret".into()),
        _ => None,
    })
    .expect("bench config")
}

/// Every job's room refuses the agent, so each accepted job fails step 3 at once.
struct NoMedia;

impl JobRooms for NoMedia {
    fn room(&self, _url: &str, _token: &Secret, _session_id: &SessionId) -> Arc<dyn RoomConnector> {
        Arc::new(RefusingRoom { audio: RecordingAudio::new(), cause: "no room media in this bench".into() })
    }
}

fn parts(dir: &Path) -> WorkerParts {
    WorkerParts {
        connector: ScriptedRealtime::new(),
        extractor: CountingExtractor::new(),
        store: Arc::new(SqliteStore::open(&dir.join("db.sqlite"), "normal").unwrap()),
        rooms: Arc::new(NoMedia),
        tls: ClientTls::default(),
        // An unowned SQLite store: sessions are recovered at start-up only.
        sweep_every: None,
        telemetry: consultant_actors::telemetry::Telemetry::new(),
    }
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: n={} min={:.2} ms p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        ms(samples[0]),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(samples[samples.len() - 1])
    );
}

async fn start_to_registered(server: &LoopbackServer, dir: &Path) -> Vec<Duration> {
    let config = config(&server.url(), dir);
    let mut samples = Vec::new();
    for _ in 0..STARTS {
        let parts = parts(dir);
        let t0 = Instant::now();
        let worker = Worker::start(&config, WorkerMode::Start, parts).await.expect("worker starts");
        worker.link().wait_for(|s| s.registered).await.expect("registers");
        samples.push(t0.elapsed());
        worker.shutdown().await;
    }
    samples
}

async fn availability_round_trips(server: &LoopbackServer, dir: &Path) -> Vec<Duration> {
    let config = config(&server.url(), dir);
    let worker = Worker::start(&config, WorkerMode::Dev, parts(dir)).await.expect("worker starts");
    worker.link().wait_for(|s| s.registered).await.unwrap();
    let mut samples = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let room = format!("consultation-bench-{i}");
        let mut events = server.subscribe();
        let t0 = Instant::now();
        server.create_dispatch(&room, AGENT, "");
        let mut job = None;
        let answered = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Ok(ServerEvent::JobCreated { job_id, room: r, .. })) if r == room => job = Some(job_id),
                Ok(Ok(ServerEvent::AvailabilityAnswered { job_id, available, .. })) if Some(&job_id) == job.as_ref() => {
                    samples.push(t0.elapsed());
                    assert!(available, "request {i} refused");
                    break job_id;
                }
                Ok(Ok(_)) => {}
                other => panic!("no availability answer for request {i}: {other:?}"),
            }
        };
        // Let the job fail step 3 and free its slot before the next request.
        server.wait_for_job_status(&answered, JobStatus::JsFailed, Duration::from_secs(10)).await.unwrap();
        worker.link().wait_for(|s| s.jobs == 0).await;
    }
    worker.shutdown().await;
    samples
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        report("worker start -> registered (target < 100 ms)", start_to_registered(&server, dir.path()).await);
        report("availability request -> answer, back to back", availability_round_trips(&server, dir.path()).await);
        server.shutdown().await;
    });
}
