//! Where an upstream or identity-provider URL connects: scheme, host, port and the `Host`
//! value, prepared once per URL while the config loads (the pool indexes by `id`). Also
//! the default trust anchors for https.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use http::{HeaderValue, Uri};

/// Where to connect: scheme, host and port of an upstream, prepared once per upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `scheme://host:port`.
    pub(crate) key: Box<str>,
    /// `host:port` (IPv6 in brackets), the port filled in from the scheme: shared by the
    /// access-log lines of the requests sent there.
    pub(crate) host_port: std::sync::Arc<str>,
    /// A small number per distinct `key` and `Host` value in this process: the pool's
    /// index, so the request path never hashes the key.
    pub(crate) id: usize,
    /// The URL's authority as written: the `Host` header sent there.
    pub(crate) host_header: HeaderValue,
    /// Host name or IP address, without IPv6 brackets.
    pub(crate) host: Box<str>,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Origin {
    /// The origin of an absolute `http://` or `https://` URI.
    pub fn from_uri(uri: &Uri) -> Result<Origin, String> {
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{uri} is not an http:// or https:// URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{uri} has no host"))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{authority} is not a usable Host value"))?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let key: Box<str> =
            format!("{}://{host}:{port}", if tls { "https" } else { "http" }).into();
        Ok(Origin {
            host_port: key.split_once("://").map_or(&*key, |(_, hp)| hp).into(),
            host_header,
            id: origin_id(&format!("{key} {}", authority.as_str())),
            key,
            host: bare.into(),
            port,
            tls,
        })
    }

    /// `host:port` (IPv6 in brackets), the port filled in from the scheme.
    pub fn host_port(&self) -> &str {
        &self.host_port
    }
}

/// The process-wide number of an origin (key and `Host` value), the same across config
/// reloads so pooled connections survive them.
fn origin_id(key: &str) -> usize {
    static IDS: LazyLock<Mutex<HashMap<Box<str>, usize>>> = LazyLock::new(Mutex::default);
    let mut ids = IDS.lock().unwrap_or_else(|p| p.into_inner());
    let next = ids.len();
    *ids.entry(key.into()).or_insert(next)
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// The webpki (Mozilla) roots: what https upstreams are verified against by default.
pub fn webpki_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// Where an issuer's discovery document lives: `<issuer>/.well-known/openid-configuration`
/// (a trailing `/` of the issuer is not doubled). `None` when the issuer is not a URL.
pub fn well_known(issuer: &str) -> Option<Uri> {
    let uri: Uri = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
    .parse()
    .ok()?;
    matches!(uri.scheme_str(), Some("http" | "https"))
        .then_some(uri)
        .filter(|u| u.authority().is_some())
}
