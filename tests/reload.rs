//! Config reload: POST /reload and SIGHUP apply a new file without dropping the listeners;
//! a bad file is refused and the running config stays; revocations survive.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

fn config_path(gw: &TestGateway) -> std::path::PathBuf {
    gw.dir.path().join("gateway.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_routes_and_refuses_bad_files() {
    std::env::set_var("JWTGATE_TEST_RELOAD_ADMIN", "reload-admin");
    std::env::set_var(HS_ENV, HS_SECRET);
    let a = EchoUpstream::named("a").await;
    let b = EchoUpstream::named("b").await;
    let head = format!(
        "[admin]\ntoken_env = \"JWTGATE_TEST_RELOAD_ADMIN\"\n\n[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\nkeys = [{{ kid = \"h1\", alg = \"HS256\", secret_env = \"{HS_ENV}\" }}]\n\n"
    );
    let gw = TestGateway::start(&format!("{head}{}", route("a", "/a", &[&a.url()], ""))).await;
    let cl = gw.client_plain();
    let t = token("HS256", Some("h1"), json!({}));
    let bearer = format!("Bearer {t}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(cl.get(&gw.http_url("/b/x"), &auth).await.status, 404);
    assert!(
        gw.has_metric("jwtgate_reloads_total{result=\"ok\"} 0")
            .await
    );
    // Revoke a token before the reload: it must stay revoked after it.
    let victim = token("HS256", Some("h1"), json!({"sub": "victim"}));
    let app = gw.running.as_ref().unwrap().shared.app.load_full();
    app.revocations
        .revoke_sub(
            &jwtgate::revocation::Scoped::new("s", "victim"),
            jwtgate::auth::now_unix(),
        )
        .await
        .unwrap();
    drop(app);

    let original = std::fs::read_to_string(config_path(&gw)).unwrap();
    // Also two [server] keys: one the listeners were built with, one each request reads.
    let server = "drain_s = 5\nheader_timeout_ms = 5000\nmax_body_bytes = 10";
    std::fs::write(
        config_path(&gw),
        format!(
            "{}{}",
            original.replace("drain_s = 5", server),
            route("b", "/b", &[&b.url()], "auth = \"none\"")
        ),
    )
    .unwrap();
    assert_eq!(gw.reload("wrong").await.status, 401);
    let r = gw.reload("reload-admin").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"], true);
    let notes = r.json()["notes"].to_string();
    assert!(
        notes.contains("[server] header_timeout_ms changed: restart to apply"),
        "{notes}"
    );
    let big = cl
        .send(
            Method::POST,
            &gw.http_url("/b/x"),
            &[],
            jwtgate::body::full("more than ten bytes"),
        )
        .await;
    assert_eq!(big.status, 413, "max_body_bytes applies at once");
    let r = cl.get(&gw.http_url("/b/x"), &[]).await;
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("b")));
    assert_eq!(cl.get(&gw.http_url("/a/x"), &auth).await.status, 200);
    let vb = format!("Bearer {victim}");
    assert_eq!(
        cl.get(&gw.http_url("/a/x"), &[("authorization", &vb)])
            .await
            .status,
        401,
        "revocations survive a reload"
    );
    // The notes compare with what runs, not with the last file loaded: the same file again
    // is still not applied to the listeners...
    let r = gw.reload("reload-admin").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["notes"],
        json!(["[server] header_timeout_ms changed: restart to apply (max_body_bytes, stream_idle_timeout_ms, trusted_proxy_hops and token_cache_mib apply at once)"])
    );
    // ... and the running value back in the file is no change at all.
    let with_b = format!(
        "{original}{}",
        route("b", "/b", &[&b.url()], "auth = \"none\"")
    );
    std::fs::write(config_path(&gw), &with_b).unwrap();
    let r = gw.reload("reload-admin").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["notes"], json!([]));

    // A broken file is refused and the running config stays.
    std::fs::write(
        config_path(&gw),
        format!("{original}\n[[routes]]\nname = \"c\"\n"),
    )
    .unwrap();
    let r = gw.reload("reload-admin").await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("gateway.toml"),
        "{}",
        r.text()
    );
    assert_eq!(cl.get(&gw.http_url("/b/x"), &[]).await.status, 200);
    assert_eq!(cl.get(&gw.http_url("/a/x"), &auth).await.status, 200);
    // Attempts by result, counted across the reloads (the 401 was no attempt).
    assert!(
        gw.has_metric("jwtgate_reloads_total{result=\"ok\"} 3")
            .await
    );
    assert!(
        gw.has_metric("jwtgate_reloads_total{result=\"refused\"} 1")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_waits_for_new_keys_and_refuses_when_they_never_load() {
    std::env::set_var("JWTGATE_TEST_RELOAD_ADMIN2", "reload-admin");
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "[admin]\ntoken_env = \"JWTGATE_TEST_RELOAD_ADMIN2\"\n\n{}",
        route("open", "/", &[&up.url()], "auth = \"none\"")
    ))
    .await;
    let original = std::fs::read_to_string(config_path(&gw)).unwrap();
    let with_issuer = |url: &str| {
        format!("{original}\n[[issuers]]\nname = \"remote\"\nissuer = \"https://idp.test\"\njwks_url = \"{url}\"\n\n{}", route("api", "/api", &[&up.url()], ""))
    };
    // An IdP that never answers: the reload is refused, the old config keeps serving.
    let dead = format!(
        "http://127.0.0.1:{}/jwks",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    std::fs::write(config_path(&gw), with_issuer(&dead)).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), gw.reload("reload-admin"))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // The refusal names the issuer whose keys never came.
    assert!(
        r.text()
            .contains("the keys of issuer \\\"remote\\\" could not be loaded"),
        "{}",
        r.text()
    );
    let ready = gw
        .client_plain()
        .get(&format!("http://{}/readyz", gw.admin), &[])
        .await;
    assert_eq!(ready.status, 200, "the running config stays ready");
    // A live IdP: swapped in only once its keys are loaded, so the first request passes.
    std::fs::write(config_path(&gw), with_issuer(&idp.jwks_url())).unwrap();
    assert_eq!(gw.reload("reload-admin").await.status, 200);
    let b = format!("Bearer {}", token("RS256", Some("k1"), json!({})));
    assert_eq!(
        gw.client_plain()
            .get(&gw.http_url("/api/x"), &[("authorization", &b)])
            .await
            .status,
        200
    );
}
