//! SQLite store (WAL). Writes go through one writer thread that commits whatever is queued
//! in a single transaction (group commit): each caller is answered only after its write is
//! durable, and many consultations share one fsync. Reads use their own connection on tokio's
//! blocking pool. Nothing here runs on an async worker thread.

use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{AnketaRecord, DialogueStore, SessionRecord, StoreError, StoredSession};
use consultant_actors::session::SessionStatus;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::migrations::sqlite as migrations;
use super::{anketa_json, io, Lease, SessionDetail, SessionSummary};

/// `status IN (...)` of the open statuses.
const OPEN: &str = "('starting', 'active', 'finalizing')";

/// Writes the writer thread commits, each answered after the commit.
enum Write {
    OpenSession(SessionRecord),
    Append(SessionId, DialogueMessage),
    Status { session_id: SessionId, status: SessionStatus, failure: Option<String>, ended_at: Option<DateTime<Utc>> },
    Anketa(SessionId, AnketaRecord),
    /// Extends the leases of every open session this store owns.
    Renew,
    Claim,
}

/// What a write returns: claims return the sessions taken.
type Reply = oneshot::Sender<Result<Vec<SessionRecord>, StoreError>>;

/// The owner and lease every write of one store uses.
#[derive(Clone)]
struct Owner {
    id: Option<String>,
    lease_ms: i64,
}

impl Owner {
    fn lease_until(&self) -> Option<i64> {
        self.id.as_ref().map(|_| Utc::now().timestamp_millis() + self.lease_ms)
    }
}

pub struct SqliteStore {
    path: PathBuf,
    writes: std_mpsc::Sender<(Write, Reply)>,
    reader: Arc<Mutex<Connection>>,
    lease: Lease,
    /// The checkpoint and lease threads run while this lives.
    _alive: Arc<()>,
}

fn open(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Io(format!("cannot open database {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(io)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(io)?;
    conn.pragma_update(None, "synchronous", synchronous).map_err(io)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(io)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating folder, file and schema if needed) the database, unowned: the sessions
    /// it opens are claimable by any store (one process, or tests).
    pub fn open(path: &Path, synchronous: &str) -> Result<Self, StoreError> {
        Self::open_with(path, synchronous, Lease::unowned())
    }

    /// Opens the database; sessions opened here are owned by `lease.owner`, renewed every
    /// third of the lease while the store lives.
    pub fn open_with(path: &Path, synchronous: &str, lease: Lease) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        if path.exists() {
            // Before any pragma writes to it: a newer schema is left untouched.
            let probe = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| StoreError::Io(format!("cannot open database {}: {e}", path.display())))?;
            migrations::check_not_newer(&probe)?;
        }
        let mut writer = open(path, synchronous)?;
        migrations::upgrade(&mut writer)?;
        // Checkpoints (the fsync-heavy part of WAL) run on their own thread, never inside a
        // commit that a consultation is waiting for.
        writer.pragma_update(None, "wal_autocheckpoint", 0).map_err(io)?;
        let alive = Arc::new(());
        let checkpointer = open(path, synchronous)?;
        thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn({
                let alive = Arc::downgrade(&alive);
                move || checkpoint_loop(checkpointer, alive)
            })
            .map_err(io)?;
        let reader = open(path, synchronous)?;
        let (tx, rx) = std_mpsc::channel::<(Write, Reply)>();
        let owner = Owner { id: lease.owner.clone(), lease_ms: lease.duration.as_millis() as i64 };
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, owner))
            .map_err(io)?;
        if lease.owner.is_some() {
            let (writes, alive, every) = (tx.clone(), Arc::downgrade(&alive), lease.renew_every());
            thread::Builder::new().name("sqlite-lease".into()).spawn(move || renew_loop(writes, alive, every)).map_err(io)?;
        }
        Ok(Self { path: path.to_owned(), writes: tx, reader: Arc::new(Mutex::new(reader)), lease, _alive: alive })
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write(&self, write: Write) -> Result<(), StoreError> {
        self.write_returning(write).await.map(|_| ())
    }

    async fn write_returning(&self, write: Write) -> Result<Vec<SessionRecord>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send((write, tx)).map_err(|_| StoreError::Io("the database writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Io("the database writer has stopped".into()))?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(io)?
    }

    /// All sessions, newest first, with message counts (for `sessions list`).
    pub async fn list_sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT s.session_id, s.room, s.status, s.started_at, s.ended_at, s.failure,
                            (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.session_id), s.owner
                     FROM sessions s ORDER BY s.started_at DESC, s.session_id",
                )
                .map_err(io)?;
            let rows = stmt.query_map([], |r| Ok((session_row(r)?, r.get::<_, i64>(6)?, r.get::<_, Option<String>>(7)?))).map_err(io)?;
            rows.map(|r| {
                let (record, messages, owner) = r.map_err(io)?;
                Ok(SessionSummary { record: record?, messages: messages as usize, owner })
            })
            .collect()
        })
        .await
    }

    /// One session with its dialogue and anketa history, or UnknownSession.
    pub async fn session_detail(&self, session_id: &SessionId) -> Result<SessionDetail, StoreError> {
        let id = session_id.clone();
        let record = self
            .read(move |c| {
                c.query_row(
                    "SELECT session_id, room, status, started_at, ended_at, failure FROM sessions WHERE session_id = ?1",
                    [id.as_str()],
                    session_row,
                )
                .optional()
                .map_err(io)?
                .transpose()
            })
            .await?
            .ok_or_else(|| StoreError::UnknownSession(session_id.clone()))?;
        let messages = self.load_messages(session_id).await?;
        let id = session_id.clone();
        let history = self
            .read(move |c| {
                let mut stmt = c
                    .prepare("SELECT anketa, message_count, is_final, at, provenance FROM anketas WHERE session_id = ?1 ORDER BY id")
                    .map_err(io)?;
                let rows = stmt.query_map([id.as_str()], anketa_row).map_err(io)?;
                rows.map(|r| r.map_err(io)?).collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(SessionDetail::new(record, messages, history))
    }
}

/// Sends a renewal every `every` until the store is dropped; a failed one is logged (the next
/// may succeed before the lease runs out).
fn renew_loop(writes: std_mpsc::Sender<(Write, Reply)>, alive: std::sync::Weak<()>, every: std::time::Duration) {
    loop {
        thread::sleep(every);
        if alive.upgrade().is_none() {
            return;
        }
        let (reply, answer) = oneshot::channel();
        if writes.send((Write::Renew, reply)).is_err() {
            return;
        }
        if let Ok(Err(e)) = answer.blocking_recv() {
            tracing::warn!(error = %e, "renewing session leases failed; will retry");
        }
    }
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(raw).map(|t| t.with_timezone(&Utc)).map_err(|e| io(format!("bad time `{raw}` in database: {e}")))
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SessionRecord, StoreError>> {
    let id: String = r.get(0)?;
    let status: String = r.get(2)?;
    let started: String = r.get(3)?;
    let ended: Option<String> = r.get(4)?;
    let room: String = r.get(1)?;
    let failure: Option<String> = r.get(5)?;
    Ok((|| {
        Ok(SessionRecord {
            session_id: SessionId::parse(&id).map_err(io)?,
            room,
            status: SessionStatus::parse(&status).ok_or_else(|| io(format!("unknown status `{status}` in database")))?,
            started_at: parse_time(&started)?,
            ended_at: ended.as_deref().map(parse_time).transpose()?,
            failure,
        })
    })())
}

fn anketa_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AnketaRecord, StoreError>> {
    let json: String = r.get(0)?;
    let count: i64 = r.get(1)?;
    let is_final: bool = r.get(2)?;
    let at: String = r.get(3)?;
    let provenance: Option<String> = r.get(4)?;
    Ok((|| {
        Ok(AnketaRecord {
            anketa: serde_json::from_str(&json).map_err(io)?,
            // NULL: stored before provenance was kept.
            provenance: provenance.as_deref().map(serde_json::from_str).transpose().map_err(io)?.unwrap_or_default(),
            message_count: count as usize,
            is_final,
            at: parse_time(&at)?,
        })
    })())
}

fn apply(tx: &rusqlite::Transaction<'_>, write: &Write, owner: &Owner) -> rusqlite::Result<Vec<SessionRecord>> {
    match write {
        Write::OpenSession(r) => {
            tx.execute(
                "INSERT INTO sessions (session_id, room, status, started_at, ended_at, failure, owner, lease_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(session_id) DO UPDATE SET room = excluded.room, status = excluded.status,
                   started_at = excluded.started_at, ended_at = NULL, failure = NULL, owner = excluded.owner, lease_until = excluded.lease_until",
                params![r.session_id.as_str(), r.room, r.status.as_str(), r.started_at.to_rfc3339(), r.ended_at.map(|t| t.to_rfc3339()), r.failure, owner.id, owner.lease_until()],
            )?;
        }
        Write::Append(id, m) => {
            tx.execute(
                "INSERT INTO messages (session_id, seq, role, text, at, interrupted) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(session_id, seq) DO NOTHING",
                params![id.as_str(), m.seq, m.role.as_str(), m.text, m.at.to_rfc3339(), m.interrupted],
            )?;
        }
        Write::Status { session_id, status, failure, ended_at } => {
            tx.execute(
                "UPDATE sessions SET status = ?2, failure = COALESCE(?3, failure), ended_at = COALESCE(?4, ended_at) WHERE session_id = ?1",
                params![session_id.as_str(), status.as_str(), failure, ended_at.map(|t| t.to_rfc3339())],
            )?;
        }
        Write::Anketa(id, a) => {
            let (json, provenance) = anketa_json(a);
            // Idempotent like messages: a snapshot re-sent after a Persistence restart (same
            // dialogue length, same content) is stored once; a different one is history.
            tx.execute(
                "INSERT INTO anketas (session_id, message_count, is_final, at, anketa, provenance)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS (
                   SELECT 1 FROM anketas WHERE session_id = ?1 AND message_count = ?2 AND is_final = ?3 AND anketa = ?5 AND provenance IS ?6)",
                params![id.as_str(), a.message_count as i64, a.is_final, a.at.to_rfc3339(), json, provenance],
            )?;
        }
        Write::Renew => {
            if let Some(id) = &owner.id {
                tx.execute(&format!("UPDATE sessions SET lease_until = ?2 WHERE owner = ?1 AND status IN {OPEN}"), params![id, owner.lease_until()])?;
            }
        }
        Write::Claim => {
            // One UPDATE in the writer's transaction: SQLite's write lock makes it atomic
            // against every other process. Never our own sessions (we are running them).
            let sql = format!(
                "UPDATE sessions SET owner = ?1, lease_until = ?2
                 WHERE status IN {OPEN} AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?3) AND (?1 IS NULL OR owner IS NOT ?1)
                 RETURNING session_id, room, status, started_at, ended_at, failure"
            );
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map(params![owner.id, owner.lease_until(), Utc::now().timestamp_millis()], session_row)?;
            let mut claimed = rows.map(|r| r.and_then(|r| r.map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into())))).collect::<rusqlite::Result<Vec<_>>>()?;
            claimed.sort_by_key(|r| r.started_at);
            return Ok(claimed);
        }
    }
    Ok(Vec::new())
}

/// Copies the WAL back into the database every second without blocking the writer (PASSIVE),
/// and truncates it when it has grown large. Ends with the store.
fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<()>) {
    loop {
        thread::sleep(std::time::Duration::from_secs(1));
        if alive.upgrade().is_none() {
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            return;
        }
        let wal_pages: rusqlite::Result<(i64, i64, i64)> =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
        match wal_pages {
            Ok((_, log, done)) if log > 10_000 && log == done => {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
        }
    }
}

/// Group commit: take everything queued, apply it in one transaction, answer everyone.
/// A write that fails alone (e.g. a constraint) is answered with its error; a failed commit
/// (disk full) is answered to the whole batch, which the callers then retry.
fn writer_loop(mut conn: Connection, rx: std_mpsc::Receiver<(Write, Reply)>, owner: Owner) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(io(&e)));
                }
                continue;
            }
        };
        let results: Vec<Result<Vec<SessionRecord>, StoreError>> = batch.iter().map(|(w, _)| apply(&tx, w, &owner).map_err(io)).collect();
        if results.iter().any(Result::is_err) && tx.is_autocommit() {
            // SQLite rolled the whole transaction back by itself (disk full, I/O error): what
            // was applied before the failure is gone, what came after ran on its own. Every
            // write is idempotent, so each is written again alone and answered for itself.
            drop(tx);
            tracing::warn!(writes = batch.len(), "SQLite rolled a batch back; writing its entries one by one");
            for (write, reply) in batch {
                let result = write_alone(&mut conn, &write, &owner);
                let _ = reply.send(result); // a waiter that gave up needs no answer
            }
            continue;
        }
        match tx.commit() {
            Ok(()) => {
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(io(format!("commit failed: {e}"))));
                }
            }
        }
    }
}

fn write_alone(conn: &mut Connection, write: &Write, owner: &Owner) -> Result<Vec<SessionRecord>, StoreError> {
    let tx = conn.transaction().map_err(io)?;
    let out = apply(&tx, write, owner).map_err(io)?;
    tx.commit().map_err(|e| io(format!("commit failed: {e}")))?;
    Ok(out)
}

#[async_trait]
impl DialogueStore for SqliteStore {
    async fn open_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.write(Write::OpenSession(record.clone())).await
    }

    async fn append_message(&self, session_id: &SessionId, message: &DialogueMessage) -> Result<(), StoreError> {
        self.write(Write::Append(session_id.clone(), message.clone())).await
    }

    async fn set_status(&self, session_id: &SessionId, status: SessionStatus, failure: Option<&str>, ended_at: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        self.write(Write::Status { session_id: session_id.clone(), status, failure: failure.map(str::to_owned), ended_at }).await
    }

    async fn save_anketa(&self, session_id: &SessionId, record: &AnketaRecord) -> Result<(), StoreError> {
        self.write(Write::Anketa(session_id.clone(), record.clone())).await
    }

    async fn sessions_with_status(&self, status: SessionStatus) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT session_id, room, status, started_at, ended_at, failure FROM sessions WHERE status = ?1 ORDER BY started_at")
                .map_err(io)?;
            let rows = stmt.query_map([status.as_str()], session_row).map_err(io)?;
            rows.map(|r| r.map_err(io)?).collect()
        })
        .await
    }

    async fn session(&self, session_id: &SessionId) -> Result<Option<StoredSession>, StoreError> {
        let id = session_id.as_str().to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare("SELECT session_id, room, status, started_at, ended_at, failure, owner FROM sessions WHERE session_id = ?1").map_err(io)?;
            let row = stmt
                .query_row([id], |r| Ok((session_row(r)?, r.get::<_, Option<String>>(6)?)))
                .optional()
                .map_err(io)?;
            row.map(|(record, owner)| Ok(StoredSession { record: record?, owner })).transpose()
        })
        .await
    }

    fn owner(&self) -> Option<String> {
        self.lease().owner.clone()
    }

    async fn load_messages(&self, session_id: &SessionId) -> Result<Vec<DialogueMessage>, StoreError> {
        let id = session_id.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT seq, role, text, at, interrupted FROM messages WHERE session_id = ?1 ORDER BY seq")
                .map_err(io)?;
            let rows = stmt
                .query_map([id.as_str()], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, bool>(4)?))
                })
                .map_err(io)?;
            rows.map(|row| {
                let (seq, role, text, at, interrupted) = row.map_err(io)?;
                Ok(DialogueMessage {
                    seq,
                    role: Role::parse(&role).ok_or_else(|| io(format!("unknown role `{role}` in database")))?,
                    text,
                    at: parse_time(&at)?,
                    interrupted,
                })
            })
            .collect()
        })
        .await
    }

    async fn latest_anketa(&self, session_id: &SessionId) -> Result<Option<AnketaRecord>, StoreError> {
        let id = session_id.clone();
        self.read(move |c| {
            c.query_row(
                "SELECT anketa, message_count, is_final, at, provenance FROM anketas WHERE session_id = ?1 ORDER BY id DESC LIMIT 1",
                [id.as_str()],
                anketa_row,
            )
            .optional()
            .map_err(io)?
            .transpose()
        })
        .await
    }

    async fn claim_orphans(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.write_returning(Write::Claim).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consultant_actors::Role;

    fn message(seq: u32, text: String) -> DialogueMessage {
        DialogueMessage { seq, role: Role::User, text, at: Utc::now(), interrupted: false }
    }

    /// A batch in which one write fills the disk: SQLite rolls the transaction back by itself,
    /// and still every waiter hears the truth about its own write.
    #[test]
    fn a_batch_sqlite_rolls_back_by_itself_is_answered_write_by_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.db");
        let conn = open(&path, "normal").unwrap();
        let mut conn = conn;
        migrations::upgrade(&mut conn).unwrap();
        let id = SessionId::parse("full").unwrap();
        conn.execute("INSERT INTO sessions (session_id, room, status, started_at) VALUES ('full', 'r', 'active', '2026-12-01T00:00:00Z')", []).unwrap();
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        conn.pragma_update(None, "max_page_count", pages + 3).unwrap();
        let (tx, rx) = std_mpsc::channel();
        let mut replies = Vec::new();
        for (seq, text) in [(1, "первое".to_owned()), (2, "x".repeat(200_000)), (3, "третье".to_owned())] {
            let (reply, answer) = oneshot::channel();
            tx.send((Write::Append(id.clone(), message(seq, text)), reply)).unwrap();
            replies.push(answer);
        }
        drop(tx);
        writer_loop(conn, rx, Owner { id: None, lease_ms: 0 }); // one batch, then the closed channel ends it
        let answers: Vec<bool> = replies.into_iter().map(|r| r.blocking_recv().unwrap().is_ok()).collect();
        let check = Connection::open(&path).unwrap();
        let stored: Vec<u32> = check.prepare("SELECT seq FROM messages ORDER BY seq").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert_eq!(answers, vec![true, false, true], "each write answered for itself");
        assert_eq!(stored, vec![1, 3], "what was answered Ok is stored, and only that");
    }
}
