//! Sign-in at the edge (issue 13) through the real gateway and a mock OpenID provider
//! (`MockOp`), with a cookie-keeping client that follows redirects by hand: discovery,
//! the full flow, logout at the IdP, state replay and cross-browser state, nonce and
//! audience checks, IdP errors, open redirects, API clients, the loop guard.

mod common;

use common::op::{query_of, Browser, MockOp, SESSION_ENV};
use common::*;

struct Rig {
    op: MockOp,
    up: EchoUpstream,
    gw: TestGateway,
}

/// `login_extra`: more `[login]` keys; `extra`: more tables.
fn config(op: &MockOp, up: &EchoUpstream, login_extra: &str, extra: &str) -> String {
    let routes = [
        route("app", "/app", &[&up.url()], "login = true"),
        route("api", "/api", &[&up.url()], ""),
    ];
    op.gateway_config(login_extra, &format!("{extra}\n\n{}", routes.concat()))
}

async fn rig_with(login_extra: &str) -> Rig {
    let op = MockOp::start().await;
    let up = EchoUpstream::start().await;
    let secret = format!("client_secret_env = \"{CLIENT_SECRET_ENV}\"\n{login_extra}");
    let gw = TestGateway::start(&config(&op, &up, &secret, "")).await;
    Rig { op, up, gw }
}

async fn rig() -> Rig {
    rig_with("").await
}

impl Rig {
    fn url(&self, path: &str) -> String {
        self.gw.http_url(path)
    }

    /// Navigate to `path` and stop at the IdP's redirect back to the callback (the
    /// callback URL, not yet visited).
    async fn to_callback(&self, b: &Browser, path: &str) -> String {
        let r = b.get(&self.url(path)).await;
        assert_eq!(r.status, 302, "{}", r.text());
        let authorize = r.header("location").unwrap().to_string();
        assert!(authorize.starts_with(&format!("{}/authorize?", self.op.issuer())));
        let r = b.get(&authorize).await;
        assert_eq!(r.status, 302, "{}", r.text());
        r.header("location").unwrap().to_string()
    }

    async fn metric(&self, line: &str) -> bool {
        self.gw.has_metric(line).await
    }
}

#[tokio::test]
async fn full_flow_signs_in_and_logout_ends_the_idp_session() {
    let rig = rig().await;
    let b = Browser::new();
    let start = rig.url("/app/page?x=1");

    // 1. No session: a 302 to the discovered authorization endpoint with every parameter.
    let r = b.get(&start).await;
    assert_eq!(r.status, 302);
    let authorize = r.header("location").unwrap().to_string();
    let q = query_of(&authorize);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], rig.url("/oauth2/callback"));
    assert_eq!(q["scope"], "openid offline_access");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32);
    let set = r.header("set-cookie").unwrap();
    for attr in [
        "jwtgate_login=",
        "Max-Age=600",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(
        !set.contains(&q["state"]),
        "the state is sealed, not readable"
    );

    // 2. Through the IdP and the callback, back to the page asked for.
    let (page, visited) = b.follow(&authorize).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(visited.last().unwrap(), &start);
    assert_eq!(rig.up.last().headers["x-user-id"], "alice");
    assert_eq!(page.json()["uri"], "/app/page?x=1");
    for c in ["access_token", "refresh_token", "id_token"] {
        assert!(b.cookie(c).is_some(), "{c} cookie set");
    }
    let (auth, form) = rig
        .op
        .state
        .last_token_request
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert!(auth.unwrap().starts_with("Basic "), "client_secret_basic");
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], rig.url("/oauth2/callback"));
    assert!(rig.op.state.last_refusal.lock().unwrap().is_none());
    assert!(
        rig.metric("jwtgate_logins_total{result=\"started\",reason=\"redirect\"} 1")
            .await
    );
    assert!(
        rig.metric("jwtgate_logins_total{result=\"completed\",reason=\"ok\"} 1")
            .await
    );

    // 3. The session works without another sign-in.
    assert_eq!(b.get(&rig.url("/app/other")).await.status, 200);
    let upstream_cookies = rig.up.last().headers["cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(upstream_cookies.contains("access_token="));
    for edge_only in ["id_token=", "jwtgate_login=", "refresh_token="] {
        assert!(!upstream_cookies.contains(edge_only), "{upstream_cookies}");
    }

    // 4. Logout: the token is revoked, cookies cleared, on to the IdP's end_session.
    let id_token = b.cookie("id_token").unwrap();
    let r = b.get(&rig.url("/logout")).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let end = r.header("location").unwrap().to_string();
    assert!(end.starts_with(&format!("{}/end-session?", rig.op.issuer())));
    let q = query_of(&end);
    assert_eq!(q["id_token_hint"], id_token);
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["post_logout_redirect_uri"], rig.url("/"));
    assert!(b.cookie("access_token").is_none() && b.cookie("id_token").is_none());
    assert_eq!(b.get(&end).await.status, 302);
    assert_eq!(rig.op.state.end_sessions.lock().unwrap().len(), 1);

    // 5. Signed out: the next navigation is sent to sign in again.
    let r = b.get(&start).await;
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("/authorize?"));
}

#[tokio::test]
async fn api_clients_get_401_never_a_redirect() {
    let rig = rig().await;
    let c = rig.gw.client_plain();
    for headers in [
        vec![("accept", "application/json")],
        vec![],
        vec![("accept", "text/html"), ("authorization", "Bearer nope")],
    ] {
        let r = c.get(&rig.url("/app/x"), &headers).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert!(r.header("location").is_none());
    }
    // A POST from a page is not a navigation to sign in from.
    let r = c
        .send(
            http::Method::POST,
            &rig.url("/app/x"),
            &[("accept", "text/html")],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 401);
    // A route without `login = true` never redirects.
    let r = Browser::new().get(&rig.url("/api/x")).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn plain_http_origins_that_are_not_loopback_get_a_page_not_the_idp() {
    let rig = rig().await;
    let c = rig.gw.client_plain();
    // Browsers drop `Secure` cookies from such an origin: the sign-in could never finish.
    let r = c
        .get(
            &rig.url("/app/x"),
            &[("host", "app.example"), ("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.header("location").is_none());
    assert!(r.text().contains("Sign-in needs HTTPS"), "{}", r.text());
    assert!(
        rig.metric("jwtgate_logins_total{result=\"failed\",reason=\"plain_http\"} 1")
            .await
    );
    // Loopback names are secure contexts to browsers, HTTPS always is.
    for host in ["localhost", "app.localhost", "127.0.0.1"] {
        let r = c
            .get(
                &rig.url("/app/x"),
                &[("host", host), ("accept", "text/html")],
            )
            .await;
        assert_eq!(r.status, 302, "{host}");
    }
    let r = rig
        .gw
        .client_tls()
        .get(&rig.gw.https_url("/app/x"), &[("accept", "text/html")])
        .await;
    assert_eq!(r.status, 302);
}

#[tokio::test]
async fn a_state_is_good_once() {
    let rig = rig().await;
    let b = Browser::new();
    let callback = rig.to_callback(&b, "/app/x").await;
    let before = b.jar.lock().unwrap().clone();
    let (r, _) = b.follow(&callback).await;
    assert_eq!(r.status, 200);
    // The same callback with the same state cookie again (a replayed URL + cookie).
    let replay = Browser::new();
    *replay.jar.lock().unwrap() = before;
    let r = replay.get(&callback).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("already been used"), "{}", r.text());
    assert!(r.text().contains("Sign in again"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(replay.cookie("access_token").is_none());
    assert!(
        rig.metric("jwtgate_logins_total{result=\"failed\",reason=\"replayed_state\"} 1")
            .await
    );
}

#[tokio::test]
async fn a_state_from_another_browser_is_refused() {
    let rig = rig().await;
    let (victim, attacker) = (Browser::new(), Browser::new());
    let attackers_callback = rig.to_callback(&attacker, "/app/x").await;
    // The victim has a sign-in of their own pending, or none at all.
    let _ = rig.to_callback(&victim, "/app/y").await;
    let r = victim.get(&attackers_callback).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("does not belong to this browser"));
    assert!(victim.cookie("access_token").is_none());
    let r = Browser::new().get(&attackers_callback).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("no sign-in in progress"));
    // API clients get JSON.
    let r = Browser::new()
        .request(&attackers_callback, "application/json")
        .await;
    assert_eq!(r.json()["error"], "login_failed");
    assert!(
        rig.metric("jwtgate_logins_total{result=\"failed\",reason=\"state_mismatch\"} 1")
            .await
    );
    assert!(
        rig.metric("jwtgate_logins_total{result=\"failed\",reason=\"missing_state\"} 2")
            .await
    );
}

#[tokio::test]
async fn id_token_with_a_wrong_nonce_or_audience_is_refused() {
    let rig = rig().await;
    *rig.op.state.id_nonce.lock().unwrap() = Some("another-nonce".into());
    let b = Browser::new();
    let cb = rig.to_callback(&b, "/app/x").await;
    let r = b.get(&cb).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(b.cookie("access_token").is_none());

    *rig.op.state.id_nonce.lock().unwrap() = None;
    *rig.op.state.id_aud.lock().unwrap() = Some(serde_json::json!("another-client"));
    let b = Browser::new();
    let cb = rig.to_callback(&b, "/app/x").await;
    assert_eq!(b.get(&cb).await.status, 502);
    // Several audiences with ours among them but no azp (OIDC Core 3.1.3.7).
    *rig.op.state.id_aud.lock().unwrap() = Some(serde_json::json!([CLIENT_ID, "other"]));
    let b = Browser::new();
    let cb = rig.to_callback(&b, "/app/x").await;
    assert_eq!(b.get(&cb).await.status, 502);
    assert!(b.cookie("access_token").is_none());
    assert!(
        rig.metric("jwtgate_logins_total{result=\"failed\",reason=\"id_token_invalid\"} 3")
            .await
    );
}

#[tokio::test]
async fn idp_error_shows_a_page_not_a_loop() {
    let rig = rig().await;
    *rig.op.state.authorize_error.lock().unwrap() = Some("access_denied".into());
    let b = Browser::new();
    let cb = rig.to_callback(&b, "/app/x").await;
    assert!(cb.contains("error=access_denied"));
    let r = b.get(&cb).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("access_denied"));
    assert!(r.text().contains("<a href=\"/app/x\">Sign in again</a>"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(b.cookie("jwtgate_login").is_none(), "pending state cleared");
    // Made-up error codes are not echoed.
    *rig.op.state.authorize_error.lock().unwrap() = Some("<script>".into());
    let b = Browser::new();
    let cb = rig.to_callback(&b, "/app/x").await;
    let r = b.get(&cb).await;
    assert!(!r.text().contains("<script>") && r.text().contains("(other)"));
}

#[tokio::test]
async fn return_paths_never_leave_the_origin() {
    let rig = rig().await;
    // What the path normaliser lets through comes back as a same-origin path.
    for (target, back) in [
        ("/app/x?next=//evil.example", "/app/x?next=//evil.example"),
        ("/app//evil.example/", "/app/evil.example/"),
        ("/app/./x", "/app/x"),
    ] {
        let b = Browser::new();
        let cb = rig.to_callback(&b, target).await;
        let r = b.get(&cb).await;
        assert_eq!(r.status, 302, "{target}");
        assert_eq!(r.header("location"), Some(back), "{target}");
    }
    // What it refuses never reaches sign-in.
    for target in ["/app/%2F%2Fevil", "/app/%5Cevil", "/app/\\evil"] {
        let r = Browser::new().get(&rig.url(target)).await;
        assert_eq!(r.status, 400, "{target}");
    }
    // An absolute-form request target cannot name another origin's path either.
    let raw = raw_exchange(
        rig.gw.http,
        b"GET //evil.example/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(2),
    )
    .await;
    assert!(!raw.contains("Location: //"), "{raw}");
    assert!(!raw.to_ascii_lowercase().contains("location: //"), "{raw}");
}

#[tokio::test]
async fn loop_guard_stops_the_third_sign_in_within_a_minute() {
    let rig = rig().await;
    let b = Browser::new();
    for _ in 0..2 {
        let r = b.get(&rig.url("/app/x")).await;
        assert_eq!(r.status, 302);
    }
    let r = b.get(&rig.url("/app/x")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("several times"));
    assert!(
        rig.metric("jwtgate_logins_total{result=\"failed\",reason=\"loop_guard\"} 1")
            .await
    );
    // The page's "Sign in again" is a person's choice: it starts afresh.
    assert_eq!(b.get(&rig.url("/app/x")).await.status, 302);
}

#[tokio::test]
async fn public_client_sends_pkce_only() {
    let op = MockOp::start().await;
    op.state
        .public_client
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&config(&op, &up, "", "")).await;
    let b = Browser::new();
    let (r, _) = b.follow(&gw.http_url("/app/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (auth, form) = op.state.last_token_request.lock().unwrap().clone().unwrap();
    assert!(auth.is_none());
    assert_eq!(form["client_id"], CLIENT_ID);
    assert!(!form.contains_key("client_secret"));
    assert_eq!(form["code_verifier"].len(), 43);
}

#[tokio::test]
async fn discovery_feeds_keys_and_the_refresh_endpoint_and_survives_an_outage() {
    let rig = rig().await;
    assert!(
        rig.metric("jwtgate_discovery_failures_total{issuer=\"op\",reason=\"issuer_mismatch\"} 0")
            .await
    );
    let m = Client::plain()
        .get(&format!("http://{}/metrics", rig.gw.admin), &[])
        .await
        .text();
    assert!(
        m.contains("jwtgate_discovery_age_seconds{issuer=\"op\"}"),
        "{m}"
    );
    // Keys from the discovered jwks_uri verify the OP's tokens on an API route.
    let c = rig.gw.client_plain();
    let at = rig.op.access_token("bob", 600);
    let r = c
        .get(
            &rig.url("/api/x"),
            &[("authorization", &format!("Bearer {at}"))],
        )
        .await;
    assert_eq!(r.status, 200);
    // The IdP's discovery goes down: what was discovered keeps serving. (The next refetch
    // is `max-age` away, at least a minute; that a failed refetch keeps the document is
    // `oidc::Discovery::run`'s stale-if-error branch, not exercised here.)
    rig.op
        .state
        .discovery_fail
        .store(503, std::sync::atomic::Ordering::SeqCst);
    // [refresh] is implied by [login] and names no token endpoint: the discovered one.
    let rt = rig.op.issue_refresh_token("carol");
    let r = c
        .get(
            &rig.url("/api/x"),
            &[("cookie", &format!("refresh_token={rt}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rig.up.last().headers["x-user-id"], "carol");
}

#[tokio::test]
async fn a_document_naming_another_issuer_is_not_used() {
    init();
    let op = MockOp::start().await;
    *op.state.doc_issuer.lock().unwrap() = Some(format!("{}/", op.issuer()));
    let up = EchoUpstream::start().await;
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    let gw = TestGateway::start_nowait(&config(&op, &up, "", ""), "").await;
    let counted = eventually(std::time::Duration::from_secs(5), || async {
        gw.has_metric(
            "jwtgate_discovery_failures_total{issuer=\"op\",reason=\"issuer_mismatch\"} 1",
        )
        .await
    })
    .await;
    assert!(counted.is_some(), "mismatch counted");
    let r = Client::plain()
        .get(&format!("http://{}/readyz", gw.admin), &[])
        .await;
    assert_eq!(
        r.status, 503,
        "an issuer whose document names another is not usable"
    );
}

#[test]
fn config_errors_name_the_login_keys() {
    init();
    std::env::set_var(SESSION_ENV, "a-session-secret-of-at-least-32-bytes!!");
    std::env::set_var("JWTGATE_TEST_SHORT_SECRET", "short");
    let dir = TempDir::new();
    let base = base_config(dir.path(), "");
    let iss = "[[issuers]]\nname = \"op\"\nissuer = \"https://op.example\"\ndiscovery = true\n\n";
    let route_login = route("app", "/app", &["http://127.0.0.1:1"], "login = true");
    let cases = [
        (
            format!("{iss}[login]\nissuer = \"op\"\nclient_id = \"g\"\nsession_secret_env = \"{SESSION_ENV}\"\nbackchannel_logout_path = \"bc\"\n\n{route_login}"),
            "login.backchannel_logout_path",
        ),
        (
            format!("{iss}[login]\nissuer = \"op\"\nclient_id = \"g\"\nsession_secret_env = \"JWTGATE_TEST_SHORT_SECRET\"\n\n{route_login}"),
            "login.session_secret_env",
        ),
        (
            format!("{iss}[login]\nissuer = \"nope\"\nclient_id = \"g\"\nsession_secret_env = \"{SESSION_ENV}\"\n\n{route_login}"),
            "login.issuer",
        ),
        (
            format!("{iss}[login]\nissuer = \"op\"\nclient_id = \"g\"\nscopes = [\"profile\"]\nsession_secret_env = \"{SESSION_ENV}\"\n\n{route_login}"),
            "login.scopes",
        ),
        (format!("{iss}{route_login}"), "routes[0].login"),
        (
            "[[issuers]]\nname = \"op\"\nissuer = \"op\"\ndiscovery = true\n\n".to_string()
                + &route("a", "/", &["http://127.0.0.1:1"], ""),
            "issuers[0].issuer",
        ),
    ];
    for (body, key) in cases {
        let path = dir.path().join("g.toml");
        std::fs::write(&path, format!("{base}{body}")).unwrap();
        let e = jwtgate::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
    }
}
