//! The supervised consultation core, driven through the in-memory realtime port, with the real
//! SQLite store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use consultant::store::SqliteStore;
use consultant_actors::anketa::{AnketaField, FieldKind};
use consultant_actors::consultation::{EndReason, Ports};
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{DialogueStore, RealtimeCommand, RealtimeEvent, ResponseStatus};
use consultant_actors::session::SessionStatus;
use consultant_actors::settings::ConsultationSettings;
use consultant_actors::telemetry::{RealtimeLinkState, Telemetry};
use consultant_actors::VoiceHandler;
use consultant_fakes::memory::{CountingExtractor, MemoryStore, RecordingAudio, ScriptedRealtime};

fn fields() -> Vec<AnketaField> {
    vec![
        AnketaField { name: "client_name".into(), description: "Имя".into(), kind: FieldKind::Text, required: true },
        AnketaField { name: "messages_seen".into(), description: "".into(), kind: FieldKind::Number, required: true },
    ]
}

fn settings() -> ConsultationSettings {
    let mut s = ConsultationSettings::for_tests(fields());
    s.restart.backoff_initial = Duration::from_millis(10);
    s.connect.first_retry = Duration::from_millis(10);
    s.connect.retry_delay = Duration::from_millis(10);
    s
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    realtime: Arc<ScriptedRealtime>,
    extractor: Arc<CountingExtractor>,
    telemetry: Telemetry,
    handler: VoiceHandler,
}

async fn world(settings: ConsultationSettings) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("c.db"), "normal").unwrap());
    let realtime = ScriptedRealtime::new();
    let extractor = CountingExtractor::new();
    let ports = Ports { connector: realtime.clone(), store: store.clone(), extractor: extractor.clone() };
    let telemetry = Telemetry::new();
    let handler = VoiceHandler::start(Arc::new(settings), ports, telemetry.clone()).await.unwrap();
    World { _dir: dir, store, realtime, extractor, telemetry, handler }
}

/// The consultation core with an in-memory store, for tests on tokio's paused clock.
struct PausedWorld {
    realtime: Arc<ScriptedRealtime>,
    telemetry: Telemetry,
    handler: VoiceHandler,
}

async fn paused_world(settings: ConsultationSettings) -> PausedWorld {
    let realtime = ScriptedRealtime::new();
    let ports = Ports { connector: realtime.clone(), store: Arc::new(MemoryStore::default()), extractor: CountingExtractor::new() };
    let telemetry = Telemetry::new();
    let handler = VoiceHandler::start(Arc::new(settings), ports, telemetry.clone()).await.unwrap();
    PausedWorld { realtime, telemetry, handler }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

async fn wait_messages(store: &SqliteStore, id: &SessionId, n: usize) -> Vec<DialogueMessage> {
    for _ in 0..400 {
        let m = store.load_messages(id).await.unwrap();
        if m.len() >= n {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} messages, have {:?}", store.load_messages(id).await.unwrap());
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Greeting + 6 caller/agent pairs + a last caller turn = 14 messages.
async fn fourteen_message_dialogue(w: &World, id: &SessionId) {
    let s = w.realtime.session(1).await;
    s.agent_says("a0", "Здравствуйте! Как вас зовут?", 500).await;
    for i in 1..=6 {
        s.user_says(&format!("u{i}"), &format!("Реплика клиента {i}")).await;
        s.agent_says(&format!("a{i}"), &format!("Ответ консультанта {i}"), 300).await;
    }
    s.user_says("u7", "Спасибо, до свидания").await;
    wait_messages(&w.store, id, 14).await;
}

#[tokio::test]
async fn fourteen_messages_give_two_periodic_and_one_final_extraction() {
    let w = world(settings()).await;
    let id = sid("fourteen");
    let audio = RecordingAudio::new();
    let handle = w.handler.create_session(id.clone(), "consultation-fourteen".into(), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = w.realtime.session(1).await;
    // The agent greets first.
    wait_until("greeting request", || {
        s.commands().iter().any(|c| matches!(c, RealtimeCommand::CreateResponse { instructions: Some(i) } if i.contains("Поздоровайся")))
    })
    .await;
    fourteen_message_dialogue(&w, &id).await;
    wait_until("two periodic extractions", || w.extractor.calls.load(Ordering::SeqCst) == 2).await;
    let outcome = w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();

    assert_eq!(*w.extractor.seen.lock().unwrap(), vec![6, 12, 14], "periodic at 6 and 12, final over all 14");
    let stored = w.store.load_messages(&id).await.unwrap();
    assert_eq!(stored.len(), 14);
    assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=14).collect::<Vec<_>>());
    assert_eq!(stored[0].role, Role::Assistant);
    assert_eq!(stored[1].text, "Реплика клиента 1");
    assert_eq!(stored[2].text, "Ответ консультанта 1");
    assert_eq!(stored[13].text, "Спасибо, до свидания");
    assert_eq!(outcome.status, SessionStatus::Completed);
    assert_eq!(outcome.dialogue, stored);
    let detail = w.store.session_detail(&id).await.unwrap();
    assert_eq!(detail.record.status, SessionStatus::Completed);
    assert!(detail.record.ended_at.is_some());
    let history: Vec<_> = detail.anketa_history.iter().map(|a| (a.message_count, a.is_final)).collect();
    assert_eq!(history, vec![(6, false), (12, false), (14, true)]);
    assert_eq!(detail.anketa.0["client_name"], "Реплика клиента 1");
}

/// Every snapshot carries where its values came from: `client_name` stays cited by message 2,
/// `messages_seen` changes at each extraction and keeps its earlier values in its history.
#[tokio::test]
async fn each_anketa_value_keeps_its_evidence_and_history_up_to_the_final_anketa() {
    use consultant_actors::provenance::{FieldProvenance, PastValue};
    let w = world(settings()).await;
    let id = sid("evidence");
    let handle = w.handler.create_session(id.clone(), "consultation-evidence".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    fourteen_message_dialogue(&w, &id).await;
    wait_until("two periodic extractions on the console", || w.telemetry.snapshot().consultations.first().is_some_and(|c| c.extractions == 2)).await;
    let view = w.telemetry.snapshot().consultations[0].clone();
    let shown: Vec<_> = view.anketa.iter().map(|f| (f.description.as_str(), f.value.clone(), f.evidence.clone(), f.set_at, f.history.len())).collect();
    assert_eq!(shown, vec![("Имя", serde_json::json!("Реплика клиента 1"), vec![2], 6, 0), ("", serde_json::json!(12), vec![12], 12, 1)]);
    let outcome = w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();

    let name = FieldProvenance { evidence: vec![2], set_at: 6, history: Vec::new() };
    let past = |n: usize| PastValue { value: serde_json::json!(n), evidence: vec![n as u32], set_at: n };
    let seen = FieldProvenance { evidence: vec![14], set_at: 14, history: vec![past(6), past(12)] };
    assert_eq!(outcome.provenance.get("client_name"), Some(&name));
    assert_eq!(outcome.provenance.get("messages_seen"), Some(&seen));
    let detail = w.store.session_detail(&id).await.unwrap();
    assert_eq!(detail.provenance, outcome.provenance, "the final anketa is stored with its provenance");
    let snapshots: Vec<_> = detail.anketa_history.iter().map(|a| (a.message_count, a.provenance.get("messages_seen").cloned())).collect();
    let at = |n: usize, history| Some(FieldProvenance { evidence: vec![n as u32], set_at: n, history });
    assert_eq!(snapshots, vec![(6, at(6, vec![])), (12, at(12, vec![past(6)])), (14, at(14, vec![past(6), past(12)]))]);
}

#[tokio::test]
async fn realtime_failing_three_times_is_restarted_with_the_dialogue_replayed() {
    let w = world(settings()).await;
    let id = sid("restarts");
    let handle = w.handler.create_session(id.clone(), "consultation-restarts".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let mut expected = 0;
    for n in 1..=4 {
        let s = w.realtime.session(n).await;
        s.user_says(&format!("u{n}"), &format!("Вопрос {n}")).await;
        s.agent_says(&format!("a{n}"), &format!("Ответ {n}"), 200).await;
        expected += 2;
        wait_messages(&w.store, &id, expected).await;
        if n < 4 {
            // Caller audio during the gap is held and sent after the reconnect.
            s.drop_connection("socket reset by peer").await;
        }
    }
    assert_eq!(w.realtime.connections(), 4);
    let last = w.realtime.session(4).await;
    let replayed: Vec<_> = last.setup.history.iter().map(|m| m.text.clone()).collect();
    assert_eq!(replayed, vec!["Вопрос 1", "Ответ 1", "Вопрос 2", "Ответ 2", "Вопрос 3", "Ответ 3"]);
    // The greeting is asked for once, not after every reconnect.
    assert!(!last.commands().iter().any(|c| matches!(c, RealtimeCommand::CreateResponse { .. })));
    let outcome = w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Completed);
    let stored = w.store.load_messages(&id).await.unwrap();
    assert_eq!(stored.len(), 8, "nothing lost or duplicated across restarts: {stored:?}");
}

#[tokio::test]
async fn caller_audio_during_a_reconnect_is_held_and_sent_after_it() {
    let w = world(settings()).await;
    let id = sid("gap");
    let handle = w.handler.create_session(id.clone(), "consultation-gap".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    w.realtime.fail_connects.store(2, Ordering::SeqCst);
    let s1 = w.realtime.session(1).await;
    s1.drop_connection("gone").await;
    wait_until("link reported down", || {
        w.telemetry.consultation(&id).is_some_and(|v| !matches!(v.realtime.link, RealtimeLinkState::Connected))
    })
    .await;
    // 3 s of caller audio while the link is down: only the newest ~2 s can be kept.
    for _ in 0..30 {
        w.handler.process_user_audio(&handle, vec![7i16; 2400].into());
    }
    let s2 = w.realtime.session(2).await;
    let mut sent = 0usize;
    wait_until("held audio flushed", || {
        sent += s2.commands().iter().map(|c| if let RealtimeCommand::AppendAudio(p) = c { p.len() } else { 0 }).sum::<usize>();
        sent >= 48_000
    })
    .await;
    assert!(sent <= 48_000 + 2400, "the gap buffer is bounded to about 2 s, sent {sent} samples");
    w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
}

/// A session's last words before it drops are kept: the caller's late transcript and the
/// agent's last transcript delta, queued in the Consultation's mailbox when the Realtime child
/// fails (ractor delivers the failure ahead of them), are still the dialogue's, and the
/// reconnect replays them. Found by the fault soak (tests/soak.rs).
#[tokio::test]
async fn what_a_session_said_just_before_it_dropped_is_kept() {
    let mut settings = settings();
    // A lost transcript shows within the test's patience.
    settings.transcript_wait = Duration::from_millis(300);
    let w = world(settings).await;
    for round in 0..8 {
        let id = sid(&format!("last-words-{round}"));
        let handle = w.handler.create_session(id.clone(), format!("consultation-last-words-{round}"), RecordingAudio::new()).await.unwrap();
        handle.wait_ready().await.unwrap();
        let s = w.realtime.session(2 * round + 1).await;
        // One burst, as the socket delivers it: the caller's turn, the start of the answer, the
        // caller's words (late, as they come), then the drop.
        s.emit(RealtimeEvent::UserItemCommitted { item_id: "u1".into() }).await;
        s.emit(RealtimeEvent::ResponseStarted { response_id: "r1".into() }).await;
        s.emit(RealtimeEvent::AgentItemStarted { response_id: Some("r1".into()), item_id: "a1".into() }).await;
        s.emit(RealtimeEvent::AgentAudio { item_id: "a1".into(), pcm: vec![500i16; 4800].into(), received: std::time::Instant::now() }).await;
        s.emit(RealtimeEvent::AgentTranscriptDelta { item_id: "a1".into(), delta: "Сейчас ".into() }).await;
        s.emit(RealtimeEvent::UserTranscript { item_id: "u1".into(), text: "Какие у вас тарифы?".into() }).await;
        s.emit(RealtimeEvent::AgentTranscriptDelta { item_id: "a1".into(), delta: "расскажу".into() }).await;
        s.drop_connection("connection reset by peer").await;
        let next = w.realtime.session(2 * round + 2).await;
        let expected = vec![(Role::User, "Какие у вас тарифы?".to_owned(), false), (Role::Assistant, "Сейчас расскажу".to_owned(), true)];
        let replayed: Vec<_> = next.setup.history.iter().map(|m| (m.role, m.text.clone(), m.interrupted)).collect();
        assert_eq!(replayed, expected, "round {round}: the reconnect replays the last words");
        let outcome = w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
        let stored: Vec<_> = w.store.load_messages(&id).await.unwrap().into_iter().map(|m| (m.role, m.text, m.interrupted)).collect();
        assert_eq!(stored, expected, "round {round}");
        assert_eq!(outcome.dialogue.len(), 2);
    }
}

#[tokio::test]
async fn realtime_that_keeps_failing_ends_the_consultation_as_failed_with_a_final_anketa() {
    let mut s = settings();
    s.restart.max_restarts = 3;
    let w = world(s).await;
    let id = sid("doomed");
    let handle = w.handler.create_session(id.clone(), "consultation-doomed".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s1 = w.realtime.session(1).await;
    s1.user_says("u1", "Меня зовут Олег").await;
    wait_messages(&w.store, &id, 1).await;
    w.realtime.fail_connects.store(usize::MAX / 2, Ordering::SeqCst);
    s1.drop_connection("network unreachable").await;
    let outcome = handle.wait_finished().await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Failed);
    let failure = outcome.failure.unwrap();
    assert!(failure.contains("realtime failed") && failure.contains("connection failed after 3 attempts"), "{failure}");
    let detail = w.store.session_detail(&id).await.unwrap();
    assert_eq!(detail.record.status, SessionStatus::Failed);
    assert!(detail.record.failure.unwrap().contains("realtime"));
    let last = detail.anketa_history.last().expect("final anketa stored");
    assert!(last.is_final);
    assert_eq!(detail.anketa.0["client_name"], "Меня зовут Олег");
}

#[tokio::test]
async fn a_fatal_realtime_error_fails_at_once_without_retries() {
    let w = world(settings()).await;
    w.realtime.fatal.store(true, Ordering::SeqCst);
    let id = sid("badkey");
    let handle = w.handler.create_session(id.clone(), "consultation-badkey".into(), RecordingAudio::new()).await.unwrap();
    let err = handle.wait_ready().await.unwrap_err().to_string();
    assert!(err.contains("invalid_api_key"), "{err}");
    assert_eq!(w.realtime.connections(), 0);
}

#[tokio::test]
async fn a_failing_extraction_never_disturbs_the_dialogue() {
    let w = world(settings()).await;
    w.extractor.failing.store(true, Ordering::SeqCst);
    let id = sid("noanketa");
    let handle = w.handler.create_session(id.clone(), "consultation-noanketa".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    fourteen_message_dialogue(&w, &id).await;
    let outcome = w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Completed);
    assert_eq!(outcome.dialogue.len(), 14);
    assert_eq!(w.extractor.calls.load(Ordering::SeqCst), 3);
    assert!(w.store.session_detail(&id).await.unwrap().anketa_history.last().unwrap().is_final);
}

#[tokio::test]
async fn barge_in_truncates_to_what_was_heard() {
    let w = world(settings()).await;
    let id = sid("bargein");
    let audio = RecordingAudio::new();
    let handle = w.handler.create_session(id.clone(), "consultation-bargein".into(), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = w.realtime.session(1).await;
    let text = "Давайте я подробно расскажу обо всех наших услугах и тарифах";
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r1".into() }).await;
    s.emit(RealtimeEvent::AgentItemStarted { response_id: Some("r1".into()), item_id: "a1".into() }).await;
    // 2 s received, the caller heard 1 s (the output reports it), then speaks over it.
    s.emit(RealtimeEvent::AgentAudio { item_id: "a1".into(), pcm: vec![500i16; 48_000].into(), received: std::time::Instant::now() }).await;
    s.emit(RealtimeEvent::AgentTranscriptDone { item_id: "a1".into(), text: text.into() }).await;
    wait_until("audio queued", || audio.played_samples.load(Ordering::SeqCst) == 48_000).await;
    audio.heard_ms.store(5_000, Ordering::SeqCst); // more than received: must be clamped
    audio.playing.store(true, Ordering::SeqCst);
    s.emit(RealtimeEvent::SpeechStarted { item_id: Some("u1".into()), audio_start_ms: 0 }).await;
    s.emit(RealtimeEvent::ResponseDone { response_id: Some("r1".into()), status: ResponseStatus::Cancelled, reason: Some("turn_detected".into()), usage: None }).await;
    s.user_says("u1", "Подождите, у меня вопрос").await;
    let stored = wait_messages(&w.store, &id, 2).await;
    let truncates: Vec<_> = s.commands().into_iter().filter(|c| matches!(c, RealtimeCommand::Truncate { .. })).collect();
    assert_eq!(truncates, vec![RealtimeCommand::Truncate { item_id: "a1".into(), content_index: 0, audio_end_ms: 2000 }]);
    assert_eq!(audio.interrupts.load(Ordering::SeqCst), 1);
    assert_eq!(stored[0].role, Role::Assistant);
    assert_eq!(stored[1].text, "Подождите, у меня вопрос");
    w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();

    // Heard half of it: the stored text is the heard part, marked interrupted.
    let id = sid("bargein2");
    let audio = RecordingAudio::new();
    let handle = w.handler.create_session(id.clone(), "consultation-bargein2".into(), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = w.realtime.session(2).await;
    s.emit(RealtimeEvent::AgentItemStarted { response_id: None, item_id: "b1".into() }).await;
    s.emit(RealtimeEvent::AgentAudio { item_id: "b1".into(), pcm: vec![500i16; 48_000].into(), received: std::time::Instant::now() }).await;
    s.emit(RealtimeEvent::AgentTranscriptDone { item_id: "b1".into(), text: text.into() }).await;
    wait_until("audio queued", || audio.played_samples.load(Ordering::SeqCst) == 48_000).await;
    audio.heard_ms.store(1_000, Ordering::SeqCst);
    audio.playing.store(true, Ordering::SeqCst);
    s.emit(RealtimeEvent::SpeechStarted { item_id: None, audio_start_ms: 0 }).await;
    s.emit(RealtimeEvent::ResponseDone { response_id: None, status: ResponseStatus::Cancelled, reason: None, usage: None }).await;
    let stored = wait_messages(&w.store, &id, 1).await;
    assert!(stored[0].interrupted);
    assert!(text.starts_with(&stored[0].text) && stored[0].text.len() < text.len() && !stored[0].text.is_empty(), "{:?}", stored[0].text);
}

/// The model speaks faster than the caller hears: its response.done comes while the answer
/// still plays. A caller who cuts in after that heard only part of it: that part is stored,
/// the model is told (truncate), and an answer heard to its end is stored whole. Found by the
/// fault soak (tests/soak.rs).
#[tokio::test]
async fn a_barge_in_after_the_answer_was_generated_keeps_only_what_was_heard() {
    let w = world(settings()).await;
    let id = sid("fast-model");
    let audio = RecordingAudio::new();
    let handle = w.handler.create_session(id.clone(), "consultation-fast-model".into(), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = w.realtime.session(1).await;
    let text = "раз два три четыре пять шесть семь восемь";
    audio.playing.store(true, Ordering::SeqCst);
    s.agent_says("a1", text, 2000).await;
    wait_until("audio queued", || audio.played_samples.load(Ordering::SeqCst) == 48_000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(w.store.load_messages(&id).await.unwrap().is_empty(), "the answer is still being heard");
    audio.heard_ms.store(1000, Ordering::SeqCst);
    s.user_says("u1", "Подождите").await;
    let stored = wait_messages(&w.store, &id, 2).await;
    assert_eq!((stored[0].role, stored[0].text.as_str(), stored[0].interrupted), (Role::Assistant, "раз два три четыре", true));
    assert_eq!((stored[1].role, stored[1].text.as_str()), (Role::User, "Подождите"));
    let truncates: Vec<_> = s.commands().into_iter().filter(|c| matches!(c, RealtimeCommand::Truncate { .. })).collect();
    assert_eq!(truncates, vec![RealtimeCommand::Truncate { item_id: "a1".into(), content_index: 0, audio_end_ms: 1000 }]);

    // Heard to its end: stored whole once the output falls quiet.
    audio.playing.store(true, Ordering::SeqCst);
    s.agent_says("a2", "Слушаю вас внимательно.", 500).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.store.load_messages(&id).await.unwrap().len(), 2, "still being heard");
    audio.playing.store(false, Ordering::SeqCst);
    let stored = wait_messages(&w.store, &id, 3).await;
    assert_eq!((stored[2].text.as_str(), stored[2].interrupted), ("Слушаю вас внимательно.", false));
    w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
}

/// The socket drops mid-answer while what was received still plays; after the reconnect the
/// caller cuts in: the answer is what they heard of it, and the new session was told the
/// answer as far as it had been said. Found by the fault soak (tests/soak.rs).
#[tokio::test]
async fn an_answer_cut_by_a_drop_then_by_the_caller_is_what_was_heard() {
    let w = world(settings()).await;
    let id = sid("drop-then-cut");
    let audio = RecordingAudio::new();
    let handle = w.handler.create_session(id.clone(), "consultation-drop-then-cut".into(), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s1 = w.realtime.session(1).await;
    let text = "раз два три четыре пять шесть семь восемь";
    audio.playing.store(true, Ordering::SeqCst);
    s1.emit(RealtimeEvent::ResponseStarted { response_id: "r1".into() }).await;
    s1.emit(RealtimeEvent::AgentItemStarted { response_id: Some("r1".into()), item_id: "a1".into() }).await;
    s1.emit(RealtimeEvent::AgentAudio { item_id: "a1".into(), pcm: vec![500i16; 48_000].into(), received: std::time::Instant::now() }).await;
    s1.emit(RealtimeEvent::AgentTranscriptDelta { item_id: "a1".into(), delta: text.into() }).await;
    s1.drop_connection("connection reset by peer").await;
    let s2 = w.realtime.session(2).await;
    let replayed: Vec<_> = s2.setup.history.iter().map(|m| (m.role, m.text.as_str(), m.interrupted)).collect();
    assert_eq!(replayed, vec![(Role::Assistant, text, true)]);
    assert!(w.store.load_messages(&id).await.unwrap().is_empty(), "the caller is still hearing it");
    audio.heard_ms.store(1000, Ordering::SeqCst);
    s2.user_says("u1", "Стоп").await;
    let stored: Vec<_> = wait_messages(&w.store, &id, 2).await.into_iter().map(|m| (m.role, m.text, m.interrupted)).collect();
    assert_eq!(stored, vec![(Role::Assistant, "раз два три четыре".to_owned(), true), (Role::User, "Стоп".to_owned(), false)]);
    w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
}

/// A response that failed (a provider rate limit) is asked for again, but not once the caller
/// has spoken and been answered meanwhile: that retry would make the agent speak twice in a
/// row (the greeting after the first answer, in the soak). Found by the fault soak.
#[tokio::test]
async fn a_failed_response_is_not_retried_once_another_answer_came() {
    let w = world(settings()).await;
    let id = sid("moot-retry");
    let handle = w.handler.create_session(id.clone(), "consultation-moot-retry".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = w.realtime.session(1).await;
    let failed = |id: &str| RealtimeEvent::ResponseDone { response_id: Some(id.into()), status: ResponseStatus::Failed, reason: Some("inference_rate_limit_exceeded".into()), usage: None };
    let creates = |s: &consultant_fakes::memory::ScriptedSession| s.commands().into_iter().filter(|c| matches!(c, RealtimeCommand::CreateResponse { .. })).count();
    assert_eq!(creates(&s), 1, "the greeting is asked for");
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r0".into() }).await;
    s.emit(failed("r0")).await;
    // The caller speaks before the retry is due, and the service answers them.
    s.user_says("u1", "Меня зовут Олег").await;
    s.agent_says("a1", "Очень приятно, Олег.", 100).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(creates(&s), 0, "no second answer for the failed one");

    // Nothing came after a failure: it is asked for again.
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r2".into() }).await;
    s.emit(failed("r2")).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(creates(&s), 1);
    w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
}

#[tokio::test]
async fn a_late_user_transcript_keeps_the_dialogue_in_order() {
    let w = world(settings()).await;
    let id = sid("late");
    let handle = w.handler.create_session(id.clone(), "consultation-late".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = w.realtime.session(1).await;
    s.emit(RealtimeEvent::UserItemCommitted { item_id: "u1".into() }).await;
    s.agent_says("a1", "Понял вас.", 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(w.store.load_messages(&id).await.unwrap().is_empty(), "the answer waits for the question's transcript");
    s.emit(RealtimeEvent::UserTranscript { item_id: "u1".into(), text: "Мне нужен сайт".into() }).await;
    let stored = wait_messages(&w.store, &id, 2).await;
    assert_eq!((stored[0].role, stored[0].text.as_str()), (Role::User, "Мне нужен сайт"));
    assert_eq!(stored[1].role, Role::Assistant);
    w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
}

/// On tokio's paused clock: the 30-minute default limit passes in no time.
#[tokio::test(start_paused = true)]
async fn the_time_limit_brings_a_wrap_up_then_a_goodbye_then_the_end() {
    let s = settings();
    assert_eq!((s.max_duration, s.wrapup_before), (Duration::from_secs(1800), Duration::from_secs(120)));
    let w = paused_world(s).await;
    let id = sid("timer");
    let handle = w.handler.create_session(id.clone(), "consultation-timer".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let rt = w.realtime.session(1).await;
    let started = tokio::time::Instant::now();
    let mut seen = Vec::new();
    let goodbye = |c: &RealtimeCommand| matches!(c, RealtimeCommand::CreateResponse { instructions: Some(i) } if i.contains("попрощайся"));
    let wrapup = |c: &RealtimeCommand| matches!(c, RealtimeCommand::UpdateInstructions(i) if i.contains("подходит к концу"));
    let mut wrapup_at = None;
    while !seen.iter().any(goodbye) {
        assert!(started.elapsed() < Duration::from_secs(1900), "no goodbye by {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.extend(rt.commands());
        if wrapup_at.is_none() && seen.iter().any(wrapup) {
            wrapup_at = Some(started.elapsed());
        }
    }
    let (wrapup_at, goodbye_at) = (wrapup_at.expect("a wrap-up instruction before the goodbye"), started.elapsed());
    assert!(wrapup_at >= Duration::from_secs(1679) && wrapup_at < Duration::from_secs(1682), "wrap-up at {wrapup_at:?}");
    assert!(goodbye_at >= Duration::from_secs(1799) && goodbye_at < Duration::from_secs(1802), "goodbye at {goodbye_at:?}");
    rt.agent_says("bye", "Спасибо, всего доброго!", 100).await;
    let outcome = handle.wait_finished().await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Completed);
    assert_eq!(outcome.dialogue.last().unwrap().text, "Спасибо, всего доброго!");
}

#[tokio::test]
async fn session_ids_must_be_unique_among_running_consultations() {
    let w = world(settings()).await;
    let id = sid("dup");
    let _h = w.handler.create_session(id.clone(), "consultation-dup".into(), RecordingAudio::new()).await.unwrap();
    let err = w.handler.create_session(id.clone(), "consultation-dup".into(), RecordingAudio::new()).await.err().unwrap();
    assert!(err.to_string().contains("already running"), "{err}");
}

/// Runs in a child process (see `sigkill_mid_dialogue_loses_no_logged_message`): a consultation
/// that keeps talking until it is killed. Each durable message is logged as DIALOGUE_MESSAGE
/// on stdout.
#[tokio::test]
async fn crash_child() {
    let Ok(db) = std::env::var("CONSULTANT_CRASH_CHILD_DB") else { return };
    tracing_subscriber::fmt().with_writer(std::io::stdout).with_ansi(false).init();
    let store = Arc::new(SqliteStore::open(std::path::Path::new(&db), "normal").unwrap());
    let realtime = ScriptedRealtime::new();
    let ports = Ports { connector: realtime.clone(), store, extractor: CountingExtractor::new() };
    let handler = VoiceHandler::start(Arc::new(settings()), ports, Telemetry::new()).await.unwrap();
    let handle = handler.create_session(sid("crashy"), "consultation-crashy".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = realtime.session(1).await;
    for i in 1.. {
        s.user_says(&format!("u{i}"), &format!("Сообщение клиента {i}")).await;
        s.agent_says(&format!("a{i}"), &format!("Ответ {i}"), 20).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sigkill_mid_dialogue_loses_no_logged_message() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("CONSULTANT_CRASH_CHILD_DB", &db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut logged = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.contains("DIALOGUE_MESSAGE") {
            let seq: u32 = line.split("seq=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
            logged.push(seq);
            if logged.len() == 9 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush, no finalize.
    let _ = std::process::Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
    assert_eq!(logged.len(), 9, "the child logged its messages");

    let store = Arc::new(SqliteStore::open(&db, "normal").unwrap());
    let id = sid("crashy");
    let before = store.load_messages(&id).await.unwrap();
    for seq in &logged {
        assert!(before.iter().any(|m| m.seq == *seq), "message {seq} was logged as DIALOGUE_MESSAGE but is not in SQLite");
    }
    let extractor = CountingExtractor::new();
    let ports = Ports { connector: ScriptedRealtime::new(), store: store.clone(), extractor: extractor.clone() };
    let handler = VoiceHandler::start(Arc::new(settings()), ports, Telemetry::new()).await.unwrap();
    let recovered = handler.sweep_orphans(None).await.unwrap().finalized;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].status, SessionStatus::Interrupted);
    let detail = store.session_detail(&id).await.unwrap();
    assert_eq!(detail.record.status, SessionStatus::Interrupted);
    assert!(detail.record.ended_at.is_some());
    assert_eq!(detail.messages.len(), before.len());
    assert!(detail.anketa_history.last().unwrap().is_final);
    assert_eq!(detail.anketa.0["client_name"], "Сообщение клиента 1");
    assert_eq!(extractor.calls.load(Ordering::SeqCst), 1);
    // Running recovery again finds nothing left open.
    assert!(handler.sweep_orphans(None).await.unwrap().finalized.is_empty());
}

/// A store whose writes fail while `broken` is set (a full disk), delegating to SQLite.
struct FlakyStore {
    inner: Arc<SqliteStore>,
    broken: std::sync::atomic::AtomicBool,
    /// Only anketa writes fail (and are counted).
    anketas_broken: std::sync::atomic::AtomicBool,
    anketa_failures: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl DialogueStore for FlakyStore {
    async fn open_session(&self, r: &consultant_actors::ports::SessionRecord) -> Result<(), consultant_actors::ports::StoreError> {
        self.inner.open_session(r).await
    }
    async fn append_message(&self, id: &SessionId, m: &DialogueMessage) -> Result<(), consultant_actors::ports::StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(consultant_actors::ports::StoreError::Io("database or disk is full".into()));
        }
        self.inner.append_message(id, m).await
    }
    async fn set_status(&self, id: &SessionId, s: SessionStatus, f: Option<&str>, e: Option<chrono::DateTime<chrono::Utc>>) -> Result<(), consultant_actors::ports::StoreError> {
        self.inner.set_status(id, s, f, e).await
    }
    async fn save_anketa(&self, id: &SessionId, r: &consultant_actors::ports::AnketaRecord) -> Result<(), consultant_actors::ports::StoreError> {
        if self.anketas_broken.load(Ordering::SeqCst) && !r.is_final {
            self.anketa_failures.fetch_add(1, Ordering::SeqCst);
            return Err(consultant_actors::ports::StoreError::Io("database or disk is full".into()));
        }
        self.inner.save_anketa(id, r).await
    }
    async fn sessions_with_status(&self, s: SessionStatus) -> Result<Vec<consultant_actors::ports::SessionRecord>, consultant_actors::ports::StoreError> {
        self.inner.sessions_with_status(s).await
    }
    async fn load_messages(&self, id: &SessionId) -> Result<Vec<DialogueMessage>, consultant_actors::ports::StoreError> {
        self.inner.load_messages(id).await
    }
    async fn latest_anketa(&self, id: &SessionId) -> Result<Option<consultant_actors::ports::AnketaRecord>, consultant_actors::ports::StoreError> {
        self.inner.latest_anketa(id).await
    }
    async fn claim_orphans(&self) -> Result<Vec<consultant_actors::ports::SessionRecord>, consultant_actors::ports::StoreError> {
        self.inner.claim_orphans().await
    }
    async fn session(&self, id: &SessionId) -> Result<Option<consultant_actors::ports::StoredSession>, consultant_actors::ports::StoreError> {
        self.inner.session(id).await
    }
}

#[tokio::test]
async fn a_full_disk_loses_no_message_and_does_not_end_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("c.db"), "normal").unwrap());
    let store = Arc::new(FlakyStore { inner: sqlite.clone(), broken: false.into(), anketas_broken: false.into(), anketa_failures: 0.into() });
    let realtime = ScriptedRealtime::new();
    let mut s = settings();
    s.restart.max_restarts = 2;
    s.restart.backoff_max = Duration::from_millis(100);
    let ports = Ports { connector: realtime.clone(), store: store.clone(), extractor: CountingExtractor::new() };
    let handler = VoiceHandler::start(Arc::new(s), ports, Telemetry::new()).await.unwrap();
    let id = sid("diskfull");
    let handle = handler.create_session(id.clone(), "consultation-diskfull".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let rt = realtime.session(1).await;
    rt.user_says("u1", "Первое").await;
    wait_messages(&sqlite, &id, 1).await;
    store.broken.store(true, Ordering::SeqCst);
    for i in 2..=5 {
        rt.user_says(&format!("u{i}"), &format!("Сообщение {i}")).await;
    }
    // Well past the restart intensity: the call is still going.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(handler.get(&id).await.is_some(), "the consultation survived a failing disk");
    store.broken.store(false, Ordering::SeqCst);
    let stored = wait_messages(&sqlite, &id, 5).await;
    assert_eq!(stored.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["Первое", "Сообщение 2", "Сообщение 3", "Сообщение 4", "Сообщение 5"]);
    let outcome = handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Completed);
}

/// The disk is full just as the call ends: finalize retries until it can write, so every
/// message and the final anketa are stored and the session is closed. Before, the dialogue was
/// dropped after one failed write and the session left open. Found by the fault soak.
#[tokio::test]
async fn a_disk_full_at_the_end_of_the_call_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("c.db"), "normal").unwrap());
    let store = Arc::new(FlakyStore { inner: sqlite.clone(), broken: false.into(), anketas_broken: false.into(), anketa_failures: 0.into() });
    let realtime = ScriptedRealtime::new();
    let ports = Ports { connector: realtime.clone(), store: store.clone(), extractor: CountingExtractor::new() };
    let handler = VoiceHandler::start(Arc::new(settings()), ports, Telemetry::new()).await.unwrap();
    let id = sid("fullatend");
    let handle = handler.create_session(id.clone(), "consultation-fullatend".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let rt = realtime.session(1).await;
    rt.user_says("u1", "Меня зовут Олег").await;
    wait_messages(&sqlite, &id, 1).await;
    store.broken.store(true, Ordering::SeqCst);
    rt.agent_says("a1", "Очень приятно.", 100).await;
    rt.user_says("u2", "До свидания").await;
    let heal = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            store.broken.store(false, Ordering::SeqCst);
        })
    };
    let outcome = handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    heal.await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Completed);
    let stored: Vec<_> = sqlite.load_messages(&id).await.unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(stored, ["Меня зовут Олег", "Очень приятно.", "До свидания"]);
    let detail = sqlite.session_detail(&id).await.unwrap();
    assert_eq!(detail.record.status, SessionStatus::Completed);
    assert_eq!(detail.anketa_history.iter().filter(|a| a.is_final).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_connect_shows_as_reconnecting_until_the_restart() {
    let mut s = settings();
    s.connect.attempts = 1;
    s.restart.backoff_initial = Duration::from_secs(3);
    // Paused time needs a store that never waits on a blocking thread (the clock would jump).
    let w = paused_world(s).await;
    w.realtime.fail_connects.store(1000, Ordering::SeqCst);
    let id = sid("relink");
    let _handle = w.handler.create_session(id.clone(), "consultation-relink".into(), RecordingAudio::new()).await.unwrap();
    wait_until("restart scheduled", || {
        w.telemetry.snapshot().events.iter().any(|e| e.kind == "restart" && e.path.ends_with("relink/realtime"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let link = w.telemetry.consultation(&id).unwrap().realtime.link;
    assert_eq!(link, RealtimeLinkState::Reconnecting { attempt: 1 }, "a late notice of the failed attempt must not hide the restart");
}

/// A periodic anketa that cannot be stored while Persistence fails and restarts is re-sent to
/// the restarted actor and stored once; the extraction for that dialogue length runs once,
/// however many times the re-sent messages are confirmed.
#[tokio::test]
async fn a_periodic_anketa_survives_persistence_restarts_and_is_extracted_once() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("c.db"), "normal").unwrap());
    let store = Arc::new(FlakyStore { inner: sqlite.clone(), broken: false.into(), anketas_broken: true.into(), anketa_failures: 0.into() });
    let realtime = ScriptedRealtime::new();
    let extractor = CountingExtractor::new();
    let mut s = settings();
    s.restart.max_restarts = 2;
    s.restart.backoff_max = Duration::from_millis(50);
    let ports = Ports { connector: realtime.clone(), store: store.clone(), extractor: extractor.clone() };
    let handler = VoiceHandler::start(Arc::new(s), ports, Telemetry::new()).await.unwrap();
    let id = sid("anketa-restart");
    let handle = handler.create_session(id.clone(), "consultation-anketa-restart".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let rt = realtime.session(1).await;
    for i in 1..=3 {
        rt.user_says(&format!("u{i}"), &format!("Сообщение клиента {i}")).await;
        rt.agent_says(&format!("a{i}"), &format!("Ответ {i}"), 20).await;
    }
    wait_messages(&sqlite, &id, 6).await;
    // The anketa for 6 messages was extracted; storing it fails, Persistence restarts (past its
    // intensity too) and gets it again each time.
    wait_until("several failed anketa writes", || store.anketa_failures.load(Ordering::SeqCst) >= 4).await;
    store.anketas_broken.store(false, Ordering::SeqCst);
    let periodic = |h: &[consultant_actors::ports::AnketaRecord]| h.iter().filter(|a| !a.is_final && a.message_count == 6).count();
    for _ in 0..400 {
        if periodic(&sqlite.session_detail(&id).await.unwrap().anketa_history) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    assert_eq!(outcome.status, SessionStatus::Completed);
    let history = sqlite.session_detail(&id).await.unwrap().anketa_history;
    assert_eq!(periodic(&history), 1, "the periodic anketa is stored exactly once: {history:?}");
    assert_eq!(history.iter().filter(|a| a.is_final).count(), 1);
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(*extractor.seen.lock().unwrap(), vec![6, 6], "one periodic extraction at 6 messages, then the final one");
}

/// The proactive recycle never cuts the caller mid-phrase: while the caller speaks (speech
/// started, not stopped) the session is kept past its recycle time (a standby may be prepared,
/// it is not switched to); once the turn is answered and everyone is quiet the call moves to a
/// session that replays the whole turn.
#[tokio::test(start_paused = true)]
async fn the_realtime_recycle_waits_for_the_caller_to_finish_speaking() {
    let mut s = settings();
    s.realtime_recycle_after = Some(Duration::from_secs(5));
    let w = paused_world(s).await;
    let id = sid("recycle");
    let handle = w.handler.create_session(id.clone(), "consultation-recycle".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let rt = w.realtime.session(1).await;
    let switched = |w: &PausedWorld| w.telemetry.snapshot().events.iter().filter(|e| e.kind == "rollover" && e.message.contains("switched")).count();
    rt.emit(RealtimeEvent::SpeechStarted { item_id: Some("u1".into()), audio_start_ms: 0 }).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(switched(&w), 0, "switched sessions while the caller was speaking");
    rt.emit(RealtimeEvent::SpeechStopped { item_id: Some("u1".into()), audio_end_ms: 9000 }).await;
    rt.emit(RealtimeEvent::UserItemCommitted { item_id: "u1".into() }).await;
    rt.emit(RealtimeEvent::UserTranscript { item_id: "u1".into(), text: "Длинная фраза клиента".into() }).await;
    rt.agent_says("a1", "Понятно.", 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(switched(&w), 1);
    let taken_over = w.realtime.session(w.realtime.connections()).await;
    assert_eq!(taken_over.setup.history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["Длинная фраза клиента", "Понятно."]);
    let outcome = w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    assert_eq!(outcome.dialogue.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["Длинная фраза клиента", "Понятно."]);
}

/// Make-before-break rollover: past the recycle time a standby session is opened with the
/// dialogue replayed; while the caller speaks nothing changes; a standby made stale by new
/// messages is replaced; at the first quiet moment the caller's audio moves to the standby
/// from one frame to the next: every frame reaches exactly one session, in order.
/// A session that fails while an answer is still being heard does not hand over to its
/// standby, which was configured before that answer and would never learn it: the restart
/// replays it.
#[tokio::test(start_paused = true)]
async fn a_session_failing_while_an_answer_plays_is_replaced_by_one_that_knows_the_answer() {
    let mut s = settings();
    s.realtime_recycle_after = Some(Duration::from_secs(5));
    let w = paused_world(s).await;
    let id = sid("standby-stale");
    let audio = RecordingAudio::new();
    let handle = w.handler.create_session(id.clone(), "consultation-standby-stale".into(), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let first = w.realtime.session(1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    audio.playing.store(true, Ordering::SeqCst);
    first.agent_says("a1", "Обычно две недели.", 3000).await;
    // Past the recycle time a standby opens; it cannot take over while the answer plays.
    let standby = w.realtime.session(2).await;
    assert!(standby.setup.history.is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.drop_connection("connection reset by peer").await;
    let next = w.realtime.session(3).await;
    let replayed: Vec<_> = next.setup.history.iter().map(|m| (m.text.as_str(), m.interrupted)).collect();
    assert_eq!(replayed, vec![("Обычно две недели.", false)]);
}

#[tokio::test(start_paused = true)]
async fn the_realtime_session_rolls_over_make_before_break_without_losing_a_frame() {
    let mut s = settings();
    s.realtime_recycle_after = Some(Duration::from_secs(5));
    let w = paused_world(s).await;
    let id = sid("rollover");
    let handle = w.handler.create_session(id.clone(), "consultation-rollover".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let first = w.realtime.session(1).await;
    let mut frames = 0i16;
    let mut feed = |n: usize| {
        for _ in 0..n {
            frames += 1;
            w.handler.process_user_audio(&handle, Arc::from(vec![frames; 480]));
        }
    };
    let frames_of = |session: &consultant_fakes::memory::ScriptedSession| -> Vec<i16> {
        session.commands().iter().filter_map(|c| if let RealtimeCommand::AppendAudio(p) = c { Some(p[0]) } else { None }).collect()
    };
    let mut heard = Vec::new();
    // 4 s of audio, then the caller starts a phrase that runs past the recycle time.
    for _ in 0..200 {
        feed(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.emit(RealtimeEvent::SpeechStarted { item_id: Some("u1".into()), audio_start_ms: 4000 }).await;
    for _ in 0..200 {
        feed(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let standby = w.realtime.session(2).await;
    assert!(standby.setup.history.is_empty(), "the standby replays the dialogue as it was");
    heard.extend(frames_of(&first));
    assert_eq!(heard.len(), 400, "mid-phrase every frame still goes to the current session");
    // The turn ends and is answered: the standby is stale, a fresh one replays both messages.
    first.emit(RealtimeEvent::SpeechStopped { item_id: Some("u1".into()), audio_end_ms: 8000 }).await;
    first.emit(RealtimeEvent::UserItemCommitted { item_id: "u1".into() }).await;
    first.emit(RealtimeEvent::UserTranscript { item_id: "u1".into(), text: "Расскажите о сроках".into() }).await;
    first.agent_says("a1", "Обычно две недели.", 100).await;
    let fresh = w.realtime.session(3).await;
    assert_eq!(fresh.setup.history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["Расскажите о сроках", "Обычно две недели."]);
    for _ in 0..200 {
        feed(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (old_commands, after) = (first.commands(), frames_of(&fresh));
    heard.extend(old_commands.iter().filter_map(|c| if let RealtimeCommand::AppendAudio(p) = c { Some(p[0]) } else { None }));
    assert!(matches!(old_commands.last(), Some(RealtimeCommand::Close)), "the old session is closed after the switch");
    assert!(after.len() >= 100, "the caller's audio moved to the new session ({} frames)", after.len());
    heard.extend(after);
    assert!(frames_of(&standby).is_empty(), "the stale standby never got caller audio");
    assert_eq!(heard, (1..=frames).collect::<Vec<_>>(), "every caller frame reached exactly one session, in order");
    let events = w.telemetry.snapshot().events;
    assert!(events.iter().any(|e| e.kind == "rollover" && e.message.contains("switched")), "{events:?}");
    assert_eq!(w.realtime.connections(), 3);
    let outcome = w.handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    assert_eq!(outcome.dialogue.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["Расскажите о сроках", "Обычно две недели."]);
}
