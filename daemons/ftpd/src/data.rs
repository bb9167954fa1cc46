//! The data connection: how it will be made (passive listeners are in `passive`), the active
//! connect, the stream type that is plain or TLS, and the transfer loops (sendfile for plain
//! downloads, large buffers otherwise, TYPE A line-end conversion).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use inetkit_runtime::stream::PlainOrTls;

use crate::passive::Passive;
use crate::rate::Throttle;

/// Transfer buffer: big enough that per-call costs vanish next to the copy itself.
const BUF_SIZE: usize = 1 << 20;
/// The smallest transfer buffer.
const MIN_BUF: usize = 16 << 10;
/// How much one sendfile call may move.
const SENDFILE_CHUNK: usize = 1 << 24;
/// How long a finished data connection is kept open to read the client's last bytes (its
/// TLS close_notify), so that closing it does not reset what the client has yet to read.
const LINGER: Duration = Duration::from_secs(10);

/// How the next data connection will be made.
#[derive(Debug, Default)]
pub(crate) enum Pending {
    #[default]
    None,
    Passive(Passive),
    Active(SocketAddr),
}

impl Pending {
    /// When a passive listener waiting here is closed unused.
    pub(crate) fn expires(&self) -> Option<tokio::time::Instant> {
        match self {
            Pending::Passive(passive) => Some(passive.expires()),
            _ => None,
        }
    }
}

pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// A data connection, plain or TLS.
pub(crate) type DataStream = PlainOrTls<tokio_rustls::server::TlsStream<TcpStream>>;

/// Bytes moved so far, for STAT during a transfer.
pub(crate) type Progress = Arc<AtomicU64>;

/// Bounds one step of a transfer: a client that stops moving data is given up on.
async fn step<T>(
    timeout: Duration,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, io)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Sends the `left` bytes of `file` from `offset`, its current position: sendfile(2) for a
/// plain binary transfer, else a read/write loop with a large buffer (and LF → CRLF for TYPE
/// A). Ends the connection cleanly (TLS close_notify, FIN).
// Each argument is a different thing the one caller has at hand; a struct only to bundle
// them would be read once.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_file(
    mut stream: DataStream,
    mut file: std::fs::File,
    offset: u64,
    left: u64,
    ascii: bool,
    timeout: Duration,
    progress: Progress,
    mut throttle: Throttle,
) -> io::Result<u64> {
    let mut sent = 0u64;
    match &stream {
        DataStream::Plain(tcp) if !ascii => {
            let mut offset = i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
            let chunk = throttle.chunk(SENDFILE_CHUNK);
            loop {
                step(timeout, tcp.writable()).await?;
                let result = tcp.try_io(Interest::WRITABLE, || {
                    nix::sys::sendfile::sendfile64(tcp, &file, Some(&mut offset), chunk)
                        .map_err(io::Error::from)
                });
                match result {
                    Ok(0) => break,
                    Ok(n) => {
                        sent += n as u64;
                        progress.store(sent, Ordering::Relaxed);
                        throttle.pace(n as u64).await;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
        }
        _ => {
            // No bigger than the file: a megabyte zeroed for every small file costs more than
            // sending it.
            let size = usize::try_from(left).unwrap_or(BUF_SIZE);
            let mut buf = vec![0u8; throttle.chunk(size.clamp(MIN_BUF, BUF_SIZE))];
            let mut converted = Vec::new();
            let mut crlf = ToCrlf::default();
            loop {
                // A regular file's bytes, from the page cache (see `fs`, "Blocking I/O").
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                let chunk = if ascii {
                    converted.clear();
                    crlf.push(&buf[..n], &mut converted);
                    &converted[..]
                } else {
                    &buf[..n]
                };
                step(timeout, stream.write_all(chunk)).await?;
                sent += n as u64;
                progress.store(sent, Ordering::Relaxed);
                throttle.pace(n as u64).await;
            }
        }
    }
    finish(stream, timeout).await?;
    Ok(sent)
}

/// Sends a listing (already formatted) and ends the connection.
pub(crate) async fn send_bytes(
    mut stream: DataStream,
    bytes: Vec<u8>,
    timeout: Duration,
) -> io::Result<u64> {
    step(timeout, stream.write_all(&bytes)).await?;
    finish(stream, timeout).await?;
    Ok(bytes.len() as u64)
}

/// Writes everything the client sends into `file` (CRLF → LF for TYPE A) until it closes
/// the connection. Returns the bytes received; on error, what was written stays written.
pub(crate) async fn receive_file(
    mut stream: DataStream,
    file: &mut std::fs::File,
    ascii: bool,
    timeout: Duration,
    progress: Progress,
    mut throttle: Throttle,
) -> io::Result<u64> {
    if let DataStream::Plain(tcp) = &mut stream {
        // splice(2) cannot write to a file opened for appending (APPE).
        if !ascii && !appending(file) {
            let received = splice_into(tcp, file, timeout, progress, &mut throttle).await?;
            let _ = step(timeout, tcp.shutdown()).await;
            return Ok(received);
        }
    }
    // Starts small (most uploads are) and grows while reads fill it.
    let max_buf = throttle.chunk(BUF_SIZE);
    let mut buf = vec![0u8; MIN_BUF.min(max_buf)];
    let mut converted = Vec::new();
    let mut lf = ToLf::default();
    let mut received = 0u64;
    loop {
        let n = step(timeout, stream.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        if n == buf.len() && buf.len() < max_buf {
            buf.resize((buf.len() * 2).min(max_buf), 0);
        }
        received += n as u64;
        progress.store(received, Ordering::Relaxed);
        if ascii {
            converted.clear();
            lf.push(&buf[..n], &mut converted);
            file.write_all(&converted)?;
        } else {
            file.write_all(&buf[..n])?;
        }
        throttle.pace(n as u64).await;
    }
    if ascii {
        converted.clear();
        lf.finish(&mut converted);
        file.write_all(&converted)?;
    }
    // Our close_notify answers the client's; a client that just closed is no error.
    let _ = step(timeout, stream.shutdown()).await;
    Ok(received)
}

fn appending(file: &std::fs::File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)
        .map(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_APPEND))
        .unwrap_or(true)
}

/// A plain binary upload with splice(2): socket → pipe → file, never through our memory.
async fn splice_into(
    tcp: &TcpStream,
    file: &mut std::fs::File,
    timeout: Duration,
    progress: Progress,
    throttle: &mut Throttle,
) -> io::Result<u64> {
    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    use std::os::fd::AsRawFd;
    let (pipe_out, pipe_in) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    // A bigger pipe moves more per call; without the privilege for 1 MiB the default stays.
    let _ = fcntl(pipe_in.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(BUF_SIZE as i32));
    let chunk = throttle.chunk(BUF_SIZE);
    let mut received = 0u64;
    loop {
        step(timeout, tcp.readable()).await?;
        let moved = tcp.try_io(Interest::READABLE, || {
            splice(
                tcp,
                None,
                &pipe_in,
                None,
                chunk,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            )
            .map_err(io::Error::from)
        });
        let n = match moved {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        // Empty the pipe into the file (at its current position) before reading more.
        let mut left = n;
        while left > 0 {
            let written = splice(
                &pipe_out,
                None,
                &*file,
                None,
                left,
                SpliceFFlags::SPLICE_F_MOVE,
            )
            .map_err(io::Error::from)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= written;
        }
        received += n as u64;
        progress.store(received, Ordering::Relaxed);
        throttle.pace(n as u64).await;
    }
    Ok(received)
}

/// Ends a sending connection: close_notify and FIN now, then (in the background) reads until
/// the client closes, so an early close of ours cannot reset data it has not read yet.
async fn finish(mut stream: DataStream, timeout: Duration) -> io::Result<()> {
    step(timeout, stream.shutdown()).await?;
    tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        let drain = async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
    Ok(())
}

/// TYPE A sending: a bare LF becomes CRLF; existing CRLFs stay as they are.
#[derive(Debug, Default)]
pub(crate) struct ToCrlf {
    after_cr: bool,
}

impl ToCrlf {
    pub(crate) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 16);
        for &b in input {
            if b == b'\n' && !self.after_cr {
                out.push(b'\r');
            }
            out.push(b);
            self.after_cr = b == b'\r';
        }
    }
}

/// TYPE A receiving: CRLF becomes LF; a CR not followed by LF is kept.
#[derive(Debug, Default)]
pub(crate) struct ToLf {
    pending_cr: bool,
}

impl ToLf {
    pub(crate) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                if b != b'\n' {
                    out.push(b'\r');
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_both_ways_across_chunks() {
        let mut to = ToCrlf::default();
        let mut out = Vec::new();
        to.push(b"a\nb\r", &mut out);
        to.push(b"\nc\n", &mut out);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");

        let mut from = ToLf::default();
        let mut out = Vec::new();
        from.push(b"a\r\nb\r", &mut out);
        from.push(b"\nc\rd\r", &mut out);
        from.finish(&mut out);
        assert_eq!(out, b"a\nb\nc\rd\r");
    }
}
