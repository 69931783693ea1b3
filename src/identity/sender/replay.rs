//! DPoP replay cache: a proof's `jti` is accepted once per key for as long as the proof
//! could be accepted at all (its `iat` plus the window). Shared by every replica through
//! Redis (`SET <prefix>dpop:<jkt>:<jti> 1 NX PX <ms>`) when the revocation store is Redis;
//! in this process's memory (moka) otherwise.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{OnError, Revocation};
use crate::error::GatewayError;
use crate::identity::revocation::{Conn, Connector};

/// Upper bound on the memory cache (weighted by key length). An entry is about 100 bytes
/// plus its key; the window bounds how many a replica sees in steady state.
const MEMORY_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Where seen `jti`s are kept.
pub struct Replay {
    memory: moka::sync::Cache<String, ()>,
    redis: Option<RedisReplay>,
}

struct RedisReplay {
    /// The revocation store's way to the current primary (it follows a Sentinel failover; a cluster connection routes by slot).
    connector: Arc<Connector>,
    /// One multiplexed connection shared by every command (see `RedisStore`); dropped on
    /// error.
    shared: arc_swap::ArcSwapOption<Conn>,
    prefix: String,
    timeout: Duration,
    on_error: OnError,
}

/// The first sighting, or a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Replayed,
}

impl Replay {
    /// `window_s`: `[tokens] dpop_iat_window_s`; an entry lives at most twice that (a proof
    /// dated `window` ahead stays acceptable until `window` after now). `connector`: the
    /// revocation store's Redis, when it is Redis.
    pub fn new(
        window_s: u64,
        revocation: &Revocation,
        connector: Option<&Arc<Connector>>,
    ) -> Replay {
        let memory = moka::sync::Cache::builder()
            .max_capacity(MEMORY_MAX_BYTES)
            .weigher(|k: &String, _v: &()| (k.len() + 96).min(u32::MAX as usize) as u32)
            .time_to_live(Duration::from_secs(window_s * 2 + 1))
            .build();
        let redis = connector.map(|connector| RedisReplay {
            connector: connector.clone(),
            shared: Default::default(),
            prefix: revocation.key_prefix.clone(),
            timeout: revocation.timeout,
            on_error: revocation.on_error,
        });
        Replay { memory, redis }
    }

    /// Record `jti` for key `jkt` until `until` (Unix seconds); whether it was new. With
    /// Redis down, `[revocation] on_error` decides: `deny` refuses (503, as for a
    /// revocation lookup), `allow` falls back to this replica's memory.
    pub async fn first_sighting(
        &self,
        jkt: &str,
        jti: &str,
        until: i64,
        now: i64,
    ) -> Result<Seen, GatewayError> {
        let key = format!("dpop:{jkt}:{jti}");
        if let Some(r) = &self.redis {
            let ttl_ms = ((until - now).max(1) as u64).saturating_mul(1000);
            match r.set_nx(&key, ttl_ms).await {
                Ok(true) => return Ok(Seen::First),
                Ok(false) => return Ok(Seen::Replayed),
                Err(e) if r.on_error == OnError::Deny => {
                    tracing::warn!(error = %e, "DPoP replay cache unreachable; refusing");
                    return Err(GatewayError::RevocationUnavailable);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DPoP replay cache unreachable; this replica's memory only");
                }
            }
        }
        let entry = self.memory.entry(key).or_insert(());
        Ok(if entry.is_fresh() {
            Seen::First
        } else {
            Seen::Replayed
        })
    }

    /// Entries in the memory cache (approximate).
    pub fn entries(&self) -> u64 {
        self.memory.entry_count()
    }
}

impl RedisReplay {
    async fn set_nx(&self, key: &str, ttl_ms: u64) -> Result<bool, String> {
        let full = format!("{}{key}", self.prefix);
        let work = async {
            let mut conn = match self.shared.load_full() {
                Some(c) => (*c).clone(),
                None => {
                    // Boxed: connecting (through Sentinel) is rare and its future deep; it
                    // need not widen every request's state machine.
                    let c = Box::pin(self.connector.connect())
                        .await
                        .map_err(|e| e.to_string())?;
                    self.shared.store(Some(Arc::new(c.clone())));
                    c
                }
            };
            let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&full)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await;
            match set {
                Ok(v) => Ok(v.is_some()),
                Err(e) => {
                    self.shared.store(None);
                    Err(e.to_string())
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                self.shared.store(None);
                Err("timed out".into())
            }
        }
    }
}
