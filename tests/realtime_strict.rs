//! The fake realtime service as strict as the real one where our client could go wrong
//! unnoticed: GA finishes the caller's items with a second event (`conversation.item.done`),
//! Azure's preview refuses semantic_vad, GA audio formats must name their 24 kHz rate, and a
//! `response.create` may hold only its generation's parameters. Raw frames show the fake refuses
//! what our client never sends; the real client shows it still gets exactly one turn per turn.

use std::time::Duration;

use base64::Engine;
use consultant::realtime::{AzureRealtimeClient, RealtimeConfig, RealtimeFlavour};
use consultant::secret::Secret;
use consultant_actors::ports::{RealtimeCommand, RealtimeConnector, RealtimeEvent, RealtimeSetup};
use consultant_actors::SessionId;
use consultant_fakes::realtime::{caller_turn, FakeFlavour, FakeRealtime, FakeRealtimeOptions, ScriptTurn, Spoken};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const PREVIEW: &str = "2025-04-01-preview";
const WAIT: Duration = Duration::from_secs(10);

async fn fake(flavour: FakeFlavour) -> FakeRealtime {
    let mut options = FakeRealtimeOptions::new(flavour);
    options.speed = Some(20.0);
    options.turns = vec![ScriptTurn::new("Меня зовут Иван", "Очень приятно."), ScriptTurn::new("Хочу вклад", "Хорошо.").late()];
    FakeRealtime::start(options).await.expect("fake realtime starts")
}

/// A WebSocket to the fake with the handshake its flavour wants, speaking raw JSON.
struct Raw(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Raw {
    async fn open(fake: &FakeRealtime) -> Self {
        let o = fake.options();
        let (path, azure) = match &o.flavour {
            FakeFlavour::AzurePreview { api_version } => (format!("/openai/realtime?api-version={api_version}&deployment={}", o.deployment), true),
            FakeFlavour::AzureGa => (format!("/openai/v1/realtime?model={}", o.deployment), true),
            FakeFlavour::OpenAi => (format!("/v1/realtime?model={}", o.deployment), false),
        };
        let mut request = format!("{}{path}", fake.endpoint().replace("http://", "ws://")).into_client_request().unwrap();
        let headers = request.headers_mut();
        if azure {
            headers.insert("api-key", o.api_key.parse().unwrap());
        } else {
            headers.insert("authorization", format!("Bearer {}", o.api_key).parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("handshake");
        Self(ws)
    }

    async fn send(&mut self, event: Value) {
        self.0.send(Message::text(event.to_string())).await.unwrap();
    }

    /// Server events up to and including the first of type `kind`.
    async fn until(&mut self, kind: &str) -> Vec<Value> {
        self.until_any(&[kind]).await
    }

    /// The answer to `event`: the error the fake sent, or None when it sent `ok` first.
    async fn refusal(&mut self, event: Value, ok: &str) -> Option<Value> {
        self.send(event).await;
        let events = self.until_any(&["error", ok]).await;
        let last = events.last().expect("at least the awaited event");
        (last["type"] == "error").then(|| last["error"].clone())
    }

    /// Server events up to and including the first of one of these types.
    async fn until_any(&mut self, kinds: &[&str]) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let frame = tokio::time::timeout(WAIT, self.0.next()).await.unwrap_or_else(|_| panic!("none of {kinds:?} within {WAIT:?}; got {seen:#?}"));
            let Some(Ok(Message::Text(text))) = frame else { panic!("socket ended: {seen:#?}") };
            let event: Value = serde_json::from_str(&text).unwrap();
            let done = kinds.iter().any(|k| event["type"] == *k);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn ga_session(input_format: Value, output_format: Value) -> Value {
    json!({ "type": "session.update", "session": { "type": "realtime", "audio": {
        "input": { "format": input_format, "transcription": { "model": "whisper-1" }, "turn_detection": { "type": "server_vad" } },
        "output": { "format": output_format, "voice": "alloy" },
    } } })
}

fn pcm24() -> Value {
    json!({ "type": "audio/pcm", "rate": 24000 })
}

fn append(pcm: &[i16]) -> Value {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    json!({ "type": "input_audio_buffer.append", "audio": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

#[tokio::test]
async fn ga_finishes_the_callers_item_with_item_done() {
    let fake = fake(FakeFlavour::AzureGa).await;
    let mut raw = Raw::open(&fake).await;
    raw.until("session.created").await;
    assert_eq!(raw.refusal(ga_session(pcm24(), pcm24()), "session.updated").await, None);
    for frame in caller_turn(600, 800).chunks(480) {
        raw.send(append(frame)).await;
    }
    let events = raw.until("response.done").await;
    let committed = events.iter().find(|e| e["type"] == "input_audio_buffer.committed").expect("committed")["item_id"].clone();
    let about_it: Vec<&str> = events
        .iter()
        .filter(|e| e["item"]["id"] == committed)
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(about_it, ["conversation.item.added", "conversation.item.done"], "{events:#?}");
    let done = events.iter().find(|e| e["type"] == "conversation.item.done" && e["item"]["id"] == committed).unwrap();
    assert_eq!(done["item"]["role"], "user");
}

fn client(fake: &FakeRealtime, flavour: RealtimeFlavour) -> AzureRealtimeClient {
    let mut c = RealtimeConfig::new(flavour, fake.endpoint(), Secret::new(fake.options().api_key.clone()));
    c.deployment = fake.options().deployment.clone();
    c.model = fake.options().deployment.clone();
    c.api_version = PREVIEW.into();
    AzureRealtimeClient::new(c, consultant::tls::ClientTls::default()).expect("valid config")
}

/// However many events name a caller's item, the client reports its turn once and its words once.
#[tokio::test]
async fn the_real_client_reports_each_ga_turn_once() {
    for (fake_flavour, flavour) in [(FakeFlavour::AzureGa, RealtimeFlavour::AzureGa), (FakeFlavour::OpenAi, RealtimeFlavour::OpenAi)] {
        let fake = fake(fake_flavour).await;
        let setup = RealtimeSetup { session_id: SessionId::parse("strict-1").unwrap(), instructions: "Ты — консультант.".into(), history: Vec::new(), tools: Vec::new() };
        let mut conn = client(&fake, flavour).connect(setup).await.expect("connects");
        let mut events = Vec::new();
        for _ in 0..2 {
            for frame in caller_turn(600, 800).chunks(480) {
                conn.commands.send(RealtimeCommand::AppendAudio(frame.into())).await.unwrap();
            }
            // The second turn's transcript comes after its answer started: wait for both.
            let mut transcript = false;
            let mut done = false;
            while !(transcript && done) {
                let event = tokio::time::timeout(WAIT, conn.events.recv()).await.expect("an event").expect("events open");
                transcript |= matches!(event, RealtimeEvent::UserTranscript { .. });
                done |= matches!(event, RealtimeEvent::ResponseDone { .. });
                events.push(event);
            }
        }
        let committed: Vec<&String> = events.iter().filter_map(|e| if let RealtimeEvent::UserItemCommitted { item_id } = e { Some(item_id) } else { None }).collect();
        let transcripts: Vec<(&String, &str)> =
            events.iter().filter_map(|e| if let RealtimeEvent::UserTranscript { item_id, text } = e { Some((item_id, text.as_str())) } else { None }).collect();
        assert_eq!(committed.len(), 2, "{flavour}: one commit per turn: {events:#?}");
        assert_eq!(transcripts, vec![(committed[0], "Меня зовут Иван"), (committed[1], "Хочу вклад")], "{flavour}");
        // ... and the fake heard exactly two.
        let users = fake.spoken().iter().filter(|s| matches!(s, Spoken::User { .. })).count();
        assert_eq!(users, 2, "{flavour}");
        assert!(fake.sessions()[0].errors_sent.is_empty(), "{flavour}: {:?}", fake.sessions()[0].errors_sent);
    }
}

#[tokio::test]
async fn azure_preview_refuses_semantic_vad() {
    let preview = fake(FakeFlavour::AzurePreview { api_version: PREVIEW.into() }).await;
    let mut raw = Raw::open(&preview).await;
    raw.until("session.created").await;
    let update = |td: Value| json!({ "type": "session.update", "session": { "turn_detection": td } });
    let e = raw.refusal(update(json!({ "type": "semantic_vad", "eagerness": "low" })), "session.updated").await.expect("refused");
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("invalid_value"), Some("session.turn_detection.type")), "{e}");
    assert_eq!(raw.refusal(update(json!({ "type": "server_vad" })), "session.updated").await, None, "server_vad is fine");

    // GA (and OpenAI's beta) do know it.
    let ga = fake(FakeFlavour::AzureGa).await;
    let mut raw = Raw::open(&ga).await;
    raw.until("session.created").await;
    let semantic = json!({ "type": "session.update", "session": { "type": "realtime", "audio": { "input": { "turn_detection": { "type": "semantic_vad" } } } } });
    assert_eq!(raw.refusal(semantic, "session.updated").await, None);
}

#[tokio::test]
async fn ga_audio_formats_must_name_the_24_khz_rate() {
    let ga = fake(FakeFlavour::AzureGa).await;
    let mut raw = Raw::open(&ga).await;
    raw.until("session.created").await;
    let cases = [
        (json!({ "type": "audio/pcm" }), pcm24(), "session.audio.input.format.rate"),
        (json!({ "type": "audio/pcm", "rate": 16000 }), pcm24(), "session.audio.input.format.rate"),
        (pcm24(), json!({ "type": "audio/pcm", "rate": 48000 }), "session.audio.output.format.rate"),
        (json!({ "type": "pcm16" }), pcm24(), "session.audio.input.format.type"),
    ];
    for (input, output, param) in cases {
        let e = raw.refusal(ga_session(input.clone(), output.clone()), "session.updated").await.unwrap_or_else(|| panic!("{input} / {output} accepted"));
        assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("invalid_value"), Some(param)), "{e}");
    }
    assert_eq!(raw.refusal(ga_session(pcm24(), json!({ "type": "audio/pcmu" })), "session.updated").await, None);
    assert_eq!(raw.refusal(ga_session(pcm24(), pcm24()), "session.updated").await, None);

    // Beta names its formats.
    let preview = fake(FakeFlavour::AzurePreview { api_version: PREVIEW.into() }).await;
    let mut raw = Raw::open(&preview).await;
    raw.until("session.created").await;
    let e = raw.refusal(json!({ "type": "session.update", "session": { "output_audio_format": "pcm24" } }), "session.updated").await.expect("refused");
    assert_eq!(e["param"], "session.output_audio_format", "{e}");
}

#[tokio::test]
async fn response_create_takes_only_its_generations_parameters() {
    let create = |response: Value| json!({ "type": "response.create", "response": response });
    for (flavour, ok, wrong_generation) in [
        (FakeFlavour::AzurePreview { api_version: PREVIEW.into() }, json!({ "modalities": ["audio", "text"], "temperature": 0.7, "voice": "alloy" }), "output_modalities"),
        (FakeFlavour::AzureGa, json!({ "output_modalities": ["audio"], "max_output_tokens": 200, "metadata": { "turn": "1" } }), "temperature"),
    ] {
        let fake = fake(flavour.clone()).await;
        let mut raw = Raw::open(&fake).await;
        raw.until("session.created").await;
        let refusals = [
            (json!({ "instructions": 5 }), "invalid_type", "response.instructions".to_owned()),
            (json!({ "instructions": "Скажи привет", "colour": "blue" }), "unknown_parameter", "response.colour".to_owned()),
            (json!({ wrong_generation: 1 }), "unknown_parameter", format!("response.{wrong_generation}")),
            (json!({ "conversation": "separate" }), "invalid_value", "response.conversation".to_owned()),
        ];
        for (response, code, param) in refusals {
            let e = raw.refusal(create(response.clone()), "response.created").await.unwrap_or_else(|| panic!("{flavour:?}: {response} accepted"));
            assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some(code), Some(param.as_str())), "{flavour:?}: {e}");
        }
        assert!(fake.sessions()[0].responses.is_empty(), "{flavour:?}: a refused response.create starts nothing");
        assert_eq!(raw.refusal(create(ok.clone()), "response.created").await, None, "{flavour:?}: {ok} refused");
        raw.until("response.done").await;
        // What our client sends (instructions for one response, or nothing) is accepted.
        assert_eq!(raw.refusal(create(json!({ "instructions": "Поздоровайся" })), "response.created").await, None);
        raw.until("response.done").await;
        assert_eq!(raw.refusal(json!({ "type": "response.create" }), "response.created").await, None);
    }
}
