//! The brute-force guard: per client address, a growing delay after each failed login and,
//! after too many failures within a window, a lockout during which logins are refused
//! without checking.
//!
//! Every method takes the current time as an argument, so the rules are plain functions of
//! the calls made and are tested without sleeping or a fake clock.
//!
//! - An IPv6 client is counted per /64 (one host usually owns a whole /64); IPv4 per address.
//! - Concurrent attempts from one address count against the budget while they run, so opening
//!   many connections at once does not buy more guesses than `max_failures` per lockout.
//! - A successful login ends the delay streak but not the failures counted in the window, so
//!   someone with one valid account cannot use it to reset their budget for guessing others.
//! - The table holds at most `max_tracked` addresses; when it is full, stale records go first,
//!   then the least recently active.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How failed logins are punished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Delay after the first failure; it doubles with each further failure in a row.
    pub base_delay: Duration,
    /// The delay never grows beyond this.
    pub max_delay: Duration,
    /// Failures within `window` that lock the address out; 0 never locks.
    pub max_failures: u32,
    /// Failures older than this (counted from the first of the run) are forgotten.
    pub window: Duration,
    /// How long a locked-out address is refused.
    pub lockout: Duration,
    /// Addresses remembered at most.
    pub max_tracked: usize,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_failures: 10,
            window: Duration::from_secs(600),
            lockout: Duration::from_secs(900),
            max_tracked: 10_000,
        }
    }
}

impl GuardPolicy {
    /// The delay after the `streak`-th failure in a row: base, 2×base, 4×base, … up to max.
    pub fn delay_after(&self, streak: u32) -> Duration {
        if streak == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (streak - 1).min(20);
        self.base_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

/// What the guard keeps per address (or IPv6 /64).
#[derive(Debug, Clone)]
struct Record {
    /// Failures since `window_start`.
    failures: u32,
    /// Failures in a row, for the delay; ends with a success.
    streak: u32,
    /// Attempts being checked right now.
    in_flight: u32,
    window_start: Instant,
    last_active: Instant,
    locked_until: Option<Instant>,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            streak: 0,
            in_flight: 0,
            window_start: now,
            last_active: now,
            locked_until: None,
        }
    }

    /// Forgets what has expired by `now`.
    fn expire(&mut self, policy: &GuardPolicy, now: Instant) {
        match self.locked_until {
            Some(until) if now < until => return,
            Some(_) => {
                self.locked_until = None;
                self.failures = 0;
                self.streak = 0;
                self.window_start = now;
            }
            None => {}
        }
        if now.saturating_duration_since(self.window_start) >= policy.window {
            self.failures = 0;
            self.streak = 0;
            self.window_start = now;
        }
    }

    /// Nothing worth remembering: no failures, nothing running, not locked.
    fn idle(&self) -> bool {
        self.failures == 0 && self.streak == 0 && self.in_flight == 0 && self.locked_until.is_none()
    }
}

/// The key a client is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey(IpAddr);

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> PeerKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                PeerKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => PeerKey(v4),
        }
    }
}

/// What a failed login costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    /// How long to make the client wait before answering.
    pub delay: Duration,
    /// This failure locked the address out (worth one log line; the refusals that follow
    /// are not).
    pub locked_out: bool,
}

/// Too many failures from this address: refuse without checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled;

#[derive(Debug)]
pub struct Guard {
    policy: GuardPolicy,
    table: Mutex<HashMap<PeerKey, Record>>,
}

/// An address with no failures may have this many times `max_failures` logins in progress.
const CLEAN_PARALLEL_FACTOR: u32 = 4;

impl Guard {
    pub fn new(policy: GuardPolicy) -> Guard {
        Guard {
            policy,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> &GuardPolicy {
        &self.policy
    }

    fn table(&self) -> MutexGuard<'_, HashMap<PeerKey, Record>> {
        // The table stays consistent even if a holder panicked: every update is a few fields.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a login attempt from `peer`, or refuses it. The returned [`Attempt`] must be
    /// ended with `succeeded` or `failed`; dropped, it just stops counting as in flight.
    pub fn begin(&self, peer: IpAddr, now: Instant) -> Result<Attempt<'_>, Throttled> {
        let key = PeerKey::from(peer);
        let mut table = self.table();
        if !table.contains_key(&key) && table.len() >= self.policy.max_tracked.max(1) {
            evict(&mut table, &self.policy, now);
        }
        let record = table.entry(key).or_insert_with(|| Record::new(now));
        record.expire(&self.policy, now);
        record.last_active = now;
        // Logins in progress count against what is left of the failure budget, so a guesser
        // cannot run many at once. An address with no failures gets a wider allowance: an
        // office behind one NAT address, or a mail client opening several connections, logs in
        // in parallel legitimately.
        let max = self.policy.max_failures;
        let in_flight_allowed = if record.failures == 0 {
            max.saturating_mul(CLEAN_PARALLEL_FACTOR)
        } else {
            max.saturating_sub(record.failures)
        };
        let budget_spent = max > 0 && record.in_flight >= in_flight_allowed;
        if record.locked_until.is_some() || budget_spent {
            return Err(Throttled);
        }
        record.in_flight += 1;
        Ok(Attempt {
            guard: self,
            key,
            open: true,
        })
    }

    /// Addresses currently remembered.
    pub fn tracked(&self) -> usize {
        self.table().len()
    }

    fn end(&self, key: PeerKey, now: Instant, outcome: Option<bool>) -> Penalty {
        let mut table = self.table();
        let mut penalty = Penalty {
            delay: Duration::ZERO,
            locked_out: false,
        };
        let Some(record) = table.get_mut(&key) else {
            // Evicted meanwhile (the table was full): nothing to add to.
            if outcome == Some(false) {
                penalty.delay = self.policy.delay_after(1);
            }
            return penalty;
        };
        record.in_flight = record.in_flight.saturating_sub(1);
        record.expire(&self.policy, now);
        record.last_active = now;
        match outcome {
            Some(true) => record.streak = 0,
            Some(false) => {
                record.failures = record.failures.saturating_add(1);
                record.streak = record.streak.saturating_add(1);
                let limit = self.policy.max_failures;
                if limit > 0 && record.failures >= limit && record.locked_until.is_none() {
                    record.locked_until = Some(now + self.policy.lockout);
                    penalty.locked_out = true;
                }
                penalty.delay = self.policy.delay_after(record.streak);
            }
            None => {}
        }
        if record.idle() {
            table.remove(&key);
        }
        penalty
    }
}

/// Makes room for one more record: drops expired ones, then the least recently active.
fn evict(table: &mut HashMap<PeerKey, Record>, policy: &GuardPolicy, now: Instant) {
    table.retain(|_, record| {
        record.expire(policy, now);
        !record.idle()
    });
    if table.len() >= policy.max_tracked.max(1) {
        let oldest = table
            .iter()
            .min_by_key(|(_, r)| (r.in_flight > 0, r.last_active))
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            table.remove(&key);
        }
    }
}

/// A login attempt in progress.
#[derive(Debug)]
pub struct Attempt<'g> {
    guard: &'g Guard,
    key: PeerKey,
    open: bool,
}

impl Attempt<'_> {
    /// The password was right.
    pub fn succeeded(mut self, now: Instant) {
        self.open = false;
        self.guard.end(self.key, now, Some(true));
    }

    /// The password was wrong (or the user unknown): returns what that costs the client.
    pub fn failed(mut self, now: Instant) -> Penalty {
        self.open = false;
        self.guard.end(self.key, now, Some(false))
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.guard.end(self.key, Instant::now(), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn policy() -> GuardPolicy {
        GuardPolicy {
            base_delay: secs(1),
            max_delay: secs(4),
            max_failures: 5,
            window: secs(60),
            lockout: secs(300),
            max_tracked: 100,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn fail(guard: &Guard, peer: IpAddr, now: Instant) -> Duration {
        fail_penalty(guard, peer, now).delay
    }

    fn fail_penalty(guard: &Guard, peer: IpAddr, now: Instant) -> Penalty {
        match guard.begin(peer, now) {
            Ok(attempt) => attempt.failed(now),
            Err(Throttled) => panic!("throttled too early"),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = policy();
        let delays: Vec<u64> = (0..7).map(|n| p.delay_after(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 4, 4, 4]);
        assert_eq!(p.delay_after(u32::MAX), secs(4));
        let huge = GuardPolicy {
            base_delay: Duration::MAX,
            ..policy()
        };
        assert_eq!(huge.delay_after(3), secs(4));
    }

    #[test]
    fn failures_lock_out_then_expire() {
        let guard = Guard::new(policy());
        let t0 = Instant::now();
        let penalties: Vec<(u64, bool)> = (0..5)
            .map(|i| fail_penalty(&guard, A, t0 + secs(i)))
            .map(|p| (p.delay.as_secs(), p.locked_out))
            .collect();
        assert_eq!(
            penalties,
            [(1, false), (2, false), (4, false), (4, false), (4, true)]
        );
        // Locked: refused without being counted, another address is unaffected.
        assert_eq!(guard.begin(A, t0 + secs(10)).err(), Some(Throttled));
        assert_eq!(guard.begin(A, t0 + secs(4 + 299)).err(), Some(Throttled));
        assert_eq!(fail(&guard, B, t0 + secs(10)), secs(1));
        // The lockout ends and the slate is clean.
        assert_eq!(fail(&guard, A, t0 + secs(4 + 300)), secs(1));
    }

    #[test]
    fn zero_max_failures_never_locks() {
        let guard = Guard::new(GuardPolicy {
            max_failures: 0,
            ..policy()
        });
        let now = Instant::now();
        for _ in 0..20 {
            fail(&guard, A, now);
        }
        assert_eq!(fail(&guard, A, now), secs(4));
    }

    #[test]
    fn the_window_forgets_old_failures() {
        let guard = Guard::new(policy());
        let t0 = Instant::now();
        for i in 0..4 {
            fail(&guard, A, t0 + secs(i));
        }
        // 60 s after the first failure the run is over: the delay starts again and
        // four more failures do not lock.
        let t1 = t0 + secs(60);
        let delays: Vec<u64> = (0..4)
            .map(|i| fail(&guard, A, t1 + secs(i)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 4]);
        assert!(guard.begin(A, t1 + secs(5)).is_ok());
    }

    #[test]
    fn success_ends_the_streak_but_not_the_count() {
        let guard = Guard::new(policy());
        let t0 = Instant::now();
        fail(&guard, A, t0);
        fail(&guard, A, t0);
        fail(&guard, A, t0);
        let Ok(attempt) = guard.begin(A, t0) else {
            panic!("throttled")
        };
        attempt.succeeded(t0);
        // The delay starts over...
        assert_eq!(fail(&guard, A, t0), secs(1));
        // ...but that was the 4th failure in the window, and the 5th locks.
        fail(&guard, A, t0);
        assert_eq!(guard.begin(A, t0).err(), Some(Throttled));
    }

    #[test]
    fn a_clean_success_leaves_nothing_behind() {
        let guard = Guard::new(policy());
        let now = Instant::now();
        let Ok(attempt) = guard.begin(A, now) else {
            panic!("throttled")
        };
        assert_eq!(guard.tracked(), 1);
        attempt.succeeded(now);
        assert_eq!(guard.tracked(), 0);
        // A dropped (abandoned) attempt is not a failure either.
        drop(guard.begin(A, now));
        assert_eq!(guard.tracked(), 0);
    }

    #[test]
    fn parallel_attempts_count_against_the_budget() {
        let guard = Guard::new(policy());
        let now = Instant::now();
        // One failure first: from then on, attempts in progress spend what is left.
        fail(&guard, A, now);
        let running: Vec<_> = (0..5).filter_map(|_| guard.begin(A, now).ok()).collect();
        assert_eq!(running.len(), 4);
        assert_eq!(guard.begin(A, now).err(), Some(Throttled));
        let locked: Vec<bool> = running
            .into_iter()
            .map(|a| a.failed(now).locked_out)
            .collect();
        // The lockout is reported once, by the failure that caused it.
        assert_eq!(locked, [false, false, false, true]);
        assert_eq!(guard.begin(A, now + secs(1)).err(), Some(Throttled));
    }

    #[test]
    fn an_address_without_failures_may_log_in_in_parallel() {
        let guard = Guard::new(policy());
        let now = Instant::now();
        let allowed = policy().max_failures * CLEAN_PARALLEL_FACTOR;
        let running: Vec<_> = (0..allowed + 5)
            .filter_map(|_| guard.begin(A, now).ok())
            .collect();
        assert_eq!(running.len() as u32, allowed);
        for attempt in running {
            attempt.succeeded(now);
        }
        assert!(guard.begin(A, now).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let guard = Guard::new(policy());
        let now = Instant::now();
        for last in 1..=5u16 {
            let peer = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
            fail(&guard, peer, now);
        }
        let same_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 1, 2, 3));
        let other_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(guard.begin(same_64, now).err(), Some(Throttled));
        assert!(guard.begin(other_64, now).is_ok());
        let mapped: IpAddr = match "::ffff:192.0.2.1".parse() {
            Ok(ip) => ip,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(PeerKey::from(mapped), PeerKey::from(A));
    }

    #[test]
    fn the_table_is_bounded() {
        let guard = Guard::new(GuardPolicy {
            max_tracked: 10,
            ..policy()
        });
        let t0 = Instant::now();
        for i in 0..50u32 {
            let peer = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            fail(&guard, peer, t0 + Duration::from_millis(u64::from(i)));
            assert!(guard.tracked() <= 10);
        }
        // The most recent addresses are the ones kept.
        let recent = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 49));
        assert_eq!(fail(&guard, recent, t0 + secs(1)), secs(2));
        // Once their window is over, records are stale and make room first.
        fail(&guard, A, t0 + secs(61));
        assert_eq!(guard.tracked(), 1);
    }
}
