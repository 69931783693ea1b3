//! The `jwtgate` binary as a process: started on a config file (JSON logs), its log lines
//! collected, signalled, and waited for.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::{EchoUpstream, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_jwtgate");

/// The JSON access-log line of the request for `path`.
pub fn access_line(logs: &[String], path: &str) -> serde_json::Value {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["path"] == path)
        .unwrap_or_else(|| panic!("no access-log line for {path}"))
}

/// The binary serving one open route, with its log lines collected until it exits.
pub struct BinGateway {
    /// Taken by `exit`; killed on drop if still there (a test that failed half way).
    pub child: Option<std::process::Child>,
    pub http: String,
    pub logs: Option<std::thread::JoinHandle<Vec<String>>>,
    /// The config file it was started with.
    pub config: std::path::PathBuf,
    _dir: TempDir,
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
        BinGateway::listening_env(up, listen, server_extra, &[])
    }

    /// `listening`, with these environment variables set for the process.
    pub fn listening_env(
        up: &EchoUpstream,
        listen: &str,
        server_extra: &str,
        env: &[(&str, &str)],
    ) -> BinGateway {
        let dir = TempDir::new();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            format!("[listen]\n{listen}\n[server]\nlog_format = \"json\"\n{server_extra}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n", up.url()),
        )
        .unwrap();
        let (child, http, lines) = spawn_gateway_env(&path, env);
        let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        BinGateway {
            child: Some(child),
            http,
            logs: Some(logs),
            config: path,
            _dir: dir,
        }
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
}

impl Drop for BinGateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Send `sig` (`-TERM`, `-HUP`) to the gateway process.
pub fn signal(child: &std::process::Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

pub async fn exit_code(mut child: std::process::Child) -> Option<i32> {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
        .code()
}

pub type LogLines = std::io::Lines<BufReader<std::process::ChildStderr>>;

/// Start the binary on `config` (JSON logs) and wait for its "jwtgate serving" line, which
/// carries the bound plain-HTTP address: the readiness signal.
pub fn spawn_gateway(config: &std::path::Path) -> (std::process::Child, String, LogLines) {
    spawn_gateway_env(config, &[])
}

/// `spawn_gateway` with these environment variables set for the process.
pub fn spawn_gateway_env(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String, LogLines) {
    let mut child = Command::new(BIN)
        .args(["run", "-c", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let http = loop {
        let line = lines
            .next()
            .expect("gateway exited before serving")
            .unwrap();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["message"] == "jwtgate serving" {
                break v["http"].as_str().unwrap().to_string();
            }
        }
    };
    (child, http, lines)
}
