//! A keep-alive connection that repeats its token: the gateway remembers the connection's
//! last verified token (issue 19), and must still refuse it on that same connection once it
//! is revoked, once it expires, and once a reload removes its key.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// One HTTP/1.1 connection to the gateway, every request on it.
struct KeptAlive(SendRequest<Empty<Bytes>>);

impl KeptAlive {
    async fn open(gw: &TestGateway) -> KeptAlive {
        let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeptAlive(send)
    }

    /// `GET /api/x` with `t` as the bearer token: the status. Panics if the connection
    /// closed, so every status comes from the same connection.
    async fn get(&mut self, t: &str) -> u16 {
        self.0.ready().await.expect("the connection is still open");
        let req = Request::get("/api/x")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {t}"))
            .body(Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.0.send_request(req))
            .await
            .expect("an answer in time")
            .expect("an answer on the same connection");
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }
}

fn issuer(keys: &str) -> String {
    format!("[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nleeway_s = 0\nkeys = [{keys}]\n\n")
}

fn rsa_key() -> String {
    format!(
        "{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}",
        fixture("rsa.pub.pem").display()
    )
}

fn ec_key() -> String {
    format!(
        "{{ kid = \"e1\", alg = \"ES256\", pem = \"{}\" }}",
        fixture("ec.pub.pem").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_on_its_kept_alive_connection() {
    let redis = RedisServer::start().await;
    let up = EchoUpstream::start().await;
    let (var, admin) = admin_env();
    let gw = TestGateway::start(&format!(
        "[admin]\ntoken_env = \"{var}\"\n\n{}[revocation]\nstore = \"redis\"\nredis_url = \"{}\"\n\n{}",
        issuer(&rsa_key()),
        redis.url(),
        route("api", "/api", &[&up.url()], "")
    ))
    .await;
    let t = token("RS256", Some("r1"), json!({}));
    let mut conn = KeptAlive::open(&gw).await;
    for _ in 0..3 {
        assert_eq!(conn.get(&t).await, 200);
    }
    let c = claims_of(&t);
    let r = gw
        .admin_call(
            Method::POST,
            "/revocations",
            Some(&admin),
            &json!({"jti": c["jti"], "exp": c["exp"]}).to_string(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(conn.get(&t).await, 401, "revoked, on the same connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_on_its_kept_alive_connection() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        issuer(&rsa_key()),
        route("api", "/api", &[&up.url()], "")
    ))
    .await;
    let exp = jwtgate::auth::now_unix() + 2;
    let t = token("RS256", Some("r1"), json!({ "exp": exp }));
    let mut conn = KeptAlive::open(&gw).await;
    assert_eq!(conn.get(&t).await, 200);
    assert_eq!(conn.get(&t).await, 200);
    while jwtgate::auth::now_unix() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(conn.get(&t).await, 401, "expired, on the same connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_a_key_removed_by_a_reload_is_refused_on_its_kept_alive_connection() {
    let up = EchoUpstream::start().await;
    let (var, admin) = admin_env();
    let head = format!("[admin]\ntoken_env = \"{var}\"\n\n");
    let api = route("api", "/api", &[&up.url()], "");
    let both = format!("{}, {}", rsa_key(), ec_key());
    let gw = TestGateway::start(&format!("{head}{}{api}", issuer(&both))).await;
    let t = token("ES256", Some("e1"), json!({}));
    let mut conn = KeptAlive::open(&gw).await;
    assert_eq!(conn.get(&t).await, 200);
    assert_eq!(conn.get(&t).await, 200);

    let path = gw.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&both, &rsa_key())).unwrap();
    let r = gw.reload(&admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        conn.get(&t).await,
        401,
        "its key is gone, on the same connection"
    );
    let still = token("RS256", Some("r1"), json!({}));
    assert_eq!(conn.get(&still).await, 200);
}
