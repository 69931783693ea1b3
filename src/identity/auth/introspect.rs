//! RFC 7662 token introspection for opaque (non-JWT) access tokens on the issuer with
//! `introspection = true`. An `active` answer becomes a `Verified` like a JWT's, so
//! identity headers, scopes, rules, revocation and leak detection treat both alike.
//!
//! Answers are cached by SHA-256 of the token (never the token): an active one until the
//! earlier of its `exp` and `introspection_cache_s`, an inactive one for `NEGATIVE_TTL`.
//! Concurrent requests with one token share one call (moka's `try_get_with`), and calls
//! for tokens not in the cache pass one replica-wide token bucket, so a flood of made-up
//! tokens costs the IdP at most `introspection_rate` calls a second and the gateway at most
//! `MAX_ENTRIES` cache entries. The token is never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};

use super::{now_unix, UntilExp, Verified, Verifier};
use crate::config::{Introspection, OnError};
use crate::error::{GatewayError, TokenError};
use crate::identity::jwks::IssuerKeys;
use crate::net::Client;

/// How long an inactive answer is kept.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Bound on cached answers (active and inactive), and on stale active ones.
const MAX_ENTRIES: u64 = 100_000;
/// Longest wait for the introspection endpoint.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A cached answer.
#[derive(Clone)]
enum Answer {
    Active(Arc<Verified>),
    Inactive,
}

/// Why no answer could be had (not cached).
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("introspection rate limit reached")]
    Limited,
    #[error("{0}")]
    Down(String),
    #[error("{0}")]
    Refused(TokenError),
}

/// Cache expiry: active until min(exp + leeway, cache_s), inactive for `NEGATIVE_TTL`.
struct AnswerExpiry {
    cache: Duration,
}

impl moka::Expiry<[u8; 32], Answer> for AnswerExpiry {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Answer, _now: Instant) -> Option<Duration> {
        Some(match v {
            Answer::Inactive => NEGATIVE_TTL,
            Answer::Active(v) => {
                let left = (v.exp + v.leeway - now_unix()).max(0) as u64;
                self.cache.min(Duration::from_secs(left))
            }
        })
    }
}

/// The introspecting issuer's client, cache and budget.
pub struct Introspector {
    /// Index of the issuer in the verifier.
    issuer: usize,
    keys: Arc<IssuerKeys>,
    cfg: Introspection,
    on_error: OnError,
    http: Client,
    answers: moka::future::Cache<[u8; 32], Answer>,
    /// Active answers kept until `exp`: served when the IdP is down and `on_error = "allow"`.
    stale: moka::sync::Cache<[u8; 32], Arc<Verified>>,
    budget: DefaultDirectRateLimiter,
    /// Calls made to the introspection endpoint.
    pub calls: Counter,
}

impl Introspector {
    pub fn new(issuer: usize, keys: Arc<IssuerKeys>, on_error: OnError) -> Option<Introspector> {
        let cfg = keys.config.introspection.clone()?;
        let per_s = std::num::NonZeroU32::new(cfg.rate.ceil().max(1.0) as u32)?;
        let burst = per_s.saturating_mul(std::num::NonZeroU32::new(2)?);
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / cfg.rate))?.allow_burst(burst);
        Some(Introspector {
            issuer,
            keys,
            on_error,
            http: Client::new(8),
            answers: moka::future::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(AnswerExpiry { cache: cfg.cache })
                .build(),
            stale: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(UntilExp)
                .build(),
            budget: RateLimiter::direct(quota),
            cfg,
            calls: Counter::default(),
        })
    }

    /// The claims of an opaque token, through the cache: 401 `invalid token` when the IdP
    /// says it is not active; 503 when no answer can be had (IdP down under
    /// `on_error = "deny"`, or the call budget spent) unless `on_error = "allow"` and the
    /// token was seen active before and has not expired.
    pub async fn introspect(
        &self,
        verifier: &Verifier,
        token: &str,
    ) -> Result<Arc<Verified>, GatewayError> {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(d.as_ref());
        let out = self
            .answers
            .try_get_with(key, self.ask(verifier, token, key))
            .await;
        match out {
            Ok(Answer::Active(v)) => Ok(v),
            Ok(Answer::Inactive) => Err(TokenError::Inactive.into()),
            Err(e) => match &*e {
                Unanswered::Refused(t) => Err(t.clone().into()),
                Unanswered::Limited | Unanswered::Down(_) => {
                    if let Unanswered::Down(why) = &*e {
                        tracing::warn!(issuer = %self.keys.config.name, error = %why, "token introspection failed");
                    }
                    match (self.on_error, self.stale.get(&key)) {
                        (OnError::Allow, Some(v)) => Ok(v),
                        _ => Err(GatewayError::IdpUnavailable),
                    }
                }
            },
        }
    }

    async fn ask(
        &self,
        verifier: &Verifier,
        token: &str,
        key: [u8; 32],
    ) -> Result<Answer, Unanswered> {
        if self.budget.check().is_err() {
            return Err(Unanswered::Limited);
        }
        let discovered = || self.keys.discovery()?.endpoints()?.introspection.clone();
        let Some(url) = self.cfg.endpoint.clone().or_else(discovered) else {
            return Err(Unanswered::Down(
                "introspection endpoint not discovered yet".into(),
            ));
        };
        self.calls.inc();
        let form = [("token", token), ("token_type_hint", "access_token")];
        let (status, body) =
            crate::identity::refresh::post_form(&self.http, &self.cfg.client, &url, &form, TIMEOUT)
                .await
                .map_err(|e| Unanswered::Down(e.to_string()))?;
        if status != http::StatusCode::OK {
            return Err(Unanswered::Down(format!(
                "introspection endpoint answered {status}"
            )));
        }
        let Ok(Value::Object(mut claims)) = serde_json::from_slice::<Value>(&body) else {
            return Err(Unanswered::Down(
                "introspection answer is not a JSON object".into(),
            ));
        };
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Ok(Answer::Inactive);
        }
        let v = self
            .to_verified(verifier, key, &mut claims)
            .map_err(Unanswered::Refused)?;
        let v = Arc::new(v);
        self.stale.insert(key, v.clone());
        Ok(Answer::Active(v))
    }

    /// RFC 7662 §2.2 member names are JWT claim names: fill what a JWT must have (`iss`
    /// the issuer's, `sub` from `client_id` for a client's own token, `exp` from the cache
    /// lifetime) and check the rest as a JWT's.
    fn to_verified(
        &self,
        verifier: &Verifier,
        key: [u8; 32],
        claims: &mut Map<String, Value>,
    ) -> Result<Verified, TokenError> {
        claims.remove("active");
        let iss = &self.keys.config.issuer;
        match claims.get("iss") {
            None => {
                claims.insert("iss".into(), Value::String(iss.clone()));
            }
            Some(Value::String(s)) if s == iss => {}
            Some(_) => return Err(TokenError::IssuerMismatch),
        }
        if !claims.contains_key("sub") {
            if let Some(c) = claims.get("client_id").cloned() {
                claims.insert("sub".into(), c);
            }
        }
        if !claims.contains_key("exp") {
            let exp = now_unix() + self.cfg.cache.as_secs() as i64;
            claims.insert("exp".into(), Value::from(exp));
        }
        let p64 = URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string());
        let generation = self.keys.generation();
        verifier.check_static_claims(key, self.issuer, generation, &p64, claims)
    }
}
