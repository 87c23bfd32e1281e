//! Where each anketa value came from: the dialogue messages the extractor cited for it, the
//! extraction that set it, and the values it had before.
//!
//! An extraction is named by the dialogue length it read (its message count), the same number
//! the anketa snapshots carry. Evidence cited by the extractor is validated here, against the
//! dialogue it was sent and the values it returned, so that a stored citation always points at
//! a real message.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::anketa::{is_empty_value, Anketa, AnketaField};
use crate::dialogue::DialogueMessage;

/// Field name -> the message sequence numbers (`DialogueMessage::seq`) its value was read from.
pub type Evidence = BTreeMap<String, Vec<u32>>;

/// What an extractor returns: the validated anketa and the evidence that survived validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtractedAnketa {
    pub anketa: Anketa,
    /// Only fields present in `anketa`, only messages of the dialogue sent; sorted, no repeats.
    pub evidence: Evidence,
    /// Citations validation dropped (see [`validate_evidence`]).
    pub evidence_dropped: usize,
}

impl ExtractedAnketa {
    /// An answer that cites nothing (an extractor that does not know where values came from).
    pub fn without_evidence(anketa: Anketa) -> Self {
        Self { anketa, evidence: Evidence::new(), evidence_dropped: 0 }
    }
}

/// Why citations were dropped, for the log. Each dropped citation (a field and one message
/// number) counts once in `dropped`; an entry that is not a list of numbers counts once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvidenceReport {
    /// (field, what was cited): not a message of the dialogue sent, or not a message number.
    pub unknown_messages: Vec<(String, Value)>,
    /// Cited fields that are not configured anketa fields.
    pub unknown_fields: Vec<String>,
    /// Configured fields cited although the answer gave them no (valid) value.
    pub without_value: Vec<String>,
    pub dropped: usize,
}

/// Keeps the citations that point at a message of `dialogue` for a field `anketa` has a value
/// for; `raw` is the extractor's `{"field": [seq, ...]}` (a lone number stands for a list of
/// one). Never fails: whatever does not validate is dropped and reported.
pub fn validate_evidence(raw: Option<&Value>, anketa: &Anketa, fields: &[AnketaField], dialogue: &[DialogueMessage]) -> (Evidence, EvidenceReport) {
    let mut evidence = Evidence::new();
    let mut report = EvidenceReport::default();
    let Some(raw) = raw.filter(|v| !v.is_null()) else { return (evidence, report) };
    let Some(object) = raw.as_object() else {
        report.unknown_messages.push(("evidence".into(), raw.clone()));
        report.dropped += 1;
        return (evidence, report);
    };
    let known: BTreeSet<u32> = dialogue.iter().map(|m| m.seq).collect();
    for (name, cited) in object {
        let items: Vec<&Value> = match cited {
            Value::Array(items) => items.iter().collect(),
            Value::Null => continue,
            one => vec![one],
        };
        if !fields.iter().any(|f| &f.name == name) {
            report.unknown_fields.push(name.clone());
            report.dropped += items.len().max(1);
            continue;
        }
        if !anketa.0.get(name).is_some_and(|v| !is_empty_value(v)) {
            report.without_value.push(name.clone());
            report.dropped += items.len().max(1);
            continue;
        }
        let mut seqs = BTreeSet::new();
        for item in items {
            match item.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| known.contains(n)) {
                Some(seq) => {
                    seqs.insert(seq);
                }
                None => {
                    report.unknown_messages.push((name.clone(), item.clone()));
                    report.dropped += 1;
                }
            }
        }
        if !seqs.is_empty() {
            evidence.insert(name.clone(), seqs.into_iter().collect());
        }
    }
    (evidence, report)
}

/// A value a field held before a later extraction changed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PastValue {
    pub value: Value,
    pub evidence: Vec<u32>,
    pub set_at: usize,
}

/// The provenance of one field's current value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldProvenance {
    /// Messages the current value was read from; empty when the extractor cited none.
    pub evidence: Vec<u32>,
    /// Message count of the extraction that set or last changed the value.
    pub set_at: usize,
    /// Earlier values, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PastValue>,
}

/// Field name -> the provenance of its value; only fields the anketa holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Provenance {
    pub fields: BTreeMap<String, FieldProvenance>,
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter().chain(b).copied().collect::<BTreeSet<_>>().into_iter().collect()
}

impl Provenance {
    /// Merges an extraction of the first `set_at` messages into `anketa` ([`Anketa::merge`]:
    /// a later non-empty value wins, lists union) and records where each value came from:
    /// - a new field: its evidence, set at `set_at`;
    /// - a changed value: the old value with its evidence goes to the history; the new one
    ///   gets the new evidence and `set_at`. A list that gained items is a changed value whose
    ///   evidence is the union of both: the items it kept are still backed by their messages;
    /// - the same value again: it keeps its `set_at`, and the new citations join its evidence.
    pub fn merge(&mut self, anketa: &mut Anketa, extracted: &ExtractedAnketa, set_at: usize) {
        let before = anketa.clone();
        anketa.merge(&extracted.anketa);
        // Only what the extraction returned (non-empty) can have changed or been re-cited.
        for name in extracted.anketa.0.iter().filter(|(_, v)| !is_empty_value(v)).map(|(name, _)| name) {
            let Some(value) = anketa.0.get(name) else { continue };
            let cited = extracted.evidence.get(name).map(Vec::as_slice).unwrap_or_default();
            let Some(old) = before.0.get(name) else {
                self.fields.insert(name.clone(), FieldProvenance { evidence: cited.to_vec(), set_at, history: Vec::new() });
                continue;
            };
            // A value stored before provenance was kept has no known origin: set at 0.
            let field = self.fields.entry(name.clone()).or_insert_with(|| FieldProvenance { evidence: Vec::new(), set_at: 0, history: Vec::new() });
            if old == value {
                field.evidence = union(&field.evidence, cited);
                continue;
            }
            let evidence = if value.is_array() { union(&field.evidence, cited) } else { cited.to_vec() };
            let past = PastValue { value: old.clone(), evidence: std::mem::replace(&mut field.evidence, evidence), set_at: field.set_at };
            field.history.push(past);
            field.set_at = set_at;
        }
    }

    pub fn get(&self, field: &str) -> Option<&FieldProvenance> {
        self.fields.get(field)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anketa::FieldKind;
    use crate::dialogue::Role;
    use serde_json::json;

    fn fields() -> Vec<AnketaField> {
        let field = |name: &str, kind| AnketaField { name: name.into(), description: String::new(), kind, required: true };
        vec![field("name", FieldKind::Text), field("goals", FieldKind::List), field("budget", FieldKind::Number)]
    }

    fn dialogue(n: u32) -> Vec<DialogueMessage> {
        (1..=n).map(|seq| DialogueMessage { seq, role: Role::User, text: format!("реплика {seq}"), at: chrono::Utc::now(), interrupted: false }).collect()
    }

    fn extracted(raw: Value, evidence: Value, messages: u32) -> ExtractedAnketa {
        let (anketa, _) = Anketa::validate(&raw, &fields()).unwrap();
        let (evidence, report) = validate_evidence(Some(&evidence), &anketa, &fields(), &dialogue(messages));
        ExtractedAnketa { anketa, evidence, evidence_dropped: report.dropped }
    }

    #[test]
    fn citations_of_unknown_messages_fields_and_values_are_dropped_and_counted() {
        let (anketa, _) = Anketa::validate(&json!({"name": "Анна", "goals": ["сайт"]}), &fields()).unwrap();
        let raw = json!({
            "name": [4, 2, 2, 99, "3", -1],
            "hacker": [1, 2],
            "budget": [3],
            "goals": 5,
        });
        let (evidence, report) = validate_evidence(Some(&raw), &anketa, &fields(), &dialogue(6));
        assert_eq!(evidence, Evidence::from([("name".into(), vec![2, 4]), ("goals".into(), vec![5])]));
        assert_eq!(report.unknown_messages, vec![("name".into(), json!(99)), ("name".into(), json!("3")), ("name".into(), json!(-1))]);
        assert_eq!(report.unknown_fields, vec!["hacker"]);
        assert_eq!(report.without_value, vec!["budget"]);
        assert_eq!(report.dropped, 3 + 2 + 1);
    }

    #[test]
    fn no_evidence_or_evidence_that_is_not_an_object() {
        let (anketa, _) = Anketa::validate(&json!({"name": "Анна"}), &fields()).unwrap();
        let (evidence, report) = validate_evidence(None, &anketa, &fields(), &dialogue(2));
        assert!(evidence.is_empty());
        assert_eq!(report, EvidenceReport::default());
        let (evidence, report) = validate_evidence(Some(&json!([1, 2])), &anketa, &fields(), &dialogue(2));
        assert!(evidence.is_empty());
        assert_eq!(report.dropped, 1);
        // A blank value is no value: nothing can be cited for it.
        let (blank, _) = Anketa::validate(&json!({"name": "  "}), &fields()).unwrap();
        let (evidence, report) = validate_evidence(Some(&json!({"name": [1]})), &blank, &fields(), &dialogue(2));
        assert!(evidence.is_empty());
        assert_eq!((report.without_value, report.dropped), (vec!["name".to_owned()], 1));
    }

    #[test]
    fn a_changed_value_keeps_the_earlier_one_in_its_history() {
        let mut anketa = Anketa::default();
        let mut provenance = Provenance::default();
        provenance.merge(&mut anketa, &extracted(json!({"name": "Аня", "budget": 100}), json!({"name": [2], "budget": [4]}), 6), 6);
        provenance.merge(&mut anketa, &extracted(json!({"name": "Анна", "budget": 100}), json!({"name": [8], "budget": [10]}), 12), 12);
        assert_eq!(anketa.0["name"], json!("Анна"));
        assert_eq!(
            provenance.get("name").unwrap(),
            &FieldProvenance { evidence: vec![8], set_at: 12, history: vec![PastValue { value: json!("Аня"), evidence: vec![2], set_at: 6 }] }
        );
        // The same budget again: still set at 6, now backed by both citations.
        assert_eq!(provenance.get("budget").unwrap(), &FieldProvenance { evidence: vec![4, 10], set_at: 6, history: Vec::new() });
    }

    #[test]
    fn an_empty_value_changes_nothing_and_a_list_union_cites_both_extractions() {
        let mut anketa = Anketa::default();
        let mut provenance = Provenance::default();
        provenance.merge(&mut anketa, &extracted(json!({"name": "Анна", "goals": ["сайт"]}), json!({"name": [2], "goals": [3]}), 6), 6);
        provenance.merge(&mut anketa, &extracted(json!({"name": "", "goals": ["бот", "сайт"]}), json!({"goals": [9]}), 12), 12);
        assert_eq!(anketa.0["goals"], json!(["сайт", "бот"]));
        assert_eq!(
            provenance.get("goals").unwrap(),
            &FieldProvenance { evidence: vec![3, 9], set_at: 12, history: vec![PastValue { value: json!(["сайт"]), evidence: vec![3], set_at: 6 }] }
        );
        assert_eq!(provenance.get("name").unwrap(), &FieldProvenance { evidence: vec![2], set_at: 6, history: Vec::new() });
        assert_eq!(provenance.fields.len(), 2, "only fields the anketa holds");
    }

    #[test]
    fn a_value_without_citations_is_set_with_empty_evidence_and_round_trips() {
        let mut anketa = Anketa::default();
        let mut provenance = Provenance::default();
        let flat = ExtractedAnketa::without_evidence(Anketa::validate(&json!({"name": "Анна"}), &fields()).unwrap().0);
        provenance.merge(&mut anketa, &flat, 6);
        assert_eq!(provenance.get("name").unwrap(), &FieldProvenance { evidence: Vec::new(), set_at: 6, history: Vec::new() });
        provenance.merge(&mut anketa, &extracted(json!({"name": "Анна Петровна"}), json!({"name": [7]}), 8), 8);
        let json = serde_json::to_value(&provenance).unwrap();
        assert_eq!(json, json!({"name": {"evidence": [7], "set_at": 8, "history": [{"value": "Анна", "evidence": [], "set_at": 6}]}}));
        assert_eq!(serde_json::from_value::<Provenance>(json).unwrap(), provenance);
    }

    #[test]
    fn a_value_stored_before_provenance_was_kept_changes_with_an_unknown_origin() {
        let mut anketa = Anketa::validate(&json!({"name": "Аня", "budget": 100}), &fields()).unwrap().0;
        let mut provenance = Provenance::default();
        provenance.merge(&mut anketa, &extracted(json!({"name": "Анна", "budget": 100}), json!({"name": [3], "budget": [4]}), 6), 6);
        assert_eq!(
            provenance.get("name").unwrap(),
            &FieldProvenance { evidence: vec![3], set_at: 6, history: vec![PastValue { value: json!("Аня"), evidence: Vec::new(), set_at: 0 }] }
        );
        assert_eq!(provenance.get("budget").unwrap(), &FieldProvenance { evidence: vec![4], set_at: 0, history: Vec::new() });
    }
}
