//! Dialogue messages and the validated session identifier.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Maximum length of a session id: a UUID (36) fits with room to spare.
pub const SESSION_ID_MAX_LEN: usize = 64;

/// A consultation session id: 1-64 characters of `[A-Za-z0-9_-]`.
///
/// Session ids reach file names, room names, log lines and console commands, so anything
/// else is refused wherever an id enters the system.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("session id is empty; use 1-{SESSION_ID_MAX_LEN} characters of A-Z a-z 0-9 _ -")]
    Empty,
    #[error("session id is {0} characters long; the maximum is {SESSION_ID_MAX_LEN}")]
    TooLong(usize),
    #[error("session id contains {0:?}; only A-Z a-z 0-9 _ - are allowed")]
    BadChar(char),
}

impl SessionId {
    pub fn parse(raw: &str) -> Result<Self, SessionIdError> {
        if raw.is_empty() {
            return Err(SessionIdError::Empty);
        }
        let len = raw.chars().count();
        if len > SESSION_ID_MAX_LEN {
            return Err(SessionIdError::TooLong(len));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(SessionIdError::BadChar(bad));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SessionId {
    type Err = SessionIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        SessionId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Who spoke a dialogue message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One final dialogue message: a user transcript or the agent's text as actually heard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DialogueMessage {
    /// 1-based position in the dialogue; unique per session.
    pub seq: u32,
    pub role: Role,
    pub text: String,
    pub at: DateTime<Utc>,
    /// The agent was interrupted (barge-in) and `text` is the part the caller heard.
    #[serde(default)]
    pub interrupted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuid_and_simple_ids() {
        assert!(SessionId::parse("3f2c1a9e-0b7d-4c1e-9a55-0e1f2a3b4c5d").is_ok());
        assert!(SessionId::parse("abc_DEF-123").is_ok());
    }

    #[test]
    fn refuses_path_and_log_tricks() {
        assert_eq!(SessionId::parse(""), Err(SessionIdError::Empty));
        assert_eq!(SessionId::parse("../etc"), Err(SessionIdError::BadChar('.')));
        assert_eq!(SessionId::parse("a\nb"), Err(SessionIdError::BadChar('\n')));
        assert_eq!(SessionId::parse("a b"), Err(SessionIdError::BadChar(' ')));
        assert_eq!(
            SessionId::parse(&"x".repeat(65)),
            Err(SessionIdError::TooLong(65))
        );
        assert!(SessionId::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn deserialize_validates() {
        let ok: Result<SessionId, _> = serde_json::from_str("\"abc\"");
        assert!(ok.is_ok());
        let bad: Result<SessionId, _> = serde_json::from_str("\"a/b\"");
        assert!(bad.is_err());
    }
}
