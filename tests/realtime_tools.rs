//! Function tools through the real realtime client and the fake service, on both protocol
//! generations: the tool is declared in session.update, the model's call arrives with the real
//! event sequence and becomes one `ToolCall`, our `function_call_output` is accepted, and a new
//! session takes the call and its output replayed (an output for an unknown call is refused).

use std::time::Duration;

use consultant::realtime::{AzureRealtimeClient, RealtimeConfig, RealtimeFlavour};
use consultant::secret::Secret;
use consultant_actors::dialogue::{ToolCall, ToolEntry, ToolResult};
use consultant_actors::ports::{RealtimeCommand, RealtimeConnection, RealtimeConnector, RealtimeEvent, RealtimeSetup, ToolSpec};
use consultant_actors::{DialogueMessage, Role, SessionId};
use consultant_fakes::realtime::{caller_turn, FakeFlavour, FakeRealtime, FakeRealtimeOptions, ScriptTurn, ScriptedCall};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
const ARGS: &str = r#"{"reason":"клиент попрощался"}"#;

fn end_tool() -> ToolSpec {
    ToolSpec {
        name: "end_consultation".into(),
        description: "Заверши консультацию".into(),
        parameters: json!({ "type": "object", "properties": { "reason": { "type": "string" } }, "required": [] }),
    }
}

async fn fake(flavour: &FakeFlavour, turn: ScriptTurn) -> FakeRealtime {
    let mut options = FakeRealtimeOptions::new(flavour.clone());
    options.speed = Some(20.0);
    options.turns = vec![turn];
    FakeRealtime::start(options).await.unwrap()
}

fn client(fake: &FakeRealtime, flavour: RealtimeFlavour) -> AzureRealtimeClient {
    let mut config = RealtimeConfig::new(flavour, fake.endpoint(), Secret::new(fake.options().api_key.clone()));
    config.deployment = fake.options().deployment.clone();
    config.model = fake.options().deployment.clone();
    config.api_version = "2025-04-01-preview".into();
    AzureRealtimeClient::new(config, consultant::tls::ClientTls::default()).unwrap()
}

fn setup(history: Vec<DialogueMessage>) -> RealtimeSetup {
    RealtimeSetup { session_id: SessionId::parse("tools").unwrap(), instructions: "Ты — консультант.".into(), history, tools: vec![end_tool()] }
}

async fn until(connection: &mut RealtimeConnection, done: impl Fn(&RealtimeEvent) -> bool) -> Vec<RealtimeEvent> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, connection.events.recv()).await.expect("an event in time").expect("stream open");
        let stop = done(&event);
        assert!(!matches!(event, RealtimeEvent::Disconnected { .. }), "disconnected: {seen:?} {event:?}");
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

fn flavours() -> [(RealtimeFlavour, FakeFlavour); 2] {
    [
        (RealtimeFlavour::AzurePreview, FakeFlavour::AzurePreview { api_version: "2025-04-01-preview".into() }),
        (RealtimeFlavour::AzureGa, FakeFlavour::AzureGa),
    ]
}

#[tokio::test]
async fn the_models_call_arrives_once_and_our_output_and_the_replay_are_accepted() {
    for (flavour, fake_flavour) in flavours() {
        let fake = fake(&fake_flavour, ScriptTurn::new("До свидания", "Всего доброго!").then_calls("end_consultation", ARGS)).await;
        let client = client(&fake, flavour);
        let mut c = client.connect(setup(Vec::new())).await.expect("the session with the tool is accepted");
        let declared = &fake.sessions()[0].session_updates[0]["session"];
        assert_eq!(declared["tools"][0]["name"], "end_consultation", "{flavour}: {declared:#}");
        assert_eq!(declared["tool_choice"], "auto");

        c.commands.send(RealtimeCommand::AppendAudio(caller_turn(800, 900).into())).await.unwrap();
        let events = until(&mut c, |e| matches!(e, RealtimeEvent::ResponseDone { .. })).await;
        let calls: Vec<&ToolCall> = events.iter().filter_map(|e| if let RealtimeEvent::ToolCall(c) = e { Some(c) } else { None }).collect();
        assert_eq!(calls.len(), 1, "{flavour}: one call from the whole event sequence: {events:#?}");
        assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("end_consultation", ARGS));
        let spoken = events.iter().position(|e| matches!(e, RealtimeEvent::AgentTranscriptDone { .. })).expect("the goodbye is spoken");
        let called = events.iter().position(|e| matches!(e, RealtimeEvent::ToolCall(_))).unwrap();
        assert!(spoken < called, "{flavour}: the goodbye is said, then the tool called");
        assert_eq!(fake.sessions()[0].tool_calls, vec![ScriptedCall { name: "end_consultation".into(), arguments: ARGS.into() }]);

        let call = calls[0].clone();
        let result = ToolResult { call_id: call.call_id.clone(), output: json!({ "status": "ending" }).to_string() };
        c.commands.send(RealtimeCommand::ToolResult(result.clone())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let record = &fake.sessions()[0];
        assert!(record.errors_sent.is_empty(), "{flavour}: {:?}", record.errors_sent);
        let output = record.items.last().expect("the output item");
        assert_eq!(output["item"], json!({ "type": "function_call_output", "call_id": call.call_id, "output": result.output }));

        // A new session gets the whole history, the call and its output included.
        let at = chrono::Utc::now();
        let entry = |seq, role, text: String| DialogueMessage { seq, role, text, at, interrupted: false };
        let history = vec![
            entry(1, Role::User, "До свидания".into()),
            entry(2, Role::Assistant, "Всего доброго!".into()),
            entry(3, Role::ToolCall, ToolEntry::Call(call.clone()).to_text()),
            entry(4, Role::ToolResult, ToolEntry::Result(result.clone()).to_text()),
        ];
        let _replayed = client.connect(setup(history)).await.expect("the replay is accepted");
        let record = &fake.sessions()[1];
        assert!(record.errors_sent.is_empty(), "{flavour}: {:?}", record.errors_sent);
        let kinds: Vec<&str> = record.items.iter().map(|i| i["item"]["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message", "message", "function_call", "function_call_output"]);
        assert_eq!(record.items[2]["item"]["call_id"], call.call_id.as_str());
        assert_eq!(record.items[2]["item"]["name"], "end_consultation");
        assert_eq!(record.items[2]["item"]["arguments"], ARGS);

        // An output for a call the conversation does not hold is refused, as the service does.
        c.commands.send(RealtimeCommand::ToolResult(ToolResult { call_id: "call_unknown".into(), output: "{}".into() })).await.unwrap();
        let refused = until(&mut c, |e| matches!(e, RealtimeEvent::Error { .. })).await;
        let RealtimeEvent::Error { message, .. } = refused.last().unwrap() else { unreachable!() };
        assert!(message.contains("call_unknown"), "{flavour}: {message}");
    }
}

#[tokio::test]
async fn a_tool_with_a_bad_name_is_refused_at_session_update() {
    let (flavour, fake_flavour) = flavours()[1].clone();
    let fake = fake(&fake_flavour, ScriptTurn::new("", "")).await;
    let mut bad = setup(Vec::new());
    bad.tools[0].name = "end consultation".into();
    let refused = client(&fake, flavour).connect(bad).await.err().expect("refused");
    assert!(refused.to_string().contains("session.tools[0].name"), "{refused}");
}
