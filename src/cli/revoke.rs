//! `jwtgate revoke`: revoke a token or a subject through the running gateway's admin API.
//! Where the API is and which variable holds its token come from `-c gateway.toml` when
//! given; `--token` revokes a token by its own `jti` and `exp`.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use http_body_util::BodyExt;

/// What `-c gateway.toml` says about reaching the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// `http://<listen.admin>` (an unspecified address through loopback).
    pub url: String,
    /// `admin.token_env` (default `JWTGATE_ADMIN_TOKEN`).
    pub token_env: String,
    /// `[[issuers]]` as (name, iss): to name the issuer of a `--token`.
    pub issuers: Vec<(String, String)>,
}

/// Read the admin address, token variable and issuers from the config file, without
/// validating the rest (like `healthcheck`, it must not need the gateway's secrets).
pub fn admin_settings(path: &Path) -> Result<AdminSettings, String> {
    let addr = super::health::admin_address(path)?;
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    let token_env = match doc.get("admin").and_then(|a| a.get("token_env")) {
        None => "JWTGATE_ADMIN_TOKEN".to_string(),
        Some(v) => v
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{file}: admin.token_env must name an environment variable"))?
            .to_string(),
    };
    let issuers = doc
        .get("issuers")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    Some((
                        i.get("name")?.as_str()?.to_string(),
                        i.get("issuer")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(AdminSettings {
        url: format!("http://{addr}"),
        token_env,
        issuers,
    })
}

/// The claims `--token` revokes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    pub jti: String,
    pub exp: i64,
    pub iss: Option<String>,
}

/// Read `jti`, `exp` and `iss` from a JWT's payload WITHOUT verifying its signature: this
/// only picks what to revoke (revoking a forged token's jti harms nothing), and the
/// gateway still checks `exp` against its leeway. Never prints the token.
pub fn token_ids(token: &str) -> Result<TokenIds, String> {
    let mut parts = token.trim().split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("--token is not a JWT (three base64url parts separated by dots)".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "--token: the payload is not base64url".to_string())?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| "--token: the payload is not a JSON object".to_string())?;
    let jti = claims
        .get("jti")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or("--token: the token has no `jti`, so it cannot be revoked alone: revoke its subject with --sub")?;
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64())
        .ok_or("--token: the token has no numeric `exp`")?;
    Ok(TokenIds {
        jti: jti.to_string(),
        exp,
        iss: claims
            .get("iss")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    })
}

/// POST `body` to `<admin>/revocations` with the admin token; `Ok` on 204, else the
/// status and the gateway's reason.
pub async fn post(admin: &str, token: &str, body: &serde_json::Value) -> Result<(), String> {
    let url = format!("{}/revocations", admin.trim_end_matches('/'));
    let req = http::Request::post(&url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(crate::net::body::full(body.to_string()))
        .map_err(|e| format!("--admin {admin:?}: {e}"))?;
    let client = crate::net::Client::new(1);
    let resp = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("{url}: {e}")),
        Err(_) => return Err(format!("{url}: timed out")),
    };
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status == http::StatusCode::NO_CONTENT {
        Ok(())
    } else {
        Err(format!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&text)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b("{\"alg\":\"none\"}"), b(payload))
    }

    #[test]
    fn token_ids_read_the_payload() {
        assert_eq!(
            token_ids(&jwt(r#"{"jti":"j1","exp":5,"iss":"https://i"}"#)),
            Ok(TokenIds {
                jti: "j1".into(),
                exp: 5,
                iss: Some("https://i".into())
            })
        );
        for (t, needle) in [
            (jwt(r#"{"exp":5}"#), "no `jti`"),
            (jwt(r#"{"jti":"j"}"#), "no numeric `exp`"),
            ("a.b".to_string(), "not a JWT"),
            ("a.!!.c".to_string(), "base64url"),
            (jwt("[1]"), "no `jti`"),
        ] {
            let e = token_ids(&t).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
