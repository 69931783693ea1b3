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

/// A client's DPoP key (RFC 9449): ES256 (P-256) or EdDSA (Ed25519), from a PKCS#8 PEM.
pub struct DpopKey {
    key: EncodingKey,
    alg: Algorithm,
    /// The public JWK that goes in each proof's header.
    pub jwk: Value,
}

impl DpopKey {
    /// Read a PKCS#8 PEM private key (P-256 or Ed25519).
    pub fn from_pem(pem: &str) -> Result<DpopKey, String> {
        let pair = rcgen::KeyPair::from_pem(pem)
            .map_err(|e| format!("not a PKCS#8 PEM private key: {e}"))?;
        Self::from_pair(&pair)
    }

    /// A new P-256 key and its PKCS#8 PEM (demos).
    pub fn generate() -> Result<(DpopKey, String), String> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        Ok((Self::from_pair(&pair)?, pair.serialize_pem()))
    }

    fn from_pair(pair: &rcgen::KeyPair) -> Result<DpopKey, String> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let raw = pair.public_key_raw();
        let pem = pair.serialize_pem();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let (alg, key, jwk) = if pair.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256 {
            if raw.len() != 65 {
                return Err("unexpected P-256 public key".into());
            }
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(pem.as_bytes()),
                jwk,
            )
        } else if pair.algorithm() == &rcgen::PKCS_ED25519 {
            let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(raw)});
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(pem.as_bytes()),
                jwk,
            )
        } else {
            return Err("DPoP keys here are P-256 (ES256) or Ed25519 (EdDSA)".into());
        };
        let key = key.map_err(|e| e.to_string())?;
        Ok(DpopKey { key, alg, jwk })
    }

    /// The RFC 7638 thumbprint: what a token bound to this key carries as `cnf.jkt`.
    pub fn thumbprint(&self) -> String {
        crate::identity::sender::proof::jwk_thumbprint(&self.jwk).unwrap_or_default()
    }

    /// A fresh proof (new `jti`, `iat` now) for `method` on `url`, with `ath` for `token`
    /// and the server's `nonce` when it asked for one.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, String> {
        crate::identity::sender::proof::mint(
            &self.key,
            self.alg,
            &self.jwk,
            method,
            url,
            token,
            crate::identity::auth::now_unix(),
            &random_id(),
            nonce,
        )
        .map_err(|e| e.to_string())
    }
}
