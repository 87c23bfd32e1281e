//! The dialogue as it was really spoken, from the fakes' ground truth, and how a stored
//! dialogue differs from it.
//!
//! The fake realtime service knows every caller turn it committed (and whether it sent its
//! words) and every answer it gave (the words it sent); the audio output knows how much of an
//! answer the caller heard when they cut it off. A worker that loses nothing and repeats
//! nothing stores exactly: each caller turn whose words were sent (or `[неразборчиво]` when
//! transcription failed), each answer as the words sent, cut to the heard prefix when the
//! caller barged in, in the order the conversation had them.

use std::collections::HashMap;

use consultant_actors::consultation::{heard_prefix, UNINTELLIGIBLE};
use consultant_actors::{DialogueMessage, Role};
use consultant_fakes::realtime::{ConnectionRecord, Spoken};

use super::ports::Cut;

/// One message as the comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Said {
    pub role: Role,
    pub text: String,
    pub interrupted: bool,
}

impl std::fmt::Display for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}: {}", self.role.as_str(), if self.interrupted { " (cut)" } else { "" }, self.text)
    }
}

pub fn expected(spoken: &[Spoken], connections: &[ConnectionRecord], cuts: &[Cut]) -> Vec<Said> {
    let mut out = Vec::new();
    for entry in spoken {
        match entry {
            Spoken::User { failed: true, .. } => out.push(Said { role: Role::User, text: UNINTELLIGIBLE.into(), interrupted: false }),
            Spoken::User { transcript: Some(t), .. } if !t.trim().is_empty() => out.push(Said { role: Role::User, text: t.trim().into(), interrupted: false }),
            Spoken::User { .. } => {}
            Spoken::Agent { connection, response } => {
                let r = &connections[*connection].responses[*response];
                let cut = cuts.iter().find(|c| c.heard.item_id == r.item_id).filter(|c| c.heard.played_ms < c.queued_ms);
                let (text, interrupted) = match cut {
                    Some(c) => (heard_prefix(&r.transcript_sent, c.heard.played_ms, c.queued_ms), true),
                    None => (r.transcript_sent.trim().to_owned(), r.status != "completed"),
                };
                if !text.is_empty() {
                    out.push(Said { role: Role::Assistant, text, interrupted });
                }
            }
        }
    }
    out
}

/// The fakes' record behind each expected entry (for a failure report).
pub fn evidence(spoken: &[Spoken], connections: &[ConnectionRecord], cuts: &[Cut]) -> Vec<String> {
    spoken
        .iter()
        .map(|entry| match entry {
            Spoken::User { connection, item_id, transcript, failed } => format!("#{connection} user {item_id}: {transcript:?} failed={failed}"),
            Spoken::Agent { connection, response } => {
                let r = &connections[*connection].responses[*response];
                let cut = cuts.iter().find(|c| c.heard.item_id == r.item_id);
                let cut = cut.map(|c| format!(" cut at {} of {} ms", c.heard.played_ms, c.queued_ms)).unwrap_or_default();
                format!("#{connection} agent {} {} {} ms sent{cut}: {:?}", r.item_id, r.status, r.audio_ms_sent, r.transcript_sent)
            }
        })
        .chain(connections.iter().enumerate().map(|(i, c)| format!("#{i} ended: {:?}; truncates {:?}", c.ended, c.truncates.iter().map(|t| (&t["item_id"], &t["audio_end_ms"])).collect::<Vec<_>>())))
        .collect()
}

pub fn stored(messages: &[DialogueMessage]) -> Vec<Said> {
    messages.iter().filter(|m| m.role.is_spoken()).map(|m| Said { role: m.role, text: m.text.clone(), interrupted: m.interrupted }).collect()
}

/// How a stored dialogue differs from the spoken one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Diff {
    /// Spoken and not stored.
    pub lost: usize,
    /// Stored more often than spoken.
    pub duplicated: usize,
    /// Stored but never spoken as such (a text that differs from what was said or heard).
    pub altered: usize,
    /// Everything is there once, in another order.
    pub reordered: bool,
}

impl Diff {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.altered == 0 && !self.reordered
    }
}

pub fn compare(expected: &[Said], stored: &[Said]) -> Diff {
    fn count(list: &[Said]) -> HashMap<(&'static str, &str, bool), usize> {
        let mut m = HashMap::new();
        for s in list {
            *m.entry((s.role.as_str(), s.text.as_str(), s.interrupted)).or_default() += 1;
        }
        m
    }
    let (want, have) = (count(expected), count(stored));
    let mut diff = Diff::default();
    for (said, n) in &want {
        diff.lost += n.saturating_sub(have.get(said).copied().unwrap_or(0));
    }
    for (said, n) in &have {
        match want.get(said) {
            Some(w) => diff.duplicated += n.saturating_sub(*w),
            None => diff.altered += n,
        }
    }
    diff.reordered = diff.lost == 0 && diff.duplicated == 0 && diff.altered == 0 && expected != stored;
    diff
}
