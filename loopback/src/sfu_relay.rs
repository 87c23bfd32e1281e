//! What the SFU passes between participants: data packets (sender identity asserted as
//! livekit-server does, destinations honoured, held for a channel not open yet) and RTP of
//! published tracks to their subscribers.

use super::*;

impl Engine {
    #[allow(deprecated)] // UserPacket's sender/destination fields: older clients still read them
    pub(super) fn relay_data(&mut self, from: PcId, cd: ChannelData) {
        let Some(pc) = self.pcs.get(&from) else { return };
        let (room, identity, psid, agent) = (pc.room.clone(), pc.identity.clone(), pc.participant_sid.clone(), pc.agent);
        let Some(label) = pc.channels.iter().find(|(_, c)| **c == cd.id).map(|(l, _)| l.clone()) else { return };
        let mut dp = match livekit_protocol::DataPacket::decode(cd.data.as_slice()) {
            Ok(dp) => dp,
            Err(err) => {
                self.emit(ServerEvent::ProtocolError { peer: identity, detail: format!("undecodable DataPacket on {label}: {err}") });
                return;
            }
        };
        // As livekit-server: the sender's identity is asserted, except that an agent may send a
        // text stream on behalf of another participant (their transcript), marked generated.
        let on_behalf = agent && !dp.participant_identity.is_empty() && dp.participant_identity != identity;
        let mut keep_identity = false;
        if let (true, Some(livekit_protocol::data_packet::Value::StreamHeader(h))) = (on_behalf, dp.value.as_mut()) {
            if let Some(livekit_protocol::data_stream::header::ContentHeader::TextHeader(t)) = h.content_header.as_mut() {
                t.generated = true;
                keep_identity = true;
            }
        }
        if !keep_identity {
            dp.participant_identity = identity.clone();
        }
        dp.participant_sid = psid.clone();
        let mut dests = dp.destination_identities.clone();
        let mut topic = String::new();
        use livekit_protocol::data_packet::Value;
        let kind = match &mut dp.value {
            Some(Value::User(u)) => {
                u.participant_identity = identity.clone();
                u.participant_sid = psid;
                dests.extend(u.destination_identities.iter().cloned());
                topic = u.topic.clone().unwrap_or_default();
                "user"
            }
            Some(Value::StreamHeader(h)) => {
                topic = h.topic.clone();
                "stream_header"
            }
            Some(Value::StreamChunk(_)) => "stream_chunk",
            Some(Value::StreamTrailer(_)) => "stream_trailer",
            Some(Value::Transcription(_)) => "transcription",
            Some(Value::ChatMessage(_)) => "chat_message",
            Some(Value::RpcRequest(_)) | Some(Value::RpcAck(_)) | Some(Value::RpcResponse(_)) => "rpc",
            Some(_) => "other",
            None => "empty",
        };
        let bytes = dp.encode_to_vec();
        let mut recipients = Vec::new();
        let mut touched = Vec::new();
        for (id, pc) in self.pcs.iter_mut() {
            if pc.target != Target::Subscriber || pc.room != room || pc.identity == identity {
                continue;
            }
            if !dests.is_empty() && !dests.contains(&pc.identity) {
                continue;
            }
            let Some(cid) = pc.channels.get(&label).copied() else {
                // Its channel is not open yet: deliver when it opens (bounded).
                if pc.pending_data.len() < 256 {
                    pc.pending_data.push((label.clone(), bytes.clone()));
                    recipients.push(pc.identity.clone());
                }
                continue;
            };
            if let Some(mut ch) = pc.rtc.channel(cid) {
                if ch.write(true, &bytes).is_ok() {
                    recipients.push(pc.identity.clone());
                }
            }
            touched.push(*id);
        }
        self.dirty.extend(touched);
        tracing::debug!(%room, from = %identity, kind, %topic, ?recipients, "data relayed");
        self.emit(ServerEvent::DataForwarded { room, from: identity, label, kind: kind.into(), topic, recipients });
    }

    pub(super) fn forward(&mut self, from: PcId, data: MediaData) {
        let (track_sid, first, room, identity) = {
            let Some(pc) = self.pcs.get_mut(&from) else { return };
            let Some(sid) = pc.in_tracks.get(&data.mid).cloned() else { return };
            let first = pc.flowing.insert(data.mid);
            self.speakers.heard(&pc.room, &pc.participant_sid, data.ext_vals.audio_level);
            (sid, first, pc.room.clone(), pc.identity.clone())
        };
        if first {
            tracing::info!(%room, %identity, %track_sid, "media flowing");
            self.emit(ServerEvent::MediaFlowing { room: room.clone(), identity, track_sid: track_sid.clone() });
        }
        for (id, pc) in self.pcs.iter_mut() {
            if pc.target != Target::Subscriber || pc.room != room || self.denied.get(id).is_some_and(|d| d.contains(&track_sid)) {
                continue;
            }
            let Some(mid) = pc.out.iter().find(|o| o.open && o.spec.track_sid == track_sid).and_then(|o| o.mid) else {
                continue;
            };
            let Some(w) = pc.rtc.writer(mid) else { continue };
            let Some(pt) = w.match_params(data.params) else { continue };
            if let Err(err) = w.write(pt, data.network_time, data.time, data.data.clone()) {
                tracing::debug!(error = %err, "forward write failed");
            }
            self.dirty.insert(*id);
        }
        self.lag.observe(data.network_time.elapsed());
    }

    /// `speakers_changed` to everyone in a room whose speakers changed (sent once per
    /// participant, on the signalling its subscriber PC belongs to).
    pub(super) fn announce_speakers(&mut self) {
        for (room, speakers) in self.speakers.check(Instant::now()) {
            for pc in self.pcs.values().filter(|pc| pc.target == Target::Subscriber && pc.room == room) {
                let msg = livekit_protocol::signal_response::Message::SpeakersChanged(livekit_protocol::SpeakersChanged { speakers: speakers.clone() });
                let _ = pc.signal.send(SignalOut::Notice(Box::new(msg)));
            }
        }
    }
}
