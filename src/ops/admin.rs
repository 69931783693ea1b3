//! Admin listener: health, readiness, metrics, the revocation API and the operator
//! controls (drain, running config, version, log level, undoing revocations). A plain
//! match on the path; it never shares a port with public traffic. `listen.metrics` serves
//! the read-only part (`Surface::ReadOnly`). Connections are held to the same
//! deadlines and size limits as the public listeners (`conn::serve`), under a cap of their
//! own.

use std::sync::atomic::Ordering;
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
use crate::identity::revocation::{ListFilter, Scoped};
use crate::net::body::{self, Body};
use http_body_util::{BodyExt, Limited};

/// Serve the admin API (or, `Surface::ReadOnly`, its probes and metrics) until `shutdown`
/// is set.
pub async fn serve(
    l: TcpListener,
    surface: Surface,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (builder, timeouts, limit) = {
        let app = shared.app.load();
        let server = &app.config.server;
        (
            Arc::new(conn::Builders::new(server)),
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
                async move { handle(&shared, surface, req).await }
            };
            conn::serve(stream, conn::Proto::Sniff, c, &builder, peer, handle).await;
        });
    }
}

/// Which endpoints a listener serves: the whole admin API (`listen.admin`), or only what a
/// scraper needs (`listen.metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Full,
    ReadOnly,
}

/// The admin API's endpoints, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'a> {
    Healthz,
    Readyz,
    Metrics,
    Jwks,
    Revocations,
    RevokedJti(&'a str),
    RevokedSub(&'a str),
    RevokedSid(&'a str),
    Reload,
    Drain,
    Config,
    Version,
    LogLevel,
}

impl<'a> Endpoint<'a> {
    fn of(path: &'a str) -> Option<Endpoint<'a>> {
        Some(match path {
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/metrics" => Endpoint::Metrics,
            "/.well-known/jwks.json" => Endpoint::Jwks,
            "/revocations" => Endpoint::Revocations,
            "/reload" => Endpoint::Reload,
            "/drain" => Endpoint::Drain,
            "/config" => Endpoint::Config,
            "/version" => Endpoint::Version,
            "/log-level" => Endpoint::LogLevel,
            p => {
                if let Some(jti) = p.strip_prefix("/revocations/jti/") {
                    Endpoint::RevokedJti(jti)
                } else if let Some(sub) = p.strip_prefix("/revocations/sub/") {
                    Endpoint::RevokedSub(sub)
                } else if let Some(sid) = p.strip_prefix("/revocations/sid/") {
                    Endpoint::RevokedSid(sid)
                } else {
                    return None;
                }
            }
        })
    }

    /// The methods it answers (HEAD too wherever GET is).
    fn methods(self) -> &'static [Method] {
        match self {
            Endpoint::Healthz
            | Endpoint::Readyz
            | Endpoint::Metrics
            | Endpoint::Jwks
            | Endpoint::Config
            | Endpoint::Version => &[Method::GET],
            Endpoint::Revocations | Endpoint::LogLevel => &[Method::GET, Method::POST],
            Endpoint::RevokedJti(_) => &[Method::GET, Method::DELETE],
            Endpoint::RevokedSub(_) | Endpoint::RevokedSid(_) => &[Method::DELETE],
            Endpoint::Reload | Endpoint::Drain => &[Method::POST],
        }
    }

    /// Served on the read-only (`listen.metrics`) listener too.
    fn read_only(self) -> bool {
        matches!(
            self,
            Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics
        )
    }

    /// Needs the admin bearer token for `method`: every mutation and every operator
    /// control; health, readiness, metrics, the assertion JWKS and the single-jti lookup
    /// stay open (probes and scrapers carry no token).
    fn needs_token(self, method: &Method) -> bool {
        match self {
            Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics | Endpoint::Jwks => false,
            Endpoint::RevokedJti(_) => method != Method::GET,
            _ => true,
        }
    }
}

async fn handle(shared: &Shared, surface: Surface, req: Request<Incoming>) -> Response<Body> {
    let app = shared.app.load_full();
    let path = req.uri().path().to_string();
    let Some(endpoint) = Endpoint::of(&path).filter(|e| surface == Surface::Full || e.read_only())
    else {
        return json_response(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint");
    };
    let allowed = endpoint.methods();
    // HEAD is GET without the body (hyper leaves the body out).
    let method = match req.method() {
        &Method::HEAD if allowed.contains(&Method::GET) => Method::GET,
        m => m.clone(),
    };
    if !allowed.contains(&method) {
        return method_not_allowed(allowed);
    }
    if endpoint.needs_token(&method) {
        if let Some(refusal) = refuse_unauthorized(&app, req.headers()) {
            return refusal;
        }
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    match (endpoint, method) {
        (Endpoint::Healthz, _) => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (Endpoint::Readyz, _) => readyz(shared, &app),
        (Endpoint::Jwks, _) => match &app.config.identity.assertion {
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
        (Endpoint::Metrics, _) => {
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
        (Endpoint::Revocations, Method::POST) => post_revocation(&app, req.into_body()).await,
        (Endpoint::Revocations, _) => {
            let filter = ListFilter {
                sub: param("sub"),
                sid: param("sid"),
                issuer: param("issuer"),
            };
            list_revocations(&app, filter, param("limit")).await
        }
        (Endpoint::Reload, _) => match crate::ops::reload::reload(shared).await {
            Ok(notes) => json(
                StatusCode::OK,
                serde_json::json!({"reloaded": true, "notes": notes}),
            ),
            Err(e) => json_response(StatusCode::BAD_REQUEST, "reload_refused", &e),
        },
        (Endpoint::Drain, _) => {
            if !shared.draining.swap(true, Ordering::AcqRel) {
                tracing::warn!("drain requested on the admin API: /readyz answers 503 from now on; still serving");
            }
            json(StatusCode::OK, serde_json::json!({"draining": true}))
        }
        (Endpoint::Config, _) => {
            let c = &app.config;
            json(
                StatusCode::OK,
                serde_json::json!({
                    "path": c.path.display().to_string(),
                    "sha256": c.source.sha256,
                    "config": c.source.redacted,
                }),
            )
        }
        (Endpoint::Version, _) => json(
            StatusCode::OK,
            serde_json::json!({"name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION")}),
        ),
        (Endpoint::LogLevel, Method::POST) => {
            let from_body = match read_small(req.into_body()).await {
                Ok(b) if b.is_empty() => None,
                Ok(b) => match serde_json::from_slice::<LogLevelRequest>(&b) {
                    Ok(r) => Some(r.level),
                    Err(e) => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            &format!("body must be JSON {{\"level\": \"debug\"}}: {e}"),
                        )
                    }
                },
                Err(m) => return json_response(StatusCode::BAD_REQUEST, "bad_request", m),
            };
            match from_body.or_else(|| param("level")) {
                Some(level) => set_log_level(&level),
                None => json_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "give the level as ?level=debug or {\"level\": \"debug\"} (a tracing filter such as \"info,jwtgate=debug\" works too)",
                ),
            }
        }
        (Endpoint::LogLevel, _) => match LOG_CONTROL.get() {
            Some(c) => json(
                StatusCode::OK,
                serde_json::json!({"level": *c.current.lock().unwrap_or_else(|e| e.into_inner())}),
            ),
            None => log_control_missing(),
        },
        (Endpoint::RevokedJti(jti), Method::GET) => {
            let Some(jti) = decode_segment(jti) else {
                return json_response(StatusCode::BAD_REQUEST, "bad_request", "missing jti");
            };
            let issuer =
                match which_issuer(&app.config, param("issuer").as_deref(), "?issuer=<name>") {
                    Ok(i) => i,
                    Err(m) => return json_response(StatusCode::BAD_REQUEST, "bad_request", &m),
                };
            match app
                .revocations
                .is_jti_revoked(&Scoped::new(issuer, &jti))
                .await
            {
                Ok(true) => json(StatusCode::OK, serde_json::json!({"revoked": true})),
                Ok(false) => json(StatusCode::NOT_FOUND, serde_json::json!({"revoked": false})),
                Err(e) => store_unavailable(&e),
            }
        }
        (Endpoint::RevokedJti(value), _)
        | (Endpoint::RevokedSub(value), _)
        | (Endpoint::RevokedSid(value), _) => {
            let what = match endpoint {
                Endpoint::RevokedJti(_) => "jti",
                Endpoint::RevokedSub(_) => "sub",
                _ => "sid",
            };
            let Some(value) = decode_segment(value) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("missing {what}"),
                );
            };
            let issuer =
                match which_issuer(&app.config, param("issuer").as_deref(), "?issuer=<name>") {
                    Ok(i) => i,
                    Err(m) => return json_response(StatusCode::BAD_REQUEST, "bad_request", &m),
                };
            let scoped = Scoped::new(issuer, &value);
            let undone = match what {
                "jti" => app.revocations.unrevoke_jti(&scoped).await,
                "sub" => app.revocations.unrevoke_sub(&scoped).await,
                _ => app.revocations.unrevoke_sid(&scoped).await,
            };
            match undone {
                Ok(true) => {
                    tracing::warn!(kind = what, issuer, "revocation undone on the admin API");
                    let mut r = Response::new(body::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Ok(false) => json_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no revocation of this {what} for issuer {issuer:?}"),
                ),
                Err(e) => store_unavailable(&e),
            }
        }
    }
}

/// 405 with the `Allow` the endpoint answers (HEAD wherever GET is).
fn method_not_allowed(allowed: &[Method]) -> Response<Body> {
    let mut names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    if allowed.contains(&Method::GET) {
        names.insert(1, "HEAD");
    }
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    );
    if let Ok(v) = http::HeaderValue::from_str(&names.join(", ")) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}

/// 503 with `Retry-After: 1`: the store did not answer, or (with `min_replicas`) too few
/// replicas confirmed in time. Revocations and their undoing are idempotent: retry.
fn store_unavailable(e: &crate::identity::revocation::StoreError) -> Response<Body> {
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

/// A path segment, percent-decoded; `None` when empty or not UTF-8.
fn decode_segment(s: &str) -> Option<String> {
    let v = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
    (!v.is_empty()).then(|| v.into_owned())
}

async fn read_small(body: Incoming) -> Result<bytes::Bytes, &'static str> {
    Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| "body too large or unreadable")
}

/// The most `GET /revocations` lists without `?limit=`, and the most it ever lists.
const LIST_DEFAULT: usize = 1_000;
const LIST_MAX: usize = 10_000;

/// `GET /revocations[?sub=|?sid=][&issuer=][&limit=]`.
async fn list_revocations(app: &App, filter: ListFilter, limit: Option<String>) -> Response<Body> {
    let bad = |m: &str| json_response(StatusCode::BAD_REQUEST, "bad_request", m);
    if let Some(i) = &filter.issuer {
        if let Err(m) = which_issuer(&app.config, Some(i), "?issuer=<name>") {
            return bad(&m);
        }
    }
    for (name, v) in [("sub", &filter.sub), ("sid", &filter.sid)] {
        if v.as_deref() == Some("") {
            return bad(&format!("{name} must not be empty"));
        }
    }
    if filter.sub.is_some() && filter.sid.is_some() {
        return bad("list by sub or by sid, not both");
    }
    let limit = match limit.map(|l| l.parse::<usize>()) {
        None => LIST_DEFAULT,
        Some(Ok(n)) if (1..=LIST_MAX).contains(&n) => n,
        Some(_) => return bad(&format!("limit must be 1..={LIST_MAX}")),
    };
    // One more than asked for says whether the list was cut.
    match app.revocations.list(&filter, limit + 1).await {
        Ok(mut l) => {
            let truncated = l.len() > limit;
            l.truncate(limit);
            json(
                StatusCode::OK,
                serde_json::json!({
                    "store": app.revocations.store_name(),
                    "revocations": l,
                    "truncated": truncated,
                }),
            )
        }
        Err(e) => store_unavailable(&e),
    }
}

// === runtime log level ===

/// Changes the process's log filter (a `tracing` filter directive such as `debug` or
/// `info,jwtgate=debug`); `Err` says why a directive was refused.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct LogControl {
    set: SetLogLevel,
    current: std::sync::Mutex<String>,
}

static LOG_CONTROL: std::sync::OnceLock<LogControl> = std::sync::OnceLock::new();

/// Let `POST /log-level` change the log filter: the binary installs its logger's reload
/// handle here (`initial` is the filter it started with). Once per process.
pub fn install_log_control(initial: &str, set: SetLogLevel) {
    let _ = LOG_CONTROL.set(LogControl {
        set,
        current: std::sync::Mutex::new(initial.to_string()),
    });
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelRequest {
    level: String,
}

fn set_log_level(level: &str) -> Response<Body> {
    let Some(c) = LOG_CONTROL.get() else {
        return log_control_missing();
    };
    let level = level.trim();
    if level.is_empty() || level.len() > 1024 {
        return json_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "level must be a tracing filter of 1 to 1024 characters",
        );
    }
    let mut current = c.current.lock().unwrap_or_else(|e| e.into_inner());
    match (c.set)(level) {
        Ok(()) => {
            let previous = std::mem::replace(&mut *current, level.to_string());
            tracing::warn!(filter = level, previous = %previous, "log level changed on the admin API");
            json(
                StatusCode::OK,
                serde_json::json!({"level": level, "previous": previous}),
            )
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("not a log filter: {e}"),
        ),
    }
}

fn log_control_missing() -> Response<Body> {
    json_response(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "this process has no adjustable logger (jwtgate embedded as a library)",
    )
}

fn readyz(shared: &Shared, app: &App) -> Response<Body> {
    let issuers: Vec<_> = app
        .verifier
        .issuers()
        .iter()
        .map(|i| serde_json::json!({"name": i.config.name, "keys_loaded": i.is_loaded()}))
        .collect();
    let rev = &app.revocations;
    let draining = shared.draining.load(Ordering::Acquire);
    let ready = app.ready() && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({
            "ready": ready,
            "draining": draining,
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
    let bytes = match read_small(body).await {
        Ok(b) => b,
        Err(m) => return bad(m),
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
        Err(e) => store_unavailable(&e),
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
