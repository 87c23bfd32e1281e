//! Subscription permissions, as livekit-server applies them: a publisher may allow its
//! tracks to everyone (the default) or only to the participants it names
//! (`SubscriptionPermission`). A subscriber that loses or regains a track hears
//! `subscription_permission_update`, and the SFU stops or resumes forwarding it.

use livekit_protocol as proto;
use proto::signal_response::Message as Resp;

use crate::rtc::SignalOut;
use crate::sfu::MediaCmd;
use crate::state::{Inner, Participant, SharedRef};

/// Whether a track under these permissions may reach `subscriber`.
pub(crate) fn allows(perm: Option<&proto::SubscriptionPermission>, subscriber: &Participant, track_sid: &str) -> bool {
    let Some(perm) = perm else { return true };
    perm.all_participants
        || perm.track_permissions.iter().any(|tp| {
            let names_them = (!tp.participant_identity.is_empty() && tp.participant_identity == subscriber.identity)
                || (!tp.participant_sid.is_empty() && tp.participant_sid == subscriber.sid);
            names_them && (tp.all_tracks || tp.track_sids.iter().any(|t| t == track_sid))
        })
}

fn tell(sh: &SharedRef, publisher: &Participant, subscriber: &Participant, track_sid: &str, allowed: bool) {
    sh.media.send(MediaCmd::Permit { sub_pc: subscriber.pcs.1, track_sid: track_sid.to_owned(), allowed });
    if let Some(tx) = &subscriber.signal {
        let update = proto::SubscriptionPermissionUpdate { participant_sid: publisher.sid.clone(), track_sid: track_sid.to_owned(), allowed };
        let _ = tx.send(SignalOut::Notice(Box::new(Resp::SubscriptionPermissionUpdate(update))));
    }
}

/// A publisher set its permissions: everyone whose access to one of its tracks changed hears.
pub(crate) fn set(sh: &SharedRef, g: &mut Inner, room: &str, conn_id: u64, perm: proto::SubscriptionPermission) {
    let Some(r) = g.rooms.get_mut(room) else { return };
    let Some(publisher) = r.participants.values_mut().find(|p| p.conn_id == conn_id) else { return };
    let before = publisher.subscription_permission.replace(perm);
    let publisher = r.participants.values().find(|p| p.conn_id == conn_id).expect("found above");
    let now = publisher.subscription_permission.as_ref();
    for subscriber in r.participants.values().filter(|p| p.conn_id != conn_id) {
        for t in &publisher.tracks {
            let (was, is) = (allows(before.as_ref(), subscriber, &t.sid), allows(now, subscriber, &t.sid));
            if was != is {
                tell(sh, publisher, subscriber, &t.sid, is);
            }
        }
    }
}

/// A newcomer subscribed to everything at its join: refuse what it may not have.
pub(crate) fn apply_to_newcomer(sh: &SharedRef, g: &Inner, room: &str, conn_id: u64) {
    let Some(r) = g.rooms.get(room) else { return };
    let Some(newcomer) = r.participants.values().find(|p| p.conn_id == conn_id) else { return };
    for publisher in r.participants.values().filter(|p| p.conn_id != conn_id) {
        for t in &publisher.tracks {
            if !allows(publisher.subscription_permission.as_ref(), newcomer, &t.sid) {
                tell(sh, publisher, newcomer, &t.sid, false);
            }
        }
    }
}

/// A new track: the subscribers it is not allowed to hear so.
pub(crate) fn apply_to_new_track(sh: &SharedRef, g: &Inner, room: &str, conn_id: u64, track_sid: &str) {
    let Some(r) = g.rooms.get(room) else { return };
    let Some(publisher) = r.participants.values().find(|p| p.conn_id == conn_id) else { return };
    for subscriber in r.participants.values().filter(|p| p.conn_id != conn_id) {
        if !allows(publisher.subscription_permission.as_ref(), subscriber, track_sid) {
            tell(sh, publisher, subscriber, track_sid, false);
        }
    }
}
