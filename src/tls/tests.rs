use std::io;

use super::*;

/// A self-signed CA certificate in PEM.
fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn refused(path: &Path) -> String {
    read_ca_file(CaFile { origin: "tls.ca_file", path }).unwrap_err().to_string()
}

#[test]
fn unusable_ca_files_are_refused_naming_the_setting_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (missing.clone(), "cannot be read"),
        (file(&dir, "empty.pem", " \n"), "is empty"),
        (file(&dir, "text.pem", "just some words"), "holds no PEM certificate"),
        (file(&dir, "junk.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "cannot be a trust anchor"),
    ];
    for (path, problem) in &cases {
        let err = refused(path);
        assert!(err.starts_with("tls.ca_file names the CA file"), "{err}");
        assert!(err.contains(&path.display().to_string()) && err.contains(problem), "{problem}: {err}");
    }
    let err = ClientTls::build(&[CaFile { origin: "--ca-cert", path: &missing }], &|_| None).unwrap_err().to_string();
    assert!(err.starts_with("--ca-cert names the CA file") && err.contains("missing.pem"), "{err}");
}

#[test]
fn a_good_ca_file_is_trusted_next_to_the_built_in_roots() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!("{}{}", ca_pem(), ca_pem());
    let path = file(&dir, "ca.pem", &two);
    assert_eq!(read_ca_file(CaFile { origin: "tls.ca_file", path: &path }).unwrap().len(), 2);
    let tls = ClientTls::build(&[CaFile { origin: "tls.ca_file", path: &path }], &|_| None).unwrap();
    assert!(tls.summary().contains("2 from tls.ca_file"), "{}", tls.summary());
    assert!(tls.summary().contains(&format!("{} built-in roots", webpki_roots::TLS_SERVER_ROOTS.len())), "{}", tls.summary());
}

#[test]
fn ssl_cert_file_replaces_the_system_store_and_empty_means_unset() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "bundle.pem", &ca_pem());
    let shown = path.display().to_string();
    let env = |name: &str| (name == "SSL_CERT_FILE").then(|| shown.clone());
    let tls = ClientTls::build(&[], &env).unwrap();
    assert!(tls.summary().contains(&format!("1 roots from SSL_CERT_FILE {shown}")), "{}", tls.summary());
    let blank = ClientTls::build(&[], &|name| (name == "SSL_CERT_FILE").then(String::new)).unwrap();
    assert!(blank.summary().contains("the system store"), "{}", blank.summary());
}

#[test]
fn targets_name_scheme_host_and_port_only() {
    let url = url::Url::parse("wss://lk.example.com/base/rtc?access_token=x").unwrap();
    assert_eq!(target(&url), "wss://lk.example.com:443");
    assert_eq!(target(&url::Url::parse("https://127.0.0.1:8443/v1/chat").unwrap()), "https://127.0.0.1:8443");
}

#[test]
fn certificate_errors_are_found_under_io_errors_and_explained() {
    // As tokio-rustls reports them: the rustls error inside an io::Error inside the client's.
    let io = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    let ws = tokio_tungstenite::tungstenite::Error::Io(io);
    let failure = explain("wss://h:443", &ws).expect("a TLS failure");
    assert!(failure.certificate);
    assert!(failure.message.starts_with("TLS to wss://h:443: the certificate is not trusted (UnknownIssuer)"), "{failure}");
    assert!(failure.message.contains("tls.ca_file") && failure.message.contains("SSL_CERT_FILE"), "{failure}");

    let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
    assert!(explain("https://h:443", &expired).unwrap().message.contains("expired"));
    let plain = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType));
    let failure = explain("wss://h:80", &plain).unwrap();
    assert!(!failure.certificate && failure.message.contains("does not speak TLS"), "{failure}");
    let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
    assert_eq!(explain("wss://h:1", &refused), None);
}
