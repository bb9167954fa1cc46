//! COMPRESS=DEFLATE (RFC 4978): a stream that inflates what it reads and deflates what it
//! writes (raw deflate, RFC 1951, no zlib header), each flush ending on a byte boundary
//! (a sync flush) so the client can decode everything sent so far.
//!
//! Inflated input is bounded by the reader: a read gives at most what the caller's buffer
//! holds, so a small input that inflates to gigabytes (a zip bomb) meets the command reader's
//! line and literal limits like any other input.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Compressed input read from the client at a time.
const IN_BUF: usize = 16 * 1024;
/// Deflated output held before a write waits for the client to take some.
const OUT_HIGH: usize = 64 * 1024;

pub(crate) struct Deflate<S> {
    inner: S,
    inflate: Decompress,
    deflate: Compress,
    input: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// The client ended the stream (its side), or the deflate stream ended.
    eof: bool,
    /// Deflated bytes not yet written to `inner`, from `out_pos`.
    output: Vec<u8>,
    out_pos: usize,
    /// Bytes were deflated since the last sync flush.
    dirty: bool,
}

impl<S> Deflate<S> {
    pub(crate) fn new(inner: S) -> Deflate<S> {
        Deflate {
            inner,
            inflate: Decompress::new(false),
            deflate: Compress::new(Compression::default(), false),
            input: vec![0; IN_BUF].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            eof: false,
            output: Vec::new(),
            out_pos: 0,
            dirty: false,
        }
    }

    /// Deflates `data` into `output` with `flush`, growing it as needed.
    fn deflate_into(&mut self, mut data: &[u8], flush: FlushCompress) -> io::Result<()> {
        loop {
            self.output.reserve(data.len() / 2 + 256);
            let (before_in, before_out) = (self.deflate.total_in(), self.deflate.total_out());
            self.deflate
                .compress_vec(data, &mut self.output, flush)
                .map_err(io::Error::other)?;
            let consumed = (self.deflate.total_in() - before_in) as usize;
            let produced = self.deflate.total_out() - before_out;
            data = data.get(consumed..).unwrap_or_default();
            // Done when all input is in and the output did not fill the room it had.
            if data.is_empty() && self.output.len() < self.output.capacity() {
                return Ok(());
            }
            if consumed == 0 && produced == 0 && self.output.len() < self.output.capacity() {
                return Ok(());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Deflate<S> {
    /// Writes pending output to the client; `Ready` once all of it is written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.output.len() {
            let pending = self.output.get(self.out_pos..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.output.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deflate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.in_start < this.in_end || this.eof {
                let input = this
                    .input
                    .get(this.in_start..this.in_end)
                    .unwrap_or_default();
                let (before_in, before_out) = (this.inflate.total_in(), this.inflate.total_out());
                let status = this
                    .inflate
                    .decompress(input, buf.initialize_unfilled(), FlushDecompress::None)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let consumed = (this.inflate.total_in() - before_in) as usize;
                let produced = (this.inflate.total_out() - before_out) as usize;
                this.in_start += consumed;
                buf.advance(produced);
                if produced > 0 {
                    return Poll::Ready(Ok(()));
                }
                if status == Status::StreamEnd || this.eof {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                if consumed > 0 {
                    continue;
                }
            }
            // More compressed input is needed: make room, then read.
            if this.in_start > 0 {
                this.input.copy_within(this.in_start..this.in_end, 0);
                this.in_end -= this.in_start;
                this.in_start = 0;
            }
            if this.in_end == this.input.len() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "deflate input makes no progress",
                )));
            }
            let mut room = ReadBuf::new(this.input.get_mut(this.in_end..).unwrap_or_default());
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut room))?;
            let n = room.filled().len();
            if n == 0 {
                this.eof = true;
            }
            this.in_end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deflate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.output.len() - this.out_pos >= OUT_HIGH {
            ready!(this.poll_drain(cx))?;
        }
        this.deflate_into(data, FlushCompress::None)?;
        this.dirty = true;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // What was written so far, completed to a byte boundary the client can decode.
        if this.dirty {
            this.deflate_into(&[], FlushCompress::Sync)?;
            this.dirty = false;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).expect("deflated");
        enc.flush().expect("sync flush");
        enc.get_ref().clone()
    }

    fn inflate_raw(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dec = flate2::write::DeflateDecoder::new(&mut out);
        dec.write_all(data).expect("inflated");
        dec.flush().expect("flushed");
        drop(dec);
        out
    }

    #[tokio::test]
    async fn both_directions_round_trip() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = Deflate::new(server);
        let (mut from_client, mut to_client) = tokio::io::split(client);
        let line = b"a1 NOOP\r\n".repeat(1000);
        let sent = deflate_raw(&line);
        let writer = tokio::spawn(async move {
            to_client.write_all(&sent).await.expect("sent");
            to_client
        });
        let mut got = vec![0; line.len()];
        server.read_exact(&mut got).await.expect("inflated");
        assert_eq!(got, line);
        let _to_client = writer.await.expect("writer");
        server.write_all(b"* OK hello\r\n").await.expect("written");
        server.flush().await.expect("flushed");
        let mut back = vec![0; 64];
        let n = from_client.read(&mut back).await.expect("read");
        assert_eq!(inflate_raw(&back[..n]), b"* OK hello\r\n");
    }

    #[tokio::test]
    async fn a_bomb_inflates_only_as_far_as_it_is_read() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut server = Deflate::new(server);
        // 64 MiB of one byte deflate to about 64 KiB.
        let bomb = deflate_raw(&vec![b'a'; 64 << 20]);
        assert!(bomb.len() < 100 * 1024, "{}", bomb.len());
        tokio::spawn(async move {
            let _ = client.write_all(&bomb).await;
            client
        });
        let mut buf = vec![0; 4096];
        let n = server.read(&mut buf).await.expect("read");
        assert!(n > 0 && n <= 4096);
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Deflate::new(server);
        client.write_all(&[0xff; 64]).await.expect("sent");
        let mut buf = vec![0; 64];
        assert!(server.read(&mut buf).await.is_err());
    }
}
