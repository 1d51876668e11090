//! TLS for the tests: a certificate authority of their own (rcgen), server certificates it
//! issues for `localhost` and 127.0.0.1 written to a temporary directory the server reads,
//! and clients (reqwest and raw rustls, both on ring) that trust that authority alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What a client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1`, as browsers do.
    Both,
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    Http2,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Self::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Self::Http1 => vec![b"http/1.1".to_vec()],
            Self::Http2 => vec![b"h2".to_vec()],
        }
    }
}

/// A server certificate the test authority issued.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// The test authority and the directory holding the server's `cert.pem` and `key.pem`;
/// the directory is removed on drop.
pub struct Certs {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The certificate the files hold now.
    pub served: CertificateDer<'static>,
}

impl Certs {
    /// A fresh authority, and a server certificate named `name` installed in a new directory.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "callhome-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "CallHome test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut certs = Self {
            ca,
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
            dir,
            served: CertificateDer::from(Vec::new()),
        };
        let issued = certs.issue(name);
        certs.install(&issued);
        certs
    }

    /// A certificate for `localhost` and 127.0.0.1 with common name `name`.
    pub fn issue(&self, name: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes `issued` over the server's files, each by a rename (as renewal tools do), so
    /// the server never reads half a file.
    pub fn install(&mut self, issued: &Issued) {
        write_by_rename(&self.key_path, issued.key_pem.as_bytes());
        write_by_rename(&self.cert_path, issued.cert_pem.as_bytes());
        self.served = issued.der.clone();
    }

    /// A rustls client config (ring) that trusts this authority only and offers `alpn`.
    pub fn client_config(&self, alpn: Alpn) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.protocols();
        config
    }

    /// A reqwest client that trusts this authority, offers `alpn` and never uses a proxy.
    pub fn client(&self, alpn: Alpn) -> reqwest::Client {
        super::client_builder()
            .timeout(Duration::from_secs(60))
            .tls_backend_preconfigured(self.client_config(alpn))
            .build()
            .expect("a TLS client builds")
    }

    /// A TLS connection to `addr` as `localhost`, offering `alpn`.
    pub async fn connect(&self, addr: SocketAddr, alpn: Alpn) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(Arc::new(self.client_config(alpn)))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("a TLS handshake with the test authority's certificate")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_by_rename(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The certificate the server at `addr` presents to a new handshake.
pub async fn presented(certs: &Certs, addr: SocketAddr) -> CertificateDer<'static> {
    let stream = certs.connect(addr, Alpn::Http1).await;
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}
