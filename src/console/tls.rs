//! Optional TLS for the console (rustls, ring provider): certificate chain and key from PEM
//! files named in the config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("console TLS needs both console.tls_cert and console.tls_key; only {0} is set")]
    Incomplete(&'static str),
    #[error("console TLS certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("console TLS key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("console TLS configuration rejected: {0}")]
    Config(String),
}

/// The TLS acceptor, or None when neither file is configured.
pub fn acceptor(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(TlsError::Incomplete("console.tls_cert")),
        (None, Some(_)) => return Err(TlsError::Incomplete("console.tls_key")),
        (Some(c), Some(k)) => (c, k),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: cert.to_owned(), message: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Cert { path: cert.to_owned(), message: "no PEM certificate in the file".into() });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), message: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_configured_or_garbage_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        assert!(acceptor(None, None).unwrap().is_none());
        assert!(matches!(acceptor(Some(&junk), None), Err(TlsError::Incomplete("console.tls_cert"))));
        let err = acceptor(Some(&junk), Some(&junk)).err().unwrap().to_string();
        assert!(err.contains("junk.pem"), "{err}");
    }
}
