//! Edge refresh across replicas: one call to the token endpoint per refresh token for the
//! whole fleet, through a short Redis lock, and the outcome shared sealed (AES-256-GCM under
//! a key derived from the old refresh token) so Redis never holds usable tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{Grant, Outcome, RefreshError};
use crate::config::Refresh;
use crate::identity::auth::{self, now_unix, Verifier};

/// Cross-replica single flight through Redis: the first replica to take
/// `<prefix>{rt:<sha256>}:lock` calls the IdP and stores the outcome under
/// `<prefix>{rt:<sha256>}:result` for the reuse window, encrypted with AES-256-GCM under a
/// key derived (HKDF) from the old refresh token, so only a client holding that token can
/// make any replica use it. The others wait for that result instead of replaying the token.
/// The hash tag `{rt:<sha256>}` puts both keys of one token in one cluster slot: the
/// winner writes the result and frees the lock in one pipeline, and a waiter reads both in
/// one, which a cluster allows only within a slot.
pub(super) struct SharedFlight {
    pool: crate::identity::revocation::Pool,
    prefix: String,
    window: Duration,
    wait: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredOutcome {
    pub(super) access_token: Option<String>,
    pub(super) expires_in: Option<u64>,
    pub(super) refresh_token: Option<String>,
    pub(super) invalid_grant: bool,
}

impl SharedFlight {
    /// Over the revocation store's `connector`: with Sentinel, the lock follows the primary
    /// the store follows.
    pub(super) fn new(
        r: &crate::config::Revocation,
        connector: Arc<crate::identity::revocation::Connector>,
        cfg: &Refresh,
    ) -> Result<SharedFlight, String> {
        let pool = crate::identity::revocation::redis_pool(connector, r, 4)?;
        Ok(SharedFlight {
            pool,
            prefix: r.key_prefix.clone(),
            window: cfg.reuse_window.max(Duration::from_secs(1)),
            wait: cfg.timeout + Duration::from_secs(1),
        })
    }

    pub(super) async fn run<F, Fut>(
        &self,
        refresh_token: &str,
        verifier: &Verifier,
        call_idp: F,
    ) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Outcome>,
    {
        let id: String = sha256(refresh_token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let lock = format!("{}{{rt:{id}}}:lock", self.prefix);
        let result = format!("{}{{rt:{id}}}:result", self.prefix);
        let Ok(mut conn) = self.pool.get().await else {
            // Redis down: each replica still refreshes at most once per token.
            return call_idp().await;
        };
        if let Some(out) = self
            .stored(&mut conn, &result, refresh_token, verifier)
            .await
        {
            return out;
        }
        let won: bool = redis::cmd("SET")
            .arg(&lock)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(self.wait.as_millis() as u64)
            .query_async::<Option<String>>(&mut *conn)
            .await
            .map(|r| r.is_some())
            .unwrap_or(true);
        if won {
            let out = call_idp().await;
            let stored = match &out {
                Ok(g) => Some(StoredOutcome {
                    access_token: Some(g.access_token.clone()),
                    expires_in: g.expires_in,
                    refresh_token: g.refresh_token.clone(),
                    invalid_grant: false,
                }),
                Err(RefreshError::InvalidGrant) => Some(StoredOutcome {
                    access_token: None,
                    expires_in: None,
                    refresh_token: None,
                    invalid_grant: true,
                }),
                Err(_) => None,
            };
            // The result first, then the lock freed: a waiter that sees the lock gone
            // finds the result, if there is one.
            let mut pipe = redis::pipe();
            if let Some(blob) = stored.and_then(|s| seal(refresh_token, &s)) {
                pipe.cmd("SET")
                    .arg(&result)
                    .arg(blob)
                    .arg("PX")
                    .arg(self.window.as_millis() as u64)
                    .ignore();
            }
            pipe.cmd("DEL").arg(&lock).ignore();
            let _ = pipe.query_async::<()>(&mut *conn).await;
            return out;
        }
        // Another replica holds the lock: wait for its result. One round trip per poll:
        // whether the lock is still held, then the result (in that order, so a lock seen
        // gone means the result read after it is the winner's, or there is none).
        let deadline = Instant::now() + self.wait;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let mut pipe = redis::pipe();
            pipe.cmd("EXISTS").arg(&lock).cmd("GET").arg(&result);
            let (held, blob): (bool, Option<String>) =
                pipe.query_async(&mut *conn).await.unwrap_or((true, None));
            if let Some(out) = self.opened(blob, refresh_token, verifier).await {
                return out;
            }
            if !held {
                break;
            }
        }
        Err(RefreshError::Unavailable(
            "another replica's refresh did not finish".into(),
        ))
    }

    async fn stored(
        &self,
        conn: &mut deadpool::managed::Object<crate::identity::revocation::Manager>,
        key: &str,
        refresh_token: &str,
        verifier: &Verifier,
    ) -> Option<Outcome> {
        let blob: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut **conn)
            .await
            .ok()?;
        self.opened(blob, refresh_token, verifier).await
    }

    /// A stored outcome (`blob`, sealed) opened and its access token verified.
    async fn opened(
        &self,
        blob: Option<String>,
        refresh_token: &str,
        verifier: &Verifier,
    ) -> Option<Outcome> {
        let s = open_sealed(refresh_token, &blob?)?;
        if s.invalid_grant {
            return Some(Err(RefreshError::InvalidGrant));
        }
        let access_token = s.access_token?;
        let verified = match verifier.verify(&access_token).await {
            Ok(v) => v,
            Err(e) => return Some(Err(RefreshError::BadToken(e))),
        };
        if let Err(e) = auth::check_time(&verified, now_unix()) {
            return Some(Err(RefreshError::BadToken(e)));
        }
        Some(Ok(Arc::new(Grant {
            access_token,
            verified,
            expires_in: s.expires_in,
            refresh_token: s.refresh_token,
        })))
    }
}

fn sealing_key(refresh_token: &str) -> Option<aws_lc_rs::aead::LessSafeKey> {
    use aws_lc_rs::{aead, hkdf};
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"jwtgate refresh result v1")
        .extract(refresh_token.as_bytes());
    let okm = prk.expand(&[b"aes-256-gcm"], &aead::AES_256_GCM).ok()?;
    Some(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
}

pub(super) fn seal(refresh_token: &str, s: &StoredOutcome) -> Option<String> {
    use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
    let key = sealing_key(refresh_token)?;
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).ok()?;
    let mut data = serde_json::to_vec(s).ok()?;
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Some(STANDARD.encode(out))
}

pub(super) fn open_sealed(refresh_token: &str, blob: &str) -> Option<StoredOutcome> {
    use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
    let raw = STANDARD.decode(blob).ok()?;
    if raw.len() < NONCE_LEN {
        return None;
    }
    let (n, ct) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
    let mut ct = ct.to_vec();
    let plain = sealing_key(refresh_token)?
        .open_in_place(nonce, Aad::empty(), &mut ct)
        .ok()?;
    serde_json::from_slice(plain).ok()
}

pub(super) fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}
