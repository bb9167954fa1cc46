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
//!
//! What [`Authenticator::login`] promises, for every daemon alike:
//! - **An empty password never logs in**, whatever the file says; a `{PLAIN}` field with
//!   nothing after it is reported with its line number when the file is loaded.
//! - **Guesses are counted before they are checked** ([`guard`]): at most `max_failures`
//!   wrong passwords per address are ever checked before its lockout, however many
//!   connections it opens, and a locked-out address is never told a password was right.
//!   A login that finds all of its address's remaining guesses in flight waits (up to
//!   [`BUSY_WAIT`]) for one to come back.
//! - **The guard's memory is the host's**: the daemons share the state file
//!   [`DEFAULT_GUARD_STATE`] (`[auth] guard_state` names another; `""` for this process
//!   alone). The units can write it: `packaging/tmpfiles.d` makes
//!   `/run/inetkit` (`inetkit:inetkit`, 2770) and the file (0660), and every unit that takes
//!   logins has `ReadWritePaths=-/run/inetkit`; the static `inetkit` user owns it and the
//!   DynamicUser units reach it through `SupplementaryGroups=inetkit`.
//! - **Every failure takes the same time** ([`timing`](crate::timing)): an unknown user, a
//!   user without a password, an empty password and a wrong password of any scheme are all
//!   answered at the same floor (about 3/2 of a dummy ARGON2ID verification) after the check
//!   started, then the guard's delay. Timing tells nobody which names exist.
#![warn(missing_docs)]

pub mod address;
pub mod aliases;
mod config;
pub mod directory;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod hash;
pub mod sasl;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod timing;
pub mod users;

use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

pub use config::{AuthConfig, Plaintext, DEFAULT_GUARD_STATE, DEFAULT_USERS_FILE};
pub use directory::{Directory, DirectoryConfig, DirectoryError};
pub use guard::{Attempt, Guard, GuardPolicy, Moment, PeerKey, Penalty, Refusal};
pub use users::{check_name, Entry, User, UsersFile};

use directory::Found;
use timing::FailureTiming;

/// How long a login waits for one of its address's guesses to come back (see [`Refusal::Busy`])
/// before it is refused as throttled.
pub const BUSY_WAIT: Duration = Duration::from_secs(10);

/// How often a waiting login looks again.
const BUSY_POLL: Duration = Duration::from_millis(50);

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
    #[error("users file {path} cannot be read")]
    Unavailable {
        /// The users file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The directory (LDAP, PostgreSQL) does not answer: a temporary failure too.
    #[error("directory unavailable: {0}")]
    DirectoryUnavailable(#[from] DirectoryError),
}

/// Checks logins against the users file, with the brute-force guard, and says whether a
/// password may be sent without TLS. Clone it freely.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
    plaintext: Plaintext,
    /// Lower case; `local@<one of these>` also finds the user `local` ([`UsersFile::find`]).
    local_domains: Arc<[String]>,
    /// Lower case: who may act as another user ([`Authenticator::login_credentials`]).
    master_users: Arc<[String]>,
}

struct Inner {
    users: UsersSource,
    /// Users from LDAP or PostgreSQL instead of the file; `Err`: settings that cannot work.
    directory: Option<Result<Directory, DirectoryError>>,
    guard: Guard,
    /// Bounds the hash verifications running at once: ARGON2ID needs 64 MiB and a core for
    /// a while, and a flood of logins must not take all memory.
    verifications: Arc<Semaphore>,
    timing: FailureTiming,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("users_file", &self.inner.users.path)
            .field("guard_state", &self.inner.guard.state_file())
            .finish_non_exhaustive()
    }
}

/// Where a login's user comes from: the users file, looked up on the blocking pool, or a
/// directory's answer (`None`: nobody).
enum Lookup {
    File(String),
    Found(Option<Entry>),
}

/// What a password check found (each is logged differently).
enum Verdict {
    Ok(User),
    UnknownUser,
    NoPassword,
    EmptyPassword,
    WrongPassword,
}

impl Authenticator {
    /// An authenticator for `users_file` with the given guard ([`AuthConfig::authenticator`]
    /// makes both from the `[auth]` section).
    pub fn with_guard(users_file: impl Into<PathBuf>, guard: Guard) -> Self {
        Self::build(users_file.into(), guard, FailureTiming::measured())
    }

    fn build(users_file: PathBuf, guard: Guard, timing: FailureTiming) -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        Authenticator {
            inner: Arc::new(Inner {
                users: UsersSource::new(users_file),
                directory: None,
                guard,
                verifications: Arc::new(Semaphore::new(parallel)),
                timing,
            }),
            plaintext: Plaintext::default(),
            local_domains: default_local_domains().into(),
            master_users: Vec::new().into(),
        }
    }

    /// The same, with `domains` as the mail domains whose addresses also name plain users:
    /// `alice@example.org` logs in as `alice` when there is no user `alice@example.org` and
    /// `example.org` is one of them. Empty: `localhost` and the host's name.
    pub fn with_local_domains(mut self, domains: &[String]) -> Self {
        self.local_domains = if domains.is_empty() {
            default_local_domains().into()
        } else {
            domains.iter().map(|d| d.to_ascii_lowercase()).collect()
        };
        self
    }

    /// The same, letting `users` (the `[auth] master_users`) log in as anyone through
    /// [`login_credentials`](Self::login_credentials).
    pub fn with_master_users(mut self, users: &[String]) -> Self {
        self.master_users = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        self
    }

    /// The local mail domains, lower case (see [`Authenticator::with_local_domains`]).
    pub fn local_domains(&self) -> &[String] {
        &self.local_domains
    }

    /// Is `domain` (any case) one of the [local domains](Authenticator::local_domains)?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// The same, with users from `directory` instead of the users file (`Err`: settings
    /// that cannot work, logged here and given to every login as a temporary failure).
    pub fn with_directory(mut self, directory: Result<Directory, DirectoryError>) -> Self {
        match &directory {
            Ok(d) => tracing::debug!("users from the {}", d.describe()),
            Err(err) => tracing::error!("[auth.directory] cannot work: {err}"),
        }
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.directory = Some(directory),
            None => tracing::error!("directory set on a shared authenticator: ignored"),
        }
        self
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

    /// The users file this authenticator reads.
    pub fn users_file(&self) -> &Path {
        &self.inner.users.path
    }

    /// Checks `name` and `password` for a client at `peer`.
    ///
    /// On failure it waits the same time whatever failed, then the peer's growing delay,
    /// before returning, so the caller just answers. The hash is verified on tokio's
    /// blocking pool; the returned future may be dropped at any time (the guess is given
    /// back unless it was already counted).
    pub async fn login(
        &self,
        peer: IpAddr,
        name: &str,
        password: &[u8],
    ) -> Result<User, AuthError> {
        let shown = Shown(name);
        let attempt = self.reserve(peer, &shown).await?;
        let started = tokio::time::Instant::now();
        // Read before the check, so that this check's own cost cannot move its answer time;
        // only the first failure of a process learns it during the check.
        let floor = self.inner.timing.known_floor();
        let outcome = self.check(name, password).await;
        let reason = match outcome {
            Ok(Verdict::Ok(user)) => {
                if attempt.succeeded(Moment::now()).is_err() {
                    // Locked out (by another daemon's count) while this was being checked.
                    tracing::warn!(%peer, user = %shown, "right password refused: address locked out meanwhile");
                    return Err(AuthError::Throttled);
                }
                tracing::debug!(%peer, user = %shown, "login ok");
                return Ok(user);
            }
            Err(err) => {
                // Not the client's doing: not a failure for the guard.
                // The unreadable file is logged where it is read, once.
                attempt.abandoned(Moment::now());
                tracing::debug!(%peer, user = %shown, "login impossible: {err}");
                return Err(err);
            }
            Ok(Verdict::UnknownUser) => "unknown user",
            Ok(Verdict::NoPassword) => "user has no usable password",
            Ok(Verdict::EmptyPassword) => "empty password",
            Ok(Verdict::WrongPassword) => "wrong password",
        };
        let penalty = attempt.failed(Moment::now());
        let delay_ms = u64::try_from(penalty.delay.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(%peer, user = %shown, delay_ms, "login failed: {reason}");
        if penalty.locked_out {
            let lockout = self.inner.guard.policy().lockout.as_secs();
            tracing::warn!(%peer, "too many failed logins: address locked out for {lockout} s");
        }
        let floor = floor.unwrap_or_else(|| self.inner.timing.floor());
        tokio::time::sleep_until(started + floor).await;
        tokio::time::sleep(penalty.delay).await;
        Err(AuthError::Failed)
    }

    /// [`login`](Self::login) with a SASL exchange's credentials. When they carry an
    /// authorization identity naming another user, the login name must be one of the
    /// `[auth] master_users` and its own password right (checked as any login, guard and
    /// all); the session is then that other user's, and the log says who acted as whom.
    /// A master login for a user who does not exist fails like a wrong password.
    pub async fn login_credentials(
        &self,
        peer: IpAddr,
        credentials: &sasl::Credentials,
    ) -> Result<User, AuthError> {
        let Some(authzid) = &credentials.authzid else {
            return self
                .login(peer, &credentials.name, &credentials.password)
                .await;
        };
        let master = self
            .login(peer, &credentials.name, &credentials.password)
            .await?;
        let (master_name, target) = (Shown(&master.name), Shown(authzid));
        if !self.master_users.contains(&master.name) {
            tracing::warn!(%peer, user = %master_name, as_user = %target, "login refused: not a master user, may not act as another");
            return Err(AuthError::Failed);
        }
        match self.find(authzid).await? {
            Some(user) => {
                tracing::info!(%peer, master = %master_name, user = %user.name, "master user logged in as another user");
                Ok(user)
            }
            None => {
                tracing::warn!(%peer, master = %master_name, as_user = %target, "master login refused: no such user");
                Err(AuthError::Failed)
            }
        }
    }

    /// Takes one of `peer`'s guesses, waiting while all it has left are being checked.
    async fn reserve(&self, peer: IpAddr, shown: &Shown<'_>) -> Result<Attempt<'_>, AuthError> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            match self.inner.guard.begin(peer, Moment::now()) {
                Ok(attempt) => return Ok(attempt),
                Err(Refusal::LockedOut) => {
                    // The lockout itself was logged; its refusals would only flood the log.
                    tracing::debug!(%peer, user = %shown, "login refused: address locked out");
                    return Err(AuthError::Throttled);
                }
                Err(Refusal::Busy) if tokio::time::Instant::now() >= deadline => {
                    tracing::debug!(%peer, user = %shown, "login refused: too many logins in progress from this address");
                    return Err(AuthError::Throttled);
                }
                Err(Refusal::Busy) => tokio::time::sleep(BUSY_POLL).await,
            }
        }
    }

    /// Looks `name` up (the file, or the directory) and checks the password.
    async fn check(&self, name: &str, password: &[u8]) -> Result<Verdict, AuthError> {
        let Some(directory) = &self.inner.directory else {
            return self.verify(Lookup::File(name.to_owned()), password).await;
        };
        let directory = directory
            .as_ref()
            .map_err(|err| AuthError::DirectoryUnavailable(err.clone()))?;
        if password.is_empty() {
            return self.verify(Lookup::Found(None), password).await;
        }
        match directory.lookup(name, &self.local_domains).await? {
            Some(Found {
                entry,
                bind_dn: Some(dn),
            }) => Ok(if directory.bind(&dn, password).await? {
                Verdict::Ok(entry.user)
            } else {
                Verdict::WrongPassword
            }),
            found => {
                self.verify(Lookup::Found(found.map(|f| f.entry)), password)
                    .await
            }
        }
    }

    /// The hash check (or, for nobody, the dummy one) on the blocking pool, after the users
    /// file lookup there too (a `stat`, and a read when it changed).
    async fn verify(&self, lookup: Lookup, password: &[u8]) -> Result<Verdict, AuthError> {
        // The permit moves into the blocking task, so it is held until the hash is done even
        // if this future is dropped.
        let permit = self.inner.verifications.clone().acquire_owned().await.ok();
        let inner = Arc::clone(&self.inner);
        let local_domains = Arc::clone(&self.local_domains);
        let password = password.to_vec();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let entry = match lookup {
                Lookup::File(name) => inner
                    .users
                    .current()?
                    .0
                    .find(&name, &local_domains)
                    .cloned(),
                Lookup::Found(entry) => entry,
            };
            let timing = &inner.timing;
            if password.is_empty() {
                timing.dummy(&password);
                return Ok(Verdict::EmptyPassword);
            }
            Ok(match entry {
                Some(entry) => match &entry.password {
                    Some(stored) => {
                        let started = std::time::Instant::now();
                        if stored.verify(&password) {
                            Verdict::Ok(entry.user)
                        } else {
                            timing.after_failed_verification(&password, started.elapsed());
                            Verdict::WrongPassword
                        }
                    }
                    None => {
                        timing.dummy(&password);
                        Verdict::NoPassword
                    }
                },
                None => {
                    timing.dummy(&password);
                    Verdict::UnknownUser
                }
            })
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(err) => {
                // A panic in a hash crate: refuse, and say so.
                tracing::error!("password check failed: {err}");
                Ok(Verdict::WrongPassword)
            }
        }
    }

    /// The user `name` means, as a login would find them ([`UsersFile::find`]: any case, the
    /// exact name, then the local part of an address in a local domain); `None` also when
    /// the file cannot be read (logged).
    pub fn lookup(&self, name: &str) -> Option<User> {
        self.try_lookup(name).ok().flatten()
    }

    /// Like [`lookup`](Self::lookup), but tells "no such user" from "cannot tell now", so a
    /// daemon can answer with a temporary error in the second case.
    ///
    /// With a directory this waits for it: call it from a blocking thread, or use
    /// [`find`](Self::find) in async code.
    pub fn try_lookup(&self, name: &str) -> Result<Option<User>, AuthError> {
        if let Some(directory) = &self.inner.directory {
            let directory = directory
                .as_ref()
                .map_err(|err| AuthError::DirectoryUnavailable(err.clone()))?;
            let found = directory.lookup_blocking(name, &self.local_domains)?;
            return Ok(found.map(|f| f.entry.user));
        }
        let (users, _) = self.inner.users.current()?;
        Ok(users
            .find(name, &self.local_domains)
            .map(|entry| entry.user.clone()))
    }

    /// [`try_lookup`](Self::try_lookup) for async code.
    pub async fn find(&self, name: &str) -> Result<Option<User>, AuthError> {
        if let Some(directory) = &self.inner.directory {
            let directory = directory
                .as_ref()
                .map_err(|err| AuthError::DirectoryUnavailable(err.clone()))?;
            let found = directory.lookup(name, &self.local_domains).await?;
            return Ok(found.map(|f| f.entry.user));
        }
        self.try_lookup(name)
    }

    /// A login `name` made before from `peer` with a password this process verified (a daemon
    /// that remembers verified logins, as rpcd does for HTTP Basic, calls this instead of
    /// [`login`](Self::login) when the same credentials come again): the password is not
    /// checked again, but the guard sees a successful login, so an address that is locked
    /// out is refused ([`AuthError::Throttled`]) exactly as `login` would refuse it, right
    /// password or not.
    pub async fn readmit(&self, peer: IpAddr, name: &str) -> Result<(), AuthError> {
        let shown = Shown(name);
        let attempt = self.reserve(peer, &shown).await?;
        if attempt.succeeded(Moment::now()).is_err() {
            tracing::debug!(%peer, user = %shown, "remembered login refused: address locked out");
            return Err(AuthError::Throttled);
        }
        tracing::debug!(%peer, user = %shown, "login remembered");
        Ok(())
    }

    /// Whether users come from a directory rather than the users file.
    pub fn has_directory(&self) -> bool {
        self.inner.directory.is_some()
    }

    /// The directory, if users come from one (for `inetkit user check` and health checks).
    pub fn directory(&self) -> Option<Result<&Directory, &DirectoryError>> {
        self.inner.directory.as_ref().map(Result::as_ref)
    }

    /// The users file as it is now (re-read when it changed), for lookups of several names
    /// against one version of it, such as an alias expansion.
    pub fn users(&self) -> Result<Arc<UsersFile>, AuthError> {
        self.inner.users.current().map(|(users, _)| users)
    }

    /// [`users`](Self::users) together with the [`FileStamp`] of the version read, from the
    /// same one `stat`: a daemon that remembers logins compares it with the stamp it saw at
    /// the password check, and looks the user up in the same version.
    pub fn users_with_stamp(&self) -> Result<(Arc<UsersFile>, FileStamp), AuthError> {
        self.inner.users.current()
    }
}

/// The local mail domains when the config names none: `localhost` and the host's name.
pub fn default_local_domains() -> Vec<String> {
    let mut domains = vec!["localhost".to_owned()];
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !host.is_empty() && !domains.contains(&host) {
        domains.push(host);
    }
    domains
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
    stamp: Option<FileStamp>,
    users: Arc<UsersFile>,
    /// The last read failed (logged once, until it works again).
    failing: bool,
}

/// What tells us the file changed: a rename (the admin tool) gives a new inode, an edit in
/// place a new mtime/ctime and usually size.
///
/// Public so that a daemon remembering a login (rpcd's keep-alive connections) can tell that
/// the file changed since, by the same rule this crate re-reads it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
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

    /// The users as the file says now, and the stamp of what was read: one `stat`, and a
    /// re-read when it changed.
    fn current(&self) -> Result<(Arc<UsersFile>, FileStamp), AuthError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.refresh(&mut state) {
            Ok(stamp) => {
                if state.failing {
                    tracing::info!(path = %self.path.display(), "users file readable again");
                    state.failing = false;
                }
                Ok((Arc::clone(&state.users), stamp))
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

    /// Re-reads the file if it changed; the stamp of the version now loaded.
    fn refresh(&self, state: &mut Loaded) -> std::io::Result<FileStamp> {
        let stamp = FileStamp::of(&std::fs::metadata(&self.path)?);
        if state.stamp == Some(stamp) {
            return Ok(stamp);
        }
        // Read from the opened file and stamp what was read, so a change during the read
        // is seen next time.
        let mut file = std::fs::File::open(&self.path)?;
        let stamp = FileStamp::of(&file.metadata()?);
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
        Ok(stamp)
    }
}

#[cfg(test)]
mod tests;
