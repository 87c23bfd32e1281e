//! The console wire protocol: JSON text frames, each an envelope `{"v":1,"type":...}`.
//!
//! Client -> server: `auth`, `subscribe`, `snapshot`, `action`, `ping`.
//! Server -> client: `hello`, `snapshot`, `delta` (per topic, at most once a second),
//! `events` (pushed at once), `ack`, `result`, `error`, `pong`.
//!
//! The frames carry the telemetry board's own types (`consultant_actors::telemetry`): the
//! server serializes them and the client reads the same types back, one schema for both.

use std::collections::{BTreeMap, VecDeque};

use consultant_actors::telemetry::{ActorInfo, ConsultationView, TelemetryEvent, TelemetrySnapshot, WorkerView};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Protocol version carried in every frame as `v`.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest command a client may send (bytes); larger ones get an error and are ignored.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Hard WebSocket message limit: past it the connection is closed (1009).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Topics a client can subscribe to.
pub const TOPICS: [&str; 4] = ["worker", "tree", "consultations", "events"];

/// Operator actions (need the operator token).
pub const ACTIONS: [&str; 5] = ["drain", "end_consultation", "force_reconnect", "extract_now", "log_level"];

/// Error codes sent in `error` frames.
pub mod code {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    pub const BAD_JSON: &str = "bad_json";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const UNKNOWN_COMMAND: &str = "unknown_command";
    pub const BINARY_FRAME: &str = "binary_frame";
    pub const UNKNOWN_SESSION: &str = "unknown_session";
    pub const ACTION_FAILED: &str = "action_failed";
    pub const SLOW_CLIENT: &str = "slow_client";
    pub const TOO_MANY_CLIENTS: &str = "too_many_clients";
    pub const SHUTTING_DOWN: &str = "shutting_down";
}

/// A command from a client, after the envelope was checked.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Authenticate with the first message (for clients that cannot set headers).
    Auth { token: String },
    /// Snapshot now, then deltas and events for these topics (all when omitted).
    Subscribe {
        #[serde(default)]
        topics: Option<Vec<String>>,
    },
    /// One snapshot, no live updates.
    Snapshot,
    Action {
        #[serde(default)]
        id: Option<u64>,
        #[serde(flatten)]
        action: Action,
    },
    Ping {
        #[serde(default)]
        id: Option<u64>,
    },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Refuse new consultations (and report FULL to LiveKit).
    Drain,
    /// End a consultation properly (final anketa, status completed).
    EndConsultation { session_id: String },
    /// Reconnect the realtime session of a consultation (dialogue replayed).
    ForceReconnect { session_id: String },
    /// Run an anketa extraction now.
    ExtractNow { session_id: String },
    /// Change the log filter (e.g. `debug` or `consultant=debug,info`).
    LogLevel { filter: String },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::EndConsultation { .. } => "end_consultation",
            Action::ForceReconnect { .. } => "force_reconnect",
            Action::ExtractNow { .. } => "extract_now",
            Action::LogLevel { .. } => "log_level",
        }
    }

    /// What is done, for the audit log.
    pub fn describe(&self) -> String {
        match self {
            Action::Drain => "drain the worker".into(),
            Action::EndConsultation { session_id } => format!("end consultation {session_id}"),
            Action::ForceReconnect { session_id } => format!("force realtime reconnect of {session_id}"),
            Action::ExtractNow { session_id } => format!("extract the anketa of {session_id} now"),
            Action::LogLevel { filter } => format!("set log level to `{filter}`"),
        }
    }
}

/// Why a client frame could not be understood: a code and a message saying what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    pub id: Option<u64>,
}

/// Checks the envelope and decodes a command, with an error that says what was wrong.
pub fn parse_command(text: &str) -> Result<Command, FrameError> {
    let err = |code, message: String| FrameError { code, message, id: None };
    if text.len() > MAX_COMMAND_BYTES {
        return Err(err(
            code::FRAME_TOO_LARGE,
            format!("command of {} bytes exceeds the {MAX_COMMAND_BYTES}-byte limit; send smaller commands", text.len()),
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        err(code::BAD_JSON, format!("not valid JSON ({e}); send an object like {{\"v\":1,\"type\":\"subscribe\"}}"))
    })?;
    let Value::Object(map) = &value else {
        return Err(err(code::BAD_REQUEST, "a command must be a JSON object with \"v\" and \"type\"".into()));
    };
    let id = map.get("id").and_then(Value::as_u64);
    match map.get("v") {
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(FrameError {
                code: code::UNSUPPORTED_VERSION,
                message: format!("protocol version {v} is not supported; this server speaks v={PROTOCOL_VERSION}"),
                id,
            })
        }
        None => {
            return Err(FrameError {
                code: code::BAD_REQUEST,
                message: format!("missing \"v\": every command carries the protocol version (\"v\":{PROTOCOL_VERSION})"),
                id,
            })
        }
    }
    let Some(kind) = map.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Err(FrameError { code: code::BAD_REQUEST, message: "missing \"type\" (a string)".into(), id });
    };
    const KNOWN: [&str; 5] = ["auth", "subscribe", "snapshot", "action", "ping"];
    if !KNOWN.contains(&kind.as_str()) {
        return Err(FrameError {
            code: code::UNKNOWN_COMMAND,
            message: format!("unknown command `{kind}`; known commands: {}", KNOWN.join(", ")),
            id,
        });
    }
    if kind == "action" {
        match map.get("action").and_then(Value::as_str) {
            Some(a) if ACTIONS.contains(&a) => {}
            Some(a) => {
                return Err(FrameError {
                    code: code::UNKNOWN_COMMAND,
                    message: format!("unknown action `{a}`; known actions: {}", ACTIONS.join(", ")),
                    id,
                })
            }
            None => {
                return Err(FrameError {
                    code: code::BAD_REQUEST,
                    message: format!("an action command needs \"action\": one of {}", ACTIONS.join(", ")),
                    id,
                })
            }
        }
    }
    serde_json::from_value(value).map_err(|e| FrameError {
        code: code::BAD_REQUEST,
        message: format!("malformed `{kind}` command: {e}"),
        id,
    })
}

/// Serializes a command for the wire (the client's side).
pub fn encode_command(command: &Command) -> String {
    let mut value = serde_json::to_value(command).expect("commands serialize");
    if let Value::Object(map) = &mut value {
        map.insert("v".into(), Value::from(PROTOCOL_VERSION));
    }
    value.to_string()
}

/// Builds a server frame: `{"v":1,"type":<kind>, ...fields}`.
pub fn frame(kind: &str, fields: Value) -> String {
    let mut map = serde_json::Map::new();
    map.insert("v".into(), Value::from(PROTOCOL_VERSION));
    map.insert("type".into(), Value::from(kind));
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    Value::Object(map).to_string()
}

pub fn error_frame(error: &FrameError) -> String {
    frame("error", serde_json::json!({ "code": error.code, "message": error.message, "id": error.id }))
}

// ---------------------------------------------------------------------------------------------
// Frames the server sends. Their contents are the telemetry board's own types
// (`consultant_actors::telemetry`), read back as they were written.
// ---------------------------------------------------------------------------------------------

/// The console server's own counters.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ConsoleStats {
    pub clients: usize,
    pub max_clients: usize,
    pub connections_total: u64,
    pub auth_failures: u64,
    pub rejected_full: u64,
    pub slow_clients_dropped: u64,
    pub bad_frames: u64,
    pub events_lost: u64,
    pub actions: u64,
}

/// A `snapshot` frame: the board, with the console's counters beside its fields.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Snapshot {
    #[serde(flatten)]
    pub board: TelemetrySnapshot,
    #[serde(default)]
    pub console: ConsoleStats,
}

/// A frame from the server, as the client reads it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        scope: String,
        #[serde(default)]
        server: String,
        #[serde(default)]
        delta_interval_ms: u64,
    },
    Snapshot(Box<Snapshot>),
    Delta {
        topic: String,
        /// `ActorInfo` (tree) or `ConsultationView` (consultations) items.
        #[serde(default)]
        upsert: Vec<Value>,
        #[serde(default)]
        remove: Vec<String>,
        #[serde(default)]
        worker: Option<WorkerView>,
        #[serde(default)]
        console: Option<ConsoleStats>,
    },
    Events {
        events: Vec<TelemetryEvent>,
        #[serde(default)]
        lost: u64,
    },
    Ack {
        #[serde(default)]
        id: Option<u64>,
        action: String,
        message: String,
    },
    Result {
        #[serde(default)]
        id: Option<u64>,
        action: String,
        ok: bool,
        message: String,
    },
    Error {
        code: String,
        message: String,
        #[serde(default)]
        id: Option<u64>,
    },
    Pong {
        #[serde(default)]
        id: Option<u64>,
    },
}

/// The client's picture of the worker: a snapshot with deltas and events applied.
#[derive(Clone, Debug, Default)]
pub struct ConsoleModel {
    pub worker: WorkerView,
    /// By actor path.
    pub actors: BTreeMap<String, ActorInfo>,
    /// By session id.
    pub consultations: BTreeMap<String, ConsultationView>,
    pub events: VecDeque<TelemetryEvent>,
    pub events_dropped: u64,
    pub console: ConsoleStats,
    pub deltas_applied: u64,
}

/// Events the client keeps for its log view.
pub const MODEL_EVENTS: usize = 500;

impl ConsoleModel {
    /// Applies a frame; returns false for frames that carry no state.
    pub fn apply(&mut self, frame: &ServerFrame) -> bool {
        match frame {
            ServerFrame::Snapshot(s) => {
                let board = &s.board;
                self.worker = board.worker.clone();
                self.actors = board.actors.iter().map(|a| (a.path.clone(), a.clone())).collect();
                self.consultations = board.consultations.iter().map(|c| (c.session_id.to_string(), c.clone())).collect();
                self.events = board.events.iter().cloned().collect();
                self.trim_events();
                self.events_dropped = board.events_dropped;
                self.console = s.console.clone();
            }
            ServerFrame::Delta { topic, upsert, remove, worker, console } => {
                self.deltas_applied += 1;
                match topic.as_str() {
                    "worker" => {
                        if let Some(w) = worker {
                            self.worker = w.clone();
                        }
                        if let Some(c) = console {
                            self.console = c.clone();
                        }
                    }
                    "tree" => {
                        for path in remove {
                            self.actors.remove(path);
                        }
                        for a in upsert.iter().filter_map(|v| ActorInfo::deserialize(v).ok()) {
                            self.actors.insert(a.path.clone(), a);
                        }
                    }
                    "consultations" => {
                        for id in remove {
                            self.consultations.remove(id);
                        }
                        for c in upsert.iter().filter_map(|v| ConsultationView::deserialize(v).ok()) {
                            self.consultations.insert(c.session_id.to_string(), c);
                        }
                    }
                    _ => return false,
                }
            }
            ServerFrame::Events { events, lost } => {
                let last = self.events.back().map(|e| e.seq).unwrap_or(0);
                self.events.extend(events.iter().filter(|e| e.seq > last).cloned());
                self.events_dropped += lost;
                self.trim_events();
            }
            _ => return false,
        }
        true
    }

    fn trim_events(&mut self) {
        while self.events.len() > MODEL_EVENTS {
            self.events.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_with_the_version() {
        let cmd = Command::Action { id: Some(3), action: Action::EndConsultation { session_id: "abc".into() } };
        let text = encode_command(&cmd);
        assert!(text.contains("\"v\":1") && text.contains("end_consultation"), "{text}");
        assert_eq!(parse_command(&text).unwrap(), cmd);
        assert_eq!(parse_command(r#"{"v":1,"type":"snapshot"}"#).unwrap(), Command::Snapshot);
    }

    #[test]
    fn bad_frames_get_errors_that_say_what_to_do() {
        let e = parse_command("{nope").unwrap_err();
        assert_eq!(e.code, code::BAD_JSON);
        let e = parse_command(r#"{"v":1,"type":"reboot"}"#).unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_COMMAND);
        assert!(e.message.contains("reboot") && e.message.contains("subscribe"));
        let e = parse_command(r#"{"v":2,"type":"ping"}"#).unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_VERSION);
        let e = parse_command(r#"{"v":1,"type":"action","id":9,"action":"format_disk"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (code::UNKNOWN_COMMAND, Some(9)));
        let e = parse_command(r#"{"v":1,"type":"action","action":"end_consultation"}"#).unwrap_err();
        assert_eq!(e.code, code::BAD_REQUEST);
        assert!(e.message.contains("session_id"), "{}", e.message);
        let big = format!(r#"{{"v":1,"type":"ping","pad":"{}"}}"#, "x".repeat(MAX_COMMAND_BYTES));
        assert_eq!(parse_command(&big).unwrap_err().code, code::FRAME_TOO_LARGE);
    }
}
