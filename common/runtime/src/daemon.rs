//! The start of every daemon: command line, config, logging, runtime, sockets, TLS, then the
//! daemon's own setup and the server loop.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::net::TcpStream;

use crate::activation::{self, Listener, Socket};
use crate::cli::{self, Parsed};
use crate::config::{self, ConfigError, DaemonConfig};
use crate::server::{Peer, Server};
use crate::tls::TlsContext;

/// What a daemon's setup gets to wire its protocol to.
pub struct Context<C> {
    pub config: C,
    pub config_path: PathBuf,
    pub listeners: Vec<Listener>,
    pub server: Server,
    /// The certificate, when one is configured or handed over by systemd.
    pub tls: Option<TlsContext>,
}

/// A TCP protocol served on two sockets: `plain` (which may offer STARTTLS) and `tls`
/// (implicit TLS from the first byte), as POP3, IMAP, submission and FTP are.
#[derive(Debug, Clone, Copy)]
pub struct PlainAndTls {
    /// What the protocol is called in error messages (POP3, IMAP, ...).
    pub protocol: &'static str,
    /// The socket names (`FileDescriptorName=` / `[listen]` key).
    pub plain: &'static str,
    pub tls: &'static str,
    /// Sent on the plain socket to a connection refused by the limits; a TLS client could not
    /// read it, so refused TLS connections are just closed.
    pub busy: &'static [u8],
}

impl<C> Context<C> {
    /// Serves every socket as `protocol.plain` or `protocol.tls`; `session` gets each
    /// connection and whether it is implicit TLS. An Accept=yes connection ("connection")
    /// counts as plain. Any other name, a UDP socket, or a TLS socket without a certificate
    /// is refused at start.
    pub fn serve_plain_and_tls<H, F>(
        &mut self,
        protocol: PlainAndTls,
        session: H,
    ) -> anyhow::Result<()>
    where
        H: Fn(TcpStream, Peer, bool) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        for listener in std::mem::take(&mut self.listeners) {
            let name = listener.name.as_str();
            let implicit_tls = if name == protocol.plain || name == "connection" {
                false
            } else if name == protocol.tls {
                self.require_tls(name)?;
                true
            } else {
                anyhow::bail!(
                    "socket {name:?}: {} is served on sockets named {} and {}",
                    protocol.protocol,
                    protocol.plain,
                    protocol.tls
                );
            };
            anyhow::ensure!(
                !matches!(listener.socket, Socket::Udp(_)),
                "socket {name:?}: {} is TCP only",
                protocol.protocol
            );
            let busy = (!implicit_tls).then_some(protocol.busy);
            let session = session.clone();
            self.server
                .serve_stream(listener, busy, move |stream, peer| {
                    session(stream, peer, implicit_tls)
                })?;
        }
        Ok(())
    }

    /// The TLS context, or an error naming the socket that needs it.
    pub fn require_tls(&self, socket: &str) -> anyhow::Result<TlsContext> {
        self.tls.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "socket {socket:?} needs TLS but no certificate is configured: set [tls] cert and \
                 key, or pass them with LoadCredential=tls-cert:… and tls-key:…"
            )
        })
    }
}

/// Runs a daemon named `name` (binary `inetkit-<name>`, config `/etc/inetkit/<name>.toml`).
///
/// `setup` registers the daemon's sessions on `ctx.server` and returns; the server loop then
/// runs until shutdown. Any error before that is printed and the process exits non-zero.
pub fn run<C, S>(name: &str, setup: S) -> ExitCode
where
    C: DaemonConfig,
    S: FnOnce(Context<C>) -> anyhow::Result<Server>,
{
    let program = format!("inetkit-{name}");
    let default_config = format!("/etc/inetkit/{name}.toml");
    let args = match cli::parse(&program, &default_config, std::env::args().skip(1)) {
        Parsed::Run(args) => args,
        Parsed::Exit(text) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Parsed::Usage(text) => {
            eprintln!("{text}");
            return ExitCode::from(2);
        }
    };
    let config: C = match config::load(&args.config) {
        Ok(config) => config,
        Err(ConfigError::Read { source, .. })
            if !args.config_given && source.kind() == std::io::ErrorKind::NotFound =>
        {
            C::default()
        }
        Err(err) => {
            eprintln!("{program}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let tls = match TlsContext::from_config(config.tls()) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("{program}: {}: [tls]: {err}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    crate::log::init(config.log());

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(program.clone())
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{program}: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (listeners, socket_activated) = match activation::from_systemd()? {
            Some(listeners) => (listeners, true),
            None => (activation::bind_all(config.listen())?, false),
        };
        if listeners.is_empty() {
            return Err(activation::ActivationError::NoSockets.into());
        }
        let mut limits = config.limits().clone();
        limits.idle_timeout.get_or_insert(C::IDLE_TIMEOUT);
        let server = Server::new(limits, socket_activated);
        if let Some(tls) = tls.clone() {
            server.on_reload(move || match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(err) => {
                    tracing::error!(error = %err, "TLS reload failed; keeping the old certificate")
                }
            });
        }
        let server = setup(Context {
            config,
            config_path: args.config.clone(),
            listeners,
            server,
            tls,
        })?;
        server.run().await
    });
    // Sessions cut at the deadline may still hold blocking work; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
