//! What a `response.create` may hold, per protocol generation, as the real services check it:
//! only the response parameters of that generation (the other one's are unknown parameters,
//! as `temperature` is on GA), and each of a known type.

use serde_json::Value;

use super::FakeProtocol;

type Refusal = (&'static str, String, String);

/// The parameters of `response` each generation accepts.
const BETA: &[&str] = &[
    "instructions", "modalities", "voice", "output_audio_format", "tools", "tool_choice", "temperature",
    "max_response_output_tokens", "conversation", "metadata", "input",
];
const GA: &[&str] = &["instructions", "output_modalities", "audio", "tools", "tool_choice", "max_output_tokens", "conversation", "metadata", "input", "prompt"];

/// Checks a `response.create` event like the service; the refusal is (code, message, param).
pub(super) fn validate(protocol: FakeProtocol, event: &Value) -> Result<(), Refusal> {
    let Some(response) = event.get("response") else { return Ok(()) };
    let Some(map) = response.as_object() else {
        return Err(("invalid_type", format!("Invalid type for 'response': expected an object, but got {}.", kind(response)), "response".into()));
    };
    let allowed = match protocol {
        FakeProtocol::Beta => BETA,
        FakeProtocol::Ga => GA,
    };
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(("unknown_parameter", format!("Unknown parameter: 'response.{key}'."), format!("response.{key}")));
    }
    let typed: [(&str, fn(&Value) -> bool, &str); 4] = [
        ("instructions", Value::is_string, "a string"),
        ("metadata", |v| v.is_object() || v.is_null(), "an object"),
        ("tools", Value::is_array, "an array"),
        ("temperature", Value::is_number, "a number"),
    ];
    for (key, ok, expected) in typed {
        if let Some(v) = map.get(key).filter(|v| !ok(v)) {
            return Err(("invalid_type", format!("Invalid type for 'response.{key}': expected {expected}, but got {}.", kind(v)), format!("response.{key}")));
        }
    }
    if let Some(c) = map.get("conversation").filter(|c| !matches!(c.as_str(), Some("auto" | "none"))) {
        return Err(("invalid_value", format!("Invalid value: {c}. Supported values are: 'auto' and 'none'."), "response.conversation".into()));
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
