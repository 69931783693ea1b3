//! `RedisTls`: TLS-only Redis deployments for the tests (`--port 0 --tls-port <port>`): a
//! private CA (rcgen) and one certificate it signed for 127.0.0.1 and localhost, presented
//! by every server and sentinel (and used by them as their client certificate towards each
//! other), plus the servers' password.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::TempDir;

#[derive(Clone)]
pub struct RedisTls {
    /// The CA's certificate (PEM): what `redis_ca` names.
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The servers' password (`requirepass`, and `masterauth` for replication).
    pub password: Option<String>,
    _dir: Arc<TempDir>,
}

/// A CA certificate (PEM at `dir/<name>.pem`) and its issuer, for signing.
pub fn ca(dir: &Path, name: &str) -> (PathBuf, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    (path, rcgen::Issuer::new(params, key))
}

/// A CA (PEM file in `dir`) that signed none of the servers' certificates.
pub fn unrelated_ca(dir: &Path) -> PathBuf {
    ca(dir, "unrelated-ca").0
}

impl RedisTls {
    pub fn new(password: Option<&str>) -> RedisTls {
        let dir = TempDir::new();
        let (ca_path, issuer) = ca(dir.path(), "redis-ca");
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        RedisTls {
            ca: ca_path,
            cert: cert_path,
            key: key_path,
            password: password.map(str::to_string),
            _dir: Arc::new(dir),
        }
    }

    /// The TLS lines of a `redis.conf` (a server's or a sentinel's): TLS on `port`, plain
    /// TCP off, replication and monitoring over TLS verified against the CA.
    pub fn conf_lines(&self, port: u16) -> Vec<(String, String)> {
        let p = |p: &Path| p.display().to_string();
        [
            ("port", "0".to_string()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", p(&self.cert)),
            ("tls-key-file", p(&self.key)),
            ("tls-ca-cert-file", p(&self.ca)),
            ("tls-replication", "yes".into()),
            ("tls-auth-clients", "no".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `conf_lines` plus the password, as `redis-server` arguments.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let mut lines = self.conf_lines(port);
        if let Some(pw) = &self.password {
            lines.push(("requirepass".into(), pw.clone()));
            lines.push(("masterauth".into(), pw.clone()));
        }
        lines
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect()
    }

    /// A connection over TLS (verified against the CA) to `port`, authenticated with
    /// `password`; `None` if it does not answer within 500 ms (killed, not up yet).
    pub async fn conn(
        &self,
        port: u16,
        password: Option<&str>,
    ) -> Option<redis::aio::MultiplexedConnection> {
        let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&self.ca).unwrap()),
        };
        let c = redis::Client::build_with_tls(format!("rediss://{auth}127.0.0.1:{port}/"), certs)
            .ok()?;
        super::sentinel::connect(c).await
    }
}
