//! `consultant loadtest`: the load generator of `crate::loadtest` with the configured LiveKit.

use std::time::Duration;

use crate::cli::LoadtestCli;
use crate::config::{Config, Service};
use crate::livekit::LiveKitClient;
use crate::loadtest::{self, LoadtestArgs};
use crate::tls::ClientTls;

pub async fn run(config: &Config, cli: LoadtestCli) -> anyhow::Result<()> {
    config.require(&[Service::LiveKit])?;
    let secs = |name: &str, v: f64| -> anyhow::Result<Duration> {
        anyhow::ensure!(v.is_finite() && v >= 0.0, "--{name} must be a number of seconds, not {v}");
        Ok(Duration::from_secs_f64(v))
    };
    let tls = ClientTls::from_config(&config.tls)?;
    let client = LiveKitClient::new(&config.livekit, &tls)?;
    let args = LoadtestArgs {
        rooms: cli.rooms,
        ramp: secs("ramp", cli.ramp)?,
        duration: secs("duration", cli.duration)?,
        caller: cli.caller,
        agent_name: cli.agent_name,
        worker_pid: cli.worker_pid,
        join_timeout: secs("join-timeout", cli.join_timeout)?,
        json: cli.json,
    };
    loadtest::run(client, tls, args).await
}
