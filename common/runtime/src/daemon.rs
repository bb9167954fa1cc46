//! The start of every daemon: command line, config, logging, runtime, sockets, TLS, then the
//! daemon's own setup and the server loop.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::activation::{self, Activation, Listener};
use crate::cli::{self, Parsed};
use crate::config::{
    self, Checked, Config, ConfigError, DaemonConfig, Problem, SocketRole, Threads, Transport,
};
use crate::server::{Admission, Peer, Server};
use crate::tls::TlsContext;

/// What a daemon's setup gets to wire its protocol to.
pub struct Context<D> {
    /// The checked config.
    pub config: Config<D>,
    /// Where it was read from (for a reload).
    pub config_path: PathBuf,
    /// The sockets to serve, their names checked against [`DaemonConfig::socket`].
    pub listeners: Vec<Listener>,
    /// The server loop to register sessions on.
    pub server: Server,
    /// The certificate, when one is configured or handed over by systemd.
    pub tls: Option<TlsContext>,
}

/// A TCP protocol served on two sockets: `plain` (which may offer STARTTLS) and `tls`
/// (implicit TLS from the first byte), as POP3, IMAP, submission, FTP and rpcd's HTTP are.
/// Its sessions log in: until one calls [`Login::logged_in`](crate::server::Login::logged_in)
/// it counts against `[limits] max_unauthenticated_per_ip` and must log in within
/// `login_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct PlainAndTls {
    /// What the protocol is called in error messages (POP3, IMAP, ...).
    pub protocol: &'static str,
    /// The name of the plain socket (`FileDescriptorName=` / `[listen]` key).
    pub plain: &'static str,
    /// Where the plain socket listens when the config has no `[listen]`.
    pub plain_addrs: &'static [&'static str],
    /// The name of the implicit-TLS socket.
    pub tls: &'static str,
    /// Where the implicit-TLS socket listens when the config has no `[listen]`.
    pub tls_addrs: &'static [&'static str],
    /// Sent on the plain socket to a connection refused by the limits; a TLS client could not
    /// read it, so refused TLS connections are just closed.
    pub busy: &'static [u8],
}

impl PlainAndTls {
    /// [`DaemonConfig::socket`] for such a protocol: `plain` (and an Accept=yes
    /// "connection"), `tls`, TCP only.
    pub fn socket(&self, name: &str, transport: Transport) -> Result<SocketRole, String> {
        let role = if name == self.plain || name == "connection" {
            SocketRole::Plain
        } else if name == self.tls {
            SocketRole::Tls
        } else {
            return Err(format!(
                "{} is served on sockets named {} and {}",
                self.protocol, self.plain, self.tls
            ));
        };
        match transport {
            Transport::Tcp => Ok(role),
            Transport::Udp => Err(format!("{} is TCP only", self.protocol)),
        }
    }
}

/// The config of a daemon serving a [`PlainAndTls`] protocol: its sockets, default listen
/// addresses and socket checks all follow from [`SOCKETS`](PlainAndTlsConfig::SOCKETS).
/// Every such type is a [`DaemonConfig`].
pub trait PlainAndTlsConfig: DeserializeOwned + Default {
    /// The protocol's two sockets.
    const SOCKETS: PlainAndTls;
    /// As [`DaemonConfig::IDLE_TIMEOUT`].
    const IDLE_TIMEOUT: Duration;
    /// As [`DaemonConfig::THREADS`].
    const THREADS: Threads = Threads::PerCpu;

    /// As [`DaemonConfig::validate`].
    fn validate(&self) -> Vec<Problem> {
        Vec::new()
    }

    /// As [`DaemonConfig::probe`].
    fn probe(&self) -> Vec<Result<String, String>> {
        Vec::new()
    }
}

impl<D: PlainAndTlsConfig> DaemonConfig for D {
    const LISTEN: &'static [(&'static str, &'static [&'static str])] = &[
        (D::SOCKETS.plain, D::SOCKETS.plain_addrs),
        (D::SOCKETS.tls, D::SOCKETS.tls_addrs),
    ];
    const IDLE_TIMEOUT: Duration = <D as PlainAndTlsConfig>::IDLE_TIMEOUT;
    const THREADS: Threads = <D as PlainAndTlsConfig>::THREADS;

    fn socket(name: &str, transport: Transport) -> Result<SocketRole, String> {
        D::SOCKETS.socket(name, transport)
    }

    fn validate(&self) -> Vec<Problem> {
        PlainAndTlsConfig::validate(self)
    }

    fn probe(&self) -> Vec<Result<String, String>> {
        PlainAndTlsConfig::probe(self)
    }
}

impl<D> Context<D> {
    /// Serves every socket as `protocol.plain` or `protocol.tls` (the names were checked at
    /// start); `session` gets each connection and whether it is implicit TLS. An Accept=yes
    /// connection counts as plain.
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
            let implicit_tls = listener.name == protocol.tls;
            let busy = (!implicit_tls).then_some(protocol.busy);
            let session = session.clone();
            self.server.serve_stream_as(
                listener,
                busy,
                Admission::Login,
                move |stream, peer| session(stream, peer, implicit_tls),
            )?;
        }
        Ok(())
    }

    /// The TLS context, or an error naming the socket that needs it.
    pub fn require_tls(&self, socket: &str) -> anyhow::Result<TlsContext> {
        self.tls
            .clone()
            .ok_or_else(|| anyhow::anyhow!(needs_tls(socket)))
    }
}

fn needs_tls(socket: &str) -> String {
    format!(
        "socket {socket:?} needs TLS but no certificate is configured: set [tls] cert and key, \
         or pass them with LoadCredential=tls-cert:… and tls-key:…"
    )
}

/// Runs a daemon named `name` (binary `inetkit-<name>`, config `/etc/inetkit/<name>.toml`).
///
/// The config is read and checked (`--check-config` stops there), the sockets are taken from
/// systemd or bound, and checked against the daemon's socket names; then `setup` registers
/// the daemon's sessions on `ctx.server` and returns, and the server loop runs until
/// shutdown. Any error before that is printed and the process exits non-zero.
pub fn run<D, S>(name: &str, setup: S) -> ExitCode
where
    D: DaemonConfig,
    S: FnOnce(Context<D>) -> anyhow::Result<Server>,
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
    let checked = match config::load::<D>(&args.config) {
        // Started with no config at all: the built-in one, as checked as any.
        Err(ConfigError::Read { source, .. })
            if !args.config_given
                && !args.check_config
                && source.kind() == std::io::ErrorKind::NotFound =>
        {
            config::defaults::<D>(&args.config)
        }
        other => other,
    };
    let Checked { config, tls } = match checked {
        Ok(checked) => checked,
        Err(ConfigError::Invalid(mistakes)) => {
            for mistake in mistakes {
                eprintln!("{program}: {mistake}");
            }
            return ExitCode::FAILURE;
        }
        Err(err) => {
            let hint = if args.check_config && !args.config_given {
                " (without it the daemon starts with its built-in defaults)"
            } else {
                ""
            };
            eprintln!("{program}: {}{hint}", config::chain(&err));
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        let mut answered = true;
        for probe in config.daemon.probe() {
            match probe {
                Ok(line) => println!("{program}: {line}"),
                Err(line) => {
                    eprintln!("{program}: {line}");
                    answered = false;
                }
            }
        }
        if !answered {
            return ExitCode::FAILURE;
        }
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    crate::log::init(&config.log);

    // Before the runtime starts its threads: taking systemd's sockets edits the environment.
    let (listen, left_out) = config.listen_to_bind(tls.is_some());
    for name in left_out {
        tracing::warn!(socket = %name, "no certificate: the built-in [listen] socket is not bound");
    }
    let activation = match activation::listeners(&listen).map_err(anyhow::Error::from) {
        Ok(activation) => check_sockets::<D>(activation, tls.is_some()),
        Err(err) => Err(err),
    };
    let activation = match activation {
        Ok(activation) => activation,
        Err(err) => {
            tracing::error!("{err:#}");
            return ExitCode::FAILURE;
        }
    };

    let mut builder = match D::THREADS {
        Threads::PerCpu => tokio::runtime::Builder::new_multi_thread(),
        Threads::One => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().thread_name(program.clone()).build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = Server::new(config.limits.clone(), activation.socket_activated);
        if let Some(tls) = tls.clone() {
            server.on_reload(move || match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(err) => tracing::error!(
                    error = %config::chain(&err),
                    "TLS reload failed; keeping the old certificate"
                ),
            });
        }
        let server = setup(Context {
            config,
            config_path: args.config.clone(),
            listeners: activation.listeners,
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

/// Checks the sockets systemd passed as `[listen]` was checked: names the daemon serves, a
/// certificate for TLS ones. (Bound ones passed that check already.)
fn check_sockets<D: DaemonConfig>(
    activation: Activation,
    tls_available: bool,
) -> anyhow::Result<Activation> {
    for listener in &activation.listeners {
        let name = &listener.name;
        match D::socket(name, listener.socket.transport()) {
            Err(why) => anyhow::bail!("socket {name:?}: {why}"),
            Ok(SocketRole::Tls) if !tls_available => anyhow::bail!(needs_tls(name)),
            Ok(_) => {}
        }
    }
    Ok(activation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    struct Toy {
        refuse: bool,
    }

    impl PlainAndTlsConfig for Toy {
        const SOCKETS: PlainAndTls = PlainAndTls {
            protocol: "TOY",
            plain: "toy",
            plain_addrs: &["[::]:1", "0.0.0.0:1"],
            tls: "toys",
            tls_addrs: &["[::]:2"],
            busy: b"",
        };
        const IDLE_TIMEOUT: Duration = Duration::from_secs(7);

        fn validate(&self) -> Vec<Problem> {
            match self.refuse {
                true => vec![crate::config::KeyPath::new("toy").problem("refused")],
                false => Vec::new(),
            }
        }
    }

    #[test]
    fn a_plain_and_tls_config_is_a_daemon_config_from_its_sockets() {
        let listen: &[(&str, &[&str])] =
            &[("toy", &["[::]:1", "0.0.0.0:1"]), ("toys", &["[::]:2"])];
        assert_eq!(<Toy as DaemonConfig>::LISTEN, listen);
        assert_eq!(<Toy as DaemonConfig>::IDLE_TIMEOUT, Duration::from_secs(7));
        assert!(matches!(
            Toy::socket("toy", Transport::Tcp),
            Ok(SocketRole::Plain)
        ));
        assert!(matches!(
            Toy::socket("connection", Transport::Tcp),
            Ok(SocketRole::Plain)
        ));
        assert!(matches!(
            Toy::socket("toys", Transport::Tcp),
            Ok(SocketRole::Tls)
        ));
        assert_eq!(
            Toy::socket("toyx", Transport::Tcp).err().as_deref(),
            Some("TOY is served on sockets named toy and toys")
        );
        assert!(Toy::socket("toy", Transport::Udp).is_err());
        assert!(DaemonConfig::validate(&Toy::default()).is_empty());
        assert_eq!(DaemonConfig::validate(&Toy { refuse: true }).len(), 1);
    }
}
