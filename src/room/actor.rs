//! The Room actor: one per consultation, a linked child of its Consultation. It joins from its
//! own mailbox, owns the signalling link and both peer connections, and is the only place their
//! state changes. Small feeder tasks (owned: they end with the actor) turn sockets and clocks
//! into messages: the signalling reader, one UDP reader per peer connection, a 10 ms tick for
//! str0m's timers and pings, and the agent-voice pacer (20 ms frames).
//!
//! What a signalling resume or an ICE restart can repair, it repairs itself; anything else makes
//! the actor fail with a [`RoomFailure`], and its Consultation decides whether to rejoin.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consultant_actors::ports::{RoomEnd, RoomEvent, RoomEvents, RoomFailure};
use consultant_actors::tasks::OwnedTasks;
use consultant_actors::telemetry::Histogram;
use livekit_protocol as proto;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use str0m::media::Mid;
use str0m::{Event, IceConnectionState};
use tokio::sync::watch;

use super::caller_feed::{CallerFeed, FeedChange};
use super::feeders;
use super::join::{connect, deliverer};
use super::peer::{Peer, Target};
use super::playout::Playout;
use super::publisher::Publisher;
use super::sdp::Section;
use super::signal::{self, Incoming, Request, Response, SignalLink};
use super::status::{RoomStats, RoomStatus};
use super::RoomOptions;
use crate::secret::Secret;
use crate::tls::ClientTls;

#[path = "server_signal.rs"]
mod server_signal;
#[path = "shown.rs"]
mod shown;

const RESUME_ATTEMPTS: u32 = 5;
const MAX_FULL_REJOINS: u32 = 2;

pub enum RoomMsg {
    Join,
    JoinDeadline,
    Signal { gen: u64, incoming: Incoming },
    Resumed { gen: u64, result: Result<(SignalLink, Box<Response>), String> },
    Datagram { target: Target, peer_gen: u64, data: Vec<u8>, source: SocketAddr, at: Instant },
    Tick,
    /// One frame of the agent's voice: `due` the pacer's slot for it (its RTP time), `at` when
    /// it was encoded; `answer_received`: the frame starts an answer whose audio came off the
    /// realtime socket then.
    AgentPacket { packet: Vec<u8>, speech: bool, level: i8, due: Instant, at: Instant, answer_received: Option<Instant> },
}

/// What a Room needs; the connector keeps the shared parts across restarts.
pub struct RoomArgs {
    pub url: String,
    /// The latest token (LiveKit refreshes it on the signalling link).
    pub token: Arc<Mutex<Secret>>,
    pub options: RoomOptions,
    pub playout: Arc<Playout>,
    pub events: Arc<dyn RoomEvents>,
    pub status: Arc<watch::Sender<RoomStatus>>,
    pub stats: Arc<RoomStats>,
}

pub enum Room {
    Joining(Box<RoomArgs>),
    Joined(Box<RoomState>),
    /// Between phases, or after a failure.
    Gone,
}

pub struct RoomState {
    url: String,
    token: Arc<Mutex<Secret>>,
    tls: ClientTls,
    join_timeout: Duration,
    local_ip: IpAddr,
    gen: u64,
    signal: Option<SignalLink>,
    resuming: bool,
    sid: String,
    identity: String,
    ping_interval: Duration,
    ping_timeout: Duration,
    last_ping: Instant,
    last_heard: Instant,
    rtt_ms: i64,
    peer_gen: u64,
    publisher: Publisher,
    subscriber: Peer,
    remote: HashMap<Mid, Section>,
    feed: CallerFeed,
    playout: Arc<Playout>,
    /// Agent frames the pacer sent that this actor has not written yet.
    agent_frames_in_flight: Arc<AtomicUsize>,
    /// Where the worker's share of an answer's latency goes (off the realtime socket to written).
    agent_latency: Option<Arc<Histogram>>,
    /// Where each agent frame's lateness behind its slot goes.
    agent_lateness: Option<Arc<Histogram>>,
    status: Arc<watch::Sender<RoomStatus>>,
    stats: Arc<RoomStats>,
    events: Vec<Event>,
    /// The UDP readers (replaced with the peer connections), then the rest.
    udp_readers: OwnedTasks,
    tasks: OwnedTasks,
    full_rejoins: u32,
    joined: bool,
    /// Set where the room ends or fails; acted on once the message is handled.
    outcome: Option<Result<RoomEnd, RoomFailure>>,
    /// The participant attributes last sent (`lk.agent.state`, status, timer).
    attributes_sent: Option<super::display::Attributes>,
    /// Tracks whose publisher does not let us subscribe (`SubscriptionPermissionUpdate`).
    denied_tracks: std::collections::HashSet<String>,
}

pub struct RoomActor;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl RoomState {
    fn new(myself: &ActorRef<RoomMsg>, args: RoomArgs, local_ip: IpAddr, link: SignalLink, join: proto::JoinResponse) -> Result<Self, RoomFailure> {
        let media = |e: String| RoomFailure::Media(e);
        let now = Instant::now();
        let mut st = RoomState {
            url: args.url,
            token: args.token,
            tls: args.options.tls.clone(),
            join_timeout: args.options.join_timeout,
            local_ip,
            gen: 0,
            signal: Some(link),
            resuming: false,
            sid: String::new(),
            identity: String::new(),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            last_ping: now,
            last_heard: now,
            rtt_ms: 0,
            peer_gen: 0,
            publisher: Publisher::new(local_ip, &args.options.track_name).map_err(media)?,
            subscriber: Peer::new(Target::Subscriber, local_ip).map_err(media)?,
            remote: HashMap::new(),
            feed: CallerFeed::new(args.events, args.stats.clone(), args.options.rejoin_grace),
            playout: args.playout,
            agent_frames_in_flight: Arc::new(AtomicUsize::new(0)),
            agent_latency: args.options.agent_latency.clone(),
            agent_lateness: args.options.agent_lateness.clone(),
            status: args.status,
            stats: args.stats,
            events: Vec::new(),
            udp_readers: OwnedTasks::default(),
            tasks: OwnedTasks::default(),
            full_rejoins: 0,
            joined: false,
            outcome: None,
            attributes_sent: None,
            denied_tracks: Default::default(),
        };
        st.apply_join(join);
        st.start_udp_readers(myself);
        st.tasks.push(feeders::ticker(myself.clone()));
        st.tasks.push(feeders::pacer(myself.clone(), st.playout.clone(), st.agent_frames_in_flight.clone()).map_err(media)?);
        st.send(st.publisher.add_track());
        Ok(st)
    }

    fn send(&self, req: Request) {
        if let Some(s) = &self.signal {
            s.send(req);
        }
    }

    fn send_all(&self, reqs: Vec<Request>) {
        for r in reqs {
            self.send(r);
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut RoomStatus)) {
        self.status.send_modify(f);
    }

    fn peer(&mut self, t: Target) -> &mut Peer {
        match t {
            Target::Publisher => &mut self.publisher.peer,
            Target::Subscriber => &mut self.subscriber,
        }
    }

    fn start_udp_readers(&mut self, myself: &ActorRef<RoomMsg>) {
        self.udp_readers.abort_all();
        self.udp_readers.push(feeders::udp_reader(myself.clone(), &self.publisher.peer, self.peer_gen));
        self.udp_readers.push(feeders::udp_reader(myself.clone(), &self.subscriber, self.peer_gen));
    }

    fn end(&mut self, why: RoomEnd) {
        if self.outcome.is_none() {
            tracing::info!(reason = ?why, "room ended for this consultation");
            self.outcome = Some(Ok(why));
        }
    }

    fn fail(&mut self, failure: RoomFailure) {
        if !matches!(self.outcome, Some(Err(_))) {
            tracing::error!(cause = %failure, "room media failed");
            self.outcome = Some(Err(failure));
        }
    }

    fn on_feed(&mut self, change: FeedChange) {
        match change {
            FeedChange::None => {}
            FeedChange::CallerHeard(identity, sid) => {
                self.catch_up(&identity, &sid);
                self.set_status(|s| s.caller = Some(identity));
                // Their audio reaches us, so they are subscribed to ours: let the agent speak.
                self.playout.release();
            }
            FeedChange::Ended(end) => {
                self.set_status(|s| s.caller = None);
                self.end(end);
            }
        }
    }

    fn update_publishing(&mut self) {
        let publishing = self.publisher.is_publishing();
        self.set_status(|s| s.publishing = publishing);
        if publishing && !self.joined {
            self.joined = true;
            tracing::info!(identity = %self.identity, "joined the LiveKit room; publishing the agent's voice");
            self.feed.events().deliver(RoomEvent::Joined { identity: self.identity.clone() });
        }
    }

    /// New peer connections after the server forgot ours (a resume answered with `join`).
    fn restart_media(&mut self, myself: &ActorRef<RoomMsg>, j: proto::JoinResponse) -> Result<(), String> {
        let subscriber = Peer::new(Target::Subscriber, self.local_ip)?;
        self.publisher.replace_peer(self.local_ip)?;
        self.subscriber.rtc.disconnect();
        self.subscriber = subscriber;
        self.peer_gen += 1;
        self.start_udp_readers(myself);
        self.apply_join(j);
        self.remote.clear();
        self.feed.reset_decoder()?;
        self.send(self.publisher.add_track());
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
        self.feed.reset_participants();
        let change = self.feed.merge(j.other_participants, &self.sid);
        self.on_feed(change);
    }

    /// Reconnects signalling: a resume (`reconnect=1&sid`, same participant and PCs) or, when
    /// the server asked for it, a full join (new PCs). Never sends `leave`: leaving ends the job.
    fn start_resume(&mut self, myself: &ActorRef<RoomMsg>, cause: String, full: bool) {
        if self.resuming || self.outcome.is_some() {
            return;
        }
        if full {
            self.full_rejoins += 1;
            if self.full_rejoins > MAX_FULL_REJOINS {
                return self.fail(RoomFailure::Media(format!("the server asked for a full reconnect {} times: {cause}", self.full_rejoins)));
            }
        }
        tracing::warn!(%cause, full, "signalling lost; reconnecting without leaving the room");
        self.resuming = true;
        self.signal = None;
        self.gen += 1;
        let gen = self.gen;
        let (url, token, tls, me) = (self.url.clone(), self.token.clone(), self.tls.clone(), myself.clone());
        let sid = (!full).then(|| self.sid.clone());
        self.set_status(|s| s.resumes += 1);
        self.tasks.push(tokio::spawn(async move {
            let mut last = cause;
            for attempt in 1..=RESUME_ATTEMPTS {
                let token = token.lock().expect("token lock").clone();
                match signal::connect(&url, &token, sid.as_deref(), &tls, deliverer(me.clone(), gen)).await {
                    Ok((link, first)) => {
                        // If the actor is gone nobody needs the link: dropping it closes it.
                        let _unused = me.send_message(RoomMsg::Resumed { gen, result: Ok((link, Box::new(first))) });
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "resume attempt failed");
                        last = e;
                        tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                    }
                }
            }
            let _unused = me.send_message(RoomMsg::Resumed { gen, result: Err(format!("resume failed after {RESUME_ATTEMPTS} attempts: {last}")) });
        }));
    }

    fn on_media(&mut self, data: str0m::media::MediaData) {
        let Some(section) = self.remote.get(&data.mid) else { return };
        let Some(psid) = section.participant_sid().map(str::to_owned) else { return };
        let track_sid = section.track_id.clone();
        match self.feed.on_packet(&psid, track_sid, &data.data, data.network_time) {
            Ok(change) => self.on_feed(change),
            Err(e) => self.fail(RoomFailure::Media(e)),
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
        self.show();
        let (settled, change) = self.feed.tick(now);
        // A caller who publishes nothing (muted) still hears the agent once their
        // subscription had time to settle.
        if settled && self.playout.is_held() {
            self.playout.release();
        }
        self.on_feed(change);
    }

    /// Runs both peer connections' clocks and acts on their events.
    fn drive(&mut self) {
        let now = Instant::now();
        for target in [Target::Publisher, Target::Subscriber] {
            let mut events = std::mem::take(&mut self.events);
            if let Err(e) = self.peer(target).drive(now, &mut events) {
                self.fail(RoomFailure::Media(e));
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
                if target == Target::Publisher {
                    self.publisher.channel_opened(id);
                }
            }
            _ => {}
        }
    }

    fn handle(&mut self, myself: &ActorRef<RoomMsg>, msg: RoomMsg) {
        // Signalling may change either peer connection (SDP, candidates, a resume): drive both.
        // The clock, datagrams and agent frames touch the one they concern.
        if !matches!(msg, RoomMsg::Tick | RoomMsg::Datagram { .. } | RoomMsg::AgentPacket { .. }) {
            self.publisher.peer.touch();
            self.subscriber.touch();
        }
        match msg {
            RoomMsg::Join => {}
            RoomMsg::JoinDeadline => {
                if !self.joined {
                    self.fail(RoomFailure::Join(format!("the agent track was not published and connected within {:?}", self.join_timeout)));
                }
            }
            RoomMsg::Signal { gen, incoming } if gen == self.gen => match incoming {
                Incoming::Message(resp) => self.on_signal(myself, *resp),
                Incoming::Closed(cause) => self.start_resume(myself, cause, false),
            },
            RoomMsg::Signal { .. } => {} // from a replaced connection
            RoomMsg::Resumed { gen, result } if gen == self.gen => {
                self.resuming = false;
                match result {
                    Ok((link, first)) => {
                        tracing::info!("signalling resumed");
                        self.signal = Some(link);
                        self.last_heard = Instant::now();
                        self.on_signal(myself, *first);
                    }
                    Err(cause) => self.fail(RoomFailure::Media(cause)),
                }
            }
            RoomMsg::Resumed { .. } => {}
            RoomMsg::Datagram { target, peer_gen, data, source, at } if peer_gen == self.peer_gen => {
                if let Err(e) = self.peer(target).receive(&data, source, at) {
                    tracing::warn!(error = %e, "rtc input failed");
                }
            }
            RoomMsg::Datagram { .. } => {}
            RoomMsg::Tick => self.on_tick(myself),
            RoomMsg::AgentPacket { packet, speech, level, due, at, answer_received } => {
                self.agent_frames_in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Some(lateness) = &self.agent_lateness {
                    lateness.observe(Instant::now().saturating_duration_since(due));
                }
                self.publisher.write_audio(packet, speech, level, due, at, &self.stats);
                if let (Some(received), Some(latency)) = (answer_received, &self.agent_latency) {
                    latency.observe(received.elapsed());
                }
            }
        }
        self.drive();
    }

    /// Says goodbye to the server (the consultation is over) and closes everything.
    fn leave(&mut self) {
        self.send(Request::Leave(proto::LeaveRequest {
            can_reconnect: false,
            reason: proto::DisconnectReason::ClientInitiated as i32,
            action: proto::leave_request::Action::Disconnect as i32,
            regions: None,
        }));
        self.close();
    }

    /// Closes signalling and both peer connections without a goodbye: a rejoin by the
    /// Consultation replaces this participant (a `leave` would tell LiveKit the agent is done).
    fn close(&mut self) {
        self.signal = None;
        self.publisher.peer.rtc.disconnect();
        self.subscriber.rtc.disconnect();
        self.tasks.abort_all();
        self.udp_readers.abort_all();
    }
}

#[ractor::async_trait]
impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = Room;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<Room, ActorProcessingErr> {
        // Joining takes round trips: do it from the mailbox so the Consultation's spawn returns now.
        myself.send_message(RoomMsg::Join)?;
        args.status.send_modify(|s| {
            s.publishing = false;
            s.failure = None;
        });
        Ok(Room::Joining(Box::new(args)))
    }

    async fn post_stop(&self, _myself: ActorRef<RoomMsg>, room: &mut Room) -> Result<(), ActorProcessingErr> {
        if let Room::Joined(st) = room {
            st.leave();
        }
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<RoomMsg>, msg: RoomMsg, room: &mut Room) -> Result<(), ActorProcessingErr> {
        if let (RoomMsg::Join, Room::Joining(_)) = (&msg, &*room) {
            let Room::Joining(args) = std::mem::replace(room, Room::Gone) else { unreachable!("matched above") };
            let status = args.status.clone();
            let joined = match connect(&myself, &args).await {
                Ok((ip, link, join)) => RoomState::new(&myself, *args, ip, link, join),
                Err(failure) => Err(failure),
            };
            match joined {
                Ok(st) => {
                    myself.send_after(st.join_timeout, || RoomMsg::JoinDeadline);
                    *room = Room::Joined(Box::new(st));
                }
                Err(failure) => {
                    tracing::error!(cause = %failure, "could not join the room");
                    status.send_modify(|s| s.failure = Some(failure.clone()));
                    return Err(Box::new(failure));
                }
            }
            return Ok(());
        }
        let Room::Joined(st) = room else { return Ok(()) };
        st.handle(&myself, msg);
        match st.outcome.take() {
            None => Ok(()),
            Some(Ok(end)) => {
                st.set_status(|s| s.ended = Some(end.clone()));
                st.feed.events().deliver(RoomEvent::Ended(end.clone()));
                st.leave();
                myself.stop(Some(format!("{end:?}")));
                Ok(())
            }
            Some(Err(failure)) => {
                st.set_status(|s| s.failure = Some(failure.clone()));
                st.close();
                *room = Room::Gone;
                Err(Box::new(failure))
            }
        }
    }
}
