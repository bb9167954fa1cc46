//! FETCH data built from a message's bytes: ENVELOPE, BODY/BODYSTRUCTURE and BODY[section]
//! extraction, with the MIME structure from `mail-parser`.
//!
//! Message bytes are always in the form clients see: CRLF line ends (a Maildir file may hold
//! bare LFs; RFC822.SIZE counts them as CRLF). [`Crlf`] converts while streaming.

use std::io::Read;

use mail_parser::{
    Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};

use crate::wire::{nstring, string};

/// Deeper MIME nesting than this is shown as an opaque part: a client cannot need more, and
/// the encoder's recursion stays bounded.
const MAX_DEPTH: usize = 40;

/// Converts bare LF to CRLF across chunk boundaries.
#[derive(Default)]
pub struct Crlf {
    after_cr: bool,
}

impl Crlf {
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32);
        let mut rest = input;
        // Whole lines at a time: the common case is long runs without a line end.
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
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

/// Reads a whole message file in CRLF form.
pub fn read_all(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)?;
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    Crlf::default().push(&raw, &mut out);
    Ok(out)
}

/// Reads just the header of a message file (through the blank line), in CRLF form.
pub fn read_header(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the header ends (just after the blank line), for a message without MIME parsing.
pub fn header_len(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 2;
    }
    find(msg, b"\r\n\r\n").map_or(msg.len(), |p| p + 4)
}

pub fn parse(bytes: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(bytes)
}

/// A part addressed by a section's part numbers: the message it belongs to, and its index
/// in that message's parts.
pub struct Located<'m, 'x> {
    pub message: &'m Message<'x>,
    pub part: &'m MessagePart<'x>,
}

/// Finds part `path` (1-based numbers). `None` when there is no such part.
pub fn locate<'m, 'x>(msg: &'m Message<'x>, path: &[u32]) -> Option<Located<'m, 'x>> {
    let mut message = msg;
    let mut part = msg.parts.first()?;
    for (depth, &n) in path.iter().enumerate() {
        let n = n as usize;
        // Inside a message/rfc822 part, numbering continues with that message's body.
        if depth > 0 {
            if let PartType::Message(inner) = &part.body {
                if !same_raw(msg, inner) {
                    return None;
                }
                message = inner;
                part = inner.parts.first()?;
            }
        }
        match &part.body {
            PartType::Multipart(children) => {
                let id = *children.get(n.checked_sub(1)?)?;
                part = message.parts.get(id as usize)?;
            }
            // A non-multipart body has exactly one part, itself.
            _ if n == 1 => {}
            _ => return None,
        }
    }
    Some(Located { message, part })
}

/// A nested message shares its parent's bytes unless it was transfer-encoded.
fn same_raw(outer: &Message<'_>, inner: &Message<'_>) -> bool {
    outer.raw_message.len() == inner.raw_message.len()
        && outer.raw_message.as_ptr() == inner.raw_message.as_ptr()
}

pub fn slice(raw: &[u8], from: u32, to: u32) -> &[u8] {
    let (from, to) = (from as usize, (to as usize).min(raw.len()));
    raw.get(from..to.max(from)).unwrap_or_default()
}

/// The header fields of `header` whose names are (or, with `not`, are not) in `names`,
/// followed by the blank line.
pub fn header_fields(header: &[u8], names: &[Vec<u8>], not: bool) -> Vec<u8> {
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

/// The raw value of the first header field `name` in a part, unfolded and trimmed.
fn raw_header<'r>(raw: &'r [u8], part: &MessagePart<'_>, name: &str) -> Option<Vec<u8>> {
    let h = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let value: &'r [u8] = slice(raw, h.offset_start, h.offset_end);
    let unfolded: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    Some(unfolded.trim_ascii().to_vec())
}

/// ENVELOPE of a message (RFC 3501 §7.4.2).
pub fn envelope(out: &mut Vec<u8>, msg: &Message<'_>) {
    let raw = &msg.raw_message[..];
    let Some(top) = msg.parts.first() else {
        out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
        return;
    };
    out.push(b'(');
    nstring(out, raw_header(raw, top, "Date").as_deref());
    out.push(b' ');
    nstring(out, raw_header(raw, top, "Subject").as_deref());
    let from = msg.from();
    for (i, list) in [
        from,
        msg.sender().or(from),
        msg.reply_to().or(from),
        msg.to(),
        msg.cc(),
        msg.bcc(),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = i;
        out.push(b' ');
        addresses(out, list);
    }
    out.push(b' ');
    nstring(out, raw_header(raw, top, "In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw_header(raw, top, "Message-ID").as_deref());
    out.push(b')');
}

fn addresses(out: &mut Vec<u8>, list: Option<&Address<'_>>) {
    let mut items = Vec::new();
    match list {
        Some(Address::List(addrs)) => {
            for a in addrs {
                items.push(address(a.name.as_deref(), a.address.as_deref()));
            }
        }
        Some(Address::Group(groups)) => {
            for g in groups {
                match &g.name {
                    Some(name) => {
                        let mut start = b"(NIL NIL ".to_vec();
                        string(&mut start, encode_word(name).as_bytes());
                        start.extend_from_slice(b" NIL)");
                        items.push(start);
                        for a in &g.addresses {
                            items.push(address(a.name.as_deref(), a.address.as_deref()));
                        }
                        items.push(b"(NIL NIL NIL NIL)".to_vec());
                    }
                    None => {
                        for a in &g.addresses {
                            items.push(address(a.name.as_deref(), a.address.as_deref()));
                        }
                    }
                }
            }
        }
        None => {}
    }
    if items.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for item in items {
        out.extend_from_slice(&item);
    }
    out.push(b')');
}

fn address(name: Option<&str>, addr: Option<&str>) -> Vec<u8> {
    let mut out = b"(".to_vec();
    nstring(
        &mut out,
        name.map(encode_word).as_deref().map(str::as_bytes),
    );
    out.extend_from_slice(b" NIL ");
    let (mailbox, host) = match addr {
        Some(a) => match a.rsplit_once('@') {
            Some((m, h)) => (Some(m), Some(h)),
            None => (Some(a), None),
        },
        None => (None, None),
    };
    nstring(&mut out, mailbox.map(str::as_bytes));
    out.push(b' ');
    nstring(&mut out, host.map(str::as_bytes));
    out.push(b')');
    out
}

/// mail-parser decodes display names; IMAP wants them as in the header, so a non-ASCII one is
/// encoded again (RFC 2047) rather than sent as 8-bit.
fn encode_word(s: &str) -> String {
    if s.is_ascii() {
        return s.to_owned();
    }
    use base64::Engine;
    format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    )
}

/// BODYSTRUCTURE (`extended`) or BODY of a message.
pub fn body_structure(out: &mut Vec<u8>, msg: &Message<'_>, extended: bool) {
    match msg.parts.first() {
        Some(part) => part_structure(out, msg, part, extended, 0),
        None => out.extend_from_slice(
            b"(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 0 0)",
        ),
    }
}

fn part_structure(
    out: &mut Vec<u8>,
    msg: &Message<'_>,
    part: &MessagePart<'_>,
    extended: bool,
    depth: usize,
) {
    let raw = &msg.raw_message[..];
    let ct = part.content_type();
    if let (PartType::Multipart(children), true) = (&part.body, depth < MAX_DEPTH) {
        out.push(b'(');
        let mut any = false;
        for &id in children {
            if let Some(child) = msg.parts.get(id as usize) {
                part_structure(out, msg, child, extended, depth + 1);
                any = true;
            }
        }
        if !any {
            // RFC 3501 needs at least one body in a multipart: an empty text part.
            out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        }
        out.push(b' ');
        let subtype = ct
            .and_then(|c| c.c_subtype.as_deref())
            .unwrap_or("MIXED")
            .to_ascii_uppercase();
        string(out, subtype.as_bytes());
        if extended {
            out.push(b' ');
            params(out, ct.and_then(|c| c.attributes.as_deref()));
            out.push(b' ');
            disposition(out, part);
            out.extend_from_slice(b" NIL NIL");
        }
        out.push(b')');
        return;
    }
    let (ty, subtype) = match ct {
        Some(c) => (
            c.c_type.to_ascii_uppercase(),
            c.c_subtype
                .as_deref()
                .map(str::to_ascii_uppercase)
                .unwrap_or_else(|| default_subtype(&c.c_type)),
        ),
        None => ("TEXT".to_owned(), "PLAIN".to_owned()),
    };
    let body = slice(raw, part.offset_body, part.offset_end);
    out.push(b'(');
    string(out, ty.as_bytes());
    out.push(b' ');
    string(out, subtype.as_bytes());
    out.push(b' ');
    match ct.and_then(|c| c.attributes.as_deref()) {
        Some(a) if !a.is_empty() => params(out, Some(a)),
        _ if ty == "TEXT" => out.extend_from_slice(b"(\"CHARSET\" \"US-ASCII\")"),
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, raw_header(raw, part, "Content-ID").as_deref());
    out.push(b' ');
    nstring(out, raw_header(raw, part, "Content-Description").as_deref());
    out.push(b' ');
    let encoding = part
        .content_transfer_encoding()
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| "7BIT".to_owned());
    string(out, encoding.as_bytes());
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    // A last line without its CRLF (the one before a boundary belongs to the boundary)
    // still counts.
    let lines = body.iter().filter(|&&b| b == b'\n').count()
        + usize::from(!body.is_empty() && !body.ends_with(b"\n"));
    match &part.body {
        PartType::Message(inner) if same_raw(msg, inner) && depth < MAX_DEPTH => {
            out.push(b' ');
            envelope(out, inner);
            out.push(b' ');
            match inner.parts.first() {
                Some(p) => part_structure(out, inner, p, extended, depth + 1),
                None => body_structure(out, inner, extended),
            }
            out.extend_from_slice(format!(" {lines}").as_bytes());
        }
        _ if ty == "TEXT" => out.extend_from_slice(format!(" {lines}").as_bytes()),
        _ => {}
    }
    if extended {
        out.push(b' ');
        nstring(out, raw_header(raw, part, "Content-MD5").as_deref());
        out.push(b' ');
        disposition(out, part);
        out.push(b' ');
        match raw_header(raw, part, "Content-Language") {
            Some(l) => string(out, &l),
            None => out.extend_from_slice(b"NIL"),
        }
        out.push(b' ');
        nstring(out, raw_header(raw, part, "Content-Location").as_deref());
    }
    out.push(b')');
}

fn default_subtype(ty: &str) -> String {
    match ty.to_ascii_lowercase().as_str() {
        "text" => "PLAIN",
        "message" => "RFC822",
        _ => "OCTET-STREAM",
    }
    .to_owned()
}

fn params(out: &mut Vec<u8>, attrs: Option<&[mail_parser::Attribute<'_>]>) {
    match attrs {
        Some(a) if !a.is_empty() => {
            out.push(b'(');
            for (i, attr) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, attr.name.to_ascii_uppercase().as_bytes());
                out.push(b' ');
                string(out, attr.value.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

fn disposition(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    match part.content_disposition() {
        Some(d) => {
            out.push(b'(');
            string(out, d.c_type.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            params(out, d.attributes.as_deref());
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

/// The values of header field `name` for SEARCH, raw and decoded.
pub fn header_text(msg: &Message<'_>, name: &str) -> Vec<Vec<u8>> {
    let raw = &msg.raw_message[..];
    let Some(top) = msg.parts.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in top
        .headers
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
    {
        // The raw bytes, and the decoded text where mail-parser has it (encoded words).
        out.push(slice(raw, h.offset_start, h.offset_end).to_vec());
        if let HeaderValue::Text(t) = &h.value {
            out.push(t.as_bytes().to_vec());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.org, \"B, C\" <c@x.org>\r\nSubject: =?utf-8?q?h=C3=A9?=\r\nMessage-ID: <1@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: x@y\r\n\r\ninner body\r\n--b--\r\n";

    #[test]
    fn structure_and_envelope() {
        let msg = parse(MIXED).unwrap();
        let mut out = Vec::new();
        envelope(&mut out, &msg);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "(NIL \"=?utf-8?q?h=C3=A9?=\" ((\"Alice\" NIL \"alice\" \"example.org\"))"
            ),
            "{text}"
        );
        assert!(
            text.contains("((NIL NIL \"bob\" \"example.org\")(\"B, C\" NIL \"c\" \"x.org\"))"),
            "{text}"
        );
        assert!(text.ends_with("NIL \"<1@x>\")"), "{text}");
        let mut out = Vec::new();
        body_structure(&mut out, &msg, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 12 2)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" "), "{text}");
        assert!(text.ends_with(" \"MIXED\")"), "{text}");

        let part = locate(&msg, &[1]).unwrap();
        assert_eq!(
            slice(
                &msg.raw_message,
                part.part.offset_body,
                part.part.offset_end
            ),
            b"hello\r\nworld"
        );
        let inner = locate(&msg, &[2]).unwrap();
        assert!(slice(
            &msg.raw_message,
            inner.part.offset_body,
            inner.part.offset_end
        )
        .starts_with(b"Subject: inner"));
        let inner_body = locate(&msg, &[2, 1]).unwrap();
        assert_eq!(
            slice(
                &msg.raw_message,
                inner_body.part.offset_body,
                inner_body.part.offset_end
            ),
            b"inner body"
        );
        assert!(locate(&msg, &[3]).is_none());
        assert!(locate(&msg, &[1, 1]).is_some());
        assert!(locate(&msg, &[1, 2]).is_none());
    }

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
    fn deep_nesting_is_bounded() {
        let mut m = Vec::new();
        for i in 0..200 {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        m.extend_from_slice(b"Content-Type: text/plain\r\n\r\nx\r\n");
        let msg = parse(&m).unwrap();
        let mut out = Vec::new();
        body_structure(&mut out, &msg, true);
        assert!(out.len() < 100_000);
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
}
