//! Every outgoing TLS client against a server whose certificate a test CA signed: refused
//! without the CA (the error names the host and the certificate problem), working with
//! `tls.ca_file` naming it. The servers are the real fakes and the loopback LiveKit server
//! behind a TLS front, so "working" is the protocol's first step done by the real client code:
//! a configured realtime session, an extracted anketa, a created room, a signalling join, a
//! registered worker.

#[path = "tls_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consultant::config::{Config, LivekitConfig};
use consultant::deepseek::{DeepSeekConfig, DeepSeekError, DeepSeekExtractor};
use consultant::livekit::link::{spawn_link, AcceptedJob, JobRunner, LinkArgs, LinkSettings};
use consultant::livekit::{LiveKitClient, WorkerMode};
use consultant::process_stats::ProcessSampler;
use consultant::realtime::{AzureRealtimeClient, RealtimeConfig, RealtimeFlavour};
use consultant::room::signal::{self, Response};
use consultant::secret::Secret;
use consultant::tls::ClientTls;
use consultant_actors::anketa::Anketa;
use consultant_actors::ports::{RealtimeConnector, RealtimeEvent, RealtimeFailure, RealtimeSetup};
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{AnketaField, DialogueMessage, FieldKind, Role, SessionId};
use consultant_fakes::deepseek::FakeDeepSeek;
use consultant_fakes::realtime::{FakeFlavour, FakeRealtime, FakeRealtimeOptions};
use livekit_loopback::{LoopbackConfig, LoopbackServer};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use support::{addr_of, assert_untrusted, tls_front, untrusting, Pki};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

fn session_id() -> SessionId {
    SessionId::parse("tls-session").unwrap()
}

// ---------------------------------------------------------------------------------------------
// Azure / OpenAI realtime (wss)
// ---------------------------------------------------------------------------------------------

async fn realtime_behind_tls(pki: &Pki) -> (FakeRealtime, std::net::SocketAddr) {
    let fake = FakeRealtime::start(FakeRealtimeOptions::new(FakeFlavour::AzureGa)).await.unwrap();
    let front = tls_front(pki, addr_of(&fake.endpoint())).await;
    (fake, front)
}

fn realtime_client(fake: &FakeRealtime, front: std::net::SocketAddr, tls: ClientTls) -> AzureRealtimeClient {
    let mut config = RealtimeConfig::new(RealtimeFlavour::AzureGa, format!("https://{front}/"), Secret::new(fake.options().api_key.clone()));
    config.deployment = fake.options().deployment.clone();
    AzureRealtimeClient::new(config, tls).unwrap()
}

fn realtime_setup() -> RealtimeSetup {
    RealtimeSetup { session_id: session_id(), instructions: "Ты — вежливый консультант.".into(), history: Vec::new(), tools: Vec::new() }
}

#[tokio::test]
async fn realtime_wss_is_refused_without_the_ca_and_works_with_tls_ca_file() {
    let pki = Pki::new();
    let (fake, front) = realtime_behind_tls(&pki).await;

    let refused = realtime_client(&fake, front, untrusting()).connect(realtime_setup()).await.err().expect("an untrusted certificate is refused");
    match refused {
        // Retrying cannot make the certificate trusted.
        RealtimeFailure::Fatal(message) => assert_untrusted(&message, "wss", front),
        other => panic!("a refused certificate is fatal, got {other:?}"),
    }
    assert!(fake.connections().is_empty(), "nothing reached the server");

    let mut connection = realtime_client(&fake, front, pki.trusting()).connect(realtime_setup()).await.expect("trusted through tls.ca_file");
    let first = tokio::time::timeout(WAIT, connection.events.recv()).await.unwrap().unwrap();
    assert!(matches!(first, RealtimeEvent::SessionReady { .. }), "{first:?}");
    assert_eq!(fake.connections().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// DeepSeek (https)
// ---------------------------------------------------------------------------------------------

fn extractor(base_url: String, tls: &ClientTls) -> DeepSeekExtractor {
    let mut config = DeepSeekConfig::new(Secret::new("sk-test"));
    config.base_url = base_url;
    config.backoff_initial = Duration::from_millis(10);
    let fields = vec![AnketaField { name: "client_name".into(), description: "Имя клиента".into(), kind: FieldKind::Text, required: true }];
    DeepSeekExtractor::new(config, fields, tls).unwrap()
}

async fn deepseek_behind_tls(pki: &Pki) -> (FakeDeepSeek, std::net::SocketAddr) {
    let fake = FakeDeepSeek::start_with_key("sk-test").await;
    fake.set_answer_rule(|_| json!({ "client_name": "Иван" }));
    let front = tls_front(pki, addr_of(&fake.base_url())).await;
    (fake, front)
}

fn dialogue() -> Vec<DialogueMessage> {
    vec![DialogueMessage { seq: 1, role: Role::User, text: "Меня зовут Иван".into(), at: chrono::Utc::now(), interrupted: false }]
}

/// One extraction through `tls` works: the anketa comes back from the fake.
async fn extracts_through(fake: &FakeDeepSeek, front: std::net::SocketAddr, tls: &ClientTls) {
    let done = extractor(format!("https://{front}"), tls).extract_anketa(&dialogue(), &Anketa::default()).await.expect("extracted over https");
    assert_eq!(done.anketa.0.get("client_name"), Some(&json!("Иван")));
    assert!(fake.request_count() >= 1);
}

#[tokio::test]
async fn deepseek_https_is_refused_without_the_ca_and_works_with_tls_ca_file() {
    let pki = Pki::new();
    let (fake, front) = deepseek_behind_tls(&pki).await;

    let refused = extractor(format!("https://{front}"), &untrusting()).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    match &refused {
        // Not retried: the configured 4 attempts would only repeat the refusal.
        DeepSeekError::Rejected { status: None, reason } => assert_untrusted(reason, "https", front),
        other => panic!("a refused certificate ends the extraction at once, got {other:?}"),
    }
    assert_eq!(fake.request_count(), 0, "nothing reached the server");

    extracts_through(&fake, front, &pki.trusting()).await;
}

#[tokio::test]
async fn ssl_cert_file_is_honoured() {
    let pki = Pki::new();
    let (fake, front) = deepseek_behind_tls(&pki).await;
    // The environment as the policy reads it, injected: process-wide variables would leak
    // into the other tests of this binary.
    let ca = pki.ca_file.display().to_string();
    let from_ssl_cert_file = ClientTls::build(&[], &|name| (name == "SSL_CERT_FILE").then(|| ca.clone())).unwrap();
    assert!(from_ssl_cert_file.summary().contains("SSL_CERT_FILE"), "{}", from_ssl_cert_file.summary());
    extracts_through(&fake, front, &from_ssl_cert_file).await;
}

// ---------------------------------------------------------------------------------------------
// LiveKit: Twirp (https), signalling (wss /rtc), the worker link (wss /agent)
// ---------------------------------------------------------------------------------------------

async fn livekit_behind_tls(pki: &Pki) -> (LoopbackServer, std::net::SocketAddr) {
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let front = tls_front(pki, server.addr()).await;
    (server, front)
}

fn livekit_config(server: &LoopbackServer, url: String) -> LivekitConfig {
    let (key, secret) = (server.api_key().to_owned(), server.api_secret().to_owned());
    let env = move |name: &str| match name {
        "LIVEKIT_URL" => Some(url.clone()),
        "LIVEKIT_API_KEY" => Some(key.clone()),
        "LIVEKIT_API_SECRET" => Some(secret.clone()),
        _ => None,
    };
    Config::from_env(env).unwrap().livekit
}

#[tokio::test]
async fn twirp_https_is_refused_without_the_ca_and_works_with_tls_ca_file() {
    let pki = Pki::new();
    let (server, front) = livekit_behind_tls(&pki).await;
    let config = livekit_config(&server, format!("https://{front}"));

    let refused = LiveKitClient::new(&config, &untrusting()).unwrap().create_room(&session_id()).await.unwrap_err().to_string();
    assert_untrusted(&refused, "https", front);
    assert!(server.rooms().is_empty());

    let room = LiveKitClient::new(&config, &pki.trusting()).unwrap().create_room(&session_id()).await.expect("created over https");
    assert_eq!(room.name, "consultation-tls-session");
    assert!(server.room("consultation-tls-session").is_some());
}

#[tokio::test]
async fn signalling_wss_is_refused_without_the_ca_and_works_with_tls_ca_file() {
    let pki = Pki::new();
    let (server, front) = livekit_behind_tls(&pki).await;
    let url = format!("wss://{front}");
    let token = Secret::new(server.participant_token("consultation-tls-session", "agent-tls"));

    let refused = signal::connect(&url, &token, None, &untrusting(), |_| true).await.err().expect("an untrusted certificate is refused");
    assert_untrusted(&refused, "wss", front);

    let (_link, first) = signal::connect(&url, &token, None, &pki.trusting(), |_| true).await.expect("signalling over wss");
    assert!(matches!(first, Response::Join(_)), "the first answer is the join: {first:?}");
}

/// The link's parent in these tests; it only watches.
struct Parent;

#[ractor::async_trait]
impl Actor for Parent {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Jobs are not part of these tests.
struct NoJobs;

#[async_trait]
impl JobRunner for NoJobs {
    async fn run(&self, _job: AcceptedJob, _terminated: watch::Receiver<bool>) -> Result<(), String> {
        Err("this test runs no jobs".into())
    }
}

async fn link_status(config: &LivekitConfig, tls: &ClientTls, done: impl FnMut(&consultant::livekit::link::LinkStatus) -> bool) -> consultant::livekit::link::LinkStatus {
    let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
    let args = LinkArgs {
        settings: LinkSettings::from_config(config, WorkerMode::Dev),
        client: Arc::new(LiveKitClient::new(config, tls).unwrap()),
        runner: Arc::new(NoJobs),
        telemetry: Telemetry::new(),
        process: ProcessSampler::new(),
    };
    let (link, _task) = spawn_link(args, parent.get_cell()).await.unwrap();
    let status = tokio::time::timeout(WAIT, link.wait_for(done)).await.expect("the link settles within 10 s").expect("the link is running");
    link.shutdown();
    parent.stop(None);
    status
}

#[tokio::test]
async fn agent_link_wss_is_refused_without_the_ca_and_registers_with_tls_ca_file() {
    let pki = Pki::new();
    let (server, front) = livekit_behind_tls(&pki).await;
    let config = livekit_config(&server, format!("wss://{front}"));

    // Like a refused token, a refused certificate gives up at once with the reason.
    let refused = link_status(&config, &untrusting(), |s| s.fatal.is_some()).await;
    assert_untrusted(refused.fatal.as_deref().unwrap_or_default(), "wss", front);
    assert!(server.workers().is_empty());

    let registered = link_status(&config, &pki.trusting(), |s| s.registered).await;
    assert!(registered.worker_id.is_some());
}
