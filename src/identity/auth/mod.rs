//! Authentication: find the token, verify it with a key chosen by issuer + `kid` (never by
//! the token's `alg`), check claims and scopes. Verified tokens are cached by SHA-256 of the
//! whole token; time-dependent checks (exp, nbf) run on every request. Revocation is
//! consulted by the caller (`proxy::handle`) after this stage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

pub use crate::clock::now_unix;
pub use extract::{
    check_csrf, find_cookie, find_only_cookie, find_token, remove_cookies, Carrier, Token,
};

mod extract;
pub mod introspect;
mod memo;
use crate::config::{AuthMode, CorsConfig, Identity, Tokens};
use crate::error::{GatewayError, TokenError};
use crate::identity::jwks::{self, IssuerKeys, KidLookup, VerifyKey};
use crate::ids::Scoped;
pub use memo::TokenMemo;

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What an entry costs besides the bytes `Verified::bytes` counts: moka's bookkeeping
/// (its entry, key and access-order nodes, the expiry timer, the hash table slot) and the
/// allocator's slack. Measured, not derived: RSS per distinct cached token minus
/// `Verified::bytes` (docs/BENCHMARKS.md, "s10-C").
const CACHE_ENTRY_OVERHEAD: usize = 464;
/// malloc's header and rounding, per allocation (glibc: 8 bytes, 16-byte granules; measured
/// so. jemalloc, the allocator since s14, has no header: the weight is an upper bound, and
/// 1,000,000 small tokens took 1.15 GiB of RSS at `token_cache_mib = 1400`, not 1.28).
const ALLOC_OVERHEAD: usize = 16;

/// A token whose signature and static claims were verified. Header values are prepared
/// once here so that a cache hit costs no parsing or formatting.
#[derive(Debug)]
pub struct Verified {
    /// SHA-256 of the whole token: the cache key here and in the revocation cache (both
    /// hold answers that follow from the claims alone, so a twin with other bytes costs
    /// only a second entry).
    pub key: [u8; 32],
    /// Names the token itself for per-token state (`[anomaly]` windows): SHA-256 of its
    /// issuer's name and its `jti`, or its `sub` when it has none. Unlike `key` it does not
    /// depend on the token's bytes, so the ECDSA twin `(r, n - s)` of a token has the same.
    pub token_id: [u8; 32],
    pub issuer: usize,
    /// The issuer's key-set generation this was verified under.
    pub generation: u64,
    pub sub: String,
    pub sub_header: HeaderValue,
    pub scopes: Vec<String>,
    pub scopes_header: Option<HeaderValue>,
    /// base64url of the verified claims JSON.
    pub claims_header: HeaderValue,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    pub jti: Option<String>,
    /// `jti`, `sub` and `sid` (the sign-in session) scoped by the issuer's name: what
    /// revocations are keyed by.
    pub scoped_jti: Option<Scoped>,
    pub scoped_sub: Scoped,
    pub scoped_sid: Option<Scoped>,
    pub leeway: i64,
    /// `cnf.jkt` (RFC 9449 §6): the token is bound to this DPoP key's thumbprint.
    pub cnf_jkt: Option<Box<str>>,
    /// `cnf.x5t#S256` (RFC 8705 §3.1): bound to this client certificate's thumbprint.
    pub cnf_x5t: Option<Box<str>>,
    /// The verified claims, kept only when some route has rules over them
    /// (`allow`, `require_claims`).
    pub claims: Option<Map<String, Value>>,
    /// What `policy::rules` derives from `claims` the first time a rule reads this token
    /// (the claims as CEL values), kept with the token so later requests reuse it.
    pub rule_view: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
    /// `identity::revocation`'s note that this token was found not revoked, and until
    /// when that answer holds (the "not revoked" stamps in `revocation`); 0 for none yet.
    pub revocation_stamp: std::sync::atomic::AtomicU64,
    weight: u32,
}

impl Verified {
    /// A minimal entry (`sub` "a", no scopes, `{}` as claims) for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(exp: i64, nbf: Option<i64>) -> Verified {
        Verified {
            key: [0; 32],
            token_id: [0; 32],
            issuer: 0,
            generation: 0,
            sub: "a".into(),
            sub_header: HeaderValue::from_static("a"),
            scopes: vec![],
            scopes_header: None,
            claims_header: HeaderValue::from_static("e30"),
            extra_headers: vec![],
            exp,
            nbf,
            iat: None,
            jti: None,
            scoped_jti: None,
            scoped_sub: Scoped::new("i", "a"),
            scoped_sid: None,
            leeway: 30,
            cnf_jkt: None,
            cnf_x5t: None,
            claims: None,
            rule_view: std::sync::OnceLock::new(),
            revocation_stamp: std::sync::atomic::AtomicU64::new(0),
            weight: 1,
        }
    }

    /// The bytes this entry allocates: itself behind its `Arc`, and every field's heap
    /// part, each allocation with malloc's overhead (the claims tree, when kept, is
    /// estimated by the caller). The cache's weigher adds moka's per-entry share, so
    /// `server.token_cache_mib` bounds real memory.
    fn bytes(&self) -> usize {
        fn heap(len: usize) -> usize {
            if len == 0 {
                0
            } else {
                len.next_multiple_of(16) + ALLOC_OVERHEAD
            }
        }
        let strings = heap(self.sub.capacity())
            + heap(self.sub_header.len())
            + heap(self.scopes.capacity() * std::mem::size_of::<String>())
            + self
                .scopes
                .iter()
                .map(|s| heap(s.capacity()))
                .sum::<usize>()
            + self.scopes_header.as_ref().map_or(0, |h| heap(h.len()))
            + heap(self.claims_header.len())
            + heap(
                self.extra_headers.capacity() * std::mem::size_of::<(HeaderName, HeaderValue)>(),
            )
            + self
                .extra_headers
                .iter()
                .map(|(_, v)| heap(v.len()))
                .sum::<usize>()
            + self.jti.as_ref().map_or(0, |j| heap(j.capacity()))
            + self
                .scoped_jti
                .as_ref()
                .map_or(0, |s| heap(s.as_str().len()))
            + heap(self.scoped_sub.as_str().len())
            + self
                .scoped_sid
                .as_ref()
                .map_or(0, |s| heap(s.as_str().len()))
            + self.cnf_jkt.as_ref().map_or(0, |s| heap(s.len()))
            + self.cnf_x5t.as_ref().map_or(0, |s| heap(s.len()));
        // The `Arc`'s two counts and the struct.
        heap(16 + std::mem::size_of::<Verified>()) + strings
    }

    /// Whether the token is bound to a key or certificate (`cnf`).
    pub fn is_bound(&self) -> bool {
        self.cnf_jkt.is_some() || self.cnf_x5t.is_some()
    }
}

/// The outcome of authentication for one request.
#[derive(Debug)]
pub struct Authenticated {
    pub verified: Arc<Verified>,
    /// `Bearer <token>` for upstreams when the token did not already come that way.
    pub bearer: Option<HeaderValue>,
    /// Presented as `Authorization: DPoP <token>` (RFC 9449 §7.1).
    pub dpop_scheme: bool,
    /// A fresh DPoP server nonce for the response (`DPoP-Nonce`), when the proof's was
    /// from the previous bucket (RFC 9449 §8).
    pub dpop_nonce: Option<HeaderValue>,
}

/// Verifies tokens against the configured issuers.
pub struct Verifier {
    /// Tells this verifier from the one a reload replaces (`TokenMemo`).
    id: u64,
    issuers: Vec<Arc<IssuerKeys>>,
    by_iss: HashMap<String, usize>,
    identity: Identity,
    cache: moka::sync::Cache<[u8; 32], Arc<Verified>>,
    /// Keep each token's claims (`Verified::claims`): a route has rules over them.
    keep_claims: bool,
    /// The issuer with `introspection = true`, for opaque tokens.
    introspector: Option<introspect::Introspector>,
}

/// A verified token lives in a cache until its `exp` plus the issuer's leeway (the verifier's
/// cache and the introspection cache alike).
struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<Verified>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let left = v.exp + v.leeway - now_unix();
        Some(Duration::from_secs(left.max(0) as u64))
    }
}

impl Verifier {
    /// `cache_bytes`: the verified-token cache's bound, in bytes of memory
    /// (`server.token_cache_mib`).
    pub fn new(issuers: Vec<Arc<IssuerKeys>>, identity: Identity, cache_bytes: u64) -> Verifier {
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, k)| (k.config.issuer.clone(), i))
            .collect();
        let cache = moka::sync::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k, v: &Arc<Verified>| v.weight)
            .expire_after(UntilExp)
            .build();
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Verifier {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            issuers,
            by_iss,
            identity,
            cache,
            keep_claims: false,
            introspector: None,
        }
    }

    /// Introspect opaque tokens at the issuer with `introspection = true`, if any; an IdP
    /// that cannot answer is handled like the revocation store (`on_error`).
    pub fn with_introspection(mut self, on_error: crate::config::OnError) -> Verifier {
        self.introspector = self
            .issuers
            .iter()
            .enumerate()
            .find_map(|(i, k)| introspect::Introspector::new(i, k.clone(), on_error));
        self
    }

    /// Calls made to the introspection endpoint, when an issuer introspects.
    pub fn introspection_calls(&self) -> Option<prometheus_client::metrics::counter::Counter> {
        self.introspector.as_ref().map(|i| i.calls.clone())
    }

    /// Keep each verified token's claims for the routes' rules (`allow`,
    /// `require_claims`); without rules only what headers need is kept.
    pub fn keep_claims(mut self, keep: bool) -> Verifier {
        self.keep_claims = keep;
        self
    }

    /// Entries in the verified-token cache (approximate).
    pub fn cached_tokens(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    /// Authenticate a request: find the token, verify signature and static claims. The
    /// clock (`check_time`), revocation and scopes are the caller's next steps, because an
    /// expired token may still be renewed at the edge. `Ok(None)`: no token and `mode`
    /// is not `Required`. `memo`: the connection's last token (`TokenMemo`), when the
    /// caller has a connection.
    #[allow(clippy::too_many_arguments)]
    pub async fn authenticate(
        &self,
        mode: AuthMode,
        tokens: &Tokens,
        method: &Method,
        host: Option<&str>,
        headers: &HeaderMap,
        cors: Option<&CorsConfig>,
        memo: Option<&TokenMemo>,
    ) -> Result<Option<Authenticated>, GatewayError> {
        let Some((found, carrier)) = find_token(tokens, headers)? else {
            return match mode {
                AuthMode::Required => Err(GatewayError::MissingToken),
                _ => Ok(None),
            };
        };
        if carrier == Carrier::Cookie {
            check_csrf(tokens, method, host, headers, cors)?;
        }
        // Not a JWT (three dot-separated parts) and an issuer introspects: ask it.
        let verified = match &self.introspector {
            Some(i) if found.as_bytes().split(|&b| b == b'.').count() != 3 => {
                let token = found.as_str()?;
                if token.len() > MAX_TOKEN_BYTES {
                    return Err(TokenError::Malformed("token too large").into());
                }
                // Boxed: an HTTP exchange with the issuer, which a JWT's future should not
                // carry.
                Box::pin(i.introspect(self, token)).await?
            }
            _ => self.verify_remembered(found, memo).await?,
        };
        let bearer = match carrier {
            Carrier::AuthorizationHeader => None,
            // A DPoP token goes upstream as a bearer token (the proof is checked here).
            _ => HeaderValue::try_from(format!("Bearer {}", found.as_str()?)).ok(),
        };
        Ok(Some(Authenticated {
            verified,
            bearer,
            dpop_scheme: carrier == Carrier::Dpop,
            dpop_nonce: None,
        }))
    }

    /// `verify`, first asking the connection's memo of its last token (exact bytes, which
    /// passed `as_str` when remembered: a hit needs no other look at them).
    async fn verify_remembered(
        &self,
        found: Token<'_>,
        memo: Option<&TokenMemo>,
    ) -> Result<Arc<Verified>, TokenError> {
        let Some(memo) = memo else {
            return self.verify(found.as_str()?).await;
        };
        if let Some(v) = memo.recall(self.id, found.as_bytes()) {
            if self.is_current(&v) && now_unix() <= v.exp.saturating_add(v.leeway) {
                return Ok(v);
            }
        }
        let token = found.as_str()?;
        let v = self.verify(token).await?;
        memo.remember(self.id, token, &v);
        Ok(v)
    }

    /// Whether `v` was verified under its issuer's current key set.
    fn is_current(&self, v: &Verified) -> bool {
        self.issuers[v.issuer].generation() == v.generation
    }

    /// Signature and static claims, through the cache. Time checks are the caller's.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("token too large"));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some(v) = self.cache.get(&key) {
            if self.is_current(&v) {
                return Ok(v);
            }
        }
        // Boxed: the first-sighting path (key lookup, JWKS refetch) has a large future that
        // the cache-hit path should not carry.
        let v = Arc::new(Box::pin(self.verify_uncached(token, key)).await?);
        self.cache.insert(key, v.clone());
        Ok(v)
    }

    async fn verify_uncached(&self, token: &str, key: [u8; 32]) -> Result<Verified, TokenError> {
        let Jws {
            header,
            alg,
            p64,
            sig,
            message,
        } = split_jws(token)?;
        let claims: Value = decode_json(p64, "payload")?;
        let Value::Object(claims) = claims else {
            return Err(TokenError::Malformed("payload is not a JSON object"));
        };
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(TokenError::Malformed("iss is not a string")),
            None => return Err(TokenError::MissingClaim("iss")),
        };
        let Some(&idx) = self.by_iss.get(iss.as_str()) else {
            return Err(TokenError::IssuerMismatch);
        };
        let issuer = &self.issuers[idx];
        // The generation is read before the keys, so a concurrent rotation can only make
        // this entry look stale (re-verified), never fresh.
        let generation = issuer.generation();
        check_signature(issuer, alg, header.kid.as_deref(), sig, message).await?;
        self.check_static_claims(key, idx, generation, p64, &claims)
    }

    fn check_static_claims(
        &self,
        key: [u8; 32],
        idx: usize,
        generation: u64,
        p64: &str,
        claims: &Map<String, Value>,
    ) -> Result<Verified, TokenError> {
        let cfg = &self.issuers[idx].config;
        let exp = match claims.get("exp") {
            None => return Err(TokenError::MissingClaim("exp")),
            Some(v) => numeric_date(v).ok_or(TokenError::Malformed("exp is not a number"))?,
        };
        let nbf = claims
            .get("nbf")
            .map(|v| numeric_date(v).ok_or(TokenError::Malformed("nbf is not a number")))
            .transpose()?;
        let iat = claims
            .get("iat")
            .map(|v| numeric_date(v).ok_or(TokenError::Malformed("iat is not a number")))
            .transpose()?;
        if !cfg.audiences.is_empty() {
            let ok = match claims.get("aud") {
                None => return Err(TokenError::MissingClaim("aud")),
                Some(Value::String(a)) => cfg.audiences.iter().any(|x| x == a),
                Some(Value::Array(list)) => list.iter().any(|a| {
                    a.as_str()
                        .is_some_and(|a| cfg.audiences.iter().any(|x| x == a))
                }),
                Some(_) => return Err(TokenError::Malformed("aud is not a string or array")),
            };
            if !ok {
                return Err(TokenError::AudienceMismatch);
            }
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => return Err(TokenError::MissingClaim("sub")),
            Some(_) => return Err(TokenError::Malformed("sub is not a string")),
        };
        let sub_header = HeaderValue::from_str(&sub)
            .map_err(|_| TokenError::Malformed("sub has characters not allowed in a header"))?;
        let scopes: Vec<String> = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split_ascii_whitespace().map(str::to_string).collect(),
            (Some(_), _) => return Err(TokenError::Malformed("scope is not a string")),
            (None, Some(Value::Array(a))) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            (None, Some(Value::String(s))) => {
                s.split_ascii_whitespace().map(str::to_string).collect()
            }
            (None, Some(_)) => return Err(TokenError::Malformed("scp is not an array")),
            (None, None) => Vec::new(),
        };
        let scopes_header = if scopes.is_empty() {
            None
        } else {
            HeaderValue::from_str(&scopes.join(" ")).ok()
        };
        let claims_header = HeaderValue::from_str(p64)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let mut extra_headers = Vec::with_capacity(self.identity.claims.len());
        for (name, claim) in &self.identity.claims {
            if let Some(v) = claims.get(claim).and_then(claim_header_value) {
                extra_headers.push((name.clone(), v));
            }
        }
        let jti = match claims.get("jti") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(TokenError::Malformed("jti is not a string")),
            None => None,
        };
        let (cnf_jkt, cnf_x5t) = confirmation(claims.get("cnf"))?;
        let scoped_jti = jti.as_deref().map(|j| Scoped::new(&cfg.name, j));
        let scoped_sub = Scoped::new(&cfg.name, &sub);
        let scoped_sid = match claims.get("sid") {
            Some(Value::String(s)) => Some(Scoped::new(&cfg.name, s)),
            Some(_) => return Err(TokenError::Malformed("sid is not a string")),
            None => None,
        };
        let token_id = token_id(scoped_jti.as_ref(), &scoped_sub);
        let mut v = Verified {
            key,
            token_id,
            issuer: idx,
            generation,
            sub,
            sub_header,
            scopes,
            scopes_header,
            claims_header,
            extra_headers,
            exp,
            nbf,
            iat,
            jti,
            scoped_jti,
            scoped_sub,
            scoped_sid,
            leeway: cfg.leeway_s.min(i64::MAX as u64) as i64,
            cnf_jkt,
            cnf_x5t,
            claims: self.keep_claims.then(|| claims.clone()),
            rule_view: std::sync::OnceLock::new(),
            revocation_stamp: std::sync::atomic::AtomicU64::new(0),
            weight: 0,
        };
        let kept = if self.keep_claims {
            // The JSON tree and its CEL view, roughly.
            p64.len() * 8
        } else {
            0
        };
        v.weight = (v.bytes() + kept + CACHE_ENTRY_OVERHEAD).min(u32::MAX as usize) as u32;
        Ok(v)
    }
}

type Confirmation = (Option<Box<str>>, Option<Box<str>>);

/// The `cnf` claim's `jkt` and `x5t#S256` (RFC 7800 confirmation members); other members
/// are not ours to judge. A `cnf` that is not an object, or a member that is not a
/// string, is malformed: a binding the gateway cannot read must not become no binding.
fn confirmation(cnf: Option<&Value>) -> Result<Confirmation, TokenError> {
    let Some(cnf) = cnf else {
        return Ok((None, None));
    };
    let Value::Object(cnf) = cnf else {
        return Err(TokenError::Malformed("cnf is not an object"));
    };
    let member = |name: &'static str| match cnf.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.as_str().into())),
        Some(_) => Err(TokenError::Malformed("cnf member is not a string")),
    };
    Ok((member("jkt")?, member("x5t#S256")?))
}

/// The signature of `message` under one of `issuer`'s keys: the one named by `kid`, or
/// (without a `kid`) one pinned to `alg`. The key decides which algorithms it verifies;
/// the issuer's `algorithms` allow-list applies.
async fn check_signature(
    issuer: &IssuerKeys,
    alg: Algorithm,
    kid: Option<&str>,
    sig: &str,
    message: &[u8],
) -> Result<(), TokenError> {
    if let Some(allow) = &issuer.config.algorithms {
        if !allow.contains(&alg) {
            return Err(TokenError::UnsupportedAlgorithm);
        }
    }
    if sig.is_empty() {
        return Err(TokenError::BadSignature);
    }
    match kid {
        Some(kid) => {
            let key = match issuer.find_kid(kid).await {
                KidLookup::Found(k) => k,
                KidLookup::Unknown => return Err(TokenError::UnknownKid),
            };
            if !key.algs.contains(&alg) {
                return Err(TokenError::UnsupportedAlgorithm);
            }
            verify_sig(sig, message, &key, alg)
        }
        None => {
            let keys = issuer.keys();
            let mut candidates = keys
                .pinned
                .iter()
                .filter(|k| k.pinned == Some(alg))
                .peekable();
            if candidates.peek().is_none() {
                return Err(TokenError::UnknownKid);
            }
            if candidates.any(|k| verify_sig(sig, message, k, alg).is_ok()) {
                Ok(())
            } else {
                Err(TokenError::BadSignature)
            }
        }
    }
}

/// A JWS signed by one issuer (a logout token, a Security Event Token): its header's `typ`
/// and its claims. Only the signature is checked here; the claims are the caller's.
#[derive(Debug)]
pub struct Signed {
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

/// Verify a compact JWS with `issuer`'s keys (never chosen by the token's `alg`: see
/// `check_signature`). `crit` is refused, `none` is not a supported algorithm.
pub async fn verify_signed(issuer: &IssuerKeys, token: &str) -> Result<Signed, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("token too large"));
    }
    let Jws {
        header,
        alg,
        p64,
        sig,
        message,
    } = split_jws(token)?;
    check_signature(issuer, alg, header.kid.as_deref(), sig, message).await?;
    let Value::Object(claims) = decode_json(p64, "payload")? else {
        return Err(TokenError::Malformed("payload is not a JSON object"));
    };
    Ok(Signed {
        typ: header.typ,
        claims,
    })
}

/// See `Verified::token_id`. The tag keeps a `jti` and a `sub` of the same spelling apart.
fn token_id(jti: Option<&Scoped>, sub: &Scoped) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    match jti {
        Some(j) => {
            ctx.update(b"jti:");
            ctx.update(j.as_str().as_bytes());
        }
        None => {
            ctx.update(b"sub:");
            ctx.update(sub.as_str().as_bytes());
        }
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.finish().as_ref());
    id
}

/// A compact JWS taken apart: its header (with a supported `alg` and no `crit`), the
/// payload and signature segments, and the signed message. Nothing is verified yet.
struct Jws<'a> {
    header: RawHeader,
    alg: Algorithm,
    p64: &'a str,
    sig: &'a str,
    message: &'a [u8],
}

/// Split `token` into its three segments and read its header: the one parse both access
/// tokens and the identity provider's signed messages (logout tokens, SETs) go through.
fn split_jws(token: &str) -> Result<Jws<'_>, TokenError> {
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let header: RawHeader = decode_json(h64, "header")?;
    let Some(alg) = jwks::parse_alg(&header.alg) else {
        return Err(TokenError::UnsupportedAlgorithm);
    };
    if header.crit.is_some() {
        return Err(TokenError::Malformed(
            "critical header extensions (crit) are not supported",
        ));
    }
    Ok(Jws {
        header,
        alg,
        p64,
        sig,
        message: &token.as_bytes()[..h64.len() + 1 + p64.len()],
    })
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    typ: Option<String>,
    // `jwk`, `jku`, `x5u`, `x5c` are deliberately not read: keys come from config only.
}

fn decode_json<T: serde::de::DeserializeOwned>(
    seg: &str,
    what: &'static str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(seg).map_err(|_| {
        TokenError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "payload is not base64url"
        })
    })?;
    serde_json::from_slice(&bytes).map_err(|_| {
        TokenError::Malformed(if what == "header" {
            "header is not JSON"
        } else {
            "payload is not JSON"
        })
    })
}

/// With the key parsed at load time (`VerifyKey::parsed`: RSA, EC, Ed25519) aws-lc-rs checks
/// the signature directly; HMAC goes through jsonwebtoken, which re-reads its key each call.
fn verify_sig(
    sig: &str,
    message: &[u8],
    key: &VerifyKey,
    alg: Algorithm,
) -> Result<(), TokenError> {
    if let Some((_, parsed)) = key.parsed.iter().find(|(a, _)| *a == alg) {
        let raw = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        return parsed
            .verify_sig(message, &raw)
            .map_err(|_| TokenError::BadSignature);
    }
    match jsonwebtoken::crypto::verify(sig, message, &key.key, alg) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TokenError::BadSignature),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => {
                Err(TokenError::Malformed("signature is not base64url"))
            }
            _ => Err(TokenError::BadSignature),
        },
    }
}

/// RFC 7519 NumericDate: a JSON number (integers or fractions, truncated).
fn numeric_date(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        _ => None,
    }
}

/// Claim values as header values: arrays joined with commas, objects as JSON.
fn claim_header_value(v: &Value) -> Option<HeaderValue> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    HeaderValue::from_str(&s).ok()
}

/// `exp` and `nbf` against the clock, with the issuer's leeway.
pub fn check_time(v: &Verified, now: i64) -> Result<(), TokenError> {
    if now > v.exp + v.leeway {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = v.nbf {
        if now + v.leeway < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(())
}

/// Every scope the route requires must be granted.
pub fn check_scopes(required: &[String], granted: &[String]) -> Result<(), GatewayError> {
    if required.iter().all(|r| granted.iter().any(|g| g == r)) {
        Ok(())
    } else {
        Err(GatewayError::InsufficientScope)
    }
}

#[cfg(test)]
mod tests {
    use super::extract::same_origin;
    use super::*;
    use crate::config::TokenSource;
    use http::header;

    fn tokens() -> Tokens {
        Tokens {
            sources: vec![
                TokenSource::Header(header::AUTHORIZATION),
                TokenSource::Cookie("access_token".into()),
            ],
            csrf: true,
            dpop_iat_window_s: 60,
            client_cert_header: None,
            dpop_nonce: None,
        }
    }

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// The token `find_token` finds, as a string.
    fn found(h: &HeaderMap) -> Option<(&str, Carrier)> {
        find_token(&tokens(), h)
            .unwrap()
            .map(|(t, c)| (t.as_str().unwrap(), c))
    }

    #[test]
    fn bearer_header_then_cookie() {
        let h = hm(&[("authorization", "Bearer abc")]);
        assert_eq!(found(&h), Some(("abc", Carrier::AuthorizationHeader)));
        let h = hm(&[("cookie", "a=1; access_token=xyz")]);
        assert_eq!(found(&h), Some(("xyz", Carrier::Cookie)));
        assert_eq!(found(&HeaderMap::new()), None);
    }

    #[test]
    fn a_credential_sent_twice_is_refused() {
        for pairs in [
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")][..],
            &[("cookie", "access_token=a; access_token=b")],
            &[
                ("cookie", "access_token=a"),
                ("cookie", "x=1; access_token=b"),
            ],
        ] {
            assert!(
                matches!(
                    find_token(&tokens(), &hm(pairs)),
                    Err(GatewayError::BadRequest(_))
                ),
                "{pairs:?}"
            );
        }
        // Another cookie of the same prefix is not the token.
        let h = hm(&[("cookie", "access_token_old=a; access_token=b")]);
        assert_eq!(found(&h), Some(("b", Carrier::Cookie)));
    }

    #[test]
    fn malformed_authorization_is_an_error() {
        for v in ["Basic Zm9vOmJhcg==", "Bearer", "Bearer   ", "Token abc"] {
            let h = hm(&[("authorization", v)]);
            assert!(find_token(&tokens(), &h).is_err(), "{v}");
        }
    }

    /// A token's bytes are checked when it is first verified (`as_str`), not when it is
    /// found: obs-text in it is still a malformed token, under either scheme, and a wrong
    /// scheme with obs-text is reported as not ASCII, as before.
    #[test]
    fn a_token_that_is_not_visible_ascii_is_malformed() {
        for v in [&b"Bearer ab\xffcd"[..], b"DPoP \xe2\x82\xac.x.y"] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
            let (t, _) = find_token(&tokens(), &h).unwrap().unwrap();
            assert!(
                matches!(
                    t.as_str(),
                    Err(TokenError::Malformed("authorization header is not ASCII"))
                ),
                "{v:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Token \xff").unwrap(),
        );
        assert!(matches!(
            find_token(&tokens(), &h),
            Err(GatewayError::InvalidToken(TokenError::Malformed(
                "authorization header is not ASCII"
            )))
        ));
        // Trimmed as `str::trim` would.
        let h = hm(&[("authorization", "Bearer \t abc \t")]);
        assert_eq!(found(&h), Some(("abc", Carrier::AuthorizationHeader)));
    }

    /// The cache's bound is memory: an entry weighs what it allocates, so a token with
    /// more claims weighs more, by at least the bytes it adds.
    #[test]
    fn cache_weight_counts_the_entry_bytes() {
        let mut small = Verified::for_tests(1000, None);
        small.sub = "alice".into();
        // bench/scale.sh's tokens: `{"exp","iat","iss":"bench","jti":<32 hex>,"sub":"alice"}`.
        small.jti = Some("0".repeat(32));
        small.scoped_jti = Some(Scoped::new("bench", &"0".repeat(32)));
        small.scoped_sub = Scoped::new("bench", "alice");
        small.claims_header = HeaderValue::from_str(&"e".repeat(128)).unwrap();
        let mut big = Verified::for_tests(1000, None);
        big.claims_header = HeaderValue::from_str(&"e".repeat(4096)).unwrap();
        println!("bytes of a bench-like entry: {}", small.bytes());
        assert!(small.bytes() > std::mem::size_of::<Verified>() + 128 + 5 + 32);
        assert!(big.bytes() >= Verified::for_tests(1000, None).bytes() + 4096 - 16);
    }

    #[test]
    fn time_checks_use_leeway() {
        assert_eq!(check_time(&Verified::for_tests(1000, None), 1029), Ok(()));
        assert_eq!(
            check_time(&Verified::for_tests(1000, None), 1031),
            Err(TokenError::Expired)
        );
        assert_eq!(
            check_time(&Verified::for_tests(2000, Some(1100)), 1050),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            check_time(&Verified::for_tests(2000, Some(1100)), 1075),
            Ok(())
        );
    }

    #[test]
    fn scopes_all_required() {
        let g = vec!["a".to_string(), "b".to_string()];
        assert!(check_scopes(&["a".into()], &g).is_ok());
        assert!(check_scopes(&["a".into(), "c".into()], &g).is_err());
        assert!(check_scopes(&[], &[]).is_ok());
    }

    #[test]
    fn claim_values_become_headers() {
        assert_eq!(
            claim_header_value(&serde_json::json!(["a", "b"])).unwrap(),
            "a,b"
        );
        assert_eq!(
            claim_header_value(&serde_json::json!({"k": 1})).unwrap(),
            "{\"k\":1}"
        );
        assert_eq!(claim_header_value(&serde_json::json!(7)).unwrap(), "7");
    }

    #[test]
    fn csrf_origin_must_match_host() {
        let h = Some("a.example");
        assert!(same_origin(
            h,
            &hm(&[("origin", "https://a.example")]),
            None
        ));
        assert!(!same_origin(
            h,
            &hm(&[("origin", "https://evil.example")]),
            None
        ));
        assert!(!same_origin(h, &hm(&[]), None));
        assert!(same_origin(
            h,
            &hm(&[("referer", "https://a.example/page")]),
            None
        ));
    }

    #[test]
    fn csrf_accepts_origins_cors_lets_send_credentials() {
        let cors = |credentials| CorsConfig {
            origins: vec!["https://app.example".into()],
            any_origin: false,
            methods: vec![],
            headers: vec![],
            credentials,
            max_age_s: 0,
        };
        let h = Some("api.example");
        let from_app = hm(&[("origin", "https://app.example")]);
        assert!(same_origin(h, &from_app, Some(&cors(true))));
        assert!(!same_origin(h, &from_app, Some(&cors(false))));
        assert!(same_origin(
            h,
            &hm(&[("referer", "https://app.example/page?x=1")]),
            Some(&cors(true))
        ));
        assert!(!same_origin(
            h,
            &hm(&[("origin", "https://app.example.evil")]),
            Some(&cors(true))
        ));
    }
}
