//! The publisher peer connection: the agent's audio track (AddTrack, offer/answer, Opus RTP
//! paced by the wall clock) and the `_reliable` data channel the transcripts go out on.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use livekit_protocol as proto;
use str0m::change::SdpPendingOffer;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};

use super::peer::{Peer, Target};
use super::rtp_clock::RtpClock;
use super::sdp;
use super::signal::{self, Request};
use super::status::RoomStats;

pub struct Publisher {
    pub peer: Peer,
    /// The AddTrackRequest cid; also the msid track id that ties the m-section to the track.
    cid: String,
    track_name: String,
    pub track_sid: Option<String>,
    mid: Option<Mid>,
    pt: Option<Pt>,
    pending: Option<SdpPendingOffer>,
    offer_wanted: bool,
    offer_id: u32,
    channel: Option<ChannelId>,
    channel_open: bool,
    rtp_clock: RtpClock,
}

impl Publisher {
    pub fn new(ip: IpAddr, track_name: &str) -> Result<Self, String> {
        Ok(Self {
            peer: Peer::new(Target::Publisher, ip)?,
            cid: format!("TR_agent_{}", uuid::Uuid::new_v4().simple()),
            track_name: track_name.to_owned(),
            track_sid: None,
            mid: None,
            pt: None,
            pending: None,
            offer_wanted: false,
            offer_id: 0,
            channel: None,
            channel_open: false,
            rtp_clock: RtpClock::default(),
        })
    }

    /// A new peer connection after the server forgot ours: the track is published again.
    pub fn replace_peer(&mut self, ip: IpAddr) -> Result<(), String> {
        let peer = Peer::new(Target::Publisher, ip)?;
        self.peer.rtc.disconnect();
        self.peer = peer;
        self.track_sid = None;
        self.mid = None;
        self.pt = None;
        self.pending = None;
        self.channel = None;
        self.channel_open = false;
        Ok(())
    }

    pub fn add_track(&self) -> Request {
        Request::AddTrack(proto::AddTrackRequest {
            cid: self.cid.clone(),
            name: self.track_name.clone(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            ..Default::default()
        })
    }

    /// Whether a TrackPublished response is about our track.
    pub fn is_ours(&self, cid: &str) -> bool {
        cid == self.cid
    }

    /// Our track was published: offer it (and the data channel).
    pub fn published(&mut self, track_sid: String) -> Vec<Request> {
        tracing::info!(%track_sid, "agent track published");
        self.track_sid = Some(track_sid);
        self.offer()
    }

    /// Offers unless an offer is pending (str0m keeps one): the answer offers again if
    /// something changed meanwhile.
    pub fn offer(&mut self) -> Vec<Request> {
        if self.pending.is_some() {
            self.offer_wanted = true;
            return Vec::new();
        }
        self.offer_wanted = false;
        self.peer.touch();
        let mut api = self.peer.rtc.sdp_api();
        if self.mid.is_none() && self.track_sid.is_some() {
            self.mid = Some(api.add_media(MediaKind::Audio, Direction::SendOnly, Some(self.cid.clone()), Some(self.cid.clone()), None));
        }
        if self.channel.is_none() {
            // As LiveKit clients do: the data channels live on the publisher PC.
            self.channel = Some(api.add_channel_with_config(ChannelConfig {
                label: "_reliable".into(),
                ordered: true,
                reliability: Reliability::Reliable,
                negotiated: None,
                protocol: String::new(),
            }));
        }
        let Some((offer, pending)) = api.apply() else { return Vec::new() };
        self.pending = Some(pending);
        self.offer_id += 1;
        let sdp = offer.to_sdp_string();
        let mid = sdp::sections(&sdp).first().map(|s| s.mid.clone()).unwrap_or_else(|| "0".into());
        let mut out = vec![Request::Offer(proto::SessionDescription { r#type: "offer".into(), sdp, id: self.offer_id, ..Default::default() })];
        out.extend(trickle(&mut self.peer, &mid));
        out
    }

    /// The server's answer to our offer. Err: media cannot work (the cause).
    pub fn answered(&mut self, a: proto::SessionDescription) -> Result<Vec<Request>, String> {
        let Some(pending) = self.pending.take() else {
            tracing::warn!("publisher answer without an offer ignored");
            return Ok(Vec::new());
        };
        let answer = str0m::change::SdpAnswer::from_sdp_string(&a.sdp).map_err(|e| format!("unparsable publisher answer: {e}"))?;
        self.peer.touch();
        self.peer.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| format!("publisher answer refused: {e}"))?;
        if let Some(mid) = self.mid {
            self.pt = self.peer.rtc.writer(mid).and_then(|w| w.payload_params().find(|p| p.spec().codec == str0m::format::Codec::Opus).map(|p| p.pt()));
            if self.pt.is_none() {
                return Err("the server did not accept Opus for the agent track".into());
            }
        }
        Ok(if self.offer_wanted { self.offer() } else { Vec::new() })
    }

    /// Resumed on the same session but our path was lost too: restart ICE.
    pub fn restart_ice(&mut self) -> Vec<Request> {
        self.peer.touch();
        self.peer.rtc.sdp_api().ice_restart(true);
        self.offer()
    }

    pub fn is_publishing(&self) -> bool {
        self.peer.connected && self.pt.is_some()
    }

    pub fn channel_opened(&mut self, id: ChannelId) {
        if Some(id) == self.channel {
            self.channel_open = true;
        }
    }

    pub fn can_send_data(&self) -> bool {
        self.channel_open
    }

    /// Writes data packets on the `_reliable` channel; stops at the first that does not fit.
    pub fn send_data(&mut self, packets: &[proto::DataPacket]) {
        let Some(id) = self.channel else { return };
        self.peer.touch();
        let Some(mut channel) = self.peer.rtc.channel(id) else { return };
        for p in packets {
            if !matches!(channel.write(true, &prost::Message::encode_to_vec(p)), Ok(true)) {
                tracing::debug!("data not sent: channel full");
                return;
            }
        }
    }

    /// One encoded 20 ms frame of the agent's voice for the slot `due`, with its level (-dBov)
    /// for the RTP audio-level extension.
    pub fn write_audio(&mut self, packet: Vec<u8>, speech: bool, level: i8, due: Instant, at: Instant, stats: &RoomStats) {
        let rtp_ticks = self.rtp_clock.stamp(due);
        stats.agent_packets.fetch_add(1, Ordering::Relaxed);
        let (Some(mid), Some(pt)) = (self.mid, self.pt) else {
            stats.agent_unsent_packets.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self.peer.connected {
            stats.agent_unsent_packets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if speech {
            stats.agent_speech_packets.fetch_add(1, Ordering::Relaxed);
        }
        self.peer.touch();
        let Some(writer) = self.peer.rtc.writer(mid) else { return };
        let writer = writer.audio_level(level, speech);
        if let Err(e) = writer.write(pt, at, MediaTime::new(rtp_ticks, Frequency::FORTY_EIGHT_KHZ), packet) {
            tracing::debug!(error = %e, "agent packet not written");
        }
    }
}

/// Our host candidate, once per peer connection.
pub fn trickle(peer: &mut Peer, mid: &str) -> Option<Request> {
    if peer.trickled {
        return None;
    }
    peer.trickled = true;
    let init = signal::candidate_init(&peer.candidate.to_sdp_string(), mid);
    Some(Request::Trickle(proto::TrickleRequest { candidate_init: init, target: peer.target.proto(), r#final: false }))
}
