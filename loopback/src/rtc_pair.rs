//! Two str0m peers wired in memory, for tests of how a peer built one way or another treats
//! audio: a sender connects to the receiver under test, then sends numbered Opus frames with
//! one RTP packet lost, and the receiver's emitted frames are read back frame by frame.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

pub struct End {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    /// Datagrams it transmitted, not yet delivered.
    outbox: Vec<Vec<u8>>,
    pub connected: bool,
    /// Opus frames it received (their first payload byte after the TOC), since last taken.
    pub frames: Vec<u8>,
}

impl End {
    pub fn new(rtc: Rtc, addr: SocketAddr) -> Self {
        Self { rtc, addr, outbox: Vec::new(), connected: false, frames: Vec::new() }
    }

    pub fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(_) => return,
                Output::Transmit(t) => self.outbox.push(t.contents.to_vec()),
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::MediaData(m)) => self.frames.push(m.data[1]),
                Output::Event(_) => {}
            }
        }
    }

    pub fn tick(&mut self, now: Instant) {
        self.rtc.handle_input(Input::Timeout(now)).unwrap();
        self.drain();
    }
}

/// Delivers what `from` transmitted to `to`, except the datagrams `lose` picks.
pub fn deliver(from: &mut End, to: &mut End, now: Instant, lose: &mut dyn FnMut(&[u8]) -> bool) {
    for d in std::mem::take(&mut from.outbox).into_iter().filter(|d| !lose(d)) {
        let contents = d.as_slice().try_into().unwrap();
        to.rtc.handle_input(Input::Receive(now, Receive { proto: Protocol::Udp, source: from.addr, destination: to.addr, contents })).unwrap();
        to.drain();
    }
}

/// An SRTP packet of the Opus stream (RTCP has payload types 200-206 there).
pub fn is_rtp(d: &[u8]) -> bool {
    d.len() > 12 && d[0] >> 6 == 2 && !(200..=206).contains(&d[1])
}

/// Connects a plain str0m sender to `receiver` (reached at 127.0.0.1:5002), sends `frames`
/// Opus frames 20 ms apart and loses the RTP packet of frame `lost`. For each frame written:
/// the frame numbers the receiver emitted right after it arrived.
pub fn frames_after_a_loss(receiver: Rtc, frames: u8, lost: u8) -> Vec<(u8, Vec<u8>)> {
    let _ = str0m::crypto::from_feature_flags().install_process_default();
    let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:5001".parse().unwrap(), "127.0.0.1:5002".parse().unwrap());
    let mut now = Instant::now();
    let mut sender = End::new(Rtc::builder().clear_codecs().enable_opus(true, false).build(now), a);
    sender.rtc.add_local_candidate(Candidate::host(a, "udp").unwrap());
    let mut peer = End::new(receiver, b);
    peer.rtc.add_local_candidate(Candidate::host(b, "udp").unwrap());
    let mut api = sender.rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = peer.rtc.sdp_api().accept_offer(offer).unwrap();
    sender.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    sender.rtc.add_remote_candidate(Candidate::host(b, "udp").unwrap());
    peer.rtc.add_remote_candidate(Candidate::host(a, "udp").unwrap());

    for _ in 0..1000 {
        if sender.connected && peer.connected {
            break;
        }
        now += Duration::from_millis(5);
        sender.tick(now);
        peer.tick(now);
        deliver(&mut sender, &mut peer, now, &mut |_| false);
        deliver(&mut peer, &mut sender, now, &mut |_| false);
    }
    assert!(sender.connected && peer.connected, "the two peers never connected");

    let pt = sender.rtc.writer(mid).unwrap().payload_params().find(|p| p.spec().codec == Codec::Opus).unwrap().pt();
    let mut rtp_sent = 0u32;
    let mut lose = |d: &[u8]| {
        rtp_sent += is_rtp(d) as u32;
        is_rtp(d) && rtp_sent == lost as u32 + 1
    };
    let mut emitted = Vec::new();
    for frame in 0..frames {
        now += Duration::from_millis(20);
        let payload = vec![0xf8, frame, 1, 2, 3, 4, 5, 6, 7, 8];
        sender.rtc.writer(mid).unwrap().write(pt, now, MediaTime::new(frame as u64 * 960, Frequency::FORTY_EIGHT_KHZ), payload).unwrap();
        sender.drain();
        sender.tick(now);
        peer.frames.clear();
        deliver(&mut sender, &mut peer, now, &mut lose);
        peer.tick(now);
        deliver(&mut peer, &mut sender, now, &mut |_| false);
        emitted.push((frame, std::mem::take(&mut peer.frames)));
    }
    emitted
}
