//! Sender-constrained tokens: a token bound to a key (`cnf.jkt`, DPoP, RFC 9449) needs a
//! proof of possession made for this request; a token bound to a client certificate
//! (`cnf.x5t#S256`, RFC 8705) needs that certificate on the connection, or from a trusted
//! TLS terminator's header. A route's `sender_constraint` says whether binding counts.
//! The proof itself is checked in `proof`; seen proofs are remembered in `replay`; server
//! nonces (`[tokens] dpop_nonce`) are made and checked in `nonce`.

pub mod nonce;
pub mod proof;
pub mod replay;

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;

use crate::config::{Revocation, SenderConstraint, Tokens};
use crate::error::{GatewayError, ProofError};
use crate::identity::auth::Authenticated;
use replay::{Replay, Seen};

/// The `DPoP` request header (RFC 9449 §4.1).
pub static DPOP: HeaderName = HeaderName::from_static("dpop");

/// Checks sender-constrained tokens; owns the replay cache and its counters.
pub struct SenderCheck {
    replay: Replay,
    /// Checked proof headers (a client's key, parsed once).
    keys: proof::Keys,
    nonces: Option<nonce::Nonces>,
    window: i64,
    cert_header: Option<HeaderName>,
    pub counters: Counters,
}

/// `jwtgate_dpop_proofs_total{result}`, `jwtgate_mtls_bindings_total{result}`,
/// `jwtgate_unbound_tokens_refused_total`.
#[derive(Default)]
pub struct Counters {
    pub dpop_accepted: Counter,
    pub dpop_replayed: Counter,
    /// Indexed like `ProofError::ALL`.
    pub dpop_refused: [Counter; ProofError::ALL.len()],
    pub mtls_accepted: Counter,
    pub mtls_mismatch: Counter,
    pub unbound_refused: Counter,
}

/// What the request says, as the client addressed it.
pub struct Facts<'a> {
    pub method: &'a http::Method,
    /// The target URI in `proof::normalize_htu` form; `None` when it cannot be made (no
    /// host): then no proof can match.
    pub htu: Option<String>,
    pub headers: &'a HeaderMap,
    /// base64url SHA-256 of the TLS client certificate on this connection.
    pub tls_cert: Option<&'a str>,
    /// The peer is a trusted proxy (`[server] trusted_proxy_hops` > 0): its
    /// `client_cert_header` is believed.
    pub trusted_proxy: bool,
}

impl SenderCheck {
    /// `connector`: the revocation store's Redis (shared replay cache), when it is Redis.
    pub fn new(
        tokens: &Tokens,
        revocation: &Revocation,
        connector: Option<&std::sync::Arc<crate::identity::revocation::Connector>>,
    ) -> SenderCheck {
        SenderCheck {
            replay: Replay::new(tokens.dpop_iat_window_s, revocation, connector),
            keys: proof::Keys::default(),
            nonces: tokens
                .dpop_nonce
                .as_ref()
                .map(|n| nonce::Nonces::new(n.secret.0.as_bytes(), n.lifetime_s)),
            window: tokens.dpop_iat_window_s.min(i64::MAX as u64) as i64,
            cert_header: tokens.client_cert_header.clone(),
            counters: Counters::default(),
        }
    }

    /// The header a TLS terminator forwards the client certificate in, if configured.
    pub fn cert_header(&self) -> Option<&HeaderName> {
        self.cert_header.as_ref()
    }

    /// Entries in the in-memory replay cache.
    pub fn replay_entries(&self) -> u64 {
        self.replay.entries()
    }

    /// The route's `sender_constraint` applied to an authenticated request. `Off`: nothing
    /// is checked. Otherwise a `cnf.jkt` token, or any token sent with the DPoP scheme,
    /// needs a valid, fresh proof; a `cnf.x5t#S256` token needs that certificate; and
    /// under `Required` a token with neither binding is refused. `Some`: a fresh server
    /// nonce for the response (the proof's was from the previous bucket).
    pub async fn check(
        &self,
        mode: SenderConstraint,
        auth: &Authenticated,
        facts: &Facts<'_>,
        now: i64,
    ) -> Result<Option<HeaderValue>, GatewayError> {
        if mode == SenderConstraint::Off {
            return Ok(None);
        }
        let v = &auth.verified;
        let mut fresh_nonce = None;
        if v.cnf_jkt.is_some() || auth.dpop_scheme {
            match self.check_dpop(auth, facts, now).await {
                Ok(n) => {
                    self.counters.dpop_accepted.inc();
                    fresh_nonce = n;
                }
                Err(e) => {
                    let refused = match &e {
                        GatewayError::InvalidDpopProof(p) => Some(*p),
                        GatewayError::UseDpopNonce(_) => Some(ProofError::Nonce),
                        GatewayError::DpopReplayed => {
                            self.counters.dpop_replayed.inc();
                            None
                        }
                        _ => None,
                    };
                    if let Some(i) =
                        refused.and_then(|p| ProofError::ALL.iter().position(|x| *x == p))
                    {
                        self.counters.dpop_refused[i].inc();
                    }
                    return Err(e);
                }
            }
        }
        if let Some(x5t) = &v.cnf_x5t {
            let forwarded = self.forwarded_cert(facts);
            let presented = forwarded.as_deref().or(facts.tls_cert);
            if presented.is_none_or(|c| c.as_bytes() != x5t.as_bytes()) {
                self.counters.mtls_mismatch.inc();
                return Err(GatewayError::CertificateMismatch);
            }
            self.counters.mtls_accepted.inc();
        }
        if mode == SenderConstraint::Required && !v.is_bound() && !auth.dpop_scheme {
            self.counters.unbound_refused.inc();
            return Err(GatewayError::NotSenderConstrained);
        }
        Ok(fresh_nonce)
    }

    /// The proof, then the server nonce (before the replay cache: a proof refused for
    /// its nonce is not remembered), then replay.
    async fn check_dpop(
        &self,
        auth: &Authenticated,
        facts: &Facts<'_>,
        now: i64,
    ) -> Result<Option<HeaderValue>, GatewayError> {
        let mut lines = facts.headers.get_all(&DPOP).iter();
        let Some(line) = lines.next() else {
            return Err(GatewayError::InvalidDpopProof(ProofError::Missing));
        };
        if lines.next().is_some() {
            return Err(GatewayError::InvalidDpopProof(ProofError::Repeated));
        }
        // The DPoP scheme on a token bound to no key: nothing to prove possession of.
        let Some(jkt) = auth.verified.cnf_jkt.as_deref() else {
            return Err(GatewayError::InvalidDpopProof(ProofError::Key));
        };
        let text = line
            .to_str()
            .map_err(|_| GatewayError::InvalidDpopProof(ProofError::Malformed))?;
        let htu = facts
            .htu
            .as_deref()
            .ok_or(GatewayError::InvalidDpopProof(ProofError::Htu))?;
        let want = proof::Expected {
            method: facts.method.as_str(),
            htu,
            token_sha256: &auth.verified.key,
            jkt: Some(jkt),
            window: self.window,
            now,
        };
        let p = proof::verify(text.trim(), &want, &self.keys)
            .map_err(GatewayError::InvalidDpopProof)?;
        let fresh_nonce = match &self.nonces {
            None => None,
            Some(n) => match n.check(p.nonce.as_deref(), now) {
                nonce::Freshness::Current => None,
                nonce::Freshness::Previous => Some(n.current(now)),
                nonce::Freshness::Invalid => {
                    return Err(GatewayError::UseDpopNonce(n.current(now)))
                }
            },
        };
        match self
            .replay
            .first_sighting(&p.jkt, &p.jti, p.iat.max(now) + self.window, now)
            .await?
        {
            Seen::First => Ok(fresh_nonce),
            Seen::Replayed => Err(GatewayError::DpopReplayed),
        }
    }

    /// The thumbprint of the certificate a trusted TLS terminator forwarded.
    fn forwarded_cert(&self, facts: &Facts<'_>) -> Option<String> {
        if !facts.trusted_proxy {
            return None;
        }
        let v = facts.headers.get(self.cert_header.as_ref()?)?;
        forwarded_cert_thumbprint(v)
    }
}

/// base64url SHA-256 of a DER certificate (`x5t#S256`, RFC 8705 §3.1).
pub fn cert_thumbprint(der: &[u8]) -> String {
    proof::thumbprint(der)
}

/// The thumbprint of a client certificate forwarded by a TLS terminator: URL-encoded PEM,
/// as nginx's `$ssl_client_escaped_cert` sends it, or an Envoy
/// `x-forwarded-client-cert` element's `Cert="<URL-encoded PEM>"` (the first element: the
/// client as the outermost terminator saw it). `None` when it is neither.
pub fn forwarded_cert_thumbprint(v: &HeaderValue) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let s = v.to_str().ok()?.trim();
    let encoded = if s.contains("-----BEGIN") || s.contains("BEGIN%20CERTIFICATE") {
        if let Some(element) = xfcc_cert(s) {
            element
        } else {
            s
        }
    } else {
        xfcc_cert(s)?
    };
    let pem = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(cert_thumbprint(&der))
}

/// The `Cert` value of the first element of an XFCC header, unquoted.
fn xfcc_cert(s: &str) -> Option<&str> {
    let first = s.split(',').next()?;
    first.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        k.eq_ignore_ascii_case("cert")
            .then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem() -> (String, Vec<u8>) {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        (c.pem(), c.der().to_vec())
    }

    fn escape(pem: &str) -> String {
        percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    #[test]
    fn forwarded_certificates_in_nginx_and_envoy_shapes() {
        let (pem, der) = cert_pem();
        let want = cert_thumbprint(&der);
        let nginx = HeaderValue::from_str(&escape(&pem)).unwrap();
        assert_eq!(forwarded_cert_thumbprint(&nginx).as_deref(), Some(&*want));
        let xfcc = format!(
            "By=spiffe://gw;Hash=abc;Cert=\"{}\";Subject=\"CN=client\"",
            escape(&pem)
        );
        let xfcc = HeaderValue::from_str(&xfcc).unwrap();
        assert_eq!(forwarded_cert_thumbprint(&xfcc).as_deref(), Some(&*want));
        for bad in [
            "",
            "garbage",
            "Cert=\"nope\"",
            "-----BEGIN%20CERTIFICATE-----",
        ] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(forwarded_cert_thumbprint(&v), None, "{bad}");
        }
    }
}
