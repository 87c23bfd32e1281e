//! Twirp: `POST /twirp/livekit.<Service>/<Method>`, protobuf or JSON bodies, Bearer JWT.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use livekit_api::access_token::Claims;
use livekit_protocol as proto;
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::agent;
use crate::auth;
use crate::state::*;

/// A Twirp error, answered as `{"code": .., "msg": ..}` with the matching HTTP status.
#[derive(Debug)]
pub(crate) struct TwirpError {
    status: StatusCode,
    code: &'static str,
    msg: String,
}

impl TwirpError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        Self { status, code, msg: msg.into() }
    }
    fn unauthenticated(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", msg)
    }
    fn denied(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_denied", msg)
    }
    fn malformed(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", msg)
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", msg)
    }
    fn invalid(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", msg)
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "msg": self.msg });
        (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

struct Req<'a> {
    json: bool,
    body: &'a Bytes,
}

impl Req<'_> {
    fn parse<T: Message + Default + DeserializeOwned>(&self) -> Result<T, TwirpError> {
        if self.json {
            let b: &[u8] = if self.body.is_empty() { b"{}" } else { self.body };
            serde_json::from_slice(b).map_err(|e| TwirpError::malformed(format!("bad JSON body: {e}")))
        } else {
            T::decode(self.body.as_ref()).map_err(|e| TwirpError::malformed(format!("bad protobuf body: {e}")))
        }
    }
    fn reply<T: Message + Serialize>(&self, m: &T) -> Response {
        if self.json {
            let s = serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
            ([(header::CONTENT_TYPE, "application/json")], s).into_response()
        } else {
            ([(header::CONTENT_TYPE, "application/protobuf")], m.encode_to_vec()).into_response()
        }
    }
}

pub(crate) async fn twirp(
    State(sh): State<SharedRef>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&sh, &service, &method, &headers, &body) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%service, %method, code = e.code, msg = %e.msg, "twirp error");
            if e.code == "malformed" {
                sh.emit_now(ServerEvent::ProtocolError {
                    peer: format!("twirp {service}/{method}"),
                    detail: e.msg.clone(),
                });
            }
            e.into_response()
        }
    }
}

fn handle(
    sh: &SharedRef,
    service: &str,
    method: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, TwirpError> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json = if ctype.starts_with("application/json") {
        true
    } else if ctype.starts_with("application/protobuf") || ctype.starts_with("application/x-protobuf") {
        false
    } else {
        return Err(TwirpError::new(
            StatusCode::BAD_REQUEST,
            "bad_route",
            format!("unexpected Content-Type {ctype:?}"),
        ));
    };
    let req = Req { json, body };
    let token = auth::token_from(headers, None);
    let claims = auth::verify(&sh.cfg, token.as_deref())
        .map_err(|e| TwirpError::unauthenticated(e.to_string()))?;
    match (service, method) {
        ("livekit.RoomService", "CreateRoom") => {
            need(claims.video.room_create, "roomCreate")?;
            let r: proto::CreateRoomRequest = req.parse()?;
            if r.name.is_empty() {
                return Err(TwirpError::invalid("room name is required"));
            }
            let room = crate::rooms::create_room(sh, crate::rooms::RoomOptions::from_request(&r), &r.agents);
            Ok(req.reply(&room))
        }
        ("livekit.RoomService", "ListRooms") => {
            need(claims.video.room_list, "roomList")?;
            let r: proto::ListRoomsRequest = req.parse()?;
            let g = sh.lock();
            let rooms = g
                .rooms
                .values()
                .filter(|room| r.names.is_empty() || r.names.contains(&room.name))
                .map(|room| room.proto())
                .collect();
            Ok(req.reply(&proto::ListRoomsResponse { rooms }))
        }
        ("livekit.RoomService", "DeleteRoom") => {
            need(claims.video.room_create, "roomCreate")?;
            let r: proto::DeleteRoomRequest = req.parse()?;
            if !crate::rooms::close_room(sh, &r.room, "deleted by API") {
                return Err(TwirpError::not_found(format!("room {} not found", r.room)));
            }
            Ok(req.reply(&proto::DeleteRoomResponse {}))
        }
        ("livekit.RoomService", "ListParticipants") => {
            let r: proto::ListParticipantsRequest = req.parse()?;
            need(claims.video.room_admin && claims.video.room == r.room, "roomAdmin for the room")?;
            let g = sh.lock();
            let Some(room) = g.rooms.get(&r.room) else {
                return Err(TwirpError::not_found(format!("room {} not found", r.room)));
            };
            let participants = room.participants.values().map(|p| p.info()).collect();
            Ok(req.reply(&proto::ListParticipantsResponse { participants }))
        }
        ("livekit.RoomService", "UpdateRoomMetadata") => {
            need(claims.video.room_admin && (claims.video.room.is_empty() || claims.video.room == req.parse::<proto::UpdateRoomMetadataRequest>()?.room), "roomAdmin")?;
            let r: proto::UpdateRoomMetadataRequest = req.parse()?;
            let mut g = sh.lock();
            let Some(room) = g.rooms.get_mut(&r.room) else {
                return Err(TwirpError::not_found(format!("room {} not found", r.room)));
            };
            // Everyone hears it with the next room update (within a second).
            room.metadata = r.metadata;
            Ok(req.reply(&room.proto()))
        }
        ("livekit.AgentDispatchService", "CreateDispatch") => {
            let r: proto::CreateAgentDispatchRequest = req.parse()?;
            room_admin(&claims, &r.room)?;
            let mut g = sh.lock();
            if !g.rooms.contains_key(&r.room) {
                drop(g);
                crate::rooms::create_room(sh, crate::rooms::RoomOptions::named(&r.room), &[]);
                g = sh.lock();
            }
            let id = agent::create_dispatch_locked(sh, &mut g, &r.room, &r.agent_name, &r.metadata);
            let d = agent::dispatch_proto(&g, &id).expect("just created");
            Ok(req.reply(&d))
        }
        ("livekit.AgentDispatchService", "DeleteDispatch") => {
            let r: proto::DeleteAgentDispatchRequest = req.parse()?;
            room_admin(&claims, &r.room)?;
            let mut g = sh.lock();
            match g.dispatches.get(&r.dispatch_id) {
                Some(d) if d.room == r.room && d.deleted_at == 0 => {}
                _ => return Err(TwirpError::not_found(format!("dispatch {} not found in room {}", r.dispatch_id, r.room))),
            }
            let d = agent::delete_dispatch_locked(sh, &mut g, &r.dispatch_id).expect("checked above");
            Ok(req.reply(&d))
        }
        ("livekit.AgentDispatchService", "ListDispatch") => {
            let r: proto::ListAgentDispatchRequest = req.parse()?;
            room_admin(&claims, &r.room)?;
            let g = sh.lock();
            let agent_dispatches = g
                .dispatch_order
                .iter()
                .filter_map(|id| g.dispatches.get(id))
                .filter(|d| d.room == r.room && d.deleted_at == 0)
                .filter(|d| r.dispatch_id.is_empty() || d.id == r.dispatch_id)
                .filter_map(|d| agent::dispatch_proto(&g, &d.id))
                .collect();
            Ok(req.reply(&proto::ListAgentDispatchResponse { agent_dispatches }))
        }
        _ => Err(TwirpError::new(
            StatusCode::NOT_FOUND,
            "bad_route",
            format!("no handler for {service}/{method}"),
        )),
    }
}

fn need(ok: bool, grant: &str) -> Result<(), TwirpError> {
    if ok {
        Ok(())
    } else {
        Err(TwirpError::denied(format!("token lacks the {grant} grant")))
    }
}

/// roomAdmin for this room (the token's room must name it), as the real server checks.
fn room_admin(c: &Claims, room: &str) -> Result<(), TwirpError> {
    if !c.video.room_admin {
        return Err(TwirpError::denied("token lacks the roomAdmin grant"));
    }
    if room.is_empty() {
        return Err(TwirpError::invalid("room is required"));
    }
    if c.video.room != room {
        return Err(TwirpError::denied(format!("roomAdmin grant is for another room than {room}")));
    }
    Ok(())
}
