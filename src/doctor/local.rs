//! The local checks: the SQLite path (writable, free space) and the console (address,
//! policy, token file). Blocking; nothing is left behind (a probe file is removed at once,
//! no database or token file is created).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::Verdict;
use crate::config::{ConsoleConfig, StorageConfig};
use crate::console::auth::inspect_token_file;
use crate::console::{tls, ConsoleError};

/// Below this the database may fail to grow, and WAL checkpoints need room too.
pub const MIN_FREE_BYTES: u64 = 100 * 1024 * 1024;

/// The nearest existing ancestor of `dir` (itself included): where a missing folder would
/// be created.
fn existing_ancestor(dir: &Path) -> PathBuf {
    let mut current = dir.to_path_buf();
    loop {
        if current.as_os_str().is_empty() {
            return PathBuf::from(".");
        }
        if std::fs::symlink_metadata(&current).is_ok() {
            return current;
        }
        if !current.pop() {
            return PathBuf::from(".");
        }
    }
}

/// Whether files can be created in `dir`, proven by creating and removing one (permission
/// bits say nothing for root, ACLs or read-only mounts).
fn probe_writable(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let probe = dir.join(format!(".consultant-doctor-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe).map_err(|e| format!("cannot create files in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Bytes available to this (unprivileged) process on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64, String> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| format!("cannot read the free space of {}: {e}", dir.display()))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes as f64 >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// An existing database: can this process take the write lock (a file that is no database,
/// or read-only, fails here)?
fn database_writable(path: &Path) -> Result<(), String> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| format!("cannot open {} for writing: {e}", path.display()))?;
    // A running worker holds the lock only for a group commit.
    let _ = conn.busy_timeout(std::time::Duration::from_secs(2));
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").map_err(|e| format!("cannot write to {}: {e}", path.display()))
}

/// `storage.path`: its folder writable (or creatable), the database writable if it exists,
/// and the free space.
pub fn storage(config: &StorageConfig) -> Verdict {
    const CHECK: &str = "storage";
    let path = match crate::store::DatabaseUrl::from_storage(config) {
        Ok(crate::store::DatabaseUrl::Sqlite(path)) => path,
        // The server is reached at start-up (migrations run there); its password never shows.
        Ok(pg @ crate::store::DatabaseUrl::Postgres(_)) => return Verdict::ok(CHECK, format!("PostgreSQL at {} (connection checked when the worker starts)", pg.masked())),
        Err(e) => return Verdict::fail(CHECK, e),
    };
    let path = &path;
    let fix = "set storage.path (CONSULTANT_DB_PATH) to a file in a folder this user can write";
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let existing = existing_ancestor(dir);
    if !existing.is_dir() {
        return Verdict::fail(CHECK, format!("the database folder {} cannot be created: {} is not a folder", dir.display(), existing.display())).hint(fix);
    }
    if let Err(e) = probe_writable(&existing) {
        return Verdict::fail(CHECK, format!("the database {} cannot be written: {e}", path.display())).hint(fix);
    }
    let state = if path.is_dir() {
        return Verdict::fail(CHECK, format!("{} is a folder, not a database file", path.display())).hint(fix);
    } else if path.exists() {
        if let Err(e) = database_writable(path) {
            return Verdict::fail(CHECK, e).hint("if it is not a database, move it away; else give this user write access to it").hint(fix);
        }
        "exists, writable".to_owned()
    } else if existing == dir {
        "will be created".to_owned()
    } else {
        format!("will be created with its folder under {}", existing.display())
    };
    let free = match free_bytes(&existing) {
        Ok(free) => free,
        Err(e) => return Verdict::fail(CHECK, e),
    };
    let space = format!("{free} bytes free ({})", human(free));
    if free < MIN_FREE_BYTES {
        return Verdict::fail(CHECK, format!("{} ({state}): only {space} on its file system", path.display()))
            .hint(format!("free at least {} there; a full disk stops messages from becoming durable", human(MIN_FREE_BYTES)));
    }
    Verdict::ok(CHECK, format!("{} ({state}), {space}", path.display()))
}

/// `console.*`: the address parses and is allowed (loopback, or TLS that loads), it can be
/// bound now, and the tokens come from the configuration or a token file that can be read
/// (or created on first start).
pub fn console(config: &ConsoleConfig) -> Verdict {
    const CHECK: &str = "console";
    if !config.enabled {
        return Verdict::ok(CHECK, "disabled (console.enabled = false)");
    }
    let Ok(addr) = config.listen.parse::<SocketAddr>() else {
        return Verdict::fail(CHECK, ConsoleError::Address(config.listen.clone()).to_string()).hint("set console.listen (CONSULTANT_CONSOLE_LISTEN) to IP:port");
    };
    let tls = match tls::acceptor(config.tls_cert.as_deref(), config.tls_key.as_deref()) {
        Ok(tls) => tls.is_some(),
        Err(e) => return Verdict::fail(CHECK, e.to_string()).hint("console.tls_cert / console.tls_key must be readable PEM files (a certificate chain and its key)"),
    };
    if !addr.ip().is_loopback() && !tls {
        return Verdict::fail(CHECK, ConsoleError::NeedsTls(addr).to_string());
    }
    if let Err(e) = std::net::TcpListener::bind(addr) {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "if a worker is running, it holds this address (expected); otherwise change console.listen"
        } else {
            "change console.listen (CONSULTANT_CONSOLE_LISTEN) to an address of this machine"
        };
        return Verdict::fail(CHECK, format!("cannot listen on {addr}: {e}")).hint(hint);
    }
    let tokens = match console_tokens(config) {
        Ok(tokens) => tokens,
        Err(verdict) => return verdict,
    };
    let policy = if tls { "TLS configured" } else { "loopback, no TLS needed" };
    Verdict::ok(CHECK, format!("{addr} can be bound ({policy}); {tokens}"))
}

fn console_tokens(config: &ConsoleConfig) -> Result<String, Verdict> {
    const CHECK: &str = "console";
    if !config.token.is_empty() && !config.operator_token.is_empty() {
        return Ok("tokens from the configuration".to_owned());
    }
    let path = &config.token_file;
    if path.exists() {
        let (read_only, operator) = inspect_token_file(path).map_err(|e| Verdict::fail(CHECK, e.to_string()).hint("fix it, or remove it to have new tokens generated on the next start"))?;
        let missing = (!read_only && config.token.is_empty()) || (!operator && config.operator_token.is_empty());
        if missing {
            // The worker adds the missing one: the file must be writable.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            probe_writable(dir).map_err(|e| Verdict::fail(CHECK, format!("token file {} lacks a token and {e}", path.display())))?;
            return Ok(format!("token file {} readable (a missing token is added on start)", path.display()));
        }
        return Ok(format!("token file {} readable", path.display()));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let existing = existing_ancestor(dir);
    probe_writable(&existing).map_err(|e| {
        Verdict::fail(CHECK, format!("token file {} cannot be created: {e}", path.display()))
            .hint("set console.token_file (CONSULTANT_CONSOLE_TOKEN_FILE) to a writable place, or give both tokens in the environment")
    })?;
    Ok(format!("token file {} will be generated on first start", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_at(path: PathBuf) -> StorageConfig {
        StorageConfig { url: Default::default(), path, synchronous: "normal".into(), lease_secs: 10, worker_id: String::new() }
    }

    #[test]
    fn a_database_under_a_file_or_of_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "x").unwrap();
        let v = storage(&storage_at(blocker.join("data/c.db")));
        assert!(!v.ok && v.detail.contains("is not a folder"), "{v:?}");
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
        let v = storage(&storage_at(garbage));
        assert!(!v.ok && v.detail.contains("not a database"), "{v:?}");
    }

    #[test]
    fn a_new_database_reports_the_free_space_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let v = storage(&storage_at(dir.path().join("new/c.db")));
        assert!(v.ok, "{v:?}");
        assert!(v.detail.contains("will be created with its folder") && v.detail.contains("bytes free"), "{v:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no folder or probe file left");
    }
}
