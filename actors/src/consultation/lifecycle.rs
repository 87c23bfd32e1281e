//! How a consultation looks from outside: why it ends (and the status that gives), its
//! lifecycle, and which child is which.

use crate::finalize::SessionOutcome;
use crate::session::SessionStatus;

/// Why a consultation ends.
#[derive(Clone, Debug, PartialEq)]
pub enum EndReason {
    CallerLeft,
    /// The LiveKit server closed the room or removed the agent.
    RoomClosed(String),
    TimeLimit,
    /// The caller said goodbye and the model called `end_consultation`.
    Goodbye,
    /// The caller stayed silent after being asked whether they were still there.
    Silence,
    Operator(String),
    Shutdown,
    Failed(String),
}

impl EndReason {
    pub(super) fn status(&self) -> (SessionStatus, Option<String>) {
        match self {
            EndReason::Failed(why) => (SessionStatus::Failed, Some(why.clone())),
            _ => (SessionStatus::Completed, None),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            EndReason::CallerLeft => "caller left".into(),
            EndReason::RoomClosed(why) => format!("room closed: {why}"),
            EndReason::TimeLimit => "time limit reached".into(),
            EndReason::Goodbye => "the caller said goodbye (end_consultation)".into(),
            EndReason::Silence => "the caller stayed silent".into(),
            EndReason::Operator(who) => format!("ended by operator {who}"),
            EndReason::Shutdown => "worker shutdown".into(),
            EndReason::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// Lifecycle as seen from outside (VoiceHandler, the LiveKit job, simulate).
#[derive(Clone, Debug)]
pub enum Lifecycle {
    Starting,
    /// The agent is in the room (the entrypoint's step 3 is done); skipped without a room.
    Joined,
    /// Realtime connected and the greeting requested (the entrypoint's step 5 is done).
    Ready,
    Finished(Box<SessionOutcome>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    Room,
    Realtime,
    Persistence,
    Extraction,
}

impl ChildKind {
    pub fn name(self) -> &'static str {
        match self {
            ChildKind::Room => "room",
            ChildKind::Realtime => "realtime",
            ChildKind::Persistence => "persistence",
            ChildKind::Extraction => "extraction",
        }
    }
}
