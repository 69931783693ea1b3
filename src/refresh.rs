//! Edge session handling: logout (revoke the presented token until its `exp`, clear the
//! cookies). The refresh_token grant lives here too once enabled.

use http::{header, HeaderValue, Response, StatusCode};

use crate::app::App;
use crate::auth::now_unix;
use crate::body::{self, Body};
use crate::config::{AuthMode, Refresh};
use crate::error::GatewayError;

/// `POST <logout_path>`: needs a valid token; revokes its `jti` until `exp` (a token
/// without `jti` revokes its subject's tokens issued up to its `iat`), expires both
/// cookies, answers 204.
pub async fn logout(
    app: &App,
    parts: &http::request::Parts,
    host: Option<&str>,
) -> Result<Response<Body>, GatewayError> {
    let Some(cfg) = &app.config.refresh else {
        return Err(GatewayError::NoRoute);
    };
    let auth = app
        .verifier
        .authenticate(
            AuthMode::Required,
            &app.config.tokens,
            &parts.method,
            host,
            &parts.headers,
        )
        .await?
        .ok_or(GatewayError::MissingToken)?;
    let v = &auth.verified;
    app.revocations.check(v).await?;
    let res = match &v.jti {
        Some(jti) => app.revocations.revoke_jti(jti, v.exp).await,
        None => {
            app.revocations
                .revoke_sub(&v.sub, v.iat.unwrap_or_else(now_unix))
                .await
        }
    };
    res.map_err(|e| {
        tracing::warn!(error = %e, "logout could not record the revocation");
        GatewayError::RevocationUnavailable
    })?;
    tracing::info!(sub = %v.sub, "logout");
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    clear_cookies(resp.headers_mut(), cfg);
    Ok(resp)
}

/// Expire the access and refresh cookies.
pub fn clear_cookies(h: &mut http::HeaderMap, cfg: &Refresh) {
    for name in [&cfg.access_cookie, &cfg.refresh_cookie] {
        if let Ok(v) = HeaderValue::try_from(format!(
            "{name}=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"
        )) {
            h.append(header::SET_COOKIE, v);
        }
    }
}
