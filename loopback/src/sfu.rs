//! The media side: one str0m `Rtc` per peer connection, all driven by one task that owns one
//! UDP socket on 127.0.0.1 (ICE-lite, a host candidate we add ourselves). Opus frames that a
//! publisher PC receives are written to every subscriber PC that has the track open.
//!
//! str0m is sans-IO: each input (a datagram, forwarded media, the clock) is followed by draining
//! `poll_output` before the next one. str0m allows one pending offer per `Rtc`, so subscriber
//! renegotiations are queued and sent one at a time (next offer after the previous answer was
//! accepted).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use prost::Message as _;
use str0m::channel::{ChannelConfig, ChannelData, ChannelId, Reliability};
use str0m::media::{Direction, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::rtc::SignalOut;
use crate::state::{ServerEvent, Shared};

#[path = "sfu_relay.rs"]
mod relay;
#[path = "sfu_sdp.rs"]
mod sdp;
#[path = "sfu_offers.rs"]
mod offers;
#[path = "sfu_speakers.rs"]
mod speakers;
#[path = "sfu_lag.rs"]
pub(crate) mod lag;
#[path = "sfu_pc_rtc.rs"]
mod pc_rtc;
#[cfg(test)]
#[path = "sfu_forwarding_tests.rs"]
mod forwarding_tests;

use offers::send_candidate;
use pc_rtc::{drain, new_rtc};
use sdp::sdp_sections;

pub(crate) type PcId = u64;

/// Which side of LiveKit's two-PC model a peer connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Publisher,
    Subscriber,
}

impl Target {
    pub fn proto(self) -> i32 {
        match self {
            Target::Publisher => livekit_protocol::SignalTarget::Publisher as i32,
            Target::Subscriber => livekit_protocol::SignalTarget::Subscriber as i32,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Target::Publisher => "publisher",
            Target::Subscriber => "subscriber",
        }
    }
}

/// A published track to be sent on a subscriber PC.
#[derive(Debug, Clone)]
pub(crate) struct OutTrackSpec {
    pub track_sid: String,
    pub participant_sid: String,
}

#[derive(Debug)]
pub(crate) enum MediaCmd {
    /// Create the two PCs of a participant; the subscriber PC offers at once (data channels
    /// plus `tracks`).
    AddParticipant {
        room: String,
        identity: String,
        /// Agents may publish text streams on behalf of another participant (transcripts).
        agent: bool,
        participant_sid: String,
        pub_pc: PcId,
        sub_pc: PcId,
        signal: mpsc::UnboundedSender<SignalOut>,
        tracks: Vec<OutTrackSpec>,
    },
    /// AddTrackRequest accepted: the track with this cid will appear in a publisher offer.
    PendingTrack { pub_pc: PcId, cid: String, track_sid: String },
    PublisherOffer { pc: PcId, sdp: String, id: u32 },
    SubscriberAnswer { pc: PcId, sdp: String },
    RemoteCandidate { pc: PcId, candidate: String },
    Subscribe { sub_pc: PcId, track: OutTrackSpec },
    RemoveParticipant { pub_pc: PcId, sub_pc: PcId },
    /// A resumed participant's new signalling sink; a pending subscriber offer is re-sent.
    ReplaceSignal { pub_pc: PcId, sub_pc: PcId, signal: mpsc::UnboundedSender<SignalOut> },
    /// Stop forwarding these tracks (their publisher left).
    TracksGone { track_sids: Vec<String> },
    /// The track's publisher allows or refuses it to this subscriber.
    Permit { sub_pc: PcId, track_sid: String, allowed: bool },
}

/// Handle to the media task.
#[derive(Clone, Debug)]
pub(crate) struct MediaHandle {
    pub tx: mpsc::UnboundedSender<MediaCmd>,
    pub addr: SocketAddr,
    pub lag: Arc<lag::ForwardLag>,
}

impl MediaHandle {
    pub fn send(&self, cmd: MediaCmd) {
        let _ = self.tx.send(cmd);
    }
}

struct OutTrack {
    spec: OutTrackSpec,
    mid: Option<Mid>,
    open: bool,
}

struct Pc {
    target: Target,
    room: String,
    identity: String,
    agent: bool,
    participant_sid: String,
    /// Open data channels by label.
    channels: HashMap<String, ChannelId>,
    /// Data for a channel not open yet (bounded), flushed when it opens.
    pending_data: Vec<(String, Vec<u8>)>,
    signal: mpsc::UnboundedSender<SignalOut>,
    rtc: Rtc,
    connected: bool,
    // publisher side
    in_tracks: HashMap<Mid, String>,
    flowing: HashSet<Mid>,
    pending_cids: HashMap<String, String>,
    // subscriber side
    pending_offer: Option<(SdpPendingOffer, Vec<(usize, Mid)>)>,
    out: Vec<OutTrack>,
    offer_id: u32,
    /// The last offer sent (re-sent after a resume if still unanswered).
    last_offer: Option<String>,
    candidate_sent: bool,
}

static CRYPTO: std::sync::Once = std::sync::Once::new();

/// Start the media task on `socket` (bound to 127.0.0.1). Needs a tokio runtime.
pub(crate) fn start(socket: std::net::UdpSocket, shared: std::sync::Weak<Shared>) -> MediaHandle {
    CRYPTO.call_once(|| {
        str0m::crypto::from_feature_flags().install_process_default();
    });
    let addr = socket.local_addr().expect("bound socket has an address");
    // One socket carries every call's media in both directions: the default buffer (~200
    // datagrams) overflows in a burst at a hundred calls, and each overflow is a lost packet.
    // The kernel caps the size at net.core.rmem_max.
    if let Err(err) = socket2::SockRef::from(&socket).set_recv_buffer_size(RECV_BUFFER_BYTES) {
        tracing::warn!(error = %err, "cannot enlarge the SFU's UDP receive buffer");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    socket.set_nonblocking(true).expect("nonblocking udp");
    let socket = UdpSocket::from_std(socket).expect("tokio udp socket");
    let lag = Arc::new(lag::ForwardLag::default());
    tokio::spawn(run(socket, addr, rx, shared, lag.clone()));
    MediaHandle { tx, addr, lag }
}

/// What the SFU socket asks the kernel for.
const RECV_BUFFER_BYTES: usize = 4 << 20;

struct Engine {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    pcs: HashMap<PcId, Pc>,
    shared: std::sync::Weak<Shared>,
    /// Tracks that have had a subscriber, and those whose publisher has been told so (once,
    /// as soon as both its subscriber's answer and its own offer are in).
    ever_subscribed: HashSet<String>,
    told_subscribed: HashSet<String>,
    speakers: speakers::Speakers,
    /// livekit-server runs full ICE unless `rtc.use_ice_lite` is set.
    ice_lite: bool,
    /// `LoopbackConfig::forward_audio_at_once`.
    forward_at_once: bool,
    /// Per subscriber PC: tracks its publishers' permissions refuse it (not forwarded).
    denied: HashMap<PcId, HashSet<String>>,
    /// Only PCs with work are driven (hundreds of rooms share this task): those that got
    /// input or output since the last drive, and those whose str0m timeout is due.
    dirty: HashSet<PcId>,
    due: HashMap<PcId, Instant>,
    /// Which PC a remote address belongs to, learnt from the first packet str0m accepted.
    by_source: HashMap<SocketAddr, PcId>,
    /// Forwarded media's time in here, read by `LoopbackServer::forward_lag`.
    lag: Arc<lag::ForwardLag>,
}

async fn run(
    socket: UdpSocket,
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<MediaCmd>,
    shared: std::sync::Weak<Shared>,
    lag: Arc<lag::ForwardLag>,
) {
    let socket = Arc::new(socket);
    let (speaker_interval, ice_lite, forward_at_once) = shared
        .upgrade()
        .map(|s| (s.cfg.speaker_update_interval, s.cfg.ice_lite, s.cfg.forward_audio_at_once))
        .unwrap_or((Duration::from_millis(400), false, false));
    let mut e = Engine {
        addr,
        socket: socket.clone(),
        pcs: HashMap::new(),
        shared,
        ever_subscribed: HashSet::new(),
        told_subscribed: HashSet::new(),
        speakers: speakers::Speakers::new(speaker_interval),
        ice_lite,
        forward_at_once,
        denied: HashMap::new(),
        dirty: HashSet::new(),
        due: HashMap::new(),
        by_source: HashMap::new(),
        lag,
    };
    let mut buf = vec![0u8; 2000];
    loop {
        e.announce_speakers();
        let next = e.drive().min(e.speakers.next_check());
        let sleep_for = next.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(c) => {
                    // Commands are signalling-paced and may touch any PC: drive them all.
                    e.dirty.extend(e.pcs.keys().copied());
                    e.command(c);
                    e.dirty.extend(e.pcs.keys().copied());
                }
                None => return,
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => e.receive(&buf[..n], source),
                Err(err) => tracing::debug!(error = %err, "udp recv"),
            },
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }
}

impl Engine {
    /// livekit-server's `OnTrackEverSubscribed`: the publisher hears once that a track of its
    /// has a subscriber.
    fn tell_subscribed(&mut self, track_sid: &str) {
        if !self.ever_subscribed.contains(track_sid) || self.told_subscribed.contains(track_sid) {
            return;
        }
        let Some(publisher) = self.pcs.values().find(|p| p.in_tracks.values().any(|sid| sid == track_sid)) else { return };
        if publisher.signal.send(SignalOut::TrackSubscribed { track_sid: track_sid.to_owned() }).is_ok() {
            self.told_subscribed.insert(track_sid.to_owned());
        }
    }

    fn emit(&self, ev: ServerEvent) {
        if let Some(sh) = self.shared.upgrade() {
            sh.emit_now(ev);
        }
    }

    fn receive(&mut self, data: &[u8], source: SockAddrIn) {
        let Ok(contents) = data.try_into() else { return };
        let input = Input::Receive(
            Instant::now(),
            Receive { proto: Protocol::Udp, source, destination: self.addr, contents },
        );
        let known = self.by_source.get(&source).copied().filter(|id| self.pcs.get(id).is_some_and(|pc| pc.rtc.accepts(&input)));
        let id = match known {
            Some(id) => id,
            None => {
                let Some(id) = self.pcs.iter().find(|(_, pc)| pc.rtc.accepts(&input)).map(|(id, _)| *id) else {
                    tracing::trace!(%source, "udp packet no PC accepts");
                    return;
                };
                self.by_source.insert(source, id);
                id
            }
        };
        self.dirty.insert(id);
        let pc = self.pcs.get_mut(&id).expect("found above");
        if let Err(err) = pc.rtc.handle_input(input) {
            tracing::warn!(identity = %pc.identity, target = pc.target.name(), error = %err, "rtc input failed");
            pc.rtc.disconnect();
        }
    }

    /// Feed timeouts, drain outputs, act on events; repeat while forwarding produced work.
    /// Returns when the next timeout is due.
    fn drive(&mut self) -> Instant {
        for _ in 0..4 {
            let now = Instant::now();
            let mut events: Vec<(PcId, Event)> = Vec::new();
            let dirty: HashSet<PcId> = self.dirty.drain().collect();
            let mut work = dirty.clone();
            work.extend(self.due.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id));
            for id in work {
                let Some(pc) = self.pcs.get_mut(&id) else {
                    self.due.remove(&id);
                    continue;
                };
                if !pc.rtc.is_alive() {
                    continue;
                }
                // str0m wants its output drained after every input before the next one: what
                // the datagram or forwarded media produced goes out before the clock is fed.
                if dirty.contains(&id) && !drain(pc, id, &self.socket, &mut self.due, &mut events) {
                    continue;
                }
                if let Err(err) = pc.rtc.handle_input(Input::Timeout(now)) {
                    tracing::warn!(error = %err, "rtc timeout handling failed");
                    pc.rtc.disconnect();
                    continue;
                }
                drain(pc, id, &self.socket, &mut self.due, &mut events);
            }
            self.reap_dead();
            if events.is_empty() {
                break;
            }
            for (id, ev) in events {
                self.event(id, ev);
            }
        }
        // Work the events made (forwarded media, relayed data) is driven at once.
        let soon = if self.dirty.is_empty() { Duration::from_millis(100) } else { Duration::ZERO };
        let next = Instant::now() + soon;
        self.due.values().copied().fold(next, Instant::min)
    }

    /// Forget closed PCs. A PC closing is not by itself a reason to drop the participant: a
    /// client that leaves closes its PCs before (or after) its `leave`, and a vanished client
    /// is noticed by its signalling socket ending.
    fn reap_dead(&mut self) {
        let dead: Vec<PcId> = self.pcs.iter().filter(|(_, pc)| !pc.rtc.is_alive()).map(|(id, _)| *id).collect();
        for id in dead {
            self.due.remove(&id);
            self.dirty.remove(&id);
            self.by_source.retain(|_, pc| *pc != id);
            if let Some(pc) = self.pcs.remove(&id) {
                tracing::info!(identity = %pc.identity, target = pc.target.name(), "peer connection closed");
            }
        }
    }

    fn event(&mut self, id: PcId, ev: Event) {
        match ev {
            Event::Connected => {
                let Some(pc) = self.pcs.get_mut(&id) else { return };
                pc.connected = true;
                let ev = ServerEvent::PeerConnected {
                    room: pc.room.clone(),
                    identity: pc.identity.clone(),
                    target: pc.target.name().into(),
                };
                tracing::info!(identity = %pc.identity, target = pc.target.name(), "peer connection connected");
                self.emit(ev);
            }
            Event::IceConnectionStateChange(s) => {
                if let Some(pc) = self.pcs.get(&id) {
                    tracing::debug!(identity = %pc.identity, target = pc.target.name(), state = ?s, "ice state");
                }
            }
            Event::MediaData(data) => self.forward(id, data),
            Event::ChannelOpen(cid, label) => {
                if let Some(pc) = self.pcs.get_mut(&id) {
                    tracing::debug!(identity = %pc.identity, target = pc.target.name(), %label, "data channel open");
                    let queued: Vec<Vec<u8>> = {
                        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut pc.pending_data).into_iter().partition(|(l, _)| *l == label);
                        pc.pending_data = later;
                        now.into_iter().map(|(_, b)| b).collect()
                    };
                    if let Some(mut ch) = pc.rtc.channel(cid) {
                        for b in queued {
                            let _ = ch.write(true, &b);
                        }
                    }
                    pc.channels.insert(label, cid);
                }
            }
            Event::ChannelData(cd) => self.relay_data(id, cd),
            _ => {}
        }
    }

    /// A DataPacket a client sent on one of its channels goes to the same-label channel of
    /// every other participant's subscriber PC (or only to `destination_identities`), with the
    /// sender filled in by the server as the real one does.
    fn command(&mut self, c: MediaCmd) {
        match c {
            MediaCmd::AddParticipant { room, identity, agent, participant_sid, pub_pc, sub_pc, signal, tracks } => {
                for (id, target) in [(pub_pc, Target::Publisher), (sub_pc, Target::Subscriber)] {
                    self.pcs.insert(
                        id,
                        Pc {
                            target,
                            room: room.clone(),
                            identity: identity.clone(),
                            agent,
                            participant_sid: participant_sid.clone(),
                            channels: HashMap::new(),
                            pending_data: Vec::new(),
                            signal: signal.clone(),
                            rtc: new_rtc(self.addr, self.ice_lite, self.forward_at_once),
                            connected: false,
                            in_tracks: HashMap::new(),
                            flowing: HashSet::new(),
                            pending_cids: HashMap::new(),
                            pending_offer: None,
                            out: Vec::new(),
                            offer_id: 0,
                            last_offer: None,
                            candidate_sent: false,
                        },
                    );
                }
                let pc = self.pcs.get_mut(&sub_pc).expect("just inserted");
                pc.out.extend(tracks.into_iter().map(|spec| OutTrack { spec, mid: None, open: false }));
                self.offer_subscriber(sub_pc, true, false);
            }
            MediaCmd::PendingTrack { pub_pc, cid, track_sid } => {
                if let Some(pc) = self.pcs.get_mut(&pub_pc) {
                    pc.pending_cids.insert(cid, track_sid);
                }
            }
            MediaCmd::PublisherOffer { pc: id, sdp, id: offer_id } => {
                let addr = self.addr;
                let Some(pc) = self.pcs.get_mut(&id) else { return };
                let offer = match SdpOffer::from_sdp_string(&sdp) {
                    Ok(o) => o,
                    Err(err) => {
                        let _ = pc.signal.send(SignalOut::MediaFailed(format!("unparsable publisher offer: {err}")));
                        return;
                    }
                };
                let answer = match pc.rtc.sdp_api().accept_offer(offer) {
                    Ok(a) => a,
                    Err(err) => {
                        let _ = pc.signal.send(SignalOut::MediaFailed(format!("publisher offer refused: {err}")));
                        return;
                    }
                };
                // Map the offer's audio mids to published tracks by msid track id == cid.
                let mut unmatched = Vec::new();
                for (mid, track_id, kind) in sdp_sections(&sdp) {
                    if kind != "audio" {
                        continue;
                    }
                    let m = Mid::from(mid.as_str());
                    if pc.in_tracks.contains_key(&m) {
                        continue;
                    }
                    match track_id.and_then(|t| pc.pending_cids.remove(&t)) {
                        Some(sid) => {
                            pc.in_tracks.insert(m, sid);
                        }
                        None => unmatched.push(m),
                    }
                }
                // A client whose msid does not carry the cid: fall back to AddTrack order.
                for m in unmatched {
                    let Some(cid) = pc.pending_cids.keys().next().cloned() else { break };
                    tracing::warn!(identity = %pc.identity, %cid, "publisher track matched by order, not by msid");
                    let sid = pc.pending_cids.remove(&cid).expect("key exists");
                    pc.in_tracks.insert(m, sid);
                }
                let answer_sdp = answer.to_sdp_string();
                let _ = pc.signal.send(SignalOut::Answer { sdp: answer_sdp.clone(), id: offer_id });
                send_candidate(pc, addr, &answer_sdp);
                let published: Vec<String> = pc.in_tracks.values().cloned().collect();
                for sid in published {
                    self.tell_subscribed(&sid);
                }
            }
            MediaCmd::SubscriberAnswer { pc: id, sdp } => {
                let Some(pc) = self.pcs.get_mut(&id) else { return };
                let Some((pending, mids)) = pc.pending_offer.take() else {
                    tracing::warn!(identity = %pc.identity, "subscriber answer without a pending offer ignored");
                    return;
                };
                let answer = match SdpAnswer::from_sdp_string(&sdp) {
                    Ok(a) => a,
                    Err(err) => {
                        let _ = pc.signal.send(SignalOut::MediaFailed(format!("unparsable subscriber answer: {err}")));
                        return;
                    }
                };
                if let Err(err) = pc.rtc.sdp_api().accept_answer(pending, answer) {
                    let _ = pc.signal.send(SignalOut::MediaFailed(format!("subscriber answer refused: {err}")));
                    return;
                }
                let audio_codecs = sdp::answered_audio_codecs(&sdp);
                let mut subscribed = Vec::new();
                for (idx, mid) in mids {
                    if let Some(o) = pc.out.get_mut(idx) {
                        o.mid = Some(mid);
                        o.open = true;
                        subscribed.push(o.spec.track_sid.clone());
                    }
                }
                let (room, identity) = (pc.room.clone(), pc.identity.clone());
                self.emit(ServerEvent::SubscriberAnswered { room: room.clone(), identity: identity.clone(), audio_codecs });
                for track_sid in subscribed {
                    self.ever_subscribed.insert(track_sid.clone());
                    self.tell_subscribed(&track_sid);
                    self.emit(ServerEvent::TrackSubscribed { room: room.clone(), subscriber: identity.clone(), track_sid });
                }
                // Tracks queued while that offer was pending.
                self.offer_subscriber(id, false, false);
            }
            MediaCmd::RemoteCandidate { pc: id, candidate } => {
                let Some(pc) = self.pcs.get_mut(&id) else { return };
                let line = candidate.trim();
                let line = line.strip_prefix("a=").unwrap_or(line);
                if line.is_empty() {
                    return; // end of candidates
                }
                match Candidate::from_sdp_string(line) {
                    Ok(c) => pc.rtc.add_remote_candidate(c),
                    Err(err) => tracing::debug!(error = %err, "remote candidate ignored"),
                }
            }
            MediaCmd::Subscribe { sub_pc, track } => {
                let Some(pc) = self.pcs.get_mut(&sub_pc) else { return };
                if pc.out.iter().any(|o| o.spec.track_sid == track.track_sid) {
                    return;
                }
                pc.out.push(OutTrack { spec: track, mid: None, open: false });
                self.offer_subscriber(sub_pc, false, false);
            }
            MediaCmd::RemoveParticipant { pub_pc, sub_pc } => {
                self.denied.remove(&sub_pc);
                for id in [pub_pc, sub_pc] {
                    if let Some(mut pc) = self.pcs.remove(&id) {
                        pc.rtc.disconnect();
                    }
                }
            }
            MediaCmd::ReplaceSignal { pub_pc, sub_pc, signal } => {
                let mut restart = false;
                for id in [pub_pc, sub_pc] {
                    if let Some(pc) = self.pcs.get_mut(&id) {
                        pc.signal = signal.clone();
                        if pc.target != Target::Subscriber {
                            continue;
                        }
                        match (&pc.pending_offer, &pc.last_offer) {
                            (Some(_), Some(sdp)) => {
                                let _ = pc.signal.send(SignalOut::Offer { sdp: sdp.clone(), id: pc.offer_id });
                            }
                            _ => restart = true,
                        }
                    }
                }
                // As the real server does after a resume: an ICE restart offer on the subscriber.
                if restart {
                    self.offer_subscriber(sub_pc, false, true);
                }
            }
            MediaCmd::Permit { sub_pc, track_sid, allowed } => {
                let denied = self.denied.entry(sub_pc).or_default();
                if allowed {
                    denied.remove(&track_sid);
                } else {
                    denied.insert(track_sid);
                }
            }
            MediaCmd::TracksGone { track_sids } => {
                for pc in self.pcs.values_mut() {
                    for o in pc.out.iter_mut() {
                        if track_sids.contains(&o.spec.track_sid) {
                            o.open = false;
                        }
                    }
                }
            }
        }
    }
}

type SockAddrIn = SocketAddr;
