//! What a load test found: one report per call, live counters for the progress line, and the
//! summary printed at the end (a table, or JSON with stable field names).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::procs::Sample;
use super::stats::{percentile, AudioQuality};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Room,
    Signalling,
    Media,
    NoAgent,
    Other,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn signalling(message: String) -> Self {
        Self { kind: FailureKind::Signalling, message }
    }
    pub fn media(message: String) -> Self {
        Self { kind: FailureKind::Media, message }
    }
    pub fn other(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Other, message: message.into() }
    }
    pub fn no_agent(room: &str, timeout: Duration, agent_name: &str) -> Self {
        let message = format!("no agent joined {room} within {} s: is a worker running with agent name {agent_name}?", timeout.as_secs_f64());
        Self { kind: FailureKind::NoAgent, message }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CallReport {
    pub room: String,
    pub connected: bool,
    pub agent_joined: bool,
    pub greeted: bool,
    /// Caller phrases whose answer window closed (answered or not).
    pub phrases: usize,
    pub answered: usize,
    /// Phrases sent so shortly before the end that no answer was due yet (not counted).
    pub pending_phrases: usize,
    pub latencies_ms: Vec<f64>,
    pub audio: AudioQuality,
    /// Seconds the caller was connected.
    pub seconds: f64,
    /// How often the caller's task woke (its cost: 50/s is the frame clock alone).
    pub wakeups_per_s: f64,
    pub failure: Option<Failure>,
}

impl CallReport {
    pub fn new(room: &str) -> Self {
        Self {
            room: room.to_owned(),
            connected: false,
            agent_joined: false,
            greeted: false,
            phrases: 0,
            answered: 0,
            pending_phrases: 0,
            latencies_ms: Vec::new(),
            audio: AudioQuality::default(),
            seconds: 0.0,
            wakeups_per_s: 0.0,
            failure: None,
        }
    }
}

/// Counters the callers bump while they run (the progress line reads them).
#[derive(Default)]
pub struct Live {
    pub started: AtomicUsize,
    pub connected: AtomicUsize,
    /// Connected and not ended yet.
    pub active: AtomicUsize,
    pub greeted: AtomicUsize,
    pub answered: AtomicUsize,
    pub failed: AtomicUsize,
    pub ended: AtomicUsize,
    pub agent_seen: AtomicBool,
}

impl Live {
    pub fn line(&self, secs: u64, worker: Option<Sample>, me: Option<Sample>) -> String {
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        let mut line = format!(
            "[{secs:>4}s] calls {} started, {} connected, {} greeted, {} answers, {} failed, {} ended",
            get(&self.started),
            get(&self.connected),
            get(&self.greeted),
            get(&self.answered),
            get(&self.failed),
            get(&self.ended)
        );
        if let Some(w) = worker {
            line.push_str(&format!(" | worker {:.0}% cpu {} MB", w.cpu_percent, w.rss_bytes >> 20));
        }
        if let Some(m) = me {
            line.push_str(&format!(" | loadtest {:.0}% cpu", m.cpu_percent));
        }
        line
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub calls: usize,
    pub connected: usize,
    pub agent_joined: usize,
    pub greeted: usize,
    pub phrases: usize,
    pub answered: usize,
    pub failed: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct AudioTotals {
    pub packets: u64,
    pub speech_packets: u64,
    pub lost_packets: u64,
    pub jitter_ms_mean: f64,
    pub jitter_ms_max: f64,
    pub late_frames: u64,
    pub silent_gaps: u64,
}

/// A process's CPU (% of one core) and RSS over the run.
#[derive(Debug, Default, Serialize)]
pub struct ProcessUsage {
    pub samples: usize,
    pub cpu_percent_mean: f64,
    pub cpu_percent_max: f64,
    pub rss_bytes_mean: u64,
    pub rss_bytes_max: u64,
}

impl ProcessUsage {
    pub fn of(samples: &[Sample]) -> Self {
        let n = samples.len().max(1) as f64;
        Self {
            samples: samples.len(),
            cpu_percent_mean: samples.iter().map(|s| s.cpu_percent).sum::<f64>() / n,
            cpu_percent_max: samples.iter().map(|s| s.cpu_percent).fold(0.0, f64::max),
            rss_bytes_mean: (samples.iter().map(|s| s.rss_bytes as f64).sum::<f64>() / n) as u64,
            rss_bytes_max: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WorkerUsage {
    pub pid: u32,
    /// Before the first room: the idle worker.
    pub baseline: ProcessUsage,
    /// While the most calls were connected at once.
    pub loaded: ProcessUsage,
    pub loaded_calls: usize,
    pub cpu_percent_per_call: Option<f64>,
    pub rss_bytes_per_call: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct FailureLine {
    pub room: String,
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub run: String,
    pub rooms: usize,
    pub agent_name: String,
    pub duration_s: f64,
    pub ramp_s: f64,
    pub totals: Totals,
    pub latency: Latency,
    pub audio: AudioTotals,
    pub worker: Option<WorkerUsage>,
    pub loadtest: ProcessUsage,
    pub failures: Vec<FailureLine>,
    pub calls: Vec<CallReport>,
}

impl Summary {
    pub fn totals(calls: &[CallReport]) -> (Totals, Latency, AudioTotals, Vec<FailureLine>) {
        let count = |f: fn(&CallReport) -> bool| calls.iter().filter(|c| f(c)).count();
        let totals = Totals {
            calls: calls.len(),
            connected: count(|c| c.connected),
            agent_joined: count(|c| c.agent_joined),
            greeted: count(|c| c.greeted),
            phrases: calls.iter().map(|c| c.phrases).sum(),
            answered: calls.iter().map(|c| c.answered).sum(),
            failed: count(|c| c.failure.is_some()),
        };
        let mut all: Vec<f64> = calls.iter().flat_map(|c| c.latencies_ms.iter().copied()).collect();
        all.sort_by(f64::total_cmp);
        let latency = Latency { count: all.len(), p50_ms: percentile(&all, 50.0), p95_ms: percentile(&all, 95.0), p99_ms: percentile(&all, 99.0), max_ms: all.last().copied() };
        let heard: Vec<&AudioQuality> = calls.iter().map(|c| &c.audio).filter(|a| a.packets > 0).collect();
        let audio = AudioTotals {
            packets: heard.iter().map(|a| a.packets).sum(),
            speech_packets: heard.iter().map(|a| a.speech_packets).sum(),
            lost_packets: heard.iter().map(|a| a.lost_packets).sum(),
            jitter_ms_mean: heard.iter().map(|a| a.jitter_ms).sum::<f64>() / heard.len().max(1) as f64,
            jitter_ms_max: heard.iter().map(|a| a.max_jitter_ms).fold(0.0, f64::max),
            late_frames: heard.iter().map(|a| a.late_frames).sum(),
            silent_gaps: heard.iter().map(|a| a.silent_gaps).sum(),
        };
        let failures = calls
            .iter()
            .filter_map(|c| c.failure.as_ref().map(|f| FailureLine { room: c.room.clone(), kind: f.kind, message: f.message.clone() }))
            .collect();
        (totals, latency, audio, failures)
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
        let t = &self.totals;
        let mut s = format!("load test {}: {} rooms, agent `{}`, {} s each, ramp {} s\n", self.run, self.rooms, self.agent_name, self.duration_s, self.ramp_s);
        s.push_str(&format!("  calls       {} connected, {} agent joined, {} greeted, {} failed (of {})\n", t.connected, t.agent_joined, t.greeted, t.failed, t.calls));
        s.push_str(&format!("  turns       {} of {} caller phrases answered\n", t.answered, t.phrases));
        let l = &self.latency;
        s.push_str(&format!("  voice-to-voice  p50 {}  p95 {}  p99 {}  max {}  ({} turns)\n", ms(l.p50_ms), ms(l.p95_ms), ms(l.p99_ms), ms(l.max_ms), l.count));
        let a = &self.audio;
        s.push_str(&format!(
            "  agent audio {} packets ({} speech), {} lost, jitter mean {:.1} ms max {:.1} ms, {} late (>40 ms), {} silent gaps in answers\n",
            a.packets, a.speech_packets, a.lost_packets, a.jitter_ms_mean, a.jitter_ms_max, a.late_frames, a.silent_gaps
        ));
        if let Some(w) = &self.worker {
            let per = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_owned(), f);
            s.push_str(&format!(
                "  worker {}   idle {:.1}% cpu {} MB; with {} calls {:.1}% cpu (max {:.1}%), {} MB (max {} MB); per call {} cpu, {} RSS\n",
                w.pid,
                w.baseline.cpu_percent_mean,
                w.baseline.rss_bytes_mean >> 20,
                w.loaded_calls,
                w.loaded.cpu_percent_mean,
                w.loaded.cpu_percent_max,
                w.loaded.rss_bytes_mean >> 20,
                w.loaded.rss_bytes_max >> 20,
                per(w.cpu_percent_per_call, &|v| format!("{v:.2}%")),
                per(w.rss_bytes_per_call, &|v| format!("{:.2} MB", v / 1048576.0)),
            ));
        }
        let me = &self.loadtest;
        s.push_str(&format!("  loadtest    {:.1}% cpu mean, {:.1}% max, {} MB\n", me.cpu_percent_mean, me.cpu_percent_max, me.rss_bytes_max >> 20));
        s.push_str("\n  room                                     conn greet answered  p50 ms  lost late gaps\n");
        for c in &self.calls {
            let mut sorted = c.latencies_ms.clone();
            sorted.sort_by(f64::total_cmp);
            let p50 = percentile(&sorted, 50.0).map_or("-".to_owned(), |v| format!("{v:.0}"));
            let yes = |b: bool| if b { "yes" } else { "no" };
            s.push_str(&format!(
                "  {:<40} {:<4} {:<5} {:>3}/{:<3}  {:>7} {:>5} {:>4} {:>4}\n",
                c.room, yes(c.connected), yes(c.greeted), c.answered, c.phrases, p50, c.audio.lost_packets, c.audio.late_frames, c.audio.silent_gaps
            ));
        }
        if !self.failures.is_empty() {
            s.push_str("\n  failures:\n");
            for f in &self.failures {
                s.push_str(&format!("    {}: {}\n", f.room, f.message));
            }
        }
        s
    }
}
