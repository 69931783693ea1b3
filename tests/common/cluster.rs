//! `RedisCluster`: three masters (`redis-server --cluster-enabled yes`), each with
//! `replicas` replicas, joined by `redis-cli --cluster create` on free loopback ports; ready
//! when every node reports `cluster_state:ok` and every replica's link to its master is up.

use std::time::{Duration, Instant};

use super::RedisServer;

/// Every node's arguments; `--cluster-node-timeout 1000`: a dead master is failed over
/// within about two seconds.
const NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--repl-diskless-sync-delay",
    "0",
];

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// A connection to a node, or `None` if it does not answer (killed).
async fn try_conn(n: &RedisServer) -> Option<redis::aio::MultiplexedConnection> {
    super::sentinel::conn(n.port).await
}

async fn info(n: &RedisServer, section: &str) -> String {
    let Some(mut c) = try_conn(n).await else {
        return String::new();
    };
    let mut cmd = redis::cmd(if section == "cluster" {
        "CLUSTER"
    } else {
        "INFO"
    });
    cmd.arg(if section == "cluster" {
        "INFO"
    } else {
        section
    });
    cmd.query_async(&mut c).await.unwrap_or_default()
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub async fn start() -> RedisCluster {
        Self::start_with_replicas(0).await
    }

    /// Three masters with `replicas` replicas each.
    pub async fn start_with_replicas(replicas: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            // The cluster bus port is the node's port + 10000 unless set: above 55535 that
            // is no port at all, so every node gets a free one of its own.
            let [bus] = super::free_ports();
            let bus = bus.to_string();
            let mut args = NODE_ARGS.to_vec();
            args.extend(["--cluster-port", bus.as_str()]);
            nodes.push(RedisServer::start_with(&args).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}); install it: apt-get install -y redis-server")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        assert!(
            c.wait_ok(Duration::from_secs(20)).await,
            "the cluster never became ok"
        );
        c
    }

    /// Wait until every live node reports `cluster_state:ok` and every live replica's link
    /// to its master is up.
    pub async fn wait_ok(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.all_ok().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn all_ok(&self) -> bool {
        for n in &self.nodes {
            if try_conn(n).await.is_none() {
                continue;
            }
            let repl = info(n, "replication").await;
            let ok = info(n, "cluster").await.contains("cluster_state:ok")
                && (repl.contains("role:master") || repl.contains("master_link_status:up"));
            if !ok {
                return false;
            }
        }
        true
    }

    /// The seeds, as `redis_cluster` takes them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Index of the node that holds `key` (live nodes only).
    pub async fn node_of(&self, key: &str) -> usize {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(mut conn) = try_conn(n).await else {
                continue;
            };
            let e: Result<bool, _> = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await;
            // MOVED from the others (replicas included).
            if e == Ok(true) {
                return i;
            }
        }
        panic!("no node holds {key}")
    }

    /// Index of the live master that serves `key`'s slot, whether or not it exists.
    pub async fn owner(&self, key: &str) -> usize {
        match self.try_owner(key).await {
            Some(i) => i,
            None => panic!("no node serves {key}"),
        }
    }

    /// `owner`, or `None` while no live node serves the slot (its master is gone and no
    /// replica was promoted yet).
    pub async fn try_owner(&self, key: &str) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(mut conn) = try_conn(n).await else {
                continue;
            };
            let v: Result<Option<String>, _> =
                redis::cmd("GET").arg(key).query_async(&mut conn).await;
            if v.is_ok() {
                return Some(i);
            }
        }
        None
    }

    /// The role of node `i` (`ROLE`): its master's port if it is a replica, `None` if it
    /// is a master.
    async fn master_of(&self, i: usize) -> Option<u16> {
        let mut c = try_conn(&self.nodes[i]).await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
        match role.as_slice() {
            [redis::Value::BulkString(r), _host, redis::Value::Int(port), ..]
                if r.as_slice() == b"slave" =>
            {
                Some(*port as u16)
            }
            _ => None,
        }
    }

    /// Index of a replica of master `m`.
    pub async fn replica_of(&self, m: usize) -> usize {
        match self.replicas_of(m).await.first() {
            Some(i) => *i,
            None => panic!("node {m} has no replica"),
        }
    }

    /// Indexes of the replicas of master `m`.
    pub async fn replicas_of(&self, m: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            if self.master_of(i).await == Some(self.nodes[m].port) {
                out.push(i);
            }
        }
        out
    }

    /// Whether node `i` is a master now.
    pub async fn is_master(&self, i: usize) -> bool {
        info(&self.nodes[i], "replication")
            .await
            .contains("role:master")
    }

    /// Wait until master `m` sees `n` replicas with their link up.
    pub async fn wait_replicas(&self, m: usize, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let repl = info(&self.nodes[m], "replication").await;
            let online = repl
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            if repl.contains(&format!("connected_slaves:{n}")) && online == n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
