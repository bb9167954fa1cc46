//! inetkit-pop3d: POP3 (RFC 1939) over the inetkit Maildir store, with STLS on the `pop3`
//! socket (110) and implicit TLS on `pop3s` (995).

mod command;
mod maildrop;
mod session;

use std::process::ExitCode;
use std::sync::Arc;

use serde::Deserialize;

use inetkit_common::activation::Socket;
use inetkit_common::auth::{AuthConfig, Authenticator};
use inetkit_common::config::{LimitsConfig, ListenConfig, LogConfig, TlsConfig};
use inetkit_common::daemon::{self, Context};
use inetkit_common::mail::{MailConfig, Store};
use inetkit_common::server::Server;
use inetkit_common::tls::TlsContext;

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
inetkit_common::shared_sections!(Config, idle_timeout = 600);

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
    pub auth_config: AuthConfig,
    pub store: Store,
    pub tls: Option<TlsContext>,
}

fn main() -> ExitCode {
    daemon::run("pop3d", setup)
}

fn setup(mut ctx: Context<Config>) -> anyhow::Result<Server> {
    let pop3 = Arc::new(Pop3 {
        auth: ctx.config.auth.authenticator(),
        auth_config: ctx.config.auth.clone(),
        store: Store::new(ctx.config.mail.root.clone()),
        tls: ctx.tls.clone(),
    });
    let server = ctx.server.clone();
    for listener in std::mem::take(&mut ctx.listeners) {
        let implicit_tls = match listener.name.as_str() {
            "pop3" | "connection" => false,
            "pop3s" => {
                ctx.require_tls(&listener.name)?;
                true
            }
            other => anyhow::bail!("socket {other:?}: pop3d serves sockets named pop3 and pop3s"),
        };
        anyhow::ensure!(
            !matches!(listener.socket, Socket::Udp(_)),
            "socket {:?}: POP3 is TCP only",
            listener.name
        );
        let pop3 = pop3.clone();
        // A refused connection on the plain port is told why; on pop3s it could not read it.
        let busy: Option<&'static [u8]> = (!implicit_tls)
            .then_some(b"-ERR [SYS/TEMP] Too many connections; try again later.\r\n");
        server.serve_stream(listener, busy, move |stream, peer| {
            session::serve(pop3.clone(), stream, peer, implicit_tls)
        })?;
    }
    Ok(server)
}
