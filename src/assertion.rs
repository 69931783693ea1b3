//! Gateway-signed identity assertions (`identity.assertion_*`, set in step 6): a short-lived
//! ES256 JWT, minted by the gateway for each verified token and route, that an upstream can
//! verify against the public key the admin listener serves at `/.well-known/jwks.json`.
//! Plain identity headers prove nothing to an upstream reachable by other paths; this does.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::auth::Verified;
use crate::clock::now_unix;

/// The `iss` of every assertion.
pub const ISSUER: &str = "jwtgate";

/// Assertions kept per replica (one per token and route).
const CAPACITY: u64 = 100_000;

/// The assertion signing key: a P-256 private key, its key id (RFC 7638 thumbprint) and the
/// JWKS that publishes its public half.
pub struct AssertionKey {
    key: EncodingKey,
    kid: String,
    jwks: String,
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("AssertionKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    /// From a PEM private key (PKCS#8 or SEC1 `EC PRIVATE KEY`) on P-256. The error says
    /// what is wrong without quoting the file.
    pub fn from_pem(pem: &[u8]) -> Result<AssertionKey, String> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key: {e}"))?;
        let pair =
            EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der())
                .map_err(|_| "not an EC private key on P-256 (ES256)".to_string())?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| "cannot encode the key as PKCS#8".to_string())?;
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .map_err(|e| format!("cannot derive the public key: {e}"))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute the key id: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        Ok(AssertionKey { key, kid, jwks })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"keys": [<the public key>]}`, for the admin listener.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }
}

/// `[identity]`'s assertion settings, validated.
#[derive(Debug, Clone)]
pub struct AssertionConfig {
    pub header: HeaderName,
    pub key: Arc<AssertionKey>,
    pub ttl: Duration,
}

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
