//! A token bucket per client address, in a table of bounded size: UDP services (echo's
//! datagrams, the DNS forwarder's queries) answer each source at a bounded rate, so that a
//! forged source address cannot turn them into an amplifier.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// A token bucket per source address, in a table of bounded size.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    max_sources: usize,
    /// What is limited, for the log ("udp", "query").
    what: &'static str,
    dropped: u64,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_second` 0 switches limiting off; `what` names what is limited in the log.
    pub fn new(per_second: u32, burst: u32, what: &'static str) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            max_sources: 65536,
            what,
            dropped: 0,
        }
    }

    /// Whether limiting is on at all (a rate of 0 switches it off).
    pub fn enabled(&self) -> bool {
        self.per_second > 0.0
    }

    /// Takes one token from `source`'s bucket: `true` to answer, `false` to drop silently.
    ///
    /// A new source starts with a full bucket of `burst` tokens, refilled at `per_second`.
    /// When the table is full of sources still being limited, a source not in it is refused
    /// until some bucket has refilled, so memory stays bounded under a flood of forged
    /// addresses. `now` is passed in so tests can drive the clock.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        if self.buckets.len() >= self.max_sources && !self.buckets.contains_key(&source) {
            self.forget_full_buckets(now);
        }
        let (per_second, burst) = (self.per_second, self.burst);
        if self.buckets.len() >= self.max_sources && !self.buckets.contains_key(&source) {
            // Every tracked source is busy: new ones wait rather than grow the table.
            return self.drop_one(source);
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.drop_one(source)
        }
    }

    fn drop_one(&mut self, source: IpAddr) -> bool {
        self.dropped += 1;
        if self.dropped.is_power_of_two() {
            tracing::warn!(%source, dropped = self.dropped, limit = self.what, "rate limit");
        }
        false
    }

    /// Buckets that have refilled carry no state worth keeping.
    fn forget_full_buckets(&mut self, now: Instant) {
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * per_second < burst
        });
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
        limiter.max_sources = 100;
        let now = Instant::now();
        for i in 0..1000u32 {
            limiter.allow(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.buckets.len() <= 100);
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
}
