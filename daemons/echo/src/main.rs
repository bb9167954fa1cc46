//! inetkit-echo: RFC 862 echo and the inetd built-ins (discard, chargen, daytime, time) on the
//! sockets systemd passes or the config lists. A socket's name picks its service.

mod lanes;
mod service;
mod tcp;
mod udp;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use inetkit_runtime::activation::Socket;
use inetkit_runtime::config::{DaemonConfig, SocketRole, Threads, Transport};
use inetkit_runtime::daemon::{self, Context};
use inetkit_runtime::log::{End, TlsInfo};
use inetkit_runtime::server::Server;

use lanes::Here;
use service::Service;

/// echo's own part of `/etc/inetkit/echo.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EchoConfig {
    tcp: TcpConfig,
    udp: UdpConfig,
}

/// `[tcp]`: where plain TCP sessions run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TcpConfig {
    /// Each echo session on a thread pinned to its client's CPU (lanes.rs); off: all on the
    /// main thread.
    lanes: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig { lanes: true }
    }
}

impl DaemonConfig for EchoConfig {
    const LISTEN: &'static [(&'static str, &'static [&'static str])] =
        &[("echo", &["tcp://[::]:7", "udp://[::]:7"])];
    const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    // Sessions only move bytes; see Threads::One. Plain TCP echo sessions run on lanes (lanes.rs),
    // threads pinned to their clients' CPUs; this thread accepts them.
    const THREADS: Threads = Threads::One;

    fn socket(name: &str, transport: Transport) -> Result<SocketRole, String> {
        match Service::from_socket_name(name) {
            None => Err(
                "not a service name (echo, discard, chargen, daytime, time, \
                         optionally with -tls)"
                    .into(),
            ),
            Some((_, true)) if transport == Transport::Udp => {
                Err("TLS over UDP is not served".into())
            }
            Some((_, true)) => Ok(SocketRole::Tls),
            Some((_, false)) => Ok(SocketRole::Plain),
        }
    }
}

/// `[udp]`: the per-source limit on datagrams answered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UdpConfig {
    /// Datagrams answered per second per source address; 0 for no limit.
    rate: u32,
    /// How many may come at once before the rate applies.
    burst: u32,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            rate: 50,
            burst: 100,
        }
    }
}

fn main() -> ExitCode {
    daemon::run("echo", setup)
}

fn setup(mut ctx: Context<EchoConfig>) -> anyhow::Result<Server> {
    let server = ctx.server.clone();
    let udp = &ctx.config.daemon.udp;
    let lanes = if ctx.config.daemon.tcp.lanes {
        lanes::Lanes::for_this_process()
    } else {
        None
    };
    for listener in std::mem::take(&mut ctx.listeners) {
        // The names were checked at start (EchoConfig::socket).
        let (service, tls) = Service::from_socket_name(&listener.name)
            .with_context(|| format!("socket {:?}: not a service name", listener.name))?;
        match listener.socket {
            Socket::Udp(socket) => {
                let local = socket.local_addr()?;
                let socket = tokio::net::UdpSocket::from_std(socket)?;
                tracing::info!(socket = %listener.name, address = %local, "listening (udp)");
                let limiter =
                    inetkit_runtime::ratelimit::RateLimiter::new(udp.rate, udp.burst, "udp")
                        // A /24 or /64 may have 4 sources' worth, the socket 20 (50/s each by
                        // default: 200/s per network, 1,000/s in all).
                        .with_networks_and_total(4, 20);
                server.spawn(udp::serve(service, socket, server.clone(), limiter));
            }
            _ if tls => {
                let tls = ctx.require_tls(&listener.name)?;
                server.serve_stream(listener, None, move |stream, peer| {
                    let tls = tls.clone();
                    async move {
                        match tls.accept(stream).await {
                            Ok(stream) => {
                                peer.log.tls(TlsInfo::of(stream.get_ref().1));
                                let result = service::serve_stream(service, stream, &peer).await;
                                service::log_end(result, &peer);
                            }
                            Err(err) => peer.log.ended(End::handshake(&err)),
                        }
                    }
                })?;
            }
            _ => {
                // Only echo's small round trips gain from a lane; and the one connection of an
                // Accept=yes activation has its process to itself.
                let lanes = match listener.socket {
                    Socket::Tcp(_) if service == Service::Echo => lanes.clone(),
                    _ => None,
                };
                server.serve_stream(listener, None, move |stream, peer| {
                    let lanes = lanes.clone();
                    async move {
                        match lanes {
                            Some(lanes) => {
                                let session = move |stream, here| {
                                    service::serve_tcp(service, stream, peer.clone(), here)
                                };
                                lanes.run(stream, session).await
                            }
                            None => {
                                service::serve_tcp(service, stream, peer, Here::STAYS).await;
                            }
                        }
                    }
                })?
            }
        }
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn refused(text: &str) -> String {
        match inetkit_runtime::config::from_text::<EchoConfig>(text, Path::new("echo.toml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_socket_that_names_no_service_is_refused_at_its_name() {
        let err = refused("[udp]\nrate = 1\n[listen]\nqotd = [\"127.0.0.1:0\"]\n");
        assert!(
            err.starts_with("echo.toml:4:1: listen.qotd: socket \"qotd\": "),
            "{err}"
        );
        assert!(err.contains("not a service name"), "{err}");
    }

    #[test]
    fn tls_over_udp_is_refused() {
        let err = refused("[listen]\necho-tls = [\"udp://127.0.0.1:0\"]\n");
        assert!(
            err.starts_with("echo.toml:2:1: ") && err.contains("UDP"),
            "{err}"
        );
    }
}
