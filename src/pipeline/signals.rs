//! The identity provider's endpoints on the public listeners: back-channel logout (OIDC
//! Back-Channel Logout 1.0) and the Shared Signals push receiver (RFC 8935). The logic is
//! `identity::signals`; this reads the body and shapes each specification's answer.

use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::app::App;
use crate::identity::signals::events::Delivery;
use crate::identity::signals::{Endpoint, SignalError};
use crate::net::body::{self, Body};

/// Largest body accepted (a logout token or a SET, with its form encoding).
const MAX_BODY: usize = 64 * 1024;

/// Answer a POST to `endpoint` (see `Decision::Receive`).
pub async fn receive(
    app: &App,
    endpoint: Endpoint,
    parts: &http::request::Parts,
    incoming: Incoming,
) -> Response<Body> {
    let Some(rx) = &app.signals else {
        return answer(StatusCode::NOT_FOUND, None);
    };
    let bytes = Limited::new(incoming, MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes());
    match endpoint {
        Endpoint::Backchannel(i) => {
            let res = match &bytes {
                Ok(b) => rx.backchannel_logout(i, b).await,
                Err(_) => Err(SignalError::Invalid("body too large or unreadable")),
            };
            // Back-Channel Logout 1.0 §2.8: 200 on success, 400 (OAuth error JSON)
            // otherwise; never cached.
            match res {
                Ok(()) => answer(StatusCode::OK, None),
                Err(e) => {
                    let status = match e {
                        SignalError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    let code = match e {
                        SignalError::Unavailable(_) => "temporarily_unavailable",
                        _ => "invalid_request",
                    };
                    let v = serde_json::json!({"error": code, "error_description": e.to_string()});
                    answer(status, Some(v))
                }
            }
        }
        Endpoint::Signals => {
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let res = match &bytes {
                Ok(b) => rx.push(ct, b).await,
                Err(_) => Err(SignalError::Invalid("body too large or unreadable")),
            };
            // RFC 8935 §2.2-2.4: 202 when accepted, 400 with {"err", "description"}.
            match res {
                Ok(Delivery::Accepted | Delivery::Duplicate) => answer(StatusCode::ACCEPTED, None),
                Err(e) => {
                    let status = match e {
                        SignalError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    let v = serde_json::json!({"err": e.code(), "description": e.to_string()});
                    answer(status, Some(v))
                }
            }
        }
    }
}

fn answer(status: StatusCode, json: Option<serde_json::Value>) -> Response<Body> {
    let mut r = match json {
        Some(v) => {
            let mut r = Response::new(body::full(v.to_string()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => Response::new(body::empty()),
    };
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
