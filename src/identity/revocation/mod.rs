//! Revocation: a jti blacklist, per-subject "revoked before T" watermarks and revoked
//! sessions (`sid`), each scoped by the issuer (`Scoped`), in one of two stores behind the
//! `Store` trait (in-process memory, or Redis shared by every replica). One `Keys` asks all
//! three questions of a token at once: one cache entry, one round trip on a miss.
//! With Redis, a moka cache answers repeat tokens without a round trip, revocations made
//! through any replica arrive over pub/sub at once, and a circuit breaker keeps a dead
//! Redis from costing a timeout per request. With Sentinel (`connect.rs`) the store, the
//! subscriber and the refresh coordination follow the primary through a failover; the probe
//! and the subscriber retry with jittered exponential backoff (`Backoff`), so a flapping
//! store never sees a reconnect storm.

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::clock::now_unix;
use crate::config::{OnError, Revocation as RevocationConfig, StoreKind};
use crate::error::{GatewayError, TokenError};
use crate::identity::auth::Verified;
pub use crate::ids::Scoped;
use crate::ops::otel;
pub use connect::{redis_pool, Conn, Connector, Manager, Pool};
pub use memory_store::MemoryStore;
pub use redis_store::{Message, RedisStore};

mod connect;
mod memory_store;
mod redis_store;

/// The revocation keys of one token, each scoped by its issuer: what a lookup asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys<'a> {
    pub jti: Option<&'a Scoped>,
    pub sub: Option<&'a Scoped>,
    /// The token's `sid` claim (the sign-in session it belongs to).
    pub sid: Option<&'a Scoped>,
}

/// What a store knows about one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lookup {
    /// The token's `jti` is on the blacklist.
    pub jti_revoked: bool,
    /// Every token of the subject with `iat <= T` is revoked.
    pub watermark: Option<i64>,
    /// The token's session (`sid`) is revoked.
    pub sid_revoked: bool,
}

impl Lookup {
    /// Decide for a token with this `iat` (a token without `iat` cannot prove it is newer
    /// than a watermark).
    pub fn is_revoked(&self, iat: Option<i64>) -> bool {
        self.jti_revoked
            || self.sid_revoked
            || match (self.watermark, iat) {
                (Some(t), Some(iat)) => iat <= t,
                (Some(_), None) => true,
                (None, _) => false,
            }
    }
}

/// A store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("revocation store timed out")]
    Timeout,
    #[error("revocation store: {0}")]
    Backend(String),
    /// `min_replicas`: the primary has it, but `WAIT` saw too few replicas confirm in time;
    /// a failover now could lose it. Retrying is safe.
    #[error("revocation reached {acked} of the {wanted} replicas required (min_replicas); retry")]
    NotReplicated { acked: u32, wanted: u32 },
}

/// Jittered exponential backoff ("equal jitter": half the step fixed, half random), so
/// replicas that lost the store together do not come back in lockstep.
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            step: first,
        }
    }

    /// The next delay; each call doubles the step up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let mut b = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut b);
        let frac = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        step / 2 + step.mul_f64(frac / 2.0)
    }

    pub(crate) fn reset(&mut self) {
        self.step = self.first;
    }
}

/// Where revocations live. Every key is scoped by issuer.
pub trait Store: Send + Sync {
    /// Answer without I/O when the store is in-process; `None` for remote stores.
    fn lookup_now(&self, keys: Keys<'_>) -> Option<Lookup>;
    /// One round trip answering every question for a token (jti, subject, session).
    fn lookup<'a>(&'a self, keys: Keys<'a>) -> BoxFuture<'a, Result<Lookup, StoreError>>;
    /// Blacklist `jti` until `until` (the token's `exp` plus the leeway; and tell the other
    /// replicas).
    fn revoke_jti<'a>(
        &'a self,
        jti: &'a Scoped,
        until: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Revoke every token of `sub` issued at or before `at` (and tell the other replicas).
    fn revoke_sub<'a>(&'a self, sub: &'a Scoped, at: i64) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Revoke every token whose `sid` claim is `sid`, for `subject_ttl_s` (and tell the
    /// other replicas).
    fn revoke_sid<'a>(&'a self, sid: &'a Scoped) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Record `key` (a signed message's `jti`, scoped by its sender) until `until` (unix
    /// seconds): `true` the first time, `false` when it was already recorded, by this or
    /// (with Redis) any replica. The replay cache of back-channel logout and signals.
    fn first_sighting<'a>(
        &'a self,
        key: &'a str,
        until: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Forget `key` again (the message it came with could not be applied; let a retry in).
    fn forget_sighting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Cheap liveness probe.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Undo a jti revocation (and tell the other replicas); `false` when there was none.
    fn unrevoke_jti<'a>(&'a self, jti: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Undo a subject's watermark (and tell the other replicas); `false` when there was none.
    fn unrevoke_sub<'a>(&'a self, sub: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Undo a session's revocation (and tell the other replicas); `false` when there was none.
    fn unrevoke_sid<'a>(&'a self, sid: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Up to `limit` entries that pass `filter` (admin API).
    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Listed>, StoreError>>;
}

/// Which revocations `GET /revocations` lists: everything, one subject's watermarks, or
/// one session's revocation (a jti entry records neither its token's subject nor its
/// session, so it is listed only unfiltered).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub issuer: Option<String>,
}

impl ListFilter {
    /// Whether an entry of `kind` for `issuer`'s `value` is wanted.
    pub fn wants(&self, kind: ListedKind, issuer: Option<&str>, value: &str) -> bool {
        let issuer_ok = self.issuer.as_deref().is_none_or(|i| issuer == Some(i));
        let value_ok = match (&self.sub, &self.sid) {
            (Some(s), _) => kind == ListedKind::Sub && value == s,
            (None, Some(s)) => kind == ListedKind::Sid && value == s,
            (None, None) => true,
        };
        issuer_ok && value_ok
    }
}

/// What a listed entry revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListedKind {
    Jti,
    Sub,
    /// A sign-in session: every token with this `sid` claim.
    Sid,
}

/// One revocation, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub kind: ListedKind,
    /// The `[[issuers]]` name; `None` for an unscoped key of an earlier release.
    pub issuer: Option<String>,
    /// The `jti`, `sub` or `sid`.
    pub value: String,
    /// jti and sid: the entry lives until then (unix seconds).
    pub until: Option<i64>,
    /// sub: tokens issued at or before it are revoked.
    pub revoked_before: Option<i64>,
}

// === the cached, policy-aware front ===

/// Consecutive store failures that open the circuit.
const TRIP_AFTER: u32 = 3;

struct CachedLookup {
    lookup: Lookup,
    /// The token's `exp` plus its issuer's leeway: a "revoked" answer is kept until then.
    until: i64,
    /// `now_ms` before the store was asked, plus `cache_ttl_ms`: a "not revoked" answer
    /// holds no longer than its cache entry lives.
    fresh_until_ms: u64,
}

// === "not revoked" stamps ===
//
// A token found not revoked carries a stamp (`Verified::revocation_stamp`): the epoch of
// the answer and until when it holds. While no revocation has been heard since (the
// epoch is unchanged) and the deadline has not passed, the next request's answer is the
// same, so it is taken from the stamp: no `recent` lookups, no cache lookup, no boxed
// future. The deadline is that of the answer's cache entry (`cache_ttl_ms`), so a
// revocation written straight into Redis is seen as late as before and no later.

/// Bumped after this process learns of a revocation (made here, or heard on the
/// channel), forgets cached answers, or builds a `Revocations`: a stamp holds only in the
/// epoch it was made in. Read before a lookup and bumped after a write, so a stamp can
/// never outlive a revocation its lookup missed.
static EPOCH: AtomicU64 = AtomicU64::new(1);

fn bump_epoch() {
    EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// A stamp: the epoch's low 24 bits over a 40-bit deadline (ms of `now_ms`, 35 years).
/// The epoch would have to advance by exactly 2^24 within one stamp's lifetime (at most
/// `cache_ttl_ms`) to be mistaken for its own.
const DEADLINE_BITS: u32 = 40;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;

/// How long an in-process store's answer is stamped for (it changes only with a write,
/// which bumps the epoch; the deadline only bounds the stamp's age).
const MEMORY_STAMP_MS: u64 = 1000;

/// Milliseconds on a monotonic clock started by the first call.
fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn stamp_holds(stamp: u64, epoch: u64, now: u64) -> bool {
    stamp != 0 && stamp >> DEADLINE_BITS == epoch & 0xff_ffff && now < stamp & DEADLINE_MASK
}

fn set_stamp(v: &Verified, epoch: u64, until_ms: u64) {
    if until_ms <= DEADLINE_MASK {
        let s = (epoch & 0xff_ffff) << DEADLINE_BITS | until_ms;
        v.revocation_stamp.store(s, Ordering::Relaxed);
    }
}

struct CacheExpiry {
    not_revoked_ttl: Duration,
}

impl moka::Expiry<[u8; 32], Arc<CachedLookup>> for CacheExpiry {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<CachedLookup>,
        _now: Instant,
    ) -> Option<Duration> {
        if v.lookup.jti_revoked || v.lookup.sid_revoked {
            Some(Duration::from_secs((v.until - now_unix()).max(0) as u64))
        } else {
            Some(self.not_revoked_ttl)
        }
    }
}

/// Revocation checks and writes for the whole gateway.
pub struct Revocations {
    kind: StoreKind,
    store: Arc<dyn Store>,
    /// Revocations this replica made or heard about on the channel (remote stores only).
    recent: MemoryStore,
    cache: moka::future::Cache<[u8; 32], Arc<CachedLookup>>,
    on_error: OnError,
    /// Circuit breaker: open = the store is considered down.
    open: AtomicBool,
    failures: AtomicU32,
    /// Requests let through unchecked under `on_error = "allow"`.
    pub allowed_unchecked: Counter,
    /// Store lookups performed (cache misses).
    pub lookups: Counter,
    /// How the store, the subscriber and the refresh coordination reach the primary
    /// (Redis store only).
    connector: Option<Arc<Connector>>,
    channel: String,
    /// The probe's current delay between attempts, in ms (readyz).
    probe_delay_ms: AtomicU64,
    /// Subscriptions to the revocations channel made (the first, and each after a loss).
    pub subscriptions: Counter,
    /// `cache_ttl_ms`: how long a "not revoked" answer from the store is kept.
    cache_ttl_ms: u64,
    /// Revocations refused because `WAIT` saw fewer than `min_replicas` replicas.
    pub unreplicated: Counter,
}

impl Revocations {
    pub fn new(cfg: &RevocationConfig) -> Result<Revocations, String> {
        let (store, channel, redis): (Arc<dyn Store>, String, _) = match cfg.store {
            StoreKind::Memory => (
                Arc::new(MemoryStore::new(cfg.cache_capacity, cfg.subject_ttl)),
                String::new(),
                None,
            ),
            StoreKind::Redis => {
                // One connector (its TLS roots, its Sentinel client) for the store's pool,
                // the subscriber and the refresh coordination.
                let connector = Arc::new(Connector::new(cfg)?);
                let s = RedisStore::new(cfg, connector.clone())?;
                let ch = s.channel();
                (Arc::new(s), ch, Some(connector))
            }
        };
        // Stamps made under another `Revocations` (before a reload) no longer hold.
        bump_epoch();
        Ok(Revocations {
            cache_ttl_ms: cfg.cache_ttl.as_millis().min(u128::from(u32::MAX)) as u64,
            kind: cfg.store,
            store,
            recent: MemoryStore::new(cfg.cache_capacity, cfg.subject_ttl),
            cache: moka::future::Cache::builder()
                .max_capacity(cfg.cache_capacity)
                .expire_after(CacheExpiry {
                    not_revoked_ttl: cfg.cache_ttl,
                })
                .build(),
            on_error: cfg.on_error,
            // A remote store is "down" until the first probe answers.
            open: AtomicBool::new(cfg.store == StoreKind::Redis),
            failures: AtomicU32::new(0),
            allowed_unchecked: Counter::default(),
            lookups: Counter::default(),
            connector: redis,
            channel,
            probe_delay_ms: AtomicU64::new(0),
            subscriptions: Counter::default(),
            unreplicated: Counter::default(),
        })
    }

    /// Step 4b: is this verified token revoked (by its issuer's jti or subject)?
    pub async fn check(&self, v: &Verified) -> Result<(), GatewayError> {
        // The epoch before any lookup (see `EPOCH`).
        let epoch = EPOCH.load(Ordering::Acquire);
        let now = now_ms();
        if stamp_holds(v.revocation_stamp.load(Ordering::Relaxed), epoch, now) {
            return Ok(());
        }
        if let Some(l) = self.store.lookup_now(keys(v)) {
            decide(l, v)?;
            set_stamp(v, epoch, now + MEMORY_STAMP_MS);
            return Ok(());
        }
        // The remote path's future is large (cache, store); boxing it keeps every caller's
        // future small for the common stamped answer.
        Box::pin(self.check_remote(v, epoch)).await
    }

    async fn check_remote(&self, v: &Verified, epoch: u64) -> Result<(), GatewayError> {
        let keys = keys(v);
        decide(self.recent.get(keys), v)?;
        // A cached answer needs no store, even while the circuit is open.
        if let Some(c) = self.cache.get(&v.key).await {
            decide(c.lookup, v)?;
            set_stamp(v, epoch, c.fresh_until_ms);
            return Ok(());
        }
        if self.open.load(Ordering::Acquire) {
            return self.unavailable();
        }
        let res = self
            .cache
            .try_get_with(v.key, async {
                self.lookups.inc();
                let fresh_until_ms = now_ms() + self.cache_ttl_ms;
                let span = self.span("revocation lookup", "MGET");
                let lookup = otel::traced(span, self.store.lookup(keys)).await?;
                let until = v.exp.saturating_add(v.leeway);
                Ok::<_, StoreError>(Arc::new(CachedLookup {
                    lookup,
                    until,
                    fresh_until_ms,
                }))
            })
            .await;
        match res {
            Ok(c) => {
                self.record_ok();
                decide(c.lookup, v)?;
                set_stamp(v, epoch, c.fresh_until_ms);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "revocation lookup failed");
                self.record_failure();
                self.unavailable()
            }
        }
    }

    fn unavailable(&self) -> Result<(), GatewayError> {
        match self.on_error {
            OnError::Deny => Err(GatewayError::RevocationUnavailable),
            OnError::Allow => {
                self.allowed_unchecked.inc();
                Ok(())
            }
        }
    }

    fn record_ok(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("revocation store reachable again");
        }
    }

    fn record_failure(&self) {
        if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= TRIP_AFTER
            && !self.open.swap(true, Ordering::AcqRel)
        {
            tracing::warn!("revocation store failing; circuit open, probing in the background");
        }
    }

    /// Ready when the store answers, or when failures are allowed through anyway.
    pub fn is_ready(&self) -> bool {
        self.on_error == OnError::Allow || !self.open.load(Ordering::Acquire)
    }

    /// Whether the store is currently considered reachable.
    pub fn store_up(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    pub fn store_name(&self) -> &'static str {
        match (self.kind, &self.connector) {
            (StoreKind::Memory, _) => "memory",
            (StoreKind::Redis, Some(c)) if c.is_sentinel() => "redis-sentinel",
            (StoreKind::Redis, Some(c)) if c.is_cluster() => "redis-cluster",
            (StoreKind::Redis, _) => "redis",
        }
    }

    /// How the store reaches its primary (Redis only), for the refresh coordination.
    pub fn connector(&self) -> Option<&Arc<Connector>> {
        self.connector.as_ref()
    }

    /// The circuit as `/readyz` shows it: open or closed, consecutive failures, the probe's
    /// current retry delay, and the primary last connected to.
    pub fn circuit(&self) -> serde_json::Value {
        serde_json::json!({
            "state": if self.store_up() { "closed" } else { "open" },
            "consecutive_failures": self.failures.load(Ordering::Relaxed),
            "probe_delay_ms": self.probe_delay_ms.load(Ordering::Relaxed),
            "primary": self.connector.as_ref().and_then(|c| c.current_primary()),
        })
    }

    /// Whether calls to the store are traced (a Redis store): `span` makes spans.
    pub fn traces_calls(&self) -> bool {
        self.kind == StoreKind::Redis
    }

    /// A span for a call to the Redis store (none for the in-memory one, or tracing off).
    fn span(&self, name: &'static str, operation: &'static str) -> otel::Span {
        match self.kind {
            StoreKind::Redis => otel::Span::redis(name, operation),
            StoreKind::Memory => otel::Span::none(),
        }
    }

    /// A write's outcome says whether the store answers, like a lookup's.
    fn count_write(&self, r: Result<(), StoreError>) -> Result<(), StoreError> {
        match &r {
            // The primary answered; only its replicas lagged.
            Ok(()) | Err(StoreError::NotReplicated { .. }) if self.kind == StoreKind::Redis => {
                self.record_ok()
            }
            Err(_) if self.kind == StoreKind::Redis => self.record_failure(),
            _ => {}
        }
        if let Err(StoreError::NotReplicated { .. }) = &r {
            self.unreplicated.inc();
        }
        r
    }

    /// Revoke an issuer's token id until `until`: the token's `exp` plus the largest
    /// `leeway_s` (`Config::max_leeway_s`), as long as any issuer would still accept it.
    pub async fn revoke_jti(&self, jti: &Scoped, until: i64) -> Result<(), StoreError> {
        let span = self.span("revocation write", "SET");
        let r = self.count_write(otel::traced(span, self.store.revoke_jti(jti, until)).await);
        if r.is_ok() {
            self.recent.put_jti(jti, until);
        }
        // Even after an error: the store may hold it all the same.
        bump_epoch();
        r
    }

    /// Revoke every token of an issuer's `sub` issued at or before `at`.
    pub async fn revoke_sub(&self, sub: &Scoped, at: i64) -> Result<(), StoreError> {
        let span = self.span("revocation write", "SET");
        let r = self.count_write(otel::traced(span, self.store.revoke_sub(sub, at)).await);
        if r.is_ok() {
            self.recent.put_sub(sub, at);
        }
        bump_epoch();
        r
    }

    /// Revoke every token of an issuer whose `sid` claim is `sid` (for `subject_ttl_s`).
    pub async fn revoke_sid(&self, sid: &Scoped) -> Result<(), StoreError> {
        let span = self.span("revocation write", "SET");
        let r = otel::traced(span, self.store.revoke_sid(sid)).await;
        if r.is_ok() {
            self.recent.put_sid(sid);
        }
        bump_epoch();
        r
    }

    /// See `Store::first_sighting`.
    pub async fn first_sighting(&self, key: &str, until: i64) -> Result<bool, StoreError> {
        self.store.first_sighting(key, until).await
    }

    /// See `Store::forget_sighting`; best effort.
    pub async fn forget_sighting(&self, key: &str) {
        if let Err(e) = self.store.forget_sighting(key).await {
            tracing::warn!(error = %e, "could not clear a replay-cache entry");
        }
    }

    /// Whether an issuer's `jti` is on the blacklist (admin API; the legacy unscoped key
    /// counts too).
    pub async fn is_jti_revoked(&self, jti: &Scoped) -> Result<bool, StoreError> {
        let keys = Keys {
            jti: Some(jti),
            ..Keys::default()
        };
        if self.recent.get(keys).jti_revoked {
            return Ok(true);
        }
        Ok(self.store.lookup(keys).await?.jti_revoked)
    }

    /// Whether an issuer's session is revoked (admin API, tests).
    pub async fn is_sid_revoked(&self, sid: &Scoped) -> Result<bool, StoreError> {
        let keys = Keys {
            sid: Some(sid),
            ..Keys::default()
        };
        if self.recent.get(keys).sid_revoked {
            return Ok(true);
        }
        Ok(self.store.lookup(keys).await?.sid_revoked)
    }

    /// Undo a jti revocation everywhere: the store, this replica's recent list, cached
    /// answers (other replicas hear it on the channel). `false` when nothing was revoked.
    pub async fn unrevoke_jti(&self, jti: &Scoped) -> Result<bool, StoreError> {
        let stored = self.store.unrevoke_jti(jti).await?;
        let recent = self.recent.remove_jti(jti);
        self.cache.invalidate_all();
        bump_epoch();
        Ok(stored || recent)
    }

    /// Undo a subject's watermark everywhere (see `unrevoke_jti`).
    pub async fn unrevoke_sub(&self, sub: &Scoped) -> Result<bool, StoreError> {
        let stored = self.store.unrevoke_sub(sub).await?;
        let recent = self.recent.remove_sub(sub);
        self.cache.invalidate_all();
        bump_epoch();
        Ok(stored || recent)
    }

    /// Undo a session's revocation everywhere (see `unrevoke_jti`).
    pub async fn unrevoke_sid(&self, sid: &Scoped) -> Result<bool, StoreError> {
        let stored = self.store.unrevoke_sid(sid).await?;
        let recent = self.recent.remove_sid(sid);
        self.cache.invalidate_all();
        Ok(stored || recent)
    }

    /// Up to `limit` revocations in the store that pass `filter`.
    pub async fn list(&self, filter: &ListFilter, limit: usize) -> Result<Vec<Listed>, StoreError> {
        self.store.list(filter, limit).await
    }

    fn apply(&self, msg: Message) {
        self.apply_message(msg);
        bump_epoch();
    }

    fn apply_message(&self, msg: Message) {
        match msg {
            Message::UndoJti { issuer, undo_jti } => {
                self.recent.remove_jti(&Scoped::new(&issuer, &undo_jti));
                self.cache.invalidate_all();
            }
            Message::UndoSub { issuer, undo_sub } => {
                self.recent.remove_sub(&Scoped::new(&issuer, &undo_sub));
                self.cache.invalidate_all();
            }
            Message::UndoSid { issuer, undo_sid } => {
                self.recent.remove_sid(&Scoped::new(&issuer, &undo_sid));
                self.cache.invalidate_all();
            }
            Message::Jti {
                issuer: Some(i),
                jti,
                exp,
            } => self.recent.put_jti(&Scoped::new(&i, &jti), exp),
            Message::Sub {
                issuer: Some(i),
                sub,
                at,
            } => self.recent.put_sub(&Scoped::new(&i, &sub), at),
            Message::Sid { issuer, sid } => self.recent.put_sid(&Scoped::new(&issuer, &sid)),
            // From a replica of the earlier release, which wrote an unscoped key: it applies
            // to every issuer, and lookups read it; forget cached "not revoked" answers so
            // the next ones do.
            Message::Jti { issuer: None, .. } | Message::Sub { issuer: None, .. } => {
                self.cache.invalidate_all()
            }
        }
    }

    /// Background (remote stores): probe the store, close the circuit when it answers,
    /// and keep a pub/sub subscription applying other replicas' revocations.
    pub async fn run_background(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        if self.kind != StoreKind::Redis {
            return;
        }
        tokio::join!(
            self.clone().probe(shutdown.clone()),
            self.subscribe(shutdown)
        );
    }

    /// Every 2 s while the store answers; while it does not, again after a jittered
    /// exponential backoff from 100 ms to 2 s (so readiness returns within ~2 s of the store,
    /// and a fleet of replicas never hammers a store that is coming back).
    async fn probe(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        // Whether this outage's cause was logged (a failing lookup may have opened the
        // circuit first, without the probe's error).
        let mut told = false;
        loop {
            let checked = self.store.ping().await;
            let every = if checked.is_ok() {
                self.record_ok();
                backoff.reset();
                told = false;
                Duration::from_secs(2)
            } else {
                self.failures.fetch_max(TRIP_AFTER, Ordering::Relaxed);
                self.open.store(true, Ordering::Release);
                // Why, once per outage: an unreachable host, a refused password, a
                // certificate `redis_ca` does not trust.
                if let (false, Err(e)) = (told, &checked) {
                    tracing::warn!(error = %e, "revocation store unreachable; circuit open");
                    told = true;
                }
                backoff.next_delay()
            };
            self.probe_delay_ms
                .store(every.as_millis() as u64, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Keep one subscription to the revocations channel on the current primary. A lost
    /// subscription is retried after a jittered exponential backoff (100 ms to 5 s); when
    /// the store's connections move to a new primary (a Sentinel failover), the
    /// subscription follows at once.
    async fn subscribe(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(connector) = self.connector.clone() else {
            return;
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Wakes when the store starts using another primary than `seen`.
        let moved = |seen: u64| {
            let connector = connector.clone();
            async move {
                while connector.generation() == seen {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        loop {
            let seen = connector.generation();
            let session = async {
                let mut ps = connector.primary().await?.get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                self.subscriptions.inc();
                // We may have missed messages while disconnected: forget "not revoked".
                self.cache.invalidate_all();
                bump_epoch();
                tracing::info!(channel = %self.channel, primary = ?connector.current_primary(), "subscribed to revocations");
                let mut stream = ps.on_message();
                while let Some(m) = stream.next().await {
                    match m
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<Message>(&p).ok())
                    {
                        Some(msg) => self.apply(msg),
                        None => {
                            tracing::warn!("ignoring malformed message on the revocations channel")
                        }
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            let started = Instant::now();
            tokio::select! {
                r = session => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "revocations subscription lost");
                    }
                }
                // Read before subscribing: a move while subscribing ends this session too.
                _ = moved(seen) => {
                    tracing::info!("revocation store moved to a new primary; resubscribing");
                    backoff.reset();
                    continue;
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff.reset();
            }
            let seen = connector.generation();
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                // The store found a new primary: no need to wait out the backoff.
                _ = moved(seen) => backoff.reset(),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// A verified token's revocation keys.
fn keys(v: &Verified) -> Keys<'_> {
    Keys {
        jti: v.scoped_jti.as_ref(),
        sub: Some(&v.scoped_sub),
        sid: v.scoped_sid.as_ref(),
    }
}

fn decide(l: Lookup, v: &Verified) -> Result<(), GatewayError> {
    if l.is_revoked(v.iat) {
        Err(GatewayError::InvalidToken(TokenError::Revoked))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps = [100u64, 200, 400, 800, 800];
        let mut delays = Vec::new();
        for step in steps {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d >= step / 2 && d <= step,
                "{d} outside {}..={step}",
                step / 2
            );
            delays.push(d);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // Jitter: a fleet does not retry in lockstep.
        let spread: std::collections::HashSet<u128> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
                    .next_delay()
                    .as_micros()
            })
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
    }

    #[test]
    fn watermark_rules() {
        let l = Lookup {
            watermark: Some(100),
            ..Lookup::default()
        };
        assert!(l.is_revoked(Some(100)));
        assert!(l.is_revoked(Some(99)));
        assert!(!l.is_revoked(Some(101)));
        assert!(l.is_revoked(None), "no iat cannot prove it is newer");
        assert!(!Lookup::default().is_revoked(None));
        assert!(Lookup {
            jti_revoked: true,
            ..Lookup::default()
        }
        .is_revoked(Some(1)));
        assert!(Lookup {
            sid_revoked: true,
            ..Lookup::default()
        }
        .is_revoked(Some(i64::MAX)));
    }

    #[test]
    fn messages_round_trip() {
        let m = Message::Jti {
            issuer: Some("main".into()),
            jti: "a".into(),
            exp: 5,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"issuer":"main","jti":"a","exp":5}"#);
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        let m: Message = serde_json::from_str(r#"{"issuer":"b","sub":"alice","at":7}"#).unwrap();
        assert_eq!(
            m,
            Message::Sub {
                issuer: Some("b".into()),
                sub: "alice".into(),
                at: 7
            }
        );
        let (issuer, sid) = ("main".to_string(), "s-1".to_string());
        for (m, want) in [
            (
                Message::Sid {
                    issuer: issuer.clone(),
                    sid: sid.clone(),
                },
                r#"{"issuer":"main","sid":"s-1"}"#,
            ),
            (
                Message::UndoSid {
                    issuer,
                    undo_sid: sid,
                },
                r#"{"issuer":"main","undo_sid":"s-1"}"#,
            ),
        ] {
            let text = serde_json::to_string(&m).unwrap();
            assert_eq!(text, want);
            assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        }
        // An earlier release's message: no issuer.
        let m: Message = serde_json::from_str(r#"{"jti":"a","exp":5}"#).unwrap();
        assert_eq!(
            m,
            Message::Jti {
                issuer: None,
                jti: "a".into(),
                exp: 5
            }
        );
    }

    #[test]
    fn memory_watermark_only_moves_forward() {
        let m = MemoryStore::new(100, Duration::from_secs(60));
        let a = Scoped::new("i", "a");
        m.put_sub(&a, 10);
        m.put_sub(&a, 5);
        let keys = Keys {
            sub: Some(&a),
            ..Keys::default()
        };
        assert_eq!(m.get(keys).watermark, Some(10));
    }

    #[test]
    fn memory_entries_are_per_issuer() {
        let m = MemoryStore::new(100, Duration::from_secs(60));
        m.put_sub(&Scoped::new("b", "alice"), 10);
        m.put_jti(&Scoped::new("b", "j"), now_unix() + 60);
        m.put_sid(&Scoped::new("b", "s1"));
        let (aj, aa, asid) = (
            Scoped::new("a", "j"),
            Scoped::new("a", "alice"),
            Scoped::new("a", "s1"),
        );
        assert_eq!(
            m.get(Keys {
                jti: Some(&aj),
                sub: Some(&aa),
                sid: Some(&asid)
            }),
            Lookup::default()
        );
        let (bj, ba, bsid) = (
            Scoped::new("b", "j"),
            Scoped::new("b", "alice"),
            Scoped::new("b", "s1"),
        );
        let l = m.get(Keys {
            jti: Some(&bj),
            sub: Some(&ba),
            sid: Some(&bsid),
        });
        assert!(l.jti_revoked && l.watermark == Some(10) && l.sid_revoked);
    }

    #[test]
    fn scoped_splits_at_the_first_colon() {
        let s = Scoped::new("main", "urn:uuid:1");
        assert_eq!(s.as_str(), "main:urn:uuid:1");
        assert_eq!((s.issuer(), s.value()), ("main", "urn:uuid:1"));
    }
}
