//! The caller's audio on its way to the realtime socket: the room's inbox into the
//! Consultation's mailbox (bounded by a counter, since ractor mailboxes have none), and the
//! gap buffer that holds audio while the realtime link is down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::ActorRef;

use crate::consultation::ConsultationMsg;
use crate::ports::{RoomEvent, RoomEvents};
use crate::turns::REALTIME_RATE;

/// Caller frames in the Consultation's mailbox not yet handled (about 2 s of 20 ms frames);
/// past it the room sheds caller audio and counts it, the media loop never waits.
pub const CALLER_BACKLOG: usize = 100;

/// How one Room (one generation of it) delivers its events to its Consultation.
pub struct RoomInbox {
    consultation: ActorRef<ConsultationMsg>,
    generation: u64,
    backlog: Arc<AtomicUsize>,
}

impl RoomInbox {
    pub fn new(consultation: ActorRef<ConsultationMsg>, generation: u64, backlog: Arc<AtomicUsize>) -> Self {
        Self { consultation, generation, backlog }
    }
}

impl RoomEvents for RoomInbox {
    fn deliver(&self, event: RoomEvent) -> bool {
        let audio = matches!(event, RoomEvent::CallerAudio { .. });
        if audio && self.backlog.fetch_add(1, Ordering::AcqRel) >= CALLER_BACKLOG {
            self.backlog.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let sent = self.consultation.send_message(ConsultationMsg::Room { generation: self.generation, event }).is_ok();
        if audio && !sent {
            self.backlog.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }
}

/// Caller audio held while the realtime link is down, oldest dropped first past the limit.
#[derive(Default)]
pub struct CallerGap {
    held: VecDeque<Arc<[i16]>>,
    held_samples: usize,
    /// Caller audio lost for good: the gap overflowed or the socket writer was full.
    pub dropped_samples: u64,
}

impl CallerGap {
    pub fn hold(&mut self, pcm: Arc<[i16]>, limit_samples: usize) {
        self.held_samples += pcm.len();
        self.held.push_back(pcm);
        while self.held_samples > limit_samples {
            let Some(old) = self.held.pop_front() else { break };
            self.held_samples -= old.len();
            self.dropped_samples += old.len() as u64;
        }
    }

    /// Everything held, oldest first.
    pub fn drain(&mut self) -> Vec<Arc<[i16]>> {
        self.held_samples = 0;
        self.held.drain(..).collect()
    }

    pub fn held_ms(&self) -> u64 {
        self.held_samples as u64 * 1000 / REALTIME_RATE
    }

    pub fn dropped_ms(&self) -> u64 {
        self.dropped_samples * 1000 / REALTIME_RATE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_keeps_the_newest_audio_and_counts_what_it_drops() {
        let mut gap = CallerGap::default();
        for i in 0..5i16 {
            gap.hold(Arc::from(vec![i; 480]), 1000);
        }
        assert_eq!(gap.dropped_samples, 3 * 480);
        let held: Vec<i16> = gap.drain().iter().map(|f| f[0]).collect();
        assert_eq!(held, vec![3, 4]);
        assert_eq!(gap.held_ms(), 0);
    }
}
