//! `consultant config [--check]`: the effective configuration with each value's source, or
//! only the verdict; non-zero exit when anything is wrong, with every problem listed.

use std::path::Path;

use crate::config::{report, Config, ConfigError, Problem, Service};

pub fn run(path: Option<&Path>, check: bool) -> anyhow::Result<()> {
    let resolved = Config::resolve_process(path)?;
    let mut problems = resolved.problems.clone();
    if let Some(config) = &resolved.config {
        // `start`/`dev` need all three services; list their secrets too.
        let missing = config.missing_secrets(&[Service::LiveKit, Service::Realtime, Service::DeepSeek]);
        if !missing.is_empty() {
            problems.push(Problem::MissingSecrets(missing));
        }
    }
    if !check {
        print!("{}", report::render(&resolved));
    }
    if problems.is_empty() {
        if check {
            let from = resolved.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into());
            println!("configuration is valid ({from} and the environment)");
        }
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems).into())
    }
}
