//! Command-line interface. `--config` is global (before the subcommand).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use consultant_actors::SessionId;

#[derive(Parser, Debug)]
#[command(name = "consultant", version, about = "Voice AI consultant worker (LiveKit agent + Azure OpenAI Realtime)")]
pub struct Cli {
    /// Configuration file holding any subset of the settings (must exist when given). Without
    /// it: ./config.toml if present, else the built-in defaults; the environment applies on top.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the effective configuration and where each value came from (secrets as set/unset).
    Config {
        /// Only validate: list every problem and exit non-zero if there is any.
        #[arg(long)]
        check: bool,
    },
    /// Check every dependency with the configured settings (LiveKit, agent name, realtime,
    /// DeepSeek, storage, console): one verdict per line, non-zero exit if any fails.
    Doctor {
        /// Seconds each check may take before it counts as failed.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        timeout: u64,
    },
    /// Stored consultations: list, show, export.
    Sessions {
        #[command(subcommand)]
        action: SessionsCommand,
    },
    /// Attach to a running worker's debug console (interactive, or --once for scripts).
    Console(ConsoleArgs),
    /// Print a caller's join token for a consultation room as JSON {url, room, identity, token}.
    Token {
        #[arg(long)]
        session_id: SessionId,
        /// The caller's participant identity (A-Z a-z 0-9 _ - .).
        #[arg(long, default_value = "caller")]
        identity: String,
        /// Also dispatch our agent through the token (roomConfig.agents), for rooms that are
        /// not created with `room create`.
        #[arg(long)]
        dispatch: bool,
    },
    /// LiveKit rooms.
    Room {
        #[command(subcommand)]
        action: RoomCommand,
    },
    /// Serve the caller's page (web.listen): start a consultation and talk to it in a browser.
    Web,
    /// Run the worker in production: report FULL at the load threshold, drain on SIGTERM/SIGINT.
    Start,
    /// Run the worker for development: debug logs, always available, a signal stops at once.
    Dev,
    /// Run one whole consultation from a caller WAV, without LiveKit, against the configured
    /// realtime and DeepSeek endpoints (tests credentials end to end).
    Simulate {
        /// Caller audio: a WAV of any rate and channel count (resampled to 24 kHz mono).
        #[arg(long, value_name = "WAV")]
        caller: PathBuf,
        /// Session id (default: a new UUID).
        #[arg(long)]
        session_id: Option<SessionId>,
        /// Write the agent's voice (as heard) to this WAV.
        #[arg(long, value_name = "WAV")]
        out: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load test: N rooms with an explicit dispatch of the agent, one lightweight caller each
    /// replaying a WAV; reports connections, greetings, answered turns, voice-to-voice latency,
    /// agent audio quality and (with --worker-pid) the worker's CPU and memory per call.
    Loadtest(LoadtestCli),
}

#[derive(clap::Args, Debug)]
pub struct LoadtestCli {
    /// Number of rooms (one caller each).
    #[arg(long, value_name = "N")]
    pub rooms: usize,
    /// Spread the room starts over this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub ramp: f64,
    /// How long each call lasts once connected.
    #[arg(long, value_name = "SECS")]
    pub duration: f64,
    /// Caller audio: a WAV (any rate and channels) of phrases separated by silence; looped.
    #[arg(long, value_name = "WAV")]
    pub caller: PathBuf,
    /// Agent to dispatch (default: livekit.agent_name).
    #[arg(long)]
    pub agent_name: Option<String>,
    /// The worker's process id: sample its CPU and RSS from /proc.
    #[arg(long, value_name = "PID")]
    pub worker_pid: Option<u32>,
    /// A call whose room no agent joined within this long fails.
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    pub join_timeout: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    /// Console address (default: console.listen from the config, else ws://127.0.0.1:7700).
    #[arg(long)]
    pub url: Option<String>,
    /// Console token (prefer the environment variable; default: the config's token_file).
    #[arg(long, env = "CONSULTANT_CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one snapshot and exit: tree | worker | consultation ID | events.
    #[arg(long, num_args = 1..=2, value_names = ["VIEW", "ID"])]
    pub once: Option<Vec<String>>,
    /// With --once: print JSON.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Also trust this CA (PEM) for a wss:// console, e.g. the private CA that signed
    /// console.tls_cert; added to the built-in and system roots and tls.ca_file.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RoomCommand {
    /// Create the consultation room with an explicit dispatch of our agent and print the
    /// caller's join JSON (like `token`).
    Create {
        #[arg(long)]
        session_id: SessionId,
        #[arg(long, default_value = "caller")]
        identity: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List stored sessions, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one session: status, times, dialogue, anketa.
    Show {
        session_id: SessionId,
        #[arg(long)]
        json: bool,
    },
    /// Export one session as JSON or Markdown (to stdout).
    Export {
        session_id: SessionId,
        #[arg(long, value_enum, default_value = "json")]
        format: ExportFormat,
    },
    /// Copy every session, message and anketa snapshot from one store to another (sqlite://PATH
    /// or postgres://...). Idempotent: a second run copies nothing; a partial copy is completed.
    Migrate {
        #[arg(long, value_name = "URL")]
        from: String,
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    Json,
    Md,
}
