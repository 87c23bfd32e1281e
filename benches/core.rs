//! Foundation benchmarks (prints numbers; not a pass/fail test):
//! 1. 200 concurrent consultations appending dialogue messages to the store, on SQLite and
//!    on PostgreSQL (a throwaway local server, fsync on as in production): throughput and
//!    p50/p99 latency until a message is durable (SQLite targets: >= 5,000 msg/s, p99 < 5 ms
//!    on the 2-core machine).
//! 2. 1,000 idle consultation trees (Consultation + Realtime + Persistence + Extraction):
//!    RSS per tree (target < 64 KiB).
//!
//! Run: `cargo bench --bench core`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use consultant::store::{DatabaseUrl, Lease, SqliteStore, Store};
use consultant_fakes::postgres::PgServer;
use consultant_actors::anketa::{AnketaField, FieldKind};
use consultant_actors::consultation::Ports;
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{DialogueStore, SessionRecord};
use consultant_actors::session::SessionStatus;
use consultant_actors::settings::ConsultationSettings;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::VoiceHandler;
use consultant_fakes::memory::{CountingExtractor, RecordingAudio, ScriptedRealtime};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `pace`: None = every consultation appends as fast as it can (saturation); Some(d) = one
/// message every `d` per consultation (a steady offered load).
async fn append_benchmark(engine: &str, store: Store, consultations: usize, messages_each: usize, pace: Option<Duration>) {
    let store = Arc::new(store);
    for i in 0..consultations {
        let record = SessionRecord {
            session_id: SessionId::parse(&format!("bench-{i}")).unwrap(),
            room: format!("consultation-bench-{i}"),
            status: SessionStatus::Active,
            started_at: Utc::now(),
            ended_at: None,
            failure: None,
        };
        store.open_session(&record).await.unwrap();
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..consultations {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = SessionId::parse(&format!("bench-{i}")).unwrap();
            let mut latencies = Vec::with_capacity(messages_each);
            let mut ticker = pace.map(|d| {
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d.mul_f64(i as f64 / consultations as f64), d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            for seq in 1..=messages_each as u32 {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let message = DialogueMessage {
                    seq,
                    role: if seq % 2 == 0 { Role::Assistant } else { Role::User },
                    text: "Здравствуйте, меня интересует разработка сайта для нашей компании.".into(),
                    at: Utc::now(),
                    interrupted: false,
                };
                let t = Instant::now();
                store.append_message(&id, &message).await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    println!(
        "{engine} store append ({}): {consultations} concurrent consultations x {messages_each} messages = {} messages in {:.2} s -> {:.0} messages/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        match pace { None => "saturated".to_owned(), Some(d) => format!("paced, 1 message / {} ms each", d.as_millis()) },
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3,
    );
}

async fn idle_trees(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("idle.db"), "normal").unwrap());
    let fields = vec![AnketaField { name: "client_name".into(), description: "Имя".into(), kind: FieldKind::Text, required: true }];
    let ports = Ports { connector: ScriptedRealtime::new(), store, extractor: CountingExtractor::new() };
    let handler = VoiceHandler::start(Arc::new(ConsultationSettings::for_tests(fields)), ports, Telemetry::new()).await.unwrap();
    // Warm up allocator and runtime with a few trees before measuring.
    let mut handles = Vec::new();
    for i in 0..20 {
        let h = handler.create_session(SessionId::parse(&format!("warm-{i}")).unwrap(), "r".into(), RecordingAudio::new()).await.unwrap();
        h.wait_ready().await.unwrap();
        handles.push(h);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    for i in 0..count {
        let h = handler.create_session(SessionId::parse(&format!("idle-{i}")).unwrap(), format!("consultation-idle-{i}"), RecordingAudio::new()).await.unwrap();
        h.wait_ready().await.unwrap();
        handles.push(h);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    println!(
        "idle trees: {count} consultation trees (4 actors each, realtime connected, timers running): RSS +{:.1} MiB -> {:.1} KiB per tree",
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0),
        (after.saturating_sub(before)) as f64 / count as f64 / 1024.0
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = |name: &str| Store::from(SqliteStore::open(&dir.path().join(name), "normal").unwrap());
        append_benchmark("SQLite", sqlite("saturated.db"), 200, 50, None).await;
        // 200 x 25 messages/s = 5,000 messages/s offered.
        append_benchmark("SQLite", sqlite("paced.db"), 200, 50, Some(Duration::from_millis(40))).await;
        let server = PgServer::start_with_fsync(true);
        for pace in [None, Some(Duration::from_millis(40))] {
            let store = Store::open(&DatabaseUrl::Postgres(server.fresh_database()), "normal", Lease::unowned()).await.unwrap();
            append_benchmark("PostgreSQL", store, 200, 50, pace).await;
        }
        drop(server);
        idle_trees(1000).await;
    });
}
