//! Test harness: `EchoUpstream`, `MockIdp`, `TestGateway`, and a real HTTP client over
//! plain TCP, TLS + HTTP/1.1 and TLS + h2. Everything binds 127.0.0.1 port 0.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwtgate::body::{self, Body};
use tokio::net::TcpListener;

pub mod bin;
pub mod cluster;
pub mod fleet;
pub mod op;
pub mod redis_tls;
pub mod sentinel;

// === temp dirs ===

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "jwtgate-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

// === echo upstream ===

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A real HTTP upstream. Paths:
/// - `/echo-body...` streams the request body back;
/// - `/count-body...` reads the whole request body, then answers with its length;
/// - `/slow/<ms>` answers after a delay;
/// - `/big/<bytes>` streams that many bytes;
/// - `/ws` accepts an upgrade and echoes raw bytes;
/// - anything else: 200 with JSON `{method, uri}`.
///
/// Every answer carries `x-upstream: <name>`.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        Self::named("up").await
    }

    pub async fn named(name: &str) -> EchoUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s2, n2, c2) = (seen.clone(), name.to_string(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                c2.fetch_add(1, Ordering::SeqCst);
                let (seen, name) = (s2.clone(), n2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (seen, name) = (seen.clone(), name.clone());
                        async move { Ok::<_, Infallible>(echo(req, &seen, &name).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        EchoUpstream {
            addr,
            name: name.to_string(),
            seen,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(mut req: Request<Incoming>, seen: &Mutex<Vec<Seen>>, name: &str) -> Response<Body> {
    seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    let mut resp = if path.starts_with("/echo-body") {
        Response::new(body::stream(req.into_body()))
    } else if path.starts_with("/count-body") {
        // Reads the whole body before answering with its length.
        let n = req
            .into_body()
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len());
        Response::new(body::full(n.to_string()))
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
        Response::new(body::full("slow done"))
    } else if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunks = (0..n.div_ceil(65536)).map(move |i| {
            let len = 65536.min(n - i * 65536);
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; len])))
        });
        Response::new(body::stream(StreamBody::new(futures_util::stream::iter(
            chunks,
        ))))
    } else if path == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r
    } else {
        let json =
            serde_json::json!({"method": req.method().as_str(), "uri": req.uri().to_string()});
        Response::new(body::full(json.to_string()))
    };
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    resp
}

// === identity provider ===

/// Signing keys the tests use, with their public JWK forms.
pub struct Keys;

impl Keys {
    pub fn rsa_jwk(kid: &str, which: &str) -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_slice(&fixture_bytes(&format!("{which}.jwk.json"))).unwrap();
        v["kid"] = kid.into();
        v["use"] = "sig".into();
        v
    }

    pub fn ec_jwk(kid: &str) -> serde_json::Value {
        let der = spki_der("ec.pub.pem");
        let raw = &der[der.len() - 65..];
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])})
    }

    pub fn ed_jwk(kid: &str) -> serde_json::Value {
        let der = spki_der("ed.pub.pem");
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&der[der.len() - 32..])})
    }
}

fn spki_der(name: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_file(fixture(name))
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Serve `handle` (with `state`) on every connection `l` accepts, HTTP/1.1 or h2, until
/// the returned task is aborted: the mock identity providers' server loop.
pub fn serve_http<S, F, Fut>(
    l: TcpListener,
    state: Arc<S>,
    handle: F,
) -> tokio::task::JoinHandle<()>
where
    S: Send + Sync + 'static,
    F: Fn(Request<Incoming>, Arc<S>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            let (st, handle) = (state.clone(), handle.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let answer = handle(req, st.clone());
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// A mock identity provider serving a JWKS that tests can change, count and break.
pub struct MockIdp {
    pub addr: SocketAddr,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

pub struct IdpState {
    pub jwks: Mutex<serde_json::Value>,
    pub jwks_fetches: AtomicU64,
    /// 0 = serve; otherwise answer this status.
    pub fail_status: AtomicU64,
    /// Live refresh tokens -> subject. Each use rotates: the old one is spent.
    pub refresh_tokens: Mutex<std::collections::HashMap<String, String>>,
    pub token_calls: AtomicU64,
    /// Delay before the token endpoint answers (ms).
    pub token_delay_ms: AtomicU64,
    /// 0 = answer; otherwise the token endpoint answers this status.
    pub token_fail_status: AtomicU64,
    /// Sign issued access tokens with a key the gateway does not know.
    pub sign_with_rogue_key: std::sync::atomic::AtomicBool,
    /// Lifetime of issued access tokens (s).
    pub access_ttl: AtomicU64,
    /// Authorization header and form of the last token request.
    pub last_token_request: Mutex<Option<(Option<String>, String)>>,
    /// Tokens sent to the RFC 7009 revocation endpoint.
    pub revoked: Mutex<Vec<String>>,
    /// RFC 7662: live opaque tokens -> their introspection claims (`active` added).
    pub opaque_tokens: Mutex<std::collections::HashMap<String, serde_json::Value>>,
    pub introspect_calls: AtomicU64,
    /// Delay before the introspection endpoint answers (ms).
    pub introspect_delay_ms: AtomicU64,
    /// 0 = answer; otherwise the introspection endpoint answers this status.
    pub introspect_fail_status: AtomicU64,
}

impl MockIdp {
    pub async fn start(keys: Vec<serde_json::Value>) -> MockIdp {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(IdpState {
            jwks: Mutex::new(serde_json::json!({ "keys": keys })),
            jwks_fetches: AtomicU64::new(0),
            fail_status: AtomicU64::new(0),
            refresh_tokens: Mutex::new(Default::default()),
            token_calls: AtomicU64::new(0),
            token_delay_ms: AtomicU64::new(0),
            token_fail_status: AtomicU64::new(0),
            sign_with_rogue_key: Default::default(),
            access_ttl: AtomicU64::new(600),
            last_token_request: Mutex::new(None),
            revoked: Mutex::new(Vec::new()),
            opaque_tokens: Mutex::new(Default::default()),
            introspect_calls: AtomicU64::new(0),
            introspect_delay_ms: AtomicU64::new(0),
            introspect_fail_status: AtomicU64::new(0),
        });
        let task = serve_http(
            l,
            state.clone(),
            |req, st| async move { idp(req, &st).await },
        );
        MockIdp { addr, state, task }
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn set_keys(&self, keys: Vec<serde_json::Value>) {
        *self.state.jwks.lock().unwrap() = serde_json::json!({ "keys": keys });
    }

    pub fn fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn fail_with(&self, status: u16) {
        self.state
            .fail_status
            .store(status as u64, Ordering::SeqCst);
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn revoke_url(&self) -> String {
        format!("http://{}/revoke", self.addr)
    }

    pub fn state(&self) -> &IdpState {
        &self.state
    }

    /// A new live refresh token for `sub`.
    pub fn issue_refresh_token(&self, sub: &str) -> String {
        let t = format!("rt-{}", jwtgate::token::random_id());
        self.state
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(t.clone(), sub.to_string());
        t
    }

    pub fn token_calls(&self) -> u64 {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn introspect_url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// A new opaque access token whose introspection answer is `claims` plus `active`.
    pub fn issue_opaque(&self, claims: serde_json::Value) -> String {
        let t = format!("opaque-{}", jwtgate::token::random_id());
        self.state
            .opaque_tokens
            .lock()
            .unwrap()
            .insert(t.clone(), claims);
        t
    }

    /// Calls to the introspection endpoint so far.
    pub fn introspect_calls(&self) -> u64 {
        self.state.introspect_calls.load(Ordering::SeqCst)
    }

    /// Stop answering at all (connections refused from now on).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const CLIENT_ID: &str = "gateway";
pub const CLIENT_SECRET: &str = "client-secret-for-tests";
pub const CLIENT_SECRET_ENV: &str = "JWTGATE_TEST_CLIENT_SECRET";

fn json_resp(status: u16, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn idp(req: Request<Incoming>, st: &IdpState) -> Response<Body> {
    match req.uri().path() {
        "/token" => return token_endpoint(req, st).await,
        "/introspect" => return introspect_endpoint(req, st).await,
        "/revoke" => {
            let form = read_form(req).await.1;
            if let Some(t) = form.get("token") {
                st.revoked.lock().unwrap().push(t.clone());
            }
            return json_resp(200, serde_json::json!({}));
        }
        _ => {}
    }
    if req.uri().path() == "/.well-known/jwks.json" {
        st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        let fail = st.fail_status.load(Ordering::SeqCst);
        if fail != 0 {
            let mut r = Response::new(body::full("down"));
            *r.status_mut() = StatusCode::from_u16(fail as u16).unwrap();
            return r;
        }
        let mut r = Response::new(body::full(st.jwks.lock().unwrap().to_string()));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r.headers_mut()
            .insert("cache-control", "max-age=600".parse().unwrap());
        return r;
    }
    let mut r = Response::new(body::full("not found"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

// === tokens ===

/// Mint a token with the fixtures' keys. `claims` are merged over sane defaults
/// (iss "https://idp.test", sub "alice", aud "api", exp in an hour, iat now, jti).
pub fn token(alg: &str, kid: Option<&str>, claims: serde_json::Value) -> String {
    let now = jwtgate::auth::now_unix();
    let c = merged(
        serde_json::json!({"iss": "https://idp.test", "sub": "alice", "aud": "api", "exp": now + 3600, "iat": now, "jti": jwtgate::token::random_id()}),
        claims,
    );
    sign_jwt(alg, kid, None, &c)
}

/// Sign `claims` as they are (no defaults) with the fixtures' key for `alg`, with header
/// `kid` and `typ`.
pub fn sign_jwt(
    alg: &str,
    kid: Option<&str>,
    typ: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let alg_v = jwtgate::jwks::parse_alg(alg).unwrap();
    let key = match alg_v {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(HS_SECRET.as_bytes())
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&fixture_bytes("rsa.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture_bytes("ec.pem")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&fixture_bytes("ec384.pem")).unwrap(),
        _ => EncodingKey::from_ed_pem(&fixture_bytes("ed.pem")).unwrap(),
    };
    let mut h = Header::new(alg_v);
    h.kid = kid.map(str::to_string);
    h.typ = typ.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

/// `base` with `overrides` merged over it (a `null` removes the member).
pub fn merged(mut base: serde_json::Value, overrides: serde_json::Value) -> serde_json::Value {
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// The OIDC Back-Channel Logout event URI.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl MockIdp {
    /// The kid under which tests serve the fixture RSA key (`Keys::rsa_jwk(IDP_KID, "rsa")`)
    /// and sign the IdP's logout tokens and security events.
    pub const KID: &'static str = "k1";

    /// A logout token as this IdP signs one (RS256, `typ` `logout+jwt`): `claims` merged
    /// over iss "https://idp.test", aud `CLIENT_ID`, iat now, a fresh jti, the back-channel
    /// logout event, sub "alice".
    pub fn logout_token(claims: serde_json::Value) -> String {
        let now = jwtgate::auth::now_unix();
        let c = merged(
            serde_json::json!({"iss": "https://idp.test", "aud": CLIENT_ID, "iat": now,
                "jti": jwtgate::token::random_id(), "events": {BACKCHANNEL_EVENT: {}}, "sub": "alice"}),
            claims,
        );
        sign_jwt("RS256", Some(Self::KID), Some("logout+jwt"), &c)
    }

    /// A Security Event Token (RFC 8417) as this IdP's Shared Signals transmitter signs
    /// one (RS256, `typ` `secevent+jwt`): `claims` merged over iss "https://idp.test", aud
    /// `SIGNALS_AUDIENCE`, iat now, a fresh jti; `events` and `sub_id` are the caller's.
    pub fn security_event(claims: serde_json::Value) -> String {
        let now = jwtgate::auth::now_unix();
        let c = merged(
            serde_json::json!({"iss": "https://idp.test", "aud": SIGNALS_AUDIENCE, "iat": now,
                "jti": jwtgate::token::random_id()}),
            claims,
        );
        sign_jwt("RS256", Some(Self::KID), Some("secevent+jwt"), &c)
    }
}

/// The `aud` of the mock IdP's security events (`[signals] audience`).
pub const SIGNALS_AUDIENCE: &str = "https://gateway.test/ssf";

/// Assemble a token from raw parts (for forged-header attacks).
pub fn raw_token(header: &serde_json::Value, claims: &serde_json::Value, sig: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        sig
    )
}

pub const HS_SECRET: &str = "test-secret-with-at-least-32-bytes-of-entropy!";
pub const HS_ENV: &str = "JWTGATE_TEST_HS_SECRET";

// === gateway ===

/// The gateway, in process, on 127.0.0.1 port 0 (https, http and admin), with a fresh dev
/// certificate. `extra` is appended to the generated [listen]/[tls]/[server] header.
pub struct TestGateway {
    pub running: Option<jwtgate::Running>,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// `listen.authz`, when started with `start_authz`.
    pub authz: Option<SocketAddr>,
    /// `listen.metrics`, when started with it (`start_listen`).
    pub metrics: Option<SocketAddr>,
    pub cert_pem: Vec<u8>,
    pub dir: TempDir,
}

pub fn base_config(dir: &Path, server_extra: &str) -> String {
    base_config_with(dir, "", server_extra)
}

/// `base_config` with more `[listen]` keys (`authz = "127.0.0.1:0"`).
pub fn base_config_with(dir: &Path, listen_extra: &str, server_extra: &str) -> String {
    let (cert, key) =
        jwtgate::certs::write(dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
    format!(
        "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{listen_extra}\n\n[server]\nworker_threads = 2\ndrain_s = 5\nlog_format = \"text\"\n{server_extra}\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        cert.display(),
        key.display()
    )
}

impl TestGateway {
    /// Start with `body` (issuers, routes, ...) after the generated listener section.
    pub async fn start(body: &str) -> TestGateway {
        Self::start_with(body, "").await
    }

    pub async fn start_with(body: &str, server_extra: &str) -> TestGateway {
        let gw = Self::start_nowait(body, server_extra).await;
        gw.wait_ready().await;
        gw
    }

    /// Start with the forward-auth decision listener too (`TestGateway::authz`).
    pub async fn start_authz(body: &str, server_extra: &str) -> TestGateway {
        let gw = Self::start_listening("authz = \"127.0.0.1:0\"", body, server_extra).await;
        gw.wait_ready().await;
        gw
    }

    /// Start with more `[listen]` keys (`metrics = "127.0.0.1:0"`), waiting for readiness.
    pub async fn start_listen(listen_extra: &str, body: &str) -> TestGateway {
        let gw = Self::start_listening(listen_extra, body, "").await;
        gw.wait_ready().await;
        gw
    }

    /// Start without waiting for readiness (to observe /readyz itself).
    pub async fn start_nowait(body: &str, server_extra: &str) -> TestGateway {
        Self::start_listening("", body, server_extra).await
    }

    async fn start_listening(listen_extra: &str, body: &str, server_extra: &str) -> TestGateway {
        init();
        let dir = TempDir::new();
        let text = format!(
            "{}{body}",
            base_config_with(dir.path(), listen_extra, server_extra)
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let cfg = jwtgate::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let running = jwtgate::serve(cfg).await.unwrap();
        let cert_pem = std::fs::read(dir.path().join("localhost.crt")).unwrap();
        TestGateway {
            https: running.https_addr.unwrap(),
            http: running.http_addr.unwrap(),
            admin: running.admin_addr,
            authz: running.authz_addr,
            metrics: running.metrics_addr,
            running: Some(running),
            cert_pem,
            dir,
        }
    }

    /// Wait for /readyz (keys loaded) — the readiness signal, not a sleep.
    pub async fn wait_ready(&self) {
        let c = Client::plain();
        for _ in 0..200 {
            if let Ok(r) = c
                .try_get(&format!("http://{}/readyz", self.admin), &[])
                .await
            {
                if r.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway never became ready");
    }

    /// Whether admin `/metrics` has exactly this line now.
    pub async fn has_metric(&self, line: &str) -> bool {
        let m = Client::plain()
            .get(&format!("http://{}/metrics", self.admin), &[])
            .await;
        m.text().lines().any(|l| l == line)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `method path` on the admin listener, with `auth` as the bearer token (`None`: no
    /// `Authorization`) and `body` as JSON.
    pub async fn admin_call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> Resp {
        let b = auth.map(|a| format!("Bearer {a}"));
        let mut h = vec![("content-type", "application/json")];
        if let Some(b) = &b {
            h.push(("authorization", b));
        }
        self.client_plain()
            .send(
                method,
                &format!("http://{}{path}", self.admin),
                &h,
                body::full(body.to_string()),
            )
            .await
    }

    /// `POST /reload` with the admin token `token`.
    pub async fn reload(&self, token: &str) -> Resp {
        self.admin_call(Method::POST, "/reload", Some(token), "")
            .await
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    pub fn client_plain(&self) -> Client {
        Client::plain()
    }

    pub fn client_tls(&self) -> Client {
        Client::tls(&self.cert_pem, false)
    }

    pub fn client_h2(&self) -> Client {
        Client::tls(&self.cert_pem, true)
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.begin_shutdown();
        }
    }
}

/// A fresh environment variable holding a fresh admin token, for `admin.token_env` (tests
/// run in parallel): (variable, token).
pub fn admin_env() -> (String, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let var = format!("JWTGATE_TEST_ADMIN_{}", N.fetch_add(1, Ordering::Relaxed));
    let value = format!("admin-{}", jwtgate::token::random_id());
    std::env::set_var(&var, &value);
    (var, value)
}

/// The claims of a JWT, not verified (a test reading its own token's `jti` and `exp`).
pub fn claims_of(t: &str) -> serde_json::Value {
    let p = t.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

// === client ===

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

/// A real HTTP client (hyper-util over hyper-rustls), trusting the gateway's dev cert.
#[derive(Clone)]
pub struct Client(HttpsClient);

impl Client {
    pub fn plain() -> Client {
        Self::build(None, false)
    }

    pub fn tls(cert_pem: &[u8], h2: bool) -> Client {
        Self::build(Some(cert_pem), h2)
    }

    /// A TLS client that presents a client certificate (`chain` leaf first, its `key`).
    pub fn tls_with_cert(
        cert_pem: &[u8],
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
    ) -> Client {
        Self::build_with(Some(cert_pem), false, Some((chain, key)))
    }

    fn build(cert_pem: Option<&[u8]>, h2: bool) -> Client {
        Self::build_with(cert_pem, h2, None)
    }

    fn build_with(
        cert_pem: Option<&[u8]>,
        h2: bool,
        identity: Option<(
            Vec<rustls_pki_types::CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> Client {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = cert_pem {
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let tls = match identity {
            Some((chain, key)) => tls.with_client_auth_cert(chain, key).unwrap(),
            None => tls.with_no_client_auth(),
        };
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let conn = if h2 {
            b.enable_http2().build()
        } else {
            b.enable_http1().build()
        };
        let mut cb = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        cb.http2_only(h2);
        Client(cb.build(conn))
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, url, headers, body::empty()).await
    }

    pub async fn try_get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        self.try_send(Method::GET, url, headers, body::empty())
            .await
    }

    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], b: Body) -> Resp {
        self.try_send(method, url, headers, b)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        b: Body,
    ) -> Result<Resp, String> {
        let mut rb = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let req = rb.body(b).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(20), self.0.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }
}

/// A body of `n` bytes sent in 64 KiB chunks (streamed, never one buffer).
pub fn streamed_body(n: usize) -> Body {
    let chunks = (0..n.div_ceil(65536)).map(move |i| {
        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![
            b'y';
            65536.min(n - i * 65536)
        ])))
    });
    body::stream(StreamBody::new(futures_util::stream::iter(chunks)))
}

/// Raw request/response over a TCP socket (for what a well-behaved client never sends).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// A route block for the config.
pub fn route(name: &str, prefix: &str, upstreams: &[&str], extra: &str) -> String {
    let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstreams = [{}]\n{extra}\n\n",
        ups.join(", ")
    )
}

// === redis ===

/// A private `redis-server` on a free loopback port (never the shared 6379), killed on drop.
pub struct RedisServer {
    pub port: u16,
    /// With `start_tls`: the TLS port, whose certificate (for localhost and 127.0.0.1) is
    /// self-signed at `cert`.
    pub tls_port: Option<u16>,
    pub cert: Option<PathBuf>,
    child: Option<std::process::Child>,
    dir: TempDir,
    /// More `redis-server` arguments (`--replicaof 127.0.0.1 <port>`).
    extra: Vec<String>,
    /// With `start_tls_only`: TLS on `port`, plain TCP off (kept across restarts).
    tls_only: Option<redis_tls::RedisTls>,
}

/// `N` distinct free loopback ports (held open together while they are chosen).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Whether process `pid` holds a listening TCP socket on `port` (Linux `/proc`).
///
/// A port from `free_ports` is free only until somebody binds it: another test running in
/// parallel may get it from the kernel for its own port-0 listener before the child binds
/// it. A child's readiness must therefore be its own listener, not "the port accepts".
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A");
            let on_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// `start` with more `redis-server` arguments.
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        Self::launch(extra, None).await
    }

    /// TLS only (`--port 0`, TLS on `port`), with `tls`'s certificate and password, and
    /// more `redis-server` arguments.
    pub async fn start_tls_only(tls: &redis_tls::RedisTls, extra: &[&str]) -> RedisServer {
        Self::launch(extra, Some(tls.clone())).await
    }

    async fn launch(extra: &[&str], tls_only: Option<redis_tls::RedisTls>) -> RedisServer {
        let mut r = RedisServer {
            port: 0,
            tls_port: None,
            cert: None,
            child: None,
            dir: TempDir::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls_only,
        };
        r.spawn_fresh().await;
        r
    }

    /// Plain on `port` (for readiness and inspection) and TLS on `tls_port`.
    pub async fn start_tls() -> RedisServer {
        let dir = TempDir::new();
        let (cert, _) =
            jwtgate::certs::write(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let mut r = RedisServer {
            port: 0,
            tls_port: Some(0),
            cert: Some(cert),
            child: None,
            dir,
            extra: Vec::new(),
            tls_only: None,
        };
        r.spawn_fresh().await;
        r
    }

    pub fn tls_url(&self) -> String {
        format!("rediss://localhost:{}/0", self.tls_port.unwrap())
    }

    /// `spawn` on fresh ports, again on others (three tries) if the server exits at start:
    /// a parallel test's port-0 listener may take a picked port before redis-server binds it.
    async fn spawn_fresh(&mut self) {
        for attempt in 1..=3 {
            let [port, tls_port] = free_ports();
            self.port = port;
            if self.tls_port.is_some() {
                self.tls_port = Some(tls_port);
            }
            match self.try_spawn().await {
                Ok(()) => return,
                Err(why) if attempt < 3 => eprintln!("{why}; retrying on other ports"),
                Err(why) => panic!("{why}"),
            }
        }
    }

    async fn spawn(&mut self) {
        if let Err(why) = self.try_spawn().await {
            panic!("{why}");
        }
    }

    async fn try_spawn(&mut self) -> Result<(), String> {
        let listen = match &self.tls_only {
            None => vec!["--port".to_string(), self.port.to_string()],
            Some(t) => t.server_args(self.port),
        };
        let child = std::process::Command::new("redis-server")
            .args(listen)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.tls_args())
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            });
        self.child = Some(child);
        // Readiness: PING answers (from this server: one that exited, say because a port
        // was taken meanwhile, fails here rather than leaving us talking to another).
        for _ in 0..200 {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                ));
            }
            if self.ping().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "redis-server on port {} never answered PING",
            self.port
        ))
    }

    fn tls_args(&self) -> Vec<String> {
        let (Some(port), Some(cert)) = (self.tls_port, &self.cert) else {
            return Vec::new();
        };
        let key = cert.with_extension("key");
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.clone(),
            "--tls-key-file".into(),
            key,
            "--tls-ca-cert-file".into(),
            cert,
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }

    async fn ping(&self) -> bool {
        if let Some(t) = &self.tls_only {
            let Some(mut c) = t.conn(self.port, t.password.as_deref()).await else {
                return false;
            };
            return redis::cmd("PING").query_async::<()>(&mut c).await.is_ok();
        }
        let s = raw_exchange_quick(("127.0.0.1", self.port), b"PING\r\n").await;
        s.starts_with("+PONG")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stop the server (as an outage would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Start it again on the same port, empty, with these arguments instead.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.spawn().await;
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        if let Some(t) = &self.tls_only {
            return t
                .conn(self.port, t.password.as_deref())
                .await
                .expect("TLS redis-server unreachable");
        }
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn raw_exchange_quick(addr: (&str, u16), req: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(200),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return String::new();
    };
    if s.write_all(req).await.is_err() {
        return String::new();
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

/// Poll `f` until it returns true or `limit` passes; returns the time it took.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn read_form(
    req: Request<Incoming>,
) -> (Option<String>, std::collections::HashMap<String, String>) {
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form = form_urlencoded::parse(&body).into_owned().collect();
    (auth, form)
}

/// An endpoint's configured slowness, then its configured failure (`fail_status` non-zero:
/// that status with `temporarily_unavailable`), as the tests set them.
async fn delay_or_fail(delay_ms: &AtomicU64, fail_status: &AtomicU64) -> Option<Response<Body>> {
    let delay = delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = fail_status.load(Ordering::SeqCst);
    (fail != 0).then(|| {
        json_resp(
            fail as u16,
            serde_json::json!({"error": "temporarily_unavailable"}),
        )
    })
}

/// The `Authorization` the gateway must send as the IdP's client (HTTP Basic).
fn client_basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    )
}

/// RFC 7662: `active` with the token's claims for a live opaque token, `{"active": false}`
/// for anything else; the gateway must authenticate as CLIENT_ID with HTTP Basic.
async fn introspect_endpoint(req: Request<Incoming>, st: &IdpState) -> Response<Body> {
    st.introspect_calls.fetch_add(1, Ordering::SeqCst);
    let (auth, form) = read_form(req).await;
    if let Some(r) = delay_or_fail(&st.introspect_delay_ms, &st.introspect_fail_status).await {
        return r;
    }
    let basic = client_basic();
    if auth.as_deref() != Some(basic.as_str()) {
        return json_resp(401, serde_json::json!({"error": "invalid_client"}));
    }
    let known = form
        .get("token")
        .and_then(|t| st.opaque_tokens.lock().unwrap().get(t).cloned());
    match known {
        Some(mut claims) => {
            claims["active"] = serde_json::json!(true);
            json_resp(200, claims)
        }
        None => json_resp(200, serde_json::json!({"active": false})),
    }
}

/// RFC 6749 §6 refresh_token grant with rotation: each refresh token works once.
async fn token_endpoint(req: Request<Incoming>, st: &IdpState) -> Response<Body> {
    st.token_calls.fetch_add(1, Ordering::SeqCst);
    let (auth, form) = read_form(req).await;
    let raw_form: Vec<String> = form.iter().map(|(k, v)| format!("{k}={v}")).collect();
    *st.last_token_request.lock().unwrap() = Some((auth.clone(), raw_form.join("&")));
    if let Some(r) = delay_or_fail(&st.token_delay_ms, &st.token_fail_status).await {
        return r;
    }
    let basic = client_basic();
    let post_ok = form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    if auth.as_deref() != Some(basic.as_str()) && !post_ok {
        return json_resp(401, serde_json::json!({"error": "invalid_client"}));
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return json_resp(400, serde_json::json!({"error": "unsupported_grant_type"}));
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let sub = st.refresh_tokens.lock().unwrap().remove(&presented);
    let Some(sub) = sub else {
        return json_resp(
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": "refresh token spent or unknown"}),
        );
    };
    let next = format!("rt-{}", jwtgate::token::random_id());
    st.refresh_tokens
        .lock()
        .unwrap()
        .insert(next.clone(), sub.clone());
    let ttl = st.access_ttl.load(Ordering::SeqCst);
    let access = if st.sign_with_rogue_key.load(Ordering::SeqCst) {
        use jsonwebtoken::{EncodingKey, Header};
        let mut h = Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("rogue".into());
        let now = jwtgate::auth::now_unix();
        let c = serde_json::json!({"iss": "https://idp.test", "sub": sub, "aud": "api", "exp": now + ttl as i64, "iat": now, "jti": jwtgate::token::random_id()});
        jsonwebtoken::encode(
            &h,
            &c,
            &EncodingKey::from_rsa_pem(&fixture_bytes("rsa2.pem")).unwrap(),
        )
        .unwrap()
    } else {
        token(
            "RS256",
            Some("r1"),
            serde_json::json!({"sub": sub, "exp": jwtgate::auth::now_unix() + ttl as i64, "scope": "orders:read"}),
        )
    };
    json_resp(
        200,
        serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": ttl, "refresh_token": next}),
    )
}
