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
    #[error("--key: {0}")]
    Unreadable(String),
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
    let key = encoding_key(m)?;
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

/// The signing key for `m.alg`. A PEM key is read with rustls-pki-types (it skips other
/// blocks, such as the `EC PARAMETERS` that `openssl ecparam -genkey` writes first) and
/// must be the kind the algorithm needs; an EC key may be PKCS#8 or SEC1 (`BEGIN EC
/// PRIVATE KEY`).
fn encoding_key(m: &Mint) -> Result<EncodingKey, MintError> {
    use jsonwebtoken::AlgorithmFamily as F;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let pem = match (&m.key, m.alg.family()) {
        (SigningKey::Secret(s), _) | (SigningKey::Pem(s), F::Hmac) => {
            return Ok(EncodingKey::from_secret(s))
        }
        (SigningKey::Pem(p), _) => p,
    };
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        MintError::Unreadable(format!(
            "no PEM private key found (PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\"; a public key or certificate cannot sign): {e}"
        ))
    })?;
    // Checked with aws-lc-rs first: jsonwebtoken would accept a key of the wrong kind and
    // fail only when signing, with a vaguer message.
    let misfit = |e: &dyn std::fmt::Display| {
        MintError::Unreadable(format!(
            "{} which cannot sign {:?}: {e}",
            match &key {
                PrivateKeyDer::Pkcs1(_) => "an RSA key (PKCS#1),",
                PrivateKeyDer::Sec1(_) => "an EC key (SEC1),",
                _ => "a PKCS#8 key",
            },
            m.alg
        ))
    };
    let der = key.secret_der();
    match (m.alg.family(), &key) {
        (F::Rsa, PrivateKeyDer::Pkcs1(k)) => {
            aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der()).map_err(|e| misfit(&e))?;
            Ok(EncodingKey::from_rsa_der(k.secret_pkcs1_der()))
        }
        (F::Rsa, PrivateKeyDer::Pkcs8(_)) => {
            aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(|e| misfit(&e))?;
            EncodingKey::from_rsa_pem(pem).map_err(|source| MintError::Key { alg: m.alg, source })
        }
        (F::Ed, PrivateKeyDer::Pkcs8(_)) => {
            aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|e| misfit(&e))?;
            EncodingKey::from_ed_pem(pem).map_err(|source| MintError::Key { alg: m.alg, source })
        }
        (F::Ec, PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Sec1(_)) => {
            // jsonwebtoken signs with PKCS#8: a SEC1 key is re-wrapped; aws-lc-rs checks the
            // key is on the curve the algorithm names.
            let curve = match m.alg {
                Algorithm::ES384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            };
            let pair = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(curve, der)
                .map_err(|e| misfit(&format!("{e} (wrong curve or not an EC key?)")))?;
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|e| MintError::Unreadable(format!("cannot re-encode the EC key: {e}")))?;
            Ok(EncodingKey::from_ec_der(pkcs8.as_ref()))
        }
        (F::Hmac, _) => Ok(EncodingKey::from_secret(pem)),
        (_, _) => Err(misfit(&"wrong key type")),
    }
}

pub use crate::ids::random_id;
