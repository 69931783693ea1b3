//! `SentinelSet`: a Sentinel-managed Redis for failover tests — one primary, one replica
//! and three sentinels (`redis-server <conf> --sentinel`, what Debian's `redis-sentinel`
//! runs) on free loopback ports. Ready when every sentinel names the primary and knows the
//! replica and the two other sentinels; every wait is on those signals, not on sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::redis_tls::RedisTls;
use super::{free_ports, RedisServer, TempDir};

/// The name the sentinels monitor.
pub const MASTER: &str = "mymaster";

/// Every data node: a replica that (re)joins gets its full sync at once, not after the
/// default 5 s wait for more replicas to share a diskless transfer.
pub const NODE_ARGS: &[&str] = &["--repl-diskless-sync-delay", "0"];

pub struct SentinelSet {
    /// The servers as started: `nodes[0]` was the first primary, `nodes[1]` its replica.
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProc>,
    /// With `start_tls`: every process TLS only, the servers behind a password.
    pub tls: Option<RedisTls>,
    /// The sentinels' own password (`requirepass` of the sentinel processes).
    pub sentinel_password: Option<String>,
}

pub struct SentinelProc {
    pub port: u16,
    child: Option<std::process::Child>,
    conf: PathBuf,
    _dir: TempDir,
}

impl Drop for SentinelProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A connection to the server on `port`, or `None` if it does not answer (killed).
pub(super) async fn conn(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    connect(redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?).await
}

/// `c`'s connection, or `None` if its server does not answer within 500 ms.
pub(super) async fn connect(c: redis::Client) -> Option<redis::aio::MultiplexedConnection> {
    tokio::time::timeout(
        Duration::from_millis(500),
        c.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

/// A `key value key value ...` reply as a map.
fn pairs(v: Vec<String>) -> HashMap<String, String> {
    v.chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

impl SentinelSet {
    /// Primary, replica (in sync), three sentinels (quorum 2, `down-after-milliseconds`
    /// 1000, `failover-timeout` 2000), all agreeing.
    pub async fn start() -> SentinelSet {
        Self::start_with(None, None).await
    }

    /// `start` with every server and sentinel on TLS only (`tls`'s certificate, verified
    /// against its CA by the replica and the sentinels too), the servers behind `tls`'s
    /// password and the sentinels behind `sentinel_password`.
    pub async fn start_tls(tls: RedisTls, sentinel_password: &str) -> SentinelSet {
        Self::start_with(Some(tls), Some(sentinel_password)).await
    }

    async fn start_with(tls: Option<RedisTls>, sentinel_password: Option<&str>) -> SentinelSet {
        let primary = node(tls.as_ref(), NODE_ARGS).await;
        let p = primary.port.to_string();
        let replica = node(
            tls.as_ref(),
            &[NODE_ARGS, &["--replicaof", "127.0.0.1", &p]].concat(),
        )
        .await;
        let set = SentinelSet {
            nodes: vec![primary, replica],
            sentinels: Vec::new(),
            tls,
            sentinel_password: sentinel_password.map(str::to_string),
        };
        assert!(
            set.wait_in_sync(1, Duration::from_secs(10)).await,
            "the replica never synced"
        );
        let mut set = set;
        let ports: [u16; 3] = free_ports();
        for port in ports {
            let s = spawn_sentinel(
                port,
                set.nodes[0].port,
                set.tls.as_ref(),
                set.sentinel_password.as_deref(),
            );
            set.sentinels.push(s);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        'wait: loop {
            assert!(
                Instant::now() < deadline,
                "the sentinels never agreed on the primary, replica and each other"
            );
            for s in &set.sentinels {
                let Some(m) = set.sentinel_master(s.port).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'wait;
                };
                let ok = m.get("num-slaves").map(String::as_str) == Some("1")
                    && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                    && m.get("port") == Some(&p);
                if !ok {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'wait;
                }
            }
            break;
        }
        set
    }

    /// `redis+sentinel://` URL naming the three sentinels (`rediss+sentinel://` with TLS).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let scheme = match self.tls {
            None => "redis",
            Some(_) => "rediss",
        };
        format!("{scheme}+sentinel://{}/{MASTER}/0", hosts.join(","))
    }

    /// A connection to the server on `port` (over TLS, with the password, when the set
    /// has them), or `None` if it does not answer.
    pub async fn node_conn(&self, port: u16) -> Option<redis::aio::MultiplexedConnection> {
        match &self.tls {
            None => conn(port).await,
            Some(t) => t.conn(port, t.password.as_deref()).await,
        }
    }

    /// A connection to the sentinel on `port`, or `None` if it does not answer.
    pub async fn sentinel_conn(&self, port: u16) -> Option<redis::aio::MultiplexedConnection> {
        match &self.tls {
            None => conn(port).await,
            Some(t) => t.conn(port, self.sentinel_password.as_deref()).await,
        }
    }

    async fn sentinel_master(&self, port: u16) -> Option<HashMap<String, String>> {
        let mut c = self.sentinel_conn(port).await?;
        let v: Vec<String> = redis::cmd("SENTINEL")
            .arg("master")
            .arg(MASTER)
            .query_async(&mut c)
            .await
            .ok()?;
        Some(pairs(v))
    }

    /// The primary's port, as the first sentinel that answers names it.
    pub async fn primary_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            let Some(mut c) = self.sentinel_conn(s.port).await else {
                continue;
            };
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async(&mut c)
                .await
                .ok()
                .flatten();
            if let Some((_, port)) = addr {
                return Some(port);
            }
        }
        None
    }

    /// Wait until every live sentinel names `port` as the primary.
    pub async fn wait_primary(&self, port: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let mut all = true;
            for s in &self.sentinels {
                let m = self.sentinel_master(s.port).await;
                if m.as_ref().and_then(|m| m.get("port")) != Some(&port.to_string()) {
                    all = false;
                    break;
                }
            }
            if all {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The node (index into `nodes`) listening on `port`.
    pub fn node_on(&self, port: u16) -> usize {
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// Wait until the primary of the moment sees `n` replicas with a link up.
    pub async fn wait_in_sync(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let port = match self.sentinels.is_empty() {
                true => Some(self.nodes[0].port),
                false => self.primary_port().await,
            };
            if let Some(mut c) = match port {
                Some(p) => self.node_conn(p).await,
                None => None,
            } {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                let online = info
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .count();
                if info.contains("role:master") && online >= n {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// How many of `keys` the current primary holds.
    pub async fn count_keys(&self, keys: &[String]) -> usize {
        let port = self.primary_port().await.expect("no primary");
        let mut c = self.node_conn(port).await.expect("primary unreachable");
        let mut n = 0;
        for k in keys {
            let e: bool = redis::cmd("EXISTS")
                .arg(k)
                .query_async(&mut c)
                .await
                .unwrap();
            n += e as usize;
        }
        n
    }
}

/// A data node, plain or TLS only.
async fn node(tls: Option<&RedisTls>, extra: &[&str]) -> RedisServer {
    match tls {
        None => RedisServer::start_with(extra).await,
        Some(t) => RedisServer::start_tls_only(t, extra).await,
    }
}

/// A sentinel on `port` watching `primary`; with `tls`, on TLS only and talking TLS to the
/// servers and the other sentinels, with the servers' password (`auth-pass`); with
/// `password`, asking it of clients and giving it to the other sentinels (`sentinel-pass`).
fn spawn_sentinel(
    port: u16,
    primary: u16,
    tls: Option<&RedisTls>,
    password: Option<&str>,
) -> SentinelProc {
    let dir = TempDir::new();
    let conf = dir.path().join("sentinel.conf");
    let mut text = format!(
        "bind 127.0.0.1\ndaemonize no\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {primary} 2\nsentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 2000\nsentinel parallel-syncs {MASTER} 1\n",
        dir.path().display()
    );
    match tls {
        None => text.push_str(&format!("port {port}\n")),
        Some(t) => {
            for (k, v) in t.conf_lines(port) {
                text.push_str(&format!("{k} {v}\n"));
            }
            if let Some(pw) = &t.password {
                text.push_str(&format!("sentinel auth-pass {MASTER} {pw}\n"));
            }
        }
    }
    if let Some(pw) = password {
        text.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
    }
    std::fs::write(&conf, text).unwrap();
    let child = std::process::Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server --sentinel ({e}); install it: apt-get install -y redis-server")
        });
    SentinelProc {
        port,
        child: Some(child),
        conf,
        _dir: dir,
    }
}

/// A plain-TCP `PING` to `port`: its reply (`+PONG`, or an error such as `-NOAUTH`), or
/// `None` if nothing answered in plain text (nothing listening, or TLS only).
pub async fn plain_ping(port: u16) -> Option<String> {
    let s = super::raw_exchange_quick(("127.0.0.1", port), b"PING\r\n").await;
    (s.starts_with('+') || s.starts_with('-')).then_some(s)
}
