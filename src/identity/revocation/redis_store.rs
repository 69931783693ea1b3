//! The Redis revocation store, shared by every replica: issuer-scoped keys (plus the
//! legacy unscoped ones, read for one release) in one MGET, revocations published on the
//! channel every replica's cache listens to.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::connect::{redis_pool, Conn, Connector, Pool};
use super::{Keys, ListFilter, Listed, ListedKind, Lookup, Store, StoreError};
use crate::config::Revocation as RevocationConfig;
use crate::ids::Scoped;

/// Redis through deadpool-redis. Keys, scoped by the issuer's name:
/// `<prefix>revoked:jti:<issuer>:<jti>` (EXAT exp + leeway), `<prefix>revoked:sub:<issuer>:<sub>`
/// (= T), `<prefix>revoked:sid:<issuer>:<sid>` (= 1, EX subject_ttl_s), channel
/// `<prefix>revocations`; the replay cache of signed messages: `<prefix>seen:<key>`
/// (`SET NX EXAT`). The unscoped keys of earlier releases
/// (`<prefix>revoked:jti:<jti>`, `<prefix>revoked:sub:<sub>`, for every issuer) are still
/// read, in the same MGET, for one release; they are no longer written.
pub struct RedisStore {
    pool: Pool,
    connector: Arc<Connector>,
    /// A multiplexed connection taken from the pool and shared by every command: a pooled
    /// `get()` re-checks the connection with a round trip (UNWATCH + PING) each time, which
    /// would double the cost of every lookup. Dropped on error; the next command takes a
    /// fresh one from the pool.
    shared: arc_swap::ArcSwapOption<Conn>,
    prefix: String,
    subject_ttl: Duration,
    timeout: Duration,
    /// `min_replicas` and `min_replicas_timeout_ms`: revocations end with `WAIT`.
    min_replicas: u32,
    wait_timeout: Duration,
}

/// A revocation as published on the channel (JSON). `issuer` is the `[[issuers]]` name;
/// a message without it comes from a replica of an earlier release (it wrote an unscoped
/// key). `exp` is when the entry ends: the token's `exp` plus the leeway.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Message {
    Jti {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issuer: Option<String>,
        jti: String,
        exp: i64,
    },
    Sub {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issuer: Option<String>,
        sub: String,
        at: i64,
    },
    /// A revoked session (new in this release: always scoped).
    Sid { issuer: String, sid: String },
    /// A jti revocation undone (`DELETE /revocations/jti/<jti>`). Replicas of earlier
    /// releases ignore it as malformed (their cache forgets on its own within `cache_ttl_ms`
    /// for "not revoked", but keeps a "revoked" answer until the token's exp: restart them).
    UndoJti { issuer: String, undo_jti: String },
    /// A subject watermark undone (`DELETE /revocations/sub/<sub>`).
    UndoSub { issuer: String, undo_sub: String },
    /// A session revocation undone (`DELETE /revocations/sid/<sid>`).
    UndoSid { issuer: String, undo_sid: String },
}

/// Glob metacharacters of SCAN MATCH, escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisStore {
    pub fn new(cfg: &RevocationConfig, connector: Arc<Connector>) -> Result<RedisStore, String> {
        let pool = redis_pool(connector.clone(), cfg, cfg.pool_size)?;
        Ok(RedisStore {
            shared: arc_swap::ArcSwapOption::empty(),
            pool,
            connector,
            prefix: cfg.key_prefix.clone(),
            subject_ttl: cfg.subject_ttl,
            timeout: cfg.timeout,
            min_replicas: cfg.min_replicas,
            wait_timeout: cfg.min_replicas_timeout,
        })
    }

    /// How this store reaches its primary (shared with the subscriber).
    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// `<prefix>revoked:jti:<issuer>:<jti>`.
    pub fn jti_key(&self, jti: &Scoped) -> String {
        format!("{}revoked:jti:{jti}", self.prefix)
    }

    /// `<prefix>revoked:sub:<issuer>:<sub>`.
    pub fn sub_key(&self, sub: &Scoped) -> String {
        format!("{}revoked:sub:{sub}", self.prefix)
    }

    /// `<prefix>revoked:sid:<issuer>:<sid>`.
    pub fn sid_key(&self, sid: &Scoped) -> String {
        format!("{}revoked:sid:{sid}", self.prefix)
    }

    /// The unscoped key of earlier releases, read (for every issuer) until the next one.
    pub(super) fn legacy_jti_key(&self, jti: &Scoped) -> String {
        format!("{}revoked:jti:{}", self.prefix, jti.value())
    }

    pub(super) fn legacy_sub_key(&self, sub: &Scoped) -> String {
        format!("{}revoked:sub:{}", self.prefix, sub.value())
    }

    pub fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    pub(super) async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = match self.shared.load_full() {
                Some(c) => (*c).clone(),
                None => {
                    let pooled = self
                        .pool
                        .get()
                        .await
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                    let c = deadpool::managed::Object::take(pooled);
                    self.shared.store(Some(Arc::new(c.clone())));
                    c
                }
            };
            let res = f(conn).await;
            if res.is_err() {
                self.shared.store(None);
            }
            res.map_err(|e| StoreError::Backend(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                // A connection that does not answer in time is not reused.
                self.shared.store(None);
                StoreError::Timeout
            })?
    }

    /// Run `set` (a revocation's SET), then PUBLISH the message; with `min_replicas`, end
    /// the SET's pipeline with `WAIT min_replicas timeout` (see `replicated`) and fail
    /// unless enough replicas confirmed.
    pub(super) async fn publish_with(
        &self,
        set: redis::Cmd,
        msg: &Message,
    ) -> Result<(), StoreError> {
        let payload = serde_json::to_string(msg).map_err(|e| StoreError::Backend(e.to_string()))?;
        if self.connector.is_cluster() {
            // The channel hashes elsewhere than the key, and a cluster pipeline must stay in
            // one slot: the SET (with `min_replicas`, and WAIT in its pipeline), then the
            // PUBLISH (any node; the cluster bus delivers it to subscribers on every node).
            // WAIT names no key, so the client sends the pipeline by the SET's slot, to the
            // key's master, and resends it whole where a MOVED points (a failover, a slot
            // migration): the WAIT always runs on the connection that made the write and
            // counts the replicas of the master that holds it.
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(self.channel()).arg(payload);
            let stored = match self.min_replicas {
                0 => {
                    self.run(|mut c| async move { set.query_async::<()>(&mut c).await })
                        .await
                }
                _ => {
                    let mut pipe = redis::pipe();
                    pipe.add_command(set).ignore();
                    self.replicated(pipe).await
                }
            };
            // Published even when too few replicas confirmed: the master has the key, and
            // every replica's cache should agree with it.
            if let Ok(()) | Err(StoreError::NotReplicated { .. }) = stored {
                self.run(|mut c| async move { publish.query_async::<()>(&mut c).await })
                    .await?;
            }
            return stored;
        }
        let mut pipe = redis::pipe();
        pipe.add_command(set).ignore();
        pipe.cmd("PUBLISH")
            .arg(self.channel())
            .arg(payload)
            .ignore();
        if self.min_replicas == 0 {
            return self
                .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await;
        }
        self.replicated(pipe).await
    }

    /// The writes of `pipe` (replies ignored), then `WAIT min_replicas timeout` in the same
    /// pipeline, on a connection of its own (WAIT blocks the connection it runs on: on the
    /// shared one it would stall every lookup behind it; and it counts the replicas that
    /// have this connection's writes). Fails unless enough replicas confirmed.
    async fn replicated(&self, mut pipe: redis::Pipeline) -> Result<(), StoreError> {
        let wanted = self.min_replicas;
        let ms = self.wait_timeout.as_millis() as u64;
        let work = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            pipe.cmd("WAIT").arg(wanted).arg(ms);
            let acked = pipe.query_async::<(u32,)>(&mut *conn).await.map(|(a,)| a);
            let acked = match acked {
                Ok(a) => a,
                Err(e) => {
                    // Broken or demoted: never hand this connection out again.
                    let _ = deadpool::managed::Object::take(conn);
                    self.shared.store(None);
                    return Err(StoreError::Backend(e.to_string()));
                }
            };
            if acked < wanted {
                return Err(StoreError::NotReplicated { acked, wanted });
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout + self.wait_timeout, work)
            .await
            .map_err(|_| StoreError::Timeout)?
    }
}

impl RedisStore {
    /// DEL `key` and PUBLISH `msg` (in one pipeline on one server); whether the key existed.
    async fn delete_and_publish(&self, key: String, msg: &Message) -> Result<bool, StoreError> {
        let payload = serde_json::to_string(msg).map_err(|e| StoreError::Backend(e.to_string()))?;
        if self.connector.is_cluster() {
            // Key and channel hash to different slots: one command each.
            let mut del = redis::cmd("DEL");
            del.arg(key);
            let deleted: i64 = self
                .run(|mut c| async move { del.query_async(&mut c).await })
                .await?;
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(self.channel()).arg(payload);
            self.run(|mut c| async move { publish.query_async::<()>(&mut c).await })
                .await?;
            return Ok(deleted > 0);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(key);
        pipe.cmd("PUBLISH")
            .arg(self.channel())
            .arg(payload)
            .ignore();
        let (deleted,): (i64,) = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        Ok(deleted > 0)
    }
}

impl Store for RedisStore {
    fn lookup_now(&self, _keys: Keys<'_>) -> Option<Lookup> {
        None
    }

    /// One MGET: the scoped and the legacy key of the subject, then of the jti, then the
    /// session's key (sessions have no legacy key).
    fn lookup<'a>(&'a self, keys: Keys<'a>) -> BoxFuture<'a, Result<Lookup, StoreError>> {
        let Keys { jti, sub, sid } = keys;
        Box::pin(async move {
            let mut keys = Vec::with_capacity(5);
            if let Some(s) = sub {
                keys.extend([self.sub_key(s), self.legacy_sub_key(s)]);
            }
            if let Some(j) = jti {
                keys.extend([self.jti_key(j), self.legacy_jti_key(j)]);
            }
            if let Some(s) = sid {
                keys.push(self.sid_key(s));
            }
            let vals: Vec<Option<String>> = if self.connector.is_cluster() {
                // One GET per key, all sent at once on the multiplexed connection, rather
                // than one MGET: the cluster client splits an MGET by slot and fans it out
                // only over the node connections it already holds; one it is still making
                // or repairing (a new connection, a failover) fails the whole MGET with a
                // "multi-slot results" mismatch. A GET is routed like any one-key command:
                // to the slot's master, or where MOVED points, connecting if need be.
                self.run(|c| {
                    futures_util::future::try_join_all(keys.iter().map(|k| {
                        let mut c = c.clone();
                        let mut get = redis::cmd("GET");
                        get.arg(k);
                        async move { get.query_async::<Option<String>>(&mut c).await }
                    }))
                })
                .await?
            } else {
                let mut cmd = redis::cmd("MGET");
                cmd.arg(&keys);
                self.run(|mut c| async move { cmd.query_async(&mut c).await })
                    .await?
            };
            let mut vals = vals.into_iter();
            let mut next = || vals.next().flatten();
            // An unreadable watermark fails closed: it revokes every token of the subject.
            let mark = |v: Option<String>| v.map(|v| v.trim().parse::<i64>().unwrap_or(i64::MAX));
            let watermark = match sub {
                Some(_) => mark(next()).max(mark(next())),
                None => None,
            };
            let jti_revoked = match jti {
                Some(_) => {
                    let (scoped, legacy) = (next(), next());
                    scoped.is_some() || legacy.is_some()
                }
                None => false,
            };
            let sid_revoked = sid.is_some() && next().is_some();
            Ok(Lookup {
                jti_revoked,
                watermark,
                sid_revoked,
            })
        })
    }

    fn revoke_jti<'a>(
        &'a self,
        jti: &'a Scoped,
        until: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.jti_key(jti);
            let mut set = redis::cmd("SET");
            set.arg(&key).arg("1").arg("EXAT").arg(until);
            self.publish_with(
                set,
                &Message::Jti {
                    issuer: Some(jti.issuer().to_string()),
                    jti: jti.value().to_string(),
                    exp: until,
                },
            )
            .await
        })
    }

    fn revoke_sub<'a>(&'a self, sub: &'a Scoped, at: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.sub_key(sub);
            let mut set = redis::cmd("SET");
            set.arg(&key)
                .arg(at)
                .arg("EX")
                .arg(self.subject_ttl.as_secs().max(1));
            self.publish_with(
                set,
                &Message::Sub {
                    issuer: Some(sub.issuer().to_string()),
                    sub: sub.value().to_string(),
                    at,
                },
            )
            .await
        })
    }

    fn revoke_sid<'a>(&'a self, sid: &'a Scoped) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.sid_key(sid);
            let mut set = redis::cmd("SET");
            set.arg(&key)
                .arg("1")
                .arg("EX")
                .arg(self.subject_ttl.as_secs().max(1));
            self.publish_with(
                set,
                &Message::Sid {
                    issuer: sid.issuer().to_string(),
                    sid: sid.value().to_string(),
                },
            )
            .await
        })
    }

    fn first_sighting<'a>(
        &'a self,
        key: &'a str,
        until: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(format!("{}seen:{key}", self.prefix))
                .arg("1")
                .arg("NX")
                .arg("EXAT")
                .arg(until.max(crate::clock::now_unix() + 1));
            let set: Option<String> = self
                .run(|mut c| async move { cmd.query_async(&mut c).await })
                .await?;
            Ok(set.is_some())
        })
    }

    fn forget_sighting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(format!("{}seen:{key}", self.prefix));
            self.run(|mut c| async move { cmd.query_async::<()>(&mut c).await })
                .await
        })
    }

    fn unrevoke_jti<'a>(&'a self, jti: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let msg = Message::UndoJti {
                issuer: jti.issuer().to_string(),
                undo_jti: jti.value().to_string(),
            };
            self.delete_and_publish(self.jti_key(jti), &msg).await
        })
    }

    fn unrevoke_sub<'a>(&'a self, sub: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let msg = Message::UndoSub {
                issuer: sub.issuer().to_string(),
                undo_sub: sub.value().to_string(),
            };
            self.delete_and_publish(self.sub_key(sub), &msg).await
        })
    }

    fn unrevoke_sid<'a>(&'a self, sid: &'a Scoped) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let msg = Message::UndoSid {
                issuer: sid.issuer().to_string(),
                undo_sid: sid.value().to_string(),
            };
            self.delete_and_publish(self.sid_key(sid), &msg).await
        })
    }

    /// SCAN for the keys (bounded by `limit`), then one pipeline of GET + EXPIRETIME.
    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Listed>, StoreError>> {
        Box::pin(async move {
            let base = format!("{}revoked:", glob_escape(&self.prefix));
            let pattern = match (&filter.sub, &filter.sid) {
                // `*<sub>` also matches the legacy unscoped key; parsing filters the rest.
                (Some(s), _) => format!("{base}sub:*{}", glob_escape(s)),
                (None, Some(s)) => format!("{base}sid:*{}", glob_escape(s)),
                (None, None) => format!("{base}*"),
            };
            // A cluster's keyspace is split over its primaries, and SCAN walks the node it
            // runs on: walk each primary in turn.
            let nodes = self
                .run(|mut c| async move { c.scan_nodes().await })
                .await?;
            let mut keys: Vec<String> = Vec::new();
            'nodes: for node in nodes {
                let mut cursor: u64 = 0;
                loop {
                    let (pattern, node) = (pattern.as_str(), node.as_ref());
                    let (next, batch) = self
                        .run(|mut c| async move { c.scan_on(node, cursor, pattern).await })
                        .await?;
                    keys.extend(batch);
                    cursor = next;
                    if keys.len() >= limit.saturating_mul(4) {
                        break 'nodes;
                    }
                    if cursor == 0 {
                        break;
                    }
                }
            }
            let strip = format!("{}revoked:", self.prefix);
            let parsed: Vec<(ListedKind, Option<String>, String, String)> = keys
                .into_iter()
                .filter_map(|k| {
                    let rest = k.strip_prefix(&strip)?;
                    let (kind, rest) = if let Some(r) = rest.strip_prefix("jti:") {
                        (ListedKind::Jti, r)
                    } else if let Some(r) = rest.strip_prefix("sid:") {
                        (ListedKind::Sid, r)
                    } else {
                        (ListedKind::Sub, rest.strip_prefix("sub:")?)
                    };
                    // Issuer names hold no `:`; a key without one is an earlier release's.
                    let (issuer, value) = match rest.split_once(':') {
                        Some((i, v)) => (Some(i.to_string()), v.to_string()),
                        None => (None, rest.to_string()),
                    };
                    filter
                        .wants(kind, issuer.as_deref(), &value)
                        .then_some((kind, issuer, value, k))
                })
                .take(limit)
                .collect();
            if parsed.is_empty() {
                return Ok(Vec::new());
            }
            // GET + EXPIRETIME per key, all sent at once on the multiplexed connection (a
            // cluster pipeline must stay in one slot, and the keys are spread over them).
            let vals: Vec<(Option<String>, i64)> = self
                .run(|c| {
                    futures_util::future::try_join_all(parsed.iter().map(|(_, _, _, k)| {
                        let mut c = c.clone();
                        let mut pipe = redis::pipe();
                        pipe.cmd("GET").arg(k).cmd("EXPIRETIME").arg(k);
                        async move {
                            let (v, t): (redis::Value, redis::Value) =
                                pipe.query_async(&mut c).await?;
                            let v = redis::from_redis_value::<Option<String>>(v).ok().flatten();
                            Ok((v, redis::from_redis_value::<i64>(t).unwrap_or(-2)))
                        }
                    }))
                })
                .await?;
            let mut out: Vec<Listed> = parsed
                .into_iter()
                .zip(vals)
                // Gone between SCAN and GET: expired or undone.
                .filter(|(_, (v, _))| v.is_some())
                .map(|((kind, issuer, value, _), (v, exp))| Listed {
                    kind,
                    issuer,
                    value,
                    until: (kind != ListedKind::Sub).then_some(exp).filter(|t| *t > 0),
                    revoked_before: (kind == ListedKind::Sub)
                        .then(|| v.and_then(|v| v.trim().parse().ok()))
                        .flatten(),
                })
                .collect();
            out.sort_by(|a, b| {
                (a.kind as u8, &a.issuer, &a.value).cmp(&(b.kind as u8, &b.issuer, &b.value))
            });
            Ok(out)
        })
    }

    /// PING, or with Sentinel `ROLE`: a demoted primary must not keep serving stale reads.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let connector = self.connector.clone();
            self.run(|mut c| async move { connector.check(&mut c).await })
                .await
        })
    }
}
