//! `UpdateParticipantMetadata` from a participant about itself, as livekit-server applies it:
//! only with `canUpdateOwnMetadata`; a non-empty name or metadata replaces the old one;
//! attributes merge, an empty value deleting its key; everyone in the room, the sender
//! included, gets the participant's new info with a higher version (clients drop older ones).

use livekit_protocol as proto;

use crate::rtc::SignalOut;
use crate::state::SharedRef;

/// Applies the update; the reason it was refused otherwise.
pub(crate) fn update_own(sh: &SharedRef, room: &str, conn_id: u64, u: &proto::UpdateParticipantMetadata) -> Result<(), String> {
    let mut g = sh.lock();
    let Some(room) = g.rooms.get_mut(room) else { return Err("the room is gone".into()) };
    let Some(p) = room.participants.values_mut().find(|p| p.conn_id == conn_id) else { return Err("not in the room".into()) };
    if !p.permission.can_update_metadata {
        return Err("the token does not allow updating own metadata (canUpdateOwnMetadata)".into());
    }
    if !u.name.is_empty() {
        p.name = u.name.clone();
    }
    if !u.metadata.is_empty() {
        p.metadata = u.metadata.clone();
    }
    for (key, value) in &u.attributes {
        if value.is_empty() {
            p.attributes.remove(key);
        } else {
            p.attributes.insert(key.clone(), value.clone());
        }
    }
    p.version += 1;
    let info = p.info();
    for other in room.participants.values() {
        if let Some(tx) = &other.signal {
            let _ = tx.send(SignalOut::Update(vec![info.clone()]));
        }
    }
    Ok(())
}
