//! The client side: UDP datagrams (rate-limited per source) and TCP connections with pipelined
//! queries answered as they complete (RFC 7766 §6.2.1.1).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};

use inetkit_common::server::{Peer, Server};

use crate::forwarder::{Forwarder, Step, Transport};

/// Queries one TCP connection may have in flight at once.
const TCP_PIPELINE: usize = 64;

/// Receives queries on one UDP socket until shutdown. Answers that need no upstream go out at
/// once from this loop; the rest are finished in their own tasks.
pub async fn serve_udp(
    socket: Arc<UdpSocket>,
    forwarder: Arc<Forwarder>,
    limiter: Arc<Mutex<RateLimiter>>,
    server: Server,
) {
    let shutdown = server.shutdown_token();
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(err) => {
                    tracing::debug!(error = %err, "udp receive");
                    continue;
                }
            },
        };
        server.touch();
        let allowed = limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(from.ip(), Instant::now());
        if !allowed {
            forwarder.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match forwarder.start(&buf[..len], from.ip(), Transport::Udp) {
            Step::Done(Some(reply)) => send(&socket, &reply, from).await,
            Step::Done(None) => {}
            Step::Forward(pending) => {
                let socket = socket.clone();
                let forwarder = forwarder.clone();
                tokio::spawn(async move {
                    let reply = forwarder.finish(pending).await;
                    send(&socket, &reply, from).await;
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(err) = socket.send_to(reply, to).await {
        tracing::debug!(peer = %to, error = %err, "udp send");
    }
}

/// One TCP connection: length-prefixed queries read as they come, each answered when ready.
pub async fn serve_tcp(forwarder: Arc<Forwarder>, stream: TcpStream, peer: Peer) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_PIPELINE);
    let write_timeout = peer.write_timeout;
    let writer_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
            framed.extend_from_slice(&reply);
            match tokio::time::timeout(write_timeout, writer.write_all(&framed)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        let _ = writer.shutdown().await;
    });
    let slots = Arc::new(Semaphore::new(TCP_PIPELINE));
    loop {
        // Wait for the next query without reading (readable() can be abandoned safely, a
        // half-read length could not). The idle timeout closes the connection only while no
        // query is outstanding (RFC 7766 §6.2.3).
        tokio::select! {
            _ = peer.shutdown.cancelled() => break,
            ready = reader.readable() => {
                if ready.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(peer.idle_timeout) => {
                if slots.available_permits() < TCP_PIPELINE {
                    continue;
                }
                break;
            }
        }
        let read = tokio::time::timeout(peer.idle_timeout, async {
            let len = reader.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            reader.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        })
        .await;
        let Ok(Ok(buf)) = read else { break };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        match forwarder.start(&buf, peer.addr.ip(), Transport::Tcp) {
            Step::Done(Some(reply)) => {
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
            Step::Done(None) => {}
            Step::Forward(pending) => {
                let tx = tx.clone();
                let forwarder = forwarder.clone();
                tokio::spawn(async move {
                    let reply = forwarder.finish(pending).await;
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
        }
    }
    // Outstanding answers still go out; then the writer closes the connection.
    drop(tx);
    let _ = writer_task.await;
}

/// A token bucket per client address, in a table of bounded size.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    max_sources: usize,
    dropped: u64,
}

impl RateLimiter {
    /// `per_second` 0 switches limiting off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            max_sources: 65536,
            dropped: 0,
        }
    }

    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let (rate, burst) = (self.per_second, self.burst);
        if self.buckets.len() >= self.max_sources && !self.buckets.contains_key(&source) {
            // Buckets that have refilled carry no state worth keeping.
            self.buckets.retain(|_, (tokens, updated)| {
                *tokens + now.saturating_duration_since(*updated).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_sources {
                return self.drop_one(source);
            }
        }
        let (tokens, updated) = self.buckets.entry(source).or_insert((burst, now));
        let elapsed = now.saturating_duration_since(*updated).as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(burst);
        *updated = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.drop_one(source)
        }
    }

    fn drop_one(&mut self, source: IpAddr) -> bool {
        self.dropped += 1;
        if self.dropped.is_power_of_two() {
            tracing::warn!(%source, dropped = self.dropped, "query rate limit");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut limiter = RateLimiter::new(10, 5);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| limiter.allow(ip, t0)).count(), 5);
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!((0..20).filter(|_| limiter.allow(ip, t1)).count(), 2);
        assert!(limiter.allow("192.0.2.2".parse().unwrap(), t1));
    }

    #[test]
    fn table_stays_bounded() {
        let mut limiter = RateLimiter::new(1, 1);
        limiter.max_sources = 100;
        let now = Instant::now();
        for i in 0..1000u32 {
            limiter.allow(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.buckets.len() <= 100);
    }
}
