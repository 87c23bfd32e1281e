//! The `consultant` binary's `sessions` commands and start-up configuration errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::Utc;
use consultant::store::SqliteStore;
use consultant_actors::anketa::Anketa;
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{AnketaRecord, DialogueStore, SessionRecord};
use consultant_actors::session::SessionStatus;

fn config_with_db(dir: &Path, db: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let text = shipped.replace("path = \"data/consultations.db\"", &format!("path = {:?}", db.display().to_string()));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn consultant(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consultant"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

async fn seeded(dir: &Path) -> PathBuf {
    let db = dir.join("c.db");
    let store = SqliteStore::open(&db, "normal").unwrap();
    let id = SessionId::parse("3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d").unwrap();
    let started = Utc::now();
    store
        .open_session(&SessionRecord { session_id: id.clone(), room: "consultation-3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d".into(), status: SessionStatus::Active, started_at: started, ended_at: None, failure: None })
        .await
        .unwrap();
    for (seq, role, text) in [(1, Role::Assistant, "Здравствуйте! Как вас зовут?"), (2, Role::User, "Меня зовут Анна.")] {
        store.append_message(&id, &DialogueMessage { seq, role, text: text.into(), at: Utc::now(), interrupted: false }).await.unwrap();
    }
    let mut anketa = Anketa::default();
    anketa.0.insert("client_name".into(), serde_json::json!("Анна"));
    store.save_anketa(&id, &AnketaRecord { anketa, provenance: Default::default(), message_count: 2, is_final: true, at: Utc::now() }).await.unwrap();
    store.set_status(&id, SessionStatus::Completed, None, Some(Utc::now())).await.unwrap();
    db
}

#[tokio::test]
async fn sessions_list_show_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path()).await;
    let config = config_with_db(dir.path(), &db);
    let cfg = config.to_str().unwrap();

    let out = consultant(dir.path(), &["--config", cfg, "sessions", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["session_id"], "3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d");
    assert_eq!(list[0]["status"], "completed");
    assert_eq!(list[0]["messages"], 2);

    let out = consultant(dir.path(), &["--config", cfg, "sessions", "show", "3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d", "--json"]);
    assert!(out.status.success());
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["session_id", "room", "status", "started_at", "ended_at", "messages", "anketa"] {
        assert!(show.get(key).is_some(), "missing {key} in {show}");
    }
    assert_eq!(show["messages"][1]["role"], "user");
    assert_eq!(show["messages"][1]["text"], "Меня зовут Анна.");
    assert!(show["messages"][1]["at"].is_string());
    assert_eq!(show["anketa"]["client_name"], "Анна");

    let out = consultant(dir.path(), &["--config", cfg, "sessions", "export", "3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d", "--format", "md"]);
    assert!(out.status.success());
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.contains("**Клиент**") && md.contains("Меня зовут Анна.") && md.contains("client_name: Анна"), "{md}");

    let out = consultant(dir.path(), &["--config", cfg, "sessions", "list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d") && text.contains("completed"), "{text}");
}

#[tokio::test]
async fn unknown_or_malformed_session_ids_are_refused_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path()).await;
    let config = config_with_db(dir.path(), &db);
    let cfg = config.to_str().unwrap();
    let out = consultant(dir.path(), &["--config", cfg, "sessions", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no session `nope`") && err.contains("sessions list"), "{err}");

    let out = consultant(dir.path(), &["--config", cfg, "sessions", "export", "../../etc/passwd", "--format", "json"]);
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
