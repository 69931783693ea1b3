//! `[login]` in gateway.toml -> `FileLogin` (serde) -> `Login` (validated: the issuer
//! resolved to one with discovery, the client, the session secret read from its variable).
//! `config::validate` calls `validate` and names the file; errors here are (key, message).

use serde::Deserialize;

use super::{ClientAuth, IssuerConfig, OAuthClient};

/// Shortest `session_secret_env` value: the state cookie's AES-256-GCM key is derived from
/// it with HKDF, which cannot add entropy that is not there.
pub const MIN_SESSION_SECRET: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLogin {
    issuer: String,
    client_id: String,
    client_secret_env: Option<String>,
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    #[serde(default = "default_callback")]
    callback_path: String,
    session_secret_env: String,
    #[serde(default = "default_post_logout")]
    post_logout_redirect: String,
    backchannel_logout_path: Option<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}

fn default_callback() -> String {
    "/oauth2/callback".into()
}

fn default_post_logout() -> String {
    "/".into()
}

/// `[login]`, validated.
#[derive(Clone)]
pub struct Login {
    /// Index into `Config::issuers` (an issuer with `discovery = true`).
    pub issuer: usize,
    /// The client the gateway signs in as; its token endpoint is the issuer's discovered
    /// one (`[refresh]` borrows this client when it names none).
    pub client: OAuthClient,
    /// Always contains `openid`.
    pub scopes: Vec<String>,
    pub callback_path: String,
    /// The exact bytes of `session_secret_env`.
    pub session_secret: Vec<u8>,
    /// A same-origin path, or an absolute http(s) URL, for `post_logout_redirect_uri`.
    pub post_logout_redirect: String,
    /// OIDC Back-Channel Logout (`config::validate` checks the path and builds the
    /// `Backchannel` endpoint from it).
    pub backchannel_logout_path: Option<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Login")
            .field("issuer", &self.issuer)
            .field("client", &self.client)
            .field("scopes", &self.scopes)
            .field("callback_path", &self.callback_path)
            .finish_non_exhaustive()
    }
}

type Invalid = (String, String);

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    (format!("login.{key}"), message.into())
}

/// Validate `[login]` against the issuers already validated (`config::validate` checks
/// that `[tokens] sources` reads the access cookie the session lives in).
pub fn validate(l: &FileLogin, issuers: &[IssuerConfig]) -> Result<Login, Invalid> {
    let issuer = issuers
        .iter()
        .position(|i| i.name == l.issuer)
        .ok_or_else(|| {
            invalid(
                "issuer",
                format!("{:?} is not the name of an [[issuers]] entry", l.issuer),
            )
        })?;
    if issuers[issuer].discovery.is_none() {
        return Err(invalid(
            "issuer",
            format!(
                "issuer {:?} needs `discovery = true`: sign-in uses its discovered authorization endpoint",
                l.issuer
            ),
        ));
    }
    if l.client_id.is_empty() {
        return Err(invalid("client_id", "must not be empty"));
    }
    let (client_secret, auth) = match &l.client_secret_env {
        None => (String::new(), ClientAuth::None),
        Some(var) => {
            let v = std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    invalid(
                        "client_secret_env",
                        format!("environment variable {var} is not set (omit the key for a public client)"),
                    )
                })?;
            (v, ClientAuth::Basic)
        }
    };
    if !l.scopes.iter().any(|s| s == "openid") {
        return Err(invalid(
            "scopes",
            "must contain \"openid\" (sign-in is OpenID Connect)",
        ));
    }
    if let Some(s) = l.scopes.iter().find(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        return Err(invalid("scopes", format!("{s:?} is not a scope token")));
    }
    let normal = crate::path::normalize(&l.callback_path).ok();
    if !l.callback_path.starts_with('/')
        || l.callback_path.contains(['?', '#'])
        || normal.as_deref() != Some(l.callback_path.as_str())
    {
        return Err(invalid(
            "callback_path",
            "must be a normalised path starting with '/' (no query, '//', '.' or '..' segments, escapes)",
        ));
    }
    let secret = std::env::var_os(&l.session_secret_env)
        .map(std::os::unix::ffi::OsStringExt::into_vec)
        .ok_or_else(|| {
            invalid(
                "session_secret_env",
                format!("environment variable {} is not set", l.session_secret_env),
            )
        })?;
    if secret.len() < MIN_SESSION_SECRET {
        return Err(invalid(
            "session_secret_env",
            format!(
                "the secret is {} bytes; at least {MIN_SESSION_SECRET} are required",
                secret.len()
            ),
        ));
    }
    let p = &l.post_logout_redirect;
    let absolute = p.parse::<http::Uri>().ok().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
    });
    if !absolute && crate::path::return_path(p) != Some(p.as_str()) {
        return Err(invalid(
            "post_logout_redirect",
            "must be a same-origin path (\"/\") or an absolute http(s) URL",
        ));
    }
    Ok(Login {
        issuer,
        client: OAuthClient {
            token_endpoint: None,
            client_id: l.client_id.clone(),
            client_secret,
            auth,
        },
        scopes: l.scopes.clone(),
        callback_path: l.callback_path.clone(),
        session_secret: secret,
        post_logout_redirect: p.clone(),
        backchannel_logout_path: l.backchannel_logout_path.clone(),
    })
}
