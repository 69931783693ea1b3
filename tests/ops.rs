//! The operator controls of the admin API, as an operator uses them: drain, the running
//! config (redacted, with its hash), version, undoing a revocation (memory and Redis, both
//! replicas), listing revocations; 401 without the admin token, 405 with `Allow`, HEAD.
//! (`POST /log-level` needs the binary's logger: tests/cli.rs.)

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

struct Rig {
    _up: EchoUpstream,
    gw: TestGateway,
    token: String,
    /// The variable `admin.token_env` names.
    var: String,
}

/// A gateway with issuer "s" (HS256), one authenticated route and `[revocation]`.
async fn rig(revocation: &str) -> Rig {
    let up = EchoUpstream::start().await;
    std::env::set_var(HS_ENV, HS_SECRET);
    let (var, token) = admin_env();
    let cfg = format!(
        "[admin]\ntoken_env = \"{var}\"\n\n[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nkeys = [{{ kid = \"h1\", alg = \"HS256\", secret_env = \"{HS_ENV}\" }}]\n\n[revocation]\n{revocation}\n\n{}",
        route("api", "/api", &[&up.url()], "")
    );
    let gw = TestGateway::start(&cfg).await;
    Rig {
        _up: up,
        gw,
        token,
        var,
    }
}

impl Rig {
    async fn admin(&self, method: Method, path: &str, auth: Option<&str>, body: &str) -> Resp {
        self.gw.admin_call(method, path, auth, body).await
    }

    /// An admin call with the right token.
    async fn op(&self, method: Method, path: &str, body: &str) -> Resp {
        self.admin(method, path, Some(&self.token), body).await
    }

    async fn call(&self, t: &str) -> u16 {
        let b = format!("Bearer {t}");
        self.gw
            .client_plain()
            .get(&self.gw.http_url("/api/x"), &[("authorization", &b)])
            .await
            .status
    }
}

fn hs_token(claims: serde_json::Value) -> String {
    token("HS256", Some("h1"), claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_control_needs_the_admin_token() {
    let r = rig("store = \"memory\"").await;
    let controls = [
        (Method::POST, "/drain"),
        (Method::GET, "/config"),
        (Method::GET, "/version"),
        (Method::GET, "/log-level"),
        (Method::POST, "/log-level"),
        (Method::DELETE, "/revocations/jti/abc"),
        (Method::DELETE, "/revocations/sub/alice"),
        (Method::DELETE, "/revocations/sid/s1"),
        (Method::GET, "/revocations"),
        (Method::GET, "/revocations?sub=alice"),
        (Method::GET, "/revocations?sid=s1"),
        (Method::HEAD, "/config"),
    ];
    let wrong = format!("{}x", r.token);
    for (m, p) in &controls {
        for auth in [None, Some(wrong.as_str()), Some("")] {
            let resp = r.admin(m.clone(), p, auth, "{\"level\":\"debug\"}").await;
            assert_eq!(resp.status, 401, "{m} {p} with {auth:?}: {}", resp.text());
            assert_eq!(
                resp.header("www-authenticate"),
                Some("Bearer realm=\"jwtgate-admin\""),
                "{m} {p}"
            );
        }
    }
    // Nothing happened: not draining, still serving, probes open.
    let ready = r.admin(Method::GET, "/readyz", None, "").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["draining"], false);
    assert_eq!(r.call(&hs_token(json!({}))).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_makes_readyz_503_while_requests_are_still_served() {
    let r = rig("store = \"memory\"").await;
    let t = hs_token(json!({}));
    assert_eq!(r.call(&t).await, 200);
    let resp = r.op(Method::POST, "/drain", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["draining"], true);
    let ready = r.admin(Method::GET, "/readyz", None, "").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["draining"], true);
    assert_eq!(ready.json()["ready"], false);
    // Liveness and traffic are untouched.
    assert_eq!(r.admin(Method::GET, "/healthz", None, "").await.status, 200);
    assert_eq!(r.call(&t).await, 200);
    // Draining twice is harmless; it stays drained (there is no undrain: restart).
    assert_eq!(r.op(Method::POST, "/drain", "").await.status, 200);
    assert_eq!(r.admin(Method::GET, "/readyz", None, "").await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_running_file_redacted_with_its_hash() {
    // A Redis URL with a password in the file itself (memory store: never dialled).
    let r =
        rig("store = \"memory\"\nredis_url = \"redis://default:hunter2-in-file@127.0.0.1:1/0\"")
            .await;
    let resp = r.op(Method::GET, "/config", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let text = resp.text();
    for secret in [HS_SECRET, r.token.as_str(), "hunter2-in-file"] {
        assert!(!text.contains(secret), "secret leaked in /config: {text}");
    }
    let v = resp.json();
    let path = r.gw.dir.path().join("gateway.toml");
    let file = std::fs::read(&path).unwrap();
    let want: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &file)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["sha256"], want);
    assert_eq!(v["path"], path.display().to_string());
    // The variable names are shown, their values never.
    assert!(v["config"]["admin"]["token_env"]
        .as_str()
        .unwrap()
        .starts_with("JWTGATE_TEST_ADMIN_"));
    assert_eq!(v["config"]["issuers"][0]["keys"][0]["secret_env"], HS_ENV);
    assert_eq!(
        v["config"]["revocation"]["redis_url"],
        "redis://default:<redacted>@127.0.0.1:1/0"
    );
    assert_eq!(v["config"]["routes"][0]["name"], "api");

    // A reload shows the new file's hash; a refused one keeps the running one's.
    let mut text = String::from_utf8(file).unwrap();
    text.push_str("\n[[routes]]\nname = \"more\"\npath_prefix = \"/more\"\nupstreams = [\"http://127.0.0.1:9\"]\n");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(r.op(Method::POST, "/reload", "").await.status, 200);
    let v2 = r.op(Method::GET, "/config", "").await.json();
    assert_ne!(v2["sha256"], v["sha256"]);
    assert_eq!(v2["config"]["routes"][1]["name"], "more");
    std::fs::write(&path, "[listen]\n").unwrap();
    assert_eq!(r.op(Method::POST, "/reload", "").await.status, 400);
    assert_eq!(
        r.op(Method::GET, "/config", "").await.json()["sha256"],
        v2["sha256"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_head_on_every_get() {
    let r = rig("store = \"memory\"").await;
    let v = r.op(Method::GET, "/version", "").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json()["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v.json()["name"], "jwtgate");
    for (path, auth) in [
        ("/healthz", None),
        ("/readyz", None),
        ("/metrics", None),
        ("/version", Some(r.token.as_str())),
        ("/config", Some(r.token.as_str())),
        ("/revocations", Some(r.token.as_str())),
        ("/log-level", Some(r.token.as_str())),
    ] {
        let get = r.admin(Method::GET, path, auth, "").await;
        let head = r.admin(Method::HEAD, path, auth, "").await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_get_405_with_allow() {
    let r = rig("store = \"memory\"").await;
    for (m, path, allow) in [
        (Method::GET, "/drain", "POST"),
        (Method::PUT, "/healthz", "GET, HEAD"),
        (Method::POST, "/readyz", "GET, HEAD"),
        (Method::POST, "/metrics", "GET, HEAD"),
        (Method::POST, "/config", "GET, HEAD"),
        (Method::DELETE, "/version", "GET, HEAD"),
        (Method::GET, "/reload", "POST"),
        (Method::PUT, "/log-level", "GET, HEAD, POST"),
        (Method::DELETE, "/revocations", "GET, HEAD, POST"),
        (Method::POST, "/revocations/jti/x", "GET, HEAD, DELETE"),
        (Method::GET, "/revocations/sub/alice", "DELETE"),
        (Method::GET, "/revocations/sid/s1", "DELETE"),
    ] {
        let resp = r.op(m.clone(), path, "").await;
        assert_eq!(resp.status, 405, "{m} {path}: {}", resp.text());
        assert_eq!(resp.header("allow"), Some(allow), "{m} {path}");
        assert_eq!(resp.json()["error"], "method_not_allowed");
    }
    assert_eq!(r.op(Method::GET, "/nope", "").await.status, 404);
    assert_eq!(r.call(&hs_token(json!({}))).await, 200);
}

/// One kind of revocation `undo_case` goes through.
struct Undo {
    /// `jti`, `sub` or `sid`: the listed `kind` and the `DELETE /revocations/<kind>/` path.
    kind: &'static str,
    /// A token the revocation refuses.
    token: String,
    /// The revoked jti, subject or session.
    value: String,
    /// The `POST /revocations` body.
    revoke: serde_json::Value,
    /// The `GET /revocations` query that lists it (a jti is listed only unfiltered).
    query: String,
}

/// For each kind (jti, subject, session): revoke, see it refused and listed, undo, see it
/// served again; through `a` while `b` (the same gateway, or another replica) must follow.
async fn undo_case(a: &Rig, b: &Rig) {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let t = hs_token(json!({}));
    let c = claims_of(&t);
    let jti = c["jti"].as_str().unwrap().to_string();
    let query = |k: &str, v: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair(k, v)
            .finish()
    };
    // Values that need percent-encoding in the path.
    let (sub, sid) = ("erin@example.com/x", "sess/1 @b");
    let now = jwtgate::auth::now_unix();
    let cases = [
        Undo {
            kind: "jti",
            revoke: json!({"jti": jti, "exp": c["exp"]}),
            token: t,
            value: jti,
            query: String::new(),
        },
        Undo {
            kind: "sub",
            token: hs_token(json!({"sub": sub, "iat": now - 5})),
            value: sub.into(),
            revoke: json!({"sub": sub}),
            query: query("sub", sub),
        },
        Undo {
            kind: "sid",
            token: hs_token(json!({"sid": sid})),
            value: sid.into(),
            revoke: json!({"sid": sid}),
            query: query("sid", sid),
        },
    ];
    for u in &cases {
        let kind = u.kind;
        let listed = || async {
            let l = a
                .op(Method::GET, &format!("/revocations?{}", u.query), "")
                .await;
            assert_eq!(l.status, 200, "{kind}: {}", l.text());
            let l = l.json();
            assert_eq!(l["truncated"], false);
            l["revocations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["value"] == u.value.as_str())
                .cloned()
        };
        assert_eq!(b.call(&u.token).await, 200, "{kind}");
        let body = u.revoke.to_string();
        assert_eq!(a.op(Method::POST, "/revocations", &body).await.status, 204);
        // b may cache the "revoked" answer until the token's exp: only the undo message
        // clears it.
        assert!(
            eventually(Duration::from_secs(3), || async {
                b.call(&u.token).await == 401
            })
            .await
            .is_some(),
            "{kind}: revocation not seen"
        );
        let entry = listed()
            .await
            .unwrap_or_else(|| panic!("{kind} {:?} not listed", u.value));
        assert_eq!(
            (entry["kind"].as_str(), entry["issuer"].as_str()),
            (Some(kind), Some("s"))
        );
        match kind {
            "jti" => assert!(entry["until"].as_i64().unwrap() >= c["exp"].as_i64().unwrap()),
            "sub" => assert!(entry["revoked_before"].as_i64().unwrap() >= now - 60),
            _ => assert!(entry["until"].as_i64().unwrap() > now, "{entry}"),
        }
        let path = format!(
            "/revocations/{kind}/{}",
            utf8_percent_encode(&u.value, NON_ALPHANUMERIC)
        );
        let del = a.op(Method::DELETE, &path, "").await;
        assert_eq!(del.status, 204, "{kind}: {}", del.text());
        assert!(
            eventually(Duration::from_secs(3), || async {
                b.call(&u.token).await == 200
            })
            .await
            .is_some(),
            "{kind}: undo not seen"
        );
        assert_eq!(a.call(&u.token).await, 200, "{kind}");
        let again = a.op(Method::DELETE, &path, "").await;
        assert_eq!(again.status, 404, "{kind}: {}", again.text());
        assert_eq!(listed().await, None, "{kind}: still listed after the undo");
    }
    // Another subject or session lists nothing.
    for q in ["sub=nobody", "sid=nothing"] {
        let none = a.op(Method::GET, &format!("/revocations?{q}"), "").await;
        assert_eq!(none.json()["revocations"], json!([]), "{q}");
    }
    // Bad input: unknown issuer, empty or both filters, a limit out of range.
    for kind in ["jti", "sub", "sid"] {
        let bad = a
            .op(
                Method::DELETE,
                &format!("/revocations/{kind}/x?issuer=zzz"),
                "",
            )
            .await;
        assert_eq!(bad.status, 400, "{kind}");
        assert!(bad.text().contains("unknown issuer"), "{}", bad.text());
    }
    for q in ["sub=", "sid=", "sub=a&sid=b", "limit=0"] {
        let r = a.op(Method::GET, &format!("/revocations?{q}"), "").await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    assert_eq!(a.call(&hs_token(json!({}))).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_and_list_revocations_with_the_memory_store() {
    let r = rig("store = \"memory\"").await;
    undo_case(&r, &r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_through_one_redis_replica_reaches_the_other() {
    let redis = RedisServer::start().await;
    // A long cache TTL: replica b keeps "revoked" answers; only the undo message clears them.
    let cfg = format!(
        "store = \"redis\"\nredis_url = \"{}\"\ncache_ttl_ms = 60000\ntimeout_ms = 200",
        redis.url()
    );
    let a = rig(&cfg).await;
    let b = rig(&cfg).await;
    undo_case(&a, &b).await;
    // The keys are gone from Redis itself.
    let mut c = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("jwtgate:revoked:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

// === jwtgate revoke ===

/// Run `jwtgate revoke` with `args`, `stdin`, and only the environment given.
fn revoke_cli(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new(env!("CARGO_BIN_EXE_jwtgate"));
    c.arg("revoke")
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cli_reads_the_config_and_revokes_a_token_by_its_own_jti() {
    let r = rig("store = \"memory\"").await;
    // The config as the operator has it: the admin address with its real port.
    let text = std::fs::read_to_string(r.gw.dir.path().join("gateway.toml")).unwrap();
    let text = text.replace(
        "admin = \"127.0.0.1:0\"",
        &format!("admin = \"{}\"", r.gw.admin),
    );
    let cfg = r.gw.dir.path().join("operator.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    // The token variable is the one admin.token_env names, not JWTGATE_ADMIN_TOKEN.
    let env = [(r.var.as_str(), r.token.as_str())];

    let t = hs_token(json!({}));
    assert_eq!(r.call(&t).await, 200);
    let (code, out, err) = revoke_cli(&["-c", cfg, "--token", &t], &env, "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "revoked");
    assert_eq!(r.call(&t).await, 401);
    let l = r.op(Method::GET, "/revocations", "").await.json();
    assert_eq!(l["revocations"][0]["value"], claims_of(&t)["jti"]);

    // From stdin (kept out of the process list).
    let u = hs_token(json!({}));
    let (code, _, err) = revoke_cli(&["-c", cfg, "--token", "-"], &env, &format!("{u}\n"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(r.call(&u).await, 401);

    // What it refuses, without echoing the token.
    let no_jti = hs_token(json!({"jti": null}));
    for (token, needle) in [("not-a-jwt", "not a JWT"), (no_jti.as_str(), "no `jti`")] {
        let (code, _, err) = revoke_cli(&["-c", cfg, "--token", token], &env, "");
        assert_eq!(code, 1);
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains(token), "echoed the token: {err}");
    }
    // Without the variable the config names.
    let (code, _, err) = revoke_cli(
        &["-c", cfg, "--sub", "x"],
        &[("JWTGATE_ADMIN_TOKEN", r.token.as_str())],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains(&format!("set {}", r.var)), "{err}");
    // A wrong token: the gateway's 401, passed on.
    let (code, _, err) = revoke_cli(&["-c", cfg, "--sub", "x"], &[(r.var.as_str(), "wrong")], "");
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    // --token with --jti is a usage error.
    let (code, _, _) = revoke_cli(
        &["-c", cfg, "--token", &t, "--jti", "x", "--exp", "1"],
        &env,
        "",
    );
    assert_eq!(code, 2);
    // Still serving.
    assert_eq!(r.call(&hs_token(json!({}))).await, 200);
}

// === listen.metrics ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_probes_and_metrics_only() {
    let up = EchoUpstream::start().await;
    let (var, token) = admin_env();
    let gw = TestGateway::start_listen(
        "metrics = \"127.0.0.1:0\"",
        &format!(
            "[admin]\ntoken_env = \"{var}\"\n\n{}",
            route("open", "/", &[&up.url()], "auth = \"none\"")
        ),
    )
    .await;
    let m = gw.metrics.expect("listen.metrics bound");
    assert_ne!(m, gw.admin);
    let cl = gw.client_plain();
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let url = |p: &str| format!("http://{m}{p}");
    assert_eq!(cl.get(&url("/healthz"), &[]).await.status, 200);
    assert_eq!(cl.get(&url("/readyz"), &[]).await.status, 200);
    let metrics = cl.get(&url("/metrics"), &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("jwtgate_build_info"),
        "{}",
        metrics.text()
    );
    let head = cl
        .send(Method::HEAD, &url("/metrics"), &[], jwtgate::body::empty())
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = cl
        .send(Method::POST, &url("/metrics"), &[], jwtgate::body::empty())
        .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // Nothing else, not even with the admin token.
    for (method, path, body) in [
        (Method::POST, "/revocations", r#"{"sub": "alice"}"#),
        (Method::GET, "/revocations", ""),
        (Method::GET, "/revocations/jti/x", ""),
        (Method::DELETE, "/revocations/sub/alice", ""),
        (Method::DELETE, "/revocations/sid/s1", ""),
        (Method::POST, "/reload", ""),
        (Method::POST, "/drain", ""),
        (Method::GET, "/config", ""),
        (Method::GET, "/version", ""),
        (Method::POST, "/log-level", r#"{"level": "trace"}"#),
        (Method::GET, "/.well-known/jwks.json", ""),
    ] {
        let r = cl
            .send(method.clone(), &url(path), &auth, jwtgate::body::full(body))
            .await;
        assert_eq!(
            r.status,
            404,
            "{method} {path} on listen.metrics: {}",
            r.text()
        );
    }
    // Nothing was done: the admin listener lists no revocation and is not draining.
    let admin = |p: &str| format!("http://{}{p}", gw.admin);
    let l = cl.get(&admin("/revocations"), &auth).await;
    assert_eq!(l.status, 200, "{}", l.text());
    assert_eq!(l.json()["revocations"], json!([]));
    assert_eq!(
        cl.get(&admin("/readyz"), &[]).await.json()["draining"],
        false
    );
    assert_eq!(cl.get(&gw.http_url("/x"), &[]).await.status, 200);
}

// === secrets from the environment ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_come_from_the_environment_and_a_missing_variable_is_named() {
    let redis = RedisServer::start().await;
    let up = EchoUpstream::named("env-up").await;
    let (var, token) = admin_env();
    // The Redis URL with a password-like userinfo, only in the environment.
    let url = redis.url();
    std::env::set_var("JWTGATE_TEST_OPS_REDIS_URL", &url);
    std::env::set_var("JWTGATE_TEST_OPS_UP", up.url());
    let cfg = format!(
        "[admin]\ntoken_env = \"{var}\"\n\n[revocation]\nstore = \"redis\"\nredis_url = \"${{JWTGATE_TEST_OPS_REDIS_URL}}\"\ntimeout_ms = 200\n\n{}",
        route("r", "/", &["${JWTGATE_TEST_OPS_UP}"], "auth = \"none\"")
    );
    // Ready only once the store answers: the expanded URL is the one dialled.
    let gw = TestGateway::start(&cfg).await;
    let ready = gw
        .client_plain()
        .get(&format!("http://{}/readyz", gw.admin), &[])
        .await;
    assert_eq!(ready.json()["revocation"]["up"], true);
    let r = gw.client_plain().get(&gw.http_url("/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("env-up"), "{:?}", r.headers);
    // /config shows the reference, not the value.
    let bearer = format!("Bearer {token}");
    let c = gw
        .client_plain()
        .get(
            &format!("http://{}/config", gw.admin),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(
        c.json()["config"]["revocation"]["redis_url"],
        "${JWTGATE_TEST_OPS_REDIS_URL}"
    );
    assert!(!c.text().contains(&url), "{}", c.text());

    // A reload re-reads the file: a new route whose upstream comes from another variable.
    let up2 = EchoUpstream::named("env-up2").await;
    std::env::set_var("JWTGATE_TEST_OPS_UP2", up2.url());
    let path = gw.dir.path().join("gateway.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&route(
        "r2",
        "/two",
        &["${JWTGATE_TEST_OPS_UP2}"],
        "auth = \"none\"",
    ));
    std::fs::write(&path, &text).unwrap();
    let rl = gw.reload(&token).await;
    assert_eq!(rl.status, 200, "{}", rl.text());
    let r = gw.client_plain().get(&gw.http_url("/two/x"), &[]).await;
    assert_eq!(r.header("x-upstream"), Some("env-up2"));
    // A variable that is not set: the reload is refused naming the key, the old config stays.
    text.push_str(&route(
        "r3",
        "/three",
        &["${JWTGATE_TEST_OPS_UNSET}"],
        "auth = \"none\"",
    ));
    std::fs::write(&path, &text).unwrap();
    let rl = gw.reload(&token).await;
    assert_eq!(rl.status, 400);
    assert!(
        rl.text().contains("routes[2].upstreams[0]")
            && rl.text().contains("JWTGATE_TEST_OPS_UNSET"),
        "{}",
        rl.text()
    );
    assert_eq!(
        gw.client_plain()
            .get(&gw.http_url("/two/x"), &[])
            .await
            .status,
        200
    );

    // `jwtgate check` (a real process) names the key and the variable.
    let dir = TempDir::new();
    let bad = dir.path().join("gw.toml");
    for (revocation, needle) in [
        (
            "store = \"redis\"\nredis_url = \"redis://:${JWTGATE_TEST_OPS_NOPE}@h:6379/0\"",
            "`revocation.redis_url`: the environment variable JWTGATE_TEST_OPS_NOPE (from `${JWTGATE_TEST_OPS_NOPE}`) is not set",
        ),
        (
            "store = \"redis\"\nredis_url_env = \"JWTGATE_TEST_OPS_NOPE\"",
            "`revocation.redis_url_env`: the environment variable JWTGATE_TEST_OPS_NOPE is not set",
        ),
    ] {
        std::fs::write(
            &bad,
            format!("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[revocation]\n{revocation}\n{}", route("r", "/", &["http://127.0.0.1:9"], "auth = \"none\"")),
        )
        .unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args(["check", "-c", bad.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // redis_url_env set: the same store, no URL in the file at all.
    std::fs::write(
        &bad,
        format!("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[revocation]\nstore = \"redis\"\nredis_url_env = \"JWTGATE_TEST_OPS_REDIS_URL\"\n{}", route("r", "/", &["http://127.0.0.1:9"], "auth = \"none\"")),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["check", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

// === certificate rotation ===

/// A TLS connection to `addr` trusting every certificate in `roots` (HTTP/1.1), and the
/// leaf certificate the server presented.
async fn tls_connect(
    addr: std::net::SocketAddr,
    roots: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            store.add(c.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (s, leaf)
}

/// One HTTP/1.1 keep-alive exchange on `s`: the status code.
async fn exchange(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /x HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

/// The value of the sample `name` (with labels) in admin /metrics.
async fn metric(gw: &TestGateway, sample: &str) -> Option<f64> {
    let m = gw
        .client_plain()
        .get(&format!("http://{}/metrics", gw.admin), &[])
        .await;
    m.text().lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn not_after(pem: &[u8]) -> i64 {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_handshakes_and_a_broken_one_is_not() {
    let up = EchoUpstream::start().await;
    // `watch_interval_ms` lands in the generated [tls] table.
    let gw = TestGateway::start(&format!(
        "watch_interval_ms = 100\n\n{}",
        route("r", "/", &[&up.url()], "auth = \"none\"")
    ))
    .await;
    let (cert_path, key_path) = (
        gw.dir.path().join("localhost.crt"),
        gw.dir.path().join("localhost.key"),
    );
    let old_pem = std::fs::read(&cert_path).unwrap();
    let not_after_sample = "jwtgate_tls_cert_not_after_seconds{listener=\"https\"}";
    assert_eq!(
        metric(&gw, not_after_sample).await,
        Some(not_after(&old_pem) as f64)
    );
    let renewed = TempDir::new();
    let (new_cert, new_key) =
        jwtgate::certs::write(renewed.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
    let new_pem = std::fs::read(&new_cert).unwrap();
    assert_ne!(old_pem, new_pem);
    let roots: [&[u8]; 2] = [&old_pem, &new_pem];

    // A connection opened before the renewal.
    let (mut before, leaf) = tls_connect(gw.https, &roots).await;
    assert_eq!(exchange(&mut before).await, 200);
    let old_leaf = leaf;

    std::fs::copy(&new_key, &key_path).unwrap();
    std::fs::copy(&new_cert, &cert_path).unwrap();
    let ok = "jwtgate_tls_cert_reloads_total{result=\"ok\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&gw, ok).await.unwrap_or(0.0) >= 1.0
        })
        .await
        .is_some(),
        "the renewed pair was never loaded"
    );
    let (mut after, new_leaf) = tls_connect(gw.https, &roots).await;
    assert_ne!(
        new_leaf, old_leaf,
        "a new handshake still got the old certificate"
    );
    assert_eq!(exchange(&mut after).await, 200);
    // The old connection keeps working, on its old certificate.
    assert_eq!(exchange(&mut before).await, 200);
    assert_eq!(
        before.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        old_leaf
    );
    assert_eq!(
        metric(&gw, not_after_sample).await,
        Some(not_after(&new_pem) as f64)
    );

    // A broken certificate file: refused, the renewed pair stays in use.
    let refused = "jwtgate_tls_cert_reloads_total{result=\"refused\"}";
    let before_refused = metric(&gw, refused).await.unwrap_or(0.0);
    std::fs::write(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&gw, refused).await.unwrap_or(0.0) > before_refused
        })
        .await
        .is_some(),
        "the broken file was never looked at"
    );
    let (mut third, leaf) = tls_connect(gw.https, &roots).await;
    assert_eq!(leaf, new_leaf);
    assert_eq!(exchange(&mut third).await, 200);
    // A well-formed certificate with the wrong key: refused too.
    let other = TempDir::new();
    let (other_cert, _) = jwtgate::certs::write(other.path(), &["localhost".into()]).unwrap();
    let before_refused = metric(&gw, refused).await.unwrap_or(0.0);
    std::fs::copy(&other_cert, &cert_path).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&gw, refused).await.unwrap_or(0.0) > before_refused
        })
        .await
        .is_some(),
        "the mismatched pair was never looked at"
    );
    let (mut fourth, leaf) = tls_connect(gw.https, &roots).await;
    assert_eq!(leaf, new_leaf);
    assert_eq!(exchange(&mut fourth).await, 200);
}
