//! The room port over LiveKit: [`LiveKitRooms`] makes one [`LiveKitRoom`] per job, and the
//! job's Consultation spawns (and after a failure respawns) its Room actor through it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use consultant_actors::ports::{AgentAudioOutput, RoomConnector, RoomEvents, RoomFailure};
use ractor::{Actor, ActorCell};
use tokio::sync::watch;

use super::actor::{RoomActor, RoomArgs};
use super::playout::Playout;
use super::status::{RoomStats, RoomStatus};
use super::RoomOptions;
use crate::secret::Secret;

/// The production rooms: each job's room joined with its assignment token.
#[derive(Clone, Debug, Default)]
pub struct LiveKitRooms {
    pub options: RoomOptions,
}

impl LiveKitRooms {
    pub fn room(&self, url: &str, token: Secret) -> LiveKitRoom {
        LiveKitRoom::new(url, token, self.options.clone())
    }
}

/// One job's room, and what outlives the restarts of its Room actor: the latest token, the
/// agent's playout (its queued speech and transcripts), the status and the counters.
pub struct LiveKitRoom {
    url: String,
    token: Arc<Mutex<Secret>>,
    options: RoomOptions,
    playout: Arc<Playout>,
    status: Arc<watch::Sender<RoomStatus>>,
    stats: Arc<RoomStats>,
}

impl LiveKitRoom {
    pub fn new(url: &str, token: Secret, options: RoomOptions) -> Self {
        let playout = Playout::new();
        // Speech waits for a caller who can hear it (the greeting is queued before anyone joined).
        playout.hold();
        Self {
            url: url.to_owned(),
            token: Arc::new(Mutex::new(token)),
            options,
            playout,
            status: Arc::new(watch::Sender::new(RoomStatus::default())),
            stats: Arc::new(RoomStats::default()),
        }
    }

    pub fn playout(&self) -> Arc<Playout> {
        self.playout.clone()
    }

    pub fn watch(&self) -> watch::Receiver<RoomStatus> {
        self.status.subscribe()
    }

    pub fn stats(&self) -> Arc<RoomStats> {
        self.stats.clone()
    }

    fn args(&self, events: Arc<dyn RoomEvents>) -> RoomArgs {
        RoomArgs {
            url: self.url.clone(),
            token: self.token.clone(),
            options: self.options.clone(),
            playout: self.playout.clone(),
            events,
            status: self.status.clone(),
            stats: self.stats.clone(),
        }
    }

    /// A Room nobody supervises (standalone use: [`super::join`]).
    pub(super) async fn spawn_unsupervised(&self, events: Arc<dyn RoomEvents>) -> Result<ActorCell, RoomFailure> {
        let (actor, _) = Actor::spawn(None, RoomActor, self.args(events)).await.map_err(|e| RoomFailure::Join(format!("the room actor did not start: {e}")))?;
        Ok(actor.get_cell())
    }
}

#[async_trait]
impl RoomConnector for LiveKitRoom {
    fn audio_out(&self) -> Arc<dyn AgentAudioOutput> {
        self.playout.clone()
    }

    async fn spawn_room(&self, supervisor: ActorCell, events: Arc<dyn RoomEvents>) -> Result<ActorCell, RoomFailure> {
        let (actor, _) = Actor::spawn_linked(None, RoomActor, self.args(events), supervisor)
            .await
            .map_err(|e| RoomFailure::Join(format!("the room actor did not start: {e}")))?;
        Ok(actor.get_cell())
    }
}
