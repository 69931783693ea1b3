//! RFC 7662 introspection of opaque tokens against a mock introspection endpoint: active
//! and inactive answers, single flight, a flood of made-up tokens, the IdP down under each
//! `[revocation] on_error`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// An issuer with a JWKS (for JWTs) that also introspects opaque tokens, and one route.
async fn gateway(idp: &MockIdp, up: &EchoUpstream, extra_issuer: &str, tail: &str) -> TestGateway {
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    TestGateway::start(&format!(
        "[[issuers]]\nname = \"op\"\nissuer = \"https://idp.test\"\njwks_url = \"{}\"\nintrospection = true\nintrospection_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\n{extra_issuer}\n\n[identity.claims]\n\"x-client-id\" = \"client_id\"\n\n{}{tail}",
        idp.jwks_url(),
        idp.introspect_url(),
        route(
            "api",
            "/api",
            &[&up.url()],
            "scopes = [\"read\"]\nallow = 'claims.client_id == \"app\" || in_group(\"admin\")'"
        ),
    ))
    .await
}

async fn get(gw: &TestGateway, token: &str) -> Resp {
    let b = format!("Bearer {token}");
    gw.client_plain()
        .get(&gw.http_url("/api/x"), &[("authorization", &b)])
        .await
}

fn opaque_claims() -> serde_json::Value {
    let exp = jwtgate::auth::now_unix() + 3600;
    json!({"sub": "carol", "scope": "read write", "client_id": "app", "exp": exp, "iss": "https://idp.test", "jti": jwtgate::token::random_id()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_token_is_served_with_identity_and_inactive_is_401() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw = gateway(&idp, &up, "", "").await;
    let t = idp.issue_opaque(opaque_claims());
    let r = get(&gw, &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.headers["x-user-id"], "carol");
    assert_eq!(seen.headers["x-user-scopes"], "read write");
    assert_eq!(seen.headers["x-client-id"], "app");
    // The second request is answered from the cache.
    assert_eq!(get(&gw, &t).await.status, 200);
    assert_eq!(idp.introspect_calls(), 1);

    // Unknown to the IdP: inactive.
    let r = get(&gw, "opaque-made-up").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_token");
    assert_eq!(r.json()["error_description"], "invalid token");
    assert!(!r.text().contains("opaque-made-up"));
    // Inactive answers are cached too (negative cache).
    assert_eq!(get(&gw, "opaque-made-up").await.status, 401);
    assert_eq!(idp.introspect_calls(), 2);

    // An active token the route's rules or scopes refuse: 403 like a JWT's.
    let mut c = opaque_claims();
    c["client_id"] = json!("other");
    let t2 = idp.issue_opaque(c);
    assert_eq!(get(&gw, &t2).await.status, 403);
    let mut c = opaque_claims();
    c["scope"] = json!("write");
    let t3 = idp.issue_opaque(c);
    let r = get(&gw, &t3).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("insufficient_scope"))
    );
    // An expired one (exp in the past, though the IdP says active) is refused by the clock.
    let mut c = opaque_claims();
    c["exp"] = json!(jwtgate::auth::now_unix() - 3600);
    let t4 = idp.issue_opaque(c);
    assert_eq!(get(&gw, &t4).await.status, 401);

    // JWTs from the same issuer still verify locally, with no introspection call.
    let calls = idp.introspect_calls();
    let jwt = token(
        "RS256",
        Some("k1"),
        json!({"scope": "read", "client_id": "app"}),
    );
    assert_eq!(get(&gw, &jwt).await.status, 200);
    assert_eq!(idp.introspect_calls(), calls);
    assert_eq!(get(&gw, &t).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_opaque_tokens_subject_takes_effect() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw = gateway(&idp, &up, "", "").await;
    let t = idp.issue_opaque(opaque_claims());
    assert_eq!(get(&gw, &t).await.status, 200);
    let app = gw.running.as_ref().unwrap().shared.app.load_full();
    app.revocations
        .revoke_sub(
            &jwtgate::revocation::Scoped::new("op", "carol"),
            jwtgate::auth::now_unix() + 1,
        )
        .await
        .unwrap();
    drop(app);
    let r = get(&gw, &t).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error_description"], "token revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_with_one_token_make_one_call() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    idp.state()
        .introspect_delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let up = EchoUpstream::start().await;
    let gw = gateway(&idp, &up, "", "").await;
    let t = idp.issue_opaque(opaque_claims());
    let b = format!("Bearer {t}");
    let cl = gw.client_h2();
    let url = gw.https_url("/api/x");
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (cl, url, b) = (cl.clone(), url.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            cl.get(&url, &[("authorization", &b)]).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(idp.introspect_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_tokens_makes_a_bounded_number_of_calls() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw = gateway(&idp, &up, "introspection_rate = 5", "").await;
    let cl = gw.client_plain();
    let start = Instant::now();
    let (mut inactive, mut limited) = (0, 0);
    for i in 0..300 {
        let b = format!("Bearer garbage-{i}-{}", jwtgate::token::random_id());
        let r = cl
            .get(&gw.http_url("/api/x"), &[("authorization", &b)])
            .await;
        match r.status {
            401 => inactive += 1,
            503 => {
                assert_eq!(r.json()["error"], "idp_unavailable");
                limited += 1
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let calls = idp.introspect_calls();
    // Burst 10 (twice the rate), then 5 a second.
    let bound = 10 + (5.0 * secs).ceil() as u64 + 1;
    assert!(
        calls <= bound,
        "{calls} calls in {secs:.1} s (bound {bound})"
    );
    assert_eq!(inactive, calls);
    assert_eq!(limited, 300 - calls);
    assert!(
        gw.has_metric(&format!("jwtgate_introspection_calls_total {calls}"))
            .await
    );
    // A real token still gets through once the budget refills.
    let t = idp.issue_opaque(opaque_claims());
    let ok = eventually(Duration::from_secs(3), || async {
        get(&gw, &t).await.status == 200
    })
    .await;
    assert!(ok.is_some());
}

async fn idp_down(on_error: &str) -> (u16, u16) {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw = gateway(
        &idp,
        &up,
        "introspection_cache_s = 1",
        &format!("[revocation]\non_error = \"{on_error}\"\n"),
    )
    .await;
    let seen = idp.issue_opaque(opaque_claims());
    assert_eq!(get(&gw, &seen).await.status, 200);
    let never_seen = idp.issue_opaque(opaque_claims());
    idp.state()
        .introspect_fail_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    // Past introspection_cache_s, the answer must be asked for again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = get(&gw, &seen).await.status;
    let b = get(&gw, &never_seen).await.status;
    // The IdP back: served again.
    idp.state()
        .introspect_fail_status
        .store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(&gw, &never_seen).await.status, 200);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_under_on_error_deny_refuses() {
    assert_eq!(idp_down("deny").await, (503, 503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_under_on_error_allow_serves_tokens_seen_active_only() {
    assert_eq!(idp_down("allow").await, (200, 503));
}

#[test]
fn introspection_settings_are_checked() {
    let dir = TempDir::new();
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    for (issuer, needle) in [
        ("introspection = true", "unless `discovery = true`"),
        (
            "introspection = true\nintrospection_endpoint = \"http://127.0.0.1:1/i\"",
            "client_id",
        ),
        ("client_id = \"x\"", "set `introspection = true` too"),
    ] {
        let text = format!(
            "{}[[issuers]]\nname = \"op\"\nissuer = \"https://idp.test\"\njwks_url = \"http://127.0.0.1:1/jwks\"\n{issuer}\n\n{}",
            base_config(dir.path(), ""),
            route("api", "/api", &["http://127.0.0.1:9"], "")
        );
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, text).unwrap();
        let e = jwtgate::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{issuer}: {e}");
    }
}
