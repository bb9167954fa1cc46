//! Every failed login takes the same time, whichever way it failed.
//!
//! Left alone, the time to a failure tells who exists and how their password is stored: an
//! unknown user costs the dummy ARGON2ID verification (about 200 ms), a wrong SHA512-CRYPT
//! password about 5 ms, a wrong PLAIN one nothing. So a failure is answered no sooner than a
//! floor after its check started: 3/2 of what the dummy verification costs here, clamped to
//! [`MIN_FLOOR`, `MAX_FLOOR`]. The estimate rises at once when a dummy (or a failed real
//! verification, e.g. a stronger ARGON2ID than the default) takes longer, and sinks slowly
//! when dummies get cheaper again, so a moment of load does not slow failures for good.
//! A failure gets the floor known when its check started: no check's own cost moves its own
//! answer time, so a path whose check can raise the estimate (the dummy) is not told apart
//! from one whose check cannot (a fast scheme) by the rare answer above the floor.
//!
//! The dummy runs for every unknown user, user without a usable password and empty password,
//! and once more in a process whose floor is not known yet when its first failure is a real
//! verification: the floor is known before any failure is answered, including the first one
//! of an Accept=yes process. Successes are not padded: the right password tells an attacker
//! nothing they did not have.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::hash;

/// No failure is answered sooner than this, however fast the dummy is.
pub(crate) const MIN_FLOOR: Duration = Duration::from_millis(50);
/// Nor later than this, however slow (a client waits this long at most before the delay).
pub(crate) const MAX_FLOOR: Duration = Duration::from_secs(10);
/// The floor before anything was measured (only when the check itself failed to run).
const UNMEASURED_FLOOR: Duration = Duration::from_millis(500);

/// The cost of a failed check, as learnt from the dummy verifications.
#[derive(Debug)]
pub(crate) struct FailureTiming {
    estimate: Mutex<Option<Duration>>,
    /// A floor set by a test, so it can check answer times exactly.
    fixed: Option<Duration>,
}

impl FailureTiming {
    /// A floor learnt from this host's dummy verifications.
    pub(crate) fn measured() -> FailureTiming {
        FailureTiming {
            estimate: Mutex::new(None),
            fixed: None,
        }
    }

    /// A floor that does not move (tests).
    #[cfg(test)]
    pub(crate) fn fixed(floor: Duration) -> FailureTiming {
        FailureTiming {
            estimate: Mutex::new(None),
            fixed: Some(floor),
        }
    }

    fn estimate(&self) -> std::sync::MutexGuard<'_, Option<Duration>> {
        self.estimate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the dummy verification (see [`hash::verify_dummy`]) and learns its cost.
    pub(crate) fn dummy(&self, password: &[u8]) {
        let started = Instant::now();
        hash::verify_dummy(password);
        self.learn_dummy(started.elapsed());
    }

    /// After a failed real verification that took `cost`: runs the dummy if the floor is not
    /// known yet, and makes sure the floor covers this verification.
    pub(crate) fn after_failed_verification(&self, password: &[u8], cost: Duration) {
        if self.estimate().is_none() {
            self.dummy(password);
        }
        let mut estimate = self.estimate();
        if let Some(current) = estimate.as_mut() {
            *current = (*current).max(cost);
        }
    }

    /// Rises at once, sinks by a sixteenth of the difference per cheaper dummy.
    fn learn_dummy(&self, cost: Duration) {
        let mut estimate = self.estimate();
        *estimate = Some(match *estimate {
            Some(current) if cost < current => current - (current - cost) / 16,
            _ => cost,
        });
    }

    /// The floor, if something was measured (or it is fixed).
    pub(crate) fn known_floor(&self) -> Option<Duration> {
        let known = self.fixed.is_some() || self.estimate().is_some();
        known.then(|| self.floor())
    }

    /// How long after its check started a failure is answered, at the earliest.
    pub(crate) fn floor(&self) -> Duration {
        if let Some(fixed) = self.fixed {
            return fixed;
        }
        let floor = match *self.estimate() {
            Some(estimate) => (estimate * 3 / 2).clamp(MIN_FLOOR, MAX_FLOOR),
            None => UNMEASURED_FLOOR,
        };
        // Whole milliseconds, as timers count them.
        Duration::from_millis(u64::try_from(floor.as_millis()).unwrap_or(u64::MAX)).max(MIN_FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_floor_follows_the_dummy_up_at_once_and_down_slowly() {
        let timing = FailureTiming::measured();
        assert_eq!(timing.floor(), UNMEASURED_FLOOR);
        assert_eq!(timing.known_floor(), None);
        timing.learn_dummy(ms(200));
        assert_eq!(timing.known_floor(), Some(ms(300)));
        assert_eq!(timing.floor(), ms(300));
        timing.learn_dummy(ms(400));
        assert_eq!(timing.floor(), ms(600));
        // One cheap dummy lowers the estimate by 1/16 of the gap: 400 - 240/16 = 385.
        timing.learn_dummy(ms(160));
        assert_eq!(timing.floor(), ms(577));
        for _ in 0..200 {
            timing.learn_dummy(ms(160));
        }
        assert!(timing.floor() < ms(250), "{:?}", timing.floor());
        // Clamped both ways.
        timing.learn_dummy(ms(60_000));
        assert_eq!(timing.floor(), MAX_FLOOR);
        let fast = FailureTiming::measured();
        fast.learn_dummy(ms(1));
        assert_eq!(fast.floor(), MIN_FLOOR);
    }

    #[test]
    fn a_slow_real_verification_raises_the_floor() {
        let timing = FailureTiming::measured();
        timing.learn_dummy(ms(200));
        timing.after_failed_verification(b"x", ms(5));
        assert_eq!(timing.floor(), ms(300));
        timing.after_failed_verification(b"x", ms(1000));
        assert_eq!(timing.floor(), ms(1500));
    }

    #[test]
    fn the_first_failed_verification_measures_the_dummy() {
        let timing = FailureTiming::measured();
        timing.after_failed_verification(b"x", ms(5));
        assert!(timing.estimate().is_some_and(|d| d >= ms(5)));
        assert_ne!(timing.floor(), UNMEASURED_FLOOR);
    }
}
