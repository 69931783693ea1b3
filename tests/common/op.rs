//! `MockOp`: an OpenID provider for sign-in tests — discovery, JWKS, an authorize endpoint
//! that signs in a fixed user and 302s back with code + state, a token endpoint for
//! authorization_code (checking the PKCE verifier against the challenge) and
//! refresh_token, end-session — and `Browser`, a cookie-keeping client driven by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jwtgate::body::{self, Body};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{token, Client, Keys, Resp, CLIENT_ID, CLIENT_SECRET};

/// The env var the tests' `[login] session_secret_env` names.
pub const SESSION_ENV: &str = "JWTGATE_TEST_SESSION_SECRET";

/// A code handed out by `/authorize`, waiting for the token endpoint.
#[derive(Clone)]
struct Pending {
    challenge: String,
    nonce: String,
    redirect_uri: String,
    client_id: String,
}

/// A token request as received: its Authorization header and its form.
pub type TokenRequest = (Option<String>, HashMap<String, String>);

#[derive(Default)]
pub struct OpState {
    codes: Mutex<HashMap<String, Pending>>,
    refresh_tokens: Mutex<HashMap<String, String>>,
    /// The `issuer` the discovery document claims (default: the real one).
    pub doc_issuer: Mutex<Option<String>>,
    /// Discovery answers this status when non-zero.
    pub discovery_fail: AtomicU64,
    pub discovery_fetches: AtomicU64,
    /// `/authorize` answers `error=<this>` instead of a code.
    pub authorize_error: Mutex<Option<String>>,
    /// Overrides for the ID token.
    pub id_nonce: Mutex<Option<String>>,
    pub id_aud: Mutex<Option<Value>>,
    /// `/authorize` shows a page with a sign-in link instead of redirecting at once.
    pub interactive: AtomicBool,
    /// Public client: the token endpoint accepts client_id alone (PKCE only).
    pub public_client: AtomicBool,
    pub token_calls: AtomicU64,
    /// Why the token endpoint refused the last code (for asserting PKCE checks).
    pub last_refusal: Mutex<Option<String>>,
    /// Form of the last token request and its Authorization header.
    pub last_token_request: Mutex<Option<TokenRequest>>,
    /// Queries `/end-session` received.
    pub end_sessions: Mutex<Vec<HashMap<String, String>>>,
}

pub struct MockOp {
    pub addr: SocketAddr,
    pub state: Arc<OpState>,
    task: tokio::task::JoinHandle<()>,
}

impl MockOp {
    pub async fn start() -> MockOp {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(OpState::default());
        let task = super::serve_http(l, state.clone(), move |req, st| async move {
            op(req, &st, addr).await
        });
        MockOp { addr, state, task }
    }

    /// The gateway's `[[issuers]]` entry `op` (discovery on) and a `[login]` against it, with
    /// more `[login]` keys (`login_extra`) and then `rest` (tables, routes).
    pub fn gateway_config(&self, login_extra: &str, rest: &str) -> String {
        std::env::set_var(super::CLIENT_SECRET_ENV, CLIENT_SECRET);
        std::env::set_var(SESSION_ENV, "a-session-secret-of-at-least-32-bytes!!");
        format!(
            "[[issuers]]\nname = \"op\"\nissuer = \"{iss}\"\naudiences = [\"api\"]\ndiscovery = true\n\n[login]\nissuer = \"op\"\nclient_id = \"{CLIENT_ID}\"\nsession_secret_env = \"{SESSION_ENV}\"\nscopes = [\"openid\", \"offline_access\"]\n{login_extra}\n\n{rest}",
            iss = self.issuer(),
        )
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An access token for `sub` as this provider issues them.
    pub fn access_token(&self, sub: &str, ttl: i64) -> String {
        access_token(&self.issuer(), sub, ttl)
    }

    /// An access token for `sub` in the sign-in session `sid`.
    pub fn session_token(&self, sub: &str, sid: &str) -> String {
        token(
            "RS256",
            Some("r1"),
            json!({"iss": self.issuer(), "sub": sub, "aud": "api", "sid": sid,
                   "iat": jwtgate::auth::now_unix() - 5}),
        )
    }

    /// A back-channel logout token from this provider to the gateway's client
    /// (`CLIENT_ID`): `claims` merged over iss, aud, iat, jti and the event.
    pub fn logout_token(&self, claims: Value) -> String {
        let c = super::merged(
            json!({"iss": self.issuer(), "aud": CLIENT_ID, "iat": jwtgate::auth::now_unix(),
                   "jti": jwtgate::token::random_id(),
                   "events": {super::BACKCHANNEL_EVENT: {}}}),
            claims,
        );
        super::sign_jwt("RS256", Some("r1"), Some("logout+jwt"), &c)
    }

    /// A live refresh token for `sub`.
    pub fn issue_refresh_token(&self, sub: &str) -> String {
        let t = format!("rt-{}", jwtgate::token::random_id());
        self.state
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(t.clone(), sub.into());
        t
    }
}

impl Drop for MockOp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn access_token(iss: &str, sub: &str, ttl: i64) -> String {
    token(
        "RS256",
        Some("r1"),
        json!({"iss": iss, "sub": sub, "aud": "api", "scope": "orders:read",
               "exp": jwtgate::auth::now_unix() + ttl}),
    )
}

fn json_resp(status: u16, v: Value) -> Response<Body> {
    let mut r = Response::new(body::full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::FOUND;
    r.headers_mut().insert("location", to.parse().unwrap());
    r
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.extend_pairs(pairs);
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", q.finish())
}

async fn op(req: Request<Incoming>, st: &OpState, addr: SocketAddr) -> Response<Body> {
    let iss = format!("http://{addr}");
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            st.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let fail = st.discovery_fail.load(Ordering::SeqCst);
            if fail != 0 {
                return json_resp(fail as u16, json!({"error": "down"}));
            }
            let doc_iss = st.doc_issuer.lock().unwrap().clone().unwrap_or(iss.clone());
            json_resp(
                200,
                json!({
                    "issuer": doc_iss,
                    "authorization_endpoint": format!("{iss}/authorize"),
                    "token_endpoint": format!("{iss}/token"),
                    "jwks_uri": format!("{iss}/jwks"),
                    "revocation_endpoint": format!("{iss}/revoke"),
                    "end_session_endpoint": format!("{iss}/end-session"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                }),
            )
        }
        "/jwks" => json_resp(200, json!({"keys": [Keys::rsa_jwk("r1", "rsa")]})),
        "/authorize" => authorize(&req, st),
        "/approve" => {
            let q = query(&req);
            redirect(&q["to"])
        }
        "/token" => token_endpoint(req, st, &iss).await,
        "/revoke" => json_resp(200, json!({})),
        "/end-session" => {
            let q = query(&req);
            st.end_sessions.lock().unwrap().push(q.clone());
            match q.get("post_logout_redirect_uri") {
                Some(to) => redirect(to),
                None => Response::new(body::full("signed out")),
            }
        }
        _ => json_resp(404, json!({"error": "not_found"})),
    }
}

fn authorize(req: &Request<Incoming>, st: &OpState) -> Response<Body> {
    let q = query(req);
    let need = |k: &str| q.get(k).cloned().unwrap_or_default();
    if need("response_type") != "code"
        || need("code_challenge_method") != "S256"
        || need("code_challenge").is_empty()
        || need("state").is_empty()
        || need("nonce").is_empty()
        || !need("scope").split(' ').any(|s| s == "openid")
    {
        return json_resp(400, json!({"error": "invalid_request"}));
    }
    let back = need("redirect_uri");
    if let Some(e) = st.authorize_error.lock().unwrap().clone() {
        return redirect(&with_query(
            &back,
            &[("error", &e), ("state", &need("state"))],
        ));
    }
    let code = format!("code-{}", jwtgate::token::random_id());
    st.codes.lock().unwrap().insert(
        code.clone(),
        Pending {
            challenge: need("code_challenge"),
            nonce: need("nonce"),
            redirect_uri: back.clone(),
            client_id: need("client_id"),
        },
    );
    let to = with_query(&back, &[("code", &code), ("state", &need("state"))]);
    if st.interactive.load(Ordering::SeqCst) {
        let approve = with_query("/approve", &[("to", &to)]);
        let html = format!(
            "<!doctype html><html><body><h1>Mock IdP</h1><p>Sign in as alice?</p><a id=\"approve\" href=\"{}\">Sign in</a></body></html>",
            approve.replace('&', "&amp;")
        );
        let mut r = Response::new(body::full(html));
        r.headers_mut()
            .insert("content-type", "text/html".parse().unwrap());
        return r;
    }
    redirect(&to)
}

async fn token_endpoint(req: Request<Incoming>, st: &OpState, iss: &str) -> Response<Body> {
    st.token_calls.fetch_add(1, Ordering::SeqCst);
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    *st.last_token_request.lock().unwrap() = Some((auth.clone(), form.clone()));
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let client_ok = auth.as_deref() == Some(basic.as_str())
        || (st.public_client.load(Ordering::SeqCst)
            && auth.is_none()
            && form.get("client_id").map(String::as_str) == Some(CLIENT_ID));
    if !client_ok {
        return json_resp(401, json!({"error": "invalid_client"}));
    }
    let refuse = |why: &str| {
        *st.last_refusal.lock().unwrap() = Some(why.to_string());
        json_resp(400, json!({"error": "invalid_grant"}))
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            // Single use, as RFC 6749 §4.1.2 requires.
            let Some(p) = st.codes.lock().unwrap().remove(&code) else {
                return refuse("unknown or spent code");
            };
            if form.get("redirect_uri") != Some(&p.redirect_uri) {
                return refuse("redirect_uri differs");
            }
            if p.client_id != CLIENT_ID {
                return refuse("code issued to another client");
            }
            // RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) == code_challenge.
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
            if verifier.len() < 43 || URL_SAFE_NO_PAD.encode(d.as_ref()) != p.challenge {
                return refuse("PKCE verifier does not match the challenge");
            }
            let now = jwtgate::auth::now_unix();
            let nonce = st.id_nonce.lock().unwrap().clone().unwrap_or(p.nonce);
            let aud = st
                .id_aud
                .lock()
                .unwrap()
                .clone()
                .unwrap_or(json!(CLIENT_ID));
            let id_token = token(
                "RS256",
                Some("r1"),
                json!({"iss": iss, "sub": "alice", "aud": aud, "nonce": nonce,
                       "sid": "session-1", "exp": now + 300, "jti": null}),
            );
            let rt = format!("rt-{}", jwtgate::token::random_id());
            st.refresh_tokens
                .lock()
                .unwrap()
                .insert(rt.clone(), "alice".into());
            json_resp(
                200,
                json!({"access_token": access_token(iss, "alice", 600), "token_type": "Bearer",
                       "expires_in": 600, "refresh_token": rt, "id_token": id_token}),
            )
        }
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(sub) = st.refresh_tokens.lock().unwrap().remove(&presented) else {
                return refuse("refresh token spent or unknown");
            };
            let next = format!("rt-{}", jwtgate::token::random_id());
            st.refresh_tokens
                .lock()
                .unwrap()
                .insert(next.clone(), sub.clone());
            json_resp(
                200,
                json!({"access_token": access_token(iss, &sub, 600), "token_type": "Bearer",
                       "expires_in": 600, "refresh_token": next}),
            )
        }
        _ => json_resp(400, json!({"error": "unsupported_grant_type"})),
    }
}

// === a browser driven by hand ===

/// A cookie-keeping client that asks for pages (`Accept: text/html`) and follows
/// redirects only when told to. One cookie jar for every host (tests run on 127.0.0.1).
#[derive(Clone)]
pub struct Browser {
    client: Client,
    pub jar: Arc<Mutex<HashMap<String, String>>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            client: Client::plain(),
            jar: Default::default(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }

    /// One request, no redirect followed; `Set-Cookie` goes into the jar.
    pub async fn get(&self, url: &str) -> Resp {
        self.request(url, "text/html,application/xhtml+xml,*/*;q=0.8")
            .await
    }

    pub async fn request(&self, url: &str, accept: &str) -> Resp {
        let cookies: Vec<String> = self
            .jar
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut headers = vec![("accept", accept.to_string())];
        if !cookies.is_empty() {
            headers.push(("cookie", cookies.join("; ")));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = self.client.get(url, &h).await;
        let mut jar = self.jar.lock().unwrap();
        for c in resp.headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_string(), v.to_string());
            }
        }
        resp
    }

    /// Follow redirects from `url` (relative ones against the last origin) until an answer
    /// that is not one; returns it and every URL visited.
    pub async fn follow(&self, url: &str) -> (Resp, Vec<String>) {
        let mut url = url.to_string();
        let mut seen = vec![url.clone()];
        for _ in 0..10 {
            let r = self.get(&url).await;
            if !(300..400).contains(&r.status) {
                return (r, seen);
            }
            let loc = r.header("location").unwrap().to_string();
            url = absolute(&url, &loc);
            seen.push(url.clone());
        }
        panic!("redirect loop: {seen:?}");
    }
}

/// `loc` resolved against `base` (absolute URLs as they are; `/path` on base's origin).
pub fn absolute(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    assert!(loc.starts_with('/') && !loc.starts_with("//"), "{loc}");
    let origin_end = base[8..].find('/').map_or(base.len(), |i| i + 8);
    format!("{}{loc}", &base[..origin_end])
}

/// The query of a URL as a map.
pub fn query_of(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}
