//! Sender-constrained tokens through the real gateway: DPoP-bound tokens with and without
//! valid proofs (replays caught on one replica and across two sharing a redis-server),
//! certificate-bound tokens over mTLS and from a TLS terminator's header, route
//! `sender_constraint` modes, and no edge refresh for a bound token.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use jwtgate::sender::proof;

/// A client's DPoP key (ES256), made for the test.
struct DpopKey {
    key: EncodingKey,
    jwk: Value,
    jkt: String,
}

impl DpopKey {
    fn new() -> DpopKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let raw = pair.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
        let jkt = proof::jwk_thumbprint(&jwk).unwrap();
        DpopKey { key, jwk, jkt }
    }

    fn proof_at(&self, method: &str, url: &str, token: Option<&str>, iat: i64) -> String {
        self.proof_full(method, url, token, iat, None)
    }

    fn proof_full(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        iat: i64,
        nonce: Option<&str>,
    ) -> String {
        let jti = jwtgate::token::random_id();
        proof::mint(
            &self.key,
            Algorithm::ES256,
            &self.jwk,
            method,
            url,
            token,
            iat,
            &jti,
            nonce,
        )
        .unwrap()
    }

    /// A proof carrying the server's nonce.
    fn proof_nonce(&self, url: &str, token: &str, nonce: &str) -> String {
        self.proof_full(
            "GET",
            url,
            Some(token),
            jwtgate::auth::now_unix(),
            Some(nonce),
        )
    }

    fn proof(&self, method: &str, url: &str, token: &str) -> String {
        self.proof_at(method, url, Some(token), jwtgate::auth::now_unix())
    }

    /// A token bound to this key.
    fn token(&self) -> String {
        token("RS256", Some("r1"), json!({"cnf": {"jkt": self.jkt}}))
    }
}

fn issuer() -> String {
    format!(
        "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n",
        fixture("rsa.pub.pem").display()
    )
}

/// A gateway with route `/api` under `sender_constraint = mode`. `tls_extra` continues the
/// generated `[tls]` table; `tables` come before the route.
async fn gateway(
    up: &EchoUpstream,
    mode: &str,
    tls_extra: &str,
    tables: &str,
    server: &str,
) -> TestGateway {
    let cfg = format!(
        "{tls_extra}\n\n{}{tables}\n\n{}",
        issuer(),
        route(
            "api",
            "/api",
            &[&up.url()],
            &format!("sender_constraint = \"{mode}\"")
        )
    );
    TestGateway::start_with(&cfg, server).await
}

async fn call(gw: &TestGateway, url: &str, headers: &[(&str, &str)]) -> Resp {
    gw.client_plain().get(url, headers).await
}

fn reason(r: &Resp) -> String {
    r.json()["error_description"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// 401 with `reason`, and for a DPoP refusal the DPoP challenge with its algorithms.
fn assert_refused(r: &Resp, want: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(reason(r), want, "{what}");
    let www = r.header("www-authenticate").unwrap_or("");
    if want.contains("dpop") {
        assert!(
            www.starts_with("DPoP algs=\"ES256 EdDSA PS256 RS256\", error=\"invalid_dpop_proof\""),
            "{what}: {www}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_with_its_proof_passes_and_goes_upstream_as_bearer() {
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, "if_bound", "", "", "").await;
    let k = DpopKey::new();
    let t = k.token();
    let url = gw.http_url("/api/orders?page=2");
    let p = k.proof("GET", &gw.http_url("/api/orders"), &t);
    let dpop = format!("DPoP {t}");
    let r = call(&gw, &url, &[("authorization", &dpop), ("dpop", &p)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {t}").as_str()
    );
    assert!(!seen.headers.contains_key("dpop"), "the proof stays here");
    assert_eq!(seen.headers["x-user-id"], "alice");
    // Over TLS too (htu is https://localhost:<port>/...), and with the Bearer scheme.
    let url = gw.https_url("/api/x");
    let p = k.proof("GET", &url, &t);
    let bearer = format!("Bearer {t}");
    let r = gw
        .client_tls()
        .get(&url, &[("authorization", &bearer), ("dpop", &p)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        gw.has_metric("jwtgate_dpop_proofs_total{result=\"accepted\"} 2")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_proof_is_refused_with_its_reason_and_the_gateway_keeps_serving() {
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, "if_bound", "", "", "").await;
    let k = DpopKey::new();
    let t = k.token();
    let url = gw.http_url("/api/x");
    let now = jwtgate::auth::now_unix();
    let other = DpopKey::new();
    let replayed = k.proof("GET", &url, &t);
    let ok = call(
        &gw,
        &url,
        &[("authorization", &format!("DPoP {t}")), ("dpop", &replayed)],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // Proofs whose header is forged: alg none / HS256 (signed with a secret), a private
    // key in the jwk.
    let good = k.proof("GET", &url, &t);
    let (h64, rest) = good.split_once('.').unwrap();
    let p64 = rest.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h64).unwrap()).unwrap();
    let forge = |f: &dyn Fn(&mut Value), sign: &dyn Fn(&str) -> String| {
        let mut h = header.clone();
        f(&mut h);
        let msg = format!("{}.{p64}", URL_SAFE_NO_PAD.encode(h.to_string()));
        let sig = sign(&msg);
        format!("{msg}.{sig}")
    };
    let none = forge(&|h| h["alg"] = "none".into(), &|_| String::new());
    let hs = forge(&|h| h["alg"] = "HS256".into(), &|m| {
        jsonwebtoken::crypto::sign(
            m.as_bytes(),
            &EncodingKey::from_secret(b"x"),
            Algorithm::HS256,
        )
        .unwrap()
    });
    let private = forge(&|h| h["jwk"]["d"] = "c2VjcmV0".into(), &|m| {
        jsonwebtoken::crypto::sign(m.as_bytes(), &k.key, Algorithm::ES256).unwrap()
    });

    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("no proof", vec![], "invalid dpop proof"),
        (
            "proof from another key",
            vec![other.proof("GET", &url, &t)],
            "invalid dpop proof",
        ),
        (
            "replayed proof",
            vec![replayed.clone()],
            "dpop proof replayed",
        ),
        (
            "htm mismatch",
            vec![k.proof("POST", &url, &t)],
            "invalid dpop proof",
        ),
        (
            "htu mismatch",
            vec![k.proof("GET", &gw.http_url("/api/y"), &t)],
            "invalid dpop proof",
        ),
        (
            "ath mismatch",
            vec![k.proof("GET", &url, &k.token())],
            "invalid dpop proof",
        ),
        (
            "old iat",
            vec![k.proof_at("GET", &url, Some(&t), now - 300)],
            "invalid dpop proof",
        ),
        ("alg none", vec![none], "invalid dpop proof"),
        ("alg HS256", vec![hs], "invalid dpop proof"),
        ("private key in jwk", vec![private], "invalid dpop proof"),
        (
            "two DPoP headers",
            vec![k.proof("GET", &url, &t), k.proof("GET", &url, &t)],
            "invalid dpop proof",
        ),
    ];
    let auth = format!("DPoP {t}");
    for (what, proofs, want) in cases {
        let mut h = vec![("authorization", auth.as_str())];
        for p in &proofs {
            h.push(("dpop", p.as_str()));
        }
        let r = call(&gw, &url, &h).await;
        assert_refused(&r, want, what);
        // Still serving, and the token itself is fine with a fresh proof.
        let fresh = k.proof("GET", &url, &t);
        let r = call(&gw, &url, &[("authorization", &auth), ("dpop", &fresh)]).await;
        assert_eq!(r.status, 200, "after {what}: {}", r.text());
    }
    // The same token as a plain bearer token without a proof is no better.
    let r = call(&gw, &url, &[("authorization", &format!("Bearer {t}"))]).await;
    assert_refused(&r, "invalid dpop proof", "bearer without proof");
    for line in [
        "jwtgate_dpop_proofs_total{result=\"replayed\"} 1",
        "jwtgate_dpop_proofs_total{result=\"missing\"} 2",
        "jwtgate_dpop_proofs_total{result=\"key_mismatch\"} 1",
        "jwtgate_dpop_proofs_total{result=\"htm\"} 1",
        "jwtgate_dpop_proofs_total{result=\"htu\"} 1",
        "jwtgate_dpop_proofs_total{result=\"ath\"} 1",
        "jwtgate_dpop_proofs_total{result=\"iat\"} 1",
        "jwtgate_dpop_proofs_total{result=\"alg\"} 2",
        "jwtgate_dpop_proofs_total{result=\"jwk\"} 1",
        "jwtgate_dpop_proofs_total{result=\"repeated\"} 1",
    ] {
        assert!(gw.has_metric(line).await, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_replayed_on_another_replica_sharing_redis_is_refused() {
    let redis = RedisServer::start().await;
    let up = EchoUpstream::start().await;
    let store = format!(
        "[revocation]\nstore = \"redis\"\nredis_url = \"{}\"\ntimeout_ms = 500\n",
        redis.url()
    );
    let a = gateway(&up, "if_bound", "", &store, "").await;
    let b = gateway(&up, "if_bound", "", &store, "").await;
    let k = DpopKey::new();
    let t = k.token();
    // Both replicas behind one name: the client addresses replica A's authority.
    let host = format!("127.0.0.1:{}", a.http.port());
    let p = k.proof("GET", &format!("http://{host}/api/x"), &t);
    let auth = format!("DPoP {t}");
    let h = [
        ("authorization", auth.as_str()),
        ("dpop", &p),
        ("host", &host),
    ];
    let r = call(&a, &a.http_url("/api/x"), &h).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&b, &b.http_url("/api/x"), &h).await;
    assert_refused(&r, "dpop proof replayed", "replica B");
    // The key follows the contract and expires with the window.
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(p.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let key = format!("jwtgate:dpop:{}:{}", k.jkt, claims["jti"].as_str().unwrap());
    let mut c = redis.conn().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 61_000, "{key}: {ttl}");
    // A fresh proof still works on B.
    let p2 = k.proof("GET", &format!("http://{host}/api/x"), &t);
    let r = call(
        &b,
        &b.http_url("/api/x"),
        &[("authorization", &auth), ("dpop", &p2), ("host", &host)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_refuses_unbound_tokens_and_if_bound_lets_them_pass() {
    let up = EchoUpstream::start().await;
    let cfg = format!(
        "{}{}{}",
        issuer(),
        route(
            "strict",
            "/strict",
            &[&up.url()],
            "sender_constraint = \"required\""
        ),
        route(
            "lenient",
            "/lenient",
            &[&up.url()],
            "sender_constraint = \"if_bound\""
        )
    );
    let gw = TestGateway::start(&cfg).await;
    let plain = format!("Bearer {}", token("RS256", Some("r1"), json!({})));
    let r = call(&gw, &gw.http_url("/strict/x"), &[("authorization", &plain)]).await;
    assert_refused(&r, "token not sender-constrained", "required + bearer");
    let challenges: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 2, "Bearer and DPoP challenges");
    assert_eq!(challenges[1], "DPoP algs=\"ES256 EdDSA PS256 RS256\"");
    let r = call(
        &gw,
        &gw.http_url("/lenient/x"),
        &[("authorization", &plain)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A bound token with its proof passes "required".
    let k = DpopKey::new();
    let t = k.token();
    let url = gw.http_url("/strict/x");
    let p = k.proof("GET", &url, &t);
    let r = call(
        &gw,
        &url,
        &[("authorization", &format!("DPoP {t}")), ("dpop", &p)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        gw.has_metric("jwtgate_unbound_tokens_refused_total 1")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_ignores_binding_and_passes_the_dpop_header_on() {
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, "off", "", "", "").await;
    let k = DpopKey::new();
    let t = k.token();
    let auth = format!("DPoP {t}");
    let r = call(
        &gw,
        &gw.http_url("/api/x"),
        &[("authorization", &auth), ("dpop", "opaque")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.headers["authorization"], auth.as_str());
    assert_eq!(seen.headers["dpop"], "opaque");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_bound_token_is_never_refreshed_at_the_edge() {
    std::env::set_var(CLIENT_SECRET_ENV, CLIENT_SECRET);
    let idp = MockIdp::start(vec![]).await;
    let up = EchoUpstream::start().await;
    let refresh = format!(
        "[refresh]\ntoken_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\nrefresh_before_s = 60\n",
        idp.token_url()
    );
    let gw = gateway(&up, "if_bound", "", &refresh, "").await;
    let url = gw.http_url("/api/x");
    let soon = jwtgate::auth::now_unix() + 30;
    // Control: an unbound token this close to expiry is renewed (one grant).
    let plain = token("RS256", Some("r1"), json!({"exp": soon}));
    let rt = idp.issue_refresh_token("alice");
    let r = call(
        &gw,
        &url,
        &[
            ("authorization", &format!("Bearer {plain}")),
            ("x-refresh-token", &rt),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.token_calls(), 1);
    // A DPoP-bound one, as close to expiry, with a refresh token: served, not renewed.
    let k = DpopKey::new();
    let t = token(
        "RS256",
        Some("r1"),
        json!({"exp": soon, "cnf": {"jkt": k.jkt}}),
    );
    let rt = idp.issue_refresh_token("alice");
    let p = k.proof("GET", &url, &t);
    let r = call(
        &gw,
        &url,
        &[
            ("authorization", &format!("DPoP {t}")),
            ("dpop", &p),
            ("x-refresh-token", &rt),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.token_calls(), 1, "no refresh grant for a bound token");
    assert!(r.header("x-access-token").is_none());
    assert!(!up.last().headers.contains_key("x-refresh-token"));
}

// === mTLS ===

/// A CA and client certificates it signs (rcgen), as PEM files in `dir`.
struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_path: std::path::PathBuf,
}

struct ClientCert {
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    pem: String,
    x5t: String,
}

impl Pki {
    fn new(dir: &std::path::Path, name: &str) -> Pki {
        let (ca_path, ca) = common::redis_tls::ca(dir, name);
        Pki { ca, ca_path }
    }

    fn client(&self) -> ClientCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let x5t = jwtgate::sender::cert_thumbprint(cert.der());
        ClientCert {
            chain: vec![cert.der().clone()],
            key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            pem: cert.pem(),
            x5t,
        }
    }
}

impl ClientCert {
    fn client(&self, gw: &TestGateway) -> Client {
        Client::tls_with_cert(&gw.cert_pem, self.chain.clone(), self.key.clone_key())
    }

    /// A token bound to this certificate.
    fn token(&self) -> String {
        token("RS256", Some("r1"), json!({"cnf": {"x5t#S256": self.x5t}}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_token_needs_its_certificate_on_the_connection() {
    let dir = TempDir::new();
    let pki = Pki::new(dir.path(), "clients-ca");
    let up = EchoUpstream::start().await;
    let tls = format!(
        "client_ca = \"{}\"\nclient_auth = \"optional\"",
        pki.ca_path.display()
    );
    let gw = gateway(&up, "if_bound", &tls, "", "").await;
    let mine = pki.client();
    let theirs = pki.client();
    let t = mine.token();
    let bearer = format!("Bearer {t}");
    let h = [("authorization", bearer.as_str())];
    let url = gw.https_url("/api/x");
    let r = mine.client(&gw).get(&url, &h).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = theirs.client(&gw).get(&url, &h).await;
    assert_refused(&r, "certificate mismatch", "another certificate");
    // Optional mode: no certificate still completes the handshake, then 401.
    let r = gw.client_tls().get(&url, &h).await;
    assert_refused(&r, "certificate mismatch", "no certificate");
    // Unbound tokens pass without a certificate on if_bound.
    let plain = format!("Bearer {}", token("RS256", Some("r1"), json!({})));
    let r = gw
        .client_tls()
        .get(&url, &[("authorization", &plain)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A certificate from a CA the gateway does not trust fails the handshake.
    let stranger = Pki::new(dir.path(), "other-ca").client();
    assert!(stranger.client(&gw).try_get(&url, &h).await.is_err());
    let r = mine.client(&gw).get(&url, &h).await;
    assert_eq!(r.status, 200, "still serving: {}", r.text());
    assert!(
        gw.has_metric("jwtgate_mtls_bindings_total{result=\"mismatch\"} 2")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_required_refuses_the_handshake_without_a_certificate() {
    let dir = TempDir::new();
    let pki = Pki::new(dir.path(), "clients-ca");
    let up = EchoUpstream::start().await;
    let tls = format!(
        "client_ca = \"{}\"\nclient_auth = \"required\"",
        pki.ca_path.display()
    );
    let gw = gateway(&up, "if_bound", &tls, "", "").await;
    let url = gw.https_url("/api/x");
    let plain = format!("Bearer {}", token("RS256", Some("r1"), json!({})));
    let h = [("authorization", plain.as_str())];
    assert!(gw.client_tls().try_get(&url, &h).await.is_err());
    let r = pki.client().client(&gw).get(&url, &h).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_certificate_counts_only_from_a_trusted_proxy() {
    let dir = TempDir::new();
    let pki = Pki::new(dir.path(), "clients-ca");
    let up = EchoUpstream::start().await;
    let tokens = "[tokens]\nclient_cert_header = \"x-ssl-client-cert\"\n";
    let c = pki.client();
    let t = c.token();
    let bearer = format!("Bearer {t}");
    let escaped = percent_encoding::utf8_percent_encode(&c.pem, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let xfcc = format!("By=spiffe://lb;Hash=00;Cert=\"{escaped}\";Subject=\"CN=client\"");

    // Behind one trusted hop (a TLS terminator): its header is the client's certificate.
    let trusted = gateway(&up, "if_bound", "", tokens, "trusted_proxy_hops = 1").await;
    let url = trusted.http_url("/api/x");
    for (what, v) in [("nginx", &escaped), ("envoy", &xfcc)] {
        let h = [
            ("authorization", bearer.as_str()),
            ("x-ssl-client-cert", v.as_str()),
        ];
        let r = call(&trusted, &url, &h).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    let other = pki.client();
    let other =
        percent_encoding::utf8_percent_encode(&other.pem, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let h = [
        ("authorization", bearer.as_str()),
        ("x-ssl-client-cert", &other),
    ];
    let r = call(&trusted, &url, &h).await;
    assert_refused(
        &r,
        "certificate mismatch",
        "trusted proxy, other certificate",
    );

    // Without trusted hops the same header is a client's say-so: ignored and stripped.
    let direct = gateway(&up, "if_bound", "", tokens, "").await;
    let url = direct.http_url("/api/x");
    let h = [
        ("authorization", bearer.as_str()),
        ("x-ssl-client-cert", escaped.as_str()),
    ];
    let r = call(&direct, &url, &h).await;
    assert_refused(&r, "certificate mismatch", "untrusted peer");
    let plain = format!("Bearer {}", token("RS256", Some("r1"), json!({})));
    let h = [
        ("authorization", plain.as_str()),
        ("x-ssl-client-cert", escaped.as_str()),
    ];
    let r = call(&direct, &url, &h).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!up.last().headers.contains_key("x-ssl-client-cert"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_key() {
    let dir = TempDir::new();
    let cases = [
        (
            "[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstreams = [\"http://127.0.0.1:1\"]\nsender_constraint = \"always\"\n",
            "routes[0].sender_constraint",
        ),
        (
            "[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nauth = \"none\"\nupstreams = [\"http://127.0.0.1:1\"]\nsender_constraint = \"required\"\n",
            "routes[0].sender_constraint",
        ),
        (
            "[tokens]\ndpop_iat_window_s = 0\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstreams = [\"http://127.0.0.1:1\"]\n",
            "tokens.dpop_iat_window_s",
        ),
        // Nonces on without a secret; a secret with nonces off; a secret that is not set.
        (
            "[tokens]\ndpop_nonce = true\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstreams = [\"http://127.0.0.1:1\"]\n",
            "tokens.dpop_nonce_secret_env",
        ),
        (
            "[tokens]\ndpop_nonce_secret_env = \"X\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstreams = [\"http://127.0.0.1:1\"]\n",
            "tokens.dpop_nonce_secret_env",
        ),
        (
            "[tokens]\ndpop_nonce = true\ndpop_nonce_secret_env = \"SENDER_TEST_UNSET_NONCE_SECRET\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstreams = [\"http://127.0.0.1:1\"]\n",
            "tokens.dpop_nonce_secret_env",
        ),
    ];
    for (body, key) in cases {
        let text = format!("{}{}{body}", base_config(dir.path(), ""), issuer());
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let e = jwtgate::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
    let text = format!(
        "{}client_auth = \"required\"\n{}{}",
        base_config(dir.path(), ""),
        issuer(),
        route("a", "/", &["http://127.0.0.1:1"], "")
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let e = jwtgate::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.client_auth"), "{e}");
}

/// The last line of `jwtgate <args>`'s stdout.
fn jwtgate_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().last().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_mints_a_bound_token_and_its_proofs() {
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, "if_bound", "", "", "").await;
    let key = gw.dir.path().join("dpop.pem");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    let key = key.to_str().unwrap();
    let rsa = fixture("rsa.pem");
    let t = jwtgate_cli(&[
        "token",
        "--alg",
        "RS256",
        "--key",
        rsa.to_str().unwrap(),
        "--kid",
        "r1",
        "--iss",
        "https://idp.test",
        "--aud",
        "api",
        "--sub",
        "alice",
        "--dpop-key",
        key,
    ]);
    let url = gw.http_url("/api/x");
    let p = jwtgate_cli(&[
        "dpop-proof",
        "--key",
        key,
        "--method",
        "GET",
        "--url",
        &url,
        "--token",
        &t,
    ]);
    let auth = format!("DPoP {t}");
    let r = call(&gw, &url, &[("authorization", &auth), ("dpop", &p)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The token alone (stolen without the key) is refused.
    let r = call(&gw, &url, &[("authorization", &auth)]).await;
    assert_refused(&r, "invalid dpop proof", "token without proof");
}

/// A gateway with the forward-auth listener and route `/api` under
/// `sender_constraint = "required"`; `tables` come before the route.
async fn authz_gateway(tables: &str) -> TestGateway {
    let cfg = format!(
        "{}{tables}[authz]\ntrusted_proxies = [\"127.0.0.1\"]\n\n{}",
        issuer(),
        route(
            "api",
            "/api",
            &["http://127.0.0.1:1"],
            "sender_constraint = \"required\""
        )
    );
    TestGateway::start_authz(&cfg, "").await
}

/// A forward-auth decision as Traefik/Caddy ask for one: the original request in
/// `X-Forwarded-*` (GET https://shop.example/api/orders?x=1), the client's token and proof.
async fn ask_authz(gw: &TestGateway, auth: &str, proof: String) -> Resp {
    let h = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/orders?x=1"),
        ("x-forwarded-host", "shop.example"),
        ("x-forwarded-proto", "https"),
        ("authorization", auth),
        ("dpop", proof.as_str()),
    ];
    Client::plain()
        .get(&format!("http://{}/", gw.authz.unwrap()), &h)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_auth_listener_checks_proofs_against_the_original_url() {
    let gw = authz_gateway("").await;
    let k = DpopKey::new();
    let t = k.token();
    let auth = format!("DPoP {t}");
    // As Traefik/Caddy ask: the original request in X-Forwarded-*; the proof names it.
    let ask = |proof: String| ask_authz(&gw, &auth, proof);
    let r = ask(k.proof("GET", "https://shop.example/api/orders", &t)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-user-id"), Some("alice"));
    // A proof for the listener's own URL is not one for the original request.
    let own = format!("http://{}/", gw.authz.unwrap());
    let r = ask(k.proof("GET", &own, &t)).await;
    assert_refused(&r, "invalid dpop proof", "proof for the authz URL");
    let p = k.proof("GET", "https://shop.example/api/orders", &t);
    assert_eq!(ask(p.clone()).await.status, 200);
    assert_refused(&ask(p).await, "dpop proof replayed", "replayed decision");
}

/// `[tokens] dpop_nonce`, with the secret both replicas share.
const NONCE_SECRET_ENV: &str = "SENDER_TEST_DPOP_NONCE_SECRET";
const NONCE_SECRET: &str = "a nonce secret every replica shares, 32+ bytes";
const NONCE_LIFETIME_S: u64 = 300;

fn nonce_tables() -> String {
    std::env::set_var(NONCE_SECRET_ENV, NONCE_SECRET);
    format!(
        "[tokens]\ndpop_nonce = true\ndpop_nonce_secret_env = \"{NONCE_SECRET_ENV}\"\ndpop_nonce_lifetime_s = {NONCE_LIFETIME_S}\n\n"
    )
}

/// GET `/api/x` on `gw` with the token and one proof.
async fn with_proof(gw: &TestGateway, auth: &str, proof: &str) -> Resp {
    call(
        gw,
        &gw.http_url("/api/x"),
        &[("authorization", auth), ("dpop", proof)],
    )
    .await
}

/// A 401 asking for a nonce: the `use_dpop_nonce` challenge and a `DPoP-Nonce` to retry
/// with, which it returns.
fn assert_nonce_asked(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.json()["error"], "use_dpop_nonce", "{what}");
    let www = r.header("www-authenticate").unwrap_or("");
    assert!(
        www.starts_with("DPoP algs=\"ES256 EdDSA PS256 RS256\", error=\"use_dpop_nonce\""),
        "{what}: {www}"
    );
    let n = r.header("dpop-nonce").expect("DPoP-Nonce on the 401");
    assert!(!n.is_empty(), "{what}");
    n.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_nonces_are_asked_for_taken_shared_by_replicas_and_rotated() {
    let up = EchoUpstream::start().await;
    let a = gateway(&up, "required", "", &nonce_tables(), "").await;
    let b = gateway(&up, "required", "", &nonce_tables(), "").await;
    let k = DpopKey::new();
    let t = k.token();
    let auth = format!("DPoP {t}");
    let url = a.http_url("/api/x");
    // No nonce: 401 use_dpop_nonce with one to use; nothing reaches the upstream.
    let r = with_proof(&a, &auth, &k.proof("GET", &url, &t)).await;
    let nonce = assert_nonce_asked(&r, "no nonce");
    // The retry with it passes.
    let r = with_proof(&a, &auth, &k.proof_nonce(&url, &t, &nonce)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().headers["authorization"],
        format!("Bearer {t}").as_str()
    );
    // Replica B (same secret) takes A's nonce.
    let url_b = b.http_url("/api/x");
    let r = with_proof(&b, &auth, &k.proof_nonce(&url_b, &t, &nonce)).await;
    assert_eq!(r.status, 200, "replica B: {}", r.text());
    // A nonce made with another secret is not the gateway's.
    let now = jwtgate::auth::now_unix();
    let foreign =
        jwtgate::sender::nonce::Nonces::new(b"some other secret, also 32 bytes!", NONCE_LIFETIME_S)
            .current(now);
    let r = with_proof(
        &a,
        &auth,
        &k.proof_nonce(&url, &t, foreign.to_str().unwrap()),
    )
    .await;
    assert_nonce_asked(&r, "nonce under another secret");
    // The same secret one bucket back: still taken, and the response hands out the
    // current nonce so the client rotates.
    let ours = jwtgate::sender::nonce::Nonces::new(NONCE_SECRET.as_bytes(), NONCE_LIFETIME_S);
    let previous = ours.current(now - NONCE_LIFETIME_S as i64);
    let r = with_proof(
        &a,
        &auth,
        &k.proof_nonce(&url, &t, previous.to_str().unwrap()),
    )
    .await;
    assert_eq!(r.status, 200, "previous bucket: {}", r.text());
    let rotated = r
        .header("dpop-nonce")
        .expect("a fresh DPoP-Nonce after a new bucket");
    assert_ne!(rotated, previous.to_str().unwrap());
    assert_eq!(
        with_proof(&a, &auth, &k.proof_nonce(&url, &t, rotated))
            .await
            .status,
        200,
        "the rotated nonce"
    );
    // Two buckets back (older than one lifetime past its own): asked again.
    let old = ours.current(now - 2 * NONCE_LIFETIME_S as i64);
    let r = with_proof(&a, &auth, &k.proof_nonce(&url, &t, old.to_str().unwrap())).await;
    assert_nonce_asked(&r, "nonce two buckets old");
    // A valid nonce does not make a replay acceptable.
    let p = k.proof_nonce(&url, &t, &nonce);
    assert_eq!(with_proof(&a, &auth, &p).await.status, 200);
    assert_refused(
        &with_proof(&a, &auth, &p).await,
        "dpop proof replayed",
        "replay with a nonce",
    );
    assert!(
        a.has_metric("jwtgate_dpop_proofs_total{result=\"nonce\"} 3")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_auth_listener_asks_for_nonces_too() {
    let gw = authz_gateway(&nonce_tables()).await;
    let k = DpopKey::new();
    let t = k.token();
    let auth = format!("DPoP {t}");
    let ask = |proof: String| ask_authz(&gw, &auth, proof);
    let url = "https://shop.example/api/orders";
    let nonce = assert_nonce_asked(&ask(k.proof("GET", url, &t)).await, "authz, no nonce");
    let r = ask(k.proof_nonce(url, &t, &nonce)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-user-id"), Some("alice"));
}
