//! The one line every session logs when it ends, the same fields in every daemon:
//!
//! ```text
//! session ended peer=192.0.2.7:50312 socket=imap user=alice reason=quit duration=4.21s
//!     in=1043 out=52311 tls=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384
//! ```
//!
//! The server loop makes a [`SessionLog`] for each connection (it is in the session's
//! [`Peer`](crate::server::Peer)), logs the start at DEBUG and writes the end line when the
//! session's task is over. What only the parts know they put in as it happens: the skeleton
//! the TLS version and cipher and the bytes moved, the line connection why it stopped reading
//! (client gone, idle, login deadline, shutdown, an I/O error), the daemon who logged in and a
//! client's QUIT or LOGOUT, and the proxy relay the backend and the bytes moved to and from it
//! (`proxy=mail-a:143 proxy_out=… proxy_in=…`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Why a session ended: the `reason=` of its end line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client said goodbye: QUIT (SMTP, POP3, FTP) or LOGOUT (IMAP).
    Quit,
    /// The client closed the connection (or reset it) without saying goodbye; for echo and
    /// DNS over TCP, the normal end.
    Disconnected,
    /// The client sent nothing for the idle timeout.
    IdleTimeout,
    /// The client had not logged in by the login deadline.
    LoginTimeout,
    /// The daemon is stopping.
    Shutdown,
    /// The daemon closed it for a protocol reason, which it names (too many errors, a STARTTLS
    /// without TLS configured).
    Closed(&'static str),
    /// Reading, writing or the TLS handshake failed; the cause, once.
    Error(String),
}

impl End {
    /// The `reason=` token.
    pub fn reason(&self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::Disconnected => "disconnected",
            End::IdleTimeout => "idle-timeout",
            End::LoginTimeout => "login-timeout",
            End::Shutdown => "shutdown",
            End::Closed(_) => "closed",
            End::Error(_) => "error",
        }
    }

    /// Why the daemon closed the session (`why=`).
    fn why(&self) -> Option<&str> {
        match self {
            End::Closed(why) => Some(why),
            _ => None,
        }
    }

    /// The cause of an error (`error=`).
    fn error(&self) -> Option<&str> {
        match self {
            End::Error(cause) => Some(cause),
            _ => None,
        }
    }

    /// A TLS handshake that failed (the client's first bytes were not TLS, no common
    /// version or suite, too slow).
    pub fn handshake(err: &std::io::Error) -> End {
        End::Error(format!("TLS handshake: {err}"))
    }

    /// An I/O error as an end: a reset or a broken pipe is the client leaving, anything else
    /// an error with its cause.
    pub fn from_io(err: &std::io::Error) -> End {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => End::Disconnected,
            _ => End::Error(err.to_string()),
        }
    }
}

/// The TLS a session ran under (implicit, or after STARTTLS/STLS/AUTH TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The IANA name of the cipher suite (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: &'static str,
}

impl TlsInfo {
    /// What a finished handshake negotiated.
    pub fn of(conn: &rustls::ServerConnection) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            // Only 1.2 and 1.3 are configured (crate::tls).
            _ => "unknown",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        TlsInfo { version, cipher }
    }
}

/// What a session's end line will say, filled in as the session goes. Clones (every clone of
/// the session's `Peer`) share it; a default one, outside a server (tests), records all the
/// same and is never logged.
#[derive(Debug, Clone, Default)]
pub struct SessionLog {
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    facts: Mutex<Facts>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Whether anything counted the bytes (sessions on the skeleton do; others say nothing
    /// rather than `in=0`).
    counted: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Facts {
    user: Option<String>,
    /// Proxy mode: the backend the session was relayed to, and the bytes sent to it and
    /// received from it.
    proxied: Option<(String, u64, u64)>,
    tls: Option<TlsInfo>,
    end: Option<End>,
}

impl SessionLog {
    fn facts(&self) -> std::sync::MutexGuard<'_, Facts> {
        // A poisoned lock only means a panic elsewhere; the facts are still whole.
        self.state.facts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user the session logged in as; also the `user` field of the session's span, so
    /// every later line of the session names them. Cheap when said again (rpcd logs in with
    /// every request); the last user given wins.
    pub fn user(&self, user: &str) {
        let mut facts = self.facts();
        if facts.user.as_deref() != Some(user) {
            tracing::Span::current().record("user", user);
            facts.user = Some(user.to_owned());
        }
    }

    /// The session is relayed to `backend` (proxy mode) from now on.
    pub fn proxied(&self, backend: &str) {
        self.facts().proxied = Some((backend.to_owned(), 0, 0));
    }

    /// The bytes the relay sent to the backend and received from it.
    pub fn backend_bytes(&self, sent: u64, received: u64) {
        if let Some((_, s, r)) = self.facts().proxied.as_mut() {
            *s += sent;
            *r += received;
        }
    }

    /// The session runs under TLS now.
    pub fn tls(&self, info: TlsInfo) {
        self.facts().tls = Some(info);
    }

    /// Why the session ends. The first reason given wins: the QUIT a daemon saw before the
    /// client closed, the idle timeout before the write that then failed.
    pub fn ended(&self, end: End) {
        let mut facts = self.facts();
        if facts.end.is_none() {
            facts.end = Some(end);
        }
    }

    /// The reason recorded so far, if any.
    pub fn end(&self) -> Option<End> {
        self.facts().end.clone()
    }

    /// The TLS recorded so far, if any.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.facts().tls
    }

    /// `stream`, counting what passes through it into this session's `in=` and `out=`.
    pub fn count<S>(&self, stream: S) -> Counted<S> {
        self.state.counted.store(true, Ordering::Relaxed);
        Counted {
            stream,
            log: self.clone(),
            read: 0,
            written: 0,
        }
    }

    /// Logs the session's start (DEBUG: Postfix's `connect from`; Dovecot logs nothing until
    /// the login, and neither should a port scan fill the log at INFO).
    pub(crate) fn log_start(peer: SocketAddr, local: SocketAddr, socket: &str) {
        tracing::debug!(%peer, %local, socket = %socket, "session started");
    }

    /// A guard that logs the end line when dropped: when the session's task is over, and also
    /// when it is cut (at the shutdown deadline, or by a panic).
    pub(crate) fn end_line(
        &self,
        peer: SocketAddr,
        socket: Arc<str>,
        shutdown: CancellationToken,
    ) -> EndLine {
        EndLine {
            log: self.clone(),
            peer,
            socket,
            shutdown,
            started: Instant::now(),
        }
    }

    /// Logs the end line (INFO).
    fn log_end(&self, peer: SocketAddr, socket: &str, duration: Duration) {
        let facts = self.facts();
        let end = facts.end.clone().unwrap_or(End::Closed("by the daemon"));
        let counted = self.state.counted.load(Ordering::Relaxed);
        let bytes = |n: &AtomicU64| counted.then(|| n.load(Ordering::Relaxed));
        tracing::info!(
            %peer,
            socket = %socket,
            user = facts.user.as_deref().map(tracing::field::display),
            reason = %end.reason(),
            why = end.why(),
            error = end.error(),
            duration = %Seconds(duration),
            r#in = bytes(&self.state.bytes_in),
            out = bytes(&self.state.bytes_out),
            tls = %facts.tls.map_or("no", |t| t.version),
            cipher = facts.tls.map(|t| tracing::field::display(t.cipher)),
            proxy = facts.proxied.as_ref().map(|p| tracing::field::display(&p.0)),
            proxy_out = facts.proxied.as_ref().map(|p| p.1),
            proxy_in = facts.proxied.as_ref().map(|p| p.2),
            "session ended"
        );
    }
}

/// Logs a session's end line when dropped ([`SessionLog::end_line`]).
pub(crate) struct EndLine {
    log: SessionLog,
    peer: SocketAddr,
    socket: Arc<str>,
    shutdown: CancellationToken,
    started: Instant,
}

impl Drop for EndLine {
    fn drop(&mut self) {
        // A session cut while the daemon stops had no chance to say why it ended.
        if self.shutdown.is_cancelled() {
            self.log.ended(End::Shutdown);
        }
        self.log
            .log_end(self.peer, &self.socket, self.started.elapsed());
    }
}

/// A duration as `4.21s`.
struct Seconds(Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}s", self.0.as_secs_f64())
    }
}

/// A stream that counts the bytes read and written through it, for the end line. Counts stay
/// in the stream (no shared write per read) and are added to the log when it is dropped.
#[derive(Debug)]
pub struct Counted<S> {
    stream: S,
    log: SessionLog,
    read: u64,
    written: u64,
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        let state = &self.log.state;
        state.bytes_in.fetch_add(self.read, Ordering::Relaxed);
        state.bytes_out.fetch_add(self.written, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.read += buf.filled().len().saturating_sub(before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_first_reason_wins() {
        let log = SessionLog::default();
        log.ended(End::Quit);
        log.ended(End::Disconnected);
        assert_eq!(log.end(), Some(End::Quit));
    }

    #[test]
    fn resets_are_the_client_leaving_and_other_errors_keep_their_cause() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(End::from_io(&reset), End::Disconnected);
        let other = std::io::Error::other("disk on fire");
        assert_eq!(End::from_io(&other), End::Error("disk on fire".into()));
        assert_eq!(End::from_io(&other).error(), Some("disk on fire"));
    }

    #[tokio::test]
    async fn counted_streams_add_their_bytes_when_dropped() {
        let log = SessionLog::default();
        let (server, mut client) = tokio::io::duplex(64);
        let mut counted = log.count(server);
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        counted.read_exact(&mut got).await.unwrap();
        counted.write_all(b"hi\r\n").await.unwrap();
        drop(counted);
        assert_eq!(log.state.bytes_in.load(Ordering::Relaxed), 5);
        assert_eq!(log.state.bytes_out.load(Ordering::Relaxed), 4);
    }
}
