//! The fault soak (issue 12, "nothing lost, nothing repeated"): many consultations through the
//! real adapters and the fakes, with faults injected at seeded random points - the realtime
//! socket dropped (during the greeting, mid-answer, right after a caller's words, during the
//! replay, during a rollover), the provider's session limit, server errors, malformed frames,
//! refused handshakes, failed responses, the Persistence child killed, the store unwritable for
//! a while, DeepSeek rate limited / failing / blank / slow. Every consultation must be
//! finalized with exactly the dialogue that was spoken (from the fakes' ground truth) and one
//! final anketa, and the process's memory must stay flat.
//!
//! `SOAK_FAULTS=N` (default 120) sets how many faults must take effect, `SOAK_SEED` the seed
//! (printed), `SOAK_PARALLEL` how many consultations run at once (default 6).

#[path = "soak/call.rs"]
mod call;
#[path = "soak/plan.rs"]
mod plan;
#[path = "soak/ports.rs"]
mod ports;
#[path = "soak/truth.rs"]
mod truth;

use std::sync::Arc;
use std::time::Instant;

use consultant::store::SqliteStore;
use consultant_actors::SessionStatus;

use call::CallReport;
use ports::FlakyStore;

const DEFAULT_SEED: u64 = 0x5eed_1212;
/// Faults a consultation is expected to bring (to know when to stop starting new ones).
const FAULTS_PER_CALL: usize = 5;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        _ => default,
    }
}

/// Resident memory of this process, from /proc/self/statm.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages as f64 * 4096.0 / (1024.0 * 1024.0)
}

/// A fault's kind: its first word, two for the harness's and DeepSeek's ("DeepSeek Status").
fn kind(fault: &str) -> String {
    let head = fault.split(['(', '{']).next().unwrap_or(fault);
    let words: Vec<&str> = head.split_whitespace().collect();
    let n = if matches!(words.first(), Some(&("DeepSeek" | "handshake" | "store" | "Persistence"))) { 2 } else { 1 };
    words[..n.min(words.len())].join(" ")
}

fn describe(report: &CallReport) -> String {
    let p = &report.plan;
    let d = report.diff;
    format!(
        "call {:>3} {:<13} rollover={:<5} turns={} sessions={:>2} rollovers={} faults={:>2} messages={:>2} lost={} duplicated={} altered={} reordered={} status={} finals={} quiet_timeouts={} {:.1}s",
        p.index,
        p.flavour.to_string(),
        p.rollover,
        p.turns.len(),
        report.realtime_sessions,
        report.rollovers,
        report.faults.len(),
        report.expected.len(),
        d.lost,
        d.duplicated,
        d.altered,
        d.reordered,
        report.status.map_or("none".to_owned(), |s| s.to_string()),
        report.final_anketas,
        report.quiet_timeouts,
        report.took.as_secs_f64(),
    )
}

fn dump(report: &CallReport) {
    println!("  faults: {:?}", report.faults);
    println!("  trouble: {:?}", report.trouble);
    for (t, turn) in report.plan.turns.iter().enumerate() {
        println!("  turn {t}: barge_in={:?} injection={:?} transcript={:?}", turn.barge_in_ms, turn.injection, turn.script.transcript);
    }
    for line in &report.evidence {
        println!("  fake: {line}");
    }
    println!("  spoken (expected):");
    for s in &report.expected {
        println!("    {s}");
    }
    println!("  stored:");
    for s in &report.stored {
        println!("    {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_at_random_points_lose_and_repeat_nothing() {
    let target: usize = env_or("SOAK_FAULTS", 120);
    let seed: u64 = env_or("SOAK_SEED", DEFAULT_SEED);
    let parallel: usize = env_or("SOAK_PARALLEL", 6);
    println!("soak: seed {seed} (SOAK_SEED), at least {target} faults (SOAK_FAULTS), {parallel} consultations at a time (SOAK_PARALLEL)");
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("soak.db"), "NORMAL").expect("store opens"));
    let store = Arc::new(FlakyStore::new(sqlite));
    let rss_start = rss_mib();
    let mut rss_warm = None;

    let mut running = tokio::task::JoinSet::new();
    let mut reports: Vec<CallReport> = Vec::new();
    // SOAK_ONLY=3,3,17: just these plans (to replay a failure), each run under its own id.
    let only: Option<Vec<usize>> = std::env::var("SOAK_ONLY").ok().map(|v| v.split(',').map(|i| i.trim().parse().expect("SOAK_ONLY: call numbers")).collect());
    let (mut next, mut applied) = (0usize, 0usize);
    loop {
        while running.len() < parallel && only.as_ref().map_or(applied + running.len() * FAULTS_PER_CALL < target, |o| next < o.len()) {
            let index = only.as_ref().map_or(next, |o| o[next]);
            running.spawn(call::run(plan::draw(seed, index), next, store.clone()));
            next += 1;
        }
        let Some(done) = running.join_next().await else { break };
        let report = done.expect("a consultation task panicked");
        applied += report.faults.len();
        println!("{}", describe(&report));
        if !report.diff.is_clean() || !report.trouble.is_empty() {
            dump(&report);
        }
        reports.push(report);
        if reports.len() == parallel {
            // Warm: the first wave has grown the allocator and the store's caches.
            rss_warm = Some(rss_mib());
        }
    }
    let rss_end = rss_mib();
    let rss_warm = rss_warm.unwrap_or(rss_start);

    let messages: usize = reports.iter().map(|r| r.expected.len()).sum();
    let lost: usize = reports.iter().map(|r| r.diff.lost).sum();
    let duplicated: usize = reports.iter().map(|r| r.diff.duplicated).sum();
    let altered: usize = reports.iter().map(|r| r.diff.altered).sum();
    let reordered = reports.iter().filter(|r| r.diff.reordered).count();
    let unfinalized = reports.iter().filter(|r| !matches!(r.status, Some(SessionStatus::Completed | SessionStatus::Failed)) || r.final_anketas != 1).count();
    let failed = reports.iter().filter(|r| r.status == Some(SessionStatus::Failed)).count();
    let rollovers: usize = reports.iter().map(|r| r.rollovers).sum();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for f in reports.iter().flat_map(|r| &r.faults) {
        *kinds.entry(kind(f)).or_default() += 1;
    }
    println!("faults by kind: {kinds:?}");
    println!("memory: RSS {rss_start:.1} MiB at start, {rss_warm:.1} MiB after the first {parallel} consultations, {rss_end:.1} MiB at the end");
    println!("time: {:.1} s; {rollovers} realtime rollovers; {failed} consultations ended as failed (on their own: a fatal realtime error, or past the restart window), {unfinalized} not finalized with one final anketa", began.elapsed().as_secs_f64());
    println!(
        "soak: {applied} faults injected, {} consultations, {messages} messages checked, {lost} lost, {duplicated} duplicated ({altered} altered, {reordered} reordered)",
        reports.len()
    );
    assert!(applied >= target || only.is_some(), "only {applied} faults took effect (wanted {target})");
    assert_eq!((lost, duplicated, altered, reordered), (0, 0, 0, 0), "the stored dialogues differ from what was spoken (see above)");
    assert_eq!(unfinalized, 0, "every consultation is finalized with exactly one final anketa");
    // Generous: the point is no growth per consultation, not a tight figure.
    assert!(rss_end < rss_warm + 96.0, "memory grew from {rss_warm:.1} MiB to {rss_end:.1} MiB");
}
