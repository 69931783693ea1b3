//! The demo's identity provider (`jwtgate demo`): OpenID discovery, a JWKS, a one-button
//! sign-in page, a token endpoint for authorization_code (PKCE S256) and refresh_token,
//! and end-session. Loopback only; made for the walkthrough, not for use.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::cli::token::{mint, Mint, SigningKey};

use super::demo::{CALLBACK, CLIENT_ID, CLIENT_SECRET, KID};

/// A sign-in the IdP's page is showing, waiting for the button.
#[derive(Clone)]
pub(super) struct AuthRequest {
    redirect_uri: String,
    state: String,
    challenge: String,
    nonce: String,
}

/// The demo's identity provider: OpenID discovery, a JWKS, an authorization endpoint with
/// a one-button sign-in page (alice), a token endpoint for authorization_code (PKCE S256
/// checked, ID token with the nonce) and refresh_token (rotating, single-use refresh
/// tokens), and end-session. Access tokens from the refresh grant live 60 s.
pub(super) struct DemoIdp {
    pub(super) jwks: String,
    pub(super) signing_pem: String,
    /// `http://127.0.0.1:<port>`, known once listening.
    pub(super) issuer: OnceLock<String>,
    /// Where sign-ins may return to and sign-outs may end: the gateway's origins.
    pub(super) gateway_origins: OnceLock<Vec<String>>,
    /// Sign-in pages shown, by the id in their form.
    pub(super) requests: Mutex<HashMap<String, AuthRequest>>,
    /// Codes issued, waiting for the token endpoint (single use).
    pub(super) codes: Mutex<HashMap<String, AuthRequest>>,
    pub(super) refresh_tokens: Mutex<HashMap<String, String>>,
}

type Resp = Result<Response<Full<Bytes>>, String>;

fn respond(status: u16, content_type: &str, body: String) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

fn found(to: &str) -> Resp {
    Response::builder()
        .status(302)
        .header("location", to)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())
}

fn page(status: u16, body: &str) -> Resp {
    respond(
        status,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>jwtgate demo IdP</title></head>\n<body style=\"font-family:sans-serif;max-width:32em;margin:4em auto\"><h1>jwtgate demo IdP</h1>\n{body}\n</body></html>\n"
        ),
    )
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.extend_pairs(pairs);
    format!("{base}?{}", q.finish())
}

impl DemoIdp {
    fn issuer(&self) -> String {
        self.issuer.get().cloned().unwrap_or_default()
    }

    fn token(
        &self,
        sub: &str,
        aud: &str,
        ttl: u64,
        extra: Vec<(String, String)>,
    ) -> Result<String, String> {
        mint(&Mint {
            alg: jsonwebtoken::Algorithm::ES256,
            key: SigningKey::Pem(self.signing_pem.clone().into_bytes()),
            sub: sub.into(),
            kid: Some(KID.into()),
            iss: Some(self.issuer()),
            aud: Some(aud.into()),
            scope: None,
            ttl: Duration::from_secs(ttl),
            claims: extra,
        })
        .map_err(|e| e.to_string())
    }

    pub(super) fn access_token(&self, sub: &str, ttl: u64) -> Result<String, String> {
        let claims = vec![
            ("scope".into(), "orders:read".into()),
            ("email".into(), format!("{sub}@example.com")),
        ];
        self.token(sub, "demo-api", ttl, claims)
    }

    /// An access token bound to a DPoP key (`cnf.jkt`, RFC 9449).
    pub(super) fn bound_access_token(&self, sub: &str, jkt: &str) -> Result<String, String> {
        let claims = vec![
            ("scope".into(), "orders:read".into()),
            ("cnf".into(), serde_json::json!({ "jkt": jkt }).to_string()),
        ];
        self.token(sub, "demo-api", 3600, claims)
    }

    pub(super) fn refresh_token(&self, sub: &str) -> String {
        let t = crate::cli::token::random_id();
        if let Ok(mut m) = self.refresh_tokens.lock() {
            m.insert(t.clone(), sub.to_string());
        }
        t
    }

    /// A URL on one of the gateway's origins (a path after it, not a look-alike host).
    fn at_gateway(&self, url: &str) -> bool {
        self.gateway_origins.get().is_some_and(|o| {
            o.iter().any(|o| {
                url.strip_prefix(o.as_str())
                    .is_some_and(|p| p.starts_with('/'))
            })
        })
    }

    pub(super) async fn handle(&self, req: Request<Incoming>) -> Resp {
        let q: HashMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let json =
            |status: u16, v: serde_json::Value| respond(status, "application/json", v.to_string());
        match (req.method().as_str(), req.uri().path()) {
            (_, "/.well-known/openid-configuration") => {
                let iss = self.issuer();
                json(
                    200,
                    serde_json::json!({
                        "issuer": iss,
                        "authorization_endpoint": format!("{iss}/authorize"),
                        "token_endpoint": format!("{iss}/token"),
                        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
                        "end_session_endpoint": format!("{iss}/end-session"),
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "scopes_supported": ["openid", "email", "offline_access"],
                        "id_token_signing_alg_values_supported": ["ES256"],
                        "code_challenge_methods_supported": ["S256"],
                        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    }),
                )
            }
            (_, "/.well-known/jwks.json") => respond(200, "application/json", self.jwks.clone()),
            ("GET", "/authorize") => self.authorize(&q),
            ("POST", "/authorize") => {
                let form = read_form(req).await?;
                self.approve(&form)
            }
            ("POST", "/token") => {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let form = read_form(req).await?;
                self.token_endpoint(auth.as_deref(), &form)
            }
            (_, "/end-session") => match q.get("post_logout_redirect_uri") {
                Some(to) if self.at_gateway(to) => found(to),
                _ => page(200, "<p>You are signed out of the demo IdP.</p>"),
            },
            _ => json(404, serde_json::json!({"error": "not_found"})),
        }
    }

    /// `GET /authorize`: check the request, then show the sign-in page. A bad request gets
    /// an error page here (never a redirect to a `redirect_uri` that was not checked).
    fn authorize(&self, q: &HashMap<String, String>) -> Resp {
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        let redirect_uri = get("redirect_uri");
        let problem = if get("client_id") != CLIENT_ID {
            Some("unknown client_id")
        } else if !self.at_gateway(&redirect_uri) || !redirect_uri.ends_with(CALLBACK) {
            Some("redirect_uri is not the gateway's callback")
        } else if get("response_type") != "code" {
            Some("response_type must be code")
        } else if get("code_challenge_method") != "S256" || get("code_challenge").is_empty() {
            Some("PKCE S256 is required")
        } else if get("state").is_empty() || get("nonce").is_empty() {
            Some("state and nonce are required")
        } else if !get("scope").split(' ').any(|s| s == "openid") {
            Some("scope must contain openid")
        } else {
            None
        };
        if let Some(p) = problem {
            return page(400, &format!("<p>Invalid sign-in request: {p}.</p>"));
        }
        let id = crate::cli::token::random_id();
        if let Ok(mut m) = self.requests.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(
                id.clone(),
                AuthRequest {
                    redirect_uri,
                    state: get("state"),
                    challenge: get("code_challenge"),
                    nonce: get("nonce"),
                },
            );
        }
        page(
            200,
            &format!(
                "<p>The gateway sent you here to sign in. This IdP has one user.</p>\n<form method=\"post\" action=\"/authorize\"><input type=\"hidden\" name=\"request\" value=\"{id}\"><button type=\"submit\" autofocus>Sign in as alice</button></form>\n<form method=\"post\" action=\"/authorize\"><input type=\"hidden\" name=\"request\" value=\"{id}\"><input type=\"hidden\" name=\"deny\" value=\"1\"><button type=\"submit\">Cancel</button></form>"
            ),
        )
    }

    /// `POST /authorize`: the button. Back to the gateway's callback with a code and the
    /// state (or `error=access_denied` for Cancel).
    fn approve(&self, form: &HashMap<String, String>) -> Resp {
        let id = form.get("request").map(String::as_str).unwrap_or("");
        let Some(r) = self.requests.lock().ok().and_then(|mut m| m.remove(id)) else {
            return page(
                400,
                "<p>This sign-in page has expired; go back to the app and try again.</p>",
            );
        };
        if form.contains_key("deny") {
            return found(&with_query(
                &r.redirect_uri,
                &[("error", "access_denied"), ("state", &r.state)],
            ));
        }
        let code = crate::cli::token::random_id();
        let to = with_query(&r.redirect_uri, &[("code", &code), ("state", &r.state)]);
        if let Ok(mut m) = self.codes.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(code, r);
        }
        found(&to)
    }

    fn token_endpoint(&self, auth: Option<&str>, form: &HashMap<String, String>) -> Resp {
        let json =
            |status: u16, v: serde_json::Value| respond(status, "application/json", v.to_string());
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
        );
        if auth != Some(basic.as_str()) {
            return json(401, serde_json::json!({"error": "invalid_client"}));
        }
        let invalid_grant = || json(400, serde_json::json!({"error": "invalid_grant"}));
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let code = form.get("code").map(String::as_str).unwrap_or("");
                // Single use (RFC 6749 §4.1.2).
                let Some(r) = self.codes.lock().ok().and_then(|mut m| m.remove(code)) else {
                    return invalid_grant();
                };
                // RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) == code_challenge.
                let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
                if form.get("redirect_uri") != Some(&r.redirect_uri)
                    || verifier.len() < 43
                    || crate::identity::login::state::code_challenge(verifier) != r.challenge
                {
                    return invalid_grant();
                }
                let id_token = self.token(
                    "alice",
                    CLIENT_ID,
                    300,
                    vec![
                        ("nonce".into(), r.nonce),
                        ("email".into(), "alice@example.com".into()),
                    ],
                )?;
                let v = serde_json::json!({"access_token": self.access_token("alice", 300)?, "token_type": "Bearer", "expires_in": 300, "refresh_token": self.refresh_token("alice"), "id_token": id_token});
                json(200, v)
            }
            Some("refresh_token") => {
                let presented = form.get("refresh_token").map(String::as_str).unwrap_or("");
                let sub = self
                    .refresh_tokens
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(presented));
                let Some(sub) = sub else {
                    return invalid_grant();
                };
                let access = self.access_token(&sub, 60)?;
                let v = serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 60, "refresh_token": self.refresh_token(&sub)});
                json(200, v)
            }
            _ => json(400, serde_json::json!({"error": "unsupported_grant_type"})),
        }
    }
}

async fn read_form(req: Request<Incoming>) -> Result<HashMap<String, String>, String> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}
