//! `jwtgate demo`: a self-contained local walkthrough. Starts, on loopback ports, an echo
//! upstream, a small identity provider (ES256 JWKS) and the gateway configured against them,
//! checks the whole flow itself, then prints copy-paste curl commands.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::cli::token::{mint, Mint, SigningKey};
use crate::config::Config;

const ISSUER: &str = "http://demo-idp.local";
const KID: &str = "demo-es256";

/// Run the demo; with `once`, exit after the self-check instead of serving until Ctrl-C.
pub async fn run(once: bool) -> ExitCode {
    match run_inner(once).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jwtgate demo: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run_inner(once: bool) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("jwtgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

    // 1. Echo upstream: answers with what it received, as JSON.
    let upstream = serve_fn(|req| async move { echo(req).await }).await?;

    // 2. Identity provider: an ES256 key, published as a JWKS.
    let kp =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let raw = kp.public_key_raw();
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    }]})
    .to_string();
    let idp_state = Arc::new(DemoIdp {
        jwks,
        signing_pem: kp.serialize_pem(),
        refresh_tokens: Mutex::new(HashMap::new()),
    });
    let st = idp_state.clone();
    let idp = serve_fn(move |req| {
        let st = st.clone();
        async move { st.handle(req).await }
    })
    .await?;
    std::env::set_var(DEMO_SECRET_ENV, "demo-client-secret");

    // 3. Gateway: dev certificate and a config pointing at both.
    let (cert, key) =
        crate::cli::certs::write(&dir, &["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| e.to_string())?;
    // The gateway's own key for signed identity assertions (upstreams verify them with the
    // admin listener's /.well-known/jwks.json).
    let assertion_pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| e.to_string())?
        .serialize_pem();
    let assertion_key = dir.join("assertion.key");
    std::fs::write(&assertion_key, assertion_pem).map_err(|e| e.to_string())?;
    let toml = format!(
        r#"[listen]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
worker_threads = 2
log_format = "text"

[tls]
cert = "{cert}"
key = "{key}"

[[issuers]]
name = "demo"
issuer = "{ISSUER}"
audiences = ["demo-api"]
algorithms = ["ES256"]
jwks_url = "http://{idp}/.well-known/jwks.json"

[identity]
assertion_key = "{assertion_key}"

[identity.claims]
"x-user-email" = "email"

[refresh]
token_endpoint = "http://{idp}/token"
client_id = "jwtgate-demo"
client_secret_env = "{DEMO_SECRET_ENV}"
refresh_before_s = 60

[[routes]]
name = "api"
path_prefix = "/api"
upstreams = ["http://{upstream}"]
cors = {{ origins = ["https://app.example"], headers = ["authorization"], credentials = true }}

[[routes]]
name = "limited"
path_prefix = "/limited"
upstreams = ["http://{upstream}"]
rate_limit = {{ per = "sub", rps = 1, burst = 3 }}

[[routes]]
name = "admin"
path_prefix = "/admin"
upstreams = ["http://{upstream}"]
scopes = ["admin"]

[[routes]]
name = "public"
path_prefix = "/public"
upstreams = ["http://{upstream}"]
auth = "none"
"#,
        cert = cert.display(),
        key = key.display(),
        assertion_key = assertion_key.display(),
    );
    let cfg_path = dir.join("gateway.toml");
    std::fs::write(&cfg_path, &toml).map_err(|e| e.to_string())?;
    let cfg = Config::load(&cfg_path).map_err(|e| e.to_string())?;
    let gw = crate::serve(cfg).await.map_err(|e| e.to_string())?;
    let https = gw.https_addr.ok_or("no https listener")?;
    let http = gw.http_addr.ok_or("no http listener")?;
    for _ in 0..100 {
        if gw.shared.app.load().keys_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let token = idp_state.access_token("alice", 3600)?;

    // 4. Walk through the flow over the plain listener and show what happened.
    println!("jwtgate demo: upstream http://{upstream}  identity provider http://{idp}  gateway https://{https} http://{http}  admin http://{}", gw.admin_addr);
    println!("config: {}\n", cfg_path.display());
    let bearer = format!("Bearer {token}");
    // (what it shows, path, request headers, expected status)
    type Step<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let steps: [Step; 5] = [
        ("no token -> 401", "/api/hello", vec![], 401),
        (
            "valid token -> 200, identity headers set by the gateway",
            "/api/hello",
            vec![("authorization", &bearer)],
            200,
        ),
        (
            "forged x-user-id is ignored",
            "/api/hello",
            vec![("authorization", &bearer), ("x-user-id", "admin")],
            200,
        ),
        (
            "route needs scope admin -> 403",
            "/admin/panel",
            vec![("authorization", &bearer)],
            403,
        ),
        (
            "public route, no token needed -> 200",
            "/public/info",
            vec![],
            200,
        ),
    ];
    let mut ok = true;
    for (what, path, headers, want) in steps {
        let (status, body) = get(http, path, &headers).await?;
        let mark = check(&mut ok, status == want);
        println!("[{mark}] {what}: GET {path} -> {status}");
        if status == 200 && path.starts_with("/api") {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let h = &v["headers"];
            println!(
                "       upstream saw x-user-id={} x-user-scopes={} x-user-email={}",
                h["x-user-id"], h["x-user-scopes"], h["x-user-email"]
            );
            if h["x-user-id"] != "alice" {
                ok = false;
                println!("[FAIL] upstream did not see the verified subject");
            }
            let assertion = h["x-jwtgate-assertion"].as_str().unwrap_or("");
            println!(
                "       and x-jwtgate-assertion={}... (ES256, signed by the gateway)",
                &assertion[..assertion.len().min(24)]
            );
            if assertion.split('.').count() != 3 {
                ok = false;
                println!("[FAIL] upstream did not get the gateway's signed assertion");
            }
        }
    }

    // A browser app on another origin: the gateway answers its CORS preflight itself.
    let (status, headers, _) = request(
        http,
        http::Method::OPTIONS,
        "/api/hello",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
    )
    .await?;
    let allowed = headers
        .get("access-control-allow-origin")
        .is_some_and(|v| v == "https://app.example");
    let mark = check(&mut ok, status == 204 && allowed);
    println!(
        "[{mark}] CORS preflight from https://app.example -> {status}, answered by the gateway"
    );

    // Rate limit: burst 3, then 1 request a second per subject.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, headers, _) = request(
            http,
            http::Method::GET,
            "/limited/x",
            &[("authorization", &bearer)],
        )
        .await?;
        seen.push((status, headers.get("retry-after").cloned()));
    }
    let statuses: Vec<u16> = seen.iter().map(|(s, _)| *s).collect();
    let mark = check(
        &mut ok,
        statuses == [200, 200, 200, 429] && seen[3].1.is_some(),
    );
    println!("[{mark}] rate_limit per subject (burst 3, 1/s): 4 quick requests -> {statuses:?}, the last with Retry-After");

    // Edge refresh: an access token 20 s from expiry plus a refresh token, as a browser
    // would hold them in cookies. The gateway renews it with the IdP on the way through.
    let near = idp_state.access_token("alice", 20)?;
    let rt = idp_state.refresh_token("alice");
    let cookie = format!("access_token={near}; refresh_token={rt}");
    let (status, headers, _) = request(
        http,
        http::Method::GET,
        "/api/hello",
        &[("cookie", &cookie)],
    )
    .await?;
    let renewed = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| c.starts_with("access_token=") && !c.contains(&near));
    let mark = check(&mut ok, status == 200 && renewed);
    println!("[{mark}] access token 20 s from expiry + refresh cookie -> {status}, new access_token and rotated refresh_token cookies set by the gateway");

    println!("\nTry it yourself (the gateway runs until Ctrl-C):\n");
    println!("  TOKEN='{token}'");
    println!(
        "  curl -sk https://localhost:{}/api/hello                                  # 401",
        https.port()
    );
    println!("  curl -sk -H \"Authorization: Bearer $TOKEN\" https://localhost:{}/api/hello   # 200, see x-user-id", https.port());
    println!("  curl -sk -H \"Authorization: Bearer $TOKEN\" -H 'x-user-id: admin' https://localhost:{}/api/hello  # x-user-id stays alice", https.port());
    println!("  curl -sk -H \"Authorization: Bearer $TOKEN\" https://localhost:{}/admin/panel   # 403 insufficient_scope", https.port());
    println!("  # refresh at the edge: a token about to expire plus a refresh token (see the Set-Cookie lines)");
    println!(
        "  curl -sk -D - -o /dev/null --cookie 'access_token={}; refresh_token={}' https://localhost:{}/api/hello",
        idp_state.access_token("alice", 20)?,
        idp_state.refresh_token("alice"),
        https.port()
    );
    println!("  curl -s http://{}/readyz", gw.admin_addr);
    println!(
        "  curl -s http://{}/.well-known/jwks.json   # the key upstreams verify x-jwtgate-assertion with",
        gw.admin_addr
    );

    if !ok {
        gw.shutdown().await;
        return Err("the walkthrough did not behave as expected".into());
    }
    if once {
        gw.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        println!("\ndemo OK");
        return Ok(());
    }
    let _ = tokio::signal::ctrl_c().await;
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The walkthrough's mark for one step; a failed step fails the whole demo.
fn check(ok: &mut bool, passed: bool) -> &'static str {
    *ok &= passed;
    if passed {
        "ok  "
    } else {
        "FAIL"
    }
}

/// Serve `f` on a fresh loopback port; returns the address.
async fn serve_fn<F, Fut>(f: F) -> Result<SocketAddr, String>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, String>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let f = f.clone();
                    async move {
                        Ok::<_, Infallible>(f(req).await.unwrap_or_else(|e| {
                            let mut r = Response::new(Full::new(Bytes::from(e)));
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            r
                        }))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, String> {
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.to_string(),
            serde_json::Value::from(v.to_str().unwrap_or("<binary>")),
        );
    }
    let json = serde_json::json!({"method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers});
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .map_err(|e| e.to_string())
}

async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Bytes), String> {
    let (status, _, body) = request(addr, http::Method::GET, path, headers).await?;
    Ok((status, body))
}

async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let client = crate::net::Client::new(1);
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(crate::net::body::empty())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, parts.headers, body))
}

const DEMO_SECRET_ENV: &str = "JWTGATE_DEMO_CLIENT_SECRET";

/// The demo's identity provider: a JWKS, and a token endpoint issuing short-lived access
/// tokens (60 s) with rotating (single-use) refresh tokens.
struct DemoIdp {
    jwks: String,
    signing_pem: String,
    refresh_tokens: Mutex<HashMap<String, String>>,
}

impl DemoIdp {
    fn access_token(&self, sub: &str, ttl: u64) -> Result<String, String> {
        mint(&Mint {
            alg: jsonwebtoken::Algorithm::ES256,
            key: SigningKey::Pem(self.signing_pem.clone().into_bytes()),
            sub: sub.into(),
            kid: Some(KID.into()),
            iss: Some(ISSUER.into()),
            aud: Some("demo-api".into()),
            scope: Some("orders:read".into()),
            ttl: Duration::from_secs(ttl),
            claims: vec![("email".into(), format!("{sub}@example.com"))],
        })
        .map_err(|e| e.to_string())
    }

    fn refresh_token(&self, sub: &str) -> String {
        let t = crate::cli::token::random_id();
        if let Ok(mut m) = self.refresh_tokens.lock() {
            m.insert(t.clone(), sub.to_string());
        }
        t
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, String> {
        let json = |status: u16, body: String| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("cache-control", "max-age=300")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())
        };
        if req.uri().path() != "/token" {
            return json(200, self.jwks.clone());
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        let sub = self
            .refresh_tokens
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&presented));
        let Some(sub) = sub else {
            return json(
                400,
                serde_json::json!({"error": "invalid_grant"}).to_string(),
            );
        };
        let access = self.access_token(&sub, 60)?;
        let v = serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 60, "refresh_token": self.refresh_token(&sub)});
        json(200, v.to_string())
    }
}
