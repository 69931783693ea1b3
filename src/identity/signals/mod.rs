//! Revocation driven by the identity provider: OIDC Back-Channel Logout 1.0 logout tokens
//! (`backchannel.rs`) and Shared Signals (SSF 1.0) push deliveries of CAEP/RISC Security
//! Event Tokens (`events.rs`). Both are verified with the issuer's keys (the JWKS
//! machinery of `jwks.rs`, never chosen by the token's `alg`), de-duplicated by `jti`
//! through the revocation store's replay cache (shared by every replica with Redis), and
//! applied as session (`sid`) or subject revocations, which every replica's cache hears.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Map, Value};

use crate::clock::now_unix;
use crate::config::{Backchannel, Config, SignalKeys, Signals};
use crate::error::TokenError;
use crate::identity::jwks::IssuerKeys;
use crate::identity::revocation::{Revocations, Scoped, StoreError};

pub mod backchannel;
pub mod events;

/// Which of the receiver's endpoints a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `Config::backchannel[i]`.
    Backchannel(usize),
    /// `[signals] path`.
    Signals,
}

impl Endpoint {
    /// For the access log.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Backchannel(_) => "backchannel_logout",
            Endpoint::Signals => "signals",
        }
    }
}

/// Why a logout token or a SET was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Not parseable, or not what the specification asks (RFC 8935 `invalid_request`).
    #[error("{0}")]
    Invalid(&'static str),
    /// The signature or key (RFC 8935 `invalid_key`).
    #[error("{0}")]
    Key(TokenError),
    /// `iss` is not the configured issuer (`invalid_issuer`).
    #[error("the issuer is not the one configured")]
    Issuer,
    /// `aud` does not name the gateway (`invalid_audience`).
    #[error("the audience does not name this receiver")]
    Audience,
    /// The `jti` was seen before.
    #[error("jti already seen (replayed)")]
    Replayed,
    /// The revocation store could not record it (nothing applied; may be retried).
    #[error("revocation store unavailable: {0}")]
    Unavailable(StoreError),
}

impl SignalError {
    /// The RFC 8935 error code (push delivery) for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SignalError::Invalid(_) | SignalError::Replayed => "invalid_request",
            SignalError::Key(_) => "invalid_key",
            SignalError::Issuer => "invalid_issuer",
            SignalError::Audience => "invalid_audience",
            SignalError::Unavailable(_) => "temporarily_unavailable",
        }
    }

    /// A label for the metrics.
    fn outcome(&self) -> &'static str {
        match self {
            SignalError::Replayed => "replayed",
            SignalError::Unavailable(_) => "failed",
            _ => "rejected",
        }
    }
}

/// What one revocation targets, at one `[[issuers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every token whose `sid` claim is this session.
    Session(Scoped),
    /// Every token of the subject issued at or before `at`.
    Subject(Scoped, i64),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Session(_) => "session",
            Target::Subject(..) => "subject",
        }
    }
}

/// The receiver: the back-channel logout endpoints and the signals endpoint, their keys,
/// and the counter `jwtgate_idp_signals_total{event, outcome}`.
pub struct Receiver {
    backchannel: Vec<(Backchannel, Arc<IssuerKeys>)>,
    signals: Option<(Signals, Arc<IssuerKeys>, bool)>,
    /// Every `[[issuers]]` entry as (`issuer` URL, name): a SET's subject names its
    /// issuer by URL; revocations are scoped by name.
    names: Vec<(String, String)>,
    revocations: Arc<Revocations>,
    pub counts: Family<Vec<(&'static str, String)>, Counter>,
}

impl Receiver {
    /// `None` when neither back-channel logout nor `[signals]` is configured.
    pub fn new(
        config: &Config,
        issuers: &[Arc<IssuerKeys>],
        revocations: Arc<Revocations>,
    ) -> Option<Receiver> {
        if config.backchannel.is_empty() && config.signals.is_none() {
            return None;
        }
        let backchannel = config
            .backchannel
            .iter()
            .map(|b| (b.clone(), issuers[b.issuer].clone()))
            .collect();
        let signals = config.signals.as_ref().map(|s| match &s.keys {
            SignalKeys::Issuer(i) => (s.clone(), issuers[*i].clone(), false),
            SignalKeys::Own(c) => (s.clone(), Arc::new(IssuerKeys::new((**c).clone())), true),
        });
        Some(Receiver {
            backchannel,
            signals,
            names: config
                .issuers
                .iter()
                .map(|i| (i.issuer.clone(), i.name.clone()))
                .collect(),
            revocations,
            counts: Family::default(),
        })
    }

    /// The endpoint `path` (normalised) belongs to.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        if let Some(i) = self.backchannel.iter().position(|(b, _)| b.path == path) {
            return Some(Endpoint::Backchannel(i));
        }
        match &self.signals {
            Some((s, _, _)) if s.path == path => Some(Endpoint::Signals),
            _ => None,
        }
    }

    /// `[signals] jwks_url`'s keys: fetched by a background task of their own.
    pub fn own_keys(&self) -> Option<&Arc<IssuerKeys>> {
        match &self.signals {
            Some((_, k, true)) => Some(k),
            _ => None,
        }
    }

    fn count(&self, event: &str, outcome: &str) {
        self.counts
            .get_or_create(&vec![
                ("event", event.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// The `[[issuers]]` name of an issuer URL.
    fn name_of(&self, iss: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(u, _)| u == iss)
            .map(|(_, n)| n.as_str())
    }

    /// Record a verified message's `jti` (`key` is scoped by sender) until `until`.
    async fn first_sighting(&self, key: &str, until: i64) -> Result<(), SignalError> {
        match self.revocations.first_sighting(key, until).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SignalError::Replayed),
            Err(e) => Err(SignalError::Unavailable(e)),
        }
    }

    /// Revoke, log one line and count it.
    async fn apply(&self, event: &str, iss: &str, t: &Target) -> Result<(), StoreError> {
        let res = match t {
            Target::Session(sid) => self.revocations.revoke_sid(sid).await,
            Target::Subject(sub, at) => self.revocations.revoke_sub(sub, *at).await,
        };
        match &res {
            Ok(()) => {
                tracing::info!(
                    event,
                    subject = t.kind(),
                    iss,
                    "identity provider signal applied"
                );
                self.count(event, "applied");
            }
            Err(e) => {
                tracing::warn!(event, subject = t.kind(), iss, error = %e, "identity provider signal could not be applied");
                self.count(event, "failed");
            }
        }
        res
    }
}

// === claim checks shared by logout tokens and SETs ===

/// `typ`, when present, must be `want` (or `application/<want>`), compared ignoring case.
fn check_typ(typ: Option<&str>, want: &str) -> Result<(), SignalError> {
    match typ {
        None => Ok(()),
        Some(t) => {
            let t = t.to_ascii_lowercase();
            if t == want || t.strip_prefix("application/") == Some(want) {
                Ok(())
            } else {
                Err(SignalError::Invalid("unexpected typ header"))
            }
        }
    }
}

fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `iss` equals `issuer`, `aud` (a string or an array) contains `audience`.
fn check_iss_aud(
    claims: &Map<String, Value>,
    issuer: &str,
    audience: &str,
) -> Result<(), SignalError> {
    if string_claim(claims, "iss") != Some(issuer) {
        return Err(SignalError::Issuer);
    }
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SignalError::Audience)
    }
}

/// `iat` present, not later than `now + leeway` and not older than `max_age + leeway`;
/// `exp`, when present, not passed (with the leeway). Returns `iat`.
fn check_times(claims: &Map<String, Value>, leeway: i64, max_age: i64) -> Result<i64, SignalError> {
    let now = now_unix();
    let date = |name: &str| {
        claims
            .get(name)
            .map(|v| {
                v.as_i64()
                    .ok_or(SignalError::Invalid("a date is not an integer"))
            })
            .transpose()
    };
    let iat = date("iat")?.ok_or(SignalError::Invalid("iat is missing"))?;
    if iat > now.saturating_add(leeway) {
        return Err(SignalError::Invalid("iat is in the future"));
    }
    if now.saturating_sub(iat) > max_age.saturating_add(leeway) {
        return Err(SignalError::Invalid("iat is too old"));
    }
    if let Some(exp) = date("exp")? {
        if now > exp.saturating_add(leeway) {
            return Err(SignalError::Invalid("expired"));
        }
    }
    Ok(iat)
}

fn key_error(e: TokenError) -> SignalError {
    match e {
        TokenError::Malformed(m) => SignalError::Invalid(m),
        e => SignalError::Key(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_rules() {
        assert!(check_typ(None, "logout+jwt").is_ok());
        assert!(check_typ(Some("logout+jwt"), "logout+jwt").is_ok());
        assert!(check_typ(Some("application/Logout+JWT"), "logout+jwt").is_ok());
        assert!(check_typ(Some("JWT"), "logout+jwt").is_err());
        assert!(check_typ(Some("secevent+jwt"), "logout+jwt").is_err());
    }

    #[test]
    fn time_rules() {
        let now = now_unix();
        let c = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            check_times(&c(serde_json::json!({"iat": now})), 30, 0).unwrap(),
            now
        );
        assert!(check_times(&c(serde_json::json!({})), 30, 0).is_err());
        assert!(check_times(&c(serde_json::json!({"iat": now - 31})), 30, 0).is_err());
        assert!(check_times(&c(serde_json::json!({"iat": now - 31})), 30, 5).is_ok());
        assert!(check_times(&c(serde_json::json!({"iat": now + 31})), 30, 0).is_err());
        assert!(check_times(&c(serde_json::json!({"iat": now, "exp": now - 31})), 30, 0).is_err());
        assert!(check_times(&c(serde_json::json!({"iat": "now"})), 30, 0).is_err());
    }

    #[test]
    fn iss_and_aud() {
        let c = serde_json::json!({"iss": "https://i", "aud": ["x", "gw"]});
        let c = c.as_object().unwrap();
        assert!(check_iss_aud(c, "https://i", "gw").is_ok());
        assert!(matches!(
            check_iss_aud(c, "https://j", "gw"),
            Err(SignalError::Issuer)
        ));
        assert!(matches!(
            check_iss_aud(c, "https://i", "other"),
            Err(SignalError::Audience)
        ));
    }
}
