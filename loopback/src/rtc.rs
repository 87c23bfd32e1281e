//! `/rtc`: participant signalling, protocol v0 (two peer connections).
//!
//! - `/rtc/v1` answers HTTP/1.1 404 so the official SDKs fall back to v0.
//! - `/rtc/validate` answers 200 for a valid join token, 401 (with the reason) otherwise.
//! - `/rtc` (WebSocket, token as Bearer header or `access_token` query): `join` first
//!   (subscriber_primary, ping_interval 5, ping_timeout 15), then the server offers the
//!   subscriber PC (data channels `_reliable` / `_lossy` and the tracks of the others when
//!   auto_subscribe), the client offers the publisher PC, trickle both ways, `add_track` ->
//!   `track_published`, participant updates (kind AGENT vs STANDARD), ping_req -> pong_resp,
//!   leave. Frames are protobuf (binary) or protojson (text, answered in JSON).
//! - Resume: a socket lost without `leave` keeps the participant (and its PCs) for
//!   [`crate::LoopbackConfig::reconnect_grace`]; `/rtc?reconnect=1&sid=PA_..` within it gets
//!   `reconnect` (ReconnectResponse) and the same participant; after it, the participant is
//!   removed ("agent left the room" for an agent). Unknown sid: `leave` with action RECONNECT.
//! - Data: DataPackets a client sends on `_reliable`/`_lossy` are relayed to the others'
//!   subscriber PC channel of the same label, sender identity filled in by the server.
//! - Not implemented: simulcast/video, selective subscription.

#![allow(deprecated)] // ParticipantPermission.agent and disable_dtx are still what clients read

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::Claims;
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio::sync::mpsc;

use crate::agent::{now_millis, reject};
use crate::auth::{self, AuthError};
use crate::rooms;
use crate::sfu::{MediaCmd, OutTrackSpec, Target};
use crate::state::*;

#[path = "rtc_requests.rs"]
mod requests;

use requests::{sd, Handled};

/// What the room side and the media side push to a participant's signalling connection.
#[derive(Debug)]
pub enum SignalOut {
    /// Other participants changed (joined, published, left).
    Update(Vec<proto::ParticipantInfo>),
    /// The server ends the session (room closed, replaced).
    Leave(String),
    /// Subscriber PC offer from the SFU.
    Offer { sdp: String, id: u32 },
    /// Publisher PC answer from the SFU.
    Answer { sdp: String, id: u32 },
    /// A server ICE candidate.
    Trickle { candidate_init: String, target: Target },
    /// A `LeaveRequest` with an action, as livekit-server sends them: `Resume` (the signalling
    /// closes, the participant is kept for a resume, e.g. a node draining), `Reconnect` (the
    /// session is gone: join again) or `Disconnect` (removed).
    LeaveWith { action: proto::leave_request::Action, reason: proto::DisconnectReason },
    /// To a publisher: one of its tracks was subscribed for the first time (livekit-server's
    /// `OnTrackEverSubscribed`; SDKs hold a track's first frames until they see it).
    TrackSubscribed { track_sid: String },
    /// The media side cannot go on (bad SDP, PC closed): the participant is disconnected.
    MediaFailed(String),
    /// Drop the socket without leave (fault hook, or replaced by a resume).
    DropSocket,
    /// A message that needs nothing else done (room update, speakers, connection quality,
    /// subscription permission).
    Notice(Box<Resp>),
}

pub(crate) async fn rtc_v1_not_found() -> Response {
    (StatusCode::NOT_FOUND, "signalling v1 is not supported by the loopback server").into_response()
}

fn check_join(sh: &SharedRef, headers: &HeaderMap, q: &HashMap<String, String>) -> Result<Claims, AuthError> {
    let token = auth::token_from(headers, q.get("access_token").map(String::as_str));
    let c = auth::verify(&sh.cfg, token.as_deref())?;
    if !c.video.room_join || c.video.room.is_empty() {
        return Err(AuthError::Denied("token lacks roomJoin for a room".into()));
    }
    if c.sub.is_empty() {
        return Err(AuthError::Denied("token has no identity".into()));
    }
    Ok(c)
}

pub(crate) async fn rtc_validate(
    State(sh): State<SharedRef>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match check_join(&sh, &headers, &q) {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err(e) => reject(&sh, "/rtc/validate", e),
    }
}

pub(crate) async fn rtc_ws(
    State(sh): State<SharedRef>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let claims = match check_join(&sh, &headers, &q) {
        Ok(c) => c,
        Err(e) => return reject(&sh, "/rtc", e),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let auto_subscribe = q.get("auto_subscribe").map(|v| v != "0" && v != "false").unwrap_or(true);
    let resume = matches!(q.get("reconnect").map(String::as_str), Some("1") | Some("true"));
    match (resume, q.get("sid").cloned()) {
        (true, Some(sid)) => ws.on_upgrade(move |sock| resume_conn(sh, sock, claims, sid)),
        _ => ws.on_upgrade(move |sock| participant_conn(sh, sock, claims, auto_subscribe)),
    }
}

fn encode(r: Resp, json: bool) -> Message {
    let m = proto::SignalResponse { message: Some(r) };
    if json {
        Message::Text(serde_json::to_string(&m).unwrap_or_default().into())
    } else {
        Message::Binary(m.encode_to_vec().into())
    }
}

fn leave_msg(reason: proto::DisconnectReason) -> Resp {
    Resp::Leave(proto::LeaveRequest {
        can_reconnect: false,
        reason: reason as i32,
        action: proto::leave_request::Action::Disconnect as i32,
        regions: None,
    })
}

fn server_info(sh: &SharedRef) -> proto::ServerInfo {
    proto::ServerInfo {
        edition: proto::server_info::Edition::Standard as i32,
        version: sh.cfg.server_version.clone(),
        protocol: 16,
        node_id: "ND_loopback".into(),
        agent_protocol: 1,
        ..Default::default()
    }
}

struct Session {
    sh: SharedRef,
    room: String,
    identity: String,
    conn_id: u64,
    pub_pc: u64,
    sub_pc: u64,
    json: bool,
    /// The participant's signal generation this connection serves.
    gen: u64,
    /// What the token said, for the refreshed tokens.
    claims: Claims,
}

async fn participant_conn(sh: SharedRef, sock: WebSocket, claims: Claims, auto_subscribe: bool) {
    let (mut sink, stream) = sock.split();
    let (tx, rx) = mpsc::unbounded_channel::<SignalOut>();
    let room_name = claims.video.room.clone();
    let identity = claims.sub.clone();
    let kind = ParticipantKind::from_claim(&claims.kind);
    let permission = proto::ParticipantPermission {
        can_subscribe: claims.video.can_subscribe(),
        can_publish: claims.video.can_publish(),
        can_publish_data: claims.video.can_publish_data(),
        hidden: claims.video.hidden,
        agent: claims.video.agent,
        can_update_metadata: claims.video.can_update_own_metadata(),
        ..Default::default()
    };

    // Join: room (created on demand with the token's room_config agents), participant, others.
    let joined = {
        let mut g = sh.lock();
        let agents = claims.room_config.as_ref().map(|c| c.agents.clone()).unwrap_or_default();
        rooms::create_room_locked(&sh, &mut g, rooms::RoomOptions::named(&room_name), &agents);
        g.next_conn_id += 1;
        let conn_id = g.next_conn_id;
        let room = g.rooms.get_mut(&room_name).expect("created above");
        let full = room.max_participants > 0 && room.participants.len() as u32 >= room.max_participants;
        if full {
            Err("room is full")
        } else {
            let old = room.participant(&identity).map(|p| p.conn_id);
            let sid = new_id("PA_");
            let seq = room.next_seq;
            room.next_seq += 1;
            let p = Participant {
                identity: identity.clone(),
                sid: sid.clone(),
                name: claims.name.clone(),
                metadata: claims.metadata.clone(),
                kind,
                attributes: claims.attributes.clone(),
                permission: permission.clone(),
                joined_at: now_secs(),
                tracks: Vec::new(),
                signal: Some(tx.clone()),
                conn_id,
                pcs: (conn_id * 2, conn_id * 2 + 1),
                auto_subscribe,
                signal_gen: 0,
                version: 1,
                subscription_permission: None,
            };
            let me = p.info();
            room.participants.insert(seq, p);
            room.ever_joined = true;
            let others: Vec<&Participant> = room.participants.values().filter(|o| o.conn_id != conn_id).collect();
            let other_infos: Vec<proto::ParticipantInfo> =
                others.iter().filter(|o| o.conn_id != old.unwrap_or(0)).map(|o| o.info()).collect();
            let mut tracks = Vec::new();
            if auto_subscribe && permission.can_subscribe {
                for o in others.iter().filter(|o| Some(o.conn_id) != old) {
                    for t in &o.tracks {
                        tracks.push(OutTrackSpec {
                            track_sid: t.sid.clone(),
                            participant_sid: o.sid.clone(),
                        });
                    }
                }
            }
            let sinks: Vec<_> =
                others.iter().filter(|o| Some(o.conn_id) != old).filter_map(|o| o.signal.clone()).collect();
            for s in sinks {
                let _ = s.send(SignalOut::Update(vec![me.clone()]));
            }
            let join = proto::JoinResponse {
                room: Some(room.proto()),
                participant: Some(me),
                other_participants: other_infos,
                server_version: sh.cfg.server_version.clone(),
                subscriber_primary: true,
                ping_timeout: 15,
                ping_interval: 5,
                server_info: Some(server_info(&sh)),
                enabled_publish_codecs: vec![proto::Codec { mime: "audio/opus".into(), fmtp_line: String::new() }],
                ..Default::default()
            };
            sh.emit(&mut g, ServerEvent::ParticipantJoined {
                room: room_name.clone(),
                identity: identity.clone(),
                sid,
                kind,
            });
            // A second connection with the same identity replaces the first.
            if let Some(old_conn) = old {
                if let Some(old_tx) = g
                    .rooms
                    .get(&room_name)
                    .and_then(|r| r.participants.values().find(|p| p.conn_id == old_conn))
                    .and_then(|p| p.signal.clone())
                {
                    let _ = old_tx.send(SignalOut::Leave("duplicate identity".into()));
                }
                rooms::participant_left_locked(&sh, &mut g, &room_name, old_conn, "replaced by a new connection", proto::DisconnectReason::DuplicateIdentity);
            }
            Ok((join, conn_id, tracks))
        }
    };
    let (join, conn_id, tracks) = match joined {
        Ok(j) => j,
        Err(why) => {
            sh.emit_now(ServerEvent::ProtocolError { peer: identity.clone(), detail: format!("join refused: {why}") });
            let _ = sink.send(encode(leave_msg(proto::DisconnectReason::JoinFailure), false)).await;
            let _ = sink.close().await;
            return;
        }
    };
    tracing::info!(room = %room_name, %identity, ?kind, "participant joined");
    let mut s = Session {
        sh: sh.clone(),
        room: room_name.clone(),
        identity: identity.clone(),
        conn_id,
        pub_pc: conn_id * 2,
        sub_pc: conn_id * 2 + 1,
        json: false,
        gen: 0,
        claims: claims.clone(),
    };
    let participant_sid = join.participant.as_ref().map(|p| p.sid.clone()).unwrap_or_default();
    if sink.send(encode(Resp::Join(join), false)).await.is_err() {
        s.cleanup("signal send failed", proto::DisconnectReason::ConnectionTimeout);
        return;
    }
    sh.media.send(MediaCmd::AddParticipant {
        room: room_name.clone(),
        identity: identity.clone(),
        agent: matches!(kind, crate::state::ParticipantKind::Agent),
        participant_sid,
        pub_pc: s.pub_pc,
        sub_pc: s.sub_pc,
        signal: tx.clone(),
        tracks,
    });
    crate::permissions::apply_to_newcomer(&sh, &sh.lock(), &room_name, conn_id);

    let exit = serve(&mut s, sink, stream, rx).await;
    s.finish(exit);
}

/// How a signalling connection ended.
enum Exit {
    /// Leave (either side), refused media, shutdown: the participant is gone now, for the
    /// reason the others are told (`ParticipantInfo.disconnect_reason`, as livekit-server sets it).
    Gone(String, proto::DisconnectReason),
    /// The socket was lost without leave: the participant may resume within the grace.
    Lost(String),
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

async fn serve(s: &mut Session, mut sink: Sink, mut stream: Stream, mut rx: mpsc::UnboundedReceiver<SignalOut>) -> Exit {
    let sh = s.sh.clone();
    let mut shutdown = sh.shutdown.subscribe();
    // As livekit-server: a first refresh right away, then one every interval.
    let mut refresh = tokio::time::interval(sh.cfg.token_refresh_interval);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                match auth::refreshed_token(&sh.cfg, &s.claims) {
                    Ok(token) => if sink.send(encode(Resp::RefreshToken(token), s.json)).await.is_err() {
                        return Exit::Lost("signal send failed".into());
                    },
                    Err(e) => tracing::error!(error = %e, "could not refresh a participant token"),
                }
            }
            _ = shutdown.changed() => {
                let _ = sink.send(encode(leave_msg(proto::DisconnectReason::ServerShutdown), s.json)).await;
                let _ = sink.close().await;
                return Exit::Gone("server shutdown".into(), proto::DisconnectReason::ServerShutdown);
            }
            out = rx.recv() => {
                let Some(out) = out else { return Exit::Lost("signal channel closed".into()) };
                let (msg, end) = match out {
                    SignalOut::Update(ps) => (Resp::Update(proto::ParticipantUpdate { participants: ps }), None),
                    SignalOut::Offer { sdp, id } => (Resp::Offer(sd("offer", sdp, id)), None),
                    SignalOut::Answer { sdp, id } => (Resp::Answer(sd("answer", sdp, id)), None),
                    SignalOut::Notice(msg) => (*msg, None),
                    SignalOut::TrackSubscribed { track_sid } => (Resp::TrackSubscribed(proto::TrackSubscribed { track_sid }), None),
                    SignalOut::Trickle { candidate_init, target } => (Resp::Trickle(proto::TrickleRequest {
                        candidate_init, target: target.proto(), r#final: false,
                    }), None),
                    SignalOut::Leave(reason) => {
                        let r = if reason.contains("duplicate") {
                            proto::DisconnectReason::DuplicateIdentity
                        } else if reason.contains("timeout") {
                            proto::DisconnectReason::RoomClosed
                        } else {
                            proto::DisconnectReason::RoomDeleted
                        };
                        (leave_msg(r), Some((reason, r)))
                    }
                    SignalOut::MediaFailed(reason) => {
                        tracing::warn!(room = %s.room, identity = %s.identity, %reason, "media failure, disconnecting participant");
                        sh.emit_now(ServerEvent::ProtocolError { peer: s.identity.clone(), detail: reason.clone() });
                        (leave_msg(proto::DisconnectReason::StateMismatch), Some((reason, proto::DisconnectReason::StateMismatch)))
                    }
                    SignalOut::LeaveWith { action, reason } => {
                        use proto::leave_request::Action;
                        let leave = Resp::Leave(proto::LeaveRequest { can_reconnect: action != Action::Disconnect, reason: reason as i32, action: action as i32, regions: None });
                        let _ = sink.send(encode(leave, s.json)).await;
                        let _ = sink.close().await;
                        let why = format!("the server sent leave {}", action.as_str_name());
                        return match action {
                            Action::Resume => Exit::Lost(why),
                            Action::Reconnect | Action::Disconnect => Exit::Gone(why, reason),
                        };
                    }
                    SignalOut::DropSocket => {
                        // Fault hook: vanish like a broken network (no close frame, no leave).
                        return Exit::Lost("signalling dropped by test hook".into());
                    }
                };
                if sink.send(encode(msg, s.json)).await.is_err() { return Exit::Lost("signal send failed".into()); }
                if let Some((reason, why)) = end {
                    let _ = sink.close().await;
                    return Exit::Gone(reason, why);
                }
            }
            frame = stream.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Exit::Lost(format!("connection lost without leave: {e}")),
                    None => return Exit::Lost("connection lost without leave".into()),
                };
                let req = match &frame {
                    Message::Binary(b) => proto::SignalRequest::decode(b.as_ref()).map_err(|e| format!("undecodable SignalRequest: {e}")),
                    Message::Text(t) => {
                        // A client that speaks protojson gets JSON answers (garbage text does not switch).
                        let r = serde_json::from_str::<proto::SignalRequest>(t.as_str()).map_err(|e| format!("unparsable JSON SignalRequest: {e}"));
                        if r.is_ok() { s.json = true; }
                        r
                    }
                    Message::Close(_) => return Exit::Lost("connection closed without leave".into()),
                    _ => continue,
                };
                let req = match req {
                    Ok(proto::SignalRequest { message: Some(m) }) => m,
                    Ok(_) => { sh.emit_now(ServerEvent::ProtocolError { peer: s.identity.clone(), detail: "empty SignalRequest".into() }); continue; }
                    Err(detail) => {
                        tracing::warn!(identity = %s.identity, %detail, "garbage signalling frame");
                        sh.emit_now(ServerEvent::ProtocolError { peer: s.identity.clone(), detail });
                        continue;
                    }
                };
                match s.handle(req) {
                    Handled::Reply(r) => if sink.send(encode(*r, s.json)).await.is_err() { return Exit::Lost("signal send failed".into()); },
                    Handled::None => {}
                    Handled::Leave => { let _ = sink.close().await; return Exit::Gone("leave requested".into(), proto::DisconnectReason::ClientInitiated); }
                }
            }
        }
    }
}

/// `/rtc?reconnect=1&sid=PA_..`: re-attach a new socket to a participant that lost its
/// signalling (or whose old socket is still half-open). Answers `reconnect`; the peer
/// connections are kept. Unknown sid: `leave` with action RECONNECT (do a full join).
async fn resume_conn(sh: SharedRef, sock: WebSocket, claims: Claims, sid: String) {
    let (mut sink, stream) = sock.split();
    let (tx, rx) = mpsc::unbounded_channel::<SignalOut>();
    let found = {
        let mut g = sh.lock();
        let room_name = claims.video.room.clone();
        let hit = g.rooms.get_mut(&room_name).and_then(|r| {
            r.participants.values_mut().find(|p| p.sid == sid && p.identity == claims.sub)
        });
        match hit {
            None => None,
            Some(p) => {
                if let Some(old) = p.signal.replace(tx.clone()) {
                    let _ = old.send(SignalOut::DropSocket);
                }
                p.signal_gen += 1;
                let found = (p.conn_id, p.pcs, p.signal_gen);
                sh.emit(&mut g, ServerEvent::ParticipantResumed { room: room_name, identity: claims.sub.clone() });
                Some(found)
            }
        }
    };
    let Some((conn_id, (pub_pc, sub_pc), gen)) = found else {
        tracing::info!(identity = %claims.sub, %sid, "resume for an unknown participant: asking for a full reconnect");
        let _ = sink
            .send(encode(
                Resp::Leave(proto::LeaveRequest {
                    can_reconnect: true,
                    reason: proto::DisconnectReason::StateMismatch as i32,
                    action: proto::leave_request::Action::Reconnect as i32,
                    regions: None,
                }),
                false,
            ))
            .await;
        let _ = sink.close().await;
        return;
    };
    tracing::info!(room = %claims.video.room, identity = %claims.sub, "participant resumed");
    let resp = Resp::Reconnect(proto::ReconnectResponse {
        server_info: Some(server_info(&sh)),
        ..Default::default()
    });
    let mut s = Session {
        sh: sh.clone(),
        room: claims.video.room.clone(),
        identity: claims.sub.clone(),
        conn_id,
        pub_pc,
        sub_pc,
        json: false,
        gen,
        claims: claims.clone(),
    };
    // As the real server: the reconnect answer, then the full participant list (self
    // included) so the client can reconcile what it missed, then the room.
    let (everyone, room) = {
        let g = sh.lock();
        match g.rooms.get(&s.room) {
            Some(r) => (r.participants.values().map(|p| p.info()).collect::<Vec<_>>(), Some(r.proto())),
            None => (Vec::new(), None),
        }
    };
    let mut msgs = vec![resp, Resp::Update(proto::ParticipantUpdate { participants: everyone })];
    if let Some(room) = room {
        msgs.push(Resp::RoomUpdate(proto::RoomUpdate { room: Some(room) }));
    }
    for m in msgs {
        if sink.send(encode(m, false)).await.is_err() {
            s.finish(Exit::Lost("signal send failed".into()));
            return;
        }
    }
    // Offers sent while the socket was gone are re-sent on the new one.
    sh.media.send(MediaCmd::ReplaceSignal { pub_pc, sub_pc, signal: tx });
    let exit = serve(&mut s, sink, stream, rx).await;
    s.finish(exit);
}
