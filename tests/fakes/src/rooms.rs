//! A room in memory: what a consultation's Room child does, without LiveKit. The test holds the
//! caller's side: frames sent on the caller sender reach the consultation as `CallerAudio`;
//! dropping the sender is the caller hanging up (`Ended(CallerLeft)`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use consultant_actors::ports::{AgentAudioOutput, RoomConnector, RoomEnd, RoomEvent, RoomEvents, RoomFailure};
use consultant_actors::tasks::OwnedTasks;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::memory::RecordingAudio;

pub struct MemoryRoom {
    pub audio: Arc<RecordingAudio>,
    identity: String,
    caller: Mutex<Option<mpsc::Receiver<Arc<[i16]>>>>,
    /// Room actors stopped (their consultation left the room, or the caller hung up).
    pub left: Arc<AtomicUsize>,
    /// Room actors spawned (the first join and every restart).
    pub spawned: AtomicUsize,
}

impl MemoryRoom {
    /// The room, and the caller's side of it.
    pub fn new(identity: &str) -> (Arc<Self>, mpsc::Sender<Arc<[i16]>>) {
        let (tx, rx) = mpsc::channel(64);
        let room = Self {
            audio: RecordingAudio::new(),
            identity: identity.to_owned(),
            caller: Mutex::new(Some(rx)),
            left: Arc::new(AtomicUsize::new(0)),
            spawned: AtomicUsize::new(0),
        };
        (Arc::new(room), tx)
    }
}

#[async_trait]
impl RoomConnector for MemoryRoom {
    fn audio_out(&self) -> Arc<dyn AgentAudioOutput> {
        self.audio.clone()
    }

    async fn spawn_room(&self, supervisor: ActorCell, events: Arc<dyn RoomEvents>) -> Result<ActorCell, RoomFailure> {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        let args = MemoryRoomArgs { identity: self.identity.clone(), caller: self.caller.lock().unwrap().take(), events, left: self.left.clone() };
        let (actor, _) = Actor::spawn_linked(None, MemoryRoomActor, args, supervisor).await.map_err(|e| RoomFailure::Join(e.to_string()))?;
        Ok(actor.get_cell())
    }
}

/// A room that never lets the agent in.
pub struct RefusingRoom {
    pub audio: Arc<RecordingAudio>,
    pub cause: String,
}

#[async_trait]
impl RoomConnector for RefusingRoom {
    fn audio_out(&self) -> Arc<dyn AgentAudioOutput> {
        self.audio.clone()
    }

    async fn spawn_room(&self, _supervisor: ActorCell, _events: Arc<dyn RoomEvents>) -> Result<ActorCell, RoomFailure> {
        Err(RoomFailure::Join(self.cause.clone()))
    }
}

struct MemoryRoomArgs {
    identity: String,
    caller: Option<mpsc::Receiver<Arc<[i16]>>>,
    events: Arc<dyn RoomEvents>,
    left: Arc<AtomicUsize>,
}

struct MemoryRoomActor;

struct MemoryRoomState {
    left: Arc<AtomicUsize>,
    _feed: OwnedTasks,
}

enum MemoryRoomMsg {
    CallerHungUp,
}

#[ractor::async_trait]
impl Actor for MemoryRoomActor {
    type Msg = MemoryRoomMsg;
    type State = MemoryRoomState;
    type Arguments = MemoryRoomArgs;

    async fn pre_start(&self, myself: ActorRef<MemoryRoomMsg>, args: MemoryRoomArgs) -> Result<MemoryRoomState, ActorProcessingErr> {
        args.events.deliver(RoomEvent::Joined { identity: args.identity });
        let mut feed = OwnedTasks::default();
        if let Some(mut caller) = args.caller {
            let events = args.events;
            feed.push(tokio::spawn(async move {
                while let Some(pcm) = caller.recv().await {
                    events.deliver(RoomEvent::CallerAudio { pcm, heard: std::time::Instant::now() });
                }
                events.deliver(RoomEvent::Ended(RoomEnd::CallerLeft));
                myself.send_message(MemoryRoomMsg::CallerHungUp).ok();
            }));
        }
        Ok(MemoryRoomState { left: args.left, _feed: feed })
    }

    async fn handle(&self, myself: ActorRef<MemoryRoomMsg>, msg: MemoryRoomMsg, _state: &mut MemoryRoomState) -> Result<(), ActorProcessingErr> {
        match msg {
            MemoryRoomMsg::CallerHungUp => myself.stop(Some("caller hung up".into())),
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<MemoryRoomMsg>, state: &mut MemoryRoomState) -> Result<(), ActorProcessingErr> {
        state.left.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
