//! A consultation its worker left open (the worker died mid-call, the caller stayed) is taken
//! up by a new job for the same session: the stored dialogue goes on with its numbering, the
//! realtime session hears it replayed, the agent says the line dropped instead of greeting,
//! the anketa and the timer continue, and the console shows where it came from.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use consultant_actors::anketa::{AnketaField, FieldKind};
use consultant_actors::consultation::{EndReason, Ports};
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{AnketaRecord, DialogueStore, RealtimeCommand, SessionRecord};
use consultant_actors::session::SessionStatus;
use consultant_actors::settings::ConsultationSettings;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::VoiceHandler;
use consultant_fakes::memory::{CountingExtractor, MemoryStore, RecordingAudio, ScriptedRealtime};

fn settings() -> ConsultationSettings {
    let field = |name: &str, kind| AnketaField { name: name.into(), description: name.into(), kind, required: true };
    let mut s = ConsultationSettings::for_tests(vec![field("client_name", FieldKind::Text), field("messages_seen", FieldKind::Number)]);
    s.connect.first_retry = Duration::from_millis(10);
    s
}

const BEFORE: [(Role, &str); 6] = [
    (Role::Assistant, "Здравствуйте! Как вас зовут?"),
    (Role::User, "Анна"),
    (Role::Assistant, "Очень приятно, Анна. Чем могу помочь?"),
    (Role::User, "Нужен сайт для пекарни"),
    (Role::Assistant, "Какой у вас бюджет?"),
    (Role::User, "Около ста тысяч"),
];

async fn left_open_by_a_dead_worker(store: &MemoryStore, id: &SessionId, started_at: chrono::DateTime<Utc>) {
    let record = SessionRecord { session_id: id.clone(), room: format!("consultation-{id}"), status: SessionStatus::Active, started_at, ended_at: None, failure: None };
    store.open_session(&record).await.unwrap();
    for (i, (role, text)) in BEFORE.iter().enumerate() {
        let m = DialogueMessage { seq: i as u32 + 1, role: *role, text: (*text).into(), at: started_at, interrupted: false };
        store.append_message(id, &m).await.unwrap();
    }
    let mut anketa = consultant_actors::anketa::Anketa::default();
    anketa.0.insert("client_name".into(), serde_json::json!("Анна"));
    anketa.0.insert("messages_seen".into(), serde_json::json!(6));
    let snapshot = AnketaRecord { anketa, provenance: Default::default(), message_count: 6, is_final: false, at: started_at };
    store.save_anketa(id, &snapshot).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_new_job_for_a_session_left_open_resumes_it_where_it_was() {
    let realtime = ScriptedRealtime::new();
    let store = Arc::new(MemoryStore::default());
    let extractor = CountingExtractor::new();
    let ports = Ports { connector: realtime.clone(), store: store.clone(), extractor: extractor.clone() };
    let settings = settings();
    let telemetry = Telemetry::new();
    let handler = VoiceHandler::start(Arc::new(settings.clone()), ports, telemetry.clone()).await.unwrap();
    let id = SessionId::parse("resumed").unwrap();
    let started_at = Utc::now() - chrono::Duration::minutes(10);
    left_open_by_a_dead_worker(&store, &id, started_at).await;

    let handle = handler.create_session(id.clone(), format!("consultation-{id}"), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = realtime.session(1).await;
    // The realtime session hears the whole stored dialogue before anything is said.
    let replayed: Vec<(Role, String)> = s.setup.history.iter().map(|m| (m.role, m.text.clone())).collect();
    let stored: Vec<(Role, String)> = BEFORE.iter().map(|(r, t)| (*r, (*t).to_owned())).collect();
    assert_eq!(replayed, stored);
    // Not greeted again: the line dropped, and the talk goes on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = s.commands().into_iter().find_map(|c| match c {
        RealtimeCommand::CreateResponse { instructions } => Some(instructions),
        _ => None,
    });
    assert_eq!(first, Some(Some(settings.resume_instruction.clone())));
    let view = telemetry.consultation(&id).expect("on the board");
    assert_eq!(view.resumed_from.as_deref(), Some("an earlier process"));
    assert_eq!(view.started_at, started_at, "the timer runs from the original start");
    assert_eq!(telemetry.worker().resumed_consultations, 1);

    s.agent_says("a7", "Связь восстановилась. Итак, бюджет около ста тысяч.", 100).await;
    s.user_says("u8", "Да, и нужно успеть за месяц").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    handler.end_session(&id, EndReason::CallerLeft).await.unwrap();

    // One dialogue, in order, nothing lost or repeated; the numbering went on.
    let all = store.load_messages(&id).await.unwrap();
    let got: Vec<(u32, Role, String)> = all.iter().map(|m| (m.seq, m.role, m.text.clone())).collect();
    let mut want: Vec<(u32, Role, String)> = BEFORE.iter().enumerate().map(|(i, (r, t))| (i as u32 + 1, *r, (*t).to_owned())).collect();
    want.push((7, Role::Assistant, "Связь восстановилась. Итак, бюджет около ста тысяч.".into()));
    want.push((8, Role::User, "Да, и нужно успеть за месяц".into()));
    assert_eq!(got, want);
    // The final anketa comes from the whole dialogue, before and after the resume.
    let last = store.latest_anketa(&id).await.unwrap().expect("a final anketa");
    assert!(last.is_final);
    assert_eq!(last.anketa.0.get("messages_seen"), Some(&serde_json::json!(8)));
    assert_eq!(last.anketa.0.get("client_name"), Some(&serde_json::json!("Анна")));
    let record = store.session(&id).await.unwrap().unwrap().record;
    assert_eq!((record.status, record.started_at), (SessionStatus::Completed, started_at));
}

#[tokio::test(start_paused = true)]
async fn a_finished_session_is_not_resumed() {
    let realtime = ScriptedRealtime::new();
    let store = Arc::new(MemoryStore::default());
    let ports = Ports { connector: realtime.clone(), store: store.clone(), extractor: CountingExtractor::new() };
    let settings = settings();
    let handler = VoiceHandler::start(Arc::new(settings.clone()), ports, Telemetry::new()).await.unwrap();
    let id = SessionId::parse("finished").unwrap();
    left_open_by_a_dead_worker(&store, &id, Utc::now()).await;
    store.set_status(&id, SessionStatus::Completed, None, Some(Utc::now())).await.unwrap();
    let handle = handler.create_session(id.clone(), "consultation-finished".into(), RecordingAudio::new()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = realtime.session(1).await;
    assert!(s.setup.history.is_empty(), "a finished consultation starts over, it is not continued");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.commands().contains(&RealtimeCommand::CreateResponse { instructions: Some(settings.greeting_instruction.clone()) }));
    handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
}
