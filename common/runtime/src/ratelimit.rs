//! Token buckets for UDP services (echo's datagrams, the DNS forwarder's queries): each source
//! address is answered at a bounded rate, so that a forged source address cannot turn them into
//! an amplifier. Echo adds two wider tiers ([`RateLimiter::with_networks_and_total`]): a bucket
//! per IPv4 /24 or IPv6 /64, since one attacker forging many addresses of one victim network
//! gets one budget, not one per address; and a budget for every reply of the socket together,
//! so no mix of sources makes the service send more than that.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Sources (or networks) tracked at once; past this, new ones wait until a bucket has refilled.
const MAX_TRACKED: usize = 65536;

/// A token bucket per source address (and optionally per network and in total), in tables of
/// bounded size.
pub struct RateLimiter {
    sources: Buckets,
    /// Per IPv4 /24 and IPv6 /64, keyed by the network's first address.
    networks: Option<Buckets>,
    /// Every answer of the socket together.
    total: Option<(Rate, Bucket)>,
    /// What is limited, for the log ("udp", "query").
    what: &'static str,
    dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
    }
}

/// One bucket per key, in a table of bounded size.
struct Buckets {
    rate: Rate,
    table: HashMap<IpAddr, Bucket>,
    max: usize,
}

impl Buckets {
    fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            table: HashMap::new(),
            max: MAX_TRACKED,
        }
    }

    /// Whether `key` has a token (taking it when `take`). A key not in a full table has none
    /// until some bucket has refilled: memory stays bounded under a flood of forged addresses.
    fn has_token(&mut self, key: IpAddr, now: Instant, take: bool) -> bool {
        let rate = self.rate;
        if self.table.len() >= self.max && !self.table.contains_key(&key) {
            // Buckets that have refilled carry no state worth keeping.
            self.table.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate.per_second
                    < rate.burst
            });
            if self.table.len() >= self.max {
                return false;
            }
        }
        let bucket = self
            .table
            .entry(key)
            .or_insert_with(|| Bucket::full(rate, now));
        bucket.refill(rate, now);
        if bucket.tokens < 1.0 {
            return false;
        }
        if take {
            bucket.tokens -= 1.0;
        }
        true
    }
}

/// The network a source belongs to for the wider tier: its IPv4 /24 or IPv6 /64.
fn network_of(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::from([
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            ])
        }
    }
}

impl RateLimiter {
    /// `per_second` tokens a second for each source, `burst` at once; `per_second` 0 switches
    /// limiting off. `what` names what is limited in the log.
    pub fn new(per_second: u32, burst: u32, what: &'static str) -> Self {
        RateLimiter {
            sources: Buckets::new(Rate {
                per_second: f64::from(per_second),
                burst: f64::from(burst.max(1)),
            }),
            networks: None,
            total: None,
            what,
            dropped: 0,
        }
    }

    /// Adds the wider tiers: each IPv4 /24 or IPv6 /64 gets `network_factor` times a source's
    /// rate and burst, and the socket as a whole `total_factor` times. No effect when limiting
    /// is off.
    pub fn with_networks_and_total(mut self, network_factor: u32, total_factor: u32) -> Self {
        let one = self.sources.rate;
        let times = |factor: u32| Rate {
            per_second: one.per_second * f64::from(factor.max(1)),
            burst: one.burst * f64::from(factor.max(1)),
        };
        self.networks = Some(Buckets::new(times(network_factor)));
        let total = times(total_factor);
        self.total = Some((total, Bucket::full(total, Instant::now())));
        self
    }

    /// Whether limiting is on at all (a rate of 0 switches it off).
    pub fn enabled(&self) -> bool {
        self.sources.rate.per_second > 0.0
    }

    /// Takes one token for `source`: `true` to answer, `false` to drop silently.
    ///
    /// A new source starts with a full bucket of `burst` tokens, refilled at `per_second`; with
    /// the wider tiers its network's bucket and the total one must have a token too, and a token
    /// is taken from each tier only when all of them allow the answer. `now` is passed in so
    /// tests can drive the clock.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.enabled() {
            return true;
        }
        let total_ok = match &mut self.total {
            Some((rate, bucket)) => {
                bucket.refill(*rate, now);
                bucket.tokens >= 1.0
            }
            None => true,
        };
        let network = network_of(source);
        let allowed = total_ok
            && self
                .networks
                .as_mut()
                .is_none_or(|n| n.has_token(network, now, false))
            && self.sources.has_token(source, now, true);
        if !allowed {
            return self.drop_one(source);
        }
        if let Some(networks) = &mut self.networks {
            networks.has_token(network, now, true);
        }
        if let Some((_, bucket)) = &mut self.total {
            bucket.tokens -= 1.0;
        }
        true
    }

    /// Datagrams dropped by the limits since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn drop_one(&mut self, source: IpAddr) -> bool {
        self.dropped += 1;
        if self.dropped.is_power_of_two() {
            tracing::warn!(%source, dropped = self.dropped, limit = self.what, "rate limit");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut limiter = RateLimiter::new(10, 5, "test");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| limiter.allow(ip, t0)).count(), 5);
        // A second later, ten more tokens, but never more than the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| limiter.allow(ip, t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!((0..20).filter(|_| limiter.allow(ip, t2)).count(), 2);
    }

    #[test]
    fn sources_are_limited_separately() {
        let mut limiter = RateLimiter::new(1, 1, "test");
        let now = Instant::now();
        assert!(limiter.allow("192.0.2.1".parse().unwrap(), now));
        assert!(!limiter.allow("192.0.2.1".parse().unwrap(), now));
        assert!(limiter.allow("192.0.2.2".parse().unwrap(), now));
    }

    #[test]
    fn table_stays_bounded() {
        let mut limiter = RateLimiter::new(1, 1, "test");
        limiter.sources.max = 100;
        let now = Instant::now();
        for i in 0..1000u32 {
            limiter.allow(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.sources.table.len() <= 100);
        // Once the old buckets refill they make room again.
        let later = now + Duration::from_secs(5);
        assert!(limiter.allow("198.51.100.1".parse().unwrap(), later));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut limiter = RateLimiter::new(0, 0, "test");
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.allow("192.0.2.1".parse().unwrap(), now)));
    }

    #[test]
    fn one_network_shares_a_budget() {
        // 1/s per source, 4x per /24: forged addresses of one victim network get 4 answers
        // at once, not one each.
        let mut limiter = RateLimiter::new(1, 1, "test").with_networks_and_total(4, 1000);
        let now = Instant::now();
        let answered = (1..=50u8)
            .filter(|&host| limiter.allow(IpAddr::from([192, 0, 2, host]), now))
            .count();
        assert_eq!(answered, 4);
        // Another network has its own budget.
        assert!(limiter.allow("198.51.100.7".parse().unwrap(), now));
        // IPv6: one /64 is one network, whatever the interface identifier.
        let answered = (1..=50u16)
            .filter(|&host| limiter.allow(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host]), now))
            .count();
        assert_eq!(answered, 4);
    }

    #[test]
    fn total_budget_caps_every_source_together() {
        let mut limiter = RateLimiter::new(1, 1, "test").with_networks_and_total(4, 10);
        let now = Instant::now();
        // 1,000 sources in 1,000 networks: only the total budget of 10 is answered.
        let answered = (0..1000u32)
            .filter(|&i| limiter.allow(IpAddr::from((i << 8).to_be_bytes()), now))
            .count();
        assert_eq!(answered, 10);
        assert_eq!(limiter.dropped(), 990);
        // It refills at 10 a second.
        let later = now + Duration::from_secs(1);
        let answered = (1000..2000u32)
            .filter(|&i| limiter.allow(IpAddr::from((i << 8).to_be_bytes()), later))
            .count();
        assert_eq!(answered, 10);
    }
}
