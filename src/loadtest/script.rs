//! A caller's side of the conversation, one 20 ms frame at a time: it listens to the greeting,
//! then replays the WAV (looping), holding each phrase back while the agent is still speaking
//! or has not answered the last one yet, as a person would. It records when each phrase ended
//! as sent, and when the agent's answer to it began.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::audio::CallerAudio;

/// The agent counts as done speaking after this much silence.
const AGENT_QUIET: Duration = Duration::from_millis(700);
/// A phrase nobody answered within this long counts as unanswered; the caller goes on.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The caller starts talking after this long even if no greeting came.
pub const GREETING_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct Turn {
    pub ended_at: Instant,
    pub answered_at: Option<Instant>,
}

pub struct Script {
    audio: Arc<CallerAudio>,
    started: Instant,
    /// Next WAV frame; None while waiting for the greeting to end.
    frame: Option<usize>,
    pub greeted: bool,
    pub turns: Vec<Turn>,
    last_agent_speech: Option<Instant>,
}

impl Script {
    pub fn new(audio: Arc<CallerAudio>, started: Instant) -> Self {
        Self { audio, started, frame: None, greeted: false, turns: Vec::new(), last_agent_speech: None }
    }

    /// The agent joined `at`: the wait for its greeting counts from then.
    pub fn agent_joined(&mut self, at: Instant) {
        self.started = at;
    }

    /// When the caller's latest phrase ended (for the audio statistics).
    pub fn last_phrase_end(&self) -> Option<Instant> {
        self.turns.last().map(|t| t.ended_at)
    }

    /// Agent speech arrived `at`: the greeting, or the answer to the pending phrase.
    pub fn agent_spoke(&mut self, at: Instant) {
        self.last_agent_speech = Some(at);
        match self.turns.last_mut() {
            None => self.greeted = true,
            Some(t) if t.answered_at.is_none() && at > t.ended_at => t.answered_at = Some(at),
            Some(_) => {}
        }
    }

    fn agent_quiet(&self, now: Instant) -> bool {
        self.last_agent_speech.is_none_or(|t| now.saturating_duration_since(t) >= AGENT_QUIET)
    }

    fn settled(&self, now: Instant) -> bool {
        self.turns.last().is_none_or(|t| t.answered_at.is_some() || now.saturating_duration_since(t.ended_at) >= ANSWER_TIMEOUT)
    }

    /// The packet to send at `now` (the WAV's next frame, or silence while holding back).
    pub fn next_packet(&mut self, now: Instant) -> Arc<[u8]> {
        let frame = match self.frame {
            Some(f) => f,
            None => {
                let greeting_over = self.greeted && self.agent_quiet(now);
                if !greeting_over && now.saturating_duration_since(self.started) < GREETING_WAIT {
                    return self.audio.silence.clone();
                }
                0
            }
        };
        let starts_phrase = self.audio.phrases.iter().any(|p| p.start == frame);
        if starts_phrase && !(self.agent_quiet(now) && self.settled(now)) {
            self.frame = Some(frame);
            return self.audio.silence.clone();
        }
        if self.audio.phrases.iter().any(|p| p.end == frame) {
            self.turns.push(Turn { ended_at: now, answered_at: None });
        }
        self.frame = Some((frame + 1) % self.audio.packets.len());
        self.audio.packets[frame].clone()
    }

    /// Latencies (ms) of the answered turns, and the count of turns that are settled
    /// (answered, or unanswered for [`ANSWER_TIMEOUT`]) at `now`; the last may still be pending.
    pub fn outcome(&self, now: Instant) -> (Vec<f64>, usize) {
        let latencies = self.turns.iter().filter_map(|t| t.answered_at.map(|a| a.duration_since(t.ended_at).as_secs_f64() * 1000.0)).collect();
        let settled = self.turns.iter().filter(|t| t.answered_at.is_some() || now.saturating_duration_since(t.ended_at) >= ANSWER_TIMEOUT).count();
        (latencies, settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::audio::Phrase;

    fn audio() -> Arc<CallerAudio> {
        // Frames: 0-1 silence, 2-4 phrase, 5-6 silence, 7-8 phrase, 9 silence.
        let packets = (0..10u8).map(|i| Arc::from(vec![i; 20])).collect();
        Arc::new(CallerAudio { packets, phrases: vec![Phrase { start: 2, end: 4 }, Phrase { start: 7, end: 8 }], silence: Arc::from(vec![0u8; 3]) })
    }

    #[test]
    fn waits_for_the_greeting_then_holds_each_phrase_until_answered() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Script::new(audio(), t0);
        assert_eq!(s.next_packet(at(20)).len(), 3, "silence before the greeting");
        s.agent_spoke(at(100));
        assert!(s.greeted);
        assert_eq!(s.next_packet(at(500)).len(), 3, "the greeting is still going");
        let sent: Vec<u8> = (0..5).map(|i| s.next_packet(at(900 + i * 20))[0]).collect();
        assert_eq!(sent, [0, 1, 2, 3, 4]);
        assert_eq!(s.turns.len(), 1);
        assert_eq!(s.turns[0].ended_at, at(980));
        assert_eq!(s.next_packet(at(1000))[0], 5);
        assert_eq!(s.next_packet(at(1020))[0], 6);
        assert_eq!(s.next_packet(at(1040)).len(), 3, "the next phrase waits for the answer");
        s.agent_spoke(at(1500));
        assert_eq!(s.next_packet(at(1600)).len(), 3, "and for the answer's end");
        assert_eq!(s.next_packet(at(2200))[0], 7);
        assert_eq!(s.next_packet(at(2220))[0], 8);
        assert_eq!(s.next_packet(at(2240))[0], 9);
        assert_eq!(s.next_packet(at(2260))[0], 0, "the WAV loops");
        let (lat, settled) = s.outcome(at(2300));
        assert_eq!(lat, vec![520.0]);
        assert_eq!(settled, 1, "the second phrase is pending");
        assert_eq!(s.outcome(at(2220 + 10_000)).1, 2, "then unanswered");
    }
}
