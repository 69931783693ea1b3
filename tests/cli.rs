//! The `jwtgate` binary: `check` on good and broken configs (one test per error class),
//! `token`, `gen-cert`, and SIGTERM draining of a real process.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::bin::*;
use common::*;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn jwtgate(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("JWTGATE_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

const ROUTE: &str = "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"http://127.0.0.1:9\"]\nauth = \"none\"\n";

/// `check` a config made of the generated listener/TLS head plus `body`.
fn check(body: &str) -> (Out, TempDir) {
    let dir = TempDir::new();
    let text = format!("{}{body}", base_config(dir.path(), ""));
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).unwrap();
    (jwtgate(&["check", "-c", path.to_str().unwrap()], &[]), dir)
}

/// A broken config: exit code exactly 1, one message naming the file and every `needle`,
/// no route table printed.
fn broken(body: &str, needles: &[&str]) {
    let (o, _dir) = check(body);
    assert_eq!(o.code, 1, "stderr: {}", o.stderr);
    assert!(
        o.stdout.is_empty(),
        "printed a route table for a broken config: {}",
        o.stdout
    );
    assert!(o.stderr.contains("gw.toml"), "{}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "wanted {n:?} in: {}", o.stderr);
    }
}

#[test]
fn check_good_config_prints_route_table() {
    let (o, _d) = check(&format!("{ROUTE}\n[[routes]]\nname = \"orders\"\npath_prefix = \"/api/orders\"\nhost = \"api.example.com\"\nupstreams = [\"http://127.0.0.1:9001\", \"https://svc.internal\"]\nauth = \"none\"\nrate_limit = {{ per = \"ip\", rps = 50, burst = 100 }}\ncors = {{ origins = [\"https://app.example.com\"] }}\n"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("OK"));
    let line = o.stdout.lines().find(|l| l.starts_with("orders")).unwrap();
    assert!(
        line.contains("api.example.com")
            && line.contains("/api/orders")
            && line.contains("https://svc.internal")
            && line.contains("ip 50/s burst 100")
            && line.contains(" yes "),
        "{line}"
    );
}

#[test]
fn check_prints_the_protections_that_are_on() {
    let (o, _d) = check(&format!(
        "[identity]\nassertion_key = \"{}\"\n\n[anomaly]\naction = \"revoke\"\n\n{ROUTE}",
        fixture("ec.pem").display()
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("identity assertions: x-jwtgate-assertion (ES256, kid "),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("anomaly: more than 600 requests or 3 networks per token in 60 s -> revoke"),
        "{}",
        o.stdout
    );
    assert!(
        !o.stdout.contains("PRIVATE"),
        "key material printed: {}",
        o.stdout
    );
}

#[test]
fn check_unknown_key_names_key_and_line() {
    broken(&format!("{ROUTE}colour = \"blue\"\n"), &["colour", "line"]);
}

#[test]
fn check_toml_syntax_error_names_line() {
    broken(&format!("{ROUTE}\n[oops\n"), &["line"]);
}

#[test]
fn check_missing_routes() {
    broken("", &["routes"]);
}

#[test]
fn check_missing_required_route_key() {
    broken(
        "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\n",
        &["upstreams"],
    );
}

#[test]
fn check_bad_upstream_url() {
    broken(
        &ROUTE.replace("http://127.0.0.1:9", "ftp://x"),
        &["routes[0].upstreams[0]", "http://"],
    );
    broken(
        &ROUTE.replace("http://127.0.0.1:9", "not a url"),
        &["routes[0].upstreams[0]"],
    );
}

#[test]
fn check_duplicate_route_name() {
    broken(
        &format!(
            "{ROUTE}\n{}",
            ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/b\"")
        ),
        &["routes[1].name", "duplicate"],
    );
}

#[test]
fn check_bad_auth_mode() {
    broken(
        &ROUTE.replace("auth = \"none\"", "auth = \"sometimes\""),
        &["routes[0].auth", "sometimes"],
    );
}

#[test]
fn check_auth_route_without_issuer() {
    broken(
        &ROUTE.replace("auth = \"none\"\n", ""),
        &["routes[0].auth", "issuers"],
    );
}

#[test]
fn check_bad_path_prefix() {
    broken(
        &ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"api\""),
        &["routes[0].path_prefix"],
    );
}

#[test]
fn check_bad_listen_address() {
    let dir = TempDir::new();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!("[listen]\nhttp = \"localhost:eighty\"\nadmin = \"127.0.0.1:0\"\n{ROUTE}"),
    )
    .unwrap();
    let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("listen.http"), "{}", o.stderr);
}

#[test]
fn check_unreadable_and_mismatched_tls_files() {
    let dir = TempDir::new();
    let other = TempDir::new();
    let (cert, _) = jwtgate::certs::write(dir.path(), &["localhost".into()]).unwrap();
    let (_, other_key) = jwtgate::certs::write(other.path(), &["localhost".into()]).unwrap();
    let path = dir.path().join("gw.toml");
    let head = "[listen]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n";
    std::fs::write(
        &path,
        format!(
            "{head}[tls]\ncert = \"{}\"\nkey = \"/nonexistent/key.pem\"\n{ROUTE}",
            cert.display()
        ),
    )
    .unwrap();
    let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("tls.key") && o.stderr.contains("/nonexistent/key.pem"),
        "{}",
        o.stderr
    );
    std::fs::write(
        &path,
        format!(
            "{head}[tls]\ncert = \"{}\"\nkey = \"{}\"\n{ROUTE}",
            cert.display(),
            other_key.display()
        ),
    )
    .unwrap();
    let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("tls.key") && o.stderr.contains("match"),
        "{}",
        o.stderr
    );
    std::fs::write(&path, format!("{head}{ROUTE}")).unwrap();
    let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("tls"), "{}", o.stderr);
}

#[test]
fn check_bad_upstream_ca() {
    let dir = TempDir::new();
    let (_, key) = jwtgate::certs::write(dir.path(), &["ca".into()]).unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let path = dir.path().join("gw.toml");
    for (ca, needle) in [
        ("/nonexistent/ca.pem".to_string(), "/nonexistent/ca.pem"),
        (key.display().to_string(), "no CERTIFICATE block"),
        (junk.display().to_string(), "not usable as a CA"),
    ] {
        let text = format!(
            "{}{ROUTE}",
            base_config(dir.path(), &format!("upstream_ca = \"{ca}\""))
        );
        std::fs::write(&path, text).unwrap();
        let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
        assert_eq!(o.code, 1, "{ca}: {}", o.stderr);
        assert!(
            o.stderr.contains("server.upstream_ca") && o.stderr.contains(needle),
            "wanted server.upstream_ca and {needle:?} in: {}",
            o.stderr
        );
    }
}

/// The 1-based line of `text` holding `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn check_names_the_line_of_a_bad_url_and_of_a_missing_key_file() {
    for (body, key, marker) in [
        (
            ROUTE.replace("http://127.0.0.1:9", "ftp://127.0.0.1:9"),
            "`routes[0].upstreams[0]`",
            "ftp://",
        ),
        (
            format!("[[issuers]]\nname = \"i\"\nissuer = \"https://i\"\n\nkeys = [\n  {{ kid = \"r\", alg = \"RS256\", pem = \"/nonexistent/key.pem\" }},\n]\n\n{ROUTE}"),
            "`issuers[0].keys[0].pem`: cannot read /nonexistent/key.pem",
            "/nonexistent/key.pem",
        ),
    ] {
        let (o, dir) = check(&body);
        assert_eq!(o.code, 1, "{}", o.stderr);
        let text = std::fs::read_to_string(dir.path().join("gw.toml")).unwrap();
        let want = format!("gw.toml: line {}: {key}", line_with(&text, marker));
        assert!(o.stderr.contains(&want), "wanted {want:?} in: {}", o.stderr);
    }
}

#[test]
fn check_takes_human_durations_and_refuses_what_does_not_fit_the_unit() {
    let (o, _dir) = check(&format!(
        "[revocation]\ncache_ttl_ms = \"1.5s\"\nsubject_ttl_s = \"1day\"\n\n{}",
        ROUTE.replace("auth = \"none\"", "auth = \"none\"\ntimeout_ms = \"2m\"")
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (o, dir) = check(&format!(
        "[revocation]\ncache_ttl_ms = \"1500us\"\n\n{ROUTE}"
    ));
    assert_eq!(o.code, 1, "{}", o.stderr);
    let text = std::fs::read_to_string(dir.path().join("gw.toml")).unwrap();
    for n in [
        "\"1500us\" is not a whole number of milliseconds".to_string(),
        format!("line {}", line_with(&text, "1500us")),
        "cache_ttl_ms".to_string(),
    ] {
        assert!(o.stderr.contains(&n), "wanted {n:?} in: {}", o.stderr);
    }
}

#[test]
fn check_issuer_key_errors() {
    let iss = |keys: &str| {
        format!(
            "[[issuers]]\nname = \"i\"\nissuer = \"https://i\"\nkeys = [{keys}]\n\n{}",
            ROUTE.replace("auth = \"none\"\n", "")
        )
    };
    broken(
        &iss("{ kid = \"h\", alg = \"HS256\", secret_env = \"JWTGATE_TEST_UNSET_VAR\" }"),
        &["issuers[0].keys[0].secret_env", "JWTGATE_TEST_UNSET_VAR"],
    );
    broken(
        &iss(&format!(
            "{{ kid = \"r\", alg = \"RS256\", pem = \"{}\" }}",
            fixture("ec.pub.pem").display()
        )),
        &["issuers[0].keys[0]", "RSA"],
    );
    broken(
        &iss(&format!(
            "{{ kid = \"r\", alg = \"none\", pem = \"{}\" }}",
            fixture("rsa.pub.pem").display()
        )),
        &["issuers[0].keys[0].alg", "none"],
    );
    broken(
        &iss("{ kid = \"r\", alg = \"RS256\", pem = \"/nonexistent.pem\" }"),
        &["issuers[0].keys[0].pem"],
    );
    broken(
        "[[issuers]]\nname = \"i\"\nissuer = \"https://i\"\n\n",
        &["issuers[0]", "jwks_url"],
    );
    broken(&format!("[[issuers]]\nname = \"i\"\nissuer = \"https://i\"\njwks_url = \"file:///etc/passwd\"\n\n{ROUTE}"), &["issuers[0].jwks_url"]);
}

#[test]
fn check_short_hmac_secret_refused() {
    let dir = TempDir::new();
    let text = format!(
        "{}[[issuers]]\nname = \"i\"\nissuer = \"https://i\"\nkeys = [{{ kid = \"h\", alg = \"HS256\", secret_env = \"JWTGATE_TEST_SHORT\" }}]\n\n{}",
        base_config(dir.path(), ""),
        ROUTE.replace("auth = \"none\"\n", "")
    );
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).unwrap();
    let o = jwtgate(
        &["check", "-c", path.to_str().unwrap()],
        &[("JWTGATE_TEST_SHORT", "too-short")],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("issuers[0].keys[0]") && o.stderr.contains("32"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("too-short"), "secret echoed");
}

#[test]
fn check_missing_file_and_env_lookup() {
    let o = jwtgate(&["check", "-c", "/nonexistent/gw.toml"], &[]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("/nonexistent/gw.toml"));
    let o = jwtgate(
        &["check"],
        &[("JWTGATE_CONFIG", "/nonexistent/from-env.toml")],
    );
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("from-env.toml"), "{}", o.stderr);
}

#[test]
fn run_with_broken_config_exits_without_serving() {
    let dir = TempDir::new();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let o = jwtgate(&["-c", path.to_str().unwrap()], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("routes"), "{}", o.stderr);
}

#[test]
fn token_mints_what_was_asked() {
    let key = fixture("rsa.pem");
    let o = jwtgate(
        &[
            "token",
            "--alg",
            "RS256",
            "--key",
            key.to_str().unwrap(),
            "--sub",
            "bob",
            "--kid",
            "r1",
            "--iss",
            "https://i",
            "--aud",
            "api",
            "--scope",
            "a b",
            "--ttl",
            "60",
            "--claim",
            "email=bob@example.com",
            "--claim",
            "level=5",
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let jwt = o.stdout.lines().last().unwrap();
    let mut parts = jwt.split('.');
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "r1");
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["scope"], "a b");
    assert_eq!(claims["level"], 5);
    assert_eq!(claims["email"], "bob@example.com");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
    let o = jwtgate(
        &[
            "token",
            "--alg",
            "none",
            "--key",
            key.to_str().unwrap(),
            "--sub",
            "x",
        ],
        &[],
    );
    assert_eq!(o.code, 1);
    let o = jwtgate(
        &[
            "token",
            "--alg",
            "HS256",
            "--secret-env",
            "JWTGATE_TEST_HS",
            "--sub",
            "x",
        ],
        &[("JWTGATE_TEST_HS", HS_SECRET)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn token_signs_with_a_sec1_ec_key_and_explains_unreadable_ones() {
    let dir = TempDir::new();
    let key = dir.path().join("ec-sec1.pem");
    let pubkey = dir.path().join("ec-sec1.pub.pem");
    // What `openssl ecparam -genkey` writes: an EC PARAMETERS block, then the SEC1 key.
    let ok = Command::new("openssl")
        .args(["ecparam", "-name", "prime256v1", "-genkey", "-out"])
        .arg(&key)
        .status()
        .expect("openssl is needed (apt-get install -y openssl)")
        .success();
    assert!(ok);
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(
        pem.contains("BEGIN EC PARAMETERS") && pem.contains("BEGIN EC PRIVATE KEY"),
        "{pem}"
    );
    assert!(Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&pubkey)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());
    let mint = |alg: &str, key: &std::path::Path| {
        jwtgate(
            &[
                "token",
                "--alg",
                alg,
                "--key",
                key.to_str().unwrap(),
                "--sub",
                "sec1",
            ],
            &[],
        )
    };
    let o = mint("ES256", &key);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let jwt = o.stdout.lines().last().unwrap();
    let dk = jsonwebtoken::DecodingKey::from_ec_pem(&std::fs::read(&pubkey).unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.validate_aud = false;
    let got = jsonwebtoken::decode::<serde_json::Value>(jwt, &dk, &v).unwrap_or_else(|e| {
        panic!("the minted token does not verify with the key's public half: {e}")
    });
    assert_eq!(got.claims["sub"], "sec1");

    // What cannot sign: one line each, naming the problem.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key\n").unwrap();
    for (alg, file, needle) in [
        ("ES256", pubkey.clone(), "no PEM private key found"),
        ("ES256", garbage.clone(), "no PEM private key found"),
        ("ES384", key.clone(), "wrong curve"),
        (
            "RS256",
            key.clone(),
            "an EC key (SEC1), which cannot sign RS256",
        ),
        (
            "EdDSA",
            key.clone(),
            "an EC key (SEC1), which cannot sign EdDSA",
        ),
        ("ES256", fixture("rsa.pem"), "cannot sign ES256"),
    ] {
        let o = mint(alg, &file);
        assert_eq!(o.code, 1, "{alg} {}: {}", file.display(), o.stdout);
        assert!(o.stdout.is_empty());
        assert!(
            o.stderr.starts_with("jwtgate: --key") && o.stderr.contains(needle),
            "{alg} {}: {}",
            file.display(),
            o.stderr
        );
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    }
    // PKCS#8 EC keys still work.
    assert_eq!(mint("ES256", &fixture("ec.pem")).code, 0);
}

#[test]
fn check_refuses_listeners_that_share_an_address() {
    let dir = TempDir::new();
    let path = dir.path().join("gw.toml");
    for (listen, needle) in [
        (
            "http = \"127.0.0.1:18080\"\nadmin = \"127.0.0.1:19901\"\nmetrics = \"127.0.0.1:19901\"",
            "`listen.metrics`: 127.0.0.1:19901 is already used by another listener (listen.admin",
        ),
        (
            "http = \"127.0.0.1:18080\"\nadmin = \"0.0.0.0:19901\"\nmetrics = \"127.0.0.1:19901\"",
            "`listen.metrics`: 127.0.0.1:19901 is already used by another listener (listen.admin = 0.0.0.0:19901)",
        ),
        (
            "http = \"127.0.0.1:18080\"\nadmin = \"127.0.0.1:19901\"\nmetrics = \"0.0.0.0:18080\"",
            "listen.http = 127.0.0.1:18080",
        ),
    ] {
        std::fs::write(&path, format!("[listen]\n{listen}\n{ROUTE}")).unwrap();
        let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
        assert_eq!(o.code, 1, "{listen}: {}", o.stdout);
        assert!(o.stderr.contains(needle), "{listen}: {}", o.stderr);
    }
    // Distinct addresses, and the same port on another address of the host, are fine.
    std::fs::write(
        &path,
        format!("[listen]\nhttp = \"127.0.0.1:18080\"\nadmin = \"127.0.0.1:19901\"\nmetrics = \"127.0.0.2:19901\"\n{ROUTE}"),
    )
    .unwrap();
    let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("metrics=127.0.0.2:19901"), "{}", o.stdout);
}

#[test]
fn gen_cert_writes_a_usable_pair() {
    let dir = TempDir::new();
    let o = jwtgate(
        &[
            "gen-cert",
            "--out",
            dir.path().to_str().unwrap(),
            "--host",
            "gw.local",
            "--host",
            "127.0.0.1",
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let key = dir.path().join("gw.local.key");
    assert!(dir.path().join("gw.local.crt").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, format!("[listen]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tls]\ncert = \"gw.local.crt\"\nkey = \"gw.local.key\"\n{ROUTE}")).unwrap();
    let o = jwtgate(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(
        o.code, 0,
        "relative cert paths resolve next to the config: {}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_request_then_exits_zero() {
    let up = EchoUpstream::start().await;
    let gw = BinGateway::open_route(&up, "drain_s = 10");
    let cl = Client::plain();
    let url = format!("http://{}/slow/1000", gw.http);
    let inflight = tokio::spawn(async move { cl.get(&url, &[]).await });
    for _ in 0..300 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1);
    gw.signal("-TERM");
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow done");
    let (code, logs) = gw.exit().await;
    assert_eq!(code, Some(0));
    let v = access_line(&logs, "/slow/1000");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "r");
    assert!(v["request_id"].as_str().is_some_and(|s| s.len() > 4));
    assert!(v["duration_us"].as_u64().unwrap() >= 900_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_log_line_is_written_before_exit() {
    // Lines go through a background writer: none may be lost, even when the process is
    // stopped right after a burst.
    let up = EchoUpstream::start().await;
    let gw = BinGateway::open_route(&up, "");
    let (cl, http) = (Client::plain(), gw.http.clone());
    let n = 500;
    let mut tasks = Vec::new();
    for i in 0..n {
        let (cl, url) = (cl.clone(), format!("http://{http}/burst/{i}"));
        tasks.push(tokio::spawn(async move { cl.get(&url, &[]).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    gw.signal("-TERM");
    let (code, logs) = gw.exit().await;
    assert_eq!(code, Some(0));
    let mut seen: Vec<u32> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v["path"]
                .as_str()
                .and_then(|p| p.strip_prefix("/burst/"))
                .and_then(|i| i.parse().ok())
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<u32>>());
    assert!(
        !logs.iter().any(|l| l.contains('\u{1b}')),
        "colour codes written to a pipe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_names_the_client_behind_trusted_proxies() {
    let up = EchoUpstream::start().await;
    let gw = BinGateway::open_route(&up, "trusted_proxy_hops = 1");
    let cl = Client::plain();
    let url = |p: &str| format!("http://{}{p}", gw.http);
    // The load balancer appended the address it saw; the entry left of it is the client's
    // claim and is not believed.
    let spoofed = [("x-forwarded-for", "6.6.6.6, 203.0.113.7")];
    assert_eq!(cl.get(&url("/lb"), &spoofed).await.status, 200);
    assert_eq!(cl.get(&url("/direct"), &[]).await.status, 200);
    assert_eq!(
        cl.get(&url("/junk"), &[("x-forwarded-for", "unknown")])
            .await
            .status,
        200
    );
    gw.signal("-TERM");
    let (code, logs) = gw.exit().await;
    assert_eq!(code, Some(0));
    assert_eq!(access_line(&logs, "/lb")["client"], "203.0.113.7");
    assert_eq!(access_line(&logs, "/direct")["client"], "127.0.0.1");
    assert_eq!(access_line(&logs, "/junk")["client"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_client_is_the_peer_by_default() {
    let up = EchoUpstream::start().await;
    let gw = BinGateway::open_route(&up, "");
    let r = Client::plain()
        .get(
            &format!("http://{}/x", gw.http),
            &[("x-forwarded-for", "203.0.113.7")],
        )
        .await;
    assert_eq!(r.status, 200);
    gw.signal("-TERM");
    let (code, logs) = gw.exit().await;
    assert_eq!(code, Some(0));
    assert_eq!(access_line(&logs, "/x")["client"], "127.0.0.1");
}

/// Run the binary with `args`; killed (and the test failed) if it is still running after
/// `limit`: for commands that must exit on their own.
fn jwtgate_within(args: &[&str], limit: Duration) -> Out {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("JWTGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "jwtgate {args:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_ports_fails_and_the_first_keeps_serving() {
    let up = EchoUpstream::start().await;
    let [http, admin, other] = free_ports();
    // Two workers: the first instance's port is shared by SO_REUSEPORT sockets.
    let gw = BinGateway::listening(
        &up,
        &format!("http = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\""),
        "worker_threads = 2",
    );
    let second = jwtgate_within(
        &["run", "-c", gw.config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(second.code, 1, "stderr: {}", second.stderr);
    let want = format!("cannot listen on 127.0.0.1:{http} (listen.http): address already in use");
    assert!(
        second.stderr.contains(&want),
        "wanted {want:?} in: {}",
        second.stderr
    );
    // The admin port alone taken: named too (a worker-less, single-socket listener).
    let dir = TempDir::new();
    let path = dir.path().join("gw.toml");
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace(&format!(":{http}\""), &format!(":{other}\""));
    std::fs::write(&path, text).unwrap();
    let second = jwtgate_within(
        &["run", "-c", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(second.code, 1, "stderr: {}", second.stderr);
    let want = format!("cannot listen on 127.0.0.1:{admin} (listen.admin): address already in use");
    assert!(
        second.stderr.contains(&want),
        "wanted {want:?} in: {}",
        second.stderr
    );
    // The first still answers every request (none went to a second copy), on both workers.
    let cl = Client::plain();
    for i in 0..20 {
        let r = cl.get(&format!("http://{}/still/{i}", gw.http), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), 20);
    gw.signal("-TERM");
    let (code, _) = gw.exit().await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exit_codes_follow_readyz_and_healthz() {
    let up = EchoUpstream::start().await;
    let [admin, dead] = free_ports();
    let gw = BinGateway::listening(
        &up,
        &format!("http = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:{admin}\""),
        "",
    );
    // A copy of the config: the gateway's own goes with it when it exits.
    let dir = TempDir::new();
    let copy = dir.path().join("probe.toml");
    std::fs::copy(&gw.config, &copy).unwrap();
    let config = copy.to_str().unwrap().to_string();
    let probe = |extra: &[&str]| {
        let mut args = vec!["healthcheck", "-c", &config];
        args.extend_from_slice(extra);
        jwtgate_within(&args, Duration::from_secs(15))
    };
    // Ready (no issuers, memory store); 0.0.0.0 is probed through loopback.
    let o = probe(&[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout.trim(),
        format!("healthy: http://127.0.0.1:{admin}/readyz: 200 OK")
    );
    let o = probe(&["--live"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("/healthz: 200 OK"), "{}", o.stdout);
    gw.signal("-TERM");
    assert_eq!(gw.exit().await.0, Some(0));
    // Nothing listens any more: 1, and why.
    let o = probe(&[]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with(&format!(
            "jwtgate: unhealthy: http://127.0.0.1:{admin}/readyz: "
        )),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);

    // Serving but not ready (the issuer's JWKS never loads): /readyz 503 is 1 with the
    // body's reason, /healthz still 0.
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:{admin}\"\n[server]\nlog_format = \"json\"\n[[issuers]]\nname = \"down\"\nissuer = \"https://idp.test\"\njwks_url = \"http://127.0.0.1:{dead}/jwks\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
            up.url()
        ),
    )
    .unwrap();
    let (mut child, _, lines) = spawn_gateway(&path);
    let _drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let path = path.to_str().unwrap();
    let o = jwtgate_within(&["healthcheck", "-c", path], Duration::from_secs(15));
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.contains("/readyz: 503 Service Unavailable: ")
            && o.stderr.contains("\"ready\":false"),
        "{}",
        o.stderr
    );
    let o = jwtgate_within(
        &["healthcheck", "--live", "-c", path],
        Duration::from_secs(15),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let _ = child.kill();
    let _ = child.wait();

    // A config without a usable listen.admin: 1, naming the file and key.
    std::fs::write(
        dir.path().join("bad.toml"),
        "[listen]\nadmin = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    let o = jwtgate_within(
        &["healthcheck", "-c", bad.to_str().unwrap()],
        Duration::from_secs(15),
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("bad.toml") && o.stderr.contains("listen.admin"),
        "{}",
        o.stderr
    );
}

#[test]
fn demo_walkthrough_succeeds() {
    let o = jwtgate(&["demo", "--once"], &[]);
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("demo OK"));
    assert!(!o.stdout.contains("FAIL"));
    assert!(o.stdout.contains("[ok  ] browser sign-in on /app"));
    assert!(o.stdout.contains("Open http://127.0.0.1:"));
}

/// A self-signed certificate for localhost (rcgen) that expires `days` from now, and its
/// key, written to `dir`: (cert path, key path).
fn cert_expiring_in(dir: &std::path::Path, days: u64) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.not_before = epoch + (now - Duration::from_secs(3600));
    p.not_after = epoch + now + Duration::from_secs(days * 86_400);
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (dir.join("soon.crt"), dir.join("soon.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_within_14_days_is_warned_about_at_start() {
    for (days, warned) in [(10, true), (60, false)] {
        let dir = TempDir::new();
        let (cert, key) = cert_expiring_in(dir.path(), days);
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            format!("[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nlog_format = \"json\"\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n{ROUTE}"),
        )
        .unwrap();
        let (mut child, _, before, _lines) = spawn_gateway_logged(&path);
        let _ = child.kill();
        let _ = child.wait();
        let warning: Vec<serde_json::Value> = before
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "TLS certificate expires soon; renew it (the new files are picked up without a restart)")
            .collect();
        assert_eq!(
            warning.len(),
            usize::from(warned),
            "{days} days: {before:?}"
        );
        if let [w] = warning.as_slice() {
            assert_eq!(w["level"], "WARN", "{w}");
            // Whole days left: the certificate's notAfter has whole seconds.
            let left = w["days_left"].as_u64().unwrap();
            assert!(left == days || left == days - 1, "{w}");
            assert_eq!(w["cert"], cert.as_str(), "{w}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let a = EchoUpstream::named("a").await;
    let b = EchoUpstream::named("b").await;
    let dir = TempDir::new();
    let path = dir.path().join("gw.toml");
    let head = "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nlog_format = \"json\"\n";
    let route = |name: &str, prefix: &str, up: &str| {
        format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstreams = [\"{up}\"]\nauth = \"none\"\n")
    };
    std::fs::write(&path, format!("{head}{}", route("a", "/a", &a.url()))).unwrap();
    let (child, http, lines) = spawn_gateway(&path);
    let _drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let cl = Client::plain();
    assert_eq!(cl.get(&format!("http://{http}/b/x"), &[]).await.status, 404);
    std::fs::write(
        &path,
        format!(
            "{head}{}{}",
            route("a", "/a", &a.url()),
            route("b", "/b", &b.url())
        ),
    )
    .unwrap();
    signal(&child, "-HUP");
    let took = eventually(Duration::from_secs(5), || async {
        cl.get(&format!("http://{http}/b/x"), &[]).await.status == 200
    })
    .await;
    assert!(took.is_some(), "SIGHUP did not apply the new route");
    // A broken file on SIGHUP: refused, the process keeps serving the last good config.
    std::fs::write(&path, "[listen]\n").unwrap();
    signal(&child, "-HUP");
    assert_eq!(cl.get(&format!("http://{http}/a/x"), &[]).await.status, 200);
    assert_eq!(cl.get(&format!("http://{http}/b/x"), &[]).await.status, 200);
    signal(&child, "-TERM");
    assert_eq!(exit_code(child).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_at_runtime_through_the_admin_api() {
    let up = EchoUpstream::start().await;
    let [admin] = free_ports();
    std::env::set_var("JWTGATE_TEST_CLI_LOGLEVEL_ADMIN", "loglevel-admin-token");
    let gw = BinGateway::listening(
        &up,
        &format!("http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:{admin}\""),
        "[admin]\ntoken_env = \"JWTGATE_TEST_CLI_LOGLEVEL_ADMIN\"",
    );
    let cl = Client::plain();
    let url = |p: &str| format!("http://{}{p}", gw.http);
    let level_url = format!("http://127.0.0.1:{admin}/log-level");
    let auth = [("authorization", "Bearer loglevel-admin-token")];
    let set = |body: &'static str| {
        let (cl, level_url) = (cl.clone(), level_url.clone());
        async move {
            cl.send(
                http::Method::POST,
                &level_url,
                &[
                    ("authorization", "Bearer loglevel-admin-token"),
                    ("content-type", "application/json"),
                ],
                jwtgate::body::full(body),
            )
            .await
        }
    };
    // The binary starts with RUST_LOG=info (spawn_gateway).
    let now = cl.get(&level_url, &auth).await;
    assert_eq!(now.status, 200, "{}", now.text());
    assert_eq!(now.json()["level"], "info");
    assert_eq!(cl.get(&url("/before"), &[]).await.status, 200);
    let r = set(r#"{"level": "warn"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["previous"], "info");
    assert_eq!(cl.get(&url("/quiet"), &[]).await.status, 200);
    // A filter tracing cannot parse is refused and changes nothing.
    let r = set(r#"{"level": "jwtgate=loudest"}"#).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cl.get(&level_url, &auth).await.json()["level"], "warn");
    assert_eq!(cl.get(&url("/quiet2"), &[]).await.status, 200);
    // Without the token: 401, level unchanged.
    let r = cl
        .send(
            http::Method::POST,
            &format!("{level_url}?level=debug"),
            &[],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 401);
    // ?level= works as well as the JSON body.
    let r = cl
        .send(
            http::Method::POST,
            &format!("{level_url}?level=info"),
            &auth,
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cl.get(&url("/after"), &[]).await.status, 200);
    gw.signal("-TERM");
    let (code, logs) = gw.exit().await;
    assert_eq!(code, Some(0));
    assert!(
        logs.iter()
            .any(|l| l.contains("\"message\":\"jwtgate ready\"")),
        "no ready line: {logs:?}"
    );
    access_line(&logs, "/before");
    access_line(&logs, "/after");
    let paths: Vec<String> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["path"].as_str().map(str::to_string))
        .collect();
    assert!(
        !paths.iter().any(|p| p.starts_with("/quiet")),
        "access lines written at level warn: {paths:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("log level changed on the admin API")
                && l.contains("\"filter\":\"warn\"")),
        "the change itself is logged"
    );
}

/// `line` with the value of each of `keys` (up to the next space) written as `*`.
fn masked(line: &str, keys: &[&str]) -> String {
    let mut out = line.to_string();
    for k in keys {
        let at = out
            .find(&format!(" {k}="))
            .unwrap_or_else(|| panic!("no {k} in {line}"));
        let start = at + k.len() + 2;
        let end = out[start..].find(' ').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "*");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_log_lines_are_what_the_default_format_writes() {
    // With text logs (the default), the access line skips `tracing`'s event and goes
    // straight to the log's writer: the same text, every line out before exit, and
    // `POST /log-level` still turns the lines off.
    let up = EchoUpstream::start().await;
    let [http, admin] = free_ports();
    let dir = TempDir::new();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\"\n[server]\nlog_format = \"text\"\n[admin]\ntoken_env = \"JWTGATE_TEST_CLI_TEXTLOG_ADMIN\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("JWTGATE_TEST_CLI_TEXTLOG_ADMIN", "textlog-admin-token")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    loop {
        let line = lines
            .next()
            .expect("gateway exited before serving")
            .unwrap();
        if line.contains("jwtgate serving") {
            break;
        }
    }
    let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let cl = Client::plain();
    let url = |p: &str| format!("http://127.0.0.1:{http}{p}");
    assert_eq!(
        cl.get(&url("/plain"), &[("user-agent", "ua/1")])
            .await
            .status,
        200
    );
    let odd = r#"say "hi" \o/"#;
    let r = cl.get(&url("/odd"), &[("user-agent", odd)]).await;
    assert_eq!(r.status, 200);
    let n = 100;
    let mut tasks = Vec::new();
    for i in 0..n {
        let (cl, url) = (cl.clone(), url(&format!("/burst/{i}")));
        tasks.push(tokio::spawn(async move { cl.get(&url, &[]).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let r = cl
        .send(
            http::Method::POST,
            &format!("http://127.0.0.1:{admin}/log-level?level=warn"),
            &[("authorization", "Bearer textlog-admin-token")],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cl.get(&url("/quiet"), &[]).await.status, 200);
    signal(&child, "-TERM");
    assert_eq!(exit_code(child).await, Some(0));
    let logs = logs.join().unwrap();
    let access: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains(" jwtgate::access: "))
        .collect();
    let line = |path: &str| {
        let want = format!(" path=\"{path}\" ");
        access
            .iter()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no access line for {path}: {logs:?}"))
    };
    // `2026-12-04T13:17:52.123456Z  INFO jwtgate::access: front="proxy" ...`
    let plain = line("/plain");
    let (time, rest) = plain.split_at(27);
    assert!(
        time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{plain}"
    );
    let upstream = up.url().trim_start_matches("http://").to_string();
    assert_eq!(
        masked(rest, &["duration_us", "request_id", "bytes_sent"]),
        format!("  INFO jwtgate::access: front=\"proxy\" method=\"GET\" path=\"/plain\" route=\"r\" client=127.0.0.1 status=200 duration_us=* request_id=* sub=\"-\" error=\"\" upstream_host=\"{upstream}\" bytes_received=0 bytes_sent=* user_agent=\"ua/1\""),
    );
    assert!(
        line("/odd").ends_with(&format!(" user_agent={odd:?}")),
        "{}",
        line("/odd")
    );
    let mut seen: Vec<u32> = access
        .iter()
        .filter_map(|l| {
            let (_, p) = l.split_once(" path=\"/burst/")?;
            p.split_once('"')?.0.parse().ok()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<u32>>());
    assert!(
        !access.iter().any(|l| l.contains("path=\"/quiet\"")),
        "an access line written at level warn: {access:?}"
    );
}

/// A verified-token cache of 512 MiB or more runs with the heap in huge pages: where the
/// kernel's transparent huge pages are `madvise`, the process starts itself again with
/// jemalloc's `thp:always` in `_RJEM_MALLOC_CONF` (added to the operator's options, and said
/// at start), and serves as before. A small cache, `JWTGATE_HUGE_PAGES=off`, the operator's
/// own `thp:` or another kernel setting leaves it alone; `JWTGATE_HUGE_PAGES=on` asks
/// whatever the size; another value is warned about and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_token_cache_runs_with_huge_pages() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .expect("this test reads the kernel's transparent huge page setting");
    let madvise = thp.contains("[madvise]");
    let up = EchoUpstream::start().await;
    // `[server]` lines, the environment, the `_RJEM_MALLOC_CONF` the process runs with
    // (`None`: none), whether huge pages are said to be on, and whether a bad
    // `JWTGATE_HUGE_PAGES` is warned about.
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        bool,
        bool,
    );
    let asked = |conf: &'static str| madvise.then_some(conf);
    let cases: [Case; 7] = [
        (
            "token_cache_mib = 600",
            &[],
            asked("thp:always"),
            madvise,
            false,
        ),
        ("", &[], None, false, false),
        (
            "token_cache_mib = 600",
            &[("JWTGATE_HUGE_PAGES", "off")],
            None,
            false,
            false,
        ),
        (
            "",
            &[("JWTGATE_HUGE_PAGES", "on")],
            asked("thp:always"),
            madvise,
            false,
        ),
        (
            "token_cache_mib = 600",
            &[("JWTGATE_HUGE_PAGES", "yes")],
            None,
            false,
            true,
        ),
        // The operator's options are kept, and huge pages added to them.
        (
            "token_cache_mib = 600",
            &[("_RJEM_MALLOC_CONF", "narenas:2")],
            Some(if madvise {
                "narenas:2,thp:always"
            } else {
                "narenas:2"
            }),
            madvise,
            false,
        ),
        // The operator's own `thp` is theirs.
        (
            "token_cache_mib = 600",
            &[("_RJEM_MALLOC_CONF", "thp:never")],
            Some("thp:never"),
            false,
            false,
        ),
    ];
    for (server, env, conf, said_on, warns) in cases {
        let listen = "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"";
        let gw = BinGateway::listening_env(&up, listen, server, env);
        let environ = std::fs::read(format!("/proc/{}/environ", gw.pid())).unwrap();
        let running = environ
            .split(|&b| b == 0)
            .find_map(|v| v.strip_prefix(b"_RJEM_MALLOC_CONF="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let case = format!("[server] {server:?}, env {env:?}, THP {}", thp.trim());
        assert_eq!(running.as_deref(), conf, "{case}");
        let said = gw.before.iter().any(|l| l.contains("heap in huge pages"));
        assert_eq!(said, said_on, "{case}: {:?}", gw.before);
        let warned = gw
            .before
            .iter()
            .any(|l| l.contains("JWTGATE_HUGE_PAGES is not on, off"));
        assert_eq!(warned, warns, "{case}: {:?}", gw.before);
        let r = Client::plain()
            .get(&format!("http://{}/after-start", gw.http), &[])
            .await;
        assert_eq!(r.status, 200, "{case}");
        gw.stop().await;
    }
}
