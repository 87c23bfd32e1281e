//! PostgreSQL store, for a fleet of workers sharing one database. Driver: `tokio-postgres`
//! with the `deadpool-postgres` pool (pure Rust, no libpq; both maintained). Same guarantees
//! as the SQLite store: one writer task group-commits whatever is queued in one transaction
//! and answers each waiter after the commit; if a batch fails, its writes are retried one by
//! one so every waiter hears about its own write. Appends and anketa snapshots are idempotent.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{AnketaRecord, DialogueStore, SessionRecord, StoreError, StoredSession};
use consultant_actors::session::SessionStatus;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Row};

use super::migrations::postgres as migrations;
use super::{anketa_json, io, DatabaseUrl, Lease, SessionDetail, SessionSummary};

const OPEN: &str = "('starting', 'active', 'finalizing')";
const SESSION_COLUMNS: &str = "session_id, room, status, started_at, ended_at, failure";
/// `lease_until` for a write by owner $1 with a lease of $2 seconds (NULL when unowned).
const LEASE: &str = "CASE WHEN $1::text IS NULL THEN NULL ELSE now() + $2::float8 * interval '1 second' END";

/// Each write holds its values ready to bind (the batch's statements are pipelined).
enum Write {
    OpenSession { record: SessionRecord, id: String, status: &'static str },
    Append { id: String, message: DialogueMessage, seq: i64, role: &'static str },
    Status { id: String, status: &'static str, failure: Option<String>, ended_at: Option<DateTime<Utc>> },
    Anketa { id: String, record: AnketaRecord, count: i64, json: String, provenance: String },
    Claim,
}

type Reply = oneshot::Sender<Result<Vec<SessionRecord>, StoreError>>;

#[derive(Clone)]
struct Owner {
    id: Option<String>,
    lease_secs: f64,
}

pub struct PgStore {
    pool: Pool,
    writes: mpsc::UnboundedSender<(Write, Reply)>,
    lease: Lease,
    location: String,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(task) = &self.renewer {
            task.abort();
        }
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    // tokio-postgres errors carry the server's message, never the connection string.
    match e.as_db_error() {
        Some(db) => StoreError::Io(format!("PostgreSQL: {}", db.message())),
        None => StoreError::Io(format!("PostgreSQL: {e}")),
    }
}

/// An error with its causes (the pool's "error connecting to server" says not why).
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

impl PgStore {
    /// Connects, migrates the schema and starts the writer (and, when owned, the lease renewer).
    pub async fn open(url: &DatabaseUrl, lease: Lease) -> Result<Self, StoreError> {
        let DatabaseUrl::Postgres(raw) = url else { return Err(io("not a PostgreSQL URL")) };
        let location = url.masked();
        let config: tokio_postgres::Config = raw.parse().map_err(|e| io(format!("storage.url `{location}`: {e}")))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(8).build().map_err(io)?;
        let mut client = pool.get().await.map_err(|e| io(format!("cannot connect to {location}: {}", with_causes(&e))))?;
        migrations::upgrade(&mut client).await?;
        drop(client);
        let (tx, rx) = mpsc::unbounded_channel();
        let owner = Owner { id: lease.owner.clone(), lease_secs: lease.duration.as_secs_f64() };
        tokio::spawn(writer_loop(pool.clone(), rx, owner.clone()));
        let renewer = lease.owner.is_some().then(|| tokio::spawn(renew_loop(pool.clone(), owner, lease.renew_every())));
        Ok(Self { pool, writes: tx, lease, location, renewer })
    }

    /// The URL with its password masked.
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    async fn write(&self, write: Write) -> Result<Vec<SessionRecord>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send((write, tx)).map_err(|_| io("the database writer has stopped"))?;
        rx.await.map_err(|_| io("the database writer has stopped"))?
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| io(format!("cannot connect to {}: {}", self.location, with_causes(&e))))
    }

    async fn query(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg)?;
        client.query(&stmt, params).await.map_err(pg)
    }

    /// All sessions, newest first, with message counts (for `sessions list`).
    pub async fn list_sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        let sql = "SELECT s.session_id, s.room, s.status, s.started_at, s.ended_at, s.failure,
                          (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.session_id), s.owner
                   FROM sessions s ORDER BY s.started_at DESC, s.session_id";
        let summary = |r: &Row| Ok(SessionSummary { record: session_row(r)?, messages: r.get::<_, i64>(6) as usize, owner: r.get(7) });
        self.query(sql, &[]).await?.iter().map(summary).collect()
    }

    /// One session with its dialogue and anketa history, or UnknownSession.
    pub async fn session_detail(&self, session_id: &SessionId) -> Result<SessionDetail, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1");
        let rows = self.query(&sql, &[&session_id.as_str()]).await?;
        let record = session_row(rows.first().ok_or_else(|| StoreError::UnknownSession(session_id.clone()))?)?;
        let messages = self.load_messages(session_id).await?;
        let rows = self.query("SELECT anketa, message_count, is_final, at, provenance FROM anketas WHERE session_id = $1 ORDER BY id", &[&session_id.as_str()]).await?;
        let history = rows.iter().map(anketa_row).collect::<Result<Vec<_>, _>>()?;
        Ok(SessionDetail::new(record, messages, history))
    }
}

fn session_row(r: &Row) -> Result<SessionRecord, StoreError> {
    let status: String = r.get(2);
    Ok(SessionRecord {
        session_id: SessionId::parse(r.get::<_, &str>(0)).map_err(io)?,
        room: r.get(1),
        status: SessionStatus::parse(&status).ok_or_else(|| io(format!("unknown status `{status}` in database")))?,
        started_at: r.get(3),
        ended_at: r.get(4),
        failure: r.get(5),
    })
}

fn anketa_row(r: &Row) -> Result<AnketaRecord, StoreError> {
    let provenance: Option<&str> = r.get(4);
    Ok(AnketaRecord {
        anketa: serde_json::from_str(r.get(0)).map_err(io)?,
        provenance: provenance.map(serde_json::from_str).transpose().map_err(io)?.unwrap_or_default(),
        message_count: r.get::<_, i64>(1) as usize,
        is_final: r.get(2),
        at: r.get(3),
    })
}

fn statement(write: &Write) -> String {
    match write {
        Write::OpenSession { .. } => format!(
            "INSERT INTO sessions (session_id, room, status, started_at, ended_at, failure, owner, lease_until)
             VALUES ($3, $4, $5, $6, $7, $8, $1, {LEASE})
             ON CONFLICT (session_id) DO UPDATE SET room = EXCLUDED.room, status = EXCLUDED.status,
               started_at = EXCLUDED.started_at, ended_at = NULL, failure = NULL, owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until"
        ),
        Write::Append { .. } => "INSERT INTO messages (session_id, seq, role, text, at, interrupted) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (session_id, seq) DO NOTHING"
            .into(),
        Write::Status { .. } => "UPDATE sessions SET status = $2, failure = COALESCE($3, failure), ended_at = COALESCE($4, ended_at) WHERE session_id = $1".into(),
        // Idempotent as on SQLite: the same snapshot re-sent is stored once.
        Write::Anketa { .. } => "INSERT INTO anketas (session_id, message_count, is_final, at, anketa, provenance)
             SELECT $1::text, $2::bigint, $3::boolean, $4::timestamptz, $5::text, $6::text WHERE NOT EXISTS (
               SELECT 1 FROM anketas WHERE session_id = $1 AND message_count = $2 AND is_final = $3 AND anketa = $5
                 AND provenance IS NOT DISTINCT FROM $6)"
            .into(),
        // Rows another claimer holds are skipped, and one it has just claimed no longer
        // matches (READ COMMITTED re-checks the WHERE on the new row): never claimed twice.
        Write::Claim => format!(
            "UPDATE sessions SET owner = $1, lease_until = {LEASE}
             WHERE session_id IN (
               SELECT session_id FROM sessions
               WHERE status IN {OPEN} AND (owner IS NULL OR lease_until IS NULL OR lease_until < now())
                 AND ($1::text IS NULL OR owner IS DISTINCT FROM $1)
               FOR UPDATE SKIP LOCKED)
             RETURNING {SESSION_COLUMNS}"
        ),
    }
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

fn binds<'a>(write: &'a Write, owner: &'a Owner) -> Vec<Param<'a>> {
    match write {
        Write::OpenSession { record: r, id, status } => vec![&owner.id, &owner.lease_secs, id, &r.room, status, &r.started_at, &r.ended_at, &r.failure],
        Write::Append { id, message: m, seq, role } => vec![id, seq, role, &m.text, &m.at, &m.interrupted],
        Write::Status { id, status, failure, ended_at } => vec![id, status, failure, ended_at],
        Write::Anketa { id, record, count, json, provenance } => vec![id, count, &record.is_final, &record.at, json, provenance],
        Write::Claim => vec![&owner.id, &owner.lease_secs],
    }
}

/// One transaction for the batch. Statements are prepared first (cached after the first
/// batch), then sent pipelined, in queue order, and the commit waits for them all.
async fn run_batch(pool: &Pool, batch: &[(Write, Reply)], owner: &Owner) -> Result<Vec<Vec<SessionRecord>>, StoreError> {
    let mut client = pool.get().await.map_err(io)?;
    let transaction = client.transaction().await.map_err(pg)?;
    let mut prepared = Vec::with_capacity(batch.len());
    for (write, _) in batch {
        prepared.push(transaction.prepare_cached(&statement(write)).await.map_err(pg)?);
    }
    let tx = &transaction;
    let sent = batch.iter().zip(&prepared).map(|((write, _), stmt)| async move {
        let rows = tx.query(stmt, &binds(write, owner)).await.map_err(pg)?;
        match write {
            Write::Claim => {
                let mut claimed = rows.iter().map(session_row).collect::<Result<Vec<_>, _>>()?;
                claimed.sort_by_key(|r| r.started_at);
                Ok(claimed)
            }
            _ => Ok(Vec::new()),
        }
    });
    let out = futures_util::future::join_all(sent).await.into_iter().collect::<Result<Vec<_>, StoreError>>()?;
    transaction.commit().await.map_err(|e| io(format!("commit failed: {}", pg(e))))?;
    Ok(out)
}

async fn write_alone(pool: &Pool, write: Write, reply: Reply, owner: &Owner) {
    let one = [(write, reply)];
    let result = run_batch(pool, &one, owner).await.map(|mut r| r.pop().unwrap_or_default());
    let [(_, reply)] = one;
    let _ = reply.send(result); // a waiter that gave up needs no answer
}

/// Group commit. On PostgreSQL one failed statement aborts the whole transaction, so a failed
/// batch (or commit) is written again write by write: every write is idempotent.
async fn writer_loop(pool: Pool, mut rx: mpsc::UnboundedReceiver<(Write, Reply)>, owner: Owner) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match run_batch(&pool, &batch, &owner).await {
            Ok(results) => {
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) if batch.len() == 1 => {
                let (_, reply) = batch.pop().expect("one write");
                let _ = reply.send(Err(e));
            }
            Err(e) => {
                tracing::warn!(writes = batch.len(), error = %e, "a PostgreSQL batch failed; writing its entries one by one");
                for (write, reply) in batch {
                    write_alone(&pool, write, reply, &owner).await;
                }
            }
        }
    }
}

/// One UPDATE per renewal for all of this owner's open sessions.
async fn renew_loop(pool: Pool, owner: Owner, every: std::time::Duration) {
    let sql = format!("UPDATE sessions SET lease_until = {LEASE} WHERE owner = $1 AND status IN {OPEN}");
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let result = async {
            let client = pool.get().await.map_err(io)?;
            client.execute(&sql, &[&owner.id, &owner.lease_secs]).await.map_err(pg)
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "renewing session leases failed; will retry");
        }
    }
}

#[async_trait]
impl DialogueStore for PgStore {
    async fn open_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let (id, status) = (record.session_id.as_str().to_owned(), record.status.as_str());
        self.write(Write::OpenSession { record: record.clone(), id, status }).await.map(drop)
    }

    async fn append_message(&self, session_id: &SessionId, message: &DialogueMessage) -> Result<(), StoreError> {
        let (id, seq, role) = (session_id.as_str().to_owned(), i64::from(message.seq), message.role.as_str());
        self.write(Write::Append { id, message: message.clone(), seq, role }).await.map(drop)
    }

    async fn set_status(&self, session_id: &SessionId, status: SessionStatus, failure: Option<&str>, ended_at: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        let (id, status) = (session_id.as_str().to_owned(), status.as_str());
        self.write(Write::Status { id, status, failure: failure.map(str::to_owned), ended_at }).await.map(drop)
    }

    async fn save_anketa(&self, session_id: &SessionId, record: &AnketaRecord) -> Result<(), StoreError> {
        let (json, provenance) = anketa_json(record);
        let count = record.message_count as i64;
        self.write(Write::Anketa { id: session_id.as_str().to_owned(), record: record.clone(), count, json, provenance }).await.map(drop)
    }

    async fn sessions_with_status(&self, status: SessionStatus) -> Result<Vec<SessionRecord>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE status = $1 ORDER BY started_at");
        self.query(&sql, &[&status.as_str()]).await?.iter().map(session_row).collect()
    }

    async fn load_messages(&self, session_id: &SessionId) -> Result<Vec<DialogueMessage>, StoreError> {
        let rows = self.query("SELECT seq, role, text, at, interrupted FROM messages WHERE session_id = $1 ORDER BY seq", &[&session_id.as_str()]).await?;
        rows.iter()
            .map(|r| {
                let role: &str = r.get(1);
                Ok(DialogueMessage {
                    seq: u32::try_from(r.get::<_, i64>(0)).map_err(io)?,
                    role: Role::parse(role).ok_or_else(|| io(format!("unknown role `{role}` in database")))?,
                    text: r.get(2),
                    at: r.get(3),
                    interrupted: r.get(4),
                })
            })
            .collect()
    }

    async fn latest_anketa(&self, session_id: &SessionId) -> Result<Option<AnketaRecord>, StoreError> {
        let sql = "SELECT anketa, message_count, is_final, at, provenance FROM anketas WHERE session_id = $1 ORDER BY id DESC LIMIT 1";
        self.query(sql, &[&session_id.as_str()]).await?.first().map(anketa_row).transpose()
    }

    async fn claim_orphans(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.write(Write::Claim).await
    }

    async fn session(&self, session_id: &SessionId) -> Result<Option<StoredSession>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS}, owner FROM sessions WHERE session_id = $1");
        let rows = self.query(&sql, &[&session_id.as_str()]).await?;
        rows.first().map(|r| Ok(StoredSession { record: session_row(r)?, owner: r.get(6) })).transpose()
    }

    fn owner(&self) -> Option<String> {
        self.lease().owner.clone()
    }
}
