//! `/metrics` as a scraper reads it: classic text 0.0.4 by default (checked by the real
//! `promtool check metrics`), OpenMetrics when `Accept` asks for it; requests by exact
//! status code, the build and process metrics.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// Prometheus 2.x's scrape `Accept` header.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `promtool check metrics` on `body`: whether it passed, and what it said.
fn promtool_check(body: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it with `apt-get install -y prometheus` (Debian/Ubuntu; .ci/run does)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success() && said.trim().is_empty(), said)
}

async fn gateway(up: &EchoUpstream) -> TestGateway {
    std::env::set_var(HS_ENV, HS_SECRET);
    TestGateway::start(&format!(
        "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\nkeys = [{{ kid = \"h1\", alg = \"HS256\", secret_env = \"{HS_ENV}\" }}]\n\n{}{}",
        route("open", "/open", &[&up.url()], "auth = \"none\""),
        route("api", "/api", &[&up.url()], "")
    ))
    .await
}

async fn scrape(gw: &TestGateway, accept: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let r = gw
        .client_plain()
        .get(&format!("http://{}/metrics", gw.admin), &headers)
        .await;
    assert_eq!(r.status, 200);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_openmetrics_is_served_when_asked_for() {
    let up = EchoUpstream::start().await;
    let gw = gateway(&up).await;
    let cl = gw.client_plain();
    assert_eq!(cl.get(&gw.http_url("/open/x"), &[]).await.status, 200);
    assert_eq!(cl.get(&gw.http_url("/api/x"), &[]).await.status, 401);
    assert_eq!(cl.get(&gw.http_url("/nowhere"), &[]).await.status, 404);

    for accept in [None, Some("*/*"), Some("text/plain")] {
        let r = scrape(&gw, accept).await;
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{accept:?}"
        );
        let text = r.text();
        let (ok, said) = promtool_check(&text);
        assert!(ok, "promtool check metrics: {said}\n{text}");
        assert!(
            text.lines()
                .any(|l| l == "# TYPE jwtgate_requests_total counter"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    let r = scrape(&gw, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert_eq!(r.header("vary"), Some("accept"));
    let om = r.text();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.lines().any(|l| l == "# TYPE jwtgate_requests counter")
            && om
                .lines()
                .any(|l| l == "# UNIT jwtgate_request_duration_seconds seconds"),
        "{om}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_to_alert_on_need_no_config() {
    let up = EchoUpstream::start().await;
    let gw = gateway(&up).await;
    let cl = gw.client_plain();
    for _ in 0..2 {
        assert_eq!(cl.get(&gw.http_url("/open/x"), &[]).await.status, 200);
    }
    assert_eq!(cl.get(&gw.http_url("/api/x"), &[]).await.status, 401);
    assert_eq!(cl.get(&gw.http_url("/nowhere"), &[]).await.status, 404);
    let text = scrape(&gw, None).await.text();
    let has = |line: &str| text.lines().any(|l| l == line);
    for line in [
        "jwtgate_requests_total{route=\"open\",code=\"200\"} 2",
        "jwtgate_requests_total{route=\"api\",code=\"401\"} 1",
        "jwtgate_requests_total{route=\"-\",code=\"404\"} 1",
        &format!(
            "jwtgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE process_start_time_seconds gauge",
    ] {
        assert!(has(line), "missing {line:?} in:\n{text}");
    }
    // Codes never answered have no series (bounded by what happened, not pre-created).
    assert!(!text.contains("code=\"2xx\"") && !text.contains("route=\"open\",code=\"404\""));
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_cpu_seconds_total") > 0.0);
    let now = jwtgate::clock::now_unix() as f64;
    let started = value("process_start_time_seconds");
    assert!(started <= now + 1.0 && started > now - 3600.0, "{started}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_jwks_and_circuit_metrics_by_route_and_index() {
    let up = EchoUpstream::start().await;
    let [dead] = free_ports();
    let idp = MockIdp::start(vec![Keys::rsa_jwk("r1", "rsa")]).await;
    let gw = TestGateway::start(&format!(
        "[[issuers]]\nname = \"idp\"\nissuer = \"https://idp.test\"\njwks_url = \"{}\"\n\n{}{}",
        idp.jwks_url(),
        route(
            "pair",
            "/pair",
            &[&up.url(), &format!("http://127.0.0.1:{dead}")],
            "auth = \"none\""
        ),
        route(
            "slow",
            "/slow",
            &[&up.url()],
            "auth = \"none\"\ntimeout_ms = 150"
        )
    ))
    .await;
    let cl = gw.client_plain();
    // Round robin over [up, dead]: GETs to the dead one fail over to the live one.
    for _ in 0..4 {
        assert_eq!(cl.get(&gw.http_url("/pair/x"), &[]).await.status, 200);
    }
    // The echo upstream's /slow/<ms> answers after the route's timeout.
    assert_eq!(cl.get(&gw.http_url("/slow/400"), &[]).await.status, 504);
    let text = scrape(&gw, None).await.text();
    let value = |sample: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("jwtgate_upstream_duration_seconds_count{route=\"pair\",upstream=\"0\"}"),
        4.0
    );
    assert_eq!(
        value("jwtgate_upstream_duration_seconds_count{route=\"pair\",upstream=\"1\"}"),
        0.0
    );
    assert_eq!(
        value("jwtgate_upstream_errors_total{route=\"pair\",upstream=\"1\",kind=\"unreachable\"}"),
        2.0
    );
    assert_eq!(
        value("jwtgate_upstream_errors_total{route=\"pair\",upstream=\"0\",kind=\"unreachable\"}"),
        0.0
    );
    assert_eq!(
        value("jwtgate_upstream_errors_total{route=\"slow\",upstream=\"0\",kind=\"timeout\"}"),
        1.0
    );
    // Upstream URLs never become labels.
    assert!(!text.contains(&format!("127.0.0.1:{dead}")), "{text}");
    let age = value("jwtgate_jwks_age_seconds{issuer=\"idp\"}");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(value("jwtgate_revocation_circuit_open"), 0.0);
    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_circuit_shows_open_while_the_store_is_down() {
    let up = EchoUpstream::start().await;
    let [dead] = free_ports();
    let gw = TestGateway::start_nowait(
        &format!(
            "[revocation]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{dead}/0\"\ntimeout_ms = 50\nconnect_timeout_ms = 50\n\n{}",
            route("open", "/", &[&up.url()], "auth = \"none\"")
        ),
        "",
    )
    .await;
    let text = scrape(&gw, None).await.text();
    assert!(
        text.lines()
            .any(|l| l == "jwtgate_revocation_circuit_open 1"),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "jwtgate_revocation_store_up 0"));
}
