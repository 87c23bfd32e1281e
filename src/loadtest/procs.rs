//! CPU (% of one core) and RSS of a process, sampled from /proc once a second: the worker
//! under test (`--worker-pid`) and the load test itself.

use std::time::Instant;

use crate::process_stats::{cpu_ticks, cpu_ticks_of, rss_bytes, rss_bytes_of, SECONDS_PER_TICK};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// Differences of one process's CPU time between calls.
pub struct ProcWatch {
    pid: Option<u32>,
    last: Option<(Instant, u64)>,
}

impl ProcWatch {
    /// `None` watches this process.
    pub fn new(pid: Option<u32>) -> Self {
        Self { pid, last: None }
    }

    fn read(&self) -> Option<(u64, u64)> {
        match self.pid {
            Some(pid) => Some((cpu_ticks_of(pid)?, rss_bytes_of(pid)?)),
            None => Some((cpu_ticks()?, rss_bytes()?)),
        }
    }

    /// Whether the process can be read at all (a wrong `--worker-pid` is said up front).
    pub fn readable(&self) -> bool {
        self.read().is_some()
    }

    /// CPU since the previous call (None the first time, or when the process is gone).
    pub fn sample(&mut self) -> Option<Sample> {
        let (ticks, rss_bytes) = self.read()?;
        let now = Instant::now();
        let previous = self.last.replace((now, ticks));
        let (then, before) = previous?;
        let secs = now.duration_since(then).as_secs_f64();
        (secs > 0.0).then(|| Sample { cpu_percent: ticks.saturating_sub(before) as f64 * SECONDS_PER_TICK / secs * 100.0, rss_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_this_process_by_pid_and_as_self() {
        let mut by_pid = ProcWatch::new(Some(std::process::id()));
        let mut me = ProcWatch::new(None);
        assert!(by_pid.readable() && me.readable());
        assert_eq!(by_pid.sample(), None, "the first sample is the base");
        me.sample();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 50 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let s = by_pid.sample().unwrap();
        assert!(s.rss_bytes > 0 && s.cpu_percent > 0.0, "{s:?}");
        assert!(me.sample().unwrap().cpu_percent > 0.0);
        assert!(!ProcWatch::new(Some(u32::MAX)).readable());
    }
}
