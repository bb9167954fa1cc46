//! What the fuzz targets in `fuzz/` run, and the replay of their checked-in corpus.
//!
//! Every crate with a parser that network bytes or a file reach has such a module (behind its
//! `fuzzing` feature, and in its own tests): one function per target that runs the parser on
//! arbitrary bytes and asserts what must hold for every input (no panic, the bounds, round
//! trips, agreement with a simpler model). The libFuzzer targets call these functions, and
//! each crate's `cargo test` calls [`replay`] on the same function, so every seed and every
//! input that ever failed (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) is checked
//! on stable without libFuzzer.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::lines::{read_line, DotStuffer, Line};

/// Runs a future that never waits (its I/O reads from memory) to its end.
///
/// # Panics
/// If the future is pending: it waited for something that will never come.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an in-memory future waited"),
    }
}

/// Feeds every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` to `run`
/// (`crate_dir` is the calling crate's `CARGO_MANIFEST_DIR`; the `fuzz/` directory is found
/// above it). Returns how many inputs ran.
///
/// # Panics
/// When the corpus directory is missing or empty (a renamed target must not silently replay
/// nothing), or when `run` panics on an input (its file name is printed first).
pub fn replay(crate_dir: &str, target: &str, run: impl Fn(&[u8])) -> usize {
    let fuzz = Path::new(crate_dir)
        .ancestors()
        .map(|dir| dir.join("fuzz"))
        .find(|dir| dir.join("corpus").is_dir())
        .unwrap_or_else(|| panic!("no fuzz/corpus above {crate_dir}"));
    let mut inputs: Vec<PathBuf> = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert!(kind == "regressions", "no corpus at {}", dir.display());
            continue;
        };
        inputs.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "the corpus of {target} is empty");
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        run(&data);
    }
    inputs.len()
}

/// `line` with the case of the letters from `from` to the next space swapped: a command line
/// whose keyword must parse the same in either case (POP3, SMTP, FTP).
pub fn keyword_case_swapped(line: &[u8], from: usize) -> Vec<u8> {
    let mut swapped = line.to_vec();
    for b in swapped
        .iter_mut()
        .skip(from)
        .take_while(|b| **b != b' ')
        .filter(|b| b.is_ascii_alphabetic())
    {
        *b ^= 0x20;
    }
    swapped
}

/// Splits the first byte off `data` as a small parameter (0 for empty input).
pub fn take_byte(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, data),
    }
}

/// Target `line_reader`: [`read_line`] with a limit and a read buffer size taken from the
/// first two bytes, over the rest. What it returns must be exactly what splitting the input at
/// LF says (one CR before the LF dropped, lines over the limit `TooLong`, a last line without
/// LF dropped), whatever the buffer size, and its buffer never grows past about twice the
/// limit.
pub fn line_reader(data: &[u8]) {
    let (max, data) = take_byte(data);
    let (buf_size, input) = take_byte(data);
    let max = usize::from(max) + 1;
    let buf_size = usize::from(buf_size % 64) + 1;

    let mut expected: Vec<(Line, Vec<u8>)> = Vec::new();
    let mut rest = input;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let (line, after) = rest.split_at(end);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        expected.push(if line.len() > max {
            (Line::TooLong, Vec::new())
        } else {
            (Line::Complete, line.to_vec())
        });
        rest = after.get(1..).unwrap_or_default();
    }

    let mut reader = tokio::io::BufReader::with_capacity(buf_size, input);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    loop {
        let line = block_on(read_line(&mut reader, &mut buf, max)).expect("reading memory");
        assert!(
            buf.capacity() <= 2 * (max + 1) + 16,
            "buffer of {} for a limit of {max}",
            buf.capacity()
        );
        if line == Line::Eof {
            break;
        }
        got.push((line, buf.clone()));
    }
    assert_eq!(got, expected, "limit {max}, buffer {buf_size}");
}

/// Target `dot_stuffer`: [`DotStuffer`] over the input cut into chunks (sizes from the first
/// byte). The output is the same however the input is cut, every LF in it follows a CR, no
/// line before the end is a lone `.`, it ends with the `.` line, and undoing the stuffing
/// gives back the input with its line ends made CRLF.
pub fn dot_stuffer(data: &[u8]) {
    let (cut, input) = take_byte(data);
    let stuff = |chunk: usize| {
        let mut stuffer = DotStuffer::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            stuffer.push(piece, &mut out);
        }
        stuffer.finish(&mut out);
        out
    };
    let whole = stuff(input.len());
    assert_eq!(stuff(usize::from(cut % 16) + 1), whole, "chunked by {cut}");

    let body = whole
        .strip_suffix(b".\r\n")
        .expect("ends with the dot line");
    assert!(body.is_empty() || body.ends_with(b"\r\n"));
    let mut unstuffed = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "a bare LF in {line:?}");
        assert_ne!(line, b".\r\n", "a lone dot before the end");
        unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    // The input with every line ended by CRLF: an LF gets its CR, a last line without LF its
    // CRLF (a CR it ends with is taken as the start of that CRLF).
    let mut expected = Vec::new();
    for line in input.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        expected.extend_from_slice(text.strip_suffix(b"\r").unwrap_or(text));
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(unstuffed, expected);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_reader_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "line_reader", line_reader) > 0);
    }

    #[test]
    fn dot_stuffer_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "dot_stuffer", dot_stuffer) > 0);
    }
}
