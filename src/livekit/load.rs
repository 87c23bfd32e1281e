//! The worker's load as reported to LiveKit: consultations against capacity, combined with the
//! CPU this process uses (from `/proc/self/stat`, averaged so one busy tick does not flip the
//! worker to FULL), and its RSS for the console.

use std::collections::VecDeque;
use std::time::Instant;

/// Kernel clock ticks per second in `/proc/*/stat` (USER_HZ: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;
/// Samples in the CPU moving average (one per status update, 2.5 s: a 10 s window).
const CPU_WINDOW: usize = 4;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// CPU of this process over the averaging window, 0..1 of the whole machine.
    pub cpu: f64,
    pub rss_bytes: u64,
}

/// Samples this process's CPU time and RSS.
pub struct ProcessSampler {
    cores: f64,
    last: Option<(Instant, u64)>,
    window: VecDeque<f64>,
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessSampler {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        Self { cores, last: None, window: VecDeque::with_capacity(CPU_WINDOW) }
    }

    /// Takes a sample; the first call only sets the baseline (CPU 0).
    pub fn sample(&mut self) -> ProcessStats {
        let now = Instant::now();
        if let Some(ticks) = read_cpu_ticks() {
            if let Some((then, before)) = self.last {
                let secs = now.duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    let used = ticks.saturating_sub(before) as f64 / USER_HZ;
                    self.push((used / secs / self.cores).clamp(0.0, 1.0));
                }
            }
            self.last = Some((now, ticks));
        }
        ProcessStats { cpu: self.average(), rss_bytes: read_rss_bytes().unwrap_or(0) }
    }

    fn push(&mut self, value: f64) {
        if self.window.len() == CPU_WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(value);
    }

    fn average(&self) -> f64 {
        if self.window.is_empty() {
            0.0
        } else {
            self.window.iter().sum::<f64>() / self.window.len() as f64
        }
    }
}

/// `utime + stime` of this process, in clock ticks.
fn read_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_ticks(&stat)
}

/// Fields after the `(comm)` (which may contain spaces): state is field 3, utime 14, stime 15.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn read_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The load LiveKit sees: the larger of the job share and the CPU share, in 0..1.
pub fn worker_load(active_jobs: usize, capacity: usize, cpu: f64) -> f64 {
    let jobs = active_jobs as f64 / capacity.max(1) as f64;
    jobs.max(cpu).clamp(0.0, 1.0)
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
    fn load_is_the_larger_share_and_bounded() {
        assert_eq!(worker_load(2, 8, 0.1), 0.25);
        assert_eq!(worker_load(0, 8, 0.6), 0.6);
        assert_eq!(worker_load(20, 8, 0.0), 1.0);
    }

    #[test]
    fn sampler_reads_this_process() {
        let mut s = ProcessSampler::new();
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
}
