//! `GatewayError`: every way a request can fail, and the one place that decides how a
//! client sees it (status, RFC 6750 `WWW-Authenticate`, JSON body).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::net::body::{self, Body};

/// Why a presented token was refused. The `Display` text is the RFC 6750
/// `error_description`; it never contains the token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("signature invalid")]
    BadSignature,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("unknown key id")]
    UnknownKid,
    #[error("issuer mismatch")]
    IssuerMismatch,
    #[error("audience mismatch")]
    AudienceMismatch,
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    #[error("token revoked")]
    Revoked,
    /// An opaque token the introspection endpoint says is not active (RFC 7662): unknown,
    /// expired or revoked, the IdP does not say which.
    #[error("invalid token")]
    Inactive,
    #[error("refresh token rejected")]
    RefreshRejected,
}

/// Why a DPoP proof (RFC 9449 §4.3) was refused. Clients see only `invalid dpop proof`;
/// the check that failed is the metric label (`label`) and the access log's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("no DPoP header")]
    Missing,
    #[error("more than one DPoP header")]
    Repeated,
    #[error("not a compact JWS with a JSON header and claims")]
    Malformed,
    #[error("typ is not dpop+jwt")]
    Typ,
    #[error("alg is not ES256, EdDSA, PS256 or RS256")]
    Alg,
    #[error("jwk missing, private, or not usable with alg")]
    Jwk,
    #[error("signature does not verify with the jwk")]
    Signature,
    #[error("jwk thumbprint is not the token's cnf.jkt")]
    Key,
    #[error("htm is not the request method")]
    Htm,
    #[error("htu is not the request URI")]
    Htu,
    #[error("iat outside the accepted window")]
    Iat,
    #[error("ath is not the hash of the access token")]
    Ath,
    #[error("jti missing or too long")]
    Jti,
    /// `[tokens] dpop_nonce`: no nonce, or not a current one (`use_dpop_nonce`).
    #[error("nonce missing, expired or not the gateway's")]
    Nonce,
}

impl ProofError {
    /// Every variant, for metric families created up front.
    pub const ALL: [ProofError; 14] = [
        ProofError::Missing,
        ProofError::Repeated,
        ProofError::Malformed,
        ProofError::Typ,
        ProofError::Alg,
        ProofError::Jwk,
        ProofError::Signature,
        ProofError::Key,
        ProofError::Htm,
        ProofError::Htu,
        ProofError::Iat,
        ProofError::Ath,
        ProofError::Jti,
        ProofError::Nonce,
    ];

    /// The metric label (`jwtgate_dpop_proofs_total{result}`).
    pub fn label(self) -> &'static str {
        match self {
            ProofError::Missing => "missing",
            ProofError::Repeated => "repeated",
            ProofError::Malformed => "malformed",
            ProofError::Typ => "typ",
            ProofError::Alg => "alg",
            ProofError::Jwk => "jwk",
            ProofError::Signature => "signature",
            ProofError::Key => "key_mismatch",
            ProofError::Htm => "htm",
            ProofError::Htu => "htu",
            ProofError::Iat => "iat",
            ProofError::Ath => "ath",
            ProofError::Jti => "jti",
            ProofError::Nonce => "nonce",
        }
    }
}

/// The DPoP algorithms accepted in proofs, as the `algs` of a DPoP challenge.
pub const DPOP_ALGS: &str = "ES256 EdDSA PS256 RS256";

/// The response header carrying a fresh DPoP server nonce (RFC 9449 §8.1).
pub static DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// A request that cannot be forwarded, with the response the client gets instead.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A path that cannot be normalised safely (`path::normalize`).
    #[error("bad request: {0}")]
    BadPath(#[from] crate::path::PathError),
    #[error("authentication required")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("insufficient scope")]
    InsufficientScope,
    /// A DPoP-bound token (or the DPoP scheme) without a valid proof (RFC 9449 §7.1).
    #[error("invalid dpop proof")]
    InvalidDpopProof(ProofError),
    /// A valid proof whose `jti` was seen before (on any replica sharing the store).
    #[error("dpop proof replayed")]
    DpopReplayed,
    /// `[tokens] dpop_nonce`: the proof must carry a current server nonce; the response
    /// carries one (`DPoP-Nonce`) for the retry (RFC 9449 §8).
    #[error("Resource server requires nonce in DPoP proof")]
    UseDpopNonce(HeaderValue),
    /// A `cnf.x5t#S256`-bound token over a connection without that client certificate
    /// (RFC 8705 §3).
    #[error("certificate mismatch")]
    CertificateMismatch,
    /// `sender_constraint = "required"` and the token has no `cnf`.
    #[error("token not sender-constrained")]
    NotSenderConstrained,
    /// The route's rules (`allow`, `require_claims`) refused the caller. The description
    /// names the route, never the rule.
    #[error("access denied by the rules of route {route:?}")]
    AccessDenied { route: String },
    #[error("cross-site request refused")]
    Csrf,
    /// A CORS preflight this route's `cors` does not allow.
    #[error("CORS preflight refused: {0}")]
    CorsRefused(&'static str),
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("request body too large")]
    BodyTooLarge,
    #[error(
        "request body timed out: the client sent nothing for longer than stream_idle_timeout_ms"
    )]
    BodyTimeout,
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("no upstream available")]
    NoUpstream,
    #[error("identity keys not loaded yet")]
    KeysUnavailable,
    #[error("revocation store unavailable")]
    RevocationUnavailable,
    #[error("identity provider unavailable")]
    IdpUnavailable,
    /// A decision asked for by a peer outside `[authz] trusted_proxies`.
    #[error("this peer may not ask for decisions (authz.trusted_proxies)")]
    UntrustedPeer,
}

impl From<TokenError> for GatewayError {
    fn from(e: TokenError) -> Self {
        GatewayError::InvalidToken(e)
    }
}

const REALM: &str = "Bearer realm=\"jwtgate\"";

impl GatewayError {
    /// Status and the short `error` code of the JSON body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            GatewayError::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            GatewayError::BadRequest(_) | GatewayError::BadPath(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            GatewayError::MissingToken => (StatusCode::UNAUTHORIZED, "unauthorized"),
            GatewayError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            GatewayError::InsufficientScope => (StatusCode::FORBIDDEN, "insufficient_scope"),
            GatewayError::InvalidDpopProof(_) | GatewayError::DpopReplayed => {
                (StatusCode::UNAUTHORIZED, "invalid_dpop_proof")
            }
            GatewayError::UseDpopNonce(_) => (StatusCode::UNAUTHORIZED, "use_dpop_nonce"),
            GatewayError::CertificateMismatch | GatewayError::NotSenderConstrained => {
                (StatusCode::UNAUTHORIZED, "invalid_token")
            }
            GatewayError::AccessDenied { .. } => (StatusCode::FORBIDDEN, "access_denied"),
            GatewayError::Csrf => (StatusCode::FORBIDDEN, "csrf"),
            GatewayError::CorsRefused(_) => (StatusCode::FORBIDDEN, "cors_refused"),
            GatewayError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            GatewayError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            GatewayError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            GatewayError::UpstreamUnreachable => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            GatewayError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
            GatewayError::NoUpstream => (StatusCode::SERVICE_UNAVAILABLE, "no_upstream"),
            GatewayError::KeysUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable"),
            GatewayError::RevocationUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "revocation_unavailable")
            }
            GatewayError::IdpUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable"),
            GatewayError::UntrustedPeer => (StatusCode::FORBIDDEN, "forbidden"),
        }
    }

    /// The response a client sees. Never includes the token, keys or internal detail.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let description = self.to_string();
        let mut resp = json_response(status, code, &description);
        let www = match &self {
            GatewayError::MissingToken => Some(REALM.to_string()),
            GatewayError::InvalidToken(_) => Some(format!(
                "{REALM}, error=\"invalid_token\", error_description=\"{description}\""
            )),
            GatewayError::InsufficientScope => {
                Some(format!("{REALM}, error=\"insufficient_scope\""))
            }
            // RFC 9449 §7.1: the DPoP scheme's challenge, with the algorithms it takes.
            GatewayError::InvalidDpopProof(_) | GatewayError::DpopReplayed => Some(format!(
                "DPoP algs=\"{DPOP_ALGS}\", error=\"invalid_dpop_proof\", error_description=\"{description}\""
            )),
            GatewayError::UseDpopNonce(_) => Some(format!(
                "DPoP algs=\"{DPOP_ALGS}\", error=\"use_dpop_nonce\", error_description=\"{description}\""
            )),
            // RFC 8705 §3 / RFC 6750: the token is unusable as presented.
            GatewayError::CertificateMismatch | GatewayError::NotSenderConstrained => {
                Some(format!(
                    "{REALM}, error=\"invalid_token\", error_description=\"{description}\""
                ))
            }
            // Listed, not `_`: a new variant must decide whether it challenges.
            GatewayError::NoRoute
            | GatewayError::BadRequest(_)
            | GatewayError::BadPath(_)
            | GatewayError::Csrf
            // Not a token problem a new token would fix: no challenge, like a CSRF refusal.
            | GatewayError::AccessDenied { .. }
            | GatewayError::CorsRefused(_)
            | GatewayError::RateLimited { .. }
            | GatewayError::BodyTooLarge
            | GatewayError::BodyTimeout
            | GatewayError::UpstreamUnreachable
            | GatewayError::UpstreamTimeout
            | GatewayError::NoUpstream
            | GatewayError::KeysUnavailable
            | GatewayError::RevocationUnavailable
            | GatewayError::IdpUnavailable
            | GatewayError::UntrustedPeer => None,
        };
        if let Some(v) = www.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        // A route that needs bound tokens also says it takes DPoP (RFC 9449 §7.1).
        if let GatewayError::NotSenderConstrained = self {
            resp.headers_mut().append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(concat!("DPoP algs=\"", "ES256 EdDSA PS256 RS256", "\"")),
            );
        }
        if let GatewayError::UseDpopNonce(nonce) = &self {
            resp.headers_mut().insert(DPOP_NONCE.clone(), nonce.clone());
        }
        if let GatewayError::RateLimited { retry_after_s } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        resp
    }
}

/// `{"error": code, "error_description": description}` with the given status.
pub fn json_response(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    let json = serde_json::json!({ "error": code, "error_description": description });
    let mut resp = Response::new(body::full(Bytes::from(json.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_token_carries_rfc6750_header() {
        let resp = GatewayError::InvalidToken(TokenError::Expired).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let www = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(
            www,
            "Bearer realm=\"jwtgate\", error=\"invalid_token\", error_description=\"token expired\""
        );
    }

    #[test]
    fn dpop_refusals_carry_the_dpop_challenge() {
        let resp = GatewayError::InvalidDpopProof(ProofError::Htu).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let www = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(
            www,
            "DPoP algs=\"ES256 EdDSA PS256 RS256\", error=\"invalid_dpop_proof\", error_description=\"invalid dpop proof\""
        );
        let resp = GatewayError::CertificateMismatch.into_response();
        let www = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(
            www,
            "Bearer realm=\"jwtgate\", error=\"invalid_token\", error_description=\"certificate mismatch\""
        );
    }

    #[test]
    fn missing_token_has_no_error_attribute() {
        let resp = GatewayError::MissingToken.into_response();
        let www = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(www, "Bearer realm=\"jwtgate\"");
    }
}
