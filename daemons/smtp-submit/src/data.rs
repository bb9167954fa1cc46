//! Reading the message that follows DATA (RFC 5321 §4.1.1.4, §2.3.8).
//!
//! Lines end only at CRLF, and so the data ends only at CRLF `.` CRLF. A lone LF or a lone CR
//! anywhere in the data is a protocol violation that we refuse rather than repair: servers
//! that disagree on where a message ends are what SMTP smuggling exploits (one DATA holding
//! `\n.\nMAIL FROM:…` would become two messages at a server that ends DATA at a bare LF, and a
//! `\r.\r` passed on unchanged to a smarthost might end the message there). Refusing is what
//! Postfix's `smtpd_forbid_bare_newline = reject` does; the caller answers `550 5.5.2` and
//! closes the connection, because the client's idea of where the data ends is not ours.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What one call to [`read_data_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataLine {
    /// A line, without its CRLF, in the caller's buffer.
    Complete,
    /// Longer than the limit: read to its CRLF and thrown away.
    TooLong,
    /// A line feed not preceded by a carriage return.
    BareLf,
    /// A carriage return not followed by a line feed.
    BareCr,
    /// The client closed the connection.
    Eof,
}

/// Reads one CRLF-terminated line into `buf` (cleared first), holding at most `max` bytes of
/// it. After `BareLf` or `BareCr` the position in the input is somewhere inside the line: the
/// caller stops reading lines.
pub(crate) async fn read_data_line<R>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<DataLine>
where
    R: AsyncBufRead + Unpin,
{
    buf.clear();
    let mut too_long = false;
    // The previous chunk ended in a CR: the line ends if this one starts with LF.
    let mut pending_cr = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(DataLine::Eof);
        }
        if pending_cr {
            if available.first() != Some(&b'\n') {
                return Ok(DataLine::BareCr);
            }
            reader.consume(1);
            return Ok(if too_long {
                DataLine::TooLong
            } else {
                DataLine::Complete
            });
        }
        let found = memchr::memchr2(b'\r', b'\n', available);
        let text = found.map_or(available, |at| available.get(..at).unwrap_or_default());
        if !too_long {
            if buf.len() + text.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(text);
            }
        }
        let Some(at) = found else {
            let consumed = available.len();
            reader.consume(consumed);
            continue;
        };
        if available.get(at) == Some(&b'\n') {
            return Ok(DataLine::BareLf);
        }
        let after_cr = available.get(at + 1).copied();
        match after_cr {
            Some(b'\n') => {
                reader.consume(at + 2);
                return Ok(if too_long {
                    DataLine::TooLong
                } else {
                    DataLine::Complete
                });
            }
            Some(_) => return Ok(DataLine::BareCr),
            None => {
                reader.consume(at + 1);
                pending_cr = true;
            }
        }
    }
}

/// Reads and throws away what the client still sends, for at most `linger` and `max` bytes,
/// or until it closes its side. Used after a refusal that closes the connection: closing a
/// socket with unread input makes the kernel send a reset, which can destroy our last reply
/// before the client has read it.
pub(crate) async fn discard_input<R>(reader: &mut R, linger: Duration, max: u64)
where
    R: AsyncBufRead + Unpin,
{
    let discard = async {
        let mut total: u64 = 0;
        while total < max {
            let n = match reader.fill_buf().await {
                Ok([]) | Err(_) => return,
                Ok(available) => available.len(),
            };
            reader.consume(n);
            total += n as u64;
        }
    };
    let _ = tokio::time::timeout(linger, discard).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    /// Every line of `input` read with a buffer of `buf_size` bytes, up to the first that is
    /// not `Complete` or `TooLong` (included).
    async fn lines(input: &[u8], max: usize, buf_size: usize) -> Vec<(DataLine, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(buf_size, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let line = read_data_line(&mut reader, &mut buf, max)
                .await
                .unwrap_or(DataLine::Eof);
            out.push((line, buf.clone()));
            if !matches!(line, DataLine::Complete | DataLine::TooLong) {
                return out;
            }
        }
    }

    fn complete(line: &[u8]) -> (DataLine, Vec<u8>) {
        (DataLine::Complete, line.to_vec())
    }

    /// The same answers however the input is cut into reads.
    async fn all_sizes(input: &[u8], max: usize) -> Vec<(DataLine, Vec<u8>)> {
        let whole = lines(input, max, 8192).await;
        for size in 1..=input.len() {
            assert_eq!(
                lines(input, max, size).await,
                whole,
                "reads of {size} bytes"
            );
        }
        whole
    }

    #[tokio::test]
    async fn crlf_lines_and_the_final_dot() {
        let got = all_sizes(b"Subject: x\r\n\r\n..dot\r\n.\r\n", 100).await;
        assert_eq!(
            got,
            vec![
                complete(b"Subject: x"),
                complete(b""),
                complete(b"..dot"),
                complete(b"."),
                (DataLine::Eof, vec![]),
            ]
        );
    }

    /// The smuggling forms: none of them ends a line, let alone the data.
    #[tokio::test]
    async fn bare_line_feeds_and_carriage_returns_are_reported() {
        for (input, found) in [
            (&b"hello\n.\nMAIL FROM:<a@b>\r\n"[..], DataLine::BareLf),
            (b"hello\r\n.\nMAIL FROM:<a@b>\r\n", DataLine::BareLf),
            (b"hello\n.\r\n", DataLine::BareLf),
            (b"hello\r.\r\n", DataLine::BareCr),
            (b"hello\r\n.\rMAIL FROM:<a@b>\r\n", DataLine::BareCr),
            (b"a\r\r\n", DataLine::BareCr),
            (b"a\r", DataLine::Eof),
        ] {
            let got = all_sizes(input, 100).await;
            let last = got.last().map(|(line, _)| *line);
            assert_eq!(last, Some(found), "{:?}", String::from_utf8_lossy(input));
            assert!(
                !got.iter()
                    .any(|(line, text)| *line == DataLine::Complete && text == b"."),
                "no end of data in {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn long_lines_are_dropped_and_reading_goes_on() {
        let got = all_sizes(b"abcd\r\nabcde\r\nabcd\r\n", 4).await;
        assert_eq!(
            got,
            vec![
                complete(b"abcd"),
                (DataLine::TooLong, vec![]),
                complete(b"abcd"),
                (DataLine::Eof, vec![]),
            ]
        );
        // A bare LF is still found inside a line already too long.
        let got = lines(b"abcdefgh\nx\r\n", 4, 3).await;
        assert_eq!(got.last().map(|(line, _)| *line), Some(DataLine::BareLf));
    }

    #[tokio::test]
    async fn discarding_stops_at_the_end_of_input_or_the_byte_limit() {
        let input = vec![b'x'; 100_000];
        let mut reader = BufReader::with_capacity(1000, &input[..]);
        discard_input(&mut reader, Duration::from_secs(60), 10_000).await;
        // The limit is checked between reads of up to 1000 bytes.
        let left = reader.fill_buf().await.map(<[u8]>::len).unwrap_or(0);
        assert!(left > 0, "stopped before the end");
        discard_input(&mut reader, Duration::from_secs(60), u64::MAX).await;
        assert_eq!(reader.fill_buf().await.map(<[u8]>::len).ok(), Some(0));
    }
}
