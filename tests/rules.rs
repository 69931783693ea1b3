//! Route authorization rules: `allow` (CEL) in enforce and shadow mode, `require_claims`,
//! `jwtgate check` on rules that do not compile, and reloads that swap a rule.

mod common;

use std::process::Command;

use common::*;
use http::Method;
use serde_json::json;

const ADMIN_ENV: &str = "JWTGATE_TEST_RULES_ADMIN";

fn issuer() -> String {
    std::env::set_var(HS_ENV, HS_SECRET);
    std::env::set_var(ADMIN_ENV, "rules-admin");
    format!(
        "[admin]\ntoken_env = \"{ADMIN_ENV}\"\n\n[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\nkeys = [{{ kid = \"h1\", alg = \"HS256\", secret_env = \"{HS_ENV}\" }}]\n\n"
    )
}

fn bearer(claims: serde_json::Value) -> String {
    format!("Bearer {}", token("HS256", Some("h1"), claims))
}

async fn get(gw: &TestGateway, path: &str, claims: serde_json::Value) -> Resp {
    let b = bearer(claims);
    gw.client_plain()
        .get(&gw.http_url(path), &[("authorization", &b)])
        .await
}

/// A 403 from the rules: `access_denied`, naming the route, never the rule's text.
fn assert_denied(r: &Resp, route: &str, rule_fragment: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "access_denied");
    let d = j["error_description"].as_str().unwrap();
    assert!(d.contains(&format!("\"{route}\"")), "{d}");
    assert!(
        !r.text().contains(rule_fragment),
        "rule text leaked: {}",
        r.text()
    );
    assert!(r.header("www-authenticate").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_rule_allows_and_denies() {
    let up = EchoUpstream::start().await;
    let rule = r#"allow = 'claims.groups.exists(g, g == "admin") && in_group("admin")'"#;
    let gw = TestGateway::start(&format!(
        "{}{}",
        issuer(),
        route("admin", "/admin", &[&up.url()], rule)
    ))
    .await;
    let r = get(&gw, "/admin/x", json!({"groups": ["dev", "admin"]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().headers["x-user-id"], "alice");
    let seen = up.count();
    let r = get(&gw, "/admin/x", json!({"groups": ["dev"]})).await;
    assert_denied(&r, "admin", "exists(g");
    assert_eq!(
        up.count(),
        seen,
        "a denied request never reaches the upstream"
    );
    // A group claim that is a string, not a list: `exists` fails on it, so it denies.
    let r = get(&gw, "/admin/x", json!({"groups": "admin"})).await;
    assert_denied(&r, "admin", "exists(g");
    assert!(
        gw.has_metric(
            "jwtgate_policy_decisions_total{route=\"admin\",decision=\"allow\",mode=\"enforce\"} 1"
        )
        .await
    );
    assert!(
        gw.has_metric(
            "jwtgate_policy_decisions_total{route=\"admin\",decision=\"deny\",mode=\"enforce\"} 1"
        )
        .await
    );
    assert!(
        gw.has_metric(
            "jwtgate_policy_decisions_total{route=\"admin\",decision=\"error\",mode=\"enforce\"} 1"
        )
        .await
    );
    assert!(
        gw.has_metric("jwtgate_auth_failures_total{reason=\"access_denied\"} 2")
            .await
    );
    // Still serving.
    let r = get(&gw, "/admin/x", json!({"groups": ["admin"]})).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_from_path_and_method_rules() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}{}",
        issuer(),
        route(
            "tenants",
            "/t",
            &[&up.url()],
            "allow = 'size(request.segments) > 1 && request.segments[1] == claims.tenant'"
        ),
        route(
            "writes",
            "/w",
            &[&up.url()],
            r#"allow = 'request.method in ["GET", "HEAD"] || has_scope("write")'"#
        ),
    ))
    .await;
    let acme = json!({"tenant": "acme"});
    assert_eq!(get(&gw, "/t/acme/orders", acme.clone()).await.status, 200);
    assert_denied(
        &get(&gw, "/t/other/orders", acme.clone()).await,
        "tenants",
        "segments",
    );
    assert_denied(&get(&gw, "/t", acme.clone()).await, "tenants", "segments");
    // The path as routing sees it: normalised first, so a dot-segment cannot smuggle a
    // tenant past the rule.
    assert_eq!(
        get(&gw, "/t/other/../acme/orders", acme.clone())
            .await
            .status,
        200
    );
    assert_denied(
        &get(&gw, "/t/acme/../other/orders", acme.clone()).await,
        "tenants",
        "segments",
    );

    let cl = gw.client_plain();
    let reader = bearer(json!({"scope": "read"}));
    let writer = bearer(json!({"scope": "read write"}));
    let send = |m: Method, b: &str| {
        let b = b.to_string();
        let cl = &cl;
        let url = gw.http_url("/w/x");
        async move {
            cl.send(m, &url, &[("authorization", &b)], jwtgate::body::empty())
                .await
        }
    };
    assert_eq!(send(Method::GET, &reader).await.status, 200);
    assert_denied(&send(Method::POST, &reader).await, "writes", "has_scope");
    assert_denied(&send(Method::DELETE, &reader).await, "writes", "has_scope");
    assert_eq!(send(Method::POST, &writer).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_claim_denies_and_an_always_failing_rule_does_not_stop_the_gateway() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        issuer(),
        route(
            "acme",
            "/acme",
            &[&up.url()],
            "allow = 'claims.tenant == \"acme\"'"
        ),
        route(
            "broken",
            "/broken",
            &[&up.url()],
            "allow = 'claims.sub + 1 == 2'"
        ),
        route("open", "/open", &[&up.url()], ""),
    ))
    .await;
    assert_eq!(
        get(&gw, "/acme/x", json!({"tenant": "acme"})).await.status,
        200
    );
    assert_denied(&get(&gw, "/acme/x", json!({})).await, "acme", "tenant");
    assert_denied(
        &get(&gw, "/acme/x", json!({"tenant": 7})).await,
        "acme",
        "tenant",
    );
    for _ in 0..20 {
        assert_denied(&get(&gw, "/broken/x", json!({})).await, "broken", "sub + 1");
    }
    assert!(
        gw.has_metric("jwtgate_policy_decisions_total{route=\"broken\",decision=\"error\",mode=\"enforce\"} 20")
            .await
    );
    assert_eq!(get(&gw, "/open/x", json!({})).await.status, 200);
    assert_eq!(
        get(&gw, "/acme/x", json!({"tenant": "acme"})).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_serves_while_counting_denials() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        issuer(),
        route(
            "s",
            "/s",
            &[&up.url()],
            "allow = 'in_group(\"admin\")'\nallow_mode = \"shadow\""
        ),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "/s/x", json!({"groups": ["dev"]})).await.status,
            200
        );
    }
    assert_eq!(
        get(&gw, "/s/x", json!({"groups": ["admin"]})).await.status,
        200
    );
    assert_eq!(up.count(), 4);
    assert!(
        gw.has_metric(
            "jwtgate_policy_decisions_total{route=\"s\",decision=\"deny\",mode=\"shadow\"} 3"
        )
        .await
    );
    assert!(
        gw.has_metric(
            "jwtgate_policy_decisions_total{route=\"s\",decision=\"allow\",mode=\"shadow\"} 1"
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_claims_arrays_contain_and_strings_equal() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        issuer(),
        route(
            "r",
            "/r",
            &[&up.url()],
            "require_claims = { groups = [\"admin\"], tenant = \"acme\" }"
        ),
    ))
    .await;
    let ok = json!({"groups": ["x", "admin"], "tenant": "acme"});
    assert_eq!(get(&gw, "/r/x", ok).await.status, 200);
    // The rule is the claim's shape-blind: an array claim containing the value matches.
    let listed = json!({"groups": ["admin"], "tenant": ["acme", "beta"]});
    assert_eq!(get(&gw, "/r/x", listed).await.status, 200);
    for bad in [
        json!({"groups": ["x"], "tenant": "acme"}),
        json!({"groups": ["admin"], "tenant": "acme-2"}),
        json!({"groups": ["admin"]}),
        json!({"groups": "admin-team", "tenant": "acme"}),
    ] {
        assert_denied(&get(&gw, "/r/x", bad.clone()).await, "r", "admin");
    }
    assert!(
        gw.has_metric(
            "jwtgate_policy_decisions_total{route=\"r\",decision=\"deny\",mode=\"enforce\"} 4"
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_a_rule_and_keeps_it_when_the_new_one_does_not_compile() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        issuer(),
        route(
            "who",
            "/who",
            &[&up.url()],
            "allow = 'claims.sub == \"alice\"'"
        ),
    ))
    .await;
    let alice = json!({"sub": "alice"});
    let bob = json!({"sub": "bob"});
    assert_eq!(get(&gw, "/who/x", alice.clone()).await.status, 200);
    assert_eq!(get(&gw, "/who/x", bob.clone()).await.status, 403);

    let path = gw.dir.path().join("gateway.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let reload = || async {
        gw.client_plain()
            .send(
                Method::POST,
                &format!("http://{}/reload", gw.admin),
                &[("authorization", "Bearer rules-admin")],
                jwtgate::body::empty(),
            )
            .await
    };
    // Requests racing the reload each see one rule or the other, never neither: every
    // answer is 200 or 403, and alice XOR bob is allowed.
    let racing = {
        let url = gw.http_url("/who/x");
        let (a, b) = (bearer(alice.clone()), bearer(bob.clone()));
        tokio::spawn(async move {
            let cl = Client::plain();
            let mut seen = Vec::new();
            for _ in 0..40 {
                let ra = cl.get(&url, &[("authorization", &a)]).await.status;
                let rb = cl.get(&url, &[("authorization", &b)]).await.status;
                seen.push((ra, rb));
            }
            seen
        })
    };
    std::fs::write(&path, original.replace("== \"alice\"", "== \"bob\"")).unwrap();
    assert_eq!(reload().await.status, 200);
    for (ra, rb) in racing.await.unwrap() {
        assert!(
            [200, 403].contains(&ra) && [200, 403].contains(&rb),
            "{ra} {rb}"
        );
    }
    assert_eq!(get(&gw, "/who/x", alice.clone()).await.status, 403);
    assert_eq!(get(&gw, "/who/x", bob.clone()).await.status, 200);

    // A rule that does not compile is refused, naming route and position; the old stays.
    std::fs::write(
        &path,
        original.replace("claims.sub == \"alice\"", "claims.sub =="),
    )
    .unwrap();
    let r = reload().await;
    assert_eq!(r.status, 400, "{}", r.text());
    let d = r.json()["error_description"].as_str().unwrap().to_string();
    assert!(
        d.contains("routes[0].allow") && d.contains("\"who\"") && d.contains("line 1, column"),
        "{d}"
    );
    assert_eq!(get(&gw, "/who/x", bob).await.status, 200);
    assert_eq!(get(&gw, "/who/x", alice).await.status, 403);
}

/// `jwtgate check` on a config whose route has `rule`.
fn check(rule: &str) -> (i32, String) {
    let dir = TempDir::new();
    std::env::set_var(HS_ENV, HS_SECRET);
    let text = format!(
        "{}{}{}",
        base_config(dir.path(), ""),
        issuer(),
        route("api", "/api", &["http://127.0.0.1:9"], rule)
    );
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["check", "-c", path.to_str().unwrap()])
        .env_remove("JWTGATE_CONFIG")
        .env(HS_ENV, HS_SECRET)
        .env(ADMIN_ENV, "rules-admin")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_rules_that_do_not_compile() {
    let (code, err) =
        check("allow = 'claims.groups.exists(g, g == \"admin\") || request.method == \"GET\"'");
    assert_eq!(code, 0, "{err}");
    for (rule, needles) in [
        (
            "allow = 'claims.sub == '",
            &[
                "routes[0].allow",
                "route \"api\"",
                "does not compile: line 1, column",
            ][..],
        ),
        (
            "allow = 'user.admin == true'",
            &[
                "routes[0].allow",
                "line 1, column 1",
                "unknown variable `user`",
            ],
        ),
        (
            "allow = 'request.method == \"GET\" && sudo(claims.sub)'",
            &["line 1, column", "unknown function `sudo`"],
        ),
        (
            "allow_mode = \"shadow\"",
            &["routes[0].allow_mode", "needs an `allow` rule"],
        ),
        (
            "allow = 'true'\nallow_mode = \"audit\"",
            &["routes[0].allow_mode", "\"audit\""],
        ),
        (
            "auth = \"optional\"\nallow = 'true'",
            &["routes[0].allow", "auth = \"required\""],
        ),
        (
            "require_claims = { groups = [] }",
            &["routes[0].require_claims.groups"],
        ),
    ] {
        let (code, err) = check(rule);
        assert_eq!(code, 1, "{rule}: {err}");
        for n in needles {
            assert!(err.contains(n), "{rule}: wanted {n:?} in {err}");
        }
    }
}
