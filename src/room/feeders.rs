//! The Room actor's feeder tasks: they turn sockets and clocks into messages, and end when the
//! actor is gone (a send fails) or when their owner drops them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::task::JoinHandle;

use super::actor::RoomMsg;
use super::codec::{AgentEncoder, FRAME_24K};
use super::peer::Peer;
use super::playout::Playout;

const TICK: Duration = Duration::from_millis(10);
const FRAME: Duration = Duration::from_millis(20);
/// Silence sent after an answer so the far end's jitter buffer ends on silence, not on
/// concealment of the last word.
const TRAILING_SILENCE_FRAMES: u32 = 10;

/// Datagrams of one peer connection's socket.
pub fn udp_reader(myself: ActorRef<RoomMsg>, peer: &Peer, peer_gen: u64) -> JoinHandle<()> {
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

/// The 10 ms clock for str0m's timers, pings and the caller's silence filling.
pub fn ticker(myself: ActorRef<RoomMsg>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(TICK);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            if myself.send_message(RoomMsg::Tick).is_err() {
                return;
            }
        }
    })
}

/// Agent frames handed to the Room actor and not yet written: past this the room is behind (its
/// actor starved) and the voice waits in the playout queue instead of in the mailbox.
pub const MAX_FRAMES_IN_FLIGHT: usize = 2;

/// The agent-voice clock: one frame every 20 ms while there is speech (and a short tail of
/// silence after it), nothing while idle. The first frame of an answer leaves as soon as it is
/// queued. A late wake-up never sends the missed frames in a burst, and no frame is taken while
/// the room has [`MAX_FRAMES_IN_FLIGHT`] unwritten: frames piled up behind a starved room would
/// leave late in a burst, and the caller's jitter buffer would keep that delay for good.
/// The room decrements `in_flight` as it writes each frame.
pub fn pacer(myself: ActorRef<RoomMsg>, playout: Arc<Playout>, in_flight: Arc<AtomicUsize>) -> Result<JoinHandle<()>, String> {
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
                // Due already (woken from idle, or late): no timer. tokio fires a timer only when
                // its driver runs, which a busy runtime does every few milliseconds.
                Some(t) if t <= tokio::time::Instant::now() => {}
                // Speech queued during the trailing silence (after an underrun, or an answer
                // right after the last) takes the next slot: leaving at once would be early
                // for its place in the stream.
                Some(t) => tokio::time::sleep_until(t).await,
            }
            if in_flight.load(Ordering::Acquire) >= MAX_FRAMES_IN_FLIGHT {
                playout.stats.room_behind.fetch_add(1, Ordering::Relaxed);
                next = Some(tokio::time::Instant::now() + FRAME);
                continue;
            }
            let due = next.map_or_else(Instant::now, tokio::time::Instant::into_std);
            let f = playout.next_frame(&mut frame);
            if f.after_cut {
                if let Err(e) = encoder.reset() {
                    tracing::warn!(error = %e, "agent voice encoder reset failed; going on");
                }
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
            let level = audio_level_dbov(&frame);
            in_flight.fetch_add(1, Ordering::AcqRel);
            if myself.send_message(RoomMsg::AgentPacket { packet, speech: f.speech_samples > 0, level, due, at, answer_received: f.answer_received }).is_err() {
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

/// The frame's level for the RTP audio-level extension (RFC 6464): -dBov, 0 loudest, -127
/// silence. LiveKit finds active speakers from it (the caller's page shows who speaks).
fn audio_level_dbov(frame: &[i16]) -> i8 {
    let energy: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / frame.len().max(1) as f64;
    if energy <= 0.0 {
        return -127;
    }
    let dbov = 20.0 * (energy.sqrt() / 32768.0).log10();
    dbov.round().clamp(-127.0, 0.0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;
    use consultant_actors::ports::AgentAudioOutput;
    use ractor::{Actor, ActorProcessingErr};
    use std::sync::Mutex;

    /// A room that writes each frame it gets (counting down `in_flight` as the Room actor does),
    /// but is starved for `stall` after its 5th frame.
    struct StallingRoom;

    struct Written {
        in_flight: Arc<AtomicUsize>,
        stall: Duration,
        /// How long each frame waited in the mailbox.
        waits: Arc<Mutex<Vec<Duration>>>,
    }

    #[ractor::async_trait]
    impl Actor for StallingRoom {
        type Msg = RoomMsg;
        type State = Written;
        type Arguments = Written;

        async fn pre_start(&self, _: ActorRef<RoomMsg>, args: Written) -> Result<Written, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(&self, _: ActorRef<RoomMsg>, msg: RoomMsg, st: &mut Written) -> Result<(), ActorProcessingErr> {
            if let RoomMsg::AgentPacket { at, .. } = msg {
                st.in_flight.fetch_sub(1, Ordering::AcqRel);
                let written = {
                    let mut waits = st.waits.lock().unwrap();
                    waits.push(at.elapsed());
                    waits.len()
                };
                if written == 5 {
                    tokio::time::sleep(st.stall).await;
                }
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_voice_waits_in_its_queue_while_the_room_is_starved_and_never_piles_up_behind_it() {
        let playout = Playout::new();
        playout.play("item_1", Arc::from(vec![3000i16; FRAME_24K * 100]));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let waits = Arc::new(Mutex::new(Vec::new()));
        let room = Written { in_flight: in_flight.clone(), stall: Duration::from_millis(500), waits: waits.clone() };
        let (room, handle) = Actor::spawn(None, StallingRoom, room).await.unwrap();
        let pacer = pacer(room.clone(), playout.clone(), in_flight).unwrap();

        tokio::time::sleep(Duration::from_millis(300)).await;
        // Starved since its 5th frame (about 80 ms in): the clock took at most the frames in flight.
        let taken = 100 - playout.queued_samples() / FRAME_24K;
        assert!((5..=5 + MAX_FRAMES_IN_FLIGHT + 1).contains(&taken), "{taken} frames taken while the room was starved");
        assert!(playout.stats.room_behind.load(Ordering::Relaxed) >= 5);

        tokio::time::sleep(Duration::from_millis(700)).await;
        let waits = waits.lock().unwrap().clone();
        assert!(waits.len() > 20, "the voice went on after the stall: {} frames", waits.len());
        let stale: Vec<_> = waits.iter().filter(|w| **w > Duration::from_millis(60)).collect();
        // Only the frames already handed over waited out the stall; none behind them.
        assert!(stale.len() <= MAX_FRAMES_IN_FLIGHT, "frames written late: {stale:?}");
        pacer.abort();
        room.stop(None);
        let _ = handle.await;
    }

    #[test]
    fn levels_follow_rfc_6464() {
        assert_eq!(audio_level_dbov(&[0; 480]), -127);
        assert_eq!(audio_level_dbov(&[i16::MIN; 480]), 0);
        // A full-scale square wave at a tenth of the range: -20 dBov.
        let tenth: Vec<i16> = (0..480).map(|i| if i % 2 == 0 { 3277 } else { -3277 }).collect();
        assert_eq!(audio_level_dbov(&tenth), -20);
    }
}
