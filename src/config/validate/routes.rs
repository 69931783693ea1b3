//! Checks for `[[routes]]`: path prefixes, hosts, upstreams, `rate_limit`, `cors`.

use std::time::Duration;

use http::Uri;

use super::*;
use crate::config::rules::{AllowMode, AllowRule, ClaimRequirement};

pub(super) fn validate_route(
    ctx: &Ctx,
    key: &str,
    r: &FileRoute,
    proxies: bool,
) -> Result<RouteConfig, ConfigError> {
    if r.name.is_empty() {
        return Err(ctx.err(format!("{key}.name"), "must not be empty"));
    }
    if !r.path_prefix.starts_with('/') {
        return Err(ctx.err(
            format!("{key}.path_prefix"),
            format!("{:?} must start with '/'", r.path_prefix),
        ));
    }
    if r.path_prefix.contains(['?', '#']) {
        return Err(ctx.err(format!("{key}.path_prefix"), "must not contain '?' or '#'"));
    }
    let path_prefix = normalize_prefix(&r.path_prefix);
    if crate::path::normalize(&path_prefix).ok().as_deref() != Some(path_prefix.as_str()) {
        return Err(ctx.err(
            format!("{key}.path_prefix"),
            format!(
                "{:?} is not a normalised path (no '//', '.' or '..' segments, escapes of unreserved characters, %2F or backslashes): request paths are normalised before routing, so it could never match",
                r.path_prefix
            ),
        ));
    }
    let host = match &r.host {
        None => None,
        Some(h) if h.is_empty() || h.contains(['/', ' ']) => {
            return Err(ctx.err(format!("{key}.host"), format!("{h:?} is not a host name")))
        }
        Some(h) => {
            let h = crate::path::host_without_port(h);
            Some(h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase())
        }
    };
    if r.upstreams.is_empty() && proxies {
        return Err(ctx.err(
            format!("{key}.upstreams"),
            "must list at least one upstream URL",
        ));
    }
    let mut upstreams = Vec::with_capacity(r.upstreams.len());
    for (j, u) in r.upstreams.iter().enumerate() {
        upstreams.push(parse_upstream(u).map_err(|m| ctx.err(format!("{key}.upstreams[{j}]"), m))?);
    }
    let auth = match r.auth.as_str() {
        "required" => AuthMode::Required,
        "optional" => AuthMode::Optional,
        "none" => AuthMode::None,
        other => {
            return Err(ctx.err(
                format!("{key}.auth"),
                format!("{other:?} is not \"required\", \"optional\" or \"none\""),
            ))
        }
    };
    if auth == AuthMode::None && !r.scopes.is_empty() {
        return Err(ctx.err(
            format!("{key}.scopes"),
            "scopes need an authenticating route (auth = \"required\")",
        ));
    }
    if r.login && auth != AuthMode::Required {
        return Err(ctx.err(
            format!("{key}.login"),
            "sign-in needs a route with auth = \"required\"",
        ));
    }
    let sender_constraint = match r.sender_constraint.as_str() {
        "off" => SenderConstraint::Off,
        "if_bound" => SenderConstraint::IfBound,
        "required" => SenderConstraint::Required,
        other => {
            return Err(ctx.err(
                format!("{key}.sender_constraint"),
                format!("{other:?} is not \"off\", \"if_bound\" or \"required\""),
            ))
        }
    };
    if sender_constraint != SenderConstraint::Off && auth == AuthMode::None {
        return Err(ctx.err(
            format!("{key}.sender_constraint"),
            "needs an authenticating route (auth = \"required\" or \"optional\")",
        ));
    }
    if r.timeout_ms == 0 {
        return Err(ctx.err(format!("{key}.timeout_ms"), "must be greater than 0"));
    }
    let rate_limit = r
        .rate_limit
        .as_ref()
        .map(|l| validate_rate_limit(l, auth))
        .transpose()
        .map_err(|(k, m)| ctx.err(format!("{key}.rate_limit.{k}"), m))?;
    let cors = r
        .cors
        .as_ref()
        .map(validate_cors)
        .transpose()
        .map_err(|(k, m)| ctx.err(format!("{key}.cors.{k}"), m))?;
    let (allow, require_claims) = validate_rules(ctx, key, r, auth)?;
    Ok(RouteConfig {
        name: r.name.as_str().into(),
        host,
        path_prefix,
        upstreams,
        strip_prefix: r.strip_prefix,
        auth,
        scopes: r.scopes.clone(),
        timeout: Duration::from_millis(r.timeout_ms),
        rate_limit,
        cors,
        login: r.login,
        sender_constraint,
        allow,
        require_claims,
    })
}

/// `allow`, `allow_mode` and `require_claims`: rules over a verified token, so only on a
/// route that authenticates.
fn validate_rules(
    ctx: &Ctx,
    key: &str,
    r: &FileRoute,
    auth: AuthMode,
) -> Result<(Option<AllowRule>, Vec<ClaimRequirement>), ConfigError> {
    let needs_auth = |k: &str| {
        ctx.err(
            format!("{key}.{k}"),
            "rules read a verified token: the route needs auth = \"required\"",
        )
    };
    let mode = match r.allow_mode.as_deref() {
        None | Some("enforce") => AllowMode::Enforce,
        Some("shadow") => AllowMode::Shadow,
        Some(other) => {
            return Err(ctx.err(
                format!("{key}.allow_mode"),
                format!("{other:?} is not \"enforce\" or \"shadow\""),
            ))
        }
    };
    let allow = match &r.allow {
        None if r.allow_mode.is_some() => {
            return Err(ctx.err(format!("{key}.allow_mode"), "needs an `allow` rule"))
        }
        None => None,
        Some(_) if auth != AuthMode::Required => return Err(needs_auth("allow")),
        Some(src) => {
            let mut rule = crate::config::rules::compile(src)
                .map_err(|m| ctx.err(format!("{key}.allow"), format!("route {:?}: {m}", r.name)))?;
            rule.mode = mode;
            Some(rule)
        }
    };
    let mut require = Vec::new();
    if let Some(map) = &r.require_claims {
        if auth != AuthMode::Required {
            return Err(needs_auth("require_claims"));
        }
        for (claim, v) in map {
            let values = match v {
                serde_json::Value::Array(a) if !a.is_empty() => a.clone(),
                serde_json::Value::Array(_) => Vec::new(),
                other => vec![other.clone()],
            };
            if values.is_empty()
                || !values.iter().all(|x| {
                    matches!(
                        x,
                        serde_json::Value::String(_)
                            | serde_json::Value::Number(_)
                            | serde_json::Value::Bool(_)
                    )
                })
            {
                return Err(ctx.err(
                    format!("{key}.require_claims.{claim}"),
                    "must be a string, number or boolean, or a non-empty list of them",
                ));
            }
            require.push(ClaimRequirement {
                claim: claim.clone(),
                values,
            });
        }
    }
    Ok((allow, require))
}

/// The range of `rps` a rate limit takes: at least one request in about 11 days, at most
/// a million a second (governor's clock has nanosecond resolution).
pub(super) const MIN_RPS: f64 = 0.000_001;
pub(super) const MAX_RPS: f64 = 1_000_000.0;

/// The longest `[anomaly] window_s` and `identity.assertion_ttl_s`.
pub(super) const MAX_WINDOW_S: u64 = 86_400;

pub(super) fn validate_rate_limit(
    l: &FileRateLimit,
    auth: AuthMode,
) -> Result<RateLimitConfig, (&'static str, String)> {
    let per = match l.per.as_str() {
        "sub" if auth == AuthMode::None => {
            return Err((
                "per",
                "\"sub\" needs an authenticating route (auth = \"required\" or \"optional\"); use \"ip\"".into(),
            ))
        }
        "sub" => LimitBy::Sub,
        "ip" => LimitBy::Ip,
        other => return Err(("per", format!("{other:?} is not \"sub\" or \"ip\""))),
    };
    if !(MIN_RPS..=MAX_RPS).contains(&l.rps) {
        return Err((
            "rps",
            format!("must be a number of requests per second from {MIN_RPS} to {MAX_RPS}"),
        ));
    }
    if l.burst == Some(0) {
        return Err(("burst", "must be at least 1".into()));
    }
    // Without `burst`, a key may spend one second's worth of requests at once.
    let burst = l.burst.unwrap_or(l.rps.ceil() as u32).max(1);
    Ok(RateLimitConfig {
        per,
        rps: l.rps,
        burst,
    })
}

pub(super) fn validate_cors(c: &FileCors) -> Result<CorsConfig, (&'static str, String)> {
    if c.origins.is_empty() {
        return Err(("origins", "must list at least one origin (or \"*\")".into()));
    }
    let any_origin = c.origins.iter().any(|o| o == "*");
    if any_origin && c.origins.len() > 1 {
        return Err(("origins", "\"*\" must be the only entry".into()));
    }
    if any_origin && c.credentials {
        return Err((
            "credentials",
            "browsers refuse credentials with origins = [\"*\"]; list the origins".into(),
        ));
    }
    let mut origins = Vec::new();
    if !any_origin {
        for o in &c.origins {
            origins.push(normalize_origin(o).ok_or_else(|| {
                (
                    "origins",
                    format!("{o:?} is not an origin (scheme://host[:port], no path)"),
                )
            })?);
        }
    }
    let mut methods = Vec::new();
    for m in &c.methods {
        let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic());
        match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(method) if valid => methods.push(method),
            _ => return Err(("methods", format!("{m:?} is not an HTTP method"))),
        }
    }
    let mut headers = Vec::new();
    for h in &c.headers {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => headers.push(name),
            Err(_) => return Err(("headers", format!("{h:?} is not a header name"))),
        }
    }
    Ok(CorsConfig {
        origins,
        any_origin,
        methods,
        headers,
        credentials: c.credentials,
        max_age_s: c.max_age_s,
    })
}

/// An origin as a browser serialises it: lower case, no default port, no trailing `/`.
/// `None` for anything that is not `http(s)://host[:port]`.
pub fn normalize_origin(o: &str) -> Option<String> {
    let o = o.trim().to_ascii_lowercase();
    let (scheme, rest) = o.split_once("://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' '])
    {
        return None;
    }
    let authority: http::uri::Authority = rest.parse().ok()?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    let host = authority.host();
    Some(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

pub(super) fn normalize_prefix(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Parse an upstream base URL (`http://host:port[/base]` or `https://...`).
pub fn parse_upstream(u: &str) -> Result<UpstreamUrl, String> {
    let uri: Uri = u.parse().map_err(|_| format!("{u:?} is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") | Some("https") => uri.scheme().cloned().ok_or("missing scheme")?,
        _ => return Err(format!("{u:?} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{u:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{u:?}: credentials in upstream URLs are not supported"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("{u:?}: an upstream URL cannot have a query"));
    }
    let origin = super::origin::Origin::from_uri(&uri).map_err(|e| format!("{u:?}: {e}"))?;
    Ok(UpstreamUrl {
        origin,
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_string(),
    })
}
