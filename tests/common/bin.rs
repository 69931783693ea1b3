//! The `jwtgate` binary as a child process with JSON logs: started on a config file, ready
//! at its "jwtgate serving" line, stopped with a signal, every log line it wrote kept.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{EchoUpstream, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_jwtgate");

/// The binary serving a config, with its log lines collected until it exits.
pub struct BinGateway {
    /// Taken by `exit`; killed on drop if still there (a test that failed half way).
    child: Option<Child>,
    /// The plain-HTTP listener's address.
    pub http: String,
    /// The forward-auth listener's address (`-` without one).
    pub authz: String,
    /// The admin listener's address (`-` without one).
    pub admin: String,
    logs: Option<std::thread::JoinHandle<Vec<String>>>,
    /// The lines logged before "jwtgate serving" (start-up).
    pub before: Vec<String>,
    /// The config file it was started with.
    pub config: PathBuf,
    pub dir: TempDir,
}

impl BinGateway {
    /// One open route to `up`, JSON logs, and `server_extra` in `[server]`.
    pub fn open_route(up: &EchoUpstream, server_extra: &str) -> BinGateway {
        BinGateway::listening(
            up,
            "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
            server_extra,
        )
    }

    /// One open route to `up` on the `[listen]` addresses given as TOML lines.
    pub fn listening(up: &EchoUpstream, listen: &str, server_extra: &str) -> BinGateway {
        let routes = format!(
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.url()
        );
        BinGateway::start(listen, server_extra, &routes)
    }

    /// `listening`, with these environment variables set for the process.
    pub fn listening_env(
        up: &EchoUpstream,
        listen: &str,
        server_extra: &str,
        env: &[(&str, &str)],
    ) -> BinGateway {
        let routes = format!(
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.url()
        );
        BinGateway::start_env(listen, server_extra, &routes, env)
    }

    /// `[listen]` lines, `[server]` lines (JSON logs are added), then `body` (issuers,
    /// routes, ...). `dir` is made first, for files `body` refers to.
    pub fn start(listen: &str, server_extra: &str, body: &str) -> BinGateway {
        BinGateway::start_env(listen, server_extra, body, &[])
    }

    /// `start`, with these environment variables set for the process.
    pub fn start_env(
        listen: &str,
        server_extra: &str,
        body: &str,
        env: &[(&str, &str)],
    ) -> BinGateway {
        let dir = TempDir::new();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            format!("[listen]\n{listen}\n[server]\nlog_format = \"json\"\n{server_extra}\n{body}"),
        )
        .unwrap();
        let (child, serving, before, lines) = spawn(&path, env);
        let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        let addr = |k: &str| serving[k].as_str().unwrap_or("-").to_string();
        BinGateway {
            child: Some(child),
            http: addr("http"),
            authz: addr("authz"),
            admin: addr("admin"),
            logs: Some(logs),
            before,
            config: path,
            dir,
        }
    }

    /// The gateway process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Send `sig` (`-TERM`, `-HUP`) to the gateway process.
    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().unwrap(), sig);
    }

    /// Wait for the process to exit: its exit code and every log line it wrote.
    pub async fn exit(mut self) -> (Option<i32>, Vec<String>) {
        let code = exit_code(self.child.take().unwrap()).await;
        (code, self.logs.take().unwrap().join().unwrap())
    }

    /// Stop it (SIGTERM, which writes every pending log line) and return its log lines.
    pub async fn stop(self) -> Vec<String> {
        self.signal("-TERM");
        let (code, logs) = self.exit().await;
        assert_eq!(code, Some(0), "{logs:?}");
        logs
    }
}

impl Drop for BinGateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Send `sig` (`-TERM`, `-HUP`) to a process.
pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

pub async fn exit_code(mut child: Child) -> Option<i32> {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
        .code()
}

pub type LogLines = std::io::Lines<BufReader<std::process::ChildStderr>>;

/// Start the binary on `config` (JSON logs) and wait for its "jwtgate serving" line, which
/// carries the bound plain-HTTP address: the readiness signal.
pub fn spawn_gateway(config: &Path) -> (Child, String, LogLines) {
    let (child, http, _, lines) = spawn_gateway_logged(config);
    (child, http, lines)
}

/// `spawn_gateway`, also returning the lines logged before "jwtgate serving".
pub fn spawn_gateway_logged(config: &Path) -> (Child, String, Vec<String>, LogLines) {
    let (child, serving, before, lines) = spawn(config, &[]);
    let http = serving["http"].as_str().unwrap().to_string();
    (child, http, before, lines)
}

/// Start the binary on `config` with `env` set: the whole "jwtgate serving" line (every
/// listener's address), the lines before it, and the rest to come.
fn spawn(config: &Path, env: &[(&str, &str)]) -> (Child, serde_json::Value, Vec<String>, LogLines) {
    let mut child = Command::new(BIN)
        .args(["run", "-c", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut before = Vec::new();
    let serving = loop {
        let line = lines
            .next()
            .expect("gateway exited before serving")
            .unwrap();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["message"] == "jwtgate serving" {
                break v;
            }
        }
        before.push(line);
    };
    (child, serving, before, lines)
}

/// The access-log line of the request for `path`.
pub fn access_line(logs: &[String], path: &str) -> serde_json::Value {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["path"] == path)
        .unwrap_or_else(|| panic!("no access-log line for {path}"))
}
