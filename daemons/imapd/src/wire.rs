//! Writing IMAP data: strings (quoted or literal), NIL, flag lists and dates.

use std::time::{SystemTime, UNIX_EPOCH};

use inetkit_common::mail::Flags;

use crate::keywords::Keywords;

/// Appends an IMAP string: quoted when it is short 7-bit text, a literal otherwise.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() <= 1024
        && s.iter()
            .all(|&b| b.is_ascii() && b != 0 && b != b'\r' && b != b'\n');
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// An nstring: NIL for `None`.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// The system flags in Maildir letter order and their IMAP names.
pub const SYSTEM_FLAGS: [(Flags, &str); 5] = [
    (Flags::DRAFT, "\\Draft"),
    (Flags::FLAGGED, "\\Flagged"),
    (Flags::REPLIED, "\\Answered"),
    (Flags::SEEN, "\\Seen"),
    (Flags::TRASHED, "\\Deleted"),
];

/// `(\Seen \Answered $Forwarded)`, with `\Recent` when asked.
pub fn flag_list(flags: Flags, recent: bool, keywords: &Keywords) -> String {
    let mut names: Vec<&str> = SYSTEM_FLAGS
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, name)| *name)
        .collect();
    if recent {
        names.push("\\Recent");
    }
    for n in 0..26u8 {
        if let Some(f) = Flags::keyword(n) {
            if flags.contains(f) {
                if let Some(name) = keywords.name(n) {
                    names.push(name);
                }
            }
        }
    }
    format!("({})", names.join(" "))
}

/// INTERNALDATE: `"17-Jul-1996 02:44:25 +0000"` (we keep UTC).
pub fn internal_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let dt = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "\"{:02}-{}-{} {:02}:{:02}:{:02} +0000\"",
        dt.day(),
        MONTHS[usize::from(u8::from(dt.month())) - 1],
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// The (ASCII) tag at the start of a command line, for replies to lines that did not parse.
pub fn tag_of(line: &[u8]) -> String {
    let tag: String = line
        .iter()
        .take_while(|&&b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b))
        .take(64)
        .map(|&b| char::from(b))
        .collect();
    if tag.is_empty() {
        "*".to_owned()
    } else {
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\"\\");
        assert_eq!(out, b"\"a \\\"b\\\"\\\\\"");
        out.clear();
        string(&mut out, "ü".as_bytes());
        assert_eq!(out, b"{2}\r\n\xc3\xbc");
        out.clear();
        nstring(&mut out, None);
        assert_eq!(out, b"NIL");
    }

    #[test]
    fn dates() {
        assert_eq!(
            internal_date(UNIX_EPOCH + std::time::Duration::from_secs(837571465)),
            "\"17-Jul-1996 02:44:25 +0000\""
        );
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of(b"a1 NOOP"), "a1");
        assert_eq!(tag_of(b"\x00\x01"), "*");
        assert_eq!(tag_of(b"x{5}"), "x");
    }
}
