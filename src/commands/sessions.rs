//! `consultant sessions list|show|export`: read what the worker stored.

use std::fmt::Write as _;

use consultant_actors::provenance::FieldProvenance;
use consultant_actors::{AnketaField, DialogueMessage, Role, SessionId};
use serde_json::Value;

use crate::cli::{ExportFormat, SessionsCommand};
use crate::config::Config;
use crate::store::{migrate, DatabaseUrl, Lease, SessionDetail, SessionSummary, Store};

pub async fn run(config: &Config, action: SessionsCommand) -> anyhow::Result<()> {
    if let SessionsCommand::Migrate { from, to } = &action {
        return copy(from, to, &config.storage.synchronous).await;
    }
    let store = Store::from_config(&config.storage, None).await?;
    let fields = &config.consultation.anketa_fields;
    match action {
        SessionsCommand::List { json } => {
            let sessions = store.list_sessions().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else if sessions.is_empty() {
                println!("no sessions in {}", store.location());
            } else {
                print!("{}", table(&sessions));
            }
        }
        SessionsCommand::Show { session_id, json } => {
            let detail = detail(&store, &session_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", markdown(&detail, fields));
            }
        }
        SessionsCommand::Export { session_id, format } => {
            let detail = detail(&store, &session_id).await?;
            match format {
                ExportFormat::Json => println!("{}", serde_json::to_string_pretty(&detail)?),
                ExportFormat::Md => print!("{}", markdown(&detail, fields)),
            }
        }
        SessionsCommand::Migrate { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// `sessions migrate --from URL --to URL`: both stores unowned (a copy runs no session).
async fn copy(from: &str, to: &str, synchronous: &str) -> anyhow::Result<()> {
    let parse = |flag: &str, raw: &str| DatabaseUrl::parse(raw).map_err(|e| anyhow::anyhow!("--{flag}: {e}; accepted: sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"));
    let (from, to) = (parse("from", from)?, parse("to", to)?);
    let source = Store::open(&from, synchronous, Lease::unowned()).await?;
    let target = Store::open(&to, synchronous, Lease::unowned()).await?;
    let copied = migrate::copy_all(&source, &target).await?;
    println!("{copied}: from {} to {}", from.masked(), to.masked());
    Ok(())
}

async fn detail(store: &Store, id: &SessionId) -> anyhow::Result<SessionDetail> {
    store.session_detail(id).await.map_err(|e| match e {
        consultant_actors::ports::StoreError::UnknownSession(id) => {
            anyhow::anyhow!("no session `{id}` in {}; `consultant sessions list` shows the stored ones", store.location())
        }
        other => other.into(),
    })
}

/// One line per session, each column as wide as its widest cell.
pub fn table(sessions: &[SessionSummary]) -> String {
    let header = ["session_id", "status", "started_at", "messages", "room"].map(str::to_owned);
    let rows: Vec<[String; 5]> = sessions
        .iter()
        .map(|s| {
            let r = &s.record;
            [r.session_id.to_string(), r.status.to_string(), r.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(), s.messages.to_string(), r.room.clone()]
        })
        .collect();
    let width = |i: usize| std::iter::once(&header).chain(&rows).map(|row| row[i].chars().count()).max().unwrap_or(0);
    let (id, status, started, messages) = (width(0), width(1), width(2), width(3));
    let mut out = String::new();
    for [a, b, c, d, e] in std::iter::once(&header).chain(&rows) {
        let _ = writeln!(out, "{a:<id$}  {b:<status$}  {c:<started$}  {d:>messages$}  {e}");
    }
    out
}

fn speaker(role: Role) -> &'static str {
    match role {
        Role::User => "Клиент",
        Role::Assistant => "Консультант",
        Role::ToolCall => "Вызов функции",
        Role::ToolResult => "Результат функции",
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Which messages an extraction read: all of them up to its message count.
fn extraction_text(set_at: usize) -> String {
    if set_at == 0 {
        "извлечено до того, как источники стали записываться".into()
    } else {
        format!("извлечено по сообщениям 1–{set_at}")
    }
}

/// A readable report of one consultation; anketa fields are named by their configured
/// description, each with the messages its value came from.
pub fn markdown(d: &SessionDetail, fields: &[AnketaField]) -> String {
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
        let cut = if m.interrupted { " (прервано)" } else { "" };
        let _ = writeln!(out, "{}. **{}**{cut} [{}]: {}", m.seq, speaker(m.role), m.at.format("%H:%M:%S"), m.text);
    }
    let _ = writeln!(out, "\n## Анкета\n");
    if d.anketa.0.is_empty() {
        let _ = writeln!(out, "(пусто)");
    }
    // Configured fields in their configured order, then any no longer configured (by key).
    let configured = fields.iter().filter(|f| d.anketa.0.contains_key(&f.name)).map(|f| (f.name.as_str(), f.description.trim()));
    let others = d.anketa.0.keys().filter(|k| !fields.iter().any(|f| &f.name == *k)).map(|k| (k.as_str(), ""));
    for (key, description) in configured.chain(others) {
        let label = if description.is_empty() { key } else { description };
        let _ = writeln!(out, "- **{label}**: {}", value_text(&d.anketa.0[key]));
        match d.provenance.get(key) {
            Some(origin) => field_origin(&mut out, origin, &d.messages),
            None => {
                let _ = writeln!(out, "  - источник не записан (анкета сохранена до того, как источники стали записываться)");
            }
        }
    }
    out
}

fn field_origin(out: &mut String, origin: &FieldProvenance, messages: &[DialogueMessage]) {
    if origin.evidence.is_empty() {
        let _ = writeln!(out, "  - источник: не указан");
    }
    for seq in &origin.evidence {
        match messages.iter().find(|m| m.seq == *seq) {
            Some(m) => writeln!(out, "  - источник: [{seq}] {}: «{}»", speaker(m.role), m.text),
            None => writeln!(out, "  - источник: [{seq}]"),
        }
        .ok();
    }
    let _ = writeln!(out, "  - {}", extraction_text(origin.set_at));
    for past in &origin.history {
        let cited = past.evidence.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ");
        let cited = if cited.is_empty() { "не указан".to_owned() } else { cited };
        let _ = writeln!(out, "  - прежнее значение: {} ({}; источник: {cited})", value_text(&past.value), extraction_text(past.set_at));
    }
}
