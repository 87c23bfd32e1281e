//! `storage.url`: `sqlite://PATH` or `postgres://` / `postgresql://` URLs. The password is a
//! secret: only the masked form ever reaches a message or a log.

use std::path::PathBuf;

use crate::config::StorageConfig;

#[derive(Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// The URL as given (password included: only for connecting).
    Postgres(String),
}

/// Never prints the password.
impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.masked())
    }
}

pub const ACCEPTED: &str = "empty (sqlite:// + storage.path), sqlite://PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE";

impl DatabaseUrl {
    /// Parses a URL; the error never contains the password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let masked = mask_password(raw);
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!("`{masked}` names no file"));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return match raw.parse::<tokio_postgres::Config>() {
                Ok(c) if c.get_hosts().is_empty() => Err(format!("`{masked}` has no host")),
                Ok(_) => Ok(DatabaseUrl::Postgres(raw.to_owned())),
                // The parser's messages name options, never their values.
                Err(e) => Err(format!("`{masked}` is not a valid PostgreSQL URL ({e})")),
            };
        }
        match raw.split_once("://") {
            Some((scheme, _)) => Err(format!("scheme `{scheme}` is not supported")),
            None => Err(format!("`{masked}` is not a URL")),
        }
    }

    /// `storage.url`, or `sqlite://` + `storage.path` when it is empty.
    pub fn from_storage(storage: &StorageConfig) -> Result<Self, String> {
        let url = storage.url.expose();
        if url.trim().is_empty() {
            Ok(DatabaseUrl::Sqlite(storage.path.clone()))
        } else {
            Self::parse(url).map_err(|e| format!("storage.url: {e}; accepted: {ACCEPTED}"))
        }
    }

    pub fn masked(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            DatabaseUrl::Postgres(url) => mask_password(url),
        }
    }
}

/// `scheme://user:***@host/...`: the password replaced, the rest kept (also for strings that
/// do not parse, so a typo cannot leak it).
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The last '@' ends the credentials (a password may contain '@').
    let Some(at) = authority.rfind('@') else { return url.to_owned() };
    let (credentials, host) = authority.split_at(at);
    let masked = match credentials.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => credentials.to_owned(),
    };
    let mut tail = tail.to_owned();
    // `?password=...` is a password too.
    if let Some(i) = tail.find("password=") {
        let end = tail[i..].find('&').map_or(tail.len(), |e| i + e);
        tail.replace_range(i + "password=".len()..end, "***");
    }
    format!("{scheme}://{masked}{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_passwords_never_show() {
        assert!(matches!(DatabaseUrl::parse("sqlite://data/c.db"), Ok(DatabaseUrl::Sqlite(p)) if p == PathBuf::from("data/c.db")));
        assert!(matches!(DatabaseUrl::parse("sqlite:///abs/c.db"), Ok(DatabaseUrl::Sqlite(p)) if p == PathBuf::from("/abs/c.db")));
        let pg = DatabaseUrl::parse("postgresql://u:s3cr@t@db.local:5433/c").unwrap();
        assert_eq!(pg.masked(), "postgresql://u:***@db.local:5433/c");
        assert_eq!(format!("{pg:?}"), "postgresql://u:***@db.local:5433/c");
        assert_eq!(mask_password("postgres://u@h/d?password=x1&sslmode=disable"), "postgres://u@h/d?password=***&sslmode=disable");
        assert_eq!(mask_password("postgres://h/d"), "postgres://h/d");
        let bad = DatabaseUrl::parse("postgres://u:hunter2@h:notaport/d").err().unwrap();
        assert!(!bad.contains("hunter2") && bad.contains("u:***@h"), "{bad}");
        assert!(DatabaseUrl::parse("mysql://u:p@h/d").err().unwrap().contains("`mysql`"));
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        assert!(DatabaseUrl::parse("data/c.db").is_err());
    }
}
