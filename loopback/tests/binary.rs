//! `cargo run -p livekit-loopback -- --port N --keys key:secret` prints its URL and serves
//! until interrupted.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn the_binary_prints_its_url_serves_and_stops_on_sigint() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut child = Command::new(env!("CARGO_BIN_EXE_livekit-loopback"))
        .args(["--port", "0", "--keys", "mykey:mysecret-that-is-long-enough"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    // It serves Twirp with the given keys (and refuses others).
    let rc = livekit_api::services::room::RoomClient::with_api_key(&url, "mykey", "mysecret-that-is-long-enough").with_failover(false);
    let room = rc.create_room("manual", Default::default()).await.unwrap();
    assert_eq!(room.name, "manual");
    let wrong = livekit_api::services::room::RoomClient::with_api_key(&url, "devkey", "secret").with_failover(false);
    assert!(wrong.list_rooms(vec![]).await.is_err());
    // SIGINT stops it cleanly.
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "binary did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
