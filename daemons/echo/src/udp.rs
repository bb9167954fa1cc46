//! The UDP side: one datagram in, at most one out, and never a reflector.
//!
//! Two guards keep a forged source address from turning us into an amplifier or into one end of
//! a ping-pong loop with another UDP service: datagrams from privileged source ports (where
//! echo, chargen, daytime, time, DNS and NTP live) are dropped, and each source address has a
//! token bucket.

use std::time::{Instant, SystemTime};

use tokio::net::UdpSocket;

use inetkit_runtime::ratelimit::RateLimiter;
use inetkit_runtime::server::Server;

use crate::service::Service;

/// Source ports below this are never answered (RFC 862's own advice against loops between
/// echo and chargen, extended to every well-known service).
const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

pub(crate) async fn serve(
    service: Service,
    socket: UdpSocket,
    server: Server,
    mut limiter: RateLimiter,
) {
    let shutdown = server.shutdown_token();
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(err) => {
                    // ICMP errors from earlier replies surface here; they are not fatal.
                    tracing::debug!(error = %err, "udp receive");
                    continue;
                }
            },
        };
        server.touch();
        if from.port() < FIRST_UNPRIVILEGED_PORT {
            tracing::debug!(peer = %from, "dropped datagram from a privileged port");
            continue;
        }
        if !limiter.allow(from.ip(), Instant::now()) {
            continue;
        }
        // Over the memory soft limit: dropped, as a rate-limited datagram is (an answer would
        // cost as much as the service itself).
        if !server.admits_datagram() {
            continue;
        }
        if let Some(reply) = service.datagram_reply(&buf[..len], SystemTime::now()) {
            if let Err(err) = socket.send_to(&reply, from).await {
                tracing::debug!(peer = %from, error = %err, "udp send");
            }
        }
    }
}
