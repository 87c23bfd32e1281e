//! One lightweight caller: LiveKit signalling, a publisher peer sending the prepared Opus
//! packets on its own 20 ms clock, and a subscriber peer receiving the agent. One tokio task
//! drives both str0m peers; it wakes for signalling, datagrams, the frame clock and str0m's
//! own timers, and nothing else. Agent packets are timed when they reached the socket.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use str0m::{Candidate, Event};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::arrival;
use super::report::{CallReport, Failure, Live};
use super::script::Script;
use super::stats::AgentAudio;
use super::CallPlan;
use crate::room::peer::{self, Peer, Target};
use crate::room::publisher::{trickle, Publisher};
use crate::room::signal::{self, Incoming, Request, Response};
use crate::room::RoomStats;
use crate::secret::Secret;
use crate::tls::ClientTls;

const FRAME: Duration = Duration::from_millis(20);

/// Runs one call to its end; never panics on the network, every failure is in the report.
pub async fn run(plan: CallPlan, token: Secret, tls: ClientTls, live: Arc<Live>, stop: watch::Receiver<bool>) -> CallReport {
    let mut report = CallReport::new(&plan.room);
    let started = Instant::now();
    if let Err(failure) = call(&plan, &token, &tls, &live, stop, &mut report, started).await {
        live.failed.fetch_add(1, Ordering::Relaxed);
        report.failure = Some(failure);
    }
    if report.connected {
        live.active.fetch_sub(1, Ordering::Relaxed);
    }
    report
}

struct Media {
    publisher: Publisher,
    subscriber: Peer,
    pub_socket: Arc<UdpSocket>,
    sub_socket: Arc<UdpSocket>,
    stats: RoomStats,
    events: Vec<Event>,
}

impl Media {
    /// Runs both peers' clocks; returns the earliest time either wants again.
    fn drive(&mut self, now: Instant, out: &mut Vec<(Target, Event)>) -> Result<Instant, String> {
        let a = self.publisher.peer.drive(now, &mut self.events)?;
        out.extend(self.events.drain(..).map(|e| (Target::Publisher, e)));
        let b = self.subscriber.drive(now, &mut self.events)?;
        out.extend(self.events.drain(..).map(|e| (Target::Subscriber, e)));
        Ok(a.min(b))
    }

    fn peer(&mut self, t: Target) -> &mut Peer {
        match t {
            Target::Publisher => &mut self.publisher.peer,
            Target::Subscriber => &mut self.subscriber,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn call(plan: &CallPlan, token: &Secret, tls: &ClientTls, live: &Live, mut stop: watch::Receiver<bool>, report: &mut CallReport, started: Instant) -> Result<(), Failure> {
    let ip = peer::local_ip_towards(&plan.url).await.map_err(Failure::signalling)?;
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<Incoming>();
    let (link, first) = signal::connect(&plan.url, token, None, tls, move |m| sig_tx.send(m).is_ok()).await.map_err(Failure::signalling)?;
    let join = match first {
        Response::Join(j) => j,
        Response::Leave(l) => return Err(Failure::signalling(format!("the server refused the join (leave reason {})", l.reason))),
        other => return Err(Failure::signalling(format!("the first signalling message was not a join: {other:?}"))),
    };
    let ping_interval = Duration::from_secs(join.ping_interval.max(1) as u64);
    let mut agent = join.other_participants.iter().any(is_agent);

    let publisher = Publisher::new(ip, "microphone").map_err(Failure::media)?;
    let subscriber = Peer::new(Target::Subscriber, ip).map_err(Failure::media)?;
    let (pub_socket, sub_socket) = (publisher.peer.socket.clone(), subscriber.socket.clone());
    if !arrival::enable(&sub_socket) {
        tracing::debug!(room = %plan.room, "no kernel receive stamps: agent frames are timed when read");
    }
    let mut m = Media { publisher, subscriber, pub_socket, sub_socket, stats: RoomStats::default(), events: Vec::new() };
    link.send(m.publisher.add_track());

    let mut audio = AgentAudio::new(started);
    let mut script = Script::new(plan.audio.clone(), started);
    let mut connected_at: Option<Instant> = None;
    let mut agent_seen_at = agent.then(Instant::now);
    if agent {
        report.agent_joined = true;
        live.agent_seen.store(true, Ordering::Relaxed);
    }
    let join_deadline = started + plan.join_timeout;
    let mut next_frame = Instant::now() + FRAME;
    let mut next_ping = Instant::now() + ping_interval;
    let mut wake = Instant::now();
    let mut out = Vec::new();
    let (mut pub_buf, mut sub_buf) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut wakeups = 0u64;
    let result = loop {
        wakeups += 1;
        let until = tokio::time::Instant::from_std(wake.min(next_frame));
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            msg = sig_rx.recv() => match msg {
                Some(Incoming::Message(resp)) => match on_signal(&mut m, &link, *resp, &mut agent) {
                    Ok(Some(end)) => break Err(end),
                    Ok(None) => {}
                    Err(f) => break Err(f),
                },
                Some(Incoming::Closed(cause)) => break Err(Failure::signalling(format!("signalling lost: {cause}"))),
                None => break Err(Failure::signalling("signalling lost".into())),
            },
            r = arrival::recv(&m.pub_socket, &mut pub_buf) => receive(&mut m.publisher.peer, &pub_buf, r),
            r = arrival::recv(&m.sub_socket, &mut sub_buf) => receive(&mut m.subscriber, &sub_buf, r),
            _ = tokio::time::sleep_until(until) => {}
        }
        let now = Instant::now();
        if agent && agent_seen_at.is_none() {
            agent_seen_at = Some(now);
            script.agent_joined(now);
            report.agent_joined = true;
            live.agent_seen.store(true, Ordering::Relaxed);
        }
        if !agent && now >= join_deadline {
            break Err(Failure::no_agent(&plan.room, plan.join_timeout, &plan.agent_name));
        }
        if connected_at.is_none() && now >= join_deadline {
            break Err(Failure::media(format!("the caller's audio was not published and connected within {:?}", plan.join_timeout)));
        }
        if connected_at.is_some_and(|c| now.saturating_duration_since(c) >= plan.duration) {
            break Ok(());
        }
        if now >= next_ping {
            link.send(Request::PingReq(proto::Ping { timestamp: chrono::Utc::now().timestamp_millis(), rtt: 0 }));
            next_ping = now + ping_interval;
        }
        if now >= next_frame {
            if connected_at.is_some() {
                let packet = script.next_packet(now);
                // The RTP audio level LiveKit's speaker detection reads: a speaking level for
                // speech packets, silence for the rest (silence encodes to a few bytes).
                let level = if packet.len() > super::stats::SILENT_PACKET_BYTES { -30 } else { -127 };
                m.publisher.write_audio(packet.to_vec(), true, level, next_frame, now, &m.stats);
            }
            // A late wake-up resumes the cadence from now, without a burst.
            next_frame = if next_frame + FRAME < now { now + FRAME } else { next_frame + FRAME };
        }
        wake = match m.drive(now, &mut out) {
            Ok(t) => t,
            Err(e) => break Err(Failure::media(e)),
        };
        for (target, ev) in out.drain(..) {
            match ev {
                Event::Connected => {
                    m.peer(target).connected = true;
                    if connected_at.is_none() && m.publisher.is_publishing() {
                        connected_at = Some(now);
                        report.connected = true;
                        live.connected.fetch_add(1, Ordering::Relaxed);
                        live.active.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Event::MediaData(d) if target == Target::Subscriber => {
                    let speech = audio.on_packet(**d.seq_range.start(), d.time.numer(), d.network_time, d.data.len(), script.last_phrase_end());
                    if speech {
                        let greeted = script.greeted;
                        let answered = script.turns.iter().filter(|t| t.answered_at.is_some()).count();
                        script.agent_spoke(d.network_time);
                        if !greeted && script.greeted {
                            live.greeted.fetch_add(1, Ordering::Relaxed);
                        }
                        if script.turns.iter().filter(|t| t.answered_at.is_some()).count() > answered {
                            live.answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                _ => {}
            }
        }
        // The publisher connects after the answer: re-check once the events are in.
        if connected_at.is_none() && m.publisher.is_publishing() {
            connected_at = Some(now);
            report.connected = true;
            live.connected.fetch_add(1, Ordering::Relaxed);
            live.active.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Leave politely whatever happened: the worker's consultation should end now.
    link.send(Request::Leave(proto::LeaveRequest {
        can_reconnect: false,
        reason: proto::DisconnectReason::ClientInitiated as i32,
        action: proto::leave_request::Action::Disconnect as i32,
        regions: None,
    }));
    m.publisher.peer.rtc.disconnect();
    m.subscriber.rtc.disconnect();
    let now = Instant::now();
    report.greeted = script.greeted;
    let (latencies, settled) = script.outcome(now);
    report.phrases = settled;
    report.answered = latencies.len();
    report.latencies_ms = latencies;
    report.pending_phrases = script.turns.len() - settled;
    report.audio = audio.quality;
    report.seconds = connected_at.map_or(0.0, |c| now.duration_since(c).as_secs_f64());
    report.wakeups_per_s = wakeups as f64 / now.duration_since(started).as_secs_f64().max(0.001);
    result
}

fn is_agent(p: &proto::ParticipantInfo) -> bool {
    p.kind == proto::participant_info::Kind::Agent as i32 && p.state != proto::participant_info::State::Disconnected as i32
}

/// A datagram into its peer, at the time it reached the socket: the agent audio's arrival
/// statistics (str0m's network time) do not count this caller's own late wake-ups.
fn receive(peer: &mut Peer, buf: &[u8], r: std::io::Result<(usize, SocketAddr, Instant)>) {
    if let Ok((n, source, arrived)) = r {
        if let Err(e) = peer.receive(&buf[..n], source, arrived) {
            tracing::debug!(error = %e, "caller rtc input");
        }
    }
}

/// Ok(Some(f)): the call is over with `f`.
fn on_signal(m: &mut Media, link: &signal::SignalLink, resp: Response, agent: &mut bool) -> Result<Option<Failure>, Failure> {
    match resp {
        Response::Offer(o) => {
            let offer = str0m::change::SdpOffer::from_sdp_string(&o.sdp).map_err(|e| Failure::media(format!("unparsable subscriber offer: {e}")))?;
            let answer = m.subscriber.rtc.sdp_api().accept_offer(offer).map_err(|e| Failure::media(format!("subscriber offer refused: {e}")))?;
            let mid = crate::room::sdp::sections(&o.sdp).first().map(|s| s.mid.clone()).unwrap_or_else(|| "0".into());
            link.send(Request::Answer(proto::SessionDescription { r#type: "answer".into(), sdp: answer.to_sdp_string(), id: o.id, ..Default::default() }));
            if let Some(t) = trickle(&mut m.subscriber, &mid) {
                link.send(t);
            }
        }
        Response::Answer(a) => {
            for r in m.publisher.answered(a).map_err(Failure::media)? {
                link.send(r);
            }
        }
        Response::Trickle(t) => {
            if let Some(c) = signal::candidate_from_init(&t.candidate_init).filter(|c| !c.is_empty()) {
                if let Ok(c) = Candidate::from_sdp_string(&c) {
                    m.peer(Target::from_proto(t.target)).rtc.add_remote_candidate(c);
                }
            }
        }
        Response::TrackPublished(t) if m.publisher.is_ours(&t.cid) => {
            for r in m.publisher.published(t.track.map(|t| t.sid).unwrap_or_default()) {
                link.send(r);
            }
        }
        Response::Update(u) => {
            for p in u.participants.iter().filter(|p| p.kind == proto::participant_info::Kind::Agent as i32) {
                if is_agent(p) {
                    *agent = true;
                } else if *agent {
                    return Ok(Some(Failure::other("the agent left the room before the call's end")));
                }
            }
        }
        Response::Leave(l) => {
            return Ok(Some(Failure::other(format!("the server removed the caller from the room (reason {})", l.reason))));
        }
        _ => {}
    }
    Ok(None)
}
