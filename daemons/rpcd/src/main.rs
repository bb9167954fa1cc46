//! inetkit-rpcd: XML-RPC at `/RPC2` and JSON-RPC 2.0 at `/jsonrpc` over HTTP/1.1, on the
//! `rpc` socket (8000, plain HTTP) and `rpcs` (8443, HTTPS). The methods are built-in host
//! facts and the commands the sysadmin declares in `/etc/inetkit/rpcd.toml`.

mod exec;
mod http;
mod jsonrpc;
mod login;
mod methods;
mod tally;
mod value;
mod xmlrpc;

use std::process::ExitCode;
use std::sync::Arc;

use serde::Deserialize;

use inetkit_auth::{AuthConfig, Authenticator};
use inetkit_runtime::config::{LimitsConfig, ListenConfig, LogConfig, TlsConfig};
use inetkit_runtime::daemon::{self, Context, PlainAndTls};
use inetkit_runtime::server::Server;

use http::HttpConfig;
use methods::{BuiltinsConfig, MethodConfig, Registry};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    listen: ListenConfig,
    tls: TlsConfig,
    limits: LimitsConfig,
    log: LogConfig,
    auth: AuthConfig,
    http: HttpConfig,
    builtins: BuiltinsConfig,
    #[serde(rename = "method", deserialize_with = "methods::checked_methods")]
    methods: Vec<MethodConfig>,
}
// An idle keep-alive connection is closed after a minute, as web servers do.
inetkit_runtime::shared_sections!(Config, idle_timeout = 60);

impl Default for Config {
    fn default() -> Self {
        let mut listen = ListenConfig::new();
        listen.insert("rpc".into(), vec!["[::]:8000".into()]);
        listen.insert("rpcs".into(), vec!["[::]:8443".into()]);
        Config {
            listen,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            builtins: BuiltinsConfig::default(),
            methods: Vec::new(),
        }
    }
}

/// What every connection shares.
pub struct Rpcd {
    pub registry: Registry,
    pub auth: Authenticator,
    pub auth_config: AuthConfig,
    pub http: HttpConfig,
}

fn main() -> ExitCode {
    daemon::run("rpcd", setup)
}

fn setup(mut ctx: Context<Config>) -> anyhow::Result<Server> {
    let registry = Registry::new(&ctx.config.builtins, &ctx.config.methods)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ctx.config_path.display()))?;
    tracing::info!(methods = registry.len(), "methods loaded");
    let rpcd = Arc::new(Rpcd {
        registry,
        auth: ctx.config.auth.authenticator(),
        auth_config: ctx.config.auth.clone(),
        http: ctx.config.http.clone(),
    });
    // Listening sockets are close-on-exec (common::activation), so methods' commands never
    // inherit them.
    let tls = ctx.tls.clone();
    ctx.serve_plain_and_tls(
        PlainAndTls {
            protocol: "HTTP",
            plain: "rpc",
            tls: "rpcs",
            busy: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        },
        move |stream, peer, implicit_tls| {
            let rpcd = rpcd.clone();
            let tls = tls.clone().filter(|_| implicit_tls);
            async move {
                match tls {
                    None => http::serve(rpcd, stream, peer, false).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => http::serve(rpcd, stream, peer, true).await,
                        Err(err) => tracing::debug!("TLS handshake failed: {err}"),
                    },
                }
            }
        },
    )?;
    Ok(ctx.server)
}
