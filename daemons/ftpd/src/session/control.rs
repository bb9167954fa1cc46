//! The control connection's bytes: command lines in (bounded, and kept across a read that a
//! transfer cancels), replies out (buffered, written with a timeout).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use inetkit_runtime::server::Peer;

use super::MAX_LINE;

/// The control connection's TCP stream. Reads go through `try_read`, which keeps tokio's
/// readiness after a short read: the kernel ends a read at the urgent mark of an ABOR sent
/// with MSG_OOB, and tokio's own `poll_read` would take that short read to mean "drained"
/// and wait for an edge that never comes for the byte behind the mark.
pub(crate) struct ControlStream(pub(super) TcpStream);

impl AsyncRead for ControlStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for ControlStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// What the control connection gave us.
pub(super) enum Input {
    Line(Vec<u8>),
    TooLong,
    Eof,
    /// Nothing yet, but the deadline given to [`Conn::next_input`] passed.
    Deadline,
}

pub(super) struct Conn<S> {
    pub(super) reader: BufReader<S>,
    /// The line being read; kept across cancelled reads (the read races a transfer).
    line: Vec<u8>,
    too_long: bool,
    /// Commands that arrived during a transfer, answered after it.
    pub(super) queued: VecDeque<Vec<u8>>,
    out: Vec<u8>,
    peer: Peer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(stream: S, peer: Peer) -> Self {
        Conn {
            reader: BufReader::new(stream),
            line: Vec::new(),
            too_long: false,
            queued: VecDeque::new(),
            out: Vec::with_capacity(1024),
            peer,
        }
    }

    pub(super) fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
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
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        self.out.clear();
        Ok(())
    }

    /// Reads one line, bounded by [`MAX_LINE`]. Cancel-safe: a partly read line stays in
    /// `self.line` for the next call.
    pub(super) async fn read_input(&mut self) -> io::Result<Input> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(Input::Eof);
            }
            let (chunk, end) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if !self.too_long {
                if self.line.len() + chunk.len() > MAX_LINE + 1 {
                    self.too_long = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let consumed = end.unwrap_or(chunk.len());
            self.reader.consume(consumed);
            if end.is_some() {
                if std::mem::take(&mut self.too_long) {
                    return Ok(Input::TooLong);
                }
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Input::Line(line));
            }
        }
    }

    /// The next command line; `None` when the client is gone, idle too long, or we are
    /// stopping (the last two are told so first); [`Input::Deadline`] when `deadline` (the
    /// session's own, e.g. a passive port's) comes first. Replies are flushed before the wait,
    /// and the wait itself can be cut short without losing a byte.
    pub(super) async fn next_input(&mut self, deadline: Option<Instant>) -> Option<Input> {
        if let Some(line) = self.queued.pop_front() {
            return Some(Input::Line(line));
        }
        if self.reader.buffer().is_empty() && self.flush().await.is_err() {
            return None;
        }
        let shutdown = self.peer.shutdown.clone();
        let idle = self.peer.idle_timeout;
        tokio::select! {
            read = tokio::time::timeout(idle, self.read_input()) => match read {
                Ok(Ok(Input::Eof)) | Ok(Err(_)) => None,
                Ok(Ok(input)) => Some(input),
                Err(_) => {
                    self.reply("421 Timeout.");
                    let _ = self.flush().await;
                    None
                }
            },
            _ = shutdown.cancelled() => {
                self.reply("421 Server shutting down.");
                let _ = self.flush().await;
                None
            }
            () = sleep_until(deadline), if deadline.is_some() => Some(Input::Deadline),
        }
    }
}

/// Sleeps until `deadline`; for ever without one (the `select!` branch is then disabled).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
