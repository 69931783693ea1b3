//! Revocation driven by the identity provider: the OIDC Back-Channel Logout endpoints
//! (`[login] backchannel_logout_path`, an issuer's `backchannel_logout_path`) and
//! `[signals]` (the Shared Signals push receiver).

use super::file::{FileIssuer, FileSignals};
use super::identity::validate_issuer;
use super::{Backchannel, Ctx, IssuerConfig, SignalKeys, Signals};
use crate::config::login::Login;
use crate::config::ConfigError;

/// A path the gateway answers itself: normalised, starting with '/'.
fn own_path(ctx: &Ctx, key: &str, p: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/')
        || p.contains(['?', '#'])
        || crate::path::normalize(p).ok().as_deref() != Some(p)
    {
        return Err(ctx.err(
            key,
            "must be a normalised path starting with '/' (no query, '//', '.' or '..' segments, escapes)",
        ));
    }
    Ok(p.to_string())
}

pub(super) fn validate_backchannel(
    ctx: &Ctx,
    raw: &[FileIssuer],
    issuers: &[IssuerConfig],
    login: Option<&Login>,
) -> Result<Vec<Backchannel>, ConfigError> {
    let mut out = Vec::new();
    if let Some(l) = login {
        if let Some(p) = &l.backchannel_logout_path {
            out.push(Backchannel {
                path: own_path(ctx, "login.backchannel_logout_path", p)?,
                issuer: l.issuer,
                audience: l.client.client_id.clone(),
            });
        }
    }
    for (i, fi) in raw.iter().enumerate() {
        let key = format!("issuers[{i}]");
        let Some(p) = &fi.backchannel_logout_path else {
            if fi.backchannel_audience.is_some() {
                return Err(ctx.err(
                    format!("{key}.backchannel_audience"),
                    "only means something with backchannel_logout_path",
                ));
            }
            continue;
        };
        let path = own_path(ctx, &format!("{key}.backchannel_logout_path"), p)?;
        let audience = match (&fi.backchannel_audience, issuers[i].audiences.as_slice()) {
            (Some(a), _) if !a.is_empty() => a.clone(),
            (Some(_), _) => {
                return Err(ctx.err(
                    format!("{key}.backchannel_audience"),
                    "must not be empty",
                ))
            }
            (None, [only]) => only.clone(),
            (None, _) => {
                return Err(ctx.err(
                    format!("{key}.backchannel_audience"),
                    "is required with backchannel_logout_path when `audiences` does not hold exactly one value: the client_id the identity provider puts in the logout token's `aud`",
                ))
            }
        };
        if out.iter().any(|b| b.path == path) {
            return Err(ctx.err(
                format!("{key}.backchannel_logout_path"),
                format!("{path:?} is already a back-channel logout path"),
            ));
        }
        out.push(Backchannel {
            path,
            issuer: i,
            audience,
        });
    }
    Ok(out)
}

pub(super) fn validate_signals(
    ctx: &Ctx,
    s: &FileSignals,
    issuers: &[IssuerConfig],
) -> Result<Signals, ConfigError> {
    let path = own_path(ctx, "signals.path", &s.path)?;
    if s.issuer.is_empty() {
        return Err(ctx.err("signals.issuer", "must not be empty"));
    }
    if s.audience.is_empty() {
        return Err(ctx.err("signals.audience", "must not be empty"));
    }
    if s.max_age_s == 0 {
        return Err(ctx.err("signals.max_age_s", "must be at least 1"));
    }
    let keys = match &s.jwks_url {
        Some(url) => {
            let fi = FileIssuer {
                name: "[signals]".into(),
                issuer: s.issuer.clone(),
                audiences: vec![s.audience.clone()],
                algorithms: s.algorithms.clone(),
                leeway_s: s.leeway_s,
                jwks_url: Some(url.clone()),
                keys: None,
                discovery: false,
                backchannel_logout_path: None,
                backchannel_audience: None,
                introspection: false,
                introspection_endpoint: None,
                client_id: None,
                client_secret_env: None,
                introspection_cache_s: crate::config::file::default_introspection_cache(),
                introspection_rate: crate::config::file::default_introspection_rate(),
            };
            SignalKeys::Own(Box::new(validate_issuer(ctx, "signals", &fi)?))
        }
        None => {
            if s.algorithms.is_some() {
                return Err(ctx.err(
                    "signals.algorithms",
                    "only with jwks_url (otherwise the [[issuers]] entry's algorithms apply)",
                ));
            }
            let i = issuers
                .iter()
                .position(|i| i.issuer == s.issuer)
                .ok_or_else(|| {
                    ctx.err(
                        "signals",
                        format!(
                            "needs jwks_url, or an [[issuers]] entry with issuer = {:?} whose keys verify the events",
                            s.issuer
                        ),
                    )
                })?;
            SignalKeys::Issuer(i)
        }
    };
    Ok(Signals {
        path,
        issuer: s.issuer.clone(),
        audience: s.audience.clone(),
        keys,
        leeway_s: s.leeway_s,
        max_age_s: s.max_age_s,
    })
}
