//! Counters of the realtime client, shared by all its connections (the console shows them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use consultant_actors::telemetry::RealtimeCounters;
use serde::Serialize;

/// How many distinct unknown event type names are remembered (the count goes on regardless).
const UNKNOWN_NAMES_KEPT: usize = 32;

#[derive(Debug, Default)]
pub struct RealtimeStats {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub disconnects: AtomicU64,
    pub events_parsed: AtomicU64,
    pub unknown_events: AtomicU64,
    pub malformed_events: AtomicU64,
    pub audio_deltas_received: AtomicU64,
    pub audio_bytes_received: AtomicU64,
    pub audio_appends_sent: AtomicU64,
    pub audio_bytes_sent: AtomicU64,
    pub error_events: AtomicU64,
    unknown_names: Mutex<Vec<(String, u64)>>,
}

/// A point-in-time copy of [`RealtimeStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RealtimeStatsSnapshot {
    pub connects: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub events_parsed: u64,
    pub unknown_events: u64,
    pub malformed_events: u64,
    pub audio_deltas_received: u64,
    pub audio_bytes_received: u64,
    pub audio_appends_sent: u64,
    pub audio_bytes_sent: u64,
    pub error_events: u64,
    pub unknown_event_types: Vec<(String, u64)>,
}

impl RealtimeStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn unknown(&self, kind: &str) {
        Self::add(&self.unknown_events, 1);
        let mut names = self.unknown_names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = names.iter_mut().find(|(n, _)| n == kind) {
            entry.1 += 1;
        } else if names.len() < UNKNOWN_NAMES_KEPT {
            names.push((kind.to_owned(), 1));
        }
    }

    pub fn snapshot(&self) -> RealtimeStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RealtimeStatsSnapshot {
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            disconnects: get(&self.disconnects),
            events_parsed: get(&self.events_parsed),
            unknown_events: get(&self.unknown_events),
            malformed_events: get(&self.malformed_events),
            audio_deltas_received: get(&self.audio_deltas_received),
            audio_bytes_received: get(&self.audio_bytes_received),
            audio_appends_sent: get(&self.audio_appends_sent),
            audio_bytes_sent: get(&self.audio_bytes_sent),
            error_events: get(&self.error_events),
            unknown_event_types: self.unknown_names.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// What the console's worker view shows of these counters (the audio ones stay local).
impl From<RealtimeStatsSnapshot> for RealtimeCounters {
    fn from(s: RealtimeStatsSnapshot) -> Self {
        RealtimeCounters {
            connects: s.connects,
            connect_failures: s.connect_failures,
            disconnects: s.disconnects,
            events_parsed: s.events_parsed,
            unknown_events: s.unknown_events,
            malformed_events: s.malformed_events,
            error_events: s.error_events,
            unknown_event_types: s.unknown_event_types,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_counters_carry_what_the_client_counted() {
        let stats = RealtimeStats::default();
        RealtimeStats::add(&stats.connects, 3);
        RealtimeStats::add(&stats.connect_failures, 1);
        RealtimeStats::add(&stats.disconnects, 2);
        RealtimeStats::add(&stats.events_parsed, 40);
        RealtimeStats::add(&stats.malformed_events, 4);
        RealtimeStats::add(&stats.error_events, 5);
        RealtimeStats::add(&stats.audio_bytes_sent, 960);
        stats.unknown("response.mystery");
        stats.unknown("response.mystery");
        let counters = RealtimeCounters::from(stats.snapshot());
        assert_eq!(
            counters,
            RealtimeCounters {
                connects: 3,
                connect_failures: 1,
                disconnects: 2,
                events_parsed: 40,
                unknown_events: 2,
                malformed_events: 4,
                error_events: 5,
                unknown_event_types: vec![("response.mystery".into(), 2)],
            }
        );
    }
}
