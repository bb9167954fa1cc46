//! Reading protocol command lines with a hard length limit.
//!
//! Line-based protocols (POP3, SMTP, FTP, IMAP commands) read one line at a time. A client that
//! sends a megabyte without a newline must not make us buffer a megabyte: past the limit the
//! rest of the line is read and thrown away, and the caller answers with a protocol error.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What one call to [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, without its CRLF or LF, in the caller's buffer.
    Complete,
    /// The line was longer than the limit; it was read to its end and discarded.
    TooLong,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
}

/// Reads one line into `buf` (cleared first), holding at most `max` bytes of it.
///
/// Lines end at LF; a CR before it is removed. Bytes are returned as sent: protocols decide
/// what to do with non-UTF-8 and NUL. Not cancel-safe: a line cut short by a dropped future
/// is lost. Where a read races something else, keep a [`LineReader`] instead.
pub async fn read_line<R>(reader: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line>
where
    R: AsyncBufRead + Unpin,
{
    // The caller's buffer serves as the line under way, so its allocation is reused.
    let mut partial = std::mem::take(buf);
    partial.clear();
    let mut lines = LineReader {
        partial,
        too_long: false,
    };
    lines.read(reader, buf, max).await
}

/// Reads lines like [`read_line`], keeping the line under way between calls, so reading is
/// cancel-safe: a read dropped in the middle of a line (a `select!` that took another branch,
/// a timer) loses nothing, and the next call goes on where it stopped.
#[derive(Debug, Default)]
pub struct LineReader {
    /// The bytes of the current line read so far (none once it is too long).
    partial: Vec<u8>,
    /// The current line passed the limit: the rest of it is read and thrown away.
    too_long: bool,
}

impl LineReader {
    /// A reader with no line under way.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether part of a line has been read and not yet returned.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty() || self.too_long
    }

    /// The part of a line read so far, taken away (a line that grew too long has none).
    pub(crate) fn take_partial(&mut self) -> Vec<u8> {
        self.too_long = false;
        std::mem::take(&mut self.partial)
    }

    /// Reads the rest of the current line into `buf` (cleared first), holding at most `max`
    /// bytes of it. `Line::TooLong` leaves `buf` empty; at `Line::Eof` a partial last line is
    /// dropped.
    ///
    /// Cancel-safe: its only await is `fill_buf`, which consumes nothing, and what it consumed
    /// is in `self` before it awaits again.
    pub async fn read<R>(
        &mut self,
        reader: &mut R,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> std::io::Result<Line>
    where
        R: AsyncBufRead + Unpin,
    {
        loop {
            let available = reader.fill_buf().await?;
            if available.is_empty() {
                self.partial.clear();
                self.too_long = false;
                buf.clear();
                return Ok(Line::Eof);
            }
            let (chunk, found_end) = match memchr::memchr(b'\n', available) {
                Some(i) => (&available[..i], i + 1),
                None => (available, 0),
            };
            if !self.too_long {
                if self.partial.len() + chunk.len() > max + 1 {
                    // One byte of slack so a CR right at the limit still fits.
                    self.too_long = true;
                    self.partial.clear();
                } else {
                    self.partial.extend_from_slice(chunk);
                }
            }
            let consumed = if found_end > 0 {
                found_end
            } else {
                chunk.len()
            };
            reader.consume(consumed);
            if found_end > 0 {
                return Ok(self.finish(buf, max));
            }
        }
    }

    /// Hands the line just ended to `buf`, and `buf`'s old allocation to the next line.
    fn finish(&mut self, buf: &mut Vec<u8>, max: usize) -> Line {
        buf.clear();
        if std::mem::take(&mut self.too_long) {
            return Line::TooLong;
        }
        std::mem::swap(buf, &mut self.partial);
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if buf.len() > max {
            buf.clear();
            return Line::TooLong;
        }
        Line::Complete
    }
}

/// Turns message bytes into the body of a dot-terminated multi-line response (POP3 RETR/TOP,
/// SMTP DATA when relaying): line ends become CRLF, a `.` starting a line is doubled, and
/// [`DotStuffer::finish`] ends the last line and adds the terminating `.` line.
///
/// It works chunk by chunk, so a message of any size streams through a fixed buffer.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl DotStuffer {
    /// A stuffer at the start of a message (a `.` in the first byte is doubled).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the stuffed form of `input` to `out`.
    ///
    /// Works a line at a time (copying whole runs between newlines), as this is the hot loop
    /// of every POP3 RETR.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 2);
        while let Some(&first) = input.first() {
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', input) {
                Some(end) => {
                    let line = &input[..end];
                    out.extend_from_slice(line);
                    let cr_before = match line.last() {
                        Some(&last) => last == b'\r',
                        // The line's start was in the previous chunk.
                        None => self.after_cr,
                    };
                    if !cr_before {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                    self.at_line_start = true;
                    self.after_cr = false;
                    input = &input[end + 1..];
                }
                None => {
                    out.extend_from_slice(input);
                    self.after_cr = input.last() == Some(&b'\r');
                    self.at_line_start = false;
                    input = &[];
                }
            }
        }
    }

    /// Ends the response: CRLF if the data did not end with one, then `.` CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            if !self.after_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn lines(input: &[u8], max: usize, buf_size: usize) -> Vec<(Line, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(buf_size, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut buf, max).await.unwrap();
            if line == Line::Eof {
                return out;
            }
            out.push((line, buf.clone()));
        }
    }

    #[tokio::test]
    async fn crlf_and_lf_lines() {
        let got = lines(b"USER a\r\nPASS b\nQUIT\r\n", 100, 4).await;
        assert_eq!(
            got,
            vec![
                (Line::Complete, b"USER a".to_vec()),
                (Line::Complete, b"PASS b".to_vec()),
                (Line::Complete, b"QUIT".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn partial_last_line_is_eof() {
        assert_eq!(lines(b"NOOP\r\nQU", 100, 8).await.len(), 1);
    }

    #[tokio::test]
    async fn overlong_line_is_discarded_and_reading_goes_on() {
        let mut input = vec![b'x'; 1 << 20];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let got = lines(&input, 512, 8192).await;
        assert_eq!(got[0], (Line::TooLong, vec![]));
        assert_eq!(got[1], (Line::Complete, b"NOOP".to_vec()));
    }

    #[tokio::test]
    async fn limit_is_exact() {
        let got = lines(b"abcd\r\nabcde\r\nabcd\n", 4, 3).await;
        assert_eq!(got[0], (Line::Complete, b"abcd".to_vec()));
        assert_eq!(got[1].0, Line::TooLong);
        assert_eq!(got[2], (Line::Complete, b"abcd".to_vec()));
    }

    #[tokio::test]
    async fn memory_stays_bounded_on_endless_input() {
        // 10 MiB with no newline: the buffer never grows past the limit.
        let input = vec![b'y'; 10 << 20];
        let mut reader = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        let line = read_line(&mut reader, &mut buf, 1000).await.unwrap();
        assert_eq!(line, Line::Eof);
        assert!(buf.capacity() <= 2048, "buffer grew to {}", buf.capacity());
    }

    /// Polls `read` until it waits for more input, then drops it, as a `select!` whose
    /// other branch won would.
    async fn cancel_midway<F: std::future::Future>(read: F) {
        tokio::select! {
            biased;
            _ = read => panic!("the read finished: nothing was cancelled"),
            _ = std::future::ready(()) => {}
        }
    }

    #[tokio::test]
    async fn a_cancelled_read_keeps_the_partial_line() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = BufReader::new(server);
        let mut lines = LineReader::new();
        let mut buf = Vec::new();
        client.write_all(b"NO").await.unwrap();
        cancel_midway(lines.read(&mut reader, &mut buf, 100)).await;
        assert!(lines.has_partial());
        client.write_all(b"OP\r\nQUIT\r\n").await.unwrap();
        assert_eq!(
            lines.read(&mut reader, &mut buf, 100).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"NOOP");
        assert!(!lines.has_partial());
        assert_eq!(
            lines.read(&mut reader, &mut buf, 100).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"QUIT");

        // An overlong line cut by a cancellation is still known to be too long.
        client.write_all(&[b'x'; 150]).await.unwrap();
        cancel_midway(lines.read(&mut reader, &mut buf, 100)).await;
        client.write_all(b"yy\r\nok\r\n").await.unwrap();
        assert_eq!(
            lines.read(&mut reader, &mut buf, 100).await.unwrap(),
            Line::TooLong
        );
        assert!(buf.is_empty());
        assert_eq!(
            lines.read(&mut reader, &mut buf, 100).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"ok");
    }

    #[tokio::test]
    async fn line_reader_agrees_with_read_line() {
        let input: &[u8] = b"a\r\nabcdef\r\n\r\nabcd\nxy";
        for buf_size in 1..8 {
            let mut reader = BufReader::with_capacity(buf_size, input);
            let mut state = LineReader::new();
            let mut buf = Vec::new();
            let mut got = Vec::new();
            loop {
                let line = state.read(&mut reader, &mut buf, 4).await.unwrap();
                if line == Line::Eof {
                    break;
                }
                got.push((line, buf.clone()));
            }
            assert_eq!(got, lines(input, 4, buf_size).await, "buffer {buf_size}");
        }
    }

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::new();
        let mut out = Vec::new();
        for chunk in chunks {
            stuffer.push(chunk, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn dot_stuffing_and_line_ends() {
        assert_eq!(stuff(&[b"a\r\n.b\r\n"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuff(&[b"a\n.\n"]), b"a\r\n..\r\n.\r\n");
        assert_eq!(stuff(&[b".start"]), b"..start\r\n.\r\n");
        assert_eq!(stuff(&[b""]), b".\r\n");
        assert_eq!(stuff(&[b"mid.dot\r\n"]), b"mid.dot\r\n.\r\n");
    }

    /// Every way of cutting a message into chunks gives the same bytes.
    #[test]
    fn dot_stuffing_is_independent_of_chunking() {
        let message: &[u8] = b".a\r\nb\n.\r\n..\n\r\n\nx.\r\r\n.end";
        let whole = stuff(&[message]);
        for size in 1..message.len() {
            let chunks: Vec<&[u8]> = message.chunks(size).collect();
            assert_eq!(stuff(&chunks), whole, "chunks of {size}");
        }
        assert_eq!(
            whole,
            b"..a\r\nb\r\n..\r\n...\r\n\r\n\r\nx.\r\r\n..end\r\n.\r\n".to_vec()
        );
    }

    #[test]
    fn dot_stuffing_across_chunk_boundaries() {
        let whole = stuff(&[b"x\r\n.y\n..z\r\nend"]);
        let split = stuff(&[b"x\r", b"\n", b".y", b"\n", b".", b".z\r", b"\nend"]);
        assert_eq!(whole, split);
        assert_eq!(whole, b"x\r\n..y\r\n...z\r\nend\r\n.\r\n");
    }

    #[tokio::test]
    async fn binary_bytes_pass_through() {
        let got = lines(b"\x00\xff\x01\r\n", 10, 2).await;
        assert_eq!(got[0], (Line::Complete, vec![0, 0xff, 1]));
    }
}
