//! The gateway's own logout endpoint (`[refresh] logout_path`): revoke the presented token,
//! hand the refresh token back to the IdP (RFC 7009), expire the cookies.

use http::{Response, StatusCode};

use crate::app::App;
use crate::config::{AuthMode, CorsConfig};
use crate::error::GatewayError;
use crate::identity::auth::{self, now_unix};
use crate::identity::refresh::{clear_cookies, find_refresh_token};
use crate::net::body::{self, Body};
use crate::net::Client;

/// `POST <logout_path>`: needs a valid token; revokes its `jti` at its issuer until `exp`
/// plus the leeway (a token without `jti` revokes its subject's tokens at that issuer
/// issued up to its `iat`), revokes the refresh
/// token at the IdP (RFC 7009) when configured, expires both cookies, answers 204.
pub async fn logout(
    app: &App,
    http: &Client,
    parts: &http::request::Parts,
    host: Option<&str>,
    cors: Option<&CorsConfig>,
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
            cors,
            None,
        )
        .await?
        .ok_or(GatewayError::MissingToken)?;
    let v = &auth.verified;
    auth::check_time(v, now_unix())?;
    app.revocations.check(v).await?;
    // At the token's own issuer: another issuer's `alice` or jti is someone else.
    let res = match &v.scoped_jti {
        Some(jti) => {
            let until = v.exp.saturating_add(app.config.max_leeway_s());
            app.revocations.revoke_jti(jti, until).await
        }
        None => {
            app.revocations
                .revoke_sub(&v.scoped_sub, v.iat.unwrap_or_else(now_unix))
                .await
        }
    };
    res.map_err(|e| {
        tracing::warn!(error = %e, "logout could not record the revocation");
        GatewayError::RevocationUnavailable
    })?;
    if let (Some(r), Ok(Some((rt, _)))) = (&app.refresher, find_refresh_token(cfg, &parts.headers))
    {
        r.revoke_at_idp(http, &rt).await;
    }
    tracing::info!(sub = %v.sub, "logout");
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    clear_cookies(resp.headers_mut(), cfg);
    Ok(resp)
}
