//! Leaked-token detection (`[anomaly]`, fed in step 4 of the request path): per token
//! (issuer + jti, or issuer + sub without one) and fixed window, how many requests it made
//! and from how many client networks. A token over either limit is logged, or with
//! `action = "revoke"` put on the shared revocation list (`revocation` owns the list; this
//! module only decides).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::clock::now_unix;
use crate::config::Anomaly;
use crate::error::{GatewayError, TokenError};
use crate::identity::auth::Verified;
use crate::identity::revocation::Revocations;

/// Why a token was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Requests in this window.
    Requests(u64),
    /// Distinct client networks in this window.
    Networks(usize),
}

/// A finding, and whether it is the first for this token in this window.
#[derive(Debug, Clone, Copy)]
pub struct Flagged {
    pub finding: Finding,
    pub first: bool,
}

/// Most tokens whose windows are kept at once (per replica); the least recently used go
/// first when more are active.
pub const MAX_WINDOWS: u64 = 100_000;

/// One token's counts in its current window, in the detector's own cache under the token's
/// `Verified::token_id`: neither the token's bytes (an ECDSA twin is the same token) nor the
/// verification cache's life (key rotations, refetches) decide when it starts afresh.
#[derive(Default, Debug)]
pub struct Window {
    /// Unix time the window began (0: never used).
    started: AtomicI64,
    requests: AtomicU64,
    /// At most `max_networks + 1` entries (see `network`): enough to know the limit is
    /// passed.
    networks: Mutex<Vec<u64>>,
    /// `networks.len()`, and the network of the last request (0: none): a request from the
    /// same network as the one before, the usual case, takes no lock.
    seen: AtomicUsize,
    last: AtomicU64,
    flagged: AtomicBool,
}

impl Window {
    /// Start a new window when the current one is over (the first request of a token
    /// starts its first). Requests racing with the reset may be lost from the new count.
    fn roll(&self, now: i64, length: i64) {
        let started = self.started.load(Ordering::Acquire);
        if started != 0 && now - started < length {
            return;
        }
        if self
            .started
            .compare_exchange(started, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.networks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.seen.store(0, Ordering::Relaxed);
            self.last.store(0, Ordering::Relaxed);
            self.flagged.store(false, Ordering::Release);
        }
    }
}

pub struct Detector {
    cfg: Anomaly,
    /// Windows by `Verified::token_id`. An entry unused for a whole window holds nothing
    /// that would still count, so it goes after `window` idle.
    windows: moka::sync::Cache<[u8; 32], Arc<Window>>,
    /// The largest `leeway_s`: a revoked jti stays on the list until `exp` plus this.
    leeway: i64,
    pub flagged_requests: Counter,
    pub flagged_networks: Counter,
}

impl Detector {
    /// `max_leeway_s`: see `Config::max_leeway_s`.
    pub fn new(cfg: &Anomaly, max_leeway_s: i64) -> Detector {
        Detector {
            cfg: cfg.clone(),
            windows: moka::sync::Cache::builder()
                .max_capacity(MAX_WINDOWS)
                .time_to_idle(cfg.window.max(Duration::from_secs(1)))
                .build(),
            leeway: max_leeway_s,
            flagged_requests: Counter::default(),
            flagged_networks: Counter::default(),
        }
    }

    /// Count one request of `v` from `client`. `Some` when the token is over a limit: the
    /// first time in a window, and with `action = "revoke"` every time for a token with a
    /// `jti` (so a failed revocation is tried again on the next request).
    pub fn observe(&self, v: &Verified, client: IpAddr) -> Option<Flagged> {
        let w = self.windows.get_with(v.token_id, Default::default);
        w.roll(now_unix(), self.cfg.window.as_secs() as i64);
        let requests = w.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let net = network(client);
        let networks = if w.last.load(Ordering::Relaxed) == net {
            w.seen.load(Ordering::Relaxed)
        } else {
            let mut nets = w.networks.lock().unwrap_or_else(|p| p.into_inner());
            if nets.len() <= self.cfg.max_networks && !nets.contains(&net) {
                nets.push(net);
            }
            w.seen.store(nets.len(), Ordering::Relaxed);
            w.last.store(net, Ordering::Relaxed);
            nets.len()
        };
        let finding = if networks > self.cfg.max_networks {
            Finding::Networks(networks)
        } else if requests > self.cfg.max_requests {
            Finding::Requests(requests)
        } else {
            return None;
        };
        let first = !w.flagged.swap(true, Ordering::AcqRel);
        if first {
            match finding {
                Finding::Requests(_) => self.flagged_requests.inc(),
                Finding::Networks(_) => self.flagged_networks.inc(),
            };
        }
        (first || (self.cfg.revoke && v.jti.is_some())).then_some(Flagged { finding, first })
    }

    /// Act on a finding: log it (once per token and window); with `action = "revoke"`,
    /// revoke the token's `jti` at its issuer until its `exp` (plus the leeway) and refuse
    /// this request. A token without `jti` cannot be revoked alone: it is logged, and
    /// served.
    pub async fn act(
        &self,
        flagged: Flagged,
        v: &Verified,
        client: IpAddr,
        revocations: &Revocations,
    ) -> Result<(), GatewayError> {
        let (kind, count) = match flagged.finding {
            Finding::Requests(n) => ("requests", n),
            Finding::Networks(n) => ("networks", n as u64),
        };
        let jti = v.jti.as_deref();
        if flagged.first {
            tracing::warn!(
                target: "jwtgate::anomaly",
                kind,
                count,
                window_s = self.cfg.window.as_secs(),
                issuer = v.scoped_sub.issuer(),
                sub = %v.sub,
                jti = jti.unwrap_or("-"),
                client = %client,
                revoke = self.cfg.revoke && jti.is_some(),
                "token over its [anomaly] limit; possibly leaked"
            );
        }
        if !self.cfg.revoke {
            return Ok(());
        }
        let Some(jti) = &v.scoped_jti else {
            return Ok(());
        };
        let until = v.exp.saturating_add(self.leeway);
        if let Err(e) = revocations.revoke_jti(jti, until).await {
            // Refuse this request anyway; the next one tries to revoke again (and says so
            // only at debug level: the store's own failures are logged already).
            if flagged.first {
                tracing::warn!(error = %e, "could not revoke a flagged token");
            } else {
                tracing::debug!(error = %e, "could not revoke a flagged token");
            }
        }
        Err(TokenError::Revoked.into())
    }
}

/// The client's network as a number, never 0: IPv4 /24 (a v4-mapped address counts as
/// IPv4) or IPv6 /48, each tagged with its own high bit.
fn network(ip: IpAddr) -> u64 {
    let v4 = |a: std::net::Ipv4Addr| 1 << 63 | u64::from(u32::from(a) >> 8);
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => v4(m),
            None => 1 << 62 | (u128::from(a) >> 80) as u64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_starts_at_first_use_and_rolls_after_its_length() {
        let w = Window::default();
        w.roll(1_000, 60);
        w.requests.store(7, Ordering::Relaxed);
        w.flagged.store(true, Ordering::Relaxed);
        w.roll(1_059, 60);
        assert_eq!(
            w.requests.load(Ordering::Relaxed),
            7,
            "still the same window"
        );
        w.roll(1_060, 60);
        assert_eq!(w.requests.load(Ordering::Relaxed), 0);
        assert!(!w.flagged.load(Ordering::Relaxed));
        assert_eq!(w.started.load(Ordering::Relaxed), 1_060);
    }

    #[test]
    fn networks_are_v4_24_and_v6_48() {
        let n = |s: &str| network(s.parse().unwrap());
        assert_eq!(n("203.0.113.77"), n("203.0.113.1"));
        assert_ne!(n("203.0.113.77"), n("203.0.114.77"));
        assert_eq!(n("::ffff:203.0.113.77"), n("203.0.113.0"));
        assert_eq!(n("2001:db8:1:2:3::9"), n("2001:db8:1:ffff::1"));
        assert_ne!(n("2001:db8:1::"), n("2001:db8:2::"));
        assert_ne!(n("::"), 0);
        assert_ne!(n("0.0.0.0"), n("::"));
    }
}
