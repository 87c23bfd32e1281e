//! Function tools in the fake realtime service, as the real one handles them: `tools` in
//! session.update are checked for shape; a scripted turn makes the model call a tool with the
//! real event sequence (the item added, `response.function_call_arguments.delta`s and `.done`,
//! the item done, the call in `response.done`'s output); `function_call` items may be replayed
//! and a `function_call_output` must name a call the conversation holds.

use serde_json::{json, Value};

use super::{FakeProtocol, Session, Sink};

/// A function call the scripted model makes at the end of its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptedCall {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

type Refusal = (&'static str, String, String);

/// Checks `session.tools` and `session.tool_choice` like the service.
pub(super) fn validate(session: &Value) -> Result<(), Refusal> {
    if let Some(tools) = session.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err(("invalid_type", "Invalid type for 'session.tools': expected an array.".into(), "session.tools".into()));
        };
        for (i, tool) in tools.iter().enumerate() {
            let param = format!("session.tools[{i}]");
            if tool["type"] != "function" {
                return Err(("invalid_value", format!("Invalid value: {}. Supported values are: 'function' and 'mcp'.", tool["type"]), format!("{param}.type")));
            }
            let name = tool["name"].as_str().unwrap_or_default();
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(("invalid_value", format!("Invalid 'name': '{name}'. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."), format!("{param}.name")));
            }
            if let Some(p) = tool.get("parameters").filter(|p| !p.is_object()) {
                return Err(("invalid_type", format!("Invalid type for '{param}.parameters': expected an object, got {p}."), format!("{param}.parameters")));
            }
            if let Some(key) = tool.as_object().and_then(|o| o.keys().find(|k| !["type", "name", "description", "parameters"].contains(&k.as_str()))) {
                return Err(("unknown_parameter", format!("Unknown parameter: '{param}.{key}'."), format!("{param}.{key}")));
            }
        }
    }
    match session.get("tool_choice") {
        None => Ok(()),
        Some(Value::String(c)) if ["auto", "none", "required"].contains(&c.as_str()) => Ok(()),
        Some(c) if c["type"] == "function" && c["name"].is_string() => Ok(()),
        Some(c) => Err(("invalid_value", format!("Invalid value: {c}. Supported values are: 'none', 'auto', and 'required'."), "session.tool_choice".into())),
    }
}

impl Session {
    /// The model calls `call` as output `output_index` of the response in progress; returns
    /// the finished item for `response.done`'s output.
    pub(super) async fn function_call(&mut self, sink: &mut Sink, response_id: &str, output_index: usize, call: &ScriptedCall) -> Result<Value, String> {
        let item_id = self.next_id("item");
        let call_id = format!("call_{}", &self.next_id("c")[2..]);
        let mut item = json!({ "id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress", "name": call.name, "call_id": call_id, "arguments": "" });
        self.send(sink, json!({ "type": "response.output_item.added", "response_id": response_id, "output_index": output_index, "item": item })).await?;
        let previous = self.last_item.clone();
        let created = self.name("conversation.item.created", "conversation.item.added");
        self.send(sink, json!({ "type": created, "previous_item_id": previous, "item": item })).await?;
        self.items.push(item_id.clone());
        self.last_item = Some(item_id.clone());
        let chars: Vec<char> = call.arguments.chars().collect();
        for chunk in chars.chunks(8) {
            let delta: String = chunk.iter().collect();
            self.send(sink, json!({ "type": "response.function_call_arguments.delta", "response_id": response_id, "item_id": item_id, "output_index": output_index, "call_id": call_id, "delta": delta })).await?;
        }
        let mut done = json!({ "type": "response.function_call_arguments.done", "response_id": response_id, "item_id": item_id, "output_index": output_index, "call_id": call_id, "arguments": call.arguments });
        if self.protocol == FakeProtocol::Ga {
            done["name"] = json!(call.name);
        }
        self.send(sink, done).await?;
        item["status"] = json!("completed");
        item["arguments"] = json!(call.arguments);
        self.send(sink, json!({ "type": "response.output_item.done", "response_id": response_id, "output_index": output_index, "item": item })).await?;
        if self.protocol == FakeProtocol::Ga {
            self.send(sink, json!({ "type": "conversation.item.done", "previous_item_id": previous, "item": item })).await?;
        }
        self.calls.push(call_id);
        let called = call.clone();
        self.record(|r| r.tool_calls.push(called));
        Ok(item)
    }

    /// A response that is only a function call (the model says nothing first).
    pub(super) async fn call_only_response(&mut self, sink: &mut Sink, call: &ScriptedCall) -> Result<(), String> {
        let response_id = self.next_id("resp");
        self.send(sink, json!({ "type": "response.created", "response": { "id": response_id, "object": "realtime.response", "status": "in_progress", "status_details": null, "output": [], "usage": null } })).await?;
        let item = self.function_call(sink, &response_id, 0, call).await?;
        let usage = json!({ "total_tokens": 130, "input_tokens": 120, "output_tokens": 10, "input_token_details": { "text_tokens": 100, "audio_tokens": 20, "cached_tokens": 0 }, "output_token_details": { "text_tokens": 10, "audio_tokens": 0 } });
        self.send(sink, json!({ "type": "response.done", "response": { "id": response_id, "object": "realtime.response", "status": "completed", "status_details": null, "output": [item], "usage": usage } })).await
    }

    /// Checks a `function_call` or `function_call_output` item to be created; None if the
    /// item is a message (checked by the caller).
    pub(super) fn check_tool_item(&self, item: &Value) -> Option<Result<(), Refusal>> {
        let kind = item["type"].as_str().unwrap_or("message");
        let text = |key: &str| item[key].as_str().is_some();
        Some(match kind {
            "message" => return None,
            "function_call" if text("call_id") && text("name") && text("arguments") => Ok(()),
            "function_call" => Err(("missing_required_parameter", "Missing required parameter: 'item.call_id', 'item.name' or 'item.arguments'.".into(), "item".into())),
            "function_call_output" => match item["call_id"].as_str() {
                _ if !text("output") => Err(("missing_required_parameter", "Missing required parameter: 'item.output'.".into(), "item.output".into())),
                Some(id) if self.calls.iter().any(|c| c == id) => Ok(()),
                Some(id) => Err(("invalid_value", format!("Tool call ID '{id}' not found in conversation."), "item.call_id".into())),
                None => Err(("missing_required_parameter", "Missing required parameter: 'item.call_id'.".into(), "item.call_id".into())),
            },
            other => Err(("invalid_value", format!("Invalid value: '{other}'. Supported values are: 'message', 'function_call', and 'function_call_output'."), "item.type".into())),
        })
    }
}
