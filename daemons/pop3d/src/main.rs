//! inetkit-pop3d: POP3 (RFC 1939) over the inetkit Maildir store, with STLS on the `pop3`
//! socket (110) and implicit TLS on `pop3s` (995).

mod command;
mod maildrop;
mod session;

use std::process::ExitCode;
use std::sync::Arc;

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
// RFC 1939 §3: an autologout timer of at least 10 minutes.
inetkit_runtime::shared_sections!(Config, idle_timeout = 600);

impl Default for Config {
    fn default() -> Self {
        let mut listen = ListenConfig::new();
        listen.insert("pop3".into(), vec!["[::]:110".into()]);
        listen.insert("pop3s".into(), vec!["[::]:995".into()]);
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
pub struct Pop3 {
    pub auth: Authenticator,
    pub store: Store,
    pub tls: Option<TlsContext>,
}

fn main() -> ExitCode {
    daemon::run("pop3d", setup)
}

fn setup(mut ctx: Context<Config>) -> anyhow::Result<Server> {
    let pop3 = Arc::new(Pop3 {
        auth: ctx.config.auth.authenticator(),
        store: Store::new(ctx.config.mail.root.clone()),
        tls: ctx.tls.clone(),
    });
    ctx.serve_plain_and_tls(
        PlainAndTls {
            protocol: "POP3",
            plain: "pop3",
            tls: "pop3s",
            busy: b"-ERR [SYS/TEMP] Too many connections; try again later.\r\n",
        },
        move |stream, peer, implicit_tls| session::serve(pop3.clone(), stream, peer, implicit_tls),
    )?;
    Ok(ctx.server)
}
