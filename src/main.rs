use std::process::ExitCode;

use clap::Parser;
use consultant::cli::{Cli, Command};
use consultant::commands;
use consultant::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The console client runs without a worker config (it only needs a URL and a token).
    if let Command::Console(args) = cli.command {
        return commands::console::run(cli.config.as_deref(), args).await;
    }
    if let Command::Config { check } = cli.command {
        return commands::config::run(cli.config.as_deref(), check);
    }
    // The doctor reports configuration problems as a verdict instead of stopping at them.
    if let Command::Doctor { timeout } = cli.command {
        return commands::doctor::run(cli.config.as_deref(), std::time::Duration::from_secs(timeout.max(1))).await;
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Sessions { action } => commands::sessions::run(&config, action).await,
        Command::Console(_) | Command::Config { .. } | Command::Doctor { .. } => unreachable!("handled before the config is loaded"),
        Command::Token { session_id, identity, dispatch } => commands::token::run(&config, &session_id, &identity, dispatch),
        Command::Room { action } => commands::room::run(&config, action).await,
        Command::Web => commands::web::run(&config).await,
        Command::Start => commands::worker::run(&config, consultant::livekit::WorkerMode::Start).await,
        Command::Dev => commands::worker::run(&config, consultant::livekit::WorkerMode::Dev).await,
        Command::Loadtest(args) => commands::loadtest::run(&config, args).await,
        Command::Simulate { caller, session_id, out, json } => {
            commands::simulate::run(&config, commands::simulate::SimulateArgs { caller, session_id, out, json }).await
        }
    }
}
