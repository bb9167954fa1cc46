//! The connection of a line-based protocol (POP3, SMTP, IMAP): input read one bounded line at
//! a time, replies queued and written when the client has nothing more pipelined, and the
//! session's idle timeout and the daemon's shutdown turned into a last protocol line.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::lines::{read_line, Line};
use crate::server::Peer;
use crate::tls::TlsContext;

/// How a session's command loop ended.
pub enum Ending<S> {
    Closed,
    /// The client asked for STARTTLS: the bare stream to start TLS on.
    StartTls(S),
}

/// A session of a protocol with STARTTLS on its plain port and an implicit-TLS port of its
/// own (POP3, SMTP submission, IMAP). [`serve_session`] drives it either way.
pub trait TlsSession: Send {
    /// The TLS setup, if TLS is configured.
    fn tls_context(&self) -> Option<TlsContext>;
    /// Told once the TLS handshake succeeded.
    fn tls_started(&mut self);
    /// The command loop over `stream`; `greet` sends the greeting first (not after STARTTLS).
    fn run<S>(&mut self, stream: S, greet: bool) -> impl Future<Output = Ending<S>> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send;
}

/// Serves one connection: over TLS from the start (`implicit_tls`), or in the clear until the
/// client asks for STARTTLS and then over TLS.
pub async fn serve_session(session: &mut impl TlsSession, stream: TcpStream, implicit_tls: bool) {
    let stream = if implicit_tls {
        stream
    } else {
        match session.run(stream, true).await {
            Ending::StartTls(stream) => stream,
            Ending::Closed => return,
        }
    };
    let Some(tls) = session.tls_context() else {
        return;
    };
    match tls.accept(stream).await {
        Ok(stream) => {
            session.tls_started();
            // A second STARTTLS is refused by the protocol: nothing more to do either way.
            let _ = session.run(stream, implicit_tls).await;
        }
        Err(err) => tracing::debug!(error = %err, "TLS handshake failed"),
    }
}

/// The protocol's last words when a session ends on our side.
#[derive(Debug, Clone, Copy)]
pub struct Farewell {
    /// Sent when the client was idle past the session's idle timeout.
    pub idle: &'static str,
    /// Sent when the daemon is shutting down.
    pub shutdown: &'static str,
}

pub struct LineConn<S> {
    /// Buffered input. Protocols with literals (IMAP) read from it directly; STARTTLS takes
    /// the stream out with [`LineConn::into_inner`], dropping what was buffered.
    pub reader: BufReader<S>,
    /// Output queued for the next [`flush`](LineConn::flush).
    pub out: Vec<u8>,
    pub peer: Peer,
    max_line: usize,
    farewell: Farewell,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineConn<S> {
    pub fn new(stream: S, peer: Peer, max_line: usize, farewell: Farewell) -> Self {
        LineConn {
            reader: BufReader::new(stream),
            out: Vec::with_capacity(1024),
            peer,
            max_line,
            farewell,
        }
    }

    /// Queues one reply line; CRLF is added.
    pub fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes what is queued, bounded by the session's write timeout.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let stream = self.reader.get_mut();
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.peer.write_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.out.clear();
        Ok(())
    }

    /// The next command line into `buf`; `None` when the client is gone, was idle too long,
    /// or the daemon is stopping (the last two are told so first).
    ///
    /// Queued replies are written first unless more input is already buffered, so the
    /// replies to pipelined commands go out together and in order.
    pub async fn next_line(&mut self, buf: &mut Vec<u8>) -> Option<Line> {
        if self.reader.buffer().is_empty() && self.flush().await.is_err() {
            return None;
        }
        let shutdown = self.peer.shutdown.clone();
        let idle = self.peer.idle_timeout;
        let farewell = tokio::select! {
            read = tokio::time::timeout(idle, read_line(&mut self.reader, buf, self.max_line)) => {
                match read {
                    Ok(Ok(Line::Eof)) | Ok(Err(_)) => return None,
                    Ok(Ok(line)) => return Some(line),
                    Err(_) => self.farewell.idle,
                }
            }
            _ = shutdown.cancelled() => self.farewell.shutdown,
        };
        self.reply(farewell);
        let _ = self.flush().await;
        None
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

    /// Sends what is queued and closes the connection.
    pub async fn close(mut self) -> Ending<S> {
        let _ = self.flush().await;
        let _ = self.reader.get_mut().shutdown().await;
        Ending::Closed
    }

    /// Sends what is queued (the go-ahead) and gives up the bare stream for the TLS handshake.
    /// Anything the client pipelined after its STARTTLS is dropped with the buffer: it was
    /// sent in the clear and must not be taken as said under TLS.
    pub async fn start_tls(mut self) -> Ending<S> {
        if self.flush().await.is_err() {
            return Ending::Closed;
        }
        Ending::StartTls(self.into_inner())
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
        }
    }

    const BYE: Farewell = Farewell {
        idle: "BYE idle",
        shutdown: "BYE stopping",
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
    async fn idle_and_shutdown_say_goodbye() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = LineConn::new(server, peer(Duration::from_millis(50)), 100, BYE);
        let mut line = Vec::new();
        assert_eq!(conn.next_line(&mut line).await, None);
        let mut got = vec![0u8; 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"BYE idle\r\n");

        let (server, mut client) = tokio::io::duplex(4096);
        let p = peer(Duration::from_secs(60));
        let stop = p.shutdown.clone();
        let mut conn = LineConn::new(server, p, 100, BYE);
        stop.cancel();
        assert_eq!(conn.next_line(&mut line).await, None);
        let mut got = vec![0u8; 14];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"BYE stopping\r\n");
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
