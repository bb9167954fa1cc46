//! inetkit-ftpd: FTP (RFC 959) with AUTH TLS (RFC 4217) on the `ftp` socket (21) and implicit
//! TLS on `ftps` (990). Every user is confined to a root directory opened with `cap-std`.
//!
//! The binary (`main.rs`) only calls [`run`]; being a library lets the fuzz targets in `fuzz/`
//! reach the parsers (through `fuzzing`).

mod command;
mod data;
mod fs;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod listing;
mod passive;
mod rate;
mod session;
mod xferlog;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_runtime::config::{KeyPath, Problem};
use inetkit_runtime::daemon::{self, Context, PlainAndTls, PlainAndTlsConfig};
use inetkit_runtime::server::Server;
use inetkit_runtime::tls::TlsContext;

use anyhow::Context as _;

use crate::passive::PassiveSlots;
use crate::rate::SharedRate;
use crate::xferlog::Xferlog;

/// ftpd's own part of `/etc/inetkit/ftpd.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FtpdConfig {
    auth: AuthConfig,
    ftp: FtpConfig,
}

const FTP: PlainAndTls = PlainAndTls {
    protocol: "FTP",
    plain: "ftp",
    plain_addrs: &["[::]:21"],
    tls: "ftps",
    tls_addrs: &["[::]:990"],
    busy: b"421 Too busy; try again later.\r\n",
};

impl PlainAndTlsConfig for FtpdConfig {
    const SOCKETS: PlainAndTls = FTP;
    // vsftpd's idle_session_timeout default.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

    fn validate(&self) -> Vec<Problem> {
        let at = || KeyPath::new("ftp");
        let mut problems = Vec::new();
        let [low, high] = self.ftp.passive_ports;
        if low > high {
            problems.push(
                at().key("passive_ports")
                    .problem("the first port must not be above the last"),
            );
        }
        if let Some(IpAddr::V6(_)) = self.ftp.passive_address {
            problems.push(
                at().key("passive_address")
                    .problem("must be an IPv4 address (PASV cannot carry IPv6)"),
            );
        }
        problems
    }

    // --check-config: does the user directory answer?
    fn probe(&self) -> Vec<Result<String, String>> {
        self.auth.probe().into_iter().collect()
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
    /// How long to wait for a data connection to open, and for a stalled one to move; a
    /// passive port nobody connects to is closed after as long.
    #[serde(deserialize_with = "inetkit_runtime::config::seconds")]
    pub data_timeout: Duration,
    /// Passive ports open at once for one client address, over all its sessions (0: none,
    /// PORT/EPRT only).
    pub max_passive_per_address: usize,
    /// Require that a PROT P data connection resumes the control connection's TLS session
    /// (vsftpd's `require_ssl_reuse`), so nobody else can connect to the passive port.
    pub require_tls_reuse: bool,
    /// Let SITE CHMOD set the setuid, setgid and sticky bits.
    pub chmod_special_bits: bool,
    /// A file for the transfer log in the xferlog format (vsftpd's `xferlog_std_format`);
    /// without one, the same lines go to the journal.
    pub xferlog: Option<PathBuf>,
    /// Bytes per second of one session's transfers (vsftpd's `local_max_rate`); 0: no limit.
    /// A user's `ftp_max_rate=N` extra field in the users file overrides it.
    pub max_rate: u64,
    /// Bytes per second of all sessions' transfers together; 0: no limit.
    pub max_rate_total: u64,
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
            data_timeout: Duration::from_secs(60),
            max_passive_per_address: 16,
            require_tls_reuse: true,
            chmod_special_bits: false,
            xferlog: None,
            max_rate: 0,
            max_rate_total: 0,
        }
    }
}

impl FtpConfig {
    pub fn data_timeout(&self) -> Duration {
        self.data_timeout.max(Duration::from_secs(1))
    }
}

/// What every session shares.
pub struct Ftp {
    /// Checks logins and decides whether a password may come without TLS.
    pub auth: Authenticator,
    pub config: FtpConfig,
    pub tls: Option<TlsContext>,
    /// Passive listeners open per client address.
    pub(crate) passive: Arc<PassiveSlots>,
    /// Where the xferlog lines of finished transfers go.
    pub(crate) xferlog: Xferlog,
    /// `[ftp] max_rate_total`, shared by every transfer.
    pub(crate) shared_rate: Option<Arc<SharedRate>>,
}

/// The daemon: command line, config, listeners, then serving until stopped.
pub fn run() -> ExitCode {
    daemon::run("ftpd", setup)
}

fn setup(mut ctx: Context<FtpdConfig>) -> anyhow::Result<Server> {
    let config = &ctx.config.daemon;
    let ftp = Arc::new(Ftp {
        auth: config.auth.authenticator(),
        config: config.ftp.clone(),
        tls: ctx.tls.clone(),
        passive: PassiveSlots::new(config.ftp.max_passive_per_address),
        shared_rate: SharedRate::new(config.ftp.max_rate_total),
        xferlog: Xferlog::open(config.ftp.xferlog.as_deref()).with_context(|| {
            format!(
                "cannot open the transfer log {}",
                config
                    .ftp
                    .xferlog
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            )
        })?,
    });
    let reopened = ftp.clone();
    ctx.server.on_reload(move || reopened.xferlog.reopen());
    ctx.serve_plain_and_tls(FTP, move |stream, peer, implicit_tls| {
        session::serve(ftp.clone(), stream, peer, implicit_tls)
    })?;
    Ok(ctx.server)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn refused(text: &str) -> String {
        match inetkit_runtime::config::from_text::<FtpdConfig>(text, Path::new("ftpd.toml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn passive_ports_out_of_order_are_refused_at_the_key() {
        assert_eq!(
            refused("[ftp]\nanonymous = false\npassive_ports = [60000, 50000]\n"),
            "ftpd.toml:3:1: ftp.passive_ports: the first port must not be above the last"
        );
    }

    #[test]
    fn an_ipv6_passive_address_is_refused_at_the_key() {
        let err = refused("[ftp]\npassive_address = \"::1\"\n");
        assert!(
            err.starts_with("ftpd.toml:2:1: ftp.passive_address: "),
            "{err}"
        );
    }

    #[test]
    fn data_timeout_is_seconds() {
        let checked = inetkit_runtime::config::from_text::<FtpdConfig>(
            "[ftp]\ndata_timeout = 2.5\n",
            Path::new("ftpd.toml"),
        );
        let Ok(checked) = checked else {
            panic!("refused")
        };
        assert_eq!(
            checked.config.daemon.ftp.data_timeout(),
            Duration::from_millis(2500)
        );
    }
}
