//! The official Python peers (PyPI `livekit`, `livekit-agents`) as subprocesses, for every test
//! in the workspace that needs a peer we did not write. A peer prints one JSON object per line
//! on stdout (`{"event": ..., "t": wall-clock seconds, ...}`); those lines become events.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The workspace root (where `.venv-peers` and `tests/peers` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

/// The peer scripts: `<workspace>/tests/peers`.
pub fn peers_dir() -> PathBuf {
    workspace_root().join("tests/peers")
}

/// The interpreter of the peers venv: `$CONSULTANT_PEERS_PYTHON`, else
/// `<workspace>/.venv-peers/bin/python`. Missing = test failure, never a skip.
pub fn peers_python() -> PathBuf {
    let p = std::env::var_os("CONSULTANT_PEERS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-peers/bin/python"));
    assert!(
        p.exists(),
        "the Python peers interpreter {} does not exist: run scripts/install-test-deps.sh (or set CONSULTANT_PEERS_PYTHON)",
        p.display()
    );
    p
}

/// Tests that run libwebrtc peers take this so they do not run at the same time in one test
/// binary: several real-time audio peers at once on a 2-core machine starve each other.
pub async fn peers_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A Python peer process whose stdout JSON lines are collected as events.
pub struct PythonPeer {
    pub name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every event received so far, in order.
    pub seen: Vec<Value>,
    stderr_path: PathBuf,
}

impl PythonPeer {
    /// Runs `tests/peers/<script>` with `args` and `envs`; its stderr goes to
    /// `<dir>/<name>.stderr.log` (kept for post-mortems). Killed when dropped.
    pub fn spawn<S: AsRef<OsStr>>(name: &str, script: &str, args: &[S], envs: &[(&str, &str)], dir: &Path) -> PythonPeer {
        let stderr_path = dir.join(format!("{name}.stderr.log"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(peers_python())
            .arg(peers_dir().join(script))
            .args(args)
            .envs(envs.iter().copied())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::unbounded_channel();
        let pname = name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&l) {
                    Ok(v) => {
                        eprintln!("[{pname}] {l}");
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("[{pname}] (stdout) {l}"),
                }
            }
        });
        PythonPeer { name: name.into(), child, lines: rx, seen: Vec::new(), stderr_path }
    }

    /// The first event named `event` (already seen or coming); panics with the peer's stderr
    /// if it exits or stays silent for `timeout`.
    pub async fn event(&mut self, event: &str, timeout: Duration) -> Value {
        if let Some(v) = self.seen.iter().find(|v| v["event"] == event) {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if v["event"] == event {
                        return v;
                    }
                }
                Ok(None) => {
                    let status = self.child.wait().await;
                    panic!("peer {} exited ({status:?}) before {event:?}; stderr tail:\n{}", self.name, self.stderr_tail());
                }
                Err(_) => panic!("peer {} gave no {event:?} event in {timeout:?}; stderr tail:\n{}", self.name, self.stderr_tail()),
            }
        }
    }

    /// Every event so far (including those not yet read).
    pub fn events(&mut self) -> Vec<Value> {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
        self.seen.clone()
    }

    /// The `t` (wall-clock seconds) of the first / every event named `event`.
    pub fn event_time(&self, event: &str) -> Option<f64> {
        self.seen.iter().find(|v| v["event"] == event).and_then(|v| v["t"].as_f64())
    }

    pub fn event_times(&self, event: &str) -> Vec<f64> {
        self.seen.iter().filter(|v| v["event"] == event).filter_map(|v| v["t"].as_f64()).collect()
    }

    /// Waits for a successful exit (panics otherwise), then collects the remaining events.
    pub async fn wait_success(&mut self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => panic!("peer {} exited with {s}; stderr tail:\n{}", self.name, self.stderr_tail()),
            Ok(Err(e)) => panic!("peer {} wait failed: {e}", self.name),
            Err(_) => panic!("peer {} still running after {timeout:?}; stderr tail:\n{}", self.name, self.stderr_tail()),
        }
        // The stdout reader may still hold the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.events();
    }

    /// SIGTERM, then wait for the exit (kill after `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(timeout, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        self.events();
    }

    /// The last lines the peer wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
