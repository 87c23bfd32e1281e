//! Client events on the conversation: `session.update`, `conversation.item.create` (replayed
//! history, tool outputs) and `conversation.item.truncate`.

use super::*;

impl Session {
    pub(super) async fn on_session_update(&mut self, sink: &mut Sink, event: &Value, event_id: Option<&str>) -> Result<(), String> {
        let session = &event["session"];
        let update = event.clone();
        self.record(|r| r.session_updates.push(update));
        if let Err((code, message, param)) = self.validate_session(session) {
            return self.error(sink, "invalid_request_error", Some(code), &message, Some(&param), event_id).await;
        }
        if let Some(i) = session["instructions"].as_str() {
            self.config.instructions = i.to_owned();
        }
        let (voice, transcription, turn_detection) = match self.protocol {
            FakeProtocol::Beta => (session.get("voice"), session.get("input_audio_transcription"), session.get("turn_detection")),
            FakeProtocol::Ga => (session.pointer("/audio/output/voice"), session.pointer("/audio/input/transcription"), session.pointer("/audio/input/turn_detection")),
        };
        if let Some(v) = voice.and_then(Value::as_str) {
            if v != self.config.voice && self.item_audio_ms.values().any(|ms| *ms > 0) {
                return self.error(sink, "invalid_request_error", Some("cannot_update_voice"), "Cannot update a conversation's voice if assistant audio is present.", Some("session.voice"), event_id).await;
            }
            self.config.voice = v.to_owned();
        }
        if let Some(t) = transcription {
            self.config.transcription = t["model"].as_str().map(str::to_owned);
        }
        if let Some(td) = turn_detection {
            self.config.vad = if td.is_null() {
                None
            } else {
                let d = Vad::default();
                Some(Vad {
                    threshold: td["threshold"].as_f64().unwrap_or(d.threshold),
                    prefix_padding_ms: td["prefix_padding_ms"].as_u64().unwrap_or(d.prefix_padding_ms),
                    silence_duration_ms: td["silence_duration_ms"].as_u64().unwrap_or(d.silence_duration_ms),
                    create_response: td["create_response"].as_bool().unwrap_or(true),
                    interrupt_response: td["interrupt_response"].as_bool().unwrap_or(true),
                })
            };
        }
        let full = self.session_json(self.expires_at());
        self.send(sink, json!({ "type": "session.updated", "session": full })).await
    }

    pub(super) async fn on_item_create(&mut self, sink: &mut Sink, event: &Value, event_id: Option<&str>) -> Result<(), String> {
        let item = &event["item"];
        let previous = event["previous_item_id"].as_str();
        if let Some(p) = previous {
            if p != "root" && !self.items.iter().any(|i| i == p) {
                return self.error(sink, "invalid_request_error", Some("invalid_value"), &format!("Previous item with id '{p}' not found"), Some("previous_item_id"), event_id).await;
            }
        }
        match self.check_tool_item(item) {
            Some(Err((code, message, param))) => return self.error(sink, "invalid_request_error", Some(code), &message, Some(&param), event_id).await,
            Some(Ok(())) => {
                if item["type"] == "function_call" {
                    self.calls.push(item["call_id"].as_str().unwrap_or_default().to_owned());
                }
                return self.create_item(sink, event, item, previous).await;
            }
            None => {}
        }
        let role = item["role"].as_str().unwrap_or_default();
        let allowed: &[&str] = match (role, self.protocol) {
            ("user", _) | ("system", _) => &["input_text", "input_audio"],
            ("assistant", FakeProtocol::Beta) => &["text", "audio"],
            ("assistant", FakeProtocol::Ga) => &["output_text", "output_audio"],
            _ => return self.error(sink, "invalid_request_error", Some("invalid_value"), &format!("Invalid value: '{role}'. Supported values are: 'user', 'assistant', and 'system'."), Some("item.role"), event_id).await,
        };
        if let Some(content) = item["content"].as_array() {
            for (i, part) in content.iter().enumerate() {
                let t = part["type"].as_str().unwrap_or_default();
                if !allowed.contains(&t) {
                    let message = format!("Invalid value: '{t}'. Supported values are: {}.", allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" and "));
                    return self.error(sink, "invalid_request_error", Some("invalid_value"), &message, Some(&format!("item.content[{i}].type")), event_id).await;
                }
            }
        }
        self.create_item(sink, event, item, previous).await
    }

    /// Creates a checked item: its id (ours or the client's), the created/added events.
    pub(super) async fn create_item(&mut self, sink: &mut Sink, event: &Value, item: &Value, previous: Option<&str>) -> Result<(), String> {
        let event_id = event["event_id"].as_str();
        let id = match item["id"].as_str() {
            Some(id) if id.len() > 32 => {
                return self.error(sink, "invalid_request_error", Some("string_above_max_length"), "Invalid 'item.id': string too long. Expected a string with maximum length 32.", Some("item.id"), event_id).await;
            }
            Some(id) if self.items.iter().any(|i| i == id) => {
                return self.error(sink, "invalid_request_error", Some("item_id_already_exists"), &format!("Item with id '{id}' already exists"), Some("item.id"), event_id).await;
            }
            Some(id) => id.to_owned(),
            None => self.next_id("item"),
        };
        let e = event.clone();
        self.record(|r| r.items.push(e));
        self.items.push(id.clone());
        let mut created = item.clone();
        created["id"] = json!(id);
        created["object"] = json!("realtime.item");
        created["status"] = json!("completed");
        let previous = previous.map(str::to_owned).or_else(|| self.last_item.clone());
        self.last_item = Some(id);
        let name = self.name("conversation.item.created", "conversation.item.added");
        self.send(sink, json!({ "type": name, "previous_item_id": previous, "item": created })).await?;
        if self.protocol == FakeProtocol::Ga {
            self.send(sink, json!({ "type": "conversation.item.done", "previous_item_id": previous, "item": created })).await?;
        }
        Ok(())
    }

    pub(super) async fn on_truncate(&mut self, sink: &mut Sink, event: &Value, event_id: Option<&str>) -> Result<(), String> {
        let item_id = event["item_id"].as_str().unwrap_or_default().to_owned();
        let end = event["audio_end_ms"].as_u64().unwrap_or(0);
        let e = event.clone();
        self.record(|r| r.truncates.push(e));
        match self.item_audio_ms.get(&item_id).copied() {
            None => self.error(sink, "invalid_request_error", Some("invalid_value"), &format!("Item with item_id '{item_id}' not found or has no audio"), Some("item_id"), event_id).await,
            Some(sent) if end > sent => {
                let message = format!("Audio content of {sent}ms is already shorter than {end}ms");
                self.error(sink, "invalid_request_error", Some("invalid_value"), &message, Some("audio_end_ms"), event_id).await
            }
            Some(_) => {
                self.item_audio_ms.insert(item_id.clone(), end);
                self.send(sink, json!({ "type": "conversation.item.truncated", "item_id": item_id, "content_index": event["content_index"], "audio_end_ms": end })).await
            }
        }
    }
}
