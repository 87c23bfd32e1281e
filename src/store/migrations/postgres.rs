//! PostgreSQL schema, versioned. Times are `timestamptz` (microseconds); anketa and provenance
//! stay JSON text, byte for byte what SQLite stores. Migrations hold a transaction-scoped
//! advisory lock, so workers starting together apply each step once.

use consultant_actors::ports::StoreError;
use tokio_postgres::Client;

use super::{io, too_new};

/// (version, SQL). Never edit a released step: add one.
const STEPS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            room       TEXT NOT NULL,
            status     TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            ended_at   TIMESTAMPTZ,
            failure    TEXT
        );
        CREATE TABLE messages (
            session_id  TEXT NOT NULL REFERENCES sessions(session_id),
            seq         BIGINT NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool_call', 'tool_result')),
            text        TEXT NOT NULL,
            at          TIMESTAMPTZ NOT NULL,
            interrupted BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (session_id, seq)
        );
        CREATE TABLE anketas (
            id            BIGSERIAL PRIMARY KEY,
            session_id    TEXT NOT NULL REFERENCES sessions(session_id),
            message_count BIGINT NOT NULL,
            is_final      BOOLEAN NOT NULL,
            at            TIMESTAMPTZ NOT NULL,
            anketa        TEXT NOT NULL,
            provenance    TEXT
        );
        CREATE INDEX anketas_by_session ON anketas(session_id, id);
        CREATE INDEX sessions_by_status ON sessions(status);",
    ),
    (
        // Leases: the worker running an open session, and until when (the server's clock).
        2,
        "ALTER TABLE sessions ADD COLUMN owner TEXT;
         ALTER TABLE sessions ADD COLUMN lease_until TIMESTAMPTZ;",
    ),
];

pub const LATEST: i64 = 2;

/// Any constant: the key of the migration lock.
const LOCK: i64 = 0x636f_6e73_756c_74;

async fn version(client: &impl tokio_postgres::GenericClient) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(io)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client.query_one("SELECT MAX(version) FROM schema_version", &[]).await.map_err(io)?;
    Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
}

/// Brings the database to [`LATEST`], or refuses (changing nothing) one that is newer.
pub async fn upgrade(client: &mut Client) -> Result<(), StoreError> {
    let found = version(&*client).await?;
    if found > LATEST {
        return Err(too_new(found, LATEST));
    }
    for (target, sql) in STEPS {
        let tx = client.transaction().await.map_err(io)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK]).await.map_err(io)?;
        let current = version(&tx).await?;
        if current > LATEST {
            return Err(too_new(current, LATEST));
        }
        if current >= *target {
            continue;
        }
        tx.batch_execute(sql).await.map_err(io)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL); DELETE FROM schema_version;").await.map_err(io)?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[target]).await.map_err(io)?;
        tx.commit().await.map_err(io)?;
        tracing::info!(version = target, "PostgreSQL schema migrated");
    }
    Ok(())
}
