//! The forward-auth decision listener (`listen.authz`) asked directly, as each proxy asks
//! it: who may ask, how the original request is read, and that it gets the same policy as
//! a proxied request. The real proxies in front of it are in tests/forward_auth_peers.rs.

mod common;

use common::bin::{access_line, BinGateway};
use common::*;
use serde_json::json;

fn issuer() -> String {
    format!(
        "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nleeway_s = 5\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n",
        fixture("rsa.pub.pem").display()
    )
}

/// `/public` is open, `/admin` needs the `admin` scope, `/api` a token.
fn routes(extra: &str) -> String {
    [
        issuer(),
        extra.to_string(),
        "[authz]\ntrusted_proxies = [\"127.0.0.1\"]\npath_prefix = \"/ext-authz\"\n\n".into(),
        route(
            "public",
            "/public",
            &["http://127.0.0.1:1"],
            "auth = \"none\"",
        ),
        route(
            "admin",
            "/admin",
            &["http://127.0.0.1:1"],
            "scopes = [\"admin\"]",
        ),
        route("api", "/api", &["http://127.0.0.1:1"], ""),
    ]
    .concat()
}

fn valid(claims: serde_json::Value) -> String {
    token("RS256", Some("r1"), claims)
}

/// Ask as Traefik/Caddy do: the check is a GET to `/`, the original in X-Forwarded-*.
async fn ask(gw: &TestGateway, method: &str, uri: &str, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![
        ("x-forwarded-method", method),
        ("x-forwarded-uri", uri),
        ("x-forwarded-host", "shop.example"),
        ("x-forwarded-proto", "https"),
    ];
    h.extend_from_slice(headers);
    let url = format!("http://{}/", gw.authz.unwrap());
    Client::plain().get(&url, &h).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_is_allowed_with_identity_headers_and_nothing_echoed() {
    let gw = TestGateway::start_authz(&routes(""), "").await;
    let t = valid(json!({"scope": "admin read"}));
    let r = ask(
        &gw,
        "GET",
        "/admin/users",
        &[
            ("authorization", &format!("Bearer {t}")),
            ("x-user-id", "mallory"),
            ("x_user_id", "mallory"),
            ("x-auth-claims", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-user-id"), Some("alice"));
    assert_eq!(r.header("x-user-scopes"), Some("admin read"));
    assert!(r.header("x-auth-claims").unwrap() != "forged");
    assert!(r.headers.get("x_user_id").is_none());
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_carry_the_usual_bodies_and_www_authenticate() {
    let gw = TestGateway::start_authz(&routes(""), "").await;
    let r = ask(&gw, "GET", "/api/x", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"jwtgate\"")
    );
    let expired = valid(json!({"exp": jwtgate::auth::now_unix() - 60}));
    let r = ask(
        &gw,
        "GET",
        "/api/x",
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("token expired"));
    let plain = valid(json!({"scope": "read"}));
    let r = ask(
        &gw,
        "GET",
        "/admin",
        &[("authorization", &format!("Bearer {plain}"))],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "insufficient_scope");
    // An open route is allowed without identity.
    let r = ask(&gw, "GET", "/public/x", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-user-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_uri_is_normalised_the_way_routes_match_it() {
    let gw = TestGateway::start_authz(&routes(""), "").await;
    // Each of these must be judged by /admin's policy (401 without a token), or refused.
    for (uri, want) in [
        ("/public/../admin", 401),
        ("/public/%2e%2e/admin", 401),
        ("//admin", 401),
        ("/admin#/public", 401),
        ("/admin%2f..", 400),
        ("/admin%2f../public", 400),
        ("/public/..%2fadmin", 400),
        ("/public?x=/admin", 200),
        ("/public/x#/../../admin", 200),
    ] {
        let r = ask(&gw, "GET", uri, &[]).await;
        assert_eq!(r.status, want, "{uri}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undescribed_or_half_described_request_is_400_never_allowed() {
    let gw = TestGateway::start_authz(&routes(""), "").await;
    let url = |p: &str| format!("http://{}{p}", gw.authz.unwrap());
    let cl = Client::plain();
    // No original URI at all (a misconfigured nginx: the auth location's own path).
    let r = cl.get(&url("/public/x"), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // A URI without its method, a method without its URI.
    let r = cl.get(&url("/"), &[("x-forwarded-uri", "/public/x")]).await;
    assert_eq!(r.status, 400);
    let r = cl.get(&url("/"), &[("x-original-method", "GET")]).await;
    assert_eq!(r.status, 400);
    // An absolute URI is not a path.
    let r = cl
        .get(
            &url("/"),
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "https://evil/public"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    // Both forms at once: one came from the client through the proxy. Refused.
    let r = cl
        .get(
            &url("/_auth"),
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/admin"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/public/x"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // nginx's form works; Envoy's form (the path under authz.path_prefix) too.
    let r = cl
        .get(
            &url("/_auth"),
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/public/x"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = cl.get(&url("/ext-authz/public/x"), &[]).await;
    assert_eq!(r.status, 200);
    let r = cl.get(&url("/ext-authz/api/x"), &[]).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_gets_no_decision() {
    let cfg = routes("").replace(
        "trusted_proxies = [\"127.0.0.1\"]",
        "trusted_proxies = [\"10.9.9.0/24\"]",
    );
    let gw = TestGateway::start_authz(&cfg, "").await;
    // Even a request for an open route: the peer may not describe requests at all.
    let r = ask(&gw, "GET", "/public/x", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "forbidden");
    let t = valid(json!({"scope": "admin"}));
    let r = ask(
        &gw,
        "GET",
        "/admin",
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.headers.get("x-user-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_applies_to_a_cookie_token_on_an_unsafe_original_method() {
    let gw = TestGateway::start_authz(&routes(""), "").await;
    let cookie = format!("access_token={}", valid(json!({})));
    let r = ask(&gw, "POST", "/api/transfer", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "csrf");
    let r = ask(
        &gw,
        "POST",
        "/api/transfer",
        &[("cookie", &cookie), ("origin", "https://shop.example")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The same cookie on a GET needs no Origin.
    let r = ask(&gw, "GET", "/api/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_happens_on_the_decision_and_comes_back_as_cookies() {
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    let idp = MockIdp::start(vec![]).await;
    let refresh = format!(
        "[refresh]\ntoken_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\n\n",
        idp.token_url()
    );
    let gw = TestGateway::start_authz(&routes(&refresh), "").await;
    let rt = idp.issue_refresh_token("alice");
    let near = valid(json!({"exp": jwtgate::auth::now_unix() + 10}));
    let cookie = format!("access_token={near}; refresh_token={rt}");
    let r = ask(&gw, "GET", "/api/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.token_calls(), 1);
    let set: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        set.iter().any(|c| c.starts_with("access_token=")),
        "{set:?}"
    );
    // The proxy copies `authorization` upstream: it carries the renewed token.
    let bearer = r.header("authorization").unwrap();
    assert!(bearer.starts_with("Bearer ") && !bearer.contains(&near));
    // The check is logged and counted like any request of its route.
    let m = Client::plain()
        .get(&format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(m.contains("route=\"api\""), "{m}");
}

#[test]
fn authz_config_is_validated() {
    let dir = TempDir::new();
    for (extra, key) in [
        (
            "[authz]\ntrusted_proxies = [\"not-a-net\"]\n",
            "authz.trusted_proxies[0]",
        ),
        ("[authz]\npath_prefix = \"/\"\n", "authz.path_prefix"),
        ("[authz]\npath_prefix = \"/a/../b\"\n", "authz.path_prefix"),
    ] {
        let text = format!(
            "{}{}{extra}\n{}",
            base_config_with(dir.path(), "authz = \"127.0.0.1:0\"", ""),
            issuer(),
            route("r", "/", &["http://127.0.0.1:1"], "")
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let err = jwtgate::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
    }
}

/// A refusal carries the check request's `x-request-id` (the proxy's `$request_id`) and
/// the access-log line of the original request names it; without one, the gateway's own
/// id is on both. So is a check request refused before any decision (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_and_log_the_request_id() {
    let gw = BinGateway::start(
        "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nauthz = \"127.0.0.1:0\"",
        "",
        &routes(""),
    );
    let url = format!("http://{}/", gw.authz);
    let ask = |uri: &'static str, id: Option<&'static str>| {
        let mut h = vec![("x-forwarded-method", "GET"), ("x-forwarded-uri", uri)];
        h.extend(id.map(|i| ("x-request-id", i)));
        let url = url.clone();
        async move { Client::plain().get(&url, &h).await }
    };
    let from_proxy = ask("/api/from-proxy", Some("nginx-7f3a")).await;
    assert_eq!(from_proxy.status, 401);
    assert_eq!(from_proxy.header("x-request-id"), Some("nginx-7f3a"));
    let own = ask("/api/own", None).await;
    assert_eq!(own.status, 401);
    let own_id = own
        .header("x-request-id")
        .expect("no x-request-id")
        .to_string();
    assert!(own_id.len() > 4 && own_id != "nginx-7f3a");
    // A URI without its method: 400, before the original request is known.
    let bad = Client::plain()
        .get(
            &format!("http://{}/no-method", gw.authz),
            &[("x-forwarded-uri", "/api/x")],
        )
        .await;
    assert_eq!(bad.status, 400);
    let bad_id = bad
        .header("x-request-id")
        .expect("no x-request-id")
        .to_string();
    let logs = gw.stop().await;
    let line = access_line(&logs, "/api/from-proxy");
    assert_eq!(line["request_id"], "nginx-7f3a");
    assert_eq!(line["front"], "authz");
    assert_eq!(line["status"], 401);
    assert_eq!(access_line(&logs, "/api/own")["request_id"], own_id);
    assert_eq!(access_line(&logs, "/no-method")["request_id"], bad_id);
}
