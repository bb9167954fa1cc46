//! Message bytes in the form clients see: CRLF line ends (a Maildir file may hold bare LFs;
//! RFC822.SIZE counts them as CRLF). [`Crlf`] converts while streaming; whole files, headers
//! and byte ranges are read through it. Header splitting without MIME parsing is here too.

use std::io::Read;

/// Converts bare LF to CRLF across chunk boundaries.
#[derive(Default)]
pub(crate) struct Crlf {
    after_cr: bool,
}

impl Crlf {
    pub(crate) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // Mail a client stored (APPEND) is CRLF already: one copy, after a vectorised look
        // for a bare LF.
        if !has_bare_lf(input, self.after_cr) {
            out.extend_from_slice(input);
            if let Some(&last) = input.last() {
                self.after_cr = last == b'\r';
            }
            return;
        }
        out.reserve(input.len() + input.len() / 32);
        let mut rest = input;
        // Whole lines at a time: the common case is long runs without a line end.
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let line = &rest[..i];
            out.extend_from_slice(line);
            let cr_before = match line.last() {
                Some(&b) => b == b'\r',
                None => self.after_cr,
            };
            if !cr_before {
                out.push(b'\r');
            }
            out.push(b'\n');
            self.after_cr = false;
            rest = &rest[i + 1..];
        }
        out.extend_from_slice(rest);
        if let Some(&last) = rest.last() {
            self.after_cr = last == b'\r';
        }
    }
}

/// Whether `input` has an LF without a CR before it (`after_cr`: the byte before `input` was
/// a CR).
fn has_bare_lf(input: &[u8], after_cr: bool) -> bool {
    memchr::memchr_iter(b'\n', input).any(|i| match i.checked_sub(1) {
        Some(before) => input.get(before) != Some(&b'\r'),
        None => !after_cr,
    })
}

/// Reads a whole message file in CRLF form (as read, when it is CRLF already).
pub(crate) fn read_all(file: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)?;
    if !has_bare_lf(&raw, false) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    Crlf::default().push(&raw, &mut out);
    Ok(out)
}

/// Reads just the header of a message file (through the blank line), in CRLF form.
pub(crate) fn read_header(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut conv = Crlf::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let from = out.len().saturating_sub(3);
        conv.push(&buf[..n], &mut out);
        if let Some(pos) = find(&out[from..], b"\r\n\r\n") {
            out.truncate(from + pos + 4);
            return Ok(out);
        }
        if out.starts_with(b"\r\n") {
            out.truncate(2);
            return Ok(out);
        }
    }
}

/// Reads bytes `start..start + want` of a message file in CRLF form, a chunk at a time. A
/// file that ends early (or could not be opened or read) is padded with spaces to `want`:
/// the literal's length was promised already.
pub(crate) struct RangeReader {
    file: Option<std::fs::File>,
    conv: Crlf,
    /// CRLF bytes converted so far.
    pos: u64,
    start: u64,
    left: u64,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl RangeReader {
    pub(crate) fn new(file: Option<std::fs::File>, start: u64, want: u64) -> RangeReader {
        RangeReader {
            file,
            conv: Crlf::default(),
            pos: 0,
            start,
            left: want,
            buf: vec![0; CHUNK],
            chunk: Vec::with_capacity(CHUNK + CHUNK / 16),
        }
    }

    /// Appends the next piece to `out` (NULs as 0x80, as in any literal); false when all was
    /// given.
    pub(crate) fn next_into(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            if self.left == 0 {
                return false;
            }
            let n = match self.file.as_mut().map(|f| f.read(&mut self.buf)) {
                Some(Ok(n)) => n,
                _ => 0,
            };
            if n == 0 {
                let pad = self.left.min(CHUNK as u64);
                out.resize(out.len() + pad as usize, b' ');
                self.left -= pad;
                self.file = None;
                return true;
            }
            self.chunk.clear();
            self.conv.push(&self.buf[..n], &mut self.chunk);
            let chunk_start = self.pos;
            self.pos += self.chunk.len() as u64;
            if self.pos <= self.start {
                continue;
            }
            let from = self.start.saturating_sub(chunk_start) as usize;
            let take = ((self.chunk.len() - from) as u64).min(self.left) as usize;
            let at = out.len();
            out.extend_from_slice(&self.chunk[from..from + take]);
            crate::wire::replace_nuls(&mut out[at..]);
            self.left -= take as u64;
            return true;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Where the header ends (just after the blank line), for a message without MIME parsing.
pub(crate) fn header_len(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 2;
    }
    find(msg, b"\r\n\r\n").map_or(msg.len(), |p| p + 4)
}

/// The header fields of `header` whose names are (or, with `not`, are not) in `names`,
/// followed by the blank line.
pub(crate) fn header_fields(header: &[u8], names: &[Vec<u8>], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let name = name.trim_ascii();
            keep = names.iter().any(|n| n.eq_ignore_ascii_case(name)) != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let h = b"Subject: a\r\n b\r\nFrom: x\r\nTo: y\r\n\r\n";
        assert_eq!(
            header_fields(h, &[b"subject".to_vec()], false),
            b"Subject: a\r\n b\r\n\r\n"
        );
        assert_eq!(
            header_fields(h, &[b"subject".to_vec()], true),
            b"From: x\r\nTo: y\r\n\r\n"
        );
        assert_eq!(header_len(b"A: b\r\n\r\nbody"), 8);
    }

    #[test]
    fn crlf() {
        let mut out = Vec::new();
        let mut c = Crlf::default();
        c.push(b"a\nb\r", &mut out);
        c.push(b"\nc\n", &mut out);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
        let mut out = Vec::new();
        let mut c = Crlf::default();
        for chunk in [&b"x\r"[..], b"", b"\n\n", b"y\r\n", b"\r", b"z"] {
            c.push(chunk, &mut out);
        }
        assert_eq!(out, b"x\r\n\r\ny\r\n\rz");
    }

    /// Any text cut into any chunks converts as a byte-at-a-time reading of the rule does
    /// (the all-CRLF fast path and the line-by-line way alike).
    #[test]
    fn crlf_matches_the_rule_for_any_chunking() {
        let reference = |input: &[u8]| {
            let mut out = Vec::new();
            let mut prev = None;
            for &b in input {
                if b == b'\n' && prev != Some(b'\r') {
                    out.push(b'\r');
                }
                out.push(b);
                prev = Some(b);
            }
            out
        };
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| [b'\r', b'\n', b'a', b'\r'][(next() % 4) as usize])
                .collect();
            let mut out = Vec::new();
            let mut c = Crlf::default();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at((next() as usize % rest.len()) + 1);
                c.push(chunk, &mut out);
                rest = tail;
            }
            assert_eq!(out, reference(&input), "{input:?}");
        }
    }
}
