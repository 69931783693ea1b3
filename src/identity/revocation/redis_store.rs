//! The Redis revocation store, shared by every replica: issuer-scoped keys (plus the
//! legacy unscoped ones, read for one release) in one MGET, revocations published on the
//! channel every replica's cache listens to.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{ListFilter, Listed, ListedKind, Lookup, Store, StoreError};
use crate::config::Revocation as RevocationConfig;
use crate::ids::Scoped;

/// Redis through deadpool-redis. Keys, scoped by the issuer's name:
/// `<prefix>revoked:jti:<issuer>:<jti>` (EXAT exp + leeway), `<prefix>revoked:sub:<issuer>:<sub>`
/// (= T), channel `<prefix>revocations`. The unscoped keys of earlier releases
/// (`<prefix>revoked:jti:<jti>`, `<prefix>revoked:sub:<sub>`, for every issuer) are still
/// read, in the same MGET, for one release; they are no longer written.
pub struct RedisStore {
    pool: deadpool_redis::Pool,
    /// A multiplexed connection taken from the pool and shared by every command: a pooled
    /// `get()` re-checks the connection with a round trip (UNWATCH + PING) each time, which
    /// would double the cost of every lookup. Dropped on error; the next command takes a
    /// fresh one from the pool.
    shared: arc_swap::ArcSwapOption<redis::aio::MultiplexedConnection>,
    prefix: String,
    subject_ttl: Duration,
    timeout: Duration,
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
    /// A jti revocation undone (`DELETE /revocations/jti/<jti>`). Replicas of earlier
    /// releases ignore it as malformed (their cache forgets on its own within `cache_ttl_ms`
    /// for "not revoked", but keeps a "revoked" answer until the token's exp: restart them).
    UndoJti { issuer: String, undo_jti: String },
    /// A subject watermark undone (`DELETE /revocations/sub/<sub>`).
    UndoSub { issuer: String, undo_sub: String },
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

/// A Redis client for `redis_url`; a `rediss://` server is verified against `redis_ca`
/// when set, else against the webpki roots.
pub fn redis_client(cfg: &RevocationConfig) -> Result<redis::Client, String> {
    match &cfg.redis_ca {
        None => redis::Client::open(cfg.redis_url.as_str()),
        Some(pem) => redis::Client::build_with_tls(
            cfg.redis_url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
    }
    .map_err(|e| format!("invalid redis_url: {e}"))
}

/// A deadpool-redis pool of `client`'s connections (see `redis_client`) with the
/// configured timeouts (the revocation store's, and the cross-replica refresh
/// coordination's).
pub fn redis_pool(
    client: &redis::Client,
    cfg: &RevocationConfig,
    size: usize,
) -> Result<deadpool_redis::Pool, String> {
    let mut pc = deadpool_redis::PoolConfig::new(size);
    pc.timeouts.wait = Some(cfg.timeout);
    pc.timeouts.create = Some(cfg.connect_timeout);
    pc.timeouts.recycle = Some(cfg.timeout);
    // The client's connection info carries the TLS roots into every pooled connection.
    let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
        .map_err(|e| format!("invalid redis_url: {e}"))?;
    deadpool_redis::Pool::builder(manager)
        .config(pc)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("cannot build the Redis pool: {e}"))
}

impl RedisStore {
    pub fn new(cfg: &RevocationConfig, client: &redis::Client) -> Result<RedisStore, String> {
        let pool = redis_pool(client, cfg, cfg.pool_size)?;
        Ok(RedisStore {
            shared: arc_swap::ArcSwapOption::empty(),
            pool,
            prefix: cfg.key_prefix.clone(),
            subject_ttl: cfg.subject_ttl,
            timeout: cfg.timeout,
        })
    }

    /// `<prefix>revoked:jti:<issuer>:<jti>`.
    pub fn jti_key(&self, jti: &Scoped) -> String {
        format!("{}revoked:jti:{jti}", self.prefix)
    }

    /// `<prefix>revoked:sub:<issuer>:<sub>`.
    pub fn sub_key(&self, sub: &Scoped) -> String {
        format!("{}revoked:sub:{sub}", self.prefix)
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
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
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
                    let c = deadpool_redis::Connection::take(pooled);
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

    pub(super) async fn publish_with(
        &self,
        mut pipe: redis::Pipeline,
        msg: &Message,
    ) -> Result<(), StoreError> {
        let payload = serde_json::to_string(msg).map_err(|e| StoreError::Backend(e.to_string()))?;
        pipe.cmd("PUBLISH")
            .arg(self.channel())
            .arg(payload)
            .ignore();
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }
}

impl RedisStore {
    /// DEL `key` and PUBLISH `msg` in one pipeline; whether the key existed.
    async fn delete_and_publish(&self, key: String, msg: &Message) -> Result<bool, StoreError> {
        let payload = serde_json::to_string(msg).map_err(|e| StoreError::Backend(e.to_string()))?;
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
    fn lookup_now(&self, _jti: Option<&Scoped>, _sub: Option<&Scoped>) -> Option<Lookup> {
        None
    }

    /// One MGET: the scoped and the legacy key of the subject, then of the jti.
    fn lookup<'a>(
        &'a self,
        jti: Option<&'a Scoped>,
        sub: Option<&'a Scoped>,
    ) -> BoxFuture<'a, Result<Lookup, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("MGET");
            if let Some(s) = sub {
                cmd.arg(self.sub_key(s)).arg(self.legacy_sub_key(s));
            }
            if let Some(j) = jti {
                cmd.arg(self.jti_key(j)).arg(self.legacy_jti_key(j));
            }
            let vals: Vec<Option<String>> = self
                .run(|mut c| async move { cmd.query_async(&mut c).await })
                .await?;
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
            Ok(Lookup {
                jti_revoked,
                watermark,
            })
        })
    }

    fn revoke_jti<'a>(
        &'a self,
        jti: &'a Scoped,
        until: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(self.jti_key(jti))
                .arg("1")
                .arg("EXAT")
                .arg(until)
                .ignore();
            self.publish_with(
                pipe,
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
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(self.sub_key(sub))
                .arg(at)
                .arg("EX")
                .arg(self.subject_ttl.as_secs().max(1))
                .ignore();
            self.publish_with(
                pipe,
                &Message::Sub {
                    issuer: Some(sub.issuer().to_string()),
                    sub: sub.value().to_string(),
                    at,
                },
            )
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

    /// SCAN for the keys (bounded by `limit`), then one pipeline of GET + EXPIRETIME.
    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Listed>, StoreError>> {
        Box::pin(async move {
            let base = format!("{}revoked:", glob_escape(&self.prefix));
            let pattern = match &filter.sub {
                // `*<sub>` also matches the legacy unscoped key; parsing filters the rest.
                Some(s) => format!("{base}sub:*{}", glob_escape(s)),
                None => format!("{base}*"),
            };
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let pattern = pattern.clone();
                let (next, batch): (u64, Vec<String>) = self
                    .run(|mut c| async move {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 || keys.len() >= limit.saturating_mul(4) {
                    break;
                }
            }
            let strip = format!("{}revoked:", self.prefix);
            let parsed: Vec<(ListedKind, Option<String>, String, String)> = keys
                .into_iter()
                .filter_map(|k| {
                    let rest = k.strip_prefix(&strip)?;
                    let (kind, rest) = if let Some(r) = rest.strip_prefix("jti:") {
                        (ListedKind::Jti, r)
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
            let mut pipe = redis::pipe();
            for (_, _, _, k) in &parsed {
                pipe.cmd("GET").arg(k).cmd("EXPIRETIME").arg(k);
            }
            let vals: Vec<(Option<String>, i64)> = self
                .run(|mut c| async move {
                    let flat: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                    Ok(flat
                        .chunks(2)
                        .map(|p| {
                            let v = redis::from_redis_value::<Option<String>>(p[0].clone())
                                .ok()
                                .flatten();
                            let t = redis::from_redis_value::<i64>(p[1].clone()).unwrap_or(-2);
                            (v, t)
                        })
                        .collect())
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
                    until: (kind == ListedKind::Jti).then_some(exp).filter(|t| *t > 0),
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

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
                .await
        })
    }
}
