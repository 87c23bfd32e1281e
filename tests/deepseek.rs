//! The DeepSeek adapter against the fake DeepSeek server (real HTTP on 127.0.0.1): every
//! status and body the real service produces, which are retried and which are not, the
//! overall timeout, leading blank lines, validation, and the API key staying secret.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use consultant::deepseek::{DeepSeekConfig, DeepSeekError, DeepSeekExtractor};
use consultant::secret::Secret;
use consultant::tls::ClientTls;
use consultant_actors::ports::AnketaExtractor;
use consultant_actors::{Anketa, AnketaField, DialogueMessage, FieldKind, Role};
use consultant_fakes::deepseek::{with_evidence, Behaviour, FakeDeepSeek, Prompt, TEST_API_KEY};
use serde_json::{json, Value};
use tokio::time::Instant;

fn fields() -> Vec<AnketaField> {
    let field = |name: &str, description: &str, kind| AnketaField { name: name.into(), description: description.into(), kind, required: true };
    vec![
        field("name", "Имя клиента", FieldKind::Text),
        field("goals", "Чего клиент хочет добиться", FieldKind::List),
        field("budget", "Бюджет в рублях", FieldKind::Number),
        field("has_site", "Есть ли у клиента сайт", FieldKind::Bool),
    ]
}

fn message(seq: u32, role: Role, text: &str) -> DialogueMessage {
    DialogueMessage { seq, role, text: text.into(), at: Utc::now(), interrupted: false }
}

fn dialogue() -> Vec<DialogueMessage> {
    vec![
        message(1, Role::Assistant, "Здравствуйте! Как вас зовут?"),
        message(2, Role::User, "Меня зовут Ольга."),
        message(3, Role::Assistant, "Что вы хотите сделать?"),
        message(4, Role::User, "Хочу интернет-магазин"),
        message(5, Role::User, "Хочу чат-бота\nдля поддержки"),
        message(6, Role::User, "Бюджет 250000 рублей, сайта пока нет"),
    ]
}

/// What the fake "model" understands: a name after "Меня зовут", goals after "Хочу", the
/// first number on a "Бюджет" line, and whether the client said they have no site; each value
/// cites the numbered line it came from.
fn rule(prompt: &Prompt) -> Value {
    let mut answer = serde_json::Map::new();
    let mut evidence = serde_json::Map::new();
    let mut cite = |field: &str, seq: Option<u32>| {
        let cited = evidence.entry(field).or_insert_with(|| json!([]));
        cited.as_array_mut().unwrap().push(json!(seq.expect("the prompt numbers its lines")));
    };
    let mut goals = Vec::new();
    for m in prompt.messages.iter().filter(|m| m.client) {
        let line = &m.text;
        if let Some(name) = line.strip_prefix("Меня зовут ") {
            answer.insert("name".into(), json!(name.trim_end_matches('.')));
            cite("name", m.seq);
        }
        if let Some(goal) = line.strip_prefix("Хочу ") {
            goals.push(json!(goal));
            cite("goals", m.seq);
        }
        if line.starts_with("Бюджет") {
            let digits: String = line.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
            answer.insert("budget".into(), json!(digits.parse::<u64>().unwrap()));
            cite("budget", m.seq);
        }
        if line.contains("сайта пока нет") {
            answer.insert("has_site".into(), json!(false));
            cite("has_site", m.seq);
        }
    }
    answer.insert("goals".into(), Value::Array(goals));
    with_evidence(Value::Object(answer), Value::Object(evidence))
}

/// The evidence `rule` cites for `dialogue()`.
fn expected_evidence() -> consultant_actors::Evidence {
    [("name", vec![2]), ("goals", vec![4, 5]), ("budget", vec![6]), ("has_site", vec![6])].into_iter().map(|(f, s)| (f.to_owned(), s)).collect()
}

fn expected_from_dialogue() -> Anketa {
    let raw = json!({
        "name": "Ольга",
        "goals": ["интернет-магазин", "чат-бота для поддержки"],
        "budget": 250000,
        "has_site": false,
    });
    Anketa::validate(&raw, &fields()).unwrap().0
}

async fn fake() -> FakeDeepSeek {
    let fake = FakeDeepSeek::start().await;
    fake.set_answer_rule(rule);
    fake
}

fn config(fake: &FakeDeepSeek) -> DeepSeekConfig {
    let mut config = DeepSeekConfig::new(Secret::new(TEST_API_KEY));
    config.base_url = fake.base_url();
    config.attempts = 4;
    config.backoff_initial = Duration::from_millis(10);
    config.timeout = Duration::from_secs(10);
    config
}

fn extractor(config: DeepSeekConfig) -> DeepSeekExtractor {
    DeepSeekExtractor::new(config, fields(), &ClientTls::default()).expect("valid config")
}

/// Captures this thread's log output (tests run on the current-thread runtime).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_anketa_comes_from_the_dialogue_in_json_mode() {
    let fake = fake().await;
    let extractor = extractor(config(&fake));
    let previous = Anketa::validate(&json!({"name": "Оля"}), &fields()).unwrap().0;

    let extracted = extractor.extract(&dialogue(), &previous).await.expect("extraction succeeds");

    assert_eq!(extracted.anketa, expected_from_dialogue());
    assert_eq!(extracted.evidence, expected_evidence());
    assert_eq!(extracted.evidence_dropped, 0);
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/chat/completions");
    assert!(request.authorized);
    assert_eq!(request.status, 200);
    let body = request.body.as_ref().unwrap();
    assert_eq!(body["model"], "deepseek-chat");
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(body["max_tokens"], 2048);
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(system.contains("json"), "{system}");
    for (name, description) in [("name", "Имя клиента"), ("goals", "Чего клиент хочет"), ("budget", "Бюджет в рублях")] {
        assert!(system.contains(&format!("\"{name}\"")), "shape lacks {name}: {system}");
        assert!(system.contains(description), "prompt lacks {description}: {system}");
    }
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("{\"name\":\"Оля\"}"), "previous anketa missing: {user}");
    assert!(user.contains("\n[1] Консультант: Здравствуйте! Как вас зовут?\n[2] Клиент: Меня зовут Ольга.\n"), "lines numbered by seq: {user}");
    assert!(user.contains("\n[5] Клиент: Хочу чат-бота для поддержки\n"), "a message must stay on one line: {user}");
    assert!(system.contains("\"anketa\": {") && system.contains("\"evidence\": {"), "the shape asks for evidence: {system}");
    assert!(system.contains("номера реплик"), "{system}");
}

#[tokio::test]
async fn model_and_max_tokens_are_configurable() {
    let fake = fake().await;
    let mut config = config(&fake);
    config.model = "deepseek-v4-flash".into();
    config.max_tokens = 1234;
    extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    let body = fake.requests()[0].body.clone().unwrap();
    assert_eq!(body["model"], "deepseek-v4-flash");
    assert_eq!(body["max_tokens"], 1234);
}

#[tokio::test]
async fn transient_failures_are_retried_and_end_in_success() {
    // (case, what the fake does twice, the reason logged for each retry)
    let cases = [
        ("429", Behaviour::Status(429), "DeepSeek rate limit (429): Rate Limit Reached"),
        ("500", Behaviour::Status(500), "DeepSeek server error (500)"),
        ("503", Behaviour::Status(503), "DeepSeek overloaded (503): Server is busy"),
        ("empty content", Behaviour::empty_content(), "empty content (0 characters"),
        ("all-space content", Behaviour::spaces_content(), "empty content (8 characters, finish_reason \"stop\")"),
        ("invalid JSON", Behaviour::invalid_json(), "content is not valid JSON"),
        ("JSON that is not an object", Behaviour::json_content(json!(["Ольга"])), "the anketa must be a JSON object"),
        (
            "insufficient_system_resource",
            Behaviour::insufficient_system_resource(),
            "finish_reason insufficient_system_resource",
        ),
        ("broken connection", Behaviour::Disconnect, "retrying: network error"),
    ];
    for (case, behaviour, reason) in cases {
        let fake = fake().await;
        fake.push_all([behaviour.clone(), behaviour]);
        let logs = Logs::default();
        let guard = logs.install();
        let extraction = extractor(config(&fake))
            .extract_anketa(&dialogue(), &Anketa::default())
            .await
            .unwrap_or_else(|e| panic!("{case}: should succeed after retries, got {e}"));
        drop(guard);
        assert_eq!(logs.text().matches(reason).count(), 2, "{case}: {}", logs.text());
        assert_eq!(extraction.anketa, expected_from_dialogue(), "{case}");
        assert_eq!(extraction.attempts, 3, "{case}");
        assert_eq!(fake.request_count(), 3, "{case}");
    }
}

#[tokio::test]
async fn every_transient_failure_in_a_row_still_ends_in_success() {
    let fake = fake().await;
    fake.push_all([
        Behaviour::Status(429),
        Behaviour::Status(500),
        Behaviour::Status(503),
        Behaviour::empty_content(),
        Behaviour::spaces_content(),
        Behaviour::invalid_json(),
        Behaviour::insufficient_system_resource(),
        Behaviour::Disconnect,
    ]);
    let mut config = config(&fake);
    config.attempts = 9;
    config.backoff_initial = Duration::from_millis(1);
    let extraction = extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    assert_eq!(extraction.attempts, 9);
    assert_eq!(extraction.anketa, expected_from_dialogue());
    assert_eq!(fake.request_count(), 9);
}

#[tokio::test]
async fn permanent_failures_fail_at_once_with_the_named_reason_logged_once() {
    let cases = [
        (400, "DeepSeek rejected the request format (400)"),
        (401, "DeepSeek rejected the API key (401): check DEEPSEEK_API_KEY"),
        (402, "DeepSeek account has insufficient balance (402)"),
        (422, "DeepSeek rejected the request parameters (422)"),
    ];
    for (status, reason) in cases {
        let fake = fake().await;
        fake.push_all([Behaviour::Status(status), Behaviour::Answer]);
        let logs = Logs::default();
        let guard = logs.install();
        let error = extractor(config(&fake)).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
        drop(guard);
        let DeepSeekError::Rejected { status: Some(got), reason: message } = &error else {
            panic!("{status}: expected a rejection, got {error:?}");
        };
        assert_eq!(*got, status);
        assert!(message.starts_with(reason), "{status}: {message}");
        assert_eq!(fake.request_count(), 1, "{status} must not be retried");
        assert_eq!(fake.pending(), 1, "{status}: the answer after it must stay unused");
        assert_eq!(logs.text().matches(reason).count(), 1, "{status}: logged once: {}", logs.text());
        assert!(!logs.text().contains("retrying"), "{status}: {}", logs.text());
    }
}

#[tokio::test]
async fn the_trait_error_carries_the_reason() {
    let fake = fake().await;
    fake.push(Behaviour::Status(402));
    let error = extractor(config(&fake)).extract(&dialogue(), &Anketa::default()).await.unwrap_err();
    assert!(error.to_string().contains("insufficient balance (402)"), "{error}");
}

#[tokio::test]
async fn a_wrong_key_is_refused_by_the_fake_and_named_without_leaking_it() {
    let fake = fake().await;
    let wrong_key = "sk-wrong-key-that-must-not-leak-9137";
    let mut config = config(&fake);
    config.api_key = Secret::new(wrong_key);
    let logs = Logs::default();
    let guard = logs.install();
    let error = extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    drop(guard);
    assert_eq!(
        error,
        DeepSeekError::Rejected {
            status: Some(401),
            reason: "DeepSeek rejected the API key (401): check DEEPSEEK_API_KEY".into()
        }
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(!requests[0].authorized);
    assert!(!logs.text().contains(wrong_key));
    assert!(!logs.text().contains("9137"), "not even the part the server quotes: {}", logs.text());
}

#[tokio::test]
async fn bad_parameters_are_refused_like_the_real_api_and_not_retried() {
    let fake = fake().await;
    let mut too_many_tokens = config(&fake);
    too_many_tokens.max_tokens = 100_000;
    let error = extractor(too_many_tokens).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    assert!(
        error.to_string().contains("(422): Invalid max_tokens value, the valid range of max_tokens is [1, 8192]"),
        "{error}"
    );
    assert_eq!(fake.request_count(), 1);

    let mut unknown_model = config(&fake);
    unknown_model.model = "deepseek-chat-9000".into();
    let error = extractor(unknown_model).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    assert!(error.to_string().contains("(400): Model Not Exist"), "{error}");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn the_fake_refuses_json_mode_without_the_word_json() {
    let fake = fake().await;
    // reqwest is built without a crypto provider: the trust policy brings ring.
    let client = ClientTls::default().http_client().build().unwrap();
    let request = |content: &str| {
        json!({
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": content}],
            "response_format": {"type": "json_object"},
        })
    };
    let refused = client
        .post(format!("{}/chat/completions", fake.base_url()))
        .bearer_auth(TEST_API_KEY)
        .json(&request("Извлеки анкету"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Prompt must contain the word 'json' in some form to use 'response_format' of type 'json_object'."
    );
    let accepted = client
        .post(format!("{}/v1/chat/completions", fake.base_url()))
        .bearer_auth(TEST_API_KEY)
        .json(&request("Извлеки анкету в JSON"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let unauthorized = client
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(&request("json"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let body: Value = unauthorized.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(fake.requests().iter().map(|r| r.status).collect::<Vec<_>>(), vec![400, 200, 401]);
}

#[tokio::test]
async fn retries_exhausted_name_the_last_reason() {
    let fake = fake().await;
    fake.push_all([Behaviour::Status(429), Behaviour::Status(500), Behaviour::Status(503), Behaviour::Answer]);
    let mut config = config(&fake);
    config.attempts = 3;
    let error = extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    match &error {
        DeepSeekError::Exhausted { attempts: 3, last } => assert!(last.contains("overloaded (503)"), "{last}"),
        other => panic!("expected exhausted retries, got {other:?}"),
    }
    assert_eq!(fake.request_count(), 3);
}

/// A rate limiter's `Retry-After` is waited out, however short our own backoff is.
#[tokio::test]
async fn retry_after_is_honoured() {
    let fake = fake().await;
    fake.push_all([Behaviour::RateLimited { retry_after_secs: 1 }, Behaviour::Answer]);
    let mut config = config(&fake);
    config.backoff_initial = Duration::from_millis(10);
    let started = Instant::now();
    extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "retried after {:?}, before the server's Retry-After", started.elapsed());
    assert_eq!(fake.requests().iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 200]);
}

#[tokio::test]
async fn backoff_grows_exponentially() {
    let fake = fake().await;
    fake.push_all([Behaviour::Status(503), Behaviour::Status(503), Behaviour::Status(503)]);
    let mut config = config(&fake);
    config.backoff_initial = Duration::from_millis(100);
    let started = Instant::now();
    extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    // Pauses of at least 100 + 200 + 400 ms before the fourth request.
    assert!(started.elapsed() >= Duration::from_millis(700), "{:?}", started.elapsed());
    assert_eq!(fake.request_count(), 4);
}

#[tokio::test]
async fn leading_blank_lines_of_a_slow_answer_are_tolerated() {
    let fake = fake().await;
    fake.push(Behaviour::slow(Duration::from_millis(500)));
    let extraction = extractor(config(&fake)).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    assert_eq!(extraction.anketa, expected_from_dialogue());
    assert_eq!(extraction.attempts, 1);
    assert_eq!(fake.abandoned_responses(), 0);
}

#[tokio::test]
async fn the_timeout_covers_the_whole_extraction_even_while_blank_lines_arrive() {
    let fake = fake().await;
    fake.push(Behaviour::Slow { hold: Duration::from_secs(30), interval: Duration::from_millis(50) });
    let mut config = config(&fake);
    config.timeout = Duration::from_millis(700);
    let started = Instant::now();
    let error = extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, DeepSeekError::TimedOut { attempts: 1, .. }), "{error:?}");
    assert!(error.to_string().contains("raise deepseek.timeout"), "{error}");
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    // The client hung up instead of reading the 30 s of blank lines.
    let hung_up = Instant::now() + Duration::from_secs(5);
    while fake.abandoned_responses() == 0 && Instant::now() < hung_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.abandoned_responses(), 1);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let fake = fake().await;
    fake.push_all(std::iter::repeat_n(Behaviour::Status(503), 20));
    let mut config = config(&fake);
    config.attempts = 20;
    config.backoff_initial = Duration::from_millis(200);
    config.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let error = extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    let DeepSeekError::TimedOut { attempts, last, .. } = &error else { panic!("{error:?}") };
    assert!(*attempts < 20 && *attempts >= 2, "{attempts}");
    assert!(last.contains("503"), "{last}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(fake.request_count(), *attempts as usize);
}

#[tokio::test]
async fn unknown_fields_are_dropped_and_wrong_types_rejected() {
    let fake = fake().await;
    fake.push(Behaviour::json_content(json!({
        "name": "  Ольга ",
        "hacker": "rm -rf /",
        "budget": "очень много",
        "goals": ["магазин", 5],
        "has_site": true,
    })));
    let logs = Logs::default();
    let guard = logs.install();
    let extraction = extractor(config(&fake)).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    drop(guard);
    assert_eq!(extraction.anketa, Anketa::validate(&json!({"name": "Ольга", "has_site": true}), &fields()).unwrap().0);
    assert_eq!(extraction.dropped.unknown_fields, vec!["hacker"]);
    let wrong: Vec<&str> = extraction.dropped.wrong_types.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(wrong, vec!["budget", "goals"]);
    assert_eq!(fake.request_count(), 1, "a partly valid answer is used, not retried");
    let text = logs.text();
    assert!(text.contains("hacker") && text.contains("budget (expected число, got string)"), "{text}");
}

#[tokio::test]
async fn a_flat_answer_without_evidence_is_still_read() {
    let fake = fake().await;
    fake.push(Behaviour::json_content(json!({"name": "Ольга", "goals": ["интернет-магазин", "чат-бота для поддержки"], "budget": 250000, "has_site": false})));
    let extracted = extractor(config(&fake)).extract(&dialogue(), &Anketa::default()).await.unwrap();
    assert_eq!(extracted.anketa, expected_from_dialogue());
    assert!(extracted.evidence.is_empty(), "{:?}", extracted.evidence);
    assert_eq!(extracted.evidence_dropped, 0);
    // A flat answer that still carries an evidence object has it read.
    fake.push(Behaviour::json_content(json!({"name": "Ольга", "evidence": {"name": [2]}})));
    let extraction = extractor(config(&fake)).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    assert_eq!(extraction.evidence, [("name".to_owned(), vec![2])].into());
    assert!(extraction.dropped.unknown_fields.is_empty(), "evidence is not an unknown field: {:?}", extraction.dropped);
}

/// As a real model may: cite a message that was never sent, a field outside the anketa, a
/// field it gave no value (or a value of the wrong type), and something that is no number.
/// Those citations are dropped, counted and logged; the rest stands and nothing is retried.
#[tokio::test]
async fn bad_evidence_is_dropped_counted_and_logged_never_fatal() {
    let fake = fake().await;
    fake.set_answer_rule(|prompt: &Prompt| {
        let name = prompt.client_seq("Меня зовут").unwrap();
        let beyond = prompt.last_seq().unwrap() + 1;
        with_evidence(
            json!({"name": "Ольга", "budget": "много", "has_site": null}),
            json!({
                "name": [name, beyond, "два"],
                "hacker": [name],
                "budget": [6],
                "has_site": [6],
                "goals": [4, 5],
            }),
        )
    });
    let logs = Logs::default();
    let guard = logs.install();
    let extractor = extractor(config(&fake));
    let extracted = extractor.extract(&dialogue(), &Anketa::default()).await.expect("bad evidence is never fatal");
    let extraction = extractor.extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    drop(guard);
    assert_eq!(extracted.anketa, Anketa::validate(&json!({"name": "Ольга"}), &fields()).unwrap().0);
    assert_eq!(extracted.evidence, [("name".to_owned(), vec![2])].into());
    // On name a message never sent (7) and "два"; hacker; budget (wrong type: no value); has_site (null); goals x2.
    assert_eq!(extracted.evidence_dropped, 2 + 1 + 1 + 1 + 2);
    let report = &extraction.evidence_dropped;
    assert_eq!(report.unknown_messages, vec![("name".to_owned(), json!(7)), ("name".to_owned(), json!("два"))]);
    assert_eq!(report.unknown_fields, vec!["hacker"]);
    let mut without_value = report.without_value.clone();
    without_value.sort();
    assert_eq!(without_value, vec!["budget", "goals", "has_site"]);
    assert_eq!(fake.request_count(), 2, "one request per extraction: bad evidence is not retried");
    let text = logs.text();
    assert_eq!(text.matches("dropped those citations").count(), 2, "{text}");
    assert!(text.contains("evidence_dropped=7") && text.contains("hacker"), "{text}");
}

#[tokio::test]
async fn a_truncated_answer_names_max_tokens() {
    let fake = fake().await;
    fake.push(Behaviour::content("{\"name\": \"Оль", "length"));
    let error = extractor(config(&fake)).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    assert!(error.to_string().contains("raise deepseek.max_tokens"), "{error}");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn base_url_with_trailing_slash_or_v1_works_and_a_wrong_path_is_named() {
    let fake = fake().await;
    for (base, path) in [(format!("{}/", fake.base_url()), "/chat/completions"), (format!("{}/v1/", fake.base_url()), "/v1/chat/completions")] {
        let mut config = config(&fake);
        config.base_url = base;
        extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
        assert_eq!(fake.requests().last().unwrap().path, path);
    }
    let mut config = config(&fake);
    config.base_url = format!("{}/api/v2", fake.base_url());
    let error = extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    assert!(error.to_string().contains("(404): check DEEPSEEK_BASE_URL"), "{error}");
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_reported() {
    let fake = fake().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let mut config = config(&fake);
    config.base_url = dead;
    config.attempts = 2;
    let error = extractor(config).extract_anketa(&dialogue(), &Anketa::default()).await.unwrap_err();
    match &error {
        DeepSeekError::Exhausted { attempts: 2, last } => assert!(last.starts_with("network error"), "{last}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_key_is_absent_from_debug_display_and_logs() {
    let fake = fake().await;
    fake.push_all([Behaviour::Status(429), Behaviour::Status(500)]);
    let config = config(&fake);
    let key = Secret::new(TEST_API_KEY);
    assert!(!format!("{key:?}").contains(TEST_API_KEY));
    assert_eq!(format!("{key}"), "***");
    let debug = format!("{config:?}");
    assert!(!debug.contains(TEST_API_KEY) && debug.contains("***"), "{debug}");
    let extractor = extractor(config);
    let debug = format!("{extractor:?}");
    assert!(!debug.contains(TEST_API_KEY) && debug.contains("***"), "{debug}");
    let logs = Logs::default();
    let guard = logs.install();
    extractor.extract_anketa(&dialogue(), &Anketa::default()).await.unwrap();
    drop(guard);
    let text = logs.text();
    assert!(text.contains("rate limit (429)") && text.contains("server error (500)"), "{text}");
    assert!(!text.contains(TEST_API_KEY), "{text}");
}

#[test]
fn bad_settings_are_named() {
    let base = || {
        let mut config = DeepSeekConfig::new(Secret::new("sk-x"));
        config.base_url = "https://api.deepseek.com".into();
        config
    };
    let cases: Vec<(DeepSeekConfig, &str)> = vec![
        (DeepSeekConfig { api_key: Secret::new("  "), ..base() }, "DEEPSEEK_API_KEY"),
        (DeepSeekConfig { base_url: "api.deepseek.com".into(), ..base() }, "deepseek.base_url"),
        (DeepSeekConfig { base_url: "ftp://api.deepseek.com".into(), ..base() }, "deepseek.base_url"),
        (DeepSeekConfig { model: "".into(), ..base() }, "deepseek.model"),
        (DeepSeekConfig { max_tokens: 0, ..base() }, "deepseek.max_tokens"),
        (DeepSeekConfig { attempts: 0, ..base() }, "deepseek.attempts"),
        (DeepSeekConfig { timeout: Duration::ZERO, ..base() }, "deepseek.timeout"),
        (DeepSeekConfig { temperature: 3.0, ..base() }, "deepseek.temperature"),
    ];
    for (config, key) in cases {
        let error = DeepSeekExtractor::new(config, fields(), &ClientTls::default()).unwrap_err();
        assert_eq!(error.key, key, "{error}");
        assert!(error.to_string().starts_with(&format!("bad DeepSeek setting {key}: ")), "{error}");
    }
    let error = DeepSeekExtractor::new(base(), Vec::new(), &ClientTls::default()).unwrap_err();
    assert_eq!(error.key, "consultation.anketa_fields");
    assert!(DeepSeekExtractor::new(base(), fields(), &ClientTls::default()).is_ok());
}
