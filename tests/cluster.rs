//! Redis Cluster with real engines: three masters (`redis-server --cluster-enabled yes`,
//! joined by `redis-cli --cluster create`; some tests with a replica each) and two gateway
//! replicas on `[revocation] redis_cluster`. Revocations land on every node (the client
//! routes by slot) and reach the other replica at once over classic pub/sub; a master
//! SIGKILLed and failed over to its replica loses no revocation confirmed with
//! `min_replicas`, whose WAIT counts the replicas of the key's own master; the admin list
//! walks every master; refresh single flight holds across replicas with keys on every node.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

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
        fleet
            .assert_heard(1 - i % 2, &t, &format!("revocation {i}"))
            .await;
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

/// `min_replicas = 1` on a cluster of three masters with a replica each, the confirmation
/// wait short enough for the test.
fn durable_cfg(c: &RedisCluster) -> String {
    format!(
        "{}\nmin_replicas = 1\nmin_replicas_timeout_ms = 300",
        cluster_cfg(c)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_in_the_cluster_loses_no_confirmed_revocation() {
    let mut cluster = RedisCluster::start_with_replicas(1).await;
    let fleet = Fleet::start(&durable_cfg(&cluster)).await;

    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..60 {
        let (t, jti, key) = fresh();
        assert_eq!(fleet.revoke(i % 2, &jti).await, 204, "revocation {i}");
        acked.push((t, key));
    }
    // SIGKILL the master holding the first key; its replica is the heir.
    let dead = cluster.node_of(&acked[0].1).await;
    let heir = cluster.replica_of(dead).await;
    let on_dead = {
        let mut n = 0;
        for (_, k) in &acked {
            n += (cluster.node_of(k).await == dead) as usize;
        }
        n
    };
    let killed = Instant::now();
    cluster.nodes[dead].kill();

    // Revocations go on through the failover: each 204 or 503, never anything else;
    // until the heir is master and the cluster is ok again on every live node.
    let (mut refused, mut during, mut n) = (0, 0, 0);
    let promoted_after = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the replica was never promoted"
        );
        let (t, jti, key) = fresh();
        match fleet.revoke(n % 2, &jti).await {
            204 => {
                acked.push((t, key));
                during += 1;
            }
            503 => refused += 1,
            other => panic!("revocation during the failover answered {other}"),
        }
        n += 1;
        if cluster.is_master(heir).await && cluster.wait_ok(Duration::ZERO).await {
            break killed.elapsed();
        }
    };
    // As an orchestrator would: the dead node comes back (empty) and rejoins as the
    // replica of its heir; then every master has a replica again.
    cluster.nodes[dead].restart().await;
    assert!(
        cluster
            .wait_replicas(heir, 1, Duration::from_secs(20))
            .await,
        "the restarted node never became the heir's replica"
    );
    assert!(cluster.wait_ok(Duration::from_secs(20)).await);

    // Revocations work again on every node, confirmed by a replica (the first may still
    // meet a connection to the dead node; after one 204 they all succeed).
    let first_204 = {
        let fleet = &fleet;
        let mut ok = None;
        let start = Instant::now();
        while ok.is_none() && start.elapsed() < Duration::from_secs(10) {
            let (t, jti, key) = fresh();
            if fleet.revoke(0, &jti).await == 204 {
                ok = Some((t, key));
            }
        }
        ok.expect("no revocation succeeded after the failover")
    };
    acked.push(first_204);
    // Each is answered 204, or 503 with Retry-After (a pooled connection still learning
    // the new slot map, or a slow reply on this shared machine) and then 204 on a retry
    // made when Retry-After says, as a client of the admin API would.
    let mut nodes = HashSet::new();
    let mut retries = 0;
    for i in 0..30 {
        let (t, jti, key) = fresh();
        let mut tries = 0;
        loop {
            let r = fleet.revoke_resp(i % 2, &jti).await;
            if r.status == 204 {
                break;
            }
            tries += 1;
            assert!(
                tries < 8,
                "revocation {i} after: {} 503s: {}",
                tries,
                r.text()
            );
            let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_secs(after)).await;
        }
        retries += tries;
        nodes.insert(cluster.node_of(&key).await);
        acked.push((t, key));
    }
    assert!(nodes.contains(&heir), "no key on the promoted master");

    // Every 204 survived: in the cluster, and refused by both gateways.
    assert_held(&cluster, &fleet, &acked).await;
    println!(
        "cluster failover: {on_dead} of the first 60 keys on the killed master; heir promoted \
         after {promoted_after:?}; during it {during} revocations answered 204 and {refused} \
         503; after it 30 revocations needed {retries} retries; {} confirmed revocations, \
         none lost",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_on_a_cluster_waits_for_the_replica_of_the_keys_master() {
    let cluster = RedisCluster::start_with_replicas(1).await;
    let fleet = Fleet::start(&durable_cfg(&cluster)).await;
    let (_, jti, _) = fresh();
    assert_eq!(fleet.revoke(0, &jti).await, 204);

    // One master loses its replica: revocations whose key it owns cannot be confirmed
    // (503), the others are (204) — WAIT went to the key's own master.
    let (_, _, first) = fresh();
    let lonely = cluster.owner(&first).await;
    let mut cluster = cluster;
    let replica = cluster.replica_of(lonely).await;
    cluster.nodes[replica].kill();
    assert!(
        cluster
            .wait_replicas(lonely, 0, Duration::from_secs(10))
            .await
    );
    let mut seen: HashMap<bool, usize> = HashMap::new();
    let mut i = 0;
    while seen.get(&true).copied().unwrap_or(0) < 3 || seen.get(&false).copied().unwrap_or(0) < 3 {
        assert!(i < 200, "keys never fell on both kinds of master: {seen:?}");
        let (t, jti, key) = fresh();
        let alone = cluster.owner(&key).await == lonely;
        let status = fleet.revoke(i % 2, &jti).await;
        assert_eq!(
            status,
            if alone { 503 } else { 204 },
            "key on master {} (the one without a replica: {lonely})",
            cluster.owner(&key).await
        );
        if !alone {
            assert_eq!(fleet.call(1 - i % 2, &t).await, Ok(401));
        }
        *seen.entry(alone).or_default() += 1;
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_list_shows_revocations_from_every_master() {
    let cluster = RedisCluster::start().await;
    let fleet = Fleet::start(&cluster_cfg(&cluster)).await;
    let mut jtis = HashSet::new();
    let mut nodes = HashSet::new();
    for i in 0..30 {
        let (_, jti, key) = fresh();
        assert_eq!(fleet.revoke(i % 2, &jti).await, 204);
        nodes.insert(cluster.node_of(&key).await);
        jtis.insert(jti);
    }
    assert_eq!(nodes.len(), 3, "the keys missed a master: {nodes:?}");

    let r = fleet.list(1, "limit=100").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["store"], "redis-cluster", "{body}");
    assert_eq!(body["truncated"], false);
    let listed: HashSet<String> = body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "jti", "{e}");
            assert!(
                e["until"].as_i64().unwrap() > jwtgate::auth::now_unix(),
                "{e}"
            );
            e["value"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        listed, jtis,
        "the list missed revocations held by some master"
    );

    // A limit below the count cuts the list and says so.
    let body = fleet.list(0, "limit=10").await.json();
    assert_eq!(body["revocations"].as_array().unwrap().len(), 10);
    assert_eq!(body["truncated"], true);
}

fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two gateways doing edge refresh against one IdP (whose token endpoint answers after
/// 300 ms), coordinating through `cluster`.
struct RefreshFleet {
    idp: MockIdp,
    _up: EchoUpstream,
    gws: [TestGateway; 2],
}

impl RefreshFleet {
    async fn start(cluster: &RedisCluster) -> RefreshFleet {
        let idp = MockIdp::start(vec![]).await;
        let up = EchoUpstream::start().await;
        std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
        let cfg = format!(
            "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nleeway_s = 5\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n[refresh]\ntoken_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\nrefresh_before_s = 60\ntimeout_ms = 2000\n\n[revocation]\nstore = \"redis\"\n{}\n\n{}",
            fixture("rsa.pub.pem").display(),
            idp.token_url(),
            cluster_cfg(cluster),
            route("api", "/api", &[&up.url()], "")
        );
        let gws = [
            TestGateway::start(&cfg).await,
            TestGateway::start(&cfg).await,
        ];
        idp.state()
            .token_delay_ms
            .store(300, std::sync::atomic::Ordering::SeqCst);
        RefreshFleet { idp, _up: up, gws }
    }

    /// Refresh tokens whose coordination keys are served by `n` different masters, for
    /// which `keep(master)` holds: (token, master).
    async fn tokens_on(
        &self,
        cluster: &RedisCluster,
        n: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<(String, usize)> {
        let mut rts: Vec<(String, usize)> = Vec::new();
        for _ in 0..400 {
            let rt = self.idp.issue_refresh_token("alice");
            let node = cluster.owner(&lock_key(&rt)).await;
            if keep(node) && rts.iter().all(|(_, m)| *m != node) {
                rts.push((rt, node));
            }
            if rts.len() == n {
                return rts;
            }
        }
        panic!("no {n} refresh tokens on distinct masters: {rts:?}");
    }

    /// Six concurrent requests per refresh token, alternating between the gateways, all at
    /// once, each carrying an access token about to expire. Asserts every answer is 200 with
    /// the one new access token of its refresh token, and that the IdP's token endpoint
    /// was called once per refresh token.
    async fn refresh_once_each(&self, rts: &[String]) {
        let calls_before = self.idp.token_calls();
        let near_expiry = token(
            "RS256",
            Some("r1"),
            serde_json::json!({"exp": jwtgate::auth::now_unix() + 10}),
        );
        let mut tasks = Vec::new();
        for (k, rt) in rts.iter().enumerate() {
            for j in 0..6 {
                let gw = &self.gws[j % 2];
                let cookie = format!("refresh_token={rt}; access_token={near_expiry}");
                let (cl, url) = (gw.client_plain(), gw.http_url("/api/x"));
                tasks.push((
                    k,
                    tokio::spawn(async move { cl.get(&url, &[("cookie", &cookie)]).await }),
                ));
            }
        }
        let mut fresh_tokens: HashMap<usize, HashSet<String>> = HashMap::new();
        for (k, t) in tasks {
            let resp = t.await.unwrap();
            assert_eq!(resp.status, 200, "{}", resp.text());
            let c = resp
                .headers
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .find(|c| c.starts_with("access_token="))
                .expect("no new access token");
            let v = c.split(';').next().unwrap().split_once('=').unwrap().1;
            fresh_tokens.entry(k).or_default().insert(v.to_string());
        }
        assert_eq!(
            self.idp.token_calls() - calls_before,
            rts.len() as u64,
            "the replicas replayed a refresh token (one call per token expected)"
        );
        for (k, set) in &fresh_tokens {
            assert_eq!(
                set.len(),
                1,
                "token {k}: every request must get the one new token"
            );
        }
    }
}

fn lock_key(rt: &str) -> String {
    format!("jwtgate:{{rt:{}}}:lock", sha256_hex(rt))
}

fn result_key(rt: &str) -> String {
    format!("jwtgate:{{rt:{}}}:result", sha256_hex(rt))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_single_flight_holds_across_replicas_with_keys_on_every_node() {
    let cluster = RedisCluster::start().await;
    let rf = RefreshFleet::start(&cluster).await;
    // Three refresh tokens whose coordination keys live on three different masters.
    let rts = rf.tokens_on(&cluster, 3, |_| true).await;
    let tokens: Vec<String> = rts.iter().map(|(rt, _)| rt.clone()).collect();
    rf.refresh_once_each(&tokens).await;
    // The result sits beside its lock: on the master the lock's slot named.
    for (rt, node) in &rts {
        assert_eq!(cluster.node_of(&result_key(rt)).await, *node);
    }
}

/// The moment a master is replaced, before anything else settles: keys whose slots it
/// served are written where the slots went. A revocation is one pipeline, `SET` + `WAIT`,
/// sent by the key's slot; a pipeline that meets MOVED is resent whole to the node MOVED
/// names (the redis crate's cluster client), so its `WAIT` counts the new master's
/// replicas. The refresh coordination's pipelines (result + lock, in one slot) for tokens
/// whose keys sat on the dead master single-flight as before. Three masters with two
/// replicas each, so the promoted replica keeps one replica (the other follows it) and
/// `min_replicas = 1` can be met without restarting the dead node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_after_a_promotion_the_dead_masters_slots_are_rerouted() {
    let mut cluster = RedisCluster::start_with_replicas(2).await;
    let fleet = Fleet::start(&durable_cfg(&cluster)).await;
    let rf = RefreshFleet::start(&cluster).await;

    // Every gateway's connections learn the slot map as it is now.
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..12 {
        let (t, jti, key) = fresh();
        assert_eq!(
            fleet.revoke(i % 2, &jti).await,
            204,
            "revocation {i} before"
        );
        acked.push((t, key));
    }
    let warm = rf.tokens_on(&cluster, 3, |_| true).await;
    rf.refresh_once_each(&warm.into_iter().map(|(rt, _)| rt).collect::<Vec<_>>())
        .await;

    // The victim, and what will be asked of its slots once it is gone.
    let dead = cluster.owner(&acked[0].1).await;
    let heirs = cluster.replicas_of(dead).await;
    assert_eq!(heirs.len(), 2, "master {dead} has replicas {heirs:?}");
    let mut doomed = Vec::new();
    while doomed.len() < 20 {
        let (t, jti, key) = fresh();
        if cluster.owner(&key).await == dead {
            doomed.push((t, jti, key));
        }
    }
    let rts: Vec<String> = rf
        .tokens_on(&cluster, 1, |m| m == dead)
        .await
        .into_iter()
        .map(|(rt, _)| rt)
        .collect();

    let killed = Instant::now();
    cluster.nodes[dead].kill();
    // Promoted: a replica of the dead master serves its slots (the rest may still settle).
    let heir = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no replica of master {dead} was promoted"
        );
        if let Some(owner) = cluster.try_owner(&doomed[0].2).await {
            assert!(
                heirs.contains(&owner),
                "slot went to {owner}, not {heirs:?}"
            );
            break owner;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let promoted_after = killed.elapsed();

    // At once: revocations of keys in the dead master's slots, through both gateways.
    let mut retries = 0;
    let mut first_204_after = None;
    for (i, (t, jti, key)) in doomed.into_iter().enumerate() {
        retries += fleet.revoke_retrying(i % 2, &jti, 15).await;
        first_204_after.get_or_insert(killed.elapsed());
        assert_eq!(
            cluster.node_of(&key).await,
            heir,
            "revocation {i} is not on the promoted master"
        );
        acked.push((t, key));
    }
    // The refresh coordination's keys of the dead master's slots, too.
    rf.refresh_once_each(&rts).await;
    assert_eq!(cluster.node_of(&result_key(&rts[0])).await, heir);

    // Every 204 is in the cluster, and refused by both gateways.
    assert_held(&cluster, &fleet, &acked).await;
    println!(
        "right after a promotion: heir serving the slots {promoted_after:?} after the kill; \
         first of 20 revocations in those slots confirmed {:?} after the kill, {retries} \
         retries (503 + Retry-After) in all; refresh single flight held for a token there",
        first_204_after.unwrap()
    );
}

/// Every acknowledged revocation is in the cluster (`node_of` panics if no node holds its
/// key) and refused by both gateways.
async fn assert_held(cluster: &RedisCluster, fleet: &Fleet, acked: &[(String, String)]) {
    for (_, key) in acked {
        cluster.node_of(key).await;
    }
    fleet
        .assert_refused(&[0, 1], acked.iter().map(|(t, _)| t))
        .await;
}
