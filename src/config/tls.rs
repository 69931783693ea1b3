//! The server certificate as a swappable source: rustls asks `CertSource` for the
//! certificate of every handshake, so a renewed pair (cert-manager, certbot) can be put in
//! place for new connections while open ones keep theirs. Loading and checking a pair
//! (PEM, key matches certificate, `notAfter`) lives here so that startup, config reload and
//! the file watcher (`ops::certs`) apply the same rules.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

/// Why a certificate pair cannot be used: the config key it concerns and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A usable certificate chain and key, and when the leaf expires (Unix seconds).
pub struct Pair {
    pub certified: Arc<CertifiedKey>,
    pub not_after: i64,
}

/// Read and check the pair at `cert` and `key`: the chain parses (at least one
/// certificate), the key parses (PKCS#8, PKCS#1 or SEC1), the key belongs to the leaf.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Pair, PairError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |key: &'static str, message: String| PairError { key, message };
    let read = |k: &'static str, p: &Path| {
        std::fs::read(p).map_err(|e| err(k, format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read("tls.cert", cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err("tls.cert", format!("not a PEM certificate file: {e}")))?;
    let Some(leaf) = certs.first() else {
        return Err(err(
            "tls.cert",
            "no CERTIFICATE block found in the PEM file".into(),
        ));
    };
    let not_after = not_after(leaf).map_err(|m| err("tls.cert", m))?;
    let key_pem = read("tls.key", key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        err(
            "tls.key",
            format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        err(
            "tls.key",
            format!("unusable with the certificate in tls.cert: {e}"),
        )
    })?;
    Ok(Pair {
        certified: Arc::new(certified),
        not_after,
    })
}

/// The leaf's `notAfter` as Unix seconds.
fn not_after(leaf: &[u8]) -> Result<i64, String> {
    let (_, c) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(c.validity().not_after.timestamp())
}

/// The certificate every handshake gets, replaceable while serving.
pub struct CertSource {
    current: ArcSwap<CertifiedKey>,
    not_after: AtomicI64,
    /// The files it came from (resolved against the config's folder).
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSource")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertSource {
    pub fn new(pair: Pair, cert_path: PathBuf, key_path: PathBuf) -> CertSource {
        CertSource {
            current: ArcSwap::new(pair.certified),
            not_after: AtomicI64::new(pair.not_after),
            cert_path,
            key_path,
        }
    }

    /// Re-read the files; on success new handshakes get the new pair. On error nothing
    /// changes.
    pub fn reload(&self) -> Result<i64, PairError> {
        let pair = load_pair(&self.cert_path, &self.key_path)?;
        self.current.store(pair.certified);
        self.not_after.store(pair.not_after, Ordering::Relaxed);
        Ok(pair.not_after)
    }

    /// When the certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }
}

impl rustls::server::ResolvesServerCert for CertSource {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
