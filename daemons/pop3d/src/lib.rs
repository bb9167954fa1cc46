//! inetkit-pop3d: POP3 (RFC 1939) over the inetkit Maildir store, with STLS on the `pop3`
//! socket (110) and implicit TLS on `pop3s` (995).
//!
//! The binary (`main.rs`) only calls [`run`]; being a library lets the fuzz targets in `fuzz/`
//! reach the parsers (through `fuzzing`).

mod command;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod maildrop;
mod proxy;
mod session;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_maildir::{MailConfig, Store};
use inetkit_runtime::daemon::{self, Context, PlainAndTls, PlainAndTlsConfig};
use inetkit_runtime::proxy::{Proxy, ProxyConfig};
use inetkit_runtime::server::Server;
use inetkit_runtime::tls::TlsContext;

/// pop3d's own part of `/etc/inetkit/pop3d.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Pop3Config {
    auth: AuthConfig,
    mail: MailConfig,
    proxy: ProxyConfig,
}

const POP3: PlainAndTls = PlainAndTls {
    protocol: "POP3",
    plain: "pop3",
    plain_addrs: &["[::]:110"],
    tls: "pop3s",
    tls_addrs: &["[::]:995"],
    busy: b"-ERR [SYS/TEMP] Too busy; try again later.\r\n",
};

impl PlainAndTlsConfig for Pop3Config {
    const SOCKETS: PlainAndTls = POP3;
    // RFC 1939 §3: an autologout timer of at least 10 minutes.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

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
pub struct Pop3 {
    pub auth: Authenticator,
    pub store: Store,
    pub tls: Option<TlsContext>,
    /// Proxy mode (`[proxy] enabled`): users whose record names a backend are relayed there.
    pub proxy: Option<Proxy>,
}

/// The daemon: command line, config, listeners, then serving until stopped.
pub fn run() -> ExitCode {
    daemon::run("pop3d", setup)
}

fn setup(mut ctx: Context<Pop3Config>) -> anyhow::Result<Server> {
    let config = &ctx.config.daemon;
    let pop3 = Arc::new(Pop3 {
        auth: config.auth.authenticator(),
        store: Store::new(config.mail.root.clone()),
        tls: ctx.tls.clone(),
        proxy: Proxy::new(&config.proxy)?,
    });
    ctx.serve_plain_and_tls(POP3, move |stream, peer, implicit_tls| {
        session::serve(pop3.clone(), stream, peer, implicit_tls)
    })?;
    Ok(ctx.server)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn check(text: &str) -> Result<(), String> {
        inetkit_runtime::config::from_text::<Pop3Config>(text, Path::new("pop3d.toml"))
            .map(drop)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn pop3s_without_a_certificate_is_refused_at_its_name() {
        let err = check("[listen]\npop3 = [\"127.0.0.1:0\"]\npop3s = [\"127.0.0.1:0\"]\n");
        let err = err.expect_err("accepted");
        assert!(err.starts_with("pop3d.toml:3:1: listen.pop3s: "), "{err}");
        assert!(err.contains("needs TLS"), "{err}");
        // Plain POP3 alone needs none.
        assert_eq!(check("[listen]\npop3 = [\"127.0.0.1:0\"]\n"), Ok(()));
    }

    #[test]
    fn the_shared_sections_and_pop3ds_own_sit_side_by_side() {
        assert_eq!(
            check(
                "[auth]\nplaintext = \"never\"\n[mail]\nroot = \"/m\"\n[limits]\nidle_exit = 5\n"
            ),
            Ok(())
        );
        let err = check("[mail]\nroot = \"/m\"\nrot = \"/n\"\n").expect_err("accepted");
        assert!(
            err.starts_with("pop3d.toml:3:1: unknown field `rot`"),
            "{err}"
        );
    }
}
