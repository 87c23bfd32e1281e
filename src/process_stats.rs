//! CPU and memory of this process, from `/proc/self` (Linux; zero elsewhere). One sampler
//! serves both readers, the LiveKit load report and the debug console, so they show the same
//! figures: CPU is averaged over a 10 s window (one busy moment does not flip the worker to
//! FULL) whoever samples and however often.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use consultant_actors::telemetry::WorkerView;

/// Kernel clock ticks per second in `/proc/*/stat` (USER_HZ: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;
/// CPU is averaged over this long (four LiveKit status updates).
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// Readings closer together than this are not kept (a burst of console snapshots would
/// otherwise fill the window with near-duplicates); they are still answered.
const MIN_READING_GAP: Duration = Duration::from_millis(100);
/// Hard bound on the readings kept, whatever the clock does.
const MAX_READINGS: usize = 128;

/// One sample of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// CPU of this process over the averaging window, 0..1 of the whole machine (what the
    /// load report uses).
    pub cpu: f64,
    /// Cores of the machine the fraction is of (at least 1).
    pub cores: usize,
    pub rss_bytes: u64,
}

impl ProcessStats {
    /// The same CPU figure as a percentage of one core (100 = one core busy; up to
    /// 100 x `cores`), the console's `cpu_percent`.
    pub fn cpu_percent(&self) -> f64 {
        self.cpu * self.cores as f64 * 100.0
    }

    /// Puts the sample on the worker view; every writer of these fields goes through here.
    pub fn show(&self, w: &mut WorkerView) {
        w.rss_bytes = self.rss_bytes;
        w.cpu_percent = self.cpu_percent();
        let calls = w.jobs.iter().filter(|j| j.state == "running").count();
        w.cpu_percent_per_call = if calls == 0 { 0.0 } else { w.cpu_percent / calls as f64 };
    }
}

/// Samples this process's CPU time and RSS. Cheap to clone; clones share one window, so every
/// reader sees the same average.
#[derive(Clone)]
pub struct ProcessSampler {
    window: Arc<Mutex<Window>>,
}

struct Window {
    cores: usize,
    /// (when, utime + stime ticks), oldest first; the oldest is the base of the average.
    readings: VecDeque<(Instant, u64)>,
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessSampler {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self { window: Arc::new(Mutex::new(Window { cores, readings: VecDeque::new() })) }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // The window is consistent after every statement: a panicking holder leaves it usable.
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a sample; the very first one (of all clones) only sets the baseline (CPU 0).
    pub fn sample(&self) -> ProcessStats {
        let rss_bytes = rss_bytes().unwrap_or(0);
        let mut window = self.lock();
        let cpu = match read_cpu_ticks() {
            Some(ticks) => window.record(Instant::now(), ticks),
            None => 0.0,
        };
        ProcessStats { cpu, cores: window.cores, rss_bytes }
    }
}

impl Window {
    /// Adds a reading and returns the CPU share since the base reading.
    fn record(&mut self, now: Instant, ticks: u64) -> f64 {
        // The base is the newest reading at least a window old, so the average spans the window.
        while self.readings.get(1).is_some_and(|&(t, _)| now.saturating_duration_since(t) >= CPU_WINDOW) {
            self.readings.pop_front();
        }
        let cpu = match self.readings.front() {
            Some(&(then, before)) => {
                let secs = now.saturating_duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    let used = ticks.saturating_sub(before) as f64 / USER_HZ;
                    (used / secs / self.cores as f64).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        let keep = self.readings.back().is_none_or(|&(last, _)| now.saturating_duration_since(last) >= MIN_READING_GAP);
        if keep {
            if self.readings.len() == MAX_READINGS {
                self.readings.pop_front();
            }
            self.readings.push_back((now, ticks));
        }
        cpu
    }
}

/// `utime + stime` of this process, in clock ticks.
pub fn cpu_ticks() -> Option<u64> {
    read_cpu_ticks()
}

fn read_cpu_ticks() -> Option<u64> {
    cpu_ticks_at("/proc/self/stat")
}

/// `utime + stime` of process `pid` (the load test watches the worker with it).
pub fn cpu_ticks_of(pid: u32) -> Option<u64> {
    cpu_ticks_at(&format!("/proc/{pid}/stat"))
}

fn cpu_ticks_at(path: &str) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(path).ok()?)
}

/// Seconds of CPU per clock tick of [`cpu_ticks`].
pub const SECONDS_PER_TICK: f64 = 1.0 / USER_HZ;

/// Fields after the `(comm)` (which may contain spaces): state is field 3, utime 14, stime 15.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of this process in bytes.
pub fn rss_bytes() -> Option<u64> {
    rss_bytes_at("/proc/self/status")
}

/// VmRSS of process `pid` in bytes.
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    rss_bytes_at(&format!("/proc/{pid}/status"))
}

fn rss_bytes_at(path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 100 1000 200";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn sampler_reads_this_process() {
        let s = ProcessSampler::new();
        let first = s.sample();
        assert_eq!(first.cpu, 0.0);
        assert!(first.rss_bytes > 0);
        // Burn some CPU so the second sample sees it.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 60 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let second = s.sample();
        assert!(second.cpu > 0.0 && second.cpu <= 1.0, "{second:?}");
    }

    fn window(cores: usize) -> Window {
        Window { cores, readings: VecDeque::new() }
    }

    #[test]
    fn average_spans_the_window_whatever_the_sampling_rate() {
        let t0 = Instant::now();
        let mut w = window(2);
        assert_eq!(w.record(t0, 0), 0.0);
        // One core busy for 5 s, sampled every 250 ms: half of a 2-core machine throughout.
        for n in 1..=20u64 {
            let cpu = w.record(t0 + Duration::from_millis(250 * n), 25 * n);
            assert!((cpu - 0.5).abs() < 1e-9, "{n}: {cpu}");
        }
        // Then idle: the busy stretch fades out over the window, not at the next sample.
        let idle = w.record(t0 + Duration::from_secs(10), 500);
        assert!((idle - 0.25).abs() < 1e-9, "{idle}");
        let fading = w.record(t0 + Duration::from_secs(12), 500);
        assert!((fading - 0.15).abs() < 1e-9, "{fading}");
        assert_eq!(w.record(t0 + Duration::from_secs(16), 500), 0.0, "a window after the busy stretch");
        assert!(w.readings.len() <= MAX_READINGS);
    }

    #[test]
    fn clones_share_one_window() {
        let a = ProcessSampler::new();
        let b = a.clone();
        a.sample();
        assert_eq!(b.lock().readings.len(), 1, "b sees the reading a took");
    }

    #[test]
    fn console_percent_and_load_fraction_agree() {
        use crate::livekit::load::worker_load;
        let synthetic = [ProcessStats { cpu: 0.375, cores: 4, rss_bytes: 1 }, ProcessStats { cpu: 0.5, cores: 1, rss_bytes: 1 }];
        let s = ProcessSampler::new();
        s.sample();
        std::thread::sleep(Duration::from_millis(20));
        for stats in synthetic.into_iter().chain([s.sample()]) {
            let mut view = WorkerView::default();
            stats.show(&mut view);
            // The load with no jobs is the CPU share of the machine; the console shows the same
            // figure per core: percent == 100 x fraction on one core, x cores on more.
            let fraction = worker_load(0, 8, stats.cpu);
            assert!((view.cpu_percent - 100.0 * fraction * stats.cores as f64).abs() < 1e-9, "{stats:?} -> {}", view.cpu_percent);
            assert_eq!(view.rss_bytes, stats.rss_bytes);
        }
        let one_core = ProcessStats { cpu: 0.5, cores: 1, rss_bytes: 1 };
        assert_eq!(one_core.cpu_percent(), 100.0 * worker_load(0, 8, one_core.cpu));
        assert_eq!(ProcessStats { cpu: 0.375, cores: 4, rss_bytes: 1 }.cpu_percent(), 150.0);
        // Per call: the worker's CPU shared out over its running jobs.
        let job = |state: &str| consultant_actors::telemetry::JobView {
            job_id: "AJ_1".into(),
            room: "consultation-x".into(),
            session_id: None,
            state: state.into(),
            started_at: chrono::Utc::now(),
        };
        let mut view = WorkerView { jobs: vec![job("running"), job("running"), job("running"), job("success")], ..Default::default() };
        ProcessStats { cpu: 0.375, cores: 4, rss_bytes: 1 }.show(&mut view);
        assert_eq!(view.cpu_percent_per_call, 50.0);
    }
}
