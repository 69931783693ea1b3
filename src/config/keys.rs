//! Key material named in gateway.toml, parsed and checked while the config loads: the
//! issuers' static verification keys and the assertion signing key. Pure values: `jwks`
//! and `assertion` use them at run time, config needs neither.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{EcdsaKeyPair, ParsedPublicKey, ECDSA_P256_SHA256_FIXED_SIGNING};
use http::HeaderName;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};

/// Algorithms a config may name (never `none`).
pub const SUPPORTED_ALGS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// Shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size; 32 bytes for HS256).
pub const MIN_HMAC_SECRET: usize = 32;

/// Exact, case-sensitive algorithm names. `none` in any spelling is not among them.
pub fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Raw key material from the config file.
pub enum KeyMaterial {
    /// PEM public key (RSA, EC, Ed25519).
    Pem(Vec<u8>),
    /// HMAC secret: the environment variable's exact bytes.
    Secret(Vec<u8>),
}

/// A key ready to verify signatures, with the algorithms it may be used with.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    /// Algorithms this key verifies; decided by the key (its type and pinned `alg`).
    pub algs: Vec<Algorithm>,
    /// Set when the key names exactly one algorithm (config `alg`, JWK `alg`): only such
    /// keys are tried for tokens without `kid`.
    pub pinned: Option<Algorithm>,
    pub key: DecodingKey,
    /// The public key parsed once for each of `algs` (see `parse_public`); empty for HMAC.
    pub parsed: Arc<[(Algorithm, ParsedPublicKey)]>,
}

/// `key` parsed once, at load time, for each of `algs`: what jsonwebtoken's aws-lc backend
/// does inside every `crypto::verify` (the same bytes, the same aws-lc-rs verification
/// algorithm), where it also copies the key and boxes a verifier. HMAC secrets, and a key
/// aws-lc-rs would refuse, get no entry: jsonwebtoken keeps verifying those.
pub fn parse_public(key: &DecodingKey, algs: &[Algorithm]) -> Arc<[(Algorithm, ParsedPublicKey)]> {
    algs.iter()
        .filter_map(|&alg| Some((alg, parse_one(key, alg)?)))
        .collect()
}

fn parse_one(key: &DecodingKey, alg: Algorithm) -> Option<ParsedPublicKey> {
    use aws_lc_rs::signature as sig;
    let rsa: Option<&'static sig::RsaParameters> = match alg {
        Algorithm::RS256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
        _ => None,
    };
    let verifier: &'static dyn sig::VerificationAlgorithm = match (alg, rsa) {
        (_, Some(p)) => p,
        (Algorithm::ES256, _) => &sig::ECDSA_P256_SHA256_FIXED,
        (Algorithm::ES384, _) => &sig::ECDSA_P384_SHA384_FIXED,
        (Algorithm::EdDSA, _) => &sig::ED25519,
        _ => return None,
    };
    match (key.kind(), rsa) {
        (DecodingKeyKind::SecretOrDer(bytes), _) => ParsedPublicKey::new(verifier, bytes).ok(),
        (DecodingKeyKind::RsaModulusExponent { n, e }, Some(p)) => {
            sig::RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(p)
                .ok()
        }
        _ => None,
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

/// A key from the config file.
pub type StaticKey = VerifyKey;

impl VerifyKey {
    /// Build a static key; the message says what is wrong (without the material).
    pub fn new(
        kid: Option<String>,
        alg: Algorithm,
        material: KeyMaterial,
    ) -> Result<VerifyKey, String> {
        use jsonwebtoken::AlgorithmFamily as F;
        let key = match (alg.family(), material) {
            (F::Hmac, KeyMaterial::Secret(s)) => {
                if s.len() < MIN_HMAC_SECRET {
                    return Err(format!(
                        "HMAC secret is {} bytes; at least {MIN_HMAC_SECRET} are required",
                        s.len()
                    ));
                }
                DecodingKey::from_secret(&s)
            }
            (F::Hmac, KeyMaterial::Pem(_)) => {
                return Err(format!("{alg:?} needs `secret_env`, not a PEM file"))
            }
            (_, KeyMaterial::Secret(_)) => {
                return Err(format!("{alg:?} needs a `pem` public key, not a secret"))
            }
            (F::Rsa, KeyMaterial::Pem(p)) => DecodingKey::from_rsa_pem(&p)
                .map_err(|e| format!("not an RSA public key PEM: {e}"))?,
            (F::Ec, KeyMaterial::Pem(p)) => DecodingKey::from_ec_pem(&p)
                .map_err(|e| format!("not an EC public key PEM: {e}"))?,
            (F::Ed, KeyMaterial::Pem(p)) => DecodingKey::from_ed_pem(&p)
                .map_err(|e| format!("not an Ed25519 public key PEM: {e}"))?,
        };
        Ok(VerifyKey {
            kid,
            algs: vec![alg],
            pinned: Some(alg),
            parsed: parse_public(&key, &[alg]),
            key,
        })
    }
}

/// The assertion signing key: a P-256 private key, its key id (RFC 7638 thumbprint) and the
/// JWKS that publishes its public half.
pub struct AssertionKey {
    pub(crate) key: EncodingKey,
    pub(crate) kid: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::KeyPair;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    #[test]
    fn public_keys_are_parsed_once_and_agree_with_jsonwebtoken() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let key = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&point[1..33]),
            &URL_SAFE_NO_PAD.encode(&point[33..]),
        )
        .unwrap();
        let parsed = parse_public(&key, &[Algorithm::ES256]);
        assert_eq!(parsed.len(), 1);

        let msg = b"header.payload";
        let sig = pair.sign(&rng, msg).unwrap();
        let sig64 = URL_SAFE_NO_PAD.encode(sig.as_ref());
        assert!(parsed[0].1.verify_sig(msg, sig.as_ref()).is_ok());
        assert!(parsed[0]
            .1
            .verify_sig(b"header.payloaX", sig.as_ref())
            .is_err());
        assert!(jsonwebtoken::crypto::verify(&sig64, msg, &key, Algorithm::ES256).unwrap());
        assert!(
            !jsonwebtoken::crypto::verify(&sig64, b"header.payloaX", &key, Algorithm::ES256)
                .unwrap()
        );

        // An HMAC secret is left to jsonwebtoken, and so is an algorithm the key cannot do.
        assert!(
            parse_public(&DecodingKey::from_secret(&[7u8; 32]), &[Algorithm::HS256]).is_empty()
        );
        assert!(parse_public(&key, &[Algorithm::RS256]).is_empty());
    }
}
