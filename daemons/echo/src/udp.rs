//! The UDP side: one datagram in, at most one out, and never a reflector.
//!
//! Two guards keep a forged source address from turning us into an amplifier or into one end of
//! a ping-pong loop with another UDP service: datagrams from privileged source ports (where
//! echo, chargen, daytime, time, DNS and NTP live) are dropped, and each source address has a
//! token bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use tokio::net::UdpSocket;

use inetkit_common::server::Server;

use crate::service::Service;

/// Source ports below this are never answered (RFC 862's own advice against loops between
/// echo and chargen, extended to every well-known service).
const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

pub async fn serve(service: Service, socket: UdpSocket, server: Server, mut limiter: RateLimiter) {
    let shutdown = server.shutdown_token();
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(err) => {
                    // ICMP errors from earlier replies surface here; they are not fatal.
                    tracing::debug!(error = %err, "udp receive");
                    continue;
                }
            },
        };
        server.touch();
        if from.port() < FIRST_UNPRIVILEGED_PORT {
            tracing::debug!(peer = %from, "dropped datagram from a privileged port");
            continue;
        }
        if !limiter.allow(from.ip(), Instant::now()) {
            continue;
        }
        if let Some(reply) = service.datagram_reply(&buf[..len], SystemTime::now()) {
            if let Err(err) = socket.send_to(&reply, from).await {
                tracing::debug!(peer = %from, error = %err, "udp send");
            }
        }
    }
}

/// A token bucket per source address, in a table of bounded size.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    max_sources: usize,
    dropped: u64,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_second` 0 switches limiting off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            max_sources: 65536,
            dropped: 0,
        }
    }

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
            tracing::warn!(%source, dropped = self.dropped, "udp rate limit");
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
        let mut limiter = RateLimiter::new(10, 5);
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
        let mut limiter = RateLimiter::new(1, 1);
        let now = Instant::now();
        assert!(limiter.allow("192.0.2.1".parse().unwrap(), now));
        assert!(!limiter.allow("192.0.2.1".parse().unwrap(), now));
        assert!(limiter.allow("192.0.2.2".parse().unwrap(), now));
    }

    #[test]
    fn table_stays_bounded() {
        let mut limiter = RateLimiter::new(1, 1);
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
        let mut limiter = RateLimiter::new(0, 0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.allow("192.0.2.1".parse().unwrap(), now)));
    }
}
