//! HTTP Basic logins, remembered so that a password is checked once, not at every request.
//!
//! A client sends the same `Authorization` value with every request, and checking an
//! ARGON2ID hash each time would cost far more than the call (about 0.15 s of a core). So:
//!
//! - **A connection** remembers the value that last logged in, and as whom, together with the
//!   identity of the users file it was checked against (device, inode, size, modification and
//!   change times). While the file is unchanged so is the user's line; once it changed (a new
//!   password, a removed line) the password is checked again. The file is looked at
//!   ([`UsersFileWatch`]) at most once every [`RECHECK_EVERY`], not at every request (its
//!   `stat` was 7% of the daemon's time under a load of logged-in calls): a deleted user or a
//!   changed password is refused within a second on a kept connection, at once on a new one.
//! - **The daemon** remembers the logins it verified ([`VerifiedLogins`]) by the same rule, for
//!   the next connections of the same client (a script, a monitor or a load test opening new
//!   connections with the same credentials): a keyed hash of the `Authorization` value (never
//!   the value itself), the user and the users file's stamp, for at most [`REMEMBER_FOR`] and
//!   at most [`MAX_REMEMBERED`] logins. Taking a remembered login still asks the login guard
//!   ([`Authenticator::readmit`](inetkit_auth::Authenticator::readmit)), so a locked-out
//!   address is refused whatever it sends; a value not remembered is checked as any login,
//!   guard, delay and all.
//!
//! With users from a directory there is no file to watch: every request is checked (the
//! directory's lookups are cached by `[auth] cache_ttl`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;
use ring::hmac;

use inetkit_auth::{sasl, AuthError, FileStamp, User};

use crate::http::{plain, unauthorized, Reply};
use crate::Rpcd;

/// How long the daemon remembers a verified login after it was checked.
pub(crate) const REMEMBER_FOR: Duration = Duration::from_secs(600);
/// The most logins the daemon remembers; the oldest is forgotten for a new one.
pub(crate) const MAX_REMEMBERED: usize = 1024;

/// How long a look at the users file is trusted for a login remembered on a connection.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The users file's stamp now; `None` when it cannot be read: then nothing is taken on trust.
fn users_file_stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|meta| FileStamp::of(&meta))
}

/// The users file's stamp as last seen, looked at again once it is [`RECHECK_EVERY`] old.
pub(crate) struct UsersFileWatch {
    path: PathBuf,
    /// When the file was last looked at, and its stamp then.
    seen: Mutex<Option<(Instant, Option<FileStamp>)>>,
}

impl UsersFileWatch {
    pub(crate) fn new(path: &Path) -> UsersFileWatch {
        UsersFileWatch {
            path: path.to_owned(),
            seen: Mutex::new(None),
        }
    }

    fn seen(&self) -> MutexGuard<'_, Option<(Instant, Option<FileStamp>)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file's stamp at most [`RECHECK_EVERY`] before `now`.
    fn stamp(&self, now: Instant) -> Option<FileStamp> {
        if let Some((at, stamp)) = *self.seen() {
            if now.saturating_duration_since(at) < RECHECK_EVERY {
                return stamp;
            }
        }
        let stamp = users_file_stamp(&self.path);
        *self.seen() = Some((now, stamp));
        stamp
    }

    /// A stamp the full check just took (`now`): fresher than the one kept.
    fn saw(&self, now: Instant, stamp: FileStamp) {
        *self.seen() = Some((now, Some(stamp)));
    }
}

/// The last login of one connection.
struct Verified {
    credentials: HeaderValue,
    user: User,
    users_file: FileStamp,
}

/// A connection's memory of its login.
#[derive(Default)]
pub(crate) struct Logins {
    last: Mutex<Option<Verified>>,
}

impl Logins {
    /// The user `credentials` logged in as before on this connection, if the users file
    /// has not changed since (so neither has the user's line).
    fn remembered(&self, credentials: &HeaderValue, users_file: FileStamp) -> Option<User> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|v| v.credentials == credentials && v.users_file == users_file)
            .map(|v| v.user.clone())
    }

    fn remember(&self, verified: Option<Verified>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = verified;
    }
}

/// The key a login is remembered under: HMAC-SHA256 of the `Authorization` value with a key
/// made at start, so the daemon's memory holds no password, nor anything that can be checked
/// against one without that key.
type Fingerprint = [u8; 32];

/// A login the daemon verified.
struct Known {
    user: String,
    users_file: FileStamp,
    verified_at: Instant,
}

/// The logins the daemon verified, for every connection (see the module's doc).
pub(crate) struct VerifiedLogins {
    key: hmac::Key,
    known: Mutex<HashMap<Fingerprint, Known>>,
}

impl VerifiedLogins {
    /// An empty memory, with a fresh random key (`None` if the system gives no randomness:
    /// then nothing is remembered across connections).
    pub(crate) fn new() -> Option<VerifiedLogins> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()?;
        Some(VerifiedLogins {
            key,
            known: Mutex::new(HashMap::new()),
        })
    }

    fn fingerprint(&self, credentials: &HeaderValue) -> Fingerprint {
        let tag = hmac::sign(&self.key, credentials.as_bytes());
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(tag.as_ref());
        fingerprint
    }

    fn known(&self) -> MutexGuard<'_, HashMap<Fingerprint, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who `fingerprint` logged in as, if that was verified against the users file as it is
    /// now (`users_file`) less than [`REMEMBER_FOR`] before `now`.
    fn get(
        &self,
        fingerprint: &Fingerprint,
        users_file: FileStamp,
        now: Instant,
    ) -> Option<String> {
        let known = self.known();
        known
            .get(fingerprint)
            .filter(|k| {
                k.users_file == users_file && now.duration_since(k.verified_at) < REMEMBER_FOR
            })
            .map(|k| k.user.clone())
    }

    fn remember(&self, fingerprint: Fingerprint, user: &str, users_file: FileStamp, now: Instant) {
        let mut known = self.known();
        if known.len() >= MAX_REMEMBERED && !known.contains_key(&fingerprint) {
            known.retain(|_, k| now.duration_since(k.verified_at) < REMEMBER_FOR);
            if known.len() >= MAX_REMEMBERED {
                let oldest = known
                    .iter()
                    .min_by_key(|(_, k)| k.verified_at)
                    .map(|(f, _)| *f);
                if let Some(oldest) = oldest {
                    known.remove(&oldest);
                }
            }
        }
        known.insert(
            fingerprint,
            Known {
                user: user.to_owned(),
                users_file,
                verified_at: now,
            },
        );
    }

    fn forget(&self, fingerprint: &Fingerprint) {
        self.known().remove(fingerprint);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known().len()
    }
}

/// Checks HTTP Basic credentials; the error is the reply to send.
pub(crate) async fn login(
    rpcd: &Rpcd,
    value: &HeaderValue,
    logins: &Logins,
    peer: std::net::IpAddr,
    tls: bool,
) -> Result<User, Reply> {
    if !rpcd.auth.plaintext_allowed(peer, tls) {
        tracing::warn!(%peer, "credentials sent without TLS: refused");
        return Err(plain(
            StatusCode::FORBIDDEN,
            "credentials are not accepted without TLS here: use https",
        ));
    }
    // With a directory there is no file to watch: every request is checked.
    let watch = (!rpcd.auth.has_directory()).then_some(&rpcd.users_file);
    // This connection's own login, while the users file is unchanged.
    if let Some(stamp) = watch.and_then(|w| w.stamp(Instant::now())) {
        if let Some(user) = logins.remembered(value, stamp) {
            return Ok(user);
        }
    }
    logins.remember(None);
    // The users file as it is now and its stamp. Taken before a password check, so a change
    // made during it is seen on the next request.
    let current = watch.and_then(|_| rpcd.auth.users_with_stamp().ok());
    if let (Some(watch), Some((_, stamp))) = (watch, &current) {
        watch.saw(Instant::now(), *stamp);
    }
    let remembered = rpcd.verified.as_ref().zip(current.as_ref());
    if let Some((users, users_file)) = &current {
        let local_domains = rpcd.auth.local_domains();
        // A login another connection verified.
        if let Some((verified, _)) = remembered {
            let fingerprint = verified.fingerprint(value);
            let known = verified.get(&fingerprint, *users_file, Instant::now());
            let entry = known.and_then(|name| users.find(&name, local_domains));
            if let Some(entry) = entry {
                rpcd.auth
                    .readmit(peer, &entry.user.name)
                    .await
                    .map_err(|err| refusal(rpcd, err))?;
                logins.remember(Some(Verified {
                    credentials: value.clone(),
                    user: entry.user.clone(),
                    users_file: *users_file,
                }));
                return Ok(entry.user.clone());
            }
            verified.forget(&fingerprint);
        }
    }
    let Some(creds) = value
        .to_str()
        .ok()
        .and_then(|v| sasl::decode_http_basic(v).ok())
    else {
        return Err(unauthorized("malformed Authorization header: use Basic"));
    };
    let user = rpcd
        .auth
        .login(peer, &creds.name, &creds.password)
        .await
        .map_err(|err| refusal(rpcd, err))?;
    if let Some((_, users_file)) = current {
        logins.remember(Some(Verified {
            credentials: value.clone(),
            user: user.clone(),
            users_file,
        }));
        if let Some((verified, _)) = remembered {
            let fingerprint = verified.fingerprint(value);
            verified.remember(fingerprint, &user.name, users_file, Instant::now());
        }
    }
    Ok(user)
}

/// The reply to a login that did not succeed.
fn refusal(rpcd: &Rpcd, err: AuthError) -> Reply {
    match err {
        AuthError::Failed => unauthorized("authentication failed"),
        AuthError::Throttled => {
            let mut reply = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; try again later",
            );
            let retry = rpcd.lockout.as_secs().to_string();
            if let Ok(v) = HeaderValue::from_str(&retry) {
                reply.headers_mut().insert(header::RETRY_AFTER, v);
            }
            reply
        }
        AuthError::Unavailable { .. } | AuthError::DirectoryUnavailable(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "logins are unavailable right now",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(path: &std::path::Path) -> FileStamp {
        FileStamp::of(&std::fs::metadata(path).expect("stat"))
    }

    /// Two stamps of two different files.
    fn two_stamps() -> (FileStamp, FileStamp) {
        (
            stamp(std::path::Path::new("/")),
            stamp(std::path::Path::new("/proc")),
        )
    }

    #[test]
    fn remembered_per_value_and_users_file_version_for_a_while() {
        let verified = VerifiedLogins::new().expect("randomness");
        let (file, changed) = two_stamps();
        let alice = HeaderValue::from_static("Basic YWxpY2U6cGFzc3dvcmQ=");
        let guess = HeaderValue::from_static("Basic YWxpY2U6Z3Vlc3M=");
        let t0 = Instant::now();
        let f = verified.fingerprint(&alice);
        assert_ne!(f, verified.fingerprint(&guess));
        assert_eq!(verified.get(&f, file, t0), None);
        verified.remember(f, "alice", file, t0);
        assert_eq!(verified.get(&f, file, t0).as_deref(), Some("alice"));
        assert_eq!(verified.get(&verified.fingerprint(&guess), file, t0), None);
        // The users file changed since: checked again.
        assert_eq!(verified.get(&f, changed, t0), None);
        // Too long ago: checked again.
        let late = t0 + REMEMBER_FOR;
        assert_eq!(
            verified
                .get(&f, file, late - Duration::from_secs(1))
                .as_deref(),
            Some("alice")
        );
        assert_eq!(verified.get(&f, file, late), None);
        verified.forget(&f);
        assert_eq!(verified.get(&f, file, t0), None);
        // Another process's key: another fingerprint.
        let other = VerifiedLogins::new().expect("randomness");
        assert_ne!(other.fingerprint(&alice), f);
    }

    /// The file is looked at again once the last look is a second old, not before; a look
    /// the full check took counts as one.
    #[test]
    fn the_users_file_is_looked_at_once_a_second() {
        let dir = inetkit_runtime::testing::TempDir::new("rpcd-watch");
        let path = dir.write("users", "alice:{PLAIN}one::::::\n");
        let watch = UsersFileWatch::new(&path);
        let t0 = Instant::now();
        let first = watch.stamp(t0).expect("a stamp");
        std::fs::write(&path, "alice:{PLAIN}changed::::::\n").expect("write");
        let changed = stamp(&path);
        assert_ne!(first, changed);
        let soon = t0 + RECHECK_EVERY - Duration::from_millis(1);
        assert_eq!(watch.stamp(soon), Some(first));
        assert_eq!(watch.stamp(t0 + RECHECK_EVERY), Some(changed));
        // Removed: nothing is taken on trust once it is looked at again.
        std::fs::remove_file(&path).expect("remove");
        let later = t0 + 2 * RECHECK_EVERY;
        assert_eq!(watch.stamp(later), None);
        watch.saw(later, first);
        assert_eq!(watch.stamp(later + Duration::from_millis(1)), Some(first));
    }

    #[test]
    fn at_most_so_many_are_remembered_the_oldest_forgotten() {
        let verified = VerifiedLogins::new().expect("randomness");
        let (file, _) = two_stamps();
        let t0 = Instant::now();
        let fingerprints: Vec<Fingerprint> = (0..=MAX_REMEMBERED)
            .map(|n| {
                let value = HeaderValue::from_str(&format!("Basic {n}")).expect("value");
                verified.fingerprint(&value)
            })
            .collect();
        for (n, f) in fingerprints.iter().enumerate() {
            let at = t0 + Duration::from_millis(u64::try_from(n).expect("small"));
            verified.remember(*f, "u", file, at);
        }
        assert_eq!(verified.len(), MAX_REMEMBERED);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(verified.get(&fingerprints[0], file, now), None);
        assert!(verified.get(&fingerprints[1], file, now).is_some());
        assert!(verified
            .get(&fingerprints[MAX_REMEMBERED], file, now)
            .is_some());
    }
}
