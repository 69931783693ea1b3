//! One DPoP proof (RFC 9449 §4.3) checked against one request: a pure function of the
//! proof, what the request says (method, target URI, access token) and the clock, with a
//! cache of checked proof headers (`Keys`) in front of the header's parsing. Replay (`jti`)
//! and server nonces are the caller's, because they need shared state or a secret.

use std::borrow::Cow;
use std::sync::Arc;

use aws_lc_rs::signature::ParsedPublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::error::ProofError;

/// Longest proof taken (a 4096-bit RSA jwk and signature fit with room to spare).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` remembered.
pub const MAX_JTI_BYTES: usize = 256;
/// Smallest RSA modulus taken in a proof's jwk (bytes): 2048 bits.
const MIN_RSA_MODULUS: usize = 256;
/// Members of a JWK that only a private key has (RFC 7517 §9.2, RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What the request says, for the proof to match.
pub struct Expected<'a> {
    pub method: &'a str,
    /// The request's target URI in `normalize_htu` form.
    pub htu: &'a str,
    /// SHA-256 of the access token (`ath`, RFC 9449 §4.2).
    pub token_sha256: &'a [u8; 32],
    /// The token's `cnf.jkt`, when bound.
    pub jkt: Option<&'a str>,
    /// How far `iat` may be from `now`, either way (seconds).
    pub window: i64,
    pub now: i64,
}

/// A proof that passed every check but replay (and the server nonce, which is the
/// caller's: it needs the nonce secret).
#[derive(Debug, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's key (base64url SHA-256).
    pub jkt: Arc<str>,
    pub jti: String,
    pub iat: i64,
    /// The `nonce` claim (RFC 9449 §8), when the proof has one.
    pub nonce: Option<String>,
}

#[derive(serde::Deserialize)]
struct Header {
    typ: Option<String>,
    alg: String,
    jwk: Option<Value>,
    crit: Option<Value>,
}

/// The claims a proof is checked on, borrowed from the decoded payload where they need no
/// unescaping; other claims are skipped. A claim of the wrong JSON type fails the parse
/// (`Malformed`).
#[derive(serde::Deserialize)]
struct Claims<'a> {
    #[serde(borrow)]
    jti: Option<Cow<'a, str>>,
    #[serde(borrow)]
    htm: Option<Cow<'a, str>>,
    #[serde(borrow)]
    htu: Option<Cow<'a, str>>,
    iat: Option<serde_json::Number>,
    #[serde(borrow)]
    ath: Option<Cow<'a, str>>,
    #[serde(borrow)]
    nonce: Option<Cow<'a, str>>,
}

/// A proof header that passed its checks (`typ`, `alg` on the allow-list, no `crit`, a
/// public `jwk` usable with `alg`), reduced to what verification needs: the key, parsed
/// once, and its thumbprint.
pub struct HeaderKey {
    jkt: Arc<str>,
    key: ParsedPublicKey,
}

/// Largest signature taken: RSA 4096 (512 bytes). Larger ones fail `Signature`.
const MAX_SIGNATURE_BYTES: usize = 512;
/// Bound on the header cache, weighted by the header's length plus the parsed key.
const KEYS_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// What a parsed key costs besides its header text (an RSA `EVP_PKEY` is the largest).
const KEY_WEIGHT: usize = 2048;

/// Checked proof headers by their base64url text. A client signs many proofs with one key,
/// and its header (`typ`, `alg`, `jwk`) is the same text in each, so the header's JSON,
/// the jwk checks, its thumbprint and the parsed key are worked out once per key, not per
/// request. The text is the whole input of those checks, so a hit gives exactly what
/// parsing again would. Bounded by weight; an idle key leaves after `KEYS_IDLE`.
pub struct Keys {
    cache: moka::sync::Cache<String, Arc<HeaderKey>>,
}

/// How long an unused header stays cached.
const KEYS_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            cache: moka::sync::Cache::builder()
                .max_capacity(KEYS_MAX_BYTES)
                .weigher(|k: &String, _: &Arc<HeaderKey>| {
                    (k.len() + KEY_WEIGHT).min(u32::MAX as usize) as u32
                })
                .time_to_idle(KEYS_IDLE)
                .build(),
        }
    }
}

impl Keys {
    /// The checked key of header `h64`, from the cache or parsed now (and cached when it
    /// passes; a refused header is not remembered).
    fn get(&self, h64: &str) -> Result<Arc<HeaderKey>, ProofError> {
        if let Some(k) = self.cache.get(h64) {
            return Ok(k);
        }
        let k = Arc::new(parse_header(h64)?);
        self.cache.insert(h64.to_string(), k.clone());
        Ok(k)
    }
}

/// Every check a proof header gets, and its key parsed for verification.
fn parse_header(h64: &str) -> Result<HeaderKey, ProofError> {
    let header: Header = decode_json(h64)?;
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(ProofError::Typ);
    }
    // The allow-list is the check: `none` and HMAC never get as far as a key.
    let alg = match header.alg.as_str() {
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        "PS256" => Algorithm::PS256,
        "RS256" => Algorithm::RS256,
        _ => return Err(ProofError::Alg),
    };
    if header.crit.is_some() {
        return Err(ProofError::Malformed);
    }
    let Some(Value::Object(jwk)) = &header.jwk else {
        return Err(ProofError::Jwk);
    };
    let jkt = check_public_jwk(jwk, alg)?;
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or(ProofError::Jwk)
    };
    use aws_lc_rs::signature as sig;
    let key = match alg {
        Algorithm::ES256 => {
            let (x, y) = (member("x")?, member("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(ProofError::Jwk);
            }
            let point = [&[4u8][..], &x, &y].concat();
            ParsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point)
        }
        Algorithm::EdDSA => ParsedPublicKey::new(&sig::ED25519, member("x")?),
        _ => {
            let params = if alg == Algorithm::PS256 {
                &sig::RSA_PSS_2048_8192_SHA256
            } else {
                &sig::RSA_PKCS1_2048_8192_SHA256
            };
            let (n, e) = (member("n")?, member("e")?);
            sig::RsaPublicKeyComponents { n, e }.to_parsed_public_key(params)
        }
    }
    .map_err(|_| ProofError::Jwk)?;
    Ok(HeaderKey {
        jkt: jkt.into(),
        key,
    })
}

/// Check `proof` against the request, with `keys` remembering checked headers. Every
/// failure names the check it failed.
pub fn verify(proof: &str, want: &Expected<'_>, keys: &Keys) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(p64), Some(sig64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let key = keys.get(h64)?;
    let mut sig = [0u8; MAX_SIGNATURE_BYTES];
    let n = match URL_SAFE_NO_PAD.decode_slice(sig64, &mut sig) {
        Ok(n) if n > 0 => n,
        _ => return Err(ProofError::Signature),
    };
    let message = &proof.as_bytes()[..h64.len() + 1 + p64.len()];
    if key.key.verify_sig(message, &sig[..n]).is_err() {
        return Err(ProofError::Signature);
    }
    // Signed by the key in its header; now is it the token's key, and this request?
    if let Some(bound) = want.jkt {
        if !constant_time_eq(bound.as_bytes(), key.jkt.as_bytes()) {
            return Err(ProofError::Key);
        }
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p64)
        .map_err(|_| ProofError::Malformed)?;
    let claims: Claims<'_> = serde_json::from_slice(&payload).map_err(|_| ProofError::Malformed)?;
    let jti = match claims.jti {
        Some(j) if !j.is_empty() && j.len() <= MAX_JTI_BYTES => j.into_owned(),
        _ => return Err(ProofError::Jti),
    };
    if claims.htm.as_deref() != Some(want.method) {
        return Err(ProofError::Htm);
    }
    match claims.htu.as_deref() {
        // Most clients send the normal form already: compared as it is.
        Some(u) if u == want.htu => {}
        Some(u) if normalize_htu(u).is_some_and(|n| n == want.htu) => {}
        _ => return Err(ProofError::Htu),
    }
    let iat = claims
        .iat
        .and_then(|n| {
            n.as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        })
        .ok_or(ProofError::Iat)?;
    if (want.now - iat).abs() > want.window {
        return Err(ProofError::Iat);
    }
    let mut ath = [0u8; 43];
    let written = URL_SAFE_NO_PAD
        .encode_slice(want.token_sha256, &mut ath)
        .map_err(|_| ProofError::Ath)?;
    match claims.ath {
        Some(a) if constant_time_eq(a.as_bytes(), &ath[..written]) => {}
        _ => return Err(ProofError::Ath),
    }
    Ok(Proof {
        jkt: key.jkt.clone(),
        jti,
        iat,
        nonce: claims.nonce.map(Cow::into_owned),
    })
}

/// The jwk must be a public key of the kind `alg` signs with; its RFC 7638 thumbprint.
fn check_public_jwk(jwk: &Map<String, Value>, alg: Algorithm) -> Result<String, ProofError> {
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::Jwk);
    }
    let s = |name: &str| match jwk.get(name) {
        Some(Value::String(v)) if !v.is_empty() => Ok(v.as_str()),
        _ => Err(ProofError::Jwk),
    };
    let kty = s("kty")?;
    // RFC 7638 §3.2: the required members, in lexicographic order, no whitespace.
    let q = |v: &str| serde_json::to_string(v).map_err(|_| ProofError::Jwk);
    let canonical = match (alg, kty) {
        (Algorithm::ES256, "EC") if s("crv")? == "P-256" => format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            q(s("x")?)?,
            q(s("y")?)?
        ),
        (Algorithm::EdDSA, "OKP") if s("crv")? == "Ed25519" => {
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":{}}}"#, q(s("x")?)?)
        }
        (Algorithm::RS256 | Algorithm::PS256, "RSA") => {
            let n = URL_SAFE_NO_PAD
                .decode(s("n")?)
                .map_err(|_| ProofError::Jwk)?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS {
                return Err(ProofError::Jwk);
            }
            format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, q(s("e")?)?, q(s("n")?)?)
        }
        _ => return Err(ProofError::Jwk),
    };
    Ok(thumbprint(canonical.as_bytes()))
}

/// base64url(SHA-256(bytes)).
pub fn thumbprint(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// The RFC 7638 thumbprint of a public JWK (the `cnf.jkt` a token bound to it carries).
pub fn jwk_thumbprint(jwk: &Value) -> Option<String> {
    let Value::Object(m) = jwk else { return None };
    let alg = match (
        m.get("kty")?.as_str()?,
        m.get("crv").and_then(Value::as_str),
    ) {
        ("EC", _) => Algorithm::ES256,
        ("OKP", _) => Algorithm::EdDSA,
        ("RSA", _) => Algorithm::RS256,
        _ => return None,
    };
    check_public_jwk(m, alg).ok()
}

/// `scheme://host[:port]/path` with scheme and host lower-case, the scheme's default port
/// dropped, the path normalised as routing normalises it (`path::normalize`; empty is `/`),
/// query and fragment gone: the form both a proof's `htu` and the request's URI are
/// compared in (RFC 9449 §4.3 check 9, RFC 3986 §6.2.2-6.2.3). `None`: not an absolute
/// http(s) URI.
pub fn normalize_htu(u: &str) -> Option<String> {
    let u = u.split(['#', '?']).next().unwrap_or("");
    let (scheme, rest) = u.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    target(&scheme, authority, path)
}

/// `normalize_htu`'s form from the parts of a request.
pub fn target(scheme: &str, authority: &str, path: &str) -> Option<String> {
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority: http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    let path = crate::path::normalize(path).ok()?;
    Some(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}{path}"),
        _ => format!("{scheme}://{host}{path}"),
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(seg: &str) -> Result<T, ProofError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| ProofError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ProofError::Malformed)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Mint a proof (the CLI and the tests): `key` signs with `alg`, `jwk` is its public JWK;
/// `nonce`: a server's `DPoP-Nonce` (RFC 9449 §8).
#[allow(clippy::too_many_arguments)]
pub fn mint(
    key: &jsonwebtoken::EncodingKey,
    alg: Algorithm,
    jwk: &Value,
    method: &str,
    url: &str,
    token: Option<&str>,
    iat: i64,
    jti: &str,
    nonce: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": alg_name(alg), "jwk": jwk});
    let mut claims = serde_json::json!({"jti": jti, "htm": method, "htu": url, "iat": iat});
    if let Some(n) = nonce {
        claims["nonce"] = n.into();
    }
    if let Some(t) = token {
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
        claims["ath"] = URL_SAFE_NO_PAD.encode(h).into();
    }
    let h64 = URL_SAFE_NO_PAD.encode(header.to_string());
    let p64 = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{h64}.{p64}");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg)?;
    Ok(format!("{message}.{sig}"))
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::PS256 => "PS256",
        _ => "RS256",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "header.payload.signature";
    const URL: &str = "https://api.example:8443/orders/7";

    /// An ES256 key pair made for the test, with its public JWK.
    fn es256() -> (jsonwebtoken::EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let spki = pair.public_key_raw();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&spki[1..33]), "y": URL_SAFE_NO_PAD.encode(&spki[33..65])});
        (key, jwk)
    }

    /// A valid ES256 proof of `GET URL` for `TOKEN` made at `now`: (proof, its key's
    /// thumbprint, now).
    fn good_proof() -> (String, String, i64) {
        let (key, jwk) = es256();
        let now = 1_800_000_000;
        let proof = mint(
            &key,
            Algorithm::ES256,
            &jwk,
            "GET",
            URL,
            Some(TOKEN),
            now,
            "j",
            None,
        )
        .unwrap();
        (proof, jwk_thumbprint(&jwk).unwrap(), now)
    }

    fn sha(t: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
        d.as_ref().try_into().unwrap()
    }

    /// One header cache for every check here, as in the gateway: mutated and forged
    /// headers must miss it, and the valid one is a hit after its first use.
    static KEYS: std::sync::LazyLock<Keys> = std::sync::LazyLock::new(Keys::default);

    fn check(proof: &str, jkt: &str, now: i64) -> Result<Proof, ProofError> {
        let htu = normalize_htu(URL).unwrap();
        let ath = sha(TOKEN);
        verify(
            proof,
            &Expected {
                method: "GET",
                htu: &htu,
                token_sha256: &ath,
                jkt: Some(jkt),
                window: 60,
                now,
            },
            &KEYS,
        )
    }

    #[test]
    fn a_valid_proof_verifies_and_each_check_names_itself() {
        let (key, jwk) = es256();
        let jkt = jwk_thumbprint(&jwk).unwrap();
        let now = 1_800_000_000;
        let mk = |m: &str, u: &str, t: Option<&str>, iat: i64| {
            mint(&key, Algorithm::ES256, &jwk, m, u, t, iat, "j1", None).unwrap()
        };
        let ok = check(&mk("GET", URL, Some(TOKEN), now), &jkt, now).unwrap();
        assert_eq!((&*ok.jkt, ok.jti.as_str()), (jkt.as_str(), "j1"));
        // Twice: the second check takes the header from the cache.
        assert!(check(&mk("GET", URL, Some(TOKEN), now), &jkt, now).is_ok());
        // Scheme and host case, default port, query and fragment do not matter.
        let same = "HTTPS://API.Example:8443/orders/7?x=1#f";
        assert!(check(&mk("GET", same, Some(TOKEN), now), &jkt, now).is_ok());
        let cases = [
            (mk("POST", URL, Some(TOKEN), now), ProofError::Htm),
            (
                mk("GET", "https://api.example/orders/7", Some(TOKEN), now),
                ProofError::Htu,
            ),
            (
                mk("GET", "http://api.example:8443/orders/7", Some(TOKEN), now),
                ProofError::Htu,
            ),
            (mk("GET", URL, Some("other"), now), ProofError::Ath),
            (mk("GET", URL, None, now), ProofError::Ath),
            (mk("GET", URL, Some(TOKEN), now - 61), ProofError::Iat),
            (mk("GET", URL, Some(TOKEN), now + 61), ProofError::Iat),
        ];
        for (proof, want) in cases {
            assert_eq!(check(&proof, &jkt, now), Err(want));
        }
        let (_, other) = es256();
        let other = jwk_thumbprint(&other).unwrap();
        assert_eq!(
            check(&mk("GET", URL, Some(TOKEN), now), &other, now),
            Err(ProofError::Key)
        );
    }

    #[test]
    fn default_ports_and_normal_paths() {
        assert_eq!(
            normalize_htu("https://A.example:443/x/../y").unwrap(),
            "https://a.example/y"
        );
        assert_eq!(
            normalize_htu("http://a.example:80").unwrap(),
            "http://a.example/"
        );
        assert_eq!(
            normalize_htu("http://a.example:8080/").unwrap(),
            "http://a.example:8080/"
        );
        assert!(normalize_htu("ftp://a.example/").is_none());
        assert!(normalize_htu("/relative").is_none());
        assert!(normalize_htu("https://user@a.example/").is_none());
    }

    #[test]
    fn forged_headers_are_refused() {
        let (good, jkt, now) = good_proof();
        let mut parts = good.split('.');
        let (h, p, sig) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
        let with = |f: &dyn Fn(&mut Value), sig: &str| {
            let mut h = header.clone();
            f(&mut h);
            format!("{}.{p}.{sig}", URL_SAFE_NO_PAD.encode(h.to_string()))
        };
        let cases: Vec<(String, ProofError)> = vec![
            (with(&|h| h["alg"] = "none".into(), ""), ProofError::Alg),
            (with(&|h| h["alg"] = "HS256".into(), sig), ProofError::Alg),
            (with(&|h| h["alg"] = "ES384".into(), sig), ProofError::Alg),
            (with(&|h| h["typ"] = "JWT".into(), sig), ProofError::Typ),
            (
                with(&|h| drop(h.as_object_mut().unwrap().remove("typ")), sig),
                ProofError::Typ,
            ),
            (
                with(&|h| drop(h.as_object_mut().unwrap().remove("jwk")), sig),
                ProofError::Jwk,
            ),
            (
                with(&|h| h["jwk"]["d"] = "AAAA".into(), sig),
                ProofError::Jwk,
            ),
            (
                with(
                    &|h| h["jwk"] = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}),
                    sig,
                ),
                ProofError::Jwk,
            ),
            (with(&|h| h["alg"] = "EdDSA".into(), sig), ProofError::Jwk),
            (with(&|_| {}, ""), ProofError::Signature),
            (
                with(&|h| h["crit"] = serde_json::json!(["x"]), sig),
                ProofError::Malformed,
            ),
            ("a.b".into(), ProofError::Malformed),
        ];
        for (proof, want) in cases {
            assert_eq!(check(&proof, &jkt, now), Err(want), "{proof}");
        }
    }

    /// Property: a valid proof changed anywhere (one byte replaced, one removed, one
    /// inserted, a segment swapped) never verifies. Deterministic xorshift so a failure
    /// reproduces; thousands of cases per run.
    #[test]
    fn mutations_of_a_valid_proof_never_verify() {
        let (good, jkt, now) = good_proof();
        assert!(check(&good, &jkt, now).is_ok());
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}\"";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let bytes = good.as_bytes();
        for _ in 0..4000 {
            let mut m = bytes.to_vec();
            let at = (next() as usize) % m.len();
            let c = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 => m[at] = c,
                1 => {
                    m.remove(at);
                }
                _ => m.insert(at, c),
            }
            let Ok(s) = String::from_utf8(m) else {
                continue;
            };
            if s == good {
                continue;
            }
            // base64url without padding has one spelling per value except in the last
            // character's unused low bits; a twin that decodes to the same bytes is the
            // same proof, not a forgery.
            if same_bytes(&s, &good) {
                continue;
            }
            assert!(check(&s, &jkt, now).is_err(), "mutation verified: {s}");
        }
    }

    fn same_bytes(a: &str, b: &str) -> bool {
        let dec = |s: &str| -> Option<Vec<Vec<u8>>> {
            s.split('.')
                .map(|p| URL_SAFE_NO_PAD.decode(p).ok())
                .collect()
        };
        matches!((dec(a), dec(b)), (Some(x), Some(y)) if x == y)
    }
}
