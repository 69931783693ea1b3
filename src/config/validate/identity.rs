//! Checks for who may call: `[[issuers]]` (keys, JWKS, discovery), `[tokens]`,
//! `[identity]`, `[revocation]`, `[refresh]`.

use std::collections::HashSet;
use std::time::Duration;

use http::Uri;

use super::super::keys::{self as jwks, StaticKey};
use super::super::*;
use super::*;

/// `login_client`: `[login]`'s client, used when `[refresh]` names none of its own.
/// `discovery_issuer`: an issuer with discovery, whose token endpoint fills in.
pub(super) fn validate_refresh(
    ctx: &Ctx,
    r: &FileRefresh,
    login_client: Option<&OAuthClient>,
    discovery_issuer: Option<usize>,
) -> Result<Refresh, ConfigError> {
    let token_endpoint = match (&r.token_endpoint, discovery_issuer) {
        (Some(url), _) => Some(Some(endpoint(ctx, "refresh.token_endpoint", url)?)),
        (None, Some(_)) if r.client_id.is_some() => Some(None),
        (None, _) => None,
    };
    let client = match token_endpoint {
        None if r.client_id.is_none() => login_client.cloned(),
        None => None,
        Some(token_endpoint) => {
            let client_id = r
                .client_id
                .clone()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| ctx.err("refresh.client_id", "is required with token_endpoint"))?;
            let client_secret = std::env::var(&r.client_secret_env).map_err(|_| {
                ctx.err(
                    "refresh.client_secret_env",
                    format!("environment variable {} is not set", r.client_secret_env),
                )
            })?;
            let auth = match r.client_auth.as_str() {
                "client_secret_basic" => ClientAuth::Basic,
                "client_secret_post" => ClientAuth::Post,
                other => {
                    return Err(ctx.err(
                        "refresh.client_auth",
                        format!(
                            "{other:?} is not \"client_secret_basic\" or \"client_secret_post\""
                        ),
                    ))
                }
            };
            Some(OAuthClient {
                token_endpoint,
                client_id,
                client_secret,
                auth,
            })
        }
    };
    let revocation_endpoint = r
        .revocation_endpoint
        .as_deref()
        .map(|u| endpoint(ctx, "refresh.revocation_endpoint", u))
        .transpose()?;
    if revocation_endpoint.is_some() && client.is_none() {
        return Err(ctx.err("refresh.revocation_endpoint", "needs token_endpoint, client_id and the client secret (RFC 7009 calls authenticate as the client)"));
    }
    if !r.logout_path.starts_with('/') {
        return Err(ctx.err("refresh.logout_path", "must start with '/'"));
    }
    if crate::path::normalize(&r.logout_path).ok().as_deref() != Some(r.logout_path.as_str()) {
        return Err(ctx.err(
            "refresh.logout_path",
            "must be a normalised path (no '//', '.' or '..' segments, escapes or backslashes): requests are matched after normalisation",
        ));
    }
    let rate_limit = validate_rate_limit(
        &FileRateLimit {
            per: "ip".into(),
            rps: r.rate_limit.rps,
            burst: r.rate_limit.burst,
        },
        AuthMode::Required,
    )
    .map_err(|(k, m)| ctx.err(format!("refresh.rate_limit.{k}"), m))?;
    for (k, v) in [
        ("refresh.access_cookie", &r.access_cookie),
        ("refresh.refresh_cookie", &r.refresh_cookie),
    ] {
        if v.is_empty() || v.contains([';', '=', ' ', ',']) {
            return Err(ctx.err(k, format!("{v:?} is not a valid cookie name")));
        }
    }
    Ok(Refresh {
        discovery_issuer,
        client,
        refresh_before: Duration::from_secs(r.refresh_before_s),
        access_cookie: r.access_cookie.clone(),
        refresh_cookie: r.refresh_cookie.clone(),
        refresh_header: header_name(ctx, "refresh.refresh_header", &r.refresh_header)?,
        revocation_endpoint,
        logout_path: r.logout_path.clone(),
        reuse_window: Duration::from_secs(r.reuse_window_s),
        timeout: Duration::from_millis(r.timeout_ms.max(1)),
        rate_limit,
    })
}

pub(super) fn validate_issuer(
    ctx: &Ctx,
    key: &str,
    fi: &FileIssuer,
) -> Result<IssuerConfig, ConfigError> {
    let algorithms = match &fi.algorithms {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ctx.err(
                format!("{key}.algorithms"),
                "must not be empty (omit it to use the keys' own algorithms)",
            ))
        }
        Some(list) => Some(
            list.iter()
                .map(|a| {
                    jwks::parse_alg(a).ok_or_else(|| {
                        ctx.err(
                            format!("{key}.algorithms"),
                            format!(
                                "{a:?} is not a supported algorithm ({})",
                                jwks::SUPPORTED_ALGS
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let discovery = match fi.discovery {
        false => None,
        true => Some(super::origin::well_known(&fi.issuer).ok_or_else(|| {
            ctx.err(
                format!("{key}.issuer"),
                "with `discovery = true` the issuer must be an http:// or https:// URL",
            )
        })?),
    };
    let keys = match (&fi.jwks_url, &fi.keys) {
        (Some(_), Some(_)) => return Err(ctx.err(key, "set either `jwks_url` or `keys`, not both")),
        (None, None) if discovery.is_some() => KeySource::Discovered,
        (None, None) => return Err(ctx.err(key, "needs `jwks_url`, `keys` or `discovery = true`")),
        (Some(url), None) => {
            let uri: Uri = url
                .parse()
                .map_err(|_| ctx.err(format!("{key}.jwks_url"), format!("{url:?} is not a URL")))?;
            match uri.scheme_str() {
                Some("https") | Some("http") if uri.authority().is_some() => {}
                _ => {
                    return Err(ctx.err(
                        format!("{key}.jwks_url"),
                        format!("{url:?} must be an http:// or https:// URL"),
                    ))
                }
            }
            if uri.scheme_str() == Some("http") && !is_loopback_authority(&uri) {
                tracing::warn!(issuer = %fi.name, "jwks_url uses plain http on a non-loopback host; keys can be tampered with in transit");
            }
            KeySource::Jwks(uri)
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(ctx.err(format!("{key}.keys"), "must not be empty"));
            }
            let mut out = Vec::with_capacity(list.len());
            let mut kids = HashSet::new();
            for (j, k) in list.iter().enumerate() {
                let kkey = format!("{key}.keys[{j}]");
                if let Some(kid) = &k.kid {
                    if !kids.insert(kid.clone()) {
                        return Err(
                            ctx.err(format!("{kkey}.kid"), format!("duplicate kid {kid:?}"))
                        );
                    }
                }
                let alg = jwks::parse_alg(&k.alg).ok_or_else(|| {
                    ctx.err(
                        format!("{kkey}.alg"),
                        format!(
                            "{:?} is not a supported algorithm ({})",
                            k.alg,
                            jwks::SUPPORTED_ALGS
                        ),
                    )
                })?;
                if let Some(allowed) = &algorithms {
                    if !allowed.contains(&alg) {
                        return Err(ctx.err(
                            format!("{kkey}.alg"),
                            format!("{} is not in {key}.algorithms", k.alg),
                        ));
                    }
                }
                let material = match (&k.pem, &k.secret_env) {
                    (Some(_), Some(_)) => {
                        return Err(ctx.err(&kkey, "set either `pem` or `secret_env`, not both"))
                    }
                    (None, None) => {
                        return Err(ctx.err(
                            &kkey,
                            "needs `pem` (public key file) or `secret_env` (HMAC secret)",
                        ))
                    }
                    (Some(p), None) => jwks::KeyMaterial::Pem(ctx.read(&format!("{kkey}.pem"), p)?),
                    (None, Some(var)) => {
                        let v = std::env::var_os(var).ok_or_else(|| {
                            ctx.err(
                                format!("{kkey}.secret_env"),
                                format!("environment variable {var} is not set"),
                            )
                        })?;
                        jwks::KeyMaterial::Secret(std::os::unix::ffi::OsStringExt::into_vec(v))
                    }
                };
                let sk =
                    StaticKey::new(k.kid.clone(), alg, material).map_err(|m| ctx.err(&kkey, m))?;
                out.push(sk);
            }
            KeySource::Static(out)
        }
    };
    let introspection = validate_introspection(ctx, key, fi)?;
    Ok(IssuerConfig {
        name: fi.name.clone(),
        issuer: fi.issuer.clone(),
        audiences: fi.audiences.clone(),
        algorithms,
        leeway_s: fi.leeway_s,
        keys,
        discovery,
        introspection,
    })
}

/// `introspection = true` with its endpoint (or discovery), client and cache.
fn validate_introspection(
    ctx: &Ctx,
    key: &str,
    fi: &FileIssuer,
) -> Result<Option<Introspection>, ConfigError> {
    if !fi.introspection {
        for (k, set) in [
            (
                "introspection_endpoint",
                fi.introspection_endpoint.is_some(),
            ),
            ("client_id", fi.client_id.is_some()),
            ("client_secret_env", fi.client_secret_env.is_some()),
        ] {
            if set {
                return Err(ctx.err(
                    format!("{key}.{k}"),
                    "is for token introspection: set `introspection = true` too",
                ));
            }
        }
        return Ok(None);
    }
    let endpoint = match &fi.introspection_endpoint {
        None if fi.discovery => None,
        None => {
            return Err(ctx.err(
                format!("{key}.introspection_endpoint"),
                "is required with `introspection = true` unless `discovery = true`",
            ))
        }
        Some(url) => {
            let uri: Uri = url.parse().map_err(|_| {
                ctx.err(
                    format!("{key}.introspection_endpoint"),
                    format!("{url:?} is not a URL"),
                )
            })?;
            if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.authority().is_none() {
                return Err(ctx.err(
                    format!("{key}.introspection_endpoint"),
                    format!("{url:?} must be an http:// or https:// URL"),
                ));
            }
            Some(uri)
        }
    };
    let client_id = fi
        .client_id
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ctx.err(
                format!("{key}.client_id"),
                "is required with `introspection = true`",
            )
        })?;
    let var = fi.client_secret_env.as_deref().ok_or_else(|| {
        ctx.err(
            format!("{key}.client_secret_env"),
            "is required with `introspection = true`",
        )
    })?;
    let client_secret = std::env::var(var).map_err(|_| {
        ctx.err(
            format!("{key}.client_secret_env"),
            format!("environment variable {var} is not set"),
        )
    })?;
    if fi.introspection_cache_s == 0 || fi.introspection_cache_s > 86_400 {
        return Err(ctx.err(
            format!("{key}.introspection_cache_s"),
            "must be from 1 to 86400 seconds",
        ));
    }
    if !(0.1..=10_000.0).contains(&fi.introspection_rate) {
        return Err(ctx.err(
            format!("{key}.introspection_rate"),
            "must be from 0.1 to 10000 calls per second",
        ));
    }
    Ok(Some(Introspection {
        endpoint,
        client: OAuthClient {
            token_endpoint: None,
            client_id,
            client_secret,
            auth: ClientAuth::Basic,
        },
        cache: Duration::from_secs(fi.introspection_cache_s),
        rate: fi.introspection_rate,
    }))
}

/// True when the URL's host is a loopback name or address.
pub fn is_loopback_authority(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false),
        None => false,
    }
}

pub(super) fn header_name(ctx: &Ctx, key: &str, v: &str) -> Result<http::HeaderName, ConfigError> {
    http::HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| ctx.err(key, format!("{v:?} is not a valid header name")))
}

pub(super) fn validate_tokens(ctx: &Ctx, t: &FileTokens) -> Result<Tokens, ConfigError> {
    if t.sources.is_empty() {
        return Err(ctx.err("tokens.sources", "must list at least one source"));
    }
    let mut sources = Vec::with_capacity(t.sources.len());
    for s in &t.sources {
        let src = if let Some(h) = s.strip_prefix("header:") {
            TokenSource::Header(header_name(ctx, "tokens.sources", h)?)
        } else if let Some(c) = s.strip_prefix("cookie:") {
            if c.is_empty() || c.contains([';', '=', ' ']) {
                return Err(ctx.err("tokens.sources", format!("{s:?}: invalid cookie name")));
            }
            TokenSource::Cookie(c.to_string())
        } else {
            return Err(ctx.err(
                "tokens.sources",
                format!("{s:?} must look like \"header:NAME\" or \"cookie:NAME\""),
            ));
        };
        sources.push(src);
    }
    if t.dpop_iat_window_s == 0 || t.dpop_iat_window_s > 3600 {
        return Err(ctx.err("tokens.dpop_iat_window_s", "must be 1 to 3600"));
    }
    let client_cert_header = t
        .client_cert_header
        .as_deref()
        .map(|h| header_name(ctx, "tokens.client_cert_header", h))
        .transpose()?;
    let dpop_nonce = validate_dpop_nonce(ctx, t)?;
    Ok(Tokens {
        sources,
        csrf: t.csrf,
        dpop_iat_window_s: t.dpop_iat_window_s,
        client_cert_header,
        dpop_nonce,
    })
}

/// `dpop_nonce`, `dpop_nonce_secret_env`, `dpop_nonce_lifetime_s`: the secret is
/// required with nonces on (every replica must share it), and means nothing without them.
fn validate_dpop_nonce(ctx: &Ctx, t: &FileTokens) -> Result<Option<DpopNonce>, ConfigError> {
    if !t.dpop_nonce {
        if t.dpop_nonce_secret_env.is_some() {
            return Err(ctx.err(
                "tokens.dpop_nonce_secret_env",
                "only applies with dpop_nonce = true",
            ));
        }
        return Ok(None);
    }
    if t.dpop_nonce_lifetime_s == 0 || t.dpop_nonce_lifetime_s > 86_400 {
        return Err(ctx.err("tokens.dpop_nonce_lifetime_s", "must be 1 to 86400"));
    }
    let Some(var) = t.dpop_nonce_secret_env.as_deref() else {
        return Err(ctx.err(
            "tokens.dpop_nonce_secret_env",
            "required with dpop_nonce = true: the environment variable holding the nonce secret every replica shares",
        ));
    };
    let secret = std::env::var(var).map_err(|_| {
        ctx.err(
            "tokens.dpop_nonce_secret_env",
            format!("environment variable {var} is not set"),
        )
    })?;
    if secret.len() < 32 {
        return Err(ctx.err(
            "tokens.dpop_nonce_secret_env",
            format!("the secret in {var} must be at least 32 bytes"),
        ));
    }
    Ok(Some(DpopNonce {
        secret: Password(secret),
        lifetime_s: t.dpop_nonce_lifetime_s,
    }))
}

pub(super) fn validate_identity(ctx: &Ctx, i: &FileIdentity) -> Result<Identity, ConfigError> {
    let assertion = match &i.assertion_key {
        None if i.assertion_header.is_some() || i.assertion_ttl_s.is_some() => {
            return Err(ctx.err(
                "identity.assertion_key",
                "required with assertion_header / assertion_ttl_s: the ES256 (P-256) private key that signs assertions",
            ))
        }
        None => None,
        Some(path) => {
            let pem = ctx.read("identity.assertion_key", path)?;
            let key = super::keys::AssertionKey::from_pem(&pem)
                .map_err(|m| ctx.err("identity.assertion_key", m))?;
            let ttl = i.assertion_ttl_s.unwrap_or(60);
            if !(1..=MAX_WINDOW_S).contains(&ttl) {
                return Err(ctx.err(
                    "identity.assertion_ttl_s",
                    format!("must be from 1 to {MAX_WINDOW_S} seconds"),
                ));
            }
            let header = i.assertion_header.as_deref().unwrap_or("x-jwtgate-assertion");
            Some(super::keys::AssertionConfig {
                header: header_name(ctx, "identity.assertion_header", header)?,
                key: Arc::new(key),
                ttl: Duration::from_secs(ttl),
            })
        }
    };
    let mut claims = Vec::with_capacity(i.claims.len());
    for (h, v) in &i.claims {
        let key = format!("identity.claims.{h}");
        let claim = v
            .as_str()
            .ok_or_else(|| ctx.err(&key, "must be a claim name (a string)"))?;
        claims.push((header_name(ctx, &key, h)?, claim.to_string()));
    }
    Ok(Identity {
        subject_header: header_name(ctx, "identity.subject_header", &i.subject_header)?,
        scopes_header: header_name(ctx, "identity.scopes_header", &i.scopes_header)?,
        claims_header: header_name(ctx, "identity.claims_header", &i.claims_header)?,
        forward_token: i.forward_token,
        claims,
        assertion,
    })
}

pub(super) fn validate_revocation(
    ctx: &Ctx,
    r: &FileRevocation,
) -> Result<Revocation, ConfigError> {
    let store = match r.store.as_str() {
        "memory" => StoreKind::Memory,
        "redis" => StoreKind::Redis,
        other => {
            return Err(ctx.err(
                "revocation.store",
                format!("{other:?} is not \"memory\" or \"redis\""),
            ))
        }
    };
    // A URL in a message: it may have come from `${VAR}` with its password.
    let shown =
        |u: &str| crate::config::source::redact_url_password(u).unwrap_or_else(|| u.to_string());
    let target = if store == StoreKind::Redis && !r.redis_cluster.is_empty() {
        let tls = r.redis_cluster[0].starts_with("rediss://");
        for seed in &r.redis_cluster {
            let ok = if tls {
                seed.starts_with("rediss://")
            } else {
                seed.starts_with("redis://")
            };
            if !ok {
                return Err(ctx.err(
                    "revocation.redis_cluster",
                    format!(
                        "{:?}: every seed must be redis://, or every seed rediss://",
                        shown(seed)
                    ),
                ));
            }
        }
        RedisTarget::Cluster {
            seeds: r.redis_cluster.clone(),
        }
    } else if store == StoreKind::Redis {
        redis_target(&r.redis_url).map_err(|m| {
            ctx.err(
                "revocation.redis_url",
                format!("{:?}: {m}", shown(&r.redis_url)),
            )
        })?
    } else {
        RedisTarget::Single
    };
    if store != StoreKind::Redis && !r.redis_cluster.is_empty() {
        return Err(ctx.err("revocation.redis_cluster", "needs store = \"redis\""));
    }
    let tls = match &target {
        RedisTarget::Single => r.redis_url.starts_with("rediss://"),
        RedisTarget::Sentinel { tls, .. } => *tls,
        RedisTarget::Cluster { seeds } => seeds[0].starts_with("rediss://"),
    };
    let password = |key: &str, var: &Option<String>| -> Result<Option<Password>, ConfigError> {
        match var {
            None => Ok(None),
            Some(v) => std::env::var(v)
                .map(|p| Some(Password(p)))
                .map_err(|_| ctx.err(key, format!("environment variable {v} is not set"))),
        }
    };
    let redis_password = password("revocation.redis_password_env", &r.redis_password_env)?;
    let sentinel_password = password("revocation.sentinel_password_env", &r.sentinel_password_env)?;
    if sentinel_password.is_some() && !matches!(target, RedisTarget::Sentinel { .. }) {
        return Err(ctx.err(
            "revocation.sentinel_password_env",
            "only applies to a Sentinel redis_url (redis+sentinel:// or rediss+sentinel://)",
        ));
    }
    for (key, v) in [
        ("revocation.timeout_ms", r.timeout_ms),
        ("revocation.cache_capacity", r.cache_capacity),
        ("revocation.pool_size", r.pool_size as u64),
    ] {
        if v == 0 {
            return Err(ctx.err(key, "must be greater than 0"));
        }
    }
    let on_error = match r.on_error.as_str() {
        "deny" => OnError::Deny,
        "allow" => OnError::Allow,
        other => {
            return Err(ctx.err(
                "revocation.on_error",
                format!("{other:?} is not \"deny\" or \"allow\""),
            ))
        }
    };
    let redis_ca = match &r.redis_ca {
        None => None,
        Some(_) if !tls => {
            return Err(ctx.err(
                "revocation.redis_ca",
                "only applies to a TLS redis_url (rediss:// or rediss+sentinel://)",
            ))
        }
        Some(path) => {
            let pem = ctx.read("revocation.redis_ca", path)?;
            parse_certs(ctx, "revocation.redis_ca", &pem)?;
            Some(Arc::new(pem))
        }
    };
    Ok(Revocation {
        store,
        redis_url: r.redis_url.clone(),
        key_prefix: r.key_prefix.clone(),
        cache_ttl: Duration::from_millis(r.cache_ttl_ms),
        cache_capacity: r.cache_capacity,
        timeout: Duration::from_millis(r.timeout_ms),
        on_error,
        subject_ttl: Duration::from_secs(r.subject_ttl_s),
        pool_size: r.pool_size,
        connect_timeout: Duration::from_millis(r.connect_timeout_ms.max(1)),
        redis_ca,
        target,
        redis_password,
        sentinel_password,
        min_replicas: r.min_replicas,
        min_replicas_timeout: Duration::from_millis(r.min_replicas_timeout_ms.max(1)),
    })
}

/// Default Sentinel port, for a host given without one.
const SENTINEL_PORT: u16 = 26379;

/// `redis://`/`rediss://` (one server, parsed by the redis crate when the client is built), or
/// `redis+sentinel://h1[:port],h2[:port]/<master>[/<db>]` (`rediss+sentinel://` for TLS).
/// Credentials never sit in a Sentinel URL: they come from `*_password_env`.
fn redis_target(url: &str) -> Result<RedisTarget, String> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(RedisTarget::Single);
    }
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
        (true, r)
    } else {
        return Err(
            "must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://".into(),
        );
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("a Sentinel URL needs the master name: redis+sentinel://host:26379/<master>/<db>")?;
    if hosts.contains('@') {
        return Err("put no credentials in a Sentinel URL; use redis_password_env and sentinel_password_env".into());
    }
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{h:?} is not host:port"))?,
            ),
            _ => (h, SENTINEL_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{h:?} is not host:port"));
        }
        sentinels.push((host.to_string(), port));
    }
    let mut parts = path.trim_end_matches('/').splitn(2, '/');
    let master = parts.next().unwrap_or_default().to_string();
    if master.is_empty() {
        return Err(
            "a Sentinel URL needs the master name: redis+sentinel://host:26379/<master>/<db>"
                .into(),
        );
    }
    let db = match parts.next() {
        None => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| format!("{d:?} is not a database number"))?,
    };
    Ok(RedisTarget::Sentinel {
        tls,
        sentinels,
        master,
        db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        assert_eq!(
            redis_target("redis+sentinel://h1:26380,h2,[::1]:5/mymaster/3").unwrap(),
            RedisTarget::Sentinel {
                tls: false,
                sentinels: vec![
                    ("h1".into(), 26380),
                    ("h2".into(), 26379),
                    ("::1".into(), 5)
                ],
                master: "mymaster".into(),
                db: 3
            }
        );
        assert!(matches!(
            redis_target("rediss+sentinel://h1/m").unwrap(),
            RedisTarget::Sentinel {
                tls: true,
                db: 0,
                ..
            }
        ));
        assert_eq!(redis_target("redis://x:1/0").unwrap(), RedisTarget::Single);
        for bad in [
            "http://x",
            "redis+sentinel://h1:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel://h1:x/m",
            "redis+sentinel://:pw@h1/m",
            "redis+sentinel://h1/m/-1",
            "redis+sentinel://,h1/m",
        ] {
            assert!(redis_target(bad).is_err(), "{bad}");
        }
    }
}
