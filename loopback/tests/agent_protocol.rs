//! The /agent worker protocol and the Twirp APIs, driven by a hand-written worker over a real
//! WebSocket, and by the official Rust Twirp client (livekit-api).

#![allow(deprecated)] // ParticipantPermission.agent is what workers still send

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, TokenVerifier, VideoGrants};
use livekit_loopback::proto;
use livekit_loopback::{JobStatus, LoopbackConfig, LoopbackServer, RawFrame, ServerEvent};
use proto::server_message::Message as Srv;
use proto::worker_message::Message as Wrk;
use prost::Message as _;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const T: Duration = Duration::from_secs(5);

async fn server() -> LoopbackServer {
    server_with(LoopbackConfig::default()).await
}

async fn server_with(cfg: LoopbackConfig) -> LoopbackServer {
    // reqwest is built with rustls-no-provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    LoopbackServer::start(cfg).await.expect("server starts")
}

async fn connect(s: &LoopbackServer, token: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("{}/agent", s.ws_url()).into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, m: Wrk) {
    let msg = proto::WorkerMessage { message: Some(m) };
    ws.send(Message::Binary(msg.encode_to_vec().into())).await.unwrap();
}

/// Next ServerMessage (skipping WS pings).
async fn recv(ws: &mut Ws) -> Srv {
    loop {
        let f = tokio::time::timeout(T, ws.next()).await.expect("server message in time");
        match f.expect("stream open").expect("frame") {
            Message::Binary(b) => {
                return proto::ServerMessage::decode(b.as_ref()).unwrap().message.expect("message set")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn register(ws: &mut Ws, agent_name: &str) -> String {
    send(
        ws,
        Wrk::Register(proto::RegisterWorkerRequest {
            r#type: proto::JobType::JtRoom as i32,
            agent_name: agent_name.into(),
            version: "test".into(),
            allowed_permissions: Some(proto::ParticipantPermission {
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
                agent: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    match recv(ws).await {
        Srv::Register(r) => {
            assert!(r.server_info.is_some());
            r.worker_id
        }
        other => panic!("expected register response, got {other:?}"),
    }
}

async fn update(ws: &mut Ws, status: proto::WorkerStatus, load: f32) {
    send(ws, Wrk::UpdateWorker(proto::UpdateWorkerStatus { status: Some(status as i32), load, job_count: 0, ..Default::default() })).await;
}

async fn worker(s: &LoopbackServer, agent_name: &str) -> (Ws, String) {
    let mut ws = connect(s, Some(&s.worker_token())).await.expect("connects");
    let id = register(&mut ws, agent_name).await;
    (ws, id)
}

/// Answer the next availability request positively; returns the assignment.
async fn accept_next(ws: &mut Ws) -> proto::JobAssignment {
    let job = match recv(ws).await {
        Srv::Availability(a) => a.job.unwrap(),
        other => panic!("expected availability, got {other:?}"),
    };
    send(
        ws,
        Wrk::Availability(proto::AvailabilityResponse {
            job_id: job.id.clone(),
            available: true,
            participant_identity: format!("agent-{}", job.id),
            participant_name: "Consultant".into(),
            ..Default::default()
        }),
    )
    .await;
    match recv(ws).await {
        Srv::Assignment(a) => a,
        other => panic!("expected assignment, got {other:?}"),
    }
}

fn http_status(e: tokio_tungstenite::tungstenite::Error) -> u16 {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn agent_endpoint_refuses_missing_bad_or_grantless_tokens() {
    let s = server().await;
    assert_eq!(http_status(connect(&s, None).await.unwrap_err()), 401);
    let wrong_secret = AccessToken::with_api_key("devkey", "not-the-secret")
        .with_grants(VideoGrants { agent: true, ..Default::default() })
        .to_jwt()
        .unwrap();
    assert_eq!(http_status(connect(&s, Some(&wrong_secret)).await.unwrap_err()), 401);
    assert_eq!(http_status(connect(&s, Some("garbage.token.here")).await.unwrap_err()), 401);
    let participant = s.participant_token("r", "alice");
    assert_eq!(http_status(connect(&s, Some(&participant)).await.unwrap_err()), 401);
    let rejections = s.events().iter().filter(|e| matches!(e, ServerEvent::AuthRejected { .. })).count();
    assert_eq!(rejections, 4);
    // The right token works.
    let (_ws, id) = worker(&s, "a").await;
    assert!(id.starts_with("AW_"), "{id}");
    s.shutdown().await;
}

#[tokio::test]
async fn register_update_and_explicit_dispatch_through_create_room_with_agents() {
    let s = server().await;
    let (mut ws, wid) = worker(&s, "consultant").await;
    update(&mut ws, proto::WorkerStatus::WsAvailable, 0.25).await;
    let w = s
        .wait_for(T, |s| s.worker(&wid).filter(|w| w.updates == 1))
        .await
        .unwrap();
    assert_eq!((w.agent_name.as_str(), w.load, w.connected), ("consultant", 0.25, true));

    // CreateRoom with agents, JSON body, over plain HTTP.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/twirp/livekit.RoomService/CreateRoom", s.url()))
        .bearer_auth(s.admin_token(None))
        .header("Content-Type", "application/json")
        .body(r#"{"name":"consultation-1","agents":[{"agentName":"consultant","metadata":"m1"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let room: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(room["name"], "consultation-1");
    assert!(room["sid"].as_str().unwrap().starts_with("RM_"));

    let a = accept_next(&mut ws).await;
    let job = a.job.unwrap();
    assert_eq!(job.room.as_ref().unwrap().name, "consultation-1");
    assert_eq!(job.agent_name, "consultant");
    assert_eq!(job.metadata, "m1");
    // The server-minted token: verified with the secret, grants as the real server mints them.
    let claims = TokenVerifier::with_api_key("devkey", "secret").verify(&a.token).unwrap();
    assert!(claims.video.room_join && claims.video.agent);
    assert_eq!(claims.video.room, "consultation-1");
    assert_eq!(claims.kind, "agent");
    assert_eq!(claims.sub, format!("agent-{}", job.id));
    let ttl = claims.exp as i64 - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((3500..=3600).contains(&ttl), "ttl {ttl}");

    send(&mut ws, Wrk::UpdateJob(proto::UpdateJobStatus { job_id: job.id.clone(), status: JobStatus::JsRunning as i32, error: String::new() })).await;
    let snap = s.wait_for_job_status(&job.id, JobStatus::JsRunning, T).await.unwrap();
    assert_eq!(snap.worker_id.as_deref(), Some(wid.as_str()));
    assert_eq!(snap.history, vec![JobStatus::JsPending, JobStatus::JsRunning]);
    assert_eq!(s.worker(&wid).unwrap().jobs, vec![job.id.clone()]);

    // Deleting the dispatch with the official Twirp client terminates the job.
    let dc = livekit_api::services::agent_dispatch::AgentDispatchClient::with_api_key(&s.url(), "devkey", "secret")
        .with_failover(false);
    let listed = dc.list_dispatch("consultation-1").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, job.dispatch_id);
    dc.delete_dispatch(&job.dispatch_id, "consultation-1").await.unwrap();
    match recv(&mut ws).await {
        Srv::Termination(t) => assert_eq!(t.job_id, job.id),
        other => panic!("expected termination, got {other:?}"),
    }
    send(&mut ws, Wrk::UpdateJob(proto::UpdateJobStatus { job_id: job.id.clone(), status: JobStatus::JsSuccess as i32, error: String::new() })).await;
    let snap = s.wait_for_job_status(&job.id, JobStatus::JsSuccess, T).await.unwrap();
    assert!(snap.terminated);
    assert!(dc.list_dispatch("consultation-1").await.unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn named_workers_get_only_their_dispatches_and_default_worker_gets_new_rooms() {
    let s = server().await;
    let (mut named, named_id) = worker(&s, "consultant").await;
    let (mut default, default_id) = worker(&s, "").await;
    // A room without agents: automatic dispatch to the empty-name worker only.
    s.create_room("auto-room", &[]);
    let a = accept_next(&mut default).await;
    assert_eq!(a.job.unwrap().room.unwrap().name, "auto-room");
    // Explicit dispatch to "consultant".
    let d = s.create_dispatch("auto-room", "consultant", "");
    let a = accept_next(&mut named).await;
    assert_eq!(a.job.as_ref().unwrap().dispatch_id, d);
    assert!(tokio::time::timeout(Duration::from_millis(300), recv_opt(&mut default)).await.is_err(), "default worker got a named job");
    // A dispatch to an agent nobody serves stays pending and says why.
    let d2 = s.create_dispatch("auto-room", "nobody", "");
    let why = s
        .wait_for_event(T, |e| match e {
            ServerEvent::JobUnassigned { job_id, reason } if s_job_dispatch(&s, job_id) == d2 => Some(reason.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert!(why.contains("nobody"), "{why}");
    let _ = (named_id, default_id);
    s.shutdown().await;
}

fn s_job_dispatch(s: &LoopbackServer, job_id: &str) -> String {
    s.job(job_id).map(|j| j.dispatch_id).unwrap_or_default()
}

async fn recv_opt(ws: &mut Ws) -> Option<Srv> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return proto::ServerMessage::decode(b.as_ref()).ok()?.message,
            Ok(Message::Ping(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn selection_skips_full_and_overloaded_workers_and_prefers_low_load() {
    let s = server().await;
    let (mut full, full_id) = worker(&s, "x").await;
    let (mut loaded, loaded_id) = worker(&s, "x").await;
    let (mut light, light_id) = worker(&s, "x").await;
    let (mut busy, busy_id) = worker(&s, "x").await;
    update(&mut full, proto::WorkerStatus::WsFull, 0.0).await;
    update(&mut loaded, proto::WorkerStatus::WsAvailable, 1.0).await;
    update(&mut light, proto::WorkerStatus::WsAvailable, 0.0).await;
    update(&mut busy, proto::WorkerStatus::WsAvailable, 0.8).await;
    for id in [&full_id, &loaded_id, &light_id, &busy_id] {
        s.wait_for(T, |s| s.worker(id).filter(|w| w.updates == 1)).await.unwrap();
    }
    let n = 60;
    for i in 0..n {
        s.create_dispatch(&format!("sel-{i}"), "x", "");
    }
    // Answer every request on the two eligible workers; count who was asked.
    let (mut asked_light, mut asked_busy) = (0, 0);
    while asked_light + asked_busy < n {
        tokio::select! {
            m = recv(&mut light) => if let Srv::Availability(a) = m { asked_light += 1; answer(&mut light, &a.job.unwrap().id, true).await; },
            m = recv(&mut busy) => if let Srv::Availability(a) = m { asked_busy += 1; answer(&mut busy, &a.job.unwrap().id, true).await; },
            m = recv(&mut full) => panic!("a FULL worker was asked: {m:?}"),
            m = recv(&mut loaded) => panic!("a worker with load 1.0 was asked: {m:?}"),
        }
    }
    // Weights 1.0 vs 0.2: expected 50 vs 10. Fail if the light worker is not clearly favoured.
    // (A draining worker is covered by draining_and_stale_updates below.)
    assert!(asked_light >= 38, "light {asked_light} busy {asked_busy}");
    assert!(asked_busy >= 1, "busy worker never chosen ({asked_light}/{asked_busy}): weighting is not random");
    s.shutdown().await;
}

async fn answer(ws: &mut Ws, job_id: &str, available: bool) {
    send(ws, Wrk::Availability(proto::AvailabilityResponse { job_id: job_id.into(), available, ..Default::default() })).await;
}

#[tokio::test]
async fn refusal_and_availability_timeout_move_the_job_to_another_worker() {
    let s = server_with(LoopbackConfig { availability_timeout: Duration::from_millis(300), ..Default::default() }).await;
    let (mut w1, w1_id) = worker(&s, "x").await;
    let (mut w2, w2_id) = worker(&s, "x").await;
    s.create_dispatch("r1", "x", "");
    // Whoever is asked first stays silent; the other must be asked next.
    let (first, mut other, other_id) = tokio::select! {
        m = recv(&mut w1) => (m, w2, w2_id.clone()),
        m = recv(&mut w2) => (m, w1, w1_id.clone()),
    };
    assert!(matches!(first, Srv::Availability(_)));
    let a = accept_next(&mut other).await;
    let job = a.job.unwrap();
    assert_eq!(s.job(&job.id).unwrap().worker_id.as_deref(), Some(other_id.as_str()));
    assert!(s.events().iter().any(|e| matches!(e, ServerEvent::AvailabilityAnswered { timed_out: true, .. })));

    // Refusal: worker says no; the job goes to the other one (the silent one is excluded now
    // only for the first job; this is a new job).
    s.create_dispatch("r2", "x", "");
    let m = recv(&mut other).await;
    if let Srv::Availability(a) = m {
        answer(&mut other, &a.job.unwrap().id, false).await;
    }
    s.wait_for_event(T, |e| matches!(e, ServerEvent::AvailabilityAnswered { available: false, timed_out: false, .. }).then_some(()))
        .await
        .unwrap();
    s.shutdown().await;
}

/// The protocol's `migrate_job` as described (a server that implements it; livekit-server
/// OSS does not, see the next test).
#[tokio::test]
async fn dropped_connection_then_reregistration_and_migrate_job() {
    let s = server_with(LoopbackConfig { migrate_jobs: true, ..Default::default() }).await;
    let (mut ws, old_id) = worker(&s, "x").await;
    s.create_room("mig", &["x"]);
    let job = accept_next(&mut ws).await.job.unwrap();
    send(&mut ws, Wrk::UpdateJob(proto::UpdateJobStatus { job_id: job.id.clone(), status: JobStatus::JsRunning as i32, error: String::new() })).await;
    s.wait_for_job_status(&job.id, JobStatus::JsRunning, T).await.unwrap();

    assert_eq!(s.drop_worker_connections(), 1);
    // The worker sees its connection end (no close handshake needed).
    let end = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                _ => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "connection not dropped");
    s.wait_for(T, |s| s.worker(&old_id).filter(|w| !w.connected)).await.unwrap();

    let (mut ws2, new_id) = worker(&s, "x").await;
    assert_ne!(new_id, old_id);
    send(&mut ws2, Wrk::MigrateJob(proto::MigrateJobRequest { job_ids: vec![job.id.clone(), "AJ_unknown".into()] })).await;
    let (moved, unknown) = s
        .wait_for_event(T, |e| match e {
            ServerEvent::JobsMigrated { worker_id, job_ids, unknown } if *worker_id == new_id => Some((job_ids.clone(), unknown.clone())),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(moved, vec![job.id.clone()]);
    assert_eq!(unknown, vec!["AJ_unknown".to_string()]);
    assert_eq!(s.job(&job.id).unwrap().worker_id.as_deref(), Some(new_id.as_str()));
    // The migrated job is terminated on the new connection.
    assert!(s.close_room("mig"));
    match recv(&mut ws2).await {
        Srv::Termination(t) => assert_eq!(t.job_id, job.id),
        other => panic!("expected termination, got {other:?}"),
    }
    s.shutdown().await;
}

/// livekit-server (OSS, `pkg/agent/worker.go` HandleMigrateJob, `agentservice.go`
/// deregisterWorker): a vanished worker's jobs are forgotten, not re-dispatched, and a
/// `migrate_job` from its next connection changes nothing; their end reaches nobody.
#[tokio::test]
async fn a_vanished_workers_jobs_are_neither_redispatched_nor_migrated() {
    let s = server().await;
    let (mut ws, old_id) = worker(&s, "x").await;
    s.create_room("orphan-room", &["x"]);
    let job = accept_next(&mut ws).await.job.unwrap();
    send(&mut ws, Wrk::UpdateJob(proto::UpdateJobStatus { job_id: job.id.clone(), status: JobStatus::JsRunning as i32, error: String::new() })).await;
    s.wait_for_job_status(&job.id, JobStatus::JsRunning, T).await.unwrap();
    drop(ws);
    s.wait_for(T, |s| s.worker(&old_id).filter(|w| !w.connected)).await.unwrap();

    let (mut ws2, new_id) = worker(&s, "x").await;
    send(&mut ws2, Wrk::MigrateJob(proto::MigrateJobRequest { job_ids: vec![job.id.clone()] })).await;
    let (moved, unknown) = s
        .wait_for_event(T, |e| match e {
            ServerEvent::JobsMigrated { worker_id, job_ids, unknown } if *worker_id == new_id => Some((job_ids.clone(), unknown.clone())),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!((moved, unknown), (Vec::<String>::new(), vec![job.id.clone()]));
    assert_eq!(s.job(&job.id).unwrap().worker_id.as_deref(), Some(old_id.as_str()), "the job stays with the vanished worker");
    // Its status cannot be updated from the new connection, and closing the room tells nobody.
    send(&mut ws2, Wrk::UpdateJob(proto::UpdateJobStatus { job_id: job.id.clone(), status: JobStatus::JsSuccess as i32, error: String::new() })).await;
    s.wait_for_event(T, |e| matches!(e, ServerEvent::ProtocolError { detail, .. } if detail.contains("held by another worker")).then_some(())).await.unwrap();
    assert!(s.close_room("orphan-room"));
    let next = tokio::time::timeout(Duration::from_millis(800), recv(&mut ws2)).await;
    assert!(next.is_err(), "nothing reaches the new connection about the old job: {next:?}");
    assert!(!s.events().iter().any(|e| matches!(e, ServerEvent::AvailabilityRequested { job_id, .. } if *job_id != job.id)), "no re-dispatch");
    s.shutdown().await;
}

#[tokio::test]
async fn garbage_frames_are_reported_and_the_connection_survives() {
    let s = server().await;
    let (mut ws, wid) = worker(&s, "x").await;
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff, 0x01, 0x02].into())).await.unwrap();
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let n = s
        .wait_for(T, |s| {
            let n = s.events().iter().filter(|e| matches!(e, ServerEvent::ProtocolError { peer, .. } if *peer == wid)).count();
            (n == 2).then_some(n)
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    update(&mut ws, proto::WorkerStatus::WsFull, 0.5).await;
    let w = s.wait_for(T, |s| s.worker(&wid).filter(|w| w.updates == 1)).await.unwrap();
    assert_eq!(w.status, proto::WorkerStatus::WsFull);
    assert!(w.connected);
    // The fault hook reaches the worker too.
    assert!(s.send_raw_to_worker(&wid, RawFrame::Binary(vec![1, 2, 3])));
    let f = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(f, Message::Binary(vec![1, 2, 3].into()));
    s.shutdown().await;
}

#[tokio::test]
async fn json_text_frames_get_json_answers_and_ws_pings_are_sent() {
    let s = server_with(LoopbackConfig { ws_ping_interval: Duration::from_millis(100), ..Default::default() }).await;
    let mut ws = connect(&s, Some(&s.worker_token())).await.unwrap();
    ws.send(Message::Text(r#"{"register":{"type":"JT_ROOM","agentName":"j","version":"1"}}"#.into())).await.unwrap();
    let (mut got_json, mut got_ping) = (None, false);
    while got_json.is_none() || !got_ping {
        match tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => got_json = Some(serde_json::from_str::<serde_json::Value>(&t).unwrap()),
            Message::Ping(_) => got_ping = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    let v = got_json.unwrap();
    assert!(v["register"]["workerId"].as_str().unwrap().starts_with("AW_"), "{v}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_register_timeout() {
    let s = server_with(LoopbackConfig { register_timeout: Duration::from_millis(200), ..Default::default() }).await;
    let mut ws = connect(&s, Some(&s.worker_token())).await.unwrap();
    let closed = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                _ => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok());
    assert!(s.workers().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn twirp_checks_grants_and_speaks_protobuf_and_json() {
    let s = server().await;
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<String>, ctype: &str, body: Vec<u8>| {
        let mut r = http.post(format!("{}/twirp/{path}", s.url())).header("Content-Type", ctype.to_string()).body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // No token -> 401 unauthenticated; a token without roomList -> 403 permission_denied.
    let r = post("livekit.RoomService/ListRooms", None, "application/json", b"{}".to_vec()).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], "unauthenticated");
    let r = post("livekit.RoomService/ListRooms", Some(s.participant_token("x", "y")), "application/json", b"{}".to_vec()).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post("livekit.RoomService/CreateRoom", Some(s.participant_token("x", "y")), "application/json", br#"{"name":"x"}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), 403);
    // Protobuf body with the official client.
    let rc = livekit_api::services::room::RoomClient::with_api_key(&s.url(), "devkey", "secret").with_failover(false);
    let room = rc.create_room("pb-room", Default::default()).await.unwrap();
    assert!(room.sid.starts_with("RM_"));
    let again = rc.create_room("pb-room", Default::default()).await.unwrap();
    assert_eq!(again.sid, room.sid, "CreateRoom on an existing room returns it");
    let listed = rc.list_rooms(vec![]).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["pb-room"]);
    // JSON ListRooms sees it too.
    let r = post("livekit.RoomService/ListRooms", Some(s.admin_token(None)), "application/json", b"{}".to_vec()).await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["rooms"][0]["name"], "pb-room");
    // Malformed bodies.
    let r = post("livekit.RoomService/CreateRoom", Some(s.admin_token(None)), "application/protobuf", vec![0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post("livekit.RoomService/CreateRoom", Some(s.admin_token(None)), "application/json", b"{oops".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    // Dispatch API needs roomAdmin for that very room.
    let other_admin = s.admin_token(Some("other-room"));
    let body = serde_json::json!({"room": "pb-room", "agentName": "a"}).to_string().into_bytes();
    let r = post("livekit.AgentDispatchService/CreateDispatch", Some(other_admin), "application/json", body.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post("livekit.AgentDispatchService/CreateDispatch", Some(s.admin_token(Some("pb-room"))), "application/json", body).await.unwrap();
    assert_eq!(r.status(), 200);
    let d: serde_json::Value = r.json().await.unwrap();
    assert!(d["id"].as_str().unwrap().starts_with("AD_"));
    // Unknown method -> bad_route.
    let r = post("livekit.RoomService/Nope", Some(s.admin_token(None)), "application/json", b"{}".to_vec()).await.unwrap();
    assert_eq!(r.status(), 404);
    // DeleteRoom closes it; deleting again is not_found.
    rc.delete_room("pb-room").await.unwrap();
    assert!(rc.list_rooms(vec![]).await.unwrap().is_empty());
    assert!(rc.delete_room("pb-room").await.is_err());
    assert!(s.dispatches().iter().all(|d| d.deleted));
    s.shutdown().await;
}

#[tokio::test]
async fn draining_workers_are_skipped_and_stale_updates_ignored() {
    let s = server().await;
    let (mut a, a_id) = worker(&s, "x").await;
    let (mut b, b_id) = worker(&s, "x").await;
    // a: available but draining (seq 2); then a stale seq 1 report must not undo it.
    send(&mut a, Wrk::UpdateWorker(proto::UpdateWorkerStatus { status: Some(0), load: 0.0, draining: true, seq: 2, ..Default::default() })).await;
    send(&mut a, Wrk::UpdateWorker(proto::UpdateWorkerStatus { status: Some(0), load: 0.0, draining: false, seq: 1, ..Default::default() })).await;
    update(&mut b, proto::WorkerStatus::WsAvailable, 0.9).await;
    s.wait_for_event(T, |e| matches!(e, ServerEvent::ProtocolError { peer, detail } if *peer == a_id && detail.contains("stale")).then_some(()))
        .await
        .unwrap();
    s.wait_for(T, |s| s.worker(&b_id).filter(|w| w.updates == 1)).await.unwrap();
    let wa = s.worker(&a_id).unwrap();
    assert!(wa.draining && wa.updates == 1, "{wa:?}");
    for i in 0..5 {
        s.create_dispatch(&format!("d-{i}"), "x", "");
        let asg = accept_next(&mut b).await;
        assert!(asg.job.is_some());
    }
    assert!(tokio::time::timeout(Duration::from_millis(200), recv_opt(&mut a)).await.is_err(), "a draining worker was asked");
    s.shutdown().await;
}
