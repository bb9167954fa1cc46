//! The brute-force guard: per client address, a growing delay after each failed login and,
//! after too many failures within a window, a lockout during which logins are refused
//! without checking.
//!
//! Every method takes the current time as an argument (a [`Moment`]), so the rules are plain
//! functions of the calls made and are tested without sleeping or a fake clock.
//!
//! - **A guess is reserved before it is checked.** [`Guard::begin`] takes one of the address's
//!   `max_failures` guesses; a success gives it back, a failure spends it. Failures plus
//!   attempts in flight never exceed `max_failures`, so opening many connections at once buys
//!   no extra guesses, and no attempt of that address is still being checked when its lockout
//!   starts. An attempt that finds no guess left is refused: [`Refusal::Busy`] while others
//!   are being checked (the caller may wait for one to come back), [`Refusal::LockedOut`]
//!   once the address is locked out.
//! - An IPv6 client is counted per /64 (one host usually owns a whole /64); IPv4 per address.
//! - A successful login ends the delay streak but not the failures counted in the window, so
//!   someone with one valid account cannot use it to reset their budget for guessing others.
//!   A success is not reported to an address that is locked out by the time its check ends.
//! - **One memory for the host.** With a state file ([`Guard::shared`]; the daemons use
//!   `/run/inetkit/login-guard`), every daemon on the host and every process of an Accept=yes
//!   unit count in the same table: an attacker gets `max_failures` guesses per address in all,
//!   not per daemon. Each daemon applies its own policy to the shared counts. Without a file,
//!   or while it cannot be used, a process counts alone (the `table` module has the details).
//! - The table holds a bounded number of addresses; when the slots an address may use are
//!   taken, stale records go first, then the least recently active.

mod table;

use std::net::{IpAddr, Ipv6Addr};
use std::ops::Add;
use std::path::{Path, PathBuf};
use std::time::Duration;

use table::Table;

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
    /// Addresses remembered at most (the size of a state file this process creates).
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

/// A point in time on the host's boot clock (`CLOCK_BOOTTIME`), in milliseconds. Unlike
/// `Instant` it means the same in every process on the host, so a shared state file can hold
/// it, and unlike the wall clock it never jumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Moment(u64);

impl Moment {
    /// Now.
    pub fn now() -> Moment {
        use nix::time::{clock_gettime, ClockId};
        let Ok(now) = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        else {
            // Cannot happen on Linux; the guard then sees all events at one instant, which
            // errs towards keeping records, never towards forgetting them.
            return Moment(0);
        };
        let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
        let millis = u64::try_from(now.tv_nsec() / 1_000_000).unwrap_or(0);
        Moment(secs.saturating_mul(1000).saturating_add(millis))
    }

    /// The moment `millis` milliseconds after the clock's start (for tests and the file).
    pub const fn from_millis(millis: u64) -> Moment {
        Moment(millis)
    }

    /// Milliseconds since the clock's start.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_since(self, earlier: Moment) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Moment {
    type Output = Moment;

    fn add(self, duration: Duration) -> Moment {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Moment(self.0.saturating_add(millis))
    }
}

/// A reservation older than this belongs to a process that died in the middle of a check (or
/// to a check that hung): it no longer counts as in flight.
const RESERVATION_TTL: Duration = Duration::from_secs(120);

/// No time read from the shared file lies further ahead than this (a damaged file cannot lock
/// an address for good).
const MAX_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// What the guard keeps per address (or IPv6 /64).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    key: PeerKey,
    /// Failures since `window_start`.
    failures: u32,
    /// Failures in a row, for the delay; ends with a success.
    streak: u32,
    /// Attempts being checked right now (reserved guesses).
    in_flight: u32,
    /// When the newest reservation stops counting (see [`RESERVATION_TTL`]).
    in_flight_until: Moment,
    window_start: Moment,
    last_active: Moment,
    locked_until: Option<Moment>,
}

impl Record {
    fn new(key: PeerKey, now: Moment) -> Record {
        Record {
            key,
            failures: 0,
            streak: 0,
            in_flight: 0,
            in_flight_until: now,
            window_start: now,
            last_active: now,
            locked_until: None,
        }
    }

    /// Forgets what has expired by `now`.
    fn expire(&mut self, policy: &GuardPolicy, now: Moment) {
        // Another process wrote this record, possibly with another policy: only a time that
        // cannot be right is corrected.
        let horizon = now + policy.lockout.max(MAX_AHEAD);
        self.locked_until = self.locked_until.map(|until| until.min(horizon));
        self.window_start = self.window_start.min(now);
        self.in_flight_until = self.in_flight_until.min(now + RESERVATION_TTL);
        if now >= self.in_flight_until {
            self.in_flight = 0;
        }
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
        if now.saturating_since(self.window_start) >= policy.window {
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

/// The key a client is counted under: its IPv4 address, or the /64 of its IPv6 address.
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

impl PeerKey {
    /// As 16 bytes (IPv4 as an IPv4-mapped IPv6 address), the form the state file holds.
    fn octets(self) -> [u8; 16] {
        match self.0 {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    fn from_octets(octets: [u8; 16]) -> PeerKey {
        PeerKey::from(Ipv6Addr::from(octets).to_canonical())
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

/// Why a login is refused without being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures from this address: refused until the lockout ends.
    LockedOut,
    /// Every guess this address has left is being checked right now; one may come back when
    /// those checks end.
    Busy,
}

/// The guard: counts attempts and failures per address, in memory or in a shared state file.
#[derive(Debug)]
pub struct Guard {
    policy: GuardPolicy,
    table: Table,
}

impl Guard {
    /// A guard whose memory is this process's alone.
    pub fn new(policy: GuardPolicy) -> Guard {
        let table = Table::memory(policy.max_tracked);
        Guard { policy, table }
    }

    /// A guard whose memory is the state file at `path`, shared by every process that uses
    /// the same file. The file is created (mode 0660) when missing, its directory never;
    /// while it cannot be used the guard counts in this process's memory and logs why once.
    pub fn shared(policy: GuardPolicy, path: impl Into<PathBuf>) -> Guard {
        let table = Table::file(path.into(), policy.max_tracked);
        Guard { policy, table }
    }

    /// The rules this guard applies.
    pub fn policy(&self) -> &GuardPolicy {
        &self.policy
    }

    /// The state file, if this guard was made with one.
    pub fn state_file(&self) -> Option<&Path> {
        self.table.path()
    }

    /// Starts a login attempt from `peer`, reserving one of its guesses, or refuses it. The
    /// returned [`Attempt`] is ended with `succeeded`, `failed` or `abandoned` (which dropping
    /// it does too).
    pub fn begin(&self, peer: IpAddr, now: Moment) -> Result<Attempt<'_>, Refusal> {
        let key = PeerKey::from(peer);
        let policy = &self.policy;
        let decision = self.table.with_record(key, now, policy, true, |record| {
            record.last_active = now;
            if record.locked_until.is_some() {
                return Err(Refusal::LockedOut);
            }
            let max = policy.max_failures;
            if max > 0 && record.failures >= max {
                // Counted this far by a daemon with a higher limit: ours is reached.
                record.locked_until = Some(now + policy.lockout);
                return Err(Refusal::LockedOut);
            }
            if max > 0 && record.failures.saturating_add(record.in_flight) >= max {
                return Err(Refusal::Busy);
            }
            record.in_flight = record.in_flight.saturating_add(1);
            record.in_flight_until = now + RESERVATION_TTL;
            Ok(())
        });
        match decision {
            Some(Err(refusal)) => Err(refusal),
            Some(Ok(())) | None => Ok(Attempt {
                guard: self,
                key,
                open: true,
            }),
        }
    }

    /// Addresses currently remembered.
    pub fn tracked(&self) -> usize {
        self.table.tracked()
    }

    /// Ends an attempt: `Some(true)` succeeded, `Some(false)` failed, `None` abandoned.
    fn end(&self, key: PeerKey, now: Moment, outcome: Option<bool>) -> Settled {
        let policy = &self.policy;
        // A failure is written even if the record was evicted meanwhile; a success or an
        // abandoned attempt only needs to give back a reservation that still exists.
        let create = outcome == Some(false);
        let settled = self.table.with_record(key, now, policy, create, |record| {
            record.in_flight = record.in_flight.saturating_sub(1);
            record.last_active = now;
            let mut penalty = Penalty {
                delay: Duration::ZERO,
                locked_out: false,
            };
            match outcome {
                Some(true) => record.streak = 0,
                Some(false) => {
                    record.failures = record.failures.saturating_add(1);
                    record.streak = record.streak.saturating_add(1);
                    let limit = policy.max_failures;
                    if limit > 0 && record.failures >= limit && record.locked_until.is_none() {
                        record.locked_until = Some(now + policy.lockout);
                        penalty.locked_out = true;
                    }
                    penalty.delay = policy.delay_after(record.streak);
                }
                None => {}
            }
            Settled {
                penalty,
                locked: record.locked_until.is_some(),
            }
        });
        settled.unwrap_or(Settled {
            penalty: Penalty {
                delay: policy.delay_after(1),
                locked_out: false,
            },
            locked: false,
        })
    }
}

/// What ending an attempt came to: its cost and whether the address is locked out now.
struct Settled {
    penalty: Penalty,
    /// The address is locked out now.
    locked: bool,
}

/// A login attempt in progress: one reserved guess.
#[derive(Debug)]
pub struct Attempt<'g> {
    guard: &'g Guard,
    key: PeerKey,
    open: bool,
}

impl Attempt<'_> {
    /// The password was right. Refused all the same if the address is locked out by now
    /// (another process counted failures meanwhile): no success is reported to it.
    pub fn succeeded(mut self, now: Moment) -> Result<(), Refusal> {
        self.open = false;
        if self.guard.end(self.key, now, Some(true)).locked {
            return Err(Refusal::LockedOut);
        }
        Ok(())
    }

    /// The password could not be checked (e.g. the users file is unreadable): not the
    /// client's failure, so the guess is given back. Dropping the attempt does the same.
    pub fn abandoned(mut self, now: Moment) {
        self.open = false;
        self.guard.end(self.key, now, None);
    }

    /// The password was wrong (or the user unknown): returns what that costs the client.
    pub fn failed(mut self, now: Moment) -> Penalty {
        self.open = false;
        self.guard.end(self.key, now, Some(false)).penalty
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.guard.end(self.key, Moment::now(), None);
        }
    }
}

#[cfg(test)]
mod tests;
