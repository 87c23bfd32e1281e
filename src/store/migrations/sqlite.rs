//! SQLite schema, versioned. Version 1 is the schema as it was before versioning: it is
//! created if absent, and a file from an earlier release is brought up to it (provenance
//! column, widened message roles), each step detecting what it changes. Later versions are
//! plain numbered steps.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use consultant_actors::ports::StoreError;

use super::{io, too_new};

const BASE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    room       TEXT NOT NULL,
    status     TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    failure    TEXT
);
CREATE TABLE IF NOT EXISTS anketas (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id    TEXT NOT NULL REFERENCES sessions(session_id),
    message_count INTEGER NOT NULL,
    is_final      INTEGER NOT NULL,
    at            TEXT NOT NULL,
    anketa        TEXT NOT NULL,
    provenance    TEXT
);
CREATE INDEX IF NOT EXISTS anketas_by_session ON anketas(session_id, id);
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions(status);
";

/// The messages table as this release writes it: tool calls and their results are dialogue
/// entries too (roles `tool_call` / `tool_result`).
pub const MESSAGES_TABLE: &str = "
CREATE TABLE IF NOT EXISTS messages (
    session_id  TEXT NOT NULL REFERENCES sessions(session_id),
    seq         INTEGER NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool_call', 'tool_result')),
    text        TEXT NOT NULL,
    at          TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, seq)
);";

/// Numbered steps after the base. Leases: the worker that runs an open session, and until
/// when (unix milliseconds); NULL owner = written before leases, claimable by anyone.
const STEPS: &[(i64, &str)] = &[(
    2,
    "ALTER TABLE sessions ADD COLUMN owner TEXT;
     ALTER TABLE sessions ADD COLUMN lease_until INTEGER;",
)];

/// The newest version this binary knows.
pub const LATEST: i64 = 2;

/// The stored version: 0 for a file from before versioning (or a new one).
fn version(conn: &Connection) -> Result<i64, StoreError> {
    let has_table: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')", [], |r| r.get(0))
        .map_err(io)?;
    if !has_table {
        return Ok(0);
    }
    Ok(conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get::<_, Option<i64>>(0)).map_err(io)?.unwrap_or(0))
}

/// Refuses a database newer than this binary without writing to it.
pub fn check_not_newer(conn: &Connection) -> Result<(), StoreError> {
    match version(conn)? {
        v if v > LATEST => Err(too_new(v, LATEST)),
        _ => Ok(()),
    }
}

fn set_version(tx: &Transaction<'_>, v: i64) -> Result<(), StoreError> {
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL); DELETE FROM schema_version;").map_err(io)?;
    tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [v]).map_err(io)?;
    Ok(())
}

/// Brings the database to [`LATEST`]. Each step and its version bump commit together, in a
/// write (IMMEDIATE) transaction that re-reads the version, so two processes opening the same
/// old file do not both apply a step.
pub fn upgrade(conn: &mut Connection) -> Result<(), StoreError> {
    for target in 1..=LATEST {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(io)?;
        let current = version(&tx)?;
        if current > LATEST {
            return Err(too_new(current, LATEST));
        }
        if current >= target {
            continue;
        }
        if target == 1 {
            tx.execute_batch(BASE_SCHEMA).map_err(io)?;
            tx.execute_batch(MESSAGES_TABLE).map_err(io)?;
            add_columns(&tx)?;
            widen_message_roles(&tx)?;
        } else if let Some((_, sql)) = STEPS.iter().find(|(v, _)| *v == target) {
            tx.execute_batch(sql).map_err(io)?;
        }
        set_version(&tx, target)?;
        tx.commit().map_err(io)?;
        tracing::info!(version = target, "SQLite schema migrated");
    }
    Ok(())
}

/// Columns added to the base schema after databases were already in use: (table, column, type).
/// Each is nullable, so the rows written before it read as "not recorded".
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // Where each anketa value came from (JSON); the `anketa` column keeps the Python module's shape.
    ("anketas", "provenance", "TEXT"),
];

fn add_columns(tx: &Transaction<'_>) -> Result<(), StoreError> {
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = tx
            .query_row(&format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"), [column], |r| r.get(0))
            .map_err(io)?;
        if !present {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}")).map_err(io)?;
            tracing::info!(table, column, "database migrated: column added");
        }
    }
    Ok(())
}

/// Releases before tool calls allowed only `user` and `assistant` in `messages.role`. SQLite
/// cannot change a CHECK constraint, so the table is rebuilt, rows kept, in the caller's
/// transaction.
fn widen_message_roles(conn: &Connection) -> Result<(), StoreError> {
    let sql: Option<String> = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'", [], |r| r.get(0))
        .optional()
        .map_err(io)?;
    if sql.as_deref().is_none_or(|s| s.contains("'tool_call'")) {
        return Ok(());
    }
    let rebuild = format!(
        "ALTER TABLE messages RENAME TO messages_before_tools;
         {MESSAGES_TABLE}
         INSERT INTO messages (session_id, seq, role, text, at, interrupted)
             SELECT session_id, seq, role, text, at, interrupted FROM messages_before_tools;
         DROP TABLE messages_before_tools;"
    );
    conn.execute_batch(&rebuild).map_err(io)?;
    tracing::info!("database upgraded: messages may hold tool calls and results");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_MESSAGES: &str = "
        CREATE TABLE sessions (session_id TEXT PRIMARY KEY);
        CREATE TABLE messages (
            session_id  TEXT NOT NULL REFERENCES sessions(session_id),
            seq         INTEGER NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            text        TEXT NOT NULL,
            at          TEXT NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (session_id, seq)
        );
        INSERT INTO sessions VALUES ('s1');
        INSERT INTO messages VALUES ('s1', 1, 'assistant', 'Здравствуйте!', '2026-01-01T00:00:00Z', 0);
        INSERT INTO messages VALUES ('s1', 2, 'user', 'Привет', '2026-01-01T00:00:01Z', 1);";

    #[test]
    fn an_old_messages_table_is_rebuilt_with_its_rows_and_takes_tool_entries() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(OLD_MESSAGES).unwrap();
        let refused = conn.execute("INSERT INTO messages VALUES ('s1', 3, 'tool_call', '{}', 'x', 0)", []);
        assert!(refused.is_err(), "the old CHECK refuses tool entries");
        widen_message_roles(&conn).unwrap();
        widen_message_roles(&conn).unwrap(); // idempotent
        conn.execute("INSERT INTO messages VALUES ('s1', 3, 'tool_call', '{}', 'x', 0)", []).unwrap();
        let rows: Vec<(u32, String, String, bool)> = conn
            .prepare("SELECT seq, role, text, interrupted FROM messages ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, "assistant".into(), "Здравствуйте!".into(), false),
                (2, "user".into(), "Привет".into(), true),
                (3, "tool_call".into(), "{}".into(), false),
            ]
        );
        assert!(conn.execute("INSERT INTO messages VALUES ('s1', 4, 'system', '{}', 'x', 0)", []).is_err(), "other roles stay refused");
    }

    /// A file of the release before versioning (provenance column, tool roles, no
    /// schema_version) becomes version LATEST with its rows; upgrading again changes nothing.
    #[test]
    fn a_file_from_before_versioning_is_brought_to_the_latest_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(BASE_SCHEMA).unwrap();
        conn.execute_batch(MESSAGES_TABLE).unwrap();
        conn.execute_batch(
            "INSERT INTO sessions VALUES ('s1', 'r', 'active', '2026-01-01T00:00:00Z', NULL, NULL);
             INSERT INTO messages VALUES ('s1', 1, 'tool_call', '{}', '2026-01-01T00:00:01Z', 0);
             INSERT INTO anketas (session_id, message_count, is_final, at, anketa, provenance) VALUES ('s1', 1, 0, 'x', '{}', '{}');",
        )
        .unwrap();
        assert_eq!(version(&conn).unwrap(), 0);
        upgrade(&mut conn).unwrap();
        upgrade(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST);
        let row: (String, Option<String>, Option<i64>) = conn.query_row("SELECT status, owner, lease_until FROM sessions", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        assert_eq!(row, ("active".into(), None, None), "a legacy row has no owner: any worker may claim it");
        let counts: (i64, i64) = conn.query_row("SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM anketas)", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(counts, (1, 1));
        conn.execute_batch("UPDATE schema_version SET version = 7").unwrap();
        assert!(check_not_newer(&conn).unwrap_err().to_string().contains("database schema version 7 is newer than this binary supports (2)"));
        assert!(upgrade(&mut conn).is_err());
    }
}
