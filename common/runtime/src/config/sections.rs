//! The sections every daemon's config has: `[listen]`, `[tls]`, `[limits]` and `[log]`, and
//! the one way a config spells a duration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `[listen]`: socket name → addresses, used when not socket-activated.
/// Addresses are `tcp://ADDR:PORT`, `udp://ADDR:PORT` or `ADDR:PORT` (TCP).
pub type ListenConfig = BTreeMap<String, Vec<String>>;

/// `[tls]`: the certificate chain and key, as PEM files.
///
/// When unset, the files systemd hands over with `LoadCredential=tls-cert:…` and
/// `LoadCredential=tls-key:…` are used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// `[limits]`: connection limits and timeouts (in seconds in the file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sessions served at once; more are refused.
    pub max_connections: usize,
    /// Sessions at once from one client address.
    pub max_connections_per_ip: usize,
    /// Sessions at once from one client address that have not logged in yet (daemons with a
    /// login); a logged-in session no longer counts. Kept well under
    /// `max_connections_per_ip`, so that silent connections cannot take an address's slots.
    pub max_unauthenticated_per_ip: usize,
    /// A session that has not logged in this long after it connected is closed with the
    /// protocol's farewell (daemons with a login). 0 turns it off.
    #[serde(deserialize_with = "seconds")]
    pub login_timeout: Duration,
    /// A session that sends nothing for this long is closed. Each protocol has its own
    /// default (the least its RFC allows: POP3 10 minutes, IMAP 30), filled in when the
    /// config is read.
    #[serde(deserialize_with = "optional_seconds")]
    pub idle_timeout: Option<Duration>,
    /// A session whose client does not take our output for this long is closed.
    #[serde(deserialize_with = "seconds")]
    pub write_timeout: Duration,
    /// On SIGTERM, how long running sessions may go on before the daemon exits anyway.
    #[serde(deserialize_with = "seconds")]
    pub shutdown_timeout: Duration,
    /// Exit after this long with no session (socket activation restarts the daemon on the
    /// next connection). 0 keeps the daemon running.
    #[serde(deserialize_with = "seconds")]
    pub idle_exit: Duration,
    /// Above this resident memory, in MiB, new connections get the protocol's "try later"
    /// reply while running sessions go on. Unset: 90% of the service's cgroup `memory.high`
    /// (systemd's `MemoryHigh=`, else `memory.max`), off when neither is set; 0 turns it off.
    pub memory_soft_limit: Option<u64>,
}

/// The idle timeout of a [`LimitsConfig`] that was not read through a daemon's config.
const FALLBACK_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1000,
            max_connections_per_ip: 64,
            max_unauthenticated_per_ip: 16,
            login_timeout: Duration::from_secs(60),
            idle_timeout: None,
            write_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            idle_exit: Duration::ZERO,
            memory_soft_limit: None,
        }
    }
}

impl LimitsConfig {
    /// How long a session may send nothing.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(FALLBACK_IDLE_TIMEOUT)
    }

    /// How long a session may take to log in, if limited.
    pub fn login_timeout(&self) -> Option<Duration> {
        (!self.login_timeout.is_zero()).then_some(self.login_timeout)
    }

    /// How long to wait without sessions before exiting, if at all.
    pub fn idle_exit(&self) -> Option<Duration> {
        (!self.idle_exit.is_zero()).then_some(self.idle_exit)
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
        }
    }
}

/// How much the daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only what went wrong.
    Error,
    /// Also what may go wrong.
    Warn,
    /// Also start, stop, sessions and reloads.
    Info,
    /// Also protocol detail.
    Debug,
    /// Everything.
    Trace,
}

/// A duration as every config spells it: a number of seconds, whole or fractional, 0 or more.
/// Use with `#[serde(deserialize_with = "inetkit_runtime::config::seconds")]`.
pub fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let value = f64::deserialize(deserializer)?;
    Duration::try_from_secs_f64(value)
        .map_err(|_| serde::de::Error::custom("expected a number of seconds, 0 or more"))
}

/// [`seconds`] for an optional key (with `#[serde(default)]`).
pub fn optional_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    seconds(deserializer).map(Some)
}
