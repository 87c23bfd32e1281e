//! The Room actor: one per consultation. It owns the signalling link and both peer connections,
//! and is the only place their state changes. Small feeder tasks turn sockets and clocks into
//! messages: the signalling reader, one UDP reader per peer connection, a 10 ms tick for
//! str0m's timers and pings, and the agent-voice pacer (20 ms frames).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use str0m::change::SdpPendingOffer;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::{Candidate, Event, IceConnectionState};
use tokio::sync::{mpsc, watch};

use super::codec::{AgentEncoder, CallerDecoder, FRAME_24K, PCM_RATE};
use super::peer::{Peer, Target};
use super::playout::Playout;
use super::sdp::{self, Section};
use super::signal::{self, Incoming, Request, Response, SignalLink};
use crate::secret::Secret;

const TICK: Duration = Duration::from_millis(10);
const FRAME: Duration = Duration::from_millis(20);
/// Silence sent after an answer so the far end's jitter buffer ends on silence, not on
/// concealment of the last word.
const TRAILING_SILENCE_FRAMES: u32 = 10;
/// A caller whose packets stop (mute, DTX, loss) is fed silence after this, so the realtime
/// side's voice activity detection sees the turn end.
const CALLER_GAP: Duration = Duration::from_millis(60);
const RESUME_ATTEMPTS: u32 = 5;
const MAX_FULL_REJOINS: u32 = 2;
/// How long after a caller appears the agent may speak even if no caller audio arrived.
const SILENT_CALLER_SETTLE: Duration = Duration::from_secs(2);

/// Why the room ended for this consultation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEnd {
    /// The caller left and did not come back within the grace period.
    CallerLeft,
    /// The server closed the room or removed us.
    RoomClosed(String),
    /// Media or signalling failed beyond repair.
    MediaFailed(String),
    /// We left (the consultation is over).
    Left,
}

/// What the room is doing, for the entrypoint, tests and the console.
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
    pub ended: Option<RoomEnd>,
}

/// Counters of the audio paths.
#[derive(Default, Debug)]
pub struct RoomStats {
    pub caller_packets: AtomicU64,
    pub caller_samples: AtomicU64,
    /// Caller audio the consultation could not take in time (its queue was full).
    pub caller_dropped_frames: AtomicU64,
    pub caller_silence_frames: AtomicU64,
    pub caller_decode_errors: AtomicU64,
    pub agent_packets: AtomicU64,
    pub agent_speech_packets: AtomicU64,
    /// Agent packets produced before the publisher could send them.
    pub agent_unsent_packets: AtomicU64,
}

pub enum RoomMsg {
    Signal { gen: u64, incoming: Incoming },
    Resumed { gen: u64, result: Result<(SignalLink, Box<Response>), String> },
    Datagram { target: Target, peer_gen: u64, data: Vec<u8>, source: SocketAddr, at: Instant },
    Tick,
    AgentPacket { packet: Vec<u8>, speech: bool, at: Instant },
    Leave,
}

pub struct RoomArgs {
    pub url: String,
    pub token: Secret,
    pub local_ip: IpAddr,
    pub link: SignalLink,
    pub join: proto::JoinResponse,
    pub playout: Arc<Playout>,
    pub caller_tx: mpsc::Sender<Arc<[i16]>>,
    pub status: watch::Sender<RoomStatus>,
    pub stats: Arc<RoomStats>,
    pub rejoin_grace: Duration,
    pub track_name: String,
}

struct Caller {
    sid: String,
    identity: String,
    decoder: CallerDecoder,
}

pub struct RoomState {
    args_url: String,
    token: Secret,
    local_ip: IpAddr,
    gen: u64,
    signal: Option<SignalLink>,
    resuming: bool,
    sid: String,
    ping_interval: Duration,
    ping_timeout: Duration,
    last_ping: Instant,
    last_heard: Instant,
    rtt_ms: i64,
    peer_gen: u64,
    publisher: Peer,
    subscriber: Peer,
    cid: String,
    track_name: String,
    track_sid: Option<String>,
    pub_mid: Option<Mid>,
    pub_pt: Option<Pt>,
    pub_pending: Option<SdpPendingOffer>,
    pub_offer_wanted: bool,
    pub_offer_id: u32,
    /// `_reliable` on the publisher PC: transcripts go out on it.
    pub_channel: Option<ChannelId>,
    pub_channel_open: bool,
    /// The caller's microphone track (transcripts of their speech name it).
    caller_track_sid: Option<String>,
    identity: String,
    remote: HashMap<Mid, Section>,
    participants: HashMap<String, proto::ParticipantInfo>,
    caller: Option<Caller>,
    caller_tx: Option<mpsc::Sender<Arc<[i16]>>>,
    caller_gone_at: Option<Instant>,
    /// When a caller-kind participant was first seen in the room.
    caller_present_since: Option<Instant>,
    playout: Arc<Playout>,
    rejoin_grace: Duration,
    fed_until: Instant,
    rtp_ticks: u64,
    last_packet_at: Option<Instant>,
    status: watch::Sender<RoomStatus>,
    stats: Arc<RoomStats>,
    pcm: Vec<i16>,
    events: Vec<Event>,
    feeders: Vec<tokio::task::JoinHandle<()>>,
    ended: bool,
    full_rejoins: u32,
}

pub struct RoomActor;

fn is_caller_kind(kind: i32) -> bool {
    kind == proto::participant_info::Kind::Standard as i32 || kind == proto::participant_info::Kind::Sip as i32
}

fn is_gone(p: &proto::ParticipantInfo) -> bool {
    p.state == proto::participant_info::State::Disconnected as i32
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn spawn_udp_reader(myself: ActorRef<RoomMsg>, peer: &Peer, peer_gen: u64) -> tokio::task::JoinHandle<()> {
    let socket = peer.socket.clone();
    let target = peer.target;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, source)) => {
                    let msg = RoomMsg::Datagram { target, peer_gen, data: buf[..n].to_vec(), source, at: Instant::now() };
                    if myself.send_message(msg).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, target = target.name(), "udp receive"),
            }
        }
    })
}

fn signal_deliverer(myself: ActorRef<RoomMsg>, gen: u64) -> impl Fn(Incoming) -> bool + Send + 'static {
    move |incoming| myself.send_message(RoomMsg::Signal { gen, incoming }).is_ok()
}

/// The agent-voice clock: one frame every 20 ms while there is speech (and a short tail of
/// silence after it), nothing while idle. The first frame of an answer leaves as soon as it is
/// queued. A late wake-up never sends the missed frames in a burst.
fn spawn_pacer(myself: ActorRef<RoomMsg>, playout: Arc<Playout>) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut encoder = AgentEncoder::new().map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        let mut frame = [0i16; FRAME_24K];
        let mut next: Option<tokio::time::Instant> = None;
        let mut silent = TRAILING_SILENCE_FRAMES;
        loop {
            match next {
                None => {
                    playout.woken().await;
                    next = Some(tokio::time::Instant::now());
                }
                Some(t) => tokio::time::sleep_until(t).await,
            }
            let f = playout.next_frame(&mut frame);
            if f.after_cut {
                encoder.reset();
            }
            silent = if f.speech_samples > 0 { 0 } else { silent.saturating_add(1) };
            let packet = match encoder.encode(&frame) {
                Ok(p) => p.to_vec(),
                Err(e) => {
                    tracing::error!(error = %e, "agent voice encoding failed");
                    continue;
                }
            };
            let at = Instant::now();
            if myself.send_message(RoomMsg::AgentPacket { packet, speech: f.speech_samples > 0, at }).is_err() {
                return;
            }
            if silent >= TRAILING_SILENCE_FRAMES {
                next = None;
                continue;
            }
            let now = tokio::time::Instant::now();
            let mut t = next.unwrap_or(now) + FRAME;
            if t + FRAME < now {
                t = now + FRAME; // we were late: resume the cadence from now
            }
            next = Some(t);
        }
    }))
}

impl RoomState {
    fn send(&self, req: Request) {
        if let Some(s) = &self.signal {
            let _ = s.send(req);
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut RoomStatus)) {
        self.status.send_modify(f);
    }

    fn peer(&mut self, t: Target) -> &mut Peer {
        match t {
            Target::Publisher => &mut self.publisher,
            Target::Subscriber => &mut self.subscriber,
        }
    }

    fn trickle(&mut self, t: Target, mid: &str) {
        let peer = self.peer(t);
        if peer.trickled {
            return;
        }
        peer.trickled = true;
        let init = signal::candidate_init(&peer.candidate.to_sdp_string(), mid);
        self.send(Request::Trickle(proto::TrickleRequest { candidate_init: init, target: t.proto(), r#final: false }));
    }

    fn add_track(&self) {
        self.send(Request::AddTrack(proto::AddTrackRequest {
            cid: self.cid.clone(),
            name: self.track_name.clone(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            ..Default::default()
        }));
    }

    /// Offers on the publisher PC unless an offer is pending (str0m keeps one): the answer
    /// handler offers again if something changed meanwhile.
    fn offer_publisher(&mut self) {
        if self.pub_pending.is_some() {
            self.pub_offer_wanted = true;
            return;
        }
        self.pub_offer_wanted = false;
        let mut api = self.publisher.rtc.sdp_api();
        if self.pub_mid.is_none() && self.track_sid.is_some() {
            // msid track id = the AddTrackRequest cid: that is how the server ties the
            // m-section to the published track.
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, Some(self.cid.clone()), Some(self.cid.clone()), None);
            self.pub_mid = Some(mid);
        }
        if self.pub_channel.is_none() {
            // As LiveKit clients do: the data channels live on the publisher PC.
            self.pub_channel = Some(api.add_channel_with_config(ChannelConfig {
                label: "_reliable".into(),
                ordered: true,
                reliability: Reliability::Reliable,
                negotiated: None,
                protocol: String::new(),
            }));
        }
        let Some((offer, pending)) = api.apply() else { return };
        self.pub_pending = Some(pending);
        self.pub_offer_id += 1;
        let sdp = offer.to_sdp_string();
        let mid = sdp::sections(&sdp).first().map(|s| s.mid.clone()).unwrap_or_else(|| "0".into());
        self.send(Request::Offer(proto::SessionDescription { r#type: "offer".into(), sdp, id: self.pub_offer_id, ..Default::default() }));
        self.trickle(Target::Publisher, &mid);
    }

    fn end(&mut self, why: RoomEnd) {
        if self.ended {
            return;
        }
        self.ended = true;
        match &why {
            RoomEnd::MediaFailed(cause) => tracing::error!(%cause, "room media failed"),
            other => tracing::info!(reason = ?other, "room ended for this consultation"),
        }
        // The status first: whoever sees the caller stream close reads why from it.
        self.set_status(|s| s.ended = Some(why));
        // Closing the caller stream tells the consultation to end.
        self.caller_tx = None;
    }

    fn merge_participants(&mut self, list: Vec<proto::ParticipantInfo>) {
        for p in list {
            if p.sid == self.sid || p.identity.is_empty() {
                continue;
            }
            if is_gone(&p) {
                if self.caller.as_ref().is_some_and(|c| c.sid == p.sid) {
                    tracing::info!(identity = %p.identity, "caller left the room; waiting for a rejoin");
                    self.caller = None;
                    self.caller_gone_at = Some(Instant::now());
                    self.set_status(|s| s.caller = None);
                }
                self.participants.remove(&p.sid);
            } else {
                if is_caller_kind(p.kind) && self.caller_present_since.is_none() {
                    self.caller_present_since = Some(Instant::now());
                }
                self.participants.insert(p.sid.clone(), p);
            }
        }
    }

    fn on_signal(&mut self, myself: &ActorRef<RoomMsg>, resp: Response) {
        self.last_heard = Instant::now();
        match resp {
            Response::Offer(o) => self.on_subscriber_offer(o),
            Response::Answer(a) => self.on_publisher_answer(a),
            Response::Trickle(t) => {
                let target = Target::from_proto(t.target);
                match signal::candidate_from_init(&t.candidate_init) {
                    Some(c) if c.is_empty() => {}
                    Some(c) => match Candidate::from_sdp_string(&c) {
                        Ok(c) => self.peer(target).rtc.add_remote_candidate(c),
                        Err(e) => tracing::debug!(error = %e, "remote candidate ignored"),
                    },
                    None => tracing::warn!("trickle without a candidate ignored"),
                }
            }
            Response::TrackPublished(t) if t.cid == self.cid => {
                let sid = t.track.map(|t| t.sid).unwrap_or_default();
                tracing::info!(track_sid = %sid, "agent track published");
                self.track_sid = Some(sid);
                self.offer_publisher();
            }
            Response::Update(u) => self.merge_participants(u.participants),
            Response::Leave(l) => {
                let resume = l.action == proto::leave_request::Action::Resume as i32 || l.action == proto::leave_request::Action::Reconnect as i32;
                if l.can_reconnect && resume {
                    // RECONNECT = the server forgot us: a full join; RESUME = same session.
                    let full = l.action == proto::leave_request::Action::Reconnect as i32;
                    tracing::warn!(reason = l.reason, full, "server asked us to reconnect");
                    self.start_resume(myself, "server asked to reconnect".into(), full);
                } else {
                    let reason = proto::DisconnectReason::try_from(l.reason).map(|r| r.as_str_name().to_owned()).unwrap_or_else(|_| l.reason.to_string());
                    self.end(RoomEnd::RoomClosed(format!("the server removed us from the room ({reason})")));
                }
            }
            Response::PongResp(p) => self.rtt_ms = now_ms() - p.last_ping_timestamp,
            Response::RefreshToken(t) => self.token = Secret::new(t),
            Response::Join(j) => {
                // A resume the server treated as a fresh join: new PCs, publish again.
                tracing::warn!("server answered the resume with a fresh join; renegotiating both peer connections");
                if let Err(e) = self.restart_media(myself, j) {
                    self.end(RoomEnd::MediaFailed(e));
                }
            }
            Response::Reconnect(_) => {
                // Same PCs; the server re-offers the subscriber with an ICE restart. The
                // publisher restarts ICE only if its path was lost too.
                tracing::info!(publisher_connected = self.publisher.connected, "resumed the same session");
                if !self.publisher.connected {
                    self.publisher.rtc.sdp_api().ice_restart(true);
                    self.offer_publisher();
                }
            }
            _ => {}
        }
    }

    fn on_subscriber_offer(&mut self, o: proto::SessionDescription) {
        let offer = match str0m::change::SdpOffer::from_sdp_string(&o.sdp) {
            Ok(x) => x,
            Err(e) => return self.end(RoomEnd::MediaFailed(format!("unparsable subscriber offer: {e}"))),
        };
        let answer = match self.subscriber.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => return self.end(RoomEnd::MediaFailed(format!("subscriber offer refused: {e}"))),
        };
        let sections = sdp::sections(&o.sdp);
        let first = sections.first().map(|s| s.mid.clone()).unwrap_or_else(|| "0".into());
        for s in sections {
            self.remote.insert(Mid::from(s.mid.as_str()), s);
        }
        self.send(Request::Answer(proto::SessionDescription { r#type: "answer".into(), sdp: answer.to_sdp_string(), id: o.id, ..Default::default() }));
        self.trickle(Target::Subscriber, &first);
    }

    fn on_publisher_answer(&mut self, a: proto::SessionDescription) {
        let Some(pending) = self.pub_pending.take() else {
            tracing::warn!("publisher answer without an offer ignored");
            return;
        };
        let answer = match str0m::change::SdpAnswer::from_sdp_string(&a.sdp) {
            Ok(x) => x,
            Err(e) => return self.end(RoomEnd::MediaFailed(format!("unparsable publisher answer: {e}"))),
        };
        if let Err(e) = self.publisher.rtc.sdp_api().accept_answer(pending, answer) {
            return self.end(RoomEnd::MediaFailed(format!("publisher answer refused: {e}")));
        }
        if let Some(mid) = self.pub_mid {
            self.pub_pt = self.publisher.rtc.writer(mid).and_then(|w| w.payload_params().find(|p| p.spec().codec == str0m::format::Codec::Opus).map(|p| p.pt()));
            if self.pub_pt.is_none() {
                return self.end(RoomEnd::MediaFailed("the server did not accept Opus for the agent track".into()));
            }
        }
        if self.pub_offer_wanted {
            self.offer_publisher();
        }
        self.update_publishing();
    }

    fn update_publishing(&self) {
        let publishing = self.publisher.connected && self.pub_pt.is_some();
        self.set_status(|s| s.publishing = publishing);
    }

    /// New peer connections after the server forgot ours (a resume answered with `join`).
    fn restart_media(&mut self, myself: &ActorRef<RoomMsg>, j: proto::JoinResponse) -> Result<(), String> {
        let ip = self.local_ip;
        let publisher = Peer::new(Target::Publisher, ip)?;
        let subscriber = Peer::new(Target::Subscriber, ip)?;
        self.publisher.rtc.disconnect();
        self.subscriber.rtc.disconnect();
        self.publisher = publisher;
        self.subscriber = subscriber;
        self.peer_gen += 1;
        for h in self.feeders.drain(..) {
            h.abort();
        }
        self.feeders.push(spawn_udp_reader(myself.clone(), &self.publisher, self.peer_gen));
        self.feeders.push(spawn_udp_reader(myself.clone(), &self.subscriber, self.peer_gen));
        self.apply_join(j);
        self.track_sid = None;
        self.pub_mid = None;
        self.pub_pt = None;
        self.pub_pending = None;
        self.pub_channel = None;
        self.pub_channel_open = false;
        self.remote.clear();
        if let Some(c) = self.caller.as_mut() {
            c.decoder = CallerDecoder::new().map_err(|e| e.to_string())?;
        }
        self.add_track();
        self.update_publishing();
        Ok(())
    }

    fn apply_join(&mut self, j: proto::JoinResponse) {
        if let Some(p) = &j.participant {
            self.sid = p.sid.clone();
            self.identity = p.identity.clone();
            let (sid, identity) = (p.sid.clone(), p.identity.clone());
            self.set_status(|s| {
                s.participant_sid = sid;
                s.identity = identity;
            });
        }
        if j.ping_interval > 0 {
            self.ping_interval = Duration::from_secs(j.ping_interval as u64);
        }
        if j.ping_timeout > 0 {
            self.ping_timeout = Duration::from_secs(j.ping_timeout as u64);
        }
        self.participants.clear();
        self.merge_participants(j.other_participants);
    }

    /// Reconnects signalling: a resume (`reconnect=1&sid`, same participant and PCs) or, when
    /// the server asked for it, a full join (new PCs). Never sends `leave`: leaving ends the job.
    fn start_resume(&mut self, myself: &ActorRef<RoomMsg>, cause: String, full: bool) {
        if self.resuming || self.ended {
            return;
        }
        if full {
            self.full_rejoins += 1;
            if self.full_rejoins > MAX_FULL_REJOINS {
                return self.end(RoomEnd::MediaFailed(format!("the server asked for a full reconnect {} times: {cause}", self.full_rejoins)));
            }
        }
        tracing::warn!(%cause, full, "signalling lost; reconnecting without leaving the room");
        self.resuming = true;
        self.signal = None;
        self.gen += 1;
        let gen = self.gen;
        let (url, token, me) = (self.args_url.clone(), self.token.clone(), myself.clone());
        let sid = (!full).then(|| self.sid.clone());
        self.set_status(|s| s.resumes += 1);
        tokio::spawn(async move {
            let mut last = cause;
            for attempt in 1..=RESUME_ATTEMPTS {
                match signal::connect(&url, &token, sid.as_deref(), signal_deliverer(me.clone(), gen)).await {
                    Ok(ok) => {
                        let _ = me.send_message(RoomMsg::Resumed { gen, result: Ok((ok.0, Box::new(ok.1))) });
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "resume attempt failed");
                        last = e;
                        tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                    }
                }
            }
            let _ = me.send_message(RoomMsg::Resumed { gen, result: Err(format!("resume failed after {RESUME_ATTEMPTS} attempts: {last}")) });
        });
    }

    fn on_media(&mut self, data: str0m::media::MediaData) {
        let Some(section) = self.remote.get(&data.mid) else { return };
        let Some(psid) = section.participant_sid().map(str::to_owned) else { return };
        let track_sid = section.track_id.clone();
        let Some(info) = self.participants.get(&psid) else { return };
        if !is_caller_kind(info.kind) {
            return; // other agents are not the caller
        }
        match &self.caller {
            Some(c) if c.sid != psid => return, // one caller at a time
            Some(_) => {}
            None => {
                let decoder = match CallerDecoder::new() {
                    Ok(d) => d,
                    Err(e) => return self.end(RoomEnd::MediaFailed(e.to_string())),
                };
                let identity = info.identity.clone();
                tracing::info!(%identity, "listening to the caller");
                self.caller = Some(Caller { sid: psid, identity: identity.clone(), decoder });
                self.caller_track_sid = track_sid;
                self.caller_gone_at = None;
                self.fed_until = Instant::now();
                self.set_status(|s| s.caller = Some(identity));
                // Their audio reaches us, so they are subscribed to ours: let the agent speak.
                self.playout.release();
            }
        }
        let caller = self.caller.as_mut().expect("set above");
        self.pcm.clear();
        match caller.decoder.decode(&data.data, &mut self.pcm) {
            Ok(n) => {
                self.stats.caller_packets.fetch_add(1, Ordering::Relaxed);
                self.stats.caller_samples.fetch_add(n as u64, Ordering::Relaxed);
                let now = Instant::now();
                let dur = Duration::from_micros(n as u64 * 1_000_000 / PCM_RATE as u64);
                self.fed_until = self.fed_until.max(now.checked_sub(CALLER_GAP).unwrap_or(now)) + dur;
                let pcm: Arc<[i16]> = Arc::from(&self.pcm[..]);
                self.push_caller(pcm);
            }
            Err(e) => {
                self.stats.caller_decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(identity = %caller.identity, error = %e, "caller packet undecodable");
            }
        }
    }

    fn push_caller(&self, pcm: Arc<[i16]>) {
        if let Some(tx) = &self.caller_tx {
            if tx.try_send(pcm).is_err() {
                self.stats.caller_dropped_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_tick(&mut self, myself: &ActorRef<RoomMsg>) {
        let now = Instant::now();
        if !self.resuming && self.signal.is_some() {
            if now.duration_since(self.last_ping) >= self.ping_interval {
                self.last_ping = now;
                self.send(Request::PingReq(proto::Ping { timestamp: now_ms(), rtt: self.rtt_ms }));
            }
            if now.duration_since(self.last_heard) > self.ping_timeout {
                self.start_resume(myself, format!("no signalling for {:?}", self.ping_timeout), false);
            }
        }
        if self.pub_channel_open {
            for message in self.playout.take_transcripts() {
                self.send_transcript(&message);
            }
        }
        // Keep the caller's stream continuous through mute, DTX and loss.
        if self.caller.is_some() {
            while self.fed_until + CALLER_GAP < now {
                self.fed_until += FRAME;
                self.stats.caller_silence_frames.fetch_add(1, Ordering::Relaxed);
                self.push_caller(Arc::from(&[0i16; FRAME_24K][..]));
            }
        }
        // A caller who publishes nothing (muted) still hears the agent once their
        // subscription had time to settle.
        if self.caller_present_since.is_some_and(|t| now.duration_since(t) >= SILENT_CALLER_SETTLE) && self.playout.is_held() {
            self.playout.release();
        }
        if let Some(gone) = self.caller_gone_at {
            if self.caller.is_none() && now.duration_since(gone) >= self.rejoin_grace {
                self.caller_gone_at = None;
                self.end(RoomEnd::CallerLeft);
            }
        }
    }

    /// One dialogue message as a LiveKit text stream on topic `lk.transcription` (header,
    /// chunks, trailer), as LiveKit agents publish transcripts.
    #[allow(deprecated)] // DataPacket.kind: still read by servers and older clients
    fn send_transcript(&mut self, message: &consultant_actors::DialogueMessage) {
        use proto::data_stream;
        let Some(id) = self.pub_channel else { return };
        let agent = message.role == consultant_actors::Role::Assistant;
        let track = if agent { self.track_sid.clone() } else { self.caller_track_sid.clone() }.unwrap_or_default();
        let stream_id = uuid::Uuid::new_v4().to_string();
        let attributes = HashMap::from([
            ("lk.transcribed_track_id".to_owned(), track),
            ("lk.segment_id".to_owned(), format!("SG_{}", message.seq)),
            ("lk.transcription_final".to_owned(), "true".to_owned()),
        ]);
        let packet = |value| proto::DataPacket {
            kind: proto::data_packet::Kind::Reliable as i32,
            participant_identity: self.identity.clone(),
            value: Some(value),
            ..Default::default()
        };
        let mut packets = vec![packet(proto::data_packet::Value::StreamHeader(data_stream::Header {
            stream_id: stream_id.clone(),
            timestamp: message.at.timestamp_millis(),
            topic: "lk.transcription".into(),
            mime_type: "text/plain".into(),
            total_length: Some(message.text.len() as u64),
            attributes,
            content_header: Some(data_stream::header::ContentHeader::TextHeader(data_stream::TextHeader {
                operation_type: data_stream::OperationType::Create as i32,
                ..Default::default()
            })),
            ..Default::default()
        }))];
        // Chunks stay well under the SCTP message size, split on character boundaries.
        let mut chunk = String::new();
        let mut index = 0u64;
        for c in message.text.chars().chain(std::iter::once('\0')) {
            if c == '\0' || chunk.len() + c.len_utf8() > 12_000 {
                if !chunk.is_empty() {
                    packets.push(packet(proto::data_packet::Value::StreamChunk(data_stream::Chunk {
                        stream_id: stream_id.clone(),
                        chunk_index: index,
                        content: std::mem::take(&mut chunk).into_bytes(),
                        ..Default::default()
                    })));
                    index += 1;
                }
                if c == '\0' {
                    break;
                }
            }
            chunk.push(c);
        }
        packets.push(packet(proto::data_packet::Value::StreamTrailer(data_stream::Trailer { stream_id, ..Default::default() })));
        let Some(mut channel) = self.publisher.rtc.channel(id) else { return };
        for p in packets {
            if !matches!(channel.write(true, &prost::Message::encode_to_vec(&p)), Ok(true)) {
                tracing::debug!("transcript not sent: data channel full");
                return;
            }
        }
    }

    fn on_agent_packet(&mut self, packet: Vec<u8>, speech: bool, at: Instant) {
        // RTP time follows the wall clock across idle gaps, in whole frames.
        self.rtp_ticks += match self.last_packet_at {
            Some(prev) => {
                let frames = ((at.saturating_duration_since(prev).as_micros() + 10_000) / 20_000).max(1) as u64;
                frames * 960
            }
            None => 0,
        };
        self.last_packet_at = Some(at);
        self.stats.agent_packets.fetch_add(1, Ordering::Relaxed);
        let (Some(mid), Some(pt)) = (self.pub_mid, self.pub_pt) else {
            self.stats.agent_unsent_packets.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self.publisher.connected {
            self.stats.agent_unsent_packets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if speech {
            self.stats.agent_speech_packets.fetch_add(1, Ordering::Relaxed);
        }
        let Some(writer) = self.publisher.rtc.writer(mid) else { return };
        if let Err(e) = writer.write(pt, at, MediaTime::new(self.rtp_ticks, Frequency::FORTY_EIGHT_KHZ), packet) {
            tracing::debug!(error = %e, "agent packet not written");
        }
    }

    /// Runs both peer connections' clocks and acts on their events.
    fn drive(&mut self) {
        let now = Instant::now();
        for target in [Target::Publisher, Target::Subscriber] {
            let mut events = std::mem::take(&mut self.events);
            let result = self.peer(target).drive(now, &mut events);
            if let Err(e) = result {
                self.events = events;
                self.end(RoomEnd::MediaFailed(e));
                continue;
            }
            for ev in events.drain(..) {
                self.on_event(target, ev);
            }
            self.events = events;
        }
    }

    fn on_event(&mut self, target: Target, ev: Event) {
        match ev {
            Event::Connected => {
                tracing::info!(pc = target.name(), "peer connection connected");
                self.peer(target).connected = true;
                if target == Target::Subscriber {
                    self.set_status(|s| s.subscriber_connected = true);
                }
                self.update_publishing();
            }
            Event::IceConnectionStateChange(state) => {
                tracing::debug!(pc = target.name(), ?state, "ice state");
                if state == IceConnectionState::Disconnected {
                    self.peer(target).connected = false;
                    if target == Target::Subscriber {
                        self.set_status(|s| s.subscriber_connected = false);
                    }
                    self.update_publishing();
                }
            }
            Event::MediaData(data) if target == Target::Subscriber => self.on_media(data),
            Event::ChannelOpen(id, label) => {
                tracing::debug!(pc = target.name(), %label, "data channel open");
                if target == Target::Publisher && Some(id) == self.pub_channel {
                    self.pub_channel_open = true;
                }
            }
            _ => {}
        }
    }
}

#[ractor::async_trait]
impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomState, ActorProcessingErr> {
        let publisher = Peer::new(Target::Publisher, args.local_ip)?;
        let subscriber = Peer::new(Target::Subscriber, args.local_ip)?;
        let now = Instant::now();
        let mut st = RoomState {
            args_url: args.url,
            token: args.token,
            local_ip: args.local_ip,
            gen: 0,
            signal: Some(args.link),
            resuming: false,
            sid: String::new(),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            last_ping: now,
            last_heard: now,
            rtt_ms: 0,
            peer_gen: 0,
            publisher,
            subscriber,
            cid: format!("TR_agent_{}", uuid::Uuid::new_v4().simple()),
            track_name: args.track_name,
            track_sid: None,
            pub_mid: None,
            pub_pt: None,
            pub_pending: None,
            pub_offer_wanted: false,
            pub_offer_id: 0,
            pub_channel: None,
            pub_channel_open: false,
            caller_track_sid: None,
            identity: String::new(),
            remote: HashMap::new(),
            participants: HashMap::new(),
            caller: None,
            caller_tx: Some(args.caller_tx),
            caller_gone_at: None,
            caller_present_since: None,
            playout: args.playout.clone(),
            rejoin_grace: args.rejoin_grace,
            fed_until: now,
            rtp_ticks: 0,
            last_packet_at: None,
            status: args.status,
            stats: args.stats,
            pcm: Vec::with_capacity(4096),
            events: Vec::new(),
            feeders: Vec::new(),
            ended: false,
            full_rejoins: 0,
        };
        st.apply_join(args.join);
        st.feeders.push(spawn_udp_reader(myself.clone(), &st.publisher, 0));
        st.feeders.push(spawn_udp_reader(myself.clone(), &st.subscriber, 0));
        let ticker = {
            let me = myself.clone();
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(TICK);
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    iv.tick().await;
                    if me.send_message(RoomMsg::Tick).is_err() {
                        return;
                    }
                }
            })
        };
        let pacer = spawn_pacer(myself.clone(), args.playout)?;
        st.feeders.push(ticker);
        st.feeders.push(pacer);
        st.add_track();
        Ok(st)
    }

    async fn post_stop(&self, _myself: ActorRef<RoomMsg>, st: &mut RoomState) -> Result<(), ActorProcessingErr> {
        for h in st.feeders.drain(..) {
            h.abort();
        }
        st.publisher.rtc.disconnect();
        st.subscriber.rtc.disconnect();
        st.end(RoomEnd::Left);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<RoomMsg>, msg: RoomMsg, st: &mut RoomState) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomMsg::Signal { gen, incoming } if gen == st.gen => match incoming {
                Incoming::Message(resp) => st.on_signal(&myself, *resp),
                Incoming::Closed(cause) => {
                    if !st.ended {
                        st.start_resume(&myself, cause, false);
                    }
                }
            },
            RoomMsg::Signal { .. } => {} // from a replaced connection
            RoomMsg::Resumed { gen, result } if gen == st.gen => {
                st.resuming = false;
                match result {
                    Ok((link, first)) => {
                        tracing::info!("signalling resumed");
                        st.signal = Some(link);
                        st.last_heard = Instant::now();
                        st.on_signal(&myself, *first);
                    }
                    Err(cause) => st.end(RoomEnd::MediaFailed(cause)),
                }
            }
            RoomMsg::Resumed { .. } => {}
            RoomMsg::Datagram { target, peer_gen, data, source, at } if peer_gen == st.peer_gen => {
                if let Err(e) = st.peer(target).receive(&data, source, at) {
                    tracing::warn!(error = %e, "rtc input failed");
                }
            }
            RoomMsg::Datagram { .. } => {}
            RoomMsg::Tick => st.on_tick(&myself),
            RoomMsg::AgentPacket { packet, speech, at } => st.on_agent_packet(packet, speech, at),
            RoomMsg::Leave => {
                st.send(Request::Leave(proto::LeaveRequest {
                    can_reconnect: false,
                    reason: proto::DisconnectReason::ClientInitiated as i32,
                    action: proto::leave_request::Action::Disconnect as i32,
                    regions: None,
                }));
                st.end(RoomEnd::Left);
                st.signal = None;
                myself.stop(Some("left the room".into()));
                return Ok(());
            }
        }
        st.drive();
        Ok(())
    }
}
