//! inetkit-echo: RFC 862 echo and the inetd built-ins (discard, chargen, daytime, time) on the
//! sockets systemd passes or the config lists. A socket's name picks its service.

mod service;
mod udp;

use std::process::ExitCode;

use anyhow::Context as _;
use serde::Deserialize;

use inetkit_runtime::activation::Socket;
use inetkit_runtime::config::{LimitsConfig, ListenConfig, LogConfig, TlsConfig};
use inetkit_runtime::daemon::{self, Context};
use inetkit_runtime::server::Server;

use service::Service;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    listen: ListenConfig,
    tls: TlsConfig,
    limits: LimitsConfig,
    log: LogConfig,
    udp: UdpConfig,
}
inetkit_runtime::shared_sections!(Config);

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

impl Default for Config {
    fn default() -> Self {
        let mut listen = ListenConfig::new();
        listen.insert(
            "echo".into(),
            vec!["tcp://[::]:7".into(), "udp://[::]:7".into()],
        );
        Config {
            listen,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            udp: UdpConfig::default(),
        }
    }
}

fn main() -> ExitCode {
    daemon::run("echo", setup)
}

fn setup(mut ctx: Context<Config>) -> anyhow::Result<Server> {
    let server = ctx.server.clone();
    for listener in std::mem::take(&mut ctx.listeners) {
        let (service, tls) = Service::from_socket_name(&listener.name).with_context(|| {
            format!(
                "socket {:?}: not a service name (echo, discard, chargen, daytime, time, \
                 optionally with -tls)",
                listener.name
            )
        })?;
        match listener.socket {
            Socket::Udp(socket) => {
                anyhow::ensure!(
                    !tls,
                    "socket {:?}: TLS over UDP is not served",
                    listener.name
                );
                let local = socket.local_addr()?;
                let socket = tokio::net::UdpSocket::from_std(socket)?;
                tracing::info!(socket = %listener.name, address = %local, "listening (udp)");
                let limiter = inetkit_runtime::ratelimit::RateLimiter::new(
                    ctx.config.udp.rate,
                    ctx.config.udp.burst,
                    "udp",
                )
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
                            Ok(stream) => service::log_end(
                                service::serve_stream(service, stream, &peer).await,
                            ),
                            Err(err) => tracing::debug!(error = %err, "TLS handshake failed"),
                        }
                    }
                })?;
            }
            _ => server.serve_stream(listener, None, move |stream, peer| {
                service::serve_tcp(service, stream, peer)
            })?,
        }
    }
    Ok(server)
}
