//! Room audio: joins a consultation's LiveKit room as the agent, hears the caller and speaks
//! the model's voice back, in pure Rust (LiveKit signalling v0 over tokio-tungstenite with
//! livekit-protocol protobufs, WebRTC with str0m, Opus with libopus).
//!
//! [`join`] connects and returns a [`JoinedRoomAudio`]: an [`AgentAudioOutput`] for the
//! consultation, the caller's audio (PCM16 mono 24 kHz; the channel closing means the caller
//! left or the room ended) and a [`RoomHandle`] to watch and leave the room.

mod actor;
pub mod codec;
mod connector;
mod peer;
pub mod playout;
pub mod resample;
mod sdp;
pub mod signal;

use std::sync::Arc;
use std::time::Duration;

use consultant_actors::ports::AgentAudioOutput;
use livekit_protocol as proto;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, watch};

pub use actor::{RoomEnd, RoomStats, RoomStatus};
use actor::{RoomActor, RoomArgs, RoomMsg};
pub use connector::LiveKitRooms;
pub use playout::Playout;

use crate::secret::Secret;

/// Caller audio frames buffered towards the consultation (about 2 s of 20 ms frames); beyond
/// that frames are dropped and counted, the media loop never waits.
const CALLER_QUEUE: usize = 100;

#[derive(Clone, Debug)]
pub struct RoomOptions {
    /// How long a caller who left may take to come back before the consultation ends.
    pub rejoin_grace: Duration,
    /// Joining (signalling, track published, publisher connected) must finish within this.
    pub join_timeout: Duration,
    pub track_name: String,
}

impl Default for RoomOptions {
    fn default() -> Self {
        Self { rejoin_grace: Duration::from_secs(3), join_timeout: Duration::from_secs(15), track_name: "agent-voice".into() }
    }
}

/// A joined room.
pub struct JoinedRoomAudio {
    pub audio_out: Arc<Playout>,
    pub caller_audio: mpsc::Receiver<Arc<[i16]>>,
    pub room: RoomHandle,
}

/// Watches and ends the Room actor. Dropping it does not leave; call [`RoomHandle::leave`].
#[derive(Clone)]
pub struct RoomHandle {
    actor: ActorRef<RoomMsg>,
    status: watch::Receiver<RoomStatus>,
    stats: Arc<RoomStats>,
}

impl RoomHandle {
    pub fn status(&self) -> RoomStatus {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<RoomStatus> {
        self.status.clone()
    }

    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    /// Leaves the room (LeaveRequest, peer connections closed) and stops the actor.
    pub fn leave(&self) {
        let _ = self.actor.send_message(RoomMsg::Leave);
    }

    /// Waits until the room ended (caller gone, room closed, media failure or left).
    pub async fn ended(&self) -> RoomEnd {
        let mut rx = self.status.clone();
        let ended = match rx.wait_for(|s| s.ended.is_some()).await {
            Ok(s) => s.ended.clone().expect("checked"),
            Err(_) => RoomEnd::Left,
        };
        ended
    }
}

/// Joins the room at `url` with the assignment's `token`: signalling, both peer connections,
/// the agent track published and its peer connection up. Fails with the cause otherwise.
pub async fn join(url: &str, token: &Secret, options: RoomOptions) -> Result<JoinedRoomAudio, String> {
    let local_ip = peer::local_ip_towards(&signal::rtc_url(url, None)?.as_str().replacen("ws", "http", 1)).await?;
    let (actor_tx, actor_rx) = tokio::sync::oneshot::channel::<ActorRef<RoomMsg>>();
    // The reader task starts before the actor exists: it forwards once the actor is known.
    let (early_tx, mut early_rx) = mpsc::unbounded_channel::<signal::Incoming>();
    let (link, first) = signal::connect(url, token, None, move |m| early_tx.send(m).is_ok()).await?;
    let join = match first {
        signal::Response::Join(j) => j,
        signal::Response::Leave(l) => {
            let reason = proto::DisconnectReason::try_from(l.reason).map(|r| r.as_str_name().to_owned()).unwrap_or_default();
            return Err(format!("the server refused the join ({reason})"));
        }
        other => return Err(format!("the server's first signalling message was not a join: {other:?}")),
    };
    let (status_tx, status_rx) = watch::channel(RoomStatus::default());
    let stats = Arc::new(RoomStats::default());
    let playout = Playout::new();
    // Speech waits for a caller who can hear it (the greeting is queued before anyone joined).
    playout.hold();
    let (caller_tx, caller_rx) = mpsc::channel(CALLER_QUEUE);
    let args = RoomArgs {
        url: url.to_owned(),
        token: token.clone(),
        local_ip,
        link,
        join,
        playout: playout.clone(),
        caller_tx,
        status: status_tx,
        stats: stats.clone(),
        rejoin_grace: options.rejoin_grace,
        track_name: options.track_name.clone(),
    };
    let (actor, _) = Actor::spawn(None, RoomActor, args).await.map_err(|e| format!("room actor failed to start: {e}"))?;
    let _ = actor_tx.send(actor.clone());
    // Forward early signalling (generation 0) to the actor.
    tokio::spawn(async move {
        let Ok(me) = actor_rx.await else { return };
        while let Some(incoming) = early_rx.recv().await {
            if me.send_message(RoomMsg::Signal { gen: 0, incoming }).is_err() {
                return;
            }
        }
    });
    let room = RoomHandle { actor, status: status_rx, stats };
    let mut rx = room.watch();
    let ready = tokio::time::timeout(options.join_timeout, rx.wait_for(|s| s.publishing || s.ended.is_some())).await;
    let failure = match ready {
        Ok(Ok(s)) if s.ended.is_none() => None,
        Ok(Ok(s)) => Some(format!("the room ended while joining: {:?}", s.ended)),
        Ok(Err(_)) => Some("the room actor stopped while joining".to_owned()),
        Err(_) => Some(format!("the agent track was not published and connected within {:?}", options.join_timeout)),
    };
    if let Some(cause) = failure {
        room.leave();
        return Err(cause);
    }
    tracing::info!(identity = %room.status().identity, "joined the LiveKit room; publishing the agent's voice");
    Ok(JoinedRoomAudio { audio_out: playout, caller_audio: caller_rx, room })
}

/// Makes the playout usable where a `dyn AgentAudioOutput` is expected.
pub fn audio_output(p: &Arc<Playout>) -> Arc<dyn AgentAudioOutput> {
    p.clone()
}
