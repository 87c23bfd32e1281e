//! The trust policy of every outgoing TLS connection (LiveKit signalling, the `/agent` link,
//! Twirp, Azure/OpenAI realtime, DeepSeek, the console client): one rustls `ClientConfig`
//! (ring) trusting the compiled-in webpki roots, the system's roots (or SSL_CERT_FILE /
//! SSL_CERT_DIR when set) and the CA files the operator names (`tls.ca_file`,
//! `consultant console --ca-cert`). Built once at start-up and shared by every client; a TLS
//! failure is explained here too, so every client words it the same way.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once, OnceLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::config::TlsSection;

/// What to do about a certificate nobody here trusts.
const TRUST_HINT: &str = "set tls.ca_file (CONSULTANT_TLS_CA_FILE) or SSL_CERT_FILE to the CA that signed it (`consultant console --ca-cert FILE` for the console)";

/// Installs ring as the process-wide rustls provider, once. Every config built here names its
/// provider; this is for any other rustls user in the process (both ring and aws-lc-rs are
/// compiled in, so rustls could not pick one on its own).
pub fn install_default_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only means something installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A CA file that cannot be trusted, naming the setting or option that named it.
#[derive(Debug, thiserror::Error)]
#[error("{origin} names the CA file {}, which {problem}", .path.display())]
pub struct CaFileError {
    pub origin: &'static str,
    pub path: PathBuf,
    /// What is wrong with the file, starting with a verb ("cannot be read: ...").
    pub problem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    #[error("the TLS client configuration was refused: {0}")]
    Config(String),
}

/// A CA file the operator named, and the setting or option that named it (for errors).
#[derive(Clone, Copy, Debug)]
pub struct CaFile<'a> {
    pub origin: &'static str,
    pub path: &'a Path,
}

const PEM_FORM: &str = "it must hold the CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)";

/// The certificates of a CA file; every way it can be unusable is an error naming it.
pub fn read_ca_file(file: CaFile<'_>) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let fail = |problem: String| CaFileError { origin: file.origin, path: file.path.to_owned(), problem };
    let bytes = std::fs::read(file.path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(fail(format!("is empty; {PEM_FORM}")));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("is not valid PEM ({e}); {PEM_FORM}")))?;
    if certs.is_empty() {
        return Err(fail(format!("holds no PEM certificate; {PEM_FORM}")));
    }
    // Each must parse as a trust anchor: junk between the markers is refused here, not at
    // the first connection.
    for (n, cert) in certs.iter().enumerate() {
        if let Err(e) = RootCertStore::empty().add(cert.clone()) {
            return Err(fail(format!("holds a certificate (number {}) that cannot be a trust anchor: {e}", n + 1)));
        }
    }
    Ok(certs)
}

/// The client trust policy: cheap to clone, shared by every client of the process.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    summary: Arc<str>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("trusts", &self.summary).finish()
    }
}

impl Default for ClientTls {
    /// Built-in and system roots, no extra CA; loaded once per process (reading the system's
    /// roots costs a few milliseconds).
    fn default() -> Self {
        static DEFAULT: OnceLock<ClientTls> = OnceLock::new();
        DEFAULT
            // With no CA file only the provider could refuse, and ring supports the defaults.
            .get_or_init(|| Self::with_ca_files(&[]).expect("ring supports the default TLS versions"))
            .clone()
    }
}

impl ClientTls {
    /// The policy of `[tls]`, with the process environment (SSL_CERT_FILE, SSL_CERT_DIR).
    pub fn from_config(tls: &TlsSection) -> Result<Self, TlsSetupError> {
        Self::with_ca_files(&tls.ca_files())
    }

    /// Built-in and system roots (the process environment's SSL_CERT_FILE / SSL_CERT_DIR)
    /// and `extra`.
    pub fn with_ca_files(extra: &[CaFile<'_>]) -> Result<Self, TlsSetupError> {
        Self::build(extra, &|name| std::env::var(name).ok())
    }

    /// Built-in roots, the system's (`env` supplies SSL_CERT_FILE / SSL_CERT_DIR) and
    /// `extra`, each of which must be a usable PEM CA file.
    pub fn build(extra: &[CaFile<'_>], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, TlsSetupError> {
        install_default_provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let built_in = roots.len();
        let (system, system_source) = system_roots(env);
        let (system_added, _) = roots.add_parsable_certificates(system);
        let mut parts = vec![format!("{built_in} built-in roots"), format!("{system_added} roots from {system_source}")];
        for file in extra {
            let certs = read_ca_file(*file)?;
            let count = certs.len();
            // read_ca_file has parsed every one as a trust anchor.
            roots.add_parsable_certificates(certs);
            parts.push(format!("{count} from {} ({})", file.origin, file.path.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { config: Arc::new(config), summary: parts.join(", ").into() })
    }

    /// What is trusted, for the start-up log.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// For tokio-tungstenite's `connect_async_tls_with_config`.
    pub fn connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.config.clone())
    }

    /// A reqwest client builder over this policy (reqwest takes the config by value).
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().tls_backend_preconfigured((*self.config).clone())
    }
}

/// The system's roots as rustls-native-certs finds them, with `env` deciding SSL_CERT_FILE
/// and SSL_CERT_DIR (empty counts as unset, as everywhere in the config). Unreadable entries
/// are logged, not fatal: the variables are often set for other programs too.
fn system_roots(env: &dyn Fn(&str) -> Option<String>) -> (Vec<CertificateDer<'static>>, String) {
    let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let file = var("SSL_CERT_FILE").map(PathBuf::from);
    let dirs: Vec<PathBuf> = var("SSL_CERT_DIR").map(|d| std::env::split_paths(&d).filter(|p| !p.as_os_str().is_empty()).collect()).unwrap_or_default();
    let mut results = Vec::new();
    let source = if file.is_none() && dirs.is_empty() {
        // The platform's store (rustls-native-certs looks at the process environment again,
        // which in production is `env`).
        results.push(rustls_native_certs::load_native_certs());
        "the system store".to_owned()
    } else {
        results.push(rustls_native_certs::load_certs_from_paths(file.as_deref(), None));
        for dir in &dirs {
            results.push(rustls_native_certs::load_certs_from_paths(None, Some(dir)));
        }
        let named: Vec<String> = file.iter().map(|f| format!("SSL_CERT_FILE {}", f.display())).chain(dirs.iter().map(|d| format!("SSL_CERT_DIR {}", d.display()))).collect();
        named.join(" and ")
    };
    let mut certs = Vec::new();
    for result in results {
        for error in &result.errors {
            tracing::warn!(%error, source = %source, "some system CA certificates could not be loaded");
        }
        certs.extend(result.certs);
    }
    (certs, source)
}

/// `scheme://host:port` of a URL: what a TLS error names (never the path or query).
pub fn target(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// A TLS failure in words, with the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFailure {
    pub message: String,
    /// The server's certificate was refused: retrying cannot help, the configuration must change.
    pub certificate: bool,
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Explains `error` as a TLS failure towards `target` (see [`target`]); None when no TLS
/// error is in its chain.
pub fn explain(target: &str, error: &(dyn StdError + 'static)) -> Option<TlsFailure> {
    let tls = find_rustls_error(error)?;
    let (what, certificate) = match tls {
        rustls::Error::InvalidCertificate(e) => (certificate_problem(e), true),
        rustls::Error::AlertReceived(alert) => (format!("the server ended the TLS handshake with the alert {alert:?}"), false),
        rustls::Error::InvalidMessage(_) => (format!("the server does not speak TLS there ({tls}); is it a plain ws:// or http:// address?"), false),
        other => (format!("the TLS handshake failed: {other}"), false),
    };
    Some(TlsFailure { message: format!("TLS to {target}: {what}"), certificate })
}

fn certificate_problem(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => format!("the certificate is not trusted (UnknownIssuer): no trusted CA signed it; {TRUST_HINT}"),
        CertificateError::BadSignature => {
            format!("the certificate's signature does not verify (BadSignature); {TRUST_HINT}")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("the certificate is not valid for this host name ({e:?}); use the name the certificate was issued for")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!("the certificate has expired ({e:?})"),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("the certificate is not valid yet ({e:?}); check the clocks")
        }
        CertificateError::Revoked => "the certificate has been revoked (Revoked)".to_owned(),
        other => format!("the certificate was refused ({other:?})"),
    }
}

/// The rustls error in a chain: `io::Error` hides its inner error from `source()`, so each
/// one's payload is searched too.
fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(tls) = find_rustls_error(inner) {
                return Some(tls);
            }
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
