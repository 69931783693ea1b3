//! `jwtgate demo`: a self-contained local walkthrough. Starts, on loopback ports, an echo
//! upstream, a small OpenID provider (discovery, ES256 JWKS, a sign-in page, a token
//! endpoint with PKCE, end-session) and the gateway configured against them (`[login]` on
//! `/app`), checks the whole flow itself, browser sign-in included, then prints copy-paste
//! curl commands and the URL to sign in at with a browser.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
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

use crate::cli::demo_idp::DemoIdp;
use crate::config::Config;

pub(super) const KID: &str = "demo-es256";
pub(super) const CLIENT_ID: &str = "jwtgate-demo";
pub(super) const CLIENT_SECRET: &str = "demo-client-secret";
pub(super) const CALLBACK: &str = "/oauth2/callback";

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
        issuer: OnceLock::new(),
        gateway_origins: OnceLock::new(),
        requests: Mutex::new(HashMap::new()),
        codes: Mutex::new(HashMap::new()),
        refresh_tokens: Mutex::new(HashMap::new()),
    });
    let st = idp_state.clone();
    let idp = serve_fn(move |req| {
        let st = st.clone();
        async move { st.handle(req).await }
    })
    .await?;
    let _ = idp_state.issuer.set(format!("http://{idp}"));
    std::env::set_var(DEMO_SECRET_ENV, CLIENT_SECRET);
    // The key that seals the sign-in state cookie: new at every start.
    let session_secret =
        crate::identity::login::state::random(32).ok_or("no randomness for the session secret")?;
    std::env::set_var(DEMO_SESSION_ENV, session_secret);

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
issuer = "http://{idp}"
audiences = ["demo-api"]
algorithms = ["ES256"]
discovery = true

[login]
issuer = "demo"
client_id = "{CLIENT_ID}"
client_secret_env = "{DEMO_SECRET_ENV}"
session_secret_env = "{DEMO_SESSION_ENV}"
scopes = ["openid", "email"]
callback_path = "{CALLBACK}"
post_logout_redirect = "/public/signed-out"

[identity]
assertion_key = "{assertion_key}"

[identity.claims]
"x-user-email" = "email"

[refresh]
token_endpoint = "http://{idp}/token"
client_id = "{CLIENT_ID}"
client_secret_env = "{DEMO_SECRET_ENV}"
refresh_before_s = 60

[[routes]]
name = "api"
path_prefix = "/api"
upstreams = ["http://{upstream}"]
cors = {{ origins = ["https://app.example"], headers = ["authorization"], credentials = true }}

[[routes]]
name = "app"
path_prefix = "/app"
upstreams = ["http://{upstream}"]
login = true

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
name = "bound"
path_prefix = "/bound"
upstreams = ["http://{upstream}"]
sender_constraint = "required"

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
    let _ = idp_state.gateway_origins.set(vec![
        format!("http://127.0.0.1:{}", http.port()),
        format!("http://localhost:{}", http.port()),
        format!("https://127.0.0.1:{}", https.port()),
        format!("https://localhost:{}", https.port()),
    ]);
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

    // Sender-constrained tokens: a DPoP-bound token is worth nothing without its key.
    let (dpop, dpop_pem) = crate::cli::token::DpopKey::generate()?;
    let dpop_path = dir.join("dpop.key");
    std::fs::write(&dpop_path, dpop_pem).map_err(|e| e.to_string())?;
    let bound = idp_state.bound_access_token("alice", &dpop.thumbprint())?;
    let proof = dpop.proof(
        "GET",
        &format!("http://{http}/bound/orders"),
        Some(&bound),
        None,
    )?;
    let dpop_auth = format!("DPoP {bound}");
    let with_proof = [
        ("authorization", dpop_auth.as_str()),
        ("dpop", proof.as_str()),
    ];
    let stolen_bearer = format!("Bearer {bound}");
    let mut statuses = Vec::new();
    for headers in [
        &with_proof[..],
        &with_proof[..],
        &[("authorization", stolen_bearer.as_str())][..],
        &[("authorization", bearer.as_str())][..],
    ] {
        statuses.push(get(http, "/bound/orders", headers).await?.0);
    }
    let mark = check(&mut ok, statuses == [200, 401, 401, 401]);
    println!(
        "[{mark}] DPoP-bound token on /bound (sender_constraint = \"required\"): with its proof -> {}; the same proof replayed -> {}; the token stolen without its key -> {}; a plain bearer token -> {}",
        statuses[0], statuses[1], statuses[2], statuses[3]
    );

    // Sign-in at the edge, as a browser does it: cookies kept, redirects followed by hand.
    let app_url = format!("http://127.0.0.1:{}/app", http.port());
    let signed_in = sign_in_walk(&app_url, &format!("http://{idp}")).await;
    let mark = check(&mut ok, signed_in.is_ok());
    match &signed_in {
        Ok(steps) => println!("[{mark}] browser sign-in on /app (login = true): {steps}"),
        Err(e) => println!("[{mark}] browser sign-in on /app (login = true): {e}"),
    }

    println!("\nTry it yourself (the gateway runs until Ctrl-C):\n");
    println!("  Open {app_url} in a browser to sign in (as alice, on the demo IdP's page)\n");
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
    println!(
        "  # DPoP (RFC 9449): a token bound to the key in {}, and a fresh proof per request",
        dpop_path.display()
    );
    println!("  BOUND='{bound}'");
    println!(
        "  curl -sk -H \"Authorization: DPoP $BOUND\" -H \"DPoP: $(jwtgate dpop-proof --key {} --url https://localhost:{}/bound/orders --token $BOUND)\" https://localhost:{}/bound/orders",
        dpop_path.display(),
        https.port(),
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
    fetch(method, &format!("http://{addr}{path}"), headers, None).await
}

/// One request to an absolute `http://` URL, with an optional form body.
async fn fetch(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    form: Option<String>,
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let client = crate::net::Client::new(1);
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match form {
        Some(f) => {
            b = b.header("content-type", "application/x-www-form-urlencoded");
            crate::net::body::full(f)
        }
        None => crate::net::body::empty(),
    };
    let req = b.body(body).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, parts.headers, body))
}

const DEMO_SECRET_ENV: &str = "JWTGATE_DEMO_CLIENT_SECRET";
const DEMO_SESSION_ENV: &str = "JWTGATE_DEMO_SESSION_SECRET";

/// A cookie-keeping client that asks for pages, as a browser does (it sends every cookie
/// back, `Secure` ones included: browsers keep those on loopback, a secure context).
#[derive(Default)]
struct Jar {
    cookies: Vec<(String, String)>,
}

impl Jar {
    async fn send(
        &mut self,
        method: http::Method,
        url: &str,
        form: Option<String>,
    ) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = vec![("accept", "text/html,application/xhtml+xml,*/*;q=0.8")];
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let (status, h, body) = fetch(method, url, &headers, form).await?;
        for c in h
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let k = k.trim().to_string();
            self.cookies.retain(|(n, _)| *n != k);
            if !attrs.contains("Max-Age=0") && !v.is_empty() {
                self.cookies.push((k, v.to_string()));
            }
        }
        Ok((status, h, body))
    }

    fn has(&self, name: &str) -> bool {
        self.cookies.iter().any(|(k, _)| k == name)
    }
}

/// The `Location` of a redirect, made absolute against `origin` when it is a path.
fn location(status: u16, h: &http::HeaderMap, origin: &str) -> Result<String, String> {
    if status != 302 {
        return Err(format!("expected a 302, got {status}"));
    }
    let loc = h
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("a 302 without Location")?;
    Ok(match loc.starts_with('/') {
        true => format!("{origin}{loc}"),
        false => loc.to_string(),
    })
}

/// Walk through sign-in at `app_url` (a `login = true` route) as a browser would, then
/// sign out; returns what happened, or the first step that went wrong.
async fn sign_in_walk(app_url: &str, idp: &str) -> Result<String, String> {
    use http::Method;
    let gw = app_url.trim_end_matches("/app");
    let mut b = Jar::default();
    // 1. No session: the gateway sends the browser to the IdP.
    let (st, h, _) = b.send(Method::GET, app_url, None).await?;
    let authorize = location(st, &h, gw).map_err(|e| format!("GET /app: {e}"))?;
    if !authorize.starts_with(&format!("{idp}/authorize?")) {
        return Err(format!("GET /app sent the browser to {authorize}"));
    }
    // 2. The IdP's sign-in page, and its "Sign in as alice" button (a form POST).
    let (st, _, page) = b.send(Method::GET, &authorize, None).await?;
    let page = String::from_utf8_lossy(&page);
    let marker = "name=\"request\" value=\"";
    let request = page
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_string())
        .filter(|_| st == 200 && page.contains("Sign in as alice"))
        .ok_or(format!("the IdP's sign-in page: {st}"))?;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("request", &request)
        .finish();
    let (st, h, _) = b
        .send(Method::POST, &format!("{idp}/authorize"), Some(form))
        .await?;
    let callback = location(st, &h, idp).map_err(|e| format!("sign in as alice: {e}"))?;
    if !callback.starts_with(&format!("{gw}{CALLBACK}?")) {
        return Err(format!("the IdP sent the browser to {callback}"));
    }
    // 3. The callback: code exchanged, ID token checked, session cookies set.
    let (st, h, body) = b.send(Method::GET, &callback, None).await?;
    let back = location(st, &h, gw)
        .map_err(|e| format!("callback: {e}: {}", String::from_utf8_lossy(&body)))?;
    if back != app_url || !b.has("access_token") || !b.has("id_token") {
        return Err(format!(
            "the callback sent the browser to {back} without a session"
        ));
    }
    // 4. Back at /app, signed in: the upstream sees alice.
    let (st, _, body) = b.send(Method::GET, app_url, None).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let who = v["headers"]["x-user-id"].as_str().unwrap_or("").to_string();
    if st != 200 || who != "alice" {
        return Err(format!("GET /app after sign-in: {st}, x-user-id={who:?}"));
    }
    // 5. Sign out: the gateway ends the IdP session too, and the IdP sends the browser back.
    let (st, h, _) = b.send(Method::GET, &format!("{gw}/logout"), None).await?;
    let end = location(st, &h, gw).map_err(|e| format!("GET /logout: {e}"))?;
    if !end.starts_with(&format!("{idp}/end-session?")) || b.has("access_token") {
        return Err(format!("GET /logout sent the browser to {end}"));
    }
    let (st, h, _) = b.send(Method::GET, &end, None).await?;
    let after = location(st, &h, idp).map_err(|e| format!("end-session: {e}"))?;
    let (st, _, _) = b.send(Method::GET, &after, None).await?;
    if after != format!("{gw}/public/signed-out") || st != 200 {
        return Err(format!("after sign-out: {after} -> {st}"));
    }
    Ok(format!(
        "GET /app -> 302 to the IdP, its page, \"Sign in as alice\" -> 302 to {CALLBACK} -> 302 to /app -> 200, upstream saw x-user-id={who}; /logout -> IdP end-session -> /public/signed-out"
    ))
}
