//! `consultant doctor [--timeout SECS]`: checks every dependency with the configured settings
//! and prints one verdict per line; the exit status is non-zero if any check failed.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::doctor::{self, Verdict};

pub async fn run(config_path: Option<&Path>, timeout: Duration) -> anyhow::Result<()> {
    // A missing --config file or a file that is not TOML at all is an error like anywhere
    // else; every other problem is a verdict, and the checks still run where they can.
    let resolved = Config::resolve_process(config_path)?;
    let secrets = resolved.config.as_ref().map(doctor::secrets).unwrap_or_default();
    let print = |verdict: &Verdict| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", verdict.render(&secrets));
        let _ = out.flush();
    };
    let config_verdict = doctor::config_verdict(&resolved);
    print(&config_verdict);
    let Some(config) = &resolved.config else {
        anyhow::bail!("the configuration could not be read, so nothing else was checked");
    };
    let verdicts = doctor::run_checks(config, timeout, print).await;
    let failed = std::iter::once(&config_verdict).chain(&verdicts).filter(|v| !v.ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", verdicts.len() + 1);
    }
    Ok(())
}
