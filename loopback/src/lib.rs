//! # livekit-loopback: a LiveKit-compatible server for tests only
//!
//! One process, bound to 127.0.0.1 on an ephemeral port, serving what our worker and the
//! official SDKs need from a LiveKit server:
//!
//! - `GET /agent` (WebSocket): the agent worker protocol (register, update_worker,
//!   availability, assignment with a server-minted agent token, update_job, termination,
//!   migrate_job, WS pings every 10 s). Binary frames are protobuf, text frames protojson.
//! - `POST /twirp/livekit.RoomService/{CreateRoom,DeleteRoom,ListRooms}` and
//!   `POST /twirp/livekit.AgentDispatchService/{CreateDispatch,DeleteDispatch,ListDispatch}`,
//!   protobuf or JSON bodies, grants checked (roomCreate, roomList, roomAdmin for the room).
//! - `GET /rtc` (participant signalling, protocol v0, two peer connections), `/rtc/validate`,
//!   and `/rtc/v1` answering HTTP/1.1 404 so the official SDKs fall back to v0. Details and
//!   what is not implemented: the [`rtc`] module docs.
//! - Media: an SFU on str0m (one UDP socket on 127.0.0.1, ICE-lite, host candidate) that
//!   forwards Opus frames from each published audio track to every subscriber.
//! - As livekit-server does where agents notice: a participant who left is announced with its
//!   `disconnect_reason` (`CLIENT_INITIATED` for a leave request, `CONNECTION_TIMEOUT` after the
//!   resume grace, `DUPLICATE_IDENTITY` when replaced, `SERVER_SHUTDOWN`), and a publisher gets
//!   `TrackSubscribed` once a track of its has its first subscriber (`OnTrackEverSubscribed`).
//!
//! Proven against the official Python SDK (`livekit` 1.1.21) and worker (`livekit-agents`
//! 1.8.9): see `tests/official_peers.rs` and `loopback/INTEROP.md`.
//!
//! Tokens are HS256 JWTs signed with `api_secret`, issuer `api_key`; a missing or bad token,
//! or one lacking the grant, gets HTTP 401 on `/agent` and `/rtc` (Twirp: `unauthenticated`
//! 401 / `permission_denied` 403).
//!
//! ## Dispatch as the real server does it
//! A worker with an empty `agent_name` gets a job for every new room that names no agents.
//! A named worker only gets explicit dispatches: `CreateRoom{agents: [RoomAgentDispatch]}`,
//! `CreateDispatch`, or [`LoopbackServer::create_dispatch`]. A job is offered to one
//! connected worker with that agent name whose status is `WS_AVAILABLE` (and not draining),
//! chosen at random
//! weighted by `max(0, 1 - load)` (load >= 1 is never chosen). A refusal or an availability
//! timeout (10 s, [`LoopbackConfig::availability_timeout`]) moves on to another worker; with
//! none left the job stays pending ([`ServerEvent::JobUnassigned`]) and is retried whenever a
//! worker registers or sends `update_worker`. The assignment's token: identity from the
//! availability answer (default `agent-<job id>`), roomJoin for the job's room, agent grant,
//! kind `agent`, 1 h TTL. Deleting the dispatch (or the room), or the agent participant
//! leaving the room, sends `termination`. A worker that reconnects gets a new `AW_` id and may
//! claim its running jobs with `migrate_job` (they move to the new worker id).
//!
//! ## Test API
//! ```no_run
//! # async fn t() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use livekit_loopback::{LoopbackConfig, LoopbackServer, ServerEvent, JobStatus};
//!
//! let server = LoopbackServer::start(LoopbackConfig::default()).await?; // devkey / secret
//! let url = server.url();            // "http://127.0.0.1:PORT" (give this to the worker)
//! let _ws = server.ws_url();         // "ws://127.0.0.1:PORT"
//! let worker_token = server.worker_token(); // video.agent grant only
//!
//! // ... start the worker under test with `url` and the keys, then:
//! let wid = server.wait_for_event(Duration::from_secs(5), |e| match e {
//!     ServerEvent::WorkerRegistered { worker_id, .. } => Some(worker_id.clone()),
//!     _ => None,
//! }).await?;
//! let room = server.create_room("consultation-abc", &["my-agent"]); // explicit dispatch
//! let job = server.wait_for(Duration::from_secs(5), |s| {
//!     s.jobs().into_iter().find(|j| j.room == "consultation-abc" && j.status == JobStatus::JsRunning)
//! }).await?;
//! server.drop_worker_connections();   // fault: the worker must reconnect + migrate_job
//! server.delete_dispatch(&job.dispatch_id); // -> termination to the worker
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//! Inspection: [`LoopbackServer::workers`], [`jobs`](LoopbackServer::jobs),
//! [`rooms`](LoopbackServer::rooms), [`dispatches`](LoopbackServer::dispatches),
//! [`events`](LoopbackServer::events) (the whole log). Awaiting:
//! [`wait_for_event`](LoopbackServer::wait_for_event) scans the log from the start, then
//! waits for new events (no race with things that already happened);
//! [`wait_for`](LoopbackServer::wait_for) re-evaluates a predicate over the server state
//! after every event; [`subscribe`](LoopbackServer::subscribe) gives the raw broadcast.
//! Rooms and media: [`ServerEvent::ParticipantJoined`] (with [`ParticipantKind`]),
//! [`ServerEvent::TrackPublished`], [`ServerEvent::PeerConnected`],
//! [`ServerEvent::MediaFlowing`] (first RTP of a track reached the SFU),
//! [`ServerEvent::TrackSubscribed`], [`ServerEvent::DataForwarded`] (data packets relayed,
//! e.g. `lk.transcription` text streams), [`ServerEvent::SignalLost`] /
//! [`ServerEvent::ParticipantResumed`] / [`ServerEvent::ParticipantLeft`]; tokens for
//! clients: [`LoopbackServer::participant_token`], [`LoopbackServer::admin_token`],
//! [`LoopbackServer::worker_token`].
//! Faults: [`drop_worker_connections`](LoopbackServer::drop_worker_connections) (TCP dropped,
//! no close frame), [`send_raw_to_worker`](LoopbackServer::send_raw_to_worker) (garbage
//! frames), [`send_to_worker`](LoopbackServer::send_to_worker) (e.g. an unsolicited
//! termination), [`drop_participant_signal`](LoopbackServer::drop_participant_signal) (cut a
//! participant's signalling; it may resume within
//! [`reconnect_grace`](LoopbackConfig::reconnect_grace)),
//! [`delete_dispatch`](LoopbackServer::delete_dispatch), [`close_room`](LoopbackServer::close_room).
//!
//! From a shell: `cargo run -p livekit-loopback -- --port 7880 --keys devkey:secret` prints
//! the URL and serves until interrupted.

pub mod agent;
pub mod auth;
pub mod peers;
pub mod rooms;
pub mod rtc;
#[cfg(test)]
mod rtc_pair;
mod config;
mod cors;
mod metadata;
mod permissions;
mod room_notices;
mod sfu;
pub mod state;
mod twirp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use tokio::sync::{broadcast, watch, Notify};

pub use config::LoopbackConfig;
pub use livekit_protocol as proto;
pub use state::{
    DispatchSnapshot, JobSnapshot, JobStatus, ParticipantKind, ParticipantSnapshot, RawFrame, RoomSnapshot,
    ServerEvent, WorkerSnapshot, WorkerStatus,
};
use state::{Shared, SharedRef, WorkerOut};

/// The server's periodic room work (livekit-server's background and room workers): idle
/// rooms close, room updates and connection quality go out.
async fn room_timers(sh: std::sync::Weak<Shared>) {
    let quality_every = match sh.upgrade() {
        Some(s) => s.cfg.connection_quality_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut quality = tokio::time::interval(quality_every);
    let mut told = room_notices::Told::default();
    loop {
        let quality_due = tokio::select! {
            _ = tick.tick() => false,
            _ = quality.tick() => true,
        };
        let Some(sh) = sh.upgrade() else { return };
        if *sh.shutdown.borrow() {
            return;
        }
        if quality_due {
            room_notices::connection_quality(&sh, &mut told);
        } else {
            rooms::close_idle_rooms(&sh);
            room_notices::room_updates(&sh, &mut told);
        }
    }
}

/// `wait_for*` gave up.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {0:?} waiting for the loopback server; last events: {1}")]
pub struct WaitTimeout(pub Duration, pub String);

/// A running server. Dropping it does not stop it; call [`LoopbackServer::shutdown`].
#[derive(Clone)]
pub struct LoopbackServer {
    sh: SharedRef,
    addr: SocketAddr,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl LoopbackServer {
    /// Bind and serve in the background (on the current tokio runtime).
    pub async fn start(cfg: LoopbackConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(cfg.bind).await?;
        let addr = listener.local_addr()?;
        let (events_tx, _) = broadcast::channel(4096);
        let (shutdown, _) = watch::channel(false);
        let udp = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let sh = Arc::new_cyclic(|weak| Shared {
            cfg,
            inner: Default::default(),
            events_tx,
            dispatch_kick: Notify::new(),
            shutdown,
            media: sfu::start(udp, weak.clone()),
        });
        let app = axum::Router::new()
            .route("/agent", any(agent::agent_ws))
            .route("/twirp/{service}/{method}", post(twirp::twirp))
            .route("/rtc", any(rtc::rtc_ws))
            .route("/rtc/validate", any(rtc::rtc_validate))
            .route("/rtc/v1", any(rtc::rtc_v1_not_found))
            .route("/rtc/v1/validate", any(rtc::rtc_v1_not_found))
            .route("/", get(|| async { "OK" }))
            .layer(axum::middleware::from_fn(cors::allow_all_origins))
            .with_state(sh.clone());
        let mut stop = sh.shutdown.subscribe();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "loopback server failed");
            }
        });
        tokio::spawn(room_timers(Arc::downgrade(&sh)));
        tracing::info!(%addr, "loopback LiveKit server listening");
        Ok(Self { sh, addr, task: Arc::new(std::sync::Mutex::new(Some(task))) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// `ws://127.0.0.1:PORT`
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }
    /// The UDP address of the SFU (ICE host candidate).
    pub fn media_addr(&self) -> SocketAddr {
        self.sh.media.addr
    }
    /// Forwarded media's time in the SFU since start, socket read to copies written:
    /// cumulative `(upper bound s, forwards)`, the last bound infinite.
    pub fn forward_lag(&self) -> Vec<(f64, u64)> {
        self.sh.media.lag.cumulative()
    }
    pub fn api_key(&self) -> &str {
        &self.sh.cfg.api_key
    }
    pub fn api_secret(&self) -> &str {
        &self.sh.cfg.api_secret
    }
    pub fn config(&self) -> &LoopbackConfig {
        &self.sh.cfg
    }

    /// A worker token (video.agent only), 1 h.
    pub fn worker_token(&self) -> String {
        use livekit_api::access_token::{AccessToken, VideoGrants};
        AccessToken::with_api_key(self.api_key(), self.api_secret())
            .with_grants(VideoGrants { agent: true, ..Default::default() })
            .with_ttl(Duration::from_secs(3600))
            .to_jwt()
            .expect("token encodes")
    }

    /// A participant token: roomJoin for `room`, publish/subscribe/data, kind standard.
    pub fn participant_token(&self, room: &str, identity: &str) -> String {
        use livekit_api::access_token::{AccessToken, VideoGrants};
        AccessToken::with_api_key(self.api_key(), self.api_secret())
            .with_identity(identity)
            .with_name(identity)
            .with_grants(VideoGrants {
                room_join: true,
                room: room.into(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
                ..Default::default()
            })
            .with_ttl(Duration::from_secs(3600))
            .to_jwt()
            .expect("token encodes")
    }

    /// An admin token: roomCreate, roomList, and roomAdmin for `room` (if given).
    pub fn admin_token(&self, room: Option<&str>) -> String {
        use livekit_api::access_token::{AccessToken, VideoGrants};
        AccessToken::with_api_key(self.api_key(), self.api_secret())
            .with_grants(VideoGrants {
                room_create: true,
                room_list: true,
                room_admin: room.is_some(),
                room: room.unwrap_or_default().into(),
                ..Default::default()
            })
            .with_ttl(Duration::from_secs(3600))
            .to_jwt()
            .expect("token encodes")
    }

    // ----- inspection -----

    pub fn workers(&self) -> Vec<WorkerSnapshot> {
        let g = self.sh.lock();
        g.worker_order
            .iter()
            .filter_map(|id| g.workers.get(id))
            .map(|w| WorkerSnapshot {
                id: w.id.clone(),
                agent_name: w.agent_name.clone(),
                namespace: w.namespace.clone(),
                version: w.version.clone(),
                status: w.status,
                load: w.load,
                job_count: w.job_count,
                connected: w.connected,
                updates: w.updates,
                draining: w.draining,
                jobs: g
                    .job_order
                    .iter()
                    .filter_map(|j| g.jobs.get(j))
                    .filter(|j| j.worker_id.as_deref() == Some(w.id.as_str()) && j.assigned && !j.ended())
                    .map(|j| j.id.clone())
                    .collect(),
                permissions: w.permissions.clone(),
            })
            .collect()
    }

    pub fn worker(&self, id: &str) -> Option<WorkerSnapshot> {
        self.workers().into_iter().find(|w| w.id == id)
    }

    pub fn jobs(&self) -> Vec<JobSnapshot> {
        let g = self.sh.lock();
        g.job_order
            .iter()
            .filter_map(|id| g.jobs.get(id))
            .map(|j| JobSnapshot {
                id: j.id.clone(),
                dispatch_id: j.dispatch_id.clone(),
                room: j.room.clone(),
                agent_name: j.agent_name.clone(),
                metadata: j.metadata.clone(),
                worker_id: j.worker_id.clone(),
                participant_identity: j.participant_identity.clone(),
                status: j.status,
                error: j.error.clone(),
                history: j.history.clone(),
                assigned: j.assigned,
                terminated: j.terminated,
            })
            .collect()
    }

    pub fn job(&self, id: &str) -> Option<JobSnapshot> {
        self.jobs().into_iter().find(|j| j.id == id)
    }

    pub fn rooms(&self) -> Vec<RoomSnapshot> {
        let g = self.sh.lock();
        g.rooms
            .values()
            .map(|r| RoomSnapshot {
                name: r.name.clone(),
                sid: r.sid.clone(),
                metadata: r.metadata.clone(),
                participants: r
                    .participants
                    .values()
                    .map(|p| ParticipantSnapshot {
                        identity: p.identity.clone(),
                        sid: p.sid.clone(),
                        kind: p.kind,
                        tracks: p.tracks.iter().map(|t| t.sid.clone()).collect(),
                    })
                    .collect(),
                dispatch_ids: r.dispatch_ids.clone(),
            })
            .collect()
    }

    pub fn room(&self, name: &str) -> Option<RoomSnapshot> {
        self.rooms().into_iter().find(|r| r.name == name)
    }

    pub fn dispatches(&self) -> Vec<DispatchSnapshot> {
        let g = self.sh.lock();
        g.dispatch_order
            .iter()
            .filter_map(|id| g.dispatches.get(id))
            .map(|d| DispatchSnapshot {
                id: d.id.clone(),
                room: d.room.clone(),
                agent_name: d.agent_name.clone(),
                metadata: d.metadata.clone(),
                job_ids: d.job_ids.clone(),
                deleted: d.deleted_at != 0,
            })
            .collect()
    }

    /// Every event since start, in order.
    pub fn events(&self) -> Vec<ServerEvent> {
        self.sh.lock().events.clone()
    }

    /// Live events from now on (capacity 4096; a lagging receiver loses the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.sh.events_tx.subscribe()
    }

    /// The first event (past or future) for which `f` returns `Some`.
    pub async fn wait_for_event<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&ServerEvent) -> Option<T>,
    ) -> Result<T, WaitTimeout> {
        let mut rx = {
            let g = self.sh.lock();
            if let Some(t) = g.events.iter().find_map(&mut f) {
                return Ok(t);
            }
            self.sh.events_tx.subscribe()
        };
        let fut = async {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if let Some(t) = f(&ev) {
                            return Some(t);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Re-scan the full log; nothing is lost.
                        let g = self.sh.lock();
                        if let Some(t) = g.events.iter().find_map(&mut f) {
                            return Some(t);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Some(t)) => Ok(t),
            _ => Err(self.timeout_error(timeout)),
        }
    }

    /// Evaluate `f` now and after every event until it returns `Some`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&LoopbackServer) -> Option<T>,
    ) -> Result<T, WaitTimeout> {
        let mut rx = self.sh.events_tx.subscribe();
        let fut = async {
            loop {
                if let Some(t) = f(self) {
                    return Some(t);
                }
                match rx.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Some(t)) => Ok(t),
            _ => Err(self.timeout_error(timeout)),
        }
    }

    /// Wait until job `job_id` has reached `status` (at any point of its history).
    pub async fn wait_for_job_status(
        &self,
        job_id: &str,
        status: JobStatus,
        timeout: Duration,
    ) -> Result<JobSnapshot, WaitTimeout> {
        self.wait_for(timeout, |s| s.job(job_id).filter(|j| j.history.contains(&status))).await
    }

    fn timeout_error(&self, timeout: Duration) -> WaitTimeout {
        let g = self.sh.lock();
        let tail: Vec<String> = g.events.iter().rev().take(8).rev().map(|e| format!("{e:?}")).collect();
        WaitTimeout(timeout, tail.join("; "))
    }

    // ----- actions and faults -----

    /// Create a room (like Twirp CreateRoom) with one explicit dispatch per agent name.
    pub fn create_room(&self, name: &str, agents: &[&str]) -> proto::Room {
        let agents: Vec<proto::RoomAgentDispatch> = agents
            .iter()
            .map(|a| proto::RoomAgentDispatch { agent_name: a.to_string(), ..Default::default() })
            .collect();
        rooms::create_room(&self.sh, rooms::RoomOptions::named(name), &agents)
    }

    /// Explicit dispatch (like Twirp CreateDispatch); creates the room if needed.
    /// Returns the dispatch id.
    pub fn create_dispatch(&self, room: &str, agent_name: &str, metadata: &str) -> String {
        let mut g = self.sh.lock();
        if !g.rooms.contains_key(room) {
            rooms::create_room_locked(&self.sh, &mut g, rooms::RoomOptions::named(room), &[]);
        }
        agent::create_dispatch_locked(&self.sh, &mut g, room, agent_name, metadata)
    }

    /// Delete a dispatch: its running job gets `termination`. False if unknown/already deleted.
    pub fn delete_dispatch(&self, dispatch_id: &str) -> bool {
        let mut g = self.sh.lock();
        agent::delete_dispatch_locked(&self.sh, &mut g, dispatch_id).is_some()
    }

    /// Close a room (like Twirp DeleteRoom). False if there is no such room.
    pub fn close_room(&self, name: &str) -> bool {
        rooms::close_room(&self.sh, name, "closed by test")
    }

    /// Drop the signalling socket of a participant (no close frame, no leave), like a network
    /// cut: it may resume within [`LoopbackConfig::reconnect_grace`]. False if not connected.
    pub fn drop_participant_signal(&self, room: &str, identity: &str) -> bool {
        let g = self.sh.lock();
        g.rooms
            .get(room)
            .and_then(|r| r.participant(identity))
            .and_then(|p| p.signal.as_ref())
            .is_some_and(|tx| tx.send(rtc::SignalOut::DropSocket).is_ok())
    }

    /// Send a participant a `LeaveRequest` with `action` (resume, reconnect, disconnect), as
    /// livekit-server does when a node drains, a session is lost or a participant is removed.
    pub fn send_leave(&self, room: &str, identity: &str, action: proto::leave_request::Action, reason: proto::DisconnectReason) -> bool {
        let g = self.sh.lock();
        g.rooms
            .get(room)
            .and_then(|r| r.participant(identity))
            .and_then(|p| p.signal.as_ref())
            .is_some_and(|tx| tx.send(rtc::SignalOut::LeaveWith { action, reason }).is_ok())
    }

    /// Drop the TCP connection of every connected worker (no close frame). Returns how many.
    pub fn drop_worker_connections(&self) -> usize {
        let g = self.sh.lock();
        g.workers.values().filter(|w| w.connected).filter(|w| w.tx.send(WorkerOut::Drop).is_ok()).count()
    }

    /// Send a raw frame (e.g. garbage) to a connected worker. False if not connected.
    pub fn send_raw_to_worker(&self, worker_id: &str, frame: RawFrame) -> bool {
        let g = self.sh.lock();
        g.workers.get(worker_id).is_some_and(|w| w.connected && w.tx.send(WorkerOut::Raw(frame)).is_ok())
    }

    /// Send any ServerMessage to a connected worker (e.g. an unsolicited termination).
    pub fn send_to_worker(&self, worker_id: &str, msg: proto::ServerMessage) -> bool {
        let g = self.sh.lock();
        g.workers.get(worker_id).is_some_and(|w| w.connected && w.tx.send(WorkerOut::Msg(Box::new(msg))).is_ok())
    }

    /// Stop serving: connections are closed, background tasks end.
    pub async fn shutdown(&self) {
        let _ = self.sh.shutdown.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
