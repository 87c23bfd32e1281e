//! The three layers, lowest first: built-in defaults (config.toml compiled in), the file, the
//! environment. Each key's value is type-checked where it enters, and where it came from is
//! kept for errors and for `consultant config`.
//!
//! Environment precedence: `CONSULTANT_<SECTION>_<KEY>` wins over the Python module's name for
//! the same setting (e.g. `AZURE_OPENAI_DEPLOYMENT_NAME`), which wins over the file. Empty
//! variables count as unset, so a copied `.env.example` changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use consultant_actors::anketa::AnketaField;

use super::schema::{self, Key, Kind, DEFAULTS_TOML, KEYS};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    /// `dotenv`: the variable was read from `.env` (not set in the real environment).
    Env { var: String, dotenv: bool },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the built-in default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env { var, dotenv: false } => write!(f, "environment variable {var}"),
            Origin::Env { var, dotenv: true } => write!(f, "environment variable {var} (from .env)"),
        }
    }
}

/// One thing wrong with the configuration. All of them are collected before failing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("unknown section `[{section}]` in {origin}{}", hint(.suggestion))]
    UnknownSection { origin: Origin, section: String, suggestion: Option<String> },
    #[error("unknown key `{key}` in {origin}{}", hint(.suggestion))]
    UnknownKey { origin: Origin, key: String, suggestion: Option<String> },
    #[error("invalid setting `{key}` (from {origin}): {problem}; accepted: {accepted}")]
    Invalid { key: String, origin: Origin, problem: String, accepted: String },
    #[error("missing secrets needed by `consultant start`/`dev`: {} (set them in the environment or in .env)", .0.join(", "))]
    MissingSecrets(Vec<&'static str>),
}

fn hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => "; config.toml lists every valid key".into(),
    }
}

/// The environment as the loader sees it.
pub struct Env<'a> {
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Variables that came from `.env`.
    pub from_dotenv: &'a HashSet<String>,
}

impl Env<'_> {
    /// A non-empty value, trimmed.
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn origin(&self, var: &str) -> Origin {
        Origin::Env { var: var.to_owned(), dotenv: self.from_dotenv.contains(var) }
    }
}

/// The merged table (bad values replaced by their defaults) and what was found on the way.
#[derive(Clone, Debug)]
pub struct Layered {
    pub table: toml::Table,
    /// `section.key` -> origin, for every key that is not at its default.
    pub sources: BTreeMap<String, Origin>,
    /// `section.key` -> variables that were set but lost to a higher-precedence one.
    pub shadowed: BTreeMap<String, Vec<String>>,
    pub problems: Vec<Problem>,
}

impl Layered {
    pub fn origin(&self, key: &str) -> Origin {
        self.sources.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// The merged value of a key (None: optional and unset).
    pub fn value(&self, key: &Key) -> Option<&toml::Value> {
        self.table.get(key.section).and_then(|s| s.get(key.name))
    }
}

pub fn defaults() -> toml::Table {
    // Compiled in and checked by the schema's tests.
    toml::from_str(DEFAULTS_TOML).expect("the compiled-in config.toml is valid TOML")
}

/// Layers `file` (already parsed) and the environment over the defaults.
pub fn layer(file: Option<(PathBuf, toml::Table)>, env: &Env<'_>) -> Layered {
    let mut out = Layered { table: defaults(), sources: BTreeMap::new(), shadowed: BTreeMap::new(), problems: Vec::new() };
    if let Some((path, table)) = file {
        layer_file(&mut out, path, table);
    }
    for key in KEYS {
        let canonical = key.env();
        let given: Vec<String> = [Some(canonical.as_str()), key.legacy_env].into_iter().flatten().filter(|v| env.get(v).is_some()).map(str::to_owned).collect();
        let Some(var) = given.first() else { continue };
        if given.len() > 1 {
            out.shadowed.insert(key.path(), given[1..].to_vec());
        }
        let raw = env.get(var).unwrap_or_default();
        let origin = env.origin(var);
        match from_env(key.kind, &raw).and_then(|v| check(key, v)) {
            Ok(value) => set(&mut out, key, value, origin),
            Err(problem) => out.problems.push(invalid(key, origin, problem)),
        }
    }
    out
}

fn layer_file(out: &mut Layered, path: PathBuf, table: toml::Table) {
    let origin = Origin::File(path);
    for (section, body) in table {
        if !schema::sections().any(|s| s == section) {
            let suggestion = schema::closest(&section, schema::sections()).map(|s| format!("[{s}]"));
            out.problems.push(Problem::UnknownSection { origin: origin.clone(), section, suggestion });
            continue;
        }
        let toml::Value::Table(body) = body else {
            let problem = format!("`{section}` is a {}", body.type_str());
            out.problems.push(Problem::Invalid { key: section.clone(), origin: origin.clone(), problem, accepted: format!("a [{section}] table") });
            continue;
        };
        for (name, value) in body {
            let Some(key) = schema::find(&section, &name) else {
                let in_section = KEYS.iter().filter(|k| k.section == section).map(|k| k.name);
                let suggestion = schema::closest(&name, in_section)
                    .map(|n| format!("{section}.{n}"))
                    .or_else(|| KEYS.iter().find(|k| k.name == name).map(Key::path));
                out.problems.push(Problem::UnknownKey { origin: origin.clone(), key: format!("{section}.{name}"), suggestion });
                continue;
            };
            match check(key, value) {
                Ok(value) => set(out, key, value, origin.clone()),
                Err(problem) => out.problems.push(invalid(key, origin.clone(), problem)),
            }
        }
    }
}

fn set(out: &mut Layered, key: &Key, value: toml::Value, origin: Origin) {
    if let Some(toml::Value::Table(section)) = out.table.get_mut(key.section) {
        section.insert(key.name.to_owned(), value);
    } else {
        let mut section = toml::Table::new();
        section.insert(key.name.to_owned(), value);
        out.table.insert(key.section.to_owned(), toml::Value::Table(section));
    }
    out.sources.insert(key.path(), origin);
}

pub fn invalid(key: &Key, origin: Origin, problem: String) -> Problem {
    Problem::Invalid { key: key.path(), origin, problem, accepted: key.kind.accepted() }
}

/// What a value is, for messages: secrets are never shown.
fn shown(key: &Key, value: &toml::Value) -> String {
    if key.secret || key.masked {
        format!("a {}", value.type_str())
    } else {
        let text = value.to_string();
        if text.chars().count() > 60 {
            format!("a {}", value.type_str())
        } else {
            format!("{} ({})", text, value.type_str())
        }
    }
}

/// Type-checks a value for `key`, normalizing integers given for floats.
fn check(key: &Key, value: toml::Value) -> Result<toml::Value, String> {
    use toml::Value as V;
    let wrong = || format!("got {}", shown(key, &value));
    match (key.kind, &value) {
        (Kind::Str, V::String(_)) | (Kind::Bool, V::Boolean(_)) | (Kind::F64, V::Float(_)) => Ok(value),
        (Kind::Path, V::String(s)) if !s.trim().is_empty() => Ok(value),
        (Kind::F64, V::Integer(i)) => Ok(V::Float(*i as f64)),
        (Kind::U64, V::Integer(i)) if *i >= 0 => Ok(value),
        (Kind::U32, V::Integer(i)) if u32::try_from(*i).is_ok() => Ok(value),
        (Kind::Choice(names), V::String(s)) => {
            if names.contains(&s.as_str()) {
                Ok(value)
            } else {
                let close = schema::closest(s, names.iter().copied()).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
                Err(format!("`{s}` is not one of them{close}"))
            }
        }
        (Kind::Fields, V::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Err(e) = item.clone().try_into::<AnketaField>() {
                    return Err(format!("field {} is not valid: {}", i + 1, e.message()));
                }
            }
            Ok(value)
        }
        _ => Err(wrong()),
    }
}

/// Reads an environment string as the key's TOML type.
fn from_env(kind: Kind, raw: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    match kind {
        Kind::Str | Kind::Path | Kind::Choice(_) => Ok(V::String(raw.to_owned())),
        Kind::U32 | Kind::U64 => raw.parse::<i64>().map(V::Integer).map_err(|_| format!("`{raw}` is not a whole number")),
        Kind::F64 => raw.parse::<f64>().map(V::Float).map_err(|_| format!("`{raw}` is not a number")),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(V::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(V::Boolean(false)),
            _ => Err(format!("`{raw}` is not true or false")),
        },
        Kind::Fields => {
            let wrapped: toml::Table = toml::from_str(&format!("v = {raw}")).map_err(|e| format!("not a TOML array of tables: {}", e.message()))?;
            wrapped.get("v").cloned().ok_or_else(|| "not a TOML array of tables".to_owned())
        }
    }
}
