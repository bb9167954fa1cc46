//! Proxy mode for the mail daemons that log users in (imapd, pop3d): when a user's record
//! names a backend, the front end checks the password itself, logs in on that backend and
//! then relays the session's bytes both ways. The fields are Dovecot's proxy extra fields, so
//! a Dovecot admin's directory works as it is:
//!
//! ```text
//! alice:{ARGON2ID}$argon2id$…::::::proxy host=mail-a.example.org
//! bob:{ARGON2ID}$argon2id$…::::::proxy host=192.0.2.20 port=10143 starttls=yes destuser=robert
//! ```
//!
//! - `host=`: the backend's name or address (required; the other fields only with it);
//! - `port=`: default the protocol's plain port, or its implicit-TLS port with `ssl=yes`;
//! - `ssl=yes`: TLS from the first byte; `starttls=yes`: STARTTLS (IMAP) or STLS (POP3);
//!   neither: plaintext, which is only used towards a loopback address unless
//!   `[proxy] plaintext = true`;
//! - `destuser=`: the name to log in as on the backend (default: the user's own name);
//! - `proxy` (Dovecot's flag) is accepted and changes nothing.
//!
//! The daemon's `[proxy]` section ([`ProxyConfig`]) turns the mode on (`enabled = true`):
//! a backend reading the same directory as its front ends leaves it off and serves the
//! users itself. This module holds what both protocols share: the settings, reaching the
//! backend ([`connect`]) and the relay ([`relay`]); each daemon adds its protocol's login.

mod connect;
mod relay;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::seconds;

pub use connect::{Backend, BackendStream};
pub use relay::relay;

/// `[proxy]`: whether users with a `host=` field are relayed to that backend, and how.
///
/// ```toml
/// [proxy]
/// enabled = false
/// master_user = "proxy"                              # unset: each user's own password
/// master_password_file = "/etc/inetkit/proxy.secret" # the master user's password
/// ca_file = "/etc/inetkit/backend-ca.pem"            # unset: the system's CAs
/// connect_timeout = 5
/// login_timeout = 10
/// plaintext = false       # true: plaintext to backends that are not on loopback too
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Relay users whose record names a backend; off: serve every user here.
    pub enabled: bool,
    /// Log in on backends as this master user on behalf of the user (SASL PLAIN with the
    /// user as authorization identity); unset: with the user's own name and password.
    pub master_user: Option<String>,
    /// The file holding the master user's password (its first line).
    pub master_password_file: Option<PathBuf>,
    /// The CAs that backends' certificates must chain to; unset: the system's.
    pub ca_file: Option<PathBuf>,
    /// How long reaching a backend (TCP and TLS handshake) may take.
    #[serde(deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    /// How long the backend's greeting and login exchange may take.
    #[serde(deserialize_with = "seconds")]
    pub login_timeout: Duration,
    /// Allow plaintext to backends that are not on a loopback address.
    pub plaintext: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            master_user: None,
            master_password_file: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(10),
            plaintext: false,
        }
    }
}

impl ProxyConfig {
    /// For `--check-config`: `None` when proxy mode is off; else whether its settings work
    /// (the master password file and the CA file read).
    pub fn probe(&self) -> Option<Result<String, String>> {
        self.enabled.then(|| match Proxy::new(self) {
            Ok(_) => Ok(match &self.master_user {
                Some(master) => format!("proxy mode: on, logging in on backends as {master}"),
                None => "proxy mode: on, logging in on backends as each user".to_owned(),
            }),
            Err(err) => Err(err.to_string()),
        })
    }
}

/// Why a proxied login could not be made. Never the client's fault: the client is told to try
/// again later, the log gets this.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `[proxy]` settings that cannot work (refused at start).
    #[error("[proxy] {0}")]
    Config(String),
    /// The user's record has proxy fields that make no sense.
    #[error("user record: {0}")]
    Field(String),
    /// Plaintext to a backend that is not on loopback, without `[proxy] plaintext = true`.
    #[error("plaintext to {0} refused: set ssl=yes or starttls=yes, or [proxy] plaintext = true")]
    PlaintextRefused(String),
    /// The backend could not be reached, or the TLS handshake failed.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// Reaching the backend, or its login exchange, took too long.
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// The backend said something the login exchange does not allow.
    #[error("{0}: unexpected answer: {1}")]
    Protocol(String, String),
    /// The backend refused the login.
    #[error("{0} refused the login: {1}")]
    Refused(String, String),
    /// Reading from or writing to the backend failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// How the front end talks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTls {
    /// TLS from the first byte (`ssl=yes`).
    Implicit,
    /// STARTTLS or STLS after the greeting (`starttls=yes`).
    StartTls,
    /// None: loopback only, unless `[proxy] plaintext = true`.
    Plaintext,
}

/// The protocol's usual ports, for a record without `port=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultPorts {
    /// Plaintext and STARTTLS (143, 110).
    pub plain: u16,
    /// Implicit TLS (993, 995).
    pub tls: u16,
}

/// Where a user's sessions go, from their record's extra fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name or address, as the record spells it (the name TLS checks the certificate for).
    pub host: String,
    /// The backend's port.
    pub port: u16,
    /// Whether and how TLS is used.
    pub tls: BackendTls,
    /// The name to log in as on the backend (`destuser=`).
    pub destuser: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// The backend a user's record names (`field("host")` is the value of `host=`), or
    /// `None` without `host=`.
    pub fn from_fields<'a>(
        field: impl Fn(&str) -> Option<&'a str>,
        ports: DefaultPorts,
    ) -> Result<Option<Target>, ProxyError> {
        let Some(host) = field("host") else {
            return Ok(None);
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.chars().any(|c| c.is_control() || c == '/') {
            return Err(ProxyError::Field(format!("host={host:?} is not a host")));
        }
        let yes = |key: &str| -> Result<bool, ProxyError> {
            match field(key) {
                None | Some("no") => Ok(false),
                Some("yes") => Ok(true),
                Some(other) => Err(ProxyError::Field(format!(
                    "{key}={other:?}: expected yes or no"
                ))),
            }
        };
        let tls = match (yes("ssl")?, yes("starttls")?) {
            (true, true) => {
                return Err(ProxyError::Field(
                    "ssl=yes and starttls=yes together".into(),
                ))
            }
            (true, false) => BackendTls::Implicit,
            (false, true) => BackendTls::StartTls,
            (false, false) => BackendTls::Plaintext,
        };
        let port = match field("port") {
            None => match tls {
                BackendTls::Implicit => ports.tls,
                _ => ports.plain,
            },
            Some(text) => text
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| ProxyError::Field(format!("port={text:?} is not a port")))?,
        };
        let destuser = field("destuser")
            .filter(|name| !name.is_empty())
            .map(str::to_owned);
        Ok(Some(Target {
            host: host.to_owned(),
            port,
            tls,
            destuser,
        }))
    }
}

/// What the front end logs in on the backend with: SASL PLAIN's three parts.
pub struct BackendLogin {
    /// The user to act as (empty: the same as `authcid`).
    pub authzid: String,
    /// Whose password it is: the user, or the master user.
    pub authcid: String,
    /// The password; never logged.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for BackendLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLogin")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .finish_non_exhaustive()
    }
}

impl BackendLogin {
    /// Whose session it is on the backend: the authorization identity, else the login name.
    pub fn user(&self) -> &str {
        if self.authzid.is_empty() {
            &self.authcid
        } else {
            &self.authzid
        }
    }

    /// The PLAIN message (RFC 4616: `authzid NUL authcid NUL password`), to be base64-encoded.
    pub fn plain_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(self.authzid.len() + self.authcid.len() + 2);
        message.extend_from_slice(self.authzid.as_bytes());
        message.push(0);
        message.extend_from_slice(self.authcid.as_bytes());
        message.push(0);
        message.extend_from_slice(&self.password);
        message
    }
}

/// The proxy settings of a running daemon: TLS towards backends, the master login, timeouts.
#[derive(Clone)]
pub struct Proxy {
    tls: Arc<rustls::ClientConfig>,
    master: Option<(String, Vec<u8>)>,
    connect_timeout: Duration,
    login_timeout: Duration,
    plaintext_anywhere: bool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("master_user", &self.master.as_ref().map(|(name, _)| name))
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy `config` describes; `None` when it is not enabled. Reads the master password
    /// and the CA file now, so a mistake stops the daemon at start rather than at a login.
    pub fn new(config: &ProxyConfig) -> Result<Option<Proxy>, ProxyError> {
        if !config.enabled {
            return Ok(None);
        }
        let master = match (&config.master_user, &config.master_password_file) {
            (None, None) => None,
            (Some(user), Some(file)) if !user.is_empty() => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    ProxyError::Config(format!("master_password_file {}: {e}", file.display()))
                })?;
                let password = text.lines().next().unwrap_or_default();
                if password.is_empty() {
                    return Err(ProxyError::Config(format!(
                        "master_password_file {} is empty",
                        file.display()
                    )));
                }
                Some((user.clone(), password.as_bytes().to_vec()))
            }
            _ => {
                return Err(ProxyError::Config(
                    "master_user and master_password_file go together".into(),
                ))
            }
        };
        Ok(Some(Proxy {
            tls: crate::tls::client_config(config.ca_file.as_deref())
                .map_err(|e| ProxyError::Config(format!("ca_file: {e}")))?,
            master,
            connect_timeout: config.connect_timeout,
            login_timeout: config.login_timeout,
            plaintext_anywhere: config.plaintext,
        }))
    }

    /// The credentials for `user` (logged in on the front end with `password`) at `target`:
    /// the master login acting as the user, or the user's own.
    pub fn login_for(&self, target: &Target, user: &str, password: &[u8]) -> BackendLogin {
        let name = target.destuser.as_deref().unwrap_or(user).to_owned();
        match &self.master {
            Some((master, master_password)) => BackendLogin {
                authzid: name,
                authcid: master.clone(),
                password: master_password.clone(),
            },
            None => BackendLogin {
                authzid: String::new(),
                authcid: name,
                password: password.to_vec(),
            },
        }
    }

    /// Runs a daemon's login `exchange` with `target` (greeting, STARTTLS, credentials)
    /// within `[proxy] login_timeout` in all.
    pub async fn log_in<T>(
        &self,
        target: &Target,
        exchange: impl std::future::Future<Output = Result<T, ProxyError>>,
    ) -> Result<T, ProxyError> {
        let timeout = self.login_timeout;
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(ProxyError::Timeout(target.to_string(), timeout)))
    }
}

#[cfg(test)]
mod tests;
