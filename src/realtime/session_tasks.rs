//! The two tasks of one connected realtime session: the writer turns [`RealtimeCommand`]s into
//! client events (and pings), the reader parses server events into [`RealtimeEvent`]s and says
//! why the socket ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consultant_actors::ports::{RealtimeCommand, RealtimeEvent, RealtimeFailure, ResponseStatus};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::client::{describe_close, AzureRealtimeClient, Socket, DEFAULT_SESSION_LIMIT, EXPIRY_SLACK_SECS, MAX_APPEND_SAMPLES, PING_EVERY, SILENCE_LIMIT};
use super::config::Protocol;
use super::protocol::{self, is_fatal_code, ServerEvent};
use super::stats::RealtimeStats;

pub(super) struct Writer {
    sink: SplitSink<Socket, Message>,
    protocol: Protocol,
    stats: Arc<RealtimeStats>,
    closing: Arc<AtomicBool>,
    text: String,
    scratch: Vec<u8>,
}

impl Writer {
    pub(super) fn new(sink: SplitSink<Socket, Message>, protocol: Protocol, stats: Arc<RealtimeStats>, closing: Arc<AtomicBool>) -> Self {
        Self { sink, protocol, stats, closing, text: String::new(), scratch: Vec::new() }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<RealtimeCommand>, mut stop: watch::Receiver<bool>, failed: mpsc::Sender<String>) {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut pending: Option<RealtimeCommand> = None;
        loop {
            let command = match pending.take() {
                Some(c) => c,
                None => tokio::select! {
                    c = commands.recv() => match c {
                        Some(c) => c,
                        None => RealtimeCommand::Close,
                    },
                    _ = stop.changed() => return,
                    _ = ping.tick() => {
                        if let Err(e) = self.sink.send(Message::Ping(Default::default())).await {
                            let _ = failed.try_send(format!("realtime socket write failed: {e}"));
                            return;
                        }
                        continue;
                    }
                },
            };
            let result = match command {
                RealtimeCommand::AppendAudio(pcm) => {
                    // Frames already waiting are merged (never past MAX_APPEND_SAMPLES): fewer,
                    // larger appends when the socket is slower than the caller.
                    let mut batch: Vec<Arc<[i16]>> = vec![pcm];
                    let mut total = batch[0].len();
                    while total < MAX_APPEND_SAMPLES {
                        match commands.try_recv() {
                            Ok(RealtimeCommand::AppendAudio(more)) if total + more.len() <= MAX_APPEND_SAMPLES => {
                                total += more.len();
                                batch.push(more);
                            }
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.send_audio(&batch).await
                }
                RealtimeCommand::CreateResponse { instructions } => self.send_value(protocol::response_create(instructions.as_deref())).await,
                RealtimeCommand::CancelResponse => self.send_value(serde_json::json!({ "type": "response.cancel" })).await,
                RealtimeCommand::Truncate { item_id, content_index, audio_end_ms } => {
                    self.send_value(protocol::truncate(&item_id, content_index, audio_end_ms)).await
                }
                RealtimeCommand::ToolResult(result) => self.send_value(protocol::tool_result(&result)).await,
                RealtimeCommand::UpdateInstructions(instructions) => {
                    self.send_value(protocol::instructions_update(self.protocol, &instructions)).await
                }
                RealtimeCommand::Close => {
                    self.closing.store(true, Ordering::SeqCst);
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "consultation ended".into() };
                    let _ = self.sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            };
            if let Err(e) = result {
                let _ = failed.try_send(format!("realtime socket write failed: {e}"));
                return;
            }
        }
    }

    async fn send_value(&mut self, value: serde_json::Value) -> Result<(), WsError> {
        self.sink.send(Message::text(value.to_string())).await
    }

    /// Sends the batch as appends of at most MAX_APPEND_SAMPLES whole samples each.
    async fn send_audio(&mut self, batch: &[Arc<[i16]>]) -> Result<(), WsError> {
        let mut joined: Vec<i16>;
        let samples: &[i16] = if batch.len() == 1 {
            &batch[0]
        } else {
            joined = Vec::with_capacity(batch.iter().map(|b| b.len()).sum());
            for b in batch {
                joined.extend_from_slice(b);
            }
            &joined
        };
        for chunk in samples.chunks(MAX_APPEND_SAMPLES) {
            self.text.clear();
            protocol::write_audio_append(&mut self.text, chunk, &mut self.scratch);
            let message = Message::text(std::mem::take(&mut self.text));
            self.sink.send(message).await?;
            RealtimeStats::add(&self.stats.audio_appends_sent, 1);
            RealtimeStats::add(&self.stats.audio_bytes_sent, chunk.len() as u64 * 2);
        }
        Ok(())
    }
}

/// How long a reader whose writer failed waits for more of what the server sent.
const DRAIN_AFTER_WRITE_FAILURE: Duration = Duration::from_millis(250);

pub(super) struct Reader {
    client: AzureRealtimeClient,
    events: mpsc::Sender<RealtimeEvent>,
    closing: Arc<AtomicBool>,
    expires_at: Option<i64>,
    connected_at: Instant,
    last_server_error: Option<String>,
    scratch: Vec<u8>,
}

enum Step {
    Continue,
    End(RealtimeFailure),
}

impl Reader {
    pub(super) fn new(client: AzureRealtimeClient, events: mpsc::Sender<RealtimeEvent>, closing: Arc<AtomicBool>, expires_at: Option<i64>) -> Self {
        Self { client, events, closing, expires_at, connected_at: Instant::now(), last_server_error: None, scratch: Vec::new() }
    }

    pub(super) async fn run(mut self, mut stream: SplitStream<Socket>, mut writer_failed: mpsc::Receiver<String>, stop: watch::Sender<bool>) {
        let cause = loop {
            let frame = tokio::select! {
                // What the server sent comes first: a failed write must not cut off what it said
                // before the socket broke (its last words, a caller's late transcript).
                biased;
                frame = tokio::time::timeout(SILENCE_LIMIT, stream.next()) => frame,
                Some(reason) = writer_failed.recv() => break self.after_write_failure(&mut stream, reason).await,
            };
            let step = match frame {
                Err(_) => Step::End(RealtimeFailure::Transient(format!("no data from the realtime server for {SILENCE_LIMIT:?} (not even a pong)"))),
                Ok(None) => Step::End(self.lost("the realtime connection was closed without a close frame")),
                Ok(Some(Err(e))) => Step::End(self.lost(&format!("the realtime connection dropped: {e}"))),
                Ok(Some(Ok(Message::Close(frame)))) => Step::End(self.closed(frame.as_ref())),
                Ok(Some(Ok(Message::Text(text)))) => self.on_text(&text).await,
                Ok(Some(Ok(_))) => Step::Continue,
            };
            match step {
                Step::Continue => {}
                Step::End(cause) => break cause,
            }
        };
        let _ = stop.send(true);
        RealtimeStats::add(&self.client.stats.disconnects, 1);
        if !matches!(cause, RealtimeFailure::Closed) {
            tracing::warn!(cause = %cause, "realtime connection ended");
        }
        let _ = self.events.send(RealtimeEvent::Disconnected { cause }).await;
    }

    /// The writer found the socket broken; what the server sent before may still be arriving.
    /// It is read (until the stream ends, or nothing comes for a moment) and its end, if seen,
    /// names the cause better than the failed write.
    async fn after_write_failure(&mut self, stream: &mut SplitStream<Socket>, reason: String) -> RealtimeFailure {
        loop {
            match tokio::time::timeout(DRAIN_AFTER_WRITE_FAILURE, stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    if let Step::End(cause) = self.on_text(&text).await {
                        return cause;
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => return self.closed(frame.as_ref()),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return self.lost(&format!("the realtime connection dropped: {e}")),
                Ok(None) => return self.lost("the realtime connection was closed without a close frame"),
                Err(_) => return RealtimeFailure::Transient(reason),
            }
        }
    }

    fn near_expiry(&self) -> bool {
        match self.expires_at {
            Some(at) => chrono::Utc::now().timestamp() >= at - EXPIRY_SLACK_SECS,
            None => self.connected_at.elapsed() + Duration::from_secs(EXPIRY_SLACK_SECS as u64) >= DEFAULT_SESSION_LIMIT,
        }
    }

    fn lost(&self, what: &str) -> RealtimeFailure {
        if self.closing.load(Ordering::SeqCst) {
            return RealtimeFailure::Closed;
        }
        match &self.last_server_error {
            Some(error) if self.near_expiry() => RealtimeFailure::Expired(format!("{what} after a server_error at the session limit ({error})")),
            Some(error) => RealtimeFailure::Transient(format!("{what} after a server_error ({error})")),
            None => RealtimeFailure::Transient(what.to_owned()),
        }
    }

    fn closed(&self, frame: Option<&CloseFrame>) -> RealtimeFailure {
        self.lost(&format!("the realtime server closed the connection ({})", describe_close(frame)))
    }

    async fn emit(&mut self, event: RealtimeEvent) -> Step {
        match self.events.send(event).await {
            Ok(()) => Step::Continue,
            // Nobody listens any more: the actor is gone.
            Err(_) => Step::End(RealtimeFailure::Closed),
        }
    }

    async fn on_text(&mut self, text: &str) -> Step {
        // Before parsing: the worker-added latency starts when the frame is ours.
        let received = std::time::Instant::now();
        let Some(event) = self.client.parse(text) else { return Step::Continue };
        let stats = &self.client.stats;
        let out = match event {
            ServerEvent::AudioDelta { item_id, delta } => match protocol::decode_pcm(&delta, &mut self.scratch) {
                Ok(pcm) => {
                    RealtimeStats::add(&stats.audio_deltas_received, 1);
                    RealtimeStats::add(&stats.audio_bytes_received, pcm.len() as u64 * 2);
                    RealtimeEvent::AgentAudio { item_id, pcm: pcm.into(), received }
                }
                Err(e) => {
                    RealtimeStats::add(&stats.malformed_events, 1);
                    tracing::warn!(error = %e, "agent audio delta is not valid base64; skipped");
                    return Step::Continue;
                }
            },
            ServerEvent::TranscriptDelta { item_id, delta } => RealtimeEvent::AgentTranscriptDelta { item_id, delta },
            ServerEvent::TranscriptDone { item_id, transcript } => RealtimeEvent::AgentTranscriptDone { item_id, text: transcript },
            ServerEvent::SpeechStarted { item_id, audio_start_ms } => RealtimeEvent::SpeechStarted { item_id, audio_start_ms },
            ServerEvent::SpeechStopped { item_id, audio_end_ms } => RealtimeEvent::SpeechStopped { item_id, audio_end_ms },
            ServerEvent::Committed { item_id, .. } => RealtimeEvent::UserItemCommitted { item_id },
            ServerEvent::UserTranscriptCompleted { item_id, transcript } => RealtimeEvent::UserTranscript { item_id, text: transcript },
            ServerEvent::UserTranscriptFailed { item_id, error } => RealtimeEvent::UserTranscriptFailed { item_id, reason: error.describe() },
            ServerEvent::ResponseCreated(response) => RealtimeEvent::ResponseStarted { response_id: response.id.unwrap_or_default() },
            ServerEvent::OutputItemAdded { response_id, item } => {
                let is_agent_message = item.role.as_deref().is_none_or(|r| r == "assistant") && item.kind.as_deref().is_none_or(|k| k == "message");
                match item.id {
                    Some(item_id) if is_agent_message => RealtimeEvent::AgentItemStarted { response_id, item_id },
                    _ => return Step::Continue,
                }
            }
            ServerEvent::OutputItemDone { item, .. } => match item.function_call() {
                Some(call) => RealtimeEvent::ToolCall(call),
                None => return Step::Continue,
            },
            ServerEvent::ResponseDone(response) => {
                let status = match response.status.as_deref() {
                    Some("completed") => ResponseStatus::Completed,
                    Some("cancelled") => ResponseStatus::Cancelled,
                    Some("incomplete") => ResponseStatus::Incomplete,
                    _ => ResponseStatus::Failed,
                };
                let reason = response.reason();
                let usage = response.usage.as_ref().map(protocol::Usage::to_token_usage);
                RealtimeEvent::ResponseDone { response_id: response.id, status, reason, usage }
            }
            ServerEvent::Error(error) => {
                RealtimeStats::add(&stats.error_events, 1);
                let code = error.code.as_deref();
                if is_fatal_code(code) {
                    return Step::End(RealtimeFailure::Fatal(format!("realtime service: {}", error.describe())));
                }
                if code == Some("session_expired") {
                    return Step::End(RealtimeFailure::Expired(error.describe()));
                }
                if error.kind.as_deref() == Some("server_error") {
                    if self.near_expiry() {
                        return Step::End(RealtimeFailure::Expired(format!("server_error at the session limit: {}", error.describe())));
                    }
                    self.last_server_error = Some(error.describe());
                }
                RealtimeEvent::Error { code: error.code.clone(), message: error.describe() }
            }
            ServerEvent::RateLimits(limits) => {
                for limit in limits.iter().filter(|l| l.remaining.is_some_and(|r| r <= 0.0)) {
                    tracing::warn!(name = limit.name.as_deref().unwrap_or(""), reset_seconds = limit.reset_seconds.unwrap_or(0.0), "realtime rate limit exhausted");
                }
                return Step::Continue;
            }
            ServerEvent::SessionCreated(info) => {
                self.expires_at = info.expires_at.or(self.expires_at);
                return Step::Continue;
            }
            ServerEvent::SessionUpdated(_)
            | ServerEvent::BufferCleared
            | ServerEvent::ItemCreated { .. }
            | ServerEvent::ItemTruncated { .. }
            | ServerEvent::ItemDeleted { .. }
            | ServerEvent::UserTranscriptDelta { .. }
            | ServerEvent::FunctionArguments
            | ServerEvent::ContentPartAdded { .. }
            | ServerEvent::ContentPartDone { .. }
            | ServerEvent::AudioDone { .. }
            | ServerEvent::TextDelta { .. }
            | ServerEvent::TextDone { .. }
            | ServerEvent::Unknown(_) => return Step::Continue,
        };
        self.emit(out).await
    }
}
