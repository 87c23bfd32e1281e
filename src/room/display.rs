//! What the room's participants see of the consultation besides the agent's voice, in LiveKit's
//! frontend conventions: the agent participant's `lk.agent.state` attribute (initializing,
//! listening, thinking, speaking), our own `consultant.status` and `consultant.ends_at` (Unix
//! seconds: the page counts down itself) attributes, the anketa as a text stream on topic `consultant.anketa`, and the transcript
//! history for a caller who joins late. Shared by every restart of the Room (it lives in the
//! playout), so a rejoin neither repeats nor loses any of it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use consultant_actors::ports::AgentState;
use consultant_actors::{DialogueMessage, SessionStatus};
use livekit_protocol as proto;

pub const STATE_ATTRIBUTE: &str = "lk.agent.state";
pub const STATUS_ATTRIBUTE: &str = "consultant.status";
pub const ENDS_AT_ATTRIBUTE: &str = "consultant.ends_at";
pub const ANKETA_TOPIC: &str = "consultant.anketa";

/// The attributes as last published: compared every tick, rebuilt only when they change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes {
    state: AgentState,
    status: Option<(SessionStatus, i64)>,
}

impl Attributes {
    pub fn to_request(self) -> proto::UpdateParticipantMetadata {
        let mut attributes = HashMap::from([(STATE_ATTRIBUTE.to_owned(), self.state.as_str().to_owned())]);
        if let Some((status, ends_at)) = self.status {
            attributes.insert(STATUS_ATTRIBUTE.to_owned(), status.as_str().to_owned());
            attributes.insert(ENDS_AT_ATTRIBUTE.to_owned(), ends_at.to_string());
        }
        proto::UpdateParticipantMetadata { attributes, ..Default::default() }
    }
}

struct Inner {
    state: AgentState,
    status: Option<(SessionStatus, i64)>,
    /// The latest anketa not yet sent.
    anketa: Option<String>,
    /// Transcripts sent so far, for callers who join later.
    history: Vec<DialogueMessage>,
    /// Caller connections (participant sids) that have had the whole history.
    caught_up: HashSet<String>,
}

pub struct RoomDisplay {
    inner: Mutex<Inner>,
}

impl Default for RoomDisplay {
    fn default() -> Self {
        let inner = Inner { state: AgentState::Initializing, status: None, anketa: None, history: Vec::new(), caught_up: HashSet::new() };
        Self { inner: Mutex::new(inner) }
    }
}

impl RoomDisplay {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_state(&self, state: AgentState) {
        self.lock().state = state;
    }

    /// The status and when the time is up (Unix seconds).
    pub fn set_status(&self, status: SessionStatus, ends_at: i64) {
        self.lock().status = Some((status, ends_at));
    }

    pub fn set_anketa(&self, text: &str) {
        self.lock().anketa = Some(text.to_owned());
    }

    /// The attributes now: `speaking` while the agent's voice plays, else what the
    /// consultation said.
    pub fn attributes(&self, playing: bool) -> Attributes {
        let inner = self.lock();
        Attributes { state: if playing { AgentState::Speaking } else { inner.state }, status: inner.status }
    }

    pub fn take_anketa(&self) -> Option<String> {
        self.lock().anketa.take()
    }

    /// A transcript went to everyone in the room, the caller's connection `caller` among them.
    pub fn sent(&self, message: DialogueMessage, caller: Option<&str>) {
        let mut inner = self.lock();
        inner.history.push(message);
        if let Some(caller) = caller {
            inner.caught_up.insert(caller.to_owned());
        }
    }

    /// A caller's connection (participant sid) is in the room: what it has not had yet of the
    /// transcript (once per connection).
    pub fn catch_up(&self, caller: &str) -> Vec<DialogueMessage> {
        let mut inner = self.lock();
        if !inner.caught_up.insert(caller.to_owned()) {
            return Vec::new();
        }
        inner.history.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u32) -> DialogueMessage {
        DialogueMessage { seq, role: consultant_actors::Role::Assistant, text: format!("m{seq}"), at: chrono::Utc::now(), interrupted: false }
    }

    #[test]
    fn speaking_while_playing_else_the_consultations_state_and_status_attributes() {
        let d = RoomDisplay::default();
        assert_eq!(d.attributes(false).to_request().attributes, HashMap::from([(STATE_ATTRIBUTE.to_owned(), "initializing".to_owned())]));
        d.set_state(AgentState::Listening);
        d.set_status(SessionStatus::Active, 1_796_000_125);
        assert_eq!(d.attributes(true).to_request().attributes[STATE_ATTRIBUTE], "speaking");
        let attrs = d.attributes(false).to_request().attributes;
        assert_eq!((attrs[STATE_ATTRIBUTE].as_str(), attrs[STATUS_ATTRIBUTE].as_str(), attrs[ENDS_AT_ATTRIBUTE].as_str()), ("listening", "active", "1796000125"));
        assert_eq!(d.attributes(false), d.attributes(false), "unchanged attributes compare equal (nothing re-sent)");
    }

    #[test]
    fn a_late_caller_gets_the_history_once_and_a_present_one_never_twice() {
        let d = RoomDisplay::default();
        d.sent(message(1), Some("caller-a"));
        d.sent(message(2), Some("caller-a"));
        assert!(d.catch_up("caller-a").is_empty(), "caller-a heard them live");
        assert_eq!(d.catch_up("caller-b").iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(d.catch_up("caller-b").is_empty(), "once");
    }
}
