//! `cargo run -p livekit-loopback -- --port 7880 --keys devkey:secret`
//! Serves a loopback LiveKit-compatible server on 127.0.0.1 until interrupted.

use clap::Parser;
use livekit_loopback::{LoopbackConfig, LoopbackServer};

#[derive(Parser, Debug)]
#[command(about = "Loopback LiveKit-compatible server for tests and manual trials")]
struct Args {
    /// TCP port on 127.0.0.1 (0 = ephemeral).
    #[arg(long, default_value_t = 7880)]
    port: u16,
    /// API key and secret, `key:secret` (the `livekit-server --dev` defaults).
    #[arg(long, default_value = "devkey:secret")]
    keys: String,
    /// Address to bind (keep 127.0.0.1 unless you know why).
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,livekit_loopback=info".into()),
        )
        .init();
    let args = Args::parse();
    let (key, secret) = args
        .keys
        .split_once(':')
        .filter(|(k, s)| !k.is_empty() && !s.is_empty())
        .ok_or("--keys must be key:secret")?;
    let cfg = LoopbackConfig {
        bind: std::net::SocketAddr::new(args.bind, args.port),
        max_logged_events: Some(10_000),
        ..LoopbackConfig::with_keys(key, secret)
    };
    let server = LoopbackServer::start(cfg).await?;
    println!("loopback LiveKit server: {} (api key {key})", server.url());
    tokio::signal::ctrl_c().await?;
    println!("interrupted, shutting down");
    server.shutdown().await;
    Ok(())
}
