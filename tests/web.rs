//! The caller page's server (`consultant web`) over real HTTP against the loopback LiveKit
//! server: a start creates `consultation-<id>` with our agent's dispatch and returns a caller
//! token (never the API secret); tokens only for consultations it started; a per-address limit;
//! a missing livekit-client bundle is named with what to do.

use std::sync::Arc;

use consultant::config::Config;
use consultant::livekit::LiveKitClient;
use consultant::store::{SqliteStore, Store};
use consultant::tls::ClientTls;
use consultant::web::{self, RateLimit, WebServer};
use livekit_loopback::{LoopbackConfig, LoopbackServer};
use serde_json::Value;

struct Page {
    base: String,
    server: LoopbackServer,
    _dir: tempfile::TempDir,
}

async fn page(per_minute: u32, client_js: Option<&str>) -> Page {
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let (url, key, secret) = (server.url(), server.api_key().to_owned(), server.api_secret().to_owned());
    let env = move |name: &str| match name {
        "LIVEKIT_URL" => Some(url.clone()),
        "LIVEKIT_API_KEY" => Some(key.clone()),
        "LIVEKIT_API_SECRET" => Some(secret.clone()),
        _ => None,
    };
    let config = Config::from_env(env).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("livekit-client.umd.js");
    if let Some(body) = client_js {
        std::fs::write(&js, body).unwrap();
    }
    let store = Arc::new(Store::from(SqliteStore::open(&dir.path().join("c.db"), "normal").unwrap()));
    let web_server = WebServer {
        livekit: LiveKitClient::new(&config.livekit, &ClientTls::default()).unwrap(),
        public_url: "ws://livekit.example:7880".into(),
        client_js: js,
        store,
        fields: config.consultation.anketa_fields.clone(),
        limit: RateLimit::per_minute(per_minute),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(web::serve(listener, web_server, std::future::pending()));
    Page { base, server, _dir: dir }
}

fn http() -> reqwest::Client {
    consultant::tls::ClientTls::default().http_client().build().unwrap()
}

#[tokio::test]
async fn a_start_creates_the_room_with_our_dispatch_and_returns_a_caller_token_only() {
    let p = page(5, Some("// bundle")).await;
    let answer = http().post(format!("{}/api/consultations", p.base)).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.text().await.unwrap();
    assert!(!body.contains(p.server.api_secret()), "the API secret never leaves the server: {body}");
    let join: Value = serde_json::from_str(&body).unwrap();
    let session = join["session_id"].as_str().unwrap();
    assert_eq!(join["room"], format!("consultation-{session}"));
    assert_eq!(join["url"], "ws://livekit.example:7880", "the URL the browser reaches");
    let room = p.server.room(join["room"].as_str().unwrap()).expect("the room exists");
    let dispatches: Vec<String> = p.server.dispatches().into_iter().filter(|d| d.room == room.name).map(|d| d.agent_name).collect();
    assert_eq!(dispatches, ["consultant"], "our agent is dispatched explicitly");
    // The token joins that room as the caller (the loopback checks it like livekit-server).
    let validate = http()
        .get(format!("{}/rtc/validate", p.server.url().replace("ws://", "http://")))
        .query(&[("access_token", join["token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(validate.status(), 200);

    // A page that reconnects gets a new token for its own consultation, never for another.
    let again = http().post(format!("{}/api/consultations/{session}/token", p.base)).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let other = uuid::Uuid::new_v4();
    let refused = http().post(format!("{}/api/consultations/{other}/token", p.base)).send().await.unwrap();
    assert_eq!(refused.status(), 404);
    let bad = http().post(format!("{}/api/consultations/a..b/token", p.base)).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("bad session id"));
    let early = http().get(format!("{}/api/consultations/{session}/anketa", p.base)).send().await.unwrap();
    assert_eq!(early.status(), 404, "no final anketa before the end");

    let page = http().get(&p.base).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Начать консультацию") && page.contains("/livekit-client.js"));
    let js = http().get(format!("{}/livekit-client.js", p.base)).send().await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
}

#[tokio::test]
async fn an_address_that_starts_too_many_consultations_is_refused_for_a_while() {
    let p = page(2, Some("")).await;
    for _ in 0..2 {
        assert_eq!(http().post(format!("{}/api/consultations", p.base)).send().await.unwrap().status(), 200);
    }
    let refused = http().post(format!("{}/api/consultations", p.base)).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_eq!(p.server.rooms().len(), 2, "no room for the refused start");
}

#[tokio::test]
async fn a_missing_livekit_client_bundle_says_what_to_do() {
    let p = page(5, None).await;
    let answer = http().get(format!("{}/livekit-client.js", p.base)).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let text = answer.text().await.unwrap();
    assert!(text.contains("livekit-client.umd.js") && text.contains("npm ci"), "{text}");
}
