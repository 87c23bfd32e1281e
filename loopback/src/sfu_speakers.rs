//! Active speakers, as livekit-server finds them: from the RTP audio-level header extension
//! (RFC 6464, dBov) of each published audio packet. A publisher is active over an interval when
//! at least 40 % of its packets were louder than -35 dBov; every interval the participants
//! of the room hear `speakers_changed` for those whose activity or level changed (a speaker
//! who stopped is sent with level 0, active false).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use livekit_protocol as proto;

/// livekit-server's `audio.active_level` and `audio.min_percentile`.
const ACTIVE_DBOV: u8 = 35;
const MIN_PERCENT: u32 = 40;

#[derive(Default)]
struct Counts {
    packets: u32,
    loud: u32,
    loud_dbov_sum: u32,
}

/// Per room: participant sid -> what its packets said this interval.
pub(super) struct Speakers {
    interval: Duration,
    next: Instant,
    heard: HashMap<String, HashMap<String, Counts>>,
    /// Per room: the speakers last announced, with their level.
    announced: HashMap<String, HashMap<String, f32>>,
}

impl Speakers {
    pub fn new(interval: Duration) -> Self {
        Self { interval, next: Instant::now() + interval, heard: HashMap::new(), announced: HashMap::new() }
    }

    pub fn next_check(&self) -> Instant {
        self.next
    }

    /// One published audio packet; `level` is the extension's value (-127..=0, or absent).
    pub fn heard(&mut self, room: &str, participant_sid: &str, level: Option<i8>) {
        let Some(level) = level else { return };
        let dbov = level.unsigned_abs().min(127);
        // Per packet: look up before allocating keys.
        if !self.heard.get(room).is_some_and(|r| r.contains_key(participant_sid)) {
            self.heard.entry(room.to_owned()).or_default().insert(participant_sid.to_owned(), Counts::default());
        }
        let c = self.heard.get_mut(room).and_then(|r| r.get_mut(participant_sid)).expect("inserted above");
        c.packets += 1;
        if dbov <= ACTIVE_DBOV {
            c.loud += 1;
            c.loud_dbov_sum += u32::from(dbov);
        }
    }

    /// When due: per room, the speaker changes to announce.
    pub fn check(&mut self, now: Instant) -> Vec<(String, Vec<proto::SpeakerInfo>)> {
        if now < self.next {
            return Vec::new();
        }
        self.next = now + self.interval;
        let heard = std::mem::take(&mut self.heard);
        let mut rooms: Vec<String> = heard.keys().chain(self.announced.keys()).cloned().collect();
        rooms.sort();
        rooms.dedup();
        let mut out = Vec::new();
        for room in rooms {
            let active: HashMap<String, f32> = heard
                .get(&room)
                .into_iter()
                .flatten()
                .filter(|(_, c)| c.packets > 0 && c.loud * 100 >= c.packets * MIN_PERCENT)
                .map(|(sid, c)| (sid.clone(), linear_level(c.loud_dbov_sum / c.loud.max(1))))
                .collect();
            let before = self.announced.remove(&room).unwrap_or_default();
            let mut changes: Vec<proto::SpeakerInfo> = active
                .iter()
                .filter(|(sid, level)| before.get(*sid) != Some(level))
                .map(|(sid, level)| proto::SpeakerInfo { sid: sid.clone(), level: *level, active: true })
                .collect();
            changes.extend(
                before.keys().filter(|sid| !active.contains_key(*sid)).map(|sid| proto::SpeakerInfo { sid: sid.clone(), level: 0.0, active: false }),
            );
            if !active.is_empty() {
                self.announced.insert(room.clone(), active);
            }
            if !changes.is_empty() {
                changes.sort_by(|a, b| b.level.total_cmp(&a.level));
                out.push((room, changes));
            }
        }
        out
    }
}

/// dBov to the 0..1 level SDKs show, rounded so that noise-level jitter is not a change.
fn linear_level(dbov: u32) -> f32 {
    let linear = 10f32.powf(-(dbov as f32) / 20.0);
    (linear * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loud_publisher_becomes_active_and_is_announced_inactive_when_quiet() {
        let mut s = Speakers::new(Duration::from_millis(400));
        let t0 = Instant::now();
        for _ in 0..20 {
            s.heard("r", "PA_a", Some(-20));
            s.heard("r", "PA_b", Some(-80));
        }
        let first = s.check(t0 + Duration::from_millis(500));
        assert_eq!(first.len(), 1);
        let (room, changes) = &first[0];
        assert_eq!(room, "r");
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!((changes[0].sid.as_str(), changes[0].active, changes[0].level), ("PA_a", true, 0.1));
        // Same level again: nothing to say.
        for _ in 0..20 {
            s.heard("r", "PA_a", Some(-20));
        }
        assert!(s.check(t0 + Duration::from_millis(1000)).is_empty());
        // Quiet: announced as stopped, once.
        for _ in 0..20 {
            s.heard("r", "PA_a", Some(-90));
        }
        let quiet = s.check(t0 + Duration::from_millis(1500));
        assert_eq!(quiet[0].1, vec![proto::SpeakerInfo { sid: "PA_a".into(), level: 0.0, active: false }]);
        assert!(s.check(t0 + Duration::from_millis(2000)).is_empty());
    }

    #[test]
    fn packets_without_the_extension_say_nothing() {
        let mut s = Speakers::new(Duration::from_millis(400));
        s.heard("r", "PA_a", None);
        assert!(s.check(Instant::now() + Duration::from_secs(1)).is_empty());
    }
}
