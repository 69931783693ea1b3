//! Admin listener: health and readiness for probes. A plain match on the path; it never
//! shares a port with public traffic.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, Body};
use crate::error::json_response;
use crate::listener::Shared;

/// Serve the admin API until `shutdown` is set.
pub async fn serve(l: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let app = shared.app.load();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let issuers: Vec<_> = app
                .verifier
                .issuers()
                .iter()
                .map(|i| serde_json::json!({"name": i.config.name, "keys_loaded": i.is_loaded()}))
                .collect();
            let ready = app.keys_ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                serde_json::json!({"ready": ready, "issuers": issuers}),
            )
        }
        (_, "/healthz") | (_, "/readyz") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        ),
        _ => json_response(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
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
