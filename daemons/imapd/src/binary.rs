//! BINARY (RFC 3516): a part's content with its content-transfer-encoding undone (FETCH
//! `BINARY[section]`, `BINARY.SIZE`), and the other way on APPEND: a message sent as a
//! `~{n}` literal8 whose parts hold binary data is stored with those parts in base64, so
//! that BODY[] stays 7-bit text for clients without BINARY (as Dovecot does).
//!
//! Both decoders are lenient, as mail readers are: what does not decode is skipped (base64)
//! or kept as it is (quoted-printable), never an error.

use std::borrow::Cow;

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// A content-transfer-encoding FETCH BINARY does not know (`NO [UNKNOWN-CTE]`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UnknownCte;

/// `body` decoded from the transfer encoding `cte` (a header value; `None` when absent).
pub(crate) fn decode<'a>(body: &'a [u8], cte: Option<&str>) -> Result<Cow<'a, [u8]>, UnknownCte> {
    let cte = cte.map(|c| c.trim().to_ascii_lowercase());
    match cte.as_deref() {
        None | Some("7bit" | "8bit" | "binary" | "") => Ok(Cow::Borrowed(body)),
        Some("base64") => Ok(Cow::Owned(decode_base64(body))),
        Some("quoted-printable") => Ok(Cow::Owned(decode_qp(body))),
        Some(_) => Err(UnknownCte),
    }
}

fn base64_value(b: u8) -> Option<u8> {
    Some(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    })
}

/// Base64 with anything outside the alphabet (line breaks, stray characters) skipped,
/// stopping at the first `=`; a dangling sextet is dropped.
pub(crate) fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in input {
        if b == b'=' {
            break;
        }
        let Some(v) = base64_value(b) else {
            continue;
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7): `=XX` is a byte; whitespace at a line's end is
/// dropped; `=` at a line's end (whitespace after it allowed) joins it to the next; a
/// malformed `=` stays as it is. Lines end in CRLF.
pub(crate) fn decode_qp(input: &[u8]) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16)).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut lines = input.split(|&b| b == b'\n').peekable();
    while let Some(raw) = lines.next() {
        let ended = lines.peek().is_some();
        let mut line = raw.strip_suffix(b"\r").unwrap_or(raw);
        while let [rest @ .., b' ' | b'\t'] = line {
            line = rest;
        }
        let soft = match line {
            [rest @ .., b'='] => {
                line = rest;
                true
            }
            _ => false,
        };
        let mut i = 0;
        while let Some(&b) = line.get(i) {
            match (b, hex(line.get(i + 1)), hex(line.get(i + 2))) {
                (b'=', Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        if ended && !soft {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Base64 in lines of 76 characters, each ended by CRLF.
fn encode_base64(data: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(text.len() + text.len() / 76 * 2 + 2);
    for line in text.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `message` (an APPEND's literal8) with each of its top-level leaf parts that holds a NUL
/// or is declared `binary` re-encoded as base64; `None` when nothing needs it (or it does
/// not parse as a message).
pub(crate) fn to_base64_parts(message: &[u8]) -> Option<Vec<u8>> {
    let parsed = MessageParser::default().parse(message)?;
    // (start, end, replacement) in the raw message, in order.
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for part in &parsed.parts {
        if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
            continue;
        }
        let (start, end) = (part.offset_body as usize, part.offset_end as usize);
        let Some(body) = message.get(start..end.max(start)) else {
            continue;
        };
        let declared = part
            .content_transfer_encoding()
            .map(str::to_ascii_lowercase);
        let binary = declared.as_deref() == Some("binary");
        let plain = matches!(declared.as_deref(), None | Some("7bit" | "8bit"));
        if !(binary || plain && body.contains(&0)) {
            continue;
        }
        // The header's CTE field is replaced, or one is added before the blank line.
        let field = part.headers.iter().find(|h| {
            h.name
                .as_str()
                .eq_ignore_ascii_case("Content-Transfer-Encoding")
        });
        let new_field = b"Content-Transfer-Encoding: base64\r\n".to_vec();
        match field {
            Some(h) => {
                let (from, to) = (h.offset_field as usize, h.offset_end as usize);
                edits.push((from, to, new_field));
            }
            None => {
                let blank = if message.get(..start)?.ends_with(b"\r\n\r\n") {
                    start - 2
                } else if message.get(..start)?.ends_with(b"\n\n") {
                    start - 1
                } else {
                    continue;
                };
                edits.push((blank, blank, new_field));
            }
        }
        edits.push((start, end, encode_base64(body)));
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(from, to, _)| (*from, *to));
    let mut out = Vec::with_capacity(message.len() * 4 / 3 + 64);
    let mut at = 0;
    for (from, to, replacement) in edits {
        if from < at {
            // Overlapping edits would mean offsets we misread: keep the message as sent.
            return None;
        }
        out.extend_from_slice(message.get(at..from)?);
        out.extend_from_slice(&replacement);
        at = to;
    }
    out.extend_from_slice(message.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_encodings_are_undone() {
        assert_eq!(
            decode(b"AC3kDQo=\r\n", Some("BASE64")).as_deref(),
            Ok(&b"\0-\xe4\r\n"[..])
        );
        assert_eq!(
            decode(b"caf=C3=A9 =\r\nsoft =ZZ", Some("quoted-printable")).as_deref(),
            Ok(&b"caf\xc3\xa9 soft =ZZ"[..])
        );
        // imaptest fetch-binary-mime-qp: trailing whitespace, and `=` with some after it.
        assert_eq!(
            decode_qp(b"hello  \r\nbar=\r\n\r\nfoo\t \t= \r\n=62\r\nfoo = \t\nbar\r\n"),
            b"hello\r\nbar\r\nfoo\t \tb\r\nfoo bar\r\n"
        );
        assert_eq!(decode(b"as is", None).as_deref(), Ok(&b"as is"[..]));
        assert_eq!(decode(b"x", Some("x-uuencode")), Err(UnknownCte));
        // Junk and a dangling character are skipped, not an error.
        assert_eq!(decode_base64(b"Zm9v!Y"), b"foo");
    }

    #[test]
    fn binary_parts_are_stored_as_base64() {
        let msg = b"From: a@b\r\nContent-Type: application/octet-stream\r\n\
                    Content-Transfer-Encoding: binary\r\n\r\n\0-\xe4\r\n\r\n";
        let stored = to_base64_parts(msg).expect("converted");
        let text = String::from_utf8(stored.clone()).expect("7-bit now");
        assert!(
            text.contains("Content-Transfer-Encoding: base64\r\n\r\nAC3kDQoNCg==\r\n"),
            "{text:?}"
        );
        assert!(!text.contains("binary"), "{text:?}");
        assert!(text.starts_with("From: a@b\r\nContent-Type: application/octet-stream\r\n"));
        // Text without NULs is left alone.
        assert_eq!(
            to_base64_parts(b"Subject: x\r\n\r\nplain 8bit \xe4\r\n"),
            None
        );
        // A NUL in a part without a CTE: one is added.
        let multi = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
                      Content-Type: text/plain\r\n\r\nok\r\n--b\r\n\
                      Content-Type: application/x\r\n\r\n\0\0\r\n--b--\r\n";
        let stored = String::from_utf8(to_base64_parts(multi).expect("converted")).expect("text");
        assert!(
            stored.contains("Content-Type: text/plain\r\n\r\nok\r\n"),
            "{stored:?}"
        );
        assert!(
            stored.contains("application/x\r\nContent-Transfer-Encoding: base64\r\n\r\nAAA="),
            "{stored:?}"
        );
    }
}
