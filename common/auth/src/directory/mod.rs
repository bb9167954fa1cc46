//! Directory backends beside the users file: LDAP ([`ldap`]) and PostgreSQL ([`postgres`]),
//! chosen by an `[auth.directory]` section (see [`DirectoryConfig`]).
//!
//! Either answers one question, "who is `name`?", with the same record a users-file line
//! gives ([`Entry`]: password hash, home, extra fields such as `groups=` and `quota=`), or,
//! for LDAP in bind mode, with the entry's DN to bind as. What this module adds around them:
//! - a small bounded pool of connections, each made with a connect timeout and dropped after
//!   an error (the next lookup reconnects), every query under its own timeout;
//! - a short cache of positive lookups (`[auth] cache_ttl`). Only the lookup is cached: the
//!   password is checked anew at every login, so a wrong password is never taken for a
//!   right one, and unknown names are never cached;
//! - its own small runtime thread, so that both the daemons' async sessions and blocking
//!   callers (ftpd's file threads, the admin command) can ask, whatever runtime they run on;
//! - one log line when the directory stops answering and one when it answers again.

pub mod ldap;
mod pool;
pub mod postgres;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::users::{check_name, Entry};

pub use ldap::LdapConfig;
pub use postgres::PostgresConfig;

/// How many looked-up users the cache holds at most.
const MAX_CACHED: usize = 10_000;

/// `[auth.directory]`: where users are looked up instead of the users file; `type` says
/// which kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DirectoryConfig {
    /// An LDAP server.
    Ldap(LdapConfig),
    /// A PostgreSQL database.
    #[serde(alias = "postgres")]
    Postgresql(PostgresConfig),
}

/// The settings every directory shares, from `[auth]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryLimits {
    /// The longest a connection attempt, or one query, may take.
    pub timeout: Duration,
    /// Connections kept open at most (and queries at once).
    pub connections: usize,
    /// How long a found user is remembered; zero for never.
    pub cache_ttl: Duration,
}

/// Why the directory could not answer: never the client's fault, always a temporary failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    /// No answer in time.
    #[error("{0}: no answer within {1:?}")]
    Timeout(&'static str, Duration),
    /// Every connection was busy for the whole timeout.
    #[error("all {0} directory connections stayed busy")]
    Busy(usize),
    /// The server could not be reached or refused the service login.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A query failed.
    #[error("query failed: {0}")]
    Query(String),
    /// The configuration cannot work (e.g. a password file that cannot be read).
    #[error("{0}")]
    Config(String),
}

/// A user found in the directory.
#[derive(Debug, Clone)]
pub struct Found {
    /// The user and, unless the directory checks passwords itself, their stored hash.
    pub entry: Entry,
    /// LDAP bind mode: the DN to bind as with the password given.
    pub bind_dn: Option<String>,
}

/// The connection-level half: one kind of server.
enum Backend {
    Ldap(ldap::Ldap),
    Postgres(postgres::Postgres),
}

/// A directory: the backend, its cache, and the runtime its connections live on.
pub struct Directory {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    backend: Backend,
    limits: DirectoryLimits,
    cache: Mutex<HashMap<String, (Instant, Found)>>,
    /// The last query failed (logged once, until one works again).
    failing: Mutex<bool>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        // A runtime may not be dropped (blocking) inside another one's task.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Directory {
    /// The directory `config` describes; nothing is connected yet.
    pub fn new(config: &DirectoryConfig, limits: DirectoryLimits) -> Result<Self, DirectoryError> {
        let backend = match config {
            DirectoryConfig::Ldap(c) => Backend::Ldap(ldap::Ldap::new(c.clone(), limits)?),
            DirectoryConfig::Postgresql(c) => {
                Backend::Postgres(postgres::Postgres::new(c.clone(), limits)?)
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("inetkit-directory")
            .enable_all()
            .build()
            .map_err(|e| {
                DirectoryError::Config(format!("cannot start the directory thread: {e}"))
            })?;
        Ok(Directory {
            shared: Arc::new(Shared {
                backend,
                limits,
                cache: Mutex::new(HashMap::new()),
                failing: Mutex::new(false),
            }),
            runtime: Some(runtime),
        })
    }

    /// What it is, for logs and `--check-config` (no secrets).
    pub fn describe(&self) -> String {
        match &self.shared.backend {
            Backend::Ldap(l) => format!("LDAP directory {}", l.url()),
            Backend::Postgres(p) => format!("PostgreSQL directory {}", p.target()),
        }
    }

    /// Runs `work` on the directory's runtime and waits for it from any async context.
    async fn run<T, F>(&self, work: impl FnOnce(Arc<Shared>) -> F) -> Result<T, DirectoryError>
    where
        F: Future<Output = Result<T, DirectoryError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(DirectoryError::Config("directory shut down".into()));
        };
        let shared = Arc::clone(&self.shared);
        let task = runtime.spawn(work(Arc::clone(&shared)));
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(err) => Err(DirectoryError::Query(format!("lookup task failed: {err}"))),
        };
        shared.note(&outcome);
        outcome
    }

    /// Who `name` is (the exact name, lower case; then `local` for `local@domain` with
    /// `domain` one of `local_domains`, as in the users file). `Ok(None)`: nobody.
    pub async fn lookup(
        &self,
        name: &str,
        local_domains: &[String],
    ) -> Result<Option<Found>, DirectoryError> {
        let name = name.to_ascii_lowercase();
        let mut candidates = vec![name.clone()];
        if let Some((local, domain)) = name.rsplit_once('@') {
            if !local.is_empty() && local_domains.iter().any(|d| d == domain) {
                candidates.push(local.to_owned());
            }
        }
        for candidate in candidates {
            // A name no users file could hold is nobody's, and never reaches a query.
            if check_name(&candidate).is_err() {
                continue;
            }
            if let Some(found) = self.shared.cached(&candidate) {
                return Ok(Some(found));
            }
            let key = candidate.clone();
            let found = self
                .run(move |shared| async move { shared.backend_lookup(&key).await })
                .await?;
            if let Some(found) = found {
                self.shared.remember(&candidate, &found);
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// LDAP bind mode: does `password` open `dn`? `Ok(false)`: it does not.
    pub async fn bind(&self, dn: &str, password: &[u8]) -> Result<bool, DirectoryError> {
        let dn = dn.to_owned();
        let password = password.to_vec();
        self.run(move |shared| async move {
            match &shared.backend {
                Backend::Ldap(l) => l.check_bind(&dn, &password).await,
                Backend::Postgres(_) => Ok(false),
            }
        })
        .await
    }

    /// The same lookup for a blocking caller (a file thread, the admin command); it must not
    /// be called from an async task.
    pub fn lookup_blocking(
        &self,
        name: &str,
        local_domains: &[String],
    ) -> Result<Option<Found>, DirectoryError> {
        futures::executor::block_on(self.lookup(name, local_domains))
    }

    /// Connects (or takes a pooled connection) and runs one query, for `--check-config` and
    /// `inetkit user check`: `Ok` when the directory answers.
    pub async fn ping(&self) -> Result<(), DirectoryError> {
        self.run(|shared| async move {
            match &shared.backend {
                Backend::Ldap(l) => l.ping().await,
                Backend::Postgres(p) => p.ping().await,
            }
        })
        .await
    }
}

impl Shared {
    async fn backend_lookup(&self, name: &str) -> Result<Option<Found>, DirectoryError> {
        match &self.backend {
            Backend::Ldap(l) => l.lookup(name).await,
            Backend::Postgres(p) => p.lookup(name).await,
        }
    }

    fn cached(&self, name: &str) -> Option<Found> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (at, found) = cache.get(name)?;
        (at.elapsed() < self.limits.cache_ttl).then(|| found.clone())
    }

    fn remember(&self, name: &str, found: &Found) {
        if self.limits.cache_ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            let ttl = self.limits.cache_ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(name.to_owned(), (Instant::now(), found.clone()));
    }

    /// Logs the moment the directory stops answering, and the moment it answers again.
    fn note<T>(&self, outcome: &Result<T, DirectoryError>) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(_) if *failing => {
                *failing = false;
                tracing::info!(directory = %self.name(), "directory answers again");
            }
            Err(err) if !*failing => {
                *failing = true;
                tracing::error!(directory = %self.name(), "directory unavailable: {err}");
            }
            _ => {}
        }
    }

    fn name(&self) -> String {
        match &self.backend {
            Backend::Ldap(l) => l.url().to_owned(),
            Backend::Postgres(p) => p.target(),
        }
    }
}

/// Reads a secret from a file (service passwords): the first line, without its newline.
pub(crate) fn read_secret(path: &std::path::Path) -> Result<String, DirectoryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DirectoryError::Config(format!("cannot read {}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The rustls client config both backends use: the system's CAs, or only those in `ca_file`.
pub(crate) fn tls_client_config(
    ca_file: Option<&PathBuf>,
) -> Result<Arc<rustls::ClientConfig>, DirectoryError> {
    inetkit_runtime::tls::client_config(ca_file.map(PathBuf::as_path))
        .map_err(|e| DirectoryError::Config(e.to_string()))
}

/// Runs `future` under `timeout`, naming `what` timed out.
pub(crate) async fn within<T>(
    what: &'static str,
    timeout: Duration,
    future: impl Future<Output = Result<T, DirectoryError>>,
) -> Result<T, DirectoryError> {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or(Err(DirectoryError::Timeout(what, timeout)))
}

#[cfg(test)]
mod tests;
