//! The connection of a line-based protocol (POP3, SMTP, FTP, IMAP): input read one bounded
//! line at a time, replies queued and written when the client has nothing more pipelined, and
//! the session's idle timeout and the daemon's shutdown turned into a last protocol line.
//!
//! Reading and writing are cancel-safe: a [`LineConn::read_line`] or [`LineConn::next_line`]
//! raced against something else in a `select!` (a transfer, a timer, a mailbox change) keeps
//! the part of a line it had read, and a cancelled [`LineConn::flush`] keeps what it had not
//! yet written. The command loop that drives a connection is in [`crate::session`].

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::lines::{Line, LineReader};
use crate::log::End;
use crate::server::Peer;
use crate::session::Flow;

/// Lines read ahead with [`LineConn::defer`] that may wait for the command loop at once.
pub const MAX_DEFERRED: usize = 64;

/// Queued replies past this many bytes go out before the next command is taken, even while
/// more pipelined input waits: otherwise one read's worth of small commands with large replies
/// (FTP `STAT dir`, POP3 `LIST`) grows the output without bound.
pub const FLUSH_AT: usize = 64 * 1024;

/// The protocol's last words when a session ends on our side.
#[derive(Debug, Clone, Copy)]
pub struct Farewell {
    /// Sent when the client was idle past the session's idle timeout.
    pub idle: &'static str,
    /// Sent when the daemon is shutting down.
    pub shutdown: &'static str,
    /// Sent when the client has not logged in by `[limits] login_timeout`.
    pub login: &'static str,
}

/// One client connection of a line-based protocol: bounded line input, queued output.
pub struct LineConn<S> {
    /// Buffered input. Protocols with literals (IMAP) read from it directly, between lines;
    /// STARTTLS takes the stream out with [`LineConn::into_inner`], dropping what was buffered.
    pub reader: BufReader<S>,
    /// Output queued for the next [`flush`](LineConn::flush).
    pub out: Vec<u8>,
    /// Who the client is, and the session's timeouts and shutdown signal.
    pub peer: Peer,
    /// Whether the stream is TLS (implicit, or after STARTTLS).
    tls: bool,
    /// How much of `out` a flush cut short by cancellation had already written.
    written: usize,
    /// The line under way, kept when a read is cancelled.
    lines: LineReader,
    /// Lines read ahead (during a transfer) that the command loop gets before reading more.
    deferred: VecDeque<(Line, Vec<u8>)>,
    max_line: usize,
    farewell: Farewell,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineConn<S> {
    /// A connection over `stream` whose command lines hold at most `max_line` bytes.
    pub fn new(stream: S, peer: Peer, max_line: usize, farewell: Farewell) -> Self {
        LineConn {
            reader: BufReader::new(stream),
            out: Vec::with_capacity(1024),
            peer,
            tls: false,
            written: 0,
            lines: LineReader::new(),
            deferred: VecDeque::new(),
            max_line,
            farewell,
        }
    }

    /// The same connection, marked as running over TLS (`tls`) or not.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Whether the stream is TLS: what a session asks before offering STARTTLS or a login.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Queues one reply line; CRLF is added.
    pub fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes what is queued, bounded by the session's write timeout. Cancel-safe: a flush
    /// dropped midway leaves the unwritten rest queued, and nothing is written twice.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.peer.write_timeout;
        match tokio::time::timeout(timeout, self.write_queued()).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    async fn write_queued(&mut self) -> std::io::Result<()> {
        let stream = self.reader.get_mut();
        while let Some(rest) = self.out.get(self.written..).filter(|rest| !rest.is_empty()) {
            match stream.write(rest).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => self.written += n,
            }
        }
        stream.flush().await
    }

    /// The next command line into `buf`; `None` when the client is gone, was idle too long,
    /// has not logged in by the login deadline, or the daemon is stopping (all but the first
    /// are told so first). Lines put aside with [`defer`](LineConn::defer) come first.
    ///
    /// Queued replies are written first unless more input is already buffered (and they are
    /// under [`FLUSH_AT`]), so the replies to pipelined commands go out together and in order.
    /// Cancel-safe.
    pub async fn next_line(&mut self, buf: &mut Vec<u8>) -> Option<Line> {
        let limit = self.peer.read_limit();
        // Checked before any line is taken: a client that keeps commands coming (NOOPs,
        // failed logins) must not outlast the login deadline.
        if limit.login && limit.at <= tokio::time::Instant::now() {
            self.peer.log.ended(End::LoginTimeout);
            return self.say_farewell(self.farewell.login).await;
        }
        if self.out.len() >= FLUSH_AT && !self.flush_or_end().await {
            return None;
        }
        if let Some((line, bytes)) = self.deferred.pop_front() {
            *buf = bytes;
            return Some(line);
        }
        if self.reader.buffer().is_empty() && !self.flush_or_end().await {
            return None;
        }
        let shutdown = self.peer.shutdown.clone();
        let (end, farewell) = tokio::select! {
            read = tokio::time::timeout_at(limit.at, self.read_line(buf)) => {
                match read {
                    Ok(Ok(Line::Eof)) => {
                        self.peer.log.ended(End::Disconnected);
                        return None;
                    }
                    Ok(Err(err)) => {
                        self.peer.log.ended(End::from_io(&err));
                        return None;
                    }
                    Ok(Ok(line)) => return Some(line),
                    Err(_) if limit.login => (End::LoginTimeout, self.farewell.login),
                    Err(_) => (End::IdleTimeout, self.farewell.idle),
                }
            }
            _ = shutdown.cancelled() => (End::Shutdown, self.farewell.shutdown),
        };
        self.peer.log.ended(end);
        self.say_farewell(farewell).await
    }

    /// Flushes; on failure records why for the session's end line and says `false`.
    pub(crate) async fn flush_or_end(&mut self) -> bool {
        match self.flush().await {
            Ok(()) => true,
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                let why = "write timed out: the client stopped reading";
                self.peer.log.ended(End::Error(why.into()));
                false
            }
            Err(err) => {
                self.peer.log.ended(End::from_io(&err));
                false
            }
        }
    }

    /// Sends `farewell` after what is queued; the session is over.
    async fn say_farewell(&mut self, farewell: &str) -> Option<Line> {
        self.reply(farewell);
        let _ = self.flush().await;
        None
    }

    /// The next line from the client into `buf`, as it comes: no flush first, no idle
    /// timeout, no farewell, deferred lines left where they are. For reading the control
    /// connection while something else runs (an FTP transfer, IMAP IDLE). Cancel-safe.
    pub async fn read_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Line> {
        self.lines.read(&mut self.reader, buf, self.max_line).await
    }

    /// Puts a line read with [`read_line`](LineConn::read_line) aside for the command loop,
    /// which gets it from [`next_line`](LineConn::next_line) before anything newer. `false`
    /// when [`MAX_DEFERRED`] lines already wait: a client flooding commands.
    pub fn defer(&mut self, line: Line, bytes: Vec<u8>) -> bool {
        if self.deferred.len() >= MAX_DEFERRED {
            return false;
        }
        self.deferred.push_back((line, bytes));
        true
    }

    /// Everything the client sent that no command has taken yet, in order: lines put aside,
    /// the part of a line under way, and what is buffered (for the proxy relay, which hands
    /// it to the backend as it came).
    pub(crate) fn take_unread(&mut self) -> Vec<u8> {
        let mut unread = Vec::new();
        for (line, bytes) in self.deferred.drain(..) {
            if line == Line::Complete {
                unread.extend_from_slice(&bytes);
                unread.extend_from_slice(b"\r\n");
            }
        }
        unread.extend_from_slice(&self.lines.take_partial());
        let buffered = self.reader.buffer().len();
        unread.extend_from_slice(self.reader.buffer());
        tokio::io::AsyncBufReadExt::consume(&mut self.reader, buffered);
        unread
    }

    /// The bare stream, for a TLS handshake. Input buffered but not yet read is dropped: it
    /// came in the clear and must not count as sent under TLS.
    pub fn into_inner(self) -> S {
        self.reader.into_inner()
    }

    /// Sends `line` and reads the client's answer: one step of an exchange such as SASL's
    /// challenges. `None` when the client went away (or idled out); an overlong answer is
    /// `Some(Line::TooLong)` with `buf` cleared.
    pub async fn ask(&mut self, line: &str, buf: &mut Vec<u8>) -> Option<Line> {
        self.reply(line);
        let answer = self.next_line(buf).await?;
        if answer != Line::Complete {
            buf.clear();
        }
        Some(answer)
    }

    /// Ends the command loop over this stream as `flow` says, after sending what is queued.
    ///
    /// [`Flow::StartTls`]: the bare stream for the TLS handshake (the go-ahead was the last
    /// reply). Anything the client pipelined after its STARTTLS is dropped with the buffer:
    /// it was sent in the clear and must not be taken as said under TLS. Otherwise the
    /// connection is closed and there is nothing more to serve: `None`.
    pub async fn end(mut self, flow: Flow) -> Option<S> {
        match flow {
            Flow::StartTls => {
                self.flush().await.ok()?;
                Some(self.into_inner())
            }
            Flow::Close | Flow::Continue | Flow::Relay => {
                let _ = self.flush().await;
                let _ = self.reader.get_mut().shutdown().await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    fn peer(idle: Duration) -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            listener: "test".into(),
            idle_timeout: idle,
            write_timeout: Duration::from_secs(5),
            shutdown: CancellationToken::new(),
            login: crate::server::Login::none(),
            log: Default::default(),
        }
    }

    const BYE: Farewell = Farewell {
        idle: "BYE idle",
        shutdown: "BYE stopping",
        login: "BYE log in sooner",
    };

    #[tokio::test]
    async fn pipelined_replies_go_out_together() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 100, BYE);
        client.write_all(b"A\r\nB\r\n").await.unwrap();
        let mut line = Vec::new();
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        conn.reply("1");
        // B is already buffered: the reply to A waits for the reply to B.
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        assert_eq!(line, b"B");
        conn.reply("2");
        conn.flush().await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"1\r\n2\r\n");
    }

    #[tokio::test]
    async fn pipelined_commands_with_large_replies_do_not_grow_the_output_unbounded() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 100, BYE);
        // 500 commands in one write, each answered by 10 KiB: 5 MB if nothing went out.
        client.write_all(&b"STAT\r\n".repeat(500)).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            client.read_to_end(&mut sink).await.map(|_| sink.len())
        });
        let reply = "x".repeat(10 * 1024);
        let mut line = Vec::new();
        let mut most = 0;
        for _ in 0..500 {
            assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
            conn.reply(&reply);
            most = most.max(conn.out.len());
        }
        conn.flush().await.unwrap();
        drop(conn);
        assert!(
            most < FLUSH_AT + reply.len() + 2,
            "{most} bytes queued at once"
        );
        assert_eq!(reader.await.unwrap().unwrap(), 500 * (reply.len() + 2));
    }

    #[tokio::test]
    async fn idle_and_shutdown_say_goodbye() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = LineConn::new(server, peer(Duration::from_millis(50)), 100, BYE);
        let mut line = Vec::new();
        assert_eq!(conn.next_line(&mut line).await, None);
        let mut got = vec![0u8; 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"BYE idle\r\n");
        assert_eq!(conn.peer.log.end(), Some(End::IdleTimeout));

        let (server, mut client) = tokio::io::duplex(4096);
        let p = peer(Duration::from_secs(60));
        let stop = p.shutdown.clone();
        let mut conn = LineConn::new(server, p, 100, BYE);
        stop.cancel();
        assert_eq!(conn.next_line(&mut line).await, None);
        let mut got = vec![0u8; 14];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"BYE stopping\r\n");
        assert_eq!(conn.peer.log.end(), Some(End::Shutdown));
    }

    /// The end line says why the loop stopped reading: the client closing, or hanging up
    /// mid-line, is "disconnected"; a client that stops reading our replies is an error.
    #[tokio::test]
    async fn the_reason_a_connection_ends_is_recorded_for_the_end_line() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 100, BYE);
        client.write_all(b"NOOP\r\nhalf a li").await.unwrap();
        drop(client);
        let mut line = Vec::new();
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        assert_eq!(conn.next_line(&mut line).await, None);
        assert_eq!(conn.peer.log.end(), Some(End::Disconnected));

        // A pipe of 4 bytes nobody reads: the reply cannot go out within the write timeout.
        let (server, _client) = tokio::io::duplex(4);
        let mut p = peer(Duration::from_secs(5));
        p.write_timeout = Duration::from_millis(50);
        let mut conn = LineConn::new(server, p, 100, BYE);
        conn.reply("a reply longer than the pipe");
        assert_eq!(conn.next_line(&mut line).await, None);
        match conn.peer.log.end() {
            Some(End::Error(why)) => assert!(why.contains("write timed out"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// A client that keeps talking without logging in is closed at the login deadline, with
    /// the login farewell, long before its idle timeout; one that logged in only has the idle
    /// timeout.
    #[tokio::test]
    async fn the_login_deadline_ends_a_session_that_never_logs_in() {
        use crate::server::Login;
        let (server, mut client) = tokio::io::duplex(4096);
        let mut p = peer(Duration::from_secs(600));
        p.login = Login::pending(Some(Duration::from_millis(300)));
        let mut conn = LineConn::new(server, p, 100, BYE);
        let mut line = Vec::new();
        // Busy, but never logging in.
        let mut lines = 0;
        while let Some(Line::Complete) = {
            client.write_all(b"NOOP\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.next_line(&mut line).await
        } {
            lines += 1;
            assert!(lines < 1000, "never cut off");
        }
        drop(conn);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"BYE log in sooner\r\n");

        let (server, mut client) = tokio::io::duplex(4096);
        let mut p = peer(Duration::from_millis(200));
        p.login = Login::pending(Some(Duration::from_secs(600)));
        p.login.logged_in();
        let mut conn = LineConn::new(server, p, 100, BYE);
        assert_eq!(conn.next_line(&mut line).await, None);
        let mut got = vec![0u8; 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"BYE idle\r\n");
    }

    #[tokio::test]
    async fn a_read_cancelled_mid_line_gets_the_whole_line_next_time() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 100, BYE);
        let mut line = Vec::new();
        client.write_all(b"AB").await.unwrap();
        // Polled until it has taken "AB" and waits for the rest, then dropped, as the losing
        // branch of a `select!` is.
        tokio::select! {
            biased;
            _ = conn.next_line(&mut line) => panic!("no line was complete"),
            _ = std::future::ready(()) => {}
        }
        client.write_all(b"OR\r\n").await.unwrap();
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        assert_eq!(line, b"ABOR");

        // The same through the raw read a transfer races against.
        client.write_all(b"ST").await.unwrap();
        tokio::select! {
            biased;
            _ = conn.read_line(&mut line) => panic!("no line was complete"),
            _ = std::future::ready(()) => {}
        }
        client.write_all(b"AT\r\n").await.unwrap();
        assert_eq!(conn.read_line(&mut line).await.unwrap(), Line::Complete);
        assert_eq!(line, b"STAT");
    }

    #[tokio::test]
    async fn deferred_lines_come_first_and_are_bounded() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 100, BYE);
        client.write_all(b"LIST\r\n").await.unwrap();
        let mut line = Vec::new();
        assert_eq!(conn.read_line(&mut line).await.unwrap(), Line::Complete);
        assert!(conn.defer(Line::Complete, line.clone()));
        assert!(conn.defer(Line::TooLong, Vec::new()));
        client.write_all(b"PWD\r\n").await.unwrap();
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        assert_eq!(line, b"LIST");
        assert_eq!(conn.next_line(&mut line).await, Some(Line::TooLong));
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        assert_eq!(line, b"PWD");
        for _ in 0..MAX_DEFERRED {
            assert!(conn.defer(Line::Complete, b"NOOP".to_vec()));
        }
        assert!(!conn.defer(Line::Complete, b"NOOP".to_vec()));
    }

    #[tokio::test]
    async fn a_cancelled_flush_writes_the_rest_once() {
        // A pipe that takes 4 bytes before the client reads.
        let (server, mut client) = tokio::io::duplex(4);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 100, BYE);
        conn.reply("0123456789");
        tokio::select! {
            biased;
            _ = conn.flush() => panic!("the pipe cannot take it all"),
            _ = std::future::ready(()) => {}
        }
        let mut first = [0u8; 4];
        client.read_exact(&mut first).await.unwrap();
        let mut rest = [0u8; 8];
        tokio::join!(
            async { client.read_exact(&mut rest).await.unwrap() },
            async { conn.flush().await.unwrap() },
        );
        assert_eq!([&first[..], &rest[..]].concat(), b"0123456789\r\n");
        assert!(conn.out.is_empty());
    }

    #[tokio::test]
    async fn end_closes_or_hands_back_the_stream() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 100, BYE);
        client
            .write_all(b"STARTTLS\r\nEHLO sneaked-in\r\n")
            .await
            .unwrap();
        let mut line = Vec::new();
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        conn.reply("220 go ahead");
        let Some(mut bare) = conn.end(Flow::StartTls).await else {
            panic!("no stream for the handshake");
        };
        let mut got = [0u8; 14];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"220 go ahead\r\n");
        // What was pipelined after STARTTLS stayed in the dropped buffer.
        client.write_all(b"x").await.unwrap();
        let mut next = [0u8; 1];
        bare.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"x");

        let conn = LineConn::new(bare, peer(Duration::from_secs(5)), 100, BYE);
        assert!(conn.end(Flow::Close).await.is_none());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn overlong_lines_are_reported_not_buffered() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut conn = LineConn::new(server, peer(Duration::from_secs(5)), 10, BYE);
        client.write_all(&[b'x'; 5000]).await.unwrap();
        client.write_all(b"\r\nok\r\n").await.unwrap();
        let mut line = Vec::new();
        assert_eq!(conn.next_line(&mut line).await, Some(Line::TooLong));
        assert_eq!(conn.next_line(&mut line).await, Some(Line::Complete));
        assert_eq!(line, b"ok");
    }
}
