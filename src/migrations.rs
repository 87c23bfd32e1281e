//! Upgrades databases written by older releases to the current schema, in place, at start-up.
//! Each step detects what it changes, so running it twice (or on a new file) does nothing.

use rusqlite::{Connection, OptionalExtension};

use consultant_actors::ports::StoreError;

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

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("upgrading the database schema: {e}"))
}

/// Brings an existing database up to date. Runs after the schema's `CREATE ... IF NOT EXISTS`.
pub fn upgrade(conn: &mut Connection) -> Result<(), StoreError> {
    add_columns(conn)?;
    widen_message_roles(conn)
}

/// Columns added to the schema (`store::SCHEMA`) after databases were already in use: (table, column, type).
/// Each is nullable, so the rows written before it read as "not recorded".
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // Where each anketa value came from (JSON); the `anketa` column keeps the Python module's shape.
    ("anketas", "provenance", "TEXT"),
];

/// Brings a database created by an earlier release up to the schema (`store::SCHEMA`). Check and change run in
/// one write transaction, so two processes opening the same old file do not both add a column.
fn add_columns(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(io)?;
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = tx
            .query_row(&format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"), [column], |r| r.get(0))
            .map_err(io)?;
        if !present {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}")).map_err(io)?;
            tracing::info!(table, column, "database migrated: column added");
        }
    }
    tx.commit().map_err(io)
}


/// Releases before tool calls allowed only `user` and `assistant` in `messages.role`. SQLite
/// cannot change a CHECK constraint, so the table is rebuilt, rows kept, in one transaction.
fn widen_message_roles(conn: &Connection) -> Result<(), StoreError> {
    let sql: Option<String> = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'", [], |r| r.get(0))
        .optional()
        .map_err(io)?;
    if sql.as_deref().is_none_or(|s| s.contains("'tool_call'")) {
        return Ok(());
    }
    let rebuild = format!(
        "BEGIN IMMEDIATE;
         ALTER TABLE messages RENAME TO messages_before_tools;
         {MESSAGES_TABLE}
         INSERT INTO messages (session_id, seq, role, text, at, interrupted)
             SELECT session_id, seq, role, text, at, interrupted FROM messages_before_tools;
         DROP TABLE messages_before_tools;
         COMMIT;"
    );
    if let Err(e) = conn.execute_batch(&rebuild) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(io(e));
    }
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
}
