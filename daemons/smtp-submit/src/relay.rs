//! The `[relay]` section and the smarthost connection (lettre, with a connection pool).

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Mutex;

use inetkit_runtime::config::{seconds, KeyPath, Problem};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::Error;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::queue::RetryPolicy;

/// How the connection to the smarthost is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TlsMode {
    /// STARTTLS, required (the default; port 587).
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Implicit,
    /// No TLS at all: only for a smarthost on loopback or a trusted network.
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RelayConfig {
    /// The smarthost's name; empty: no relaying (non-local recipients are refused).
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// PEM file of extra CA certificates to trust for the smarthost (besides the system's).
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    /// The password, or better `password_file` (its first line), so the config may stay
    /// world-readable.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The wait before the first retry; each next wait doubles, up to `retry_max`.
    #[serde(deserialize_with = "seconds")]
    pub retry_initial: Duration,
    #[serde(deserialize_with = "seconds")]
    pub retry_max: Duration,
    /// How long until an undeliverable message is bounced (default 5 days).
    #[serde(deserialize_with = "seconds")]
    pub max_lifetime: Duration,
    /// How long connecting may take; one session setup or one message may take ten times as
    /// long.
    #[serde(deserialize_with = "seconds")]
    pub timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            host: String::new(),
            port: 587,
            tls: TlsMode::default(),
            ca_file: None,
            username: None,
            password: None,
            password_file: None,
            retry_initial: Duration::from_secs(300),
            retry_max: Duration::from_secs(4 * 3600),
            max_lifetime: Duration::from_secs(5 * 24 * 3600),
            timeout: Duration::from_secs(60),
        }
    }
}

impl RelayConfig {
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        let initial = self.retry_initial.max(Duration::from_secs(1));
        RetryPolicy {
            initial,
            max: self.retry_max.max(initial),
            lifetime: self.max_lifetime,
        }
    }
}

/// Connections kept open to the smarthost between messages.
const POOL_SIZE: usize = 10;

/// The smarthost. Connections are lettre's `AsyncSmtpConnection`s over sockets made here, so
/// that they can have TCP_NODELAY: lettre writes a message's final `.` line separately, which
/// Nagle's algorithm would hold back for a delayed ACK (some 40 ms a message). Idle ones are
/// pooled; implicit TLS goes through lettre's own connect (without TCP_NODELAY).
pub(crate) struct Relay {
    /// `host:port`, for logs and bounces.
    pub name: String,
    host: String,
    port: u16,
    tls: TlsMode,
    parameters: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
}

impl Relay {
    /// The smarthost connection, or `None` when no host is configured. Its problems are
    /// the `[relay]` checks of the config (the start and `--check-config` both build it).
    pub(crate) fn from_config(config: &RelayConfig, hello: &str) -> Result<Option<Relay>, Problem> {
        if config.host.is_empty() {
            return Ok(None);
        }
        let at = |key: &str| KeyPath::new("relay").key(key);
        let parameters = if config.tls != TlsMode::None {
            let mut parameters = TlsParameters::builder(config.host.clone());
            if let Some(ca_file) = &config.ca_file {
                let pem = std::fs::read(ca_file).map_err(|e| {
                    at("ca_file").problem(format!("cannot read {}: {e}", ca_file.display()))
                })?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| at("ca_file").problem(format!("{}: {e}", ca_file.display())))?;
                parameters = parameters.add_root_certificate(cert);
            }
            let parameters = parameters
                .build_rustls()
                .map_err(|e| at("tls").problem(format!("TLS settings: {e}")))?;
            Some(parameters)
        } else {
            None
        };
        let credentials = match &config.username {
            None => None,
            Some(username) => {
                let password = match (&config.password, &config.password_file) {
                    (Some(password), _) => password.clone(),
                    (None, Some(file)) => std::fs::read_to_string(file)
                        .map_err(|e| {
                            at("password_file")
                                .problem(format!("cannot read {}: {e}", file.display()))
                        })?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    (None, None) => {
                        return Err(at("username").problem("needs password or password_file"))
                    }
                };
                Some(Credentials::new(username.clone(), password))
            }
        };
        Ok(Some(Relay {
            name: format!("{}:{}", config.host, config.port),
            host: config.host.clone(),
            port: config.port,
            tls: config.tls,
            parameters,
            credentials,
            hello: ClientId::Domain(hello.to_owned()),
            timeout: config.timeout.max(Duration::from_secs(1)),
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends one message; a pooled connection that turns out dead is replaced once.
    pub(crate) async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SendError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match pooled {
            Some(mut conn) => match self.within(conn.send(envelope, message)).await {
                Ok(_) => return self.put_back(conn),
                // The server answered: its verdict stands.
                Err(err) if err.is_reply() => {
                    conn.abort().await;
                    return Err(err);
                }
                // Closed while idle, most likely: try a fresh connection.
                Err(_) => {
                    conn.abort().await;
                    self.connect().await?
                }
            },
            None => self.connect().await?,
        };
        match self.within(conn.send(envelope, message)).await {
            Ok(_) => self.put_back(conn),
            Err(err) => {
                conn.abort().await;
                Err(err)
            }
        }
    }

    fn put_back(&self, conn: AsyncSmtpConnection) -> Result<(), SendError> {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < POOL_SIZE && !conn.has_broken() {
                idle.push(conn);
            }
        }
        Ok(())
    }

    /// A bound on a whole exchange (lettre bounds each read and write only when it connects).
    async fn within<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, SendError> {
        match tokio::time::timeout(self.timeout * 10, future).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(io_error(std::io::ErrorKind::TimedOut.into())),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let mut conn = if self.tls == TlsMode::Implicit {
            AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                self.parameters.clone(),
                None,
            )
            .await?
        } else {
            let tcp = tokio::time::timeout(
                self.timeout,
                TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| io_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io_error)?;
            tcp.set_nodelay(true).map_err(io_error)?;
            let mut conn = self
                .within(AsyncSmtpConnection::connect_with_transport(
                    Box::new(tcp),
                    &self.hello,
                ))
                .await?;
            if let Some(parameters) = &self.parameters {
                if !conn.can_starttls() {
                    conn.abort().await;
                    return Err(io_error(std::io::Error::other(
                        "the smarthost does not offer STARTTLS, which [relay] tls requires",
                    )));
                }
                self.within(conn.starttls(parameters.clone(), &self.hello))
                    .await?;
            }
            conn
        };
        if let Some(credentials) = &self.credentials {
            if let Err(err) = self
                .within(conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials))
                .await
            {
                conn.abort().await;
                return Err(err);
            }
        }
        Ok(conn)
    }
}

/// Why a message did not get to the smarthost.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Smtp(#[from] Error),
    /// Connecting or a timeout on our side: always temporary.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl SendError {
    /// The smarthost refused for good (a 5xx reply).
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, SendError::Smtp(err) if err.is_permanent())
    }

    /// The smarthost answered (4xx or 5xx), as opposed to a broken connection.
    fn is_reply(&self) -> bool {
        matches!(self, SendError::Smtp(err) if err.is_permanent() || err.is_transient())
    }
}

fn io_error(err: std::io::Error) -> SendError {
    SendError::Io(err)
}
