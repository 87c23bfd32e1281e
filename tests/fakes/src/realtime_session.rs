//! What a session.update may hold, per protocol generation, as the real services check it:
//! the other generation's fields are unknown parameters, GA requires `session.type`, each turn
//! detection type takes only its own fields (and Azure's preview knows no semantic_vad), noise
//! reduction is near_field or far_field, and GA audio formats name their 24 kHz rate.

use serde_json::Value;

use super::FakeProtocol;

/// Validates a session.update like the real service: the other generation's fields are
/// unknown parameters; GA requires session.type.
pub(super) fn validate(protocol: FakeProtocol, azure: bool, session: &Value) -> Result<(), (&'static str, String, String)> {
    let Some(map) = session.as_object() else {
        return Err(("invalid_type", "Invalid type for 'session': expected an object.".into(), "session".into()));
    };
    let (allowed, required_type): (&[&str], bool) = match protocol {
        FakeProtocol::Beta => (
            &["modalities", "instructions", "voice", "input_audio_format", "output_audio_format", "input_audio_transcription", "turn_detection", "tools", "tool_choice", "temperature", "max_response_output_tokens", "input_audio_noise_reduction", "speed", "tracing"],
            false,
        ),
        FakeProtocol::Ga => (&["type", "output_modalities", "instructions", "audio", "tools", "tool_choice", "max_output_tokens", "tracing", "truncation", "prompt", "include", "model"], true),
    };
    if required_type {
        match map.get("type").and_then(Value::as_str) {
            Some("realtime") => {}
            Some(other) => return Err(("invalid_value", format!("Invalid value: '{other}'. Supported values are: 'realtime' and 'transcription'."), "session.type".into())),
            None => return Err(("missing_required_parameter", "Missing required parameter: 'session.type'.".into(), "session.type".into())),
        }
    }
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(("unknown_parameter", format!("Unknown parameter: 'session.{key}'."), format!("session.{key}")));
        }
    }
    if protocol == FakeProtocol::Beta && azure {
        if let Some(modalities) = map.get("modalities").and_then(Value::as_array) {
            if !modalities.iter().any(|m| m == "text") {
                return Err(("invalid_value", "Invalid modalities: ['audio']. Supported combinations are: ['text'] and ['audio', 'text'].".into(), "session.modalities".into()));
            }
        }
    }
    check_formats(protocol, session)?;
    let turn_detection = match protocol {
        FakeProtocol::Beta => map.get("turn_detection"),
        FakeProtocol::Ga => session.pointer("/audio/input/turn_detection"),
    };
    let (td_param, noise, noise_param) = match protocol {
        FakeProtocol::Beta => ("session.turn_detection", map.get("input_audio_noise_reduction"), "session.input_audio_noise_reduction"),
        FakeProtocol::Ga => ("session.audio.input.turn_detection", session.pointer("/audio/input/noise_reduction"), "session.audio.input.noise_reduction"),
    };
    if let Some(td) = turn_detection.filter(|t| !t.is_null()) {
        // Each type takes its own fields; idle_timeout_ms came with the GA protocol.
        let allowed: &[&str] = match (td["type"].as_str(), protocol) {
            // Azure's preview deployments know only server VAD.
            (Some("semantic_vad"), FakeProtocol::Beta) if azure => {
                return Err(("invalid_value", "Invalid value: 'semantic_vad'. Supported values are: 'server_vad'.".into(), format!("{td_param}.type")))
            }
            (Some("server_vad"), FakeProtocol::Ga) => &["type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response", "idle_timeout_ms"],
            (Some("server_vad"), FakeProtocol::Beta) => &["type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response"],
            (Some("semantic_vad"), _) => &["type", "eagerness", "create_response", "interrupt_response"],
            _ => return Err(("invalid_value", "Invalid turn_detection.type".into(), format!("{td_param}.type"))),
        };
        if let Some(key) = td.as_object().and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str()))) {
            return Err(("unknown_parameter", format!("Unknown parameter: '{td_param}.{key}'."), format!("{td_param}.{key}")));
        }
        if let Some(e) = td.get("eagerness") {
            if !matches!(e.as_str(), Some("low" | "medium" | "high" | "auto")) {
                return Err(("invalid_value", format!("Invalid value: {e}. Supported values are: 'low', 'medium', 'high', and 'auto'."), format!("{td_param}.eagerness")));
            }
        }
    }
    if let Some(n) = noise.filter(|n| !n.is_null()) {
        if !matches!(n["type"].as_str(), Some("near_field" | "far_field")) || n.as_object().is_some_and(|o| o.len() != 1) {
            return Err(("invalid_value", "Invalid noise reduction: expected {\"type\": 'near_field' or 'far_field'}.".into(), format!("{noise_param}.type")));
        }
    }
    if protocol == FakeProtocol::Ga {
        let nested: [(&str, &[&str]); 3] = [
            ("audio", &["input", "output"]),
            ("audio/input", &["format", "transcription", "turn_detection", "noise_reduction"]),
            ("audio/output", &["format", "voice", "speed"]),
        ];
        for (path, allowed) in nested {
            let Some(object) = session.pointer(&format!("/{path}")).and_then(Value::as_object) else { continue };
            if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
                let param = format!("session.{}.{key}", path.replace('/', "."));
                return Err(("unknown_parameter", format!("Unknown parameter: '{param}'."), param));
            }
        }
    }
    Ok(())
}

/// The audio formats: beta names them (`pcm16`, G.711); GA takes `{type, rate}` objects where
/// PCM must say its rate, and only 24 kHz exists.
fn check_formats(protocol: FakeProtocol, session: &Value) -> Result<(), (&'static str, String, String)> {
    match protocol {
        FakeProtocol::Beta => {
            for key in ["input_audio_format", "output_audio_format"] {
                if let Some(format) = session.get(key).filter(|f| !matches!(f.as_str(), Some("pcm16" | "g711_ulaw" | "g711_alaw"))) {
                    return Err(("invalid_value", format!("Invalid value: {format}. Supported values are: 'pcm16', 'g711_ulaw', and 'g711_alaw'."), format!("session.{key}")));
                }
            }
        }
        FakeProtocol::Ga => {
            for direction in ["input", "output"] {
                let Some(format) = session.pointer(&format!("/audio/{direction}/format")) else { continue };
                let param = format!("session.audio.{direction}.format");
                match format["type"].as_str() {
                    Some("audio/pcm") => {
                        if format.get("rate").and_then(Value::as_u64) != Some(24_000) {
                            let got = format.get("rate").map_or("none".to_owned(), Value::to_string);
                            return Err(("invalid_value", format!("Invalid value: {got}. Supported values are: 24000."), format!("{param}.rate")));
                        }
                    }
                    Some("audio/pcmu" | "audio/pcma") => {}
                    _ => return Err(("invalid_value", format!("Invalid value: {}. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'.", format["type"]), format!("{param}.type"))),
                }
                if let Some(key) = format.as_object().and_then(|o| o.keys().find(|k| !["type", "rate"].contains(&k.as_str()))) {
                    return Err(("unknown_parameter", format!("Unknown parameter: '{param}.{key}'."), format!("{param}.{key}")));
                }
            }
        }
    }
    Ok(())
}
