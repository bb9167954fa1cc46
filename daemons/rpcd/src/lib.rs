//! inetkit-rpcd: XML-RPC at `/RPC2` and JSON-RPC 2.0 at `/jsonrpc` over HTTP/1.1, on the
//! `rpc` socket (8000, plain HTTP) and `rpcs` (8443, HTTPS). The methods are built-in host
//! facts and the commands the sysadmin declares in `/etc/inetkit/rpcd.toml`.
//!
//! The binary (`main.rs`) only calls [`run`]; being a library lets the fuzz targets in `fuzz/`
//! reach the parsers (through `fuzzing`).

mod access;
mod exec;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod jsonrpc;
mod login;
mod methods;
mod tally;
mod value;
mod xmlrpc;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_runtime::config::{Problem, Threads};
use inetkit_runtime::daemon::{self, Context, PlainAndTls, PlainAndTlsConfig};
use inetkit_runtime::log::{End, TlsInfo};
use inetkit_runtime::server::Server;

use http::HttpConfig;
use methods::{BuiltinsConfig, MethodConfig, Registry};

/// rpcd's own part of `/etc/inetkit/rpcd.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RpcdConfig {
    auth: AuthConfig,
    http: HttpConfig,
    builtins: BuiltinsConfig,
    #[serde(rename = "method")]
    methods: Vec<MethodConfig>,
}

const HTTP: PlainAndTls = PlainAndTls {
    protocol: "HTTP",
    plain: "rpc",
    plain_addrs: &["[::]:8000"],
    tls: "rpcs",
    tls_addrs: &["[::]:8443"],
    busy: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
};

impl PlainAndTlsConfig for RpcdConfig {
    const SOCKETS: PlainAndTls = HTTP;
    // An idle keep-alive connection is closed after a minute, as web servers do.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    // Requests are short and mostly the kernel's loopback TCP; bodies past INLINE_PARSE_MAX,
    // password checks and commands run off this thread. On one thread no worker wakes another
    // for each request: 7-9% less CPU per request under wrk (bench/README, bench/rpc).
    const THREADS: Threads = Threads::One;

    fn validate(&self) -> Vec<Problem> {
        Registry::new(&self.builtins, &self.methods)
            .err()
            .into_iter()
            .collect()
    }

    // --check-config: does the user directory answer?
    fn probe(&self) -> Vec<Result<String, String>> {
        self.auth.probe().into_iter().collect()
    }
}

/// What every connection shares.
pub struct Rpcd {
    pub registry: Registry,
    /// Checks logins and decides whether credentials may come without TLS.
    pub auth: Authenticator,
    /// How long a throttled address waits: the `Retry-After` of a 429.
    pub lockout: Duration,
    pub http: HttpConfig,
    /// Logins verified by any connection, remembered for the next ones (`None`: no
    /// randomness for its key at start, so every connection checks its first login).
    verified: Option<login::VerifiedLogins>,
    /// Whether the users file changed since a connection's login was checked.
    users_file: login::UsersFileWatch,
}

/// The daemon: command line, config, listeners, then serving until stopped.
pub fn run() -> ExitCode {
    daemon::run("rpcd", setup)
}

fn setup(mut ctx: Context<RpcdConfig>) -> anyhow::Result<Server> {
    let config = &ctx.config.daemon;
    let registry = Registry::new(&config.builtins, &config.methods)?;
    tracing::info!(methods = registry.len(), "methods loaded");
    let auth = config.auth.authenticator();
    let users_file = login::UsersFileWatch::new(auth.users_file());
    let rpcd = Arc::new(Rpcd {
        registry,
        auth,
        lockout: config.auth.lockout,
        http: config.http.clone(),
        verified: login::VerifiedLogins::new(),
        users_file,
    });
    // Listening sockets are close-on-exec (common::activation), so methods' commands never
    // inherit them.
    let tls = ctx.tls.clone();
    ctx.serve_plain_and_tls(HTTP, move |stream, peer, implicit_tls| {
        let rpcd = rpcd.clone();
        let tls = tls.clone().filter(|_| implicit_tls);
        // Counted under TLS, as the skeleton of the other daemons counts: bytes on the wire.
        let stream = peer.log.count(stream);
        async move {
            match tls {
                None => http::serve(rpcd, stream, peer, false).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        peer.log.tls(TlsInfo::of(stream.get_ref().1));
                        http::serve(rpcd, stream, peer, true).await
                    }
                    Err(err) => peer.log.ended(End::handshake(&err)),
                },
            }
        }
    })?;
    Ok(ctx.server)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn refused(text: &str) -> String {
        match inetkit_runtime::config::from_text::<RpcdConfig>(text, Path::new("rpcd.toml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => err.to_string(),
        }
    }

    const GOOD: &str = "[[method]]\nname = \"a\"\nargv = [\"/bin/true\"]\n\n";

    /// Method errors point at the method's key, not at 1:1.
    #[test]
    fn method_problems_name_the_key_of_the_method() {
        assert_eq!(
            refused(&format!(
                "{GOOD}[[method]]\nname = \"b\"\nargv = [\"true\"]\n"
            )),
            "rpcd.toml:7:1: method[1].argv: method \"b\": argv must start with an absolute \
             program path"
        );
        let err = refused(&format!(
            "{GOOD}[[method]]\nname = \"a\"\nargv = [\"/bin/true\"]\n"
        ));
        assert!(err.starts_with("rpcd.toml:6:1: method[1].name: "), "{err}");
        let err = refused(&format!(
            "{GOOD}[[method]]\nname = \"b\"\nargv = [\"/bin/true\"]\n\
             params = [{{ name = \"x\", type = \"string\" }}, {{ name = \"y\", type = \"array\" }}]\n"
        ));
        assert!(
            err.starts_with("rpcd.toml:8:44: method[1].params[1]: "),
            "{err}"
        );
        let err = refused(&format!("{GOOD}[builtins]\npublic = [\"host.nope\"]\n"));
        assert!(
            err.starts_with("rpcd.toml:6:11: builtins.public[0]: "),
            "{err}"
        );
    }

    #[test]
    fn method_timeouts_are_seconds() {
        let err = refused("[[method]]\nname = \"a\"\nargv = [\"/bin/true\"]\ntimeout = -1\n");
        assert!(
            err.starts_with("rpcd.toml:4:11: expected a number of seconds"),
            "{err}"
        );
        let err = refused("[[method]]\nname = \"a\"\nargv = [\"/bin/true\"]\ntimeout = 0\n");
        assert!(
            err.starts_with("rpcd.toml:4:1: method[0].timeout: "),
            "{err}"
        );
    }
}
