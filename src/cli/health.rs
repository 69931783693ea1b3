//! `jwtgate healthcheck`: a container HEALTHCHECK without curl in the image. Reads
//! `listen.admin` from the config file, GETs `/readyz` (or `/healthz`), and turns the answer
//! into one line and an exit code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use http_body_util::BodyExt;

/// Which admin endpoint to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/readyz`: keys loaded and the revocation store answering.
    Ready,
    /// `/healthz`: the process serves.
    Live,
}

impl Probe {
    fn path(self) -> &'static str {
        match self {
            Probe::Ready => "/readyz",
            Probe::Live => "/healthz",
        }
    }
}

/// The address `listen.admin` names in the config file at `path`, as a client reaches it
/// (an unspecified address, `0.0.0.0` or `::`, through loopback).
///
/// Only `[listen] admin` is read, not the whole config through `Config::load`: the probe must
/// not need the gateway's secrets (issuer keys, admin token) or fail on a key file the running
/// process loaded long ago; it answers whether the running process is healthy.
pub fn admin_address(path: &Path) -> Result<SocketAddr, String> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    let admin = doc
        .get("listen")
        .and_then(|l| l.get("admin"))
        .ok_or_else(|| format!("{file}: listen.admin is not set"))?;
    let addr: SocketAddr = admin.as_str().and_then(|a| a.parse().ok()).ok_or_else(|| {
        format!("{file}: listen.admin: {admin:?} is not an address like \"127.0.0.1:9901\"")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "{file}: listen.admin has port 0: the bound port is not known to a probe"
        ));
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

/// GET the probe's endpoint on `admin` within `timeout`. `Ok` with the line to print when it
/// answers 200; `Err` with the reason otherwise (status and body, or why there was none).
pub async fn check(admin: SocketAddr, probe: Probe, timeout: Duration) -> Result<String, String> {
    let url = format!("http://{admin}{}", probe.path());
    let req = http::Request::get(&url)
        .body(crate::net::body::empty())
        .map_err(|e| format!("{url}: {e}"))?;
    let client = crate::net::Client::new(1);
    let answer = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    };
    let (status, body) = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(format!("{url}: {e}")),
        Err(_) => return Err(format!("{url}: no answer within {timeout:?}")),
    };
    // One line whatever the body (JSON from jwtgate; anything from something else).
    let body: String = String::from_utf8_lossy(&body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect();
    if status == http::StatusCode::OK {
        Ok(format!("{url}: {status}"))
    } else {
        Err(format!("{url}: {status}: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(listen: &str) -> Result<SocketAddr, String> {
        let dir = std::env::temp_dir().join(format!("jwtgate-health-{}", crate::ids::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, listen).unwrap();
        let r = admin_address(&path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn admin_address_is_read_and_made_reachable() {
        assert_eq!(
            addr("[listen]\nadmin = \"127.0.0.1:9901\"\n"),
            Ok("127.0.0.1:9901".parse().unwrap())
        );
        assert_eq!(
            addr("[listen]\nadmin = \"0.0.0.0:9901\"\n[[routes]]\nname = \"x\"\n"),
            Ok("127.0.0.1:9901".parse().unwrap())
        );
        assert_eq!(
            addr("[listen]\nadmin = \"[::]:9901\"\n"),
            Ok("[::1]:9901".parse().unwrap())
        );
        for (text, needle) in [
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n",
                "listen.admin is not set",
            ),
            ("[listen]\nadmin = \"localhost:x\"\n", "not an address"),
            ("[listen]\nadmin = \"127.0.0.1:0\"\n", "port 0"),
            ("[listen\n", "gw.toml"),
        ] {
            let e = addr(text).unwrap_err();
            assert!(e.contains(needle) && e.contains("gw.toml"), "{e}");
        }
    }
}
