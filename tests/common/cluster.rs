//! `RedisCluster`: three masters (`redis-server --cluster-enabled yes`) joined by
//! `redis-cli --cluster create`, on free loopback ports; ready when every node reports
//! `cluster_state:ok`.

use std::time::{Duration, Instant};

use super::RedisServer;

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                ])
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &c.nodes {
            loop {
                assert!(Instant::now() < deadline, "the cluster never became ok");
                let mut conn = n.conn().await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        c
    }

    /// The seeds, as `redis_cluster` takes them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Index of the node that holds `key`.
    pub async fn node_of(&self, key: &str) -> usize {
        for (i, n) in self.nodes.iter().enumerate() {
            let mut conn = n.conn().await;
            let e: Result<bool, _> = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await;
            // MOVED from the others.
            if e == Ok(true) {
                return i;
            }
        }
        panic!("no node holds {key}")
    }
}
