//! DPoP server nonces (RFC 9449 §8), stateless so that every replica sharing the secret
//! accepts every other's: a nonce is a time bucket (`now / lifetime`) and an HMAC-SHA256
//! of it under `[tokens] dpop_nonce_secret_env`. The current and the previous bucket are
//! accepted, so a nonce lives between one and two lifetimes; a client whose nonce is from
//! the previous bucket gets the current one with its response, and rotates.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;

/// Domain separation: this secret's MACs mean "a DPoP nonce for this bucket" only.
const CONTEXT: &[u8] = b"jwtgate dpop-nonce v1\0";
/// Bytes of the MAC kept in a nonce (128 bits).
const TAG_BYTES: usize = 16;
/// Bucket (8 bytes, big-endian) and tag, base64url: 32 characters.
const NONCE_CHARS: usize = 32;

/// Makes and checks nonces.
pub struct Nonces {
    key: hmac::Key,
    lifetime_s: u64,
}

/// What a proof's `nonce` claim is worth now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Made in the current bucket.
    Current,
    /// Made in the previous bucket: still accepted; the client should take the current.
    Previous,
    /// Missing, not ours, or older than the previous bucket.
    Invalid,
}

impl Nonces {
    /// `secret`: the shared HMAC key; `lifetime_s` > 0: the bucket length.
    pub fn new(secret: &[u8], lifetime_s: u64) -> Nonces {
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime_s: lifetime_s.max(1),
        }
    }

    fn bucket(&self, now: i64) -> u64 {
        now.max(0) as u64 / self.lifetime_s
    }

    fn tag(&self, bucket: u64) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        ctx.update(&bucket.to_be_bytes());
        ctx.sign()
    }

    /// The nonce of the current bucket, as a header value.
    pub fn current(&self, now: i64) -> HeaderValue {
        let bucket = self.bucket(now);
        let mut raw = [0u8; 8 + TAG_BYTES];
        raw[..8].copy_from_slice(&bucket.to_be_bytes());
        raw[8..].copy_from_slice(&self.tag(bucket).as_ref()[..TAG_BYTES]);
        let mut text = [0u8; NONCE_CHARS];
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .unwrap_or_default();
        // base64url is visible ASCII: always a valid header value.
        HeaderValue::from_bytes(&text[..n]).unwrap_or(HeaderValue::from_static(""))
    }

    /// Whether `nonce` (a proof's claim) is one this secret made for the current or the
    /// previous bucket.
    pub fn check(&self, nonce: Option<&str>, now: i64) -> Freshness {
        let Some(nonce) = nonce.filter(|n| n.len() == NONCE_CHARS) else {
            return Freshness::Invalid;
        };
        let mut raw = [0u8; 8 + TAG_BYTES];
        if URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) != Ok(raw.len()) {
            return Freshness::Invalid;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[..8]);
        let bucket = u64::from_be_bytes(b);
        let current = self.bucket(now);
        let freshness = if bucket == current {
            Freshness::Current
        } else if bucket.checked_add(1) == Some(current) {
            Freshness::Previous
        } else {
            return Freshness::Invalid;
        };
        let tag = self.tag(bucket);
        // Constant time: the MAC is the secret-dependent part.
        if aws_lc_rs::constant_time::verify_slices_are_equal(&tag.as_ref()[..TAG_BYTES], &raw[8..])
            .is_err()
        {
            return Freshness::Invalid;
        }
        freshness
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";

    #[test]
    fn current_and_previous_buckets_pass_older_and_foreign_ones_do_not() {
        let n = Nonces::new(SECRET, 300);
        let t = 1_800_000_100;
        let v = n.current(t);
        let s = v.to_str().unwrap();
        assert_eq!(s.len(), NONCE_CHARS);
        assert_eq!(n.check(Some(s), t), Freshness::Current);
        assert_eq!(n.check(Some(s), t + 300), Freshness::Previous);
        assert_eq!(n.check(Some(s), t + 600), Freshness::Invalid);
        // Not from the future, either.
        assert_eq!(n.check(Some(s), t - 300), Freshness::Invalid);
        // Another replica with the same secret agrees; another secret does not.
        assert_eq!(
            Nonces::new(SECRET, 300).check(Some(s), t),
            Freshness::Current
        );
        let other = Nonces::new(b"another secret, also 32 bytes long", 300);
        assert_eq!(other.check(Some(s), t), Freshness::Invalid);
        assert_eq!(
            n.check(Some(other.current(t).to_str().unwrap()), t),
            Freshness::Invalid
        );
        // A forged bucket with the old tag, a changed tag, junk, nothing.
        let mut raw = URL_SAFE_NO_PAD.decode(s).unwrap();
        raw[7] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(n.check(Some(&forged), t), Freshness::Invalid);
        let mut raw = URL_SAFE_NO_PAD.decode(s).unwrap();
        raw[20] ^= 1;
        assert_eq!(
            n.check(Some(&URL_SAFE_NO_PAD.encode(&raw)), t),
            Freshness::Invalid
        );
        assert_eq!(n.check(Some("x"), t), Freshness::Invalid);
        assert_eq!(n.check(None, t), Freshness::Invalid);
    }
}
