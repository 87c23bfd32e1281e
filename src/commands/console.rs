//! `consultant console`: attach to a running worker's debug console, interactively (TUI) or
//! once for scripts (`--once tree|worker|consultation ID|events [--json]`).

use std::path::Path;

use anyhow::{bail, Context as _};
use chrono::SecondsFormat;
use serde_json::json;

use crate::cli::ConsoleArgs;
use crate::config::Config;
use crate::console::auth::client_token_from_file;
use crate::console::client::ConsoleClient;
use crate::console::protocol::Snapshot;
use crate::console::tui;
use crate::tls::{CaFile, ClientTls};

/// Where the console listens when neither --url nor a config says otherwise.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:7700";

/// What `--once` prints.
#[derive(Debug, PartialEq)]
enum Once {
    Tree,
    Worker,
    Consultation(String),
    Events,
}

fn parse_once(words: &[String]) -> anyhow::Result<Once> {
    let usage = "--once takes: tree | worker | consultation ID | events";
    match words {
        [w] if w == "tree" => Ok(Once::Tree),
        [w] if w == "worker" => Ok(Once::Worker),
        [w] if w == "events" => Ok(Once::Events),
        [w, id] if w == "consultation" => Ok(Once::Consultation(id.clone())),
        [w] if w == "consultation" => bail!("--once consultation needs the session id: --once consultation ID"),
        _ => bail!("{usage} (got `{}`)", words.join(" ")),
    }
}

pub async fn run(config_path: Option<&Path>, args: ConsoleArgs) -> anyhow::Result<()> {
    let once = args.once.as_deref().map(parse_once).transpose()?;
    // The config is optional here, even a named one: it only supplies the address and the
    // token file, and a console may run where the worker's file is not.
    let config = match config_path {
        Some(path) if !path.exists() => None,
        path => Some(Config::load(path)?),
    };
    let url = match (&args.url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => {
            let scheme = if c.console.tls_cert.is_some() { "wss" } else { "ws" };
            format!("{scheme}://{}", c.console.listen)
        }
        (None, None) => DEFAULT_URL.to_owned(),
    };
    let token = match (&args.token, &config) {
        (Some(t), _) if !t.trim().is_empty() => t.trim().to_owned(),
        (_, Some(c)) => client_token_from_file(&c.console.token_file)
            .map(|s| s.expose().to_owned())
            .with_context(|| format!("no console token: pass --token, set CONSULTANT_CONSOLE_TOKEN, or make {} readable", c.console.token_file.display()))?,
        _ => bail!("no console token: pass --token or set CONSULTANT_CONSOLE_TOKEN (the worker writes its tokens to console.token_file)"),
    };
    let tls = trust(config.as_ref(), args.ca_cert.as_deref())?;
    let client = ConsoleClient::connect_with_tls(&url, &token, &tls).await?;
    match once {
        Some(view) => {
            let mut client = client;
            let snapshot = client.snapshot().await?;
            client.close().await;
            print_once(&view, &snapshot, args.json)
        }
        None => tui::run(url, client).await,
    }
}

/// The trust policy of `wss://`: the config's (tls.ca_file) plus `--ca-cert`.
fn trust(config: Option<&Config>, ca_cert: Option<&Path>) -> anyhow::Result<ClientTls> {
    let mut files = config.map(|c| c.tls.ca_files()).unwrap_or_default();
    files.extend(ca_cert.map(|path| CaFile { origin: "--ca-cert", path }));
    Ok(ClientTls::with_ca_files(&files)?)
}

fn print_once(view: &Once, snapshot: &Snapshot, as_json: bool) -> anyhow::Result<()> {
    let s = &snapshot.board;
    let value = match view {
        Once::Tree => json!(s.actors),
        Once::Worker => json!({ "worker": s.worker, "console": snapshot.console }),
        Once::Events => json!({ "events": s.events, "events_dropped": s.events_dropped }),
        Once::Consultation(id) => {
            let Some(c) = s.consultations.iter().find(|c| c.session_id.as_str() == id) else {
                let running: Vec<&str> = s.consultations.iter().map(|c| c.session_id.as_str()).collect();
                bail!("no running consultation `{id}` on this worker; running: {}", if running.is_empty() { "none".into() } else { running.join(", ") });
            };
            let prefix = format!("worker/consultation/{id}");
            let actors: Vec<_> = s.actors.iter().filter(|a| a.path == prefix || a.path.starts_with(&format!("{prefix}/"))).collect();
            json!({ "consultation": c, "actors": actors })
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match view {
        Once::Tree => {
            for a in &s.actors {
                let depth = a.path.matches('/').count().saturating_sub(1).min(2);
                println!(
                    "{}{:<50} {:<10} restarts {}/{}  {}",
                    "  ".repeat(depth),
                    a.path,
                    a.status,
                    a.restarts_in_window,
                    a.total_restarts,
                    a.last_failure.as_deref().unwrap_or("")
                );
            }
        }
        Once::Events => {
            for e in &s.events {
                // As the timestamp reads on the wire.
                let at = e.at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
                println!("{at} {:<10} {} {}", e.kind, e.path, e.message);
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&value)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_views_parse_with_clear_errors() {
        let w = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(parse_once(&w("tree")).unwrap(), Once::Tree);
        assert_eq!(parse_once(&w("consultation abc")).unwrap(), Once::Consultation("abc".into()));
        assert!(parse_once(&w("consultation")).unwrap_err().to_string().contains("session id"));
        assert!(parse_once(&w("actors")).unwrap_err().to_string().contains("tree | worker"));
    }
}
