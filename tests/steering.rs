//! The anketa steers the call, and the call ends when it is over: the consultation core driven
//! through the in-memory realtime port (commands seen exactly as the socket writer would get
//! them), on tokio's paused clock where minutes must pass.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use consultant_actors::anketa::{AnketaField, FieldKind};
use consultant_actors::consultation::{Ports, END_CONSULTATION};
use consultant_actors::dialogue::{Role, SessionId, ToolCall, ToolEntry};
use consultant_actors::ports::{DialogueStore, RealtimeCommand, RealtimeEvent, ResponseStatus};
use consultant_actors::session::SessionStatus;
use consultant_actors::settings::ConsultationSettings;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::VoiceHandler;
use consultant_fakes::memory::{CountingExtractor, MemoryStore, RecordingAudio, ScriptedRealtime, ScriptedSession};

fn fields() -> Vec<AnketaField> {
    let field = |name: &str, description: &str, kind, required| AnketaField { name: name.into(), description: description.into(), kind, required };
    vec![
        // CountingExtractor fills client_name (from the first caller line) and messages_seen.
        field("client_name", "Имя клиента", FieldKind::Text, true),
        field("messages_seen", "Сколько реплик видел экстрактор", FieldKind::Number, true),
        field("budget", "Бюджет клиента", FieldKind::Number, true),
        field("deadline", "Сроки", FieldKind::Text, true),
        field("hobby", "Увлечения клиента", FieldKind::Text, false),
    ]
}

fn settings() -> ConsultationSettings {
    let mut s = ConsultationSettings::for_tests(fields());
    s.connect.first_retry = Duration::from_millis(10);
    s
}

struct Call {
    realtime: Arc<ScriptedRealtime>,
    store: Arc<MemoryStore>,
    audio: Arc<RecordingAudio>,
    handle: consultant_actors::supervisor::ConsultationHandle,
    handler: VoiceHandler,
}

async fn call(settings: ConsultationSettings, id: &str) -> Call {
    let realtime = ScriptedRealtime::new();
    let store = Arc::new(MemoryStore::default());
    let ports = Ports { connector: realtime.clone(), store: store.clone(), extractor: CountingExtractor::new() };
    let handler = VoiceHandler::start(Arc::new(settings), ports, Telemetry::new()).await.unwrap();
    let audio = RecordingAudio::new();
    let handle = handler.create_session(SessionId::parse(id).unwrap(), format!("consultation-{id}"), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    Call { realtime, store, audio, handle, handler }
}

fn instruction_updates(commands: &[RealtimeCommand]) -> Vec<String> {
    commands.iter().filter_map(|c| if let RealtimeCommand::UpdateInstructions(i) = c { Some(i.clone()) } else { None }).collect()
}

/// Lets the actors run (the paused clock only moves when every task waits).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Greeting + two exchanges, then a third caller turn whose transcript lands while the answer
/// to it is already being spoken: the 6th message (and so the extraction) comes mid-answer.
async fn six_messages_the_last_mid_answer(s: &ScriptedSession) {
    s.agent_says("a0", "Здравствуйте! Как вас зовут?", 100).await;
    s.user_says("u1", "Меня зовут Анна").await;
    s.agent_says("a1", "Очень приятно, Анна.", 100).await;
    s.user_says("u2", "Мне нужен сайт").await;
    s.agent_says("a2", "Расскажите подробнее.", 100).await;
    s.emit(RealtimeEvent::SpeechStarted { item_id: Some("u3".into()), audio_start_ms: 0 }).await;
    s.emit(RealtimeEvent::SpeechStopped { item_id: Some("u3".into()), audio_end_ms: 900 }).await;
    s.emit(RealtimeEvent::UserItemCommitted { item_id: "u3".into() }).await;
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r3".into() }).await;
    s.emit(RealtimeEvent::AgentItemStarted { response_id: Some("r3".into()), item_id: "a3".into() }).await;
    s.emit(RealtimeEvent::AgentAudio { item_id: "a3".into(), pcm: vec![1000i16; 2400].into(), received: std::time::Instant::now() }).await;
    s.emit(RealtimeEvent::UserTranscript { item_id: "u3".into(), text: "Для пекарни".into() }).await;
}

async fn finish_answer(s: &ScriptedSession, item: &str, text: &str) {
    s.emit(RealtimeEvent::AgentTranscriptDone { item_id: item.into(), text: text.into() }).await;
    s.emit(RealtimeEvent::ResponseDone { response_id: None, status: ResponseStatus::Completed, reason: None, usage: None }).await;
}

#[tokio::test(start_paused = true)]
async fn after_an_extraction_the_session_learns_exactly_what_is_missing_between_answers() {
    let c = call(settings(), "steer").await;
    let s = c.realtime.session(1).await;
    assert!(!s.setup.instructions.contains("Ещё не выяснено"), "no addendum before the first extraction: {}", s.setup.instructions);
    six_messages_the_last_mid_answer(&s).await;
    settle().await;
    assert!(instruction_updates(&s.commands()).is_empty(), "nothing is sent while the model is mid-answer");
    finish_answer(&s, "a3", "Понимаю, сайт для пекарни.").await;
    settle().await;
    let updates = instruction_updates(&s.commands());
    assert_eq!(updates.len(), 1, "{updates:#?}");
    let expected = format!(
        "{}\n\nЕщё не выяснено: Бюджет клиента; Сроки. Выясни это естественно, по одному вопросу за раз.",
        settings().system_prompt
    );
    assert_eq!(updates[0], expected, "the required fields still unknown, by description, in order; optional ones never");

    // Near the limit the wrap-up names what is still missing.
    tokio::time::sleep(Duration::from_secs(1700)).await;
    let updates = instruction_updates(&s.commands());
    assert_eq!(updates.len(), 1, "{updates:#?}");
    assert!(updates[0].ends_with("Время консультации подходит к концу: подведи итог. Если успеешь, уточни: Бюджет клиента; Сроки."), "{}", updates[0]);
    assert!(updates[0].contains("Ещё не выяснено: Бюджет клиента; Сроки."));
    c.handler.end_session(&c.handle.session_id, consultant_actors::consultation::EndReason::CallerLeft).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn once_every_required_field_is_known_the_consultant_moves_to_a_summary() {
    let mut s = settings();
    s.anketa_fields.retain(|f| f.name == "client_name" || f.name == "messages_seen" || !f.required);
    let c = call(s, "complete").await;
    let rt = c.realtime.session(1).await;
    six_messages_the_last_mid_answer(&rt).await;
    finish_answer(&rt, "a3", "Понимаю.").await;
    settle().await;
    let updates = instruction_updates(&rt.commands());
    assert_eq!(updates.len(), 1, "{updates:#?}");
    assert!(updates[0].ends_with("\n\nВсе нужные сведения собраны: кратко подведи итог и предложи завершить консультацию."), "{}", updates[0]);
    assert!(!updates[0].contains("Ещё не выяснено"));
}

#[tokio::test(start_paused = true)]
async fn a_goodbye_with_end_consultation_ends_the_call_once_the_goodbye_has_played() {
    let c = call(settings(), "bye").await;
    let s = c.realtime.session(1).await;
    assert_eq!(s.setup.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), [END_CONSULTATION], "the tool is declared");
    s.agent_says("a0", "Здравствуйте!", 100).await;
    s.user_says("u1", "Спасибо, до свидания").await;
    settle().await; // the caller's speech has been handled (it interrupts what plays)
    s.commands();
    // The model says goodbye, then calls the tool, in one answer; the caller is still hearing it.
    c.audio.playing.store(true, Ordering::SeqCst);
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r1".into() }).await;
    s.emit(RealtimeEvent::AgentItemStarted { response_id: Some("r1".into()), item_id: "a1".into() }).await;
    s.emit(RealtimeEvent::AgentAudio { item_id: "a1".into(), pcm: vec![1000i16; 24_000].into(), received: std::time::Instant::now() }).await;
    s.emit(RealtimeEvent::AgentTranscriptDone { item_id: "a1".into(), text: "Всего доброго!".into() }).await;
    let call = ToolCall { call_id: "call_1".into(), name: END_CONSULTATION.into(), arguments: r#"{"reason":"клиент попрощался"}"#.into() };
    s.emit(RealtimeEvent::ToolCall(call.clone())).await;
    s.emit(RealtimeEvent::ResponseDone { response_id: None, status: ResponseStatus::Completed, reason: None, usage: None }).await;
    settle().await;
    let commands = s.commands();
    let results: Vec<_> = commands.iter().filter_map(|c| if let RealtimeCommand::ToolResult(r) = c { Some(r.clone()) } else { None }).collect();
    assert_eq!(results.len(), 1, "{commands:#?}");
    assert_eq!(results[0].call_id, "call_1");
    assert!(results[0].output.contains("ending"), "{}", results[0].output);
    assert!(!commands.iter().any(|c| matches!(c, RealtimeCommand::CreateResponse { .. })), "the goodbye was said already: {commands:#?}");
    // Still playing: the call waits for the goodbye to be heard...
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!c.handle.outcome().is_some(), "hung up while the goodbye was playing");
    // ... and hangs up right after it.
    c.audio.playing.store(false, Ordering::SeqCst);
    let at = tokio::time::Instant::now();
    let outcome = c.handle.wait_finished().await.unwrap();
    assert!(at.elapsed() <= Duration::from_millis(100), "hung up {:?} after the goodbye ended", at.elapsed());
    assert_eq!(outcome.status, SessionStatus::Completed);
    assert_eq!(outcome.reason, "the caller said goodbye (end_consultation)");
    let dialogue: Vec<(Role, &str)> = outcome.dialogue.iter().map(|m| (m.role, m.text.as_str())).collect();
    assert_eq!(dialogue[..3], [(Role::Assistant, "Здравствуйте!"), (Role::User, "Спасибо, до свидания"), (Role::Assistant, "Всего доброго!")]);
    assert_eq!(outcome.dialogue.len(), 5, "{dialogue:#?}");
    assert_eq!(outcome.dialogue[3].tool(), Some(ToolEntry::Call(call)));
    let Some(ToolEntry::Result(result)) = outcome.dialogue[4].tool() else { panic!("a tool result last: {dialogue:#?}") };
    assert_eq!(result, results[0]);
    let stored = c.store.load_messages(&outcome.session_id).await.unwrap();
    assert_eq!(stored, outcome.dialogue, "stored as such, in order");
}

#[tokio::test(start_paused = true)]
async fn a_silent_end_consultation_asks_for_the_goodbye_then_ends() {
    let c = call(settings(), "silent-bye").await;
    let s = c.realtime.session(1).await;
    s.agent_says("a0", "Здравствуйте!", 100).await;
    s.user_says("u1", "Всё, спасибо, пока").await;
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r1".into() }).await;
    s.emit(RealtimeEvent::ToolCall(ToolCall { call_id: "call_2".into(), name: END_CONSULTATION.into(), arguments: "{}".into() })).await;
    s.emit(RealtimeEvent::ResponseDone { response_id: None, status: ResponseStatus::Completed, reason: None, usage: None }).await;
    settle().await;
    let commands = s.commands();
    let position = |f: &dyn Fn(&RealtimeCommand) -> bool| commands.iter().position(f);
    let result = position(&|c| matches!(c, RealtimeCommand::ToolResult(r) if r.call_id == "call_2")).expect("the call is answered");
    let goodbye = position(&|c| matches!(c, RealtimeCommand::CreateResponse { instructions: Some(i) } if *i == settings().ending.tool_goodbye_instruction))
        .expect("the goodbye is asked for");
    assert!(result < goodbye, "the output first, then the response: {commands:#?}");
    assert!(!c.handle.outcome().is_some());
    s.agent_says("a2", "Всего доброго!", 500).await;
    let outcome = c.handle.wait_finished().await.unwrap();
    let roles: Vec<Role> = outcome.dialogue.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::Assistant, Role::User, Role::ToolCall, Role::ToolResult, Role::Assistant]);
    assert_eq!(outcome.dialogue[4].text, "Всего доброго!");
}

#[tokio::test(start_paused = true)]
async fn a_silent_caller_is_asked_once_then_the_agent_says_goodbye_and_ends() {
    let mut settings = settings();
    settings.ending.silence_prompt_after = Some(Duration::from_secs(30));
    settings.ending.silence_end_after = Duration::from_secs(20);
    let prompt = settings.ending.silence_prompt_instruction.clone();
    let goodbye = settings.ending.silence_goodbye_instruction.clone();
    let c = call(settings, "quiet").await;
    let s = c.realtime.session(1).await;
    s.agent_says("a0", "Здравствуйте!", 100).await;
    // Speech resets the clock: 25 s quiet, a caller turn, 25 s quiet again is not 30 s.
    tokio::time::sleep(Duration::from_secs(25)).await;
    s.user_says("u1", "Я думаю").await;
    s.agent_says("a1", "Не торопитесь.", 100).await;
    let started = tokio::time::Instant::now();
    let asked = |c: &RealtimeCommand, text: &str| matches!(c, RealtimeCommand::CreateResponse { instructions: Some(i) } if i == text);
    let mut seen = Vec::new();
    while !seen.iter().any(|c| asked(c, &prompt)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.extend(s.commands());
        assert!(started.elapsed() < Duration::from_secs(40), "never asked: {seen:#?}");
    }
    let asked_after = started.elapsed();
    assert!(asked_after >= Duration::from_secs(30) && asked_after < Duration::from_secs(32), "asked after {asked_after:?}");
    s.agent_says("a2", "Вы меня слышите?", 1000).await;
    let asked_at = tokio::time::Instant::now();
    while !seen.iter().any(|c| asked(c, &goodbye)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.extend(s.commands());
        assert!(asked_at.elapsed() < Duration::from_secs(30), "no goodbye: {seen:#?}");
    }
    let goodbye_after = asked_at.elapsed();
    assert!(goodbye_after >= Duration::from_secs(20) && goodbye_after < Duration::from_secs(22), "goodbye after {goodbye_after:?}");
    assert_eq!(seen.iter().filter(|c| asked(c, &prompt)).count(), 1, "asked once");
    s.agent_says("a3", "До свидания!", 500).await;
    let outcome = c.handle.wait_finished().await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Completed);
    assert_eq!(outcome.reason, "the caller stayed silent");
    assert_eq!(outcome.dialogue.last().unwrap().text, "До свидания!");
}

/// The goodbye has already been heard when the answer with the call ends: the call ends at
/// once, and the tool's output still reaches the session before it is closed.
#[tokio::test(start_paused = true)]
async fn a_call_that_ends_at_once_still_answers_the_tool_before_closing() {
    let c = call(settings(), "bye-now").await;
    let s = c.realtime.session(1).await;
    s.agent_says("a0", "Здравствуйте!", 100).await;
    s.user_says("u1", "До свидания").await;
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r1".into() }).await;
    s.emit(RealtimeEvent::AgentAudio { item_id: "a1".into(), pcm: vec![1000i16; 2400].into(), received: std::time::Instant::now() }).await;
    s.emit(RealtimeEvent::AgentTranscriptDone { item_id: "a1".into(), text: "До свидания!".into() }).await;
    s.emit(RealtimeEvent::ToolCall(ToolCall { call_id: "call_3".into(), name: END_CONSULTATION.into(), arguments: "{}".into() })).await;
    s.emit(RealtimeEvent::ResponseDone { response_id: None, status: ResponseStatus::Completed, reason: None, usage: None }).await;
    let outcome = c.handle.wait_finished().await.unwrap();
    assert_eq!(outcome.reason, "the caller said goodbye (end_consultation)");
    let commands = s.commands();
    let result = commands.iter().position(|c| matches!(c, RealtimeCommand::ToolResult(r) if r.call_id == "call_3"));
    let close = commands.iter().position(|c| matches!(c, RealtimeCommand::Close));
    assert!(result.is_some() && result < close, "the output reaches the session before it closes: {commands:#?}");
}
