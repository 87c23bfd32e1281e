//! The LiveKit server's `LeaveRequest` actions, as livekit-server sends them (a draining node
//! asks for a resume, a lost session for a reconnect, a removal disconnects), each handled by
//! our room client the way it asks: resume on the same session, a full join, or the end.

use std::time::Duration;

use consultant::room::{self, RoomOptions};
use consultant::secret::Secret;
use consultant_actors::ports::RoomEnd;
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_loopback::proto::leave_request::Action;
use livekit_loopback::proto::DisconnectReason;
use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent};

const ROOM: &str = "consultation-leave";
const AGENT: &str = "agent-AJ_leave";

fn agent_token(server: &LoopbackServer) -> Secret {
    let grants = VideoGrants { room_join: true, room: ROOM.into(), agent: true, can_publish: Some(true), can_subscribe: Some(true), can_publish_data: Some(true), ..Default::default() };
    let jwt = AccessToken::with_api_key(server.api_key(), server.api_secret())
        .with_identity(AGENT)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(Duration::from_secs(600))
        .to_jwt()
        .unwrap();
    Secret::new(jwt)
}

fn agent_sid(server: &LoopbackServer) -> Option<String> {
    server.room(ROOM)?.participants.into_iter().find(|p| p.identity == AGENT).map(|p| p.sid)
}

async fn joined() -> (LoopbackServer, room::JoinedRoomAudio) {
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    server.create_room(ROOM, &[]);
    let joined = room::join(&server.url(), &agent_token(&server), RoomOptions::default()).await.expect("the agent joins");
    (server, joined)
}

#[tokio::test]
async fn a_leave_asking_to_resume_resumes_the_same_session() {
    let (server, joined) = joined().await;
    let sid = agent_sid(&server).expect("in the room");
    assert!(server.send_leave(ROOM, AGENT, Action::Resume, DisconnectReason::Migration));
    server
        .wait_for_event(Duration::from_secs(10), |e| matches!(e, ServerEvent::ParticipantResumed { identity, .. } if identity == AGENT).then_some(()))
        .await
        .expect("the agent resumed its session");
    let status = joined.room.status();
    assert_eq!((status.resumes, status.ended.is_none(), status.failure.is_none()), (1, true, true), "{status:?}");
    assert_eq!(agent_sid(&server), Some(sid), "the same participant, not a new join");
    joined.room.leave();
}

#[tokio::test]
async fn a_leave_asking_to_reconnect_joins_again() {
    let (server, joined) = joined().await;
    let sid = agent_sid(&server).expect("in the room");
    assert!(server.send_leave(ROOM, AGENT, Action::Reconnect, DisconnectReason::SignalClose));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if agent_sid(&server).is_some_and(|s| s != sid) && joined.room.status().publishing {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no full rejoin: {:?}", joined.room.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(joined.room.status().ended.is_none(), "still in the call");
    joined.room.leave();
}

#[tokio::test]
async fn a_leave_that_disconnects_ends_the_room_for_the_consultation() {
    let (server, joined) = joined().await;
    assert!(server.send_leave(ROOM, AGENT, Action::Disconnect, DisconnectReason::ParticipantRemoved));
    let end = tokio::time::timeout(Duration::from_secs(10), joined.room.ended()).await.expect("the room ends");
    match end {
        Ok(RoomEnd::RoomClosed(why)) => assert!(why.contains("PARTICIPANT_REMOVED"), "{why}"),
        other => panic!("expected the room closed by the server, got {other:?}"),
    }
}
