//! The `[auth]` section every login-taking daemon embeds in its config.
//!
//! ```toml
//! [auth]
//! users_file = "/etc/inetkit/users"
//! plaintext = "loopback-only"   # or "always", "never": logins without TLS
//! failure_delay = 1             # seconds after the 1st failure; doubles per failure
//! max_failure_delay = 8
//! max_failures = 10             # within failure_window: then refused for `lockout`
//! failure_window = 600
//! lockout = 900
//! max_tracked_addresses = 10000
//! guard_state = "/run/inetkit/login-guard"   # "" for a guard of this daemon alone
//! local_domains = []            # alice@<one of these> logs in as alice; [] = localhost + host
//! master_users = []             # may log in as any user (SASL PLAIN authzid): proxy front ends
//! # With a directory (LDAP or PostgreSQL) instead of the users file:
//! directory_timeout = 5         # seconds, for a connection and for each query
//! directory_connections = 4     # kept open at most
//! cache_ttl = 5                 # seconds a found user is remembered (0: never)
//! [auth.directory]
//! type = "ldap"                 # or "postgresql": see directory::ldap, directory::postgres
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use inetkit_runtime::config::seconds;
use serde::{Deserialize, Deserializer};

use super::directory::{Directory, DirectoryConfig, DirectoryLimits};
use super::{Authenticator, Guard, GuardPolicy};

/// Where the users file is when `[auth] users_file` does not say.
pub const DEFAULT_USERS_FILE: &str = "/etc/inetkit/users";

/// The login guard's state file when `[auth] guard_state` does not say: shared by every
/// daemon on the host, made by the package's tmpfiles.d entry.
pub const DEFAULT_GUARD_STATE: &str = "/run/inetkit/login-guard";

/// When a password may cross the network unencrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plaintext {
    /// Only from 127.0.0.0/8 and ::1 (the default).
    #[default]
    #[serde(alias = "loopback")]
    LoopbackOnly,
    /// From anywhere (for networks where something else encrypts, or tests).
    Always,
    /// Only after STARTTLS or on an implicit-TLS port.
    Never,
}

impl Plaintext {
    /// May a client at `peer` send a password now? Always under TLS (`tls`); without it, as
    /// the policy says. The one place this is decided: [`Authenticator::plaintext_allowed`]
    /// asks it.
    pub fn allows(self, peer: IpAddr, tls: bool) -> bool {
        tls || match self {
            Plaintext::Always => true,
            Plaintext::Never => false,
            Plaintext::LoopbackOnly => peer.to_canonical().is_loopback(),
        }
    }
}

/// `[auth]`: where the users are, when passwords may travel in the clear, and the guard
/// against password guessing (times in seconds).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The users file (Dovecot passwd-file format).
    pub users_file: PathBuf,
    /// When a password may be sent without TLS.
    pub plaintext: Plaintext,
    /// Delay after a first failed login from an address; it doubles with each further one.
    #[serde(deserialize_with = "seconds")]
    pub failure_delay: Duration,
    /// The longest that delay grows to.
    #[serde(deserialize_with = "seconds")]
    pub max_failure_delay: Duration,
    /// Failed logins from one address within `failure_window` before it is locked out.
    pub max_failures: u32,
    /// The window in which failures are counted.
    #[serde(deserialize_with = "seconds")]
    pub failure_window: Duration,
    /// How long a locked-out address is refused.
    #[serde(deserialize_with = "seconds")]
    pub lockout: Duration,
    /// Addresses the guard remembers at once (its memory bound).
    pub max_tracked_addresses: usize,
    /// The guard's state file, shared with every daemon that names the same one; `None`
    /// (`guard_state = ""`) keeps a guard of this process alone, in memory.
    #[serde(deserialize_with = "state_file")]
    pub guard_state: Option<PathBuf>,
    /// Mail domains whose addresses also name plain users at login (`alice@example.org`
    /// logs in as `alice` when no user has that whole address); empty: `localhost` and the
    /// host's name. smtp-submit takes them from `[smtp] local_domains` instead.
    pub local_domains: Vec<String>,
    /// Users who may log in as any other user by naming them as SASL PLAIN's authorization
    /// identity (`authzid`) with their own name and password: the master login proxy front
    /// ends use. Only imapd and pop3d honour it; empty (the default): nobody.
    pub master_users: Vec<String>,
    /// `[auth.directory]`: users from LDAP or PostgreSQL instead of `users_file`.
    pub directory: Option<DirectoryConfig>,
    /// The longest a directory connection attempt, or one query, may take.
    #[serde(deserialize_with = "seconds")]
    pub directory_timeout: Duration,
    /// Directory connections kept open at most (and queries at once).
    pub directory_connections: usize,
    /// How long a user found in the directory is remembered (0: never). Only the lookup
    /// is: every login's password is checked anew.
    #[serde(deserialize_with = "seconds")]
    pub cache_ttl: Duration,
}

/// `guard_state`: an absolute path, or `""` for none. A relative path would depend on the
/// directory the daemon happens to start in, so daemons meant to share it might not.
fn state_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(text);
    if path.is_relative() {
        return Err(serde::de::Error::custom(
            "expected an absolute path, or \"\" for a guard of this daemon alone",
        ));
    }
    Ok(Some(path))
}

impl Default for AuthConfig {
    fn default() -> Self {
        let guard = GuardPolicy::default();
        AuthConfig {
            users_file: PathBuf::from(DEFAULT_USERS_FILE),
            plaintext: Plaintext::default(),
            failure_delay: guard.base_delay,
            max_failure_delay: guard.max_delay,
            max_failures: guard.max_failures,
            failure_window: guard.window,
            lockout: guard.lockout,
            max_tracked_addresses: guard.max_tracked,
            guard_state: Some(PathBuf::from(DEFAULT_GUARD_STATE)),
            local_domains: Vec::new(),
            master_users: Vec::new(),
            directory: None,
            directory_timeout: Duration::from_secs(5),
            directory_connections: 4,
            cache_ttl: Duration::from_secs(5),
        }
    }
}

impl AuthConfig {
    /// The guard's policy from these settings.
    pub fn guard_policy(&self) -> GuardPolicy {
        GuardPolicy {
            base_delay: self.failure_delay,
            max_delay: self.max_failure_delay,
            max_failures: self.max_failures,
            window: self.failure_window,
            lockout: self.lockout,
            max_tracked: self.max_tracked_addresses,
        }
    }

    /// The guard for this section: sharing `guard_state`, or this process's alone.
    pub fn guard(&self) -> Guard {
        match &self.guard_state {
            Some(path) => Guard::shared(self.guard_policy(), path.clone()),
            None => Guard::new(self.guard_policy()),
        }
    }

    /// The authenticator for this section, with its guard and plaintext policy; make one at
    /// start and clone it into sessions.
    ///
    /// With a directory whose settings cannot work (say, a bad URL), every login gets a
    /// temporary failure and the reason is logged; [`AuthConfig::problem`] and
    /// `--check-config` say it beforehand.
    pub fn authenticator(&self) -> Authenticator {
        let authenticator = Authenticator::with_guard(self.users_file.clone(), self.guard())
            .with_plaintext(self.plaintext)
            .with_local_domains(&self.local_domains)
            .with_master_users(&self.master_users);
        match self.directory() {
            None => authenticator,
            Some(directory) => authenticator.with_directory(directory),
        }
    }

    /// The limits every directory backend shares.
    pub fn directory_limits(&self) -> DirectoryLimits {
        DirectoryLimits {
            timeout: self.directory_timeout,
            connections: self.directory_connections.max(1),
            cache_ttl: self.cache_ttl,
        }
    }

    /// The directory `[auth.directory]` describes, if any (not connected yet).
    pub fn directory(&self) -> Option<Result<Directory, super::directory::DirectoryError>> {
        let config = self.directory.as_ref()?;
        Some(Directory::new(config, self.directory_limits()))
    }

    /// What is wrong with `[auth.directory]` that no type check sees, if anything.
    pub fn problem(&self) -> Option<String> {
        match self.directory()? {
            Ok(_) => None,
            Err(err) => Some(format!("[auth.directory]: {err}")),
        }
    }

    /// For `--check-config`: connects to the directory and says whether it answers
    /// (`None` for the users file). Not to be called from an async task.
    pub fn probe(&self) -> Option<Result<String, String>> {
        let directory = match self.directory()? {
            Ok(directory) => directory,
            Err(err) => return Some(Err(format!("[auth.directory]: {err}"))),
        };
        let what = directory.describe();
        Some(match futures::executor::block_on(directory.ping()) {
            Ok(()) => Ok(format!("{what}: answers")),
            Err(err) => Err(format!("{what}: does not answer: {err}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Daemon {
        #[serde(default)]
        auth: AuthConfig,
    }

    fn parse(text: &str) -> Result<AuthConfig, String> {
        inetkit_runtime::config::parse::<Daemon>(text, Path::new("test.toml"))
            .map(|d| d.auth)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(""), Ok(AuthConfig::default()));
        assert_eq!(AuthConfig::default().guard_policy(), GuardPolicy::default());
        let Ok(auth) = parse(
            "[auth]\nusers_file = \"/tmp/u\"\nplaintext = \"always\"\nfailure_delay = 0.25\nlockout = 60\n",
        ) else {
            panic!("did not parse")
        };
        assert_eq!(auth.users_file, PathBuf::from("/tmp/u"));
        assert_eq!(auth.plaintext, Plaintext::Always);
        assert_eq!(auth.guard_policy().base_delay, Duration::from_millis(250));
        assert_eq!(auth.guard_policy().lockout, Duration::from_secs(60));
        assert_eq!(auth.max_failures, 10);
    }

    #[test]
    fn the_guard_state_file_is_a_key() {
        let default = PathBuf::from(DEFAULT_GUARD_STATE);
        assert_eq!(parse("").map(|a| a.guard_state), Ok(Some(default.clone())));
        assert_eq!(
            AuthConfig::default().guard().state_file(),
            Some(default.as_path())
        );
        let Ok(elsewhere) = parse("[auth]\nguard_state = \"/tmp/guard\"\n") else {
            panic!("did not parse")
        };
        assert_eq!(
            elsewhere.guard().state_file(),
            Some(Path::new("/tmp/guard"))
        );
        let Ok(alone) = parse("[auth]\nguard_state = \"\"\n") else {
            panic!("did not parse")
        };
        assert_eq!(alone.guard_state, None);
        assert_eq!(alone.guard().state_file(), None);
        assert_eq!(
            parse("[auth]\nguard_state = \"run/guard\"\n"),
            Err("test.toml:2:15: expected an absolute path, or \"\" for a guard of this daemon alone".into())
        );
    }

    #[test]
    fn bad_values_name_their_line() {
        assert_eq!(
            parse("[auth]\nfailure_delay = -1\n"),
            Err("test.toml:2:17: expected a number of seconds, 0 or more".into())
        );
        let unknown = parse("[auth]\nuser_file = \"x\"\n");
        assert!(
            unknown
                .as_ref()
                .is_err_and(|e| e.starts_with("test.toml:2:1: unknown field `user_file`")),
            "{unknown:?}"
        );
        assert!(parse("[auth]\nplaintext = \"sometimes\"\n").is_err());
    }

    #[test]
    fn plaintext_decisions() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])) };
        let mut auth = AuthConfig::default();
        let authenticator = auth.authenticator();
        for (peer, expected) in [
            ("127.0.0.1", true),
            ("127.8.9.10", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.0.2.1", false),
            ("2001:db8::1", false),
        ] {
            let allowed = authenticator.plaintext_allowed(ip(peer), false);
            assert_eq!(allowed, expected, "{peer}");
            assert!(
                authenticator.plaintext_allowed(ip(peer), true),
                "{peer} under TLS"
            );
        }
        auth.plaintext = Plaintext::Never;
        let authenticator = auth.authenticator();
        assert!(!authenticator.plaintext_allowed(ip("127.0.0.1"), false));
        assert!(authenticator.plaintext_allowed(ip("127.0.0.1"), true));
        auth.plaintext = Plaintext::Always;
        assert!(auth
            .authenticator()
            .plaintext_allowed(ip("192.0.2.1"), false));
        assert_eq!(
            parse("[auth]\nplaintext = \"loopback\"\n").map(|a| a.plaintext),
            Ok(Plaintext::LoopbackOnly)
        );
    }
}
