//! The console off the loopback: the server refuses a non-loopback address without TLS; with
//! a certificate a test CA signed it serves wss://, and the real console client (the library
//! and `consultant console --ca-cert`) gets in trusting that CA and is refused, with the
//! reason, without it.

#[path = "tls_support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use consultant::config::ConsoleConfig;
use consultant::console::client::{ClientError, ConsoleClient};
use consultant::console::{serve, ConsoleControl, ConsoleError, ConsoleServer};
use consultant::secret::Secret;
use consultant_actors::consultation::Ports;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{AnketaField, ConsultationSettings, FieldKind, VoiceHandler};
use consultant_fakes::memory::{CountingExtractor, MemoryStore, ScriptedRealtime};
use support::{assert_untrusted, untrusting, Pki};

const READ_TOKEN: &str = "ro-tls-test-token-0123456789";
const OPERATOR_TOKEN: &str = "op-tls-test-token-9876543210";

async fn handler() -> VoiceHandler {
    let fields = vec![AnketaField { name: "name".into(), description: "Имя клиента".into(), kind: FieldKind::Text, required: true }];
    let ports = Ports { connector: ScriptedRealtime::new(), store: Arc::new(MemoryStore::default()), extractor: CountingExtractor::new() };
    VoiceHandler::start(Arc::new(ConsultationSettings::for_tests(fields)), ports, Telemetry::new()).await.unwrap()
}

fn console_config(dir: &tempfile::TempDir, listen: &str, pki: Option<&Pki>) -> ConsoleConfig {
    ConsoleConfig {
        enabled: true,
        listen: listen.into(),
        token: Secret::new(READ_TOKEN),
        operator_token: Secret::new(OPERATOR_TOKEN),
        token_file: dir.path().join("console-tokens.toml"),
        tls_cert: pki.map(|p| p.cert_file.clone()),
        tls_key: pki.map(|p| p.key_file.clone()),
        max_clients: 4,
    }
}

async fn start(handler: &VoiceHandler, config: &ConsoleConfig) -> Result<ConsoleServer, ConsoleError> {
    serve(config, ConsoleControl::new(handler, None, Arc::new(|| {}))).await
}

#[tokio::test]
async fn a_non_loopback_console_without_tls_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let handler = handler().await;
    let err = start(&handler, &console_config(&dir, "0.0.0.0:0", None)).await.err().expect("refused");
    assert!(matches!(err, ConsoleError::NeedsTls(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("0.0.0.0") && text.contains("console.tls_cert") && text.contains("console.tls_key"), "{text}");
    assert!(!dir.path().join("console-tokens.toml").exists(), "refused before anything was written");
    handler.shutdown().await;
}

/// The console on every address with the test certificate, reached on 127.0.0.1 (a name its
/// certificate carries).
async fn tls_console(handler: &VoiceHandler, dir: &tempfile::TempDir, pki: &Pki) -> (ConsoleServer, SocketAddr) {
    let server = start(handler, &console_config(dir, "0.0.0.0:0", Some(pki))).await.expect("off the loopback with TLS it starts");
    assert!(server.url().starts_with("wss://"), "{}", server.url());
    let at = SocketAddr::from(([127, 0, 0, 1], server.local_addr().port()));
    (server, at)
}

#[tokio::test]
async fn the_console_client_trusts_the_ca_it_is_given_and_refuses_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let handler = handler().await;
    let (server, at) = tls_console(&handler, &dir, &pki).await;
    let url = format!("wss://{at}");

    let refused = ConsoleClient::connect_with_tls(&url, READ_TOKEN, &untrusting()).await.err().expect("an untrusted certificate is refused");
    assert!(matches!(refused, ClientError::Tls(_)), "{refused}");
    assert_untrusted(&refused.to_string(), "wss", at);
    assert!(refused.to_string().contains("--ca-cert"), "{refused}");

    let mut client = ConsoleClient::connect_with_tls(&url, READ_TOKEN, &pki.trusting()).await.expect("trusted with the test CA");
    assert_eq!(client.scope(), "read-only");
    client.snapshot().await.expect("a snapshot over wss");
    client.close().await;
    server.shutdown().await;
    handler.shutdown().await;
}

async fn console_cli(dir: &tempfile::TempDir, url: &str, extra: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_consultant"))
        .args(["console", "--url", url, "--token", READ_TOKEN, "--once", "worker", "--json"])
        .args(extra)
        .current_dir(dir.path())
        // Only --ca-cert may make the test CA trusted.
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env_remove("CONSULTANT_TLS_CA_FILE")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn consultant_console_ca_cert_trusts_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let handler = handler().await;
    let (server, at) = tls_console(&handler, &dir, &pki).await;
    let url = format!("wss://{at}");
    let cwd = tempfile::tempdir().unwrap();

    let refused = console_cli(&cwd, &url, &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "refused without --ca-cert");
    assert_untrusted(&stderr, "wss", at);

    let ca = pki.ca_file.display().to_string();
    let trusted = console_cli(&cwd, &url, &["--ca-cert", &ca]).await;
    let stdout = String::from_utf8_lossy(&trusted.stdout);
    assert!(trusted.status.success(), "works with --ca-cert: {}", String::from_utf8_lossy(&trusted.stderr));
    let view: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert!(view.get("worker").is_some() && view.get("console").is_some(), "{stdout}");

    let missing = console_cli(&cwd, &url, &["--ca-cert", "no-such-ca.pem"]).await;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("--ca-cert names the CA file no-such-ca.pem"), "{stderr}");
    server.shutdown().await;
    handler.shutdown().await;
}
