//! The remote debug console over a real socket: a VoiceHandler with in-memory realtime and
//! extractor ports and the SQLite store, consultations in different states, the console
//! server in front, and the real client, CLI binary and TUI (in tmux) attached to it.

#[path = "console_ports/mod.rs"]
mod ports;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use consultant::config::{ConsoleConfig, LoggingConfig};
use consultant::console::client::{ClientError, ConsoleClient};
use consultant::console::protocol::{Action, Command, ConsoleModel, ServerFrame, Snapshot};
use consultant::console::{serve_with, ConsoleControl, ConsoleOptions, ConsoleServer};
use consultant::logging::LevelControl;
use consultant::secret::Secret;
use consultant::store::SqliteStore;
use consultant_actors::consultation::Ports;
use consultant_actors::handler::{ConsultationHandle, HandlerError, StartError};
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{ConsultationSettings, SessionId, SessionStatus, VoiceHandler};
use futures_util::{SinkExt as _, StreamExt as _};
use ports::{NameExtractor, SilentAudio, TestConnector};
use tokio_tungstenite::tungstenite::Message;

const READ_TOKEN: &str = "ro-test-token-0123456789";
const OPERATOR_TOKEN: &str = "op-test-token-9876543210";

/// The process-wide logger (installed once): its level control and log file.
fn logging() -> &'static (LevelControl, PathBuf) {
    static LOG: OnceLock<(LevelControl, PathBuf)> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("consultant-console-test-{}", std::process::id()));
        let config = LoggingConfig {
            level: "info".into(),
            dir: dir.clone(),
            file: "agent.log".into(),
            max_file_bytes: 50_000_000,
            max_files: 1,
            json: false,
        };
        let guard = consultant::logging::init(&config, false).expect("logging starts");
        let level = guard.level.clone();
        // The file writer must live as long as the process.
        Box::leak(Box::new(guard));
        (level, dir.join("agent.log"))
    })
}

struct Worker {
    handler: VoiceHandler,
    store: Arc<SqliteStore>,
    connector: Arc<TestConnector>,
    extractor: Arc<NameExtractor>,
    telemetry: Telemetry,
    server: ConsoleServer,
    drained: Arc<AtomicBool>,
    handles: Vec<ConsultationHandle>,
    _dir: tempfile::TempDir,
}

fn settings() -> ConsultationSettings {
    let mut s = ConsultationSettings::for_tests(ports::fields());
    // A failed realtime actor waits a minute before its restart: it stays "restarting".
    s.restart.backoff_initial = Duration::from_secs(60);
    s.restart.backoff_max = Duration::from_secs(60);
    s.connect.attempts = 1;
    s.connect.timeout = Duration::from_secs(300);
    s
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

/// A worker with three consultations: `active-1` (connected, one exchange done),
/// `failing-1` (realtime mid-restart), `hanging-1` (still connecting).
async fn worker_with(max_clients: usize, options: ConsoleOptions) -> Worker {
    let (level, _) = logging();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("consultant.db"), "normal").unwrap());
    let connector = TestConnector::new();
    let extractor = Arc::new(NameExtractor::default());
    let telemetry = Telemetry::new();
    let ports = Ports { connector: connector.clone(), store: store.clone(), extractor: extractor.clone() };
    let handler = VoiceHandler::start(Arc::new(settings()), ports, telemetry.clone()).await.unwrap();
    let mut handles = Vec::new();
    for id in ["active-1", "failing-1", "hanging-1"] {
        handles.push(handler.create_session(sid(id), format!("consultation-{id}"), Arc::new(SilentAudio)).await.unwrap());
    }
    handles[0].wait_ready().await.unwrap();
    connector.exchange("active-1", 1, "Здравствуйте, меня зовут Иван", "Здравствуйте, Иван! Чем могу помочь?").await;
    let drained = Arc::new(AtomicBool::new(false));
    let hook = drained.clone();
    let control = ConsoleControl::new(&handler, Some(level.clone()), Arc::new(move || hook.store(true, Ordering::SeqCst)));
    let config = ConsoleConfig {
        enabled: true,
        listen: "127.0.0.1:0".into(),
        token: Secret::new(READ_TOKEN),
        operator_token: Secret::new(OPERATOR_TOKEN),
        token_file: dir.path().join("console-tokens.toml"),
        tls_cert: None,
        tls_key: None,
        max_clients,
    };
    let server = serve_with(&config, control, options).await.unwrap();
    let w = Worker { handler, store, connector, extractor, telemetry, server, drained, handles, _dir: dir };
    // Wait until the board shows every state the tests look at.
    eventually("the board shows all three consultations in their states", || {
        let s = w.telemetry.snapshot();
        let restarting = s.actors.iter().any(|a| a.path == "worker/consultation/failing-1/realtime" && a.total_restarts >= 1);
        let exchanged = s.consultations.iter().any(|c| c.session_id.as_str() == "active-1" && c.messages >= 2);
        restarting && exchanged && s.actors.iter().any(|a| a.path == "worker/console")
    })
    .await;
    w
}

async fn worker() -> Worker {
    worker_with(16, ConsoleOptions::default()).await
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(w: &Worker, token: &str) -> ConsoleClient {
    ConsoleClient::connect(&w.server.url(), token).await.unwrap()
}

/// Reads frames until one matches (skipping deltas and events), within `limit`.
async fn wait_for(client: &mut ConsoleClient, limit: Duration, mut pick: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client.next_frame_within(left).await.unwrap_or_else(|e| panic!("no matching frame: {e}"));
        if pick(&frame) {
            return frame;
        }
    }
}

fn error_of(frame: &ServerFrame) -> Option<(&str, &str)> {
    match frame {
        ServerFrame::Error { code, message, .. } => Some((code.as_str(), message.as_str())),
        _ => None,
    }
}

fn rss() -> u64 {
    consultant::console::hub::rss_bytes().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_shows_the_tree_and_consultations_in_their_states() {
    let w = worker().await;
    w.telemetry.worker_update(|v| {
        v.realtime.events_parsed = 120;
        v.realtime.unknown_events = 2;
        v.realtime.unknown_event_types = vec![("response.mystery".into(), 2)];
    });
    let mut client = connect(&w, READ_TOKEN).await;
    let snapshot: Snapshot = client.snapshot().await.unwrap();
    let s = &snapshot.board;

    let actor = |p: &str| s.actors.iter().find(|a| a.path == p).unwrap_or_else(|| panic!("no actor {p} in {:?}", s.actors));
    assert_eq!(actor("worker").kind, "supervisor");
    assert_eq!(actor("worker/console").status.as_str(), "running");
    for child in ["realtime", "persistence", "extraction"] {
        assert_eq!(actor(&format!("worker/consultation/active-1/{child}")).status.as_str(), "running");
    }
    let failing = actor("worker/consultation/failing-1/realtime");
    assert_eq!(failing.status.as_str(), "restarting");
    assert!(failing.total_restarts >= 1 && failing.restarts_in_window >= 1);
    assert!(failing.last_failure.as_deref().unwrap().contains("test upstream refused"), "{failing:?}");

    let c = |id: &str| s.consultations.iter().find(|c| c.session_id.as_str() == id).unwrap();
    let active = c("active-1");
    assert_eq!((active.status.as_str(), active.room.as_str()), ("active", "consultation-active-1"));
    assert_eq!(active.realtime.link_state(), "connected");
    assert_eq!(active.transcript_tail.len(), 2);
    assert_eq!(active.transcript_tail[0].text, "Здравствуйте, меня зовут Иван");
    assert_eq!(active.usage.output_tokens, 45);
    assert_eq!(active.turn_latency_ms.len(), 1);
    assert_eq!(active.anketa_fields, 2);
    assert_eq!(active.max_duration_secs, 1800);
    let failing = c("failing-1");
    assert_eq!(failing.status.as_str(), "starting");
    // Down and waiting for its restart (the board may still show the attempt that failed).
    assert!(failing.realtime.link_state().ends_with("connecting (attempt 1)"), "{:?}", failing.realtime);
    assert!(failing.realtime.last_close_cause.as_deref().unwrap().contains("refused"));
    assert_eq!(c("hanging-1").realtime.link_state(), "connecting (attempt 1)");
    assert!(s.events.iter().any(|e| e.kind == "restart" && e.path == "worker/consultation/failing-1/realtime"));
    assert!(s.worker.rss_bytes > 0, "the worker view carries the process RSS");
    // Tolerated unknown realtime events are counted and shown to operators.
    assert_eq!((s.worker.realtime.events_parsed, s.worker.realtime.unknown_events), (120, 2));
    assert_eq!(s.worker.realtime.unknown_event_types, vec![("response.mystery".to_owned(), 2)]);
    assert_eq!(snapshot.console.clients, 1);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_follow_the_snapshot_and_failures_are_pushed_at_once() {
    let w = worker().await;
    let mut client = connect(&w, READ_TOKEN).await;
    client.send(&Command::Subscribe { topics: None }).await.unwrap();
    let mut model = ConsoleModel::default();
    let snapshot = wait_for(&mut client, Duration::from_secs(5), |f| matches!(f, ServerFrame::Snapshot(_))).await;
    model.apply(&snapshot);
    assert_eq!(model.consultations["active-1"].messages, 2);

    // A failure is pushed as an event, without waiting for the next delta.
    w.handler.create_session(sid("failing-2"), "consultation-failing-2".into(), Arc::new(SilentAudio)).await.unwrap();
    let pushed = wait_for(&mut client, Duration::from_secs(5), |f| {
        model.apply(f);
        matches!(f, ServerFrame::Events { events, .. } if events.iter().any(|e| e.kind == "restart" && e.path.contains("failing-2")))
    })
    .await;
    assert!(matches!(pushed, ServerFrame::Events { .. }));

    // A dialogue change arrives as a consultations delta; the model converges on the board.
    w.connector.exchange("active-1", 2, "Я хочу открыть вклад", "Конечно, расскажу про вклады").await;
    let started = Instant::now();
    wait_for(&mut client, Duration::from_secs(5), |f| {
        model.apply(f);
        model.consultations.get("active-1").is_some_and(|c| c.messages == 4) && model.consultations.contains_key("failing-2")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(3), "deltas come about once a second");
    assert!(model.deltas_applied >= 1);
    assert_eq!(model.actors["worker/consultation/failing-2/realtime"].status.as_str(), "restarting");
    let last = &model.consultations["active-1"].transcript_tail;
    assert_eq!(last.back().unwrap().text, "Конечно, расскажу про вклады");

    // Deltas come at most once per second per topic.
    let window = Instant::now();
    let mut consultation_deltas = 0;
    for turn in 3..8 {
        w.connector.exchange("active-1", turn, "ещё вопрос", "ответ").await;
    }
    while window.elapsed() < Duration::from_millis(2500) {
        match client.next_frame_within(Duration::from_millis(200)).await {
            Ok(ServerFrame::Delta { topic, .. }) if topic == "consultations" => consultation_deltas += 1,
            _ => {}
        }
    }
    assert!((1..=3).contains(&consultation_deltas), "{consultation_deltas} consultation deltas in 2.5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_worker_keeps_serving() {
    let w = worker().await;
    let url = w.server.url();

    let wrong = ConsoleClient::connect(&url, "not-the-token").await.err().unwrap();
    assert!(wrong.is_auth(), "{wrong}");
    assert!(wrong.to_string().contains("token is wrong"), "{wrong}");
    let in_url = ConsoleClient::connect(&format!("{url}/?token={READ_TOKEN}"), READ_TOKEN).await.err().unwrap();
    assert!(in_url.to_string().contains("never accepted in URLs"), "{in_url}");

    // Without a header the first message must authenticate.
    let (mut raw, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    raw.send(Message::text(r#"{"v":1,"type":"auth","token":"guess"}"#)).await.unwrap();
    let reply = raw.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.contains("unauthorized") && reply.contains("token is wrong"), "{reply}");
    let (mut raw, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    raw.send(Message::text(format!(r#"{{"v":1,"type":"auth","token":"{READ_TOKEN}"}}"#))).await.unwrap();
    let hello = raw.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(hello.contains("\"hello\"") && hello.contains("read-only"), "{hello}");

    let mut client = connect(&w, READ_TOKEN).await;
    let cases: [(String, &str, &str); 6] = [
        ("{this is not json".into(), "bad_json", "not valid JSON"),
        (r#"{"v":1,"type":"reboot"}"#.into(), "unknown_command", "unknown command `reboot`"),
        (r#"{"type":"ping"}"#.into(), "bad_request", "missing \"v\""),
        (format!(r#"{{"v":1,"type":"ping","pad":"{}"}}"#, "x".repeat(20_000)), "frame_too_large", "exceeds the 16384-byte limit"),
        (r#"{"v":1,"type":"action","id":7,"action":"drain"}"#.into(), "forbidden", "needs the operator token"),
        (r#"{"v":1,"type":"subscribe","topics":["gossip"]}"#.into(), "bad_request", "unknown topic `gossip`"),
    ];
    for (frame, code, text) in cases {
        client.send_raw(frame).await.unwrap();
        let reply = wait_for(&mut client, Duration::from_secs(5), |f| matches!(f, ServerFrame::Error { .. })).await;
        let (got_code, message) = error_of(&reply).unwrap();
        assert_eq!(got_code, code, "{message}");
        assert!(message.contains(text), "`{message}` should say `{text}`");
        // The same connection keeps working.
        client.send(&Command::Ping { id: Some(1) }).await.unwrap();
        wait_for(&mut client, Duration::from_secs(5), |f| matches!(f, ServerFrame::Pong { id: Some(1) })).await;
    }
    assert!(!w.drained.load(Ordering::SeqCst), "a read-only token must not drain");

    // Past the hard WebSocket limit the connection is closed with the reason.
    client.send_raw(format!(r#"{{"v":1,"type":"ping","pad":"{}"}}"#, "x".repeat(400_000))).await.unwrap();
    let mut saw = String::new();
    loop {
        match client.next_text().await {
            Ok(t) => saw.push_str(&t),
            Err(ClientError::Closed(why)) => {
                saw.push_str(&why);
                break;
            }
            Err(e) => {
                saw.push_str(&e.to_string());
                break;
            }
        }
    }
    assert!(saw.contains("frame_too_large") || saw.contains("too large"), "{saw}");

    let stats = w.server.stats();
    assert!(stats.bad_frames >= 6, "{stats:?}");
    assert!(stats.auth_failures >= 3, "{stats:?}");
    // And the worker still serves.
    let mut again = connect(&w, READ_TOKEN).await;
    assert_eq!(again.snapshot().await.unwrap().board.consultations.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connect_disconnect_cycles_keep_memory_flat() {
    let w = worker().await;
    let cycle = |i: usize| {
        let url = w.server.url();
        async move {
            let mut c = ConsoleClient::connect(&url, READ_TOKEN).await.unwrap();
            c.send(&Command::Subscribe { topics: None }).await.unwrap();
            assert!(matches!(c.next_frame_within(Duration::from_secs(5)).await.unwrap(), ServerFrame::Snapshot(_)));
            if i % 2 == 0 {
                c.close().await;
            } // else: dropped without a close frame
        }
    };
    for i in 0..10 {
        cycle(i).await;
    }
    eventually("warm-up clients gone", || w.server.stats().clients == 0).await;
    let before = rss();
    for i in 0..100 {
        cycle(i).await;
    }
    eventually("all clients gone", || w.server.stats().clients == 0).await;
    let after = rss();
    let growth = after.saturating_sub(before);
    println!("RSS before {} KB, after 100 cycles {} KB, growth {} KB", before / 1024, after / 1024, growth / 1024);
    assert!(growth < 24 * 1024 * 1024, "RSS grew by {growth} bytes over 100 cycles");
    assert!(w.server.stats().connections_total >= 110);
    let mut c = connect(&w, READ_TOKEN).await;
    assert_eq!(c.snapshot().await.unwrap().board.consultations.len(), 3);
}

/// The ConsoleActor is a child of the WorkerSupervisor: the worker's one shutdown path stops it
/// with everything else, and its port closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_supervised_by_the_worker_and_stops_with_it() {
    let w = worker().await;
    let console = w.server.actor();
    let children: Vec<_> = w.handler.supervisor().get_children().iter().map(|c| c.get_id()).collect();
    assert!(children.contains(&console.get_id()), "the console is not under the WorkerSupervisor: {children:?}");
    let addr = w.server.local_addr();
    w.handler.stop().await;
    assert!(w.handler.is_stopped());
    assert_eq!(console.get_status(), ractor::ActorStatus::Stopped);
    eventually("the console's port is closed", || std::net::TcpStream::connect(addr).is_err()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_is_enforced() {
    let w = worker_with(2, ConsoleOptions::default()).await;
    let a = connect(&w, READ_TOKEN).await;
    let _b = connect(&w, READ_TOKEN).await;
    let refused = ConsoleClient::connect(&w.server.url(), READ_TOKEN).await.err().unwrap();
    assert!(matches!(refused, ClientError::Refused { status: 503, .. }), "{refused}");
    assert!(refused.to_string().contains("max_clients"), "{refused}");
    a.close().await;
    eventually("a place is free again", || w.server.stats().clients < 2).await;
    let mut c = connect(&w, READ_TOKEN).await;
    c.snapshot().await.unwrap();
    assert!(w.server.stats().rejected_full >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_counted() {
    let options = ConsoleOptions { client_queue: 4, write_timeout: Duration::from_millis(500), ..Default::default() };
    let w = worker_with(16, options).await;
    // A raw client that subscribes and then never reads.
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(w.server.url()).unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {READ_TOKEN}").parse().unwrap());
    let (mut stuck, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    stuck.send(Message::text(r#"{"v":1,"type":"subscribe"}"#)).await.unwrap();
    let mut healthy = connect(&w, READ_TOKEN).await;
    let before = rss();
    let big = "x".repeat(2000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.server.stats().slow_clients_dropped == 0 {
        assert!(Instant::now() < deadline, "the stuck client was never dropped: {:?}", w.server.stats());
        for _ in 0..64 {
            w.telemetry.event("status", "worker/test", big.clone());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let growth = rss().saturating_sub(before);
    assert!(growth < 64 * 1024 * 1024, "memory grew by {growth} bytes while a client was stuck");
    // Everyone else is still served.
    healthy.snapshot().await.unwrap();
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_are_performed_and_audited() {
    let w = worker().await;
    let (_, log_file) = logging();
    let mut op = connect(&w, OPERATOR_TOKEN).await;
    let mut id = 0;
    let mut act = |action: Action| {
        id += 1;
        Command::Action { id: Some(id), action }
    };

    // End a consultation: ack, then the result once it is finalized.
    op.send(&act(Action::EndConsultation { session_id: "active-1".into() })).await.unwrap();
    let ack = wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. })).await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    let result = wait_for(&mut op, Duration::from_secs(30), |f| matches!(f, ServerFrame::Result { .. })).await;
    let ServerFrame::Result { ok, message, .. } = result else { unreachable!() };
    assert!(ok && message.contains("status completed"), "{message}");
    let detail = w.store.session_detail(&sid("active-1")).await.unwrap();
    assert_eq!(detail.record.status, SessionStatus::Completed);
    assert_eq!(detail.messages.len(), 2);
    assert_eq!(detail.anketa.0.get("name").and_then(|v| v.as_str()), Some("Иван"), "the final anketa was extracted");
    eventually("the audit line is in the log file", || {
        std::fs::read_to_string(log_file).is_ok_and(|log| {
            log.lines().any(|l| l.contains("audit") && l.contains("end consultation active-1") && l.contains("operator@127.0.0.1"))
        })
    })
    .await;
    let events = op.snapshot().await.unwrap().board.events;
    assert!(events.iter().any(|e| e.kind == "audit" && e.message.contains("end consultation active-1")), "{events:?}");

    // Force a realtime reconnect and an extraction on another consultation.
    let second = w.handler.create_session(sid("active-2"), "consultation-active-2".into(), Arc::new(SilentAudio)).await.unwrap();
    second.wait_ready().await.unwrap();
    let connects = w.connector.connects.load(Ordering::Relaxed);
    op.send(&act(Action::ForceReconnect { session_id: "active-2".into() })).await.unwrap();
    let r = wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Result { .. })).await;
    assert!(matches!(r, ServerFrame::Result { ok: true, .. }), "{r:?}");
    eventually("the realtime session reconnected", || {
        w.connector.connects.load(Ordering::Relaxed) > connects
            && w.telemetry.snapshot().events.iter().any(|e| e.kind == "reconnect" && e.path.contains("active-2"))
    })
    .await;
    let calls = w.extractor.calls.load(Ordering::Relaxed);
    op.send(&act(Action::ExtractNow { session_id: "active-2".into() })).await.unwrap();
    wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Result { ok: true, .. })).await;
    eventually("the extraction ran", || w.extractor.calls.load(Ordering::Relaxed) > calls).await;

    // Log level: a valid filter is applied, a broken one explained.
    op.send(&act(Action::LogLevel { filter: "info,consultant=debug".into() })).await.unwrap();
    let r = wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Result { .. } | ServerFrame::Error { .. })).await;
    assert!(matches!(r, ServerFrame::Result { ok: true, .. }), "{r:?}");
    op.send(&act(Action::LogLevel { filter: "info,[[[".into() })).await.unwrap();
    let r = wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(error_of(&r).unwrap().1.contains("invalid log filter"), "{r:?}");
    op.send(&act(Action::LogLevel { filter: "info".into() })).await.unwrap();
    wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Result { .. })).await;

    // Unknown consultation: a clear error.
    op.send(&act(Action::EndConsultation { session_id: "nobody".into() })).await.unwrap();
    let r = wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Error { .. })).await;
    assert_eq!(error_of(&r).unwrap().0, "unknown_session");

    // Drain: the hook fires and new consultations are refused.
    op.send(&act(Action::Drain)).await.unwrap();
    wait_for(&mut op, Duration::from_secs(5), |f| matches!(f, ServerFrame::Result { ok: true, .. })).await;
    assert!(w.drained.load(Ordering::SeqCst));
    eventually("the supervisor drains", || w.telemetry.worker().draining).await;
    let refused = w.handler.create_session(sid("late-1"), "consultation-late-1".into(), Arc::new(SilentAudio)).await;
    assert!(matches!(refused, Err(HandlerError::Start(StartError::Draining))), "{:?}", refused.err());
    assert!(w.server.stats().actions >= 7);
    drop(w.handles);
}

/// Runs the real binary.
async fn cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_consultant"))
        .args(["--config", "/nonexistent/consultant-config.toml", "console"])
        .args(args)
        .env_remove("CONSULTANT_CONSOLE_TOKEN")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prints_json_for_scripts_and_fails_clearly() {
    let w = worker().await;
    let url = w.server.url();
    let out = cli(&["--url", &url, "--token", READ_TOKEN, "--once", "tree", "--json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = tree.as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"worker/consultation/failing-1/realtime"), "{paths:?}");

    let out = cli(&["--url", &url, "--token", READ_TOKEN, "--once", "consultation", "active-1", "--json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["consultation"]["room"], "consultation-active-1");
    assert_eq!(c["actors"].as_array().unwrap().len(), 4);

    let out = cli(&["--url", &url, "--token", READ_TOKEN, "--once", "consultation", "nobody", "--json"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running consultation `nobody`"));

    let out = cli(&["--url", &url, "--token", "wrong", "--once", "worker", "--json"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the token"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = cli(&["--url", &format!("ws://{closed}"), "--token", READ_TOKEN, "--once", "events", "--json"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the worker console"), "{err}");
}

/// A tmux server of our own, killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().await.expect("tmux is installed (scripts/install-test-deps.sh)");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "console"]).await
    }

    async fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen().await;
            if check(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "the TUI never showed {what}; screen:\n{screen}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tui_in_tmux_draws_the_tree_and_a_consultation() {
    let w = worker().await;
    static N: AtomicU64 = AtomicU64::new(0);
    let tmux = Tmux { socket: format!("consultant-console-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)) };
    let command = format!(
        "{} --config /nonexistent/consultant-config.toml console --url {} --token {}",
        env!("CARGO_BIN_EXE_consultant"),
        w.server.url(),
        OPERATOR_TOKEN
    );
    tmux.run(&["new-session", "-d", "-s", "console", "-x", "180", "-y", "50", &command]).await;
    let screen = tmux
        .wait_screen("the tree", |s| s.contains("Supervision tree") && s.contains("consultation failing-1") && s.contains("[restarting]"))
        .await;
    assert!(screen.contains("consultation active-1 [running]"), "{screen}");
    assert!(screen.contains("scope: operator"), "{screen}");

    // Select active-1 (worker, console, active-1 ... in path order): move down until its detail shows.
    tmux.run(&["send-keys", "-t", "console", "/", "active-1", "Enter"]).await;
    let screen = tmux.wait_screen("the consultation detail", |s| s.contains("Consultation active-1")).await;
    assert!(screen.contains("room: consultation-active-1"), "{screen}");
    assert!(screen.contains("realtime: connected"), "{screen}");
    assert!(screen.contains("Здравствуйте, Иван"), "the transcript tail is shown:\n{screen}");
    assert!(screen.contains("tokens: in 120"), "{screen}");

    // An action asks for confirmation; `n` cancels it.
    tmux.run(&["send-keys", "-t", "console", "e"]).await;
    tmux.wait_screen("the confirmation", |s| s.contains("end consultation active-1? press y")).await;
    tmux.run(&["send-keys", "-t", "console", "n"]).await;
    tmux.wait_screen("the cancellation", |s| s.contains("cancelled")).await;
    assert!(w.handler.get(&sid("active-1")).await.is_some(), "cancelled: still running");
    tmux.run(&["send-keys", "-t", "console", "q"]).await;
}
