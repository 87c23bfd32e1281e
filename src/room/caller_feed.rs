//! The caller's side of the room: which participant is the caller, decoding their Opus to
//! PCM16 24 kHz, keeping their stream continuous through mute, DTX and loss, and noticing when
//! they leave (at once for a hang-up, after a grace for an unexpected loss).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consultant_actors::ports::{RoomEnd, RoomEvent, RoomEvents};
use livekit_protocol as proto;

use super::codec::{CallerDecoder, FRAME_24K, PCM_RATE};
use super::status::RoomStats;

const FRAME: Duration = Duration::from_millis(20);
/// A caller whose packets stop (mute, DTX, loss) is fed silence after this, so the realtime
/// side's voice activity detection sees the turn end.
const CALLER_GAP: Duration = Duration::from_millis(60);
/// How long after a caller appears the agent may speak even if no caller audio arrived.
const SILENT_CALLER_SETTLE: Duration = Duration::from_secs(2);
/// A tick this much later than the previous one (the clock runs every 10 ms) means the worker
/// itself was starved: the caller's packets of that time are still queued behind the tick.
const LATE_TICK: Duration = Duration::from_millis(40);

pub fn is_caller_kind(kind: i32) -> bool {
    kind == proto::participant_info::Kind::Standard as i32 || kind == proto::participant_info::Kind::Sip as i32
}

fn is_gone(p: &proto::ParticipantInfo) -> bool {
    p.state == proto::participant_info::State::Disconnected as i32
}

/// The caller hung up (their client said goodbye), as opposed to a lost connection.
fn hung_up(p: &proto::ParticipantInfo) -> bool {
    p.disconnect_reason == proto::DisconnectReason::ClientInitiated as i32
}

struct Caller {
    sid: String,
    identity: String,
    decoder: CallerDecoder,
}

/// What the feed asks of the room after a change.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedChange {
    None,
    /// A caller is listening now (their audio reaches us): the agent may speak.
    /// The caller (identity, participant sid) is heard: a new connection of theirs has a new sid.
    CallerHeard(String, String),
    /// The caller is gone for good.
    Ended(RoomEnd),
}

pub struct CallerFeed {
    events: Arc<dyn RoomEvents>,
    stats: Arc<RoomStats>,
    rejoin_grace: Duration,
    participants: HashMap<String, proto::ParticipantInfo>,
    caller: Option<Caller>,
    /// The caller's microphone track (transcripts of their speech name it).
    pub caller_track_sid: Option<String>,
    caller_gone_at: Option<Instant>,
    /// When a caller-kind participant was first seen in the room.
    caller_present_since: Option<Instant>,
    fed_until: Instant,
    last_tick: Option<Instant>,
    pcm: Vec<i16>,
}

impl CallerFeed {
    pub fn new(events: Arc<dyn RoomEvents>, stats: Arc<RoomStats>, rejoin_grace: Duration) -> Self {
        Self {
            events,
            stats,
            rejoin_grace,
            participants: HashMap::new(),
            caller: None,
            caller_track_sid: None,
            caller_gone_at: None,
            caller_present_since: None,
            fed_until: Instant::now(),
            last_tick: None,
            pcm: Vec::with_capacity(4096),
        }
    }

    pub fn events(&self) -> &Arc<dyn RoomEvents> {
        &self.events
    }

    /// A fresh join: the participant list is the server's new one.
    pub fn reset_participants(&mut self) {
        self.participants.clear();
    }

    /// New peer connections: the caller's stream starts over.
    pub fn reset_decoder(&mut self) -> Result<(), String> {
        if let Some(c) = self.caller.as_mut() {
            c.decoder = CallerDecoder::new().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Participants joined, changed or left (`me` is our own sid).
    pub fn merge(&mut self, list: Vec<proto::ParticipantInfo>, me: &str) -> FeedChange {
        let mut change = FeedChange::None;
        for p in list {
            if p.sid == me || p.identity.is_empty() {
                continue;
            }
            if is_gone(&p) {
                if self.caller.as_ref().is_some_and(|c| c.sid == p.sid) {
                    self.caller = None;
                    if hung_up(&p) {
                        tracing::info!(identity = %p.identity, "the caller hung up");
                        change = FeedChange::Ended(RoomEnd::CallerLeft);
                    } else {
                        tracing::info!(identity = %p.identity, "caller left the room; waiting for a rejoin");
                        self.caller_gone_at = Some(Instant::now());
                    }
                }
                self.participants.remove(&p.sid);
            } else {
                if is_caller_kind(p.kind) && self.caller_present_since.is_none() {
                    self.caller_present_since = Some(Instant::now());
                }
                self.participants.insert(p.sid.clone(), p);
            }
        }
        change
    }

    /// The participant sid of the caller heard now.
    pub fn caller_sid(&self) -> Option<&str> {
        self.caller.as_ref().map(|c| c.sid.as_str())
    }

    /// One RTP payload of the participant `psid`'s track `track_sid`, off the socket at `heard`.
    pub fn on_packet(&mut self, psid: &str, track_sid: Option<String>, payload: &[u8], heard: Instant) -> Result<FeedChange, String> {
        let Some(info) = self.participants.get(psid) else { return Ok(FeedChange::None) };
        if !is_caller_kind(info.kind) {
            return Ok(FeedChange::None); // other agents are not the caller
        }
        let mut change = FeedChange::None;
        match &self.caller {
            Some(c) if c.sid != psid => return Ok(FeedChange::None), // one caller at a time
            Some(_) => {}
            None => {
                let decoder = CallerDecoder::new().map_err(|e| e.to_string())?;
                let identity = info.identity.clone();
                tracing::info!(%identity, "listening to the caller");
                self.caller = Some(Caller { sid: psid.to_owned(), identity: identity.clone(), decoder });
                self.caller_track_sid = track_sid;
                self.caller_gone_at = None;
                self.fed_until = Instant::now();
                change = FeedChange::CallerHeard(identity, psid.to_owned());
            }
        }
        let caller = self.caller.as_mut().expect("set above");
        self.pcm.clear();
        match caller.decoder.decode(payload, &mut self.pcm) {
            Ok(n) => {
                self.stats.caller_packets.fetch_add(1, Ordering::Relaxed);
                self.stats.caller_samples.fetch_add(n as u64, Ordering::Relaxed);
                let now = Instant::now();
                let dur = Duration::from_micros(n as u64 * 1_000_000 / PCM_RATE as u64);
                self.fed_until = self.fed_until.max(now.checked_sub(CALLER_GAP).unwrap_or(now)) + dur;
                let pcm: Arc<[i16]> = Arc::from(&self.pcm[..]);
                self.push(pcm, heard);
            }
            Err(e) => {
                self.stats.caller_decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(identity = %caller.identity, error = %e, "caller packet undecodable");
            }
        }
        Ok(change)
    }

    /// The 10 ms clock: silence through gaps, the rejoin grace. Returns whether a silent caller
    /// has been present long enough to hear the agent, and the end if the grace ran out.
    pub fn tick(&mut self, now: Instant) -> (bool, FeedChange) {
        // After a stall of the worker the caller's audio of that time follows in a burst.
        // Silence filled in first would cut their phrase in two (the VAD ends the turn) and
        // queue their words behind it; so the stalled time is not filled, and the burst gets
        // CALLER_GAP to arrive.
        let on_time = self.last_tick.is_none_or(|t| now.saturating_duration_since(t) <= LATE_TICK);
        self.last_tick = Some(now);
        if !on_time {
            self.fed_until = self.fed_until.max(now);
        }
        if self.caller.is_some() {
            while self.fed_until + CALLER_GAP < now {
                self.fed_until += FRAME;
                self.stats.caller_silence_frames.fetch_add(1, Ordering::Relaxed);
                self.push(Arc::from(&[0i16; FRAME_24K][..]), now);
            }
        }
        let settled = self.caller_present_since.is_some_and(|t| now.duration_since(t) >= SILENT_CALLER_SETTLE);
        if let Some(gone) = self.caller_gone_at {
            if self.caller.is_none() && now.duration_since(gone) >= self.rejoin_grace {
                self.caller_gone_at = None;
                return (settled, FeedChange::Ended(RoomEnd::CallerLeft));
            }
        }
        (settled, FeedChange::None)
    }

    fn push(&self, pcm: Arc<[i16]>, heard: Instant) {
        if !self.events.deliver(RoomEvent::CallerAudio { pcm, heard }) {
            self.stats.caller_dropped_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::codec::AgentEncoder;
    use super::*;

    #[derive(Default)]
    struct Heard(Mutex<Vec<Arc<[i16]>>>);

    impl RoomEvents for Heard {
        fn deliver(&self, event: RoomEvent) -> bool {
            if let RoomEvent::CallerAudio { pcm, .. } = event {
                self.0.lock().unwrap().push(pcm);
            }
            true
        }
    }

    fn caller() -> proto::ParticipantInfo {
        proto::ParticipantInfo { sid: "PA_caller".into(), identity: "caller".into(), kind: proto::participant_info::Kind::Standard as i32, ..Default::default() }
    }

    /// Frames heard, as 'S' (speech) or '.' (silence).
    fn heard(h: &Heard) -> String {
        h.0.lock().unwrap().iter().map(|f| if f.iter().any(|&s| s.unsigned_abs() > 300) { 'S' } else { '.' }).collect()
    }

    #[test]
    fn a_stalled_worker_gets_the_callers_words_in_order_not_silence_in_front_of_them() {
        let events = Arc::new(Heard::default());
        let mut feed = CallerFeed::new(events.clone(), Arc::new(RoomStats::default()), Duration::from_secs(5));
        feed.merge(vec![caller()], "PA_agent");
        let mut encoder = AgentEncoder::new().unwrap();
        let tone: Vec<i16> = (0..FRAME_24K).map(|i| if (i / 12) % 2 == 0 { 8000 } else { -8000 }).collect();
        let mut packet = || encoder.encode(&tone).unwrap().to_vec();

        // Speech arrives on time, with the clock ticking.
        let start = Instant::now();
        for i in 0..10u32 {
            feed.on_packet("PA_caller", None, &packet(), Instant::now()).unwrap();
            feed.tick(start + FRAME * i);
        }
        // The worker is starved for a second: the clock's next tick is late, and the caller's
        // 50 packets of that second come in right after it.
        let after = start + FRAME * 10 + Duration::from_secs(1);
        feed.tick(after);
        for _ in 0..50 {
            feed.on_packet("PA_caller", None, &packet(), Instant::now()).unwrap();
        }
        feed.tick(after + Duration::from_millis(10));
        assert_eq!(heard(&events), "S".repeat(60), "no silence in front of the caller's words");

        // A caller who really stops (mute, DTX) is filled with silence once the clock is on time.
        let mut t = after + Duration::from_millis(10);
        for _ in 0..150 {
            t += Duration::from_millis(10);
            feed.tick(t);
        }
        let h = heard(&events);
        assert!(h.starts_with(&"S".repeat(60)) && h[60..].chars().all(|c| c == '.') && h.len() > 60, "{h}");
    }
}
