//! Bandwidth limits (vsftpd's `local_max_rate`, and a total over all sessions): a transfer
//! moves bounded chunks and waits after each until its bytes fit the rates.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The most a throttled transfer moves in one step: at low rates a tenth of a second's worth,
/// so the pace is smooth; never less than a page.
const MAX_CHUNK: u64 = 1 << 20;
const MIN_CHUNK: u64 = 4096;

/// The rate shared by every session (`[ftp] max_rate_total`): each chunk books its share of
/// time on one clock, so together the sessions never pass it.
#[derive(Debug)]
pub(crate) struct SharedRate {
    bytes_per_second: u64,
    /// When the bytes booked so far have all been paid for.
    free_at: Mutex<Instant>,
}

impl SharedRate {
    /// `None` for 0 (no limit).
    pub(crate) fn new(bytes_per_second: u64) -> Option<Arc<SharedRate>> {
        (bytes_per_second > 0).then(|| {
            Arc::new(SharedRate {
                bytes_per_second,
                free_at: Mutex::new(Instant::now()),
            })
        })
    }

    /// Books `bytes` and returns when the caller may go on.
    fn book(&self, bytes: u64) -> Instant {
        let cost = duration_of(bytes, self.bytes_per_second);
        let mut free_at = self.free_at.lock().unwrap_or_else(|p| p.into_inner());
        // Time nobody used is not saved up for a burst.
        *free_at = (*free_at).max(Instant::now()) + cost;
        *free_at
    }
}

fn duration_of(bytes: u64, bytes_per_second: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / bytes_per_second.max(1) as f64)
}

/// One transfer's limits: its session's rate and the shared one.
#[derive(Debug)]
pub(crate) struct Throttle {
    session: Option<u64>,
    shared: Option<Arc<SharedRate>>,
    started: Instant,
    moved: u64,
}

impl Throttle {
    /// `session` bytes per second (0: none) and the shared rate, if any.
    pub(crate) fn new(session: u64, shared: Option<Arc<SharedRate>>) -> Throttle {
        Throttle {
            session: (session > 0).then_some(session),
            shared,
            started: Instant::now(),
            moved: 0,
        }
    }

    /// The most to move before the next [`pace`](Self::pace), capped at `max`.
    pub(crate) fn chunk(&self, max: usize) -> usize {
        let lowest = [
            self.session,
            self.shared.as_ref().map(|s| s.bytes_per_second),
        ]
        .into_iter()
        .flatten()
        .min();
        match lowest {
            Some(rate) => {
                let chunk = (rate / 10).clamp(MIN_CHUNK, MAX_CHUNK);
                usize::try_from(chunk).unwrap_or(max).min(max)
            }
            None => max,
        }
    }

    /// Waits until `bytes` more fit both rates.
    pub(crate) async fn pace(&mut self, bytes: u64) {
        self.moved += bytes;
        let mut until = self.started;
        if let Some(rate) = self.session {
            until = until.max(self.started + duration_of(self.moved, rate));
        }
        if let Some(shared) = &self.shared {
            until = until.max(shared.book(bytes));
        }
        tokio::time::sleep_until(until).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lower bounds only: a loaded machine may be slower, never faster.

    #[tokio::test]
    async fn a_session_rate_paces_its_bytes() {
        let mut throttle = Throttle::new(100_000, None);
        assert_eq!(throttle.chunk(1 << 20), 10_000);
        let start = Instant::now();
        throttle.pace(10_000).await;
        throttle.pace(10_000).await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn the_shared_rate_is_split_between_transfers() {
        let shared = SharedRate::new(100_000);
        let mut a = Throttle::new(0, shared.clone());
        let mut b = Throttle::new(0, shared);
        let start = Instant::now();
        let (_, _) = tokio::join!(a.pace(10_000), b.pace(10_000));
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(Throttle::new(0, None).chunk(77), 77);
    }
}
