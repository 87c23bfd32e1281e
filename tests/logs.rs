//! logs/agent.log as operators grep and ship it: no terminal escape codes after an actor's span
//! (ractor's `Actor{id=.. name=..}`) even while the console is coloured, and JSON lines that
//! parse with the markers kept as the message.

use std::path::Path;
use std::sync::{Arc, Mutex};

use consultant::config::LogFormat;
use consultant::logging::{output_layers, safe_filter, RotatingFile};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;

/// An actor that logs a marker from inside its span.
struct Marker;

#[ractor::async_trait]
impl Actor for Marker {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
        tracing::info!(session_id = "sess-1", "=== AGENT ENTRYPOINT CALLED ===");
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs through the worker's layers (console coloured as on a terminal) into `dir/agent.log`.
async fn log_an_actor(dir: &Path, format: LogFormat, name: &str) -> (String, String) {
    let file = RotatingFile::open(dir, "agent.log", 1_000_000, 1).unwrap();
    let console = Console::default();
    let sink = console.clone();
    let (filter, _handle) = reload::Layer::new(safe_filter("info").unwrap());
    let subscriber = tracing_subscriber::registry().with(filter).with(output_layers(format, true, move || sink.clone(), Mutex::new(file)));
    let _default = tracing::subscriber::set_default(subscriber);
    // The current-thread runtime runs the actor on this thread, under this subscriber.
    let (actor, handle) = Actor::spawn(Some(name.to_owned()), Marker, ()).await.unwrap();
    actor.stop(None);
    handle.await.unwrap();
    let console = String::from_utf8(console.0.lock().unwrap().clone()).unwrap();
    (std::fs::read_to_string(dir.join("agent.log")).unwrap(), console)
}

#[tokio::test(flavor = "current_thread")]
async fn the_text_file_holds_no_escape_codes_after_an_actor_span() {
    let dir = tempfile::tempdir().unwrap();
    let (file, console) = log_an_actor(dir.path(), LogFormat::Text, "consultation-text-1").await;
    assert!(console.contains('\x1b'), "the console is coloured here, so a shared field cache would leak: {console:?}");
    let line = file.lines().find(|l| l.contains("=== AGENT ENTRYPOINT CALLED ===")).unwrap_or_else(|| panic!("marker in {file:?}"));
    assert!(line.contains("Actor{id=") && line.contains("name=\"consultation-text-1\""), "{line}");
    assert!(!file.bytes().any(|b| b == 0x1b), "escape bytes in agent.log: {file:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn the_json_file_is_one_object_per_line_with_the_marker_as_message() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = log_an_actor(dir.path(), LogFormat::Json, "consultation-json-1").await;
    assert!(!file.bytes().any(|b| b == 0x1b), "{file:?}");
    let lines: Vec<serde_json::Value> = file.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let marker = lines.iter().find(|v| v["message"] == "=== AGENT ENTRYPOINT CALLED ===").unwrap_or_else(|| panic!("{file}"));
    assert_eq!(marker["level"], "INFO");
    assert_eq!(marker["session_id"], "sess-1");
    assert_eq!(marker["span"]["name"], "Actor");
    assert_eq!(marker["span"]["name"], marker["spans"][0]["name"]);
    assert!(marker["timestamp"].is_string());
}
