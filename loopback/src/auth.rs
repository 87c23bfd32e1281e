//! Access tokens: HS256 JWTs signed with the API secret, issuer = API key.

use std::time::Duration;

use axum::http::HeaderMap;
use livekit_api::access_token::{AccessToken, Claims, TokenVerifier, VideoGrants};

use crate::LoopbackConfig;

/// Why a request was refused. Never contains the token itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("missing access token")]
    Missing,
    #[error("invalid access token: {0}")]
    Invalid(String),
    #[error("permission denied: {0}")]
    Denied(String),
}

/// The token from `Authorization: Bearer ...`, else from the `access_token` query parameter.
pub(crate) fn token_from(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).unwrap_or(v);
        if !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    query_token.filter(|t| !t.is_empty()).map(str::to_string)
}

pub(crate) fn verify(cfg: &LoopbackConfig, token: Option<&str>) -> Result<Claims, AuthError> {
    let token = token.ok_or(AuthError::Missing)?;
    let claims = TokenVerifier::with_api_key(&cfg.api_key, &cfg.api_secret)
        .verify(token)
        // The jsonwebtoken error text names the failed check, not the token.
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    // jsonwebtoken allows 60 s past `exp`, as livekit-server does; a shorter configured
    // leeway is applied here (tests of token refresh cannot wait a minute).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    if now > claims.exp as u64 + cfg.token_leeway.as_secs() {
        return Err(AuthError::Invalid("ExpiredSignature".into()));
    }
    Ok(claims)
}

/// A fresh token for a connected participant, as livekit-server's `refreshToken`: the same
/// identity, name, kind, metadata, attributes, grants and room configuration, valid for
/// 10 minutes or what the original still had, whichever is longer.
pub(crate) fn refreshed_token(cfg: &LoopbackConfig, c: &Claims) -> Result<String, AuthError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let remaining = (c.exp as u64).saturating_sub(now);
    let ttl = Duration::from_secs(remaining.max(600));
    let mut t = AccessToken::with_api_key(&cfg.api_key, &cfg.api_secret)
        .with_identity(&c.sub)
        .with_kind(&c.kind)
        .with_grants(c.video.clone())
        .with_ttl(ttl)
        .with_metadata(&c.metadata)
        .with_attributes(c.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !c.name.is_empty() {
        t = t.with_name(&c.name);
    }
    if let Some(rc) = &c.room_config {
        t = t.with_room_config(rc.clone());
    }
    t.to_jwt().map_err(|e| AuthError::Invalid(e.to_string()))
}

/// Mint the room token of an agent for an assignment: roomJoin for that room, agent grant,
/// kind "agent", valid `agent_token_ttl` (one hour, as livekit-server), publish/subscribe/data as the worker asked at registration.
pub(crate) fn mint_agent_token(
    cfg: &LoopbackConfig,
    room: &str,
    identity: &str,
    answer: &livekit_protocol::AvailabilityResponse,
    perms: Option<&livekit_protocol::ParticipantPermission>,
) -> Result<String, AuthError> {
    let (name, metadata, attributes) =
        (&answer.participant_name, &answer.participant_metadata, &answer.participant_attributes);
    let (can_publish, can_subscribe, can_publish_data, hidden) = match perms {
        // A worker that sent no permissions gets the usual agent defaults.
        None => (true, true, true, false),
        Some(p) => (p.can_publish, p.can_subscribe, p.can_publish_data, p.hidden),
    };
    let grants = VideoGrants {
        room_join: true,
        room: room.to_string(),
        agent: true,
        can_publish: Some(can_publish),
        can_subscribe: Some(can_subscribe),
        can_publish_data: Some(can_publish_data),
        can_update_own_metadata: Some(true),
        hidden,
        ..Default::default()
    };
    let mut t = AccessToken::with_api_key(&cfg.api_key, &cfg.api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(cfg.agent_token_ttl)
        .with_metadata(metadata)
        .with_attributes(attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !name.is_empty() {
        t = t.with_name(name);
    }
    t.to_jwt().map_err(|e| AuthError::Invalid(e.to_string()))
}
