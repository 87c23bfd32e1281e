//! /rtc signalling driven by a hand-written client: auth, join, updates, publish, ping,
//! and bad input (garbage frames, unparsable SDP, vanishing clients, agent leaving).

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_loopback::proto;
use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent};
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(5);

async fn server() -> LoopbackServer {
    init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Rooms close at the first idle check after the last participant leaves (the 20 s
    // departure timeout has its own test in room_lifecycle.rs).
    let cfg = LoopbackConfig { departure_timeout: Duration::ZERO, ..Default::default() };
    LoopbackServer::start(cfg).await.expect("server starts")
}

async fn join(s: &LoopbackServer, room: &str, identity: &str) -> (Ws, proto::JoinResponse) {
    let mut ws = rtc_connect(&s.ws_url(), &s.participant_token(room, identity)).await.expect("joins");
    let j = match rtc_recv(&mut ws, T).await {
        Some(Resp::Join(j)) => j,
        other => panic!("join must come first, got {other:?}"),
    };
    (ws, j)
}

fn agent_token(s: &LoopbackServer, room: &str, identity: &str) -> String {
    AccessToken::with_api_key(s.api_key(), s.api_secret())
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(VideoGrants { room_join: true, room: room.into(), agent: true, ..Default::default() })
        .to_jwt()
        .unwrap()
}

async fn raw_http(s: &LoopbackServer, req: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(T, tcp.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn v1_is_an_http11_404_and_tokens_are_checked() {
    let s = server().await;
    let token = s.participant_token("r", "alice");
    // The official SDK only falls back to v0 on an HTTP/1.1 404.
    let resp = raw_http(
        &s,
        &format!(
            "GET /rtc/v1?join_request=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    // validate: 200 with a good token, 401 otherwise.
    let ok = raw_http(&s, &format!("GET /rtc/validate?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let bad = raw_http(&s, "GET /rtc/validate?access_token=nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");
    // /rtc upgrade: wrong secret, no roomJoin, no token -> 401.
    let wrong = AccessToken::with_api_key("devkey", "wrong")
        .with_identity("a")
        .with_grants(VideoGrants { room_join: true, room: "r".into(), ..Default::default() })
        .to_jwt()
        .unwrap();
    let no_join = AccessToken::with_api_key("devkey", "secret")
        .with_identity("a")
        .with_grants(VideoGrants { room_list: true, ..Default::default() })
        .to_jwt()
        .unwrap();
    for t in [wrong.as_str(), no_join.as_str(), ""] {
        match rtc_connect(&s.ws_url(), t).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    assert!(s.rooms().is_empty(), "a refused join created a room");
    s.shutdown().await;
}

#[tokio::test]
async fn join_offers_the_subscriber_pc_and_announces_participants_with_their_kind() {
    let s = server().await;
    let (mut a, ja) = join(&s, "room-1", "alice").await;
    assert!(ja.subscriber_primary);
    assert_eq!((ja.ping_interval, ja.ping_timeout), (5, 15));
    assert_eq!(ja.room.as_ref().unwrap().name, "room-1");
    let me = ja.participant.unwrap();
    assert_eq!((me.identity.as_str(), me.kind), ("alice", proto::participant_info::Kind::Standard as i32));
    assert!(me.sid.starts_with("PA_"));
    assert!(ja.other_participants.is_empty());
    // The server offers the subscriber PC with its data channels and trickles its candidate.
    let offer = rtc_until(&mut a, T, |m| match m {
        Resp::Offer(o) => Some(o.sdp.clone()),
        _ => None,
    })
    .await;
    assert!(offer.contains("m=application"), "{offer}");
    assert!(offer.contains(&format!("{}", s.media_addr().port())), "host candidate in the offer");
    let trickle = rtc_until(&mut a, T, |m| match m {
        Resp::Trickle(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(trickle.target, proto::SignalTarget::Subscriber as i32);
    let init: serde_json::Value = serde_json::from_str(&trickle.candidate_init).unwrap();
    assert!(init["candidate"].as_str().unwrap().contains("127.0.0.1"));

    // An agent joins: alice hears of it with kind AGENT, the agent sees alice.
    let mut b = rtc_connect(&s.ws_url(), &agent_token(&s, "room-1", "agent-1")).await.unwrap();
    let jb = match rtc_recv(&mut b, T).await {
        Some(Resp::Join(j)) => j,
        other => panic!("{other:?}"),
    };
    assert_eq!(jb.participant.unwrap().kind, proto::participant_info::Kind::Agent as i32);
    assert_eq!(jb.other_participants.iter().map(|p| p.identity.as_str()).collect::<Vec<_>>(), vec!["alice"]);
    let upd = rtc_until(&mut a, T, |m| match m {
        Resp::Update(u) => u.participants.iter().find(|p| p.identity == "agent-1").cloned(),
        _ => None,
    })
    .await;
    assert_eq!(upd.kind, proto::participant_info::Kind::Agent as i32);

    // add_track -> track_published with the cid; alice is told about the track.
    rtc_send(&mut b, Req::AddTrack(proto::AddTrackRequest {
        cid: "cid-123".into(),
        name: "voice".into(),
        r#type: proto::TrackType::Audio as i32,
        source: proto::TrackSource::Microphone as i32,
        ..Default::default()
    }))
    .await;
    let published = rtc_until(&mut b, T, |m| match m {
        Resp::TrackPublished(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(published.cid, "cid-123");
    let sid = published.track.unwrap().sid;
    assert!(sid.starts_with("TR_"));
    let seen = rtc_until(&mut a, T, |m| match m {
        Resp::Update(u) => u.participants.iter().find(|p| p.identity == "agent-1" && !p.tracks.is_empty()).cloned(),
        _ => None,
    })
    .await;
    assert_eq!(seen.tracks[0].sid, sid);
    // Video is refused (audio-only SFU), reported.
    rtc_send(&mut b, Req::AddTrack(proto::AddTrackRequest { cid: "v".into(), r#type: proto::TrackType::Video as i32, ..Default::default() })).await;
    s.wait_for_event(T, |e| matches!(e, ServerEvent::ProtocolError { peer, detail } if peer == "agent-1" && detail.contains("audio only")).then_some(()))
        .await
        .unwrap();

    // ping_req -> pong_resp.
    rtc_send(&mut a, Req::PingReq(proto::Ping { timestamp: 4242, rtt: 0 })).await;
    let pong = rtc_until(&mut a, T, |m| match m {
        Resp::PongResp(p) => Some(*p),
        _ => None,
    })
    .await;
    assert_eq!(pong.last_ping_timestamp, 4242);

    // Leave: the other side gets a DISCONNECTED update; last one out closes the room.
    rtc_send(&mut b, Req::Leave(proto::LeaveRequest::default())).await;
    let gone = rtc_until(&mut a, T, |m| match m {
        Resp::Update(u) => u.participants.iter().find(|p| p.identity == "agent-1").cloned(),
        _ => None,
    })
    .await;
    assert_eq!(gone.state, proto::participant_info::State::Disconnected as i32);
    rtc_send(&mut a, Req::Leave(proto::LeaveRequest::default())).await;
    s.wait_for_event(T, |e| matches!(e, ServerEvent::RoomClosed { room, .. } if room == "room-1").then_some(())).await.unwrap();
    assert!(s.rooms().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn garbage_bad_sdp_and_vanishing_clients_are_reported_and_cleaned_up() {
    let s = server().await;
    let (mut bystander, _) = join(&s, "calm-room", "bystander").await;
    let (mut g, _) = join(&s, "noisy-room", "garbler").await;
    let (mut peer, _) = join(&s, "noisy-room", "peer").await;
    g.send(Message::Binary(vec![0xff, 0x00, 0x13].into())).await.unwrap();
    g.send(Message::Text("{not json".into())).await.unwrap();
    s.wait_for(T, |s| {
        let n = s.events().iter().filter(|e| matches!(e, ServerEvent::ProtocolError { peer, .. } if peer == "garbler")).count();
        (n >= 2).then_some(())
    })
    .await
    .unwrap();
    // Still served after garbage.
    rtc_send(&mut g, Req::PingReq(proto::Ping { timestamp: 1, rtt: 0 })).await;
    rtc_until(&mut g, T, |m| matches!(m, Resp::PongResp(_)).then_some(())).await;

    // Unparsable SDP: reported, the participant is told to leave and removed.
    rtc_send(&mut peer, Req::Offer(proto::SessionDescription { r#type: "offer".into(), sdp: "v=0 garbage".into(), ..Default::default() })).await;
    let leave = rtc_until(&mut peer, T, |m| match m {
        Resp::Leave(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert!(!leave.can_reconnect);
    assert!(rtc_recv(&mut peer, T).await.is_none(), "socket closed after leave");
    s.wait_for_event(T, |e| matches!(e, ServerEvent::ParticipantLeft { identity, .. } if identity == "peer").then_some(())).await.unwrap();
    assert!(s.events().iter().any(|e| matches!(e, ServerEvent::ProtocolError { peer, detail } if peer == "peer" && detail.contains("unparsable"))));

    // Vanishing without leave (TCP dropped): cleaned up, room closed.
    drop(g);
    let reason = s
        .wait_for_event(T, |e| match e {
            ServerEvent::ParticipantLeft { identity, reason, .. } if identity == "garbler" => Some(reason.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert!(reason.contains("without leave") || reason.contains("lost"), "{reason}");
    s.wait_for_event(T, |e| matches!(e, ServerEvent::RoomClosed { room, .. } if room == "noisy-room").then_some(())).await.unwrap();

    // The other room did not notice.
    assert_eq!(s.room("calm-room").unwrap().participants.len(), 1);
    rtc_send(&mut bystander, Req::PingReq(proto::Ping { timestamp: 7, rtt: 0 })).await;
    let p = rtc_until(&mut bystander, T, |m| match m {
        Resp::PongResp(p) => Some(*p),
        _ => None,
    })
    .await;
    assert_eq!(p.last_ping_timestamp, 7);
    s.shutdown().await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_identity_replaces_the_first() {
    let s = server().await;
    let (mut first, _) = join(&s, "dup", "alice").await;
    let (_second, _) = join(&s, "dup", "alice").await;
    let leave = rtc_until(&mut first, T, |m| match m {
        Resp::Leave(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(leave.reason, proto::DisconnectReason::DuplicateIdentity as i32);
    let room = s.room("dup").unwrap();
    assert_eq!(room.participants.len(), 1, "{room:?}");
    s.shutdown().await;
}

/// A worker accepts a job; its agent joins with the minted token and then vanishes: the
/// server terminates the job ("agent left the room").
#[tokio::test]
async fn the_agent_leaving_the_room_terminates_its_job() {
    use prost::Message as _;
    use proto::server_message::Message as Srv;
    use proto::worker_message::Message as Wrk;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = server().await;
    let mut req = format!("{}/agent", s.ws_url()).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {}", s.worker_token()).parse().unwrap());
    let (mut w, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let send = |m: Wrk| Message::Binary(proto::WorkerMessage { message: Some(m) }.encode_to_vec().into());
    async fn next(w: &mut Ws) -> Srv {
        loop {
            use futures_util::StreamExt;
            match tokio::time::timeout(T, w.next()).await.unwrap().unwrap().unwrap() {
                Message::Binary(b) => return proto::ServerMessage::decode(b.as_ref()).unwrap().message.unwrap(),
                _ => continue,
            }
        }
    }
    w.send(send(Wrk::Register(proto::RegisterWorkerRequest { agent_name: "a".into(), ..Default::default() }))).await.unwrap();
    assert!(matches!(next(&mut w).await, Srv::Register(_)));
    let (_caller, _) = join(&s, "call", "caller").await;
    s.create_dispatch("call", "a", "");
    let Srv::Availability(av) = next(&mut w).await else { panic!("availability expected") };
    let job_id = av.job.unwrap().id;
    w.send(send(Wrk::Availability(proto::AvailabilityResponse { job_id: job_id.clone(), available: true, ..Default::default() }))).await.unwrap();
    let Srv::Assignment(asg) = next(&mut w).await else { panic!("assignment expected") };
    assert_eq!(asg.url, None, "empty url: the worker uses its own");
    let mut agent = rtc_connect(&s.ws_url(), &asg.token).await.expect("the minted token joins");
    match rtc_recv(&mut agent, T).await {
        Some(Resp::Join(j)) => {
            let p = j.participant.unwrap();
            assert_eq!(p.identity, format!("agent-{job_id}"));
            assert_eq!(p.kind, proto::participant_info::Kind::Agent as i32);
        }
        other => panic!("{other:?}"),
    }
    drop(agent);
    match next(&mut w).await {
        Srv::Termination(t) => assert_eq!(t.job_id, job_id),
        other => panic!("expected termination, got {other:?}"),
    }
    let reason = s
        .wait_for_event(T, |e| match e {
            ServerEvent::JobTerminated { job_id: j, reason, .. } if *j == job_id => Some(reason.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(reason, "agent left the room");
    s.shutdown().await;
}

#[tokio::test]
async fn a_lost_socket_may_resume_within_the_grace_and_is_removed_after_it() {
    init_tracing();
    let s = LoopbackServer::start(LoopbackConfig { reconnect_grace: Duration::from_millis(400), ..Default::default() })
        .await
        .unwrap();
    let (_other, _) = join(&s, "grace", "other").await;
    let (a, ja) = join(&s, "grace", "alice").await;
    let sid = ja.participant.unwrap().sid;
    let token = s.participant_token("grace", "alice");
    // Cut (TCP dropped): alice stays in the room, then resumes with reconnect=1&sid.
    drop(a);
    s.wait_for_event(T, |e| matches!(e, ServerEvent::SignalLost { identity, .. } if identity == "alice").then_some(())).await.unwrap();
    assert_eq!(s.room("grace").unwrap().participants.len(), 2);
    let mut r = rtc_connect_query(&s.ws_url(), &token, &format!("reconnect=1&sid={sid}&protocol=16")).await.unwrap();
    assert!(matches!(rtc_recv(&mut r, T).await, Some(Resp::Reconnect(_))), "reconnect answer first");
    let update = rtc_until(&mut r, T, |m| match m {
        Resp::Update(u) => Some(u.participants.clone()),
        _ => None,
    })
    .await;
    let mut ids: Vec<_> = update.iter().map(|p| p.identity.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["alice", "other"], "full participant list after a resume");
    // Past the grace, the resumed alice is still there and served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.room("grace").unwrap().participants.len(), 2);
    rtc_send(&mut r, Req::PingReq(proto::Ping { timestamp: 9, rtt: 0 })).await;
    rtc_until(&mut r, T, |m| matches!(m, Resp::PongResp(_)).then_some(())).await;

    // A resume for an unknown sid is told to do a full reconnect.
    let mut bad = rtc_connect_query(&s.ws_url(), &token, "reconnect=1&sid=PA_nope").await.unwrap();
    match rtc_recv(&mut bad, T).await {
        Some(Resp::Leave(l)) => assert_eq!(l.action, proto::leave_request::Action::Reconnect as i32),
        other => panic!("expected leave/RECONNECT, got {other:?}"),
    }

    // Cut again and do not come back: removed after the grace.
    let cut_at = std::time::Instant::now();
    assert!(s.drop_participant_signal("grace", "alice"));
    s.wait_for_event(T, |e| matches!(e, ServerEvent::ParticipantLeft { identity, .. } if identity == "alice").then_some(())).await.unwrap();
    let waited = cut_at.elapsed();
    assert!(waited >= Duration::from_millis(350), "removed before the grace: {waited:?}");
    assert_eq!(s.room("grace").unwrap().participants.len(), 1);
    s.shutdown().await;
}
