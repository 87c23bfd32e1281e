//! `/rtc`: participant signalling (protocol v0, two peer connections).

use livekit_protocol as proto;

/// What the room side pushes to a participant's signalling connection.
#[derive(Debug)]
pub enum SignalOut {
    /// Other participants changed (joined, published, left).
    Update(Vec<proto::ParticipantInfo>),
    /// The server ends the session (room closed, replaced).
    Leave(String),
}
