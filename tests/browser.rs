//! Sign-in at the edge (issue 13) in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, `fantoccini`), against the gateway's HTTPS listener
//! (`https://localhost:<port>`, its self-signed certificate accepted), the mock OpenID
//! provider on `http://127.0.0.1:<port>` (a cross-site IdP, as in production) showing its
//! sign-in page, and the echo upstream.
//!
//! One browser session: protected page → IdP page → click "Sign in" → back on the page
//! with the upstream's answer; the session cookies are HttpOnly; a screenshot; logout
//! through the IdP's end-session to the post-logout page; the page sends the browser to
//! sign in again. An API client on the same URL gets 401, never a redirect. A plain-HTTP
//! origin that is not loopback gets a page saying sign-in needs HTTPS (there the browser
//! would drop the `Secure` state cookie).
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install -y chromium
//! chromium-driver`; `.ci/run` installs them). Without them the test fails, never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::op::{query_of, MockOp};
use common::*;
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::json;

const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// `program` on PATH, or a loud failure naming the install command.
fn on_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{program}` is not on PATH; the browser test needs it: {INSTALL}")
        })
}

/// A chromedriver started by this test on a free loopback port, in its own process group:
/// on drop that group (chromedriver and the Chromium it started) is killed, nothing else.
struct Chromedriver {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Chromedriver {
    async fn start(dir: &Path) -> Chromedriver {
        use std::os::unix::process::CommandExt;
        let program = on_path("chromedriver");
        let [port] = free_ports();
        let log = dir.join("chromedriver.log");
        let child = Command::new(&program)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): {INSTALL}", program.display()));
        let mut d = Chromedriver { port, child, log };
        d.wait_ready().await;
        d
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Readiness: `GET /status` answers `{"value": {"ready": true}}`.
    async fn wait_ready(&mut self) {
        let c = Client::plain();
        let status = format!("{}/status", self.url());
        for _ in 0..400 {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("chromedriver exited at start ({exit}):\n{}", self.logs());
            }
            if let Ok(r) = c.try_get(&status, &[]).await {
                if r.status == 200 && r.json()["value"]["ready"] == true {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("chromedriver never became ready:\n{}", self.logs());
    }

    fn logs(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group this test created (pgid = chromedriver's pid), by its id.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium as root in a container, with a profile in `dir`; the gateway's
/// self-signed certificate is accepted.
async fn browser(driver: &Chromedriver, dir: &Path) -> WebDriver {
    let chromium = on_path("chromium");
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                // A name that is not loopback, for the plain-HTTP listener.
                "--host-resolver-rules=MAP gateway.test 127.0.0.1",
                "--window-size=1024,700",
                format!("--user-data-dir={}", dir.join("profile").display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::rustls()
        .expect("native roots")
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("no WebDriver session: {e}\n{}", driver.logs()))
}

fn config(op: &MockOp, up: &EchoUpstream) -> String {
    op.gateway_config(
        &format!("client_secret_env = \"{CLIENT_SECRET_ENV}\"\npost_logout_redirect = \"/bye/\""),
        &[
            route("app", "/app", &[&up.url()], "login = true"),
            route("bye", "/bye", &[&up.url()], "auth = \"none\""),
        ]
        .concat(),
    )
}

/// Poll the browser's URL until `done` holds (navigations through redirects finish on
/// their own schedule); fails with the URL it is stuck on.
async fn wait_url(b: &WebDriver, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = b.current_url().await.unwrap().to_string();
        if done(&url) {
            return url;
        }
        if Instant::now() > deadline {
            let page = b.source().await.unwrap_or_default();
            panic!("browser never reached {what}; at {url}:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Rig {
    op: MockOp,
    up: EchoUpstream,
    gw: TestGateway,
    dir: TempDir,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_at_the_edge_and_signs_out() {
    let dir = TempDir::new();
    let driver = Chromedriver::start(dir.path()).await;
    let op = MockOp::start().await;
    // The IdP shows a page; a person clicks "Sign in".
    op.state.interactive.store(true, Ordering::SeqCst);
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&config(&op, &up)).await;
    let rig = Rig { op, up, gw, dir };

    let b = browser(&driver, rig.dir.path()).await;
    // Close the session (Chromium exits) whatever the flow did, then report it.
    let flow = std::panic::AssertUnwindSafe(tokio::time::timeout(
        Duration::from_secs(90),
        flow(&rig, &b),
    ))
    .catch_unwind()
    .await;
    let _ = b.close().await;
    match flow {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the browser flow took over 90 s:\n{}", driver.logs()),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn flow(rig: &Rig, b: &WebDriver) {
    let started = Instant::now();
    let start = rig.gw.https_url("/app/page?x=1");
    let authorize = format!("{}/authorize?", rig.op.issuer());

    // 1. No session: the page sends the browser to the IdP, which shows its sign-in page.
    b.goto(&start).await.unwrap();
    let at_idp = wait_url(b, "the IdP", |u| u.starts_with(&authorize)).await;
    let q = query_of(&at_idp);
    assert_eq!(q["redirect_uri"], rig.gw.https_url("/oauth2/callback"));
    assert_eq!(q["code_challenge_method"], "S256");
    let approve = b.find(Locator::Id("approve")).await.unwrap();
    assert_eq!(approve.text().await.unwrap(), "Sign in");

    // 2. Sign in: IdP → callback → the page first asked for, with the upstream's answer.
    approve.click().await.unwrap();
    let landed = wait_url(b, "the page asked for", |u| u == start).await;
    assert_eq!(landed, start);
    let page = b
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown: serde_json::Value = serde_json::from_str(page.trim())
        .unwrap_or_else(|_| panic!("the page is not the upstream's JSON: {page}"));
    assert_eq!(shown, json!({"method": "GET", "uri": "/app/page?x=1"}));
    let seen = rig.up.last();
    assert_eq!(seen.uri, "/app/page?x=1");
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(rig.op.state.token_calls.load(Ordering::SeqCst), 1);
    assert!(rig.op.state.last_refusal.lock().unwrap().is_none());

    // A screenshot of the landed page (in the test's temp dir, never committed).
    let png = b.screenshot().await.unwrap();
    assert!(png.len() > 100, "screenshot of {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    std::fs::write(rig.dir.path().join("signed-in.png"), &png).unwrap();

    // 3. The browser holds the session cookies, HttpOnly (no script can read them).
    let cookies = b.get_all_cookies().await.unwrap();
    for name in ["access_token", "refresh_token", "id_token"] {
        let c = cookies
            .iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no {name} cookie in the browser: {cookies:?}"));
        assert_eq!(c.http_only(), Some(true), "{name} HttpOnly");
        assert_eq!(c.secure(), Some(true), "{name} Secure");
        assert_eq!(c.path(), Some("/"), "{name}");
        assert_eq!(format!("{:?}", c.same_site()), "Some(Lax)", "{name}");
    }
    let script_sees = b.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(script_sees, json!(""), "script sees no cookie");

    // The session holds without another sign-in.
    let other = rig.gw.https_url("/app/other");
    b.goto(&other).await.unwrap();
    wait_url(b, "/app/other", |u| u == other).await;
    assert_eq!(rig.up.last().headers["x-user-id"], "alice");

    // 4. Logout (a link, as a person types or clicks it): through the IdP's end-session
    //    to the post-logout page; the cookies are gone.
    b.goto(&rig.gw.https_url("/logout")).await.unwrap();
    let bye = rig.gw.https_url("/bye/");
    wait_url(b, "the post-logout page", |u| u == bye).await;
    let ends = rig.op.state.end_sessions.lock().unwrap().clone();
    assert_eq!(ends.len(), 1, "one RP-initiated logout at the IdP");
    assert_eq!(ends[0]["post_logout_redirect_uri"], bye);
    assert_eq!(ends[0]["client_id"], CLIENT_ID);
    assert!(ends[0].contains_key("id_token_hint"));
    assert_eq!(rig.up.last().uri, "/bye/");
    assert!(!rig.up.last().headers.contains_key("x-user-id"));
    let left: Vec<String> = b
        .get_all_cookies()
        .await
        .unwrap()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    for name in ["access_token", "refresh_token", "id_token", "jwtgate_login"] {
        assert!(
            !left.iter().any(|n| n == name),
            "{name} still set: {left:?}"
        );
    }

    // 5. Signed out: the page sends the browser to sign in again.
    b.goto(&start).await.unwrap();
    wait_url(b, "the IdP again", |u| u.starts_with(&authorize)).await;
    b.find(Locator::Id("approve")).await.unwrap();

    // 6. The same URL from an API client: 401, no redirect.
    let r = rig
        .gw
        .client_tls()
        .get(&start, &[("accept", "application/json")])
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("location").is_none());

    // 7. Over plain HTTP on a name that is not loopback the browser would drop the
    //    `Secure` state cookie: the gateway says so instead of sending it to the IdP.
    let plain = format!("http://gateway.test:{}/app/x", rig.gw.http.port());
    b.goto(&plain).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().as_str(), plain);
    let page = b
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sign-in needs HTTPS"), "{page}");

    eprintln!("browser flow: {:?}", started.elapsed());
}
