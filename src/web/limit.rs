//! A per-address limit on starting consultations: each start creates a room and dispatches an
//! agent (real money on Azure), so one address may start only so many per minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; the oldest windows are forgotten first past it.
const MAX_ADDRESSES: usize = 10_000;

pub struct RateLimit {
    per_minute: u32,
    starts: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl RateLimit {
    pub fn per_minute(per_minute: u32) -> Self {
        Self { per_minute, starts: Mutex::new(HashMap::new()) }
    }

    /// Ok to start now, or how long until the address may start again.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Duration> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        if starts.len() >= MAX_ADDRESSES {
            starts.retain(|_, times| times.last().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        let times = starts.entry(ip).or_default();
        times.retain(|t| now.duration_since(*t) < WINDOW);
        if times.len() as u32 >= self.per_minute {
            return Err(WINDOW - now.duration_since(times[0]));
        }
        times.push(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_quota_per_minute_and_others_are_not_affected() {
        let limit = RateLimit::per_minute(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!(limit.admit_at(a, t0).is_ok());
        assert!(limit.admit_at(a, t0 + Duration::from_secs(1)).is_ok());
        let wait = limit.admit_at(a, t0 + Duration::from_secs(2)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(58));
        assert!(limit.admit_at(b, t0 + Duration::from_secs(2)).is_ok(), "another address has its own quota");
        assert!(limit.admit_at(a, t0 + Duration::from_secs(61)).is_ok(), "the window moves on");
    }
}
