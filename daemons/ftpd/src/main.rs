//! inetkit-ftpd: FTP (RFC 959) with AUTH TLS (RFC 4217) on the `ftp` socket (21) and implicit
//! TLS on `ftps` (990). Every user is confined to a root directory opened with `cap-std`.

mod command;
mod data;
mod fs;
mod listing;
mod passive;
mod session;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_runtime::config::{LimitsConfig, ListenConfig, LogConfig, TlsConfig};
use inetkit_runtime::daemon::{self, Context, PlainAndTls};
use inetkit_runtime::server::Server;
use inetkit_runtime::tls::TlsContext;

use crate::passive::PassiveSlots;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    listen: ListenConfig,
    tls: TlsConfig,
    limits: LimitsConfig,
    log: LogConfig,
    auth: AuthConfig,
    ftp: FtpConfig,
}
// vsftpd's idle_session_timeout default.
inetkit_runtime::shared_sections!(Config, idle_timeout = 300);

impl Default for Config {
    fn default() -> Self {
        let mut listen = ListenConfig::new();
        listen.insert("ftp".into(), vec!["[::]:21".into()]);
        listen.insert("ftps".into(), vec!["[::]:990".into()]);
        Config {
            listen,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            ftp: FtpConfig::default(),
        }
    }
}

/// `[ftp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FtpConfig {
    /// Users whose home field is empty get `<root>/<user>`, created on first login.
    pub root: PathBuf,
    /// Ports for passive data connections, first and last (inclusive); `[0, 0]` is any free
    /// port of the dynamic range, 49152–65535.
    pub passive_ports: [u16; 2],
    /// The IPv4 address PASV tells clients to connect to (behind NAT); by default the address
    /// the client reached us on.
    pub passive_address: Option<IpAddr>,
    /// Accept passive data connections from any address, not just the control connection's
    /// client (needed behind some proxies; opens the door to data-connection theft).
    pub passive_any_address: bool,
    /// Allow `anonymous`/`ftp` logins, read-only, in `anonymous_root`.
    pub anonymous: bool,
    pub anonymous_root: PathBuf,
    /// Seconds to wait for a data connection to open, and for a stalled one to move; a passive
    /// port nobody connects to is closed after as long.
    pub data_timeout: u64,
    /// Passive ports open at once for one client address, over all its sessions (0: none,
    /// PORT/EPRT only).
    pub max_passive_per_address: usize,
    /// Require that a PROT P data connection resumes the control connection's TLS session
    /// (vsftpd's `require_ssl_reuse`), so nobody else can connect to the passive port.
    pub require_tls_reuse: bool,
}

impl Default for FtpConfig {
    fn default() -> Self {
        FtpConfig {
            root: PathBuf::from("/var/lib/inetkit/ftp"),
            passive_ports: [0, 0],
            passive_address: None,
            passive_any_address: false,
            anonymous: false,
            anonymous_root: PathBuf::from("/srv/ftp"),
            data_timeout: 60,
            max_passive_per_address: 16,
            require_tls_reuse: true,
        }
    }
}

impl FtpConfig {
    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.data_timeout.max(1))
    }
}

/// What every session shares.
pub struct Ftp {
    pub auth: Authenticator,
    pub auth_config: AuthConfig,
    pub config: FtpConfig,
    pub tls: Option<TlsContext>,
    /// Passive listeners open per client address.
    pub(crate) passive: Arc<PassiveSlots>,
}

fn main() -> ExitCode {
    daemon::run("ftpd", setup)
}

fn setup(mut ctx: Context<Config>) -> anyhow::Result<Server> {
    let [low, high] = ctx.config.ftp.passive_ports;
    anyhow::ensure!(
        low <= high,
        "[ftp] passive_ports: the first port must not be above the last"
    );
    if let Some(IpAddr::V6(_)) = ctx.config.ftp.passive_address {
        anyhow::bail!("[ftp] passive_address must be an IPv4 address (PASV cannot carry IPv6)");
    }
    let ftp = Arc::new(Ftp {
        auth: ctx.config.auth.authenticator(),
        auth_config: ctx.config.auth.clone(),
        config: ctx.config.ftp.clone(),
        tls: ctx.tls.clone(),
        passive: PassiveSlots::new(ctx.config.ftp.max_passive_per_address),
    });
    ctx.serve_plain_and_tls(
        PlainAndTls {
            protocol: "FTP",
            plain: "ftp",
            tls: "ftps",
            busy: b"421 Too many connections; try again later.\r\n",
        },
        move |stream, peer, implicit_tls| session::serve(ftp.clone(), stream, peer, implicit_tls),
    )?;
    Ok(ctx.server)
}
