//! What the Room shows the room's participants besides the agent's voice (see
//! [`crate::room::display`]): transcripts, the anketa and the agent's attributes, each tick;
//! the transcript so far to a caller who joins late.

use std::collections::HashMap;

use consultant_actors::ports::AgentAudioOutput;
use consultant_actors::DialogueMessage;
use livekit_protocol as proto;

use super::{now_ms, RoomState};
use crate::room::display::ANKETA_TOPIC;
use crate::room::signal::Request;
use crate::room::transcript;

impl RoomState {
    /// The transcript packets of one message: the agent's words name its track; the caller's
    /// name their microphone and are sent on the caller's behalf, as LiveKit agents do.
    fn transcript_packets(&self, message: &DialogueMessage) -> Vec<proto::DataPacket> {
        if transcript::is_agent(message) {
            return transcript::packets(message, &self.identity, self.publisher.track_sid.as_deref().unwrap_or_default());
        }
        let caller = self.status.borrow().caller.clone().unwrap_or_else(|| self.identity.clone());
        transcript::packets(message, &caller, self.feed.caller_track_sid.as_deref().unwrap_or_default())
    }

    /// A caller who joins late (or comes back on a new connection) gets the transcript so far,
    /// to them only, once per connection.
    pub(super) fn catch_up(&mut self, caller: &str, sid: &str) {
        let missed = self.playout.display.catch_up(sid);
        if missed.is_empty() || !self.publisher.can_send_data() {
            return;
        }
        for message in &missed {
            let packets = self.transcript_packets(message);
            self.publisher.send_data(&transcript::only_to(packets, &[caller.to_owned()]));
        }
    }

    /// Every tick: new transcripts and the anketa once a caller can receive them (like the
    /// agent's voice), and the attributes when they change.
    pub(super) fn show(&mut self) {
        let held = self.playout.is_held();
        if self.publisher.can_send_data() && !held {
            let caller = self.feed.caller_sid().map(str::to_owned);
            for message in self.playout.take_transcripts() {
                let packets = self.transcript_packets(&message);
                self.publisher.send_data(&packets);
                self.playout.display.sent(message, caller.as_deref());
            }
            if let Some(text) = self.playout.display.take_anketa() {
                let packets = transcript::text_stream(ANKETA_TOPIC, &text, HashMap::new(), &self.identity, now_ms());
                self.publisher.send_data(&packets);
            }
        }
        let playing = !held && self.playout.is_playing();
        let attributes = self.playout.display.attributes(playing);
        if self.attributes_sent != Some(attributes) && self.signal.is_some() && !self.resuming {
            self.send(Request::UpdateMetadata(attributes.to_request()));
            self.attributes_sent = Some(attributes);
        }
    }
}
