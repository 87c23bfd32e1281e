//! LiveKit control plane (the Python module's `livekit_client.py`, and more): access tokens, room names,
//! room creation with explicit agent dispatch, and the agent-worker link (`/agent`).
//!
//! Media (joining a room, audio) is not here: see `crate::room`.

pub mod link;
pub mod directory;
pub mod load;

use std::time::Duration;

use consultant_actors::{SessionId, SessionIdError};
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol as proto;

use crate::config::LivekitConfig;
use crate::secret::Secret;
use crate::tls::{self, ClientTls};

/// Prefix of every consultation room: `consultation-{session_id}`.
pub const ROOM_PREFIX: &str = "consultation-";

/// Lifetime of the short admin tokens used for one Twirp call.
const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Lifetime of the worker token: it is only checked at the `/agent` upgrade, a new one is
/// minted for every (re)connection.
const WORKER_TOKEN_TTL: Duration = Duration::from_secs(3600);
const TWIRP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the worker runs: `start` (production) or `dev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerMode {
    /// Reports FULL at the load threshold; SIGTERM/SIGINT drains.
    Start,
    /// Always available, debug logs, a signal stops at once (after finalizing).
    Dev,
}

impl WorkerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Start => "start",
            WorkerMode::Dev => "dev",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveKitError {
    #[error("missing LiveKit secrets: {0} (set them in the environment or in .env)")]
    MissingKeys(String),
    #[error("invalid LiveKit URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot sign the LiveKit token: {0}")]
    Token(String),
    #[error("invalid participant identity: {0}")]
    BadIdentity(String),
    #[error("LiveKit {method} failed: cannot reach {url}: {reason}")]
    Unreachable { method: &'static str, url: String, reason: String },
    #[error("LiveKit {method} was refused: HTTP {status} {code}: {message}{hint}")]
    Refused { method: &'static str, status: u16, code: String, message: String, hint: &'static str },
    #[error("LiveKit {method} answered something that is not a {what}: {reason}")]
    BadAnswer { method: &'static str, what: &'static str, reason: String },
}

/// A room name that is not a consultation room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    #[error("room `{0}` is not a consultation room (expected `{ROOM_PREFIX}<session id>`)")]
    NotConsultation(String),
    #[error("room `{room}` does not carry a valid session id: {source}")]
    BadSessionId { room: String, source: SessionIdError },
}

/// `consultation-{session_id}`.
pub fn generate_room_name(session_id: &SessionId) -> String {
    format!("{ROOM_PREFIX}{session_id}")
}

/// The session id of a consultation room; anything else is refused.
pub fn parse_room_name(room: &str) -> Result<SessionId, RoomNameError> {
    let raw = room.strip_prefix(ROOM_PREFIX).ok_or_else(|| RoomNameError::NotConsultation(printable(room)))?;
    SessionId::parse(raw).map_err(|source| RoomNameError::BadSessionId { room: printable(room), source })
}

/// Room names come from the network: keep control characters out of logs and errors.
fn printable(s: &str) -> String {
    let cut: String = s.chars().take(100).collect();
    cut.escape_debug().to_string()
}

/// Identities end up in tokens, logs and the console: same alphabet as session ids plus `.`,
/// 1-128 characters.
pub fn check_identity(identity: &str) -> Result<(), LiveKitError> {
    if identity.is_empty() || identity.chars().count() > 128 {
        return Err(LiveKitError::BadIdentity(format!("`{}` must be 1-128 characters long", printable(identity))));
    }
    if let Some(bad) = identity.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(LiveKitError::BadIdentity(format!("`{}` contains {bad:?}; use A-Z a-z 0-9 _ - .", printable(identity))));
    }
    Ok(())
}

/// `ws(s)://` for the `/agent` and `/rtc` sockets, `http(s)://` for Twirp; any base path kept.
fn with_scheme(url: &str, websocket: bool) -> Result<url::Url, LiveKitError> {
    let bad = |reason: String| LiveKitError::BadUrl { url: url.to_owned(), reason };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let scheme = match (parsed.scheme(), websocket) {
        ("http" | "ws", true) => "ws",
        ("https" | "wss", true) => "wss",
        ("http" | "ws", false) => "http",
        ("https" | "wss", false) => "https",
        (other, _) => return Err(bad(format!("scheme `{other}` is not supported; use wss:// or https://"))),
    };
    parsed.set_scheme(scheme).map_err(|_| bad("cannot change the scheme".into()))?;
    Ok(parsed)
}

fn join_path(mut base: url::Url, tail: &str) -> url::Url {
    let path = format!("{}/{}", base.path().trim_end_matches('/'), tail.trim_start_matches('/'));
    base.set_path(&path);
    base.set_query(None);
    base
}

/// What `consultant token` / `room create` print.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JoinInfo {
    pub url: String,
    pub room: String,
    pub identity: String,
    pub token: String,
}

/// Tokens and room management for one LiveKit project (the Python module's `LiveKitClient`).
#[derive(Clone)]
pub struct LiveKitClient {
    url: String,
    api_key: Secret,
    api_secret: Secret,
    agent_name: String,
    participant_ttl: Duration,
    http: reqwest::Client,
    /// Also the `/agent` link's trust policy.
    tls: ClientTls,
}

impl std::fmt::Debug for LiveKitClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKitClient").field("url", &self.url).field("agent_name", &self.agent_name).finish_non_exhaustive()
    }
}

impl LiveKitClient {
    /// Twirp over `https://` and the `/agent` link over `wss://` trust `tls`.
    pub fn new(config: &LivekitConfig, tls: &ClientTls) -> Result<Self, LiveKitError> {
        let mut missing = Vec::new();
        if config.api_key.is_empty() {
            missing.push("LIVEKIT_API_KEY");
        }
        if config.api_secret.is_empty() {
            missing.push("LIVEKIT_API_SECRET");
        }
        if !missing.is_empty() {
            return Err(LiveKitError::MissingKeys(missing.join(", ")));
        }
        with_scheme(&config.url, true)?;
        let http = tls
            .http_client()
            .timeout(TWIRP_TIMEOUT)
            .build()
            .map_err(|e| LiveKitError::Unreachable { method: "client", url: config.url.clone(), reason: e.to_string() })?;
        Ok(Self {
            url: config.url.clone(),
            api_key: config.api_key.clone(),
            api_secret: config.api_secret.clone(),
            agent_name: config.agent_name.clone(),
            participant_ttl: Duration::from_secs(config.participant_token_ttl_secs),
            http,
            tls: tls.clone(),
        })
    }

    /// The server URL as configured (what clients connect to).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn agent_name(&self) -> &str {
        &self.agent_name
    }

    /// The trust policy of this server's connections.
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// `ws(s)://host[/base]/agent`.
    pub fn agent_ws_url(&self) -> Result<url::Url, LiveKitError> {
        Ok(join_path(with_scheme(&self.url, true)?, "agent"))
    }

    fn sign(&self, token: AccessToken) -> Result<Secret, LiveKitError> {
        token.to_jwt().map(Secret::new).map_err(|e| LiveKitError::Token(e.to_string()))
    }

    fn base_token(&self) -> AccessToken {
        AccessToken::with_api_key(self.api_key.expose(), self.api_secret.expose())
    }

    /// A caller's token: join `room`, publish, subscribe, data; TTL from config.
    pub fn create_token(&self, room: &str, identity: &str) -> Result<Secret, LiveKitError> {
        self.participant_token(room, identity, false)
    }

    /// Like [`create_token`](Self::create_token); with `dispatch_agent` the token also carries
    /// `roomConfig.agents = [our agent]`, so a room created by this participant's join
    /// dispatches the agent (explicit dispatch without a server-side CreateRoom).
    pub fn participant_token(&self, room: &str, identity: &str, dispatch_agent: bool) -> Result<Secret, LiveKitError> {
        check_identity(identity)?;
        let grants = VideoGrants {
            room_join: true,
            room: room.to_owned(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        };
        let mut token = self
            .base_token()
            .with_identity(identity)
            .with_name(identity)
            .with_kind("standard")
            .with_grants(grants)
            .with_ttl(self.participant_ttl);
        if dispatch_agent {
            token = token.with_room_config(proto::RoomConfiguration {
                agents: vec![proto::RoomAgentDispatch { agent_name: self.agent_name.clone(), ..Default::default() }],
                ..Default::default()
            });
        }
        self.sign(token)
    }

    /// An agent's room token (kind `agent`, agent grant). Jobs normally use the token from the
    /// assignment; this one is for tools and tests.
    pub fn create_agent_token(&self, room: &str, identity: &str) -> Result<Secret, LiveKitError> {
        check_identity(identity)?;
        let grants = VideoGrants {
            room_join: true,
            room: room.to_owned(),
            agent: true,
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        };
        self.sign(
            self.base_token()
                .with_identity(identity)
                .with_name(&self.agent_name)
                .with_kind("agent")
                .with_grants(grants)
                .with_ttl(self.participant_ttl),
        )
    }

    /// The `/agent` token: the agent grant and nothing else.
    pub fn worker_token(&self) -> Result<Secret, LiveKitError> {
        self.sign(self.base_token().with_grants(VideoGrants { agent: true, ..Default::default() }).with_ttl(WORKER_TOKEN_TTL))
    }

    /// A short token with only the grants one Twirp call needs.
    fn admin_token(&self, grants: VideoGrants) -> Result<Secret, LiveKitError> {
        self.sign(self.base_token().with_grants(grants).with_ttl(ADMIN_TOKEN_TTL))
    }

    /// What a caller needs to join the consultation room of `session_id`.
    pub fn join_info(&self, session_id: &SessionId, identity: &str) -> Result<JoinInfo, LiveKitError> {
        let room = generate_room_name(session_id);
        let token = self.create_token(&room, identity)?;
        Ok(JoinInfo { url: self.url.clone(), room, identity: identity.to_owned(), token: token.expose().to_owned() })
    }

    /// Creates the consultation room through `RoomService.CreateRoom` with a
    /// `RoomAgentDispatch` for our agent name (explicit dispatch, as the Python module's server does).
    pub async fn create_room(&self, session_id: &SessionId) -> Result<proto::Room, LiveKitError> {
        let request = proto::CreateRoomRequest {
            name: generate_room_name(session_id),
            agents: vec![proto::RoomAgentDispatch { agent_name: self.agent_name.clone(), ..Default::default() }],
            ..Default::default()
        };
        let grants = VideoGrants { room_create: true, ..Default::default() };
        self.twirp("RoomService", "CreateRoom", &request, "Room", grants).await
    }

    /// `RoomService.CreateRoom` of `name` with an explicit dispatch of `agent_name` (the load
    /// test's rooms, and any agent name: it measures whichever worker the operator points at).
    pub async fn create_named_room(&self, name: &str, agent_name: &str) -> Result<proto::Room, LiveKitError> {
        let request = proto::CreateRoomRequest {
            name: name.to_owned(),
            agents: vec![proto::RoomAgentDispatch { agent_name: agent_name.to_owned(), ..Default::default() }],
            ..Default::default()
        };
        let grants = VideoGrants { room_create: true, ..Default::default() };
        self.twirp("RoomService", "CreateRoom", &request, "Room", grants).await
    }

    /// `RoomService.DeleteRoom`: everyone is removed and the agent's job ends.
    pub async fn delete_room(&self, name: &str) -> Result<(), LiveKitError> {
        let request = proto::DeleteRoomRequest { room: name.to_owned() };
        let grants = VideoGrants { room_create: true, ..Default::default() };
        let _: proto::DeleteRoomResponse = self.twirp("RoomService", "DeleteRoom", &request, "DeleteRoomResponse", grants).await?;
        Ok(())
    }

    /// `RoomService.ListRooms`: the cheapest call that proves the URL and the key pair
    /// (`consultant doctor`).
    pub async fn list_rooms(&self) -> Result<Vec<proto::Room>, LiveKitError> {
        let grants = VideoGrants { room_list: true, ..Default::default() };
        let answer: proto::ListRoomsResponse = self.twirp("RoomService", "ListRooms", &proto::ListRoomsRequest::default(), "ListRoomsResponse", grants).await?;
        Ok(answer.rooms)
    }

    pub(crate) async fn twirp<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        service: &'static str,
        method: &'static str,
        request: &Req,
        what: &'static str,
        grants: VideoGrants,
    ) -> Result<Resp, LiveKitError> {
        let url = join_path(with_scheme(&self.url, false)?, &format!("twirp/livekit.{service}/{method}"));
        let token = self.admin_token(grants)?;
        let answer = self
            .http
            .post(url.clone())
            .bearer_auth(token.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .map_err(|e| unreachable(method, &url, &e))?;
        let status = answer.status();
        let body = answer
            .bytes()
            .await
            .map_err(|e| LiveKitError::Unreachable { method, url: url.to_string(), reason: error_chain(&e) })?;
        if !status.is_success() {
            #[derive(serde::Deserialize, Default)]
            struct TwirpError {
                #[serde(default)]
                code: String,
                #[serde(default)]
                msg: String,
            }
            let err: TwirpError = serde_json::from_slice(&body).unwrap_or_else(|_| TwirpError {
                code: "unknown".into(),
                msg: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            });
            let hint = match status.as_u16() {
                401 | 403 => " (check LIVEKIT_API_KEY / LIVEKIT_API_SECRET)",
                404 => " (is livekit.url the LiveKit server?)",
                _ => "",
            };
            return Err(LiveKitError::Refused { method, status: status.as_u16(), code: err.code, message: err.msg, hint });
        }
        Resp::decode(body.as_ref()).map_err(|e| LiveKitError::BadAnswer { method, what, reason: e.to_string() })
    }
}

/// A Twirp call that did not get an answer; a TLS failure is said in the trust policy's words.
fn unreachable(method: &'static str, url: &url::Url, e: &reqwest::Error) -> LiveKitError {
    let reason = match tls::explain(&tls::target(url), e) {
        Some(failure) => failure.message,
        None => error_chain(e),
    };
    LiveKitError::Unreachable { method, url: url.to_string(), reason }
}

/// An error with its sources (reqwest hides the useful part in them).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_round_trip_and_reject_the_rest() {
        let id = SessionId::parse("0b6f7e2a-4c1d-4f0e-9a55-3f8d2c1b7a90").unwrap();
        let room = generate_room_name(&id);
        assert_eq!(room, "consultation-0b6f7e2a-4c1d-4f0e-9a55-3f8d2c1b7a90");
        assert_eq!(parse_room_name(&room).unwrap(), id);
        assert!(matches!(parse_room_name("lobby"), Err(RoomNameError::NotConsultation(_))));
        assert!(matches!(parse_room_name("consultation-"), Err(RoomNameError::BadSessionId { .. })));
        let err = parse_room_name("consultation-../../etc").unwrap_err().to_string();
        assert!(err.contains("'.'") || err.contains("\".\"") || err.contains('.'), "{err}");
        let err = parse_room_name("x\n\u{1b}[31m").unwrap_err().to_string();
        assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn urls_keep_the_base_path() {
        assert_eq!(join_path(with_scheme("https://h.example/lk/", true).unwrap(), "agent").as_str(), "wss://h.example/lk/agent");
        assert_eq!(join_path(with_scheme("ws://127.0.0.1:7880", false).unwrap(), "twirp/x/y").as_str(), "http://127.0.0.1:7880/twirp/x/y");
        assert!(with_scheme("ftp://x", true).is_err());
    }

    #[test]
    fn identities_are_checked() {
        assert!(check_identity("caller-1.web").is_ok());
        assert!(check_identity("").is_err());
        assert!(check_identity("a b").is_err());
    }
}
