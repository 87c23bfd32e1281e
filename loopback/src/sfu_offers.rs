//! The SFU's subscriber offers (every track not yet offered, data channels on the first, ICE
//! restarts after a resume) and the host candidate trickled with each description.

use super::*;

impl Engine {
    /// Send a subscriber offer with every track not yet offered (and the data channels on
    /// the first one), unless an offer is already pending.
    pub(super) fn offer_subscriber(&mut self, id: PcId, initial: bool, ice_restart: bool) {
        let addr = self.addr;
        let Some(pc) = self.pcs.get_mut(&id) else { return };
        if pc.pending_offer.is_some() {
            return;
        }
        let todo: Vec<usize> =
            pc.out.iter().enumerate().filter(|(_, o)| o.mid.is_none() && !o.open).map(|(i, _)| i).collect();
        if todo.is_empty() && !initial && !ice_restart {
            return;
        }
        let mut api = pc.rtc.sdp_api();
        if ice_restart {
            api.ice_restart(true);
        }
        if initial {
            api.add_channel_with_config(ChannelConfig {
                label: "_reliable".into(),
                ordered: true,
                reliability: Reliability::Reliable,
                negotiated: None,
                protocol: String::new(),
            });
            api.add_channel_with_config(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                negotiated: None,
                protocol: String::new(),
            });
        }
        let mut mids = Vec::new();
        for idx in todo {
            let spec = &pc.out[idx].spec;
            let stream_id = format!("{}|{}", spec.participant_sid, spec.track_sid);
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, Some(stream_id), Some(spec.track_sid.clone()), None);
            mids.push((idx, mid));
        }
        let Some((offer, pending)) = api.apply() else { return };
        pc.pending_offer = Some((pending, mids));
        pc.offer_id += 1;
        let sdp = sdp::livekit_audio_offer(&offer.to_sdp_string());
        pc.last_offer = Some(sdp.clone());
        let _ = pc.signal.send(SignalOut::Offer { sdp: sdp.clone(), id: pc.offer_id });
        send_candidate(pc, addr, &sdp);
    }
}

/// Trickle our host candidate once per PC (it is also in the SDP).
pub(super) fn send_candidate(pc: &mut Pc, addr: SocketAddr, sdp: &str) {
    if pc.candidate_sent {
        return;
    }
    let Ok(c) = Candidate::host(addr, "udp") else { return };
    let mid = sdp_sections(sdp).into_iter().next().map(|(m, _, _)| m).unwrap_or_else(|| "0".into());
    let init = serde_json::json!({
        "candidate": c.to_sdp_string(),
        "sdpMid": mid,
        "sdpMLineIndex": 0,
    });
    pc.candidate_sent = true;
    let _ = pc.signal.send(SignalOut::Trickle { candidate_init: init.to_string(), target: pc.target });
}
