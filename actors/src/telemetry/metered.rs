//! The store and extractor ports, measured: wraps put around the adapters once, in
//! `VoiceHandler::start`, so every consultation, finalization and recovery is counted without
//! hooks in the actors (two clock reads and a few atomic adds per call).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Telemetry;
use crate::anketa::Anketa;
use crate::consultation::Ports;
use crate::dialogue::{DialogueMessage, SessionId};
use crate::ports::{AnketaExtractor, AnketaRecord, DialogueStore, ExtractError, SessionRecord, StoreError, StoredSession};
use crate::provenance::ExtractedAnketa;
use crate::session::SessionStatus;

/// The same ports, with the store and the extractor measured into `telemetry`'s metrics.
pub fn metered_ports(ports: Ports, telemetry: &Telemetry) -> Ports {
    Ports {
        connector: ports.connector,
        store: Arc::new(MeteredStore { inner: ports.store, telemetry: telemetry.clone() }),
        extractor: Arc::new(MeteredExtractor { inner: ports.extractor, telemetry: telemetry.clone() }),
    }
}

struct MeteredStore {
    inner: Arc<dyn DialogueStore>,
    telemetry: Telemetry,
}

impl MeteredStore {
    fn commit_took(&self, started: Instant) {
        self.telemetry.metrics().store_commit.observe(started.elapsed());
    }
}

#[async_trait]
impl DialogueStore for MeteredStore {
    async fn open_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.open_session(record).await;
        self.commit_took(started);
        result
    }

    async fn append_message(&self, session_id: &SessionId, message: &DialogueMessage) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.append_message(session_id, message).await;
        self.commit_took(started);
        result
    }

    async fn set_status(&self, session_id: &SessionId, status: SessionStatus, failure: Option<&str>, ended_at: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.set_status(session_id, status, failure, ended_at).await;
        self.commit_took(started);
        // The final status is written once, by finalization (or start-up recovery).
        if result.is_ok() && ended_at.is_some() {
            self.telemetry.metrics().finished(status);
        }
        result
    }

    async fn save_anketa(&self, session_id: &SessionId, record: &AnketaRecord) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.save_anketa(session_id, record).await;
        self.commit_took(started);
        result
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

    fn owner(&self) -> Option<String> {
        self.inner.owner()
    }
}

struct MeteredExtractor {
    inner: Arc<dyn AnketaExtractor>,
    telemetry: Telemetry,
}

#[async_trait]
impl AnketaExtractor for MeteredExtractor {
    async fn extract(&self, dialogue: &[DialogueMessage], previous: &Anketa) -> Result<ExtractedAnketa, ExtractError> {
        let started = Instant::now();
        let result = self.inner.extract(dialogue, previous).await;
        let metrics = self.telemetry.metrics();
        metrics.extraction_duration.observe(started.elapsed());
        super::metrics::add(if result.is_ok() { &metrics.extractions_ok } else { &metrics.extractions_failed }, 1);
        if let Ok(extracted) = &result {
            super::metrics::add(&metrics.evidence_dropped, extracted.evidence_dropped as u64);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts every write, holds nothing.
    struct NullStore;

    #[async_trait]
    impl DialogueStore for NullStore {
        async fn open_session(&self, _: &SessionRecord) -> Result<(), StoreError> {
            Ok(())
        }
        async fn append_message(&self, _: &SessionId, _: &DialogueMessage) -> Result<(), StoreError> {
            Ok(())
        }
        async fn set_status(&self, _: &SessionId, _: SessionStatus, _: Option<&str>, _: Option<DateTime<Utc>>) -> Result<(), StoreError> {
            Ok(())
        }
        async fn save_anketa(&self, _: &SessionId, _: &AnketaRecord) -> Result<(), StoreError> {
            Ok(())
        }
        async fn sessions_with_status(&self, _: SessionStatus) -> Result<Vec<SessionRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn load_messages(&self, _: &SessionId) -> Result<Vec<DialogueMessage>, StoreError> {
            Ok(Vec::new())
        }
        async fn latest_anketa(&self, _: &SessionId) -> Result<Option<AnketaRecord>, StoreError> {
            Ok(None)
        }
        async fn claim_orphans(&self) -> Result<Vec<SessionRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn session(&self, _: &SessionId) -> Result<Option<StoredSession>, StoreError> {
            Ok(None)
        }
    }

    /// Store writes are timed, and a consultation counts as finished once, by its final status.
    #[tokio::test]
    async fn writes_are_timed_and_a_consultation_finishes_once() {
        use crate::dialogue::Role;
        let telemetry = Telemetry::new();
        let store = MeteredStore { inner: Arc::new(NullStore), telemetry: telemetry.clone() };
        let id = SessionId::parse("s1").unwrap();
        let cut = DialogueMessage { seq: 2, role: Role::Assistant, text: "Давайте я".into(), at: Utc::now(), interrupted: true };
        let caller = DialogueMessage { seq: 3, role: Role::User, text: "Стоп".into(), at: Utc::now(), interrupted: false };
        for m in [&cut, &caller, &cut, &caller] {
            store.append_message(&id, m).await.unwrap();
        }
        store.set_status(&id, SessionStatus::Finalizing, None, None).await.unwrap();
        store.set_status(&id, SessionStatus::Completed, None, Some(Utc::now())).await.unwrap();
        let m = telemetry.metrics().snapshot();
        assert_eq!(m.store_commit.count, 6);
        assert_eq!(m.consultations_finished, vec![("completed".to_owned(), 1), ("failed".to_owned(), 0), ("interrupted".to_owned(), 0)]);
    }

    /// Drops `dropped` citations per call; fails when told to.
    struct CitingExtractor {
        dropped: usize,
        fail: bool,
    }

    #[async_trait]
    impl AnketaExtractor for CitingExtractor {
        async fn extract(&self, _: &[DialogueMessage], _: &Anketa) -> Result<ExtractedAnketa, ExtractError> {
            if self.fail {
                return Err(ExtractError::Failed("503".into()));
            }
            Ok(ExtractedAnketa { evidence_dropped: self.dropped, ..Default::default() })
        }
    }

    /// Citations dropped by validation are counted, extraction by extraction.
    #[tokio::test]
    async fn dropped_evidence_is_counted() {
        let telemetry = Telemetry::new();
        let metered = |dropped, fail| MeteredExtractor { inner: Arc::new(CitingExtractor { dropped, fail }), telemetry: telemetry.clone() };
        metered(3, false).extract(&[], &Anketa::default()).await.unwrap();
        metered(2, false).extract(&[], &Anketa::default()).await.unwrap();
        metered(5, true).extract(&[], &Anketa::default()).await.unwrap_err();
        let m = telemetry.metrics().snapshot();
        assert_eq!((m.evidence_dropped, m.extractions_ok, m.extractions_failed), (5, 2, 1));
    }
}
