//! `finalize_consultation` (the Python module's finalize step): drains what is unsaved,
//! generates the final anketa from the whole dialogue and stores it with the final status.
//! One path for every end: a consultation that ends, one that crashed, and start-up recovery
//! of sessions a dead process left open.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::ActorRef;
use tokio::time::Instant;

use crate::anketa::Anketa;
use crate::dialogue::{DialogueMessage, SessionId};
use crate::persistence::PersistenceMsg;
use crate::ports::{AnketaExtractor, AnketaRecord, DialogueStore, SessionRecord, StoreError};
use crate::provenance::Provenance;
use crate::session::SessionStatus;

/// The result of a finished consultation (what `end_session` returns).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionOutcome {
    pub session_id: SessionId,
    pub room: String,
    pub status: SessionStatus,
    pub failure: Option<String>,
    /// Why it ended (caller left, time limit, the caller said goodbye, silence...).
    pub reason: String,
    pub dialogue: Vec<DialogueMessage>,
    pub anketa: Anketa,
    /// Where each value of `anketa` came from.
    pub provenance: Provenance,
    pub started_at: chrono::DateTime<Utc>,
    pub ended_at: chrono::DateTime<Utc>,
    /// Caller speech end -> first agent audio, per turn.
    pub turn_latency_ms: Vec<u64>,
}


/// Everything `finalize_consultation` needs; it runs off the actor so that a slow DeepSeek
/// never blocks a mailbox.
pub struct FinalizeJob {
    pub session_id: SessionId,
    pub room: String,
    pub status: SessionStatus,
    pub failure: Option<String>,
    pub reason: String,
    pub started_at: chrono::DateTime<Utc>,
    pub dialogue: Vec<DialogueMessage>,
    pub anketa: Anketa,
    pub provenance: Provenance,
    pub fields_timeout: Duration,
    pub store: Arc<dyn DialogueStore>,
    pub extractor: Arc<dyn AnketaExtractor>,
    /// The live Persistence actor, drained first so every message is durable; None when it is
    /// gone (messages are then written directly).
    pub persistence: Option<ActorRef<PersistenceMsg>>,
    /// Periodic anketas Persistence had not confirmed; written directly if it cannot drain.
    pub unsaved_anketas: Vec<AnketaRecord>,
    pub turn_latency_ms: Vec<u64>,
}

/// How long finalize keeps retrying a failing store (a briefly full or locked disk) in each of
/// its two writing phases before it gives up and leaves the session to start-up recovery: the
/// dialogue exists nowhere else once it returns.
const STORE_PATIENCE: Duration = Duration::from_secs(10);

/// Runs a store write until it succeeds or `deadline` passes, backing off between tries.
async fn patiently<F, Fut>(deadline: Instant, mut write: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "store write failed during finalize; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Generates the final anketa from the whole dialogue and stores it with the final status.
/// Used at the end of every consultation and by start-up recovery of interrupted sessions.
pub async fn finalize_consultation(job: FinalizeJob) -> SessionOutcome {
    tracing::info!(session_id = %job.session_id, reason = %job.reason, messages = job.dialogue.len(), "=== FINALIZE START ===");
    let drained = match &job.persistence {
        Some(p) => p.call(PersistenceMsg::Flush, Some(Duration::from_secs(10))).await.is_ok_and(|r| r.is_success()),
        None => false,
    };
    if !drained {
        let deadline = Instant::now() + STORE_PATIENCE;
        for message in &job.dialogue {
            if let Err(e) = patiently(deadline, || job.store.append_message(&job.session_id, message)).await {
                tracing::error!(session_id = %job.session_id, seq = message.seq, error = %e, "could not store a dialogue message during finalize");
            }
        }
        for record in &job.unsaved_anketas {
            if let Err(e) = patiently(deadline, || job.store.save_anketa(&job.session_id, record)).await {
                tracing::error!(session_id = %job.session_id, message_count = record.message_count, error = %e, "could not store a periodic anketa during finalize");
            }
        }
    }
    let mut anketa = job.anketa.clone();
    let mut provenance = job.provenance.clone();
    let mut failure = job.failure.clone();
    let mut status = job.status;
    if !job.dialogue.is_empty() {
        match tokio::time::timeout(job.fields_timeout, job.extractor.extract(&job.dialogue, &job.anketa)).await {
            Ok(Ok(extracted)) => {
                provenance.merge(&mut anketa, &extracted, job.dialogue.len());
                if extracted.evidence_dropped > 0 {
                    tracing::warn!(session_id = %job.session_id, evidence_dropped = extracted.evidence_dropped, "the final extraction cited messages or fields that do not hold; those citations were dropped");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(session_id = %job.session_id, error = %e, "final anketa extraction failed; keeping the last periodic anketa");
            }
            Err(_) => {
                tracing::error!(session_id = %job.session_id, timeout = ?job.fields_timeout, "final anketa extraction timed out; keeping the last periodic anketa");
            }
        }
    }
    let ended_at = Utc::now();
    let record = AnketaRecord { anketa: anketa.clone(), provenance: provenance.clone(), message_count: job.dialogue.len(), is_final: true, at: ended_at };
    let deadline = Instant::now() + STORE_PATIENCE;
    if let Err(e) = patiently(deadline, || job.store.save_anketa(&job.session_id, &record)).await {
        tracing::error!(session_id = %job.session_id, error = %e, "could not store the final anketa");
        status = SessionStatus::Failed;
        failure = Some(format!("final anketa not stored: {e}"));
    }
    if let Err(e) = patiently(deadline, || job.store.set_status(&job.session_id, status, failure.as_deref(), Some(ended_at))).await {
        tracing::error!(session_id = %job.session_id, error = %e, "could not store the final status");
    }
    tracing::info!(session_id = %job.session_id, status = %status, fields = anketa.filled(), "final_anketa_saved");
    SessionOutcome {
        session_id: job.session_id,
        room: job.room,
        status,
        failure,
        reason: job.reason,
        dialogue: job.dialogue,
        anketa,
        provenance,
        started_at: job.started_at,
        ended_at,
        turn_latency_ms: job.turn_latency_ms,
    }
}


impl FinalizeJob {
    /// A session that no live actor holds (its consultation crashed, or the process died):
    /// everything comes from the store.
    pub async fn from_store(
        record: &SessionRecord,
        store: Arc<dyn DialogueStore>,
        extractor: Arc<dyn AnketaExtractor>,
        status: SessionStatus,
        failure: String,
        reason: String,
        fields_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let dialogue = store.load_messages(&record.session_id).await?;
        let (anketa, provenance) = store.latest_anketa(&record.session_id).await?.map(|r| (r.anketa, r.provenance)).unwrap_or_default();
        Ok(Self {
            session_id: record.session_id.clone(),
            room: record.room.clone(),
            status,
            failure: Some(failure),
            reason,
            started_at: record.started_at,
            dialogue,
            anketa,
            provenance,
            fields_timeout,
            store,
            extractor,
            persistence: None,
            unsaved_anketas: Vec::new(),
            turn_latency_ms: Vec::new(),
        })
    }
}
