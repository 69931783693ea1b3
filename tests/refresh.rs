//! Edge refresh through the real gateway and a mock IdP with rotating refresh tokens:
//! when it refreshes, single flight under concurrency, the reuse window, failures, secrecy,
//! API clients, logout with RFC 7009.

mod common;

use common::*;
use http::Method;
use serde_json::json;

struct Rig {
    idp: MockIdp,
    up: EchoUpstream,
    gw: TestGateway,
}

async fn rig(extra_refresh: &str) -> Rig {
    rig_with(extra_refresh, |_| String::new()).await
}

/// `rig` plus more config (tables, routes) made for its upstream's URL.
async fn rig_with(extra_refresh: &str, extra: impl FnOnce(&str) -> String) -> Rig {
    let idp = MockIdp::start(vec![]).await;
    let up = EchoUpstream::start().await;
    let more = extra(&up.url());
    let gw = TestGateway::start(&config(&idp, &up, extra_refresh, &more)).await;
    Rig { idp, up, gw }
}

/// `extra`: more tables ([revocation], further routes) after `[refresh]`.
fn config(idp: &MockIdp, up: &EchoUpstream, extra_refresh: &str, extra: &str) -> String {
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    format!(
        r#"[[issuers]]
name = "s"
issuer = "https://idp.test"
audiences = ["api"]
leeway_s = 5
keys = [{{ kid = "r1", alg = "RS256", pem = "{pem}" }}]

[refresh]
token_endpoint = "{token}"
client_id = "{CLIENT_ID}"
client_secret_env = "{CLIENT_SECRET_ENV}"
refresh_before_s = 60
revocation_endpoint = "{revoke}"
timeout_ms = 2000
{extra_refresh}

{extra}

{route}"#,
        pem = fixture("rsa.pub.pem").display(),
        token = idp.token_url(),
        revoke = idp.revoke_url(),
        route = route("api", "/api", &[&up.url()], "")
    )
}

fn access(exp_in: i64) -> String {
    token(
        "RS256",
        Some("r1"),
        json!({"exp": jwtgate::auth::now_unix() + exp_in}),
    )
}

impl Rig {
    async fn get_with_cookies(&self, access: Option<&str>, refresh: &str) -> Resp {
        let mut cookie = format!("theme=dark; refresh_token={refresh}");
        if let Some(a) = access {
            cookie.push_str(&format!("; access_token={a}"));
        }
        self.get(&self.gw.http_url("/api/x"), &[("cookie", &cookie)])
            .await
    }

    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.gw.client_plain().get(url, headers).await
    }

    /// `POST /logout` as a browser page at `origin` holding `cookie`.
    async fn logout(&self, cookie: &str, origin: &str) -> Resp {
        self.gw
            .client_plain()
            .send(
                Method::POST,
                &self.gw.http_url("/logout"),
                &[("cookie", cookie), ("origin", origin)],
                jwtgate::body::empty(),
            )
            .await
    }
}

fn set_cookie<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with(&format!("{name}=")))
}

fn cookie_value(c: &str) -> &str {
    c.split(';').next().unwrap().split_once('=').unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_token_is_renewed_once_and_upstream_sees_the_new_one() {
    let r = rig("").await;
    let rt = r.idp.issue_refresh_token("alice");
    let old = access(30);
    let resp = r.get_with_cookies(Some(&old), &rt).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(r.idp.token_calls(), 1);
    // The grant was made as a confidential client (Basic) with the refresh_token grant.
    let (auth, form) = r
        .idp
        .state()
        .last_token_request
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert!(auth.unwrap().starts_with("Basic "));
    assert!(
        form.contains("grant_type=refresh_token") && form.contains(&format!("refresh_token={rt}"))
    );
    // The upstream got the new token and identity from its claims; never the refresh token.
    let seen = r.up.last().headers;
    let new_access = cookie_value(set_cookie(&resp, "access_token").unwrap()).to_string();
    assert_ne!(new_access, old);
    assert_eq!(
        seen["authorization"],
        format!("Bearer {new_access}").as_str()
    );
    assert_eq!(seen["x-user-id"], "alice");
    assert_eq!(
        seen["x-user-scopes"], "orders:read",
        "scopes of the new token"
    );
    let cookies = seen["cookie"].to_str().unwrap();
    assert!(
        !cookies.contains(&rt) && !cookies.contains("refresh_token"),
        "refresh token leaked upstream: {cookies}"
    );
    // Cookies back to the browser: access with Max-Age from expires_in, refresh rotated.
    let ac = set_cookie(&resp, "access_token").unwrap();
    for attr in [
        "Max-Age=600",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(ac.contains(attr), "{attr} missing in {ac}");
    }
    let rc = set_cookie(&resp, "refresh_token").unwrap();
    let rotated = cookie_value(rc);
    assert!(
        r.idp
            .state()
            .refresh_tokens
            .lock()
            .unwrap()
            .contains_key(rotated),
        "the rotated refresh token goes back"
    );
    assert!(rc.contains("HttpOnly") && rc.contains("Secure") && rc.contains("SameSite=Lax"));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    // The renewed pair works without another IdP call (far from expiry now).
    let again = r.get_with_cookies(Some(&new_access), rotated).await;
    assert_eq!(again.status, 200);
    assert_eq!(r.idp.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_with_valid_refresh_token_is_served() {
    let r = rig("").await;
    let rt = r.idp.issue_refresh_token("alice");
    let resp = r.get_with_cookies(Some(&access(-120)), &rt).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(r.idp.token_calls(), 1);
    assert!(set_cookie(&resp, "access_token").is_some());
    // Browser dropped the expired access cookie: the refresh cookie alone renews.
    let rt2 = r.idp.issue_refresh_token("bob");
    let resp = r.get_with_cookies(None, &rt2).await;
    assert_eq!(resp.status, 200);
    assert_eq!(r.up.last().headers["x-user-id"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_far_from_expiry_never_calls_the_idp() {
    let r = rig("").await;
    let rt = r.idp.issue_refresh_token("alice");
    for _ in 0..5 {
        let resp = r.get_with_cookies(Some(&access(3600)), &rt).await;
        assert_eq!(resp.status, 200);
        assert!(set_cookie(&resp, "access_token").is_none());
    }
    assert_eq!(r.idp.token_calls(), 0);
    assert!(!r.up.last().headers["cookie"]
        .to_str()
        .unwrap()
        .contains("refresh_token"));
    // Expired without any refresh token: plain 401.
    let b = format!("Bearer {}", access(-120));
    let resp =
        r.gw.client_plain()
            .get(&r.gw.http_url("/api/x"), &[("authorization", &b)])
            .await;
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("token expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_cause_one_idp_call() {
    let r = rig("").await;
    r.idp
        .state()
        .token_delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let rt = r.idp.issue_refresh_token("alice");
    let old = access(10);
    let cookie = format!("refresh_token={rt}; access_token={old}");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let cl = if i % 2 == 0 {
            r.gw.client_plain()
        } else {
            r.gw.client_tls()
        };
        let url = if i % 2 == 0 {
            r.gw.http_url("/api/x")
        } else {
            r.gw.https_url("/api/x")
        };
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            cl.get(&url, &[("cookie", &cookie)]).await
        }));
    }
    let mut new_tokens = std::collections::HashSet::new();
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 200);
        new_tokens.insert(cookie_value(set_cookie(&resp, "access_token").unwrap()).to_string());
    }
    assert_eq!(
        r.idp.token_calls(),
        1,
        "the rotating refresh token was replayed"
    );
    assert_eq!(new_tokens.len(), 1, "every request got the winner's token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_request_with_rotated_away_refresh_token_reuses_the_result() {
    let r = rig("").await;
    let rt = r.idp.issue_refresh_token("alice");
    let old = access(10);
    let first = r.get_with_cookies(Some(&old), &rt).await;
    assert_eq!(first.status, 200);
    // A second tab still holds the old pair; the IdP already spent `rt`.
    let late = r.get_with_cookies(Some(&old), &rt).await;
    assert_eq!(late.status, 200);
    assert_eq!(r.idp.token_calls(), 1);
    assert_eq!(
        set_cookie(&late, "access_token"),
        set_cookie(&first, "access_token")
    );
    assert_eq!(
        set_cookie(&late, "refresh_token"),
        set_cookie(&first, "refresh_token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_is_401_with_cookies_cleared() {
    let r = rig("").await;
    let resp = r
        .get_with_cookies(Some(&access(10)), "rt-unknown-or-spent")
        .await;
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    for name in ["access_token", "refresh_token"] {
        let c = set_cookie(&resp, name).unwrap_or_else(|| panic!("{name} not cleared"));
        assert!(c.contains("Max-Age=0"), "{c}");
    }
    assert_eq!(r.up.count(), 0);
    // Asked once; the failure is remembered for the window, never looped.
    let again = r
        .get_with_cookies(Some(&access(10)), "rt-unknown-or-spent")
        .await;
    assert_eq!(again.status, 401);
    assert_eq!(r.idp.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_serves_valid_token_and_503s_expired_one() {
    let r = rig("").await;
    r.idp
        .state()
        .token_fail_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let rt = r.idp.issue_refresh_token("alice");
    let resp = r.get_with_cookies(Some(&access(30)), &rt).await;
    assert_eq!(resp.status, 200, "still-valid token keeps working");
    assert!(set_cookie(&resp, "access_token").is_none());
    let rt2 = r.idp.issue_refresh_token("alice");
    let resp = r.get_with_cookies(Some(&access(-120)), &rt2).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "idp_unavailable");
    // A stopped IdP (connection refused) behaves the same.
    r.idp.stop();
    let rt3 = "rt-whatever";
    assert_eq!(r.get_with_cookies(Some(&access(30)), rt3).await.status, 200);
    assert_eq!(
        r.get_with_cookies(Some(&access(-120)), "rt-other")
            .await
            .status,
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_never_refreshed() {
    let r = rig("").await;
    let rt = r.idp.issue_refresh_token("alice");
    let t = access(10);
    let jti = {
        use base64::Engine;
        let p = t.split('.').nth(1).unwrap();
        let c: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap();
        c["jti"].as_str().unwrap().to_string()
    };
    let app = r.gw.running.as_ref().unwrap().shared.app.load_full();
    app.revocations
        .revoke_jti(
            &jwtgate::revocation::Scoped::new("s", &jti),
            jwtgate::auth::now_unix() + 10,
        )
        .await
        .unwrap();
    let resp = r.get_with_cookies(Some(&t), &rt).await;
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("token revoked"));
    assert_eq!(r.idp.token_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_token_signed_by_an_unknown_key_is_rejected() {
    let r = rig("").await;
    r.idp
        .state()
        .sign_with_rogue_key
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let rt = r.idp.issue_refresh_token("alice");
    let resp = r.get_with_cookies(Some(&access(-120)), &rt).await;
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("unknown key id"));
    assert!(
        set_cookie(&resp, "access_token").is_none(),
        "the rogue token is never handed out"
    );
    assert_eq!(r.up.count(), 0);
    // With a still-valid token the request is served with the current token.
    let rt2 = r.idp.issue_refresh_token("alice");
    let cur = access(30);
    let resp = r.get_with_cookies(Some(&cur), &rt2).await;
    assert_eq!(resp.status, 200);
    assert!(set_cookie(&resp, "access_token").is_none());
    assert_eq!(
        r.up.last().headers["authorization"],
        format!("Bearer {cur}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_get_tokens_in_headers() {
    let r = rig("").await;
    let rt = r.idp.issue_refresh_token("alice");
    let b = format!("Bearer {}", access(10));
    let resp =
        r.gw.client_plain()
            .get(
                &r.gw.http_url("/api/x"),
                &[("authorization", &b), ("x-refresh-token", &rt)],
            )
            .await;
    assert_eq!(resp.status, 200);
    let new_access = resp
        .header("x-access-token")
        .expect("x-access-token")
        .to_string();
    let new_refresh = resp
        .header("x-refresh-token")
        .expect("x-refresh-token")
        .to_string();
    assert_ne!(new_refresh, rt);
    assert!(
        resp.headers.get("set-cookie").is_none(),
        "no cookies for API clients"
    );
    let seen = r.up.last().headers;
    assert!(!seen.contains_key("x-refresh-token"));
    assert_eq!(
        seen["authorization"],
        format!("Bearer {new_access}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_is_supported() {
    let r = rig("client_auth = \"client_secret_post\"").await;
    let rt = r.idp.issue_refresh_token("alice");
    assert_eq!(r.get_with_cookies(Some(&access(10)), &rt).await.status, 200);
    let (auth, form) = r
        .idp
        .state()
        .last_token_request
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert!(auth.is_none());
    assert!(form.contains(&format!("client_id={CLIENT_ID}")) && form.contains("client_secret="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_refresh_token_at_the_idp() {
    let r = rig("").await;
    let rt = r.idp.issue_refresh_token("alice");
    let t = access(600);
    let cookie = format!("access_token={t}; refresh_token={rt}");
    let resp = r.logout(&cookie, &format!("http://{}", r.gw.http)).await;
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert_eq!(*r.idp.state().revoked.lock().unwrap(), vec![rt.clone()]);
    assert!(set_cookie(&resp, "refresh_token")
        .unwrap()
        .contains("Max-Age=0"));
    let b = format!("Bearer {t}");
    assert_eq!(
        r.gw.client_plain()
            .get(&r.gw.http_url("/api/x"), &[("authorization", &b)])
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_one_refresh() {
    let redis = RedisServer::start().await;
    let idp = MockIdp::start(vec![]).await;
    let up = EchoUpstream::start().await;
    let rev = format!(
        "[revocation]\nstore = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let a = TestGateway::start(&config(&idp, &up, "", &rev)).await;
    let b = TestGateway::start(&config(&idp, &up, "", &rev)).await;
    idp.state()
        .token_delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let rt = idp.issue_refresh_token("alice");
    let cookie = format!("refresh_token={rt}; access_token={}", access(10));
    let mut tasks = Vec::new();
    for gw in [&a, &b, &a, &b, &a, &b] {
        let (cl, url, cookie) = (gw.client_plain(), gw.http_url("/api/x"), cookie.clone());
        tasks.push(tokio::spawn(async move {
            cl.get(&url, &[("cookie", &cookie)]).await
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        tokens.insert(cookie_value(set_cookie(&resp, "access_token").unwrap()).to_string());
    }
    assert_eq!(idp.token_calls(), 1, "replicas replayed the refresh token");
    assert_eq!(tokens.len(), 1);
    // The stored result is sealed: nothing in Redis reveals the new tokens.
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("jwtgate:{rt:*}:result")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let blob: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    let new_access = tokens.iter().next().unwrap();
    assert!(!blob.contains(new_access.as_str()) && !blob.contains("rt-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_request_never_spends_the_refresh_token() {
    let r = rig_with("", |up| {
        route(
            "limited",
            "/limited",
            &[up],
            "rate_limit = { per = \"sub\", rps = 0.01, burst = 1 }",
        )
    })
    .await;
    let far = format!("Bearer {}", access(3600));
    let limited = r.gw.http_url("/limited/x");
    assert_eq!(
        r.get(&limited, &[("authorization", &far)]).await.status,
        200
    );
    // alice's bucket is empty: her near-expiry request is refused before any refresh.
    let rt = r.idp.issue_refresh_token("alice");
    let near = access(30);
    let resp = r
        .get(
            &limited,
            &[(
                "cookie",
                &format!("access_token={near}; refresh_token={rt}"),
            )],
        )
        .await;
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(r.idp.token_calls(), 0, "a refused request called the IdP");
    assert!(set_cookie(&resp, "access_token").is_none());
    // The refresh token is still good where alice is not limited.
    let resp = r.get_with_cookies(Some(&near), &rt).await;
    assert_eq!(resp.status, 200);
    assert!(set_cookie(&resp, "access_token").is_some());
    assert_eq!(r.idp.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_app_on_a_listed_origin_can_log_out() {
    // The site route ("/") covers the logout path and lets the app's origin send cookies.
    let r = rig_with("", |up| {
        route(
            "site",
            "/",
            &[up],
            "cors = { origins = [\"https://app.example\"], credentials = true }",
        )
    })
    .await;
    let rt = r.idp.issue_refresh_token("alice");
    let cookie = format!("access_token={}; refresh_token={rt}", access(600));
    let resp = r.logout(&cookie, "https://evil.example").await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.header("access-control-allow-origin"), None);
    let resp = r.logout(&cookie, "https://app.example").await;
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        resp.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(*r.idp.state().revoked.lock().unwrap(), vec![rt]);
}
