//! Rate limits (step 4 of the request path): a route's `rate_limit` as a token bucket per
//! key (governor's GCRA), kept in this replica's memory. Keys are the verified `sub` or the
//! client address; choosing the address (`identity::client_address`) is left to the caller.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{LimitBy, RateLimitConfig};
use crate::error::GatewayError;

/// One route's limiter.
pub struct RateLimit {
    pub per: LimitBy,
    /// Keyed by (issuer index, sub): two issuers' subjects never share a bucket.
    by_sub: DefaultKeyedRateLimiter<(usize, String)>,
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("per", &self.per)
            .field("keys", &self.keys())
            .finish()
    }
}

impl RateLimit {
    pub fn new(c: &RateLimitConfig) -> RateLimit {
        // Validated in config: 0 < rps <= 1e6, burst >= 1.
        let period = Duration::from_secs_f64(1.0 / c.rps).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(c.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        RateLimit {
            per: c.per,
            by_sub: RateLimiter::keyed(quota),
            by_ip: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Count one request of the subject `sub` of the issuer with index `issuer`.
    pub fn check_sub(&self, issuer: usize, sub: &str) -> Result<(), GatewayError> {
        self.by_sub
            .check_key(&(issuer, sub.to_owned()))
            .map_err(|not_until| self.refused(not_until.wait_time_from(self.clock.now())))
    }

    /// Count one request from the client address `ip` (an IPv6 client by its /64: one
    /// host usually holds the whole prefix).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), GatewayError> {
        self.by_ip
            .check_key(&ip_key(ip))
            .map_err(|not_until| self.refused(not_until.wait_time_from(self.clock.now())))
    }

    fn refused(&self, wait: Duration) -> GatewayError {
        // Retry-After is in whole seconds: round up, and never tell a client "0".
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        GatewayError::RateLimited {
            retry_after_s: secs.max(1),
        }
    }

    /// Forget keys whose bucket is full again (they behave exactly like new keys), so
    /// memory follows the number of recently active clients. The maps are shrunk only
    /// after most of their keys went (a shrink rebuilds them).
    pub fn forget_idle(&self) {
        let before = self.by_sub.len();
        self.by_sub.retain_recent();
        if self.by_sub.len() < before / 2 {
            self.by_sub.shrink_to_fit();
        }
        let before = self.by_ip.len();
        self.by_ip.retain_recent();
        if self.by_ip.len() < before / 2 {
            self.by_ip.shrink_to_fit();
        }
    }

    /// Keys currently tracked.
    pub fn keys(&self) -> usize {
        self.by_sub.len() + self.by_ip.len()
    }
}

fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per: LimitBy, rps: f64, burst: u32) -> RateLimit {
        RateLimit::new(&RateLimitConfig { per, rps, burst })
    }

    #[test]
    fn burst_then_refused_with_retry_after() {
        let l = limit(LimitBy::Sub, 0.5, 3);
        for _ in 0..3 {
            l.check_sub(0, "alice").unwrap();
        }
        match l.check_sub(0, "alice") {
            Err(GatewayError::RateLimited { retry_after_s }) => {
                // One request every 2 s: the next one is due in (0, 2] s.
                assert!((1..=2).contains(&retry_after_s), "{retry_after_s}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Another subject has its own bucket, and so has the same `sub` of another issuer.
        l.check_sub(0, "bob").unwrap();
        l.check_sub(1, "alice").unwrap();
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let l = limit(LimitBy::Ip, 1.0, 1);
        l.check_ip("2001:db8:1:2::10".parse().unwrap()).unwrap();
        assert!(l.check_ip("2001:db8:1:2::99".parse().unwrap()).is_err());
        l.check_ip("2001:db8:1:3::10".parse().unwrap()).unwrap();
        // v4-mapped v6 is the v4 address.
        l.check_ip("10.0.0.1".parse().unwrap()).unwrap();
        assert!(l.check_ip("::ffff:10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let l = limit(LimitBy::Ip, 1_000_000.0, 1);
        for i in 0..100u8 {
            l.check_ip(IpAddr::from([10, 0, 0, i])).unwrap();
        }
        assert_eq!(l.keys(), 100);
        // At a million per second, every bucket is full again almost at once.
        std::thread::sleep(Duration::from_millis(5));
        l.forget_idle();
        assert_eq!(l.keys(), 0);
    }
}
