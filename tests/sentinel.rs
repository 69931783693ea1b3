//! Redis Sentinel with real engines: one primary, one replica, three sentinels and two
//! gateway replicas (`redis_url = "redis+sentinel://..."`). The primary is SIGKILLed while
//! revocations keep coming; with `min_replicas = 1` no revocation answered 204 is lost, and
//! the gateways follow the new primary (store, subscriber, readiness) without a restart.
//! Without `min_replicas` the test prints whether one was lost: why the option exists.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::{fresh, Fleet};
use common::sentinel::{SentinelSet, NODE_ARGS};
use common::*;

/// Calls both gateways with a valid, never revoked token until stopped; every answer's
/// status (or the transport error).
fn keep_calling(
    fleet: Arc<Fleet>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<u16, String>>> {
    tokio::spawn(async move {
        let (t, _, _) = fresh();
        let mut seen = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            seen.push(fleet.call(i % 2, &t).await);
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

/// What happened around one failover.
struct Failover {
    /// Tokens whose revocation was answered 204, and their keys.
    acked: Vec<(String, String)>,
    /// Revocations answered 503 while the store could not confirm them.
    refused: usize,
    /// From the SIGKILL until every sentinel named the new primary.
    promoted_after: Duration,
    /// From the SIGKILL until the first revocation (sent after it) answered 204.
    first_204_after: Duration,
    /// Answers to the steady caller, during the whole run.
    served: Vec<Result<u16, String>>,
}

/// Revoke `before` tokens, SIGKILL the primary, keep revoking (alternating gateways)
/// through the failover; restart the dead node as a replica of the new primary once the
/// sentinels have promoted (as an orchestrator would), and go on until `after` revocations
/// made after the kill were answered 204.
async fn failover(
    set: &mut SentinelSet,
    fleet: Arc<Fleet>,
    before: usize,
    after: usize,
) -> Failover {
    let mut acked = Vec::new();
    for i in 0..before {
        let (t, jti, key) = fresh();
        assert_eq!(
            fleet.revoke(i % 2, &jti).await,
            204,
            "revocation {i} before the kill"
        );
        acked.push((t, key));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let caller = keep_calling(fleet.clone(), stop.clone());

    let old = set.primary_port().await.expect("no primary");
    let dead = set.node_on(old);
    let survivor = set.nodes[1 - dead].port;
    let killed = Instant::now();
    set.nodes[dead].kill(); // SIGKILL

    let mut refused = 0;
    let mut promoted_after = None;
    let mut first_204_after = None;
    let mut since = 0;
    let mut n = 0;
    while since < after {
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "no revocation succeeded within 40 s of the kill ({refused} refused)"
        );
        let (t, jti, key) = fresh();
        match fleet.revoke(n % 2, &jti).await {
            204 => {
                acked.push((t, key));
                since += 1;
                first_204_after.get_or_insert(killed.elapsed());
            }
            503 => refused += 1,
            other => panic!("revocation during the failover answered {other}"),
        }
        n += 1;
        if promoted_after.is_none() && set.primary_port().await == Some(survivor) {
            assert!(set.wait_primary(survivor, Duration::from_secs(10)).await);
            promoted_after = Some(killed.elapsed());
            let p = survivor.to_string();
            set.nodes[dead]
                .restart_with(&[NODE_ARGS, &["--replicaof", "127.0.0.1", &p]].concat())
                .await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let served = caller.await.unwrap();
    Failover {
        acked,
        refused,
        promoted_after: promoted_after.expect("the sentinels never promoted the replica"),
        first_204_after: first_204_after.unwrap(),
        served,
    }
}

/// The steady caller was answered throughout: 200, or 503 while no primary answered (never
/// a transport error, never "revoked" for its valid token); and both gateways are ready and
/// serve it again (readiness, then a request).
async fn assert_served(fleet: &Fleet, served: &[Result<u16, String>]) {
    let unavailable = served.iter().filter(|s| **s == Ok(503)).count();
    for s in served {
        assert!(
            matches!(s, Ok(200) | Ok(503)),
            "a gateway answered {s:?} during the failover"
        );
    }
    let (t, _, _) = fresh();
    for i in 0..2 {
        let ready = eventually(Duration::from_secs(10), || async move {
            fleet.readyz(i).await["ready"] == true
        })
        .await;
        assert!(
            ready.is_some(),
            "gateway {i} never ready after the failover"
        );
        assert_eq!(fleet.call(i, &t).await, Ok(200), "gateway {i} not serving");
    }
    println!(
        "steady caller: {} requests, {unavailable} answered 503 (no primary), the rest 200",
        served.len()
    );
}

/// Both gateways follow the new primary: ready, circuit closed, connected to it.
async fn assert_followed(fleet: &Fleet, new_primary: u16) {
    for i in 0..2 {
        let r = fleet.readyz(i).await;
        assert_eq!(r["ready"], true, "{r}");
        assert_eq!(r["revocation"]["circuit"]["state"], "closed", "{r}");
        assert_eq!(
            r["revocation"]["circuit"]["primary"],
            format!("127.0.0.1:{new_primary}"),
            "{r}"
        );
    }
}

/// Every revocation answered 204 is in the (new) primary.
async fn assert_kept(set: &SentinelSet, f: &Failover) {
    let keys: Vec<String> = f.acked.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(
        set.count_keys(&keys).await,
        keys.len(),
        "an acknowledged revocation was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_revocation_is_lost_in_a_failover_with_min_replicas() {
    let mut set = SentinelSet::start().await;
    let fleet = Arc::new(
        Fleet::start(&format!(
            "redis_url = \"{}\"\nmin_replicas = 1\nmin_replicas_timeout_ms = 300",
            set.url()
        ))
        .await,
    );
    let first_primary = set.primary_port().await.unwrap();
    let r = fleet.readyz(0).await;
    assert_eq!(r["revocation"]["store"], "redis-sentinel");
    assert_eq!(r["revocation"]["circuit"]["state"], "closed");
    assert_eq!(
        r["revocation"]["circuit"]["primary"],
        format!("127.0.0.1:{first_primary}")
    );

    let f = failover(&mut set, fleet.clone(), 100, 20).await;
    let new_primary = set.primary_port().await.unwrap();
    assert_ne!(new_primary, first_primary);

    assert_served(&fleet, &f.served).await;
    assert_followed(&fleet, new_primary).await;

    // Every 204 survived: in the new primary, and refused by both gateways and by one
    // started now, which knows nothing but what the store holds.
    assert_kept(&set, &f).await;
    let mut fleet = Arc::into_inner(fleet).unwrap();
    let late = fleet.add_gateway().await;
    fleet
        .assert_refused(&[0, 1, late], f.acked.iter().map(|(t, _)| t))
        .await;
    // The subscriber followed too: a revocation on one gateway reaches the other's cache.
    let (t, jti, _) = fresh();
    assert_eq!(fleet.call(1, &t).await, Ok(200));
    // With min_replicas = 1 the new primary takes a write only once a replica has
    // re-attached to it, which can come a moment after the gateways followed it: a 503
    // with Retry-After until then, as for any client (seen once in CI).
    fleet.revoke_retrying(0, &jti, 15).await;
    // Sooner than its cached "not revoked" (300 ms) expires: the channel told it.
    let fleet = &fleet;
    let t = &t;
    assert!(
        eventually(Duration::from_millis(200), || async move {
            fleet.call(1, t).await == Ok(401)
        })
        .await
        .is_some(),
        "the other gateway never heard of the revocation"
    );

    println!(
        "min_replicas = 1: {} revocations answered 204 ({} after the kill), {} answered 503; \
         sentinels promoted after {:?}; first 204 after the kill at {:?}; none lost",
        f.acked.len(),
        f.acked.len() - 100,
        f.refused,
        f.promoted_after,
        f.first_204_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_min_replicas_the_failover_is_followed_and_losses_are_reported() {
    let mut set = SentinelSet::start().await;
    let fleet = Arc::new(Fleet::start(&format!("redis_url = \"{}\"", set.url())).await);
    let f = failover(&mut set, fleet.clone(), 100, 20).await;
    assert_served(&fleet, &f.served).await;
    for i in 0..2 {
        assert_eq!(fleet.readyz(i).await["ready"], true);
    }
    let keys: Vec<String> = f.acked.iter().map(|(_, k)| k.clone()).collect();
    let kept = set.count_keys(&keys).await;
    // Documentation, not an assertion: asynchronous replication on loopback usually keeps
    // up, but nothing guarantees it; what a 204 promises is only that the primary had it.
    let lost = keys.len() - kept;
    println!(
        "min_replicas = 0: {} revocations answered 204; {} lost in the failover; {} answered 503; \
         sentinels promoted after {:?}; first 204 after the kill at {:?}",
        keys.len(),
        lost,
        f.refused,
        f.promoted_after,
        f.first_204_after
    );
}

const TLS_REDIS_PW_ENV: &str = "JWTGATE_TEST_TLS_REDIS_PASSWORD";
const TLS_SENTINEL_PW_ENV: &str = "JWTGATE_TEST_TLS_SENTINEL_PASSWORD";

/// `[revocation]` keys for a `rediss+sentinel://` set: its URL, `redis_ca` = `ca`, both
/// passwords from the environment.
fn tls_cfg(set: &SentinelSet, ca: &std::path::Path) -> String {
    format!(
        "redis_url = \"{}\"\nredis_ca = \"{}\"\nredis_password_env = \"{TLS_REDIS_PW_ENV}\"\nsentinel_password_env = \"{TLS_SENTINEL_PW_ENV}\"\nmin_replicas = 1\nmin_replicas_timeout_ms = 300",
        set.url(),
        ca.display()
    )
}

/// Every process TLS only (`--port 0`): primary, replica and three sentinels, replication
/// and monitoring over TLS, servers and sentinels behind passwords. The gateways reach them
/// with `rediss+sentinel://` verified against `redis_ca`: revocations are confirmed (204),
/// refused by both gateways, heard over pub/sub, and survive a failover the gateways
/// follow over TLS. A gateway whose `redis_ca` did not sign the servers' certificate is
/// not ready, refuses authenticated requests (503) and says why in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_sentinel_with_redis_ca_on_tls_only_engines() {
    use common::redis_tls::{unrelated_ca, RedisTls};
    let (redis_pw, sentinel_pw) = ("redis-pw-7f3a", "sentinel-pw-91c2");
    std::env::set_var(TLS_REDIS_PW_ENV, redis_pw);
    std::env::set_var(TLS_SENTINEL_PW_ENV, sentinel_pw);
    let tls = RedisTls::new(Some(redis_pw));
    let mut set = SentinelSet::start_tls(tls.clone(), sentinel_pw).await;
    assert!(set.url().starts_with("rediss+sentinel://"));
    // Nothing answers in plain text: the servers and sentinels speak TLS only.
    for port in set
        .nodes
        .iter()
        .map(|n| n.port)
        .chain(set.sentinels.iter().map(|s| s.port))
    {
        assert!(
            common::sentinel::plain_ping(port).await.is_none(),
            "port {port} answered in plain text"
        );
    }

    let fleet = Arc::new(Fleet::start(&tls_cfg(&set, &tls.ca)).await);
    let primary = set.primary_port().await.unwrap();
    for i in 0..2 {
        let r = fleet.readyz(i).await;
        assert_eq!(r["revocation"]["store"], "redis-sentinel", "{r}");
        assert_eq!(r["revocation"]["circuit"]["state"], "closed", "{r}");
        assert_eq!(
            r["revocation"]["circuit"]["primary"],
            format!("127.0.0.1:{primary}"),
            "{r}"
        );
    }
    // Revoked on one gateway over TLS, heard by the other over the TLS subscription
    // sooner than its cached "not revoked" (300 ms) expires.
    for i in 0..5 {
        let (t, jti, _) = fresh();
        assert_eq!(fleet.call(1 - i % 2, &t).await, Ok(200));
        assert_eq!(fleet.revoke(i % 2, &jti).await, 204, "revocation {i}");
        assert_eq!(fleet.call(i % 2, &t).await, Ok(401));
        fleet
            .assert_heard(1 - i % 2, &t, &format!("revocation {i}"))
            .await;
    }

    // A failover over TLS: the gateways find the promoted replica through the sentinels.
    let f = failover(&mut set, fleet.clone(), 20, 10).await;
    let new_primary = set.primary_port().await.unwrap();
    assert_ne!(new_primary, primary);
    assert_served(&fleet, &f.served).await;
    assert_followed(&fleet, new_primary).await;
    assert_kept(&set, &f).await;
    fleet
        .assert_refused(&[0, 1], f.acked.iter().map(|(t, _)| t))
        .await;
    println!(
        "rediss+sentinel: {} revocations answered 204 ({} after the kill), {} answered 503; \
         promoted after {:?}; first 204 after the kill at {:?}; none lost",
        f.acked.len(),
        f.acked.len() - 20,
        f.refused,
        f.promoted_after,
        f.first_204_after
    );

    // The wrong CA: the binary, as an operator runs it, with every other key the same.
    let dir = common::TempDir::new();
    let wrong = unrelated_ca(dir.path());
    let up = EchoUpstream::start().await;
    let body = format!(
        "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n[revocation]\nstore = \"redis\"\ntimeout_ms = 200\non_error = \"deny\"\n{}\n\n{}",
        fixture("rsa.pub.pem").display(),
        tls_cfg(&set, &wrong),
        route("api", "/api", &[&up.url()], "")
    );
    let gw = common::bin::BinGateway::start_env(
        "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
        "",
        &body,
        &[
            (TLS_REDIS_PW_ENV, redis_pw),
            (TLS_SENTINEL_PW_ENV, sentinel_pw),
        ],
    );
    let (t, _, _) = fresh();
    let c = Client::plain();
    let resp = c
        .get(
            &format!("http://{}/api/x", gw.http),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.json()["error"], "revocation_unavailable");
    let ready = c.get(&format!("http://{}/readyz", gw.admin), &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["revocation"]["circuit"]["state"], "open");
    // The probe has run (and logged why) once it set its retry delay.
    let probed = eventually(Duration::from_secs(5), || async {
        let r = c.get(&format!("http://{}/readyz", gw.admin), &[]).await;
        r.json()["revocation"]["circuit"]["probe_delay_ms"].as_u64() > Some(0)
    })
    .await;
    assert!(probed.is_some(), "the store's probe never ran");
    let before = gw.before.clone();
    let logs: Vec<String> = before.into_iter().chain(gw.stop().await).collect();
    let said = logs
        .iter()
        .filter(|l| l.contains("revocation"))
        .find(|l| l.contains("certificate") || l.contains("UnknownIssuer"));
    assert!(
        said.is_some(),
        "no log line says the certificate was not trusted: {logs:#?}"
    );
    println!("wrong redis_ca: {}", said.unwrap());
    for l in &logs {
        assert!(
            !l.contains(redis_pw) && !l.contains(sentinel_pw),
            "a password in the log: {l}"
        );
    }
}
