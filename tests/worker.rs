//! The LiveKit control plane against the loopback LiveKit server over real sockets: tokens
//! (checked by the official Python `livekit-api` TokenVerifier), room creation with explicit
//! dispatch, and the agent-worker link (registration, availability, assignment, termination,
//! load, reconnect + migrate_job, 401, garbage frames, the entrypoint's markers), plus the real
//! binary draining on SIGTERM.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use consultant::config::Config;
use consultant::entrypoint::JobRooms;
use consultant_actors::ports::RoomConnector;
use consultant_fakes::rooms::{MemoryRoom, RefusingRoom};
use consultant::livekit::{LiveKitClient, WorkerMode};
use consultant::secret::Secret;
use consultant::store::SqliteStore;
use consultant::tls::ClientTls;
use consultant::worker::{Worker, WorkerParts};
use consultant_actors::{SessionId, SessionStatus};
use consultant_fakes::memory::{CountingExtractor, RecordingAudio, ScriptedRealtime};
use livekit_loopback::proto;
use livekit_loopback::{JobStatus, LoopbackConfig, LoopbackServer, RawFrame, ServerEvent, WorkerStatus};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const AGENT: &str = "consultant-test";
const SHIPPED_CONFIG: &str = include_str!("../config.toml");

// ----------------------------------------------------------------------------------------------
// Log capture: the entrypoint's markers are checked in what the worker logged.
// ----------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("consultant=debug,consultant_actors=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
}

/// Log lines that mention `needle` (e.g. a job id), in order.
fn log_lines_with(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

// ----------------------------------------------------------------------------------------------
// An in-memory room: what the room-audio issue will do over WebRTC.
// ----------------------------------------------------------------------------------------------

struct JoinRecord {
    url: String,
    token: String,
    session_id: SessionId,
}

#[derive(Default)]
struct MemoryRooms {
    joins: Mutex<Vec<JoinRecord>>,
    /// Caller audio senders by session: dropping one is "the caller left".
    callers: Mutex<HashMap<SessionId, mpsc::Sender<Arc<[i16]>>>>,
    rooms: Mutex<Vec<Arc<MemoryRoom>>>,
}

impl JobRooms for MemoryRooms {
    fn room(&self, url: &str, token: &Secret, session_id: &SessionId) -> Arc<dyn RoomConnector> {
        self.joins.lock().unwrap().push(JoinRecord { url: url.into(), token: token.expose().into(), session_id: session_id.clone() });
        let (room, caller) = MemoryRoom::new(&format!("agent-{session_id}"));
        self.callers.lock().unwrap().insert(session_id.clone(), caller);
        self.rooms.lock().unwrap().push(room.clone());
        room
    }
}

impl MemoryRooms {
    /// Rooms left (the consultation leaves its room when it is over).
    fn left(&self) -> usize {
        self.rooms.lock().unwrap().iter().map(|r| r.left.load(Ordering::SeqCst)).sum()
    }
}

/// A LiveKit without room media: every join is refused with the same cause.
struct NoMedia;

pub const NO_MEDIA: &str = "this test's LiveKit has no room media";

impl JobRooms for NoMedia {
    fn room(&self, _url: &str, _token: &Secret, _session_id: &SessionId) -> Arc<dyn RoomConnector> {
        Arc::new(RefusingRoom { audio: RecordingAudio::new(), cause: NO_MEDIA.into() })
    }
}

// ----------------------------------------------------------------------------------------------
// Set-up
// ----------------------------------------------------------------------------------------------

struct Setup {
    mode: WorkerMode,
    capacity: usize,
    load_threshold: f64,
    reconnect_max_tries: u32,
    secret: &'static str,
    media: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self { mode: WorkerMode::Dev, capacity: 4, load_threshold: 0.7, reconnect_max_tries: 16, secret: "secret", media: true }
    }
}

fn config_text(url: &str, dir: &Path, capacity: usize, threshold: f64, max_tries: u32, health: &str) -> String {
    let replace = |text: String, from: &str, to: String| {
        assert!(text.contains(from), "config.toml no longer contains `{from}`");
        text.replacen(from, &to, 1)
    };
    let mut t = SHIPPED_CONFIG.to_owned();
    t = replace(t, "url = \"ws://127.0.0.1:7880\"", format!("url = \"{url}\""));
    t = replace(t, "agent_name = \"consultant\"", format!("agent_name = \"{AGENT}\""));
    t = replace(t, "capacity = 100", format!("capacity = {capacity}"));
    t = replace(t, "load_threshold = 0.7", format!("load_threshold = {threshold}"));
    t = replace(t, "reconnect_max_tries = 16", format!("reconnect_max_tries = {max_tries}"));
    t = replace(t, "health_listen = \"127.0.0.1:8081\"", format!("health_listen = \"{health}\""));
    t = replace(t, "path = \"data/consultations.db\"", format!("path = \"{}\"", dir.join("consultations.db").display()));
    t = replace(t, "dir = \"logs\"", format!("dir = \"{}\"", dir.join("logs").display()));
    t = replace(t, "listen = \"127.0.0.1:7700\"", "listen = \"127.0.0.1:0\"".to_owned());
    t
}

fn test_config(server: &LoopbackServer, dir: &Path, s: &Setup) -> Config {
    let text = config_text(&server.url(), dir, s.capacity, s.load_threshold, s.reconnect_max_tries, "127.0.0.1:0");
    let secret = s.secret.to_owned();
    Config::from_toml(&text, &dir.join("config.toml"), move |name| match name {
        "LIVEKIT_API_KEY" => Some("devkey".into()),
        "LIVEKIT_API_SECRET" => Some(secret.clone()),
        _ => None,
    })
    .expect("test config is valid")
}

struct Running {
    server: LoopbackServer,
    worker: Option<Worker>,
    rooms: Arc<MemoryRooms>,
    realtime: Arc<ScriptedRealtime>,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn worker(&self) -> &Worker {
        self.worker.as_ref().expect("worker running")
    }

    async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown().await;
        }
        self.server.shutdown().await;
    }
}

async fn start(s: Setup) -> Running {
    logs();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.expect("loopback server starts");
    start_with(server, s).await
}

async fn start_with(server: LoopbackServer, s: Setup) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&server, dir.path(), &s);
    let store = Arc::new(SqliteStore::open(&config.storage.path, "normal").unwrap());
    let rooms = Arc::new(MemoryRooms::default());
    let realtime = ScriptedRealtime::new();
    let parts = WorkerParts {
        connector: realtime.clone(),
        extractor: CountingExtractor::new(),
        store: store.clone(),
        rooms: if s.media { rooms.clone() } else { Arc::new(NoMedia) },
        tls: ClientTls::default(),
        // An unowned SQLite store: sessions are recovered at start-up only.
        sweep_every: None,
        telemetry: consultant_actors::telemetry::Telemetry::new(),
    };
    let worker = Worker::start(&config, s.mode, parts).await.expect("worker starts");
    Running { server, worker: Some(worker), rooms, realtime, store, _dir: dir }
}

async fn registered(server: &LoopbackServer, nth: usize) -> String {
    let mut seen = 0;
    server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::WorkerRegistered { worker_id, agent_name } if agent_name == AGENT => {
                seen += 1;
                (seen == nth).then(|| worker_id.clone())
            }
            _ => None,
        })
        .await
        .expect("worker registers")
}

async fn job_for_room(server: &LoopbackServer, room: &str) -> String {
    server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::JobCreated { job_id, room: r, .. } if r == room => Some(job_id.clone()),
            _ => None,
        })
        .await
        .expect("job created")
}

async fn availability(server: &LoopbackServer, job_id: &str) -> bool {
    server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::AvailabilityAnswered { job_id: j, available, timed_out: false, .. } if j == job_id => Some(*available),
            _ => None,
        })
        .await
        .expect("availability answered")
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn session_status(store: &SqliteStore, id: &SessionId) -> Option<SessionStatus> {
    store.session_detail(id).await.ok().map(|d| d.record.status)
}

// ----------------------------------------------------------------------------------------------
// Tokens, verified by the official Python SDK
// ----------------------------------------------------------------------------------------------

use livekit_loopback::peers::peers_python;

const VERIFY_PY: &str = r#"
import sys, json, jwt
from livekit import api
d = json.load(sys.stdin)
out = []
for t in d["tokens"]:
    try:
        c = api.TokenVerifier(d["key"], d["secret"]).verify(t)
        raw = jwt.decode(t, options={"verify_signature": False})
        v = c.video
        out.append({"ok": True, "identity": c.identity, "name": c.name, "kind": c.kind,
            "room_join": v.room_join, "room": v.room, "can_publish": v.can_publish,
            "can_subscribe": v.can_subscribe, "can_publish_data": v.can_publish_data,
            "agent": v.agent, "room_create": v.room_create, "room_admin": v.room_admin,
            "agents": [a.agent_name for a in c.room_config.agents] if c.room_config else [],
            "exp": raw["exp"], "nbf": raw.get("nbf"), "iss": raw["iss"]})
    except Exception as e:
        out.append({"ok": False, "error": type(e).__name__ + ": " + str(e)})
print(json.dumps(out))
"#;

/// Verifies `tokens` with livekit-api's TokenVerifier; one JSON object per token.
fn python_verify(key: &str, secret: &str, tokens: &[&str]) -> Vec<serde_json::Value> {
    let mut child = Command::new(peers_python())
        .args(["-c", VERIFY_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let input = serde_json::json!({ "key": key, "secret": secret, "tokens": tokens });
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python verifier failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("verifier prints JSON")
}

fn cli(dir: &Path, args: &[&str], secret: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_consultant"))
        .current_dir(dir)
        .args(["--config", dir.join("config.toml").to_str().unwrap()])
        .args(args)
        .env("LIVEKIT_API_KEY", "devkey")
        .env("LIVEKIT_API_SECRET", secret)
        .env_remove("RUST_LOG")
        .output()
        .expect("the consultant binary runs")
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn cli_tokens_verify_with_the_official_python_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text("wss://lk.example.com", dir.path(), 4, 0.7, 16, "127.0.0.1:0").replace("participant_token_ttl_secs = 3600", "participant_token_ttl_secs = 900");
    std::fs::write(dir.path().join("config.toml"), text).unwrap();

    let out = cli(dir.path(), &["token", "--session-id", "sess-42", "--identity", "web.user-1"], "s3cr3t");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token prints JSON");
    assert_eq!(info["url"], "wss://lk.example.com");
    assert_eq!(info["room"], "consultation-sess-42");
    assert_eq!(info["identity"], "web.user-1");
    let token = info["token"].as_str().unwrap().to_owned();

    let out = cli(dir.path(), &["token", "--session-id", "sess-42", "--dispatch"], "s3cr3t");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dispatch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dispatch["identity"], "caller");
    let dispatch_token = dispatch["token"].as_str().unwrap().to_owned();

    // Agent and worker tokens from the library.
    let config = Config::from_toml(&std::fs::read_to_string(dir.path().join("config.toml")).unwrap(), &dir.path().join("config.toml"), |n| match n {
        "LIVEKIT_API_KEY" => Some("devkey".into()),
        "LIVEKIT_API_SECRET" => Some("s3cr3t".into()),
        _ => None,
    })
    .unwrap();
    let client = LiveKitClient::new(&config.livekit, &ClientTls::default()).unwrap();
    let agent_token = client.create_agent_token("consultation-sess-42", "agent-AJ_1").unwrap();
    let worker_token = client.worker_token().unwrap();
    assert!(!format!("{client:?}").contains("s3cr3t"));

    let now = now_secs();
    let v = python_verify("devkey", "s3cr3t", &[&token, &dispatch_token, agent_token.expose(), worker_token.expose()]);
    for (i, r) in v.iter().enumerate() {
        assert_eq!(r["ok"], true, "token {i} rejected: {r}");
        assert_eq!(r["iss"], "devkey");
    }
    let caller = &v[0];
    assert_eq!(caller["identity"], "web.user-1");
    assert_eq!(caller["kind"], "standard");
    assert_eq!(caller["room_join"], true);
    assert_eq!(caller["room"], "consultation-sess-42");
    assert_eq!((caller["can_publish"].clone(), caller["can_subscribe"].clone(), caller["can_publish_data"].clone()), (true.into(), true.into(), true.into()));
    assert!(caller["agent"].is_null() || caller["agent"] == false, "{caller}");
    assert!(caller["room_create"].is_null(), "a caller must not create rooms: {caller}");
    assert_eq!(caller["agents"], serde_json::json!([]));
    let ttl = caller["exp"].as_i64().unwrap() - now;
    assert!((890..=905).contains(&ttl), "caller TTL {ttl}s, configured 900 s");

    assert_eq!(v[1]["agents"], serde_json::json!([AGENT]), "--dispatch puts our agent in roomConfig: {}", v[1]);

    let agent = &v[2];
    assert_eq!(agent["kind"], "agent");
    assert_eq!(agent["agent"], true);
    assert_eq!(agent["identity"], "agent-AJ_1");
    assert_eq!(agent["room"], "consultation-sess-42");
    assert_eq!(agent["room_join"], true);

    let worker = &v[3];
    assert_eq!(worker["agent"], true);
    assert!(worker["room_join"].is_null() && worker["room"] == "" && worker["identity"] == "", "worker token has only the agent grant: {worker}");
    assert!(worker["exp"].as_i64().unwrap() > now);

    // The verifier really checks the signature.
    let wrong = python_verify("devkey", "other-secret", &[&token]);
    assert_eq!(wrong[0]["ok"], false);
    // Bad input is refused with a clear message.
    let out = cli(dir.path(), &["token", "--session-id", "../etc/passwd"], "s3cr3t");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only A-Z a-z 0-9 _ - are allowed"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(dir.path(), &["token", "--session-id", "ok", "--identity", "a b"], "s3cr3t");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid participant identity"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(dir.path(), &["token", "--session-id", "ok"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LIVEKIT_API_SECRET"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn room_create_dispatches_our_agent_explicitly() {
    let server = LoopbackServer::start(LoopbackConfig::with_keys("devkey", "s3cr3t")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config_text(&server.ws_url(), dir.path(), 4, 0.7, 16, "127.0.0.1:0")).unwrap();
    let d = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || cli(&d, &["room", "create", "--session-id", "abc-1"], "s3cr3t")).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["room"], "consultation-abc-1");
    assert_eq!(info["url"], server.ws_url());
    let room = server.room("consultation-abc-1").expect("room created on the server");
    let dispatches = server.dispatches();
    let ours: Vec<_> = dispatches.iter().filter(|d| d.room == room.name).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].agent_name, AGENT);
    let v = python_verify("devkey", "s3cr3t", &[info["token"].as_str().unwrap()]);
    assert_eq!(v[0]["room"], "consultation-abc-1");

    // Wrong secret: the server's refusal is reported with the hint.
    let d = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || cli(&d, &["room", "create", "--session-id", "abc-2"], "wrong")).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CreateRoom") && err.contains("401") && err.contains("LIVEKIT_API_SECRET"), "{err}");
    assert!(server.room("consultation-abc-2").is_none());
    server.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// The worker link
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn registers_and_reports_status_with_load() {
    let r = start(Setup { mode: WorkerMode::Start, capacity: 2, load_threshold: 0.5, ..Default::default() }).await;
    let worker_id = registered(&r.server, 1).await;
    let w = r.server.worker(&worker_id).unwrap();
    assert_eq!(w.agent_name, AGENT);
    let perms = w.permissions.expect("permissions sent with register");
    assert!(perms.can_publish && perms.can_subscribe && perms.can_publish_data);

    // Health: registered -> 200, /worker JSON.
    r.worker().link().wait_for(|s| s.registered).await.unwrap();
    let (code, body) = http_get(r.worker().health_addr(), "/").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&worker_id));
    let (code, body) = http_get(r.worker().health_addr(), "/worker").await;
    assert_eq!(code, 200);
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["registration"], "registered");
    assert_eq!(view["worker_id"], worker_id.as_str());
    assert_eq!(view["mode"], "start");
    assert_eq!(view["capacity"], 2);
    assert!(view["rss_bytes"].as_u64().unwrap() > 0);

    // An idle worker reports AVAILABLE with a small load.
    let (status, load) = r
        .server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::WorkerUpdated { worker_id: id, status, load, .. } if *id == worker_id => Some((*status, *load)),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(status, WorkerStatus::WsAvailable);
    assert!(load < 0.5, "{load}");

    // One consultation of a capacity of 2 is load 0.5: FULL at the 0.5 threshold (start mode).
    r.server.create_room("consultation-load-1", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-load-1").await;
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let (load, jobs) = r
        .server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::WorkerUpdated { worker_id: id, status: WorkerStatus::WsFull, load, job_count } if *id == worker_id => Some((*load, *job_count)),
            _ => None,
        })
        .await
        .expect("FULL reported at the threshold");
    assert!((0.5..=1.0).contains(&load), "{load}");
    assert_eq!(jobs, 1);
    // Periodic updates keep coming (every 2.5 s).
    let before = r.server.worker(&worker_id).unwrap().updates;
    tokio::time::sleep(Duration::from_millis(2700)).await;
    assert!(r.server.worker(&worker_id).unwrap().updates > before);
    r.stop().await;
}

#[tokio::test]
async fn dev_mode_never_reports_full() {
    let r = start(Setup { mode: WorkerMode::Dev, capacity: 2, load_threshold: 0.5, ..Default::default() }).await;
    let worker_id = registered(&r.server, 1).await;
    r.server.create_room("consultation-dev-1", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-dev-1").await;
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let load = r
        .server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::WorkerUpdated { worker_id: id, job_count: 1, load, status } if *id == worker_id => Some((*load, *status)),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(load.1, WorkerStatus::WsAvailable);
    assert!(load.0 >= 0.5);
    assert!(!r.server.events().iter().any(|e| matches!(e, ServerEvent::WorkerUpdated { status: WorkerStatus::WsFull, .. })));
    r.stop().await;
}

#[tokio::test]
async fn availability_assignment_and_termination() {
    let r = start(Setup { capacity: 1, ..Default::default() }).await;
    registered(&r.server, 1).await;

    // A room that is not a consultation is refused, with the reason in the log.
    r.server.create_room("lobby", &[AGENT]);
    let lobby = job_for_room(&r.server, "lobby").await;
    assert!(!availability(&r.server, &lobby).await);
    assert!(log_lines_with(&lobby).iter().any(|l| l.contains("refusing job") && l.contains("not a consultation room")), "{:?}", log_lines_with(&lobby));

    // A consultation room is accepted, assigned with our identity, and runs through step 5.
    r.server.create_room("consultation-s1", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-s1").await;
    assert!(availability(&r.server, &job).await);
    let identity = r
        .server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::JobAssigned { job_id, participant_identity, .. } if *job_id == job => Some(participant_identity.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(identity, format!("agent-{job}"));
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let sid = SessionId::parse("s1").unwrap();
    let deadline = Instant::now() + WAIT;
    while !log_lines_with(&sid.to_string()).iter().any(|l| l.contains("=== AGENT FULLY READY ===")) {
        assert!(Instant::now() < deadline, "never fully ready: {:?}", log_lines_with(&job));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The room was joined with the server-minted token for this job.
    {
        let joins = r.rooms.joins.lock().unwrap();
        let j = joins.iter().find(|j| j.session_id == sid).expect("room joined");
        assert_eq!(j.url, r.server.url(), "empty assignment URL falls back to ours");
        let claims = livekit_api::access_token::TokenVerifier::with_api_key("devkey", "secret").verify(&j.token).unwrap();
        assert_eq!(claims.sub, identity);
        assert_eq!(claims.video.room, "consultation-s1");
        assert_eq!(claims.kind, "agent");
    }
    assert_eq!(r.realtime.connections(), 1);
    assert!(r.worker().handler().list().await.contains(&sid));
    let markers = log_lines_with("AGENT");
    for m in ["=== AGENT ENTRYPOINT CALLED ===", "AGENT STEP 1/5: Creating RealtimeModel (Azure OpenAI WSS)", "AGENT STEP 2/5", "AGENT STEP 3/5", "AGENT STEP 4/5", "AGENT STEP 5/5"] {
        assert!(markers.iter().any(|l| l.contains(m)), "marker {m} missing");
    }

    // At capacity (1) the worker reports load 1.0, so the server stops offering; a request that
    // comes anyway (a server that ignores load) is refused with the reason.
    let worker_id = r.server.job(&job).unwrap().worker_id.unwrap();
    let offer = proto::AvailabilityRequest {
        job: Some(proto::Job {
            id: "AJ_overflow".into(),
            r#type: proto::JobType::JtRoom as i32,
            room: Some(proto::Room { name: "consultation-s2".into(), ..Default::default() }),
            agent_name: AGENT.into(),
            ..Default::default()
        }),
        resuming: false,
    };
    assert!(r.server.send_to_worker(&worker_id, proto::ServerMessage { message: Some(proto::server_message::Message::Availability(offer)) }));
    let deadline = Instant::now() + WAIT;
    while !log_lines_with("AJ_overflow").iter().any(|l| l.contains("refusing job") && l.contains("at capacity (1 of 1")) {
        assert!(Instant::now() < deadline, "{:?}", log_lines_with("AJ_overflow"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The console's worker view lists the job.
    let view = r.worker().telemetry().worker();
    assert_eq!(view.jobs.len(), 1);
    assert_eq!(view.jobs[0].job_id, job);

    // Termination ends the consultation properly (finalized) and the job succeeds; a repeated
    // termination changes nothing.
    let dispatch = r.server.job(&job).unwrap().dispatch_id;
    assert!(r.server.delete_dispatch(&dispatch));
    let done = r.server.wait_for(WAIT, |s| s.job(&job).filter(|j| j.history.contains(&JobStatus::JsSuccess))).await.expect("job reported SUCCESS");
    assert_eq!(done.error, "");
    assert_eq!(session_status(&r.store, &sid).await, Some(SessionStatus::Completed));
    let worker_id = done.worker_id.unwrap();
    assert!(r.server.send_to_worker(&worker_id, proto::ServerMessage {
        message: Some(proto::server_message::Message::Termination(proto::JobTermination { job_id: job.clone() })),
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let history = r.server.job(&job).unwrap().history;
    assert_eq!(history.iter().filter(|s| **s == JobStatus::JsSuccess).count(), 1, "{history:?}");
    assert!(r.worker().handler().list().await.is_empty());
    assert_eq!(r.rooms.left(), 1, "the room is left when the consultation is over");
    r.stop().await;
}

#[tokio::test]
async fn the_caller_leaving_ends_the_job_successfully() {
    let r = start(Setup::default()).await;
    registered(&r.server, 1).await;
    r.server.create_room("consultation-leaver", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-leaver").await;
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let sid = SessionId::parse("leaver").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if r.rooms.callers.lock().unwrap().remove(&sid).is_some() {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.server.wait_for_job_status(&job, JobStatus::JsSuccess, WAIT).await.expect("SUCCESS after the caller left");
    assert_eq!(session_status(&r.store, &sid).await, Some(SessionStatus::Completed));
    r.stop().await;
}

/// At capacity the worker reports FULL and LiveKit holds the next room's job (no worker may
/// take it); when a call ends the worker is AVAILABLE again and the waiting room gets it.
#[tokio::test]
async fn at_capacity_the_next_room_waits_and_is_taken_when_a_call_ends() {
    let r = start(Setup { mode: WorkerMode::Start, capacity: 1, load_threshold: 1.0, ..Default::default() }).await;
    let worker_id = registered(&r.server, 1).await;
    r.server.create_room("consultation-first", &[AGENT]);
    let first = job_for_room(&r.server, "consultation-first").await;
    r.server.wait_for_job_status(&first, JobStatus::JsRunning, WAIT).await.unwrap();
    r.server
        .wait_for_event(WAIT, |e| matches!(e, ServerEvent::WorkerUpdated { worker_id: id, status: WorkerStatus::WsFull, .. } if *id == worker_id).then_some(()))
        .await
        .expect("FULL at capacity");
    r.server.create_room("consultation-second", &[AGENT]);
    let second = job_for_room(&r.server, "consultation-second").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = r.server.job(&second).unwrap();
    assert!(waiting.worker_id.is_none() && !waiting.assigned, "a full worker must not be offered the job: {waiting:?}");
    assert!(!r.server.events().iter().any(|e| matches!(e, ServerEvent::AvailabilityRequested { job_id, .. } if *job_id == second)));
    // The first caller leaves: the worker is available again and takes the waiting room.
    drop(r.rooms.callers.lock().unwrap().remove(&SessionId::parse("first").unwrap()));
    r.server.wait_for_job_status(&first, JobStatus::JsSuccess, WAIT).await.unwrap();
    r.server.wait_for_job_status(&second, JobStatus::JsRunning, Duration::from_secs(20)).await.expect("the waiting room is taken once a call ended");
    assert_eq!(r.server.job(&second).unwrap().worker_id.as_deref(), Some(worker_id.as_str()));
    r.stop().await;
}

#[tokio::test]
async fn step_3_failure_is_reported_as_failed_with_the_cause() {
    let r = start(Setup { media: false, ..Default::default() }).await;
    registered(&r.server, 1).await;
    r.server.create_room("consultation-nomedia", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-nomedia").await;
    let failed = r.server.wait_for_job_status(&job, JobStatus::JsFailed, WAIT).await.expect("JS_FAILED reported");
    assert!(failed.history.contains(&JobStatus::JsRunning));
    let expected = format!("STEP 3/5 FAILED: room: could not join the room: {NO_MEDIA}");
    assert_eq!(failed.error, expected);
    let text = log_text();
    assert!(text.contains(&expected));
    assert_eq!(r.realtime.connections(), 0, "no consultation is started without a room");
    let lines = log_lines_with("nomedia");
    assert!(lines.iter().any(|l| l.contains("=== AGENT ENTRYPOINT CALLED ===")));
    assert!(!log_lines_with(&job).iter().any(|l| l.contains("FULLY READY")));
    r.stop().await;
}

/// With a server that implements `migrate_job` as the protocol describes.
#[tokio::test]
async fn a_dropped_link_reregisters_and_migrates_running_jobs() {
    let server = LoopbackServer::start(LoopbackConfig { migrate_jobs: true, ..Default::default() }).await.unwrap();
    let r = start_with(server, Setup::default()).await;
    let first = registered(&r.server, 1).await;
    r.server.create_room("consultation-survivor", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-survivor").await;
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let sid = SessionId::parse("survivor").unwrap();
    r.worker().link().wait_for(|s| s.jobs == 1).await.unwrap();

    assert_eq!(r.server.drop_worker_connections(), 1);
    let second = registered(&r.server, 2).await;
    assert_ne!(first, second);
    let migrated = r
        .server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::JobsMigrated { worker_id, job_ids, .. } if *worker_id == second => Some(job_ids.clone()),
            _ => None,
        })
        .await
        .expect("migrate_job after re-registration");
    assert_eq!(migrated, vec![job.clone()]);
    assert_eq!(r.server.job(&job).unwrap().worker_id.as_deref(), Some(second.as_str()));
    // The consultation did not notice.
    assert!(r.worker().handler().list().await.contains(&sid));
    assert_eq!(r.realtime.connections(), 1);
    let view = r.worker().telemetry().worker();
    assert_eq!(view.worker_id.as_deref(), Some(second.as_str()));
    assert_eq!(view.registration, "registered");

    // The job is still ours: termination through the new link ends it.
    let dispatch = r.server.job(&job).unwrap().dispatch_id;
    r.server.delete_dispatch(&dispatch);
    r.server.wait_for_job_status(&job, JobStatus::JsSuccess, WAIT).await.unwrap();
    r.stop().await;
}

/// livekit-server (OSS) ignores `migrate_job`: after a reconnect the old job gets no
/// termination. The consultation goes on, and still ends when its room closes.
#[tokio::test]
async fn after_a_reconnect_to_a_server_that_ignores_migrate_job_the_room_still_ends_the_call() {
    let r = start(Setup::default()).await;
    let first = registered(&r.server, 1).await;
    r.server.create_room("consultation-unmigrated", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-unmigrated").await;
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let sid = SessionId::parse("unmigrated").unwrap();
    r.worker().link().wait_for(|s| s.jobs == 1).await.unwrap();
    assert_eq!(r.server.drop_worker_connections(), 1);
    let second = registered(&r.server, 2).await;
    r.server
        .wait_for_event(WAIT, |e| matches!(e, ServerEvent::JobsMigrated { worker_id, .. } if *worker_id == second).then_some(()))
        .await
        .expect("migrate_job sent");
    assert_eq!(r.server.job(&job).unwrap().worker_id.as_deref(), Some(first.as_str()), "not migrated");
    assert!(r.worker().handler().list().await.contains(&sid), "the consultation goes on");
    // Deleting the room sends no termination for the old job; the agent hears the end from its
    // room (here the media room's caller leaving, as a closing room's leave does in tests/room*.rs).
    assert!(r.server.close_room("consultation-unmigrated"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!r.server.events().iter().any(|e| matches!(e, ServerEvent::JobTerminated { job_id, worker_id, .. } if *job_id == job && *worker_id == second)));
    drop(r.rooms.callers.lock().unwrap().remove(&sid));
    let deadline = tokio::time::Instant::now() + WAIT;
    while r.worker().handler().list().await.contains(&sid) {
        assert!(tokio::time::Instant::now() < deadline, "the consultation did not end with its room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = session_status(&r.store, &sid).await;
    assert!(status.is_some_and(|s| s != SessionStatus::Active), "finalized, not left active: {status:?}");
    r.stop().await;
}

#[tokio::test]
async fn garbage_frames_are_survived() {
    let r = start(Setup::default()).await;
    let worker_id = registered(&r.server, 1).await;
    for frame in [
        RawFrame::Binary(vec![0xff; 17]),
        RawFrame::Binary(Vec::new()),
        RawFrame::Text("{\"availability\": 12".into()),
        RawFrame::Text("not json at all".into()),
    ] {
        assert!(r.server.send_raw_to_worker(&worker_id, frame));
    }
    r.server.create_room("consultation-after-garbage", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-after-garbage").await;
    assert!(availability(&r.server, &job).await);
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    assert!(!r.server.events().iter().any(|e| matches!(e, ServerEvent::WorkerDisconnected { .. })));
    assert!(log_text().contains("garbage frame from LiveKit ignored"));
    r.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_is_reported_clearly() {
    let r = start(Setup { secret: "not-the-secret", ..Default::default() }).await;
    let status = tokio::time::timeout(WAIT, r.worker().link().wait_for(|s| s.fatal.is_some())).await.unwrap().unwrap();
    let reason = status.fatal.unwrap();
    assert!(reason.contains("HTTP 401") && reason.contains("LIVEKIT_API_KEY"), "{reason}");
    assert!(!reason.contains("not-the-secret"));
    assert!(r.server.events().iter().any(|e| matches!(e, ServerEvent::AuthRejected { path, .. } if path == "/agent")));
    let (code, body) = http_get(r.worker().health_addr(), "/").await;
    assert_eq!(code, 503);
    assert!(body.contains("401"), "{body}");
    r.stop().await;
}

#[tokio::test]
async fn the_link_gives_up_after_the_configured_tries() {
    logs();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let r = start_with(server, Setup { reconnect_max_tries: 2, ..Default::default() }).await;
    registered(&r.server, 1).await;
    r.server.shutdown().await;
    // Tries after 0 s and 2 s, then it gives up.
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(15), r.worker().link().wait_for(|s| s.fatal.is_some())).await.unwrap().unwrap();
    let reason = status.fatal.unwrap();
    assert!(reason.contains("after 2 attempts"), "{reason}");
    assert!(started.elapsed() >= Duration::from_secs(2), "backoff respected: {:?}", started.elapsed());
    let (code, _) = http_get(r.worker().health_addr(), "/").await;
    assert_eq!(code, 503);
    r.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Drain: the real binary on SIGTERM, and a running consultation through the signal policy
// ----------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Binary {
    child: std::process::Child,
    dir: tempfile::TempDir,
    health: std::net::SocketAddr,
}

impl Binary {
    fn spawn(server: &LoopbackServer, mode: &str, secret: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let health: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::write(dir.path().join("config.toml"), config_text(&server.url(), dir.path(), 4, 0.7, 16, &health.to_string())).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_consultant"))
            .current_dir(dir.path())
            .args(["--config", dir.path().join("config.toml").to_str().unwrap(), mode])
            .env("LIVEKIT_API_KEY", "devkey")
            .env("LIVEKIT_API_SECRET", secret)
            // Never contacted: step 3 fails before a realtime session is opened.
            .env("AZURE_OPENAI_ENDPOINT", "http://127.0.0.1:9/")
            .env("AZURE_OPENAI_API_KEY", "test-key")
            .env("DEEPSEEK_API_KEY", "test-key")
            .env("DEEPSEEK_BASE_URL", "http://127.0.0.1:9")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the consultant binary starts");
        Binary { child, dir, health }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -s {name} failed");
    }

    /// Waits for the exit (bounded) and returns (code, stderr).
    async fn wait_exit(mut self, within: Duration) -> (Option<i32>, String, tempfile::TempDir) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read as _;
                self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                return (status.code(), err, self.dir);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/agent.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_reports_failed_jobs() {
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let bin = Binary::spawn(&server, "start", "secret");
    let worker_id = registered(&server, 1).await;
    // The server registers the worker a moment before the worker hears about it.
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = http_get(bin.health, "/").await;
        if code == 200 {
            assert!(body.contains(&worker_id), "{body}");
            break;
        }
        assert_eq!(code, 503, "{body}");
        assert!(Instant::now() < deadline, "health never turned 200: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The job joins the room (step 3, real room media) and then fails at step 5: the
    // realtime endpoint (127.0.0.1:9) refuses. JS_FAILED with the cause, the markers logged.
    server.create_room("consultation-bin-1", &[AGENT]);
    let job = job_for_room(&server, "consultation-bin-1").await;
    let failed = server.wait_for_job_status(&job, JobStatus::JsFailed, Duration::from_secs(60)).await.unwrap();
    assert!(failed.error.starts_with("STEP 5/5 FAILED: "), "{}", failed.error);
    let deadline = Instant::now() + WAIT;
    while !bin.log().contains("STEP 5/5 FAILED") {
        assert!(Instant::now() < deadline, "marker not in logs/agent.log:\n{}", bin.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = bin.log();
    let order = [
        "=== AGENT ENTRYPOINT CALLED ===",
        "AGENT STEP 1/5",
        "AGENT STEP 2/5",
        "AGENT STEP 3/5",
        "AGENT STEP 4/5",
        "AGENT STEP 5/5",
        "STEP 5/5 FAILED",
    ];
    let positions: Vec<usize> = order.iter().map(|m| log.find(m).unwrap_or_else(|| panic!("{m} missing"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "markers out of order");
    assert!(!log.contains("FULLY READY"));

    // SIGTERM: FULL (draining) is reported, then, with nothing running, a clean exit.
    bin.signal("TERM");
    let draining = server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::WorkerUpdated { worker_id: id, status: WorkerStatus::WsFull, .. } if *id == worker_id => Some(()),
            _ => None,
        })
        .await;
    assert!(draining.is_ok(), "FULL not reported on SIGTERM");
    let (code, stderr, dir) = bin.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("logs/agent.log")).unwrap();
    assert!(log.contains("draining") && log.contains("worker stopped"), "{log}");
    assert!(log.contains("debug console listening"), "the console runs in the worker: {log}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_binary_in_dev_mode_stops_at_once_and_a_bad_secret_exits_non_zero() {
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let bin = Binary::spawn(&server, "dev", "secret");
    let worker_id = registered(&server, 1).await;
    bin.signal("INT");
    let (code, stderr, _dir) = bin.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!server.events().iter().any(|e| matches!(e, ServerEvent::WorkerUpdated { worker_id: id, status: WorkerStatus::WsFull, .. } if *id == worker_id)));

    let bin = Binary::spawn(&server, "start", "wrong-secret");
    let (code, stderr, _dir) = bin.wait_exit(Duration::from_secs(15)).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("HTTP 401") && stderr.contains("LIVEKIT_API_SECRET"), "{stderr}");
    assert!(!stderr.contains("wrong-secret"), "the secret leaked: {stderr}");
    server.shutdown().await;
}

/// The signal policy with a running consultation: the first SIGTERM drains (FULL, no new job,
/// the call goes on), the second ends it properly (finalized, SUCCESS) and the worker stops.
/// The only test here that signals this process: tokio's handler owns SIGTERM from `install`.
#[tokio::test]
async fn drain_lets_running_consultations_go_on_until_a_second_signal() {
    let r = start(Setup { mode: WorkerMode::Start, ..Default::default() }).await;
    let mut signals = consultant::worker::Signals::install().unwrap();
    let worker_id = registered(&r.server, 1).await;
    r.server.create_room("consultation-drain-1", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-drain-1").await;
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let sid = SessionId::parse("drain-1").unwrap();
    r.worker().link().wait_for(|s| s.jobs == 1).await.unwrap();

    let Running { server, mut worker, store, _dir, .. } = r;
    let worker = worker.take().unwrap();
    let handler = worker.handler().clone();
    let link = worker.link().clone();
    let run = tokio::spawn(async move { worker.run_until_signal(&mut signals).await });
    let pid = std::process::id().to_string();
    let kill = |sig: &str| assert!(Command::new("kill").args(["-s", sig, &pid]).status().unwrap().success());

    kill("TERM");
    server
        .wait_for_event(WAIT, |e| match e {
            ServerEvent::WorkerUpdated { worker_id: id, status: WorkerStatus::WsFull, .. } if *id == worker_id => Some(()),
            _ => None,
        })
        .await
        .expect("FULL while draining");
    assert!(link.current().draining);
    // A new consultation is not given to a draining worker; the running one goes on.
    server.create_room("consultation-drain-2", &[AGENT]);
    let refused = job_for_room(&server, "consultation-drain-2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!server.job(&refused).unwrap().assigned);
    assert!(handler.list().await.contains(&sid));
    assert!(!run.is_finished());
    assert_eq!(server.job(&job).unwrap().status, JobStatus::JsRunning);

    kill("TERM");
    let result = tokio::time::timeout(Duration::from_secs(15), run).await.expect("stops after the second signal").unwrap();
    assert!(result.is_ok(), "{result:?}");
    server.wait_for_job_status(&job, JobStatus::JsSuccess, WAIT).await.expect("job SUCCESS after finalizing");
    assert_eq!(session_status(&store, &sid).await, Some(SessionStatus::Completed));
    server.shutdown().await;
}


/// One shutdown path: with a call in progress, shutting the worker down finalizes the
/// consultation, leaves its room, reports the job, stops every actor under the supervisor and
/// ends every task the actors started.
#[tokio::test]
async fn shutdown_finalizes_the_running_call_and_leaves_nothing_running() {
    let mut r = start(Setup::default()).await;
    registered(&r.server, 1).await;
    r.server.create_room("consultation-closing", &[AGENT]);
    let job = job_for_room(&r.server, "consultation-closing").await;
    r.server.wait_for_job_status(&job, JobStatus::JsRunning, WAIT).await.unwrap();
    let sid = SessionId::parse("closing").unwrap();
    let handler = r.worker().handler().clone();
    let deadline = Instant::now() + WAIT;
    while handler.get(&sid).await.is_none() {
        assert!(Instant::now() < deadline, "the consultation never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.worker.take().expect("running").shutdown().await;
    assert_eq!(session_status(&r.store, &sid).await, Some(SessionStatus::Completed), "finalized by the shutdown");
    assert_eq!(r.rooms.left(), 1, "the room was left");
    assert!(handler.is_stopped(), "the supervisor and everything under it stopped");
    assert_eq!(handler.running_tasks(), 0, "no task the actors started is still running");
    assert!(handler.list().await.is_empty());
    r.server.shutdown().await;
}
