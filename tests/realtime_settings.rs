//! The GA-only session settings (semantic_vad with eagerness, input noise reduction,
//! idle_timeout_ms): sent on the GA flavours and accepted by the fake, refused at start-up on
//! azure-preview, and the fake as strict as the services about which fields each takes.
//! Handshakes and session.update only: no audio.

use std::time::Duration;

use consultant::realtime::{AzureRealtimeClient, Eagerness, NoiseReduction, RealtimeConfig, RealtimeFlavour, TurnDetection};
use consultant::secret::Secret;
use consultant::tls::ClientTls;
use consultant_actors::ports::{RealtimeConnector, RealtimeEvent, RealtimeSetup};
use consultant_actors::SessionId;
use consultant_fakes::realtime::{FakeFlavour, FakeRealtime, FakeRealtimeOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const PREVIEW: &str = "2025-04-01-preview";
const WAIT: Duration = Duration::from_secs(10);

async fn fake(flavour: FakeFlavour) -> FakeRealtime {
    FakeRealtime::start(FakeRealtimeOptions::new(flavour)).await.expect("fake realtime starts")
}

fn config(fake: &FakeRealtime, flavour: RealtimeFlavour) -> RealtimeConfig {
    let mut c = RealtimeConfig::new(flavour, fake.endpoint(), Secret::new(fake.options().api_key.clone()));
    c.deployment = fake.options().deployment.clone();
    c.model = fake.options().deployment.clone();
    c.api_version = PREVIEW.into();
    c
}

fn setup() -> RealtimeSetup {
    RealtimeSetup { session_id: SessionId::parse("settings-1").unwrap(), instructions: "Ты — консультант.".into(), history: Vec::new(), tools: Vec::new() }
}

/// Connects, waits for the session, and returns the turn detection and noise reduction the
/// fake accepted.
async fn accepted(fake: &FakeRealtime, config: RealtimeConfig) -> (Value, Value) {
    let mut connection = AzureRealtimeClient::new(config, ClientTls::default()).expect("valid settings").connect(setup()).await.expect("the fake accepts the session");
    let first = tokio::time::timeout(WAIT, connection.events.recv()).await.expect("an event").expect("events open");
    assert!(matches!(first, RealtimeEvent::SessionReady { .. }), "{first:?}");
    let record = fake.connections().pop().expect("a connection");
    assert!(record.errors_sent.is_empty(), "{:?}", record.errors_sent);
    let input = record.session_updates[0]["session"]["audio"]["input"].clone();
    (input["turn_detection"].clone(), input["noise_reduction"].clone())
}

#[tokio::test]
async fn ga_flavours_send_semantic_vad_noise_reduction_and_idle_timeout() {
    for (fake_flavour, flavour) in [(FakeFlavour::AzureGa, RealtimeFlavour::AzureGa), (FakeFlavour::OpenAi, RealtimeFlavour::OpenAi)] {
        let fake = fake(fake_flavour).await;
        let mut c = config(&fake, flavour);
        c.turn_detection = TurnDetection::SemanticVad;
        c.eagerness = Eagerness::Low;
        c.noise_reduction = NoiseReduction::FarField;
        let (td, noise) = accepted(&fake, c.clone()).await;
        assert_eq!((td["type"].as_str(), td["eagerness"].as_str()), (Some("semantic_vad"), Some("low")), "{flavour}: {td}");
        assert!(td.get("threshold").is_none(), "{flavour}: server_vad fields stay out of semantic_vad: {td}");
        assert_eq!(noise, json!({ "type": "far_field" }), "{flavour}");

        c.turn_detection = TurnDetection::ServerVad;
        c.eagerness = Eagerness::Auto;
        c.noise_reduction = NoiseReduction::Off;
        c.idle_timeout_ms = 7000;
        let (td, noise) = accepted(&fake, c).await;
        assert_eq!((td["type"].as_str(), td["idle_timeout_ms"].as_u64()), (Some("server_vad"), Some(7000)), "{flavour}: {td}");
        assert!(noise.is_null(), "{flavour}: off is not sent: {noise}");
    }
}

#[tokio::test]
async fn azure_preview_refuses_them_before_connecting() {
    let fake = fake(FakeFlavour::AzurePreview { api_version: PREVIEW.into() }).await;
    type Tweak = fn(&mut RealtimeConfig);
    let tweaks: [(&str, Tweak); 3] = [
        ("realtime.turn_detection", |c| c.turn_detection = TurnDetection::SemanticVad),
        ("realtime.noise_reduction", |c| c.noise_reduction = NoiseReduction::NearField),
        ("realtime.idle_timeout_ms", |c| c.idle_timeout_ms = 5000),
    ];
    for (key, tweak) in tweaks {
        let mut c = config(&fake, RealtimeFlavour::AzurePreview);
        tweak(&mut c);
        let err = AzureRealtimeClient::new(c, ClientTls::default()).err().unwrap_or_else(|| panic!("{key} accepted on azure-preview")).to_string();
        assert!(err.contains(key) && err.contains("GA protocol") && err.contains("realtime.flavour = \"azure-ga\""), "{err}");
    }
    assert!(fake.connections().is_empty(), "nothing was sent");
}

/// The first `error` the fake answers to `update`.
async fn error_for(fake: &FakeRealtime, path: &str, update: Value) -> Value {
    let url = format!("{}{path}", fake.endpoint().replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("api-key", fake.options().api_key.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("handshake");
    ws.send(Message::text(update.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(text))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() else { panic!("socket ended") };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "error" {
            return v["error"].clone();
        }
    }
}

#[tokio::test]
async fn the_fake_refuses_fields_a_turn_detection_or_generation_does_not_take() {
    let preview = fake(FakeFlavour::AzurePreview { api_version: PREVIEW.into() }).await;
    let path = format!("/openai/realtime?api-version={PREVIEW}&deployment={}", preview.options().deployment);
    let idle = json!({ "type": "session.update", "session": { "turn_detection": { "type": "server_vad", "idle_timeout_ms": 5000 } } });
    let e = error_for(&preview, &path, idle).await;
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("unknown_parameter"), Some("session.turn_detection.idle_timeout_ms")));

    let ga = fake(FakeFlavour::AzureGa).await;
    let path = format!("/openai/v1/realtime?model={}", ga.options().deployment);
    let update = |input: Value| json!({ "type": "session.update", "session": { "type": "realtime", "audio": { "input": input } } });
    let e = error_for(&ga, &path, update(json!({ "turn_detection": { "type": "semantic_vad", "threshold": 0.5 } }))).await;
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("unknown_parameter"), Some("session.audio.input.turn_detection.threshold")));
    let e = error_for(&ga, &path, update(json!({ "turn_detection": { "type": "semantic_vad", "eagerness": "eager" } }))).await;
    assert_eq!(e["code"], "invalid_value");
    let e = error_for(&ga, &path, update(json!({ "noise_reduction": { "type": "studio" } }))).await;
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("invalid_value"), Some("session.audio.input.noise_reduction.type")));
    let e = error_for(&ga, &path, update(json!({ "input_audio_noise_reduction": { "type": "near_field" } }))).await;
    assert_eq!(e["param"], "session.audio.input.input_audio_noise_reduction");
}
