//! Process-wide counters and histograms for operators (Prometheus `/metrics`, `/worker` and the
//! console all read [`Metrics::snapshot`], so they show the same figures).
//!
//! Everything is a relaxed atomic: recording never locks or allocates, so it may sit on the
//! consultation's hot path. Labels are small fixed sets (no session ids).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::ports::TokenUsage;
use crate::session::SessionStatus;

/// Voice-to-voice latency buckets (s): a good turn is well under 1 s, a bad one several.
pub const LATENCY_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];
/// DeepSeek extraction buckets (s): a JSON-mode call takes seconds.
pub const EXTRACTION_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0];
/// SQLite commit buckets (s): milliseconds normally, seconds on a sick disk.
pub const STORE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Worker-added latency buckets (s): tens of microseconds normally; milliseconds mean an
/// actor's mailbox is backed up or the machine is out of CPU.
pub const ADDED_LATENCY_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];
/// Agent frame lateness buckets (s): a frame written past its 20 ms slot by more than 40 ms is
/// the load test's (and a jitter buffer's) late frame.
pub const FRAME_LATENESS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25];

/// The `direction` and `kind` labels of the realtime token counter. `other` is what the
/// provider's details did not itemise (image tokens, or no details sent), so each
/// direction's kinds add up to its billed total.
pub const TOKEN_DIRECTIONS: [&str; 2] = ["input", "output"];
pub const TOKEN_KINDS: [&str; 3] = ["audio", "text", "other"];

/// Why a realtime session was replaced (a bounded label). `planned` is an operator's forced
/// reconnect, counted by the consultation's planned restart; `rollover` the switch before
/// the provider's limit.
pub const RECONNECT_CAUSES: [&str; 5] = ["transient", "expired", "fatal", "planned", "rollover"];

/// Final statuses a consultation is stored with (the `status` label).
pub const FINAL_STATUSES: [SessionStatus; 3] = [SessionStatus::Completed, SessionStatus::Failed, SessionStatus::Interrupted];

/// Fixed buckets of atomics; at most 16 bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative: `counts[i]` observations in `(bounds[i-1], bounds[i]]`, the last one +Inf.
    counts: [AtomicU64; 17],
    /// Sum in nanoseconds (integer, so it stays an atomic add; fine enough for
    /// microsecond observations).
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() < 17, "at most 16 bucket bounds");
        Self { bounds, counts: Default::default(), sum_ns: AtomicU64::new(0) }
    }

    pub fn observe_secs(&self, secs: f64) {
        let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn observe(&self, d: std::time::Duration) {
        self.observe_secs(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot { buckets, count, sum_secs: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9 }
    }
}

/// A histogram at one instant: cumulative `(upper bound s, count)` pairs, +Inf is `count`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_secs: f64,
}

impl HistogramSnapshot {
    /// Mean of the observations (s), for the console.
    pub fn mean_secs(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_secs / self.count as f64)
    }

    /// Observations above the bucket bound `bound` (s); all of them if it is not a bound.
    pub fn above(&self, bound: f64) -> u64 {
        self.count - self.buckets.iter().find(|(b, _)| *b == bound).map_or(0, |(_, n)| *n)
    }
}

#[derive(Debug)]
pub struct Metrics {
    finished: [AtomicU64; FINAL_STATUSES.len()],
    pub voice_latency: Histogram,
    reconnects: [AtomicU64; RECONNECT_CAUSES.len()],
    pub barge_ins: AtomicU64,
    pub caller_dropped_ms: AtomicU64,
    pub extractions_ok: AtomicU64,
    pub extractions_failed: AtomicU64,
    /// Citations of the extractor dropped by evidence validation.
    pub evidence_dropped: AtomicU64,
    pub extraction_duration: Histogram,
    pub store_commit: Histogram,
    /// The first audio of an answer: off the realtime socket to its first packet written to the
    /// room (shared with the room adapter, which sees the packet leave).
    pub worker_added_latency: std::sync::Arc<Histogram>,
    /// A caller frame: its packet off the room's socket to queued for the realtime socket.
    pub caller_added_latency: Histogram,
    /// Every agent frame: written to the room this long after its slot on the voice's 20 ms
    /// clock (shared with the room adapter). Shows whether a late frame left the worker late.
    pub agent_frame_lateness: std::sync::Arc<Histogram>,
    /// [direction][kind], as [`TOKEN_DIRECTIONS`] x [`TOKEN_KINDS`].
    tokens: [[AtomicU64; TOKEN_KINDS.len()]; TOKEN_DIRECTIONS.len()],
    cached_input_tokens: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            finished: Default::default(),
            voice_latency: Histogram::new(LATENCY_BUCKETS),
            reconnects: Default::default(),
            barge_ins: AtomicU64::new(0),
            caller_dropped_ms: AtomicU64::new(0),
            extractions_ok: AtomicU64::new(0),
            extractions_failed: AtomicU64::new(0),
            evidence_dropped: AtomicU64::new(0),
            extraction_duration: Histogram::new(EXTRACTION_BUCKETS),
            store_commit: Histogram::new(STORE_BUCKETS),
            worker_added_latency: std::sync::Arc::new(Histogram::new(ADDED_LATENCY_BUCKETS)),
            caller_added_latency: Histogram::new(ADDED_LATENCY_BUCKETS),
            agent_frame_lateness: std::sync::Arc::new(Histogram::new(FRAME_LATENESS_BUCKETS)),
            tokens: Default::default(),
            cached_input_tokens: AtomicU64::new(0),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Metrics {
    /// A consultation was stored with `status`; non-final statuses are ignored.
    pub fn finished(&self, status: SessionStatus) {
        if let Some(i) = FINAL_STATUSES.iter().position(|s| *s == status) {
            add(&self.finished[i], 1);
        }
    }

    /// `cause` is one of [`RECONNECT_CAUSES`]; anything else counts as transient.
    pub fn reconnect(&self, cause: &str) {
        let i = RECONNECT_CAUSES.iter().position(|c| *c == cause).unwrap_or(0);
        add(&self.reconnects[i], 1);
    }

    pub fn barge_in(&self) {
        add(&self.barge_ins, 1);
    }

    /// Realtime usage reported by a response (or a view's growth).
    pub fn tokens(&self, usage: &TokenUsage) {
        let split = [
            (usage.input_tokens, usage.input_audio_tokens, usage.input_text_tokens),
            (usage.output_tokens, usage.output_audio_tokens, usage.output_text_tokens),
        ];
        for (counters, (total, audio, text)) in self.tokens.iter().zip(split) {
            add(&counters[0], audio);
            add(&counters[1], text);
            add(&counters[2], total.saturating_sub(audio + text));
        }
        add(&self.cached_input_tokens, usage.input_cached_tokens);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            consultations_finished: FINAL_STATUSES.iter().zip(&self.finished).map(|(s, c)| (s.as_str().to_owned(), get(c))).collect(),
            voice_latency: self.voice_latency.snapshot(),
            reconnects: RECONNECT_CAUSES.iter().zip(&self.reconnects).map(|(s, c)| ((*s).to_owned(), get(c))).collect(),
            barge_ins: get(&self.barge_ins),
            caller_dropped_ms: get(&self.caller_dropped_ms),
            extractions_ok: get(&self.extractions_ok),
            extractions_failed: get(&self.extractions_failed),
            evidence_dropped: get(&self.evidence_dropped),
            extraction_duration: self.extraction_duration.snapshot(),
            store_commit: self.store_commit.snapshot(),
            input_tokens: self.tokens[0].iter().map(get).sum(),
            output_tokens: self.tokens[1].iter().map(get).sum(),
            tokens: TOKEN_DIRECTIONS
                .iter()
                .zip(&self.tokens)
                .flat_map(|(d, counters)| TOKEN_KINDS.iter().zip(counters).map(|(k, c)| ((*d).to_owned(), (*k).to_owned(), get(c))))
                .collect(),
            cached_input_tokens: get(&self.cached_input_tokens),
            worker_added_latency: self.worker_added_latency.snapshot(),
            caller_added_latency: self.caller_added_latency.snapshot(),
            agent_frame_lateness: self.agent_frame_lateness.snapshot(),
        }
    }
}

/// Classifies a realtime close reason (`RealtimeFailure`'s text) into a reconnect cause.
pub fn reconnect_cause(reason: Option<&str>) -> &'static str {
    match reason {
        Some(r) if r.contains("expired") => "expired",
        Some(r) if r.contains("fatal") => "fatal",
        _ => "transient",
    }
}

/// [`Metrics`] at one instant, as `/worker` and the console show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// (final status, count)
    pub consultations_finished: Vec<(String, u64)>,
    pub voice_latency: HistogramSnapshot,
    /// (cause, count)
    pub reconnects: Vec<(String, u64)>,
    pub barge_ins: u64,
    pub caller_dropped_ms: u64,
    pub extractions_ok: u64,
    pub extractions_failed: u64,
    /// Absent from older servers.
    #[serde(default)]
    pub evidence_dropped: u64,
    pub extraction_duration: HistogramSnapshot,
    pub store_commit: HistogramSnapshot,
    /// Totals by direction (what `tokens` adds up to, kept for readers of the older fields).
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// (direction, kind, count) for every pair of [`TOKEN_DIRECTIONS`] x [`TOKEN_KINDS`].
    // Defaults here: a console reading an older worker.
    #[serde(default)]
    pub tokens: Vec<(String, String, u64)>,
    #[serde(default)]
    pub cached_input_tokens: u64,
    #[serde(default)]
    pub worker_added_latency: HistogramSnapshot,
    #[serde(default)]
    pub caller_added_latency: HistogramSnapshot,
    #[serde(default)]
    pub agent_frame_lateness: HistogramSnapshot,
}

impl MetricsSnapshot {
    pub fn reconnects_total(&self) -> u64 {
        self.reconnects.iter().map(|(_, n)| n).sum()
    }

    /// Tokens of one direction and kind (0 for a pair not reported).
    pub fn tokens_of(&self, direction: &str, kind: &str) -> u64 {
        self.tokens.iter().find(|(d, k, _)| d == direction && k == kind).map_or(0, |(_, _, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded_by_inf() {
        let h = Histogram::new(&[0.1, 1.0]);
        for s in [0.05, 0.1, 0.5, 3.0] {
            h.observe_secs(s);
        }
        let snap = h.snapshot();
        assert_eq!(snap.buckets, vec![(0.1, 2), (1.0, 3)]);
        assert_eq!(snap.count, 4);
        assert!((snap.sum_secs - 3.65).abs() < 1e-6);
    }

    #[test]
    fn tokens_split_by_kind_and_add_up_to_the_billed_totals() {
        let m = Metrics::default();
        let detailed = TokenUsage { input_tokens: 120, output_tokens: 60, input_audio_tokens: 20, input_text_tokens: 100, input_cached_tokens: 64, output_audio_tokens: 40, output_text_tokens: 20 };
        m.tokens(&detailed);
        // A deployment sending totals only: counted, as `other`.
        m.tokens(&TokenUsage { input_tokens: 7, output_tokens: 3, ..Default::default() });
        let s = m.snapshot();
        assert_eq!((s.input_tokens, s.output_tokens), (127, 63));
        assert_eq!((s.tokens_of("input", "audio"), s.tokens_of("input", "text"), s.tokens_of("input", "other")), (20, 100, 7));
        assert_eq!((s.tokens_of("output", "audio"), s.tokens_of("output", "text"), s.tokens_of("output", "other")), (40, 20, 3));
        assert_eq!(s.cached_input_tokens, 64);
        assert_eq!(s.tokens.len(), TOKEN_DIRECTIONS.len() * TOKEN_KINDS.len(), "every series, zeroes included");
    }

    #[test]
    fn added_latency_keeps_microseconds() {
        let m = Metrics::default();
        for us in [40u64, 60, 900, 30_000] {
            m.worker_added_latency.observe(std::time::Duration::from_micros(us));
        }
        let s = m.snapshot().worker_added_latency;
        assert_eq!(s.buckets.first(), Some(&(0.0001, 2)), "two observations under 100 us");
        assert_eq!(s.buckets.iter().find(|(b, _)| *b == 0.001).map(|(_, n)| *n), Some(3));
        assert_eq!(s.count, 4);
        // 30.999... ms would show as a wrong mean on the console: the sum keeps every microsecond.
        assert!((s.sum_secs - 0.031).abs() < 1e-9, "{}", s.sum_secs);
    }

    #[test]
    fn frames_later_than_40_ms_are_counted_apart() {
        let m = Metrics::default();
        for ms in [0.3, 4.0, 39.0, 41.0, 180.0, 900.0] {
            m.agent_frame_lateness.observe_secs(ms / 1000.0);
        }
        let s = m.snapshot().agent_frame_lateness;
        assert_eq!((s.count, s.above(0.04), s.above(0.1), s.above(0.25)), (6, 3, 2, 1));
    }

    #[test]
    fn causes_and_statuses_stay_in_their_label_sets() {
        let m = Metrics::default();
        m.reconnect("rollover");
        m.reconnect("something new");
        m.finished(SessionStatus::Completed);
        m.finished(SessionStatus::Active);
        let s = m.snapshot();
        assert_eq!(s.reconnects.iter().find(|(c, _)| c == "rollover").unwrap().1, 1);
        assert_eq!(s.reconnects.iter().find(|(c, _)| c == "transient").unwrap().1, 1);
        assert_eq!(s.consultations_finished.iter().map(|(_, n)| n).sum::<u64>(), 1);
        assert_eq!(reconnect_cause(Some("realtime session expired: 30 min")), "expired");
        assert_eq!(reconnect_cause(Some("fatal realtime error: 401")), "fatal");
        assert_eq!(reconnect_cause(None), "transient");
    }
}
