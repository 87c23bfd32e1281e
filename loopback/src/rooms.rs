//! Rooms: creation (with agent dispatches), closing, participants leaving.

use livekit_protocol as proto;

use crate::agent;
use crate::state::*;

#[derive(Debug, Clone, Default)]
pub struct RoomOptions {
    pub name: String,
    pub metadata: String,
    pub empty_timeout: u32,
    pub departure_timeout: u32,
    pub max_participants: u32,
}

impl RoomOptions {
    pub fn named(name: &str) -> Self {
        Self { name: name.into(), ..Default::default() }
    }
    pub(crate) fn from_request(r: &proto::CreateRoomRequest) -> Self {
        Self {
            name: r.name.clone(),
            metadata: r.metadata.clone(),
            empty_timeout: r.empty_timeout,
            departure_timeout: r.departure_timeout,
            max_participants: r.max_participants,
        }
    }
}

/// Create a room unless it exists (then it is returned unchanged, as the real server does).
/// A new room gets one dispatch per entry of `agents`; with none, a dispatch for the default
/// (empty-name) agent when such a worker is connected (automatic dispatch).
pub(crate) fn create_room(sh: &SharedRef, opts: RoomOptions, agents: &[proto::RoomAgentDispatch]) -> proto::Room {
    let mut g = sh.lock();
    create_room_locked(sh, &mut g, opts, agents)
}

pub(crate) fn create_room_locked(
    sh: &SharedRef,
    g: &mut Inner,
    opts: RoomOptions,
    agents: &[proto::RoomAgentDispatch],
) -> proto::Room {
    if let Some(r) = g.rooms.get(&opts.name) {
        return r.proto();
    }
    let sid = new_id("RM_");
    let name = opts.name.clone();
    g.rooms.insert(
        name.clone(),
        Room {
            name: name.clone(),
            sid: sid.clone(),
            metadata: opts.metadata,
            empty_timeout: opts.empty_timeout,
            departure_timeout: opts.departure_timeout,
            max_participants: opts.max_participants,
            created_at: now_secs(),
            participants: Default::default(),
            next_seq: 0,
            dispatch_ids: Vec::new(),
            created: std::time::Instant::now(),
            ever_joined: false,
            last_left: None,
        },
    );
    tracing::info!(room = %name, %sid, "room created");
    sh.emit(g, ServerEvent::RoomCreated { room: name.clone(), sid });
    if agents.is_empty() {
        let default_worker = g.workers.values().any(|w| w.connected && w.agent_name.is_empty());
        if default_worker {
            agent::create_dispatch_locked(sh, g, &name, "", "");
        }
    } else {
        for a in agents {
            agent::create_dispatch_locked(sh, g, &name, &a.agent_name, &a.metadata);
        }
    }
    g.rooms.get(&name).map(|r| r.proto()).expect("just inserted")
}

/// Close a room: participants are told to leave, dispatches deleted, jobs terminated.
/// Returns false when there is no such room.
pub(crate) fn close_room(sh: &SharedRef, name: &str, reason: &str) -> bool {
    let mut g = sh.lock();
    close_room_locked(sh, &mut g, name, reason)
}

pub(crate) fn close_room_locked(sh: &SharedRef, g: &mut Inner, name: &str, reason: &str) -> bool {
    let Some(room) = g.rooms.remove(name) else { return false };
    for p in room.participants.values() {
        if let Some(tx) = &p.signal {
            let _ = tx.send(crate::rtc::SignalOut::Leave(reason.to_string()));
        }
    }
    for d in &room.dispatch_ids {
        agent::delete_dispatch_locked(sh, g, d);
    }
    tracing::info!(room = %name, reason, "room closed");
    sh.emit(g, ServerEvent::RoomClosed { room: name.into(), reason: reason.into() });
    true
}

/// A participant left (leave request, socket gone, replaced). Terminates the jobs whose agent
/// it was and tells the others; the room closes later if it stays empty (`close_idle_rooms`).
pub(crate) fn participant_left_locked(sh: &SharedRef, g: &mut Inner, room: &str, conn_id: u64, reason: &str, why: proto::DisconnectReason) {
    let Some(r) = g.rooms.get_mut(room) else { return };
    let Some(key) = r.participants.iter().find(|(_, p)| p.conn_id == conn_id).map(|(k, _)| *k) else {
        return; // already gone
    };
    let p = r.participants.remove(&key).expect("found above");
    r.last_left = Some(std::time::Instant::now());
    let identity = p.identity.as_str();
    let mut gone = p.info();
    gone.state = proto::participant_info::State::Disconnected as i32;
    gone.disconnect_reason = why as i32;
    let others: Vec<_> = r.participants.values().filter_map(|o| o.signal.clone()).collect();
    for tx in others {
        let _ = tx.send(crate::rtc::SignalOut::Update(vec![gone.clone()]));
    }
    tracing::info!(%room, %identity, reason, "participant left");
    sh.emit(g, ServerEvent::ParticipantLeft { room: room.into(), identity: identity.into(), reason: reason.into() });
    if p.kind == ParticipantKind::Agent {
        let jobs: Vec<String> = g
            .jobs
            .values()
            .filter(|j| j.room == room && j.participant_identity == identity && j.assigned)
            .map(|j| j.id.clone())
            .collect();
        for j in jobs {
            agent::terminate_job_locked(sh, g, &j, "agent left the room");
        }
    }
}

/// livekit-server's `CloseIfEmpty`, run every second: a room where only agents (or nobody)
/// remain closes once its departure timeout has passed since the last participant left, or,
/// if nobody ever joined and left, once its empty timeout has passed since it was created.
/// A room's own timeout (from CreateRoom) wins over the server default; 0 means the default.
pub(crate) fn close_idle_rooms(sh: &SharedRef) {
    let mut g = sh.lock();
    let now = std::time::Instant::now();
    let idle: Vec<(String, &'static str)> = g
        .rooms
        .values()
        .filter(|r| r.participants.values().all(|p| p.kind == ParticipantKind::Agent))
        .filter_map(|r| {
            let or_default = |secs: u32, default| if secs > 0 { std::time::Duration::from_secs(secs.into()) } else { default };
            match (r.ever_joined, r.last_left) {
                (true, Some(left)) => (now - left >= or_default(r.departure_timeout, sh.cfg.departure_timeout)).then_some("departure timeout"),
                _ => (now - r.created >= or_default(r.empty_timeout, sh.cfg.empty_timeout)).then_some("empty timeout"),
            }
            .map(|why| (r.name.clone(), why))
        })
        .collect();
    for (name, why) in idle {
        close_room_locked(sh, &mut g, &name, why);
    }
}
