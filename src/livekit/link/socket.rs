//! The socket loop of the link: one `/agent` connection per generation. It connects,
//! registers, then pumps frames both ways (pinging, and watching for a silent server) until
//! the connection breaks; every outcome goes to the link actor tagged with its generation.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::server_message::Message as ServerMsg;
use proto::worker_message::Message as WorkerMsg;
use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message as Frame};

use super::{LinkMsg, LinkSettings};
use crate::secret::Secret;
use crate::tls::{self, ClientTls};

/// TCP + TLS + upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server answers `register` at once; a silent server is a broken one.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// We ping too, so a half-open connection is noticed even if the server never pings.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// No frame at all (pongs included) for this long: the connection is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Outgoing frames queued for the socket; a socket this far behind is dropped and reconnected.
const OUT_QUEUE: usize = 256;

/// The `register` request this worker sends on every connection.
pub(super) fn register_request(s: &LinkSettings) -> proto::RegisterWorkerRequest {
    // `agent` is deprecated in the proto but still what the Python worker sends.
    #[allow(deprecated)]
    proto::RegisterWorkerRequest {
        r#type: proto::JobType::JtRoom as i32,
        agent_name: s.agent_name.clone(),
        version: s.version.clone(),
        allowed_permissions: Some(proto::ParticipantPermission {
            can_subscribe: true,
            can_publish: true,
            can_publish_data: true,
            can_update_metadata: true,
            agent: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One `/agent` connection: connect, register, then pump frames both ways until it breaks.
pub(super) async fn run_connection(me: ActorRef<LinkMsg>, generation: u64, url: url::Url, token: Secret, register: proto::RegisterWorkerRequest, tls: ClientTls) {
    let failed = |error: String, fatal: bool| LinkMsg::ConnectFailed { generation, error, fatal };
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            let _ = me.send_message(failed(format!("invalid LiveKit URL {url}: {e}"), true));
            return;
        }
    };
    let bearer = match format!("Bearer {}", token.expose()).parse() {
        Ok(v) => v,
        Err(_) => {
            let _ = me.send_message(failed("the worker token is not a valid header value".into(), true));
            return;
        }
    };
    request.headers_mut().insert(tungstenite::http::header::AUTHORIZATION, bearer);
    // Nagle off: an update_worker right after an update_job must not wait for an ACK.
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(tls.connector()));
    let ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => {
            let _ = me.send_message(failed(format!("connecting to {url} timed out after {CONNECT_TIMEOUT:?}"), false));
            return;
        }
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).trim().to_owned()).unwrap_or_default();
            let (fatal, hint) = match status {
                401 | 403 => (true, "LiveKit refused the worker token: check that LIVEKIT_API_KEY / LIVEKIT_API_SECRET belong to this server"),
                404 => (true, "no agent endpoint there: is livekit.url the LiveKit server?"),
                _ => (false, "the LiveKit server refused the connection"),
            };
            let _ = me.send_message(failed(format!("{hint} (HTTP {status} from {url}: {body})"), fatal));
            return;
        }
        Ok(Err(e)) => {
            let failure = match tls::explain(&tls::target(&url), &e) {
                // A refused certificate is a configuration problem, like a refused token.
                Some(f) => failed(f.message, f.certificate),
                None => failed(format!("cannot connect to {url}: {}", crate::livekit::error_chain(&e)), false),
            };
            let _ = me.send_message(failure);
            return;
        }
        Ok(Ok((ws, _))) => ws,
    };
    let (mut sink, mut stream) = ws.split();
    let hello = proto::WorkerMessage { message: Some(WorkerMsg::Register(register)) };
    if let Err(e) = sink.send(Frame::Binary(hello.encode_to_vec().into())).await {
        let _ = me.send_message(failed(format!("sending register failed: {e}"), false));
        return;
    }
    let registered = tokio::time::timeout(REGISTER_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(frame)) => match decode(&frame) {
                    Some(Ok(ServerMsg::Register(r))) => return Ok(r),
                    Some(Ok(_)) => tracing::debug!("message before the register answer ignored"),
                    Some(Err(detail)) => tracing::warn!(%detail, "garbage frame from LiveKit ignored"),
                    None => {}
                },
                Some(Err(e)) => return Err(format!("connection failed before registration: {e}")),
                None => return Err("connection closed before registration".to_owned()),
            }
        }
    })
    .await;
    let response = match registered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let _ = me.send_message(failed(e, false));
            return;
        }
        Err(_) => {
            let _ = me.send_message(failed(format!("no register answer within {REGISTER_TIMEOUT:?}"), false));
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<proto::WorkerMessage>(OUT_QUEUE);
    if me.send_message(LinkMsg::Registered { generation, worker_id: response.worker_id, out: out_tx }).is_err() {
        return;
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_frame = Instant::now();
    let reason = loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(m) => {
                    if let Err(e) = sink.send(Frame::Binary(m.encode_to_vec().into())).await {
                        break format!("send failed: {e}");
                    }
                }
                None => {
                    // The actor let go of the connection: close politely.
                    let _ = sink.send(Frame::Close(None)).await;
                    return;
                }
            },
            frame = stream.next() => {
                last_frame = Instant::now();
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => break format!("connection failed: {e}"),
                    None => break "connection closed by the server".to_owned(),
                };
                if let Frame::Close(c) = &frame {
                    break format!("closed by the server: {}", c.as_ref().map(|c| format!("{} {}", c.code, c.reason)).unwrap_or_default());
                }
                match decode(&frame) {
                    Some(Ok(message)) => {
                        let delivered = me.send_message(LinkMsg::Server { generation, message: Box::new(message) });
                        if delivered.is_err() {
                            return;
                        }
                    }
                    Some(Err(detail)) => tracing::warn!(%detail, "garbage frame from LiveKit ignored"),
                    None => {}
                }
            }
            _ = ping.tick() => {
                if last_frame.elapsed() > IDLE_TIMEOUT {
                    break format!("no frame from the server for {:?}", last_frame.elapsed());
                }
                if let Err(e) = sink.send(Frame::Ping(Vec::new().into())).await {
                    break format!("ping failed: {e}");
                }
            }
        }
    };
    let _ = me.send_message(LinkMsg::Disconnected { generation, reason });
}

/// A server frame: protobuf (binary) or protojson (text). `None` for control frames.
fn decode(frame: &Frame) -> Option<Result<ServerMsg, String>> {
    let message = match frame {
        Frame::Binary(b) => proto::ServerMessage::decode(b.as_ref())
            .map_err(|e| format!("undecodable binary ServerMessage ({} bytes): {e}", b.len())),
        Frame::Text(t) => serde_json::from_str::<proto::ServerMessage>(t.as_str())
            .map_err(|e| format!("unparsable JSON ServerMessage ({} bytes): {e}", t.len())),
        _ => return None,
    };
    Some(message.and_then(|m| m.message.ok_or_else(|| "empty ServerMessage".to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_frames_decode_to_errors() {
        assert!(decode(&Frame::Binary(vec![0xff, 0xff, 0xff].into())).unwrap().is_err());
        assert!(decode(&Frame::Text("{not json".into())).unwrap().is_err());
        assert!(decode(&Frame::Binary(Vec::new().into())).unwrap().is_err());
        assert!(decode(&Frame::Ping(Vec::new().into())).is_none());
    }
}
