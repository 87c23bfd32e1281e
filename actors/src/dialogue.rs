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

/// Who spoke a dialogue message, or which side of a function call it is. Tool entries are
/// part of the history (stored, replayed to a new realtime session) but were never spoken:
/// transcripts, the extraction prompt and the heard dialogue leave them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    /// The model called one of our tools; the text is a [`ToolCall`] as JSON.
    ToolCall,
    /// What we answered to a tool call; the text is a [`ToolResult`] as JSON.
    ToolResult,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::ToolCall => "tool_call",
            Role::ToolResult => "tool_result",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool_call" => Some(Role::ToolCall),
            "tool_result" => Some(Role::ToolResult),
            _ => None,
        }
    }

    /// Words someone said (and the caller heard), as opposed to a tool entry.
    pub fn is_spoken(self) -> bool {
        matches!(self, Role::User | Role::Assistant)
    }
}

/// A function call the model made (`Role::ToolCall` entries hold it as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub call_id: String,
    pub name: String,
    /// The arguments as the model sent them (a JSON text).
    pub arguments: String,
}

/// Our answer to a call (`Role::ToolResult` entries hold it as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call_id: String,
    /// A JSON text, as `function_call_output` carries it.
    pub output: String,
}

/// The tool entry a dialogue message holds, if it is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEntry {
    Call(ToolCall),
    Result(ToolResult),
}

impl ToolEntry {
    pub fn role(&self) -> Role {
        match self {
            ToolEntry::Call(_) => Role::ToolCall,
            ToolEntry::Result(_) => Role::ToolResult,
        }
    }

    pub fn to_text(&self) -> String {
        match self {
            ToolEntry::Call(c) => serde_json::to_string(c),
            ToolEntry::Result(r) => serde_json::to_string(r),
        }
        .unwrap_or_default()
    }
}

impl DialogueMessage {
    /// The tool call or result this entry holds (None for spoken messages or unreadable text).
    pub fn tool(&self) -> Option<ToolEntry> {
        match self.role {
            Role::ToolCall => serde_json::from_str(&self.text).ok().map(ToolEntry::Call),
            Role::ToolResult => serde_json::from_str(&self.text).ok().map(ToolEntry::Result),
            Role::User | Role::Assistant => None,
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
    fn tool_entries_round_trip_through_their_text() {
        let call = ToolEntry::Call(ToolCall { call_id: "call_1".into(), name: "end_consultation".into(), arguments: r#"{"reason":"bye"}"#.into() });
        let m = DialogueMessage { seq: 3, role: call.role(), text: call.to_text(), at: Utc::now(), interrupted: false };
        assert_eq!(m.tool(), Some(call));
        assert!(!m.role.is_spoken());
        assert_eq!(Role::parse(m.role.as_str()), Some(Role::ToolCall));
        assert_eq!(serde_json::to_string(&Role::ToolResult).unwrap(), "\"tool_result\"");
    }

    #[test]
    fn deserialize_validates() {
        let ok: Result<SessionId, _> = serde_json::from_str("\"abc\"");
        assert!(ok.is_ok());
        let bad: Result<SessionId, _> = serde_json::from_str("\"a/b\"");
        assert!(bad.is_err());
    }
}
