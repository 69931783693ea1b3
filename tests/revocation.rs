//! Revocation through the real gateway with both stores: jti blacklist, subject watermarks,
//! admin API, logout, two replicas on one real redis-server, Redis outages and recovery.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

struct Rig {
    up: EchoUpstream,
    gw: TestGateway,
    admin_token: String,
}

/// A gateway with one authenticated route, logout, and the given `[revocation]` body.
async fn rig(revocation: &str) -> Rig {
    rig_with(revocation, "").await
}

/// `rig` with extra `[server]` keys.
async fn rig_with(revocation: &str, server_extra: &str) -> Rig {
    let r = rig_nowait(revocation, server_extra).await;
    r.gw.wait_ready().await;
    r
}

/// `rig_with`, not waiting for readiness (to see a store that never answers).
async fn rig_nowait(revocation: &str, server_extra: &str) -> Rig {
    rig_issuers(
        &issuer("s", "https://idp.test", "r1", "RS256", "rsa.pub.pem"),
        revocation,
        server_extra,
    )
    .await
}

/// An `[[issuers]]` entry with one static key.
fn issuer(name: &str, iss: &str, kid: &str, alg: &str, pem: &str) -> String {
    format!(
        "[[issuers]]\nname = \"{name}\"\nissuer = \"{iss}\"\naudiences = [\"api\"]\nkeys = [{{ kid = \"{kid}\", alg = \"{alg}\", pem = \"{}\" }}]\n\n",
        fixture(pem).display()
    )
}

/// Issuer B of the two-issuer rig: its own `iss` and an ES256 key.
const B_ISS: &str = "https://other.test";

/// Issuers "a" (`https://idp.test`, RS256 `r1`) and "b" (`B_ISS`, ES256 `e1`).
fn two_issuers() -> String {
    issuer("a", "https://idp.test", "r1", "RS256", "rsa.pub.pem")
        + &issuer("b", B_ISS, "e1", "ES256", "ec.pub.pem")
}

/// A token of issuer B.
fn b_token(claims: serde_json::Value) -> String {
    let mut c = json!({"iss": B_ISS});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    token("ES256", Some("e1"), c)
}

/// A gateway with `issuers`, one authenticated route, logout, and the `[revocation]` body;
/// not waiting for readiness.
async fn rig_issuers(issuers: &str, revocation: &str, server_extra: &str) -> Rig {
    let up = EchoUpstream::start().await;
    std::env::set_var(HS_ENV, HS_SECRET);
    let (var, value) = admin_env();
    let cfg = format!(
        "[admin]\ntoken_env = \"{var}\"\n\n{issuers}[revocation]\n{revocation}\n\n[refresh]\nlogout_path = \"/logout\"\n\n{}",
        route("api", "/api", &[&up.url()], "")
    );
    let gw = TestGateway::start_nowait(&cfg, server_extra).await;
    Rig {
        up,
        gw,
        admin_token: value,
    }
}

fn redis_cfg(r: &RedisServer, extra: &str) -> String {
    format!(
        "store = \"redis\"\nredis_url = \"{}\"\ncache_ttl_ms = 300\ntimeout_ms = 200\n{extra}",
        r.url()
    )
}

impl Rig {
    async fn call(&self, t: &str) -> Resp {
        self.call_with(t, &[]).await
    }

    /// `call` from the client address `ip` (for a gateway that trusts one proxy hop).
    async fn call_from(&self, t: &str, ip: &str) -> Resp {
        self.call_with(t, &[("x-forwarded-for", ip)]).await
    }

    async fn call_with(&self, t: &str, extra: &[(&str, &str)]) -> Resp {
        let b = format!("Bearer {t}");
        let mut h = vec![("authorization", b.as_str())];
        h.extend_from_slice(extra);
        self.gw
            .client_plain()
            .get(&self.gw.http_url("/api/x"), &h)
            .await
    }

    async fn admin(&self, method: Method, path: &str, auth: Option<&str>, body: &str) -> Resp {
        self.gw.admin_call(method, path, auth, body).await
    }

    /// Revoke `t`'s jti through the admin API and see it refused; returns its claims.
    async fn revoke_and_refuse(&self, t: &str) -> serde_json::Value {
        let c = claims_of(t);
        let resp = self.revoke(json!({"jti": c["jti"], "exp": c["exp"]})).await;
        assert_eq!(resp.status, 204, "{}", resp.text());
        assert_eq!(self.call(t).await.status, 401);
        c
    }

    /// `POST /logout` with `t` as the bearer token.
    async fn logout(&self, t: &str) -> Resp {
        let b = format!("Bearer {t}");
        self.gw
            .client_plain()
            .send(
                Method::POST,
                &self.gw.http_url("/logout"),
                &[("authorization", &b)],
                jwtgate::body::empty(),
            )
            .await
    }

    async fn revoke(&self, body: serde_json::Value) -> Resp {
        self.admin(
            Method::POST,
            "/revocations",
            Some(&self.admin_token),
            &body.to_string(),
        )
        .await
    }
}

// === the same cases on both stores ===

async fn jti_revocation_case(r: Rig) {
    let victim = token("RS256", Some("r1"), json!({}));
    let other = token("RS256", Some("r1"), json!({}));
    assert_eq!(r.call(&victim).await.status, 200);
    let c = claims_of(&victim);
    let resp = r.revoke(json!({"jti": c["jti"], "exp": c["exp"]})).await;
    assert_eq!(resp.status, 204, "{}", resp.text());
    let resp = r.call(&victim).await;
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("token revoked"));
    assert_eq!(r.call(&other).await.status, 200);
    let jti = c["jti"].as_str().unwrap();
    let got = r
        .admin(Method::GET, &format!("/revocations/jti/{jti}"), None, "")
        .await;
    assert_eq!(
        (got.status, got.json()["revoked"].clone()),
        (200, json!(true))
    );
    assert_eq!(
        r.admin(Method::GET, "/revocations/jti/never-revoked", None, "")
            .await
            .status,
        404
    );
}

async fn subject_watermark_case(r: Rig) {
    let now = jwtgate::auth::now_unix();
    let old = token("RS256", Some("r1"), json!({"iat": now - 60}));
    let no_iat = token("RS256", Some("r1"), json!({"iat": null}));
    let bob = token("RS256", Some("r1"), json!({"sub": "bob", "iat": now - 60}));
    assert_eq!(r.call(&old).await.status, 200);
    assert_eq!(r.revoke(json!({"sub": "alice"})).await.status, 204);
    assert_eq!(r.call(&old).await.status, 401);
    assert_eq!(
        r.call(&no_iat).await.status,
        401,
        "a token without iat cannot prove it is newer"
    );
    assert_eq!(r.call(&bob).await.status, 200, "other subjects unaffected");
    let fresh = token("RS256", Some("r1"), json!({"iat": now + 2}));
    assert_eq!(
        r.call(&fresh).await.status,
        200,
        "a token minted after the watermark passes"
    );
}

async fn logout_case(r: Rig) {
    let t = token("RS256", Some("r1"), json!({}));
    let b = format!("Bearer {t}");
    let cl = r.gw.client_plain();
    assert_eq!(
        cl.send(
            Method::POST,
            &r.gw.http_url("/logout"),
            &[],
            jwtgate::body::empty()
        )
        .await
        .status,
        401
    );
    let resp = cl
        .send(
            Method::POST,
            &r.gw.http_url("/logout"),
            &[("authorization", &b)],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(resp.status, 204);
    let cookies: Vec<&str> = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    for name in ["access_token=;", "refresh_token=;"] {
        let c = cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not cleared: {cookies:?}"));
        assert!(
            c.contains("Max-Age=0")
                && c.contains("HttpOnly")
                && c.contains("Secure")
                && c.contains("Path=/"),
            "{c}"
        );
    }
    assert_eq!(
        r.call(&t).await.status,
        401,
        "the logged-out token is revoked"
    );
    assert_eq!(r.up.count(), 0, "logout is answered by the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_jti() {
    jti_revocation_case(rig("store = \"memory\"").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_jti() {
    let redis = RedisServer::start().await;
    jti_revocation_case(rig(&redis_cfg(&redis, "")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_subject_watermark() {
    subject_watermark_case(rig("store = \"memory\"").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_subject_watermark() {
    let redis = RedisServer::start().await;
    subject_watermark_case(rig(&redis_cfg(&redis, "")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_logout() {
    logout_case(rig("store = \"memory\"").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_logout() {
    let redis = RedisServer::start().await;
    logout_case(rig(&redis_cfg(&redis, "")).await).await;
}

// === Redis specifics ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_expire_with_the_token_and_follow_the_spec_names() {
    let redis = RedisServer::start().await;
    let r = rig(&redis_cfg(
        &redis,
        "key_prefix = \"gw1:\"\nsubject_ttl_s = 7200",
    ))
    .await;
    let t = token("RS256", Some("r1"), json!({}));
    let c = claims_of(&t);
    assert_eq!(
        r.revoke(json!({"jti": c["jti"], "exp": c["exp"]}))
            .await
            .status,
        204
    );
    assert_eq!(r.revoke(json!({"sub": "carol"})).await.status, 204);
    let mut conn = redis.conn().await;
    // Scoped by the issuer's name ("s"); kept until exp + leeway_s (30).
    let key = format!("gw1:revoked:jti:s:{}", c["jti"].as_str().unwrap());
    let expire_at: i64 = redis::cmd("EXPIRETIME")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(expire_at, c["exp"].as_i64().unwrap() + 30);
    let wm: String = redis::cmd("GET")
        .arg("gw1:revoked:sub:s:carol")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((wm.parse::<i64>().unwrap() - jwtgate::auth::now_unix()).abs() <= 2);
    let ttl: i64 = redis::cmd("TTL")
        .arg("gw1:revoked:sub:s:carol")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 7000 && ttl <= 7200, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_redis_write_is_honoured_within_cache_ttl() {
    let redis = RedisServer::start().await;
    let r = rig(&redis_cfg(&redis, "")).await;
    let t = token("RS256", Some("r1"), json!({}));
    assert_eq!(r.call(&t).await.status, 200, "now cached as not revoked");
    let jti = claims_of(&t)["jti"].as_str().unwrap().to_string();
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(format!("jwtgate:revoked:jti:{jti}"))
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let took = eventually(Duration::from_secs(3), || async {
        r.call(&t).await.status == 401
    })
    .await;
    let took = took.expect("direct revocation never took effect");
    assert!(
        took <= Duration::from_millis(300 + 400),
        "took {took:?} with cache_ttl_ms = 300"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_through_one_replica_reaches_the_other_within_200ms() {
    let redis = RedisServer::start().await;
    // A long cache TTL: only pub/sub can make replica B notice in time.
    let cfg = redis_cfg(&redis, "").replace("cache_ttl_ms = 300", "cache_ttl_ms = 60000");
    let a = rig(&cfg).await;
    let b = rig(&cfg).await;
    let t = token("RS256", Some("r1"), json!({}));
    assert_eq!(
        b.call(&t).await.status,
        200,
        "B caches the token as not revoked"
    );
    assert_eq!(a.call(&t).await.status, 200);
    let c = claims_of(&t);
    assert_eq!(
        a.revoke(json!({"jti": c["jti"], "exp": c["exp"]}))
            .await
            .status,
        204
    );
    let took = eventually(Duration::from_secs(2), || async {
        b.call(&t).await.status == 401
    })
    .await
    .expect("B never saw the revocation");
    assert!(
        took < Duration::from_millis(200),
        "propagation took {took:?}"
    );
    // Subject revocations propagate too.
    let u = token(
        "RS256",
        Some("r1"),
        json!({"sub": "dave", "iat": jwtgate::auth::now_unix() - 5}),
    );
    assert_eq!(b.call(&u).await.status, 200);
    assert_eq!(a.revoke(json!({"sub": "dave"})).await.status, 204);
    let took = eventually(Duration::from_secs(2), || async {
        b.call(&u).await.status == 401
    })
    .await
    .expect("B never saw the subject revocation");
    assert!(
        took < Duration::from_millis(200),
        "propagation took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_deny_is_503_then_recovers_after_restart() {
    let mut redis = RedisServer::start().await;
    let r = rig(&redis_cfg(&redis, "on_error = \"deny\"")).await;
    let cl = r.gw.client_plain();
    let readyz = format!("http://{}/readyz", r.gw.admin);
    assert_eq!(
        r.call(&token("RS256", Some("r1"), json!({}))).await.status,
        200
    );
    redis.kill();
    // New tokens (not cached) cannot be checked: 503, never a pass.
    let resp = r.call(&token("RS256", Some("r1"), json!({}))).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "revocation_unavailable");
    let not_ready = eventually(Duration::from_secs(5), || async {
        cl.get(&readyz, &[]).await.status == 503
    })
    .await;
    assert!(not_ready.is_some(), "readyz never reported the outage");
    // With the circuit open, requests fail fast instead of waiting for timeouts.
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(
            r.call(&token("RS256", Some("r1"), json!({}))).await.status,
            503
        );
    }
    assert!(
        t0.elapsed() < Duration::from_millis(20 * 150),
        "circuit did not open: {:?}",
        t0.elapsed()
    );
    redis.restart().await;
    let back = eventually(Duration::from_secs(10), || async {
        cl.get(&readyz, &[]).await.status == 200
    })
    .await;
    assert!(back.is_some(), "readiness did not return within 10 s");
    assert_eq!(
        r.call(&token("RS256", Some("r1"), json!({}))).await.status,
        200
    );
    // And revocations work again on the restarted (empty) Redis.
    r.revoke_and_refuse(&token("RS256", Some("r1"), json!({})))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_allow_lets_requests_through() {
    let mut redis = RedisServer::start().await;
    let r = rig(&redis_cfg(&redis, "on_error = \"allow\"")).await;
    redis.kill();
    assert_eq!(
        r.call(&token("RS256", Some("r1"), json!({}))).await.status,
        200
    );
    let ready =
        r.gw.client_plain()
            .get(&format!("http://{}/readyz", r.gw.admin), &[])
            .await;
    assert_eq!(ready.status, 200, "allow keeps the replica in rotation");
    assert!(
        ready.json()["revocation"]["allowed_unchecked"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

// === admin API ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_need_the_admin_token() {
    let r = rig("store = \"memory\"").await;
    let body = json!({"sub": "alice"}).to_string();
    assert_eq!(
        r.admin(Method::POST, "/revocations", None, &body)
            .await
            .status,
        401
    );
    assert_eq!(
        r.admin(Method::POST, "/revocations", Some("wrong"), &body)
            .await
            .status,
        401
    );
    assert_eq!(
        r.admin(
            Method::POST,
            "/revocations",
            Some(&format!("{}x", r.admin_token)),
            &body
        )
        .await
        .status,
        401
    );
    assert_eq!(
        r.admin(Method::POST, "/revocations", Some(&r.admin_token), &body)
            .await
            .status,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_refused_without_the_env_var() {
    let up = EchoUpstream::start().await;
    let cfg = format!(
        "[admin]\ntoken_env = \"JWTGATE_TEST_NEVER_SET\"\n\n{}",
        route("api", "/api", &[&up.url()], "auth = \"none\"")
    );
    let gw = TestGateway::start(&cfg).await;
    let resp = gw
        .client_plain()
        .send(
            Method::POST,
            &format!("http://{}/revocations", gw.admin),
            &[("authorization", "Bearer ")],
            jwtgate::body::full("{\"sub\":\"a\"}"),
        )
        .await;
    assert_eq!(resp.status, 403);
    assert!(resp.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("admin.token_env"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rejects_malformed_bodies() {
    let r = rig("store = \"memory\"").await;
    let now = jwtgate::auth::now_unix();
    for (body, needle) in [
        ("not json".to_string(), "JSON"),
        ("{}".to_string(), "give one of"),
        (json!({"jti": "a"}).to_string(), "exp is required"),
        // Past exp + leeway_s (30): no longer accepted, nothing to revoke.
        (json!({"jti": "a", "exp": now - 100}).to_string(), "past"),
        (
            json!({"jti": "a", "exp": now + 10, "sub": "b"}).to_string(),
            "not several",
        ),
        (json!({"sid": "s", "sub": "b"}).to_string(), "not several"),
        (json!({"sid": ""}).to_string(), "empty"),
        (json!({"jti": "", "exp": now + 10}).to_string(), "empty"),
        (json!({"sub": ""}).to_string(), "empty"),
        (json!({"jti": "a", "exp": "soon"}).to_string(), "JSON"),
        (
            json!({"jti": "a", "exp": now + 10, "colour": 1}).to_string(),
            "colour",
        ),
    ] {
        let resp = r
            .admin(Method::POST, "/revocations", Some(&r.admin_token), &body)
            .await;
        assert_eq!(resp.status, 400, "{body}");
        assert!(
            resp.json()["error_description"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {}",
            resp.text()
        );
    }
    // Still serving.
    assert_eq!(
        r.call(&token("RS256", Some("r1"), json!({}))).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cli_uses_the_admin_api() {
    let r = rig("store = \"memory\"").await;
    let t = token("RS256", Some("r1"), json!({}));
    let c = claims_of(&t);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args([
            "revoke",
            "--jti",
            c["jti"].as_str().unwrap(),
            "--exp",
            &c["exp"].to_string(),
            "--issuer",
            "s",
            "--admin",
            &format!("http://{}", r.gw.admin),
        ])
        .env("JWTGATE_ADMIN_TOKEN", &r.admin_token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r.call(&t).await.status, 401);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args([
            "revoke",
            "--sub",
            "x",
            "--admin",
            &format!("http://{}", r.gw.admin),
        ])
        .env("JWTGATE_ADMIN_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

// === [anomaly] ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_revoke_puts_an_overused_token_on_the_shared_list() {
    let redis = RedisServer::start().await;
    let cfg = format!(
        "{}\n\n[anomaly]\nwindow_s = 60\nmax_requests_per_token = 5\naction = \"revoke\"",
        redis_cfg(&redis, "")
    );
    let a = rig(&cfg).await;
    // Replica B has no [anomaly]: it can only refuse the token from the shared list.
    let b = rig(&redis_cfg(&redis, "")).await;
    let leaked = token("RS256", Some("r1"), json!({}));
    let other = token("RS256", Some("r1"), json!({}));
    for i in 0..5 {
        assert_eq!(a.call(&leaked).await.status, 200, "request {i}");
    }
    let before = a.up.count();
    let r = a.call(&leaked).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("token revoked"));
    assert_eq!(
        a.up.count(),
        before,
        "the flagged request reached the upstream"
    );
    // On the shared list: the other replica (which never saw the token) refuses it too,
    // and the admin API shows it.
    assert_eq!(
        b.call(&leaked).await.status,
        401,
        "replica B serves the revoked token"
    );
    let jti = claims_of(&leaked)["jti"].as_str().unwrap().to_string();
    let got = b
        .admin(Method::GET, &format!("/revocations/jti/{jti}"), None, "")
        .await;
    assert_eq!(got.json()["revoked"], json!(true));
    assert_eq!(
        a.call(&other).await.status,
        200,
        "other tokens are untouched"
    );
    assert!(
        a.gw.has_metric("jwtgate_anomalies_total{kind=\"requests\"} 1")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_log_flags_a_token_seen_from_too_many_networks_once() {
    let cfg = "store = \"memory\"\n\n[anomaly]\nmax_networks_per_token = 2";
    // Behind one trusted load balancer, so the test can play clients on other networks.
    let r = rig_with(cfg, "trusted_proxy_hops = 1").await;
    let t = token("RS256", Some("r1"), json!({}));
    let call = |ip| r.call_from(&t, ip);
    // Two addresses in one /24, then a second network: within the limit.
    for ip in ["198.51.100.1", "198.51.100.2", "203.0.113.9"] {
        assert_eq!(call(ip).await.status, 200);
    }
    assert!(
        r.gw.has_metric("jwtgate_anomalies_total{kind=\"networks\"} 0")
            .await
    );
    // A third network flags it; action = "log" (the default) keeps serving.
    assert_eq!(call("192.0.2.1").await.status, 200);
    assert_eq!(call("192.0.2.2").await.status, 200);
    assert_eq!(call("100.64.0.1").await.status, 200);
    assert!(
        r.gw.has_metric("jwtgate_anomalies_total{kind=\"networks\"} 1")
            .await,
        "flagged once per window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_revoke_serves_a_token_without_jti_and_flags_it_once() {
    let cfg = "store = \"memory\"\n\n[anomaly]\nmax_requests_per_token = 2\naction = \"revoke\"";
    let r = rig(cfg).await;
    // No jti: there is nothing to put on the list without revoking every token of alice.
    let t = token("RS256", Some("r1"), json!({"jti": null}));
    for i in 0..5 {
        assert_eq!(r.call(&t).await.status, 200, "request {i}");
    }
    assert!(
        r.gw.has_metric("jwtgate_anomalies_total{kind=\"requests\"} 1")
            .await
    );
}

// === Redis over TLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_via_redis_ca() {
    let redis = RedisServer::start_tls().await;
    let cert = redis.cert.clone().unwrap();
    let tls = format!(
        "store = \"redis\"\nredis_url = \"{}\"\nredis_ca = \"{}\"\ncache_ttl_ms = 300\ntimeout_ms = 500",
        redis.tls_url(),
        cert.display()
    );
    // Ready means the store answered: over TLS, verified against redis_ca.
    let r = rig(&tls).await;
    // The revocations channel works over TLS too: replica B caches "not revoked" for a
    // minute, so only the pub/sub message can make it refuse in time.
    let b = rig(&tls.replace("cache_ttl_ms = 300", "cache_ttl_ms = 60000")).await;
    let shared = token("RS256", Some("r1"), json!({}));
    assert_eq!(b.call(&shared).await.status, 200);
    r.revoke_and_refuse(&shared).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.call(&shared).await.status == 401
        })
        .await
        .is_some(),
        "replica B never heard of the revocation over TLS pub/sub"
    );
    let t = token("RS256", Some("r1"), json!({}));
    assert_eq!(r.call(&t).await.status, 200);
    let c = r.revoke_and_refuse(&t).await;
    // The revocation went to that server (read back on its plaintext port).
    let key = format!("jwtgate:revoked:jti:s:{}", c["jti"].as_str().unwrap());
    let got: Option<String> = redis::AsyncCommands::get(&mut redis.conn().await, &key)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("1"));

    // Without redis_ca the self-signed server is not trusted: the store never answers and
    // authenticated requests are 503 (on_error = "deny"), not served unchecked.
    let untrusted = tls.replace(&format!("redis_ca = \"{}\"\n", cert.display()), "");
    assert_ne!(untrusted, tls);
    let u = rig_nowait(&untrusted, "").await;
    let ready = eventually(Duration::from_secs(2), || async {
        u.gw.client_plain()
            .get(&format!("http://{}/readyz", u.gw.admin), &[])
            .await
            .status
            == 200
    })
    .await;
    assert!(
        ready.is_none(),
        "an untrusted Redis certificate was accepted"
    );
    let resp = u.call(&token("RS256", Some("r1"), json!({}))).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.json()["error"], "revocation_unavailable");
}

// === revocation lasts as long as acceptance (issue 20, finding 5) ===

/// A revoked token is refused for as long as it would be accepted at all: past `exp`,
/// within the issuer's leeway (30 s here), too; and the admin API takes such an `exp`.
async fn revoked_through_the_leeway_case(r: Rig, redis: Option<&RedisServer>) {
    let t = token(
        "RS256",
        Some("r1"),
        json!({"exp": jwtgate::auth::now_unix() + 1}),
    );
    assert_eq!(r.call(&t).await.status, 200);
    let c = r.revoke_and_refuse(&t).await;
    let exp = c["exp"].as_i64().unwrap();
    // The clock passes exp; the token is still within its leeway, so only the revocation
    // can refuse it.
    while jwtgate::auth::now_unix() < exp + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = r.call(&t).await;
    assert_eq!(resp.status, 401, "revoked token accepted again after exp");
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("token revoked"));
    // The admin API revokes a token in that window...
    let now = jwtgate::auth::now_unix();
    let late = r.revoke(json!({"jti": "late", "exp": now - 5})).await;
    assert_eq!(late.status, 204, "{}", late.text());
    // ...and refuses, clearly, one that is accepted nowhere any more.
    let gone = r.revoke(json!({"jti": "gone", "exp": now - 31})).await;
    assert_eq!(gone.status, 400);
    assert!(
        gone.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("leeway"),
        "{}",
        gone.text()
    );
    if let Some(redis) = redis {
        let key = format!("jwtgate:revoked:jti:s:{}", c["jti"].as_str().unwrap());
        let expire_at: i64 = redis::cmd("EXPIRETIME")
            .arg(&key)
            .query_async(&mut redis.conn().await)
            .await
            .unwrap();
        assert_eq!(expire_at, exp + 30, "EXAT exp + the largest leeway_s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_keeps_a_revocation_through_the_leeway() {
    revoked_through_the_leeway_case(rig("store = \"memory\"").await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_a_revocation_through_the_leeway() {
    let redis = RedisServer::start().await;
    revoked_through_the_leeway_case(rig(&redis_cfg(&redis, "")).await, Some(&redis)).await;
}

// === revocations are scoped by issuer (issue 20, finding 8) ===

async fn issuers_are_revoked_separately_case(r: Rig, redis: Option<&RedisServer>) {
    let old = jwtgate::auth::now_unix() - 60;
    let a_alice = token("RS256", Some("r1"), json!({"iat": old}));
    // No jti: logging out revokes the subject, at B only.
    let b_alice = b_token(json!({"iat": old, "jti": null}));
    assert_eq!(r.call(&a_alice).await.status, 200);
    assert_eq!(r.call(&b_alice).await.status, 200);
    assert_eq!(r.logout(&b_alice).await.status, 204);
    assert_eq!(r.call(&b_alice).await.status, 401);
    assert_eq!(
        r.call(&a_alice).await.status,
        200,
        "B's alice logging out locked out A's alice"
    );

    // One jti at two issuers: two tokens, revoked separately.
    let a_t = token("RS256", Some("r1"), json!({"jti": "shared-1"}));
    let b_t = b_token(json!({"jti": "shared-1"}));
    let exp = claims_of(&a_t)["exp"].clone();
    assert_eq!(r.call(&b_t).await.status, 200);
    let resp = r
        .revoke(json!({"jti": "shared-1", "exp": exp, "issuer": "a"}))
        .await;
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert_eq!(r.call(&a_t).await.status, 401);
    assert_eq!(
        r.call(&b_t).await.status,
        200,
        "A's revocation hit B's token"
    );
    let get = |q: &'static str| r.admin(Method::GET, q, None, "");
    assert_eq!(get("/revocations/jti/shared-1?issuer=a").await.status, 200);
    assert_eq!(get("/revocations/jti/shared-1?issuer=b").await.status, 404);

    // With two issuers the admin API must be told which; unknown names are refused.
    for (body, needle) in [
        (json!({"sub": "alice"}), "issuer"),
        (json!({"jti": "x", "exp": exp}), "issuer"),
        (json!({"sub": "alice", "issuer": "nope"}), "nope"),
    ] {
        let resp = r.revoke(body.clone()).await;
        assert_eq!(resp.status, 400, "{body}");
        let d = resp.json()["error_description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(d.contains(needle), "{body}: {d}");
    }
    for q in [
        "/revocations/jti/shared-1",
        "/revocations/jti/shared-1?issuer=nope",
    ] {
        assert_eq!(get(q).await.status, 400, "{q}");
    }
    assert_eq!(
        r.revoke(json!({"sub": "alice", "issuer": "a"}))
            .await
            .status,
        204
    );
    assert_eq!(r.call(&a_alice).await.status, 401);

    let Some(redis) = redis else { return };
    let mut conn = redis.conn().await;
    let scoped: Option<String> =
        redis::AsyncCommands::get(&mut conn, "jwtgate:revoked:jti:a:shared-1")
            .await
            .unwrap();
    assert_eq!(scoped.as_deref(), Some("1"));
    let wm: Option<String> = redis::AsyncCommands::get(&mut conn, "jwtgate:revoked:sub:b:alice")
        .await
        .unwrap();
    assert!(wm.is_some(), "logout wrote B's scoped watermark");
    // Legacy unscoped keys (written by an IdP or an operator) still apply to every issuer
    // for one release.
    let (a_l, b_l) = (
        token("RS256", Some("r1"), json!({"jti": "legacy-1"})),
        b_token(json!({"jti": "legacy-1"})),
    );
    let (a_carol, b_carol) = (
        token("RS256", Some("r1"), json!({"sub": "carol", "iat": old})),
        b_token(json!({"sub": "carol", "iat": old})),
    );
    let _: () = redis::cmd("SET")
        .arg("jwtgate:revoked:jti:legacy-1")
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("jwtgate:revoked:sub:carol")
        .arg(old + 1)
        .query_async(&mut conn)
        .await
        .unwrap();
    for t in [&a_l, &b_l, &a_carol, &b_carol] {
        assert_eq!(r.call(t).await.status, 401, "legacy key ignored");
    }
    // A direct write of the scoped shape revokes at that issuer only.
    let _: () = redis::cmd("SET")
        .arg("jwtgate:revoked:jti:b:direct-1")
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();
    // (Not alice: A's alice is revoked above.)
    let b_d = b_token(json!({"jti": "direct-1", "sub": "dave"}));
    assert_eq!(r.call(&b_d).await.status, 401);
    let a_d = token(
        "RS256",
        Some("r1"),
        json!({"jti": "direct-1", "sub": "dave"}),
    );
    assert_eq!(r.call(&a_d).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_revokes_per_issuer() {
    let r = rig_issuers(&two_issuers(), "store = \"memory\"", "").await;
    r.gw.wait_ready().await;
    issuers_are_revoked_separately_case(r, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_revokes_per_issuer_and_reads_legacy_keys() {
    let redis = RedisServer::start().await;
    // Replica B caches "not revoked" for a minute: only the published message (which must
    // name the issuer) can make it refuse A's token in time, and B's must stay served.
    let cfg = redis_cfg(&redis, "").replace("cache_ttl_ms = 300", "cache_ttl_ms = 60000");
    let other = rig_issuers(&two_issuers(), &cfg, "").await;
    other.gw.wait_ready().await;
    let (a_t, b_t) = (
        token("RS256", Some("r1"), json!({"jti": "pubsub-1"})),
        b_token(json!({"jti": "pubsub-1"})),
    );
    assert_eq!(other.call(&a_t).await.status, 200);
    assert_eq!(other.call(&b_t).await.status, 200);
    let r = rig_issuers(&two_issuers(), &redis_cfg(&redis, ""), "").await;
    r.gw.wait_ready().await;
    let exp = claims_of(&a_t)["exp"].clone();
    assert_eq!(
        r.revoke(json!({"jti": "pubsub-1", "exp": exp, "issuer": "a"}))
            .await
            .status,
        204
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            other.call(&a_t).await.status == 401
        })
        .await
        .is_some(),
        "the other replica never heard of the revocation"
    );
    assert_eq!(other.call(&b_t).await.status, 200);
    issuers_are_revoked_separately_case(r, Some(&redis)).await;
}
