//! The two ports the soak wraps around the real ones: a store whose writes fail for a while
//! (the disk full or read-only: as root, chmod cannot make SQLite fail), and an agent audio
//! output that remembers what the caller heard when they cut the agent off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use consultant::audio::PacedRecorder;
use consultant::store::SqliteStore;
use consultant_actors::ports::{AgentAudioOutput, AnketaRecord, DialogueStore, PlayedAudio, SessionRecord, StoreError, StoredSession};
use consultant_actors::{DialogueMessage, SessionId, SessionStatus};

/// The real SQLite store, with writes of a session refused while its outage lasts.
pub struct FlakyStore {
    pub inner: Arc<SqliteStore>,
    outages: Mutex<HashMap<SessionId, Instant>>,
    /// Writes refused, per session.
    refused: Mutex<HashMap<SessionId, u64>>,
}

impl FlakyStore {
    pub fn new(inner: Arc<SqliteStore>) -> Self {
        Self { inner, outages: Mutex::default(), refused: Mutex::default() }
    }

    /// Writes of `session` fail until `until`.
    pub fn outage(&self, session: &SessionId, until: Instant) {
        self.outages.lock().unwrap().insert(session.clone(), until);
    }

    pub fn refused(&self, session: &SessionId) -> u64 {
        self.refused.lock().unwrap().get(session).copied().unwrap_or(0)
    }

    fn check(&self, session: &SessionId) -> Result<(), StoreError> {
        let down = self.outages.lock().unwrap().get(session).is_some_and(|until| Instant::now() < *until);
        if down {
            *self.refused.lock().unwrap().entry(session.clone()).or_default() += 1;
            return Err(StoreError::Io("disk I/O error: database or disk is full (injected by the soak)".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl DialogueStore for FlakyStore {
    async fn open_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.check(&record.session_id)?;
        self.inner.open_session(record).await
    }

    async fn append_message(&self, session_id: &SessionId, message: &DialogueMessage) -> Result<(), StoreError> {
        self.check(session_id)?;
        self.inner.append_message(session_id, message).await
    }

    async fn set_status(&self, session_id: &SessionId, status: SessionStatus, failure: Option<&str>, ended_at: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        self.check(session_id)?;
        self.inner.set_status(session_id, status, failure, ended_at).await
    }

    async fn save_anketa(&self, session_id: &SessionId, record: &AnketaRecord) -> Result<(), StoreError> {
        self.check(session_id)?;
        self.inner.save_anketa(session_id, record).await
    }

    async fn sessions_with_status(&self, status: SessionStatus) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.sessions_with_status(status).await
    }

    async fn load_messages(&self, session_id: &SessionId) -> Result<Vec<DialogueMessage>, StoreError> {
        self.inner.load_messages(session_id).await
    }

    async fn latest_anketa(&self, session_id: &SessionId) -> Result<Option<AnketaRecord>, StoreError> {
        self.inner.latest_anketa(session_id).await
    }

    async fn claim_orphans(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.claim_orphans().await
    }

    async fn session(&self, session_id: &SessionId) -> Result<Option<StoredSession>, StoreError> {
        self.inner.session(session_id).await
    }
}

/// A cut: what the caller had heard of an item when it stopped, and how much of it the
/// output had been given by then.
#[derive(Clone, Debug)]
pub struct Cut {
    pub heard: PlayedAudio,
    pub queued_ms: u64,
}

/// A [`PacedRecorder`] that keeps, per item, the first cut (a barge-in).
#[derive(Default)]
pub struct HeardRecorder {
    player: PacedRecorder,
    queued: Mutex<HashMap<String, u64>>,
    cuts: Mutex<Vec<Cut>>,
}

impl HeardRecorder {
    pub fn cuts(&self) -> Vec<Cut> {
        self.cuts.lock().unwrap().clone()
    }
}

impl AgentAudioOutput for HeardRecorder {
    fn play(&self, item_id: &str, pcm: Arc<[i16]>) {
        *self.queued.lock().unwrap().entry(item_id.to_owned()).or_default() += pcm.len() as u64;
        self.player.play(item_id, pcm);
    }

    fn interrupt(&self) -> Option<PlayedAudio> {
        let heard = self.player.interrupt()?;
        let queued_ms = self.queued.lock().unwrap().get(&heard.item_id).copied().unwrap_or(0) * 1000 / 24_000;
        let mut cuts = self.cuts.lock().unwrap();
        if !cuts.iter().any(|c| c.heard.item_id == heard.item_id) {
            cuts.push(Cut { heard: heard.clone(), queued_ms });
        }
        Some(heard)
    }

    fn is_playing(&self) -> bool {
        self.player.is_playing()
    }
}
