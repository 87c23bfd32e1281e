//! One PC's str0m `Rtc`: how the SFU builds it, and how it drains its output.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::{Candidate, Event, Output, Rtc};
use tokio::net::UdpSocket;

use super::{Pc, PcId};

pub(super) fn new_rtc(addr: SocketAddr, ice_lite: bool) -> Rtc {
    let mut rtc = Rtc::builder()
        .set_ice_lite(ice_lite)
        .clear_codecs()
        .enable_opus(true, false)
        // As livekit-server: audio is forwarded as it arrives. str0m would hold every frame
        // after a lost packet until 15 more came (300 ms) waiting for one that never does.
        .set_reordering_size_audio(0)
        .build(Instant::now());
    if let Ok(c) = Candidate::host(addr, "udp") {
        rtc.add_local_candidate(c);
    }
    rtc
}

/// Polls one PC until str0m names its next timeout: transmits go to the socket, events to
/// `events`. False if str0m failed (the PC is then disconnected).
pub(super) fn drain(pc: &mut Pc, id: PcId, socket: &UdpSocket, due: &mut HashMap<PcId, Instant>, events: &mut Vec<(PcId, Event)>) -> bool {
    loop {
        match pc.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                due.insert(id, t);
                return true;
            }
            Ok(Output::Transmit(t)) => {
                let _ = socket.try_send_to(&t.contents, t.destination);
            }
            Ok(Output::Event(ev)) => events.push((id, ev)),
            Err(err) => {
                tracing::warn!(identity = %pc.identity, error = %err, "rtc poll failed");
                pc.rtc.disconnect();
                return false;
            }
        }
    }
}
