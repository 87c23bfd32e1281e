//! Shared by tests/tls.rs and tests/console_tls.rs: a test CA made at run time, a server
//! certificate it signed for localhost / 127.0.0.1, and a TLS front that terminates TLS with
//! it (the console server's own acceptor) and forwards the bytes to a plain server, so the
//! real clients meet TLS in front of the fakes and the loopback LiveKit server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use consultant::config::TlsSection;
use consultant::tls::ClientTls;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub struct Pki {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "consultant test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "localhost");
        let server = server.signed_by(&key, &ca).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca_file: write("ca.pem", ca.pem()),
            cert_file: write("server.pem", server.pem()),
            key_file: write("server.key", key.serialize_pem()),
            _dir: dir,
        }
    }

    /// The server side: the console's TLS acceptor over the test certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        consultant::console::tls::acceptor(Some(&self.cert_file), Some(&self.key_file)).unwrap().expect("both files given")
    }

    /// The policy with `tls.ca_file` naming the test CA.
    pub fn trusting(&self) -> ClientTls {
        ClientTls::from_config(&TlsSection { ca_file: Some(self.ca_file.clone()) }).unwrap()
    }
}

/// The policy without `tls.ca_file`: built-in and system roots, which know nothing of the test CA.
pub fn untrusting() -> ClientTls {
    ClientTls::default()
}

/// Terminates TLS on a new 127.0.0.1 port and forwards each connection to `backend`.
pub async fn tls_front(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    let acceptor = pki.acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends it here.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// The host:port of an `http://` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url::Url::parse(url).unwrap().socket_addrs(|| None).unwrap()[0]
}

/// A refusal names the host and port, says the certificate is not trusted and how to fix it.
pub fn assert_untrusted(error: &str, scheme: &str, front: SocketAddr) {
    let host = format!("TLS to {scheme}://{front}");
    assert!(error.contains(&host), "names {host}: {error}");
    assert!(error.contains("the certificate is not trusted (UnknownIssuer)"), "names the certificate problem: {error}");
    assert!(error.contains("tls.ca_file"), "says how to fix it: {error}");
}
