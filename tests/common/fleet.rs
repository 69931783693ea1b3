//! `Fleet`: gateway replicas sharing one Redis-backed revocation store (one issuer, one
//! authenticated route to an echo upstream, an admin token), for the multi-Redis tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use serde_json::json;

use super::*;

pub const ISSUER: &str = "s";

pub struct Fleet {
    _up: EchoUpstream,
    config: String,
    pub gws: Vec<TestGateway>,
    admin_token: String,
}

impl Fleet {
    /// Two gateways with these `[revocation]` keys (after `store = "redis"`).
    pub async fn start(revocation: &str) -> Fleet {
        static N: AtomicUsize = AtomicUsize::new(0);
        let up = EchoUpstream::start().await;
        let var = format!(
            "JWTGATE_TEST_SENTINEL_ADMIN_{}",
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin_token = format!("admin-{}", jwtgate::token::random_id());
        std::env::set_var(&var, &admin_token);
        let config = format!(
            "[admin]\ntoken_env = \"{var}\"\n\n[[issuers]]\nname = \"{ISSUER}\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n[revocation]\nstore = \"redis\"\ncache_ttl_ms = 300\ntimeout_ms = 200\non_error = \"deny\"\n{revocation}\n\n{}",
            fixture("rsa.pub.pem").display(),
            route("api", "/api", &[&up.url()], "")
        );
        let mut f = Fleet {
            _up: up,
            config,
            gws: Vec::new(),
            admin_token,
        };
        for _ in 0..2 {
            f.add_gateway().await;
        }
        f
    }

    /// One more replica, started now (it knows only what the store holds).
    pub async fn add_gateway(&mut self) -> usize {
        let gw = TestGateway::start_nowait(&self.config, "").await;
        gw.wait_ready().await;
        self.gws.push(gw);
        self.gws.len() - 1
    }

    /// `POST /revocations` for `jti` on gateway `i`: the status.
    pub async fn revoke(&self, i: usize, jti: &str) -> u16 {
        self.revoke_resp(i, jti).await.status
    }

    /// `revoke` on gateway `i`, retrying each 503 when its `Retry-After` says, as a client
    /// of the admin API would, up to `tries` times: how many 503s came before the 204.
    pub async fn revoke_retrying(&self, i: usize, jti: &str, tries: usize) -> usize {
        for n in 0..tries {
            let r = self.revoke_resp(i, jti).await;
            match r.status {
                204 => return n,
                503 => {
                    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
                    tokio::time::sleep(std::time::Duration::from_secs(after)).await;
                }
                other => panic!("revocation answered {other}: {}", r.text()),
            }
        }
        panic!("revocation still 503 after {tries} tries");
    }

    /// `revoke`, the whole answer.
    pub async fn revoke_resp(&self, i: usize, jti: &str) -> Resp {
        let gw = &self.gws[i];
        let auth = format!("Bearer {}", self.admin_token);
        let exp = jwtgate::auth::now_unix() + 3600;
        let r = gw
            .client_plain()
            .send(
                Method::POST,
                &format!("http://{}/revocations", gw.admin),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                jwtgate::body::full(json!({"jti": jti, "exp": exp}).to_string()),
            )
            .await;
        if r.status == 503 {
            assert_eq!(r.json()["error"], "revocation_unavailable", "{}", r.text());
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        r
    }

    /// `GET /revocations?<query>` on gateway `i`, as the admin.
    pub async fn list(&self, i: usize, query: &str) -> Resp {
        let gw = &self.gws[i];
        let auth = format!("Bearer {}", self.admin_token);
        gw.client_plain()
            .get(
                &format!("http://{}/revocations?{query}", gw.admin),
                &[("authorization", &auth)],
            )
            .await
    }

    pub async fn call(&self, i: usize, t: &str) -> Result<u16, String> {
        let gw = &self.gws[i];
        let b = format!("Bearer {t}");
        gw.client_plain()
            .try_get(&gw.http_url("/api/x"), &[("authorization", &b)])
            .await
            .map(|r| r.status)
    }

    /// Gateway `i` refuses `t` within 200 ms: a revocation made on another gateway reached
    /// it through the channel, sooner than its cached "not revoked" would expire.
    pub async fn assert_heard(&self, i: usize, t: &str, what: &str) {
        let heard = eventually(Duration::from_millis(200), || async move {
            self.call(i, t).await == Ok(401)
        })
        .await;
        assert!(heard.is_some(), "{what} never reached gateway {i}");
    }

    /// Every one of `tokens` is refused (401) by each of `gateways`: the revocations they
    /// were acknowledged for held.
    pub async fn assert_refused<'a>(
        &self,
        gateways: &[usize],
        tokens: impl IntoIterator<Item = &'a String>,
    ) {
        for t in tokens {
            for &i in gateways {
                assert_eq!(
                    self.call(i, t).await,
                    Ok(401),
                    "gateway {i} accepted a revoked token"
                );
            }
        }
    }

    pub async fn readyz(&self, i: usize) -> serde_json::Value {
        let gw = &self.gws[i];
        gw.client_plain()
            .get(&format!("http://{}/readyz", gw.admin), &[])
            .await
            .json()
    }
}

/// A token with a fresh jti: (token, jti, its Redis key).
pub fn fresh() -> (String, String, String) {
    let jti = jwtgate::token::random_id();
    let t = token("RS256", Some("r1"), json!({ "jti": jti }));
    let key = format!("jwtgate:revoked:jti:{ISSUER}:{jti}");
    (t, jti, key)
}
