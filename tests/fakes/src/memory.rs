//! In-memory doubles of the actors' ports, for tests of the actor system itself: a scripted
//! realtime connector the test drives event by event, a counting extractor, an audio output
//! that records what it was asked to play.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use consultant_actors::anketa::Anketa;
use consultant_actors::provenance::ExtractedAnketa;
use consultant_actors::dialogue::{DialogueMessage, Role, SessionId};
use consultant_actors::ports::{
    AgentAudioOutput, AnketaExtractor, AnketaRecord, DialogueStore, ExtractError, PlayedAudio, RealtimeCommand,
    RealtimeConnection, RealtimeConnector, RealtimeEvent, RealtimeFailure, RealtimeSetup, ResponseStatus, SessionRecord,
    StoreError, StoredSession,
};
use consultant_actors::session::SessionStatus;
use tokio::sync::mpsc;

/// One connection made by [`ScriptedRealtime`]: the test pushes events and reads commands.
pub struct ScriptedSession {
    pub setup: RealtimeSetup,
    events: mpsc::Sender<RealtimeEvent>,
    commands: tokio::sync::Mutex<mpsc::Receiver<RealtimeCommand>>,
}

impl ScriptedSession {
    pub async fn emit(&self, event: RealtimeEvent) {
        let _ = self.events.send(event).await;
    }

    /// The socket drops.
    pub async fn drop_connection(&self, why: &str) {
        self.emit(RealtimeEvent::Disconnected { cause: RealtimeFailure::Transient(why.into()) }).await;
    }

    /// Commands received so far (drains them).
    pub fn commands(&self) -> Vec<RealtimeCommand> {
        let mut rx = self.commands.try_lock().expect("one reader of the commands at a time");
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c);
        }
        out
    }

    /// The next command, as soon as it arrives (None once the connection is gone).
    pub async fn next_command(&self) -> Option<RealtimeCommand> {
        self.commands.lock().await.recv().await
    }

    /// A full caller turn: committed item then its transcript.
    pub async fn user_says(&self, item_id: &str, text: &str) {
        self.emit(RealtimeEvent::SpeechStarted { item_id: Some(item_id.into()), audio_start_ms: 0 }).await;
        self.emit(RealtimeEvent::SpeechStopped { item_id: Some(item_id.into()), audio_end_ms: 1000 }).await;
        self.emit(RealtimeEvent::UserItemCommitted { item_id: item_id.into() }).await;
        self.emit(RealtimeEvent::UserTranscript { item_id: item_id.into(), text: text.into() }).await;
    }

    /// A full agent answer: audio (ms of silence-free tone) and transcript, completed.
    pub async fn agent_says(&self, item_id: &str, text: &str, audio_ms: u64) {
        let response_id = format!("resp_{item_id}");
        self.emit(RealtimeEvent::ResponseStarted { response_id: response_id.clone() }).await;
        self.emit(RealtimeEvent::AgentItemStarted { response_id: Some(response_id.clone()), item_id: item_id.into() }).await;
        let pcm: Arc<[i16]> = vec![1000i16; (audio_ms * 24) as usize].into();
        self.emit(RealtimeEvent::AgentAudio { item_id: item_id.into(), pcm, received: std::time::Instant::now() }).await;
        self.emit(RealtimeEvent::AgentTranscriptDelta { item_id: item_id.into(), delta: text.into() }).await;
        self.emit(RealtimeEvent::AgentTranscriptDone { item_id: item_id.into(), text: text.into() }).await;
        self.emit(RealtimeEvent::ResponseDone { response_id: Some(response_id), status: ResponseStatus::Completed, reason: None, usage: None }).await;
    }
}

/// A realtime connector whose sessions the test drives. Connections can be made to fail.
#[derive(Default)]
pub struct ScriptedRealtime {
    sessions: Mutex<Vec<Arc<ScriptedSession>>>,
    /// Remaining connect attempts that fail (transient).
    pub fail_connects: AtomicUsize,
    /// Every connect fails with a fatal error.
    pub fatal: AtomicBool,
    notify: tokio::sync::Notify,
}

impl ScriptedRealtime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn connections(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Waits for connection number `n` (1-based) and returns it.
    pub async fn session(&self, n: usize) -> Arc<ScriptedSession> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.notify.notified();
            if let Some(s) = self.sessions.lock().unwrap().get(n - 1) {
                return s.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("realtime connection #{n} was never made");
            }
        }
    }
}

#[async_trait]
impl RealtimeConnector for ScriptedRealtime {
    async fn connect(&self, setup: RealtimeSetup) -> Result<RealtimeConnection, RealtimeFailure> {
        if self.fatal.load(Ordering::SeqCst) {
            return Err(RealtimeFailure::Fatal("invalid_api_key".into()));
        }
        if self.fail_connects.load(Ordering::SeqCst) > 0 {
            self.fail_connects.fetch_sub(1, Ordering::SeqCst);
            return Err(RealtimeFailure::Transient("connection refused".into()));
        }
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(4096);
        let session = Arc::new(ScriptedSession { setup, events: ev_tx, commands: tokio::sync::Mutex::new(cmd_rx) });
        self.sessions.lock().unwrap().push(session);
        self.notify.notify_waiters();
        Ok(RealtimeConnection { commands: cmd_tx, events: ev_rx })
    }
}

/// An extractor that fills `client_name` from the first user message (citing it) and
/// `messages_seen` with the dialogue length (citing the last message), and counts its calls.
#[derive(Default)]
pub struct CountingExtractor {
    pub calls: AtomicUsize,
    /// Dialogue lengths it was called with.
    pub seen: Mutex<Vec<usize>>,
    /// Every call fails.
    pub failing: AtomicBool,
}

impl CountingExtractor {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

#[async_trait]
impl AnketaExtractor for CountingExtractor {
    async fn extract(&self, dialogue: &[DialogueMessage], _previous: &Anketa) -> Result<ExtractedAnketa, ExtractError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(dialogue.len());
        if self.failing.load(Ordering::SeqCst) {
            return Err(ExtractError::Failed("DeepSeek answered 503 four times".into()));
        }
        let mut extracted = ExtractedAnketa::default();
        if let Some(first) = dialogue.iter().find(|m| m.role == Role::User) {
            extracted.anketa.0.insert("client_name".into(), serde_json::Value::String(first.text.clone()));
            extracted.evidence.insert("client_name".into(), vec![first.seq]);
        }
        extracted.anketa.0.insert("messages_seen".into(), serde_json::json!(dialogue.len()));
        if let Some(last) = dialogue.last() {
            extracted.evidence.insert("messages_seen".into(), vec![last.seq]);
        }
        Ok(extracted)
    }
}

/// An audio output that plays instantly unless told the caller is still hearing it.
#[derive(Default)]
pub struct RecordingAudio {
    pub played_samples: AtomicUsize,
    pub interrupts: AtomicUsize,
    /// What `interrupt` reports as heard (ms) while `playing` is set.
    pub heard_ms: AtomicUsize,
    pub playing: AtomicBool,
    current: Mutex<Option<String>>,
}

impl RecordingAudio {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl AgentAudioOutput for RecordingAudio {
    fn play(&self, item_id: &str, pcm: Arc<[i16]>) {
        self.played_samples.fetch_add(pcm.len(), Ordering::SeqCst);
        *self.current.lock().unwrap() = Some(item_id.to_owned());
    }

    fn interrupt(&self) -> Option<PlayedAudio> {
        if !self.playing.swap(false, Ordering::SeqCst) {
            return None;
        }
        self.interrupts.fetch_add(1, Ordering::SeqCst);
        let item_id = self.current.lock().unwrap().take()?;
        Some(PlayedAudio { item_id, played_ms: self.heard_ms.load(Ordering::SeqCst) as u64 })
    }

    fn is_playing(&self) -> bool {
        self.playing.load(Ordering::SeqCst)
    }
}

/// Sessions, messages and anketa history in memory (for tests that do not exercise SQLite).
#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<SessionId, SessionRecord>>,
    messages: Mutex<HashMap<SessionId, Vec<DialogueMessage>>>,
    anketas: Mutex<HashMap<SessionId, Vec<AnketaRecord>>>,
}

#[async_trait]
impl DialogueStore for MemoryStore {
    async fn open_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.lock().unwrap().insert(record.session_id.clone(), record.clone());
        Ok(())
    }

    async fn append_message(&self, session_id: &SessionId, message: &DialogueMessage) -> Result<(), StoreError> {
        let mut all = self.messages.lock().unwrap();
        let list = all.entry(session_id.clone()).or_default();
        if !list.iter().any(|m| m.seq == message.seq) {
            list.push(message.clone());
            list.sort_by_key(|m| m.seq);
        }
        Ok(())
    }

    async fn set_status(
        &self,
        session_id: &SessionId,
        status: SessionStatus,
        failure: Option<&str>,
        ended_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), StoreError> {
        let mut sessions = self.sessions.lock().unwrap();
        let record = sessions.get_mut(session_id).ok_or_else(|| StoreError::UnknownSession(session_id.clone()))?;
        record.status = status;
        if let Some(f) = failure {
            record.failure = Some(f.to_owned());
        }
        record.ended_at = ended_at.or(record.ended_at);
        Ok(())
    }

    async fn save_anketa(&self, session_id: &SessionId, record: &AnketaRecord) -> Result<(), StoreError> {
        self.anketas.lock().unwrap().entry(session_id.clone()).or_default().push(record.clone());
        Ok(())
    }

    async fn sessions_with_status(&self, status: SessionStatus) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.sessions.lock().unwrap().values().filter(|r| r.status == status).cloned().collect())
    }

    async fn load_messages(&self, session_id: &SessionId) -> Result<Vec<DialogueMessage>, StoreError> {
        Ok(self.messages.lock().unwrap().get(session_id).cloned().unwrap_or_default())
    }

    async fn latest_anketa(&self, session_id: &SessionId) -> Result<Option<AnketaRecord>, StoreError> {
        Ok(self.anketas.lock().unwrap().get(session_id).and_then(|l| l.last().cloned()))
    }

    /// No leases in memory: every open session is an orphan (one process owns the map).
    async fn claim_orphans(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let open = [SessionStatus::Starting, SessionStatus::Active, SessionStatus::Finalizing];
        let mut found: Vec<SessionRecord> = self.sessions.lock().unwrap().values().filter(|r| open.contains(&r.status)).cloned().collect();
        found.sort_by_key(|r| r.started_at);
        Ok(found)
    }

    async fn session(&self, session_id: &SessionId) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.sessions.lock().unwrap().get(session_id).cloned().map(|record| StoredSession { record, owner: None }))
    }
}
