//! Logging: tracing to the console and to `logs/agent.log` (non-blocking writer thread).
//!
//! The file never holds terminal escape codes; it is text or, for log shippers, JSON lines
//! (`logging.format`). The console is coloured only on a terminal and never with `NO_COLOR`.
//!
//! The file is rotated by size with copy + truncate: `agent.log` keeps its inode, so
//! `tail -f logs/agent.log` keeps working across rotations, and at most `max_files` older
//! copies are kept, which bounds disk use. A full disk loses log lines, never a consultation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LoggingConfig};

/// A size-bounded log file: `agent.log`, then `agent.log.1` .. `agent.log.N`.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    max_files: usize,
}

impl RotatingFile {
    pub fn open(dir: &Path, name: &str, max_bytes: u64, max_files: usize) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Self { path, file, written, max_bytes, max_files })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        for n in (1..self.max_files).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::copy(&self.path, self.rotated(1))?;
        // Same inode, length 0: `tail -f` sees the truncation and goes on reading.
        self.file.set_len(0)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.max_bytes && self.written > 0 {
            if let Err(e) = self.rotate() {
                // Keep logging into the current file rather than losing lines.
                eprintln!("log rotation of {} failed: {e}", self.path.display());
            }
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Transport crates print raw requests, Authorization headers and tokens included, at trace
/// level (tungstenite logs the whole handshake request). These caps are appended to every
/// filter, after the operator's, so no RUST_LOG or console setting can turn that output on.
const SECRET_SAFE_CAPS: &str =
    "tungstenite=debug,tokio_tungstenite=debug,hyper=info,hyper_util=info,h2=info,reqwest=debug,rustls=info,axum=debug";

/// Builds a filter from an operator's spec with the secret-safe caps applied.
pub fn safe_filter(spec: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(spec).map_err(|e| format!("invalid log filter `{spec}`: {e}"))?;
    EnvFilter::try_new(format!("{spec},{SECRET_SAFE_CAPS}")).map_err(|e| format!("invalid log filter `{spec}`: {e}"))
}

/// Changes the log level at run time (the console's "log level" action).
#[derive(Clone)]
pub struct LevelControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LevelControl {
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = safe_filter(filter)?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Keeps the file writer alive; drop it last so buffered lines are written.
pub struct LogGuard {
    _file: Option<WorkerGuard>,
    pub level: LevelControl,
}

/// The file's own span-field formatter. tracing-subscriber keeps a span's formatted fields
/// once per formatter type; sharing the console's type, the file got the console's coloured copy.
#[derive(Default)]
pub struct FileFields(DefaultFields);

impl<'writer> FormatFields<'writer> for FileFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

/// The registry with the reloadable filter, which the output layers sit on.
pub type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The console layer (coloured if `colour`) and the file layer (plain text or JSON lines).
pub fn output_layers<C, F>(format: LogFormat, colour: bool, console: C, file: F) -> Vec<Box<dyn Layer<Filtered> + Send + Sync>>
where
    C: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    F: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let console = fmt::layer().with_writer(console).with_target(false).with_ansi(colour).boxed();
    let file = match format {
        // The markers stay the `message`, at the top level where shippers look for it.
        LogFormat::Json => fmt::layer().json().flatten_event(true).with_writer(file).boxed(),
        LogFormat::Text => fmt::layer().fmt_fields(FileFields::default()).with_ansi(false).with_writer(file).boxed(),
    };
    vec![console, file]
}

/// Colour on the console: only on a terminal, and not when NO_COLOR is set (no-color.org).
pub fn console_colour() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level; `force_debug`
/// is `dev` mode.
pub fn init(config: &LoggingConfig, force_debug: bool) -> io::Result<LogGuard> {
    init_with(config, force_debug, console_colour())
}

/// [`init`] with the console's colour decided by the caller.
pub fn init_with(config: &LoggingConfig, force_debug: bool, colour: bool) -> io::Result<LogGuard> {
    let level = if force_debug { "debug".to_owned() } else { config.level.clone() };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| safe_filter(&v).ok())
        .or_else(|| safe_filter(&level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let file = RotatingFile::open(&config.dir, &config.file, config.max_file_bytes, config.max_files)?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(file);
    tracing_subscriber::registry()
        .with(filter)
        .with(output_layers(config.format(), colour, io::stderr, writer))
        .try_init()
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(LogGuard { _file: Some(guard), level: LevelControl { handle } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn no_filter_can_enable_transport_trace_output() {
        for spec in ["trace", "tungstenite=trace", "trace,tungstenite=trace,h2=trace"] {
            let capture = Capture::default();
            let writer = capture.clone();
            let subscriber = tracing_subscriber::registry()
                .with(safe_filter(spec).unwrap())
                .with(fmt::layer().with_writer(move || writer.clone()));
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(target: "tungstenite::handshake::client", "Request: Authorization: Bearer eyJsecret");
                tracing::trace!(target: "h2::frame", "headers api-key: sk-secret");
                tracing::trace!(target: "consultant::room", "our own trace line");
            });
            let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
            assert!(!out.contains("secret"), "{spec}: {out}");
            if spec.starts_with("trace") {
                assert!(out.contains("our own trace line"), "{spec}: {out}");
            }
        }
        assert!(safe_filter("not a [filter").is_err());
    }

    #[test]
    fn rotation_bounds_files_and_keeps_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RotatingFile::open(dir.path(), "agent.log", 100, 2).unwrap();
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(dir.path().join("agent.log")).unwrap().ino()
        };
        for i in 0..50 {
            writeln!(f, "line {i:04} padding padding").unwrap();
        }
        f.flush().unwrap();
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec!["agent.log", "agent.log.1", "agent.log.2"]);
        let current = fs::read_to_string(dir.path().join("agent.log")).unwrap();
        assert!(current.len() <= 100 && current.contains("line 0049"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(fs::metadata(dir.path().join("agent.log")).unwrap().ino(), inode);
        }
    }
}
