//! One PC's str0m `Rtc`: how the SFU builds it, and how it drains its output.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::{Candidate, Event, Output, Rtc};
use tokio::net::UdpSocket;

use super::{Pc, PcId};

/// `at_once`: as livekit-server, audio is forwarded as it arrives (str0m holds back nothing
/// behind a lost packet); otherwise str0m's default holds the next 15 frames.
pub(super) fn new_rtc(addr: SocketAddr, ice_lite: bool, at_once: bool) -> Rtc {
    let mut builder = Rtc::builder().set_ice_lite(ice_lite).clear_codecs().enable_opus(true, false);
    if at_once {
        builder = builder.set_reordering_size_audio(1);
    }
    let mut rtc = builder.build(Instant::now());
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
