//! Sessions whose worker died: a sweep (at start-up, then every lease period) claims the open
//! sessions whose lease expired. One whose caller is still in the room is dispatched again,
//! so that a worker resumes it from the store; the others are finalized as interrupted. A
//! session dispatched again that no worker takes up within [`TAKE_UP`] is finalized too.

use std::time::Duration;

use crate::consultation::{finalize_consultation, FinalizeJob, SessionOutcome};
use crate::handler::{HandlerError, VoiceHandler};
use crate::ports::{RoomDirectory, SessionRecord};
use crate::session::SessionStatus;

/// How long a session dispatched again may wait for a worker to take it up.
pub const TAKE_UP: Duration = Duration::from_secs(30);

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    pub finalized: Vec<SessionOutcome>,
    /// Sessions dispatched again (their caller was still in the room).
    pub redispatched: Vec<String>,
}

impl VoiceHandler {
    /// One sweep; `rooms` is LiveKit (none: finalize every orphan, as a worker without a
    /// LiveKit deployment must).
    pub async fn sweep_orphans(&self, rooms: Option<&dyn RoomDirectory>) -> Result<Sweep, HandlerError> {
        let mut sweep = Sweep::default();
        for record in self.ports.store.claim_orphans().await? {
            if let Some(rooms) = rooms.filter(|_| !record.room.is_empty()) {
                if self.dispatch_again(rooms, &record).await {
                    sweep.redispatched.push(record.session_id.to_string());
                    continue;
                }
            }
            tracing::warn!(session_id = %record.session_id, was = %record.status, "recovering a session left open by a previous process");
            sweep.finalized.push(self.finalize_orphan(&record, "the worker stopped during the consultation").await?);
        }
        for record in self.not_taken_up().await? {
            tracing::warn!(session_id = %record.session_id, after = ?TAKE_UP, "no worker took up the session dispatched again; finalizing it");
            sweep.finalized.push(self.finalize_orphan(&record, "the worker stopped during the consultation and no worker resumed it").await?);
        }
        Ok(sweep)
    }

    /// True when the caller is still there and the agent was dispatched to them again.
    async fn dispatch_again(&self, rooms: &dyn RoomDirectory, record: &SessionRecord) -> bool {
        let id = &record.session_id;
        match rooms.caller_present(&record.room).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(session_id = %id, room = %record.room, error = %e, "cannot ask LiveKit whether the caller is still there; finalizing");
                return false;
            }
        }
        if let Err(e) = rooms.dispatch_agent(&record.room).await {
            tracing::warn!(session_id = %id, room = %record.room, error = %e, "the caller is still there but the agent could not be dispatched again; finalizing");
            return false;
        }
        tracing::warn!(session_id = %id, room = %record.room, "the worker of this consultation died and its caller is still there: dispatched the agent again to resume it");
        self.telemetry().worker_update(|w| w.redispatched_sessions += 1);
        self.redispatched.lock().expect("redispatched lock").insert(id.clone(), tokio::time::Instant::now() + TAKE_UP);
        true
    }

    /// Sessions dispatched again whose time is up and that are still ours (nobody opened them
    /// since: a worker that takes one up becomes its owner) and not running here.
    async fn not_taken_up(&self) -> Result<Vec<SessionRecord>, HandlerError> {
        let due: Vec<_> = {
            let mut pending = self.redispatched.lock().expect("redispatched lock");
            let now = tokio::time::Instant::now();
            let due: Vec<_> = pending.iter().filter(|(_, at)| **at <= now).map(|(id, _)| id.clone()).collect();
            for id in &due {
                pending.remove(id);
            }
            due
        };
        let mut out = Vec::new();
        for id in due {
            if self.get(&id).await.is_some() {
                continue;
            }
            let Some(stored) = self.ports.store.session(&id).await? else { continue };
            if !stored.record.status.is_terminal() && stored.owner == self.ports.store.owner() {
                out.push(stored.record);
            }
        }
        Ok(out)
    }

    async fn finalize_orphan(&self, record: &SessionRecord, why: &str) -> Result<SessionOutcome, HandlerError> {
        let job = FinalizeJob::from_store(
            record,
            self.ports.store.clone(),
            self.ports.extractor.clone(),
            SessionStatus::Interrupted,
            why.into(),
            "recovery after restart".into(),
            self.settings.final_extraction_timeout,
        )
        .await?;
        Ok(finalize_consultation(job).await)
    }
}
