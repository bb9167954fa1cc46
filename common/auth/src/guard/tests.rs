use super::*;

use std::net::Ipv4Addr;

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

/// A time well after the clock's start, so that "earlier" moments exist.
const T0: Moment = Moment::from_millis(1_000_000_000);

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

fn fail(guard: &Guard, peer: IpAddr, now: Moment) -> Duration {
    fail_penalty(guard, peer, now).delay
}

fn fail_penalty(guard: &Guard, peer: IpAddr, now: Moment) -> Penalty {
    match guard.begin(peer, now) {
        Ok(attempt) => attempt.failed(now),
        Err(refusal) => panic!("refused too early: {refusal:?}"),
    }
}

fn succeed(guard: &Guard, peer: IpAddr, now: Moment) -> Result<(), Refusal> {
    guard.begin(peer, now)?.succeeded(now)
}

/// A directory of its own for a test's state files.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("inetkit-guard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(err) = std::fs::create_dir_all(&dir) {
            panic!("{}: {err}", dir.display());
        }
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("login-guard")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The same rules hold in memory and in a state file.
fn both(tag: &str, policy: GuardPolicy, test: impl Fn(&Guard)) {
    test(&Guard::new(policy.clone()));
    let dir = TempDir::new(tag);
    let guard = Guard::shared(policy, dir.file());
    test(&guard);
    assert!(dir.file().exists(), "{tag}: the state file was used");
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
    both("lockout", policy(), |guard| {
        let penalties: Vec<(u64, bool)> = (0..5)
            .map(|i| fail_penalty(guard, A, T0 + secs(i)))
            .map(|p| (p.delay.as_secs(), p.locked_out))
            .collect();
        assert_eq!(
            penalties,
            [(1, false), (2, false), (4, false), (4, false), (4, true)]
        );
        // Locked: refused without being counted, another address is unaffected.
        assert_eq!(
            guard.begin(A, T0 + secs(10)).err(),
            Some(Refusal::LockedOut)
        );
        assert_eq!(
            guard.begin(A, T0 + secs(4 + 299)).err(),
            Some(Refusal::LockedOut)
        );
        assert_eq!(fail(guard, B, T0 + secs(10)), secs(1));
        // The lockout ends and the slate is clean.
        assert_eq!(fail(guard, A, T0 + secs(4 + 300)), secs(1));
    });
}

#[test]
fn zero_max_failures_never_locks() {
    let policy = GuardPolicy {
        max_failures: 0,
        ..policy()
    };
    both("zero", policy, |guard| {
        let running: Vec<_> = (0..20).filter_map(|_| guard.begin(A, T0).ok()).collect();
        assert_eq!(running.len(), 20);
        for attempt in running {
            attempt.failed(T0);
        }
        assert_eq!(fail(guard, A, T0), secs(4));
    });
}

#[test]
fn the_window_forgets_old_failures() {
    both("window", policy(), |guard| {
        for i in 0..4 {
            fail(guard, A, T0 + secs(i));
        }
        // 60 s after the first failure the run is over: the delay starts again and
        // four more failures do not lock.
        let t1 = T0 + secs(60);
        let delays: Vec<u64> = (0..4)
            .map(|i| fail(guard, A, t1 + secs(i)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 4]);
        assert!(guard.begin(A, t1 + secs(5)).is_ok());
    });
}

#[test]
fn success_ends_the_streak_but_not_the_count() {
    both("streak", policy(), |guard| {
        fail(guard, A, T0);
        fail(guard, A, T0);
        fail(guard, A, T0);
        assert_eq!(succeed(guard, A, T0), Ok(()));
        // The delay starts over...
        assert_eq!(fail(guard, A, T0), secs(1));
        // ...but that was the 4th failure in the window, and the 5th locks.
        fail(guard, A, T0);
        assert_eq!(guard.begin(A, T0).err(), Some(Refusal::LockedOut));
    });
}

#[test]
fn a_clean_success_leaves_nothing_behind() {
    both("clean", policy(), |guard| {
        let Ok(attempt) = guard.begin(A, T0) else {
            panic!("refused")
        };
        assert_eq!(guard.tracked(), 1);
        assert_eq!(attempt.succeeded(T0), Ok(()));
        assert_eq!(guard.tracked(), 0);
        // An abandoned attempt is not a failure either.
        if let Ok(attempt) = guard.begin(A, T0) {
            attempt.abandoned(T0);
        }
        assert_eq!(guard.tracked(), 0);
    });
}

#[test]
fn parallel_attempts_reserve_guesses() {
    both("parallel", policy(), |guard| {
        // A fresh address: max_failures attempts may be checked at once, no more.
        let running: Vec<_> = (0..40).filter_map(|_| guard.begin(A, T0).ok()).collect();
        assert_eq!(running.len(), 5);
        assert_eq!(guard.begin(A, T0).err(), Some(Refusal::Busy));
        let locked: Vec<bool> = running
            .into_iter()
            .map(|a| a.failed(T0).locked_out)
            .collect();
        // The lockout is reported once, by the failure that caused it.
        assert_eq!(locked, [false, false, false, false, true]);
        assert_eq!(guard.begin(A, T0 + secs(1)).err(), Some(Refusal::LockedOut));
    });
}

#[test]
fn ended_attempts_give_their_guess_back() {
    both("giveback", policy(), |guard| {
        fail(guard, A, T0);
        // One failure: four guesses left, all of them taken.
        let mut running: Vec<_> = (0..5).filter_map(|_| guard.begin(A, T0).ok()).collect();
        assert_eq!(running.len(), 4);
        assert_eq!(guard.begin(A, T0).err(), Some(Refusal::Busy));
        // A success and an abandoned attempt each free a guess; a failure spends one.
        if let Some(attempt) = running.pop() {
            assert_eq!(attempt.succeeded(T0), Ok(()));
        }
        if let Some(attempt) = running.pop() {
            attempt.abandoned(T0);
        }
        if let Some(attempt) = running.pop() {
            attempt.failed(T0);
        }
        let more: Vec<_> = (0..5).filter_map(|_| guard.begin(A, T0).ok()).collect();
        assert_eq!(more.len(), 2);
    });
}

#[test]
fn no_success_while_locked_out() {
    // Two daemons on one file, one with a lower limit: it locks the address while the
    // other is still checking a password, and that check's success is refused.
    let dir = TempDir::new("success");
    let lenient = Guard::shared(policy(), dir.file());
    let strict = Guard::shared(
        GuardPolicy {
            max_failures: 3,
            ..policy()
        },
        dir.file(),
    );
    let Ok(pending) = lenient.begin(A, T0) else {
        panic!("refused")
    };
    for _ in 0..3 {
        fail(&lenient, A, T0);
    }
    assert_eq!(strict.begin(A, T0).err(), Some(Refusal::LockedOut));
    assert_eq!(pending.succeeded(T0), Err(Refusal::LockedOut));
    assert_eq!(lenient.begin(A, T0).err(), Some(Refusal::LockedOut));
}

#[test]
fn a_higher_count_from_another_daemon_locks_at_our_limit() {
    let dir = TempDir::new("limits");
    let lenient = Guard::shared(policy(), dir.file());
    let strict = Guard::shared(
        GuardPolicy {
            max_failures: 3,
            ..policy()
        },
        dir.file(),
    );
    for _ in 0..3 {
        fail(&lenient, A, T0);
    }
    assert_eq!(strict.begin(A, T0).err(), Some(Refusal::LockedOut));
    // ... and the lock it set holds for everyone.
    assert_eq!(lenient.begin(A, T0).err(), Some(Refusal::LockedOut));
}

#[test]
fn reservations_of_a_dead_process_expire() {
    let dir = TempDir::new("dead");
    {
        let crashed = Guard::shared(policy(), dir.file());
        for _ in 0..5 {
            // Never ended: the process died mid-check.
            std::mem::forget(crashed.begin(A, T0));
        }
    }
    let guard = Guard::shared(policy(), dir.file());
    assert_eq!(guard.begin(A, T0 + secs(1)).err(), Some(Refusal::Busy));
    assert!(guard.begin(A, T0 + RESERVATION_TTL).is_ok());
}

#[test]
fn two_daemons_share_one_file() {
    let dir = TempDir::new("shared");
    let pop3d = Guard::shared(policy(), dir.file());
    let imapd = Guard::shared(policy(), dir.file());
    // Failures in either count for both: five in all lock the address everywhere.
    for i in 0..4 {
        let guard = if i % 2 == 0 { &pop3d } else { &imapd };
        fail(guard, A, T0 + secs(i));
    }
    assert_eq!(fail(&imapd, A, T0 + secs(4)), secs(4));
    assert_eq!(pop3d.begin(A, T0 + secs(5)).err(), Some(Refusal::LockedOut));
    assert_eq!(imapd.begin(A, T0 + secs(5)).err(), Some(Refusal::LockedOut));
    // Guesses in flight are shared too.
    let running: Vec<_> = (0..3).filter_map(|_| pop3d.begin(B, T0).ok()).collect();
    let more: Vec<_> = (0..5).filter_map(|_| imapd.begin(B, T0).ok()).collect();
    assert_eq!((running.len(), more.len()), (3, 2));
    for attempt in running.into_iter().chain(more) {
        attempt.abandoned(T0);
    }
    // The lockout expires for both, and a daemon started later sees it all.
    let later = Guard::shared(policy(), dir.file());
    assert_eq!(
        later.begin(A, T0 + secs(10)).err(),
        Some(Refusal::LockedOut)
    );
    assert_eq!(later.tracked(), 1);
    assert!(pop3d.begin(A, T0 + secs(4 + 300)).is_ok());
}

#[test]
fn the_state_file_has_a_fixed_size_and_is_group_writable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("size");
    let guard = Guard::shared(
        GuardPolicy {
            max_tracked: 10,
            ..policy()
        },
        dir.file(),
    );
    for i in 0..50u32 {
        let peer = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        fail(&guard, peer, T0 + Duration::from_millis(u64::from(i)));
        assert!(guard.tracked() <= 10);
    }
    let meta = std::fs::metadata(dir.file());
    assert_eq!(meta.as_ref().map(|m| m.len()).ok(), Some(64 + 10 * 64));
    assert_eq!(
        meta.map(|m| m.permissions().mode() & 0o777).ok(),
        Some(0o660)
    );
    // A daemon configured for a bigger table uses the file as it is.
    let other = Guard::shared(policy(), dir.file());
    fail(&other, A, T0 + secs(1));
    assert_eq!(
        std::fs::metadata(dir.file()).map(|m| m.len()).ok(),
        Some(64 + 10 * 64)
    );
}

#[test]
fn a_damaged_or_replaced_file_is_started_over() {
    let dir = TempDir::new("damaged");
    let guard = Guard::shared(policy(), dir.file());
    fail(&guard, A, T0);
    assert_eq!(guard.tracked(), 1);
    // Garbage written over it: a fresh table, and the guard goes on.
    if let Err(err) = std::fs::write(dir.file(), b"not a guard file") {
        panic!("{err}");
    }
    assert_eq!(guard.tracked(), 0);
    fail(&guard, A, T0);
    assert_eq!(guard.tracked(), 1);
    // Replaced by a new file (new inode): reopened, not written through the old descriptor.
    let _ = std::fs::remove_file(dir.file());
    assert_eq!(guard.tracked(), 0);
    fail(&guard, A, T0);
    let fresh = Guard::shared(policy(), dir.file());
    assert_eq!(fresh.tracked(), 1);
}

#[test]
fn without_its_directory_a_guard_counts_alone() {
    let dir = TempDir::new("nodir");
    let path = dir.0.join("missing").join("login-guard");
    let guard = Guard::shared(policy(), &path);
    assert_eq!(guard.state_file(), Some(path.as_path()));
    for i in 0..5 {
        fail(&guard, A, T0 + secs(i));
    }
    assert_eq!(guard.begin(A, T0 + secs(6)).err(), Some(Refusal::LockedOut));
    assert!(!path.exists() && !path.parent().is_some_and(Path::exists));
}

#[test]
fn a_symlink_is_not_followed() {
    let dir = TempDir::new("symlink");
    let target = dir.0.join("target");
    if let Err(err) = std::fs::write(&target, b"precious") {
        panic!("{err}");
    }
    if let Err(err) = std::os::unix::fs::symlink(&target, dir.file()) {
        panic!("{err}");
    }
    let guard = Guard::shared(policy(), dir.file());
    fail(&guard, A, T0);
    assert_eq!(std::fs::read(&target).ok(), Some(b"precious".to_vec()));
}

#[test]
fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
    both("ipv6", policy(), |guard| {
        for last in 1..=5u16 {
            let peer = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
            fail(guard, peer, T0);
        }
        let same_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 1, 2, 3));
        let other_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(guard.begin(same_64, T0).err(), Some(Refusal::LockedOut));
        assert!(guard.begin(other_64, T0).is_ok());
        let mapped: IpAddr = match "::ffff:192.0.2.1".parse() {
            Ok(ip) => ip,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(PeerKey::from(mapped), PeerKey::from(A));
        assert_eq!(
            PeerKey::from_octets(PeerKey::from(A).octets()),
            PeerKey::from(A)
        );
    });
}

#[test]
fn the_table_is_bounded() {
    let policy = GuardPolicy {
        max_tracked: 10,
        ..policy()
    };
    both("bounded", policy, |guard| {
        for i in 0..50u32 {
            let peer = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            fail(guard, peer, T0 + Duration::from_millis(u64::from(i)));
            assert!(guard.tracked() <= 10);
        }
        // The most recent addresses are the ones kept.
        let recent = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 49));
        assert_eq!(fail(guard, recent, T0 + secs(1)), secs(2));
        // Once their window is over, records are stale and make room first.
        fail(guard, A, T0 + secs(61));
        let peer = IpAddr::V4(Ipv4Addr::from(0x0b00_0000));
        fail(guard, peer, T0 + secs(62));
        assert_eq!(fail(guard, A, T0 + secs(63)), secs(2));
    });
}

#[test]
fn moments_add_and_compare_without_overflow() {
    let late = Moment::from_millis(u64::MAX - 1);
    assert_eq!((late + Duration::MAX).as_millis(), u64::MAX);
    assert_eq!(T0.saturating_since(late), Duration::ZERO);
    assert_eq!((T0 + secs(2)).saturating_since(T0), secs(2));
    let now = Moment::now();
    assert!(Moment::now() >= now);
}
