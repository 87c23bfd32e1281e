//! Turn assembly: turns the realtime events of a call into final dialogue messages, in the
//! order the turns happened. Pure (no actors, no clocks): the Consultation feeds it events and
//! stores what comes out.
//!
//! The caller's transcript arrives after the agent has already started answering, so each
//! turn gets a slot when it begins and the dialogue advances only over slots whose text is
//! final. An interrupted agent answer is stored as the part the caller heard.

use std::collections::{HashSet, VecDeque};

use crate::dialogue::Role;
use crate::ports::{PlayedAudio, ResponseStatus};

/// Samples per second of the realtime audio (PCM16 mono).
pub const REALTIME_RATE: u64 = 24_000;

/// Text stored for a caller turn whose transcription failed: the turn happened, its words are
/// unknown.
pub const UNINTELLIGIBLE: &str = "[неразборчиво]";

/// A message whose text is final, ready to join the dialogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalText {
    pub role: Role,
    pub text: String,
    pub interrupted: bool,
}

/// A dialogue position waiting for its final text.
enum Slot {
    PendingUser { item_id: String },
    Ready(FinalText),
}

/// The assistant item being spoken.
struct AgentTurn {
    item_id: String,
    transcript: String,
    transcript_done: bool,
    received_samples: u64,
    /// Set on barge-in: how much the caller heard.
    played_ms: Option<u64>,
    /// The response ended (so) while its audio still plays: the model speaks faster than the
    /// caller hears, and a barge-in may still cut what is left.
    done: Option<ResponseStatus>,
}

impl AgentTurn {
    fn new(item_id: String, transcript: String) -> Self {
        Self { item_id, transcript, transcript_done: false, received_samples: 0, played_ms: None, done: None }
    }

    fn received_ms(&self) -> u64 {
        self.received_samples * 1000 / REALTIME_RATE
    }
}

/// The turns of one call in flight.
#[derive(Default)]
pub struct Turns {
    slots: VecDeque<Slot>,
    seen_user_items: HashSet<String>,
    agent: Option<AgentTurn>,
}

impl Turns {
    /// The caller's turn was committed: it takes its place now. True if it is new (the caller
    /// then waits a bounded time for its transcript, see [`Turns::transcript_timed_out`]).
    pub fn user_committed(&mut self, item_id: &str) -> bool {
        if !self.seen_user_items.insert(item_id.to_owned()) {
            return false;
        }
        self.slots.push_back(Slot::PendingUser { item_id: item_id.to_owned() });
        true
    }

    /// The caller's transcript (None: transcription failed).
    pub fn user_transcript(&mut self, item_id: &str, text: Option<&str>) -> Vec<FinalText> {
        let text = match text {
            // An empty transcript (noise) is no message.
            Some(t) if t.trim().is_empty() => None,
            Some(t) => Some(t.trim().to_owned()),
            None => Some(UNINTELLIGIBLE.to_owned()),
        };
        let position = self.pending_user(item_id);
        match (position, text) {
            (Some(i), Some(text)) => self.slots[i] = Slot::Ready(FinalText { role: Role::User, text, interrupted: false }),
            (Some(i), None) => {
                self.slots.remove(i);
            }
            (None, Some(text)) => {
                // A transcript for an item never seen committed (or that timed out): keep it.
                self.seen_user_items.insert(item_id.to_owned());
                self.slots.push_back(Slot::Ready(FinalText { role: Role::User, text, interrupted: false }));
            }
            (None, None) => {}
        }
        self.take_ready()
    }

    /// No transcript came in time: the dialogue moves on without the turn (a late one is still
    /// kept). None if the turn was no longer waiting.
    pub fn transcript_timed_out(&mut self, item_id: &str) -> Option<Vec<FinalText>> {
        let i = self.pending_user(item_id)?;
        self.slots.remove(i);
        Some(self.take_ready())
    }

    pub fn agent_item_started(&mut self, item_id: &str) -> Vec<FinalText> {
        let mut ready = Vec::new();
        if self.agent.as_ref().is_some_and(|t| t.item_id != item_id) {
            ready = self.finish_agent(Some(ResponseStatus::Completed));
        }
        if self.agent.is_none() {
            self.agent = Some(AgentTurn::new(item_id.to_owned(), String::new()));
        }
        ready
    }

    /// Agent speech of `item_id`: what finished before it, and whether to play it (audio of an
    /// answer the caller interrupted is not played).
    pub fn agent_audio(&mut self, item_id: &str, samples: usize) -> (Vec<FinalText>, bool) {
        let mut ready = Vec::new();
        if self.agent.as_ref().is_none_or(|t| t.item_id != item_id) {
            ready = self.finish_agent(Some(ResponseStatus::Completed));
            self.agent = Some(AgentTurn::new(item_id.to_owned(), String::new()));
        }
        let turn = self.agent.as_mut().expect("agent turn just ensured");
        if turn.played_ms.is_some() {
            return (ready, false);
        }
        turn.received_samples += samples as u64;
        (ready, true)
    }

    /// What finished before it (an answer still playing out, superseded by the next one).
    pub fn agent_transcript_delta(&mut self, item_id: &str, delta: &str) -> Vec<FinalText> {
        let mut ready = Vec::new();
        if self.agent.as_ref().is_some_and(|t| t.done.is_some() && t.item_id != item_id) {
            ready = self.finish_agent(None);
        }
        match self.agent.as_mut() {
            Some(turn) if turn.item_id == item_id && !turn.transcript_done => turn.transcript.push_str(delta),
            Some(_) => {}
            None => self.agent = Some(AgentTurn::new(item_id.to_owned(), delta.to_owned())),
        }
        ready
    }

    pub fn agent_transcript_done(&mut self, item_id: &str, text: &str) {
        if let Some(turn) = self.agent.as_mut().filter(|t| t.item_id == item_id) {
            turn.transcript = text.to_owned();
            turn.transcript_done = true;
        }
    }

    /// Barge-in: the output stopped after `played`. Returns how much of the current item the
    /// caller heard (the truncate point), if `played` is of it.
    pub fn agent_interrupted(&mut self, played: &PlayedAudio) -> Option<u64> {
        let turn = self.agent.as_mut().filter(|t| t.item_id == played.item_id)?;
        let heard = played.played_ms.min(turn.received_ms());
        turn.played_ms = Some(heard);
        Some(heard)
    }

    /// The realtime link dropped mid-answer: the answer ends with what was received (cut where
    /// the caller barged in). While its audio still `playing`, it is final once heard out or
    /// cut, as an answer the model finished ([`Turns::agent_response_done`]).
    pub fn realtime_lost(&mut self, playing: bool) -> Vec<FinalText> {
        let status = self.agent.as_ref().and_then(|t| t.done).unwrap_or(ResponseStatus::Incomplete);
        self.agent_response_done(status, playing)
    }

    /// The answer still being heard, as it will be stored if heard to the end (a new realtime
    /// session is told it, so that the model knows what it was saying).
    pub fn playing_out(&self) -> Option<FinalText> {
        let turn = self.agent.as_ref().filter(|t| t.done.is_some())?;
        let text = turn.transcript.trim();
        (!text.is_empty()).then(|| FinalText { role: Role::Assistant, text: text.to_owned(), interrupted: turn.done != Some(ResponseStatus::Completed) })
    }

    /// The response ended. While its audio still `playing`, the answer is final only once
    /// heard to the end or cut by a barge-in ([`Turns::agent_heard`]).
    pub fn agent_response_done(&mut self, status: ResponseStatus, playing: bool) -> Vec<FinalText> {
        match self.agent.as_mut() {
            Some(turn) if playing && turn.played_ms.is_none() => {
                turn.done = Some(status);
                Vec::new()
            }
            _ => self.finish_agent(Some(status)),
        }
    }

    /// An answer whose response ended is no longer playing (heard out, or just cut): final now.
    pub fn agent_heard(&mut self) -> Vec<FinalText> {
        if self.awaiting_playout() {
            self.finish_agent(None)
        } else {
            Vec::new()
        }
    }

    /// An ended answer is still being heard.
    pub fn awaiting_playout(&self) -> bool {
        self.agent.as_ref().is_some_and(|t| t.done.is_some())
    }

    /// Ends the assistant item in flight: the stored text is what the caller actually heard.
    /// The response's own status wins once it is known.
    pub fn finish_agent(&mut self, status: Option<ResponseStatus>) -> Vec<FinalText> {
        let Some(turn) = self.agent.take() else { return Vec::new() };
        let status = turn.done.or(status);
        let received_ms = turn.received_ms();
        let (text, interrupted) = match turn.played_ms {
            Some(played) if played < received_ms => (heard_prefix(&turn.transcript, played, received_ms), true),
            _ => (turn.transcript, !matches!(status, Some(ResponseStatus::Completed) | None)),
        };
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Vec::new();
        }
        self.slots.push_back(Slot::Ready(FinalText { role: Role::Assistant, text, interrupted }));
        self.take_ready()
    }

    /// The call is over: caller turns still waiting for a transcript are given up.
    pub fn close(&mut self) -> Vec<FinalText> {
        self.slots.retain(|s| matches!(s, Slot::Ready(_)));
        self.take_ready()
    }

    /// No turn in flight (a safe moment to recycle the realtime session).
    pub fn is_idle(&self) -> bool {
        self.agent.is_none() && self.slots.is_empty()
    }

    fn pending_user(&self, item_id: &str) -> Option<usize> {
        self.slots.iter().position(|s| matches!(s, Slot::PendingUser { item_id: id } if id == item_id))
    }

    /// Final messages from the front of the slot queue, in order.
    fn take_ready(&mut self) -> Vec<FinalText> {
        let mut ready = Vec::new();
        while let Some(Slot::Ready(_)) = self.slots.front() {
            if let Some(Slot::Ready(text)) = self.slots.pop_front() {
                ready.push(text);
            }
        }
        ready
    }
}

/// The part of an interrupted agent answer the caller heard, cut at a word boundary in
/// proportion to the audio played (the model gives no word timings).
pub fn heard_prefix(transcript: &str, played_ms: u64, received_ms: u64) -> String {
    if received_ms == 0 || played_ms == 0 {
        return String::new();
    }
    let chars: Vec<char> = transcript.chars().collect();
    let keep = ((chars.len() as u64 * played_ms) / received_ms) as usize;
    let mut cut: String = chars[..keep.min(chars.len())].iter().collect();
    if keep < chars.len() && !chars[keep].is_whitespace() {
        // Drop the partly heard word.
        if let Some(space) = cut.rfind(char::is_whitespace) {
            cut.truncate(space);
        } else {
            cut.clear();
        }
    }
    cut.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> FinalText {
        FinalText { role: Role::User, text: text.into(), interrupted: false }
    }

    fn agent(text: &str, interrupted: bool) -> FinalText {
        FinalText { role: Role::Assistant, text: text.into(), interrupted }
    }

    /// One second of agent audio.
    const SECOND: usize = REALTIME_RATE as usize;

    #[test]
    fn heard_prefix_cuts_at_word_boundary() {
        let t = "Здравствуйте, меня зовут Анна, чем могу помочь?";
        assert_eq!(heard_prefix(t, 0, 1000), "");
        assert_eq!(heard_prefix(t, 1000, 1000), t);
        let half = heard_prefix(t, 500, 1000);
        assert!(t.starts_with(&half) && half.len() < t.len() && !half.ends_with(' '));
        assert!(half.split_whitespace().all(|w| t.split_whitespace().any(|x| x == w)));
    }

    #[test]
    fn a_late_caller_transcript_keeps_its_place_before_the_answer() {
        let mut t = Turns::default();
        assert!(t.user_committed("u1"));
        assert!(!t.user_committed("u1"), "a repeated commit is the same turn");
        assert!(t.agent_item_started("a1").is_empty());
        assert_eq!(t.agent_audio("a1", SECOND), (vec![], true));
        t.agent_transcript_done("a1", "Ответ.");
        // The answer is complete before the caller's words are known: it waits.
        assert!(t.finish_agent(Some(ResponseStatus::Completed)).is_empty());
        assert_eq!(t.user_transcript("u1", Some(" Вопрос ")), vec![user("Вопрос"), agent("Ответ.", false)]);
        assert!(t.is_idle());
    }

    #[test]
    fn a_barged_in_answer_is_stored_as_the_part_heard_and_late_audio_is_not_played() {
        let mut t = Turns::default();
        t.agent_item_started("a1");
        t.agent_audio("a1", 2 * SECOND);
        t.agent_transcript_done("a1", "раз два три четыре");
        // 1 s of 2 s heard; the output claims more than was received: capped.
        assert_eq!(t.agent_interrupted(&PlayedAudio { item_id: "a1".into(), played_ms: 1000 }), Some(1000));
        assert_eq!(t.agent_interrupted(&PlayedAudio { item_id: "other".into(), played_ms: 5 }), None);
        assert_eq!(t.agent_audio("a1", SECOND), (vec![], false));
        assert_eq!(t.finish_agent(Some(ResponseStatus::Cancelled)), vec![agent("раз два", true)]);
    }

    #[test]
    fn an_answer_generated_faster_than_heard_is_final_once_heard_or_cut() {
        let mut t = Turns::default();
        t.agent_item_started("a1");
        t.agent_audio("a1", 2 * SECOND);
        t.agent_transcript_done("a1", "раз два три четыре");
        assert!(t.agent_response_done(ResponseStatus::Completed, true).is_empty(), "still being heard");
        assert!(t.awaiting_playout() && !t.is_idle());
        // The caller cuts in after 1 s of 2: the heard half is the answer.
        assert_eq!(t.agent_interrupted(&PlayedAudio { item_id: "a1".into(), played_ms: 1000 }), Some(1000));
        assert_eq!(t.agent_heard(), vec![agent("раз два", true)]);
        assert!(t.agent_heard().is_empty() && t.is_idle());

        // Heard to the end: whole, not interrupted, even if the link drops meanwhile.
        t.agent_item_started("a2");
        t.agent_audio("a2", SECOND);
        t.agent_transcript_done("a2", "пять шесть");
        assert!(t.agent_response_done(ResponseStatus::Completed, true).is_empty());
        assert!(t.realtime_lost(true).is_empty());
        assert_eq!(t.playing_out(), Some(agent("пять шесть", false)));
        assert_eq!(t.agent_heard(), vec![agent("пять шесть", false)]);

        // Not playing any more when it ends: final at once; the next answer's words finish a
        // previous one still playing out.
        t.agent_item_started("a3");
        t.agent_transcript_done("a3", "семь");
        assert_eq!(t.agent_response_done(ResponseStatus::Completed, false), vec![agent("семь", false)]);
        t.agent_item_started("a4");
        t.agent_transcript_done("a4", "восемь");
        t.agent_response_done(ResponseStatus::Completed, true);
        assert_eq!(t.agent_transcript_delta("a5", "девять"), vec![agent("восемь", false)]);
    }

    #[test]
    fn an_answer_cut_by_a_drop_is_what_was_heard_of_it() {
        let mut t = Turns::default();
        // The link drops while the received part still plays; after the reconnect the caller
        // cuts in: the heard part of what was received is the answer.
        t.agent_item_started("a1");
        t.agent_audio("a1", 2 * SECOND);
        t.agent_transcript_delta("a1", "раз два три четыре");
        assert!(t.realtime_lost(true).is_empty());
        assert_eq!(t.playing_out(), Some(agent("раз два три четыре", true)));
        t.agent_interrupted(&PlayedAudio { item_id: "a1".into(), played_ms: 1000 });
        assert_eq!(t.agent_heard(), vec![agent("раз два", true)]);

        // Cut by the caller, then the link drops before the response ends: still the cut part.
        t.agent_item_started("a2");
        t.agent_audio("a2", 2 * SECOND);
        t.agent_transcript_delta("a2", "пять шесть семь восемь");
        t.agent_interrupted(&PlayedAudio { item_id: "a2".into(), played_ms: 1000 });
        assert_eq!(t.realtime_lost(false), vec![agent("пять шесть", true)]);
    }

    #[test]
    fn failed_empty_and_timed_out_caller_turns() {
        let mut t = Turns::default();
        t.user_committed("u1");
        t.user_committed("u2");
        t.user_committed("u3");
        assert!(t.user_transcript("u2", Some("  ")).is_empty(), "noise is no message, and u1 still waits");
        assert_eq!(t.transcript_timed_out("u1"), Some(vec![]));
        assert_eq!(t.transcript_timed_out("u1"), None, "already gone");
        assert_eq!(t.user_transcript("u3", None), vec![user(UNINTELLIGIBLE)]);
        // A transcript after its turn timed out is still kept, at the end.
        assert_eq!(t.user_transcript("u1", Some("поздно")), vec![user("поздно")]);
    }

    #[test]
    fn a_new_agent_item_completes_the_previous_one_and_close_gives_up_waiting_turns() {
        let mut t = Turns::default();
        t.agent_transcript_delta("a1", "Первый ");
        t.agent_transcript_delta("a1", "ответ");
        assert_eq!(t.agent_item_started("a2"), vec![agent("Первый ответ", false)]);
        t.user_committed("u1");
        t.agent_transcript_delta("a2", "Второй");
        assert!(t.realtime_lost(false).is_empty(), "waits behind the caller's turn");
        assert_eq!(t.close(), vec![agent("Второй", true)]);
        assert!(t.is_idle());
    }
}
