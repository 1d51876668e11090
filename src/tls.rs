//! TLS served by the daemon itself (`[tls]`): the certificate chain and key read from PEM
//! files, the rustls server config built from them (ALPN `h2` and `http/1.1`), and the
//! reload that swaps in a new one when the files change. Knows nothing of HTTP: `connection`
//! runs the handshake and serves whatever protocol it agreed on.
//!
//! Why reload by looking at the files rather than on a signal: certificates are renewed by
//! tools (certbot, acme.sh, a Kubernetes secret) that replace files and do not know the
//! daemon, and SIGHUP already means "drain and stop" (`shutdown`). A check every
//! `reload_interval` reads the two small files and compares a digest of them with the last
//! one; they are parsed, and a new config built, only when it differs.
//!
//! A file that fails to load (half written, a key of another certificate) is logged and the
//! certificate in use is kept: a renewal gone wrong must never take TLS down. Connections
//! already open keep the certificate they started with; new handshakes get the new one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::TlsMetrics;

/// The protocols offered in ALPN, preferred first: browsers get HTTP/2, so all the tabs of a
/// page share one connection instead of six per host.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// PEM certificates, the server's first, then the intermediates (certbot's
    /// `fullchain.pem`).
    pub cert_path: PathBuf,
    /// The PEM private key of the first certificate (PKCS#8, PKCS#1 or SEC1; certbot's
    /// `privkey.pem`).
    pub key_path: PathBuf,
}

/// Why a certificate and key cannot be used. Never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// `tls.cert_path` or `tls.key_path`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("{} holds no usable PEM certificate ({reason})", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The key file holds no PEM private key, or a broken one.
    #[error("{} holds no usable PEM private key ({reason})", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// rustls refused the pair: most often a key that is not the certificate's.
    #[error("the key in {} does not fit the certificate in {}: {source}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

impl TlsError {
    /// The config field to blame in a start-up error.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Read { field, .. } => field,
            Self::Certificate { .. } => "tls.cert_path",
            Self::Key { .. } | Self::Mismatch { .. } => "tls.key_path",
        }
    }
}

/// The TLS side of the listener: the server config new handshakes use, swapped whole when
/// the files change.
#[derive(Debug)]
pub struct Tls {
    files: Files,
    reload_interval: Duration,
    current: ArcSwap<ServerConfig>,
    /// What the files looked like when they were last read (loaded or not): a bad file is
    /// reported once, not at every check, and read again when it changes.
    seen: Mutex<Stamp>,
}

/// A digest of both files as last read, or of the error that stopped the reading. Contents
/// rather than modification times: a renewal within one tick of a coarse clock, a swapped
/// symlink (certbot's `live/`, a Kubernetes secret) and a file put back as it was are all
/// seen for what they are, for the price of reading a few kilobytes per check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([u8; 32]);

impl Stamp {
    fn of(files: &Files) -> Self {
        let mut digest = Sha256::new();
        for path in [&files.cert_path, &files.key_path] {
            match std::fs::read(path) {
                Ok(bytes) => {
                    digest.update(b"ok");
                    digest.update((bytes.len() as u64).to_le_bytes());
                    digest.update(&bytes);
                }
                Err(e) => digest.update(format!("error {:?}", e.kind())),
            }
        }
        Self(digest.finalize().into())
    }
}

impl Tls {
    /// Reads and checks `files`; `reload_interval` is how often they are looked at again.
    pub fn load(files: Files, reload_interval: Duration) -> Result<Self, TlsError> {
        let seen = Stamp::of(&files);
        let config = server_config(&files)?;
        Ok(Self {
            files,
            reload_interval,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        })
    }

    /// An acceptor with the certificate in use now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Where the certificate and key are read from.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Reads the files again if they changed since they were last read. `Ok(true)`: a new
    /// certificate is in use; `Ok(false)`: nothing changed; an error: the old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = Stamp::of(&self.files);
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let config = server_config(&self.files)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }

    /// Looks at the files every `reload_interval` until `stop`, counting what happens on
    /// `metrics`. Reading runs off the request threads.
    pub async fn watch(self: Arc<Self>, metrics: TlsMetrics, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.reload_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await; // the first tick is now: the files were just read
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            let tls = Arc::clone(&self);
            let Ok(reloaded) = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await
            else {
                continue;
            };
            match reloaded {
                Ok(false) => {}
                Ok(true) => {
                    metrics.reloaded.inc();
                    tracing::info!(
                        cert = %self.files.cert_path.display(),
                        "tls: new certificate loaded; new connections use it"
                    );
                }
                Err(e) => {
                    metrics.reload_failed.inc();
                    tracing::warn!(error = %e, "tls: certificate not reloaded; keeping the one in use");
                }
            }
        }
    }
}

/// The rustls server config for `files`: ring as the crypto provider, TLS 1.2 and 1.3, no
/// client certificates, ALPN [`ALPN`].
fn server_config(files: &Files) -> Result<ServerConfig, TlsError> {
    let read = |path: &Path, field| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            field,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&files.cert_path, "tls.cert_path")?;
    let key_pem = read(&files.key_path, "tls.key_path")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: files.cert_path.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: files.cert_path.clone(),
            reason: "no BEGIN CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: files.key_path.clone(),
        reason: key_problem(&e).into(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|source| TlsError::Mismatch {
            cert: files.cert_path.clone(),
            key: files.key_path.clone(),
            source,
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What is wrong with a key file, in words that quote none of it (the PEM parser's own
/// messages may quote a line or a byte).
fn key_problem(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::NoItemsFound => "no BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block",
        pem::Error::MissingSectionEnd { .. } => "a block has no END line",
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
        pem::Error::Base64Decode(_) => "a block is not valid base64",
        _ => "not a PEM file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for localhost and its key, as PEM.
    fn pair() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    #[test]
    fn changed_files_are_read_again_and_bad_ones_keep_the_certificate_in_use() {
        let dir = std::env::temp_dir().join(format!("callhome-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Files {
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
        };
        let install = |(cert, key): &(String, String)| {
            std::fs::write(&files.cert_path, cert).unwrap();
            std::fs::write(&files.key_path, key).unwrap();
        };
        install(&pair());
        let tls = Tls::load(files.clone(), Duration::from_secs(1)).unwrap();
        let first = tls.current.load_full();
        assert_eq!(first.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

        install(&pair());
        assert!(tls.reload_if_changed().unwrap());
        let second = tls.current.load_full();
        assert!(!Arc::ptr_eq(&first, &second), "a new config is in use");

        // A certificate whose key is another's: reported once, the second one stays.
        let (cert, _) = pair();
        std::fs::write(&files.cert_path, cert).unwrap();
        let err = tls.reload_if_changed().unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert!(
            !tls.reload_if_changed().unwrap(),
            "the same bad files again"
        );
        assert!(Arc::ptr_eq(&second, &tls.current.load_full()));
        std::fs::remove_file(&files.key_path).unwrap();
        assert_eq!(tls.reload_if_changed().unwrap_err().field(), "tls.key_path");
        assert!(Arc::ptr_eq(&second, &tls.current.load_full()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
