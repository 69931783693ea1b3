//! Admin listener: health, readiness, metrics and the revocation API. A plain match on the
//! path; it never shares a port with public traffic. Connections are held to the same
//! deadlines and size limits as the public listeners (`conn::serve`), under a cap of their
//! own.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::clock::now_unix;
use crate::error::json_response;
use crate::http::conn::{self, Timeouts};
use crate::http::listener::Shared;
use crate::identity::revocation::Scoped;
use crate::net::body::{self, Body};
use http_body_util::{BodyExt, Limited};

/// Serve the admin API until `shutdown` is set.
pub async fn serve(l: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let (builder, timeouts, limit) = {
        let app = shared.app.load();
        let server = &app.config.server;
        (
            Arc::new(conn::builder(server)),
            Timeouts::of(server),
            app.connections.admin.clone(),
        )
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // (The guard `wait_for` returns must not live across the accept error's sleep.)
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => return,
        };
        let Some(slot) = limit.try_acquire() else {
            tracing::debug!(peer = %peer, "admin connection refused: cap reached");
            continue;
        };
        let c = conn::Conn {
            slot,
            accepted: tokio::time::Instant::now(),
            timeouts,
            shutdown: shutdown.clone(),
            drain: None,
        };
        let (shared, builder) = (shared.clone(), builder.clone());
        tokio::spawn(async move {
            let handle = move |req| {
                let shared = shared.clone();
                async move { handle(&shared, req).await }
            };
            conn::serve(stream, c, &builder, peer, handle).await;
        });
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let app = shared.app.load_full();
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (Method::GET, "/readyz") => readyz(&app),
        (Method::GET, "/.well-known/jwks.json") => match &app.config.identity.assertion {
            Some(a) => {
                let mut r = Response::new(body::full(a.key.jwks().to_string()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            None => json_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no identity assertions configured (identity.assertion_key)",
            ),
        },
        (Method::GET, "/metrics") => {
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = crate::ops::exposition::negotiate(accept);
            let mut r = Response::new(body::full(app.render_metrics(format)));
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            h.insert(http::header::VARY, http::HeaderValue::from_static("accept"));
            r
        }
        (Method::POST, "/revocations") => match refuse_unauthorized(&app, req.headers()) {
            Some(refusal) => refusal,
            None => post_revocation(&app, req.into_body()).await,
        },
        (Method::POST, "/reload") => match refuse_unauthorized(&app, req.headers()) {
            Some(refusal) => refusal,
            None => match crate::ops::reload::reload(shared).await {
                Ok(notes) => json(
                    StatusCode::OK,
                    serde_json::json!({"reloaded": true, "notes": notes}),
                ),
                Err(e) => json_response(StatusCode::BAD_REQUEST, "reload_refused", &e),
            },
        },
        (Method::GET, p) if p.starts_with("/revocations/jti/") => {
            let jti = &p["/revocations/jti/".len()..];
            if jti.is_empty() {
                return json_response(StatusCode::BAD_REQUEST, "bad_request", "missing jti");
            }
            let named = req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "issuer")
                    .map(|(_, v)| v.into_owned())
            });
            let issuer = match which_issuer(&app.config, named.as_deref(), "?issuer=<name>") {
                Ok(i) => i,
                Err(m) => return json_response(StatusCode::BAD_REQUEST, "bad_request", &m),
            };
            match app
                .revocations
                .is_jti_revoked(&Scoped::new(issuer, jti))
                .await
            {
                Ok(true) => json(StatusCode::OK, serde_json::json!({"revoked": true})),
                Ok(false) => json(StatusCode::NOT_FOUND, serde_json::json!({"revoked": false})),
                Err(e) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "revocation_unavailable",
                    &e.to_string(),
                ),
            }
        }
        (_, "/healthz" | "/readyz" | "/revocations" | "/reload" | "/metrics") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        ),
        _ => json_response(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

fn readyz(app: &App) -> Response<Body> {
    let issuers: Vec<_> = app
        .verifier
        .issuers()
        .iter()
        .map(|i| serde_json::json!({"name": i.config.name, "keys_loaded": i.is_loaded()}))
        .collect();
    let rev = &app.revocations;
    let ready = app.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({
            "ready": ready,
            "issuers": issuers,
            "revocation": {
                "store": rev.store_name(),
                "up": rev.store_up(),
                "circuit": rev.circuit(),
                "allowed_unchecked": rev.allowed_unchecked.get(),
            },
        }),
    )
}

/// Mutations need `Authorization: Bearer <value of admin.token_env>`, compared in constant
/// time. Without the variable set, mutations are refused outright.
/// `None` when authorized, else the refusal to send.
fn refuse_unauthorized(app: &App, headers: &http::HeaderMap) -> Option<Response<Body>> {
    let Some(expected) = &app.config.admin_token else {
        return Some(json_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin mutations are disabled: set the environment variable named by admin.token_env",
        ));
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let ok = presented.is_some_and(|p| {
        aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), expected.as_bytes()).is_ok()
    });
    if ok {
        None
    } else {
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin bearer token missing or wrong",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"jwtgate-admin\""),
        );
        Some(r)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    jti: Option<String>,
    exp: Option<i64>,
    sub: Option<String>,
    /// Optional for `sub`: revoke tokens issued at or before this time (default now).
    at: Option<i64>,
    /// A sign-in session: every token whose `sid` claim matches (for `subject_ttl_s`).
    sid: Option<String>,
    /// The `[[issuers]]` entry (its `name`) whose token or subject this is; may be left out
    /// when exactly one issuer is configured.
    issuer: Option<String>,
}

/// The issuer a revocation is for: the one `named`, or the only one configured. `how` says
/// how a client names one (in the message when it must).
fn which_issuer<'a>(
    config: &'a crate::config::Config,
    named: Option<&str>,
    how: &str,
) -> Result<&'a str, String> {
    let names = || {
        config
            .issuers
            .iter()
            .map(|i| format!("{:?}", i.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (named, config.issuers.as_slice()) {
        (Some(n), _) => config
            .issuer_named(n)
            .map(|i| i.name.as_str())
            .ok_or_else(|| format!("unknown issuer {n:?}; configured: {}", names())),
        (None, [only]) => Ok(&only.name),
        (None, []) => Err("no [[issuers]] are configured: there is no token to revoke".into()),
        (None, _) => Err(format!(
            "several issuers are configured ({}): name the one the token or subject belongs to with {how}",
            names()
        )),
    }
}

async fn post_revocation(app: &App, body: Incoming) -> Response<Body> {
    let bad = |m: &str| json_response(StatusCode::BAD_REQUEST, "bad_request", m);
    let bytes = match Limited::new(body, 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad("body too large or unreadable"),
    };
    let req: RevocationRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return bad(&format!(
                "body must be JSON {{\"jti\": ..., \"exp\": ...}}, {{\"sub\": ...}} or {{\"sid\": ...}}: {e}"
            ))
        }
    };
    let now = now_unix();
    let leeway = app.config.max_leeway_s();
    let issuer = req.issuer.clone();
    let issuer = || which_issuer(&app.config, issuer.as_deref(), "\"issuer\": \"<name>\"");
    let res = match req {
        RevocationRequest {
            jti: Some(jti),
            exp: Some(exp),
            sub: None,
            at: None,
            sid: None,
            ..
        } => {
            if jti.is_empty() {
                return bad("jti must not be empty");
            }
            // Accepted until exp + leeway: revoking is pointless only after that.
            let until = exp.saturating_add(leeway);
            if until < now {
                return bad(&format!(
                    "exp + leeway is in the past: no issuer accepts the token any more (largest leeway_s = {leeway}), nothing to revoke"
                ));
            }
            match issuer() {
                Ok(i) => {
                    app.revocations
                        .revoke_jti(&Scoped::new(i, &jti), until)
                        .await
                }
                Err(m) => return bad(&m),
            }
        }
        RevocationRequest {
            jti: Some(_),
            exp: None,
            ..
        } => return bad("exp is required with jti (the revocation lives until the token's exp)"),
        RevocationRequest {
            jti: None,
            exp: None,
            sub: Some(sub),
            at,
            sid: None,
            ..
        } => {
            if sub.is_empty() {
                return bad("sub must not be empty");
            }
            match issuer() {
                Ok(i) => {
                    app.revocations
                        .revoke_sub(&Scoped::new(i, &sub), at.unwrap_or(now))
                        .await
                }
                Err(m) => return bad(&m),
            }
        }
        RevocationRequest {
            jti: None,
            exp: None,
            sub: None,
            at: None,
            sid: Some(sid),
            ..
        } => {
            if sid.is_empty() {
                return bad("sid must not be empty");
            }
            match issuer() {
                Ok(i) => app.revocations.revoke_sid(&Scoped::new(i, &sid)).await,
                Err(m) => return bad(&m),
            }
        }
        RevocationRequest {
            jti: None,
            sub: None,
            sid: None,
            ..
        } => return bad("give one of {\"jti\", \"exp\"}, {\"sub\"} or {\"sid\"}"),
        _ => return bad("give one of {\"jti\", \"exp\"}, {\"sub\"} or {\"sid\"}, not several"),
    };
    match res {
        Ok(()) => {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        // Not revoked everywhere it must be (store down, or too few replicas confirmed):
        // the caller retries; a revocation is idempotent.
        Err(e) => {
            let mut r = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation_unavailable",
                &e.to_string(),
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
