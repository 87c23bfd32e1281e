//! What livekit-server tells a room's participants on its own, from its room workers:
//! `room_update` when the room's metadata or participant counts change, and
//! `connection_quality` when a participant appears (every participant here is on loopback,
//! so everyone's quality is EXCELLENT and never changes).

use std::collections::HashMap;

use livekit_protocol as proto;
use proto::signal_response::Message as Resp;

use crate::rtc::SignalOut;
use crate::state::{Inner, SharedRef};

/// What each room's participants were last told.
#[derive(Default)]
pub(crate) struct Told {
    rooms: HashMap<String, RoomTold>,
}

#[derive(Default)]
struct RoomTold {
    /// (metadata, num_participants, num_publishers) last sent in a `room_update`.
    room: Option<(String, u32, u32)>,
    /// Participants whose quality has been sent.
    quality_for: Vec<String>,
}

fn send_all(g: &Inner, room: &str, msg: &Resp) {
    let Some(r) = g.rooms.get(room) else { return };
    for p in r.participants.values() {
        if let Some(tx) = &p.signal {
            let _ = tx.send(SignalOut::Notice(Box::new(msg.clone())));
        }
    }
}

/// `room_update` for every room whose metadata or counts changed since the last call.
pub(crate) fn room_updates(sh: &SharedRef, told: &mut Told) {
    let g = sh.lock();
    told.rooms.retain(|name, _| g.rooms.contains_key(name));
    for (name, r) in &g.rooms {
        let info = r.proto();
        let now = (info.metadata.clone(), info.num_participants, info.num_publishers);
        let t = told.rooms.entry(name.clone()).or_default();
        if t.room.as_ref() == Some(&now) {
            continue;
        }
        // The first look at a room only records it: its participants got it in their join.
        let first = t.room.is_none();
        t.room = Some(now);
        if !first {
            send_all(&g, name, &Resp::RoomUpdate(proto::RoomUpdate { room: Some(info) }));
        }
    }
}

/// `connection_quality` to everyone in a room where someone new has appeared.
pub(crate) fn connection_quality(sh: &SharedRef, told: &mut Told) {
    let g = sh.lock();
    for (name, r) in &g.rooms {
        let sids: Vec<String> = r.participants.values().map(|p| p.sid.clone()).collect();
        let t = told.rooms.entry(name.clone()).or_default();
        if sids.iter().all(|s| t.quality_for.contains(s)) {
            t.quality_for = sids;
            continue;
        }
        t.quality_for = sids.clone();
        let updates = sids
            .into_iter()
            .map(|participant_sid| proto::ConnectionQualityInfo {
                participant_sid,
                quality: proto::ConnectionQuality::Excellent as i32,
                score: 4.5,
            })
            .collect();
        send_all(&g, name, &Resp::ConnectionQuality(proto::ConnectionQualityUpdate { updates }));
    }
}
