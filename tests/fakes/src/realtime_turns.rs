//! The caller's side: audio appended, energy VAD, committed turns and their (sometimes late)
//! transcripts.

use super::*;

impl Session {
    pub(super) async fn on_append(&mut self, sink: &mut Sink, event: &Value) -> Result<(), String> {
        let Some(b64) = event["audio"].as_str() else {
            return self.error(sink, "invalid_request_error", Some("missing_required_parameter"), "Missing required parameter: 'audio'.", Some("audio"), None).await;
        };
        let bytes = match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(b) if b.len() % 2 == 0 => b,
            _ => return self.error(sink, "invalid_request_error", Some("invalid_value"), "Invalid 'audio'. Expected base64-encoded PCM16 audio.", Some("audio"), None).await,
        };
        let samples = (bytes.len() / 2) as u64;
        self.record(|r| {
            r.appended_samples += samples;
            r.appends += 1;
        });
        self.buffered_samples += samples;
        let Some(vad) = self.config.vad.clone() else {
            self.received_samples += samples;
            return Ok(());
        };
        self.carry.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
        let threshold = vad.rms_threshold();
        let mut offset = 0;
        while self.carry.len() - offset >= FRAME {
            let frame = &self.carry[offset..offset + FRAME];
            offset += FRAME;
            self.received_samples += FRAME as u64;
            let energy = frame.iter().map(|s| (*s as f64) * (*s as f64)).sum::<f64>() / FRAME as f64;
            let loud = energy.sqrt() > threshold;
            let now_ms = self.received_samples * 1000 / RATE;
            if loud {
                self.silence_ms = 0;
                if !self.in_speech {
                    self.speech_run += 1;
                    if self.speech_run >= 2 {
                        self.in_speech = true;
                        let start = now_ms.saturating_sub(20 + vad.prefix_padding_ms);
                        self.speech_started(sink, start, &vad).await?;
                    }
                }
            } else {
                self.speech_run = 0;
                if self.in_speech {
                    self.silence_ms += 10;
                    if self.silence_ms >= vad.silence_duration_ms {
                        self.in_speech = false;
                        let end = now_ms.saturating_sub(self.silence_ms) + 10;
                        self.silence_ms = 0;
                        let item_id = self.user_item.clone().unwrap_or_default();
                        self.send(sink, json!({ "type": "input_audio_buffer.speech_stopped", "audio_end_ms": end, "item_id": item_id })).await?;
                        self.commit_user_turn(sink, Some(vad.create_response)).await?;
                    }
                }
            }
        }
        self.carry.drain(..offset);
        Ok(())
    }

    pub(super) async fn speech_started(&mut self, sink: &mut Sink, start_ms: u64, vad: &Vad) -> Result<(), String> {
        let item_id = self.next_id("item");
        self.user_item = Some(item_id.clone());
        self.record(|r| r.speech_starts += 1);
        self.send(sink, json!({ "type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms, "item_id": item_id })).await?;
        if self.response.is_some() && vad.interrupt_response {
            self.cancel_response(sink, "turn_detected").await?;
        }
        Ok(())
    }

    /// The caller's turn becomes a user item; its transcript comes from the script.
    pub(super) async fn commit_user_turn(&mut self, sink: &mut Sink, create_response: Option<bool>) -> Result<(), String> {
        let item_id = self.user_item.take().unwrap_or_else(|| self.next_id("item"));
        self.buffered_samples = 0;
        let turn = {
            let mut script = self.shared.script.lock().unwrap();
            let turn = self.options().turns.get(script.next_turn).cloned();
            script.next_turn += 1;
            script.greeted = true;
            turn.unwrap_or_else(|| ScriptTurn::new("", self.options().fallback_answer.clone()))
        };
        if turn.transcript == TranscriptTiming::BeforeItem {
            self.deliver_transcript(sink, &item_id, &turn).await?;
        }
        let previous = self.last_item.clone();
        self.send(sink, json!({ "type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id })).await?;
        let item = json!({ "id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user", "content": [{ "type": "input_audio", "transcript": null }] });
        let name = self.name("conversation.item.created", "conversation.item.added");
        self.send(sink, json!({ "type": name, "previous_item_id": previous, "item": item })).await?;
        if self.protocol == FakeProtocol::Ga {
            // GA finishes every item, the caller's too: a second event naming the same turn.
            self.send(sink, json!({ "type": "conversation.item.done", "previous_item_id": previous, "item": item })).await?;
        }
        self.items.push(item_id.clone());
        self.last_item = Some(item_id.clone());
        self.spoke_user(&item_id);
        self.record(|r| r.user_turns += 1);
        let responding = create_response.unwrap_or(false) && self.response.is_none();
        let delivered = turn.transcript == TranscriptTiming::BeforeItem;
        if !delivered && (turn.transcript != TranscriptTiming::AfterResponseStarted || !responding) {
            self.deliver_transcript(sink, &item_id, &turn).await?;
        }
        if responding {
            let late = (turn.transcript == TranscriptTiming::AfterResponseStarted).then(|| (item_id, turn.clone()));
            if turn.call_only {
                if let Some((item, turn)) = late {
                    self.deliver_transcript(sink, &item, &turn).await?;
                }
                let call = turn.call.clone().expect("calls_silently sets the call");
                self.call_only_response(sink, &call).await?;
            } else {
                self.start_response(sink, turn.agent.clone(), late, turn.call.clone()).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn deliver_transcript(&mut self, sink: &mut Sink, item_id: &str, turn: &ScriptTurn) -> Result<(), String> {
        if self.config.transcription.is_none() {
            return Ok(()); // no transcription configured: the real service sends nothing
        }
        if self.options().unknown_noise {
            self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.segment", "item_id": item_id, "content_index": 0, "text": turn.user, "id": "seg_1", "speaker": "A", "start": 0.0, "end": 1.0 })).await?;
        }
        if turn.transcript == TranscriptTiming::Failed {
            let error = json!({ "type": "transcription_error", "code": "audio_unintelligible", "message": "Audio could not be transcribed", "param": null });
            self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.failed", "item_id": item_id, "content_index": 0, "error": error })).await?;
            self.told_transcript(item_id, None);
            return Ok(());
        }
        if turn.transcript == TranscriptTiming::BeforeItem {
            // Streamed word by word first, as the GA transcription models do.
            for word in turn.user.split_inclusive(' ') {
                self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.delta", "item_id": item_id, "content_index": 0, "delta": word })).await?;
            }
        }
        self.send(sink, json!({ "type": "conversation.item.input_audio_transcription.completed", "item_id": item_id, "content_index": 0, "transcript": turn.user, "usage": { "type": "duration", "seconds": 2 } })).await?;
        self.told_transcript(item_id, Some(&turn.user));
        Ok(())
    }

    pub(super) fn voice_for(&self, text: &str) -> Arc<[i16]> {
        match &self.options().voice {
            AgentVoice::Pcm(pcm) => pcm.clone(),
            AgentVoice::Tone { ms_per_char } => {
                let samples = (text.chars().count() as u64 * *ms_per_char as u64 * RATE / 1000).max(RATE / 10) as usize;
                (0..samples).map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / RATE as f64).sin() * 6000.0) as i16).collect()
            }
        }
    }
}
