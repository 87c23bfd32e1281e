//! `consultant sessions migrate`: copies every session, message and anketa snapshot (with its
//! provenance) from one store to another. Idempotent: what the target already holds is
//! skipped, so running it twice copies nothing new and an interrupted copy is completed.

use std::collections::HashSet;

use chrono::{DateTime, SubsecRound, Utc};
use consultant_actors::ports::{DialogueStore, SessionRecord, StoreError};

use super::{SessionDetail, Store};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub sessions: usize,
    /// Sessions already there whose status or times were brought up to date.
    pub updated: usize,
    pub messages: usize,
    pub anketas: usize,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sessions copied ({} updated), {} messages, {} anketa snapshots", self.sessions, self.updated, self.messages, self.anketas)
    }
}

/// Copies everything `from` holds into `to`, oldest session first.
pub async fn copy_all(from: &Store, to: &Store) -> Result<Copied, StoreError> {
    let mut copied = Copied::default();
    let mut sessions = from.list_sessions().await?;
    sessions.reverse();
    for summary in sessions {
        let source = from.session_detail(&summary.record.session_id).await?;
        let target = match to.session_detail(&summary.record.session_id).await {
            Ok(d) => Some(d),
            Err(StoreError::UnknownSession(_)) => None,
            Err(e) => return Err(e),
        };
        copy_session(&source, target.as_ref(), to, &mut copied).await?;
    }
    Ok(copied)
}

/// Equal but for what PostgreSQL cannot hold: times below a microsecond.
fn same_record(a: &SessionRecord, b: &SessionRecord) -> bool {
    let micros = |t: DateTime<Utc>| t.trunc_subsecs(6);
    let times = |r: &SessionRecord| (micros(r.started_at), r.ended_at.map(micros));
    a.session_id == b.session_id && a.room == b.room && a.status == b.status && a.failure == b.failure && times(a) == times(b)
}

async fn copy_session(source: &SessionDetail, target: Option<&SessionDetail>, to: &Store, copied: &mut Copied) -> Result<(), StoreError> {
    let r = &source.record;
    match target {
        None => {
            to.open_session(r).await?;
            to.set_status(&r.session_id, r.status, r.failure.as_deref(), r.ended_at).await?;
            copied.sessions += 1;
        }
        Some(t) if !same_record(&t.record, r) => {
            to.open_session(r).await?;
            to.set_status(&r.session_id, r.status, r.failure.as_deref(), r.ended_at).await?;
            copied.updated += 1;
        }
        Some(_) => {}
    }
    let have: HashSet<u32> = target.map(|t| t.messages.iter().map(|m| m.seq).collect()).unwrap_or_default();
    for m in source.messages.iter().filter(|m| !have.contains(&m.seq)) {
        to.append_message(&r.session_id, m).await?;
        copied.messages += 1;
    }
    // A snapshot is the same one when its content is (as the stores' own idempotence).
    let same = |a: &consultant_actors::ports::AnketaRecord, b: &consultant_actors::ports::AnketaRecord| {
        a.message_count == b.message_count && a.is_final == b.is_final && a.anketa == b.anketa && a.provenance == b.provenance
    };
    let existing = target.map(|t| t.anketa_history.as_slice()).unwrap_or_default();
    for a in source.anketa_history.iter().filter(|a| !existing.iter().any(|e| same(a, e))) {
        to.save_anketa(&r.session_id, a).await?;
        copied.anketas += 1;
    }
    Ok(())
}
