//! What a room is doing and its audio counters, for the standalone handle, tests, benches and
//! the console.

use std::sync::atomic::AtomicU64;

use consultant_actors::ports::{RoomEnd, RoomFailure};

/// What the room is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomStatus {
    pub participant_sid: String,
    pub identity: String,
    /// Our track was published and the publisher PC is connected.
    pub publishing: bool,
    pub subscriber_connected: bool,
    /// Identity of the participant we listen to.
    pub caller: Option<String>,
    pub resumes: u32,
    /// A publisher we listen to has refused us its audio (subscription permissions).
    pub caller_audio_denied: bool,
    /// The room is over (caller gone, room closed).
    pub ended: Option<RoomEnd>,
    /// Media failed beyond repair; the Room actor failed with this.
    pub failure: Option<RoomFailure>,
}

impl RoomStatus {
    pub fn is_over(&self) -> bool {
        self.ended.is_some() || self.failure.is_some()
    }
}

/// Counters of the audio paths.
#[derive(Default, Debug)]
pub struct RoomStats {
    pub caller_packets: AtomicU64,
    pub caller_samples: AtomicU64,
    /// Caller audio the consultation could not take in time (its backlog was full).
    pub caller_dropped_frames: AtomicU64,
    pub caller_silence_frames: AtomicU64,
    pub caller_decode_errors: AtomicU64,
    pub agent_packets: AtomicU64,
    pub agent_speech_packets: AtomicU64,
    /// Agent packets produced before the publisher could send them.
    pub agent_unsent_packets: AtomicU64,
}
