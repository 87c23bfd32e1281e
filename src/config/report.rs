//! `consultant config`: the effective value of every setting and where it came from; secrets
//! only as set/unset.

use super::layers::Origin;
use super::schema::{Kind, KEYS, OTHER_ENV};
use super::Resolved;

fn origin(o: &Origin) -> String {
    match o {
        Origin::Default => "default".into(),
        Origin::File(path) => format!("file {}", path.display()),
        Origin::Env { var, dotenv: false } => format!("env {var}"),
        Origin::Env { var, dotenv: true } => format!("env {var} (.env)"),
    }
}

/// A value on one line: long text shortened, anketa fields by name.
fn shown(kind: Kind, secret: bool, value: Option<&toml::Value>) -> String {
    let Some(value) = value else { return "(unset)".into() };
    if secret {
        let set = value.as_str().is_some_and(|s| !s.trim().is_empty());
        return if set { "set" } else { "unset" }.into();
    }
    match (kind, value) {
        (Kind::Fields, toml::Value::Array(items)) => {
            let names: Vec<&str> = items.iter().filter_map(|i| i.get("name").and_then(toml::Value::as_str)).collect();
            format!("{} fields: {}", names.len(), names.join(", "))
        }
        (_, toml::Value::String(s)) if s.contains('\n') || s.chars().count() > 60 => {
            let first: String = s.trim().lines().next().unwrap_or_default().chars().take(50).collect();
            format!("\"{first}…\" ({} chars)", s.chars().count())
        }
        _ => value.to_string(),
    }
}

/// The report: one line per setting, then the variables read outside the schema.
pub fn render(resolved: &Resolved) -> String {
    let layered = &resolved.layered;
    let file = match &resolved.file {
        Some(path) => format!("file {}", path.display()),
        None => "no file (built-in defaults and the environment)".into(),
    };
    let mut lines = vec![
        format!("# effective configuration: {file}"),
        "# precedence: CONSULTANT_<SECTION>_<KEY> > the Python module's variable > file > default".to_owned(),
    ];
    let width = KEYS.iter().map(|k| k.path().len()).max().unwrap_or(0);
    let mut section = "";
    for key in KEYS {
        if key.section != section {
            section = key.section;
            lines.push(format!("\n[{section}]"));
        }
        let path = key.path();
        let value = match layered.value(key) {
            Some(toml::Value::String(url)) if key.masked => format!("{:?}", crate::store::mask_password(url)),
            other => shown(key.kind, key.secret, other),
        };
        let mut from = origin(&layered.origin(&path));
        if let Some(lost) = layered.shadowed.get(&path) {
            from.push_str(&format!("; also set, ignored: {}", lost.join(", ")));
        }
        lines.push(format!("{path:<width$}  {value}  ({from})"));
    }
    lines.push("\n[other variables]".into());
    for (var, _) in OTHER_ENV {
        let state = match std::env::var(var) {
            Ok(v) if !v.is_empty() => format!("{v:?}"),
            _ => "unset".into(),
        };
        lines.push(format!("{var:<width$}  {state}"));
    }
    lines.join("\n") + "\n"
}
