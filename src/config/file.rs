//! The raw shapes of gateway.toml (serde, `deny_unknown_fields`): what the file may say,
//! before anything is checked. `validate` turns them into `Config`; nothing else sees them.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: FileListen,
    #[serde(default)]
    pub(super) server: FileServer,
    pub(super) tls: Option<FileTls>,
    #[serde(default)]
    pub(super) admin: FileAdmin,
    #[serde(default)]
    pub(super) issuers: Vec<FileIssuer>,
    #[serde(default)]
    pub(super) tokens: FileTokens,
    #[serde(default)]
    pub(super) identity: FileIdentity,
    #[serde(default)]
    pub(super) revocation: FileRevocation,
    pub(super) refresh: Option<FileRefresh>,
    pub(super) anomaly: Option<FileAnomaly>,
    pub(super) authz: Option<FileAuthz>,
    pub(super) login: Option<super::login::FileLogin>,
    pub(super) signals: Option<FileSignals>,
    #[serde(default)]
    pub(super) routes: Vec<FileRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileAnomaly {
    #[serde(deserialize_with = "super::duration::s")]
    pub(super) window_s: u64,
    pub(super) max_requests_per_token: u64,
    pub(super) max_networks_per_token: usize,
    pub(super) action: String,
}

impl Default for FileAnomaly {
    fn default() -> Self {
        FileAnomaly {
            window_s: 60,
            max_requests_per_token: 600,
            max_networks_per_token: 3,
            action: "log".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileListen {
    pub(super) https: Option<String>,
    pub(super) http: Option<String>,
    pub(super) admin: Option<String>,
    pub(super) authz: Option<String>,
    /// Read-only admin endpoints (/healthz, /readyz, /metrics) for scrapers.
    pub(super) metrics: Option<String>,
}

/// `[authz]`: the forward-auth decision listener's trust and Envoy settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileAuthz {
    pub(super) trusted_proxies: Vec<String>,
    pub(super) path_prefix: Option<String>,
}

impl Default for FileAuthz {
    fn default() -> Self {
        FileAuthz {
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            path_prefix: None,
        }
    }
}

/// `server.max_connections` default, sized for the shipped container limit (256 MiB,
/// deploy/k8s): an idle TLS connection costs about 30 KiB, so 5000 of them take about
/// 150 MiB, which leaves room for the verified-token cache (`token_cache_mib`, 64), the
/// revocation cache and the process itself.
pub(super) const DEFAULT_MAX_CONNECTIONS: usize = 5_000;
/// `server.token_cache_mib` default: the verified-token cache's memory, in MiB.
pub(super) const DEFAULT_TOKEN_CACHE_MIB: u64 = 64;
/// The largest `server.token_cache_mib` taken: 64 GiB.
pub(super) const MAX_TOKEN_CACHE_MIB: u64 = 65_536;
/// Above this, `server.max_connections` is a typo, not a plan: each connection needs a file
/// descriptor and tens of KiB.
pub(super) const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// The longest `server.header_timeout_ms` / `keepalive_timeout_ms` taken: one hour.
pub(super) const MAX_CONN_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileServer {
    pub(super) worker_threads: usize,
    #[serde(deserialize_with = "super::duration::s")]
    pub(super) drain_s: u64,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) header_timeout_ms: u64,
    pub(super) max_header_bytes: usize,
    pub(super) max_body_bytes: u64,
    pub(super) trusted_proxy_hops: usize,
    pub(super) log_format: String,
    pub(super) upstream_ca: Option<String>,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) stream_idle_timeout_ms: u64,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) keepalive_timeout_ms: u64,
    pub(super) max_connections: usize,
    pub(super) token_cache_mib: u64,
}

impl Default for FileServer {
    fn default() -> Self {
        FileServer {
            worker_threads: 0,
            drain_s: 30,
            header_timeout_ms: 10_000,
            max_header_bytes: 65_536,
            max_body_bytes: 10 * 1024 * 1024,
            trusted_proxy_hops: 0,
            log_format: "json".into(),
            upstream_ca: None,
            stream_idle_timeout_ms: 60_000,
            keepalive_timeout_ms: 75_000,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            token_cache_mib: DEFAULT_TOKEN_CACHE_MIB,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert: String,
    pub(super) key: String,
    /// PEM CA bundle client certificates must chain to (RFC 8705 mTLS binding).
    pub(super) client_ca: Option<String>,
    /// `"optional"` (default with `client_ca`) or `"required"`.
    pub(super) client_auth: Option<String>,
    /// How often the files are checked for a renewed pair (0: never).
    #[serde(
        default = "default_tls_watch_ms",
        deserialize_with = "super::duration::ms"
    )]
    pub(super) watch_interval_ms: u64,
}

pub(super) fn default_tls_watch_ms() -> u64 {
    5_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileAdmin {
    pub(super) token_env: String,
}

impl Default for FileAdmin {
    fn default() -> Self {
        FileAdmin {
            token_env: "JWTGATE_ADMIN_TOKEN".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileIssuer {
    pub(super) name: String,
    pub(super) issuer: String,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    pub(super) algorithms: Option<Vec<String>>,
    #[serde(default = "default_leeway", deserialize_with = "super::duration::s")]
    pub(super) leeway_s: u64,
    pub(super) jwks_url: Option<String>,
    pub(super) keys: Option<Vec<FileKey>>,
    /// OIDC discovery (`oidc`): keys and endpoints from the provider's metadata.
    #[serde(default)]
    pub(super) discovery: bool,
    /// OIDC Back-Channel Logout for deployments without `[login]`.
    pub(super) backchannel_logout_path: Option<String>,
    /// The logout token's `aud` (the client_id the IdP knows the gateway by); defaults to
    /// `audiences` when it holds exactly one.
    pub(super) backchannel_audience: Option<String>,
    /// RFC 7662 introspection of opaque (non-JWT) tokens.
    #[serde(default)]
    pub(super) introspection: bool,
    pub(super) introspection_endpoint: Option<String>,
    /// The gateway's client at the introspection endpoint (HTTP Basic).
    pub(super) client_id: Option<String>,
    pub(super) client_secret_env: Option<String>,
    #[serde(
        default = "default_introspection_cache",
        deserialize_with = "super::duration::s"
    )]
    pub(super) introspection_cache_s: u64,
    /// Introspection calls per second for tokens not in the cache (per replica).
    #[serde(default = "default_introspection_rate")]
    pub(super) introspection_rate: f64,
}

pub(super) fn default_introspection_cache() -> u64 {
    60
}

pub(super) fn default_introspection_rate() -> f64 {
    20.0
}

/// `[signals]`: the Shared Signals (SSF 1.0) push receiver.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSignals {
    #[serde(default = "default_signals_path")]
    pub(super) path: String,
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) jwks_url: Option<String>,
    pub(super) algorithms: Option<Vec<String>>,
    #[serde(default = "default_leeway", deserialize_with = "super::duration::s")]
    pub(super) leeway_s: u64,
    #[serde(
        default = "default_signals_max_age",
        deserialize_with = "super::duration::s"
    )]
    pub(super) max_age_s: u64,
}

fn default_signals_path() -> String {
    "/ssf/events".into()
}

fn default_signals_max_age() -> u64 {
    300
}

pub(super) fn default_leeway() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKey {
    pub(super) kid: Option<String>,
    pub(super) alg: String,
    pub(super) pem: Option<String>,
    pub(super) secret_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileTokens {
    pub(super) sources: Vec<String>,
    pub(super) csrf: bool,
    /// How far a DPoP proof's `iat` may be from now, either way.
    #[serde(deserialize_with = "super::duration::s")]
    pub(super) dpop_iat_window_s: u64,
    /// Behind a TLS terminator: the header carrying the client certificate (URL-encoded PEM).
    pub(super) client_cert_header: Option<String>,
    /// DPoP server nonces (RFC 9449 §8).
    pub(super) dpop_nonce: bool,
    /// The environment variable holding the nonce HMAC secret (shared by replicas).
    pub(super) dpop_nonce_secret_env: Option<String>,
    /// A nonce's time bucket (seconds).
    pub(super) dpop_nonce_lifetime_s: u64,
}

impl Default for FileTokens {
    fn default() -> Self {
        FileTokens {
            sources: vec!["header:authorization".into(), "cookie:access_token".into()],
            csrf: true,
            dpop_iat_window_s: 60,
            client_cert_header: None,
            dpop_nonce: false,
            dpop_nonce_secret_env: None,
            dpop_nonce_lifetime_s: 300,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileIdentity {
    pub(super) subject_header: String,
    pub(super) scopes_header: String,
    pub(super) claims_header: String,
    pub(super) forward_token: bool,
    pub(super) assertion_header: Option<String>,
    pub(super) assertion_key: Option<String>,
    #[serde(default, deserialize_with = "super::duration::opt_s")]
    pub(super) assertion_ttl_s: Option<u64>,
    pub(super) claims: toml::Table,
}

impl Default for FileIdentity {
    fn default() -> Self {
        FileIdentity {
            subject_header: "x-user-id".into(),
            scopes_header: "x-user-scopes".into(),
            claims_header: "x-auth-claims".into(),
            forward_token: true,
            assertion_header: None,
            assertion_key: None,
            assertion_ttl_s: None,
            claims: toml::Table::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileRevocation {
    pub(super) store: String,
    pub(super) redis_url: String,
    /// The variable holding the whole Redis URL (with its password), instead of `redis_url`.
    pub(super) redis_url_env: Option<String>,
    pub(super) key_prefix: String,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) cache_ttl_ms: u64,
    pub(super) cache_capacity: u64,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) timeout_ms: u64,
    pub(super) on_error: String,
    #[serde(deserialize_with = "super::duration::s")]
    pub(super) subject_ttl_s: u64,
    pub(super) pool_size: usize,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) connect_timeout_ms: u64,
    pub(super) redis_ca: Option<String>,
    pub(super) redis_password_env: Option<String>,
    pub(super) sentinel_password_env: Option<String>,
    pub(super) min_replicas: u32,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) min_replicas_timeout_ms: u64,
    pub(super) redis_cluster: Vec<String>,
}

impl Default for FileRevocation {
    fn default() -> Self {
        FileRevocation {
            store: "memory".into(),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_url_env: None,
            key_prefix: "jwtgate:".into(),
            cache_ttl_ms: 1000,
            cache_capacity: 100_000,
            timeout_ms: 50,
            on_error: "deny".into(),
            subject_ttl_s: 86_400,
            pool_size: 16,
            connect_timeout_ms: 1000,
            redis_ca: None,
            redis_password_env: None,
            sentinel_password_env: None,
            min_replicas: 0,
            min_replicas_timeout_ms: 500,
            redis_cluster: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileRefresh {
    pub(super) token_endpoint: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret_env: String,
    pub(super) client_auth: String,
    #[serde(deserialize_with = "super::duration::s")]
    pub(super) refresh_before_s: u64,
    pub(super) access_cookie: String,
    pub(super) refresh_cookie: String,
    pub(super) refresh_header: String,
    pub(super) revocation_endpoint: Option<String>,
    pub(super) logout_path: String,
    #[serde(deserialize_with = "super::duration::s")]
    pub(super) reuse_window_s: u64,
    #[serde(deserialize_with = "super::duration::ms")]
    pub(super) timeout_ms: u64,
    pub(super) rate_limit: FileRefreshLimit,
}

/// `[refresh] rate_limit`: refresh attempts per client address (always on).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRefreshLimit {
    pub(super) rps: f64,
    pub(super) burst: Option<u32>,
}

impl Default for FileRefresh {
    fn default() -> Self {
        FileRefresh {
            token_endpoint: None,
            client_id: None,
            client_secret_env: "JWTGATE_CLIENT_SECRET".into(),
            client_auth: "client_secret_basic".into(),
            refresh_before_s: 60,
            access_cookie: "access_token".into(),
            refresh_cookie: "refresh_token".into(),
            refresh_header: "x-refresh-token".into(),
            revocation_endpoint: None,
            logout_path: "/logout".into(),
            reuse_window_s: 30,
            timeout_ms: 5000,
            rate_limit: FileRefreshLimit {
                rps: 5.0,
                burst: Some(20),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub(super) name: String,
    pub(super) path_prefix: String,
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) upstreams: Vec<String>,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    #[serde(default = "default_auth")]
    pub(super) auth: String,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default = "default_timeout", deserialize_with = "super::duration::ms")]
    pub(super) timeout_ms: u64,
    pub(super) rate_limit: Option<FileRateLimit>,
    pub(super) cors: Option<FileCors>,
    /// Browser navigations without a session are sent to sign in (`[login]`).
    #[serde(default)]
    pub(super) login: bool,
    /// `"off"` | `"if_bound"` | `"required"`: DPoP / mTLS-bound tokens.
    #[serde(default = "default_sender_constraint")]
    pub(super) sender_constraint: String,
    /// A CEL expression over `claims`, `request` and `route` (`policy::rules`).
    pub(super) allow: Option<String>,
    /// `"enforce"` (default) or `"shadow"`.
    pub(super) allow_mode: Option<String>,
    /// Claims the token must carry: `{ groups = ["admin"], tenant = "acme" }`.
    pub(super) require_claims: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

pub(super) fn default_sender_constraint() -> String {
    "off".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRateLimit {
    pub(super) per: String,
    pub(super) rps: f64,
    pub(super) burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCors {
    pub(super) origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub(super) methods: Vec<String>,
    #[serde(default)]
    pub(super) headers: Vec<String>,
    #[serde(default)]
    pub(super) credentials: bool,
    #[serde(
        default = "default_cors_max_age",
        deserialize_with = "super::duration::s"
    )]
    pub(super) max_age_s: u64,
}

pub(super) fn default_cors_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

pub(super) fn default_cors_max_age() -> u64 {
    600
}

pub(super) fn default_auth() -> String {
    "required".into()
}

pub(super) fn default_timeout() -> u64 {
    30_000
}
