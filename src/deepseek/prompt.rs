//! What DeepSeek is asked and how its answer is read: the prompt (the anketa's shape from the
//! configured fields, the dialogue numbered by message seq so that evidence can cite it) and
//! the answer's two shapes (fields with evidence, or flat fields).

use consultant_actors::{Anketa, AnketaField, DialogueMessage, FieldKind, Role};
use serde_json::Value;

pub(super) fn kind_name(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Text => "строка",
        FieldKind::List => "список строк",
        FieldKind::Number => "число",
        FieldKind::Bool => "true или false",
    }
}

fn kind_example(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Text => "\"строка\"",
        FieldKind::List => "[\"строка\", \"...\"]",
        FieldKind::Number => "число",
        FieldKind::Bool => "true | false",
    }
}

/// The answer's fields and evidence: `{"anketa": {...}, "evidence": {...}}` as the prompt asks,
/// or a flat object of fields (as it asked before evidence, and as a model may still answer),
/// whose `evidence` key is then the evidence. Keys of a configured field keep their meaning.
pub(super) fn split_answer(raw: Value, fields: &[AnketaField]) -> (Value, Option<Value>) {
    let configured = |key: &str| fields.iter().any(|f| f.name == key);
    let Value::Object(mut object) = raw else { return (raw, None) };
    let evidence = if configured("evidence") { None } else { object.remove("evidence") };
    match object.remove("anketa") {
        Some(inner @ Value::Object(_)) if !configured("anketa") => (inner, evidence),
        Some(other) => {
            object.insert("anketa".into(), other);
            (Value::Object(object), evidence)
        }
        None => (Value::Object(object), evidence),
    }
}

/// The system prompt: the word "json" (JSON mode refuses prompts without it) and the target
/// shape built from the configured fields, with the evidence beside them.
pub(super) fn system_prompt(fields: &[AnketaField]) -> String {
    let mut shape = String::from("{\n  \"anketa\": {\n");
    for (i, field) in fields.iter().enumerate() {
        let comma = if i + 1 < fields.len() { "," } else { "" };
        let name = Value::String(field.name.clone());
        shape.push_str(&format!("    {name}: {}{comma}\n", kind_example(field.kind)));
    }
    shape.push_str("  },\n  \"evidence\": {\n    \"<поле анкеты>\": [номер реплики, ...]\n  }\n}");
    let mut described = String::new();
    for field in fields {
        described.push_str(&format!("- {} ({}): {}\n", field.name, kind_name(field.kind), field.description.trim()));
    }
    format!(
        "Ты заполняешь анкету клиента по расшифровке голосовой консультации.\n\
         Ответь строго одним объектом json, без пояснений и без markdown, такой формы:\n\
         {shape}\n\n\
         Поля анкеты:\n\
         {described}\n\
         Правила:\n\
         - Заполняй только то, что клиент сказал сам или явно подтвердил; ничего не выдумывай.\n\
         - Если значение неизвестно, пиши null.\n\
         - Тебе дана предыдущая анкета: сохраняй её значения, если клиент их не менял, и заменяй, если менял.\n\
         - Не добавляй полей, которых нет в форме, и соблюдай типы значений.\n\
         - Реплики диалога пронумерованы (номер в квадратных скобках). В evidence для каждого заполненного \
         поля перечисли номера реплик, из которых взято значение; для полей без значения ничего не указывай."
    )
}

pub(super) fn user_prompt(dialogue: &[DialogueMessage], previous: &Anketa) -> String {
    let mut text = format!("Предыдущая анкета (json):\n{}\n\nДиалог:\n", previous.to_json());
    for message in dialogue {
        let speaker = match message.role {
            Role::User => "Клиент",
            Role::Assistant => "Консультант",
            // Nobody said these: the anketa comes from the spoken dialogue only.
            Role::ToolCall | Role::ToolResult => continue,
        };
        // One message, one line, numbered by its seq so that the evidence can cite it.
        let line = message.text.split_whitespace().collect::<Vec<_>>().join(" ");
        text.push_str(&format!("[{}] {speaker}: {line}\n", message.seq));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(names: &[&str]) -> Vec<AnketaField> {
        names.iter().map(|n| AnketaField { name: (*n).into(), description: String::new(), kind: FieldKind::Text, required: true }).collect()
    }

    #[test]
    fn answers_with_evidence_flat_answers_and_fields_named_like_the_shape() {
        let f = fields(&["name"]);
        let nested = json!({"anketa": {"name": "Ольга"}, "evidence": {"name": [2]}});
        assert_eq!(split_answer(nested, &f), (json!({"name": "Ольга"}), Some(json!({"name": [2]}))));
        assert_eq!(split_answer(json!({"name": "Ольга"}), &f), (json!({"name": "Ольга"}), None));
        let flat_cited = json!({"name": "Ольга", "evidence": {"name": [2]}});
        assert_eq!(split_answer(flat_cited, &f), (json!({"name": "Ольга"}), Some(json!({"name": [2]}))));
        // Not an object of fields: left for validation to refuse (or report) as it is.
        assert_eq!(split_answer(json!({"anketa": "Ольга"}), &f), (json!({"anketa": "Ольга"}), None));
        assert_eq!(split_answer(json!([1]), &f), (json!([1]), None));
        // A configured field called "anketa" or "evidence" is a field, not the shape.
        let f = fields(&["anketa", "evidence"]);
        let raw = json!({"anketa": {"x": 1}, "evidence": "паспорт"});
        assert_eq!(split_answer(raw.clone(), &f), (raw, None));
    }

    #[test]
    fn dialogue_lines_are_numbered_by_seq() {
        let at = chrono::Utc::now();
        let dialogue = [
            DialogueMessage { seq: 3, role: Role::Assistant, text: "Как вас\nзовут?".into(), at, interrupted: false },
            DialogueMessage { seq: 4, role: Role::User, text: "Ольга".into(), at, interrupted: false },
        ];
        let text = user_prompt(&dialogue, &Anketa::default());
        assert!(text.ends_with("Диалог:\n[3] Консультант: Как вас зовут?\n[4] Клиент: Ольга\n"), "{text}");
    }
}
