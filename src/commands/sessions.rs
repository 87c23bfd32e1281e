//! `consultant sessions list|show|export`: read what the worker stored.

use std::fmt::Write as _;

use consultant_actors::SessionId;

use crate::cli::{ExportFormat, SessionsCommand};
use crate::config::Config;
use crate::store::{SessionDetail, SqliteStore};

pub async fn run(config: &Config, action: SessionsCommand) -> anyhow::Result<()> {
    let store = SqliteStore::open(&config.storage.path, &config.storage.synchronous)?;
    match action {
        SessionsCommand::List { json } => {
            let sessions = store.list_sessions().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else if sessions.is_empty() {
                println!("no sessions in {}", store.path().display());
            } else {
                println!("{:<38} {:<12} {:<26} {:>8}  room", "session_id", "status", "started_at", "messages");
                for s in sessions {
                    println!(
                        "{:<38} {:<12} {:<26} {:>8}  {}",
                        s.record.session_id,
                        s.record.status,
                        s.record.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        s.messages,
                        s.record.room
                    );
                }
            }
        }
        SessionsCommand::Show { session_id, json } => {
            let detail = detail(&store, &session_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", markdown(&detail));
            }
        }
        SessionsCommand::Export { session_id, format } => {
            let detail = detail(&store, &session_id).await?;
            match format {
                ExportFormat::Json => println!("{}", serde_json::to_string_pretty(&detail)?),
                ExportFormat::Md => print!("{}", markdown(&detail)),
            }
        }
    }
    Ok(())
}

async fn detail(store: &SqliteStore, id: &SessionId) -> anyhow::Result<SessionDetail> {
    store.session_detail(id).await.map_err(|e| match e {
        consultant_actors::ports::StoreError::UnknownSession(id) => {
            anyhow::anyhow!("no session `{id}` in {}; `consultant sessions list` shows the stored ones", store.path().display())
        }
        other => other.into(),
    })
}

/// A readable report of one consultation.
pub fn markdown(d: &SessionDetail) -> String {
    let mut out = String::new();
    let r = &d.record;
    let _ = writeln!(out, "# Консультация {}\n", r.session_id);
    let _ = writeln!(out, "- room: {}", r.room);
    let _ = writeln!(out, "- status: {}", r.status);
    let _ = writeln!(out, "- started_at: {}", r.started_at.to_rfc3339());
    let _ = writeln!(out, "- ended_at: {}", r.ended_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()));
    if let Some(f) = &r.failure {
        let _ = writeln!(out, "- failure: {f}");
    }
    let _ = writeln!(out, "\n## Диалог\n");
    for m in &d.messages {
        let who = match m.role {
            consultant_actors::Role::User => "Клиент",
            consultant_actors::Role::Assistant => "Консультант",
            consultant_actors::Role::ToolCall => "Вызов функции",
            consultant_actors::Role::ToolResult => "Результат функции",
        };
        let cut = if m.interrupted { " (прервано)" } else { "" };
        let _ = writeln!(out, "{}. **{who}**{cut} [{}]: {}", m.seq, m.at.format("%H:%M:%S"), m.text);
    }
    let _ = writeln!(out, "\n## Анкета\n");
    if d.anketa.0.is_empty() {
        let _ = writeln!(out, "(пусто)");
    }
    for (k, v) in &d.anketa.0 {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(out, "- {k}: {value}");
    }
    out
}
