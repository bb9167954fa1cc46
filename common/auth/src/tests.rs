use super::*;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => panic!("{err}"),
    }
}

/// A runtime whose clock only moves when every task waits for a timer: the time a login takes
/// on it is the time it chose to wait, exactly (checks on the blocking pool hold the clock).
fn paused_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(err) => panic!("{err}"),
    }
}

/// Runs `login` on `rt` and says how long it took on the runtime's clock.
fn timed<T>(
    rt: &tokio::runtime::Runtime,
    login: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    rt.block_on(async {
        let started = tokio::time::Instant::now();
        let out = login.await;
        (out, started.elapsed())
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An authenticator whose guard is this process's alone (a test never touches the host's
/// state file) and whose failures take `floor`.
fn authenticator(users: &Path, policy: GuardPolicy, floor: Duration) -> Authenticator {
    Authenticator::build(
        users.to_owned(),
        Guard::new(policy),
        FailureTiming::fixed(floor),
    )
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("inetkit-auth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(err) = std::fs::create_dir_all(&dir) {
            panic!("{}: {err}", dir.display());
        }
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) {
    if let Err(err) = std::fs::write(path, text) {
        panic!("{}: {err}", path.display());
    }
}

fn quick() -> GuardPolicy {
    GuardPolicy {
        base_delay: ms(1),
        max_delay: ms(4),
        max_failures: 3,
        ..GuardPolicy::default()
    }
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[test]
fn login_lookup_and_reload_on_change() {
    let dir = TempDir::new("reload");
    let path = dir.0.join("users");
    write(&path, "alice:{PLAIN}wonderland::::/srv/alice::\n");
    let auth = authenticator(&path, quick(), ms(1));
    let rt = runtime();

    let user = rt.block_on(auth.login(LOCAL, "alice", b"wonderland"));
    assert_eq!(
        user.ok().and_then(|u| u.home),
        Some(PathBuf::from("/srv/alice"))
    );
    assert!(matches!(
        rt.block_on(auth.login(LOCAL, "alice", b"x")),
        Err(AuthError::Failed)
    ));
    assert!(auth.lookup("bob").is_none());

    // A line added in place (same inode) works at once.
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str("bob:{PLAIN}builder\n");
    write(&path, &text);
    assert_eq!(auth.lookup("bob").map(|u| u.name), Some("bob".to_string()));
    assert!(rt.block_on(auth.login(LOCAL, "bob", b"builder")).is_ok());

    // A replaced file (new inode, as the admin tool writes it) too; alice is gone.
    let new = dir.0.join("users.new");
    write(&new, "bob:{PLAIN}changed\n");
    if let Err(err) = std::fs::rename(&new, &path) {
        panic!("{err}");
    }
    assert!(auth.lookup("alice").is_none());
    assert!(matches!(
        rt.block_on(auth.login(LOCAL, "bob", b"builder")),
        Err(AuthError::Failed)
    ));
    assert!(rt.block_on(auth.login(LOCAL, "bob", b"changed")).is_ok());
}

#[test]
fn unreadable_file_is_unavailable_not_failed() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("users");
    let auth = authenticator(&path, quick(), ms(1));
    let rt = runtime();
    assert!(matches!(
        auth.try_lookup("alice"),
        Err(AuthError::Unavailable { .. })
    ));
    // Not counted against the client: more attempts than max_failures stay Unavailable.
    for _ in 0..5 {
        let result = rt.block_on(auth.login(LOCAL, "alice", b"pw"));
        assert!(
            matches!(result, Err(AuthError::Unavailable { .. })),
            "{result:?}"
        );
    }
    write(&path, "alice:{PLAIN}pw\n");
    assert!(rt.block_on(auth.login(LOCAL, "alice", b"pw")).is_ok());
    // Deleting the file stops logins rather than serving a stale copy.
    let _ = std::fs::remove_file(&path);
    assert!(matches!(
        rt.block_on(auth.login(LOCAL, "alice", b"pw")),
        Err(AuthError::Unavailable { .. })
    ));
}

#[test]
fn failures_are_delayed_then_throttled() {
    let dir = TempDir::new("guard");
    let path = dir.0.join("users");
    write(&path, "alice:{PLAIN}pw\ncarol:\n");
    let policy = GuardPolicy {
        base_delay: ms(50),
        max_delay: ms(80),
        ..quick()
    };
    let auth = authenticator(&path, policy, ms(1));
    let rt = paused_runtime();
    let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    // Wrong password, unknown user, user without password: all plain failures, each
    // returning after the floor and the growing delay.
    for (name, delay) in [("alice", 50), ("nobody", 80), ("carol", 80)] {
        let (result, waited) = timed(&rt, auth.login(LOCAL, name, b"guess"));
        assert!(
            matches!(result, Err(AuthError::Failed)),
            "{name}: {result:?}"
        );
        assert_eq!(waited, ms(1 + delay), "{name}");
    }
    // Three failures: even the right password is refused now, without a check.
    let result = rt.block_on(auth.login(LOCAL, "alice", b"pw"));
    assert!(matches!(result, Err(AuthError::Throttled)), "{result:?}");
    // Another address is not affected.
    assert!(rt.block_on(auth.login(other, "alice", b"pw")).is_ok());
}

#[test]
fn a_remembered_login_is_readmitted_unless_its_address_is_locked_out() {
    let dir = TempDir::new("readmit");
    let path = dir.0.join("users");
    write(&path, "alice:{PLAIN}pw\n");
    let auth = authenticator(&path, quick(), ms(1));
    let rt = paused_runtime();
    let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    assert!(rt.block_on(auth.readmit(LOCAL, "alice")).is_ok());
    // Two failures, then a readmission: it counts as a login that succeeded, which ends the
    // streak of failures (their delay starts again) but not their count.
    for _ in 0..2 {
        let result = rt.block_on(auth.login(LOCAL, "alice", b"guess"));
        assert!(matches!(result, Err(AuthError::Failed)), "{result:?}");
    }
    assert!(rt.block_on(auth.readmit(LOCAL, "alice")).is_ok());
    let (result, waited) = timed(&rt, auth.login(LOCAL, "alice", b"guess"));
    assert!(matches!(result, Err(AuthError::Failed)), "{result:?}");
    assert_eq!(waited, ms(1 + 1), "the delay of a first failure");
    // The third failure locked the address out: no readmission from it, nor a login.
    let result = rt.block_on(auth.readmit(LOCAL, "alice"));
    assert!(matches!(result, Err(AuthError::Throttled)), "{result:?}");
    let result = rt.block_on(auth.login(LOCAL, "alice", b"pw"));
    assert!(matches!(result, Err(AuthError::Throttled)), "{result:?}");
    assert!(rt.block_on(auth.readmit(other, "alice")).is_ok());
}

#[test]
fn the_users_and_the_stamp_of_the_version_read() {
    let dir = TempDir::new("stamp");
    let path = dir.0.join("users");
    write(&path, "alice:{PLAIN}pw\n");
    let auth = authenticator(&path, quick(), ms(1));
    let stamp = |path: &Path| std::fs::metadata(path).map(|m| FileStamp::of(&m)).ok();
    let (users, first) = match auth.users_with_stamp() {
        Ok(found) => found,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(Some(first), stamp(&path));
    assert!(users.find("alice", &[]).is_some());
    let new = dir.0.join("users.new");
    write(&new, "bob:{PLAIN}pw\n");
    if let Err(err) = std::fs::rename(&new, &path) {
        panic!("{err}");
    }
    let (users, second) = match auth.users_with_stamp() {
        Ok(found) => found,
        Err(err) => panic!("{err}"),
    };
    assert_ne!(first, second);
    assert_eq!(Some(second), stamp(&path));
    assert!(users.find("alice", &[]).is_none() && users.find("bob", &[]).is_some());
    let _ = std::fs::remove_file(&path);
    assert!(matches!(
        auth.users_with_stamp(),
        Err(AuthError::Unavailable { .. })
    ));
}

const SHA512: &str = "{SHA512-CRYPT}$6$ay2kaGB3g3VLUEIv$6z3UYmAzKE0YEOA7XzB/5RZR36V1k5WXD6KfEcGbhHULGf6KxrSH3ktAZTG9n82XNHXwwrg6.0zxgqNEbV5em.";

#[test]
fn every_failure_is_answered_at_the_same_time() {
    // Each way a login can fail, and the same floor for all: the answer comes exactly at
    // the floor after the check started, whatever the check cost (a dummy ARGON2ID, a
    // SHA512-CRYPT verification, a PLAIN comparison or nothing). No delay from the guard
    // here, so the floor is all there is.
    let dir = TempDir::new("timing");
    let path = dir.0.join("users");
    write(
        &path,
        &format!("alice:{SHA512}\nbob:{{PLAIN}}secret\ncarol:\ndave:{{PLAIN}}\n"),
    );
    let policy = GuardPolicy {
        base_delay: Duration::ZERO,
        max_failures: 0,
        ..quick()
    };
    let floor = ms(700);
    let auth = authenticator(&path, policy, floor);
    let rt = paused_runtime();
    let cases: [(&str, &[u8]); 7] = [
        ("nobody", b"guess"), // unknown user: the dummy
        ("alice", b"guess"),  // SHA512-CRYPT
        ("bob", b"guess"),    // PLAIN
        ("carol", b"guess"),  // no password field
        ("dave", b"guess"),   // empty {PLAIN}: no password
        ("bob", b""),         // empty password
        ("nobody", b""),      // both
    ];
    for (name, password) in cases {
        let (result, waited) = timed(&rt, auth.login(LOCAL, name, password));
        assert!(
            matches!(result, Err(AuthError::Failed)),
            "{name}: {result:?}"
        );
        assert_eq!(waited, floor, "{name} {password:?}");
    }
    // A success is not padded.
    let (result, waited) = timed(&rt, auth.login(LOCAL, "bob", b"secret"));
    assert!(result.is_ok());
    assert_eq!(waited, Duration::ZERO);
}

#[test]
fn the_measured_floor_covers_the_dummy_from_the_first_failure() {
    // No floor set by hand: the first failure of a fresh process (a cheap PLAIN one) runs
    // the dummy to learn the floor, and is answered no sooner than that.
    let dir = TempDir::new("measured");
    let path = dir.0.join("users");
    write(&path, "bob:{PLAIN}secret\n");
    let policy = GuardPolicy {
        base_delay: Duration::ZERO,
        ..quick()
    };
    let auth = Authenticator::build(path, Guard::new(policy), FailureTiming::measured());
    let rt = paused_runtime();
    let (result, waited) = timed(&rt, auth.login(LOCAL, "bob", b"guess"));
    assert!(result.is_err());
    assert_eq!(waited, auth.inner.timing.floor());
    assert!(waited >= timing::MIN_FLOOR);
}

#[test]
fn an_empty_password_never_logs_in() {
    let dir = TempDir::new("empty");
    let path = dir.0.join("users");
    write(&path, "dave:{PLAIN}\nerin:{PLAIN}x\n");
    let auth = authenticator(&path, quick(), ms(1));
    let rt = runtime();
    for name in ["dave", "erin"] {
        let result = rt.block_on(auth.login(LOCAL, name, b""));
        assert!(
            matches!(result, Err(AuthError::Failed)),
            "{name}: {result:?}"
        );
    }
    // dave still exists (a mail recipient), he just cannot log in.
    assert!(auth.lookup("dave").is_some());
}

#[test]
fn parallel_guesses_are_checked_at_most_max_failures_times() {
    // 40 logins at once from one fresh address: only max_failures are checked; the others
    // wait for a guess to come back and are refused once the address is locked out.
    let dir = TempDir::new("parallel");
    let path = dir.0.join("users");
    write(&path, "alice:{PLAIN}right\n");
    let policy = GuardPolicy {
        max_failures: 10,
        ..quick()
    };
    let auth = authenticator(&path, policy, ms(5));
    let rt = runtime();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let auth = auth.clone();
                // One of them knows the password.
                let password: &[u8] = if i == 20 { b"right" } else { b"wrong" };
                tokio::spawn(async move { auth.login(LOCAL, "alice", password).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        results
    });
    let count = |f: fn(&Result<User, AuthError>) -> bool| {
        results.iter().filter(|r| r.as_ref().is_ok_and(f)).count()
    };
    let failed = count(|r| matches!(r, Err(AuthError::Failed)));
    let throttled = count(|r| matches!(r, Err(AuthError::Throttled)));
    let ok = count(|r| r.is_ok());
    assert_eq!(failed, 10, "{results:?}");
    assert_eq!(failed + throttled + ok, 40);
    // The right password was either checked within the budget or refused: never accepted
    // after the lockout, which comes only after the 10th wrong guess.
    assert!(ok <= 1);
    assert!(matches!(
        rt.block_on(auth.login(LOCAL, "alice", b"right")),
        Err(AuthError::Throttled)
    ));
}

#[test]
fn two_authenticators_share_the_lockout_through_the_state_file() {
    let dir = TempDir::new("sharedauth");
    let path = dir.0.join("users");
    write(&path, "alice:{PLAIN}right\n");
    let state = dir.0.join("login-guard");
    let make = || {
        Authenticator::build(
            path.clone(),
            Guard::shared(quick(), &state),
            FailureTiming::fixed(ms(1)),
        )
    };
    let (pop3d, imapd) = (make(), make());
    let rt = runtime();
    for auth in [&pop3d, &imapd, &pop3d] {
        assert!(matches!(
            rt.block_on(auth.login(LOCAL, "alice", b"wrong")),
            Err(AuthError::Failed)
        ));
    }
    assert!(matches!(
        rt.block_on(imapd.login(LOCAL, "alice", b"right")),
        Err(AuthError::Throttled)
    ));
}

#[test]
fn an_unreadable_users_file_names_its_cause_once() {
    let dir = TempDir::new("unreadable");
    let missing = dir.0.join("no-such-users");
    let auth = Authenticator::build(
        missing.clone(),
        Guard::new(quick()),
        FailureTiming::fixed(ms(1)),
    );
    let Err(err) = auth.try_lookup("alice") else {
        panic!("a missing users file was read")
    };
    let Some(cause) = std::error::Error::source(&err).map(ToString::to_string) else {
        panic!("no cause kept: {err:?}")
    };
    let shown = err.to_string();
    assert_eq!(
        shown,
        format!("users file {} cannot be read", missing.display())
    );
    // As a log or anyhow's `{:#}` shows it: each cause after its error.
    let mut chain = shown.clone();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain = format!("{chain}: {cause}");
        source = cause.source();
    }
    assert_eq!(chain.matches(&cause).count(), 1, "{chain}");
}

#[test]
fn long_odd_names_are_logged_escaped_and_short() {
    let name = format!("a\nb\u{1b}{}", "x".repeat(100));
    let shown = Shown(&name).to_string();
    assert!(shown.starts_with("a\\nb\\u{1b}xxx"), "{shown}");
    assert!(
        shown.ends_with('…') && shown.chars().count() < 80,
        "{shown}"
    );
}

#[test]
fn only_a_master_user_with_its_own_password_acts_as_another_user() {
    let dir = TempDir::new("master");
    let path = dir.0.join("users");
    write(
        &path,
        "alice:{PLAIN}wonderland\nproxy:{PLAIN}front\nbob:{PLAIN}builder\n",
    );
    let auth = authenticator(&path, quick(), ms(1)).with_master_users(&["Proxy".into()]);
    let rt = runtime();
    let creds = |name: &str, password: &[u8], authzid: Option<&str>| sasl::Credentials {
        name: name.into(),
        password: password.to_vec(),
        authzid: authzid.map(str::to_owned),
    };
    let login = |c: sasl::Credentials| rt.block_on(auth.login_credentials(LOCAL, &c));
    // The master user with its password is alice.
    let user = login(creds("proxy", b"front", Some("alice")));
    assert_eq!(user.ok().map(|u| u.name), Some("alice".to_string()));
    // Without an authzid, just itself.
    let user = login(creds("proxy", b"front", None));
    assert_eq!(user.ok().map(|u| u.name), Some("proxy".to_string()));
    // A wrong master password, a user who is no master, a user who does not exist: refused.
    assert!(matches!(
        login(creds("proxy", b"wrong", Some("alice"))),
        Err(AuthError::Failed)
    ));
    assert!(matches!(
        login(creds("bob", b"builder", Some("alice"))),
        Err(AuthError::Failed)
    ));
    assert!(matches!(
        login(creds("proxy", b"front", Some("nobody"))),
        Err(AuthError::Failed)
    ));
}
