//! gateway.toml -> `FileConfig` (serde, deny_unknown_fields) -> `Config::load()` (validated,
//! resolved paths, loaded keys and certificates). Raw structs never leave this module; the
//! rest of the gateway sees only the validated `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

/// A configuration problem, always naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The TOML parser's message includes the line, column and key.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Found after parsing (a bad value, a missing file, a cross-field check): `line` is
    /// where the file writes `key` (or the table it is missing from), when it does.
    #[error("{path}: {}`{key}`: {message}", at_line(.line))]
    Invalid {
        path: String,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|n| format!("line {n}: ")).unwrap_or_default()
}

mod duration;
mod file;
pub mod keys;
mod locate;
pub mod login;
pub mod origin;
pub mod rules;
pub mod source;
pub mod tls;
mod validate;

use keys::StaticKey;
pub use validate::identity::is_loopback_authority;
pub use validate::resolve_path;
pub use validate::routes::{normalize_origin, parse_upstream};

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for reload and messages).
    pub path: PathBuf,
    pub listen: Listen,
    pub server: Server,
    /// Ready-to-use TLS server config when `listen.https` is set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where its certificate comes from, and how often the files are checked.
    pub tls_files: Option<Tls>,
    /// Value of the admin bearer token (from the env var `admin.token_env`), if set.
    pub admin_token: Option<String>,
    pub issuers: Vec<IssuerConfig>,
    pub tokens: Tokens,
    pub identity: Identity,
    pub revocation: Revocation,
    /// `[refresh]`: edge refresh (when `token_endpoint` is set) and logout.
    pub refresh: Option<Refresh>,
    /// `[anomaly]`: leaked-token detection.
    pub anomaly: Option<Anomaly>,
    /// `[authz]`: who may ask the decision listener (`listen.authz`).
    pub authz: Authz,
    /// `[login]`: sign-in at the edge (authorization code + PKCE).
    pub login: Option<login::Login>,
    /// OIDC Back-Channel Logout endpoints (`[login] backchannel_logout_path`, and the
    /// issuer-level `backchannel_logout_path`).
    pub backchannel: Vec<Backchannel>,
    /// `[signals]`: the Shared Signals push receiver.
    pub signals: Option<Signals>,
    pub routes: Vec<RouteConfig>,
    /// The file as loaded: its hash and redacted contents (`GET /config`).
    pub source: Arc<source::Source>,
}

/// One OIDC Back-Channel Logout endpoint: logout tokens posted to `path` are verified with
/// `issuers[issuer]`'s keys and must name `audience` (the client_id) in `aud`.
#[derive(Debug, Clone)]
pub struct Backchannel {
    pub path: String,
    pub issuer: usize,
    pub audience: String,
}

/// `[signals]`, validated.
#[derive(Debug, Clone)]
pub struct Signals {
    /// Where transmitters POST SETs, on the public listeners.
    pub path: String,
    /// The SET's `iss` (the transmitter).
    pub issuer: String,
    /// What the SET's `aud` must contain.
    pub audience: String,
    pub keys: SignalKeys,
    pub leeway_s: u64,
    /// Oldest SET `iat` accepted (seconds, plus the leeway); also how long a `jti` is
    /// remembered.
    pub max_age_s: u64,
}

/// Where the transmitter's keys come from.
#[derive(Debug, Clone)]
pub enum SignalKeys {
    /// The `[[issuers]]` entry whose `issuer` is `[signals] issuer` (its keys, JWKS or
    /// discovered).
    Issuer(usize),
    /// `[signals] jwks_url`.
    Own(Box<IssuerConfig>),
}

impl Config {
    /// The largest `leeway_s` over the issuers: a token is accepted until `exp` plus this at
    /// most, so a revocation must last as long.
    pub fn max_leeway_s(&self) -> i64 {
        self.issuers
            .iter()
            .map(|i| i.leeway_s.min(i64::MAX as u64) as i64)
            .max()
            .unwrap_or(0)
    }

    /// The `[[issuers]]` entry named `name`.
    pub fn issuer_named(&self, name: &str) -> Option<&IssuerConfig> {
        self.issuers.iter().find(|i| i.name == name)
    }
}

/// `[tls]`, validated: the swappable certificate the server config resolves through.
#[derive(Debug, Clone)]
pub struct Tls {
    pub source: Arc<tls::CertSource>,
    /// `watch_interval_ms`: how often the files are checked for a renewed pair; `None`: off.
    pub watch_interval: Option<Duration>,
}

/// `[authz]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Authz {
    /// Peers whose description of the original request is believed; others get 403.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Envoy ext_authz (HTTP service): a check request under this prefix describes the
    /// original request by its own method, path (after the prefix) and Host.
    pub path_prefix: Option<String>,
}

/// `[anomaly]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub window: Duration,
    /// Requests per token per window before it is flagged.
    pub max_requests: u64,
    /// Distinct client networks (IPv4 /24, IPv6 /48) per token per window.
    pub max_networks: usize,
    /// `action = "revoke"`: put the flagged token's jti on the shared revocation list.
    pub revoke: bool,
}

/// How the gateway authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client_id:client_secret (RFC 6749 §2.3.1).
    Basic,
    /// client_id and client_secret in the form body.
    Post,
    /// A public client (`[login]` without `client_secret_env`): client_id in the form body,
    /// no secret; PKCE protects the code.
    None,
}

/// The OAuth 2.0 client the gateway acts as.
#[derive(Clone)]
pub struct OAuthClient {
    /// `None`: the discovered `token_endpoint` of `Refresh::discovery_issuer`.
    pub token_endpoint: Option<Uri>,
    pub client_id: String,
    pub client_secret: String,
    pub auth: ClientAuth,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("OAuthClient")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Refresh {
    /// `None`: no refresh at the edge, only logout.
    pub client: Option<OAuthClient>,
    pub refresh_before: Duration,
    pub access_cookie: String,
    pub refresh_cookie: String,
    pub refresh_header: http::HeaderName,
    pub revocation_endpoint: Option<Uri>,
    pub logout_path: String,
    /// How long a refresh result stays reusable for late requests with the old token.
    pub reuse_window: Duration,
    pub timeout: Duration,
    /// Refresh attempts (calls that may reach the token endpoint) per client address: a
    /// client without a token cannot make the gateway spend its client secret at will.
    pub rate_limit: RateLimitConfig,
    /// The issuer (index) whose discovered token/revocation endpoints fill in what the
    /// file leaves out: the `[login]` issuer, or the only issuer, when it has `discovery`.
    pub discovery_issuer: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The forward-auth decision listener.
    pub authz: Option<SocketAddr>,
    /// Only /healthz, /readyz and /metrics: what Prometheus and probes may reach without
    /// reaching the admin API's mutations.
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct Server {
    /// Resolved: never 0.
    pub worker_threads: usize,
    pub drain: Duration,
    pub header_timeout: Duration,
    /// The longest a request or response body may go without a byte while it streams.
    pub stream_idle_timeout: Duration,
    /// How long a connection may sit idle between requests (HTTP/1.1 and h2).
    pub keepalive_timeout: Duration,
    /// Concurrent connections on the public listeners (https + http, all workers).
    pub max_connections: usize,
    /// The verified-token cache's bound in bytes of memory (`token_cache_mib`).
    pub token_cache_bytes: u64,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub trusted_proxy_hops: usize,
    pub log_format: LogFormat,
    /// Trust anchors for https upstreams and identity-provider URLs: the webpki roots,
    /// plus the CA certificates of `upstream_ca`.
    pub upstream_roots: Arc<rustls::RootCertStore>,
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Static(Vec<StaticKey>),
    Jwks(Uri),
    /// The `jwks_uri` of the issuer's discovery document.
    Discovered,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Allow-list; `None` means "the keys' own algorithms".
    pub algorithms: Option<Vec<jsonwebtoken::Algorithm>>,
    pub leeway_s: u64,
    pub keys: KeySource,
    /// `discovery = true`: where the provider metadata document lives.
    pub discovery: Option<Uri>,
    /// `introspection = true`: opaque tokens are asked about (RFC 7662).
    pub introspection: Option<Introspection>,
}

/// An issuer's RFC 7662 token introspection.
#[derive(Debug, Clone)]
pub struct Introspection {
    /// `None`: the discovered `introspection_endpoint`.
    pub endpoint: Option<Uri>,
    /// Client id and secret, sent with HTTP Basic (`token_endpoint` unused).
    pub client: OAuthClient,
    /// Longest an answer is kept (an active one also never past its `exp`).
    pub cache: Duration,
    /// Calls per second for tokens not in the cache; burst twice that.
    pub rate: f64,
}

/// One place to look for the access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `header:authorization` (Bearer scheme) or any other header carrying the bare token.
    Header(http::HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub sources: Vec<TokenSource>,
    pub csrf: bool,
    /// `dpop_iat_window_s`: a DPoP proof's `iat` may be this far from now, either way.
    pub dpop_iat_window_s: u64,
    /// `client_cert_header`: the client certificate as a TLS terminator forwards it,
    /// believed only with `[server] trusted_proxy_hops` > 0.
    pub client_cert_header: Option<http::HeaderName>,
    /// `dpop_nonce = true`: DPoP proofs must carry a server nonce (RFC 9449 §8).
    pub dpop_nonce: Option<DpopNonce>,
}

/// `[tokens] dpop_nonce_secret_env` and `dpop_nonce_lifetime_s`.
#[derive(Debug, Clone)]
pub struct DpopNonce {
    /// The HMAC key every replica shares (its `Debug` never shows it).
    pub secret: Password,
    /// A nonce's time bucket, in seconds: it is accepted for one to two of these.
    pub lifetime_s: u64,
}

/// A route's `sender_constraint`: what it asks of tokens bound to a key (`cnf.jkt`, DPoP)
/// or a client certificate (`cnf.x5t#S256`, mTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenderConstraint {
    /// Binding ignored: every token is a bearer token (the `DPoP` header passes upstream).
    #[default]
    Off,
    /// Bound tokens must prove possession; unbound bearer tokens pass.
    IfBound,
    /// Like `IfBound`, and unbound tokens are refused.
    Required,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub subject_header: http::HeaderName,
    pub scopes_header: http::HeaderName,
    pub claims_header: http::HeaderName,
    pub forward_token: bool,
    /// (header, claim name)
    pub claims: Vec<(http::HeaderName, String)>,
    /// `assertion_*`: the gateway's signed identity assertion, when `assertion_key` is set.
    pub assertion: Option<keys::AssertionConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Deny,
    Allow,
}

/// `Debug` redacts the password of every Redis URL (`redis_url`, the cluster seeds): the
/// config is printed in logs and panics. Compare with `==`, which sees the real values.
#[derive(Clone, PartialEq)]
pub struct Revocation {
    pub store: StoreKind,
    pub redis_url: String,
    pub key_prefix: String,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    pub timeout: Duration,
    pub on_error: OnError,
    pub subject_ttl: Duration,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// `redis_ca`: the PEM bundle a `rediss://` server's certificate must chain to
    /// (instead of the webpki roots).
    pub redis_ca: Option<Arc<Vec<u8>>>,
    /// Where `redis_url` points: one server, or a master found through Sentinel.
    pub target: RedisTarget,
    /// `redis_password_env`: the password of the Redis servers (overrides one in the URL).
    pub redis_password: Option<Password>,
    /// `sentinel_password_env`: the password of the Sentinel processes.
    pub sentinel_password: Option<Password>,
    /// `min_replicas`: a revocation is acknowledged only after `WAIT min_replicas` confirms
    /// that many replicas (0 = after the primary).
    pub min_replicas: u32,
    /// `min_replicas_timeout_ms`: how long `WAIT` may block.
    pub min_replicas_timeout: Duration,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |u: &str| source::redact_url_password(u).unwrap_or_else(|| u.to_string());
        let target = match &self.target {
            RedisTarget::Cluster { seeds } => RedisTarget::Cluster {
                seeds: seeds.iter().map(|s| redact(s)).collect(),
            },
            t => t.clone(),
        };
        f.debug_struct("Revocation")
            .field("store", &self.store)
            .field("redis_url", &redact(&self.redis_url))
            .field("key_prefix", &self.key_prefix)
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_capacity", &self.cache_capacity)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("subject_ttl", &self.subject_ttl)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("redis_ca", &self.redis_ca.as_ref().map(|c| c.len()))
            .field("target", &target)
            .field("redis_password", &self.redis_password)
            .field("sentinel_password", &self.sentinel_password)
            .field("min_replicas", &self.min_replicas)
            .field("min_replicas_timeout", &self.min_replicas_timeout)
            .finish()
    }
}

/// What `redis_url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://` or `rediss://`: one server.
    Single,
    /// `redis+sentinel://h1:26379,h2:26379/<master>/<db>` (`rediss+sentinel://`: TLS to the
    /// sentinels and to the servers).
    Sentinel {
        tls: bool,
        /// Sentinel addresses (host, port).
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
    },
    /// `redis_cluster = ["redis://h1:7000", ...]`: a Redis Cluster, found from these seeds.
    Cluster { seeds: Vec<String> },
}

/// A secret read from the environment; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    None,
}

/// An upstream base URL: scheme + authority, and a path prefix (without trailing slash).
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub base_path: String,
    /// Where the pooled client connects.
    pub origin: origin::Origin,
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Shared, not copied, by what outlives a request's borrow of the config (the access-log
    /// line, written when the response body has been sent).
    pub name: Arc<str>,
    /// Lower-case, without port.
    pub host: Option<String>,
    /// Normalised: starts with `/`, no trailing `/` except for the root.
    pub path_prefix: String,
    pub upstreams: Vec<UpstreamUrl>,
    pub strip_prefix: bool,
    pub auth: AuthMode,
    pub scopes: Vec<String>,
    pub timeout: Duration,
    pub rate_limit: Option<RateLimitConfig>,
    pub cors: Option<CorsConfig>,
    /// `login = true`: browser navigations without a session get a 302 to sign in.
    pub login: bool,
    pub sender_constraint: SenderConstraint,
    /// `allow` (with `allow_mode`): a compiled CEL rule.
    pub allow: Option<rules::AllowRule>,
    /// `require_claims`, in the file's order.
    pub require_claims: Vec<rules::ClaimRequirement>,
}

/// A route's `rate_limit`: a token bucket of `burst` requests refilled at `rps` per second,
/// one per key, in each replica.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub per: LimitBy,
    pub rps: f64,
    pub burst: u32,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBy {
    /// The verified token's `sub` (anonymous requests on an optional route: the client
    /// address).
    Sub,
    /// The client address (`trusted_proxy_hops` applies); IPv6 by /64.
    Ip,
}

/// A route's `cors`, validated: origins normalised as browsers send them.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsConfig {
    /// Lower-case `scheme://host[:port]`, default ports dropped. Empty when `any_origin`.
    pub origins: Vec<String>,
    /// `origins = ["*"]` (refused together with `credentials = true`).
    pub any_origin: bool,
    pub methods: Vec<http::Method>,
    /// Lower-case request header names a preflight may ask for.
    pub headers: Vec<http::HeaderName>,
    pub credentials: bool,
    pub max_age_s: u64,
}

impl CorsConfig {
    /// Whether a page at `origin` (`scheme://host[:port]`) may use this route at all.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Whether a browser page at `origin` may send this route's cookies cross-site:
    /// listed explicitly, and `credentials = true`.
    pub fn trusts_credentials_from(&self, origin: &str) -> bool {
        self.credentials && !self.any_origin && self.allows_origin(origin)
    }
}
