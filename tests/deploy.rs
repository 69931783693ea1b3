//! The deploy examples an operator copies: the Kubernetes overlays of the edge Deployment
//! for a Sentinel-managed Redis and for a Redis Cluster (deploy/k8s/{sentinel,cluster}).
//! Their gateway.toml must load (with the Secrets' environment variables set and
//! the mounted certificate in place) and name the engine they are for, with `min_replicas`.

mod common;

use std::path::Path;

use common::TempDir;
use jwtgate::config::{Config, RedisTarget};

/// `deploy/k8s/<overlay>/gateway.toml`, loaded as the pod would: its certificate paths
/// pointed at a freshly made pair, the Secrets' variables set.
fn load_overlay(overlay: &str) -> Result<Config, String> {
    load_edited(overlay, |t| t)
}

/// `load_overlay` with the text edited first.
fn load_edited(overlay: &str, edit: impl Fn(String) -> String) -> Result<Config, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/k8s").join(overlay).join("gateway.toml"))
        .unwrap();
    let dir = TempDir::new();
    let (cert, key) = jwtgate::certs::write(dir.path(), &["localhost".into()]).unwrap();
    let text = text
        .replace("/etc/jwtgate/tls/tls.crt", &cert.display().to_string())
        .replace("/etc/jwtgate/tls/tls.key", &key.display().to_string());
    let text = edit(text);
    std::env::set_var("JWTGATE_ADMIN_TOKEN", "admin-token-for-the-deploy-test");
    std::env::set_var("REDIS_PASSWORD", "redis-password-for-the-deploy-test");
    Config::from_str(&dir.path().join("gateway.toml"), &text).map_err(|e| e.to_string())
}

#[test]
fn the_sentinel_overlay_loads_and_follows_the_sentinels() {
    let c = load_overlay("sentinel").unwrap();
    match &c.revocation.target {
        RedisTarget::Sentinel {
            sentinels, master, ..
        } => {
            assert_eq!(sentinels, &[("redis".to_string(), 26379)]);
            assert_eq!(master, "mymaster");
        }
        other => panic!("not Sentinel: {other:?}"),
    }
    assert_eq!(c.revocation.min_replicas, 1);
    assert!(c.revocation.redis_password.is_some() && c.revocation.sentinel_password.is_some());
}

#[test]
fn the_cluster_overlay_loads_with_its_seeds() {
    let c = load_overlay("cluster").unwrap();
    match &c.revocation.target {
        RedisTarget::Cluster { seeds } => {
            assert_eq!(seeds.len(), 3);
            assert!(seeds.iter().all(|s| s.starts_with("redis://")), "{seeds:?}");
        }
        other => panic!("not a cluster: {other:?}"),
    }
    assert_eq!(c.revocation.min_replicas, 1);
    assert!(c.revocation.redis_password.is_some());
}

#[test]
fn an_overlay_without_its_secret_is_refused() {
    let e = load_edited("cluster", |t| {
        t.replace("\"REDIS_PASSWORD\"", "\"JWTGATE_DEPLOY_TEST_UNSET\"")
    })
    .unwrap_err();
    assert!(e.contains("JWTGATE_DEPLOY_TEST_UNSET"), "{e}");
}
