//! The client side: UDP datagrams (rate-limited per source) and TCP connections with pipelined
//! queries answered as they complete (RFC 7766 §6.2.1.1).

use std::cell::RefCell;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};

use inetkit_runtime::log::End;
use inetkit_runtime::ratelimit::RateLimiter;
use inetkit_runtime::server::{Peer, Server};

use crate::forwarder::{Forwarder, Settings, Step, Transport};

/// The UDP rate limit and who is exempt from it (`[rate_limit]`; fixed until a restart).
pub(crate) struct UdpLimit {
    pub limiter: Mutex<RateLimiter>,
    /// The networks `[acl]` allows are not limited (loopback never is).
    pub exempt_allowed: bool,
}

impl UdpLimit {
    /// Whether queries from `client` are answered without counting against the limit.
    /// Loopback always: a packet from outside the host cannot carry a loopback source (the
    /// kernel drops it as martian), so it cannot be a forgery aimed at a victim, and every
    /// program on the host shares that one address.
    fn exempt(&self, client: IpAddr, settings: &Settings) -> bool {
        client.to_canonical().is_loopback() || (self.exempt_allowed && settings.acl.allows(client))
    }
}

/// Queries one TCP connection may have in flight at once.
const TCP_PIPELINE: usize = 64;

/// Datagrams taken from the socket in one recvmmsg(2), and replies sent in one sendmmsg(2).
const BATCH: usize = 32;
/// Room for one query. A larger datagram is no DNS query we could answer: it is dropped.
const QUERY_MAX: usize = 4096;

/// Receives queries on one UDP socket until shutdown. Each wakeup drains the socket in batches;
/// the answers that need no upstream go out together, the rest are finished in their own tasks.
pub(crate) async fn serve_udp(
    socket: Arc<UdpSocket>,
    forwarder: Arc<Forwarder>,
    limit: Arc<UdpLimit>,
    server: Server,
) {
    let shutdown = server.shutdown_token();
    let limiting = limit
        .limiter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .enabled();
    let mut batch = Batch::new(&socket);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ready = socket.readable() => {
                if let Err(err) = ready {
                    tracing::warn!(error = %err, "udp socket");
                    return;
                }
            }
        }
        // Until the socket is empty (or shutdown: a flood must not keep the loop going).
        while !shutdown.is_cancelled() {
            let received = match socket.try_io(Interest::READABLE, || batch.receive(&socket)) {
                Ok(received) => received,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    tracing::debug!(error = %err, "udp receive");
                    break;
                }
            };
            server.touch();
            answer_batch(
                &mut batch, received, &socket, &forwarder, &limit, limiting, &server,
            );
            batch.send(&socket).await;
            // A busy socket never says WouldBlock: let the worker's other tasks run between
            // batches.
            tokio::task::coop::consume_budget().await;
        }
    }
}

/// Answers the datagrams of a batch: replies that need no upstream go into `batch.out`, the
/// others are finished in their own tasks.
fn answer_batch(
    batch: &mut Batch,
    received: usize,
    socket: &Arc<UdpSocket>,
    forwarder: &Arc<Forwarder>,
    limit: &UdpLimit,
    limiting: bool,
    server: &Server,
) {
    let settings = forwarder.settings();
    let now = Instant::now();
    let stats = &forwarder.stats;
    let (mut queries, mut hits) = (0, 0);
    batch.out.clear();
    batch.replies.clear();
    // The rate limit for the whole batch under one lock.
    let mut allowed = [true; BATCH];
    if limiting {
        // Locked only when a source is not exempt: a host's own traffic never waits for it.
        let mut limiter = None;
        for (allow, (_, from)) in allowed.iter_mut().zip(&batch.meta[..received]) {
            if let Some(from) = from.filter(|f| !limit.exempt(f.ip(), &settings)) {
                let limiter = limiter
                    .get_or_insert_with(|| limit.limiter.lock().unwrap_or_else(|e| e.into_inner()));
                *allow = limiter.allow(from.ip(), now);
            }
        }
    }
    for (i, allow) in allowed.into_iter().enumerate().take(received) {
        let (len, from) = batch.meta[i];
        let Some(from) = from else {
            // Truncated: larger than any query we answer.
            queries += 1;
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if !allow {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        queries += 1;
        let wire = &batch.bufs[i][..len];
        let out = &mut batch.out;
        let start = out.len();
        let client = from.ip();
        let answered = if forwarder.answer_cached(wire, client, Transport::Udp, &settings, now, out)
        {
            hits += 1;
            true
        } else {
            match forwarder.start_full(wire, client, Transport::Udp, &settings, out) {
                Step::Reply => true,
                Step::Drop => false,
                // Over the memory soft limit, what needs an upstream (a task, a socket, a
                // pending entry) is refused at once; cached and local answers still go out.
                Step::Forward(pending) if !server.admits_datagram() => {
                    forwarder.refuse_busy(&pending, &settings, out)
                }
                Step::Forward(pending) => {
                    let socket = socket.clone();
                    let forwarder = forwarder.clone();
                    tokio::spawn(async move {
                        let reply = forwarder.finish(pending).await;
                        send(&socket, &reply, from).await;
                    });
                    false
                }
            }
        };
        if answered {
            batch.replies.push((start..batch.out.len(), from));
        }
    }
    stats.queries.fetch_add(queries, Ordering::Relaxed);
    stats.cache_hits.fetch_add(hits, Ordering::Relaxed);
}

thread_local! {
    /// The kernel's message headers for recvmmsg, per worker thread (they hold raw pointers, so
    /// they cannot live in a task that may move between threads) and per address family:
    /// recvmmsg leaves each header's address length at the last sender's, which must not cut
    /// short an IPv6 address after an IPv4 one (nix does not reset it).
    static RECV_HEADERS: RefCell<[MultiHeaders<SockaddrStorage>; 2]> = RefCell::new([
        MultiHeaders::preallocate(BATCH, None),
        MultiHeaders::preallocate(BATCH, None),
    ]);
    /// For sendmmsg (which sets every address and its length).
    static SEND_HEADERS: RefCell<MultiHeaders<SockaddrStorage>> =
        RefCell::new(MultiHeaders::preallocate(BATCH, None));
}

/// Buffers for a batch of datagrams in and replies out, kept from one batch to the next.
struct Batch {
    bufs: Box<[[u8; QUERY_MAX]; BATCH]>,
    /// Per datagram received: its length and sender (None if it was truncated).
    meta: [(usize, Option<SocketAddr>); BATCH],
    /// The replies, one after another, and where each goes.
    out: Vec<u8>,
    replies: Vec<(Range<usize>, SocketAddr)>,
    /// Which of [`RECV_HEADERS`] the socket uses: 0 for IPv4, 1 for IPv6.
    family: usize,
}

impl Batch {
    fn new(socket: &UdpSocket) -> Self {
        let ipv6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        Batch {
            family: usize::from(ipv6),
            bufs: Box::new([[0; QUERY_MAX]; BATCH]),
            meta: [(0, None); BATCH],
            out: Vec::new(),
            replies: Vec::with_capacity(BATCH),
        }
    }

    /// One recvmmsg(2): how many datagrams arrived (WouldBlock if none).
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        RECV_HEADERS.with_borrow_mut(|headers| {
            let headers = &mut headers[self.family];
            let mut iovs = self.bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            let results = recvmmsg(
                socket.as_raw_fd(),
                headers,
                iovs.iter_mut(),
                MsgFlags::empty(),
                None,
            )?;
            let mut count = 0;
            for (meta, msg) in self.meta.iter_mut().zip(results) {
                let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                let from = msg.address.as_ref().and_then(socket_addr);
                *meta = (msg.bytes, if truncated { None } else { from });
                count += 1;
            }
            Ok(count)
        })
    }

    /// Sends the batch's replies, as many per sendmmsg(2) as the socket takes.
    async fn send(&mut self, socket: &UdpSocket) {
        let mut next = 0;
        while next < self.replies.len() {
            let pending = &self.replies[next..];
            let iovs: Vec<[IoSlice<'_>; 1]> = pending
                .iter()
                .map(|(range, _)| [IoSlice::new(&self.out[range.clone()])])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = pending
                .iter()
                .map(|(_, to)| Some(SockaddrStorage::from(*to)))
                .collect();
            let sent = socket
                .async_io(Interest::WRITABLE, || {
                    SEND_HEADERS.with_borrow_mut(|headers| {
                        let results = sendmmsg(
                            socket.as_raw_fd(),
                            headers,
                            iovs.iter(),
                            &addrs,
                            [] as [ControlMessage<'_>; 0],
                            MsgFlags::empty(),
                        )?;
                        Ok(results.count())
                    })
                })
                .await;
            match sent {
                Ok(sent) => next += sent.max(1),
                Err(err) => {
                    // This reply could not go (the peer's address is unusable): the next ones
                    // still do.
                    tracing::debug!(peer = %pending[0].1, error = %err, "udp send");
                    next += 1;
                }
            }
        }
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(err) = socket.send_to(reply, to).await {
        tracing::debug!(peer = %to, error = %err, "udp send");
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// One TCP connection: length-prefixed queries read as they come, each answered when ready.
pub(crate) async fn serve_tcp(forwarder: Arc<Forwarder>, stream: TcpStream, peer: Peer) {
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
            _ = peer.shutdown.cancelled() => {
                peer.log.ended(End::Shutdown);
                break;
            }
            ready = reader.readable() => {
                if let Err(err) = ready {
                    peer.log.ended(End::from_io(&err));
                    break;
                }
            }
            _ = tokio::time::sleep(peer.idle_timeout) => {
                if slots.available_permits() < TCP_PIPELINE {
                    continue;
                }
                peer.log.ended(End::IdleTimeout);
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
        let buf = match read {
            Ok(Ok(buf)) => buf,
            // A clean close between queries is the normal end of a DNS connection.
            Ok(Err(err)) => {
                peer.log.ended(End::from_io(&err));
                break;
            }
            Err(_) => {
                peer.log.ended(End::IdleTimeout);
                break;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut reply = Vec::new();
        match forwarder.start(&buf, peer.addr.ip(), Transport::Tcp, &mut reply) {
            Step::Reply => {
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
            Step::Drop => {}
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
