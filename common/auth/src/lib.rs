//! Users and logins for every inetkit daemon: the shared users file (Dovecot passwd-file
//! format, `/etc/inetkit/users`), password verification, SASL decoding and the guard against
//! password guessing.
//!
//! What a daemon does:
//!
//! ```ignore
//! // config: `#[serde(default)] auth: AuthConfig` gives an `[auth]` section (see AuthConfig).
//! let auth = config.auth.authenticator();      // at start; Clone is cheap (an Arc)
//!
//! // in a session, before offering or accepting USER/PASS, AUTH or LOGIN:
//! if !auth.plaintext_allowed(peer.ip(), is_tls) { /* refuse, say "use STARTTLS" */ }
//! let creds = sasl::decode_plain(line)?;       // or LOGIN / USER+PASS / HTTP Basic
//! match auth.login(peer.ip(), &creds.name, &creds.password).await {
//!     Ok(user) => { /* user.name, user.home, ... */ }
//!     Err(AuthError::Failed) => { /* "-ERR [AUTH] ..." (the delay has already been slept) */ }
//!     Err(AuthError::Throttled) => { /* refuse, maybe close the connection */ }
//!     Err(AuthError::Unavailable { .. }) => { /* temporary failure, "[SYS/TEMP]" */ }
//! }
//!
//! // smtp-submit, for a local recipient:
//! match auth.try_lookup("alice") { Ok(Some(user)) => ..., Ok(None) => 550, Err(_) => 451 }
//! ```
//!
//! The file is checked (one `stat`) on every lookup and re-read when its inode, size, mtime
//! or ctime changed, so a line added by hand works at once. Failed logins are logged with the
//! peer address and the name tried, never the password.
#![warn(missing_docs)]

mod config;
mod guard;
pub mod hash;
pub mod sasl;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod users;

use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;

pub use config::{AuthConfig, Plaintext, DEFAULT_USERS_FILE};
pub use guard::{Attempt, Guard, GuardPolicy, PeerKey, Penalty, Throttled};
pub use users::{check_name, User, UsersFile};

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (deliberately not told apart).
    #[error("authentication failed")]
    Failed,
    /// Too many failures from this address: refused without checking.
    #[error("too many failed logins from this address; try again later")]
    Throttled,
    /// The users file cannot be read: a temporary failure, not the client's fault.
    #[error("users file {path}: {source}")]
    Unavailable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks logins against the users file, with the brute-force guard, and says whether a
/// password may be sent without TLS. Clone it freely.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
    plaintext: Plaintext,
}

struct Inner {
    users: UsersSource,
    guard: Guard,
    /// Bounds the hash verifications running at once: ARGON2ID needs 64 MiB and a core for
    /// a while, and a flood of logins must not take all memory.
    verifications: Arc<Semaphore>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("users_file", &self.inner.users.path)
            .finish_non_exhaustive()
    }
}

/// How the outcome of a password check is logged.
enum Outcome {
    Ok(User),
    UnknownUser,
    NoPassword,
    WrongPassword,
}

impl Authenticator {
    pub fn new(users_file: impl Into<PathBuf>, policy: GuardPolicy) -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        Authenticator {
            inner: Arc::new(Inner {
                users: UsersSource::new(users_file.into()),
                guard: Guard::new(policy),
                verifications: Arc::new(Semaphore::new(parallel)),
            }),
            plaintext: Plaintext::default(),
        }
    }

    /// The same, with `plaintext` as its policy for passwords sent without TLS.
    pub fn with_plaintext(mut self, plaintext: Plaintext) -> Self {
        self.plaintext = plaintext;
        self
    }

    /// May a client at `peer` send a password now (`tls`: over an encrypted connection)?
    /// Every protocol asks this both before accepting a login (USER/PASS, AUTH, LOGIN, HTTP
    /// Basic) and before advertising one in the clear.
    pub fn plaintext_allowed(&self, peer: IpAddr, tls: bool) -> bool {
        self.plaintext.allows(peer, tls)
    }

    pub fn users_file(&self) -> &Path {
        &self.inner.users.path
    }

    /// Checks `name` and `password` for a client at `peer`.
    ///
    /// On failure it sleeps the peer's growing delay before returning, so the caller just
    /// answers. An unknown user costs the same hash computation as a wrong password. The hash
    /// is verified on tokio's blocking pool; the returned future may be dropped at any time.
    pub async fn login(
        &self,
        peer: IpAddr,
        name: &str,
        password: &[u8],
    ) -> Result<User, AuthError> {
        let shown = Shown(name);
        let attempt = match self.inner.guard.begin(peer, Instant::now()) {
            Ok(attempt) => attempt,
            Err(Throttled) => {
                // The lockout itself was logged; its refusals would only flood the log.
                tracing::debug!(%peer, user = %shown, "login refused: address locked out");
                return Err(AuthError::Throttled);
            }
        };
        let outcome = self.check(name, password).await;
        let reason = match outcome {
            Ok(Outcome::Ok(user)) => {
                attempt.succeeded(Instant::now());
                tracing::debug!(%peer, user = %shown, "login ok");
                return Ok(user);
            }
            Err(err) => {
                // Not the client's doing: not a failure for the guard (the attempt is dropped).
                // The unreadable file is logged where it is read, once.
                tracing::debug!(%peer, user = %shown, "login impossible: {err}");
                return Err(err);
            }
            Ok(Outcome::UnknownUser) => "unknown user",
            Ok(Outcome::NoPassword) => "user has no usable password",
            Ok(Outcome::WrongPassword) => "wrong password",
        };
        let penalty = attempt.failed(Instant::now());
        let delay_ms = u64::try_from(penalty.delay.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(%peer, user = %shown, delay_ms, "login failed: {reason}");
        if penalty.locked_out {
            let lockout = self.inner.guard.policy().lockout.as_secs();
            tracing::warn!(%peer, "too many failed logins: address locked out for {lockout} s");
        }
        tokio::time::sleep(penalty.delay).await;
        Err(AuthError::Failed)
    }

    /// Runs the file lookup and the hash check on the blocking pool.
    async fn check(&self, name: &str, password: &[u8]) -> Result<Outcome, AuthError> {
        // The permit moves into the blocking task, so it is held until the hash is done even
        // if this future is dropped.
        let permit = self.inner.verifications.clone().acquire_owned().await.ok();
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        let password = password.to_vec();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let users = inner.users.current()?;
            Ok(match users.get(&name) {
                Some(entry) => match &entry.password {
                    Some(stored) if stored.verify(&password) => Outcome::Ok(entry.user.clone()),
                    Some(_) => Outcome::WrongPassword,
                    None => {
                        hash::verify_dummy(&password);
                        Outcome::NoPassword
                    }
                },
                None => {
                    hash::verify_dummy(&password);
                    Outcome::UnknownUser
                }
            })
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(err) => {
                // A panic in a hash crate: refuse, and say so.
                tracing::error!("password check failed: {err}");
                Ok(Outcome::WrongPassword)
            }
        }
    }

    /// The user called `name`, if any; `None` also when the file cannot be read (logged).
    pub fn lookup(&self, name: &str) -> Option<User> {
        self.try_lookup(name).ok().flatten()
    }

    /// Like [`lookup`](Self::lookup), but tells "no such user" from "cannot tell now", so a
    /// daemon can answer with a temporary error in the second case.
    pub fn try_lookup(&self, name: &str) -> Result<Option<User>, AuthError> {
        let users = self.inner.users.current()?;
        Ok(users.get(name).map(|entry| entry.user.clone()))
    }
}

/// A client-supplied name as logged: escaped and cut short.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 64;
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX {
                return f.write_str("…");
            }
            write!(f, "{}", c.escape_debug())?;
        }
        Ok(())
    }
}

/// The users file and the last parsed version of it.
struct UsersSource {
    path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    stamp: Option<Stamp>,
    users: Arc<UsersFile>,
    /// The last read failed (logged once, until it works again).
    failing: bool,
}

/// What tells us the file changed: a rename (the admin tool) gives a new inode, an edit in
/// place a new mtime/ctime and usually size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl UsersSource {
    fn new(path: PathBuf) -> UsersSource {
        UsersSource {
            path,
            state: Mutex::new(Loaded::default()),
        }
    }

    /// The users as the file says now: one `stat`, and a re-read when it changed.
    fn current(&self) -> Result<Arc<UsersFile>, AuthError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.refresh(&mut state) {
            Ok(()) => {
                if state.failing {
                    tracing::info!(path = %self.path.display(), "users file readable again");
                    state.failing = false;
                }
                Ok(Arc::clone(&state.users))
            }
            Err(source) => {
                if !state.failing {
                    tracing::error!(path = %self.path.display(), "cannot read the users file: {source}");
                    state.failing = true;
                }
                // Whatever was loaded before is not served: the file may have been emptied
                // on purpose, and logins must follow the file.
                state.stamp = None;
                Err(AuthError::Unavailable {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    fn refresh(&self, state: &mut Loaded) -> std::io::Result<()> {
        let stamp = Stamp::of(&std::fs::metadata(&self.path)?);
        if state.stamp == Some(stamp) {
            return Ok(());
        }
        // Read from the opened file and stamp what was read, so a change during the read
        // is seen next time.
        let mut file = std::fs::File::open(&self.path)?;
        let stamp = Stamp::of(&file.metadata()?);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)?;
        let (users, problems) = UsersFile::parse(&bytes);
        for problem in &problems {
            tracing::warn!(
                "{}:{}: {}",
                self.path.display(),
                problem.line,
                problem.message
            );
        }
        tracing::info!(path = %self.path.display(), users = users.len(), "users file loaded");
        state.users = Arc::new(users);
        state.stamp = Some(stamp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("inetkit-auth-{tag}-{}", std::process::id()));
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
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
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
        let auth = Authenticator::new(&path, quick());
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
        let auth = Authenticator::new(&path, quick());
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
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(80),
            ..quick()
        };
        let auth = Authenticator::new(&path, policy);
        let rt = runtime();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

        // Wrong password, unknown user, user without password: all plain failures, each
        // returning only after the delay.
        for name in ["alice", "nobody", "carol"] {
            let started = Instant::now();
            let result = rt.block_on(auth.login(LOCAL, name, b"guess"));
            assert!(
                matches!(result, Err(AuthError::Failed)),
                "{name}: {result:?}"
            );
            assert!(started.elapsed() >= Duration::from_millis(50), "{name}");
        }
        // Three failures: even the right password is refused now, without a check.
        let result = rt.block_on(auth.login(LOCAL, "alice", b"pw"));
        assert!(matches!(result, Err(AuthError::Throttled)), "{result:?}");
        // Another address is not affected.
        assert!(rt.block_on(auth.login(other, "alice", b"pw")).is_ok());
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
}
