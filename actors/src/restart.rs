//! Erlang-style restart intensity: at most `max_restarts` within `window`, with exponential
//! backoff between restarts. ractor has no built-in strategy; supervisors consult this.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Restart history of one child.
#[derive(Debug, Default, Clone)]
pub struct RestartTracker {
    recent: VecDeque<Instant>,
    pub total: u64,
    pub last_failure: Option<String>,
}

/// What to do about a failed child.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartDecision {
    /// Restart after this delay.
    Restart { delay: Duration, attempt: usize },
    /// The intensity was exceeded: give up.
    GiveUp { restarts_in_window: usize },
}

impl RestartTracker {
    pub fn on_failure(&mut self, policy: &RestartPolicy, now: Instant, reason: String) -> RestartDecision {
        self.last_failure = Some(reason);
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= policy.max_restarts {
            return RestartDecision::GiveUp { restarts_in_window: self.recent.len() };
        }
        self.recent.push_back(now);
        self.total += 1;
        let attempt = self.recent.len();
        let factor = 1u32 << (attempt.saturating_sub(1)).min(16);
        let delay = policy.backoff_initial.saturating_mul(factor).min(policy.backoff_max);
        RestartDecision::Restart { delay, attempt }
    }

    /// Restarts counted in the current window (for the console).
    pub fn in_window(&self, policy: &RestartPolicy, now: Instant) -> usize {
        self.recent.iter().filter(|t| now.duration_since(**t) <= policy.window).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_past_intensity_and_backs_off() {
        let p = RestartPolicy { max_restarts: 3, window: Duration::from_secs(60), ..Default::default() };
        let mut t = RestartTracker::default();
        let now = Instant::now();
        let d: Vec<_> = (0..4).map(|i| t.on_failure(&p, now + Duration::from_secs(i), "x".into())).collect();
        assert_eq!(d[0], RestartDecision::Restart { delay: Duration::from_millis(100), attempt: 1 });
        assert_eq!(d[1], RestartDecision::Restart { delay: Duration::from_millis(200), attempt: 2 });
        assert_eq!(d[3], RestartDecision::GiveUp { restarts_in_window: 3 });
    }

    #[test]
    fn window_forgets_old_failures() {
        let p = RestartPolicy { max_restarts: 2, window: Duration::from_secs(10), ..Default::default() };
        let mut t = RestartTracker::default();
        let now = Instant::now();
        t.on_failure(&p, now, "a".into());
        t.on_failure(&p, now, "b".into());
        let later = now + Duration::from_secs(11);
        assert!(matches!(t.on_failure(&p, later, "c".into()), RestartDecision::Restart { attempt: 1, .. }));
    }
}
