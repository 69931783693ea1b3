//! `FileConfig -> Config`: every check, default and resolution (paths, env secrets, keys,
//! URLs), each error naming file, key and (for parse errors) line.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use super::file::*;
use super::*;

mod env;
pub(super) mod identity;
pub(super) mod routes;
mod signals;

use identity::*;
use routes::*;

/// Where the config file is: `-c`, then `JWTGATE_CONFIG`, then ./gateway.toml.
pub fn resolve_path(cli: Option<PathBuf>) -> PathBuf {
    cli.or_else(|| std::env::var_os("JWTGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gateway.toml"))
}

/// Collects the first problem found, with file and key.
struct Ctx<'a> {
    file: &'a str,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.to_string(),
            // Filled in from the file's spans once validation fails (`locate`).
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Relative paths in the config are relative to the config file's folder.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn read(&self, key: &str, p: &str) -> Result<Vec<u8>, ConfigError> {
        let path = self.resolve(p);
        std::fs::read(&path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        Self::from_str(path, &text)
    }

    /// Parse and validate config text; `path` is used for messages and relative paths.
    pub fn from_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: file.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let ctx = Ctx { file: &file, dir };
        let mut config = validate(&ctx, path, raw).map_err(|e| super::locate::locate(e, text))?;
        config.source = Arc::new(super::source::Source::of(text));
        Ok(config)
    }
}

fn validate(ctx: &Ctx, path: &Path, mut raw: FileConfig) -> Result<Config, ConfigError> {
    env::expand_urls(ctx, &mut raw)?;
    let listen = validate_listen(ctx, &raw.listen)?;
    let server = validate_server(ctx, &raw.server)?;
    let (tls, tls_files) = match (&listen.https, &raw.tls) {
        (Some(_), Some(t)) => {
            let (c, f) = load_tls(ctx, t)?;
            (Some(c), Some(f))
        }
        (Some(_), None) => {
            return Err(ctx.err(
                "tls",
                "[tls] with `cert` and `key` is required when listen.https is set",
            ))
        }
        (None, _) => (None, None),
    };
    if raw.admin.token_env.is_empty() {
        return Err(ctx.err("admin.token_env", "must name an environment variable"));
    }
    let admin_token = std::env::var(&raw.admin.token_env)
        .ok()
        .filter(|v| !v.is_empty());

    let mut issuers = Vec::with_capacity(raw.issuers.len());
    let mut names = HashSet::new();
    let mut iss_values = HashSet::new();
    for (i, fi) in raw.issuers.iter().enumerate() {
        let key = format!("issuers[{i}]");
        if fi.name.is_empty() {
            return Err(ctx.err(format!("{key}.name"), "must not be empty"));
        }
        // The name scopes revocation keys (`revoked:jti:<name>:<jti>`): a `:` in it would
        // make one issuer's keys readable as another's.
        if fi.name.contains(':') {
            return Err(ctx.err(
                format!("{key}.name"),
                format!(
                    "{:?}: issuer names must not contain `:` (they are part of revocation keys)",
                    fi.name
                ),
            ));
        }
        if !names.insert(fi.name.clone()) {
            return Err(ctx.err(
                format!("{key}.name"),
                format!("duplicate issuer name {:?}", fi.name),
            ));
        }
        if fi.issuer.is_empty() {
            return Err(ctx.err(format!("{key}.issuer"), "must not be empty"));
        }
        if !iss_values.insert(fi.issuer.clone()) {
            return Err(ctx.err(format!("{key}.issuer"), format!("issuer {:?} is configured twice; the token's `iss` picks the issuer, so it must be unique", fi.issuer)));
        }
        issuers.push(validate_issuer(ctx, &key, fi)?);
    }
    // An opaque token names no issuer: only one issuer may be asked about them.
    if issuers.iter().filter(|i| i.introspection.is_some()).count() > 1 {
        return Err(ctx.err(
            "issuers",
            "only one issuer may have `introspection = true` (an opaque token does not say which issuer it is from)",
        ));
    }

    let tokens = validate_tokens(ctx, &raw.tokens)?;
    let identity = validate_identity(ctx, &raw.identity)?;
    let revocation = validate_revocation(ctx, &raw.revocation)?;
    let login = raw
        .login
        .as_ref()
        .map(|l| super::login::validate(l, &issuers))
        .transpose()
        .map_err(|(k, m)| ctx.err(k, m))?;
    // Endpoints [refresh] leaves out come from the [login] issuer's discovery, or the only
    // issuer's. [login] implies [refresh] (cookies, logout) with its defaults.
    let discovery_issuer = match &login {
        Some(l) => Some(l.issuer),
        None => (issuers.len() == 1 && issuers[0].discovery.is_some()).then_some(0),
    };
    let implied = login.as_ref().map(|_| FileRefresh::default());
    let refresh = raw
        .refresh
        .as_ref()
        .or(implied.as_ref())
        .map(|r| validate_refresh(ctx, r, login.as_ref().map(|l| &l.client), discovery_issuer))
        .transpose()?;
    if let (Some(_), Some(r)) = (&login, &refresh) {
        if !tokens
            .sources
            .contains(&TokenSource::Cookie(r.access_cookie.clone()))
        {
            return Err(ctx.err(
                "tokens.sources",
                format!(
                    "sign-in ([login]) keeps the session in the access cookie: add \"cookie:{}\"",
                    r.access_cookie
                ),
            ));
        }
    }
    let anomaly = raw
        .anomaly
        .as_ref()
        .map(|a| validate_anomaly(ctx, a))
        .transpose()?;
    let backchannel = signals::validate_backchannel(ctx, &raw.issuers, &issuers, login.as_ref())?;
    let signals = raw
        .signals
        .as_ref()
        .map(|s| signals::validate_signals(ctx, s, &issuers))
        .transpose()?;
    {
        // The gateway's own endpoints on the public listeners must not share a path.
        let mut own: Vec<(&str, String)> = backchannel
            .iter()
            .map(|b| (b.path.as_str(), "backchannel_logout_path".to_string()))
            .collect();
        if let Some(s) = &signals {
            own.push((&s.path, "signals.path".into()));
        }
        if let Some(l) = &login {
            own.push((&l.callback_path, "login.callback_path".into()));
        }
        if let Some(r) = &refresh {
            own.push((&r.logout_path, "refresh.logout_path".into()));
        }
        let mut seen = HashSet::new();
        for (p, key) in &own {
            if !seen.insert(*p) {
                return Err(ctx.err(
                    key,
                    format!("{p:?} is already the path of another of the gateway's own endpoints"),
                ));
            }
        }
    }

    let authz = validate_authz(ctx, raw.authz.as_ref().unwrap_or(&FileAuthz::default()))?;

    if raw.routes.is_empty() {
        return Err(ctx.err("routes", "at least one [[routes]] entry is required"));
    }
    // A decision listener alone forwards nothing: its routes need no upstreams.
    let proxies = listen.https.is_some() || listen.http.is_some();
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut route_names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, fr) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let r = validate_route(ctx, &key, fr, proxies)?;
        if !route_names.insert(r.name.clone()) {
            return Err(ctx.err(
                format!("{key}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        if !seen.insert((r.host.clone(), r.path_prefix.clone())) {
            return Err(ctx.err(
                format!("{key}.path_prefix"),
                format!(
                    "another route already has host {:?} and path_prefix {:?}",
                    r.host.as_deref().unwrap_or("*"),
                    r.path_prefix
                ),
            ));
        }
        if r.login && login.is_none() {
            return Err(ctx.err(
                format!("{key}.login"),
                "needs a [login] table (the identity provider to sign in with)",
            ));
        }
        if r.auth != AuthMode::None && issuers.is_empty() {
            return Err(ctx.err(
                format!("{key}.auth"),
                format!(
                    "route {:?} authenticates (auth = \"{}\") but no [[issuers]] is configured",
                    r.name, fr.auth
                ),
            ));
        }
        routes.push(r);
    }

    Ok(Config {
        path: path.to_path_buf(),
        listen,
        server,
        tls,
        tls_files,
        admin_token,
        issuers,
        tokens,
        identity,
        revocation,
        refresh,
        anomaly,
        authz,
        login,
        backchannel,
        signals,
        routes,
        source: Arc::default(),
    })
}

fn validate_authz(ctx: &Ctx, a: &FileAuthz) -> Result<Authz, ConfigError> {
    let mut trusted_proxies = Vec::with_capacity(a.trusted_proxies.len());
    for (i, n) in a.trusted_proxies.iter().enumerate() {
        // A bare address is its own /32 or /128.
        let net = n
            .parse::<ipnet::IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ctx.err(
                    format!("authz.trusted_proxies[{i}]"),
                    format!("{n:?} is not an address or a CIDR network (\"10.0.0.0/8\")"),
                )
            })?;
        trusted_proxies.push(net.trunc());
    }
    let path_prefix = match a.path_prefix.as_deref() {
        None => None,
        Some(p) => {
            let p = normalize_prefix(p);
            if p == "/" || crate::path::normalize(&p).ok().as_deref() != Some(p.as_str()) {
                return Err(ctx.err(
                    "authz.path_prefix",
                    "must be a normalised path other than \"/\" (Envoy's http_service path_prefix, e.g. \"/ext-authz\")",
                ));
            }
            Some(p)
        }
    };
    Ok(Authz {
        trusted_proxies,
        path_prefix,
    })
}

fn validate_anomaly(ctx: &Ctx, a: &FileAnomaly) -> Result<Anomaly, ConfigError> {
    if !(1..=MAX_WINDOW_S).contains(&a.window_s) {
        return Err(ctx.err(
            "anomaly.window_s",
            format!("must be from 1 to {MAX_WINDOW_S} seconds"),
        ));
    }
    if a.max_requests_per_token == 0 {
        return Err(ctx.err("anomaly.max_requests_per_token", "must be greater than 0"));
    }
    if a.max_networks_per_token == 0 {
        return Err(ctx.err("anomaly.max_networks_per_token", "must be greater than 0"));
    }
    let revoke = match a.action.as_str() {
        "log" => false,
        "revoke" => true,
        other => {
            return Err(ctx.err(
                "anomaly.action",
                format!("{other:?} is not \"log\" or \"revoke\""),
            ))
        }
    };
    Ok(Anomaly {
        window: Duration::from_secs(a.window_s),
        max_requests: a.max_requests_per_token,
        max_networks: a.max_networks_per_token,
        revoke,
    })
}

fn endpoint(ctx: &Ctx, key: &str, url: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ctx.err(key, format!("{url:?} is not a URL")))?;
    match uri.scheme_str() {
        Some("https") | Some("http") if uri.authority().is_some() => {}
        _ => return Err(ctx.err(key, format!("{url:?} must be an http:// or https:// URL"))),
    }
    if uri.scheme_str() == Some("http") && !is_loopback_authority(&uri) {
        tracing::warn!(
            key,
            "identity provider endpoint uses plain http on a non-loopback host"
        );
    }
    Ok(uri)
}

fn parse_addr(ctx: &Ctx, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        ctx.err(
            key,
            format!("{v:?} is not an address like \"127.0.0.1:8080\""),
        )
    })
}

fn validate_listen(ctx: &Ctx, l: &FileListen) -> Result<Listen, ConfigError> {
    let https = l
        .https
        .as_deref()
        .map(|v| parse_addr(ctx, "listen.https", v))
        .transpose()?;
    let http = l
        .http
        .as_deref()
        .map(|v| parse_addr(ctx, "listen.http", v))
        .transpose()?;
    let authz = l
        .authz
        .as_deref()
        .map(|v| parse_addr(ctx, "listen.authz", v))
        .transpose()?;
    let metrics = l
        .metrics
        .as_deref()
        .map(|v| parse_addr(ctx, "listen.metrics", v))
        .transpose()?;
    if https.is_none() && http.is_none() && authz.is_none() {
        return Err(ctx.err(
            "listen",
            "set at least one of listen.https, listen.http and listen.authz",
        ));
    }
    let admin = match &l.admin {
        Some(v) => parse_addr(ctx, "listen.admin", v)?,
        None => {
            return Err(ctx.err(
                "listen.admin",
                "is required (health checks and the admin API live there)",
            ))
        }
    };
    // Two listeners clash on one port when their addresses are equal or either is the
    // wildcard of its family (0.0.0.0:9901 takes 127.0.0.1:9901 too).
    let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
    for (key, a) in [
        ("listen.https", https),
        ("listen.http", http),
        ("listen.admin", Some(admin)),
        ("listen.authz", authz),
        ("listen.metrics", metrics),
    ] {
        let Some(a) = a.filter(|a| a.port() != 0) else {
            continue;
        };
        let clash = seen.iter().find(|(_, b)| {
            a.port() == b.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        });
        if let Some((other, b)) = clash {
            return Err(ctx.err(
                key,
                format!("{a} is already used by another listener ({other} = {b})"),
            ));
        }
        seen.push((key, a));
    }
    Ok(Listen {
        https,
        http,
        admin,
        authz,
        metrics,
    })
}

fn validate_server(ctx: &Ctx, s: &FileServer) -> Result<Server, ConfigError> {
    let worker_threads = if s.worker_threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else if s.worker_threads > 1024 {
        return Err(ctx.err("server.worker_threads", "must be at most 1024"));
    } else {
        s.worker_threads
    };
    for (key, ms) in [
        ("server.header_timeout_ms", s.header_timeout_ms),
        ("server.keepalive_timeout_ms", s.keepalive_timeout_ms),
    ] {
        if ms == 0 {
            return Err(ctx.err(key, "must be greater than 0"));
        }
        if ms > MAX_CONN_TIMEOUT_MS {
            return Err(ctx.err(
                key,
                format!("must be at most {MAX_CONN_TIMEOUT_MS} (one hour)"),
            ));
        }
    }
    if s.max_connections == 0 || s.max_connections > MAX_MAX_CONNECTIONS {
        return Err(ctx.err(
            "server.max_connections",
            format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
        ));
    }
    if s.token_cache_mib == 0 || s.token_cache_mib > MAX_TOKEN_CACHE_MIB {
        return Err(ctx.err(
            "server.token_cache_mib",
            format!("must be between 1 and {MAX_TOKEN_CACHE_MIB}"),
        ));
    }
    if s.stream_idle_timeout_ms == 0 {
        return Err(ctx.err("server.stream_idle_timeout_ms", "must be greater than 0"));
    }
    if s.max_header_bytes < 8192 {
        return Err(ctx.err("server.max_header_bytes", "must be at least 8192"));
    }
    let log_format = match s.log_format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            return Err(ctx.err(
                "server.log_format",
                format!("{other:?} is not \"json\" or \"text\""),
            ))
        }
    };
    Ok(Server {
        worker_threads,
        drain: Duration::from_secs(s.drain_s),
        header_timeout: Duration::from_millis(s.header_timeout_ms),
        stream_idle_timeout: Duration::from_millis(s.stream_idle_timeout_ms),
        keepalive_timeout: Duration::from_millis(s.keepalive_timeout_ms),
        max_connections: s.max_connections,
        token_cache_bytes: s.token_cache_mib * 1024 * 1024,
        max_header_bytes: s.max_header_bytes,
        max_body_bytes: s.max_body_bytes,
        trusted_proxy_hops: s.trusted_proxy_hops,
        log_format,
        upstream_roots: Arc::new(upstream_roots(ctx, s.upstream_ca.as_deref())?),
    })
}

/// The webpki roots, plus every certificate in the `server.upstream_ca` PEM file.
fn upstream_roots(ctx: &Ctx, ca: Option<&str>) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = super::origin::webpki_roots();
    let Some(ca) = ca else {
        return Ok(roots);
    };
    const KEY: &str = "server.upstream_ca";
    for (i, c) in read_certs(ctx, KEY, ca)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            ctx.err(
                KEY,
                format!("certificate {} is not usable as a CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// The certificates of the PEM file `path` (config key `key`): at least one.
fn read_certs(
    ctx: &Ctx,
    key: &str,
    path: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ConfigError> {
    parse_certs(ctx, key, &ctx.read(key, path)?)
}

/// The certificates of a PEM bundle read for config key `key`: at least one.
fn parse_certs(
    ctx: &Ctx,
    key: &str,
    pem: &[u8],
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ctx.err(key, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(ctx.err(key, "no CERTIFICATE block found in the PEM file"));
    }
    Ok(certs)
}

/// `[tls] client_ca` / `client_auth`: client certificates for RFC 8705 certificate-bound
/// tokens. `optional` asks for a certificate but lets clients without one finish the
/// handshake (their bound tokens are refused later, with `certificate mismatch`);
/// `required` refuses the handshake without a certificate that chains to `client_ca`.
fn client_verifier(
    ctx: &Ctx,
    t: &FileTls,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, ConfigError> {
    let required = match t.client_auth.as_deref() {
        None | Some("optional") => false,
        Some("required") => true,
        Some(other) => {
            return Err(ctx.err(
                "tls.client_auth",
                format!("{other:?} is not \"optional\" or \"required\""),
            ))
        }
    };
    let Some(ca) = &t.client_ca else {
        if t.client_auth.is_some() {
            return Err(ctx.err(
                "tls.client_auth",
                "needs tls.client_ca (the CA bundle client certificates must chain to)",
            ));
        }
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ctx, "tls.client_ca", ca)? {
        roots
            .add(c)
            .map_err(|e| ctx.err("tls.client_ca", format!("not a usable CA certificate: {e}")))?;
    }
    let b = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = if required {
        b
    } else {
        b.allow_unauthenticated()
    };
    b.build()
        .map(Some)
        .map_err(|e| ctx.err("tls.client_ca", e.to_string()))
}

/// The TLS server config for `[tls]`: its certificate comes from a `CertSource`, which the
/// file watcher (`[tls] watch_interval_ms`) can swap while serving; with `client_ca`, client
/// certificates are asked for (RFC 8705 certificate-bound tokens).
fn load_tls(ctx: &Ctx, t: &FileTls) -> Result<(Arc<rustls::ServerConfig>, Tls), ConfigError> {
    let (cert_path, key_path) = (ctx.resolve(&t.cert), ctx.resolve(&t.key));
    let pair =
        super::tls::load_pair(&cert_path, &key_path).map_err(|e| ctx.err(e.key, e.message))?;
    let source = Arc::new(super::tls::CertSource::new(pair, cert_path, key_path));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ctx.err("tls", e.to_string()))?;
    let builder = match client_verifier(ctx, t, provider)? {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(source.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let watch_interval = match t.watch_interval_ms {
        0 => None,
        ms if ms < 100 => {
            return Err(ctx.err("tls.watch_interval_ms", "must be 0 (off) or at least 100"))
        }
        ms => Some(Duration::from_millis(ms)),
    };
    Ok((
        Arc::new(cfg),
        Tls {
            source,
            watch_interval,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(Path::new("/tmp/gw.toml"), text)
    }

    const BASE: &str = r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = load(&format!("{BASE}\n[[routes]]\nname='a'\npath_prefix='/api/'\nupstreams=['http://127.0.0.1:1']\nauth='none'\n")).unwrap();
        assert_eq!(c.routes[0].path_prefix, "/api");
        assert_eq!(c.server.max_header_bytes, 65536);
        assert_eq!(c.identity.subject_header, "x-user-id");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = load(&format!("{BASE}\n[server]\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(e.contains("line"), "{e}");
        assert!(e.starts_with("/tmp/gw.toml"), "{e}");
    }

    #[test]
    fn bad_upstream_names_route_key() {
        let e = load(&format!(
            "{BASE}\n[[routes]]\nname='a'\npath_prefix='/'\nupstreams=['ftp://x']\nauth='none'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("routes[0].upstreams[0]"), "{e}");
    }

    /// Each `(extra, key)`: the open route plus `extra` is refused with a message naming
    /// `key`.
    fn refused(cases: &[(&str, &str)]) {
        for (extra, key) in cases {
            let e = open_route(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    fn open_route(extra: &str) -> Result<Config, ConfigError> {
        load(&format!(
            "{BASE}\n[[routes]]\nname='a'\npath_prefix='/'\nupstreams=['http://x']\nauth='none'\n{extra}\n"
        ))
    }

    #[test]
    fn connection_limits_have_defaults_and_are_validated() {
        let c = open_route("").unwrap();
        assert_eq!(c.server.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(c.server.max_connections, DEFAULT_MAX_CONNECTIONS);
        let c = open_route("[server]\nkeepalive_timeout_ms = 500\nmax_connections = 2").unwrap();
        assert_eq!(c.server.keepalive_timeout, Duration::from_millis(500));
        assert_eq!(c.server.max_connections, 2);
        refused(&[
            (
                "[server]\nkeepalive_timeout_ms = 0",
                "server.keepalive_timeout_ms",
            ),
            (
                "[server]\nkeepalive_timeout_ms = 3600001",
                "server.keepalive_timeout_ms",
            ),
            (
                "[server]\nheader_timeout_ms = 0",
                "server.header_timeout_ms",
            ),
            (
                "[server]\nheader_timeout_ms = 86400000",
                "server.header_timeout_ms",
            ),
            ("[server]\nmax_connections = 0", "server.max_connections"),
            (
                "[server]\nmax_connections = 5000000",
                "server.max_connections",
            ),
        ]);
    }

    #[test]
    fn token_cache_size_has_a_default_and_is_validated() {
        let c = open_route("").unwrap();
        assert_eq!(c.server.token_cache_bytes, 64 * 1024 * 1024);
        let c = open_route("[server]\ntoken_cache_mib = 1024").unwrap();
        assert_eq!(c.server.token_cache_bytes, 1024 * 1024 * 1024);
        refused(&[
            ("[server]\ntoken_cache_mib = 0", "server.token_cache_mib"),
            (
                "[server]\ntoken_cache_mib = 65537",
                "server.token_cache_mib",
            ),
        ]);
    }

    #[test]
    fn rate_limit_is_validated() {
        let c = open_route("rate_limit = { per = 'ip', rps = 2.5 }").unwrap();
        let l = c.routes[0].rate_limit.clone().unwrap();
        assert_eq!(
            (l.per, l.rps, l.burst),
            (LimitBy::Ip, 2.5, 3),
            "burst defaults to ceil(rps)"
        );
        refused(&[
            (
                "rate_limit = { per = 'sub', rps = 1 }",
                "routes[0].rate_limit.per",
            ),
            (
                "rate_limit = { per = 'user', rps = 1 }",
                "routes[0].rate_limit.per",
            ),
            (
                "rate_limit = { per = 'ip', rps = 0 }",
                "routes[0].rate_limit.rps",
            ),
            (
                "rate_limit = { per = 'ip', rps = -1 }",
                "routes[0].rate_limit.rps",
            ),
            (
                "rate_limit = { per = 'ip', rps = 1e-20 }",
                "routes[0].rate_limit.rps",
            ),
            (
                "rate_limit = { per = 'ip', rps = 1, burst = 0 }",
                "routes[0].rate_limit.burst",
            ),
            ("rate_limit = { per = 'ip', rps = 1, bust = 5 }", "bust"),
        ]);
    }

    #[test]
    fn cors_is_validated_and_origins_normalised() {
        let c = open_route(
            "cors = { origins = ['HTTPS://App.Example.com:443/', 'http://localhost:3000'], methods = ['get', 'DELETE'], credentials = true }",
        )
        .unwrap();
        let cors = c.routes[0].cors.clone().unwrap();
        assert_eq!(
            cors.origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert_eq!(cors.methods, [http::Method::GET, http::Method::DELETE]);
        assert_eq!(cors.max_age_s, 600);
        refused(&[
            ("cors = { origins = [] }", "routes[0].cors.origins"),
            (
                "cors = { origins = ['app.example.com'] }",
                "routes[0].cors.origins",
            ),
            (
                "cors = { origins = ['https://a.example/path'] }",
                "routes[0].cors.origins",
            ),
            (
                "cors = { origins = ['*', 'https://a.example'] }",
                "routes[0].cors.origins",
            ),
            (
                "cors = { origins = ['*'], credentials = true }",
                "routes[0].cors.credentials",
            ),
            (
                "cors = { origins = ['*'], methods = ['GE T'] }",
                "routes[0].cors.methods",
            ),
            (
                "cors = { origins = ['*'], headers = ['bad header'] }",
                "routes[0].cors.headers",
            ),
            ("cors = { origins = ['*'], expose = ['x'] }", "expose"),
        ]);
    }

    #[test]
    fn anomaly_is_validated() {
        let c = open_route("[anomaly]\naction = 'revoke'").unwrap();
        let a = c.anomaly.unwrap();
        assert_eq!(
            (a.window, a.max_requests, a.max_networks, a.revoke),
            (Duration::from_secs(60), 600, 3, true)
        );
        refused(&[
            ("[anomaly]\nwindow_s = 0", "anomaly.window_s"),
            ("[anomaly]\nwindow_s = 99999999999", "anomaly.window_s"),
            (
                "[anomaly]\nmax_requests_per_token = 0",
                "anomaly.max_requests_per_token",
            ),
            (
                "[anomaly]\nmax_networks_per_token = 0",
                "anomaly.max_networks_per_token",
            ),
            ("[anomaly]\naction = 'block'", "anomaly.action"),
            ("[anomaly]\nwindow = 5", "window"),
        ]);
    }

    #[test]
    fn redis_ca_needs_a_tls_url_and_a_certificate() {
        let e = open_route(
            "[revocation]\nstore = 'redis'\nredis_url = 'redis://127.0.0.1:6379/0'\nredis_ca = '/dev/null'",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("revocation.redis_ca") && e.contains("rediss://"),
            "{e}"
        );
        let e = open_route(
            "[revocation]\nstore = 'redis'\nredis_url = 'rediss://127.0.0.1:6379/0'\nredis_ca = '/dev/null'",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("revocation.redis_ca") && e.contains("CERTIFICATE"),
            "{e}"
        );
    }

    #[test]
    fn more_than_one_redis_is_checked() {
        for (body, key, words) in [
            (
                "redis_url = 'redis+sentinel://:pw@h1/m'",
                "revocation.redis_url",
                "redis_password_env",
            ),
            (
                "redis_url = 'redis+sentinel://h1:26379'",
                "revocation.redis_url",
                "master name",
            ),
            (
                "redis_url = 'redis://h:1/0'\nsentinel_password_env = 'HOME'",
                "revocation.sentinel_password_env",
                "Sentinel",
            ),
            (
                "redis_url = 'redis+sentinel://h1/m'\nredis_password_env = 'JWTGATE_SURELY_UNSET_VAR'",
                "revocation.redis_password_env",
                "JWTGATE_SURELY_UNSET_VAR",
            ),
            (
                "redis_cluster = ['redis://h1:7000', 'rediss://h2:7000']",
                "revocation.redis_cluster",
                "every seed",
            ),
        ] {
            let e = open_route(&format!("[revocation]\nstore = 'redis'\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(words), "{body}: {e}");
        }
        let e = open_route("[revocation]\nredis_cluster = ['redis://h1:7000']")
            .unwrap_err()
            .to_string();
        assert!(e.contains("revocation.redis_cluster"), "{e}");
        let c = open_route(
            "[revocation]\nstore = 'redis'\nredis_url = 'rediss+sentinel://h1,h2:26380/m/2'\nmin_replicas = 1",
        )
        .unwrap();
        assert_eq!(c.revocation.min_replicas, 1);
        assert!(matches!(
            c.revocation.target,
            crate::config::RedisTarget::Sentinel {
                tls: true,
                db: 2,
                ..
            }
        ));
        // WAIT goes to the primary that owns the revocation's key.
        let c = open_route(
            "[revocation]\nstore = 'redis'\nredis_cluster = ['redis://h1:7000']\nmin_replicas = 1",
        )
        .unwrap();
        assert_eq!(c.revocation.min_replicas, 1);
    }

    #[test]
    fn auth_route_without_issuer_is_refused() {
        let e = load(&format!(
            "{BASE}\n[[routes]]\nname='a'\npath_prefix='/'\nupstreams=['http://x']\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("routes[0].auth"), "{e}");
    }

    #[test]
    fn durations_take_an_integer_or_a_human_form_in_every_key() {
        let c = open_route(
            "timeout_ms = '2m'\ncors = { origins = ['*'], max_age_s = '1h' }\n[server]\nheader_timeout_ms = '2s'\ndrain_s = '1m 30s'\nkeepalive_timeout_ms = 500\n[revocation]\ncache_ttl_ms = '1.5s'\nsubject_ttl_s = '1day'\n[anomaly]\nwindow_s = '5m'",
        )
        .unwrap();
        assert_eq!(c.routes[0].timeout, Duration::from_secs(120));
        assert_eq!(c.routes[0].cors.as_ref().unwrap().max_age_s, 3600);
        assert_eq!(c.server.header_timeout, Duration::from_secs(2));
        assert_eq!(c.server.drain, Duration::from_secs(90));
        assert_eq!(c.server.keepalive_timeout, Duration::from_millis(500));
        assert_eq!(c.revocation.cache_ttl, Duration::from_millis(1500));
        assert_eq!(c.revocation.subject_ttl, Duration::from_secs(86_400));
        assert_eq!(c.anomaly.unwrap().window, Duration::from_secs(300));
        for (extra, needles) in [
            // Finer than the unit: refused, not rounded to 1 (or to 0).
            (
                "[server]\nheader_timeout_ms = '1500us'",
                &[
                    "\"1500us\" is not a whole number of milliseconds",
                    "line 12",
                ][..],
            ),
            (
                "[revocation]\nsubject_ttl_s = '500ms'",
                &["not a whole number of seconds", "subject_ttl_s"],
            ),
            (
                "[server]\ndrain_s = 'soon'",
                &["\"soon\" is not a duration", "drain_s"],
            ),
            (
                "[server]\ndrain_s = '30'",
                &["is not a duration", "such as \"30s\""],
            ),
            // A human zero is still checked like the integer.
            (
                "[server]\nheader_timeout_ms = '0s'",
                &["server.header_timeout_ms", "greater than 0"],
            ),
        ] {
            let e = open_route(extra).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{extra}: wanted {n:?} in {e}");
            }
        }
    }

    #[test]
    fn errors_found_after_parsing_carry_the_line_of_their_key() {
        for (text, want) in [
            // A bad URL, two lines into its array.
            (
                "[listen]\nhttp = '127.0.0.1:0'\nadmin = '127.0.0.1:0'\n\n[[routes]]\nname = 'a'\npath_prefix = '/'\nupstreams = [\n  'http://ok',\n  'ftp://x',\n]\nauth = 'none'\n",
                "/tmp/gw.toml: line 10: `routes[0].upstreams[1]`",
            ),
            // A bad enum value.
            (
                "[listen]\nhttp = '127.0.0.1:0'\nadmin = '127.0.0.1:0'\n[server]\nlog_format = 'xml'\n",
                "line 5: `server.log_format`",
            ),
            // A missing file.
            (
                "[listen]\nhttp = '127.0.0.1:0'\nadmin = '127.0.0.1:0'\n[server]\n\nupstream_ca = '/nonexistent/ca.pem'\n",
                "line 6: `server.upstream_ca`: cannot read /nonexistent/ca.pem",
            ),
            // A missing key: the line of its table.
            (
                "\n[listen]\nhttp = '127.0.0.1:0'\n",
                "line 2: `listen.admin`",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(want), "wanted {want:?} in {e}");
        }
        // Nothing in the file to point at: no line.
        let e = load(BASE).unwrap_err().to_string();
        assert_eq!(
            e,
            "/tmp/gw.toml: `routes`: at least one [[routes]] entry is required"
        );
    }

    #[test]
    fn every_url_the_gateway_dials_takes_variables() {
        std::env::set_var("JWTGATE_UT_SEED_HOST", "h1");
        std::env::set_var("JWTGATE_UT_IDP", "https://idp.test");
        std::env::set_var("JWTGATE_UT_CLIENT_SECRET", "s3cret");
        let with = |seed: &str, introspect: &str, ssf: &str| {
            open_route(&format!(
                "[revocation]\nstore = 'redis'\nredis_cluster = ['{seed}']\n\n[[issuers]]\nname = 'i'\nissuer = 'https://i.test'\njwks_url = 'http://127.0.0.1:1/jwks'\nintrospection = true\nintrospection_endpoint = '{introspect}'\nclient_id = 'gw'\nclient_secret_env = 'JWTGATE_UT_CLIENT_SECRET'\n\n[signals]\nissuer = 'https://tx.test'\naudience = 'gw'\njwks_url = '{ssf}'\n"
            ))
        };
        let c = with(
            "redis://${JWTGATE_UT_SEED_HOST}:7000",
            "${JWTGATE_UT_IDP}/introspect",
            "${JWTGATE_UT_IDP}/ssf/jwks",
        )
        .unwrap();
        assert_eq!(
            c.revocation.target,
            RedisTarget::Cluster {
                seeds: vec!["redis://h1:7000".into()]
            }
        );
        let endpoint = c.issuers[0]
            .introspection
            .as_ref()
            .unwrap()
            .endpoint
            .clone();
        assert_eq!(endpoint.unwrap(), "https://idp.test/introspect");
        match &c.signals.unwrap().keys {
            SignalKeys::Own(i) => {
                assert!(matches!(&i.keys, KeySource::Jwks(u) if u == "https://idp.test/ssf/jwks"))
            }
            k => panic!("{k:?}"),
        }
        let (seed, introspect, ssf) = ("redis://h:1", "https://a/i", "https://a/j");
        for (args, key) in [
            (
                (("redis://${JWTGATE_UT_NOPE}:1"), introspect, ssf),
                "revocation.redis_cluster[0]",
            ),
            (
                (seed, "${JWTGATE_UT_NOPE}/i", ssf),
                "issuers[0].introspection_endpoint",
            ),
            (
                (seed, introspect, "${JWTGATE_UT_NOPE}/j"),
                "signals.jwks_url",
            ),
        ] {
            let e = with(args.0, args.1, args.2).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "`{key}`: the environment variable JWTGATE_UT_NOPE"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn revocation_debug_hides_the_redis_password() {
        let c = open_route(
            "[revocation]\nstore = 'redis'\nredis_url = 'rediss://default:hunter2@redis:6380/0'",
        )
        .unwrap();
        let d = format!("{:?}", c.revocation);
        assert!(
            d.contains("rediss://default:<redacted>@redis:6380/0"),
            "{d}"
        );
        let c2 = open_route(
            "[revocation]\nstore = 'redis'\nredis_cluster = ['redis://:hunter3@h1:7000', 'redis://u:hunter4@h2:7000']",
        )
        .unwrap();
        for text in [d, format!("{c:?}"), format!("{:?}", c2.revocation)] {
            for secret in ["hunter2", "hunter3", "hunter4"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(format!("{:?}", c2.revocation).contains("redis://:<redacted>@h1:7000"));
        // Equality still sees the password: a new one is a change (reload notes it).
        let c3 = open_route(
            "[revocation]\nstore = 'redis'\nredis_url = 'rediss://default:other@redis:6380/0'",
        )
        .unwrap();
        assert_eq!(
            format!("{:?}", c3.revocation),
            format!("{:?}", c.revocation)
        );
        assert!(c3.revocation != c.revocation);
    }

    #[test]
    fn issuer_names_cannot_hold_a_colon() {
        let issuer = |name: &str| {
            format!("[[issuers]]\nname = '{name}'\nissuer = 'https://i.test'\njwks_url = 'http://127.0.0.1:1/jwks'\n")
        };
        let e = open_route(&issuer("a:b")).unwrap_err().to_string();
        assert!(e.contains("issuers[0].name") && e.contains("`:`"), "{e}");
        let c = open_route(&issuer("a-b")).unwrap();
        assert_eq!(c.max_leeway_s(), 30);
        assert!(c.issuer_named("a-b").is_some());
    }
}
