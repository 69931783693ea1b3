//! `jwtgate token`: mint a signed JWT for testing and demos.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

/// Where the signing key comes from.
pub enum SigningKey {
    /// A PEM private key (RSA, EC, Ed25519).
    Pem(Vec<u8>),
    /// An HMAC secret (exact bytes).
    Secret(Vec<u8>),
}

/// What to put in the token.
pub struct Mint {
    pub alg: Algorithm,
    pub key: SigningKey,
    pub sub: String,
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub aud: Option<String>,
    pub scope: Option<String>,
    pub ttl: Duration,
    /// Extra claims; a value that parses as JSON is used as JSON, otherwise as a string.
    pub claims: Vec<(String, String)>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the key does not fit {alg:?}: {source}")]
    Key {
        alg: Algorithm,
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// Sign the token described by `m`.
pub fn mint(m: &Mint) -> Result<String, MintError> {
    use jsonwebtoken::AlgorithmFamily as F;
    let key = match (&m.key, m.alg.family()) {
        (SigningKey::Secret(s), _) => Ok(EncodingKey::from_secret(s)),
        (SigningKey::Pem(p), F::Rsa) => EncodingKey::from_rsa_pem(p),
        (SigningKey::Pem(p), F::Ec) => EncodingKey::from_ec_pem(p),
        (SigningKey::Pem(p), F::Ed) => EncodingKey::from_ed_pem(p),
        (SigningKey::Pem(p), F::Hmac) => Ok(EncodingKey::from_secret(p)),
    }
    .map_err(|source| MintError::Key { alg: m.alg, source })?;
    let now = crate::identity::auth::now_unix();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(m.sub.clone()));
    if let Some(iss) = &m.iss {
        claims.insert("iss".into(), Value::from(iss.clone()));
    }
    if let Some(aud) = &m.aud {
        claims.insert("aud".into(), Value::from(aud.clone()));
    }
    if let Some(scope) = &m.scope {
        claims.insert("scope".into(), Value::from(scope.clone()));
    }
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + m.ttl.as_secs() as i64));
    claims.insert("jti".into(), Value::from(random_id()));
    for (k, v) in &m.claims {
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::from(v.clone()));
        claims.insert(k.clone(), value);
    }
    let mut header = Header::new(m.alg);
    header.kid = m.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(MintError::Sign)
}

pub use crate::ids::random_id;
