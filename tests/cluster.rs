//! Redis Cluster with real engines: three masters (`redis-server --cluster-enabled yes`,
//! joined by `redis-cli --cluster create`) and two gateway replicas on
//! `[revocation] redis_cluster`. Revocations land on every node (the client routes by slot)
//! and reach the other replica at once over classic pub/sub.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::cluster::RedisCluster;
use common::fleet::{fresh, Fleet};
use common::*;

fn cluster_cfg(c: &RedisCluster) -> String {
    let seeds: Vec<String> = c.seeds().iter().map(|s| format!("\"{s}\"")).collect();
    format!("redis_cluster = [{}]", seeds.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_cross_replicas_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let fleet = Fleet::start(&cluster_cfg(&cluster)).await;
    let r = fleet.readyz(0).await;
    assert_eq!(r["revocation"]["store"], "redis-cluster", "{r}");
    assert_eq!(r["revocation"]["circuit"]["state"], "closed", "{r}");

    // Revoked on A, refused on B; the keys are spread over the nodes.
    let mut nodes = HashSet::new();
    for i in 0..30 {
        let (t, jti, key) = fresh();
        assert_eq!(fleet.call(1, &t).await, Ok(200));
        assert_eq!(fleet.revoke(i % 2, &jti).await, 204);
        // Sooner than B's cached "not revoked" (300 ms) expires: the channel told it.
        let (fleet, t) = (&fleet, &t);
        let heard = eventually(Duration::from_millis(200), || async move {
            fleet.call(1 - i % 2, t).await == Ok(401)
        })
        .await;
        assert!(
            heard.is_some(),
            "revocation {i} never reached the other replica"
        );
        nodes.insert(cluster.node_of(&key).await);
    }
    assert!(nodes.len() >= 2, "every key on one node: {nodes:?}");

    // A gateway started now finds them in the cluster (no memory of its own).
    let mut fleet = fleet;
    let late = fleet.add_gateway().await;
    let (t, jti, _) = fresh();
    assert_eq!(fleet.revoke(0, &jti).await, 204);
    assert_eq!(fleet.call(late, &t).await, Ok(401));
    let (ok, _, _) = fresh();
    assert_eq!(fleet.call(late, &ok).await, Ok(200));
}
