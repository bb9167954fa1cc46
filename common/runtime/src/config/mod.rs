//! Configuration: one TOML file per daemon, `/etc/inetkit/<name>.toml`.
//!
//! A daemon's config is a [`Config<D>`]: the shared sections `[listen]`, `[tls]`, `[limits]`
//! and `[log]`, and the daemon's own part `D` (a [`DaemonConfig`]) beside them. Reading one
//! has two steps, and both the start and `--check-config` take both:
//! 1. parsing, where serde refuses unknown keys and wrong types;
//! 2. checking ([`Config::validate`]), everything the types cannot say: listen addresses and
//!    socket names, the certificate, and the daemon's own [`DaemonConfig::validate`].
//!
//! Every mistake either step finds names the file, line and column of the offending key.
//! Durations are numbers of seconds everywhere ([`seconds`]).

mod keys;
mod routing;
mod sections;

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::activation::ListenAddr;
use crate::tls::{TlsContext, TlsError};

pub use keys::{KeyPath, Problem};
pub use sections::{
    optional_seconds, seconds, LimitsConfig, ListenConfig, LogConfig, LogLevel, TlsConfig,
};

/// A config that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (the cause is the error's source).
    #[error("{}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid config: every mistake found, one per line.
    #[error("{}", lines(.0))]
    Invalid(Vec<Mistake>),
}

/// One mistake in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, when the key is in the file (not for a default value).
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Mistake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => {
                write!(
                    f,
                    "{}:{line}:{column}: {}",
                    self.file.display(),
                    self.message
                )
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

fn lines(mistakes: &[Mistake]) -> String {
    let lines: Vec<String> = mistakes.iter().map(Mistake::to_string).collect();
    lines.join("\n")
}

/// An error and its causes, each once: `outer: cause: root cause`.
pub(crate) fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

/// How a socket carries its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP listener, or one accepted TCP connection (Accept=yes).
    Tcp,
    /// A UDP socket.
    Udp,
}

/// What a socket is for, as far as the runtime needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRole {
    /// The protocol in the clear (it may offer STARTTLS when a certificate is there).
    Plain,
    /// TLS from the first byte: needs a certificate.
    Tls,
}

/// The threads a daemon's tokio runtime runs its sessions on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One worker per CPU: for sessions that compute (hashing, parsing, mail stores) or call
    /// `block_in_place`.
    PerCpu,
    /// Everything on the main thread. For a daemon whose sessions only move bytes: a client's
    /// wake-ups all go to the one thread, where workers taking turns at the I/O driver are
    /// woken by turns, which makes the scheduler less inclined to keep the wakee on the
    /// waker's CPU (a 64-byte echo round trip measured 85-105 us across CPUs, 25-35 us on one,
    /// xinetd alike). One thread also means one malloc arena and stack (-0.3 to -0.5 MiB RSS).
    One,
}

/// A daemon's own part of its config, and what the runtime must know about the daemon to
/// read and check the whole.
pub trait DaemonConfig: DeserializeOwned + Default {
    /// `[listen]` when the file has none: each socket name with its addresses.
    const LISTEN: &'static [(&'static str, &'static [&'static str])];
    /// `[limits] idle_timeout` when the file sets none.
    const IDLE_TIMEOUT: Duration;
    /// The runtime's threads.
    const THREADS: Threads = Threads::PerCpu;

    /// What a socket called `name` (a `[listen]` key, or systemd's `FileDescriptorName=`)
    /// carries over `transport`; `Err` says why this daemon serves no such socket.
    fn socket(name: &str, transport: Transport) -> Result<SocketRole, String>;

    /// Every check of the daemon's own sections beyond what their types say. The start and
    /// `--check-config` both run it, so what one accepts the other does too.
    fn validate(&self) -> Vec<Problem> {
        Vec::new()
    }

    /// `--check-config` only, after the checks passed: connects to the outside services the
    /// config names (a user directory) and says, per service, whether it answers (`Ok`) or
    /// not (`Err`, which fails the check).
    fn probe(&self) -> Vec<Result<String, String>> {
        Vec::new()
    }
}

/// A daemon's whole config: the shared sections and the daemon's own part.
#[derive(Debug, Clone)]
pub struct Config<D> {
    /// `[listen]`, or the daemon's [`DaemonConfig::LISTEN`] when the file has none.
    pub listen: ListenConfig,
    listen_is_default: bool,
    /// `[tls]`.
    pub tls: TlsConfig,
    /// `[limits]`, with the idle timeout filled in.
    pub limits: LimitsConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// Everything else: the daemon's own sections.
    pub daemon: D,
}

fn default_listen<D: DaemonConfig>() -> ListenConfig {
    D::LISTEN
        .iter()
        .map(|(name, addrs)| {
            let addrs = addrs.iter().map(|a| (*a).to_owned()).collect();
            ((*name).to_owned(), addrs)
        })
        .collect()
}

impl<D: DaemonConfig> Default for Config<D> {
    fn default() -> Self {
        Config {
            listen: default_listen::<D>(),
            listen_is_default: true,
            tls: TlsConfig::default(),
            limits: LimitsConfig {
                idle_timeout: Some(D::IDLE_TIMEOUT),
                ..LimitsConfig::default()
            },
            log: LogConfig::default(),
            daemon: D::default(),
        }
    }
}

impl<D: DaemonConfig> Config<D> {
    /// Every check beyond the types, each problem with the key it is about; the TLS context
    /// when a certificate is configured or handed over by systemd.
    pub fn validate(&self) -> Result<Option<TlsContext>, Vec<Problem>> {
        let mut problems = Vec::new();
        let tls = TlsContext::from_config(&self.tls);
        // A broken certificate is one problem, not one more per socket that needs it.
        let tls_available = !matches!(tls, Ok(None));
        let tls = tls.unwrap_or_else(|err| {
            problems.push(tls_problem(&err));
            None
        });
        self.check_listen(tls_available, &mut problems);
        if self.limits.max_unauthenticated_per_ip == 0 {
            // 0 would turn every client of a daemon with a login away; the timeout's 0 means
            // "off", this one cannot.
            problems.push(
                KeyPath::new("limits")
                    .key("max_unauthenticated_per_ip")
                    .problem("must be at least 1".to_owned()),
            );
        }
        problems.extend(self.daemon.validate());
        if problems.is_empty() {
            Ok(tls)
        } else {
            Err(problems)
        }
    }

    fn check_listen(&self, tls_available: bool, problems: &mut Vec<Problem>) {
        for (name, addrs) in &self.listen {
            let at = KeyPath::new("listen").key(name);
            let mut name_checked = false;
            for (i, spec) in addrs.iter().enumerate() {
                let addr: ListenAddr = match spec.parse() {
                    Ok(addr) => addr,
                    Err(err) => {
                        problems.push(at.clone().index(i).problem(err.to_string()));
                        continue;
                    }
                };
                if name_checked {
                    continue;
                }
                let problem = match D::socket(name, addr.transport()) {
                    Err(why) => format!("socket {name:?}: {why}"),
                    Ok(SocketRole::Tls) if !tls_available && !self.listen_is_default => {
                        format!(
                            "socket {name:?} needs TLS but no certificate is configured: set \
                             [tls] cert and key"
                        )
                    }
                    Ok(_) => continue,
                };
                problems.push(at.clone().problem(problem));
                name_checked = true;
            }
        }
    }

    /// The sockets to bind when not socket-activated. The built-in `[listen]` (the file has
    /// none) leaves out TLS sockets when there is no certificate: those are left out, named
    /// in the second list, where a `[listen]` in the file would have been refused.
    pub fn listen_to_bind(&self, tls_available: bool) -> (ListenConfig, Vec<String>) {
        if tls_available || !self.listen_is_default {
            return (self.listen.clone(), Vec::new());
        }
        let (tls, plain): (ListenConfig, ListenConfig) = self
            .listen
            .clone()
            .into_iter()
            .partition(|(name, _)| D::socket(name, Transport::Tcp) == Ok(SocketRole::Tls));
        (plain, tls.into_keys().collect())
    }
}

/// Where a certificate problem is: the key of the file that failed.
fn tls_problem(err: &TlsError) -> Problem {
    let at = KeyPath::new("tls");
    let at = match err {
        TlsError::Certificates { .. } | TlsError::NoCertificate { .. } => at.key("cert"),
        TlsError::Key { .. } | TlsError::BadKey { .. } | TlsError::Mismatch { .. } => at.key("key"),
        _ => at,
    };
    at.problem(chain(err))
}

/// A config that passed every check, and what checking it produced.
#[derive(Debug)]
pub struct Checked<D> {
    /// The config.
    pub config: Config<D>,
    /// The certificate, when one is configured or handed over by systemd.
    pub tls: Option<TlsContext>,
}

/// Reads, parses and checks a config file.
pub fn load<D: DaemonConfig>(path: &Path) -> Result<Checked<D>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_text(&text, path)
}

/// Parses and checks config text; `path` is only used in error messages.
pub fn from_text<D: DaemonConfig>(text: &str, path: &Path) -> Result<Checked<D>, ConfigError> {
    let config: Config<D> = parse(text, path)?;
    check(config, path, Some(text))
}

/// The built-in config, checked, for a daemon whose default config file does not exist.
pub fn defaults<D: DaemonConfig>(path: &Path) -> Result<Checked<D>, ConfigError> {
    check(Config::default(), path, None)
}

fn check<D: DaemonConfig>(
    config: Config<D>,
    path: &Path,
    text: Option<&str>,
) -> Result<Checked<D>, ConfigError> {
    let problems = match config.validate() {
        Ok(tls) => return Ok(Checked { config, tls }),
        Err(problems) => problems,
    };
    let mut mistakes: Vec<Mistake> = problems
        .into_iter()
        .map(|problem| Mistake {
            file: path.to_owned(),
            position: text.and_then(|text| {
                let offset = problem.key.locate(text)?;
                Some(keys::line_column(text, offset))
            }),
            message: problem.to_string(),
        })
        .collect();
    // In the order of the file; those about defaults (no position) last.
    mistakes.sort_by_key(|m| m.position.map_or((usize::MAX, 0), |p| p));
    Err(ConfigError::Invalid(mistakes))
}

/// Parses config text into any type (no checks beyond the type's own); `path` is only used
/// in error messages.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|err| {
        ConfigError::Invalid(vec![Mistake {
            file: path.to_owned(),
            position: err.span().map(|span| keys::line_column(text, span.start)),
            message: err.message().trim_end().to_owned(),
        }])
    })
}

#[cfg(test)]
mod tests;
