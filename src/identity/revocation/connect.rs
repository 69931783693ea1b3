//! Connections to the shared Redis: one server (`redis://`), whichever server Sentinel
//! names master right now (`redis+sentinel://`), or a Redis Cluster (`redis_cluster`).
//! Finding the master is the redis crate's Sentinel client, routing by slot (MOVED/ASK,
//! node loss) its Cluster client; pooling is deadpool's. This module only builds them from
//! the config and notices when the master moved, so the subscriber can follow.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisResult};

use crate::config::{RedisTarget, Revocation as RevocationConfig};

/// How to reach the current Redis primary.
pub struct Connector {
    kind: Kind,
    /// The address of the primary last connected to (`host:port`).
    master: Mutex<Option<String>>,
    /// Bumped each time a connection goes to a different primary than the one before.
    moves: AtomicU64,
    /// Connections made (to any primary), for `jwtgate_revocation_store_connects_total`.
    pub connects: prometheus_client::metrics::counter::Counter,
}

enum Kind {
    Single(redis::Client),
    /// The redis crate's Sentinel client asks the sentinels for the master of the name and
    /// checks with `ROLE` that the server agrees; it needs `&mut`, hence the lock (held only
    /// while a new connection is made).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The cluster client for commands; plain clients of the seeds for the subscriber
    /// (classic pub/sub: a message published on any node reaches subscribers on every
    /// node), tried in turn.
    Cluster {
        client: redis::cluster::ClusterClient,
        seeds: Vec<redis::Client>,
        next_seed: AtomicUsize,
    },
}

/// A connection to the store: to one server (single, or the Sentinel primary), or to a
/// cluster (the redis crate's cluster connection: one multiplexed connection per node,
/// commands routed by slot).
#[derive(Clone)]
pub enum Conn {
    Node(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A primary of a cluster, by address (as the cluster client names it).
#[derive(Clone, Debug)]
pub struct NodeAddr {
    host: String,
    port: u16,
}

impl Conn {
    /// The nodes a keyspace walk must visit: the one server (`None`), or every primary of
    /// the cluster (a SCAN sees only the keyspace of the node it runs on). The cluster
    /// client sends `PING` to every primary and names each reply by its node's address.
    pub async fn scan_nodes(&mut self) -> RedisResult<Vec<Option<NodeAddr>>> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
        let Conn::Cluster(c) = self else {
            return Ok(vec![None]);
        };
        let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let replies = c.route_command(redis::cmd("PING"), all).await?;
        let redis::Value::Map(replies) = replies else {
            return Err(unexpected("PING on every primary"));
        };
        let mut nodes = Vec::with_capacity(replies.len());
        for (addr, reply) in replies {
            if let redis::Value::ServerError(e) = reply {
                return Err(e.into());
            }
            let addr: String = redis::from_redis_value(addr)?;
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
                .ok_or_else(|| unexpected("a primary's address"))?;
            nodes.push(Some(NodeAddr { host, port }));
        }
        Ok(nodes)
    }

    /// One `SCAN cursor MATCH pattern COUNT 1000` on `node` (from `scan_nodes`): the next
    /// cursor and the keys.
    pub async fn scan_on(
        &mut self,
        node: Option<&NodeAddr>,
        cursor: u64,
        pattern: &str,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        match (self, node) {
            (Conn::Cluster(c), Some(n)) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: n.host.clone(),
                    port: n.port,
                });
                Ok(redis::from_redis_value(c.route_command(scan, to).await?)?)
            }
            (conn, _) => scan.query_async(conn).await,
        }
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "unexpected reply", what.into()))
}

fn tls_certs(pem: &Option<Arc<Vec<u8>>>) -> Option<redis::TlsCertificates> {
    pem.as_ref().map(|p| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(p.to_vec()),
    })
}

impl Connector {
    pub fn new(cfg: &RevocationConfig) -> Result<Connector, String> {
        let bad = |e: redis::RedisError| format!("invalid redis_url: {e}");
        let kind = match &cfg.target {
            RedisTarget::Single => {
                let mut info = cfg.redis_url.as_str().into_connection_info().map_err(bad)?;
                if let Some(p) = &cfg.redis_password {
                    let settings = info.redis_settings().clone().set_password(&p.0);
                    info = info.set_redis_settings(settings);
                }
                let client = match tls_certs(&cfg.redis_ca) {
                    None => redis::Client::open(info),
                    Some(certs) => redis::Client::build_with_tls(info, certs),
                }
                .map_err(bad)?;
                Kind::Single(client)
            }
            RedisTarget::Sentinel {
                tls,
                sentinels,
                master,
                db,
            } => {
                let addrs = sentinels.iter().map(|(host, port)| {
                    if *tls {
                        ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host.clone(), *port)
                    }
                });
                let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(bad)?
                    .set_client_to_redis_db(*db);
                if let Some(p) = &cfg.redis_password {
                    b = b.set_client_to_redis_password(&p.0);
                }
                if let Some(p) = &cfg.sentinel_password {
                    b = b.set_client_to_sentinel_password(&p.0);
                }
                if *tls {
                    b = b
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                    if let Some(certs) = tls_certs(&cfg.redis_ca) {
                        b = b
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                Kind::Sentinel(tokio::sync::Mutex::new(b.build().map_err(bad)?))
            }
            RedisTarget::Cluster { seeds } => {
                let bad = |e: redis::RedisError| format!("invalid redis_cluster: {e}");
                let mut infos = Vec::new();
                for seed in seeds {
                    let mut info = seed.as_str().into_connection_info().map_err(bad)?;
                    if let Some(p) = &cfg.redis_password {
                        let settings = info.redis_settings().clone().set_password(&p.0);
                        info = info.set_redis_settings(settings);
                    }
                    infos.push(info);
                }
                let mut b = redis::cluster::ClusterClient::builder(infos.clone())
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.timeout);
                if let Some(p) = &cfg.redis_password {
                    b = b.password(&p.0);
                }
                if seeds[0].starts_with("rediss://") {
                    b = b.tls(redis::TlsMode::Secure);
                }
                if let Some(certs) = tls_certs(&cfg.redis_ca) {
                    b = b.certs(certs);
                }
                let seeds = infos
                    .into_iter()
                    .map(|i| match tls_certs(&cfg.redis_ca) {
                        None => redis::Client::open(i),
                        Some(certs) => redis::Client::build_with_tls(i, certs),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                Kind::Cluster {
                    client: b.build().map_err(bad)?,
                    seeds,
                    next_seed: AtomicUsize::new(0),
                }
            }
        };
        Ok(Connector {
            kind,
            master: Mutex::new(None),
            moves: AtomicU64::new(0),
            connects: Default::default(),
        })
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self.kind, Kind::Sentinel(_))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// A client for the current primary, where the subscriber subscribes (for Sentinel:
    /// asked of the sentinels now; for a cluster: the next seed, in turn).
    pub async fn primary(&self) -> RedisResult<redis::Client> {
        Ok(match &self.kind {
            Kind::Single(c) => c.clone(),
            Kind::Sentinel(s) => s.lock().await.async_get_client().await?,
            Kind::Cluster {
                seeds, next_seed, ..
            } => seeds[next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len()].clone(),
        })
    }

    fn note_primary(&self, client: &redis::Client) {
        let addr = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => {
                format!("{h}:{p}")
            }
            other => other.to_string(),
        };
        let mut m = self.master.lock().unwrap_or_else(|e| e.into_inner());
        if m.as_deref() != Some(addr.as_str()) {
            if m.is_some() {
                tracing::info!(primary = %addr, "revocation store: new primary");
                self.moves.fetch_add(1, Ordering::AcqRel);
            }
            *m = Some(addr);
        }
    }

    /// The primary last connected to, `host:port`.
    pub fn current_primary(&self) -> Option<String> {
        self.master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes whenever the store's connections start going to another primary.
    pub fn generation(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    /// A new connection to the current primary (or the cluster).
    pub async fn connect(&self) -> RedisResult<Conn> {
        let conn = match &self.kind {
            Kind::Cluster { client, .. } => Conn::Cluster(client.get_async_connection().await?),
            _ => {
                let c = self.primary().await?;
                let conn = c.get_multiplexed_async_connection().await?;
                self.note_primary(&c);
                Conn::Node(conn)
            }
        };
        self.connects.inc();
        Ok(conn)
    }

    /// Whether `conn` still reaches a primary. With Sentinel a demoted primary keeps
    /// answering reads (stale) and refuses writes, so `ROLE` is asked; one server only
    /// needs to answer; a cluster's PING goes to every primary and needs all of them.
    pub async fn check(&self, conn: &mut Conn) -> RedisResult<()> {
        if !self.is_sentinel() {
            return redis::cmd("PING").query_async::<()>(conn).await;
        }
        let role: redis::Value = redis::cmd("ROLE").query_async(conn).await?;
        let is_master = match &role {
            redis::Value::Array(v) => matches!(
                v.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
            ),
            _ => false,
        };
        if is_master {
            Ok(())
        } else {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no longer the primary",
            )))
        }
    }
}

/// deadpool manager over a `Connector`: new connections go to the current primary;
/// recycling checks the connection still reaches one.
pub struct Manager(pub Arc<Connector>);

impl deadpool::managed::Manager for Manager {
    type Type = Conn;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Conn, redis::RedisError> {
        self.0.connect().await
    }

    async fn recycle(
        &self,
        conn: &mut Conn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<redis::RedisError> {
        Ok(self.0.check(conn).await?)
    }
}

pub type Pool = deadpool::managed::Pool<Manager>;

/// A pool of `size` connections to the primary with the configured timeouts (the
/// revocation store's, and the cross-replica refresh coordination's).
pub fn redis_pool(
    connector: Arc<Connector>,
    cfg: &RevocationConfig,
    size: usize,
) -> Result<Pool, String> {
    let mut pc = deadpool::managed::PoolConfig::new(size);
    pc.timeouts.wait = Some(cfg.timeout);
    pc.timeouts.create = Some(cfg.connect_timeout);
    pc.timeouts.recycle = Some(cfg.timeout);
    Pool::builder(Manager(connector))
        .config(pc)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("cannot build the Redis pool: {e}"))
}
