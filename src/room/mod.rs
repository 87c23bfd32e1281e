//! Room media: joins a consultation's LiveKit room as the agent, hears the caller and speaks
//! the model's voice back, in pure Rust (LiveKit signalling v0 over tokio-tungstenite with
//! livekit-protocol protobufs, WebRTC with str0m, Opus with libopus).
//!
//! [`LiveKitRoom`] implements the room port (`consultant_actors::ports::RoomConnector`): the
//! Consultation spawns the Room actor as its linked child and restarts it after a failure.
//! [`join`] runs a room on its own, outside any consultation (benches, tests, tools).

mod actor;
mod caller_feed;
pub mod codec;
mod connector;
pub mod display;
mod feeders;
mod join;
pub(crate) mod peer;
pub mod playout;
pub(crate) mod publisher;
mod rtp_clock;
pub(crate) mod sdp;
pub mod signal;
mod status;
pub mod transcript;

use std::sync::Arc;
use std::time::Duration;

pub use consultant_actors::ports::{RoomEnd, RoomFailure};
use consultant_actors::ports::{AgentAudioOutput, RoomEvent, RoomEvents};
use consultant_actors::telemetry::Histogram;
use ractor::ActorCell;
use tokio::sync::{mpsc, watch};

pub use caller_feed::is_caller_kind;
pub use connector::{LiveKitRoom, LiveKitRooms};
pub use playout::Playout;
pub use status::{RoomStats, RoomStatus};

use crate::secret::Secret;
use crate::tls::ClientTls;

/// Caller audio frames buffered towards a standalone listener (about 2 s of 20 ms frames);
/// beyond that frames are dropped and counted, the media loop never waits.
const CALLER_QUEUE: usize = 100;

#[derive(Clone, Debug)]
pub struct RoomOptions {
    /// How long a caller whose connection was lost may take to come back before the
    /// consultation ends (a caller who hangs up ends it at once).
    pub rejoin_grace: Duration,
    /// Joining (signalling, track published, publisher connected) must finish within this.
    pub join_timeout: Duration,
    pub track_name: String,
    /// Trust policy of `wss://` signalling; the default trusts the built-in and system roots.
    pub tls: ClientTls,
    /// The worker's share of an answer's latency is observed here (the worker's metrics).
    pub agent_latency: Option<Arc<Histogram>>,
    /// How late each agent frame is written after its slot (the worker's metrics).
    pub agent_lateness: Option<Arc<Histogram>>,
}

impl Default for RoomOptions {
    fn default() -> Self {
        Self {
            rejoin_grace: Duration::from_secs(3),
            join_timeout: Duration::from_secs(15),
            track_name: "agent-voice".into(),
            tls: ClientTls::default(),
            agent_latency: None,
            agent_lateness: None,
        }
    }
}

/// A room joined on its own.
pub struct JoinedRoomAudio {
    pub audio_out: Arc<Playout>,
    /// The caller's audio, PCM16 mono 24 kHz; closes when the room is over.
    pub caller_audio: mpsc::Receiver<Arc<[i16]>>,
    pub room: RoomHandle,
}

/// Watches and ends a standalone Room.
#[derive(Clone)]
pub struct RoomHandle {
    actor: ActorCell,
    status: watch::Receiver<RoomStatus>,
    stats: Arc<RoomStats>,
}

impl RoomHandle {
    pub fn status(&self) -> RoomStatus {
        self.status.borrow().clone()
    }

    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    /// Leaves the room (LeaveRequest, peer connections closed) and stops the actor.
    pub fn leave(&self) {
        self.actor.stop(Some("left the room".into()));
    }

    /// Waits until the room is over: the caller gone or the room closed, or media failed.
    pub async fn ended(&self) -> Result<RoomEnd, RoomFailure> {
        let mut rx = self.status.clone();
        let over = rx.wait_for(RoomStatus::is_over).await.map(|s| s.clone());
        match over {
            Ok(RoomStatus { failure: Some(f), .. }) => Err(f),
            Ok(RoomStatus { ended: Some(end), .. }) => Ok(end),
            _ => Err(RoomFailure::Media("the room stopped".into())),
        }
    }
}

/// A standalone room's events: caller audio into a bounded channel.
struct Listener {
    caller: mpsc::Sender<Arc<[i16]>>,
}

impl RoomEvents for Listener {
    fn deliver(&self, event: RoomEvent) -> bool {
        match event {
            RoomEvent::CallerAudio { pcm, .. } => self.caller.try_send(pcm).is_ok(),
            RoomEvent::Joined { .. } | RoomEvent::Ended(_) => true, // the status says it
        }
    }
}

/// Joins the room at `url` with `token` outside a consultation: signalling, both peer
/// connections, the agent track published and its peer connection up. Fails with the cause.
pub async fn join(url: &str, token: &Secret, options: RoomOptions) -> Result<JoinedRoomAudio, RoomFailure> {
    let room = LiveKitRoom::new(url, token.clone(), options);
    let (caller, caller_audio) = mpsc::channel(CALLER_QUEUE);
    let actor = room.spawn_unsupervised(Arc::new(Listener { caller })).await?;
    let handle = RoomHandle { actor, status: room.watch(), stats: room.stats() };
    let mut rx = room.watch();
    let outcome = rx.wait_for(|s| s.publishing || s.is_over()).await.map(|s| s.clone());
    match outcome {
        Ok(s) if !s.is_over() => Ok(JoinedRoomAudio { audio_out: room.playout(), caller_audio, room: handle }),
        Ok(RoomStatus { failure: Some(f), .. }) => Err(f),
        Ok(s) => {
            handle.leave();
            Err(RoomFailure::Join(format!("the room ended while joining: {:?}", s.ended)))
        }
        Err(_) => Err(RoomFailure::Join("the room actor stopped while joining".into())),
    }
}

/// Makes the playout usable where a `dyn AgentAudioOutput` is expected.
pub fn audio_output(p: &Arc<Playout>) -> Arc<dyn AgentAudioOutput> {
    p.clone()
}
