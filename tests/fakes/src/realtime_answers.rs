//! The model's side: a response streamed in audio and transcript deltas at its pace,
//! cancelled or finished with its `response.done`.

use super::*;

impl Session {
    pub(super) async fn start_response(&mut self, sink: &mut Sink, text: String, late_transcript: Option<(String, ScriptTurn)>, call: Option<ScriptedCall>) -> Result<(), String> {
        let response_id = self.next_id("resp");
        let item_id = self.next_id("item");
        self.send(sink, json!({ "type": "response.created", "response": { "id": response_id, "object": "realtime.response", "status": "in_progress", "status_details": null, "output": [], "usage": null } })).await?;
        if let Some(code) = self.fail_next.take() {
            self.shared.applied(format!("FailNextResponse {code}"));
            // As the service ends a rate-limited response: no output, the reason in status_details.
            if let Some((item, turn)) = late_transcript {
                self.deliver_transcript(sink, &item, &turn).await?;
            }
            let details = json!({ "type": "failed", "error": { "type": "invalid_request_error", "code": code, "message": "injected by the test" } });
            {
                let mut connections = self.shared.connections.lock().unwrap();
                let record = ResponseRecord { response_id: response_id.clone(), item_id, text: text.clone(), status: "failed".into(), ..Default::default() };
                connections[self.index].responses.push(record);
                self.spoke_agent(connections[self.index].responses.len() - 1);
            }
            self.pending_answer = Some(text);
            return self.send(sink, json!({ "type": "response.done", "response": { "id": response_id, "object": "realtime.response", "status": "failed", "status_details": details, "output": [], "usage": null } })).await;
        }
        self.send(sink, json!({ "type": "rate_limits.updated", "rate_limits": [
            { "name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06 },
            { "name": "tokens", "limit": 20000, "remaining": 19000, "reset_seconds": 3.2 },
        ] })).await?;
        let item = json!({ "id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant", "content": [] });
        self.send(sink, json!({ "type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item })).await?;
        let previous = self.last_item.clone();
        let name = self.name("conversation.item.created", "conversation.item.added");
        self.send(sink, json!({ "type": name, "previous_item_id": previous, "item": item })).await?;
        self.send(sink, json!({ "type": "response.content_part.added", "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0, "part": { "type": "audio", "transcript": "" } })).await?;
        self.items.push(item_id.clone());
        self.last_item = Some(item_id.clone());
        self.item_audio_ms.insert(item_id.clone(), 0);
        let record_index = {
            let mut connections = self.shared.connections.lock().unwrap();
            let responses = &mut connections[self.index].responses;
            responses.push(ResponseRecord { response_id: response_id.clone(), item_id: item_id.clone(), text: text.clone(), status: "in_progress".into(), ..Default::default() });
            responses.len() - 1
        };
        self.spoke_agent(record_index);
        let pcm = self.voice_for(&text);
        let words = text.split_inclusive(' ').map(str::to_owned).collect();
        self.response = Some(Response { id: response_id, item_id, text, words, pcm, sent_samples: 0, words_sent: 0, deltas_sent: 0, started: Instant::now(), late_transcript, record_index, call });
        Ok(())
    }

    pub(super) fn next_delta_due(&self) -> Option<tokio::time::Instant> {
        let r = self.response.as_ref()?;
        let at = match self.options().speed {
            Some(speed) if speed > 0.0 => r.started + Duration::from_secs_f64(r.sent_samples as f64 / RATE as f64 / speed),
            _ => r.started,
        };
        Some(tokio::time::Instant::from_std(at))
    }

    pub(super) async fn send_next_delta(&mut self, sink: &mut Sink) -> Flow {
        let result = self.next_delta(sink).await;
        match result {
            Ok(flow) => flow,
            Err(e) => Flow::End(e),
        }
    }

    pub(super) async fn next_delta(&mut self, sink: &mut Sink) -> Result<Flow, String> {
        let delta_samples = (self.options().delta_ms as u64 * RATE / 1000).max(1) as usize;
        let protocol = self.protocol;
        let noise = self.options().unknown_noise;
        let stamp = self.options().stamp_deltas;
        let Some(r) = self.response.as_mut() else { return Ok(Flow::Continue) };
        if r.sent_samples < r.pcm.len() {
            let end = (r.sent_samples + delta_samples).min(r.pcm.len());
            let mut bytes = Vec::with_capacity((end - r.sent_samples) * 2);
            for s in &r.pcm[r.sent_samples..end] {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            if stamp && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&send_stamp().to_le_bytes());
            }
            r.sent_samples = end;
            r.deltas_sent += 1;
            let words_due = (r.words.len() * r.sent_samples).div_ceil(r.pcm.len());
            let words: String = r.words[r.words_sent..words_due].concat();
            r.words_sent = words_due;
            let (id, item_id, deltas, sent_ms, record_index) = (r.id.clone(), r.item_id.clone(), r.deltas_sent, r.sent_samples as u64 * 1000 / RATE, r.record_index);
            let late = if deltas == 1 { r.late_transcript.take() } else { None };
            let audio_name = if protocol == FakeProtocol::Beta { "response.audio.delta" } else { "response.output_audio.delta" };
            let mut delta = json!({ "type": audio_name, "response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": base64::engine::general_purpose::STANDARD.encode(&bytes) });
            if noise {
                delta["obfuscation"] = json!("x9Qw");
            }
            self.send(sink, delta).await?;
            if let Some(log) = self.shared.delta_log.lock().unwrap().as_mut() {
                log.push(Instant::now());
            }
            self.item_audio_ms.insert(item_id.clone(), sent_ms);
            self.record(|rec| rec.responses[record_index].audio_ms_sent = sent_ms);
            if !words.is_empty() {
                let name = if protocol == FakeProtocol::Beta { "response.audio_transcript.delta" } else { "response.output_audio_transcript.delta" };
                self.send(sink, json!({ "type": name, "response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": words })).await?;
                self.record(|rec| rec.responses[record_index].transcript_sent.push_str(&words));
            }
            if let Some((user_item, turn)) = late {
                self.deliver_transcript(sink, &user_item, &turn).await?;
            }
            if self.drop_after.is_some_and(|n| deltas >= n) {
                self.drop_after = None;
                self.shared.applied(format!("DropMidResponse after {deltas} deltas"));
                return Ok(Flow::End("dropped mid-response (injected)".into()));
            }
            return Ok(Flow::Continue);
        }
        self.finish_response(sink, "completed", None).await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn cancel_response(&mut self, sink: &mut Sink, reason: &str) -> Result<(), String> {
        self.finish_response(sink, "cancelled", Some(reason)).await
    }

    pub(super) async fn finish_response(&mut self, sink: &mut Sink, status: &str, reason: Option<&str>) -> Result<(), String> {
        let Some(mut r) = self.response.take() else { return Ok(()) };
        let completed = status == "completed";
        let item_status = if completed { "completed" } else { "incomplete" };
        let sent_text: String = r.words[..r.words_sent].concat();
        if completed {
            let rest: String = r.words[r.words_sent..].concat();
            r.words_sent = r.words.len();
            if !rest.is_empty() {
                let name = self.name("response.audio_transcript.delta", "response.output_audio_transcript.delta");
                self.send(sink, json!({ "type": name, "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0, "delta": rest })).await?;
            }
        }
        let transcript = if completed { r.text.clone() } else { sent_text };
        if let Some((user_item, turn)) = r.late_transcript.take() {
            self.deliver_transcript(sink, &user_item, &turn).await?;
        }
        let (tdone, adone) = match self.protocol {
            FakeProtocol::Beta => ("response.audio_transcript.done", "response.audio.done"),
            FakeProtocol::Ga => ("response.output_audio_transcript.done", "response.output_audio.done"),
        };
        self.send(sink, json!({ "type": tdone, "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0, "transcript": transcript })).await?;
        let told = transcript.clone();
        self.record(|rec| rec.responses[r.record_index].transcript_sent = told);
        self.send(sink, json!({ "type": adone, "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0 })).await?;
        self.send(sink, json!({ "type": "response.content_part.done", "response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0, "part": { "type": "audio", "transcript": transcript } })).await?;
        let content_type = self.name("audio", "output_audio");
        let item = json!({ "id": r.item_id, "object": "realtime.item", "type": "message", "status": item_status, "role": "assistant", "content": [{ "type": content_type, "transcript": transcript }] });
        self.send(sink, json!({ "type": "response.output_item.done", "response_id": r.id, "output_index": 0, "item": item })).await?;
        if self.protocol == FakeProtocol::Ga {
            self.send(sink, json!({ "type": "conversation.item.done", "item": item })).await?;
        }
        let details = match (reason, self.options().status_details_as_string) {
            (None, _) => Value::Null,
            (Some(reason), true) => json!(reason),
            (Some(reason), false) => json!({ "type": status, "reason": reason }),
        };
        let mut output = vec![item];
        if let (true, Some(call)) = (completed, r.call.take()) {
            output.push(self.function_call(sink, &r.id, 1, &call).await?);
        }
        let words = r.words.len() as u64;
        // As the services count: totals = text + audio; GA also itemises image tokens and the
        // cached part (nothing is cached: prompts under 1024 tokens never are).
        let mut input_details = json!({ "text_tokens": 100, "audio_tokens": 20, "cached_tokens": 0 });
        if self.protocol == FakeProtocol::Ga {
            input_details["image_tokens"] = json!(0);
            input_details["cached_tokens_details"] = json!({ "text_tokens": 0, "audio_tokens": 0, "image_tokens": 0 });
        }
        let usage = json!({ "total_tokens": 120 + words * 3, "input_tokens": 120, "output_tokens": words * 3, "input_token_details": input_details, "output_token_details": { "text_tokens": words, "audio_tokens": words * 2 } });
        self.send(sink, json!({ "type": "response.done", "response": { "id": r.id, "object": "realtime.response", "status": status, "status_details": details, "output": output, "usage": usage } })).await?;
        let status = status.to_owned();
        self.record(|rec| rec.responses[r.record_index].status = status);
        Ok(())
    }
}
