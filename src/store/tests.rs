//! Store tests, each run on both engines (a throwaway PostgreSQL server per test).

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use consultant_actors::anketa::Anketa;
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{AnketaRecord, DialogueStore, SessionRecord, StoreError};
use consultant_actors::provenance::Provenance;
use consultant_actors::session::SessionStatus;
use consultant_fakes::postgres::PgServer;

use super::{migrate, DatabaseUrl, Lease, Store};

#[derive(Clone, Copy, Debug)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// One empty database on one engine.
pub struct Db {
    pub url: DatabaseUrl,
    _dir: tempfile::TempDir,
    _server: Option<PgServer>,
}

impl Db {
    pub fn new(engine: Engine) -> Db {
        let dir = tempfile::tempdir().unwrap();
        match engine {
            Engine::Sqlite => Db { url: DatabaseUrl::Sqlite(dir.path().join("c.db")), _dir: dir, _server: None },
            Engine::Postgres => {
                let server = PgServer::start();
                Db { url: DatabaseUrl::Postgres(server.fresh_database()), _dir: dir, _server: Some(server) }
            }
        }
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.url, "normal", Lease::unowned()).await.unwrap()
    }

    pub async fn open_owned(&self, owner: &str, lease: Duration) -> Store {
        Store::open(&self.url, "normal", Lease::owned(owner, lease)).await.unwrap()
    }

    /// Runs one statement outside the store; returns the first column of the first row as text.
    pub async fn raw(&self, sql: &str) -> Option<String> {
        match &self.url {
            DatabaseUrl::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                let mut rows = stmt.query([]).unwrap();
                rows.next().unwrap().map(|r| r.get::<_, rusqlite::types::Value>(0).unwrap()).map(|v| match v {
                    rusqlite::types::Value::Text(t) => t,
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    other => format!("{other:?}"),
                })
            }
            DatabaseUrl::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                let rows = client.simple_query(sql).await.unwrap();
                rows.into_iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned).unwrap_or_default()),
                    _ => None,
                })
            }
        }
    }
}

/// Both engines store microseconds at least: test times are whole microseconds.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn session(id: &str) -> SessionRecord {
    SessionRecord { session_id: sid(id), room: format!("consultation-{id}"), status: SessionStatus::Active, started_at: now(), ended_at: None, failure: None }
}

fn message(seq: u32, text: &str) -> DialogueMessage {
    DialogueMessage { seq, role: if seq % 2 == 1 { Role::Assistant } else { Role::User }, text: text.into(), at: now(), interrupted: false }
}

fn evidenced_record(message_count: usize, is_final: bool) -> AnketaRecord {
    use consultant_actors::provenance::{FieldProvenance, PastValue};
    let mut anketa = Anketa::default();
    anketa.0.insert("client_name".into(), serde_json::json!("Анна"));
    let mut provenance = Provenance::default();
    let history = vec![PastValue { value: serde_json::json!("Аня"), evidence: vec![2], set_at: 2 }];
    provenance.fields.insert("client_name".into(), FieldProvenance { evidence: vec![4], set_at: message_count, history });
    AnketaRecord { anketa, provenance, message_count, is_final, at: now() }
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite_engine {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::Sqlite).await
            })*
        }
        mod postgres_engine {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::Postgres).await
            })*
        }
    };
}

on_both_engines!(
    anketa_provenance_round_trips,
    appends_are_durable_ordered_and_idempotent,
    concurrent_appends_are_group_committed,
    a_failing_write_fails_alone,
    a_newer_schema_is_refused_and_left_untouched,
    two_stores_never_claim_the_same_orphan,
    a_renewed_lease_is_never_claimed_an_expired_one_is,
);

/// Each snapshot keeps its provenance, and the `anketa` column keeps the Python module's shape.
async fn anketa_provenance_round_trips(engine: Engine) {
    let db = Db::new(engine);
    let store = db.open().await;
    let id = sid("s1");
    store.open_session(&session("s1")).await.unwrap();
    let (periodic, last) = (evidenced_record(4, false), evidenced_record(6, true));
    for r in [&periodic, &periodic, &last] {
        store.save_anketa(&id, r).await.unwrap();
    }
    let detail = store.session_detail(&id).await.unwrap();
    assert_eq!(detail.anketa_history, vec![periodic, last.clone()], "a re-sent snapshot is stored once");
    assert_eq!((detail.anketa, detail.provenance), (last.anketa.clone(), last.provenance.clone()));
    assert_eq!(store.latest_anketa(&id).await.unwrap(), Some(last));
    let raw = db.raw("SELECT anketa FROM anketas ORDER BY id LIMIT 1").await;
    assert_eq!(raw.as_deref(), Some(r#"{"client_name":"Анна"}"#));
}

async fn appends_are_durable_ordered_and_idempotent(engine: Engine) {
    let db = Db::new(engine);
    let store = db.open().await;
    let id = sid("s1");
    store.open_session(&session("s1")).await.unwrap();
    let first = message(1, "Здравствуйте!");
    store.append_message(&id, &first).await.unwrap();
    // A re-sent message (same seq, after a Persistence restart) is stored once, as first written.
    store.append_message(&id, &DialogueMessage { text: "другой текст".into(), ..first.clone() }).await.unwrap();
    store.append_message(&id, &message(2, "Привет")).await.unwrap();
    let stored = store.load_messages(&id).await.unwrap();
    assert_eq!(stored.iter().map(|m| (m.seq, m.text.as_str())).collect::<Vec<_>>(), vec![(1, "Здравствуйте!"), (2, "Привет")]);
    assert_eq!(stored[0], first);
    drop(store);
    let again = db.open().await;
    assert_eq!(again.load_messages(&id).await.unwrap(), stored, "durable across reopening");
    let list = again.list_sessions().await.unwrap();
    assert_eq!((list.len(), list[0].messages), (1, 2));
}

/// Many consultations appending at once: every write answered Ok is stored, in order, once.
async fn concurrent_appends_are_group_committed(engine: Engine) {
    let db = Db::new(engine);
    let store = std::sync::Arc::new(db.open().await);
    for s in 0..5 {
        store.open_session(&session(&format!("s{s}"))).await.unwrap();
    }
    let mut tasks = Vec::new();
    for s in 0..5 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Ten appends per session in flight together, plus a duplicate of each.
            let id = sid(&format!("s{s}"));
            let writes = (1..=10u32).flat_map(|seq| [seq, seq]).map(|seq| {
                let (store, id) = (store.clone(), id.clone());
                async move { store.append_message(&id, &message(seq, &format!("m{seq}"))).await }
            });
            futures_util::future::join_all(writes).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().iter().all(Result::is_ok));
    }
    for s in 0..5 {
        let seqs: Vec<u32> = store.load_messages(&sid(&format!("s{s}"))).await.unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    }
}

/// A write the database refuses (no such session) is answered with its error; the writes
/// batched with it succeed.
async fn a_failing_write_fails_alone(engine: Engine) {
    let db = Db::new(engine);
    let store = std::sync::Arc::new(db.open().await);
    store.open_session(&session("ok")).await.unwrap();
    let writes = (1..=20u32).map(|seq| {
        let store = store.clone();
        let id = sid(if seq % 5 == 0 { "missing" } else { "ok" });
        async move { store.append_message(&id, &message(seq, "x")).await.is_ok() }
    });
    let answers = futures_util::future::join_all(writes).await;
    assert_eq!(answers, (1..=20u32).map(|seq| seq % 5 != 0).collect::<Vec<_>>());
    let stored: Vec<u32> = store.load_messages(&sid("ok")).await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(stored, (1..=20u32).filter(|s| s % 5 != 0).collect::<Vec<_>>());
}

async fn a_newer_schema_is_refused_and_left_untouched(engine: Engine) {
    let db = Db::new(engine);
    let store = db.open().await;
    store.open_session(&session("s1")).await.unwrap();
    drop(store);
    db.raw("UPDATE schema_version SET version = 99").await;
    let err = Store::open(&db.url, "normal", Lease::unowned()).await.err().expect("refused");
    let expected = format!("database schema version 99 is newer than this binary supports ({}); upgrade the consultant binary", super::migrations::sqlite::LATEST);
    assert!(err.to_string().contains(&expected), "{err}");
    assert_eq!(db.raw("SELECT version FROM schema_version").await.as_deref(), Some("99"));
    assert_eq!(db.raw("SELECT COUNT(*) FROM sessions").await.as_deref(), Some("1"));
}

/// An orphan (here: unowned, as rows from before leases) claimed by two stores at once, round
/// after round, goes to exactly one of them.
async fn two_stores_never_claim_the_same_orphan(engine: Engine) {
    let db = Db::new(engine);
    let writer = db.open().await;
    let (a, b) = (db.open_owned("worker-a", Duration::from_secs(30)).await, db.open_owned("worker-b", Duration::from_secs(30)).await);
    for round in 0..25 {
        let id = format!("orphan-{round}");
        writer.open_session(&session(&id)).await.unwrap();
        let (x, y) = tokio::join!(a.claim_orphans(), b.claim_orphans());
        let (x, y) = (x.unwrap(), y.unwrap());
        let ids: Vec<String> = x.iter().chain(&y).map(|r| r.session_id.to_string()).collect();
        assert_eq!(ids, vec![id.clone()], "round {round}: exactly one store claims it");
        let owner = db.raw(&format!("SELECT owner FROM sessions WHERE session_id = '{id}'")).await.unwrap();
        assert_eq!(owner, if x.is_empty() { "worker-b" } else { "worker-a" });
    }
    // Finalized sessions are never claimed, and a claim by the owner itself takes nothing.
    writer.set_status(&sid("orphan-0"), SessionStatus::Interrupted, None, Some(now())).await.unwrap();
    assert!(a.claim_orphans().await.unwrap().is_empty() && b.claim_orphans().await.unwrap().is_empty());
}

async fn a_renewed_lease_is_never_claimed_an_expired_one_is(engine: Engine) {
    let db = Db::new(engine);
    let lease = Duration::from_millis(600);
    let live = db.open_owned("live", lease).await;
    let dead = db.open_owned("dead", lease).await;
    live.open_session(&session("kept")).await.unwrap();
    dead.open_session(&session("lost")).await.unwrap();
    let peer = db.open_owned("peer", lease).await;
    assert!(peer.claim_orphans().await.unwrap().is_empty(), "fresh leases are not claimed");
    drop(dead); // its renewals stop
    tokio::time::sleep(lease * 3).await;
    let claimed: Vec<String> = peer.claim_orphans().await.unwrap().iter().map(|r| r.session_id.to_string()).collect();
    assert_eq!(claimed, vec!["lost".to_owned()], "the expired lease is claimed, the renewed one is not");
    let owners: Vec<(String, Option<String>)> = peer.list_sessions().await.unwrap().into_iter().map(|s| (s.record.session_id.to_string(), s.owner)).collect();
    assert!(owners.contains(&("lost".into(), Some("peer".into()))) && owners.contains(&("kept".into(), Some("live".into()))), "{owners:?}");
    drop(live);
    tokio::time::sleep(lease * 2).await;
    let claimed: Vec<String> = peer.claim_orphans().await.unwrap().iter().map(|r| r.session_id.to_string()).collect();
    assert_eq!(claimed, vec!["kept".to_owned()], "once its worker is gone, its lease expires too");
}

/// A database written before provenance was kept opens, reads its anketas with no
/// provenance, and stores new ones with it (SQLite only: there were no older PostgreSQL ones).
#[tokio::test]
async fn a_sqlite_file_from_before_provenance_opens_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let old = rusqlite::Connection::open(&path).unwrap();
    old.execute_batch(
        "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, room TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, failure TEXT);
         CREATE TABLE messages (session_id TEXT NOT NULL REFERENCES sessions(session_id), seq INTEGER NOT NULL, role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), text TEXT NOT NULL, at TEXT NOT NULL, interrupted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (session_id, seq));
         CREATE TABLE anketas (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(session_id), message_count INTEGER NOT NULL, is_final INTEGER NOT NULL, at TEXT NOT NULL, anketa TEXT NOT NULL);
         INSERT INTO sessions VALUES ('old', 'consultation-old', 'active', '2026-01-01T10:00:00+00:00', NULL, NULL);
         INSERT INTO messages VALUES ('old', 1, 'assistant', 'Здравствуйте!', '2026-01-01T10:00:01+00:00', 0);
         INSERT INTO anketas (session_id, message_count, is_final, at, anketa) VALUES ('old', 6, 0, '2026-01-01T10:05:00+00:00', '{\"client_name\":\"Анна\"}');",
    )
    .unwrap();
    drop(old);
    let url = DatabaseUrl::Sqlite(path.clone());
    let store = Store::open(&url, "normal", Lease::unowned()).await.unwrap();
    let id = sid("old");
    let before = store.latest_anketa(&id).await.unwrap().unwrap();
    assert_eq!((before.anketa.0["client_name"].as_str(), before.message_count), (Some("Анна"), 6));
    assert!(before.provenance.is_empty());
    let record = evidenced_record(8, true);
    store.save_anketa(&id, &record).await.unwrap();
    store.append_message(&id, &DialogueMessage { role: Role::ToolCall, ..message(2, "{}") }).await.unwrap();
    let detail = store.session_detail(&id).await.unwrap();
    assert_eq!((detail.anketa_history.len(), detail.messages.len()), (2, 2));
    assert_eq!(detail.provenance, record.provenance);
    // The legacy row has no owner: it is an orphan any worker may finalize.
    let claimed = Store::open(&url, "normal", Lease::owned("w", Duration::from_secs(5))).await.unwrap().claim_orphans().await.unwrap();
    assert_eq!(claimed.len(), 1);
    drop(store);
    let again = Store::open(&url, "normal", Lease::unowned()).await.unwrap();
    assert_eq!(again.session_detail(&id).await.unwrap().anketa_history, detail.anketa_history, "reopening changes nothing");
    let version = rusqlite::Connection::open(&path).unwrap().query_row("SELECT version FROM schema_version", [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(version, super::migrations::sqlite::LATEST);
}

async fn fill(store: &Store) {
    for (i, id) in ["first", "second"].iter().enumerate() {
        store.open_session(&session(id)).await.unwrap();
        for seq in 1..=4 {
            store.append_message(&sid(id), &message(seq, &format!("{id} {seq}"))).await.unwrap();
        }
        store.save_anketa(&sid(id), &evidenced_record(2, false)).await.unwrap();
        if i == 0 {
            store.save_anketa(&sid(id), &evidenced_record(4, true)).await.unwrap();
            store.set_status(&sid(id), SessionStatus::Completed, None, Some(now())).await.unwrap();
        }
    }
}

async fn details(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for s in store.list_sessions().await.unwrap() {
        out.push(serde_json::to_string(&store.session_detail(&s.record.session_id).await.unwrap()).unwrap());
    }
    out.sort();
    out
}

async fn migrate_between(from: Engine, to: Engine) {
    let (a, b) = (Db::new(from), Db::new(to));
    let (source, target) = (a.open().await, b.open().await);
    fill(&source).await;
    // A partial earlier copy: one session with half its dialogue.
    target.open_session(&source.session_detail(&sid("second")).await.unwrap().record).await.unwrap();
    target.append_message(&sid("second"), &source.load_messages(&sid("second")).await.unwrap()[0]).await.unwrap();
    let copied = migrate::copy_all(&source, &target).await.unwrap();
    assert_eq!((copied.sessions, copied.messages, copied.anketas), (1, 7, 3), "{copied}");
    assert_eq!(details(&target).await, details(&source).await);
    let again = migrate::copy_all(&source, &target).await.unwrap();
    assert_eq!(again, migrate::Copied::default(), "a second run copies nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_migrate_sqlite_to_postgres_and_back() {
    migrate_between(Engine::Sqlite, Engine::Postgres).await;
    migrate_between(Engine::Postgres, Engine::Sqlite).await;
}

#[tokio::test]
async fn an_unknown_session_is_reported_as_such() {
    let db = Db::new(Engine::Sqlite);
    let err = db.open().await.session_detail(&sid("nope")).await.err().unwrap();
    assert!(matches!(err, StoreError::UnknownSession(_)));
}
