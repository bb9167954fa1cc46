//! Target `imap_mime`: ENVELOPE, BODY and BODYSTRUCTURE of arbitrary messages.

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::response::Data;

use crate::session::fetch::mime;
use crate::wire;

/// Deeper than this, the structure's nesting would not be bounded by `mime`'s part depth.
const MAX_NESTING: usize = 200;

/// Target `imap_mime`: the input parsed as a message (or not: then the NIL envelope and the
/// empty body, as FETCH sends them), and its ENVELOPE, BODY and BODYSTRUCTURE encoded as one
/// FETCH response. The response must be well-formed IMAP (RFC 3501 §9): one parenthesised
/// list whose strings are correctly quoted (7-bit, no CR, LF or NUL, only `\"` and `\\`
/// escaped) or literals of exactly their announced length without NUL, atoms and numbers
/// between single spaces, balanced parentheses, ending in CRLF; its nesting is bounded and
/// its size within a constant factor of the message's.
pub fn imap_mime(data: &[u8]) {
    let parsed = mime::parse(data);
    let (envelope, body, structure) = match &parsed {
        Some(msg) => (
            mime::envelope(msg),
            mime::body_structure(msg, false),
            mime::body_structure(msg, true),
        ),
        None => (
            mime::empty_envelope(),
            mime::empty_body(),
            mime::empty_body(),
        ),
    };
    let items = Vec1::try_from(vec![
        MessageDataItem::Envelope(envelope),
        MessageDataItem::Body(body),
        MessageDataItem::BodyStructure(structure),
    ])
    .expect("three items");
    let mut out = Vec::new();
    wire::data(
        &mut out,
        Data::Fetch {
            seq: wire::nz(1),
            items,
        },
    );
    let Some(list) = out.strip_prefix(b"* 1 FETCH ") else {
        panic!("not a FETCH response: {:?}", String::from_utf8_lossy(&out))
    };
    let nesting = match well_formed(list) {
        Ok(nesting) => nesting,
        Err(why) => panic!("{why} in {:?}", String::from_utf8_lossy(&out)),
    };
    assert!(nesting <= MAX_NESTING, "nested {nesting} deep");
    assert!(
        out.len() <= 64 * data.len() + 4096,
        "{} bytes for a message of {}",
        out.len(),
        data.len()
    );
}

/// Checks `text` is one IMAP list followed by CRLF; returns its deepest nesting.
fn well_formed(text: &[u8]) -> Result<usize, String> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut at = 0usize;
    // What came last: an opening parenthesis, a closing one, a space, or a value.
    #[derive(PartialEq, Clone, Copy)]
    enum Last {
        Start,
        Open,
        Close,
        Space,
        Value,
    }
    let mut last = Last::Start;
    while let Some(&b) = text.get(at) {
        if depth == 0 && last == Last::Close {
            return if text.get(at..) == Some(b"\r\n") {
                Ok(deepest)
            } else {
                Err(format!("bytes after the list at {at}"))
            };
        }
        let value_may_start = matches!(last, Last::Start | Last::Open | Last::Space);
        match b {
            b'(' => {
                if !(value_may_start || last == Last::Close) {
                    return Err(format!("'(' after a value at {at}"));
                }
                depth += 1;
                deepest = deepest.max(depth);
                last = Last::Open;
                at += 1;
            }
            b')' => {
                if depth == 0 || last == Last::Space {
                    return Err(format!("unbalanced or spaced ')' at {at}"));
                }
                depth -= 1;
                last = Last::Close;
                at += 1;
            }
            b' ' => {
                if !matches!(last, Last::Value | Last::Close) || depth == 0 {
                    return Err(format!("a misplaced space at {at}"));
                }
                last = Last::Space;
                at += 1;
            }
            _ if !value_may_start || depth == 0 => {
                return Err(format!("a value without a separator at {at}"));
            }
            b'"' => {
                at = quoted(text, at + 1)?;
                last = Last::Value;
            }
            b'{' => {
                at = literal(text, at + 1)?;
                last = Last::Value;
            }
            _ => {
                let len = text
                    .get(at..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|&&c| is_atom_char(c))
                    .count();
                if len == 0 {
                    return Err(format!("byte {b:#04x} at {at}"));
                }
                at += len;
                last = Last::Value;
            }
        }
    }
    Err("the list does not end".to_owned())
}

/// After an opening quote: the position after the closing one.
fn quoted(text: &[u8], mut at: usize) -> Result<usize, String> {
    loop {
        match text.get(at) {
            None => return Err("an unterminated quoted string".to_owned()),
            Some(b'"') => return Ok(at + 1),
            Some(b'\\') => match text.get(at + 1) {
                Some(b'"' | b'\\') => at += 2,
                _ => return Err(format!("a bad escape in a quoted string at {at}")),
            },
            Some(&c) if c == 0 || c == b'\r' || c == b'\n' || c >= 0x80 => {
                return Err(format!("byte {c:#04x} in a quoted string at {at}"));
            }
            Some(_) => at += 1,
        }
    }
}

/// After `{`: `n}` CRLF and n bytes without NUL; the position after them.
fn literal(text: &[u8], at: usize) -> Result<usize, String> {
    let rest = text.get(at..).unwrap_or_default();
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let n: usize = std::str::from_utf8(rest.get(..digits).unwrap_or_default())
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("a literal without a length at {at}"))?;
    if rest.get(digits..digits + 3) != Some(b"}\r\n") {
        return Err(format!("a literal's length not followed by CRLF at {at}"));
    }
    let start = at + digits + 3;
    let data = text
        .get(start..start + n)
        .ok_or_else(|| format!("a literal cut short at {at}"))?;
    if data.contains(&0) {
        return Err(format!("NUL in a literal at {at}"));
    }
    Ok(start + n)
}

/// RFC 3501 ATOM-CHAR (what NIL, numbers and item names are made of).
fn is_atom_char(c: u8) -> bool {
    c > 0x20 && c < 0x7f && !b"(){%*\"\\]".contains(&c)
}
