//! Client events of the Realtime protocol, in the shape of the flavour's generation: the
//! session configuration, replayed history (text and tool items), responses, truncation, tool
//! outputs, and the audio appends (the hot path, written without a JSON tree).

use consultant_actors::dialogue::ToolResult;
use consultant_actors::ports::ToolSpec;
use serde_json::{json, Value};

use crate::realtime::config::{NoiseReduction, Protocol, RealtimeConfig, TurnDetection};


/// Only fields the flavour accepts: `RealtimeConfig::validate` refuses the others at start-up.
fn turn_detection(config: &RealtimeConfig) -> Value {
    match config.turn_detection {
        TurnDetection::ServerVad => {
            let mut td = json!({
                "type": "server_vad",
                "threshold": config.vad.threshold,
                "prefix_padding_ms": config.vad.prefix_padding_ms,
                "silence_duration_ms": config.vad.silence_duration_ms,
                "create_response": true,
                "interrupt_response": true,
            });
            if config.idle_timeout_ms > 0 && config.flavour.protocol() == Protocol::Ga {
                td["idle_timeout_ms"] = json!(config.idle_timeout_ms);
            }
            td
        }
        TurnDetection::SemanticVad => json!({
            "type": "semantic_vad",
            "eagerness": config.eagerness.as_str(),
            "create_response": true,
            "interrupt_response": true,
        }),
    }
}

fn transcription(config: &RealtimeConfig) -> Value {
    let mut t = json!({ "model": config.transcription_model });
    if let Some(language) = config.transcription_language.as_deref().filter(|l| !l.is_empty()) {
        t["language"] = json!(language);
    }
    t
}

/// Function tools in the session: the same flat shape on every flavour.
fn tools(specs: &[ToolSpec]) -> Value {
    specs
        .iter()
        .map(|t| json!({ "type": "function", "name": t.name, "description": t.description, "parameters": t.parameters }))
        .collect()
}

/// The full session configuration in the shape of the flavour's protocol.
pub fn session_update(config: &RealtimeConfig, instructions: &str, specs: &[ToolSpec]) -> Value {
    let mut session = match config.flavour.protocol() {
        Protocol::Beta => json!({
            // Azure preview rejects audio alone.
            "modalities": ["audio", "text"],
            "instructions": instructions,
            "voice": config.voice,
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": transcription(config),
            "turn_detection": turn_detection(config),
        }),
        Protocol::Ga => json!({
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": instructions,
            "audio": {
                "input": {
                    "format": { "type": "audio/pcm", "rate": 24000 },
                    "transcription": transcription(config),
                    "turn_detection": turn_detection(config),
                },
                "output": {
                    "format": { "type": "audio/pcm", "rate": 24000 },
                    "voice": config.voice,
                },
            },
        }),
    };
    if !specs.is_empty() {
        session["tools"] = tools(specs);
        session["tool_choice"] = json!("auto");
    }
    if let (Protocol::Beta, Some(t)) = (config.flavour.protocol(), config.temperature) {
        session["temperature"] = json!(t);
    }
    if let (Protocol::Ga, NoiseReduction::NearField | NoiseReduction::FarField) = (config.flavour.protocol(), config.noise_reduction) {
        session["audio"]["input"]["noise_reduction"] = json!({ "type": config.noise_reduction.as_str() });
    }
    json!({ "type": "session.update", "session": session })
}

/// Only the instructions change (wrap-up).
pub fn instructions_update(protocol: Protocol, instructions: &str) -> Value {
    match protocol {
        Protocol::Beta => json!({ "type": "session.update", "session": { "instructions": instructions } }),
        Protocol::Ga => json!({ "type": "session.update", "session": { "type": "realtime", "instructions": instructions } }),
    }
}

/// A dialogue message replayed as a text item. Assistant text is `text` on the beta protocol
/// (Azure preview refuses `output_text`) and `output_text` on GA.
pub fn history_item(protocol: Protocol, item_id: &str, previous_item_id: &str, assistant: bool, text: &str) -> Value {
    let (role, content_type) = match (assistant, protocol) {
        (false, _) => ("user", "input_text"),
        (true, Protocol::Beta) => ("assistant", "text"),
        (true, Protocol::Ga) => ("assistant", "output_text"),
    };
    json!({
        "type": "conversation.item.create",
        "previous_item_id": previous_item_id,
        "item": {
            "id": item_id,
            "type": "message",
            "role": role,
            "content": [{ "type": content_type, "text": text }],
        },
    })
}

/// A tool entry of the dialogue replayed as its item (the call, or our output for it).
pub fn history_tool_item(item_id: &str, previous_item_id: &str, entry: &consultant_actors::dialogue::ToolEntry) -> Value {
    use consultant_actors::dialogue::ToolEntry;
    let item = match entry {
        ToolEntry::Call(c) => json!({ "id": item_id, "type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments }),
        ToolEntry::Result(r) => json!({ "id": item_id, "type": "function_call_output", "call_id": r.call_id, "output": r.output }),
    };
    json!({ "type": "conversation.item.create", "previous_item_id": previous_item_id, "item": item })
}

/// Our answer to a function call of the model's.
pub fn tool_result(result: &ToolResult) -> Value {
    json!({ "type": "conversation.item.create", "item": { "type": "function_call_output", "call_id": result.call_id, "output": result.output } })
}

pub fn response_create(instructions: Option<&str>) -> Value {
    match instructions {
        Some(i) => json!({ "type": "response.create", "response": { "instructions": i } }),
        None => json!({ "type": "response.create" }),
    }
}

pub fn truncate(item_id: &str, content_index: u32, audio_end_ms: u64) -> Value {
    json!({ "type": "conversation.item.truncate", "item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms })
}

/// Appends `input_audio_buffer.append` for `pcm` (PCM16 LE, whole samples) to `out`.
pub fn write_audio_append(out: &mut String, pcm: &[i16], scratch: &mut Vec<u8>) {
    use base64::Engine;
    scratch.clear();
    scratch.reserve(pcm.len() * 2);
    for s in pcm {
        scratch.extend_from_slice(&s.to_le_bytes());
    }
    out.push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
    base64::engine::general_purpose::STANDARD.encode_string(scratch.as_slice(), out);
    out.push_str("\"}");
}

/// Decodes a base64 PCM16 LE delta. A trailing odd byte (never seen, but not ours to trust)
/// is dropped.
pub fn decode_pcm(b64: &str, scratch: &mut Vec<u8>) -> Result<Vec<i16>, base64::DecodeError> {
    use base64::Engine;
    scratch.clear();
    base64::engine::general_purpose::STANDARD.decode_vec(b64, scratch)?;
    Ok(scratch.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect())
}

