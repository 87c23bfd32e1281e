//! What livekit-server sends on its own, and what our room client does with it: a refreshed
//! token carries a resume past the original's expiry; the agent's RTP audio levels make it an
//! active speaker for the official SDK (with room metadata and connection quality reaching
//! the SDK too); a caller who withdraws their subscription permission is reported, and heard
//! again once they allow it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use consultant::room::{self, RoomOptions};
use consultant::secret::Secret;
use consultant_actors::ports::AgentAudioOutput;
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_api::services::room::RoomClient;
use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent};
use support::*;

fn agent_token(server: &LoopbackServer, room: &str, identity: &str, ttl: Duration) -> Secret {
    let grants = VideoGrants { room_join: true, room: room.into(), agent: true, can_publish: Some(true), can_subscribe: Some(true), can_publish_data: Some(true), ..Default::default() };
    let jwt = AccessToken::with_api_key(server.api_key(), server.api_secret()).with_identity(identity).with_kind("agent").with_grants(grants).with_ttl(ttl).to_jwt().unwrap();
    Secret::new(jwt)
}

fn tone(seconds: f64) -> Arc<[i16]> {
    let n = (seconds * 24_000.0) as usize;
    (0..n).map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 24_000.0).sin()) as i16).collect::<Vec<_>>().into()
}

/// The audio codecs each answer of `who`'s subscriber accepted (answers with audio only).
fn answered(server: &LoopbackServer, who: &str) -> Vec<Vec<String>> {
    server
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ServerEvent::SubscriberAnswered { identity, audio_codecs, .. } if identity == who && !audio_codecs.is_empty() => Some(audio_codecs),
            _ => None,
        })
        .collect()
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_agent_resumes_with_its_refreshed_token_after_the_original_expired() {
    let cfg = LoopbackConfig { token_refresh_interval: Duration::from_secs(1), token_leeway: Duration::ZERO, ..Default::default() };
    let server = LoopbackServer::start(cfg).await.unwrap();
    let room_name = "consultation-refresh";
    server.create_room(room_name, &[]);
    let joined = room::join(&server.url(), &agent_token(&server, room_name, "agent-AJ_refresh", Duration::from_secs(2)), RoomOptions::default())
        .await
        .expect("the agent joins");
    // Past the original token's expiry (whole seconds), the signalling drops.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(server.drop_participant_signal(room_name, "agent-AJ_refresh"));
    server
        .wait_for_event(Duration::from_secs(10), |e| matches!(e, ServerEvent::ParticipantResumed { identity, .. } if identity == "agent-AJ_refresh").then_some(()))
        .await
        .expect("the agent resumed with the refreshed token");
    let status = joined.room.status();
    assert_eq!((status.resumes, status.ended.is_none(), status.failure.is_none()), (1, true, true), "{status:?}");
    joined.room.leave();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sees_the_agent_as_the_active_speaker_while_it_speaks_and_the_rooms_news() {
    let _lock = livekit_loopback::peers::peers_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LoopbackConfig { connection_quality_interval: Duration::from_secs(1), ..Default::default() };
    let server = LoopbackServer::start(cfg).await.unwrap();
    let room_name = "consultation-speakers";
    server.create_room(room_name, &[]);
    let joined = room::join(&server.url(), &agent_token(&server, room_name, "agent-AJ_speak", Duration::from_secs(600)), RoomOptions::default())
        .await
        .expect("the agent joins");
    let out = dir.path().join("heard.wav");
    let args = ["record", "--url", &server.url(), "--token", &server.participant_token(room_name, "listener"), "--out", out.to_str().unwrap(), "--seconds", "6", "--from-identity", "agent-AJ_speak"];
    let mut listener = PythonPeer::spawn("listener", "participant.py", &args, &[], dir.path());
    listener.event("subscribed", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    joined.audio_out.play("item_tone", tone(2.0));
    let speaking = listener.event("active_speakers", Duration::from_secs(5)).await;
    assert_eq!(speaking["identities"], serde_json::json!(["agent-AJ_speak"]), "{speaking}");
    RoomClient::with_api_key(&server.url(), server.api_key(), server.api_secret())
        .with_failover(false)
        .update_room_metadata(room_name, "{\"topic\":\"budget\"}")
        .await
        .unwrap();
    listener.wait_success(Duration::from_secs(20)).await;
    // The server offered the agent's track RED first, as livekit-server does: the SDK takes
    // what libwebrtc prefers (printed), with Opus beside it.
    let sdk = answered(&server, "listener");
    println!("the SDK listener answered audio codecs {sdk:?}");
    assert!(!sdk.is_empty() && sdk.iter().all(|c| c.contains(&"opus".to_string())), "{sdk:?}");
    let events = listener.events();
    let speakers: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "active_speakers").map(|e| &e["identities"]).collect();
    assert_eq!(speakers.last(), Some(&&serde_json::json!([])), "the agent stopped speaking after its 2 s tone: {speakers:?}");
    assert!(events.iter().any(|e| e["event"] == "room_metadata" && e["metadata"] == "{\"topic\":\"budget\"}"), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "connection_quality"), "{events:?}");
    joined.room.leave();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_withdraws_permission_is_reported_and_heard_again_once_allowed() {
    let _lock = livekit_loopback::peers::peers_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let room_name = "consultation-permission";
    server.create_room(room_name, &[]);
    let joined = room::join(&server.url(), &agent_token(&server, room_name, "agent-AJ_perm", Duration::from_secs(600)), RoomOptions::default())
        .await
        .expect("the agent joins");
    let room = joined.room.clone();
    let mut caller_audio = joined.caller_audio;
    let frames = tokio::spawn(async move {
        let mut loud: Vec<f64> = Vec::new();
        while let Some(pcm) = caller_audio.recv().await {
            if pcm.iter().any(|s| s.unsigned_abs() > 1000) {
                loud.push(wall_now());
            }
        }
        loud
    });
    let speech = dir.path().join("speech.wav");
    espeak("Здравствуйте, я хочу заказать разработку сайта для нашей компании, и мне нужна консультация по срокам и по бюджету проекта.", &speech);
    let args = ["publish", "--url", &server.url(), "--token", &server.participant_token(room_name, "caller"), "--wav", speech.to_str().unwrap(), "--lead-in", "0", "--permissions", "deny@1.5,allow@4"];
    let mut caller = PythonPeer::spawn("caller", "participant.py", &args, &[], dir.path());
    caller.event("permissions", Duration::from_secs(30)).await;
    let denied_at = wall_now();
    until("the room reports the refusal", Duration::from_secs(3), || room.status().caller_audio_denied).await;
    // (The peer's clock is monotonic, ours the wall: the moment we see its event stands in.)
    let allowed = loop {
        if caller.events().iter().filter(|e| e["event"] == "permissions").count() >= 2 {
            break wall_now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    until("the room reports the caller allowed again", Duration::from_secs(3), || !room.status().caller_audio_denied).await;
    caller.wait_success(Duration::from_secs(30)).await;
    tokio::time::timeout(Duration::from_secs(10), room.ended()).await.expect("the caller left").ok();
    let loud = frames.await.unwrap();
    // The caller's track was offered RED first, as livekit-server does: our agent has no RED
    // decoder and must answer plain Opus.
    let ours = answered(&server, "agent-AJ_perm");
    assert!(!ours.is_empty() && ours.iter().all(|c| c == &vec!["opus".to_string()]), "our agent must answer plain Opus: {ours:?}");
    let during: Vec<&f64> = loud.iter().filter(|t| **t > denied_at + 0.3 && **t < allowed).collect();
    // A few frames of the decoder's loss concealment may follow the last packet; forwarding
    // that went on would be ~100 frames a second.
    assert!(during.len() <= 4, "{} loud caller frames reached the agent while it was refused", during.len());
    assert!(loud.iter().any(|t| *t < denied_at) && loud.iter().any(|t| *t > allowed + 0.3), "the caller was heard before and after the refusal");
}
