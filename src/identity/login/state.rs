//! The sign-in state cookie: what the callback needs to finish a sign-in (state, PKCE
//! verifier, nonce, return path, redirect URI, created-at) and the loop guard's count,
//! sealed with AES-256-GCM (aws_lc_rs) under a key derived by HKDF from the session
//! secret. Also the return-path check that keeps every redirect same-origin.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The cookie's name; also the AEAD's associated data, so a blob sealed for another
/// purpose under the same key never opens as a sign-in state.
pub const COOKIE: &str = "jwtgate_login";

/// A pending sign-in (or, with an empty `state`, only the loop guard's count).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoginState {
    /// The OAuth `state` value; empty when no sign-in is pending.
    #[serde(rename = "s")]
    pub state: String,
    /// PKCE code_verifier (RFC 7636).
    #[serde(rename = "v")]
    pub verifier: String,
    #[serde(rename = "n")]
    pub nonce: String,
    /// Where to go after signing in: a same-origin path (`return_path`).
    #[serde(rename = "r")]
    pub return_to: String,
    /// The redirect_uri sent to the authorization endpoint (the token request repeats it).
    #[serde(rename = "u")]
    pub redirect_uri: String,
    /// Unix time the sign-in started.
    #[serde(rename = "t")]
    pub created: i64,
    /// Sign-ins started since `since` (the loop guard).
    #[serde(rename = "c")]
    pub tries: u32,
    #[serde(rename = "w")]
    pub since: i64,
}

/// Seals and opens state cookies.
pub struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    /// Derive the cookie key: HKDF-SHA256(salt = purpose, ikm = session secret).
    pub fn new(secret: &[u8]) -> Sealer {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"jwtgate login state v1").extract(secret);
        let okm = prk
            .expand(&[b"aes-256-gcm"], &AES_256_GCM)
            .expect("HKDF output of one AES-256 key length is always valid");
        Sealer {
            key: LessSafeKey::new(UnboundKey::from(okm)),
        }
    }

    /// base64url(nonce || ciphertext || tag), with a fresh random 96-bit nonce.
    pub fn seal(&self, s: &LoginState) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut data = serde_json::to_vec(s).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(COOKIE.as_bytes()),
                &mut data,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// `None` for anything not sealed by this key (tampered, truncated, another secret).
    pub fn open(&self, blob: &str) -> Option<LoginState> {
        if blob.len() > 4096 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(blob).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (n, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut ct = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(COOKIE.as_bytes()), &mut ct)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }
}

/// `bytes` random bytes (aws-lc's RNG), base64url.
pub fn random(bytes: usize) -> Option<String> {
    let mut b = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut b).ok()?;
    Some(URL_SAFE_NO_PAD.encode(b))
}

/// PKCE S256 (RFC 7636 §4.2): base64url(SHA-256(verifier)).
pub fn code_challenge(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// Constant-time equality for secrets compared with what a client sent.
pub fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

pub use crate::path::return_path;

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> LoginState {
        LoginState {
            state: "s1".into(),
            verifier: "v".into(),
            nonce: "n".into(),
            return_to: "/app?x=1".into(),
            redirect_uri: "https://h/cb".into(),
            created: 5,
            tries: 1,
            since: 5,
        }
    }

    #[test]
    fn sealed_state_opens_only_with_its_key_and_untouched() {
        let a = Sealer::new(&[7; 32]);
        let blob = a.seal(&st()).unwrap();
        assert!(!blob.contains("app"), "the state is not readable");
        assert_eq!(a.open(&blob), Some(st()));
        assert!(Sealer::new(&[8; 32]).open(&blob).is_none());
        // Any flipped byte fails the tag.
        let mut raw = URL_SAFE_NO_PAD.decode(&blob).unwrap();
        for i in [0, NONCE_LEN, raw.len() - 1] {
            raw[i] ^= 1;
            assert!(a.open(&URL_SAFE_NO_PAD.encode(&raw)).is_none(), "byte {i}");
            raw[i] ^= 1;
        }
        assert!(a.open("").is_none());
        assert!(a.open("not base64!").is_none());
        // A fresh nonce each time: the same state never seals to the same blob.
        assert_ne!(blob, a.seal(&st()).unwrap());
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn return_paths_stay_on_this_origin() {
        for ok in ["/", "/app", "/app/x?next=%2Fhome&a=b", "/a%20b", "/x#frag"] {
            assert_eq!(return_path(ok), Some(ok), "{ok}");
        }
        for bad in [
            "//evil",
            "https://evil",
            "/\\evil",
            "/%2F%2Fevil",
            "/%2f%2fevil",
            "/%5Cevil",
            "/%5cevil",
            "/a\tb",
            "/a\r\nLocation: x",
            "/%0d%0aSet-Cookie:x",
            "/%09/evil",
            "/ evil",
            "evil",
            "",
            "/\u{7f}",
            "/é",
        ] {
            assert_eq!(return_path(bad), None, "{bad:?}");
        }
        assert_eq!(return_path(&format!("/{}", "a".repeat(3000))), None);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
