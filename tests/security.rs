//! The security review of 2026-12-02 (issue 20), replayed as an attacker would: raw bytes
//! over real sockets, one test per finding. Each failed on the code before its fix.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

/// Static RS256 issuer `https://idp.test` (audience `api`).
fn issuer() -> String {
    format!(
        "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nleeway_s = 5\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n",
        fixture("rsa.pub.pem").display()
    )
}

fn valid() -> String {
    token("RS256", Some("r1"), json!({}))
}

/// One request as raw HTTP/1.1 bytes (`Connection: close`); the status and the body.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let text = raw_exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

// === finding 1: route policy bypass through the raw path ===

/// What a path must come to, the same for routing, CORS and logout.
enum Want {
    /// Routed by the normalised path to this route's policy, which the upstream sees.
    Route(&'static str, &'static str),
    /// 400: cannot be normalised safely.
    Refused,
}

const PATHS: &[(&str, Want)] = &[
    ("/public/../api/x", Want::Route("api", "/api/x")),
    ("/public/%2e%2e/api/x", Want::Route("api", "/api/x")),
    ("/public/%2E%2e/api/x", Want::Route("api", "/api/x")),
    ("/public/.%2e/api/x", Want::Route("api", "/api/x")),
    ("//api/x", Want::Route("api", "/api/x")),
    ("/./api/x", Want::Route("api", "/api/x")),
    ("/public//..//api/x", Want::Route("api", "/api/x")),
    ("/%61pi/x", Want::Route("api", "/api/x")),
    ("/public/./x", Want::Route("public", "/public/x")),
    ("/api/../public/x", Want::Route("public", "/public/x")),
    ("/public/..%2fapi/x", Want::Refused),
    ("/public/..%2Fapi/x", Want::Refused),
    ("/public/..%5capi/x", Want::Refused),
    ("/public/%00/x", Want::Refused),
    ("/public/%zz", Want::Refused),
];

/// Both routes on one upstream, as in the shipped gateway.toml (`/status` and
/// `/api/orders`): `/public` is open, `/api` needs a token and has `cors`.
async fn two_routes(up: &EchoUpstream, extra: &str) -> TestGateway {
    let u = up.url();
    let cfg = [
        issuer(),
        extra.to_string(),
        route("public", "/public", &[&u], "auth = \"none\""),
        route(
            "api",
            "/api",
            &[&u],
            "cors = { origins = [\"https://app.example\"], methods = [\"GET\", \"DELETE\"] }",
        ),
    ]
    .concat();
    TestGateway::start(&cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_forwarded_as_routed() {
    let up = EchoUpstream::start().await;
    let gw = two_routes(&up, "").await;
    let bearer = format!("Bearer {}", valid());
    for (path, want) in PATHS {
        let before = up.count();
        let (status, body) = raw(gw.http, "GET", path, &[]).await;
        match want {
            Want::Route("api", _) => {
                assert_eq!(status, 401, "{path} must take /api's policy: {body}");
                assert_eq!(up.count(), before, "{path} reached the upstream");
                let (status, _) = raw(gw.http, "GET", path, &[("authorization", &bearer)]).await;
                assert_eq!(status, 200, "{path} with a token");
            }
            Want::Route(_, _) => assert_eq!(status, 200, "{path}: {body}"),
            Want::Refused => {
                assert_eq!(status, 400, "{path}: {body}");
                assert!(body.contains("bad_request"), "{path}: {body}");
                assert_eq!(up.count(), before, "{path} reached the upstream");
            }
        }
        if let Want::Route(_, seen) = want {
            assert_eq!(
                up.last().uri,
                *seen,
                "the upstream gets the path that was routed"
            );
        }
    }
    // The query is kept, untouched, with the normalised path.
    raw(gw.http, "GET", "/public/./a/../b?x=/../api&y=%2F", &[]).await;
    assert_eq!(up.last().uri, "/public/b?x=/../api&y=%2F");
    // And the gateway kept serving through all of it.
    assert_eq!(raw(gw.http, "GET", "/public/ok", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_follow_the_normalised_path() {
    let up = EchoUpstream::start().await;
    let gw = two_routes(&up, "").await;
    for (path, want) in PATHS {
        let (status, body) = raw(
            gw.http,
            "OPTIONS",
            path,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "DELETE"),
            ],
        )
        .await;
        match want {
            // /api has cors: the gateway answers the preflight itself.
            Want::Route("api", _) => assert_eq!(status, 204, "{path}: {body}"),
            // /public has none: the preflight is an ordinary request to an open route.
            Want::Route(_, _) => assert_eq!(status, 200, "{path}: {body}"),
            Want::Refused => assert_eq!(status, 400, "{path}: {body}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_is_found_by_the_normalised_path() {
    let up = EchoUpstream::start().await;
    // A root route that is open: before the fix, `/x/../logout` went to it, and the
    // upstream resolved it to its own /logout.
    let u = up.url();
    let cfg = [
        issuer(),
        "[refresh]\nlogout_path = \"/logout\"\n\n".to_string(),
        route("root", "/", &[&u], "auth = \"none\""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    for path in [
        "/logout",
        "/x/../logout",
        "//logout",
        "/./logout",
        "/%6cogout",
    ] {
        let t = valid();
        let bearer = format!("Bearer {t}");
        let (status, body) = raw(gw.http, "POST", path, &[("authorization", &bearer)]).await;
        assert_eq!(status, 204, "{path}: {body}");
        assert_eq!(up.count(), 0, "{path} reached the upstream");
        // The token was revoked by that logout.
        let (status, body) = raw(gw.http, "POST", "/logout", &[("authorization", &bearer)]).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("token revoked"), "{body}");
    }
    let (status, _) = raw(gw.http, "POST", "/x/..%2flogout", &[]).await;
    assert_eq!(status, 400);
}

#[test]
fn route_prefixes_and_logout_path_must_be_normal() {
    let dir = TempDir::new();
    for (extra, key) in [
        (
            route(
                "r",
                "/api/../admin",
                &["http://127.0.0.1:1"],
                "auth = \"none\"",
            ),
            "path_prefix",
        ),
        (
            route("r", "/%61pi", &["http://127.0.0.1:1"], "auth = \"none\""),
            "path_prefix",
        ),
        (
            route("r", "//api", &["http://127.0.0.1:1"], "auth = \"none\""),
            "path_prefix",
        ),
        (
            format!(
                "[refresh]\nlogout_path = \"/a/./logout\"\n\n{}",
                route("r", "/", &["http://127.0.0.1:1"], "auth = \"none\"")
            ),
            "refresh.logout_path",
        ),
    ] {
        let text = format!("{}{}{extra}", base_config(dir.path(), ""), issuer());
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let err = jwtgate::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains("normalised"), "{err}");
    }
}

// === finding 2: identity headers spelled with underscores ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_identity_headers_never_reach_the_upstream() {
    let up = EchoUpstream::start().await;
    let gw = two_routes(&up, "").await;
    let bearer = format!("Bearer {}", valid());
    let forged = [
        ("x_user_id", "mallory"),
        ("x_auth_claims", "e30"),
        ("x-auth_claims", "e30"),
        ("x_jwtgate_assertion", "forged"),
        ("x_auth_anything", "1"),
        ("x_user-scopes", "admin"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x_request_id", "forged"),
        ("x_api_key", "kept"),
    ];
    for (path, auth) in [("/api/x", Some(bearer.as_str())), ("/public/x", None)] {
        let mut headers = forged.to_vec();
        if let Some(b) = auth {
            headers.push(("authorization", b));
        }
        let (status, body) = raw(gw.http, "GET", path, &headers).await;
        assert_eq!(status, 200, "{path}: {body}");
        let seen = up.last().headers;
        for (name, _) in &forged[..forged.len() - 1] {
            assert!(
                !seen.contains_key(*name),
                "{path}: {name} reached the upstream"
            );
        }
        // A name with `_` that means nothing to the gateway passes, as documented.
        assert_eq!(seen["x_api_key"], "kept");
        if auth.is_some() {
            assert_eq!(seen["x-user-id"], "alice");
        }
    }
}

// === finding 3: CSRF applies to a refresh cookie alone ===

fn refresh_config(idp: &MockIdp, extra_refresh: &str) -> String {
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    format!(
        "[refresh]\ntoken_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\ntimeout_ms = 2000\n{extra_refresh}\n\n",
        idp.token_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_cookie_alone_on_an_unsafe_method_needs_a_same_site_origin() {
    let idp = MockIdp::start(vec![]).await;
    let up = EchoUpstream::start().await;
    let gw = two_routes(&up, &refresh_config(&idp, "")).await;
    let rt = idp.issue_refresh_token("alice");
    let cookie = format!("refresh_token={rt}");
    let cl = gw.client_plain();
    let url = gw.http_url("/api/transfer");
    for origin in [None, Some("https://evil.example")] {
        let mut h = vec![("cookie", cookie.as_str())];
        if let Some(o) = origin {
            h.push(("origin", o));
        }
        let r = cl
            .send(Method::POST, &url, &h, jwtgate::body::empty())
            .await;
        assert_eq!(r.status, 403, "origin {origin:?}: {}", r.text());
        assert_eq!(r.json()["error"], "csrf");
        assert!(r.headers.get("set-cookie").is_none());
    }
    assert_eq!(
        idp.token_calls(),
        0,
        "a cross-site POST spent the refresh token"
    );
    assert_eq!(up.count(), 0);
    // The same POST from the gateway's own origin is renewed and served.
    let own = format!("http://{}", gw.http);
    let h = [("cookie", cookie.as_str()), ("origin", own.as_str())];
    let r = cl
        .send(Method::POST, &url, &h, jwtgate::body::empty())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.token_calls(), 1);
}

// === finding 4: duplicate credentials ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_sent_twice_is_400_and_never_forwarded() {
    let up = EchoUpstream::start().await;
    let gw = two_routes(&up, "").await;
    let good = format!("Bearer {}", valid());
    let good_cookie = format!("access_token={}", valid());
    let both = format!("{good_cookie}; access_token=forged");
    let cases: [Vec<(&str, &str)>; 4] = [
        vec![("authorization", &good), ("authorization", "Bearer forged")],
        vec![("authorization", "Bearer forged"), ("authorization", &good)],
        vec![("cookie", "access_token=forged"), ("cookie", &good_cookie)],
        vec![("cookie", &both)],
    ];
    for h in &cases {
        let (status, body) = raw(gw.http, "GET", "/api/x", h).await;
        assert_eq!(status, 400, "{h:?}: {body}");
        assert!(body.contains("more than once"), "{body}");
    }
    assert_eq!(up.count(), 0);
    // One of each: the upstream gets exactly the verified token.
    let (status, _) = raw(gw.http, "GET", "/api/x", &[("authorization", &good)]).await;
    assert_eq!(status, 200);
    let seen = up.last().headers;
    assert_eq!(seen.get_all("authorization").iter().count(), 1);
    assert_eq!(seen["authorization"], good.as_str());
}

// === finding 10: Host normalisation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_dot_or_a_differing_h2_host_cannot_skip_a_host_route() {
    let up = EchoUpstream::named("open").await;
    let locked = EchoUpstream::named("locked").await;
    let cfg = [
        issuer(),
        route("open", "/", &[&up.url()], "auth = \"none\""),
        route(
            "locked",
            "/",
            &[&locked.url()],
            "host = \"api.example.test\"",
        ),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    for host in [
        "api.example.test",
        "api.example.test.",
        "API.example.test.:80",
    ] {
        let (status, body) = raw(gw.http, "GET", "/x", &[("host", host)]).await;
        assert_eq!(status, 401, "Host {host}: {body}");
    }
    assert_eq!(up.count(), 0);
    // Two Host lines: 400.
    let (status, _) = raw(
        gw.http,
        "GET",
        "/x",
        &[("host", "localhost"), ("host", "api.example.test")],
    )
    .await;
    assert_eq!(status, 400);
    // h2: the route comes from :authority; a `host` that names another is malformed.
    let h2 = gw.client_h2();
    let r = h2.get(&gw.https_url("/x"), &[]).await;
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("open")));
    let r = h2
        .get(&gw.https_url("/x"), &[("host", "api.example.test")])
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.count(), 1);
}

// === finding 12: refresh amplification ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_alone_cannot_make_the_gateway_call_the_idp_at_will() {
    let idp = MockIdp::start(vec![]).await;
    let up = EchoUpstream::start().await;
    let gw = two_routes(
        &up,
        &refresh_config(&idp, "rate_limit = { rps = 0.01, burst = 3 }"),
    )
    .await;
    let cl = gw.client_plain();
    let url = gw.http_url("/api/x");
    // The header channel needs the access token it renews: a bare refresh header is 401.
    for i in 0..5 {
        let r = cl
            .get(&url, &[("x-refresh-token", &format!("made-up-{i}"))])
            .await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    assert_eq!(idp.token_calls(), 0);
    // The cookie channel (a browser whose access cookie expired) is limited per address.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = cl
            .get(&url, &[("cookie", &format!("refresh_token=made-up-{i}"))])
            .await;
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    assert_eq!(idp.token_calls(), 3, "statuses {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7);
    // An API client with its (expired) access token still renews through the header.
    let gw2 = two_routes(&up, &refresh_config(&idp, "")).await;
    let rt = idp.issue_refresh_token("alice");
    let expired = token(
        "RS256",
        Some("r1"),
        json!({"exp": jwtgate::auth::now_unix() - 60}),
    );
    let r = gw2
        .client_plain()
        .get(
            &gw2.http_url("/api/x"),
            &[
                ("authorization", &format!("Bearer {expired}")),
                ("x-refresh-token", &rt),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-access-token").is_some());
}

// === finding 13: h2 cookie fields reach an HTTP/1.1 upstream as one line ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_are_joined_for_http1_upstreams() {
    let up = EchoUpstream::start().await;
    let gw = two_routes(&up, "").await;
    let r = gw
        .client_h2()
        .get(
            &gw.https_url("/public/x"),
            &[("cookie", "a=1"), ("cookie", "b=2; c=3"), ("cookie", "d=4")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last().headers;
    assert_eq!(
        seen.get_all("cookie").iter().collect::<Vec<_>>(),
        ["a=1; b=2; c=3; d=4"]
    );
}

// === finding 14: the client's Forwarded and X-Real-IP ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_x_real_ip_follow_the_proxy_trust_rule() {
    let up = EchoUpstream::start().await;
    let spoofed = [
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-real-ip", "6.6.6.6"),
    ];
    let gw = two_routes(&up, "").await;
    assert_eq!(raw(gw.http, "GET", "/public/x", &spoofed).await.0, 200);
    let seen = up.last().headers;
    assert!(!seen.contains_key("forwarded"));
    assert!(!seen.contains_key("x-real-ip"));
    drop(gw);
    // Behind a trusted proxy, what it set is kept, like its x-forwarded-*.
    let u = up.url();
    let cfg = [
        issuer(),
        route("public", "/public", &[&u], "auth = \"none\""),
    ]
    .concat();
    let gw = TestGateway::start_with(&cfg, "trusted_proxy_hops = 1").await;
    assert_eq!(raw(gw.http, "GET", "/public/x", &spoofed).await.0, 200);
    let seen = up.last().headers;
    assert_eq!(seen["forwarded"], "for=6.6.6.6;proto=https");
    assert_eq!(seen["x-real-ip"], "6.6.6.6");
}

// === finding (2026-12-04 review): `Connection` naming the gateway's own headers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_cannot_strip_what_the_gateway_sets() {
    let up = EchoUpstream::start().await;
    let gw = two_routes(&up, "").await;
    let bearer = format!("Bearer {}", valid());
    // Apache's CVE-2022-31813 shape: the client names end-to-end headers as hop-by-hop so
    // the proxy's own x-forwarded-for (or identity) never reaches the upstream.
    let named =
        "x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-user-id, x-request-id, x-demo";
    let headers = [
        ("authorization", bearer.as_str()),
        ("connection", named),
        ("x-demo", "hop"),
    ];
    let (status, body) = raw(gw.http, "GET", "/api/x", &headers).await;
    assert_eq!(status, 200, "{body}");
    let seen = up.last().headers;
    assert_eq!(seen["x-user-id"], "alice");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "localhost");
    assert!(seen.contains_key("x-request-id"), "{seen:?}");
    // What the client did name as hop-by-hop and the gateway does not set is still removed.
    assert!(!seen.contains_key("x-demo"), "{seen:?}");
    assert!(!seen.contains_key("connection"), "{seen:?}");
}
