//! inetkit-smtp-submit: authenticated mail submission (RFC 6409) with STARTTLS on the
//! `submission` socket (587) and implicit TLS on `submissions` (465). Accepted mail goes
//! through a durable spool into local users' INBOXes or to a smarthost.

mod command;
mod data;
mod from_header;
mod message;
mod queue;
mod relay;
mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_maildir::{MailConfig, Store};
use inetkit_runtime::config::{LimitsConfig, ListenConfig, LogConfig, TlsConfig};
use inetkit_runtime::daemon::{self, Context, PlainAndTls};
use inetkit_runtime::server::Server;
use inetkit_runtime::tls::TlsContext;

use crate::command::split_address;
use crate::queue::{Deliverer, Queue};
use crate::relay::{Relay, RelayConfig};
use inetkit_spool::Spool;

pub const DEFAULT_SPOOL: &str = "/var/lib/inetkit/spool";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    listen: ListenConfig,
    tls: TlsConfig,
    limits: LimitsConfig,
    log: LogConfig,
    auth: AuthConfig,
    mail: MailConfig,
    smtp: SmtpConfig,
    relay: RelayConfig,
}
// RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command.
inetkit_runtime::shared_sections!(Config, idle_timeout = 300);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SmtpConfig {
    /// The name in the greeting and `Received:` lines; empty: the host name.
    hostname: String,
    /// Domains whose users are local; empty: `localhost` and the host name.
    local_domains: Vec<String>,
    max_message_size: u64,
    max_recipients: usize,
    spool: PathBuf,
    /// Extra envelope senders per user, besides `<user>@<each local domain>`.
    senders: BTreeMap<String, Vec<String>>,
    /// Refuse a message whose `From:` header names an address its user may not send as.
    check_from_header: bool,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            hostname: String::new(),
            local_domains: Vec::new(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            spool: PathBuf::from(DEFAULT_SPOOL),
            senders: BTreeMap::new(),
            check_from_header: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut listen = ListenConfig::new();
        listen.insert("submission".into(), vec!["[::]:587".into()]);
        listen.insert("submissions".into(), vec!["[::]:465".into()]);
        Config {
            listen,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            mail: MailConfig::default(),
            smtp: SmtpConfig::default(),
            relay: RelayConfig::default(),
        }
    }
}

/// What every session shares.
pub struct Submit {
    pub auth: Authenticator,
    pub tls: Option<TlsContext>,
    pub hostname: String,
    /// Lower case.
    pub local_domains: Vec<String>,
    pub max_size: u64,
    pub max_recipients: usize,
    pub senders: BTreeMap<String, Vec<String>>,
    /// `From:` addresses must pass [`Submit::may_send_as`] too.
    pub check_from_header: bool,
    pub relay_enabled: bool,
    pub spool: Spool,
    pub queue: Queue,
}

impl Submit {
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.local_domains.contains(&domain)
    }

    /// May `user` use `address` as the envelope sender (or in `From:`)? Their own
    /// `user@local-domain` (with an optional `+detail`), or an address the config lists for
    /// them.
    pub fn may_send_as(&self, user: &str, address: &str) -> bool {
        if let Some(list) = self.senders.get(user) {
            if list.iter().any(|a| a.eq_ignore_ascii_case(address)) {
                return true;
            }
        }
        let Some((local, domain)) = split_address(address) else {
            return false;
        };
        let local = local.split_once('+').map_or(local, |(name, _)| name);
        local == user && self.is_local_domain(domain)
    }
}

/// The host's name, as the kernel knows it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn main() -> ExitCode {
    daemon::run("smtp-submit", setup)
}

fn setup(mut ctx: Context<Config>) -> anyhow::Result<Server> {
    let smtp = ctx.config.smtp.clone();
    let hostname = if smtp.hostname.is_empty() {
        host_name()
    } else {
        smtp.hostname.clone()
    };
    let mut local_domains: Vec<String> = if smtp.local_domains.is_empty() {
        vec!["localhost".to_owned(), hostname.clone()]
    } else {
        smtp.local_domains.clone()
    };
    for domain in &mut local_domains {
        *domain = domain.to_ascii_lowercase();
    }
    let spool = Spool::new(smtp.spool.clone());
    spool
        .prepare()
        .with_context(|| format!("spool {}", smtp.spool.display()))?;
    let relay = Relay::from_config(&ctx.config.relay, &hostname)?;
    let relay_enabled = relay.is_some();
    let deliverer = Arc::new(Deliverer::new(
        spool.clone(),
        Store::new(ctx.config.mail.root.clone()),
        relay,
        hostname.clone(),
        ctx.config.relay.retry_policy(),
    ));
    let queue = queue::start(deliverer, ctx.server.shutdown_token());
    let submit = Arc::new(Submit {
        auth: ctx.config.auth.authenticator(),
        tls: ctx.tls.clone(),
        hostname,
        local_domains,
        max_size: smtp.max_message_size,
        max_recipients: smtp.max_recipients.max(1),
        senders: smtp.senders,
        check_from_header: smtp.check_from_header,
        relay_enabled,
        spool,
        queue,
    });
    ctx.serve_plain_and_tls(
        PlainAndTls {
            protocol: "SMTP submission",
            plain: "submission",
            tls: "submissions",
            busy: b"421 4.7.0 Too many connections; try again later.\r\n",
        },
        move |stream, peer, implicit_tls| {
            session::serve(submit.clone(), stream, peer, implicit_tls)
        },
    )?;
    Ok(ctx.server)
}
