//! Secrets and URLs from the environment: `${VAR}` in every value the gateway dials (which
//! may carry a password: `redis_url`, `redis_cluster` seeds, issuers' `jwks_url` and
//! `introspection_endpoint`, `[signals] jwks_url`, the `[refresh]` endpoints, upstreams),
//! and `revocation.redis_url_env`. Expanded on every load, so a reload re-reads the real file
//! and the environment; `GET /config` shows the file as written, never the values.

use super::Ctx;
use crate::config::file::{FileConfig, FileRevocation};
use crate::config::ConfigError;

/// `${NAME}` in `value` replaced by the variable's value; `key` names the setting in errors.
/// A `$` not followed by `{` is kept as is.
pub(super) fn expand(ctx: &Ctx, key: &str, value: &str) -> Result<String, ConfigError> {
    expand_with(value, |name| std::env::var(name).ok()).map_err(|m| ctx.err(key, m))
}

fn expand_with(value: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err("`${` without a closing `}`".into());
        };
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`${{{name}}}` must name an environment variable (letters, digits, `_`)"
            ));
        }
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "the environment variable {name} (from `${{{name}}}`) is not set"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of the variable `*_env` names at `key`.
fn from_env(ctx: &Ctx, key: &str, var: &str) -> Result<String, ConfigError> {
    if var.is_empty() {
        return Err(ctx.err(key, "must name an environment variable"));
    }
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ctx.err(key, format!("the environment variable {var} is not set")))
}

/// Expand every URL the file may take from the environment, in place.
pub(super) fn expand_urls(ctx: &Ctx, raw: &mut FileConfig) -> Result<(), ConfigError> {
    let r = &mut raw.revocation;
    if let Some(var) = &r.redis_url_env {
        if r.redis_url != FileRevocation::default().redis_url {
            return Err(ctx.err(
                "revocation.redis_url_env",
                "set either redis_url or redis_url_env, not both",
            ));
        }
        r.redis_url = from_env(ctx, "revocation.redis_url_env", var)?;
    } else {
        r.redis_url = expand(ctx, "revocation.redis_url", &r.redis_url)?;
    }
    for (i, seed) in r.redis_cluster.iter_mut().enumerate() {
        *seed = expand(ctx, &format!("revocation.redis_cluster[{i}]"), seed)?;
    }
    for (i, fi) in raw.issuers.iter_mut().enumerate() {
        if let Some(u) = &mut fi.jwks_url {
            *u = expand(ctx, &format!("issuers[{i}].jwks_url"), u)?;
        }
        if let Some(u) = &mut fi.introspection_endpoint {
            *u = expand(ctx, &format!("issuers[{i}].introspection_endpoint"), u)?;
        }
    }
    if let Some(u) = raw.signals.as_mut().and_then(|s| s.jwks_url.as_mut()) {
        *u = expand(ctx, "signals.jwks_url", u)?;
    }
    if let Some(f) = &mut raw.refresh {
        if let Some(u) = &mut f.token_endpoint {
            *u = expand(ctx, "refresh.token_endpoint", u)?;
        }
        if let Some(u) = &mut f.revocation_endpoint {
            *u = expand(ctx, "refresh.revocation_endpoint", u)?;
        }
    }
    for (i, fr) in raw.routes.iter_mut().enumerate() {
        for (j, u) in fr.upstreams.iter_mut().enumerate() {
            *u = expand(ctx, &format!("routes[{i}].upstreams[{j}]"), u)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PASS" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_names_what_is_missing() {
        assert_eq!(
            expand_with("redis://:${PASS}@h:6379/0", env).unwrap(),
            "redis://:s3cret@h:6379/0"
        );
        assert_eq!(expand_with("${PASS}${EMPTY}$x$", env).unwrap(), "s3cret$x$");
        assert_eq!(expand_with("plain", env).unwrap(), "plain");
        for (v, needle) in [
            ("${MISSING}", "MISSING (from `${MISSING}`) is not set"),
            ("${PASS", "without a closing"),
            ("${1X}", "must name an environment variable"),
            ("${}", "must name an environment variable"),
            ("${A-B}", "must name an environment variable"),
        ] {
            let e = expand_with(v, env).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }
}
