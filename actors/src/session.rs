//! `VoiceConsultationSession`: the state of one voice consultation (dialogue, timer, status).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::anketa::Anketa;
use crate::dialogue::{DialogueMessage, Role, SessionId};
use crate::provenance::{ExtractedAnketa, Provenance};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Starting,
    Active,
    Finalizing,
    Completed,
    Failed,
    Interrupted,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Starting => "starting",
            SessionStatus::Active => "active",
            SessionStatus::Finalizing => "finalizing",
            SessionStatus::Completed => "completed",
            SessionStatus::Failed => "failed",
            SessionStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "starting" => SessionStatus::Starting,
            "active" => SessionStatus::Active,
            "finalizing" => SessionStatus::Finalizing,
            "completed" => SessionStatus::Completed,
            "failed" => SessionStatus::Failed,
            "interrupted" => SessionStatus::Interrupted,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, SessionStatus::Completed | SessionStatus::Failed | SessionStatus::Interrupted)
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the consultation timer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerPhase {
    Running,
    /// The wrap-up instruction has been given.
    WrappingUp,
    /// The limit was reached; the goodbye is being said.
    Expired,
}

/// The state of one consultation: dialogue, timer and status.
#[derive(Clone, Debug)]
pub struct VoiceConsultationSession {
    pub session_id: SessionId,
    pub room: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The timer's start on tokio's clock (paused in tests, never moved by wall-clock steps).
    started: tokio::time::Instant,
    pub max_duration: Duration,
    pub timer: TimerPhase,
    pub status: SessionStatus,
    pub failure: Option<String>,
    pub dialogue: Vec<DialogueMessage>,
    pub anketa: Anketa,
    /// Where each anketa value came from (beside the anketa, whose stored shape stays as the
    /// Python module's).
    pub provenance: Provenance,
    /// Dialogue length that produced the current anketa.
    pub anketa_at_message: usize,
}

impl VoiceConsultationSession {
    pub fn new(session_id: SessionId, room: String, max_duration: Duration) -> Self {
        Self {
            session_id,
            room,
            started_at: Utc::now(),
            ended_at: None,
            started: tokio::time::Instant::now(),
            max_duration,
            timer: TimerPhase::Running,
            status: SessionStatus::Starting,
            failure: None,
            dialogue: Vec::new(),
            anketa: Anketa::default(),
            provenance: Provenance::default(),
            anketa_at_message: 0,
        }
    }

    /// Picks up a session its previous worker left mid-call: the stored dialogue (numbering
    /// goes on after it), the latest anketa snapshot, and the timer running from the original
    /// start, so that a resumed call does not get a new time limit.
    pub fn resume(&mut self, started_at: DateTime<Utc>, dialogue: Vec<DialogueMessage>, anketa: Option<crate::ports::AnketaRecord>) {
        let elapsed = (Utc::now() - started_at).to_std().unwrap_or_default();
        self.started = tokio::time::Instant::now().checked_sub(elapsed).unwrap_or_else(tokio::time::Instant::now);
        self.started_at = started_at;
        self.dialogue = dialogue;
        if let Some(a) = anketa {
            self.anketa = a.anketa;
            self.provenance = a.provenance;
            self.anketa_at_message = a.message_count;
        }
    }

    pub fn elapsed(&self) -> Duration {
        match self.ended_at {
            Some(end) => (end - self.started_at).to_std().unwrap_or_default(),
            None => self.started.elapsed(),
        }
    }

    pub fn remaining(&self) -> Duration {
        self.max_duration.saturating_sub(self.elapsed())
    }

    /// Merges an extraction of the first `message_count` messages into the anketa and its
    /// provenance.
    pub fn apply_extraction(&mut self, extracted: &ExtractedAnketa, message_count: usize) {
        self.provenance.merge(&mut self.anketa, extracted, message_count);
        self.anketa_at_message = message_count;
    }

    /// Appends a final message and returns it (with its sequence number and time).
    pub fn push_message(&mut self, role: Role, text: String, interrupted: bool) -> DialogueMessage {
        let message = DialogueMessage {
            seq: self.dialogue.len() as u32 + 1,
            role,
            text,
            at: Utc::now(),
            interrupted,
        };
        self.dialogue.push(message.clone());
        message
    }
}
