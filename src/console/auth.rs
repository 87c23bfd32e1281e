//! Console tokens: two scopes (read-only, operator), compared in constant time; missing
//! tokens are generated once and kept in a file only the owner can read.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::config::ConsoleConfig;
use crate::secret::Secret;

/// What a connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Watch only.
    ReadOnly,
    /// Watch and act (drain, end, reconnect, extract, log level).
    Operator,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadOnly => "read-only",
            Scope::Operator => "operator",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two tokens the server accepts.
#[derive(Clone)]
pub struct Tokens {
    read_only: Secret,
    operator: Secret,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokens(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("console token file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("console token file {path} is not valid TOML with `token` and `operator_token`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("console.token and console.operator_token must differ, or a read-only client could act")]
    SameTokens,
}

/// What the token file holds.
#[derive(Default, Deserialize, Serialize)]
struct TokenFile {
    #[serde(default)]
    token: String,
    #[serde(default)]
    operator_token: String,
}

impl Tokens {
    pub fn new(read_only: Secret, operator: Secret) -> Result<Self, TokenError> {
        if read_only.expose() == operator.expose() {
            return Err(TokenError::SameTokens);
        }
        Ok(Self { read_only, operator })
    }

    /// The scope a presented token grants, if any. Both tokens are always compared, in
    /// constant time, so timing tells nothing about either.
    pub fn check(&self, presented: &str) -> Option<Scope> {
        let presented = presented.trim().as_bytes();
        let is_operator: bool = self.operator.expose().as_bytes().ct_eq(presented).into();
        let is_read: bool = self.read_only.expose().as_bytes().ct_eq(presented).into();
        if presented.is_empty() {
            None
        } else if is_operator {
            Some(Scope::Operator)
        } else if is_read {
            Some(Scope::ReadOnly)
        } else {
            None
        }
    }

    /// Tokens from the config (file or environment); any missing one comes from
    /// `token_file`, generated there on first start (mode 0600). Returns whether the file
    /// was written. Blocking file I/O: call it from a blocking thread.
    pub fn load(config: &ConsoleConfig) -> Result<(Self, Option<PathBuf>), TokenError> {
        if !config.token.is_empty() && !config.operator_token.is_empty() {
            return Ok((Self::new(config.token.clone(), config.operator_token.clone())?, None));
        }
        let path = &config.token_file;
        let io = |source| TokenError::Io { path: path.clone(), source };
        let mut file = match std::fs::read_to_string(path) {
            Ok(text) => parse_token_file(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
            Err(e) => return Err(io(e)),
        };
        tighten_permissions(path).map_err(io)?;
        let mut written = false;
        if file.token.trim().is_empty() && config.token.is_empty() {
            file.token = generate("ro");
            written = true;
        }
        if file.operator_token.trim().is_empty() && config.operator_token.is_empty() {
            file.operator_token = generate("op");
            written = true;
        }
        if written {
            write_private(path, &file).map_err(io)?;
        }
        let read_only = if config.token.is_empty() { Secret::new(file.token.trim()) } else { config.token.clone() };
        let operator = if config.operator_token.is_empty() { Secret::new(file.operator_token.trim()) } else { config.operator_token.clone() };
        Ok((Self::new(read_only, operator)?, written.then(|| path.clone())))
    }
}

/// toml's error text quotes the offending line, which may hold a token: say only where.
fn parse_token_file(path: &Path, text: &str) -> Result<TokenFile, TokenError> {
    toml::from_str::<TokenFile>(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        TokenError::Parse { path: path.to_owned(), message: format!("{}{at}", e.message()) }
    })
}

/// Which tokens the file holds (read-only, operator), without their values
/// (`consultant doctor`).
pub fn inspect_token_file(path: &Path) -> Result<(bool, bool), TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io { path: path.to_owned(), source })?;
    let file = parse_token_file(path, &text)?;
    Ok((!file.token.trim().is_empty(), !file.operator_token.trim().is_empty()))
}

/// A token a client reads from the token file: the operator one if present, else read-only.
pub fn client_token_from_file(path: &Path) -> Option<Secret> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: TokenFile = toml::from_str(&text).ok()?;
    [file.operator_token, file.token].into_iter().find(|t| !t.trim().is_empty()).map(|t| Secret::new(t.trim()))
}

/// 32 random bytes, URL-safe base64, with a scope prefix humans can recognise.
fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn write_private(path: &Path, file: &TokenFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let body = format!(
        "# consultant console tokens (generated; keep private)\n# token: read-only; operator_token: may act (drain, end, reconnect, extract, log level)\n{}",
        toml::to_string(file).map_err(std::io::Error::other)?
    );
    // Write beside it then rename, so a crash never leaves a half-written file.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// A token file readable by others is made owner-only.
fn tighten_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "console token file was readable by others; setting mode 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, token: &str, operator: &str) -> ConsoleConfig {
        ConsoleConfig {
            enabled: true,
            listen: "127.0.0.1:0".into(),
            token: Secret::new(token),
            operator_token: Secret::new(operator),
            token_file: dir.join("sub/console-tokens.toml"),
            tls_cert: None,
            tls_key: None,
            max_clients: 4,
        }
    }

    #[test]
    fn scopes_are_told_apart_and_wrong_tokens_refused() {
        let t = Tokens::new(Secret::new("read-me"), Secret::new("act-me")).unwrap();
        assert_eq!(t.check("read-me"), Some(Scope::ReadOnly));
        assert_eq!(t.check("act-me"), Some(Scope::Operator));
        assert_eq!(t.check("act-m"), None);
        assert_eq!(t.check(""), None);
        assert!(Tokens::new(Secret::new("x"), Secret::new("x")).is_err());
    }

    #[test]
    fn generated_once_into_an_owner_only_file_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "", "");
        let (first, written) = Tokens::load(&cfg).unwrap();
        assert_eq!(written.as_deref(), Some(cfg.token_file.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&cfg.token_file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (second, written) = Tokens::load(&cfg).unwrap();
        assert!(written.is_none());
        assert_eq!(first.operator.expose(), second.operator.expose());
        assert!(first.operator.expose().starts_with("op_") && first.read_only.expose().starts_with("ro_"));
        assert_eq!(client_token_from_file(&cfg.token_file).unwrap().expose(), first.operator.expose());
        assert!(!format!("{first:?}").contains(first.operator.expose()));
    }

    #[test]
    fn a_broken_token_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "token = \"ro_abc\"\noperator_token = \"op_s3cr3t-value").unwrap();
        let err = inspect_token_file(&path).unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("line 2"), "{err}");
        assert!(!err.contains("s3cr3t") && !err.contains("ro_abc"), "{err}");
        std::fs::write(&path, "token = \"ro_abc\"\n").unwrap();
        assert_eq!(inspect_token_file(&path).unwrap(), (true, false));
    }

    #[test]
    fn configured_tokens_need_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "r", "o");
        let (t, written) = Tokens::load(&cfg).unwrap();
        assert!(written.is_none() && !cfg.token_file.exists());
        assert_eq!(t.check("o"), Some(Scope::Operator));
    }
}
