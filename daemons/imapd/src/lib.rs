//! inetkit-imapd: IMAP4rev1 (RFC 3501) over the inetkit Maildir store, with STARTTLS on the
//! `imap` socket (143) and implicit TLS on `imaps` (993).
//!
//! The binary (`main.rs`) only calls [`run`]; being a library lets the fuzz targets in `fuzz/`
//! reach the parsers (through `fuzzing`).

mod binary;
mod catenate;
mod compress;
mod extended;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod keywords;
mod modseq;
mod names;
mod notify;
mod proxy;
mod quota;
mod quoted_utf8;
mod search;
mod search_args;
mod selected;
mod session;
mod sort;
mod special_use;
mod structures;
#[cfg(test)]
mod testing;
mod thread;
mod watch;
mod wire;

use std::process::ExitCode;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_maildir::{FolderWatch, MailConfig, Store};
use inetkit_runtime::daemon::{self, Context, PlainAndTls, PlainAndTlsConfig};
use inetkit_runtime::proxy::{Proxy, ProxyConfig};
use inetkit_runtime::server::Server;
use inetkit_runtime::tls::TlsContext;

/// imapd's own part of `/etc/inetkit/imapd.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ImapConfig {
    auth: AuthConfig,
    mail: MailConfig,
    folders: FoldersConfig,
    quota: quota::QuotaConfig,
    proxy: ProxyConfig,
}

/// `[folders]`: what a mailbox gets at login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FoldersConfig {
    /// Create Sent, Drafts, Trash and Junk at login when missing (a Maildir delivered by
    /// another program has none, and clients look for them by their SPECIAL-USE attribute).
    special_use: bool,
}

impl Default for FoldersConfig {
    fn default() -> Self {
        FoldersConfig { special_use: true }
    }
}

/// The sockets; `busy` is set where it is used (the reply is encoded at run time).
const IMAP: PlainAndTls = PlainAndTls {
    protocol: "IMAP",
    plain: "imap",
    plain_addrs: &["[::]:143"],
    tls: "imaps",
    tls_addrs: &["[::]:993"],
    busy: b"",
};

impl PlainAndTlsConfig for ImapConfig {
    const SOCKETS: PlainAndTls = IMAP;
    // RFC 3501 §5.4: an autologout timer of at least 30 minutes.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(1800);

    // --check-config: does the user directory answer, can proxy mode work?
    fn probe(&self) -> Vec<Result<String, String>> {
        self.auth
            .probe()
            .into_iter()
            .chain(self.proxy.probe())
            .collect()
    }
}

/// What every session shares.
pub struct Imap {
    pub auth: Authenticator,
    pub store: Store,
    pub tls: Option<TlsContext>,
    pub watches: Arc<watch::Watches>,
    /// Encoded ENVELOPE / BODYSTRUCTURE of recently fetched messages, for every session.
    pub(crate) structures: Arc<structures::Structures>,
    /// The quota limits of users without their own.
    quota: quota::Limits,
    /// Proxy mode (`[proxy] enabled`): users whose record names a backend are relayed there.
    proxy: Option<Proxy>,
}

/// Sent to a client turned away by the limits or the memory budget (encoded once):
/// RFC 5530's UNAVAILABLE, "try again later".
static BUSY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut out = Vec::new();
    let code = wire::code("UNAVAILABLE");
    wire::status(&mut out, wire::bye_with(code, "Too busy; try again later."));
    out
});

/// The daemon: command line, config, listeners, then serving until stopped.
pub fn run() -> ExitCode {
    daemon::run("imapd", setup)
}

fn setup(mut ctx: Context<ImapConfig>) -> anyhow::Result<Server> {
    // Store calls run in place on the workers (`session::quick`); a wait for a folder lock
    // another session holds, or a folder's first indexing, hands the worker's other tasks on
    // first.
    inetkit_maildir::set_hand_off(|work| tokio::task::block_in_place(work));
    let config = &ctx.config.daemon;
    let imap = Arc::new(Imap {
        auth: config.auth.authenticator(),
        store: Store::new(config.mail.root.clone())
            .with_special_use_folders(config.folders.special_use),
        tls: ctx.tls.clone(),
        watches: match config.mail.watch {
            FolderWatch::Inotify => watch::Watches::new(),
            FolderWatch::Poll => watch::Watches::polling(),
        },
        structures: Arc::default(),
        quota: config.quota.limits(),
        proxy: Proxy::new(&config.proxy)?,
    });
    ctx.serve_plain_and_tls(
        PlainAndTls {
            busy: BUSY.as_slice(),
            ..IMAP
        },
        move |stream, peer, implicit_tls| session::serve(imap.clone(), stream, peer, implicit_tls),
    )?;
    Ok(ctx.server)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn refused(text: &str) -> String {
        match inetkit_runtime::config::from_text::<ImapConfig>(text, Path::new("imapd.toml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_port_out_of_range_is_refused_at_the_address() {
        let err = refused("[listen]\nimap = [\"127.0.0.1:99999\"]\n");
        assert!(err.starts_with("imapd.toml:2:9: listen.imap[0]: "), "{err}");
        assert!(err.contains("\"127.0.0.1:99999\""), "{err}");
    }

    #[test]
    fn a_quota_that_is_not_a_size_is_refused_at_its_line() {
        let err = refused("[quota]\nstorage = \"2X\"\n");
        assert!(err.starts_with("imapd.toml:2:"), "{err}");
        assert!(err.contains("not a size: \"2X\""), "{err}");
        let parse = |text: &str| {
            inetkit_runtime::config::from_text::<ImapConfig>(text, Path::new("imapd.toml"))
                .map(|c| c.config.daemon.quota.limits())
        };
        let limits = parse("[quota]\nstorage = \"1G\"\nmessages = 10\n").expect("accepted");
        assert_eq!((limits.storage, limits.messages), (Some(1 << 30), Some(10)));
        let limits = parse("[quota]\nstorage = 4096\n").expect("accepted");
        assert_eq!(limits.storage, Some(4096));
        assert!(parse("").expect("accepted").is_unlimited());
    }

    #[test]
    fn a_socket_imapd_does_not_serve_is_refused_at_its_name() {
        assert_eq!(
            refused("[listen]\nimapx = [\"127.0.0.1:0\"]\n"),
            "imapd.toml:2:1: listen.imapx: socket \"imapx\": IMAP is served on sockets named \
             imap and imaps"
        );
        let err = refused("[listen]\nimap = [\"udp://127.0.0.1:0\"]\n");
        assert!(err.contains("TCP only"), "{err}");
    }
}
