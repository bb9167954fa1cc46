//! inetkit-smtp-submit: authenticated mail submission (RFC 6409) with STARTTLS on the
//! `submission` socket (587) and implicit TLS on `submissions` (465). Accepted mail goes
//! through a durable spool into local users' INBOXes or to a smarthost.
//!
//! The binary (`main.rs`) only calls [`run`]; being a library lets the fuzz targets in `fuzz/`
//! reach the parsers (through `fuzzing`).

mod accepted;
mod command;
mod data;
mod from_header;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod message;
mod queue;
mod recipients;
mod relay;
mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use inetkit_auth::aliases::{self, AliasesSource, DEFAULT_ALIASES_FILE};
use inetkit_auth::{AuthConfig, AuthError, Authenticator};
use inetkit_maildir::{MailConfig, Store};
use inetkit_runtime::config::Problem;
use inetkit_runtime::daemon::{self, Context, PlainAndTls, PlainAndTlsConfig};
use inetkit_runtime::server::Server;
use inetkit_runtime::tls::TlsContext;

use crate::queue::{Deliverer, Queue};
use crate::recipients::Directory;
use crate::relay::{Relay, RelayConfig};
use inetkit_spool::Spool;

pub const DEFAULT_SPOOL: &str = "/var/lib/inetkit/spool";

/// smtp-submit's own part of `/etc/inetkit/smtp-submit.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SubmitConfig {
    auth: AuthConfig,
    mail: MailConfig,
    smtp: SmtpConfig,
    relay: RelayConfig,
}

const SUBMISSION: PlainAndTls = PlainAndTls {
    protocol: "SMTP submission",
    plain: "submission",
    plain_addrs: &["[::]:587"],
    tls: "submissions",
    tls_addrs: &["[::]:465"],
    // RFC 3463 X.3.2: system not accepting network messages (for now).
    busy: b"421 4.3.2 Too busy; try again later.\r\n",
};

impl PlainAndTlsConfig for SubmitConfig {
    const SOCKETS: PlainAndTls = SUBMISSION;
    // RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

    fn validate(&self) -> Vec<Problem> {
        // Bad alias lines are skipped, not fatal (mail to every other alias still flows), as
        // when the file changes later; here, at start and for --check-config, they are shown.
        if !self.smtp.aliases.as_os_str().is_empty() {
            for problem in aliases::check_file(&self.smtp.aliases) {
                eprintln!("inetkit-smtp-submit: warning: {problem}");
            }
        }
        Relay::from_config(&self.relay, "localhost")
            .err()
            .into_iter()
            .collect()
    }

    // --check-config: does the user directory answer?
    fn probe(&self) -> Vec<Result<String, String>> {
        self.auth.probe().into_iter().collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SmtpConfig {
    /// The name in the greeting and `Received:` lines; empty: the host name.
    hostname: String,
    /// Domains whose users are local; empty: `[auth] local_domains`, and when that is empty
    /// too, `localhost` and the host name.
    local_domains: Vec<String>,
    /// The aliases file; empty: none.
    aliases: PathBuf,
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
            aliases: PathBuf::from(DEFAULT_ALIASES_FILE),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            spool: PathBuf::from(DEFAULT_SPOOL),
            senders: BTreeMap::new(),
            check_from_header: true,
        }
    }
}

/// What every session shares.
pub struct Submit {
    pub auth: Authenticator,
    pub tls: Option<TlsContext>,
    pub hostname: String,
    pub aliases: AliasesSource,
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
    /// May `user` use `address` as the envelope sender (or in `From:`)? An address of a local
    /// domain that means them ([`Directory::owner`]: any case, an optional `+detail`), or one
    /// the config lists for them. Errs when the users file cannot be read.
    pub fn may_send_as(&self, user: &str, address: &str) -> Result<bool, AuthError> {
        if let Some(list) = self.senders.get(user) {
            if list.iter().any(|a| a.eq_ignore_ascii_case(address)) {
                return Ok(true);
            }
        }
        let users = self.auth.users()?;
        let directory = Directory {
            users: &users,
            aliases: &Default::default(),
            local_domains: self.auth.local_domains(),
        };
        Ok(directory.owner(address) == Some(user))
    }

    /// Where mail for `address` goes ([`Directory::resolve`]); the outer error is a file
    /// that cannot be read now (a temporary failure), the inner one the refusal.
    pub(crate) fn resolve(
        &self,
        address: &str,
    ) -> Result<Result<Vec<recipients::Target>, recipients::Refusal>, String> {
        let users = self
            .auth
            .users()
            .map_err(|err| format!("users file unavailable: {err}"))?;
        let aliases = self.aliases.current().map_err(|err| {
            let path = self.aliases.path().map(|p| p.display().to_string());
            format!(
                "aliases file {} unavailable: {err}",
                path.unwrap_or_default()
            )
        })?;
        let directory = Directory {
            users: &users,
            aliases: &aliases,
            local_domains: self.auth.local_domains(),
        };
        Ok(directory.resolve(address))
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

/// The daemon: command line, config, listeners, then serving until stopped.
pub fn run() -> ExitCode {
    daemon::run("smtp-submit", setup)
}

fn setup(mut ctx: Context<SubmitConfig>) -> anyhow::Result<Server> {
    let config = &ctx.config.daemon;
    let smtp = config.smtp.clone();
    let hostname = if smtp.hostname.is_empty() {
        host_name()
    } else {
        smtp.hostname.clone()
    };
    let local_domains = if !smtp.local_domains.is_empty() {
        smtp.local_domains.clone()
    } else if !config.auth.local_domains.is_empty() {
        config.auth.local_domains.clone()
    } else {
        vec!["localhost".to_owned(), hostname.clone()]
    };
    let spool = Spool::new(smtp.spool.clone());
    spool
        .prepare()
        .with_context(|| format!("spool {}", smtp.spool.display()))?;
    let relay = Relay::from_config(&config.relay, &hostname)?;
    let relay_enabled = relay.is_some();
    let deliverer = Arc::new(Deliverer::new(
        spool.clone(),
        Store::new(config.mail.root.clone()),
        relay,
        hostname.clone(),
        config.relay.retry_policy(),
    ));
    let queue = queue::start(deliverer, ctx.server.shutdown_token());
    let submit = Arc::new(Submit {
        auth: config
            .auth
            .authenticator()
            .with_local_domains(&local_domains),
        tls: ctx.tls.clone(),
        hostname,
        aliases: AliasesSource::new(
            (!smtp.aliases.as_os_str().is_empty()).then(|| smtp.aliases.clone()),
        ),
        max_size: smtp.max_message_size,
        max_recipients: smtp.max_recipients.max(1),
        // Keys compared with user names, which are lower case.
        senders: smtp
            .senders
            .into_iter()
            .map(|(user, list)| (user.to_ascii_lowercase(), list))
            .collect(),
        check_from_header: smtp.check_from_header,
        relay_enabled,
        spool,
        queue,
    });
    ctx.serve_plain_and_tls(SUBMISSION, move |stream, peer, implicit_tls| {
        session::serve(submit.clone(), stream, peer, implicit_tls)
    })?;
    Ok(ctx.server)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn check(text: &str) -> Result<SubmitConfig, String> {
        inetkit_runtime::config::from_text::<SubmitConfig>(text, Path::new("smtp.toml"))
            .map(|checked| checked.config.daemon)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn relay_problems_name_their_key() {
        let err = check("[relay]\nhost = \"smarthost.example\"\nusername = \"me\"\n");
        assert_eq!(
            err.err().as_deref(),
            Some("smtp.toml:3:1: relay.username: needs password or password_file")
        );
        let err = check("[relay]\nhost = \"h.example\"\nca_file = \"/nonexistent/ca.pem\"\n");
        let err = err.err().unwrap_or_default();
        assert!(
            err.starts_with("smtp.toml:3:1: relay.ca_file: cannot read "),
            "{err}"
        );
    }

    #[test]
    fn relay_durations_are_seconds() {
        let Ok(config) = check("[relay]\nretry_initial = 0.5\nretry_max = 0\nmax_lifetime = 60\n")
        else {
            panic!("refused")
        };
        let policy = config.relay.retry_policy();
        assert_eq!(policy.initial, Duration::from_secs(1));
        assert_eq!(policy.max, Duration::from_secs(1));
        assert_eq!(policy.lifetime, Duration::from_secs(60));
    }
}
