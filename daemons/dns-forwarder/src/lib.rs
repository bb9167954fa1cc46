//! inetkit-dns-forwarder: a caching DNS forwarder on the `dns` sockets (UDP and TCP 53), asking
//! upstreams over UDP/TCP or DNS-over-TLS, with local records, a blocklist and an ACL.
//!
//! The binary (`main.rs`) only calls [`run`]; being a library lets the fuzz targets in `fuzz/`
//! reach the parsers (through `fuzzing`).

mod cache;
mod config;
mod fast;
mod forwarder;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod local;
mod serve;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};

use inetkit_runtime::activation::Socket;
use inetkit_runtime::daemon::{self, Context};
use inetkit_runtime::server::Server;

use config::DnsConfig;
use forwarder::{Forwarder, Settings};

/// The daemon: command line, config, listeners, then serving until stopped.
pub fn run() -> ExitCode {
    daemon::run("dns-forwarder", setup)
}

fn setup(mut ctx: Context<DnsConfig>) -> anyhow::Result<Server> {
    let server = ctx.server.clone();
    let config = &ctx.config.daemon;
    let listeners = std::mem::take(&mut ctx.listeners);
    let own: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.socket.local_addr().ok())
        .collect();
    // Before the upstreams are read from it, so that a change from then on is seen.
    let resolv = config
        .upstream
        .is_empty()
        .then(|| config.forward.resolv_conf.clone());
    let resolv_seen = resolv.as_deref().and_then(mtime);
    // Made now, not in the task: until it exists a SIGUSR1 would kill the process.
    let usr1 = signal(SignalKind::user_defined1())?;
    let settings = Settings::from_config(config, &own)?;
    let forwarder = Arc::new(Forwarder::new(settings, config.cache.clone()));
    let limit = Arc::new(serve::UdpLimit {
        limiter: Mutex::new(inetkit_runtime::ratelimit::RateLimiter::new(
            config.rate_limit.rate,
            config.rate_limit.burst,
            "query",
        )),
        exempt_allowed: config.rate_limit.exempt_allowed,
    });
    if config.rate_limit.rate > 0
        && config.rate_limit.exempt_allowed
        && forwarder.settings().acl.allows_everyone()
    {
        tracing::warn!(
            "[acl] allows everyone and [rate_limit] exempt_allowed is on: no client is rate-limited"
        );
    }
    // The socket names were checked at start (DnsConfig::socket).
    for listener in listeners {
        match listener.socket {
            Socket::Udp(socket) => {
                let local = socket.local_addr()?;
                socket.set_nonblocking(true)?;
                let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
                tracing::info!(socket = %listener.name, address = %local, "listening (udp)");
                // Two receive loops per socket, each draining it in batches: one alone did as
                // well in the benchmark, two keep answering while a worker runs other tasks.
                for _ in 0..2 {
                    server.spawn(serve::serve_udp(
                        socket.clone(),
                        forwarder.clone(),
                        limit.clone(),
                        server.clone(),
                    ));
                }
            }
            _ => {
                let forwarder = forwarder.clone();
                server.serve_stream(listener, None, move |stream, peer| {
                    serve::serve_tcp(forwarder.clone(), stream, peer)
                })?;
            }
        }
    }
    for u in forwarder.settings().upstreams.iter() {
        tracing::info!(upstream = %u.addr, protocol = ?u.protocol, "upstream");
    }

    // SIGHUP: a new config, the cache kept.
    {
        let forwarder = forwarder.clone();
        let path = ctx.config_path.clone();
        let own = own.clone();
        server.on_reload(move || match reload(&path, &own) {
            Ok(settings) => {
                forwarder.replace_settings(settings);
                tracing::info!("configuration reloaded; cache kept");
            }
            Err(err) => tracing::error!("reload failed, keeping the old configuration: {err:#}"),
        });
    }
    let stats = forwarder.clone();
    server.set_status_detail(move || stats.status());
    server.spawn(housekeeping(
        forwarder,
        server.clone(),
        usr1,
        resolv.map(|path| (path, resolv_seen)),
        own,
    ));
    Ok(server)
}

/// The config read and checked again, as at start; its mistakes are logged with their
/// positions.
fn reload(path: &Path, own: &[SocketAddr]) -> anyhow::Result<Settings> {
    let checked = inetkit_runtime::config::load::<DnsConfig>(path)?;
    Settings::from_config(&checked.config.daemon, own)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Once a second: cache sweeping, and resolv.conf changes when `resolv` (the file and its
/// mtime when it was read) is where upstreams come from; SIGUSR1 logs the statistics (the
/// server loop puts them in STATUS=).
async fn housekeeping(
    forwarder: Arc<Forwarder>,
    server: Server,
    mut usr1: Signal,
    resolv: Option<(PathBuf, Option<SystemTime>)>,
    own: Vec<SocketAddr>,
) {
    let shutdown = server.shutdown_token();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (resolv, mut resolv_seen) = match resolv {
        Some((path, seen)) => (Some(path), seen),
        None => (None, None),
    };
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = usr1.recv() => tracing::info!(stats = %forwarder.status(), "statistics"),
            _ = tick.tick() => {
                ticks += 1;
                if ticks % 60 == 0 {
                    forwarder.cache.sweep(Instant::now());
                }
                // Follow resolv.conf, as dnsmasq does, when it is where upstreams come from.
                if let Some(path) = &resolv {
                    let now = mtime(path);
                    if now != resolv_seen {
                        resolv_seen = now;
                        let upstreams = forwarder::resolv_conf_upstreams(path, &own);
                        tracing::info!(upstreams = upstreams.len(), "resolv.conf changed");
                        forwarder.replace_upstreams(upstreams);
                    }
                }
            }
        }
    }
}
