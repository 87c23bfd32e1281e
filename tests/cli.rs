//! The `consultant` binary's `sessions` commands and start-up configuration errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, SubsecRound, Utc};
use consultant::store::{DatabaseUrl, Lease, Store};
use consultant_actors::anketa::Anketa;
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{AnketaRecord, DialogueStore, SessionRecord};
use consultant_actors::provenance::{ExtractedAnketa, Provenance};
use consultant_actors::session::SessionStatus;
use consultant_fakes::postgres::PgServer;
use serde_json::json;

#[derive(Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

/// The database a test's `consultant` runs against: a SQLite file named in the config file,
/// or a throwaway PostgreSQL server given by CONSULTANT_DATABASE_URL.
struct Db {
    url: DatabaseUrl,
    _server: Option<PgServer>,
}

impl Db {
    fn new(engine: Engine, dir: &Path) -> Db {
        match engine {
            Engine::Sqlite => Db { url: DatabaseUrl::Sqlite(dir.join("c.db")), _server: None },
            Engine::Postgres => {
                let server = PgServer::start();
                Db { url: DatabaseUrl::Postgres(server.fresh_database()), _server: Some(server) }
            }
        }
    }

    async fn store(&self) -> Store {
        Store::open(&self.url, "normal", Lease::unowned()).await.unwrap()
    }

    fn run(&self, dir: &Path, args: &[&str]) -> Output {
        let mut command = command(dir, args);
        if let DatabaseUrl::Postgres(url) = &self.url {
            command.env("CONSULTANT_DATABASE_URL", url);
        }
        command.output().unwrap()
    }
}

/// Each test written as `async fn name(engine: Engine)`, run on both engines.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite_engine {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Engine::Sqlite).await
            })*
        }
        mod postgres_engine {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Engine::Postgres).await
            })*
        }
    };
}

on_both_engines!(
    sessions_list_show_and_export,
    sessions_show_names_anketa_fields_by_description_with_their_evidence,
    sessions_list_lines_up_its_columns,
    unknown_or_malformed_session_ids_are_refused_with_exit_code_1,
);

/// The shipped config, with the SQLite path pointing at `db` (PostgreSQL comes from the env).
fn config_with_db(dir: &Path, db: &Db) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let text = match &db.url {
        DatabaseUrl::Sqlite(path) => shipped.replace("path = \"data/consultations.db\"", &format!("path = {:?}", path.display().to_string())),
        DatabaseUrl::Postgres(_) => shipped,
    };
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_consultant"));
    c.args(args).current_dir(dir).env_remove("RUST_LOG").env_remove("CONSULTANT_DATABASE_URL");
    c
}

fn consultant(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().unwrap()
}

/// Whole microseconds: what both engines keep exactly.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

const ID: &str = "3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d";

/// A stored consultation in which the caller corrected their name: the anketa snapshot after
/// two messages cites message 2, the final one message 4 and keeps "Аня" in its history.
async fn seeded(dir: &Path, engine: Engine) -> Db {
    let db = Db::new(engine, dir);
    let store = db.store().await;
    let id = SessionId::parse(ID).unwrap();
    let started = now();
    store
        .open_session(&SessionRecord { session_id: id.clone(), room: format!("consultation-{ID}"), status: SessionStatus::Active, started_at: started, ended_at: None, failure: None })
        .await
        .unwrap();
    let dialogue = [(1, Role::Assistant, "Здравствуйте! Как вас зовут?"), (2, Role::User, "Меня зовут Аня."), (3, Role::Assistant, "Аня — это полное имя?"), (4, Role::User, "Нет, Анна. Бюджет 100 тысяч.")];
    for (seq, role, text) in dialogue {
        store.append_message(&id, &DialogueMessage { seq, role, text: text.into(), at: now(), interrupted: false }).await.unwrap();
    }
    let (mut anketa, mut provenance) = (Anketa::default(), Provenance::default());
    let extractions = [(2, json!({"client_name": "Аня"}), vec![2]), (4, json!({"client_name": "Анна", "budget": "100 тысяч"}), vec![4])];
    for (count, values, cited) in extractions {
        let mut extracted = ExtractedAnketa::default();
        extracted.anketa = Anketa(serde_json::from_value(values).unwrap());
        extracted.evidence.insert("client_name".into(), cited);
        provenance.merge(&mut anketa, &extracted, count);
        let record = AnketaRecord { anketa: anketa.clone(), provenance: provenance.clone(), message_count: count, is_final: count == 4, at: now() };
        store.save_anketa(&id, &record).await.unwrap();
    }
    store.set_status(&id, SessionStatus::Completed, None, Some(now())).await.unwrap();
    drop(store);
    db
}

/// The anketa as `sessions show` and the Markdown export present it.
const ANKETA_MD: &str = "## Анкета

- **Имя клиента**: Анна
  - источник: [4] Клиент: «Нет, Анна. Бюджет 100 тысяч.»
  - извлечено по сообщениям 1–4
  - прежнее значение: Аня (извлечено по сообщениям 1–2; источник: [2])
- **Бюджет (как назвал клиент)**: 100 тысяч
  - источник: не указан
  - извлечено по сообщениям 1–4
";

async fn sessions_list_show_and_export(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), engine).await;
    let config = config_with_db(dir.path(), &db);
    let cfg = config.to_str().unwrap();

    let out = db.run(dir.path(), &["--config", cfg, "sessions", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["session_id"], ID);
    assert_eq!(list[0]["status"], "completed");
    assert_eq!(list[0]["messages"], 4);

    let out = db.run(dir.path(), &["--config", cfg, "sessions", "show", ID, "--json"]);
    assert!(out.status.success());
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["session_id", "room", "status", "started_at", "ended_at", "messages", "anketa", "provenance", "anketa_history"] {
        assert!(show.get(key).is_some(), "missing {key} in {show}");
    }
    assert_eq!(show["messages"][1]["role"], "user");
    assert_eq!(show["messages"][1]["text"], "Меня зовут Аня.");
    assert!(show["messages"][1]["at"].is_string());
    assert_eq!(show["anketa"], json!({"client_name": "Анна", "budget": "100 тысяч"}), "the stored anketa keeps its shape");
    let name = json!({"evidence": [4], "set_at": 4, "history": [{"value": "Аня", "evidence": [2], "set_at": 2}]});
    assert_eq!(show["provenance"], json!({"client_name": name, "budget": {"evidence": [], "set_at": 4}}), "{show:#}");
    assert_eq!(show["anketa_history"][0]["provenance"], json!({"client_name": {"evidence": [2], "set_at": 2}}), "{show:#}");

    let out = db.run(dir.path(), &["--config", cfg, "sessions", "export", ID, "--format", "json"]);
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(export["provenance"], show["provenance"]);

    let out = db.run(dir.path(), &["--config", cfg, "sessions", "export", ID, "--format", "md"]);
    assert!(out.status.success());
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.contains("**Клиент**") && md.contains("Меня зовут Аня."), "{md}");
    assert!(md.ends_with(ANKETA_MD), "fields named by description, each with its evidence:\n{md}");

    let out = db.run(dir.path(), &["--config", cfg, "sessions", "list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(ID) && text.contains("completed"), "{text}");
}

async fn sessions_show_names_anketa_fields_by_description_with_their_evidence(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), engine).await;
    let config = config_with_db(dir.path(), &db);
    let out = db.run(dir.path(), &["--config", config.to_str().unwrap(), "sessions", "show", ID]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with(ANKETA_MD), "{text}");
    assert!(!text.contains("client_name"), "the key is not what operators read: {text}");

    // An anketa stored before provenance was kept says so instead of citing nothing.
    {
        let store = db.store().await;
        let id = SessionId::parse("legacy").unwrap();
        store.open_session(&SessionRecord { session_id: id.clone(), room: "consultation-legacy".into(), status: SessionStatus::Completed, started_at: now(), ended_at: None, failure: None }).await.unwrap();
        let anketa = Anketa(serde_json::from_value(json!({"client_name": "Анна", "old_field": "x"})).unwrap());
        store.save_anketa(&id, &AnketaRecord { anketa, provenance: Provenance::default(), message_count: 2, is_final: true, at: now() }).await.unwrap();
    }
    let out = db.run(dir.path(), &["--config", config.to_str().unwrap(), "sessions", "show", "legacy"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let unknown = "  - источник не записан (анкета сохранена до того, как источники стали записываться)\n";
    assert!(text.ends_with(&format!("- **Имя клиента**: Анна\n{unknown}- **old_field**: x\n{unknown}")), "a field no longer configured goes by its key, last: {text}");
}

/// Columns line up whatever the lengths: a 64-character id and a short one.
async fn sessions_list_lines_up_its_columns(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), engine).await;
    let long = "x".repeat(64);
    {
        let store = db.store().await;
        let record = SessionRecord { session_id: SessionId::parse(&long).unwrap(), room: format!("consultation-{long}"), status: SessionStatus::Interrupted, started_at: now(), ended_at: None, failure: None };
        store.open_session(&record).await.unwrap();
    }
    let config = config_with_db(dir.path(), &db);
    let out = db.run(dir.path(), &["--config", config.to_str().unwrap(), "sessions", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    let header: String = lines[0].iter().collect();
    let column = |name: &str| header.find(name).unwrap_or_else(|| panic!("no {name} in {header:?}"));
    // Left-aligned columns start where their header does, two spaces after the previous one.
    for name in ["status", "started_at", "room"] {
        let at = column(name);
        for line in &lines[1..] {
            let row: String = line.iter().collect();
            assert!(line[at - 2] == ' ' && line[at - 1] == ' ' && line[at] != ' ', "{name} misaligned in {row:?}\n{text}");
        }
    }
    // The message count is right-aligned under its header.
    let end = column("messages") + "messages".len() - 1;
    assert_eq!(lines.iter().map(|l| l[end]).collect::<String>(), "s04", "{text}");
    assert_eq!(column("status"), 64 + 2, "the id column is as wide as the widest id: {text}");
}

async fn unknown_or_malformed_session_ids_are_refused_with_exit_code_1(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), engine).await;
    let config = config_with_db(dir.path(), &db);
    let cfg = config.to_str().unwrap();
    let out = db.run(dir.path(), &["--config", cfg, "sessions", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no session `nope`") && err.contains("sessions list"), "{err}");

    let out = db.run(dir.path(), &["--config", cfg, "sessions", "export", "../../etc/passwd", "--format", "json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only A-Z a-z 0-9 _ -"), "{err}");
}

#[test]
fn config_errors_name_the_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = consultant(dir.path(), &["--config", "missing.toml", "sessions", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.toml") && err.contains("--config"), "{err}");

    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    std::fs::write(dir.path().join("bad.toml"), shipped.replace("vad_threshold = 0.5", "vad_threshold = 7.0")).unwrap();
    let out = consultant(dir.path(), &["--config", "bad.toml", "sessions", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("realtime.vad_threshold") && err.contains("bad.toml") && err.contains("between 0.0 and 1.0"), "{err}");

    // .env in the working directory is read, and its values are validated too.
    std::fs::write(dir.path().join("good.toml"), &shipped).unwrap();
    std::fs::write(dir.path().join(".env"), "LIVEKIT_URL=notaurl\n").unwrap();
    let out = consultant(dir.path(), &["--config", "good.toml", "sessions", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LIVEKIT_URL") && err.contains("livekit.url"), "{err}");
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sessions migrate` copies SQLite into PostgreSQL and back, printing what it copied; a
/// second run copies nothing.
#[tokio::test]
async fn sessions_migrate_copies_both_ways_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = seeded(dir.path(), Engine::Sqlite).await;
    let pg = Db::new(Engine::Postgres, dir.path());
    let (DatabaseUrl::Sqlite(path), DatabaseUrl::Postgres(pg_url)) = (&sqlite.url, &pg.url) else { unreachable!() };
    let sqlite_url = format!("sqlite://{}", path.display());
    let migrate = |from: &str, to: &str| stdout(&consultant(dir.path(), &["sessions", "migrate", "--from", from, "--to", to]));
    let first = migrate(&sqlite_url, pg_url);
    assert!(first.starts_with("1 sessions copied (0 updated), 4 messages, 2 anketa snapshots"), "{first}");
    let second = migrate(&sqlite_url, pg_url);
    assert!(second.starts_with("0 sessions copied (0 updated), 0 messages, 0 anketa snapshots"), "{second}");
    let id = SessionId::parse(ID).unwrap();
    let (a, b) = (sqlite.store().await.session_detail(&id).await.unwrap(), pg.store().await.session_detail(&id).await.unwrap());
    assert_eq!(serde_json::to_value(&a).unwrap(), serde_json::to_value(&b).unwrap(), "the same session on both");

    let back = dir.path().join("back.db");
    let back_url = format!("sqlite://{}", back.display());
    assert!(migrate(pg_url, &back_url).starts_with("1 sessions copied"));
    assert!(migrate(pg_url, &back_url).starts_with("0 sessions copied (0 updated), 0 messages, 0 anketa snapshots"));
    let config = config_with_db(dir.path(), &Db { url: DatabaseUrl::Sqlite(back), _server: None });
    let list = stdout(&consultant(dir.path(), &["--config", config.to_str().unwrap(), "sessions", "show", ID, "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&list).unwrap(), serde_json::to_value(&a).unwrap());
}

/// The URL's password never shows: not in `config`, not in a connection error; a bad URL is a
/// start-up error naming the key.
#[test]
fn database_url_errors_name_the_key_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://consultant:hunter2@127.0.0.1:{}/nowhere", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let out = command(dir.path(), &["sessions", "list"]).env("CONSULTANT_DATABASE_URL", &url).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("consultant:***@127.0.0.1") && !err.contains("hunter2"), "{err}");

    let out = command(dir.path(), &["config"]).env("CONSULTANT_DATABASE_URL", &url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("storage.url") && text.contains("consultant:***@127.0.0.1") && !text.contains("hunter2"), "{text}");

    let out = command(dir.path(), &["sessions", "list"]).env("CONSULTANT_DATABASE_URL", "mysql://u:hunter2@h/d").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("storage.url") && err.contains("CONSULTANT_DATABASE_URL") && err.contains("postgres://") && !err.contains("hunter2"), "{err}");
}
