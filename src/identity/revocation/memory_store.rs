//! The in-process revocation store: one replica's own list (the embedded default).

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{Keys, ListFilter, Listed, ListedKind, Lookup, Store, StoreError};
use crate::clock::now_unix;
use crate::ids::Scoped;

struct UntilValue;

impl moka::Expiry<String, i64> for UntilValue {
    fn expire_after_create(&self, _k: &String, exp: &i64, _now: Instant) -> Option<Duration> {
        Some(Duration::from_secs((*exp - now_unix()).max(0) as u64))
    }
    fn expire_after_update(
        &self,
        k: &String,
        exp: &i64,
        now: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(k, exp, now)
    }
}

/// In-process store, keyed by `Scoped` strings: entries expire on their own (jti at its
/// `until`, watermarks and sessions after `subject_ttl`). Also used, with Redis, to hold
/// revocations pushed over pub/sub.
pub struct MemoryStore {
    subject_ttl: Duration,
    jti: moka::sync::Cache<String, i64>,
    sub: moka::sync::Cache<String, i64>,
    /// Session -> when its revocation ends (`subject_ttl` after it was made).
    sid: moka::sync::Cache<String, i64>,
    /// The replay cache: key -> until.
    seen: moka::sync::Cache<String, i64>,
}

impl MemoryStore {
    pub fn new(capacity: u64, subject_ttl: Duration) -> MemoryStore {
        MemoryStore {
            subject_ttl,
            jti: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilValue)
                .build(),
            sub: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(subject_ttl.max(Duration::from_secs(1)))
                .build(),
            sid: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(subject_ttl.max(Duration::from_secs(1)))
                .build(),
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilValue)
                .build(),
        }
    }

    pub(super) fn get(&self, keys: Keys<'_>) -> Lookup {
        Lookup {
            jti_revoked: keys.jti.is_some_and(|j| self.jti.contains_key(j.as_str())),
            watermark: keys.sub.and_then(|s| self.sub.get(s.as_str())),
            sid_revoked: keys.sid.is_some_and(|s| self.sid.contains_key(s.as_str())),
        }
    }

    pub(super) fn put_sid(&self, sid: &Scoped) {
        let ttl = self.subject_ttl.as_secs().clamp(1, i64::MAX as u64) as i64;
        self.sid
            .insert(sid.as_str().to_owned(), now_unix().saturating_add(ttl));
    }

    pub(super) fn put_jti(&self, jti: &Scoped, until: i64) {
        self.jti.insert(jti.as_str().to_owned(), until);
    }

    /// `true` when there was an entry.
    pub(super) fn remove_jti(&self, jti: &Scoped) -> bool {
        self.jti.remove(jti.as_str()).is_some()
    }

    pub(super) fn remove_sub(&self, sub: &Scoped) -> bool {
        self.sub.remove(sub.as_str()).is_some()
    }

    pub(super) fn remove_sid(&self, sid: &Scoped) -> bool {
        self.sid.remove(sid.as_str()).is_some()
    }

    fn entries(&self, filter: &ListFilter, limit: usize) -> Vec<Listed> {
        let jti = self.jti.iter().map(|(k, v)| (ListedKind::Jti, k, v));
        let sub = self.sub.iter().map(|(k, v)| (ListedKind::Sub, k, v));
        let sid = self.sid.iter().map(|(k, v)| (ListedKind::Sid, k, v));
        let mut out: Vec<Listed> = sub
            .chain(jti)
            .chain(sid)
            .filter_map(|(kind, k, v)| {
                let (issuer, value) = k.split_once(':')?;
                filter.wants(kind, Some(issuer), value).then(|| Listed {
                    kind,
                    issuer: Some(issuer.to_string()),
                    value: value.to_string(),
                    until: (kind != ListedKind::Sub).then_some(v),
                    revoked_before: (kind == ListedKind::Sub).then_some(v),
                })
            })
            .take(limit)
            .collect();
        out.sort_by(|a, b| {
            (a.kind as u8, &a.issuer, &a.value).cmp(&(b.kind as u8, &b.issuer, &b.value))
        });
        out
    }

    /// Watermarks only move forward.
    pub(super) fn put_sub(&self, sub: &Scoped, at: i64) {
        if self.sub.get(sub.as_str()).is_none_or(|old| old < at) {
            self.sub.insert(sub.as_str().to_owned(), at);
        }
    }
}

impl Store for MemoryStore {
    fn lookup_now(&self, keys: Keys<'_>) -> Option<Lookup> {
        Some(self.get(keys))
    }
    fn lookup<'a>(&'a self, keys: Keys<'a>) -> BoxFuture<'a, Result<Lookup, StoreError>> {
        let l = self.get(keys);
        Box::pin(async move { Ok(l) })
    }
    fn revoke_jti<'a>(
        &'a self,
        jti: &'a Scoped,
        until: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put_jti(jti, until);
        Box::pin(async { Ok(()) })
    }
    fn revoke_sub<'a>(&'a self, sub: &'a Scoped, at: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put_sub(sub, at);
        Box::pin(async { Ok(()) })
    }
    fn revoke_sid<'a>(&'a self, sid: &'a Scoped) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put_sid(sid);
        Box::pin(async { Ok(()) })
    }
    fn first_sighting<'a>(
        &'a self,
        key: &'a str,
        until: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let fresh = self.seen.entry(key.to_owned()).or_insert(until).is_fresh();
        Box::pin(async move { Ok(fresh) })
    }
    fn forget_sighting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.seen.invalidate(key);
        Box::pin(async { Ok(()) })
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn unrevoke_jti<'a>(&'a self, jti: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>> {
        let had = self.remove_jti(jti);
        Box::pin(async move { Ok(had) })
    }
    fn unrevoke_sub<'a>(&'a self, sub: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>> {
        let had = self.remove_sub(sub);
        Box::pin(async move { Ok(had) })
    }
    fn unrevoke_sid<'a>(&'a self, sid: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>> {
        let had = self.remove_sid(sid);
        Box::pin(async move { Ok(had) })
    }
    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Listed>, StoreError>> {
        let l = self.entries(filter, limit);
        Box::pin(async move { Ok(l) })
    }
}
