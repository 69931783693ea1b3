//! JWT authentication through the real gateway: every algorithm, the attack catalogue,
//! claims, scopes, token sources, identity headers, JWKS rotation and failure.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use http::Method;
use serde_json::json;

/// Static-key issuer `https://idp.test` with one key of each kind, audience `api`.
fn static_issuer() -> String {
    std::env::set_var(HS_ENV, HS_SECRET);
    format!(
        r#"[[issuers]]
name = "static"
issuer = "https://idp.test"
audiences = ["api", "other-api"]
leeway_s = 30
keys = [
  {{ kid = "r1", alg = "RS256", pem = "{rsa}" }},
  {{ kid = "p1", alg = "PS256", pem = "{rsa}" }},
  {{ kid = "e1", alg = "ES256", pem = "{ec}" }},
  {{ kid = "d1", alg = "EdDSA", pem = "{ed}" }},
  {{ kid = "h1", alg = "HS256", secret_env = "{HS_ENV}" }},
  {{ kid = "r5", alg = "RS512", pem = "{rsa}" }},
  {{ kid = "p5", alg = "PS512", pem = "{rsa}" }},
  {{ kid = "e3", alg = "ES384", pem = "{ec384}" }},
  {{ kid = "h5", alg = "HS512", secret_env = "{HS_ENV}" }},
]

[identity.claims]
"x-user-email" = "email"
"x-user-groups" = "groups"

"#,
        rsa = fixture("rsa.pub.pem").display(),
        ec = fixture("ec.pub.pem").display(),
        ed = fixture("ed.pub.pem").display(),
        ec384 = fixture("ec384.pub.pem").display(),
    )
}

struct Setup {
    up: EchoUpstream,
    gw: TestGateway,
}

async fn setup() -> Setup {
    let up = EchoUpstream::start().await;
    let u = up.url();
    let cfg = [
        static_issuer(),
        route("api", "/api", &[&u], ""),
        route("scoped", "/scoped", &[&u], "scopes = [\"orders:read\"]"),
        route("opt", "/opt", &[&u], "auth = \"optional\""),
        route("open", "/open", &[&u], "auth = \"none\""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    Setup { up, gw }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

impl Setup {
    async fn call(&self, path: &str, token: &str) -> Resp {
        let b = bearer(token);
        self.gw
            .client_plain()
            .get(&self.gw.http_url(path), &[("authorization", &b)])
            .await
    }

    /// Expect a 401 whose RFC 6750 description contains `reason`, without the token
    /// echoed anywhere, and nothing forwarded.
    async fn refused(&self, token: &str, reason: &str) {
        let before = self.up.count();
        let r = self.call("/api/x", token).await;
        assert_eq!(r.status, 401, "{reason}: {}", r.text());
        let www = r.header("www-authenticate").unwrap();
        assert!(
            www.starts_with("Bearer realm=\"jwtgate\", error=\"invalid_token\""),
            "{www}"
        );
        assert!(www.contains(reason), "wanted {reason:?} in {www}");
        assert_eq!(r.json()["error"], "invalid_token");
        assert!(r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains(reason));
        if token.len() > 8 {
            assert!(
                !r.text().contains(token) && !www.contains(token),
                "token echoed"
            );
        }
        assert_eq!(
            self.up.count(),
            before,
            "refused request reached the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_algorithm_passes() {
    let s = setup().await;
    for (alg, kid) in [
        ("RS256", "r1"),
        ("PS256", "p1"),
        ("ES256", "e1"),
        ("EdDSA", "d1"),
        ("HS256", "h1"),
        ("RS512", "r5"),
        ("PS512", "p5"),
        ("ES384", "e3"),
        ("HS512", "h5"),
    ] {
        let t = token(alg, Some(kid), json!({"sub": format!("user-{alg}")}));
        let r = s.call("/api/x", &t).await;
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        assert_eq!(
            s.up.last().headers["x-user-id"],
            format!("user-{alg}").as_str()
        );
    }
    // HS256 without kid: tried against the issuer's keys pinned to HS256.
    let t = token("HS256", None, json!({}));
    assert_eq!(s.call("/api/x", &t).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_reach_upstream_over_tls_and_h2() {
    let s = setup().await;
    let t = token(
        "ES256",
        Some("e1"),
        json!({"scope": "orders:read orders:write", "email": "alice@example.com", "groups": ["dev", "ops"]}),
    );
    let b = bearer(&t);
    for (cl, url) in [
        (s.gw.client_tls(), s.gw.https_url("/api/x")),
        (s.gw.client_h2(), s.gw.https_url("/api/x")),
        (s.gw.client_plain(), s.gw.http_url("/api/x")),
    ] {
        let r = cl
            .get(
                &url,
                &[
                    ("authorization", &b),
                    ("x-user-id", "mallory"),
                    ("x-auth-claims", "forged"),
                    ("x-user-email", "evil@example.com"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        let h = s.up.last().headers;
        assert_eq!(h["x-user-id"], "alice");
        assert_eq!(h["x-user-scopes"], "orders:read orders:write");
        assert_eq!(h["x-user-email"], "alice@example.com");
        assert_eq!(h["x-user-groups"], "dev,ops");
        assert_eq!(h["authorization"], b.as_str());
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(h["x-auth-claims"].as_bytes())
                .unwrap(),
        )
        .unwrap();
        for k in ["jti", "iat", "exp", "iss", "sub"] {
            assert!(claims.get(k).is_some(), "claims header lacks {k}");
        }
        assert_eq!(claims["iss"], "https://idp.test");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_is_stripped_on_every_auth_mode() {
    let s = setup().await;
    let cl = s.gw.client_plain();
    let forged = [
        ("x-user-id", "root"),
        ("x-user-scopes", "admin"),
        ("x-auth-claims", "e30"),
        ("x-auth-admin", "1"),
        ("x-user-email", "e@x"),
    ];
    // optional route without a token, open route: headers gone.
    for path in ["/opt/x", "/open/x"] {
        let r = cl.get(&s.gw.http_url(path), &forged).await;
        assert_eq!(r.status, 200);
        let h = s.up.last().headers;
        for (k, _) in forged {
            assert!(!h.contains_key(k), "{k} reached upstream on {path}");
        }
    }
    // optional route with a token: replaced by the verified identity.
    let t = token("RS256", Some("r1"), json!({}));
    let b = bearer(&t);
    let mut with_token = forged.to_vec();
    with_token.push(("authorization", &b));
    assert_eq!(
        cl.get(&s.gw.http_url("/opt/x"), &with_token).await.status,
        200
    );
    let h = s.up.last().headers;
    assert_eq!(h["x-user-id"], "alice");
    assert!(
        !h.contains_key("x-auth-admin")
            && !h.contains_key("x-user-scopes")
            && !h.contains_key("x-user-email")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_401_without_error_attribute() {
    let s = setup().await;
    let r = s.gw.client_plain().get(&s.gw.http_url("/api/x"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"jwtgate\"")
    );
    assert_eq!(s.up.count(), 0);
    // Optional route: no token is fine, a bad one is not.
    assert_eq!(
        s.gw.client_plain()
            .get(&s.gw.http_url("/opt/x"), &[])
            .await
            .status,
        200
    );
    assert_eq!(s.call("/opt/x", "garbage").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_schemes_are_401() {
    let s = setup().await;
    for v in [
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer ",
        "Token abc",
        "bearer",
    ] {
        let r =
            s.gw.client_plain()
                .get(&s.gw.http_url("/api/x"), &[("authorization", v)])
                .await;
        assert_eq!(r.status, 401, "{v}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("malformed token"),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_claims_with_leeway() {
    let s = setup().await;
    let now = jwtgate::auth::now_unix();
    assert_eq!(
        s.call(
            "/api/x",
            &token("RS256", Some("r1"), json!({"exp": now - 10}))
        )
        .await
        .status,
        200,
        "within leeway"
    );
    s.refused(
        &token("RS256", Some("r1"), json!({"exp": now - 120})),
        "token expired",
    )
    .await;
    s.refused(
        &token("RS256", Some("r1"), json!({"nbf": now + 600})),
        "token not yet valid",
    )
    .await;
    s.refused(
        &token("RS256", Some("r1"), json!({"exp": null})),
        "missing claim exp",
    )
    .await;
    s.refused(
        &token("RS256", Some("r1"), json!({"exp": "9999999999"})),
        "malformed token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_audience_subject_checks() {
    let s = setup().await;
    s.refused(
        &token("RS256", Some("r1"), json!({"iss": "https://evil.test"})),
        "issuer mismatch",
    )
    .await;
    s.refused(
        &token("RS256", Some("r1"), json!({"iss": null})),
        "missing claim iss",
    )
    .await;
    s.refused(
        &token("RS256", Some("r1"), json!({"aud": "someone-else"})),
        "audience mismatch",
    )
    .await;
    s.refused(
        &token("RS256", Some("r1"), json!({"aud": null})),
        "missing claim aud",
    )
    .await;
    s.refused(
        &token("RS256", Some("r1"), json!({"sub": null})),
        "missing claim sub",
    )
    .await;
    assert_eq!(
        s.call(
            "/api/x",
            &token("RS256", Some("r1"), json!({"aud": ["x", "other-api"]}))
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_attacks() {
    let s = setup().await;
    let good = token("RS256", Some("r1"), json!({}));
    let (hp, sig) = good.rsplit_once('.').unwrap();
    // Flipped signature bytes.
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[10] ^= 0xff;
    s.refused(
        &format!("{hp}.{}", URL_SAFE_NO_PAD.encode(&raw)),
        "signature invalid",
    )
    .await;
    // Stripped signature.
    s.refused(&format!("{hp}."), "signature invalid").await;
    // Payload swapped under a valid signature.
    let (h, _) = hp.split_once('.').unwrap();
    let evil = URL_SAFE_NO_PAD.encode(
        json!({"iss": "https://idp.test", "sub": "admin", "aud": "api", "exp": 9999999999u64})
            .to_string(),
    );
    s.refused(&format!("{h}.{evil}.{sig}"), "signature invalid")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_in_every_spelling_is_refused() {
    let s = setup().await;
    let claims = json!({"iss": "https://idp.test", "sub": "admin", "aud": "api", "exp": jwtgate::auth::now_unix() + 600});
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [None, Some("r1"), Some("h1")] {
            let mut h = json!({"alg": alg, "typ": "JWT"});
            if let Some(k) = kid {
                h["kid"] = k.into();
            }
            let with_dot = raw_token(&h, &claims, "");
            s.refused(&with_dot, "unsupported algorithm").await;
            let without_dot = with_dot.trim_end_matches('.').to_string();
            s.refused(&without_dot, "malformed token").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let s = setup().await;
    let pem = fixture_bytes("rsa.pub.pem");
    let claims = json!({"iss": "https://idp.test", "sub": "admin", "aud": "api", "exp": jwtgate::auth::now_unix() + 600});
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("r1".into());
    let t = encode(&h, &claims, &EncodingKey::from_secret(&pem)).unwrap();
    s.refused(&t, "unsupported algorithm").await;
    // Without kid it can only be tried against the HS256 key, whose secret differs.
    let t = encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    s.refused(&t, "signature invalid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_jwk_and_jku_are_not_key_sources() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let s = setup().await;
    let attacker = EncodingKey::from_rsa_pem(&fixture_bytes("rsa2.pem")).unwrap();
    let claims = json!({"iss": "https://idp.test", "sub": "admin", "aud": "api", "exp": jwtgate::auth::now_unix() + 600});
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(Keys::rsa_jwk("r1", "rsa2")).unwrap();
    let mut h = Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("r1".into());
    h.jwk = Some(jwk);
    s.refused(
        &encode(&h, &claims, &attacker).unwrap(),
        "signature invalid",
    )
    .await;
    let mut h = Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("attacker".into());
    h.jku = Some("http://127.0.0.1:1/jwks.json".into());
    h.x5u = Some("http://127.0.0.1:1/cert.pem".into());
    s.refused(&encode(&h, &claims, &attacker).unwrap(), "unknown key id")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_and_structure_attacks() {
    let s = setup().await;
    s.refused(&token("RS256", Some("nope"), json!({})), "unknown key id")
        .await;
    s.refused(
        &token("RS256", Some("../../../../etc/passwd"), json!({})),
        "unknown key id",
    )
    .await;
    // No kid: only keys pinned to the token's alg are tried. r1 is pinned to RS256...
    assert_eq!(
        s.call("/api/x", &token("RS256", None, json!({})))
            .await
            .status,
        200
    );
    // ...and no key is pinned to RS384.
    let t = raw_token(
        &json!({"alg": "RS384"}),
        &json!({"iss": "https://idp.test", "sub": "a", "aud": "api", "exp": 9999999999u64}),
        "c2ln",
    );
    s.refused(&t, "unknown key id").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens() {
    let s = setup().await;
    let good = token("RS256", Some("r1"), json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    s.refused(&format!("{}.{}", parts[0], parts[1]), "malformed token")
        .await;
    s.refused(
        &format!("{}.!!!notbase64!!!.{}", parts[0], parts[2]),
        "malformed token",
    )
    .await;
    s.refused(
        &format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("not json"),
            parts[2]
        ),
        "malformed token",
    )
    .await;
    s.refused(
        &format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("[1,2,3]"),
            parts[2]
        ),
        "malformed token",
    )
    .await;
    s.refused(
        &format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("{"), parts[1], parts[2]),
        "malformed token",
    )
    .await;
    s.refused("a.b.c.d", "malformed token").await;
    let crit = raw_token(
        &json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}),
        &json!({"sub": "a"}),
        "sig",
    );
    s.refused(&crit, "malformed token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_token_is_refused_without_5xx() {
    let s = setup().await;
    let big = format!(
        "{}.{}.{}",
        "a".repeat(100),
        "b".repeat(64 * 1024),
        "c".repeat(100)
    );
    let b = bearer(&big);
    let r =
        s.gw.client_plain()
            .try_get(&s.gw.http_url("/api/x"), &[("authorization", &b)])
            .await;
    if let Ok(r) = r {
        assert!(r.status == 401 || r.status == 431, "status {}", r.status);
    }
    assert_eq!(s.up.count(), 0);
    assert_eq!(
        s.call("/api/x", &token("RS256", Some("r1"), json!({})))
            .await
            .status,
        200,
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_enforced() {
    let s = setup().await;
    let r = s
        .call(
            "/scoped/x",
            &token("RS256", Some("r1"), json!({"scope": "orders:write"})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(
        s.call(
            "/scoped/x",
            &token("RS256", Some("r1"), json!({"scope": "a orders:read"}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        s.call(
            "/scoped/x",
            &token("RS256", Some("r1"), json!({"scp": ["orders:read"]}))
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_source_with_csrf_protection() {
    let s = setup().await;
    let t = token("ES256", Some("e1"), json!({}));
    let cookie = format!("theme=dark; access_token={t}");
    let cl = s.gw.client_plain();
    let url = s.gw.http_url("/api/x");
    let r = cl.get(&url, &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.up.last().headers["authorization"],
        bearer(&t).as_str(),
        "forward_token sets the bearer header"
    );
    let host = format!("{}", s.gw.http);
    let r = cl
        .send(
            Method::POST,
            &url,
            &[("cookie", &cookie)],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "csrf");
    let r = cl
        .send(
            Method::POST,
            &url,
            &[("cookie", &cookie), ("origin", "https://evil.example")],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 403);
    let origin = format!("http://{host}");
    let r = cl
        .send(
            Method::POST,
            &url,
            &[("cookie", &cookie), ("origin", &origin)],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 200);
}

// === JWKS ===

fn jwks_issuer(idp: &MockIdp) -> String {
    format!(
        "[[issuers]]\nname = \"remote\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_url = \"{}\"\n\n",
        idp.jwks_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_verify_and_rotation_is_picked_up() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw =
        TestGateway::start(&[jwks_issuer(&idp), route("api", "/api", &[&up.url()], "")].concat())
            .await;
    let cl = gw.client_plain();
    let call = |t: String| {
        let cl = cl.clone();
        let url = gw.http_url("/api/x");
        async move { cl.get(&url, &[("authorization", &bearer(&t))]).await.status }
    };
    assert_eq!(call(token("RS256", Some("k1"), json!({}))).await, 200);
    assert_eq!(
        call(token("ES256", Some("k1"), json!({}))).await,
        401,
        "an RSA key never verifies ES256"
    );
    // The IdP rotates to an EC key with a new kid: the first token with it triggers a refetch.
    idp.set_keys(vec![Keys::ec_jwk("k2"), Keys::ed_jwk("k3")]);
    let before = idp.fetches();
    assert_eq!(call(token("ES256", Some("k2"), json!({}))).await, 200);
    assert_eq!(idp.fetches(), before + 1);
    assert_eq!(call(token("EdDSA", Some("k3"), json!({}))).await, 200);
    // The rotated-out key no longer verifies (cached verification is dropped with it).
    assert_eq!(call(token("RS256", Some("k1"), json!({}))).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_does_not_flood_the_idp() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw =
        TestGateway::start(&[jwks_issuer(&idp), route("api", "/api", &[&up.url()], "")].concat())
            .await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let cl = gw.client_plain();
        let url = gw.http_url("/api/x");
        tasks.push(tokio::spawn(async move {
            let t = token("RS256", Some(&format!("random-{i}")), json!({}));
            cl.get(&url, &[("authorization", &bearer(&t))]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("unknown key id"));
    }
    assert!(
        idp.fetches() <= 3,
        "{} JWKS fetches for 200 unknown kids",
        idp.fetches()
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_after_first_fetch_keeps_serving() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let up = EchoUpstream::start().await;
    let gw =
        TestGateway::start(&[jwks_issuer(&idp), route("api", "/api", &[&up.url()], "")].concat())
            .await;
    idp.stop();
    // An unknown kid forces a refetch attempt against the dead IdP...
    let cl = gw.client_plain();
    let r = cl
        .get(
            &gw.http_url("/api/x"),
            &[(
                "authorization",
                &bearer(&token("RS256", Some("zz"), json!({}))),
            )],
        )
        .await;
    assert_eq!(r.status, 401);
    // ...and the last good key set still serves.
    let r = cl
        .get(
            &gw.http_url("/api/x"),
            &[(
                "authorization",
                &bearer(&token("RS256", Some("k1"), json!({"sub": "bob"}))),
            )],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-user-id"], "bob");
    let ready = cl.get(&format!("http://{}/readyz", gw.admin), &[]).await;
    assert_eq!(ready.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_keys_are_loaded() {
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    idp.fail_with(500);
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_nowait(
        &[jwks_issuer(&idp), route("api", "/api", &[&up.url()], "")].concat(),
        "",
    )
    .await;
    let cl = gw.client_plain();
    let admin = format!("http://{}", gw.admin);
    // Wait until the gateway has tried (and failed) at least once: a real signal.
    for _ in 0..200 {
        if idp.fetches() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = cl.get(&format!("{admin}/readyz"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["issuers"][0]["keys_loaded"], false);
    assert_eq!(cl.get(&format!("{admin}/healthz"), &[]).await.status, 200);
    idp.fail_with(0);
    gw.wait_ready().await;
    let r = cl
        .get(
            &gw.http_url("/api/x"),
            &[(
                "authorization",
                &bearer(&token("RS256", Some("k1"), json!({}))),
            )],
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_refusals() {
    let s = setup().await;
    let now = jwtgate::auth::now_unix();
    for _ in 0..3 {
        assert_eq!(
            s.call("/api/x", &token("RS256", Some("r1"), json!({})))
                .await
                .status,
            200
        );
    }
    s.refused(
        &token("RS256", Some("r1"), json!({"exp": now - 600})),
        "token expired",
    )
    .await;
    s.refused(&token("RS256", Some("nope"), json!({})), "unknown key id")
        .await;
    assert_eq!(
        s.gw.client_plain()
            .get(&s.gw.http_url("/nowhere"), &[])
            .await
            .status,
        404
    );
    let m =
        s.gw.client_plain()
            .get(&format!("http://{}/metrics", s.gw.admin), &[])
            .await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for line in [
        "jwtgate_requests_total{route=\"api\",code=\"200\"} 3",
        "jwtgate_requests_total{route=\"api\",code=\"401\"} 2",
        "jwtgate_requests_total{route=\"-\",code=\"404\"} 1",
        "jwtgate_auth_failures_total{reason=\"expired\"} 1",
        "jwtgate_auth_failures_total{reason=\"unknown_kid\"} 1",
        "jwtgate_issuer_keys_loaded{issuer=\"static\"} 1",
        "jwtgate_revocation_store_up 1",
        "# TYPE jwtgate_request_duration_seconds histogram",
        "jwtgate_request_duration_seconds_count{route=\"api\"} 5",
        "jwtgate_request_duration_seconds_bucket{le=\"+Inf\",route=\"api\"} 5",
        "jwtgate_request_duration_seconds_count{route=\"-\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    // The histogram records times, not only counts.
    let sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("jwtgate_request_duration_seconds_sum{route=\"api\"} "))
        .unwrap_or_else(|| panic!("no duration sum in:\n{text}"))
        .parse()
        .unwrap();
    assert!(sum > 0.0, "{sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_iss_picks_the_issuer_and_its_keys() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let up = EchoUpstream::start().await;
    let other = format!(
        "[[issuers]]\nname = \"other\"\nissuer = \"https://other.test\"\nkeys = [{{ kid = \"o1\", alg = \"RS256\", pem = \"{}\" }}]\n\n",
        fixture("rsa2.pub.pem").display()
    );
    let gw = TestGateway::start(
        &[
            static_issuer(),
            other,
            route("api", "/api", &[&up.url()], ""),
        ]
        .concat(),
    )
    .await;
    let sign2 = |iss: &str, kid: &str| {
        let mut h = Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(kid.into());
        let c = json!({"iss": iss, "sub": "olga", "exp": jwtgate::auth::now_unix() + 600});
        encode(
            &h,
            &c,
            &EncodingKey::from_rsa_pem(&fixture_bytes("rsa2.pem")).unwrap(),
        )
        .unwrap()
    };
    let cl = gw.client_plain();
    let call = |t: String| {
        let (cl, url) = (cl.clone(), gw.http_url("/api/x"));
        async move { cl.get(&url, &[("authorization", &bearer(&t))]).await }
    };
    assert_eq!(call(sign2("https://other.test", "o1")).await.status, 200);
    assert_eq!(up.last().headers["x-user-id"], "olga");
    assert_eq!(
        call(token("RS256", Some("r1"), json!({}))).await.status,
        200
    );
    // Keys never cross issuers: each kid is looked up in the token's issuer only.
    let r = call(sign2("https://idp.test", "o1")).await;
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("unknown key id"));
    let r = call(token(
        "RS256",
        Some("r1"),
        json!({"iss": "https://other.test"}),
    ))
    .await;
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("unknown key id"));
}

// === rate limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_subject_answers_429_with_retry_after() {
    let up = EchoUpstream::start().await;
    let u = up.url();
    let cfg = [
        static_issuer(),
        route(
            "limited",
            "/limited",
            &[&u],
            "rate_limit = { per = \"sub\", rps = 0.2, burst = 2 }",
        ),
        route("free", "/free", &[&u], ""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    let alice = bearer(&token("ES256", Some("e1"), json!({"sub": "alice"})));
    // A second token of the same subject shares the bucket.
    let alice2 = bearer(&token(
        "ES256",
        Some("e1"),
        json!({"sub": "alice", "jti": "two"}),
    ));
    let bob = bearer(&token("ES256", Some("e1"), json!({"sub": "bob"})));
    let (plain, h2) = (gw.client_plain(), gw.client_h2());
    let url = gw.http_url("/limited/x");
    assert_eq!(
        plain.get(&url, &[("authorization", &alice)]).await.status,
        200
    );
    assert_eq!(
        h2.get(&gw.https_url("/limited/x"), &[("authorization", &alice2)])
            .await
            .status,
        200
    );
    let before = up.count();
    let r = plain.get(&url, &[("authorization", &alice)]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    // 0.2 per second: the next request is due within 5 s.
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "retry-after {retry}");
    assert_eq!(up.count(), before, "a limited request reached the upstream");
    // Other subjects, and other routes of the same subject, are not affected.
    assert_eq!(
        plain.get(&url, &[("authorization", &bob)]).await.status,
        200
    );
    assert_eq!(
        plain
            .get(&gw.http_url("/free/x"), &[("authorization", &alice)])
            .await
            .status,
        200
    );
    // A refused token is a 401, not counted against anyone.
    assert_eq!(plain.get(&url, &[]).await.status, 401);
    assert!(
        gw.has_metric("jwtgate_rate_limited_total{route=\"limited\"} 1")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_address_comes_before_authentication() {
    let up = EchoUpstream::start().await;
    let u = up.url();
    let limit = "rate_limit = { per = \"ip\", rps = 0.1, burst = 3 }";
    let cfg = [
        static_issuer(),
        route("open", "/open", &[&u], &format!("auth = \"none\"\n{limit}")),
        route("api", "/api", &[&u], limit),
    ]
    .concat();
    // Behind one trusted load balancer: the client is the last x-forwarded-for entry.
    let gw = TestGateway::start_with(&cfg, "trusted_proxy_hops = 1").await;
    let cl = gw.client_plain();
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for _ in 0..3 {
        assert_eq!(
            cl.get(&gw.http_url("/open"), &from("203.0.113.7"))
                .await
                .status,
            200
        );
    }
    let r = cl.get(&gw.http_url("/open"), &from("203.0.113.7")).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // A client cannot escape by writing its own entry further left.
    let spoof = [("x-forwarded-for", "10.9.9.9, 203.0.113.7")];
    assert_eq!(cl.get(&gw.http_url("/open"), &spoof).await.status, 429);
    assert_eq!(
        cl.get(&gw.http_url("/open"), &from("203.0.113.8"))
            .await
            .status,
        200
    );

    // Bad tokens are counted too: a flood of them is cut off before verification.
    let bad = bearer(&token(
        "ES256",
        Some("e1"),
        json!({"iss": "https://evil.test"}),
    ));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let h = [
            ("x-forwarded-for", "198.51.100.1"),
            ("authorization", bad.as_str()),
        ];
        statuses.push(cl.get(&gw.http_url("/api/x"), &h).await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
}

// === CORS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_responses_carry_the_origin() {
    let up = EchoUpstream::start().await;
    let u = up.url();
    let cors = r#"cors = { origins = ["https://app.example"], methods = ["GET", "POST", "DELETE"], headers = ["authorization", "content-type"], credentials = true, max_age_s = 300 }"#;
    let cfg = [
        static_issuer(),
        route("app", "/app", &[&u], cors),
        route("api", "/api", &[&u], ""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    let (cl, h2) = (gw.client_plain(), gw.client_h2());
    let app = "https://app.example";
    let before = up.count();
    let r = preflight(
        &h2,
        &gw.https_url("/app/orders/7"),
        app,
        "DELETE",
        "authorization,content-type",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, DELETE")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    for (origin, method, hdrs, why) in [
        (
            "https://evil.example",
            "GET",
            "authorization",
            "origin not allowed",
        ),
        (app, "PATCH", "authorization", "method not allowed"),
        (app, "GET", "x-debug", "request header not allowed"),
    ] {
        let r = preflight(&cl, &gw.http_url("/app/x"), origin, method, hdrs).await;
        assert_eq!(r.status, 403, "{why}");
        assert_eq!(r.json()["error"], "cors_refused");
        assert!(r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains(why));
    }
    assert_eq!(up.count(), before, "a preflight reached the upstream");

    // Actual requests: the listed origin gets its headers, on the gateway's own 401 too.
    let t = bearer(&token("ES256", Some("e1"), json!({})));
    let r = cl
        .get(
            &gw.http_url("/app/x"),
            &[("origin", app), ("authorization", &t)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    assert_eq!(r.header("vary"), Some("origin"));
    let r = cl.get(&gw.http_url("/app/x"), &[("origin", app)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    let r = cl
        .get(
            &gw.http_url("/app/x"),
            &[("origin", "https://evil.example"), ("authorization", &t)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // Cookie-carried tokens: the listed origin passes the CSRF check, others do not.
    let cookie = format!("access_token={}", token("ES256", Some("e1"), json!({})));
    for (origin, want) in [(app, 200), ("https://evil.example", 403)] {
        let r = cl
            .send(
                Method::POST,
                &gw.http_url("/app/x"),
                &[("origin", origin), ("cookie", &cookie)],
                jwtgate::body::empty(),
            )
            .await;
        assert_eq!(r.status, want, "POST from {origin}: {}", r.text());
    }

    // A route without `cors` answers nothing itself: the preflight is an ordinary request.
    let r = preflight(&cl, &gw.http_url("/api/x"), app, "GET", "authorization").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// A CORS preflight from `origin` asking to send `method` with `headers`.
async fn preflight(cl: &Client, url: &str, origin: &str, method: &str, headers: &str) -> Resp {
    let h = [
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", headers),
    ];
    cl.send(Method::OPTIONS, url, &h, jwtgate::body::empty())
        .await
}

// === identity assertions ===

/// A fresh P-256 key as a SEC1 `EC PRIVATE KEY` PEM (what `openssl ecparam -genkey` writes).
fn sec1_p256_pem() -> String {
    use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let der: EcPrivateKeyRfc5915Der = pair.private_key().as_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_get_a_signed_assertion_they_can_verify_with_the_admin_jwks() {
    let up = EchoUpstream::start().await;
    let u = up.url();
    let dir = TempDir::new();
    let key = dir.path().join("assertion.key");
    std::fs::write(&key, sec1_p256_pem()).unwrap();
    let cfg = [
        format!(
            "[identity]\nassertion_key = \"{}\"\nassertion_ttl_s = 120\n\n",
            key.display()
        ),
        static_issuer(),
        route("api", "/api", &[&u], ""),
        route("billing", "/billing", &[&u], ""),
        route("open", "/open", &[&u], "auth = \"none\""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    let jwks = gw
        .client_plain()
        .get(&format!("http://{}/.well-known/jwks.json", gw.admin), &[])
        .await;
    assert_eq!(jwks.status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    assert_eq!(set.keys.len(), 1);
    assert!(
        !jwks.text().contains("\"d\""),
        "private key material served"
    );

    let t = token(
        "ES256",
        Some("e1"),
        json!({"sub": "carol", "scope": "orders:read"}),
    );
    let b = bearer(&t);
    let cl = gw.client_h2();
    // A client's own assertion never gets through.
    let forged = [
        ("authorization", b.as_str()),
        ("x-jwtgate-assertion", "forged"),
    ];
    assert_eq!(cl.get(&gw.https_url("/api/x"), &forged).await.status, 200);
    let first = up.last().headers["x-jwtgate-assertion"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(first, "forged");

    let jwk = &set.keys[0];
    // What an upstream does: the served key, the kid it names, iss and its own aud.
    let verify = |assertion: &str, aud: &str| {
        let header = jsonwebtoken::decode_header(assertion).unwrap();
        assert_eq!(header.kid, jwk.common.key_id);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[aud]);
        v.set_issuer(&["jwtgate"]);
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v).map(|d| d.claims)
    };
    let c = verify(&first, "api").expect("the assertion for api verifies");
    assert_eq!(c["sub"], "carol");
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["token_iss"], "https://idp.test");
    let t_claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c["token_jti"], t_claims["jti"]);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);

    // Reused for the same token and route; minted per route (aud) otherwise.
    let seen = |path: &str| {
        let last = up.last();
        assert!(
            last.uri.ends_with(path),
            "{} reached the upstream",
            last.uri
        );
        last.headers
    };
    let r = cl
        .get(&gw.https_url("/api/y"), &[("authorization", &b)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(seen("/api/y")["x-jwtgate-assertion"], first.as_str());
    let r = gw
        .client_plain()
        .get(&gw.http_url("/billing/y"), &[("authorization", &b)])
        .await;
    assert_eq!(r.status, 200);
    let billing = seen("/billing/y")["x-jwtgate-assertion"]
        .to_str()
        .unwrap()
        .to_string();
    verify(&billing, "billing").expect("the assertion for billing verifies");
    let wrong = verify(&billing, "api").expect_err("a billing assertion passed as api's");
    assert_eq!(
        *wrong.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidAudience
    );
    // Unauthenticated routes carry none (and not the client's).
    let r = gw
        .client_plain()
        .get(
            &gw.http_url("/open/x"),
            &[("x-jwtgate-assertion", "forged")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!seen("/open/x").contains_key("x-jwtgate-assertion"));
}

#[test]
fn assertion_key_must_be_a_p256_private_key() {
    let dir = TempDir::new();
    let base = base_config(dir.path(), "");
    let open = route("open", "/", &["http://127.0.0.1:9"], "auth = \"none\"");
    let load = |identity: &str| {
        let text = format!("{base}[identity]\n{identity}\n\n{open}");
        jwtgate::config::Config::from_str(&dir.path().join("gateway.toml"), &text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    for (identity, why) in [
        (
            format!("assertion_key = \"{}\"", fixture("rsa.pem").display()),
            "P-256",
        ),
        (
            format!("assertion_key = \"{}\"", fixture("ec384.pem").display()),
            "P-256",
        ),
        (
            format!("assertion_key = \"{}\"", fixture("ec.pub.pem").display()),
            "private key",
        ),
        (
            "assertion_key = \"/nonexistent/key.pem\"".to_string(),
            "nonexistent",
        ),
        ("assertion_ttl_s = 30".to_string(), "required"),
    ] {
        let e = load(&identity);
        assert!(
            e.contains("identity.assertion_key") && e.contains(why),
            "{identity}: {e}"
        );
    }
    assert!(load(&format!(
        "assertion_key = \"{}\"",
        fixture("ec.pem").display()
    ))
    .is_empty());
}

// === [anomaly] windows belong to the token, not to its bytes or its cache entry (issue 20) ===

const ANOMALY_REVOKE_AT_5: &str =
    "[anomaly]\nwindow_s = 60\nmax_requests_per_token = 5\naction = \"revoke\"\n\n";

/// Call `t` on `/api/x` and return the status.
async fn status(gw: &TestGateway, t: &str) -> u16 {
    gw.client_plain()
        .get(&gw.http_url("/api/x"), &[("authorization", &bearer(t))])
        .await
        .status
}

/// Finding 6: a garbage token with an unknown kid made every cached verification, and
/// with it every [anomaly] window, start afresh. Neither a refetch that changes nothing nor
/// a real key rotation may reset a token's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_do_not_reset_anomaly_windows() {
    for rotate in [false, true] {
        let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
        let up = EchoUpstream::start().await;
        let gw = TestGateway::start(
            &[
                jwks_issuer(&idp),
                route("api", "/api", &[&up.url()], ""),
                ANOMALY_REVOKE_AT_5.into(),
            ]
            .concat(),
        )
        .await;
        let victim = token("RS256", Some("k1"), json!({}));
        for i in 0..3 {
            assert_eq!(status(&gw, &victim).await, 200, "request {i}");
        }
        if rotate {
            idp.set_keys(vec![Keys::rsa_jwk("k1", "rsa"), Keys::ec_jwk("k2")]);
        }
        let fetches = idp.fetches();
        for i in 0..3 {
            let garbage = token("RS256", Some(&format!("nope-{i}")), json!({}));
            assert_eq!(status(&gw, &garbage).await, 401);
        }
        assert_eq!(idp.fetches(), fetches + 1, "the garbage caused one refetch");
        for i in 3..5 {
            assert_eq!(
                status(&gw, &victim).await,
                200,
                "request {i} (rotate {rotate})"
            );
        }
        assert_eq!(
            status(&gw, &victim).await,
            401,
            "6th request served against a limit of 5 (rotate {rotate})"
        );
    }
}

/// `(r, s)` -> `(r, n - s)`: the other valid ES256 signature of the same message.
fn ecdsa_twin(t: &str) -> String {
    // The order n of P-256, big-endian.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (signed, sig) = t.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(raw.len(), 64, "r || s");
    let s = &mut raw[32..];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = N[i] as i16 - s[i] as i16 - borrow;
        borrow = (d < 0) as i16;
        s[i] = (d + 256 * borrow) as u8;
    }
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Finding 7: ECDSA signatures are malleable; the twin of a stolen ES256 token (other
/// bytes, same claims) must count against the same [anomaly] window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecdsa_twin_shares_its_tokens_anomaly_window() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(
        &[
            static_issuer(),
            route("api", "/api", &[&up.url()], ""),
            ANOMALY_REVOKE_AT_5.into(),
        ]
        .concat(),
    )
    .await;
    let victim = token("ES256", Some("e1"), json!({}));
    let twin = ecdsa_twin(&victim);
    assert_ne!(twin, victim);
    // The twin verifies on its own.
    assert_eq!(status(&gw, &twin).await, 200, "the twin does not verify");
    assert_eq!(up.count(), 1);
    for (i, t) in [&victim, &twin, &victim, &twin].into_iter().enumerate() {
        assert_eq!(status(&gw, t).await, 200, "request {}", i + 2);
    }
    assert_eq!(
        status(&gw, &twin).await,
        401,
        "the twin has a window of its own: 6 requests against a limit of 5"
    );
    assert_eq!(status(&gw, &victim).await, 401, "the jti is revoked");
}
