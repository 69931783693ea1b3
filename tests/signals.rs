//! Revocation driven by the identity provider, through real gateways: OIDC Back-Channel
//! Logout and Shared Signals (CAEP/RISC) posted by a mock IdP that signs with its JWKS,
//! session (`sid`) revocation from the admin API and `jwtgate revoke --sid`, two replicas on
//! one real redis-server, forged and replayed messages.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

const CAEP_SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// One gateway: issuer "op" (the mock IdP's JWKS) with a back-channel logout path,
/// `[signals]` reusing its keys, one authenticated route.
struct Replica {
    _up: EchoUpstream,
    gw: TestGateway,
    admin_token: String,
}

fn gateway_config(idp: &MockIdp, revocation: &str, admin_var: &str, up: &EchoUpstream) -> String {
    format!(
        "[admin]\ntoken_env = \"{admin_var}\"\n\n\
         [[issuers]]\nname = \"op\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_url = \"{}\"\n\
         backchannel_logout_path = \"/oidc/backchannel\"\nbackchannel_audience = \"{CLIENT_ID}\"\n\n\
         [signals]\nissuer = \"https://idp.test\"\naudience = \"{SIGNALS_AUDIENCE}\"\n\n\
         [revocation]\n{revocation}\n\n{}",
        idp.jwks_url(),
        route("api", "/api", &[&up.url()], "")
    )
}

impl Replica {
    async fn start(idp: &MockIdp, revocation: &str) -> Replica {
        let up = EchoUpstream::start().await;
        let (var, value) = admin_env();
        let gw = TestGateway::start(&gateway_config(idp, revocation, &var, &up)).await;
        Replica {
            _up: up,
            gw,
            admin_token: value,
        }
    }

    async fn call(&self, t: &str) -> Resp {
        let b = format!("Bearer {t}");
        self.gw
            .client_plain()
            .get(&self.gw.http_url("/api/x"), &[("authorization", &b)])
            .await
    }

    async fn status(&self, t: &str) -> u16 {
        self.call(t).await.status
    }

    /// The IdP's back-channel logout POST.
    async fn backchannel(&self, form: &str) -> Resp {
        self.gw
            .client_plain()
            .send(
                Method::POST,
                &self.gw.http_url("/oidc/backchannel"),
                &[("content-type", "application/x-www-form-urlencoded")],
                jwtgate::body::full(form.to_string()),
            )
            .await
    }

    async fn logout(&self, logout_token: &str) -> Resp {
        self.backchannel(&format!("logout_token={logout_token}"))
            .await
    }

    /// An RFC 8935 push of `set`.
    async fn push_as(&self, content_type: &str, set: &str) -> Resp {
        self.gw
            .client_plain()
            .send(
                Method::POST,
                &self.gw.http_url("/ssf/events"),
                &[("content-type", content_type)],
                jwtgate::body::full(set.to_string()),
            )
            .await
    }

    async fn push(&self, set: &str) -> Resp {
        self.push_as("application/secevent+jwt", set).await
    }

    async fn admin_revoke(&self, body: serde_json::Value) -> Resp {
        let b = format!("Bearer {}", self.admin_token);
        self.gw
            .client_plain()
            .send(
                Method::POST,
                &format!("http://{}/revocations", self.gw.admin),
                &[("content-type", "application/json"), ("authorization", &b)],
                jwtgate::body::full(body.to_string()),
            )
            .await
    }

    async fn metric(&self, line: &str) -> bool {
        self.gw.has_metric(line).await
    }
}

async fn idp() -> MockIdp {
    MockIdp::start(vec![Keys::rsa_jwk(MockIdp::KID, "rsa")]).await
}

/// An access token of the mock IdP for `sub` in session `sid` (issued a few seconds ago).
fn access(sub: &str, sid: Option<&str>) -> String {
    let mut c = json!({"sub": sub, "iat": jwtgate::auth::now_unix() - 5});
    if let Some(s) = sid {
        c["sid"] = s.into();
    }
    token("RS256", Some(MockIdp::KID), c)
}

fn redis_cfg(r: &RedisServer) -> String {
    // A long cache TTL: only the revocations channel can make the other replica notice.
    format!(
        "store = \"redis\"\nredis_url = \"{}\"\ncache_ttl_ms = 60000\ntimeout_ms = 500\n",
        r.url()
    )
}

/// Poll until `t` is refused by `r` (a deadline, not a fixed sleep).
async fn refused_soon(r: &Replica, t: &str) -> bool {
    eventually(Duration::from_secs(3), || async {
        r.status(t).await == 401
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_on_one_replica_ends_that_session_on_the_other() {
    let redis = RedisServer::start().await;
    let idp = idp().await;
    let a = Replica::start(&idp, &redis_cfg(&redis)).await;
    let b = Replica::start(&idp, &redis_cfg(&redis)).await;
    let (laptop, phone) = (
        access("alice", Some("s-laptop")),
        access("alice", Some("s-phone")),
    );
    for t in [&laptop, &phone] {
        assert_eq!(a.status(t).await, 200);
        assert_eq!(b.status(t).await, 200, "B caches both as not revoked");
    }

    let r = a
        .logout(&MockIdp::logout_token(json!({"sid": "s-laptop"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));

    assert!(
        refused_soon(&b, &laptop).await,
        "B never refused the logged-out session"
    );
    let refused = b.call(&laptop).await;
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|h| h.contains("token revoked")),
        "{:?}",
        refused.headers
    );
    assert_eq!(a.status(&laptop).await, 401);
    assert_eq!(
        b.status(&phone).await,
        200,
        "another session of alice stays"
    );
    assert_eq!(a.status(&phone).await, 200);
    assert_eq!(
        b.status(&access("alice", None)).await,
        200,
        "no sid: not that session"
    );
    assert!(
        a.metric(r#"jwtgate_idp_signals_total{event="backchannel-logout",outcome="applied"} 1"#)
            .await
    );
    // The shared key, scoped by the issuer's name.
    let mut c = redis.conn().await;
    let v: Option<String> = redis::cmd("GET")
        .arg("jwtgate:revoked:sid:op:s-laptop")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    let ttl: i64 = redis::cmd("TTL")
        .arg("jwtgate:revoked:sid:op:s-laptop")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "subject_ttl_s: {ttl}");

    // A logout token with sub and no sid ends every earlier token of the subject.
    let bob = access("bob", Some("s-bob"));
    assert_eq!(b.status(&bob).await, 200);
    let r = a
        .logout(&MockIdp::logout_token(json!({"sub": "bob"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(refused_soon(&b, &bob).await);
    assert_eq!(b.status(&phone).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caep_session_revoked_and_risc_account_disabled_reach_both_replicas() {
    let redis = RedisServer::start().await;
    let idp = idp().await;
    let a = Replica::start(&idp, &redis_cfg(&redis)).await;
    let b = Replica::start(&idp, &redis_cfg(&redis)).await;
    let (s1, s2, nosid) = (
        access("alice", Some("s1")),
        access("alice", Some("s2")),
        access("alice", None),
    );
    let carol = access("carol", Some("s9"));
    for t in [&s1, &s2, &nosid, &carol] {
        assert_eq!(b.status(t).await, 200);
        assert_eq!(a.status(t).await, 200);
    }

    // CAEP session-revoked, SSF 1.0 complex subject: user + session.
    let set = MockIdp::security_event(json!({
        "sub_id": {"format": "complex",
            "user": {"format": "iss_sub", "iss": "https://idp.test", "sub": "alice"},
            "session": {"format": "opaque", "id": "s1"}},
        "events": {CAEP_SESSION_REVOKED: {"event_timestamp": jwtgate::auth::now_unix()}}
    }));
    let r = a.push(&set).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(
        refused_soon(&b, &s1).await,
        "B never refused the revoked session"
    );
    assert_eq!(b.status(&s2).await, 200, "alice's other session stays");
    assert_eq!(b.status(&nosid).await, 200);

    // RISC account-disabled: every token of alice, on both replicas.
    let set = MockIdp::security_event(json!({
        "sub_id": {"format": "iss_sub", "iss": "https://idp.test", "sub": "alice"},
        "events": {format!("{RISC}account-disabled"): {"reason": "hijacking"}}
    }));
    let r = b.push(&set).await;
    assert_eq!(r.status, 202, "{}", r.text());
    for (name, replica) in [("A", &a), ("B", &b)] {
        for t in [&s2, &nosid] {
            assert!(refused_soon(replica, t).await, "{name} still serves alice");
        }
    }
    assert_eq!(a.status(&carol).await, 200, "carol is someone else");
    assert_eq!(b.status(&carol).await, 200);
    // A token issued after the event is alice signing in again: served.
    let later = token(
        "RS256",
        Some(MockIdp::KID),
        json!({"sub": "alice", "iat": jwtgate::auth::now_unix() + 2}),
    );
    assert_eq!(a.status(&later).await, 200);

    // RISC credential-change with change_type "create" changes nothing.
    let set = MockIdp::security_event(json!({
        "sub_id": {"format": "iss_sub", "iss": "https://idp.test", "sub": "carol"},
        "events": {format!("{RISC}credential-change"): {"credential_type": "password", "change_type": "create"}}
    }));
    assert_eq!(a.push(&set).await.status, 202);
    // An event type the gateway does not act on: accepted, counted, nothing changes.
    let set = MockIdp::security_event(json!({
        "sub_id": {"format": "iss_sub", "iss": "https://idp.test", "sub": "carol"},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/device-compliance-change":
            {"previous_status": "compliant", "current_status": "not-compliant"}}
    }));
    assert_eq!(a.push(&set).await.status, 202);
    assert_eq!(a.status(&carol).await, 200);
    assert_eq!(b.status(&carol).await, 200);
    // RISC credential-change (an update) revokes carol.
    let set = MockIdp::security_event(json!({
        "sub_id": {"format": "iss_sub", "iss": "https://idp.test", "sub": "carol"},
        "events": {format!("{RISC}credential-change"): {"credential_type": "password", "change_type": "update"}}
    }));
    assert_eq!(a.push(&set).await.status, 202);
    assert!(refused_soon(&b, &carol).await);

    for line in [
        r#"jwtgate_idp_signals_total{event="session-revoked",outcome="applied"} 1"#,
        r#"jwtgate_idp_signals_total{event="credential-change",outcome="ignored"} 1"#,
        r#"jwtgate_idp_signals_total{event="credential-change",outcome="applied"} 1"#,
        r#"jwtgate_idp_signals_total{event="unknown",outcome="ignored"} 1"#,
    ] {
        assert!(a.metric(line).await, "{line}");
    }
    assert!(
        b.metric(r#"jwtgate_idp_signals_total{event="account-disabled",outcome="applied"} 1"#)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_logout_tokens_change_nothing() {
    let idp = idp().await;
    let g = Replica::start(&idp, "store = \"memory\"").await;
    let t = access("alice", Some("s1"));
    assert_eq!(g.status(&t).await, 200);
    let now = jwtgate::auth::now_unix();
    let base = || {
        json!({"iss": "https://idp.test", "aud": CLIENT_ID, "iat": now,
            "jti": jwtgate::token::random_id(), "events": {BACKCHANNEL_EVENT: {}}, "sid": "s1"})
    };
    let with = |o: serde_json::Value| merged(base(), o);
    let cases: Vec<(&str, String)> = vec![
        // Signed with a key the IdP does not publish, under its kid.
        ("wrong key", {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            h.kid = Some(MockIdp::KID.into());
            h.typ = Some("logout+jwt".into());
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(&fixture_bytes("rsa2.pem")).unwrap();
            jsonwebtoken::encode(&h, &with(json!({})), &key).unwrap()
        }),
        (
            "wrong aud",
            MockIdp::logout_token(json!({"aud": "someone-else", "sid": "s1"})),
        ),
        (
            "old iat",
            MockIdp::logout_token(json!({"iat": now - 600, "sid": "s1"})),
        ),
        (
            "iat in the future",
            MockIdp::logout_token(json!({"iat": now + 600, "sid": "s1"})),
        ),
        (
            "expired",
            MockIdp::logout_token(json!({"exp": now - 600, "sid": "s1"})),
        ),
        (
            "nonce present",
            MockIdp::logout_token(json!({"nonce": "n", "sid": "s1"})),
        ),
        (
            "events missing",
            MockIdp::logout_token(json!({"events": null, "sid": "s1"})),
        ),
        (
            "other event",
            MockIdp::logout_token(json!({"events": {"urn:x": {}}, "sid": "s1"})),
        ),
        (
            "jti missing",
            MockIdp::logout_token(json!({"jti": null, "sid": "s1"})),
        ),
        (
            "neither sid nor sub",
            MockIdp::logout_token(json!({"sub": null})),
        ),
        (
            "wrong issuer",
            MockIdp::logout_token(json!({"iss": "https://evil.test", "sid": "s1"})),
        ),
        (
            "HS256 against the RSA issuer",
            sign_jwt(
                "HS256",
                Some(MockIdp::KID),
                Some("logout+jwt"),
                &with(json!({})),
            ),
        ),
        (
            "HS256 without kid",
            sign_jwt("HS256", None, Some("logout+jwt"), &with(json!({}))),
        ),
        ("an access token", access("alice", Some("s1"))),
        (
            "alg none",
            raw_token(
                &json!({"alg": "none", "typ": "logout+jwt"}),
                &with(json!({})),
                "",
            ),
        ),
        (
            "wrong typ",
            sign_jwt("RS256", Some(MockIdp::KID), Some("JWT"), &with(json!({}))),
        ),
    ];
    for (what, lt) in &cases {
        let r = g.logout(lt).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request", "{what}");
        assert!(
            !r.text().contains(lt.as_str()),
            "{what}: the token is echoed"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(g.status(&t).await, 200, "{what} revoked the session");
    }
    for form in ["", "logout_token=", "token=abc", "logout_token=a.b.c"] {
        assert_eq!(g.backchannel(form).await.status, 400, "{form:?}");
    }
    // GET is not the protocol.
    let r =
        g.gw.client_plain()
            .get(&g.gw.http_url("/oidc/backchannel"), &[])
            .await;
    assert_eq!(r.status, 400);

    // Replay: the first delivery (another session) works, the second is refused.
    let lt = MockIdp::logout_token(json!({"sid": "s-other"}));
    assert_eq!(g.logout(&lt).await.status, 200);
    let again = g.logout(&lt).await;
    assert_eq!(again.status, 400);
    assert!(again.text().contains("replayed"), "{}", again.text());
    assert_eq!(g.status(&t).await, 200, "still serving s1");
    assert!(
        g.metric(r#"jwtgate_idp_signals_total{event="backchannel-logout",outcome="replayed"} 1"#)
            .await
    );
    assert!(
        g.metric(r#"jwtgate_idp_signals_total{event="backchannel-logout",outcome="applied"} 1"#)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_security_events_change_nothing() {
    let idp = idp().await;
    let g = Replica::start(&idp, "store = \"memory\"").await;
    let t = access("alice", Some("s1"));
    assert_eq!(g.status(&t).await, 200);
    let now = jwtgate::auth::now_unix();
    let event = json!({CAEP_SESSION_REVOKED: {}});
    let subject = json!({"format": "complex",
        "user": {"format": "iss_sub", "iss": "https://idp.test", "sub": "alice"},
        "session": {"format": "opaque", "id": "s1"}});
    let base = || {
        json!({"iss": "https://idp.test", "aud": SIGNALS_AUDIENCE, "iat": now,
            "jti": jwtgate::token::random_id(), "sub_id": subject, "events": event})
    };
    let with = |o: serde_json::Value| merged(base(), o);
    let rsa2 = |c: &serde_json::Value| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(MockIdp::KID.into());
        jsonwebtoken::encode(
            &h,
            c,
            &jsonwebtoken::EncodingKey::from_rsa_pem(&fixture_bytes("rsa2.pem")).unwrap(),
        )
        .unwrap()
    };
    let cases: Vec<(&str, &str, String)> = vec![
        ("wrong key", "invalid_key", rsa2(&with(json!({})))),
        (
            "HS256 SET against the RSA issuer",
            "invalid_key",
            sign_jwt(
                "HS256",
                Some(MockIdp::KID),
                Some("secevent+jwt"),
                &with(json!({})),
            ),
        ),
        (
            "HS256 without kid",
            "invalid_key",
            sign_jwt("HS256", None, None, &with(json!({}))),
        ),
        (
            "unknown kid",
            "invalid_key",
            sign_jwt("RS256", Some("nope"), None, &with(json!({}))),
        ),
        (
            "wrong aud",
            "invalid_audience",
            MockIdp::security_event(
                json!({"aud": "https://other.test", "sub_id": subject, "events": event}),
            ),
        ),
        (
            "wrong iss",
            "invalid_issuer",
            MockIdp::security_event(
                json!({"iss": "https://evil.test", "sub_id": subject, "events": event}),
            ),
        ),
        (
            "old iat",
            "invalid_request",
            MockIdp::security_event(json!({"iat": now - 3600, "sub_id": subject, "events": event})),
        ),
        (
            "expired",
            "invalid_request",
            MockIdp::security_event(json!({"exp": now - 600, "sub_id": subject, "events": event})),
        ),
        (
            "events missing",
            "invalid_request",
            MockIdp::security_event(json!({"sub_id": subject})),
        ),
        (
            "jti missing",
            "invalid_request",
            MockIdp::security_event(json!({"jti": null, "sub_id": subject, "events": event})),
        ),
        (
            "wrong typ",
            "invalid_request",
            sign_jwt(
                "RS256",
                Some(MockIdp::KID),
                Some("logout+jwt"),
                &with(json!({})),
            ),
        ),
        ("not a JWT", "invalid_request", "hello".to_string()),
    ];
    for (what, code, set) in &cases {
        let r = g.push(set).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let j = r.json();
        assert_eq!(j["err"], *code, "{what}: {j}");
        assert!(j["description"].is_string(), "{what}: {j}");
        assert_eq!(g.status(&t).await, 200, "{what} revoked the session");
    }
    let r = g
        .push_as(
            "application/json",
            &MockIdp::security_event(with(json!({}))),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["err"], "invalid_request");
    assert_eq!(g.status(&t).await, 200);

    // A redelivery of a handled SET (same jti) is acknowledged and not applied twice.
    let set = MockIdp::security_event(json!({
        "sub_id": {"format": "opaque", "id": "s-other"}, "events": event}));
    assert_eq!(g.push(&set).await.status, 202);
    assert_eq!(g.push(&set).await.status, 202);
    assert!(
        g.metric(r#"jwtgate_idp_signals_total{event="session-revoked",outcome="applied"} 1"#)
            .await
    );
    assert!(
        g.metric(r#"jwtgate_idp_signals_total{event="set",outcome="duplicate"} 1"#)
            .await
    );
    assert_eq!(g.status(&t).await, 200, "still serving s1");
    assert_eq!(g.status(&access("alice", Some("s-other"))).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_sid_from_the_command_line_and_the_admin_api() {
    let idp = idp().await;
    let g = Replica::start(&idp, "store = \"memory\"").await;
    let (s1, s2) = (access("alice", Some("s1")), access("alice", Some("s2")));
    assert_eq!(g.status(&s1).await, 200);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args([
            "revoke",
            "--sid",
            "s1",
            "--admin",
            &format!("http://{}", g.gw.admin),
        ])
        .env("JWTGATE_ADMIN_TOKEN", &g.admin_token)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "revoked");
    assert_eq!(g.status(&s1).await, 401);
    assert_eq!(g.status(&s2).await, 200);
    // --sid with --sub is refused by the command line itself.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["revoke", "--sid", "s2", "--sub", "alice"])
        .env("JWTGATE_ADMIN_TOKEN", &g.admin_token)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());

    assert_eq!(
        g.admin_revoke(json!({"sid": "s2", "issuer": "op"}))
            .await
            .status,
        204
    );
    assert_eq!(g.status(&s2).await, 401);
    for bad in [
        json!({"sid": ""}),
        json!({"sid": "s3", "sub": "alice"}),
        json!({"sid": "s3", "issuer": "nope"}),
    ] {
        let r = g.admin_revoke(bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(g.status(&access("alice", Some("s3"))).await, 200);
}

/// Redis commands by name since the last `CONFIG RESETSTAT` (our own INFO left out).
async fn redis_calls(c: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (!name.starts_with("info") && !name.starts_with("config") && name != "ping")
                .then(|| (name.to_string(), calls))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jti_sub_and_sid_are_answered_by_one_mget() {
    let redis = RedisServer::start().await;
    let idp = idp().await;
    let g = Replica::start(&idp, &redis_cfg(&redis)).await;
    let mut c = redis.conn().await;
    let t = access("alice", Some("s-one-trip"));
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(g.status(&t).await, 200);
    }
    assert_eq!(
        redis_calls(&mut c).await,
        vec![("mget".to_string(), 1)],
        "one MGET for the token's jti, subject and session, then the cache"
    );
    // A revoked session found by that single MGET (written straight into Redis, as an
    // IdP or script may): a fresh token of the session is refused on its first request.
    let () = redis::cmd("SET")
        .arg("jwtgate:revoked:sid:op:s-written")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(g.status(&access("bob", Some("s-written"))).await, 401);
    assert_eq!(redis_calls(&mut c).await, vec![("mget".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sid_revocation_survives_a_replica_restart() {
    let redis = RedisServer::start().await;
    let idp = idp().await;
    let a = Replica::start(&idp, &redis_cfg(&redis)).await;
    let t = access("alice", Some("s-keep"));
    assert_eq!(a.admin_revoke(json!({"sid": "s-keep"})).await.status, 204);
    assert_eq!(a.status(&t).await, 401);
    a.gw.shutdown().await;
    // A fresh replica knows nothing but what Redis holds.
    let b = Replica::start(&idp, &redis_cfg(&redis)).await;
    assert_eq!(b.status(&t).await, 401);
    assert_eq!(b.status(&access("alice", Some("s-new"))).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_backchannel_logout_path_takes_the_clients_logout_tokens() {
    let op = op::MockOp::start().await;
    let up = EchoUpstream::start().await;
    let cfg = op.gateway_config(
        "backchannel_logout_path = \"/oauth2/backchannel-logout\"",
        &route("api", "/api", &[&up.url()], ""),
    );
    let gw = TestGateway::start(&cfg).await;
    let c = gw.client_tls();
    let call = |t: String| {
        let c = &c;
        let url = gw.https_url("/api/x");
        async move {
            let b = format!("Bearer {t}");
            c.get(&url, &[("authorization", &b)]).await.status
        }
    };
    let post = |lt: String| {
        let c = &c;
        let url = gw.https_url("/oauth2/backchannel-logout");
        async move {
            c.send(
                Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                jwtgate::body::full(format!("logout_token={lt}")),
            )
            .await
        }
    };
    let (s1, s2) = (
        op.session_token("alice", "op-s1"),
        op.session_token("alice", "op-s2"),
    );
    assert_eq!(call(s1.clone()).await, 200);
    // The audience is [login] client_id: a token for another client changes nothing.
    let r = post(op.logout_token(json!({"sid": "op-s1", "aud": "another-client"}))).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(call(s1.clone()).await, 200);
    // The MockIdp of the other tests is not this provider: its token is refused.
    let r = post(MockIdp::logout_token(json!({"sid": "op-s1"}))).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post(op.logout_token(json!({"sid": "op-s1"}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(call(s1).await, 401);
    assert_eq!(call(s2).await, 200);
}

#[test]
fn config_errors_name_the_keys() {
    init();
    let dir = TempDir::new();
    let base = base_config(dir.path(), "");
    let route = route("api", "/api", &["http://127.0.0.1:1"], "");
    let issuer = |extra: &str| {
        format!("[[issuers]]\nname = \"op\"\nissuer = \"https://idp.test\"\naudiences = [\"a\", \"b\"]\njwks_url = \"http://127.0.0.1:1/jwks\"\n{extra}\n\n")
    };
    let cases = [
        (issuer("backchannel_logout_path = \"/bc\""), "issuers[0].backchannel_audience"),
        (issuer("backchannel_logout_path = \"bc\"\nbackchannel_audience = \"g\""), "issuers[0].backchannel_logout_path"),
        (issuer("backchannel_audience = \"g\""), "issuers[0].backchannel_audience"),
        (
            issuer("") + "[signals]\nissuer = \"https://ssf.test\"\naudience = \"gw\"\n",
            "signals",
        ),
        (
            issuer("") + "[signals]\nissuer = \"https://idp.test\"\naudience = \"gw\"\npath = \"/api/../x\"\n",
            "signals.path",
        ),
        (
            issuer("") + "[signals]\nissuer = \"https://idp.test\"\naudience = \"\"\n",
            "signals.audience",
        ),
        (
            issuer("backchannel_logout_path = \"/ssf/events\"\nbackchannel_audience = \"g\"")
                + "[signals]\nissuer = \"https://idp.test\"\naudience = \"gw\"\n",
            "signals.path",
        ),
    ];
    for (body, key) in cases {
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, format!("{base}{body}{route}")).unwrap();
        let e = jwtgate::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "want {key}: {e}");
    }
    // Valid: [signals] with its own JWKS, issuer-level back-channel logout.
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "{base}{}[signals]\nissuer = \"https://ssf.test\"\naudience = \"gw\"\njwks_url = \"http://127.0.0.1:1/jwks\"\n\n{route}",
            issuer("backchannel_logout_path = \"/bc\"\nbackchannel_audience = \"g\"")
        ),
    )
    .unwrap();
    jwtgate::config::Config::load(&path).unwrap();
}

/// Measurement, not a check of behaviour (run it alone: `cargo test --release --test signals
/// -- --ignored propagation`): from the IdP's back-channel logout POST to replica A until
/// replica B (cache_ttl_ms 60000, so only pub/sub can tell it) first refuses that session's
/// token, over `JWTGATE_BENCH_SESSIONS` (default 1,000) sessions; p50/p99/max printed, p99
/// held to the issue's 50 ms on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn propagation_backchannel_logout_to_second_replica() {
    let n: usize = std::env::var("JWTGATE_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let redis = RedisServer::start().await;
    let idp = idp().await;
    let a = Replica::start(&idp, &redis_cfg(&redis)).await;
    let b = Replica::start(&idp, &redis_cfg(&redis)).await;
    let (ca, cb) = (a.gw.client_plain(), b.gw.client_plain());
    let (bc_url, api_url) = (a.gw.http_url("/oidc/backchannel"), b.gw.http_url("/api/x"));
    let sessions: Vec<(String, String)> = (0..n)
        .map(|i| {
            let sid = format!("bench-{i}-{}", jwtgate::token::random_id());
            let t = access(&format!("user{i}"), Some(&sid));
            (sid, format!("Bearer {t}"))
        })
        .collect();
    for (_, bearer) in &sessions {
        let r = cb.get(&api_url, &[("authorization", bearer)]).await;
        assert_eq!(r.status, 200, "B caches every session as not revoked");
    }
    let mut took = Vec::with_capacity(n);
    let mut polls = Vec::with_capacity(n);
    for (sid, bearer) in &sessions {
        let lt = MockIdp::logout_token(json!({"sid": sid}));
        let start = std::time::Instant::now();
        let r = ca
            .send(
                Method::POST,
                &bc_url,
                &[("content-type", "application/x-www-form-urlencoded")],
                jwtgate::body::full(format!("logout_token={lt}")),
            )
            .await;
        assert_eq!(r.status, 200);
        let mut k = 0;
        loop {
            k += 1;
            if cb.get(&api_url, &[("authorization", bearer)]).await.status == 401 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "B never refused {sid}"
            );
        }
        took.push(start.elapsed());
        polls.push(k);
    }
    took.sort();
    polls.sort();
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "back-channel logout -> replica B refusal over {n} sessions: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; B polls: median {}, max {}",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*took.last().unwrap()),
        polls[polls.len() / 2],
        polls.last().unwrap()
    );
    assert!(pct(0.99) < Duration::from_millis(50), "p99 {:?}", pct(0.99));
}

/// Measurement (run alone with `--ignored throughput`): authenticated requests per second
/// through one gateway on the Redis store (warm cache), tokens with a `sid` claim against
/// tokens without, alternating rounds in the same run; the medians and their ratio printed.
/// The client shares the machine, so this compares the two, it does not rate the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn throughput_sid_against_no_sid() {
    let redis = RedisServer::start().await;
    let idp = idp().await;
    let g = Replica::start(&idp, &redis_cfg(&redis)).await;
    let url = g.gw.http_url("/api/x");
    let per_round: usize = 4000;
    let conc = 8;
    let mut with_sid = Vec::new();
    let mut without = Vec::new();
    for round in 0..10 {
        let sid = round % 2 == 0;
        // One token per task, as the same users would send them.
        let tokens: Vec<String> = (0..conc)
            .map(|i| {
                let u = format!("u{round}-{i}");
                format!(
                    "Bearer {}",
                    access(&u, sid.then(|| format!("s-{u}")).as_deref())
                )
            })
            .collect();
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for t in tokens {
            let (c, url) = (g.gw.client_plain(), url.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_round / conc {
                    assert_eq!(c.get(&url, &[("authorization", &t)]).await.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rps = per_round as f64 / start.elapsed().as_secs_f64();
        if round >= 2 {
            if sid {
                with_sid.push(rps)
            } else {
                without.push(rps)
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (s, n) = (median(&mut with_sid), median(&mut without));
    eprintln!(
        "requests/s, redis store warm: with sid {s:.0}, without sid {n:.0}, ratio {:.3} (rounds: with {with_sid:.0?}, without {without:.0?})",
        s / n
    );
}
