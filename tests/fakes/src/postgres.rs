//! A throwaway PostgreSQL server for tests and benches: `initdb` into a temporary directory
//! (trust auth, user `consultant`), `postgres` on a free 127.0.0.1 port with fsync off, a fresh
//! database per caller, stopped (and its directory removed) on drop.
//!
//! PostgreSQL refuses to run as root. As root, the directory is handed to `nobody` and the
//! server runs under `runuser -u nobody`; the test process itself connects over TCP.
//! A missing PostgreSQL is a failure, not a skip: install it with scripts/install-test-deps.sh.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Child,
    databases: AtomicUsize,
}

/// Where initdb and postgres are: $CONSULTANT_PG_BIN, else Debian's newest
/// /usr/lib/postgresql/<version>/bin, else `pg_config --bindir`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONSULTANT_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let from_pg_config = Command::new("pg_config").arg("--bindir").output().ok().filter(|o| o.status.success());
    match from_pg_config {
        Some(out) if Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("postgres").exists() => String::from_utf8_lossy(&out.stdout).trim().into(),
        _ => panic!(
            "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin, $CONSULTANT_PG_BIN or pg_config --bindir; \
             the PostgreSQL store tests need them: install the `postgresql` package (scripts/install-test-deps.sh)"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// `program args` as the server's user: `nobody` when we are root.
fn as_server_user(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl PgServer {
    /// Starts a server (fsync off: tests need no durability across power loss) and waits
    /// until it accepts connections. Panics with the reason.
    pub fn start() -> PgServer {
        Self::start_with_fsync(false)
    }

    /// As [`PgServer::start`]; `fsync = true` is PostgreSQL's production default (benches).
    pub fn start_with_fsync(fsync: bool) -> PgServer {
        let bin = bin_dir();
        let root = is_root();
        let dir = tempfile::Builder::new().prefix("consultant-pg-").tempdir().expect("temp dir");
        if root {
            let ok = Command::new("chown").arg("nobody").arg(dir.path()).status().is_ok_and(|s| s.success());
            assert!(ok, "chown nobody {} failed (running as root, the server runs as nobody)", dir.path().display());
        }
        let data = dir.path().join("data");
        let out = as_server_user(root, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "consultant", "--auth=trust", "-N", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("initdb").display()));
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
            let mut child = as_server_user(root, &bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(dir.path())
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", if fsync { "fsync=on" } else { "fsync=off" }, "-c", "max_connections=200"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("postgres starts");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile, or another failure: see the log
                }
                let ready = Command::new(bin.join("pg_isready")).args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]).status().is_ok_and(|s| s.success());
                if ready {
                    return PgServer { dir, bin, port, child, databases: AtomicUsize::new(0) };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        panic!("the test PostgreSQL server did not start; its log:\n{log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` (which may not exist yet).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://consultant@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "consultant", &name])
            .output()
            .expect("createdb runs");
        assert!(out.status.success(), "createdb {name} failed: {}", String::from_utf8_lossy(&out.stderr));
        self.url(&name)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGQUIT to the postmaster: immediate shutdown (nothing to keep; fsync is off).
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).ok().and_then(|s| s.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
