//! Gateway-signed identity assertions (`identity.assertion_*`, set in step 6): a short-lived
//! ES256 JWT, minted by the gateway for each verified token and route, that an upstream can
//! verify against the public key the admin listener serves at `/.well-known/jwks.json`.
//! Plain identity headers prove nothing to an upstream reachable by other paths; this does.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use crate::clock::now_unix;
pub use crate::config::keys::AssertionConfig;
use crate::identity::auth::Verified;

/// The `iss` of every assertion.
pub const ISSUER: &str = "jwtgate";

/// Assertions kept per replica (one per token and route).
const CAPACITY: u64 = 100_000;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'static str,
    /// The route the request was forwarded on: an upstream can refuse assertions meant
    /// for another service.
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
    /// The access token's issuer and id, for audit trails.
    token_iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_jti: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Mints assertions and reuses each for half its lifetime, so signing (tens of
/// microseconds) happens once per token and route per `ttl / 2`, not per request.
pub struct Minter {
    cfg: AssertionConfig,
    /// (assertion, reuse until): reused for the first half of its own lifetime.
    minted: moka::sync::Cache<([u8; 32], usize), (HeaderValue, i64)>,
}

impl Minter {
    pub fn new(cfg: &AssertionConfig) -> Minter {
        let reuse = (cfg.ttl / 2).max(Duration::from_secs(1));
        Minter {
            cfg: cfg.clone(),
            minted: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(reuse)
                .build(),
        }
    }

    pub fn header(&self) -> &HeaderName {
        &self.cfg.header
    }

    /// The assertion for `v` on the route (`route`: its index, `aud`: its name). `None`
    /// only if signing failed (logged); the request then goes on without one.
    pub fn assertion(
        &self,
        v: &Verified,
        token_iss: &str,
        route: usize,
        aud: &str,
    ) -> Option<HeaderValue> {
        let now = now_unix();
        if let Some((h, until)) = self.minted.get(&(v.key, route)) {
            if now < until {
                return Some(h);
            }
        }
        // Never outlives the access token it vouches for (as the gateway accepts it: until
        // `exp` plus the issuer's leeway).
        let exp = (now + self.cfg.ttl.as_secs() as i64)
            .min(v.exp + v.leeway)
            .max(now);
        let claims = Claims {
            iss: ISSUER,
            aud,
            sub: &v.sub,
            iat: now,
            exp,
            jti: crate::ids::random_id(),
            token_iss,
            token_jti: v.jti.as_deref(),
            scope: (!v.scopes.is_empty()).then(|| v.scopes.join(" ")),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.cfg.key.kid.clone());
        let signed = jsonwebtoken::encode(&header, &claims, &self.cfg.key.key)
            .map_err(|e| tracing::error!(error = %e, "cannot sign an identity assertion"))
            .ok()?;
        let mut value = HeaderValue::try_from(signed).ok()?;
        // Unique per token: keep it out of h2 upstream header tables.
        value.set_sensitive(true);
        // Handed out while at least half of its lifetime is left.
        let until = now + (exp - now) / 2;
        if until > now {
            self.minted.insert((v.key, route), (value.clone(), until));
        }
        Some(value)
    }
}
