//! The fake's HTTP handshake checks (per flavour, as strict as the services) and one
//! connection's life.

use super::*;

pub(super) fn check_request(options: &FakeRealtimeOptions, request: &Request) -> Result<FakeProtocol, (u16, String)> {
    let path = request.uri().path();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match &options.flavour {
        FakeFlavour::AzurePreview { api_version } => {
            if path != "/openai/realtime" {
                return Err((404, r#"{"error":{"code":"404","message":"Resource not found"}}"#.into()));
            }
            if query.get("api-version") != Some(api_version) {
                return Err((404, r#"{"error":{"code":"404","message":"Resource not found"}}"#.into()));
            }
            if query.get("deployment") != Some(&options.deployment) {
                return Err((404, r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#.into()));
            }
            if header("api-key").as_deref() != Some(options.api_key.as_str()) {
                return Err((401, r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#.into()));
            }
            Ok(FakeProtocol::Beta)
        }
        FakeFlavour::AzureGa => {
            if path != "/openai/v1/realtime" {
                return Err((404, r#"{"error":{"code":"404","message":"Resource not found"}}"#.into()));
            }
            if query.contains_key("api-version") {
                return Err((401, r#"{"error":{"code":"401","message":"api-version is not allowed on the v1 API"}}"#.into()));
            }
            if query.get("model") != Some(&options.deployment) {
                return Err((404, r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#.into()));
            }
            if header("openai-beta").is_some() {
                return Err((400, r#"{"error":{"code":"invalid_request_error","message":"The OpenAI-Beta header is not supported on the GA API"}}"#.into()));
            }
            if header("api-key").as_deref() != Some(options.api_key.as_str()) {
                return Err((401, r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#.into()));
            }
            Ok(FakeProtocol::Ga)
        }
        FakeFlavour::OpenAi => {
            if path != "/v1/realtime" {
                return Err((404, r#"{"error":{"type":"invalid_request_error","message":"Not found"}}"#.into()));
            }
            if query.get("model") != Some(&options.deployment) {
                return Err((404, r#"{"error":{"type":"invalid_request_error","code":"model_not_found","message":"The model does not exist or you do not have access to it."}}"#.into()));
            }
            if header("authorization").as_deref() != Some(format!("Bearer {}", options.api_key).as_str()) {
                return Err((401, r#"{"error":{"type":"invalid_request_error","code":"invalid_api_key","message":"Incorrect API key provided."}}"#.into()));
            }
            Ok(if header("openai-beta").as_deref() == Some("realtime=v1") { FakeProtocol::Beta } else { FakeProtocol::Ga })
        }
    }
}

pub(super) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let fault = shared.handshake_faults.lock().unwrap().pop_front();
    if let Some(f) = &fault {
        shared.applied(format!("handshake {f:?}"));
    }
    if let Some(HandshakeFault::Slow(delay)) = &fault {
        tokio::time::sleep(*delay).await;
    }
    let index = {
        let mut connections = shared.connections.lock().unwrap();
        connections.push(ConnectionRecord::default());
        connections.len() - 1
    };
    let outcome: Arc<Mutex<Option<FakeProtocol>>> = Arc::default();
    let (s, out) = (shared.clone(), outcome.clone());
    let forced_status = match &fault {
        Some(HandshakeFault::Status(code)) => Some(*code),
        _ => None,
    };
    let callback = move |request: &Request, response: HandshakeResponse| -> Result<HandshakeResponse, ErrorResponse> {
        let mut connections = s.connections.lock().unwrap();
        let record = &mut connections[index];
        record.path = request.uri().path().to_owned();
        record.query = request
            .uri()
            .query()
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        record.headers = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let verdict = match forced_status {
            Some(code) => Err((code, format!(r#"{{"error":{{"code":"{code}","message":"injected by the test"}}}}"#))),
            None => check_request(&s.options, request),
        };
        match verdict {
            Ok(protocol) => {
                record.status = 101;
                record.protocol = Some(protocol);
                *out.lock().unwrap() = Some(protocol);
                Ok(response)
            }
            Err((code, body)) => {
                record.status = code;
                let mut refusal = ErrorResponse::new(Some(body));
                *refusal.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                Err(refusal)
            }
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let Some(protocol) = *outcome.lock().unwrap() else { return };
    if fault == Some(HandshakeFault::CloseAfterHandshake) {
        let _ = ws.close(Some(CloseFrame { code: CloseCode::Error, reason: "".into() })).await;
        shared.connections.lock().unwrap()[index].ended = Some("closed after handshake (injected)".into());
        return;
    }
    let mut session = Session::new(shared.clone(), index, protocol);
    let ended = session.run(ws).await;
    shared.connections.lock().unwrap()[index].ended = Some(ended);
}

// -------------------------------------------------------------------------------------------
// Session
// -------------------------------------------------------------------------------------------
