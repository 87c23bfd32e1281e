//! The realtime client against the fake realtime server: every flavour, every handshake error,
//! every fault, and a restart through the real actors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use consultant::audio::PacedRecorder;
use consultant::realtime::{AzureRealtimeClient, RealtimeConfig, RealtimeFlavour};
use consultant::secret::Secret;
use consultant::tls::ClientTls;
use consultant_actors::consultation::{EndReason, Ports};
use consultant_actors::ports::{
    AgentAudioOutput, AnketaExtractor, DialogueStore, ExtractError, RealtimeCommand, RealtimeConnection,
    RealtimeConnector, RealtimeEvent, RealtimeFailure, RealtimeSetup, ResponseStatus,
};
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{Anketa, AnketaField, ConsultationSettings, DialogueMessage, ExtractedAnketa, FieldKind, Role, SessionId, SessionStatus, VoiceHandler};
use consultant_fakes::memory::MemoryStore;
use consultant_fakes::realtime::{caller_turn, Fault, FakeFlavour, FakeRealtime, FakeRealtimeOptions, HandshakeFault, ScriptTurn};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const PREVIEW: &str = "2025-04-01-preview";
const WAIT: Duration = Duration::from_secs(10);

fn fake_flavour(flavour: RealtimeFlavour) -> FakeFlavour {
    match flavour {
        RealtimeFlavour::AzurePreview => FakeFlavour::AzurePreview { api_version: PREVIEW.into() },
        RealtimeFlavour::AzureGa => FakeFlavour::AzureGa,
        RealtimeFlavour::OpenAi | RealtimeFlavour::OpenAiBeta => FakeFlavour::OpenAi,
    }
}

async fn start_fake(flavour: RealtimeFlavour, tweak: impl FnOnce(&mut FakeRealtimeOptions)) -> FakeRealtime {
    let mut options = FakeRealtimeOptions::new(fake_flavour(flavour));
    options.speed = Some(20.0);
    options.turns = vec![
        ScriptTurn::new("Меня зовут Иван", "Очень приятно, Иван. Чем могу помочь?"),
        ScriptTurn::new("Хочу открыть вклад", "Хорошо, расскажу про вклады.").late(),
    ];
    tweak(&mut options);
    FakeRealtime::start(options).await.expect("fake realtime starts")
}

fn config_for(fake: &FakeRealtime, flavour: RealtimeFlavour) -> RealtimeConfig {
    let mut config = RealtimeConfig::new(flavour, fake.endpoint(), Secret::new(fake.options().api_key.clone()));
    config.deployment = fake.options().deployment.clone();
    config.model = fake.options().deployment.clone();
    config.api_version = PREVIEW.into();
    config
}

fn client_for(fake: &FakeRealtime, flavour: RealtimeFlavour) -> AzureRealtimeClient {
    AzureRealtimeClient::new(config_for(fake, flavour), ClientTls::default()).expect("valid config")
}

fn setup(history: &[(Role, &str)]) -> RealtimeSetup {
    RealtimeSetup {
        session_id: SessionId::parse("test-session").unwrap(),
        instructions: "Ты — вежливый консультант.".into(),
        history: history
            .iter()
            .enumerate()
            .map(|(i, (role, text))| DialogueMessage { seq: i as u32 + 1, role: *role, text: (*text).into(), at: chrono::Utc::now(), interrupted: false })
            .collect(),
        tools: Vec::new(),
    }
}

async fn connect(client: &AzureRealtimeClient, history: &[(Role, &str)]) -> RealtimeConnection {
    let mut connection = client.connect(setup(history)).await.expect("connects");
    match next_event(&mut connection).await {
        RealtimeEvent::SessionReady { expires_at, .. } => assert!(expires_at.is_some(), "session.created carries expires_at"),
        other => panic!("first event must be SessionReady, got {other:?}"),
    }
    connection
}

async fn next_event(connection: &mut RealtimeConnection) -> RealtimeEvent {
    tokio::time::timeout(WAIT, connection.events.recv()).await.expect("an event within 10 s").expect("event stream open")
}

/// Events up to and including the first one matching `done`.
async fn events_until(connection: &mut RealtimeConnection, done: impl Fn(&RealtimeEvent) -> bool) -> Vec<RealtimeEvent> {
    let mut events = Vec::new();
    loop {
        let event = next_event(connection).await;
        let stop = done(&event);
        let disconnected = matches!(event, RealtimeEvent::Disconnected { .. });
        events.push(event);
        if stop {
            return events;
        }
        assert!(!disconnected, "disconnected early: {events:?}");
    }
}

fn is_response_done(e: &RealtimeEvent) -> bool {
    matches!(e, RealtimeEvent::ResponseDone { .. })
}

async fn disconnect_cause(connection: &mut RealtimeConnection) -> RealtimeFailure {
    loop {
        if let RealtimeEvent::Disconnected { cause } = next_event(connection).await {
            return cause;
        }
    }
}

async fn send_pcm(connection: &RealtimeConnection, pcm: &[i16]) {
    for frame in pcm.chunks(480) {
        connection.commands.send(RealtimeCommand::AppendAudio(frame.into())).await.unwrap();
    }
}

fn position(events: &[RealtimeEvent], f: impl Fn(&RealtimeEvent) -> bool) -> usize {
    events.iter().position(f).unwrap_or_else(|| panic!("event missing in {events:#?}"))
}

fn agent_text(events: &[RealtimeEvent]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            RealtimeEvent::AgentTranscriptDone { text, .. } => Some(text.clone()),
            _ => None,
        })
        .expect("agent transcript done")
}

fn deltas_text(events: &[RealtimeEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            RealtimeEvent::AgentTranscriptDelta { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn every_flavour_configures_replays_and_talks() {
    for flavour in [RealtimeFlavour::AzurePreview, RealtimeFlavour::AzureGa, RealtimeFlavour::OpenAi, RealtimeFlavour::OpenAiBeta] {
        let fake = start_fake(flavour, |_| {}).await;
        let client = client_for(&fake, flavour);
        let history = [(Role::Assistant, "Здравствуйте!"), (Role::User, "Меня зовут Пётр"), (Role::Assistant, "Приятно познакомиться")];
        let mut conn = connect(&client, &history).await;

        let record = &fake.sessions()[0];
        let beta = matches!(flavour, RealtimeFlavour::AzurePreview | RealtimeFlavour::OpenAiBeta);
        match flavour {
            RealtimeFlavour::AzurePreview => {
                assert_eq!(record.path, "/openai/realtime");
                assert_eq!(record.query_value("api-version"), Some(PREVIEW));
                assert_eq!(record.query_value("deployment"), Some(fake.options().deployment.as_str()));
            }
            RealtimeFlavour::AzureGa => {
                assert_eq!(record.path, "/openai/v1/realtime");
                assert_eq!(record.query_value("api-version"), None);
                assert_eq!(record.query_value("model"), Some(fake.options().deployment.as_str()));
            }
            _ => assert_eq!(record.path, "/v1/realtime"),
        }
        if flavour.is_azure() {
            assert_eq!(record.header("api-key"), Some(fake.options().api_key.as_str()));
            assert_eq!(record.header("authorization"), None);
        } else {
            assert_eq!(record.header("authorization"), Some(format!("Bearer {}", fake.options().api_key).as_str()));
        }
        assert_eq!(record.header("openai-beta").is_some(), flavour == RealtimeFlavour::OpenAiBeta, "{flavour}");

        // session.update: the flavour's shape, server VAD with interrupt/create, whisper-1.
        let session = &record.session_updates[0]["session"];
        let (td, transcription) = if beta {
            assert_eq!(session["modalities"], json!(["audio", "text"]));
            assert_eq!(session["input_audio_format"], "pcm16");
            assert_eq!(session["voice"], "alloy");
            assert!(session.get("type").is_none());
            (&session["turn_detection"], &session["input_audio_transcription"])
        } else {
            assert_eq!(session["type"], "realtime");
            assert_eq!(session["audio"]["input"]["format"], json!({ "type": "audio/pcm", "rate": 24000 }));
            assert_eq!(session["audio"]["output"]["voice"], "alloy");
            assert!(session.get("modalities").is_none());
            (&session["audio"]["input"]["turn_detection"], &session["audio"]["input"]["transcription"])
        };
        assert_eq!(session["instructions"], "Ты — вежливый консультант.");
        assert_eq!(td["type"], "server_vad");
        assert_eq!(td["interrupt_response"], true);
        assert_eq!(td["create_response"], true);
        assert_eq!(td["silence_duration_ms"], 500);
        assert_eq!(td["prefix_padding_ms"], 300);
        assert_eq!(transcription["model"], "whisper-1");

        // History replayed as text items chained by previous_item_id, first "root".
        let items = &record.items;
        assert_eq!(record.replayed(), history.iter().map(|(r, t)| (r.as_str().to_owned(), t.to_string())).collect::<Vec<_>>());
        assert_eq!(items[0]["previous_item_id"], "root");
        for pair in items.windows(2) {
            assert_eq!(pair[1]["previous_item_id"], pair[0]["item"]["id"]);
        }
        assert_eq!(items[0]["item"]["content"][0]["type"], if beta { "text" } else { "output_text" }, "{flavour}");
        assert_eq!(items[1]["item"]["content"][0]["type"], "input_text");

        // Greeting: a response with no caller audio.
        conn.commands.send(RealtimeCommand::CreateResponse { instructions: Some("Поздоровайся".into()) }).await.unwrap();
        let events = events_until(&mut conn, is_response_done).await;
        let started = position(&events, |e| matches!(e, RealtimeEvent::ResponseStarted { .. }));
        let item = position(&events, |e| matches!(e, RealtimeEvent::AgentItemStarted { .. }));
        let audio = position(&events, |e| matches!(e, RealtimeEvent::AgentAudio { .. }));
        assert!(started < item && item < audio, "{events:#?}");
        assert_eq!(agent_text(&events), fake.options().greeting);
        assert_eq!(deltas_text(&events), fake.options().greeting);
        let samples: usize = events.iter().map(|e| if let RealtimeEvent::AgentAudio { pcm, .. } = e { pcm.len() } else { 0 }).sum();
        assert!(samples >= 24_000 * 20 * fake.options().greeting.chars().count() / 1000 - 1, "agent audio {samples} samples");
        match events.last().unwrap() {
            RealtimeEvent::ResponseDone { status, usage, .. } => {
                assert_eq!(*status, ResponseStatus::Completed);
                assert!(usage.is_some_and(|u| u.output_tokens > 0));
            }
            other => panic!("{other:?}"),
        }

        // A caller turn: VAD events, the committed item, its transcript, the answer.
        send_pcm(&conn, &caller_turn(600, 800)).await;
        let events = events_until(&mut conn, is_response_done).await;
        let s = position(&events, |e| matches!(e, RealtimeEvent::SpeechStarted { .. }));
        let st = position(&events, |e| matches!(e, RealtimeEvent::SpeechStopped { .. }));
        let c = position(&events, |e| matches!(e, RealtimeEvent::UserItemCommitted { .. }));
        let t = position(&events, |e| matches!(e, RealtimeEvent::UserTranscript { text, .. } if text == "Меня зовут Иван"));
        let a = position(&events, |e| matches!(e, RealtimeEvent::AgentAudio { .. }));
        assert!(s < st && st < c && c < t && t < a, "{events:#?}");
        assert_eq!(agent_text(&events), "Очень приятно, Иван. Чем могу помочь?");

        // The second turn's transcript comes after the answer has started.
        send_pcm(&conn, &caller_turn(500, 800)).await;
        let events = events_until(&mut conn, is_response_done).await;
        let a = position(&events, |e| matches!(e, RealtimeEvent::AgentAudio { .. }));
        let t = position(&events, |e| matches!(e, RealtimeEvent::UserTranscript { text, .. } if text == "Хочу открыть вклад"));
        assert!(a < t, "{events:#?}");

        let record = &fake.sessions()[0];
        assert!((2_600..=2_800).contains(&record.appended_ms()), "appended {} ms", record.appended_ms());
        assert!(record.errors_sent.is_empty(), "{:?}", record.errors_sent);
        let stats = client.stats().snapshot();
        assert!(stats.audio_appends_sent > 0 && stats.audio_bytes_sent == record.appended_samples * 2);
        assert!(stats.unknown_events >= 2, "{stats:?}");
        assert!(stats.unknown_event_types.iter().any(|(n, _)| n == "conversation.item.input_audio_transcription.segment"));
        assert_eq!(stats.malformed_events, 0);
        assert!(stats.events_parsed > 20);

        conn.commands.send(RealtimeCommand::Close).await.unwrap();
        assert_eq!(disconnect_cause(&mut conn).await, RealtimeFailure::Closed);
    }
}

#[tokio::test]
async fn handshake_errors_carry_the_python_modules_advice() {
    // Wrong key on Azure preview: fatal, names the variable, never shows the key.
    let fake = start_fake(RealtimeFlavour::AzurePreview, |_| {}).await;
    let mut config = config_for(&fake, RealtimeFlavour::AzurePreview);
    config.api_key = Secret::new("wrong-key-987");
    let failure = AzureRealtimeClient::new(config, ClientTls::default()).unwrap().connect(setup(&[])).await.err().unwrap();
    let RealtimeFailure::Fatal(message) = &failure else { panic!("{failure:?}") };
    assert!(message.contains("401") && message.contains("AZURE_OPENAI_API_KEY"), "{message}");
    assert!(!message.contains("wrong-key-987"));
    assert_eq!(fake.connections()[0].status, 401);

    // Retired api-version: 404 naming both the api-version and the path.
    let mut config = config_for(&fake, RealtimeFlavour::AzurePreview);
    config.api_version = "2024-10-01-preview".into();
    let failure = AzureRealtimeClient::new(config, ClientTls::default()).unwrap().connect(setup(&[])).await.err().unwrap();
    let RealtimeFailure::Fatal(message) = &failure else { panic!("{failure:?}") };
    assert!(message.contains("404") && message.contains("2024-10-01-preview") && message.contains("/openai/realtime"), "{message}");

    // The GA path against a preview-only endpoint.
    let failure = client_for(&fake, RealtimeFlavour::AzureGa).connect(setup(&[])).await.err().unwrap();
    let RealtimeFailure::Fatal(message) = &failure else { panic!("{failure:?}") };
    assert!(message.contains("404") && message.contains("/openai/v1/realtime"), "{message}");

    // 429: transient (the actor retries).
    fake.fail_next_handshakes([HandshakeFault::Status(429)]);
    let failure = client_for(&fake, RealtimeFlavour::AzurePreview).connect(setup(&[])).await.err().unwrap();
    let RealtimeFailure::Transient(message) = &failure else { panic!("{failure:?}") };
    assert!(message.contains("429") && message.contains("rate limited"), "{message}");
    // ...and the next attempt succeeds.
    connect(&client_for(&fake, RealtimeFlavour::AzurePreview), &[]).await;

    // GA: 401 advice mentions the api-version pitfall.
    let ga = start_fake(RealtimeFlavour::AzureGa, |_| {}).await;
    let mut config = config_for(&ga, RealtimeFlavour::AzureGa);
    config.api_key = Secret::new("nope");
    let failure = AzureRealtimeClient::new(config, ClientTls::default()).unwrap().connect(setup(&[])).await.err().unwrap();
    let RealtimeFailure::Fatal(message) = &failure else { panic!("{failure:?}") };
    assert!(message.contains("401") && message.contains("api-version"), "{message}");

    // OpenAI direct, bad key.
    let openai = start_fake(RealtimeFlavour::OpenAi, |_| {}).await;
    let mut config = config_for(&openai, RealtimeFlavour::OpenAi);
    config.api_key = Secret::new("sk-bad");
    let failure = AzureRealtimeClient::new(config, ClientTls::default()).unwrap().connect(setup(&[])).await.err().unwrap();
    assert!(matches!(&failure, RealtimeFailure::Fatal(m) if m.contains("OPENAI_API_KEY")), "{failure:?}");

    // Nothing listening: transient.
    drop(openai);
    let mut config = config_for(&ga, RealtimeFlavour::AzureGa);
    config.endpoint = "http://127.0.0.1:1".into();
    let failure = AzureRealtimeClient::new(config, ClientTls::default()).unwrap().connect(setup(&[])).await.err().unwrap();
    assert!(matches!(failure, RealtimeFailure::Transient(_)), "{failure:?}");
}

#[tokio::test]
async fn handshake_then_close_and_slow_handshake() {
    let fake = start_fake(RealtimeFlavour::AzureGa, |_| {}).await;
    let client = client_for(&fake, RealtimeFlavour::AzureGa);
    fake.fail_next_handshakes([HandshakeFault::CloseAfterHandshake]);
    let failure = client.connect(setup(&[])).await.err().unwrap();
    let RealtimeFailure::Transient(message) = &failure else { panic!("{failure:?}") };
    assert!(message.contains("closed it at once"), "{message}");

    fake.fail_next_handshakes([HandshakeFault::Slow(Duration::from_secs(2))]);
    let slow = tokio::time::timeout(Duration::from_millis(500), client.connect(setup(&[]))).await;
    assert!(slow.is_err(), "a slow handshake must still be pending after 500 ms");
    // The stuck one does not hold others up.
    connect(&client, &[]).await;
    assert_eq!(client.stats().snapshot().connect_failures, 1);
}

#[tokio::test]
async fn faults_end_the_connection_with_the_right_cause() {
    // Drop mid-response: transient.
    let fake = start_fake(RealtimeFlavour::AzurePreview, |o| o.speed = Some(2.0)).await;
    let client = client_for(&fake, RealtimeFlavour::AzurePreview);
    let mut conn = connect(&client, &[]).await;
    fake.inject(Fault::DropMidResponse { after_deltas: 2 });
    conn.commands.send(RealtimeCommand::CreateResponse { instructions: None }).await.unwrap();
    let mut audio = 0;
    let cause = loop {
        match next_event(&mut conn).await {
            RealtimeEvent::AgentAudio { .. } => audio += 1,
            RealtimeEvent::Disconnected { cause } => break cause,
            _ => {}
        }
    };
    assert_eq!(audio, 2);
    assert!(matches!(&cause, RealtimeFailure::Transient(m) if m.contains("dropped") || m.contains("closed")), "{cause:?}");

    // OpenAI session limit: session_expired then 1001 -> Expired.
    let fake = start_fake(RealtimeFlavour::OpenAi, |_| {}).await;
    let mut conn = connect(&client_for(&fake, RealtimeFlavour::OpenAi), &[]).await;
    fake.inject(Fault::SessionLimitNow);
    let cause = disconnect_cause(&mut conn).await;
    assert!(matches!(&cause, RealtimeFailure::Expired(m) if m.contains("session_expired")), "{cause:?}");

    // Azure session limit: a generic server_error (code null) at expires_at, then close -> Expired.
    let fake = start_fake(RealtimeFlavour::AzureGa, |o| {
        o.session_limit = Duration::from_secs(2);
        o.enforce_session_limit = true;
    })
    .await;
    let mut conn = connect(&client_for(&fake, RealtimeFlavour::AzureGa), &[]).await;
    let began = Instant::now();
    let cause = disconnect_cause(&mut conn).await;
    assert!(matches!(&cause, RealtimeFailure::Expired(m) if m.contains("server_error")), "{cause:?}");
    assert!(began.elapsed() >= Duration::from_millis(1500));

    // A generic server_error mid-session leaves it open; malformed JSON is counted and skipped.
    let fake = start_fake(RealtimeFlavour::AzurePreview, |_| {}).await;
    let client = client_for(&fake, RealtimeFlavour::AzurePreview);
    let mut conn = connect(&client, &[]).await;
    fake.inject(Fault::ServerError { then_close: false });
    let event = next_event(&mut conn).await;
    assert!(matches!(&event, RealtimeEvent::Error { code: None, message } if message.contains("server_error")), "{event:?}");
    fake.inject(Fault::MalformedJson);
    conn.commands.send(RealtimeCommand::CreateResponse { instructions: None }).await.unwrap();
    let events = events_until(&mut conn, is_response_done).await;
    assert_eq!(agent_text(&events), fake.options().greeting);
    assert_eq!(client.stats().snapshot().malformed_events, 1);

    // A server_error followed by a close (not at the limit): transient, naming the error.
    fake.inject(Fault::ServerError { then_close: true });
    let cause = disconnect_cause(&mut conn).await;
    assert!(matches!(&cause, RealtimeFailure::Transient(m) if m.contains("server_error")), "{cause:?}");

    // A close frame: transient with its code.
    let mut conn = connect(&client, &[]).await;
    fake.inject(Fault::Close(1011));
    let cause = disconnect_cause(&mut conn).await;
    assert!(matches!(&cause, RealtimeFailure::Transient(m) if m.contains("1011")), "{cause:?}");

    // Fatal codes stop at once.
    let mut conn = connect(&client, &[]).await;
    fake.inject(Fault::ErrorEvent { kind: "insufficient_quota".into(), code: "insufficient_quota".into() });
    let cause = disconnect_cause(&mut conn).await;
    assert!(cause.is_fatal() && cause.to_string().contains("insufficient_quota"), "{cause:?}");
}

#[tokio::test]
async fn protocol_errors_and_barge_in() {
    let fake = start_fake(RealtimeFlavour::AzureGa, |o| {
        o.speed = Some(1.0);
        o.status_details_as_string = true;
    })
    .await;
    let client = client_for(&fake, RealtimeFlavour::AzureGa);
    let mut conn = connect(&client, &[]).await;
    conn.commands.send(RealtimeCommand::CreateResponse { instructions: None }).await.unwrap();
    conn.commands.send(RealtimeCommand::CreateResponse { instructions: None }).await.unwrap();
    let events = events_until(&mut conn, |e| matches!(e, RealtimeEvent::Error { .. })).await;
    assert!(matches!(events.last(), Some(RealtimeEvent::Error { code: Some(c), .. }) if c == "conversation_already_has_active_response"));
    let item_id = events
        .iter()
        .find_map(|e| if let RealtimeEvent::AgentItemStarted { item_id, .. } = e { Some(item_id.clone()) } else { None })
        .expect("agent item");

    // Barge-in: the caller speaks while the agent answers -> cancelled, turn_detected.
    send_pcm(&conn, &caller_turn(300, 0)).await;
    let events = events_until(&mut conn, is_response_done).await;
    position(&events, |e| matches!(e, RealtimeEvent::SpeechStarted { .. }));
    let Some(RealtimeEvent::ResponseDone { status, reason, .. }) = events.last() else { panic!() };
    assert_eq!((*status, reason.as_deref()), (ResponseStatus::Cancelled, Some("turn_detected")));
    let received = fake.sessions()[0].responses[0].audio_ms_sent;

    // Truncate past the end of the audio sent is refused; within it is accepted.
    conn.commands.send(RealtimeCommand::Truncate { item_id: item_id.clone(), content_index: 0, audio_end_ms: received + 500 }).await.unwrap();
    let events = events_until(&mut conn, |e| matches!(e, RealtimeEvent::Error { .. })).await;
    assert!(matches!(events.last(), Some(RealtimeEvent::Error { code: Some(c), .. }) if c == "invalid_value"));
    conn.commands.send(RealtimeCommand::Truncate { item_id, content_index: 0, audio_end_ms: received / 2 }).await.unwrap();
    conn.commands.send(RealtimeCommand::CancelResponse).await.unwrap();
    let events = events_until(&mut conn, |e| matches!(e, RealtimeEvent::Error { .. })).await;
    assert!(matches!(events.last(), Some(RealtimeEvent::Error { code: Some(c), .. }) if c == "response_cancel_not_active"), "{events:?}");
    let record = &fake.sessions()[0];
    assert_eq!(record.truncates.len(), 2);
    assert_eq!(record.errors_sent, ["conversation_already_has_active_response", "invalid_value", "response_cancel_not_active"]);
}

/// Talks to the fake directly to prove it is as strict as the real service.
#[tokio::test]
async fn the_fake_rejects_the_other_flavours_fields() {
    async fn first_error(fake: &FakeRealtime, path: &str, headers: &[(&'static str, String)], events: &[Value]) -> Value {
        let url = format!("{}{path}", fake.endpoint().replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("handshake");
        for event in events {
            ws.send(Message::text(event.to_string())).await.unwrap();
        }
        loop {
            let Some(Ok(Message::Text(text))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() else { panic!("socket ended") };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "error" {
                return v["error"].clone();
            }
        }
    }
    let ga = start_fake(RealtimeFlavour::AzureGa, |_| {}).await;
    let key = vec![("api-key", ga.options().api_key.clone())];
    let path = format!("/openai/v1/realtime?model={}", ga.options().deployment);
    let flat = json!({ "type": "session.update", "session": { "modalities": ["audio", "text"], "voice": "alloy" } });
    let e = first_error(&ga, &path, &key, &[flat]).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("invalid_request_error"), Some("missing_required_parameter")));
    let flat = json!({ "type": "session.update", "session": { "type": "realtime", "modalities": ["audio", "text"] } });
    let e = first_error(&ga, &path, &key, &[flat]).await;
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("unknown_parameter"), Some("session.modalities")));

    let preview = start_fake(RealtimeFlavour::AzurePreview, |_| {}).await;
    let path = format!("/openai/realtime?api-version={PREVIEW}&deployment={}", preview.options().deployment);
    let key = vec![("api-key", preview.options().api_key.clone())];
    let nested = json!({ "type": "session.update", "session": { "type": "realtime", "audio": {} } });
    let e = first_error(&preview, &path, &key, &[nested]).await;
    assert_eq!(e["code"], "unknown_parameter");
    let audio_only = json!({ "type": "session.update", "session": { "modalities": ["audio"] } });
    assert_eq!(first_error(&preview, &path, &key, &[audio_only]).await["code"], "invalid_value");
    let ga_item = json!({ "type": "conversation.item.create", "previous_item_id": "root", "item": { "type": "message", "role": "assistant", "content": [{ "type": "output_text", "text": "x" }] } });
    assert_eq!(first_error(&preview, &path, &key, &[ga_item]).await["param"], "item.content[0].type");
}

// ---------------------------------------------------------------------------------------------
// Through the real actors
// ---------------------------------------------------------------------------------------------

/// Fills `name` and `product` from what the caller said.
struct KeywordExtractor;

#[async_trait]
impl AnketaExtractor for KeywordExtractor {
    async fn extract(&self, dialogue: &[DialogueMessage], _previous: &Anketa) -> Result<ExtractedAnketa, ExtractError> {
        let mut fields = BTreeMap::new();
        for m in dialogue.iter().filter(|m| m.role == Role::User) {
            if m.text.contains("Иван") {
                fields.insert("name".to_owned(), json!("Иван"));
            }
            if m.text.contains("вклад") {
                fields.insert("product".to_owned(), json!("вклад"));
            }
        }
        Ok(ExtractedAnketa::without_evidence(Anketa(fields)))
    }
}

fn anketa_fields() -> Vec<AnketaField> {
    vec![
        AnketaField { name: "name".into(), description: "Имя клиента".into(), kind: FieldKind::Text, required: true },
        AnketaField { name: "product".into(), description: "Интересующий продукт".into(), kind: FieldKind::Text, required: true },
    ]
}

struct Call {
    handler: VoiceHandler,
    handle: consultant_actors::handler::ConsultationHandle,
    store: Arc<MemoryStore>,
    player: Arc<PacedRecorder>,
}

async fn start_call(fake: &FakeRealtime, flavour: RealtimeFlavour) -> Call {
    let store = Arc::new(MemoryStore::default());
    let connector: Arc<dyn RealtimeConnector> = Arc::new(client_for(fake, flavour));
    let ports = Ports { connector, store: store.clone(), extractor: Arc::new(KeywordExtractor) };
    let settings = Arc::new(ConsultationSettings::for_tests(anketa_fields()));
    let handler = VoiceHandler::start(settings, ports, Telemetry::new()).await.unwrap();
    let player = Arc::new(PacedRecorder::new());
    let audio_out: Arc<dyn AgentAudioOutput> = player.clone();
    let handle = handler.create_session(SessionId::parse("call-1").unwrap(), "consultation-call-1".into(), audio_out).await.unwrap();
    tokio::time::timeout(WAIT, handle.wait_ready()).await.expect("ready in time").expect("ready");
    Call { handler, handle, store, player }
}

impl Call {
    /// Streams caller audio at real-time pace (20 ms frames), as a microphone would.
    async fn speak(&self, pcm: &[i16]) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for frame in pcm.chunks(480) {
            tick.tick().await;
            self.handler.process_user_audio(&self.handle, frame.into());
        }
    }

    /// Keeps the line open with silence until the agent has finished speaking.
    async fn listen_until_quiet(&self, fake: &FakeRealtime, responses: usize) {
        let silence = [0i16; 480];
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let done = fake.sessions().iter().flat_map(|s| s.responses.iter()).filter(|r| r.status != "in_progress").count();
            if done >= responses && !self.player.is_playing() {
                return;
            }
            assert!(Instant::now() < deadline, "agent never went quiet: {:#?}", fake.sessions());
            self.handler.process_user_audio(&self.handle, silence.as_slice().into());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_socket_dropped_mid_answer_is_restarted_and_the_dialogue_survives() {
    let answer_cut = "Конечно. У нас есть несколько вкладов: накопительный счёт, срочный вклад на полгода и вклад на год с капитализацией процентов.";
    let fake = start_fake(RealtimeFlavour::AzurePreview, |o| {
        o.speed = Some(1.0);
        o.voice = consultant_fakes::realtime::AgentVoice::Tone { ms_per_char: 15 };
        o.turns = vec![
            ScriptTurn::new("Меня зовут Иван", "Очень приятно, Иван. Чем могу помочь?"),
            ScriptTurn::new("Хочу открыть вклад", answer_cut),
            ScriptTurn::new("Давайте на год", "Отлично, вклад на год. Что-нибудь ещё?").late(),
        ];
    })
    .await;
    let call = start_call(&fake, RealtimeFlavour::AzurePreview).await;
    call.listen_until_quiet(&fake, 1).await;
    call.speak(&caller_turn(600, 700)).await;
    call.listen_until_quiet(&fake, 2).await;

    fake.inject(Fault::DropMidResponse { after_deltas: 4 });
    call.speak(&caller_turn(600, 700)).await;
    fake.wait_for("a second session with the replay", WAIT, |c| c.iter().filter(|c| c.status == 101).count() == 2 && c.last().is_some_and(|c| !c.items.is_empty())).await;
    call.listen_until_quiet(&fake, 2).await;
    call.speak(&caller_turn(600, 700)).await;
    call.listen_until_quiet(&fake, 3).await;

    let outcome = tokio::time::timeout(WAIT, call.handler.end_session(&call.handle.session_id, EndReason::CallerLeft)).await.unwrap().unwrap();
    let dialogue: Vec<(Role, String)> = outcome.dialogue.iter().map(|m| (m.role, m.text.clone())).collect();
    let sessions = fake.sessions();
    assert_eq!(sessions.len(), 2, "exactly one reconnect");

    // Complete and in order, nothing lost or duplicated.
    assert_eq!(dialogue.len(), 7, "{dialogue:#?}");
    let expected_roles = [Role::Assistant, Role::User, Role::Assistant, Role::User, Role::Assistant, Role::User, Role::Assistant];
    assert_eq!(dialogue.iter().map(|(r, _)| *r).collect::<Vec<_>>(), expected_roles, "{dialogue:#?}");
    assert_eq!(dialogue[0].1, fake.options().greeting);
    assert_eq!(dialogue[1].1, "Меня зовут Иван");
    assert_eq!(dialogue[2].1, "Очень приятно, Иван. Чем могу помочь?");
    assert_eq!(dialogue[3].1, "Хочу открыть вклад");
    assert!(answer_cut.starts_with(&dialogue[4].1) && dialogue[4].1.len() < answer_cut.len() && !dialogue[4].1.is_empty(), "{:?}", dialogue[4].1);
    assert!(outcome.dialogue[4].interrupted);
    assert_eq!(dialogue[5].1, "Давайте на год");
    assert_eq!(dialogue[6].1, "Отлично, вклад на год. Что-нибудь ещё?");
    let seqs: Vec<u32> = outcome.dialogue.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());

    // The new session got the dialogue so far, as chained text items.
    let replayed = sessions[1].replayed();
    let before_drop: Vec<(String, String)> = dialogue[..5].iter().map(|(r, t)| (r.as_str().to_owned(), t.clone())).collect();
    assert_eq!(replayed, before_drop);
    // One full configuration; anything after it (the anketa's addendum) is the instructions only.
    let updates = &sessions[1].session_updates;
    assert!(updates[0]["session"]["voice"].is_string() || updates[0]["session"]["audio"].is_object(), "{updates:#?}");
    for later in &updates[1..] {
        let keys: Vec<&str> = later["session"].as_object().unwrap().keys().map(String::as_str).filter(|k| *k != "type").collect();
        assert_eq!(keys, ["instructions"], "{later:#}");
    }
    assert_eq!(sessions[1].items[0]["previous_item_id"], "root");
    assert!(sessions.iter().all(|s| s.errors_sent.is_empty()), "{sessions:#?}");

    // Durable in the store, in order, with a final anketa.
    let stored = call.store.load_messages(&call.handle.session_id).await.unwrap();
    assert_eq!(stored.iter().map(|m| (m.role, m.text.clone())).collect::<Vec<_>>(), dialogue);
    let last = call.store.latest_anketa(&call.handle.session_id).await.unwrap().expect("final anketa");
    assert!(last.is_final);
    assert_eq!(last.anketa.0.get("name"), Some(&json!("Иван")));
    assert_eq!(last.anketa.0.get("product"), Some(&json!("вклад")));
    assert_eq!(outcome.status, SessionStatus::Completed);
    assert_eq!(outcome.turn_latency_ms.len(), 3);
}

#[tokio::test]
async fn barge_in_keeps_only_what_the_caller_heard() {
    let long = "Сейчас я подробно расскажу обо всех условиях обслуживания, тарифах, комиссиях и дополнительных услугах нашего банка для частных клиентов.";
    let fake = start_fake(RealtimeFlavour::AzureGa, |o| {
        o.speed = Some(1.0);
        o.voice = consultant_fakes::realtime::AgentVoice::Tone { ms_per_char: 40 };
        o.turns = vec![ScriptTurn::new("Расскажите об условиях", long), ScriptTurn::new("Стоп, а сколько стоит?", "Обслуживание бесплатное.")];
    })
    .await;
    let call = start_call(&fake, RealtimeFlavour::AzureGa).await;
    call.listen_until_quiet(&fake, 1).await;
    call.speak(&caller_turn(500, 700)).await;
    // Let about a second of the long answer play, then talk over it.
    fake.wait_for("the long answer to start", WAIT, |c| c[0].responses.len() == 2 && c[0].responses[1].audio_ms_sent > 0).await;
    let silence = [0i16; 480];
    for _ in 0..50 {
        call.handler.process_user_audio(&call.handle, silence.as_slice().into());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.speak(&caller_turn(600, 700)).await;
    call.listen_until_quiet(&fake, 3).await;
    let outcome = call.handler.end_session(&call.handle.session_id, EndReason::CallerLeft).await.unwrap();

    let record = &fake.sessions()[0];
    assert_eq!(record.responses[1].status, "cancelled");
    assert_eq!(record.truncates.len(), 1, "{record:#?}");
    let truncated_at = record.truncates[0]["audio_end_ms"].as_u64().unwrap();
    assert!(truncated_at > 500 && truncated_at <= record.responses[1].audio_ms_sent, "truncate at {truncated_at} ms of {} ms", record.responses[1].audio_ms_sent);
    assert!(record.errors_sent.is_empty(), "{:?}", record.errors_sent);
    let cut = &outcome.dialogue[2];
    assert_eq!(cut.role, Role::Assistant);
    assert!(cut.interrupted && !cut.text.is_empty() && long.starts_with(&cut.text), "{cut:?}");
    // What was heard, in proportion: the answer is 40 ms per character.
    let heard_chars = cut.text.chars().count() as u64;
    assert!(heard_chars <= truncated_at / 40 && heard_chars < long.chars().count() as u64, "{heard_chars} chars for {truncated_at} ms");
    assert_eq!(outcome.dialogue.last().unwrap().text, "Обслуживание бесплатное.");
}

/// A caller's transcript that arrives before its turn's item event (streamed deltas, then
/// completed, then committed and the item): the dialogue keeps the caller before the answer,
/// each message once.
#[tokio::test]
async fn a_transcript_before_its_item_keeps_the_dialogue_in_order() {
    let fake = start_fake(RealtimeFlavour::AzurePreview, |o| {
        o.speed = Some(1.0);
        o.turns = vec![
            ScriptTurn::new("Меня зовут Иван", "Очень приятно, Иван.").early(),
            ScriptTurn::new("Хочу открыть вклад", "Хорошо, расскажу про вклады."),
        ];
    })
    .await;
    let call = start_call(&fake, RealtimeFlavour::AzurePreview).await;
    call.listen_until_quiet(&fake, 1).await;
    call.speak(&caller_turn(600, 700)).await;
    call.listen_until_quiet(&fake, 2).await;
    call.speak(&caller_turn(600, 700)).await;
    call.listen_until_quiet(&fake, 3).await;
    let outcome = tokio::time::timeout(WAIT, call.handler.end_session(&call.handle.session_id, EndReason::CallerLeft)).await.unwrap().unwrap();
    let dialogue: Vec<(Role, &str)> = outcome.dialogue.iter().map(|m| (m.role, m.text.as_str())).collect();
    assert_eq!(
        dialogue,
        vec![
            (Role::Assistant, fake.options().greeting.as_str()),
            (Role::User, "Меня зовут Иван"),
            (Role::Assistant, "Очень приятно, Иван."),
            (Role::User, "Хочу открыть вклад"),
            (Role::Assistant, "Хорошо, расскажу про вклады."),
        ]
    );
}

/// A response the service fails mid-session (`inference_rate_limit_exceeded`, no audio) is
/// asked for again: the caller still gets the answer, stored once.
#[tokio::test]
async fn a_rate_limited_response_is_asked_for_again() {
    let fake = start_fake(RealtimeFlavour::AzurePreview, |o| {
        o.speed = Some(1.0);
        o.turns = vec![
            ScriptTurn::new("Меня зовут Иван", "Очень приятно, Иван."),
            ScriptTurn::new("Хочу открыть вклад", "Хорошо, расскажу про вклады."),
        ];
    })
    .await;
    let call = start_call(&fake, RealtimeFlavour::AzurePreview).await;
    call.listen_until_quiet(&fake, 1).await;
    call.speak(&caller_turn(600, 700)).await;
    call.listen_until_quiet(&fake, 2).await;
    fake.inject(Fault::FailNextResponse { code: "inference_rate_limit_exceeded".into() });
    call.speak(&caller_turn(600, 700)).await;
    call.listen_until_quiet(&fake, 4).await;
    let outcome = tokio::time::timeout(WAIT, call.handler.end_session(&call.handle.session_id, EndReason::CallerLeft)).await.unwrap().unwrap();
    let dialogue: Vec<(Role, &str, bool)> = outcome.dialogue.iter().map(|m| (m.role, m.text.as_str(), m.interrupted)).collect();
    assert_eq!(
        dialogue,
        vec![
            (Role::Assistant, fake.options().greeting.as_str(), false),
            (Role::User, "Меня зовут Иван", false),
            (Role::Assistant, "Очень приятно, Иван.", false),
            (Role::User, "Хочу открыть вклад", false),
            (Role::Assistant, "Хорошо, расскажу про вклады.", false),
        ]
    );
    let statuses: Vec<String> = fake.sessions().iter().flat_map(|s| s.responses.iter().map(|r| r.status.clone())).collect();
    assert_eq!(statuses, vec!["completed", "completed", "failed", "completed"], "the failed response was asked for again");
}

/// The socket breaks while the client still has the server's last events to read and its
/// writer finds the break first (it sends the caller's audio every 20 ms): those events - here
/// a caller's transcript - must still come out, before the disconnect. The reader is held
/// back by a full event queue until the writer has failed; then both are ready, and without
/// the fix its `select!` could take the failure and drop the frames (it did in the first
/// round when this test was written). Found by the fault soak (tests/soak.rs).
#[tokio::test]
async fn what_the_server_said_before_the_socket_broke_is_read_even_if_a_write_fails_first() {
    for round in 0..10 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text(json!({ "type": "session.created", "session": { "id": "s1" } }).to_string())).await.unwrap();
            while let Some(Ok(frame)) = ws.next().await {
                if frame.to_text().is_ok_and(|t| t.contains("session.update")) {
                    break;
                }
            }
            ws.send(Message::text(json!({ "type": "session.updated", "session": {} }).to_string())).await.unwrap();
            // More events than the client's event queue holds, then the last words, then the
            // connection goes (no close frame).
            for _ in 0..1200 {
                ws.feed(Message::text(r#"{"type":"input_audio_buffer.speech_started"}"#)).await.unwrap();
            }
            let words = json!({ "type": "conversation.item.input_audio_transcription.completed", "item_id": "u1", "transcript": "последние слова" });
            ws.send(Message::text(words.to_string())).await.unwrap();
        });
        let mut config = RealtimeConfig::new(RealtimeFlavour::AzureGa, endpoint, Secret::new("k"));
        config.deployment = "d".into();
        let client = AzureRealtimeClient::new(config, ClientTls::default()).unwrap();
        let mut conn = client.connect(setup(&[])).await.expect("connects");
        server.await.unwrap();
        // The caller's audio keeps going until the writer finds the socket broken.
        let deadline = Instant::now() + WAIT;
        while conn.commands.send(RealtimeCommand::AppendAudio(vec![0i16; 480].into())).await.is_ok() {
            assert!(Instant::now() < deadline, "round {round}: the writer never failed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut transcript = None;
        loop {
            match next_event(&mut conn).await {
                RealtimeEvent::UserTranscript { text, .. } => transcript = Some(text),
                RealtimeEvent::Disconnected { .. } => break,
                _ => {}
            }
        }
        assert_eq!(transcript.as_deref(), Some("последние слова"), "round {round}");
    }
}
