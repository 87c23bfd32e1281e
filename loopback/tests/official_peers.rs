//! Proof with peers we did not write: the official `livekit` Python SDK (libwebrtc inside)
//! and the official `livekit-agents` worker, against the loopback server in this process.
//! Needs the venv from scripts/install-test-deps.sh (a missing venv fails the test).

mod common;

use std::time::Duration;

use common::*;
use livekit_loopback::proto;
use livekit_loopback::{JobStatus, LoopbackConfig, LoopbackServer, ParticipantKind, ServerEvent};
use prost::Message as _;

const T: Duration = Duration::from_secs(30);

async fn server() -> LoopbackServer {
    init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Rooms close at the first idle check once empty, so each test can see its rooms gone
    // (the 20 s departure timeout is tested in room_lifecycle.rs).
    let cfg = LoopbackConfig { departure_timeout: std::time::Duration::ZERO, ..Default::default() };
    LoopbackServer::start(cfg).await.expect("server starts")
}

#[test]
fn the_audio_checks_can_fail() {
    let dir = scratch("checks");
    let src = dir.join("speech.wav");
    espeak("Проверка связи. Раз, два, три.", &src);
    let (rate, s) = read_wav(&src);
    // Same speech delayed by 0.7 s with silence around: accepted.
    let mut shifted = vec![0.0; (rate as f32 * 0.7) as usize];
    shifted.extend(&s);
    shifted.extend(vec![0.0; rate as usize]);
    write_wav(&dir.join("shifted.wav"), rate, &shifted);
    assert_speech_heard(&src, &dir.join("shifted.wav"));
    // Reversed speech: same energy and duration, wrong envelope.
    let rev: Vec<f32> = s.iter().rev().cloned().collect();
    write_wav(&dir.join("reversed.wav"), rate, &rev);
    let rev_global = match_speech(&src, &dir.join("reversed.wav")).correlation;
    eprintln!("reversed speech, global: {rev_global}");
    assert!(rev_global < 0.8);
    let chunked = match_speech_chunked(&src, &dir.join("reversed.wav"));
    eprintln!("reversed speech, chunked: {chunked:?}");
    assert!(chunked.0 < 0.8, "the gap-tolerant check accepts reversed speech: {chunked:?}");
    // A recording with 300 ms of the speech cut out in the middle passes the gap-tolerant check.
    let cut = s.len() / 2;
    let mut gapped = vec![0.0; rate as usize / 2];
    gapped.extend(&s[..cut]);
    gapped.extend(&s[cut + rate as usize * 3 / 10..]);
    gapped.extend(vec![0.0; rate as usize]);
    write_wav(&dir.join("gapped.wav"), rate, &gapped);
    let chunked = match_speech_chunked(&src, &dir.join("gapped.wav"));
    eprintln!("gapped speech, chunked: {chunked:?}");
    assert!(chunked.0 >= 0.8, "{chunked:?}");
    // Silence and a steady tone are not speech.
    write_wav(&dir.join("silence.wav"), rate, &vec![0.0; s.len() + rate as usize]);
    assert!(match_speech(&src, &dir.join("silence.wav")).correlation < 0.8);
    assert!(match_speech_chunked(&src, &dir.join("silence.wav")).0 < 0.8);
    let tone: Vec<f32> = (0..s.len() + rate as usize)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
        .collect();
    write_wav(&dir.join("tone.wav"), rate, &tone);
    assert!(match_speech(&src, &dir.join("tone.wav")).correlation < 0.8);
    assert!(match_speech_chunked(&src, &dir.join("tone.wav")).0 < 0.8);
    // And the tone detector tells a tone from speech.
    assert!(tone_seconds(&dir.join("tone.wav"), 440.0) > 2.0);
    assert!(tone_seconds(&src, 440.0) < 0.5);
}

/// Two SDK participants: one publishes espeak speech, the other records it. Meanwhile, in
/// other rooms, clients misbehave (garbage frames, an unparsable SDP, a vanishing client):
/// the server reports and cleans those up and the audio room is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sdk_participants_hear_each_other_while_other_rooms_misbehave() {
    let _serial = peers_lock().await;
    let s = server().await;
    let dir = scratch("two-participants");
    let src = dir.join("speech.wav");
    espeak("Здравствуйте. Меня зовут Анна. Я хочу открыть небольшое кафе в центре города.", &src);
    let rec = dir.join("recorded.wav");
    let ws_url = s.ws_url();

    let t_listener = s.participant_token("audio-room", "listener");
    let mut listener = Peer::spawn(
        "listener",
        "participant.py",
        &["record", "--url", &ws_url, "--token", &t_listener, "--out", rec.to_str().unwrap(), "--seconds", "15", "--from-identity", "speaker"],
        &[],
        &dir,
    );
    listener.event("connected", T).await;
    let t_speaker = s.participant_token("audio-room", "speaker");
    let mut speaker = Peer::spawn(
        "speaker",
        "participant.py",
        &["publish", "--url", &ws_url, "--token", &t_speaker, "--wav", src.to_str().unwrap(), "--wait-for-subscriber", "0.3", "--data-marker", "hello-data"],
        &[],
        &dir,
    );
    let published = speaker.event("published", T).await;
    // As livekit-server does: the publisher hears once that its track has a subscriber.
    let subscribed = speaker.event("local_track_subscribed", T).await;
    assert_eq!(subscribed["track_sid"], published["track_sid"], "{subscribed}");
    speaker.event("speech_start", T).await;

    // Faults in other rooms while the speech flows.
    let faults = async {
        // Garbage then a vanishing client.
        let mut g = rtc_connect(&ws_url, &s.participant_token("fault-room", "garbler")).await.unwrap();
        rtc_until(&mut g, T, |m| matches!(m, proto::signal_response::Message::Join(_)).then_some(())).await;
        use futures_util::SinkExt;
        g.send(tokio_tungstenite::tungstenite::Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into())).await.unwrap();
        // Unparsable SDP from another client.
        let mut b = rtc_connect(&ws_url, &s.participant_token("sdp-room", "bad-sdp")).await.unwrap();
        rtc_until(&mut b, T, |m| matches!(m, proto::signal_response::Message::Join(_)).then_some(())).await;
        rtc_send(&mut b, proto::signal_request::Message::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: "this is not an SDP".into(),
            ..Default::default()
        }))
        .await;
        let left = rtc_until(&mut b, T, |m| match m {
            proto::signal_response::Message::Leave(l) => Some(l.clone()),
            _ => None,
        })
        .await;
        assert!(!left.can_reconnect);
        // The garbler vanishes without leave (TCP dropped).
        drop(g);
        s.wait_for_event(T, |e| match e {
            ServerEvent::ParticipantLeft { room, identity, reason } if room == "fault-room" && identity == "garbler" => Some(reason.clone()),
            _ => None,
        })
        .await
        .unwrap()
    };
    let vanish_reason = faults.await;
    assert!(vanish_reason.contains("without leave") || vanish_reason.contains("lost"), "{vanish_reason}");

    speaker.wait_success(T).await;
    listener.wait_success(T).await;
    // The data packet went through the server's data channels, sender filled in.
    let relayed = s.events().into_iter().find_map(|e| match e {
        ServerEvent::DataForwarded { from, topic, recipients, .. } if from == "speaker" && topic == "marker" => Some(recipients),
        _ => None,
    });
    assert_eq!(relayed, Some(vec!["listener".to_string()]), "the server did not relay the marker to the listener");
    let data = listener.event("data", T).await;
    assert_eq!((data["from_identity"].as_str(), data["topic"].as_str(), data["payload"].as_str()), (Some("speaker"), Some("marker"), Some("hello-data")), "{data}");

    // The server saw what the peers did.
    let ev = s.events();
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::ParticipantJoined { identity, kind: ParticipantKind::Standard, .. } if identity == "speaker")));
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::MediaFlowing { identity, .. } if identity == "speaker")));
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::TrackSubscribed { subscriber, .. } if subscriber == "listener")));
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::ProtocolError { peer, detail } if peer == "garbler" && detail.contains("undecodable"))));
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::ProtocolError { peer, detail } if peer == "bad-sdp" && detail.contains("unparsable"))));
    for room in ["fault-room", "sdp-room", "audio-room"] {
        s.wait_for_event(T, |e| matches!(e, ServerEvent::RoomClosed { room: r, .. } if r == room).then_some(())).await.unwrap();
    }
    assert!(s.rooms().is_empty(), "rooms left over: {:?}", s.rooms());

    // One timing discontinuity is tolerated (a loaded 2-core machine can make NetEq stretch).
    let (corr, shift) = assert_speech_heard_across_a_gap(&src, &rec);
    let m = match_speech(&src, &rec);
    eprintln!(
        "MEASURED two-participant speech: correlation {:.3} (two-part {corr:.3}, shift {shift:.2}s), lag {:.2}s, active {:.2}s of {:.2}s",
        m.correlation, m.lag_s, m.recorded_active_s, m.source_active_s
    );
    s.shutdown().await;
}

/// The official livekit-agents worker registers, is dispatched by CreateRoom{agents}
/// (protobuf Twirp), joins as an AGENT participant, publishes a tone the SDK participant
/// hears; deleting the room terminates the job, which ends with JS_SUCCESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_agents_worker_is_dispatched_joins_and_is_heard() {
    let _serial = peers_lock().await;
    let s = server().await;
    let dir = scratch("agents-worker");
    let url = s.url();
    let started = std::time::Instant::now();
    let mut agent = Peer::spawn(
        "tone-agent",
        "tone_agent.py",
        &[] as &[&str],
        &[("LIVEKIT_URL", &url), ("LIVEKIT_API_KEY", "devkey"), ("LIVEKIT_API_SECRET", "secret")],
        &dir,
    );
    let worker_id = s
        .wait_for_event(T, |e| match e {
            ServerEvent::WorkerRegistered { worker_id, agent_name } if agent_name == "tone-agent" => Some(worker_id.clone()),
            _ => None,
        })
        .await
        .unwrap();
    eprintln!("MEASURED python worker start -> registered: {:?}", started.elapsed());
    agent.event("registered", T).await;
    // Its periodic update_worker reaches us.
    s.wait_for(T, |s| s.worker(&worker_id).filter(|w| w.updates > 0)).await.unwrap();

    // Explicit dispatch, as the Python voice module dispatches: CreateRoom with agents, protobuf
    // body. The room's own departure timeout (over this server's 0) keeps it open after the
    // caller leaves, until the test deletes it.
    let body = proto::CreateRoomRequest {
        name: "consultation-tone".into(),
        departure_timeout: 60,
        agents: vec![proto::RoomAgentDispatch { agent_name: "tone-agent".into(), metadata: "{\"k\":1}".into(), ..Default::default() }],
        ..Default::default()
    }
    .encode_to_vec();
    let resp = reqwest::Client::new()
        .post(format!("{url}/twirp/livekit.RoomService/CreateRoom"))
        .bearer_auth(s.admin_token(None))
        .header("Content-Type", "application/protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let room = proto::Room::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(room.name, "consultation-tone");

    let dispatched = std::time::Instant::now();
    let job = s
        .wait_for(T, |s| s.jobs().into_iter().find(|j| j.room == "consultation-tone" && j.assigned))
        .await
        .unwrap();
    assert_eq!(job.worker_id.as_deref(), Some(worker_id.as_str()));
    assert_eq!(job.participant_identity, format!("agent-{}", job.id), "python names its agent agent-<job id>");
    s.wait_for_job_status(&job.id, JobStatus::JsRunning, T).await.unwrap();
    let joined = s
        .wait_for_event(T, |e| match e {
            ServerEvent::ParticipantJoined { identity, kind, .. } if *identity == job.participant_identity => Some(*kind),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(joined, ParticipantKind::Agent);
    s.wait_for_event(T, |e| matches!(e, ServerEvent::MediaFlowing { identity, .. } if *identity == job.participant_identity).then_some(()))
        .await
        .unwrap();
    eprintln!("MEASURED dispatch -> agent media flowing: {:?}", dispatched.elapsed());

    // A caller joins and records the agent.
    let rec = dir.join("agent-tone.wav");
    let token = s.participant_token("consultation-tone", "caller");
    let mut caller = Peer::spawn(
        "caller",
        "participant.py",
        &["record", "--url", &s.ws_url(), "--token", &token, "--out", rec.to_str().unwrap(), "--seconds", "4", "--from-identity", &job.participant_identity],
        &[],
        &dir,
    );
    let rec_ev = caller.event("recording", T).await;
    assert_eq!(rec_ev["kind"], 4, "the SDK sees the agent as ParticipantInfo.Kind.AGENT: {rec_ev}");
    caller.wait_success(T).await;
    let heard = tone_seconds(&rec, 440.0);
    eprintln!("MEASURED agent tone heard: {heard:.1}s of 4s recorded");
    assert!(heard >= 3.0, "the caller heard only {heard}s of the agent's 440 Hz tone");

    // Deleting the room terminates the job; the worker reports the end.
    let rc = livekit_api::services::room::RoomClient::with_api_key(&url, "devkey", "secret").with_failover(false);
    rc.delete_room("consultation-tone").await.unwrap();
    s.wait_for_event(T, |e| matches!(e, ServerEvent::JobTerminated { job_id, .. } if *job_id == job.id).then_some(()))
        .await
        .unwrap();
    let done = s.wait_for_job_status(&job.id, JobStatus::JsSuccess, T).await.unwrap();
    assert_eq!(done.history.first(), Some(&JobStatus::JsPending));
    agent.event("room_left", T).await;
    agent.terminate(Duration::from_secs(10)).await;
    s.wait_for(T, |s| s.worker(&worker_id).filter(|w| !w.connected)).await.unwrap();
    s.shutdown().await;
}

/// The SDK's signalling socket is cut mid-speech (no close frame): the SDK resumes with
/// `reconnect=1&sid=` within the grace, stays the same participant, and keeps hearing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_participant_resumes_after_a_signalling_cut_and_keeps_hearing() {
    let _serial = peers_lock().await;
    let s = server().await;
    let dir = scratch("resume");
    let src = dir.join("speech.wav");
    espeak("Раз, два, три, четыре, пять. Вышел зайчик погулять. Вдруг охотник выбегает.", &src);
    let rec = dir.join("recorded.wav");
    let ws_url = s.ws_url();
    let t_listener = s.participant_token("resume-room", "listener");
    let mut listener = Peer::spawn(
        "listener",
        "participant.py",
        &["record", "--url", &ws_url, "--token", &t_listener, "--out", rec.to_str().unwrap(), "--seconds", "15", "--from-identity", "speaker"],
        &[],
        &dir,
    );
    listener.event("connected", T).await;
    let t_speaker = s.participant_token("resume-room", "speaker");
    let mut speaker = Peer::spawn(
        "speaker",
        "participant.py",
        &["publish", "--url", &ws_url, "--token", &t_speaker, "--wav", src.to_str().unwrap(), "--wait-for-subscriber", "0.3"],
        &[],
        &dir,
    );
    speaker.event("speech_start", T).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sid_before = s.room("resume-room").unwrap().participants.iter().find(|p| p.identity == "listener").unwrap().sid.clone();
    assert!(s.drop_participant_signal("resume-room", "listener"));
    s.wait_for_event(T, |e| matches!(e, ServerEvent::ParticipantResumed { identity, .. } if identity == "listener").then_some(()))
        .await
        .unwrap();
    speaker.wait_success(T).await;
    listener.wait_success(T).await;
    let ev = s.events();
    assert!(
        !ev.iter().any(|e| matches!(e, ServerEvent::ParticipantLeft { identity, reason, .. } if identity == "listener" && !reason.contains("leave"))),
        "the listener was removed instead of resumed: {ev:?}"
    );
    let joins = ev.iter().filter(|e| matches!(e, ServerEvent::ParticipantJoined { identity, .. } if identity == "listener")).count();
    assert_eq!(joins, 1, "a resume is not a new join");
    let _ = sid_before;
    let (corr, shift) = assert_speech_heard_across_a_gap(&src, &rec);
    eprintln!("MEASURED speech across a signalling cut: two-part correlation {corr:.3}, timing shift {shift:.2}s");
    s.shutdown().await;
}

/// The server's LeaveRequests as the SDK handles them. A `Resume` (a draining node): the SDK
/// (livekit 1.1.21) reconnects, with a full join rather than a resume (recorded in
/// INTEROP.md), and is back in the room. A `Disconnect` (removed): it ends with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_participant_follows_leave_actions() {
    let _serial = peers_lock().await;
    let s = server().await;
    let dir = scratch("leave-actions");
    let src = dir.join("speech.wav");
    espeak("Раз, два, три, четыре, пять. Вышел зайчик погулять. Вдруг охотник выбегает.", &src);
    let ws_url = s.ws_url();
    let t_speaker = s.participant_token("leave-room", "speaker");
    let mut speaker = Peer::spawn(
        "speaker",
        "participant.py",
        &["publish", "--url", &ws_url, "--token", &t_speaker, "--wav", src.to_str().unwrap(), "--linger", "8"],
        &[],
        &dir,
    );
    speaker.event("published", T).await;
    let listen = |name: &str| {
        let token = s.participant_token("leave-room", name);
        let out = dir.join(format!("{name}.wav"));
        Peer::spawn(name, "participant.py", &["record", "--url", &ws_url, "--token", &token, "--out", out.to_str().unwrap(), "--seconds", "20", "--from-identity", "speaker"], &[], &dir)
    };
    use proto::leave_request::Action;
    let mut first = listen("resumed");
    first.event("recording", T).await;
    assert!(s.send_leave("leave-room", "resumed", Action::Resume, proto::DisconnectReason::Migration));
    first.event("reconnected", T).await;
    s.wait_for_event(T, |e| match e {
        ServerEvent::ParticipantResumed { identity, .. } | ServerEvent::ParticipantJoined { identity, .. } if identity == "resumed" => Some(()),
        _ => None,
    })
    .await
    .expect("the SDK is back in the room after a resume request");
    assert!(s.room("leave-room").unwrap().participants.iter().any(|p| p.identity == "resumed"));

    let mut second = listen("removed");
    second.event("recording", T).await;
    assert!(s.send_leave("leave-room", "removed", Action::Disconnect, proto::DisconnectReason::ParticipantRemoved));
    let gone = second.event("disconnected", T).await;
    assert_eq!(gone["reason"], "PARTICIPANT_REMOVED", "{gone}");
    second.wait_success(T).await;
    first.terminate(Duration::from_secs(5)).await;
    speaker.terminate(Duration::from_secs(5)).await;
    s.shutdown().await;
}

/// A caller (SDK, `call` mode) speaks two phrases on a timeline while an official
/// livekit-agents worker echoes what it hears: the caller's recording, placed on its own
/// timeline, holds the phrases at their offsets, later by the round trip
/// caller -> SFU -> agent -> SFU -> caller. This is the harness the end-to-end consultation
/// test uses (phrases at known times, answers checked in windows), checked here first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_timeline_round_trips_through_an_echo_agent() {
    let _serial = peers_lock().await;
    let s = server().await;
    let dir = scratch("echo-call");
    let p1 = dir.join("p1.wav");
    let p2 = dir.join("p2.wav");
    espeak("Добрый день.", &p1);
    espeak("Сколько стоит аренда помещения?", &p2);
    let url = s.url();
    let mut agent = Peer::spawn(
        "echo-agent",
        "tone_agent.py",
        &[] as &[&str],
        &[("LIVEKIT_URL", &url), ("LIVEKIT_API_KEY", "devkey"), ("LIVEKIT_API_SECRET", "secret"), ("TONE_AGENT_MODE", "echo")],
        &dir,
    );
    agent.event("registered", T).await;
    s.create_room("echo-room", &["tone-agent"]);
    let heard = dir.join("heard.wav");
    let token = s.participant_token("echo-room", "caller");
    let (at1, at2, total) = (0.5f32, 3.5f32, 7.5f32);
    let ph1 = format!("{}@{at1}", p1.display());
    let ph2 = format!("{}@{at2}", p2.display());
    let mut caller = Peer::spawn(
        "caller",
        "participant.py",
        &["call", "--url", &s.ws_url(), "--token", &token, "--phrase", &ph1, "--phrase", &ph2, "--out", heard.to_str().unwrap(), "--seconds", &total.to_string()],
        &[],
        &dir,
    );
    let sub = caller.event("subscribed", T).await;
    assert_eq!(sub["kind"], 4, "{sub}");
    agent.event("echoing", T).await;
    caller.wait_success(T).await;
    let timeline = timeline_envelope(&[(&p1, at1), (&p2, at2)], total);
    let (corr, corr_delay) = match_delayed(&timeline, &heard, 1.5);
    let (f1, delay) = match_activity(&timeline, &heard, 1.5);
    eprintln!(
        "MEASURED caller timeline through the echo agent: activity F1 {f1:.3} at round trip {:.0} ms (envelope correlation {corr:.3} at {:.0} ms)",
        delay * 1000.0,
        corr_delay * 1000.0
    );
    assert!(f1 >= 0.85, "the echoed phrases are not where the timeline says: F1 {f1}, delay {delay}");
    assert!(delay < 1.0, "round trip {delay}s");
    // The same check refuses wrong timelines: phrases swapped, or all one second later.
    let swapped = timeline_envelope(&[(&p2, at1), (&p1, at2 + 1.0)], total);
    let (wrong, _) = match_activity(&swapped, &heard, 1.5);
    assert!(wrong < 0.85, "a swapped timeline matched too: {wrong}");
    let late = timeline_envelope(&[(&p1, at1 + 1.0), (&p2, at2 + 1.0)], total);
    let (wrong, _) = match_activity(&late, &heard, 0.5);
    assert!(wrong < 0.85, "a timeline one second late matched too: {wrong}");
    s.close_room("echo-room");
    agent.terminate(Duration::from_secs(10)).await;
    s.shutdown().await;
}
