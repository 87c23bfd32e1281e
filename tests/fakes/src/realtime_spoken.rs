//! The fake's ground truth of a call: every caller turn it committed (with what it told the
//! client of the words) and every response it started, in the order the conversation got them,
//! across all its connections. A client that loses nothing and repeats nothing ends up with
//! exactly this dialogue (see `FakeRealtime::spoken`). And which injected faults took effect.

use super::{Session, Shared};

/// One entry of the conversation as the fake lived it.
#[derive(Clone, Debug, PartialEq)]
pub enum Spoken {
    /// A caller turn committed as a user item on `connection`.
    User {
        connection: usize,
        item_id: String,
        /// The transcript sent (`transcription.completed`); None while none was sent.
        transcript: Option<String>,
        /// `transcription.failed` was sent instead.
        failed: bool,
    },
    /// A response of `connection`: its record is `responses[response]` of that connection.
    Agent { connection: usize, response: usize },
}

impl Session {
    /// The caller's turn `item_id` takes its place (once, however often it is mentioned).
    fn user_entry(&self, item_id: &str, change: impl FnOnce(&mut Option<String>, &mut bool)) {
        let mut spoken = self.shared.spoken.lock().unwrap();
        let found = spoken.iter().position(|s| matches!(s, Spoken::User { connection, item_id: id, .. } if *connection == self.index && id == item_id));
        let index = found.unwrap_or_else(|| {
            spoken.push(Spoken::User { connection: self.index, item_id: item_id.to_owned(), transcript: None, failed: false });
            spoken.len() - 1
        });
        if let Spoken::User { transcript, failed, .. } = &mut spoken[index] {
            change(transcript, failed);
        }
    }

    pub(super) fn spoke_user(&self, item_id: &str) {
        self.user_entry(item_id, |_, _| {});
    }

    /// The words of turn `item_id` were sent (None: its transcription failed).
    pub(super) fn told_transcript(&self, item_id: &str, text: Option<&str>) {
        self.user_entry(item_id, |transcript, failed| match text {
            Some(t) => *transcript = Some(t.to_owned()),
            None => *failed = true,
        });
    }

    pub(super) fn spoke_agent(&self, response: usize) {
        self.shared.spoken.lock().unwrap().push(Spoken::Agent { connection: self.index, response });
    }
}

impl Shared {
    pub(super) fn applied(&self, fault: String) {
        self.applied.lock().unwrap().push(fault);
    }
}
