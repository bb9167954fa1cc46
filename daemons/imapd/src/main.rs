//! inetkit-imapd: IMAP4rev1 (RFC 3501) over the inetkit Maildir store, with STARTTLS on the
//! `imap` socket (143) and implicit TLS on `imaps` (993).

mod fetch;
mod keywords;
mod names;
mod search;
mod selected;
mod session;
mod watch;
mod wire;

use std::process::ExitCode;
use std::sync::{Arc, LazyLock};

use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_maildir::{MailConfig, Store};
use inetkit_runtime::config::{LimitsConfig, ListenConfig, LogConfig, TlsConfig};
use inetkit_runtime::daemon::{self, Context, PlainAndTls};
use inetkit_runtime::server::Server;
use inetkit_runtime::tls::TlsContext;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    listen: ListenConfig,
    tls: TlsConfig,
    limits: LimitsConfig,
    log: LogConfig,
    auth: AuthConfig,
    mail: MailConfig,
}
// RFC 3501 §5.4: an autologout timer of at least 30 minutes.
inetkit_runtime::shared_sections!(Config, idle_timeout = 1800);

impl Default for Config {
    fn default() -> Self {
        let mut listen = ListenConfig::new();
        listen.insert("imap".into(), vec!["[::]:143".into()]);
        listen.insert("imaps".into(), vec!["[::]:993".into()]);
        Config {
            listen,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            mail: MailConfig::default(),
        }
    }
}

/// What every session shares.
pub struct Imap {
    pub auth: Authenticator,
    pub auth_config: AuthConfig,
    pub store: Store,
    pub tls: Option<TlsContext>,
    pub watches: Arc<watch::Watches>,
}

/// Sent to a client turned away at the connection limit (encoded once).
static BUSY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut out = Vec::new();
    wire::status(
        &mut out,
        wire::bye("Too many connections; try again later."),
    );
    out
});

fn main() -> ExitCode {
    daemon::run("imapd", setup)
}

fn setup(mut ctx: Context<Config>) -> anyhow::Result<Server> {
    let imap = Arc::new(Imap {
        auth: ctx.config.auth.authenticator(),
        auth_config: ctx.config.auth.clone(),
        store: Store::new(ctx.config.mail.root.clone()),
        tls: ctx.tls.clone(),
        watches: watch::Watches::new(),
    });
    ctx.serve_plain_and_tls(
        PlainAndTls {
            protocol: "IMAP",
            plain: "imap",
            tls: "imaps",
            busy: BUSY.as_slice(),
        },
        move |stream, peer, implicit_tls| session::serve(imap.clone(), stream, peer, implicit_tls),
    )?;
    Ok(ctx.server)
}
