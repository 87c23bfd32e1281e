//! The loopback server's settings, with livekit-server's defaults.

use std::net::SocketAddr;
use std::time::Duration;

/// Server settings. `Default` = the `livekit-server --dev` keys (`devkey` / `secret`),
/// 127.0.0.1 with an ephemeral port, and the real server's timings.
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    pub api_key: String,
    pub api_secret: String,
    /// Where to listen. Port 0 = ephemeral.
    pub bind: SocketAddr,
    /// How long a worker has to answer an availability request (real server: 10 s).
    pub availability_timeout: Duration,
    /// WebSocket ping period on `/agent` (real server: 10 s).
    pub ws_ping_interval: Duration,
    /// How long a new `/agent` connection has to send `register`.
    pub register_timeout: Duration,
    /// `JobAssignment.url`; `None` = empty, the worker uses its own URL.
    pub assignment_url: Option<String>,
    /// Version string in ServerInfo.
    pub server_version: String,
    /// How long a participant whose signalling socket was lost (no leave) stays in the room
    /// waiting for a resume (`/rtc?reconnect=1&sid=`) before it is removed.
    pub reconnect_grace: Duration,
    /// Bound of the event log ([`LoopbackServer::events`]); `None` (the default, for tests)
    /// keeps every event. The binary sets 10 000 so long manual runs do not grow forever.
    pub max_logged_events: Option<usize>,
    /// How often a participant gets a fresh token on its signalling (`refresh_token`); the
    /// first one goes out right after the join (livekit-server: every 5 min).
    pub token_refresh_interval: Duration,
    /// How long past `exp` a token is still accepted (livekit-server and jsonwebtoken: 60 s).
    pub token_leeway: Duration,
    /// Validity of the agent tokens minted for assignments (livekit-server: 1 h).
    pub agent_token_ttl: Duration,
    /// A room nobody joined closes after this when created with `empty_timeout` 0
    /// (livekit-server's `room.empty_timeout`: 300 s).
    pub empty_timeout: Duration,
    /// A room whose last non-agent participant left closes after this when created with
    /// `departure_timeout` 0 (livekit-server's `room.departure_timeout`: 20 s).
    pub departure_timeout: Duration,
    /// Period of `connection_quality` updates (livekit-server: 5 s).
    pub connection_quality_interval: Duration,
    /// Whether `migrate_job` moves a re-registered worker's running jobs to its new
    /// connection. livekit-server (OSS) leaves it unimplemented (false): after a reconnect
    /// those jobs get no termination; the agent learns the end from the room itself.
    pub migrate_jobs: bool,
    /// ICE-lite media (answers checks only) instead of full ICE (livekit-server's default,
    /// `rtc.use_ice_lite: false`: it also sends checks and nominates).
    pub ice_lite: bool,
    /// Period of the active-speaker check behind `speakers_changed` (livekit-server: 400 ms).
    pub speaker_update_interval: Duration,
    /// Forward audio as it arrives, as livekit-server does, instead of str0m's default of
    /// holding the frames after a lost packet until 15 more came (300 ms). The capacity bench
    /// turns it on. Off by default: with it on, the full-worker load test saw 20-50 late frames
    /// in 1 060 in three of six runs (none in three of three with it off), for a reason not found.
    pub forward_audio_at_once: bool,
}

impl Default for LoopbackConfig {
    fn default() -> Self {
        Self {
            api_key: "devkey".into(),
            api_secret: "secret".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            availability_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(10),
            register_timeout: Duration::from_secs(10),
            assignment_url: None,
            server_version: "1.9.0-loopback".into(),
            reconnect_grace: Duration::from_secs(2),
            max_logged_events: None,
            token_refresh_interval: Duration::from_secs(300),
            token_leeway: Duration::from_secs(60),
            agent_token_ttl: Duration::from_secs(3600),
            empty_timeout: Duration::from_secs(300),
            departure_timeout: Duration::from_secs(20),
            connection_quality_interval: Duration::from_secs(5),
            speaker_update_interval: Duration::from_millis(400),
            ice_lite: false,
            migrate_jobs: false,
            forward_audio_at_once: false,
        }
    }
}

impl LoopbackConfig {
    pub fn with_keys(api_key: &str, api_secret: &str) -> Self {
        Self { api_key: api_key.into(), api_secret: api_secret.into(), ..Default::default() }
    }
}

