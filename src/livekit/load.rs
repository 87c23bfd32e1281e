//! The worker's load as reported to LiveKit: consultations against capacity, combined with the
//! CPU this process uses (the shared [`ProcessSampler`]'s windowed average, so one busy tick
//! does not flip the worker to FULL).

pub use crate::process_stats::{ProcessSampler, ProcessStats};

/// The load LiveKit sees: the larger of the job share and the CPU share, in 0..1.
pub fn worker_load(active_jobs: usize, capacity: usize, cpu: f64) -> f64 {
    let jobs = active_jobs as f64 / capacity.max(1) as f64;
    jobs.max(cpu).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_the_larger_share_and_bounded() {
        assert_eq!(worker_load(2, 8, 0.1), 0.25);
        assert_eq!(worker_load(0, 8, 0.6), 0.6);
        assert_eq!(worker_load(20, 8, 0.0), 1.0);
    }
}
