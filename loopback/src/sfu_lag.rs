//! How long forwarded media stays in the SFU: from its datagram read off the socket to its
//! copies written to the subscribers. A load test that sees late frames can tell the server's
//! share from the agent's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds (s), the same scale as a caller's "later than 40 ms".
pub const FORWARD_LAG_BOUNDS: [f64; 8] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25];

/// Relaxed atomics: the media task records, anyone reads.
#[derive(Debug, Default)]
pub struct ForwardLag {
    /// `counts[i]` forwards in `(bounds[i-1], bounds[i]]`, the last beyond every bound.
    counts: [AtomicU64; FORWARD_LAG_BOUNDS.len() + 1],
}

impl ForwardLag {
    pub fn observe(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        let i = FORWARD_LAG_BOUNDS.iter().position(|b| secs <= *b).unwrap_or(FORWARD_LAG_BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative `(upper bound s, forwards at or under it)`, ending with `(f64::INFINITY, all)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        FORWARD_LAG_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (bound, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_fall_into_cumulative_buckets() {
        let lag = ForwardLag::default();
        for ms in [0.2, 0.9, 3.0, 45.0, 400.0] {
            lag.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let c = lag.cumulative();
        assert_eq!(c.first(), Some(&(0.001, 2)));
        assert_eq!(c.iter().find(|(b, _)| *b == 0.04).map(|(_, n)| *n), Some(3));
        assert_eq!(c.iter().find(|(b, _)| *b == 0.25).map(|(_, n)| *n), Some(4));
        assert_eq!(c.last(), Some(&(f64::INFINITY, 5)));
    }
}
