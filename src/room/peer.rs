//! One str0m peer connection with its own UDP socket. str0m is sans-IO: the Room actor feeds it
//! datagrams and time, this wrapper sends what it transmits and hands back its events.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

/// LiveKit's two peer connections.
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
    pub fn from_proto(v: i32) -> Self {
        if v == livekit_protocol::SignalTarget::Subscriber as i32 {
            Target::Subscriber
        } else {
            Target::Publisher
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Target::Publisher => "publisher",
            Target::Subscriber => "subscriber",
        }
    }
}

static CRYPTO: std::sync::Once = std::sync::Once::new();

pub struct Peer {
    pub target: Target,
    pub rtc: Rtc,
    pub socket: Arc<UdpSocket>,
    pub local: SocketAddr,
    pub candidate: Candidate,
    pub connected: bool,
    /// Our host candidate was trickled.
    pub trickled: bool,
    /// When str0m next wants the clock.
    due: Instant,
    /// Given input (a datagram, media, data, SDP, a candidate) since it was last driven.
    touched: bool,
}

impl Peer {
    /// Binds a UDP socket on `ip` and builds an Rtc (full ICE, Opus only) with that socket as
    /// its host candidate: str0m gathers nothing by itself.
    /// Binding does not wait on the network; needs a tokio runtime.
    pub fn new(target: Target, ip: IpAddr) -> Result<Self, String> {
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| format!("cannot bind a UDP socket on {ip}: {e}"))?;
        std_socket.set_nonblocking(true).map_err(|e| format!("UDP socket: {e}"))?;
        let socket = UdpSocket::from_std(std_socket).map_err(|e| format!("UDP socket: {e}"))?;
        let local = socket.local_addr().map_err(|e| format!("UDP socket has no address: {e}"))?;
        let mut rtc = Rtc::builder().clear_codecs().enable_opus(true, false).build(Instant::now());
        let candidate = Candidate::host(local, "udp").map_err(|e| format!("host candidate {local}: {e}"))?;
        rtc.add_local_candidate(candidate.clone());
        Ok(Self { target, rtc, socket: Arc::new(socket), local, candidate, connected: false, trickled: false, due: Instant::now(), touched: true })
    }

    /// Something was given to `rtc` directly (media, data, SDP): the next drive must run.
    pub fn touch(&mut self) {
        self.touched = true;
    }

    pub fn receive(&mut self, data: &[u8], source: SocketAddr, at: Instant) -> Result<(), String> {
        let Ok(contents) = data.try_into() else { return Ok(()) }; // not STUN/DTLS/RTP: ignore
        self.touched = true;
        let input = Input::Receive(at, Receive { proto: Protocol::Udp, source, destination: self.local, contents });
        self.rtc.handle_input(input).map_err(|e| format!("{} input: {e}", self.target.name()))
    }

    /// Feeds the clock, sends what str0m transmits, collects events, when there is something to
    /// do: input since the last drive, or str0m's timer is due (most clock ticks of a call have
    /// neither, and str0m's timeout handling is the costliest part of a room).
    /// Returns when str0m next wants the clock.
    pub fn drive(&mut self, now: Instant, events: &mut Vec<Event>) -> Result<Instant, String> {
        if !self.rtc.is_alive() {
            return Ok(now + Duration::from_secs(1));
        }
        if !self.touched && now < self.due {
            return Ok(self.due);
        }
        // str0m wants its output drained after every input before the next one: what the
        // datagram, media or SDP given since the last drive produced goes out first.
        if self.touched {
            self.touched = false;
            self.drain(events)?;
        }
        self.rtc.handle_input(Input::Timeout(now)).map_err(|e| format!("{} timeout: {e}", self.target.name()))?;
        self.drain(events)
    }

    /// Polls str0m until it names its next timeout: transmits go to the socket, events to `events`.
    fn drain(&mut self, events: &mut Vec<Event>) -> Result<Instant, String> {
        loop {
            match self.rtc.poll_output().map_err(|e| format!("{} poll: {e}", self.target.name()))? {
                Output::Timeout(t) => {
                    self.due = t;
                    return Ok(t);
                }
                Output::Transmit(t) => {
                    // Non-blocking: a full socket buffer drops the datagram, as the network could.
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => events.push(e),
            }
        }
    }
}

/// The address our host candidates use: the one the OS routes to the server from
/// (127.0.0.1 for a local server, the machine's address otherwise).
pub async fn local_ip_towards(server_url: &str) -> Result<IpAddr, String> {
    let url = url::Url::parse(server_url).map_err(|e| format!("LiveKit URL {server_url:?}: {e}"))?;
    let host = url.host_str().ok_or_else(|| format!("LiveKit URL {server_url:?} has no host"))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let target = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| format!("cannot resolve LiveKit host {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("LiveKit host {host} resolves to nothing"))?;
    let any: SocketAddr = if target.is_ipv4() { "0.0.0.0:0".parse().expect("literal") } else { "[::]:0".parse().expect("literal") };
    let probe = std::net::UdpSocket::bind(any).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    probe.connect(target).map_err(|e| format!("no route to LiveKit host {target}: {e}"))?;
    Ok(probe.local_addr().map_err(|e| format!("no local address towards {target}: {e}"))?.ip())
}
