//! The last token a connection presented, remembered with its verification: a keep-alive
//! client that repeats its token skips the verified cache (the token's SHA-256 and a moka
//! lookup) for an exact byte comparison (issue 19). It replaces only that lookup: the
//! clock, revocation, sender and scope checks still run on every request, and an answer
//! stops being remembered where the cache's would (the issuer's key set changed, the
//! token's `exp` plus leeway passed, another verifier after a reload).

use std::sync::{Arc, Mutex};

use super::Verified;

/// Tokens longer than this are not remembered (a connection holds at most this much).
pub const MAX_MEMO_BYTES: usize = 4096;

/// One connection's memo. Shared by the connection's requests (h2 streams run side by
/// side), so behind a lock that is never held across an await.
#[derive(Debug, Default)]
pub struct TokenMemo(Mutex<Option<Memo>>);

#[derive(Debug)]
struct Memo {
    /// `Verifier::id` of the verifier that verified it: a reload's new verifier forgets.
    verifier: u64,
    token: Vec<u8>,
    verified: Arc<Verified>,
}

impl TokenMemo {
    /// The verification remembered for exactly these bytes by this verifier, if any. The
    /// caller still checks that the issuer's key set is the one it was verified under.
    pub fn recall(&self, verifier: u64, token: &[u8]) -> Option<Arc<Verified>> {
        let memo = self.0.lock().ok()?;
        let m = memo.as_ref()?;
        (m.verifier == verifier && m.token == token).then(|| m.verified.clone())
    }

    /// Remember `verified` for `token`, in place of the previous one.
    pub fn remember(&self, verifier: u64, token: &str, verified: &Arc<Verified>) {
        if token.len() > MAX_MEMO_BYTES {
            return;
        }
        let Ok(mut memo) = self.0.lock() else {
            return;
        };
        match &mut *memo {
            Some(m) => {
                m.verifier = verifier;
                m.token.clear();
                m.token.extend_from_slice(token.as_bytes());
                m.verified = verified.clone();
            }
            None => {
                *memo = Some(Memo {
                    verifier,
                    token: token.as_bytes().to_vec(),
                    verified: verified.clone(),
                })
            }
        }
    }
}
