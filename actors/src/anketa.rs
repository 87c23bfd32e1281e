//! The anketa (consultation questionnaire): its configured fields, validation of what the
//! extractor returns, and the merge rule (a later non-empty value wins; lists are unioned).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The JSON type a field must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    Text,
    List,
    Number,
    Bool,
}

/// One configured anketa field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnketaField {
    pub name: String,
    pub description: String,
    #[serde(default = "default_kind")]
    pub kind: FieldKind,
    /// The consultant must find this out: while it is unknown, the dialogue is steered to it.
    #[serde(default = "default_required")]
    pub required: bool,
}

fn default_kind() -> FieldKind {
    FieldKind::Text
}

fn default_required() -> bool {
    true
}

/// A (possibly partial) anketa: field name -> value. Only configured fields ever get in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Anketa(pub BTreeMap<String, Value>);

/// What validation removed from an extractor's answer, for the log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidationReport {
    pub unknown_fields: Vec<String>,
    /// (field, expected kind, what came instead)
    pub wrong_types: Vec<(String, FieldKind, String)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnketaError {
    #[error("the anketa must be a JSON object, got {0}")]
    NotAnObject(&'static str),
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Empty values never overwrite filled ones (and nothing can be cited for them).
pub fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

impl Anketa {
    /// Validates an extractor's JSON against the configured fields: unknown fields are dropped,
    /// values of the wrong type are rejected (dropped and reported), nulls are ignored.
    pub fn validate(raw: &Value, fields: &[AnketaField]) -> Result<(Anketa, ValidationReport), AnketaError> {
        let object = raw.as_object().ok_or(AnketaError::NotAnObject(json_kind(raw)))?;
        let mut anketa = Anketa::default();
        let mut report = ValidationReport::default();
        for (name, value) in object {
            let Some(field) = fields.iter().find(|f| &f.name == name) else {
                report.unknown_fields.push(name.clone());
                continue;
            };
            if value.is_null() {
                continue;
            }
            let accepted = match (field.kind, value) {
                (FieldKind::Text, Value::String(s)) => Some(Value::String(s.trim().to_owned())),
                (FieldKind::Number, Value::Number(_)) => Some(value.clone()),
                (FieldKind::Bool, Value::Bool(_)) => Some(value.clone()),
                (FieldKind::List, Value::Array(items)) if items.iter().all(Value::is_string) => {
                    Some(value.clone())
                }
                _ => None,
            };
            match accepted {
                Some(v) => {
                    anketa.0.insert(name.clone(), v);
                }
                None => report
                    .wrong_types
                    .push((name.clone(), field.kind, json_kind(value).to_owned())),
            }
        }
        Ok((anketa, report))
    }

    /// Merges a newer extraction into this one: a later non-empty value wins, lists union
    /// (order kept, duplicates dropped).
    pub fn merge(&mut self, newer: &Anketa) {
        for (name, value) in &newer.0 {
            if is_empty_value(value) {
                continue;
            }
            match (self.0.get_mut(name), value) {
                (Some(Value::Array(existing)), Value::Array(items)) => {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
                _ => {
                    self.0.insert(name.clone(), value.clone());
                }
            }
        }
    }

    /// The filled fields as a person reads them: `description: value`, one per line, in
    /// configured order (lists joined with commas).
    pub fn readable(&self, fields: &[AnketaField]) -> String {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => if *b { "да" } else { "нет" }.to_owned(),
            Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join(", "),
            other => other.to_string(),
        };
        fields
            .iter()
            .filter(|f| self.has(&f.name))
            .map(|f| {
                let label = if f.description.trim().is_empty() { &f.name } else { &f.description };
                format!("{label}: {}", text(&self.0[&f.name]))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether this field holds a non-empty value.
    pub fn has(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| !is_empty_value(v))
    }

    /// Required fields still without a value, in configured order.
    pub fn missing<'a>(&self, fields: &'a [AnketaField]) -> Vec<&'a AnketaField> {
        fields.iter().filter(|f| f.required && !self.has(&f.name)).collect()
    }

    /// How many fields hold a non-empty value.
    pub fn filled(&self) -> usize {
        self.0.values().filter(|v| !is_empty_value(v)).count()
    }

    pub fn to_json(&self) -> Value {
        Value::Object(self.0.clone().into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Vec<AnketaField> {
        vec![
            AnketaField { name: "name".into(), description: "".into(), kind: FieldKind::Text, required: true },
            AnketaField { name: "goals".into(), description: "".into(), kind: FieldKind::List, required: true },
            AnketaField { name: "budget".into(), description: "".into(), kind: FieldKind::Number, required: true },
        ]
    }

    #[test]
    fn drops_unknown_and_rejects_wrong_types() {
        let raw = json!({"name": "Анна", "hacker": 1, "budget": "много", "goals": ["a", 2]});
        let (a, report) = Anketa::validate(&raw, &fields()).unwrap();
        assert_eq!(a.0.get("name"), Some(&json!("Анна")));
        assert_eq!(a.0.len(), 1);
        assert_eq!(report.unknown_fields, vec!["hacker"]);
        assert_eq!(report.wrong_types.len(), 2);
    }

    #[test]
    fn missing_lists_required_fields_without_a_value_in_order() {
        let mut fields = fields();
        fields[1].required = false;
        let a = Anketa::validate(&json!({"name": "  ", "budget": 3}), &fields).unwrap().0;
        let names: Vec<&str> = a.missing(&fields).iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["name"], "empty counts as missing; optional fields never do");
        let field: AnketaField = serde_json::from_value(json!({"name": "x", "description": "y"})).unwrap();
        assert!(field.required && field.kind == FieldKind::Text, "required by default, as in existing config files");
    }

    #[test]
    fn readable_names_fields_by_description_in_order() {
        let mut fields = fields();
        fields[0].description = "Имя клиента".into();
        let a = Anketa::validate(&json!({"goals": ["сайт", "бот"], "name": "Анна"}), &fields).unwrap().0;
        assert_eq!(a.readable(&fields), "Имя клиента: Анна\ngoals: сайт, бот");
    }

    #[test]
    fn not_an_object_is_an_error() {
        assert!(Anketa::validate(&json!([1]), &fields()).is_err());
    }

    #[test]
    fn later_non_empty_wins_and_lists_union() {
        let mut a = Anketa::validate(&json!({"name": "Анна", "goals": ["сайт"]}), &fields()).unwrap().0;
        let b = Anketa::validate(&json!({"name": "", "goals": ["сайт", "бот"], "budget": 5}), &fields())
            .unwrap()
            .0;
        a.merge(&b);
        assert_eq!(a.0["name"], json!("Анна"));
        assert_eq!(a.0["goals"], json!(["сайт", "бот"]));
        assert_eq!(a.0["budget"], json!(5));
        assert_eq!(a.filled(), 3);
        let c = Anketa::validate(&json!({"name": "Анна Петровна"}), &fields()).unwrap().0;
        a.merge(&c);
        assert_eq!(a.0["name"], json!("Анна Петровна"));
    }
}
