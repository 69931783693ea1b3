//! CORS for routes with `cors` (step 2 of the request path): the gateway answers preflights
//! itself and sets `Access-Control-Allow-Origin` / `-Credentials` on every response of the
//! route, its own errors included, so a browser app can read a 401 or a 429. Whether a
//! cookie-carried token may come from an allowed origin is `auth`'s CSRF check, which asks
//! `trusts_credentials_from`.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::config::CorsConfig;
use crate::error::GatewayError;
use crate::net::body::{self, Body};

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answer a preflight: 204 with the allowed methods, headers and max age, or 403 when the
/// origin, the method or a requested header is not allowed. `apply` adds the
/// origin-dependent headers afterwards, as for any response of the route.
pub fn preflight(c: &CorsConfig, headers: &HeaderMap) -> Result<Response<Body>, GatewayError> {
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    if !origin.is_some_and(|o| c.allows_origin(o)) {
        return Err(GatewayError::CorsRefused("origin not allowed"));
    }
    let method = headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .ok_or(GatewayError::CorsRefused(
            "invalid Access-Control-Request-Method",
        ))?;
    // GET, HEAD and POST are CORS-safelisted: a browser needs no permission for them.
    let safelisted = matches!(method, Method::GET | Method::HEAD | Method::POST);
    if !safelisted && !c.methods.contains(&method) {
        return Err(GatewayError::CorsRefused("method not allowed"));
    }
    for v in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
        let list = v
            .to_str()
            .map_err(|_| GatewayError::CorsRefused("invalid Access-Control-Request-Headers"))?;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !c
                .headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(name))
            {
                return Err(GatewayError::CorsRefused("request header not allowed"));
            }
        }
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    if let Some(v) = join(c.methods.iter().map(Method::as_str)) {
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = join(c.headers.iter().map(|n| n.as_str())) {
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if c.max_age_s > 0 {
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(c.max_age_s));
    }
    h.append(
        VARY,
        HeaderValue::from_static("access-control-request-method, access-control-request-headers"),
    );
    Ok(resp)
}

/// Set the route's CORS response headers for a request from `origin`. The gateway decides
/// them alone: an upstream's own `Access-Control-Allow-Origin` / `-Credentials` are
/// replaced (two answers would make the browser refuse both). Other `Access-Control-*`
/// headers an upstream sets (`-Expose-Headers`) pass through.
pub fn apply(c: &CorsConfig, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
    headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
    if c.any_origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        return;
    }
    // The answer depends on Origin: shared caches must keep one copy per origin.
    headers.append(VARY, HeaderValue::from_static("origin"));
    let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|s| c.allows_origin(s))) else {
        return;
    };
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if c.credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let s = items.collect::<Vec<_>>().join(", ");
    (!s.is_empty())
        .then(|| HeaderValue::from_str(&s).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> CorsConfig {
        CorsConfig {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            any_origin: origins.is_empty(),
            methods: vec![Method::GET, Method::POST, Method::DELETE],
            headers: vec![
                http::HeaderName::from_static("authorization"),
                http::HeaderName::from_static("content-type"),
            ],
            credentials,
            max_age_s: 600,
        }
    }

    fn req(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn preflight_from_listed_origin_is_answered() {
        let c = cors(&["https://app.example.com"], true);
        let h = req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "DELETE"),
            (
                "access-control-request-headers",
                "Authorization, content-type",
            ),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &h));
        let resp = preflight(&c, &h).unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let got = resp.headers();
        assert_eq!(got[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST, DELETE");
        assert_eq!(
            got[ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type"
        );
        assert_eq!(got[ACCESS_CONTROL_MAX_AGE], "600");
    }

    #[test]
    fn preflight_refusals_name_the_reason() {
        let c = cors(&["https://app.example.com"], false);
        let cases = [
            ("https://evil.example", "PUT", "", "origin not allowed"),
            ("https://app.example.com", "PUT", "", "method not allowed"),
            (
                "https://app.example.com",
                "GET",
                "x-secret",
                "request header not allowed",
            ),
        ];
        for (origin, method, hdrs, why) in cases {
            let mut h = req(&[
                ("origin", origin),
                ("access-control-request-method", method),
            ]);
            if !hdrs.is_empty() {
                h.insert(
                    ACCESS_CONTROL_REQUEST_HEADERS,
                    HeaderValue::from_str(hdrs).unwrap(),
                );
            }
            let e = preflight(&c, &h).unwrap_err();
            assert!(e.to_string().contains(why), "{e} vs {why}");
        }
    }

    #[test]
    fn apply_sets_origin_only_for_listed_origins_and_replaces_upstreams() {
        let c = cors(&["https://app.example.com"], true);
        let mut h = req(&[("access-control-allow-origin", "*")]);
        apply(
            &c,
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut h,
        );
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[VARY], "origin");

        let mut h = req(&[("access-control-allow-origin", "*")]);
        apply(
            &c,
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut h,
        );
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));

        let any = cors(&[], false);
        let mut h = HeaderMap::new();
        apply(
            &any,
            Some(&HeaderValue::from_static("https://x.example")),
            &mut h,
        );
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(VARY));
    }

    #[test]
    fn only_listed_origins_with_credentials_may_send_cookies() {
        assert!(&cors(&["https://app.example.com"], true)
            .trusts_credentials_from("https://app.example.com"));
        assert!(!&cors(&["https://app.example.com"], false)
            .trusts_credentials_from("https://app.example.com"));
        assert!(!&cors(&[], false).trusts_credentials_from("https://x.example"));
        assert!(!&cors(&["https://app.example.com"], true)
            .trusts_credentials_from("https://app.example.com.evil.example"));
    }
}
