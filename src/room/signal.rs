//! LiveKit participant signalling (protocol v0): the `/rtc` WebSocket carrying protobuf
//! `SignalRequest` / `SignalResponse` frames, split into a writer and a reader task so the
//! Room actor only ever exchanges messages with them.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::secret::Secret;
use crate::tls::{self, ClientTls};

/// The signalling protocol version we speak (v0 two-PC semantics).
pub const PROTOCOL_VERSION: u32 = 16;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Request = proto::signal_request::Message;
pub type Response = proto::signal_response::Message;

/// `<url>/rtc?...`: http(s) becomes ws(s), a base path is kept. The token goes in the
/// Authorization header, never in the URL (URLs end up in logs).
pub fn rtc_url(base: &str, resume_sid: Option<&str>) -> Result<url::Url, String> {
    let mut url = url::Url::parse(base.trim()).map_err(|e| format!("LiveKit URL {base:?} is not a URL: {e}"))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(format!("LiveKit URL {base:?} has scheme {other:?}; use ws://, wss://, http:// or https://")),
    };
    url.set_scheme(scheme).map_err(|_| format!("cannot use scheme {scheme} for {base:?}"))?;
    let path = format!("{}/rtc", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("protocol", &PROTOCOL_VERSION.to_string());
        q.append_pair("sdk", "rust");
        q.append_pair("version", env!("CARGO_PKG_VERSION"));
        q.append_pair("auto_subscribe", "1");
        q.append_pair("adaptive_stream", "0");
        if let Some(sid) = resume_sid {
            q.append_pair("reconnect", "1");
            q.append_pair("sid", sid);
        }
    }
    Ok(url)
}

/// The two ends the Room actor holds.
pub struct SignalLink {
    pub outgoing: mpsc::UnboundedSender<Request>,
}

impl SignalLink {
    pub fn send(&self, req: Request) -> bool {
        self.outgoing.send(req).is_ok()
    }
}

/// What the reader task reports, tagged with the connection generation.
#[derive(Debug)]
pub enum Incoming {
    Message(Box<Response>),
    Closed(String),
}

/// Opens the WebSocket (`wss://` trusting `tls`), waits for the first response (`join` on a
/// fresh connection, `reconnect` or `join` on a resume), and starts the reader/writer tasks.
/// Incoming messages after the first are delivered to `deliver`.
pub async fn connect<F>(base: &str, token: &Secret, resume_sid: Option<&str>, tls: &ClientTls, deliver: F) -> Result<(SignalLink, Response), String>
where
    F: Fn(Incoming) -> bool + Send + 'static,
{
    let url = rtc_url(base, resume_sid)?;
    let mut request = url.as_str().into_client_request().map_err(|e| format!("bad signalling request: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| "the room token has characters a header cannot carry".to_owned())?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let shown = format!("{}://{}{port}{}", url.scheme(), url.host_str().unwrap_or(""), url.path());
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(tls.connector()));
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("signalling connect to {shown} timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                let body = r.body().as_ref().map(|b| String::from_utf8_lossy(b).trim().to_owned()).unwrap_or_default();
                format!("signalling {shown} refused with HTTP {}: {body} (check the room token and URL)", r.status())
            }
            other => match tls::explain(&tls::target(&url), &other) {
                Some(failure) => format!("signalling connect failed: {failure}"),
                None => format!("signalling connect to {shown} failed: {other}"),
            },
        })?;
    let (mut sink, mut stream) = ws.split();

    let first = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => match proto::SignalResponse::decode(b.as_ref()) {
                    Ok(proto::SignalResponse { message: Some(m) }) => return Ok(m),
                    Ok(_) => continue,
                    Err(e) => return Err(format!("undecodable first signalling frame: {e}")),
                },
                Some(Ok(Message::Close(f))) => return Err(format!("server closed signalling before join: {f:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("signalling failed before join: {e}")),
                None => return Err("server closed signalling before join".into()),
            }
        }
    })
    .await
    .map_err(|_| "no join response within 10 s".to_owned())??;

    let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let leaving = matches!(req, Request::Leave(_));
            let frame = proto::SignalRequest { message: Some(req) }.encode_to_vec();
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
            if leaving {
                let _ = sink.close().await;
                return;
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        let cause = loop {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => match proto::SignalResponse::decode(b.as_ref()) {
                    Ok(proto::SignalResponse { message: Some(m) }) => {
                        if !deliver(Incoming::Message(Box::new(m))) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "undecodable signalling frame ignored"),
                },
                Some(Ok(Message::Close(f))) => break format!("server closed signalling: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("signalling lost: {e}"),
                None => break "signalling ended".to_owned(),
            }
        };
        deliver(Incoming::Closed(cause));
    });
    Ok((SignalLink { outgoing: tx }, first))
}

/// TrickleRequest.candidateInit: the browser's RTCIceCandidateInit as JSON.
pub fn candidate_init(candidate_sdp: &str, mid: &str) -> String {
    serde_json::json!({ "candidate": candidate_sdp, "sdpMid": mid, "sdpMLineIndex": 0 }).to_string()
}

/// The `candidate:...` line of a TrickleRequest.candidateInit ("" = end of candidates).
pub fn candidate_from_init(init: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(init).ok()?;
    let c = v.get("candidate")?.as_str()?.trim();
    Some(c.strip_prefix("a=").unwrap_or(c).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtc_url_maps_the_scheme_keeps_the_base_path_and_never_carries_the_token() {
        let u = rtc_url("https://lk.example.com/base/", None).unwrap();
        assert_eq!(u.scheme(), "wss");
        assert_eq!(u.path(), "/base/rtc");
        assert!(u.query().unwrap().contains("auto_subscribe=1"));
        assert!(!u.as_str().contains("access_token"));
        let r = rtc_url("http://127.0.0.1:7880", Some("PA_x")).unwrap();
        assert_eq!(r.scheme(), "ws");
        assert!(r.query().unwrap().ends_with("reconnect=1&sid=PA_x"));
        assert!(rtc_url("ftp://x", None).unwrap_err().contains("scheme"));
        assert!(rtc_url("not a url", None).is_err());
    }

    #[test]
    fn candidate_init_round_trips() {
        let init = candidate_init("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "0");
        assert_eq!(candidate_from_init(&init).unwrap(), "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host");
        assert_eq!(candidate_from_init("{}"), None);
    }
}
