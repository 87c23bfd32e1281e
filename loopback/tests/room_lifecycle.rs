//! What livekit-server does to a room on its own, checked with raw signalling clients: token
//! refreshes, the empty and departure timeouts, room updates, connection quality and
//! subscription permissions.

mod common;

use std::time::Duration;

use common::*;
use livekit_api::access_token::{AccessToken, TokenVerifier, VideoGrants};
use livekit_api::services::room::{CreateRoomOptions, RoomClient};
use livekit_loopback::proto;
use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent};
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;

const T: Duration = Duration::from_secs(10);

async fn server(cfg: LoopbackConfig) -> LoopbackServer {
    init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    LoopbackServer::start(cfg).await.expect("server starts")
}

fn short_token(s: &LoopbackServer, room: &str, identity: &str, ttl: Duration) -> String {
    let grants = VideoGrants { room_join: true, room: room.into(), can_publish: Some(true), can_subscribe: Some(true), ..Default::default() };
    AccessToken::with_api_key(s.api_key(), s.api_secret()).with_identity(identity).with_name("Caller").with_grants(grants).with_ttl(ttl).to_jwt().unwrap()
}

async fn joined(s: &LoopbackServer, token: &str) -> (Ws, proto::JoinResponse) {
    let mut ws = rtc_connect(&s.ws_url(), token).await.expect("joins");
    match rtc_recv(&mut ws, T).await {
        Some(Resp::Join(j)) => (ws, j),
        other => panic!("join must come first, got {other:?}"),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_refreshed_token_comes_at_once_and_periodically_and_outlives_the_original() {
    let cfg = LoopbackConfig { token_refresh_interval: Duration::from_secs(1), token_leeway: Duration::ZERO, ..Default::default() };
    let s = server(cfg).await;
    let original = short_token(&s, "refresh-room", "caller", Duration::from_secs(2));
    let (mut ws, join) = joined(&s, &original).await;
    let first = rtc_until(&mut ws, Duration::from_millis(500), |m| match m {
        Resp::RefreshToken(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    let claims = TokenVerifier::with_api_key(s.api_key(), s.api_secret()).verify(&first).expect("a valid token");
    assert_eq!((claims.sub.as_str(), claims.name.as_str(), claims.video.room.as_str()), ("caller", "Caller", "refresh-room"));
    assert!(claims.video.room_join && claims.video.can_publish());
    assert!(claims.exp as u64 >= now_secs() + 590, "valid ten minutes, not the original's two seconds");
    // The next one a second later.
    let second = rtc_until(&mut ws, Duration::from_millis(1500), |m| match m {
        Resp::RefreshToken(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    // The original has expired: a resume with it is refused, with the refreshed one accepted.
    // (`exp` has whole seconds: wait past the next whole second after it.)
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let sid = join.participant.unwrap().sid;
    let query = format!("protocol=16&reconnect=1&sid={sid}");
    assert!(rtc_connect_query(&s.ws_url(), &original, &query).await.is_err(), "an expired token must be refused");
    let mut resumed = rtc_connect_query(&s.ws_url(), &second, &query).await.expect("the refreshed token is accepted");
    assert!(matches!(rtc_recv(&mut resumed, T).await, Some(Resp::Reconnect(_))));
    s.shutdown().await;
}

#[tokio::test]
async fn rooms_close_after_their_empty_and_departure_timeouts_not_before() {
    let cfg = LoopbackConfig { empty_timeout: Duration::from_secs(2), departure_timeout: Duration::from_secs(2), ..Default::default() };
    let s = server(cfg).await;
    let closed = |room: &'static str| {
        let s = s.clone();
        async move {
            s.wait_for_event(Duration::from_secs(6), |e| match e {
                ServerEvent::RoomClosed { room: r, reason } if r == room => Some(reason.clone()),
                _ => None,
            })
            .await
            .unwrap()
        }
    };
    // Nobody ever joins: closed by the empty timeout.
    s.create_room("nobody-came", &[]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(s.room("nobody-came").is_some(), "closed before its empty timeout");
    assert_eq!(closed("nobody-came").await, "empty timeout");

    // The caller leaves while an agent stays: the room stays for the departure timeout (a
    // caller may come back to the same room), then closes, and the agent is told why.
    let (mut caller, _) = joined(&s, &s.participant_token("left-room", "caller")).await;
    let agent_token = AccessToken::with_api_key(s.api_key(), s.api_secret())
        .with_identity("agent-1")
        .with_kind("agent")
        .with_grants(VideoGrants { room_join: true, room: "left-room".into(), agent: true, ..Default::default() })
        .to_jwt()
        .unwrap();
    let (mut agent, _) = joined(&s, &agent_token).await;
    rtc_send(&mut caller, Req::Leave(proto::LeaveRequest::default())).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let room = s.room("left-room").expect("the room outlives the caller by its departure timeout");
    assert_eq!(room.participants.len(), 1);
    let (mut back, _) = joined(&s, &s.participant_token("left-room", "caller")).await;
    rtc_send(&mut back, Req::Leave(proto::LeaveRequest::default())).await;
    assert_eq!(closed("left-room").await, "departure timeout");
    let leave = rtc_until(&mut agent, T, |m| match m {
        Resp::Leave(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(leave.reason, proto::DisconnectReason::RoomClosed as i32);

    // A room's own timeouts (CreateRoom) win over the server's.
    let rc = RoomClient::with_api_key(&s.url(), s.api_key(), s.api_secret()).with_failover(false);
    let opts = CreateRoomOptions { empty_timeout: 4, ..Default::default() };
    rc.create_room("patient-room", opts).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(s.room("patient-room").is_some(), "its own empty timeout is 4 s");
    assert_eq!(closed("patient-room").await, "empty timeout");
    s.shutdown().await;
}

#[tokio::test]
async fn metadata_changes_and_newcomers_reach_everyone_as_room_updates_and_connection_quality() {
    let cfg = LoopbackConfig { connection_quality_interval: Duration::from_millis(500), ..Default::default() };
    let s = server(cfg).await;
    let (mut a, ja) = joined(&s, &s.participant_token("notice-room", "a")).await;
    let (mut b, jb) = joined(&s, &s.participant_token("notice-room", "b")).await;
    let sids = [ja.participant.unwrap().sid, jb.participant.unwrap().sid];
    for ws in [&mut a, &mut b] {
        let q = rtc_until(ws, T, |m| match m {
            Resp::ConnectionQuality(q) if q.updates.len() == 2 => Some(q.clone()),
            _ => None,
        })
        .await;
        for u in &q.updates {
            assert!(sids.contains(&u.participant_sid));
            assert_eq!(u.quality, proto::ConnectionQuality::Excellent as i32);
        }
    }
    let rc = RoomClient::with_api_key(&s.url(), s.api_key(), s.api_secret()).with_failover(false);
    rc.update_room_metadata("notice-room", "{\"topic\":\"budget\"}").await.unwrap();
    for ws in [&mut a, &mut b] {
        let room = rtc_until(ws, T, |m| match m {
            Resp::RoomUpdate(u) if u.room.as_ref().is_some_and(|r| r.metadata.contains("budget")) => u.room.clone(),
            _ => None,
        })
        .await;
        assert_eq!((room.name.as_str(), room.num_participants), ("notice-room", 2));
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_publisher_that_withdraws_a_track_tells_the_subscriber_and_allows_it_again() {
    let s = server(LoopbackConfig::default()).await;
    let (mut caller, jc) = joined(&s, &s.participant_token("perm-room", "caller")).await;
    let caller_sid = jc.participant.unwrap().sid;
    rtc_send(&mut caller, Req::AddTrack(proto::AddTrackRequest { cid: "mic".into(), name: "mic".into(), r#type: proto::TrackType::Audio as i32, ..Default::default() })).await;
    let track = rtc_until(&mut caller, T, |m| match m {
        Resp::TrackPublished(t) => t.track.clone(),
        _ => None,
    })
    .await;
    let (mut agent, _) = joined(&s, &s.participant_token("perm-room", "agent")).await;
    let only = |identity: &str| proto::SubscriptionPermission {
        all_participants: false,
        track_permissions: vec![proto::TrackPermission { participant_identity: identity.into(), all_tracks: true, ..Default::default() }],
    };
    // Allowed to someone else only: the agent is refused the track.
    rtc_send(&mut caller, Req::SubscriptionPermission(only("someone-else"))).await;
    let refused = rtc_until(&mut agent, T, |m| match m {
        Resp::SubscriptionPermissionUpdate(u) => Some(u.clone()),
        _ => None,
    })
    .await;
    assert_eq!((refused.participant_sid.as_str(), refused.track_sid.as_str(), refused.allowed), (caller_sid.as_str(), track.sid.as_str(), false));
    // Naming the agent allows it again.
    rtc_send(&mut caller, Req::SubscriptionPermission(only("agent"))).await;
    let allowed = rtc_until(&mut agent, T, |m| match m {
        Resp::SubscriptionPermissionUpdate(u) => Some(u.clone()),
        _ => None,
    })
    .await;
    assert!(allowed.allowed && allowed.track_sid == track.sid);
    // A newcomer the permissions do not name is refused at its join.
    let (mut late, _) = joined(&s, &s.participant_token("perm-room", "late")).await;
    let late_refused = rtc_until(&mut late, T, |m| match m {
        Resp::SubscriptionPermissionUpdate(u) => Some(u.clone()),
        _ => None,
    })
    .await;
    assert!(!late_refused.allowed && late_refused.track_sid == track.sid);
    s.shutdown().await;
}
