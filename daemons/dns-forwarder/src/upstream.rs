//! Asking upstreams: UDP from a fresh socket with a fresh ID per query (TCP when truncated),
//! DNS-over-TLS on a reused connection with queries pipelined on it (RFC 7858 §3.4); answers
//! accepted only when they match.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use inetkit_runtime::config::{KeyPath, Problem};

use crate::config::{Protocol, UpstreamConfig};

/// The largest UDP answer read.
const RECV_MAX: usize = 65535;

thread_local! {
    /// Where UDP answers are read, one per thread (pages are touched only as answers need).
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; RECV_MAX]);
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad answer: {0}")]
    Bad(String),
}

/// What is asked: the question as sent (case possibly randomised) and the flags to pass on.
pub(crate) struct Ask {
    pub query: Query,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
    pub edns_buffer: u16,
    /// Compare the question's name case-sensitively (0x20 in use).
    pub exact_case: bool,
}

pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    tls: Option<(TlsConnector, rustls_pki_types::ServerName<'static>)>,
    /// The reused DoT connection, shared by the queries in flight (RFC 7858 §3.4).
    conn: Mutex<Option<Arc<DotConn>>>,
    /// Smoothed round-trip time in microseconds, as BIND and Unbound keep it.
    srtt_us: AtomicU64,
    pub queries: AtomicU64,
    pub failures: AtomicU64,
}

impl Upstream {
    /// The upstream `config` describes; `at` is where it is in the config, for problems.
    pub(crate) fn new(config: &UpstreamConfig, at: KeyPath) -> Result<Self, Problem> {
        let addr = config
            .socket_addr()
            .map_err(|e| at.clone().key("address").problem(e))?;
        let tls = match config.protocol {
            Protocol::Udp => None,
            Protocol::Tls => {
                let name = config.tls_name.clone().ok_or_else(|| {
                    at.clone()
                        .key("protocol")
                        .problem("tls needs tls_name (the name checked on the certificate)")
                })?;
                let server_name = rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| at.clone().key("tls_name").problem(format!("{name:?}: {e}")))?;
                Some((connector(config, &at)?, server_name))
            }
        };
        Ok(Upstream {
            addr,
            protocol: config.protocol,
            tls,
            conn: Mutex::new(None),
            // A little randomness so equal upstreams share the load at first.
            srtt_us: AtomicU64::new(rand::random::<u64>() % 1000),
            queries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// A plain UDP upstream (from resolv.conf).
    pub(crate) fn udp(addr: SocketAddr) -> Self {
        Upstream {
            addr,
            protocol: Protocol::Udp,
            tls: None,
            conn: Mutex::new(None),
            srtt_us: AtomicU64::new(rand::random::<u64>() % 1000),
            queries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn srtt(&self) -> Duration {
        Duration::from_micros(self.srtt_us.load(Ordering::Relaxed))
    }

    fn record_rtt(&self, rtt: Duration) {
        let sample = rtt.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.srtt_us.load(Ordering::Relaxed);
        self.srtt_us
            .store((old * 7 + sample) / 8, Ordering::Relaxed);
    }

    /// A timeout or failure: the upstream looks as slow as the timeout, and more so each time.
    fn record_failure(&self, timeout: Duration) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let t = timeout.as_micros() as u64;
        let old = self.srtt_us.load(Ordering::Relaxed);
        self.srtt_us.store(
            old.max(t).saturating_mul(2).min(60_000_000),
            Ordering::Relaxed,
        );
    }

    /// Not chosen this time: let its estimate drift down so it is tried again one day.
    pub(crate) fn decay(&self) {
        let old = self.srtt_us.load(Ordering::Relaxed);
        self.srtt_us.store(old - old / 64, Ordering::Relaxed);
    }

    /// Asks this upstream, within `timeout`; records the RTT or the failure.
    pub(crate) async fn exchange(
        &self,
        ask: &Ask,
        timeout: Duration,
    ) -> Result<(Message, usize), UpstreamError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = match tokio::time::timeout(timeout, self.exchange_inner(ask)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        };
        match &result {
            Ok(_) => self.record_rtt(start.elapsed()),
            Err(_) => self.record_failure(timeout),
        }
        result
    }

    async fn exchange_inner(&self, ask: &Ask) -> Result<(Message, usize), UpstreamError> {
        match self.protocol {
            Protocol::Udp => {
                let answer = self.exchange_udp(ask).await?;
                if answer.0.truncated() {
                    // RFC 1035 §4.2.1 / RFC 7766 §5: retry the whole question over TCP. (Boxed,
                    // as the TLS path: the rare paths do not make every query's task larger.)
                    return Box::pin(async {
                        let mut stream = TcpStream::connect(self.addr).await?;
                        exchange_stream(&mut stream, ask).await
                    })
                    .await;
                }
                Ok(answer)
            }
            Protocol::Tls => Box::pin(self.exchange_tls(ask)).await,
        }
    }

    async fn exchange_udp(&self, ask: &Ask) -> Result<(Message, usize), UpstreamError> {
        // A new socket per query. connect() binds it to a random ephemeral source port (as a
        // bind to port 0 would, one system call fewer) and makes the kernel drop datagrams from
        // any other address or port.
        let family = if self.addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(
            family,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(std::io::Error::from)?;
        connect(fd.as_raw_fd(), &SockaddrStorage::from(self.addr)).map_err(std::io::Error::from)?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
        let (id, wire) = build_query(ask)?;
        socket.send(&wire).await?;
        // Answers are at most the buffer size we offered (a larger one is truncated by recv,
        // fails to parse and is ignored: the upstream broke the rules).
        let limit = (usize::from(ask.edns_buffer.max(512)) + 512).min(RECV_MAX);
        loop {
            // ERROR too: an ICMP port unreachable makes the connected socket's next receive
            // fail with ECONNREFUSED, and the next upstream is asked at once instead of after
            // the timeout (readable() alone does not wake for it).
            let ready = socket
                .ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR)
                .await?;
            if ready.is_error() {
                // The socket's pending error (taking it clears it); this socket is used for
                // nothing else, so an error without one still ends the exchange.
                let err = socket.take_error()?;
                let err = err.unwrap_or_else(|| std::io::ErrorKind::ConnectionRefused.into());
                return Err(UpstreamError::Io(err));
            }
            // Received and parsed in the thread's buffer: no buffer per query in flight.
            let received =
                RECV_BUF.with_borrow_mut(|buf| match socket.try_recv(&mut buf[..limit]) {
                    Ok(n) => Ok(Some(check_answer(&buf[..n], id, ask).map(|m| (m, n)))),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                    Err(err) => Err(err),
                })?;
            match received {
                Some(Ok(answer)) => return Ok(answer),
                // A forgery or a stray: keep waiting for the real answer until the timeout.
                Some(Err(why)) => tracing::debug!(upstream = %self.addr, why, "ignored a datagram"),
                None => {}
            }
        }
    }

    async fn exchange_tls(&self, ask: &Ask) -> Result<(Message, usize), UpstreamError> {
        // A kept connection the server has since closed fails at once; then one fresh try.
        for attempt in 0..2 {
            let (conn, reused) = self.dot_conn().await?;
            match conn.exchange(ask).await {
                Err(UpstreamError::Io(err)) if reused && attempt == 0 => {
                    tracing::debug!(upstream = %self.addr, error = %err, "kept DoT connection failed");
                }
                result => return result,
            }
        }
        Err(UpstreamError::Bad("unreachable".into()))
    }

    /// The open DoT connection, or a new one; true if it was open already.
    async fn dot_conn(&self) -> Result<(Arc<DotConn>, bool), UpstreamError> {
        let Some((connector, name)) = &self.tls else {
            return Err(UpstreamError::Bad("no TLS context".into()));
        };
        let mut conn = self.conn.lock().await;
        if let Some(open) = conn.as_ref().filter(|c| c.is_open()) {
            return Ok((open.clone(), true));
        }
        let tcp = TcpStream::connect(self.addr).await?;
        let _ = tcp.set_nodelay(true);
        let tls = connector.connect(name.clone(), tcp).await?;
        let open = DotConn::start(tls);
        *conn = Some(open.clone());
        Ok((open, false))
    }
}

/// Queries in flight on one DoT connection, by ID; `closed` once the connection is gone.
#[derive(Default)]
struct Waiting {
    closed: bool,
    by_id: HashMap<u16, oneshot::Sender<Vec<u8>>>,
}

/// One DNS-over-TLS connection: a writer task sends whole frames as queries hand them over (a
/// query given up halfway cannot leave half a frame behind), a reader task hands each answer
/// to the query with its ID, in whatever order they come.
struct DotConn {
    frames: mpsc::Sender<Vec<u8>>,
    waiting: std::sync::Mutex<Waiting>,
    /// Tell the reader and the writer to stop when the other one failed (each task holds the
    /// connection, so neither would see it dropped).
    stop_reader: Notify,
    stop_writer: Notify,
}

/// Queries one DoT connection may have waiting to be written.
const DOT_QUEUE: usize = 64;

impl DotConn {
    fn start(tls: TlsStream<TcpStream>) -> Arc<Self> {
        let (mut reader, mut writer) = tokio::io::split(tls);
        let (frames, mut queue) = mpsc::channel::<Vec<u8>>(DOT_QUEUE);
        let conn = Arc::new(DotConn {
            frames,
            waiting: std::sync::Mutex::new(Waiting::default()),
            stop_reader: Notify::new(),
            stop_writer: Notify::new(),
        });
        let this = conn.clone();
        tokio::spawn(async move {
            let write = async {
                while let Some(frame) = queue.recv().await {
                    writer.write_all(&frame).await?;
                    writer.flush().await?;
                }
                Ok::<(), std::io::Error>(())
            };
            tokio::select! {
                _ = write => {}
                _ = this.stop_writer.notified() => {}
            }
            this.close();
        });
        let this = conn.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = this.read_answers(&mut reader) => {}
                _ = this.stop_reader.notified() => {}
            }
            this.close();
        });
        conn
    }

    /// Hands each answer read to the query waiting for its ID, until the connection fails.
    async fn read_answers<R: AsyncRead + Unpin>(&self, reader: &mut R) -> std::io::Result<()> {
        loop {
            let len = reader.read_u16().await?;
            let mut answer = vec![0u8; usize::from(len)];
            reader.read_exact(&mut answer).await?;
            let Some(id) = answer.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                continue;
            };
            let waiter = self.lock().by_id.remove(&id);
            match waiter {
                Some(waiter) => {
                    let _ = waiter.send(answer);
                }
                None => tracing::debug!(id, "DoT answer nobody waits for"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self) -> bool {
        !self.lock().closed
    }

    /// The connection is gone: every query waiting on it fails (their senders are dropped).
    fn close(&self) {
        let mut waiting = self.lock();
        waiting.closed = true;
        waiting.by_id.clear();
        drop(waiting);
        // Permits are kept: a task not waiting yet stops when it next looks.
        self.stop_reader.notify_one();
        self.stop_writer.notify_one();
    }

    /// One query on this connection, alongside any others in flight.
    async fn exchange(&self, ask: &Ask) -> Result<(Message, usize), UpstreamError> {
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let mut query = None;
        // A fresh random ID, but not one in flight on this connection (its answer would be
        // taken for ours).
        for _ in 0..16 {
            let (id, wire) = build_query(ask)?;
            let mut waiting = self.lock();
            if waiting.closed {
                return Err(UpstreamError::Io(std::io::ErrorKind::NotConnected.into()));
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = waiting.by_id.entry(id) {
                slot.insert(
                    tx.take()
                        .ok_or_else(|| UpstreamError::Bad("no sender".into()))?,
                );
                query = Some((id, wire));
                break;
            }
        }
        let Some((id, wire)) = query else {
            return Err(UpstreamError::Bad("no free ID on the connection".into()));
        };
        // Given up (timeout) or done: the ID is free again either way.
        let _forget = Forget { conn: self, id };
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        framed.extend_from_slice(&wire);
        let closed = || UpstreamError::Io(std::io::ErrorKind::ConnectionReset.into());
        self.frames.send(framed).await.map_err(|_| closed())?;
        let answer = rx.await.map_err(|_| closed())?;
        let message =
            check_answer(&answer, id, ask).map_err(|why| UpstreamError::Bad(why.into()))?;
        Ok((message, answer.len()))
    }
}

/// Takes a query's ID off the connection when the query is over.
struct Forget<'a> {
    conn: &'a DotConn,
    id: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.conn.lock().by_id.remove(&self.id);
    }
}

fn connector(config: &UpstreamConfig, at: &KeyPath) -> Result<TlsConnector, Problem> {
    inetkit_runtime::tls::client_config(config.tls_ca.as_deref())
        .map(TlsConnector::from)
        .map_err(|e| at.clone().key("tls_ca").problem(e.to_string()))
}

/// The query message with a fresh random ID.
fn build_query(ask: &Ask) -> Result<(u16, Vec<u8>), UpstreamError> {
    let id: u16 = rand::random();
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_checking_disabled(ask.checking_disabled)
        .add_query(ask.query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(ask.edns_buffer.max(512));
    edns.set_dnssec_ok(ask.dnssec_ok);
    message.set_edns(edns);
    let wire = message
        .to_vec()
        .map_err(|e| UpstreamError::Bad(e.to_string()))?;
    Ok((id, wire))
}

/// Parses an upstream answer and checks it answers our query: a response, our ID, our question.
pub(crate) fn check_answer(wire: &[u8], id: u16, ask: &Ask) -> Result<Message, &'static str> {
    let message = Message::from_vec(wire).map_err(|_| "unparseable")?;
    if message.message_type() != MessageType::Response {
        return Err("not a response");
    }
    if message.id() != id {
        return Err("wrong ID");
    }
    let [q] = message.queries() else {
        return Err("wrong question count");
    };
    let same_name = if ask.exact_case {
        q.name().eq_case(ask.query.name())
    } else {
        q.name() == ask.query.name()
    };
    if !same_name
        || q.query_type() != ask.query.query_type()
        || q.query_class() != ask.query.query_class()
    {
        return Err("wrong question");
    }
    Ok(message)
}

/// One query on a stream (TCP or TLS): two-byte length, then the message.
async fn exchange_stream<S>(stream: &mut S, ask: &Ask) -> Result<(Message, usize), UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (id, wire) = build_query(ask)?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
    framed.extend_from_slice(&wire);
    stream.write_all(&framed).await?;
    stream.flush().await?;
    loop {
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        match check_answer(&buf, id, ask) {
            Ok(message) => return Ok((message, buf.len())),
            Err(why) => tracing::debug!(why, "ignored a stream answer"),
        }
    }
}
