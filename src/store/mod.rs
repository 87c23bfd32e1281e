//! The dialogue store: SQLite (one machine) or PostgreSQL (a fleet of workers), chosen by
//! `storage.url`. Both give the same guarantees: a write is durable before it returns, writes
//! are group-committed by one writer, message appends and anketa snapshots are idempotent,
//! schemas are versioned, and open sessions carry an owner and a lease so that one worker
//! never finalizes a session a live peer is running.

pub mod migrate;
pub mod migrations;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;
pub mod url;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use consultant_actors::anketa::Anketa;
use consultant_actors::dialogue::{DialogueMessage, SessionId};
use consultant_actors::ports::{AnketaRecord, DialogueStore, SessionRecord, StoreError, StoredSession};
use consultant_actors::provenance::Provenance;
use consultant_actors::session::SessionStatus;
use serde::Serialize;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use url::{mask_password, DatabaseUrl};

/// Statuses of a session some worker is (or was, before it died) running.
pub const OPEN_STATUSES: [SessionStatus; 3] = [SessionStatus::Starting, SessionStatus::Active, SessionStatus::Finalizing];

/// Who owns the sessions this store opens, and for how long a lease lasts without renewal.
/// Without an owner (tests, tools) sessions are written unowned: any store may claim them.
#[derive(Clone, Debug)]
pub struct Lease {
    pub owner: Option<String>,
    pub duration: Duration,
}

impl Lease {
    pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

    pub fn unowned() -> Self {
        Self { owner: None, duration: Self::DEFAULT_DURATION }
    }

    pub fn owned(owner: impl Into<String>, duration: Duration) -> Self {
        Self { owner: Some(owner.into()), duration }
    }

    /// Leases are renewed this often: two renewals may fail before one expires.
    pub fn renew_every(&self) -> Duration {
        (self.duration / 3).max(Duration::from_millis(50))
    }
}

/// `<hostname>-<pid>-<8 hex>`: unique per process, readable in `sessions list --json`.
pub fn default_worker_id() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &short[..8])
}

/// The configured store, on either engine.
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens (creating and migrating the schema if needed) the database at `url`.
    pub async fn open(url: &DatabaseUrl, synchronous: &str, lease: Lease) -> Result<Self, StoreError> {
        Ok(match url {
            DatabaseUrl::Sqlite(path) => Store::Sqlite(SqliteStore::open_with(path, synchronous, lease)?),
            DatabaseUrl::Postgres(_) => Store::Postgres(PgStore::open(url, lease).await?),
        })
    }

    /// The store of `config.storage`, owned by `worker_id` when given (workers), else unowned
    /// (commands that only read or copy).
    pub async fn from_config(storage: &crate::config::StorageConfig, worker_id: Option<&str>) -> Result<Self, StoreError> {
        let url = DatabaseUrl::from_storage(storage).map_err(StoreError::Io)?;
        let lease = match worker_id {
            Some(id) => Lease::owned(id, Duration::from_secs(storage.lease_secs.max(1))),
            None => Lease::unowned(),
        };
        Self::open(&url, &storage.synchronous, lease).await
    }

    /// Where the data is, for messages (a PostgreSQL password masked).
    pub fn location(&self) -> String {
        match self {
            Store::Sqlite(s) => s.path().display().to_string(),
            Store::Postgres(p) => p.location().to_owned(),
        }
    }

    pub fn lease(&self) -> &Lease {
        match self {
            Store::Sqlite(s) => s.lease(),
            Store::Postgres(p) => p.lease(),
        }
    }

    fn engine(&self) -> &dyn DialogueStore {
        match self {
            Store::Sqlite(s) => s,
            Store::Postgres(p) => p,
        }
    }

    /// All sessions, newest first, with message counts (for `sessions list`).
    pub async fn list_sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_sessions().await,
            Store::Postgres(p) => p.list_sessions().await,
        }
    }

    /// One session with its dialogue and anketa history, or UnknownSession.
    pub async fn session_detail(&self, session_id: &SessionId) -> Result<SessionDetail, StoreError> {
        match self {
            Store::Sqlite(s) => s.session_detail(session_id).await,
            Store::Postgres(p) => p.session_detail(session_id).await,
        }
    }
}

impl From<SqliteStore> for Store {
    fn from(s: SqliteStore) -> Self {
        Store::Sqlite(s)
    }
}

#[async_trait]
impl DialogueStore for Store {
    async fn open_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.engine().open_session(record).await
    }
    async fn append_message(&self, session_id: &SessionId, message: &DialogueMessage) -> Result<(), StoreError> {
        self.engine().append_message(session_id, message).await
    }
    async fn set_status(&self, session_id: &SessionId, status: SessionStatus, failure: Option<&str>, ended_at: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        self.engine().set_status(session_id, status, failure, ended_at).await
    }
    async fn save_anketa(&self, session_id: &SessionId, record: &AnketaRecord) -> Result<(), StoreError> {
        self.engine().save_anketa(session_id, record).await
    }
    async fn sessions_with_status(&self, status: SessionStatus) -> Result<Vec<SessionRecord>, StoreError> {
        self.engine().sessions_with_status(status).await
    }
    async fn load_messages(&self, session_id: &SessionId) -> Result<Vec<DialogueMessage>, StoreError> {
        self.engine().load_messages(session_id).await
    }
    async fn latest_anketa(&self, session_id: &SessionId) -> Result<Option<AnketaRecord>, StoreError> {
        self.engine().latest_anketa(session_id).await
    }
    async fn claim_orphans(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.engine().claim_orphans().await
    }
    async fn session(&self, session_id: &SessionId) -> Result<Option<StoredSession>, StoreError> {
        self.engine().session(session_id).await
    }
    fn owner(&self) -> Option<String> {
        self.lease().owner.clone()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SessionSummary {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub messages: usize,
    /// The worker that runs (or last ran) it; none for sessions from before leases and those
    /// written by tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub messages: Vec<DialogueMessage>,
    /// The latest anketa and where its values came from.
    pub anketa: Anketa,
    pub provenance: Provenance,
    pub anketa_history: Vec<AnketaRecord>,
}

impl SessionDetail {
    pub(crate) fn new(record: SessionRecord, messages: Vec<DialogueMessage>, history: Vec<AnketaRecord>) -> Self {
        let (anketa, provenance) = history.last().map(|a| (a.anketa.clone(), a.provenance.clone())).unwrap_or_default();
        SessionDetail { anketa, provenance, record, messages, anketa_history: history }
    }
}

/// Anketa JSON as stored (the Python module's shape) and its provenance.
pub(crate) fn anketa_json(a: &AnketaRecord) -> (String, String) {
    (
        serde_json::to_string(&a.anketa).unwrap_or_else(|_| "{}".into()),
        serde_json::to_string(&a.provenance).unwrap_or_else(|_| "{}".into()),
    )
}

pub(crate) fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}
