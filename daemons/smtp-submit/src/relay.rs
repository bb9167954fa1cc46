//! The `[relay]` section and the smarthost connection (lettre, with a connection pool).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use serde::Deserialize;

use crate::queue::RetryPolicy;

/// How the connection to the smarthost is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
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
pub struct RelayConfig {
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
    /// Seconds before the first retry; each next wait doubles, up to `retry_max`.
    pub retry_initial: u64,
    pub retry_max: u64,
    /// Seconds after which an undeliverable message is bounced (default 5 days).
    pub max_lifetime: u64,
    /// Seconds to wait for the smarthost per command.
    pub timeout: u64,
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
            retry_initial: 300,
            retry_max: 4 * 3600,
            max_lifetime: 5 * 24 * 3600,
            timeout: 60,
        }
    }
}

impl RelayConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(self.retry_initial.max(1)),
            max: Duration::from_secs(self.retry_max.max(self.retry_initial).max(1)),
            lifetime: Duration::from_secs(self.max_lifetime),
        }
    }
}

pub struct Relay {
    /// `host:port`, for logs and bounces.
    pub name: String,
    pub transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Relay {
    /// The smarthost connection, or `None` when no host is configured.
    pub fn from_config(config: &RelayConfig, hello: &str) -> anyhow::Result<Option<Relay>> {
        if config.host.is_empty() {
            return Ok(None);
        }
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
                .port(config.port)
                .hello_name(ClientId::Domain(hello.to_owned()))
                .timeout(Some(Duration::from_secs(config.timeout.max(1))))
                .pool_config(
                    PoolConfig::new()
                        .max_size(10)
                        .idle_timeout(Duration::from_secs(60)),
                );
        if config.tls != TlsMode::None {
            let mut parameters = TlsParameters::builder(config.host.clone());
            if let Some(ca_file) = &config.ca_file {
                let pem = std::fs::read(ca_file)
                    .with_context(|| format!("[relay] ca_file {}", ca_file.display()))?;
                let cert = Certificate::from_pem(&pem)
                    .with_context(|| format!("[relay] ca_file {}", ca_file.display()))?;
                parameters = parameters.add_root_certificate(cert);
            }
            let parameters = parameters.build_rustls().context("[relay] TLS settings")?;
            builder = builder.tls(match config.tls {
                TlsMode::Implicit => Tls::Wrapper(parameters),
                _ => Tls::Required(parameters),
            });
        } else {
            builder = builder.tls(Tls::None);
        }
        if let Some(username) = &config.username {
            let password = match (&config.password, &config.password_file) {
                (Some(password), _) => password.clone(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .with_context(|| format!("[relay] password_file {}", file.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                (None, None) => anyhow::bail!("[relay] username needs password or password_file"),
            };
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        Ok(Some(Relay {
            name: format!("{}:{}", config.host, config.port),
            transport: builder.build(),
        }))
    }
}
