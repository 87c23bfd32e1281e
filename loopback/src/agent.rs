//! `/agent`: the agent worker protocol (WorkerMessage / ServerMessage over a WebSocket). The
//! dispatcher that offers jobs to workers is in [`dispatch`].

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::server_message::Message as SrvMsg;
use proto::worker_message::Message as WrkMsg;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, AuthError};
use crate::state::*;

#[path = "agent_dispatch.rs"]
mod dispatch;

pub(crate) use dispatch::*;

pub(crate) async fn agent_ws(
    State(sh): State<SharedRef>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let token = auth::token_from(&headers, q.get("access_token").map(String::as_str));
    let claims = match auth::verify(&sh.cfg, token.as_deref()) {
        Ok(c) if c.video.agent => c,
        Ok(_) => return reject(&sh, "/agent", AuthError::Denied("token lacks the agent grant".into())),
        Err(e) => return reject(&sh, "/agent", e),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    tracing::debug!(iss = %claims.iss, "agent worker connecting");
    ws.on_upgrade(move |sock| worker_conn(sh, sock))
}

pub(crate) fn reject(sh: &SharedRef, path: &str, e: AuthError) -> Response {
    tracing::info!(path, reason = %e, "refused connection");
    sh.emit_now(ServerEvent::AuthRejected { path: path.into(), reason: e.to_string() });
    let code = match e {
        AuthError::Denied(_) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::UNAUTHORIZED,
    };
    (code, e.to_string()).into_response()
}

fn server_info(sh: &SharedRef) -> proto::ServerInfo {
    proto::ServerInfo {
        edition: proto::server_info::Edition::Standard as i32,
        version: sh.cfg.server_version.clone(),
        protocol: 16,
        region: String::new(),
        node_id: "ND_loopback".into(),
        debug_info: String::new(),
        agent_protocol: 1,
    }
}

/// Encode a server message in the connection's mode (protobuf binary or protojson text).
fn encode(msg: &proto::ServerMessage, json: bool) -> Message {
    if json {
        Message::Text(serde_json::to_string(msg).unwrap_or_default().into())
    } else {
        Message::Binary(msg.encode_to_vec().into())
    }
}

fn decode(frame: &Message) -> Option<Result<(proto::WorkerMessage, bool), String>> {
    match frame {
        Message::Binary(b) => Some(
            proto::WorkerMessage::decode(b.as_ref())
                .map(|m| (m, false))
                .map_err(|e| format!("undecodable binary WorkerMessage ({} bytes): {e}", b.len())),
        ),
        Message::Text(t) => Some(
            serde_json::from_str::<proto::WorkerMessage>(t.as_str())
                .map(|m| (m, true))
                .map_err(|e| format!("unparsable JSON WorkerMessage: {e}")),
        ),
        _ => None,
    }
}

async fn worker_conn(sh: SharedRef, sock: WebSocket) {
    let (mut sink, mut stream) = sock.split();
    let mut shutdown = sh.shutdown.subscribe();
    let peer = "agent-ws".to_string();

    // 1. Wait for `register` (bounded).
    let deadline = tokio::time::sleep(sh.cfg.register_timeout);
    tokio::pin!(deadline);
    let (reg, json) = loop {
        tokio::select! {
            _ = &mut deadline => {
                sh.emit_now(ServerEvent::ProtocolError { peer, detail: "no register within timeout; closing".into() });
                let _ = sink.close().await;
                return;
            }
            _ = shutdown.changed() => return,
            frame = stream.next() => {
                let frame = match frame { Some(Ok(f)) => f, _ => return };
                match decode(&frame) {
                    None => continue,
                    Some(Err(detail)) => sh.emit_now(ServerEvent::ProtocolError { peer: peer.clone(), detail }),
                    Some(Ok((proto::WorkerMessage { message: Some(WrkMsg::Register(r)) }, json))) => break (r, json),
                    Some(Ok((other, _))) => sh.emit_now(ServerEvent::ProtocolError {
                        peer: peer.clone(),
                        detail: format!("message before register ignored: {:?}", other.message.as_ref().map(kind_name)),
                    }),
                }
            }
        }
    };

    let worker_id = new_id("AW_");
    let (tx, mut rx) = mpsc::unbounded_channel::<WorkerOut>();
    {
        let mut g = sh.lock();
        g.workers.insert(
            worker_id.clone(),
            Worker {
                id: worker_id.clone(),
                agent_name: reg.agent_name.clone(),
                namespace: reg.namespace.clone().unwrap_or_default(),
                version: reg.version.clone(),
                status: WorkerStatus::WsAvailable,
                load: 0.0,
                job_count: 0,
                connected: true,
                updates: 0,
                draining: false,
                last_seq: 0,
                permissions: reg.allowed_permissions.clone(),
                tx: tx.clone(),
                pending: HashMap::new(),
            },
        );
        g.worker_order.push(worker_id.clone());
        sh.emit(&mut g, ServerEvent::WorkerRegistered { worker_id: worker_id.clone(), agent_name: reg.agent_name.clone() });
    }
    tracing::info!(%worker_id, agent_name = %reg.agent_name, "worker registered");
    let resp = proto::ServerMessage {
        message: Some(SrvMsg::Register(proto::RegisterWorkerResponse {
            worker_id: worker_id.clone(),
            server_info: Some(server_info(&sh)),
            endpoint_settings: None,
        })),
    };
    if sink.send(encode(&resp, json)).await.is_err() {
        disconnect(&sh, &worker_id, "send failed");
        return;
    }
    sh.dispatch_kick.notify_waiters();

    let mut ping = tokio::time::interval(sh.cfg.ws_ping_interval);
    ping.tick().await;
    let reason = loop {
        tokio::select! {
            _ = shutdown.changed() => { let _ = sink.close().await; break "server shutdown".to_string(); }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break "ping send failed".into(); }
            }
            out = rx.recv() => match out {
                Some(WorkerOut::Msg(m)) => if sink.send(encode(&m, json)).await.is_err() { break "send failed".into(); },
                Some(WorkerOut::Raw(RawFrame::Binary(b))) => if sink.send(Message::Binary(b.into())).await.is_err() { break "send failed".into(); },
                Some(WorkerOut::Raw(RawFrame::Text(t))) => if sink.send(Message::Text(t.into())).await.is_err() { break "send failed".into(); },
                Some(WorkerOut::Drop) | None => break "dropped by test hook".into(),
            },
            frame = stream.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => break format!("websocket error: {e}"),
                    None => break "connection closed".into(),
                };
                if let Message::Close(c) = &frame { break format!("closed by worker: {c:?}"); }
                match decode(&frame) {
                    None => {}
                    Some(Err(detail)) => {
                        tracing::warn!(%worker_id, %detail, "garbage frame from worker");
                        sh.emit_now(ServerEvent::ProtocolError { peer: worker_id.clone(), detail });
                    }
                    Some(Ok((m, _))) => handle_worker_msg(&sh, &worker_id, m),
                }
            }
        }
    };
    // Dropping `sink`/`stream` here drops the TCP connection (no close frame when dropped by hook).
    disconnect(&sh, &worker_id, &reason);
}

fn kind_name(m: &WrkMsg) -> &'static str {
    match m {
        WrkMsg::Register(_) => "register",
        WrkMsg::Availability(_) => "availability",
        WrkMsg::UpdateWorker(_) => "update_worker",
        WrkMsg::UpdateJob(_) => "update_job",
        WrkMsg::Ping(_) => "ping",
        WrkMsg::SimulateJob(_) => "simulate_job",
        WrkMsg::MigrateJob(_) => "migrate_job",
    }
}

fn disconnect(sh: &SharedRef, worker_id: &str, reason: &str) {
    tracing::info!(%worker_id, reason, "worker disconnected");
    let mut g = sh.lock();
    if let Some(w) = g.workers.get_mut(worker_id) {
        w.connected = false;
        // Dropping the senders wakes the dispatcher waiting for these answers.
        w.pending.clear();
    }
    sh.emit(&mut g, ServerEvent::WorkerDisconnected { worker_id: worker_id.into(), reason: reason.into() });
}

fn handle_worker_msg(sh: &SharedRef, worker_id: &str, m: proto::WorkerMessage) {
    let Some(msg) = m.message else {
        sh.emit_now(ServerEvent::ProtocolError { peer: worker_id.into(), detail: "empty WorkerMessage".into() });
        return;
    };
    let mut g = sh.lock();
    match msg {
        WrkMsg::Register(_) => {
            sh.emit(&mut g, ServerEvent::ProtocolError {
                peer: worker_id.into(),
                detail: "register on an already registered connection ignored".into(),
            });
        }
        WrkMsg::Availability(resp) => {
            let pending = g.workers.get_mut(worker_id).and_then(|w| w.pending.remove(&resp.job_id));
            match pending {
                Some(tx) => {
                    let _ = tx.send(resp);
                }
                None => sh.emit(&mut g, ServerEvent::ProtocolError {
                    peer: worker_id.into(),
                    detail: format!("availability for a job not asked (or too late): {}", resp.job_id),
                }),
            }
        }
        WrkMsg::UpdateWorker(u) => {
            let Some(w) = g.workers.get_mut(worker_id) else { return };
            if u.seq != 0 && u.seq <= w.last_seq {
                // A stale report (seq is monotonic per registration) must not regress state.
                sh.emit(&mut g, ServerEvent::ProtocolError {
                    peer: worker_id.into(),
                    detail: format!("stale update_worker ignored (seq {})", u.seq),
                });
                return;
            }
            w.last_seq = u.seq.max(w.last_seq);
            w.draining = u.draining;
            if let Some(s) = u.status {
                w.status = WorkerStatus::try_from(s).unwrap_or(WorkerStatus::WsFull);
            }
            w.load = u.load;
            w.job_count = u.job_count;
            w.updates += 1;
            let ev = ServerEvent::WorkerUpdated {
                worker_id: worker_id.into(),
                status: w.status,
                load: w.load,
                job_count: w.job_count,
            };
            sh.emit(&mut g, ev);
            drop(g);
            sh.dispatch_kick.notify_waiters();
        }
        WrkMsg::UpdateJob(u) => {
            let status = JobStatus::try_from(u.status).ok();
            let now = now_secs();
            let detail = match (g.jobs.get_mut(&u.job_id), status) {
                (None, _) => Some(format!("update_job for unknown job {}", u.job_id)),
                (Some(_), None) => Some(format!("update_job with unknown status {}", u.status)),
                (Some(j), Some(_)) if j.worker_id.as_deref() != Some(worker_id) => {
                    Some(format!("update_job for job {} held by another worker", u.job_id))
                }
                (Some(j), Some(st)) => {
                    j.status = st;
                    j.error = u.error.clone();
                    j.history.push(st);
                    j.updated_at = now;
                    if st == JobStatus::JsRunning && j.started_at == 0 {
                        j.started_at = now;
                    }
                    if matches!(st, JobStatus::JsSuccess | JobStatus::JsFailed) {
                        j.ended_at = now;
                    }
                    None
                }
            };
            match detail {
                Some(detail) => sh.emit(&mut g, ServerEvent::ProtocolError { peer: worker_id.into(), detail }),
                None => sh.emit(&mut g, ServerEvent::JobStatusChanged {
                    job_id: u.job_id,
                    status: status.unwrap_or(JobStatus::JsPending),
                    error: u.error,
                }),
            }
        }
        WrkMsg::Ping(p) => {
            if let Some(w) = g.workers.get(worker_id) {
                let _ = w.tx.send(WorkerOut::Msg(Box::new(proto::ServerMessage {
                    message: Some(SrvMsg::Pong(proto::WorkerPong {
                        last_timestamp: p.timestamp,
                        timestamp: now_millis(),
                    })),
                })));
            }
        }
        WrkMsg::MigrateJob(mj) if !sh.cfg.migrate_jobs => {
            // livekit-server (OSS) does not implement it: the jobs of the vanished connection
            // stay with it, so they get no termination and no status updates from the new one.
            tracing::info!(%worker_id, job_ids = ?mj.job_ids, "migrate_job ignored, as livekit-server does");
            sh.emit(&mut g, ServerEvent::JobsMigrated { worker_id: worker_id.into(), job_ids: Vec::new(), unknown: mj.job_ids });
        }
        WrkMsg::MigrateJob(mj) => {
            let mut moved = Vec::new();
            let mut unknown = Vec::new();
            for id in mj.job_ids {
                match g.jobs.get_mut(&id) {
                    Some(j) if !j.ended() => {
                        j.worker_id = Some(worker_id.to_string());
                        moved.push(id);
                    }
                    _ => unknown.push(id),
                }
            }
            tracing::info!(%worker_id, ?moved, ?unknown, "migrate_job");
            sh.emit(&mut g, ServerEvent::JobsMigrated { worker_id: worker_id.into(), job_ids: moved, unknown });
        }
        WrkMsg::SimulateJob(_) => sh.emit(&mut g, ServerEvent::ProtocolError {
            peer: worker_id.into(),
            detail: "simulate_job is not supported by the loopback server".into(),
        }),
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
