//! Access tokens: HS256 JWTs signed with the API secret, issuer = API key.

use std::time::Duration;

use axum::http::HeaderMap;
use livekit_api::access_token::{AccessToken, Claims, TokenVerifier, VideoGrants};

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

pub(crate) fn verify(key: &str, secret: &str, token: Option<&str>) -> Result<Claims, AuthError> {
    let token = token.ok_or(AuthError::Missing)?;
    TokenVerifier::with_api_key(key, secret)
        .verify(token)
        // The jsonwebtoken error text names the failed check, not the token.
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// Mint the room token of an agent for an assignment: roomJoin for that room, agent grant,
/// kind "agent", valid one hour, publish/subscribe/data as the worker asked at registration.
pub(crate) fn mint_agent_token(
    key: &str,
    secret: &str,
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
    let mut t = AccessToken::with_api_key(key, secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(Duration::from_secs(3600))
        .with_metadata(metadata)
        .with_attributes(attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !name.is_empty() {
        t = t.with_name(name);
    }
    t.to_jwt().map_err(|e| AuthError::Invalid(e.to_string()))
}
