//! `/metrics` on the health listener, scraped while a consultation runs through the in-memory
//! ports: the counters and histograms move as the call goes, the text parses as Prometheus
//! exposition, no session id leaks into it, and `/worker` shows the same figures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[allow(unused_imports)]
mod support;
use support::http_get;

use consultant::health;
use consultant::livekit::link::LinkStatus;
use consultant_actors::anketa::{AnketaField, FieldKind};
use consultant_actors::consultation::{EndReason, Ports};
use consultant_actors::dialogue::SessionId;
use consultant_actors::ports::{RealtimeEvent, ResponseStatus, TokenUsage};
use consultant_actors::settings::ConsultationSettings;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::VoiceHandler;
use consultant_fakes::memory::{CountingExtractor, MemoryStore, RecordingAudio, ScriptedRealtime};

fn settings() -> ConsultationSettings {
    let fields = vec![AnketaField { name: "client_name".into(), description: "Имя".into(), kind: FieldKind::Text, required: true }];
    let mut s = ConsultationSettings::for_tests(fields);
    // An extraction after the first caller/agent pair.
    s.extraction_interval = 2;
    s.restart.backoff_initial = Duration::from_millis(10);
    s.connect.first_retry = Duration::from_millis(10);
    s.connect.retry_delay = Duration::from_millis(10);
    s
}

/// Samples by `name{labels}` (labels as written), after checking the exposition's grammar:
/// every family has HELP and TYPE, every sample is `name{labels} value` of a declared family.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !n.starts_with(|c: char| c.is_ascii_digit());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (what, name, value) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(name_ok(name), "bad family name in {line:?}");
            match what {
                "HELP" => assert!(helped.insert(name.to_owned()), "HELP twice: {line}"),
                "TYPE" => assert!(typed.insert(name.to_owned(), value.to_owned()).is_none(), "TYPE twice: {line}"),
                "UNIT" => assert!(name.ends_with(&format!("_{value}")), "unit not in the name: {line}"),
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(name_ok(k) && v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "bad label {pair:?} in {line:?}");
                }
                name
            }
            None => series,
        };
        assert!(name_ok(name), "bad sample name in {line:?}");
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        let kind = typed.get(family).unwrap_or_else(|| panic!("sample before its TYPE: {line:?}"));
        assert!(helped.contains(family), "no HELP for {family}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter sample without _total: {line}");
        }
        assert!(samples.insert(series.to_owned(), value).is_none(), "series twice: {line}");
    }
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    samples
}

async fn scrape(addr: std::net::SocketAddr) -> (String, BTreeMap<String, f64>) {
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    let samples = parse(&body);
    (body, samples)
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn metrics_follow_a_consultation() {
    let realtime = ScriptedRealtime::new();
    let extractor = CountingExtractor::new();
    let ports = Ports { connector: realtime.clone(), store: Arc::new(MemoryStore::default()), extractor: extractor.clone() };
    let telemetry = Telemetry::new();
    let handler = VoiceHandler::start(Arc::new(settings()), ports, telemetry.clone()).await.unwrap();
    telemetry.worker_update(|w| {
        w.registration = "registered".into();
        w.load = 0.25;
        w.capacity = 4;
    });
    let (_link_tx, link_rx) = tokio::sync::watch::channel(LinkStatus::default());
    let server = health::serve(health::bind("127.0.0.1:0").await.unwrap(), link_rx, telemetry.clone()).unwrap();
    let addr = server.addr();

    let (_, before) = scrape(addr).await;
    assert_eq!(get(&before, "consultant_consultations_active"), 0.0);
    assert_eq!(get(&before, "consultant_voice_to_voice_latency_seconds_count"), 0.0);
    assert_eq!(get(&before, r#"consultant_livekit_link_state{state="registered"}"#), 1.0);
    assert_eq!(get(&before, r#"consultant_livekit_link_state{state="down"}"#), 0.0);
    assert_eq!(get(&before, "consultant_worker_load"), 0.25);

    let id = SessionId::parse("metrics-call-7f3a").unwrap();
    let audio = RecordingAudio::new();
    let handle = handler.create_session(id.clone(), "consultation-metrics".into(), audio.clone()).await.unwrap();
    handle.wait_ready().await.unwrap();
    let s = realtime.session(1).await;

    // A turn: caller speech end, then the agent's first audio (a measured latency), with usage.
    s.user_says("u1", "Здравствуйте, сколько стоит доставка?").await;
    s.emit(RealtimeEvent::ResponseStarted { response_id: "r1".into() }).await;
    s.emit(RealtimeEvent::AgentItemStarted { response_id: Some("r1".into()), item_id: "a1".into() }).await;
    s.emit(RealtimeEvent::AgentAudio { item_id: "a1".into(), pcm: vec![500i16; 4_800].into(), received: std::time::Instant::now() }).await;
    s.emit(RealtimeEvent::AgentTranscriptDone { item_id: "a1".into(), text: "Доставка бесплатная".into() }).await;
    let usage = TokenUsage { input_tokens: 120, output_tokens: 45, input_audio_tokens: 20, input_text_tokens: 100, input_cached_tokens: 64, output_audio_tokens: 30, output_text_tokens: 15 };
    s.emit(RealtimeEvent::ResponseDone { response_id: Some("r1".into()), status: ResponseStatus::Completed, reason: None, usage: Some(usage) }).await;
    // Two messages persisted: the periodic extraction runs.
    wait_until("an extraction", || extractor.calls.load(Ordering::SeqCst) >= 1).await;

    // A barge-in: the caller speaks over an answer they heard half of.
    s.emit(RealtimeEvent::AgentItemStarted { response_id: None, item_id: "a2".into() }).await;
    s.emit(RealtimeEvent::AgentAudio { item_id: "a2".into(), pcm: vec![500i16; 48_000].into(), received: std::time::Instant::now() }).await;
    s.emit(RealtimeEvent::AgentTranscriptDone { item_id: "a2".into(), text: "Давайте я подробно расскажу о тарифах".into() }).await;
    wait_until("audio queued", || audio.played_samples.load(Ordering::SeqCst) == 4_800 + 48_000).await;
    audio.heard_ms.store(1_000, Ordering::SeqCst);
    audio.playing.store(true, Ordering::SeqCst);
    s.emit(RealtimeEvent::SpeechStarted { item_id: None, audio_start_ms: 0 }).await;
    s.emit(RealtimeEvent::ResponseDone { response_id: None, status: ResponseStatus::Cancelled, reason: None, usage: None }).await;
    // Events still queued when the socket's failure is known are stale: let the cut land first.
    wait_until("the barge-in", || audio.interrupts.load(Ordering::SeqCst) >= 1).await;

    // A reconnect: the socket drops and a second session takes over.
    s.drop_connection("socket reset by peer").await;
    let s2 = realtime.session(2).await;
    wait_until("the barge-in and the reconnect counted", || {
        let m = telemetry.worker().metrics;
        m.barge_ins >= 1 && m.reconnects_total() >= 1
    })
    .await;

    let (text, during) = scrape(addr).await;
    assert!(!text.contains(id.as_str()), "a session id in the metrics:\n{text}");
    assert!(!text.contains("consultation-metrics"), "a room name in the metrics:\n{text}");
    assert_eq!(get(&during, "consultant_consultations_active"), 1.0);
    let latency_count = get(&during, "consultant_voice_to_voice_latency_seconds_count");
    assert!(latency_count >= 1.0, "{text}");
    assert!(get(&during, r#"consultant_voice_to_voice_latency_seconds_bucket{le="+Inf"}"#) == latency_count);
    assert!(get(&during, r#"consultant_voice_to_voice_latency_seconds_bucket{le="10.0"}"#) >= 1.0, "a fake turn is fast");
    assert_eq!(get(&during, "consultant_barge_ins_total"), 1.0);
    assert_eq!(get(&during, r#"consultant_realtime_reconnects_total{cause="transient"}"#), 1.0);
    assert_eq!(get(&during, r#"consultant_realtime_reconnects_total{cause="rollover"}"#), 0.0);
    assert!(get(&during, r#"consultant_extractions_total{outcome="ok"}"#) >= 1.0);
    assert_eq!(get(&during, r#"consultant_extractions_total{outcome="failed"}"#), 0.0);
    assert!(get(&during, "consultant_extraction_duration_seconds_count") >= 1.0);
    assert!(get(&during, "consultant_store_commit_duration_seconds_count") >= 3.0, "session, two messages at least");
    let tokens = |direction: &str, kind: &str| get(&during, &format!(r#"consultant_realtime_tokens_total{{direction="{direction}",kind="{kind}"}}"#));
    assert_eq!((tokens("input", "audio"), tokens("input", "text"), tokens("input", "other")), (20.0, 100.0, 0.0));
    assert_eq!((tokens("output", "audio"), tokens("output", "text"), tokens("output", "other")), (30.0, 15.0, 0.0));
    assert_eq!(get(&during, "consultant_realtime_cached_input_tokens_total"), 64.0);
    // Both audio paths are timed where their packets leave, by the LiveKit room (measured in
    // tests/loadtest.rs); these in-memory ports send none, and the families are still served.
    assert_eq!(get(&during, "consultant_worker_added_latency_seconds_count"), 0.0, "{text}");
    assert_eq!(get(&during, "consultant_caller_added_latency_seconds_count"), 0.0, "{text}");
    assert_eq!(get(&during, r#"consultant_consultations_finished_total{status="completed"}"#), 0.0);

    // The sample dashboard asks only for series the endpoint serves.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json")).unwrap();
    for name in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("consultant_")) {
        assert!(during.keys().any(|series| series.split('{').next() == Some(name)), "the dashboard's {name} is not served");
    }

    // `/worker` reads the same snapshot.
    let (_, worker) = http_get(addr, "/worker").await;
    let worker: serde_json::Value = serde_json::from_str(&worker).unwrap();
    assert_eq!(worker["metrics"]["barge_ins"], 1);
    assert_eq!(worker["metrics"]["input_tokens"], 120);
    // The worker's share of the audio latency is measured by the LiveKit room (tests/loadtest.rs).
    assert!(worker["metrics"]["worker_added_latency"]["count"].is_u64() && worker["metrics"]["caller_added_latency"]["count"].is_u64(), "{worker}");
    assert!(worker["metrics"]["tokens"].as_array().unwrap().iter().any(|t| t == &serde_json::json!(["output", "audio", 30])), "{worker}");
    assert_eq!(worker["metrics"]["voice_latency"]["count"].as_f64().unwrap(), latency_count);

    s2.user_says("u2", "Спасибо, до свидания").await;
    let outcome = handler.end_session(&id, EndReason::CallerLeft).await.unwrap();
    assert_eq!(outcome.status.as_str(), "completed");
    let (_, after) = scrape(addr).await;
    assert_eq!(get(&after, "consultant_consultations_active"), 0.0);
    assert_eq!(get(&after, r#"consultant_consultations_finished_total{status="completed"}"#), 1.0);
    assert!(get(&after, r#"consultant_extractions_total{outcome="ok"}"#) >= 2.0, "the final extraction too");
    server.stop();
    handler.stop().await;
}
