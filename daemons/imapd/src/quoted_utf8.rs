//! IMAP4rev2's UTF-8 in quoted strings (RFC 9051 §4.3: `QUOTED-CHAR =/ UTF8-2 / UTF8-3 /
//! UTF8-4`), which imap-codec 2.0.0-alpha.10 refuses: before a command of an IMAP4rev2
//! session is decoded, each quoted string holding 8-bit bytes is rewritten as the LITERAL+
//! literal of the same text (`"Entwürfe"` → `{9+}\r\nEntwürfe`), which every parser here
//! takes. A rev1 session never comes here: its quoted strings stay 7-bit, as RFC 3501 wants.
//!
//! imap-codec's `ext_utf8` feature would accept such strings itself, but in every session
//! (rev1 too) and only in imap-codec's grammar, not in the parsers of our own extensions
//! (NOTIFY, LIST-EXTENDED, SEARCH's RETURN); a literal reaches all of them.
//!
//! The input is a whole command as the reader assembled it (each line's CRLF, literals after
//! their `{n}` line). Literals are stepped over as the reader read them, so their bytes are
//! never taken for quotes. Anything malformed (an unterminated string, an escape other than
//! `\"` and `\\`, a quote inside an atom) is left as it is for the decoder to refuse: the
//! rewriting never turns a broken command into a valid one.

use std::borrow::Cow;

/// Why a command was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A quoted string's 8-bit bytes are not UTF-8 (a BAD).
    NotUtf8,
    /// Rewritten, the command would be longer than the limit (a BAD).
    TooLong,
    /// The memory for the rewritten copy was not granted (a NO [LIMIT]).
    Busy,
}

/// `command` with its quoted 8-bit strings as literals, no longer than `limit` bytes. A
/// rewritten command is a new copy (as large as the command, literals included): `grant`
/// is asked for its size before it is allocated.
pub(crate) fn to_literals(
    command: &[u8],
    limit: usize,
    grant: impl FnOnce(usize) -> bool,
) -> Result<Cow<'_, [u8]>, Refused> {
    // Most commands have no 8-bit byte at all, and then nothing to do.
    if command.is_ascii() {
        return Ok(Cow::Borrowed(command));
    }
    let mut rewrites: Vec<(usize, Quoted)> = Vec::new();
    let mut i = 0;
    while let Some(&b) = command.get(i) {
        match b {
            b'"' => {
                let Some(quoted) = quoted_at(command, i) else {
                    return Ok(Cow::Borrowed(command));
                };
                let next = quoted.end;
                if quoted.eight_bit {
                    if std::str::from_utf8(&quoted.text).is_err() {
                        return Err(Refused::NotUtf8);
                    }
                    rewrites.push((i, quoted));
                }
                i = next;
            }
            b'{' => match literal_at(command, i) {
                Literal::Not => i += 1,
                Literal::Ends(end) => i = end,
                // Not as the reader assembles commands: left for the decoder to refuse (a
                // rewrite could make it long enough, and a literal of what were commands).
                Literal::Truncated => return Ok(Cow::Borrowed(command)),
            },
            _ => i += 1,
        }
    }
    if rewrites.is_empty() {
        return Ok(Cow::Borrowed(command));
    }
    let headers: Vec<String> = rewrites
        .iter()
        .map(|(_, q)| format!("{{{}+}}\r\n", q.text.len()))
        .collect();
    let mut len = command.len();
    for ((start, q), header) in rewrites.iter().zip(&headers) {
        // The strings lie apart within the command: what is taken out is still counted.
        len = len.saturating_sub(q.end - start) + header.len() + q.text.len();
    }
    if len > limit {
        return Err(Refused::TooLong);
    }
    if !grant(len) {
        return Err(Refused::Busy);
    }
    let mut out = Vec::with_capacity(len);
    let mut copied = 0;
    for ((start, q), header) in rewrites.iter().zip(&headers) {
        out.extend_from_slice(command.get(copied..*start).unwrap_or_default());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&q.text);
        copied = q.end;
    }
    out.extend_from_slice(command.get(copied..).unwrap_or_default());
    Ok(Cow::Owned(out))
}

/// A quoted string: its text (escapes undone), whether that has 8-bit bytes, and the index
/// just past its closing quote.
struct Quoted {
    text: Vec<u8>,
    eight_bit: bool,
    end: usize,
}

/// The quoted string opening at `start`, when it is one a rewrite may touch: it stands where
/// a string may (after a space or `(`), ends on the same line, and escapes only `"` and `\`.
fn quoted_at(command: &[u8], start: usize) -> Option<Quoted> {
    let before = start.checked_sub(1).and_then(|at| command.get(at));
    if !matches!(before, Some(b' ' | b'(')) {
        return None;
    }
    let mut text = Vec::new();
    let mut i = start + 1;
    loop {
        match *command.get(i)? {
            b'"' => break,
            b'\\' => {
                let escaped = *command.get(i + 1)?;
                if !matches!(escaped, b'"' | b'\\') {
                    return None;
                }
                text.push(escaped);
                i += 2;
            }
            b'\r' | b'\n' | 0 => return None,
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    let eight_bit = !text.is_ascii();
    Some(Quoted {
        text,
        eight_bit,
        end: i + 1,
    })
}

/// What a `{` opens.
enum Literal {
    /// No literal: an ordinary byte.
    Not,
    /// A literal whose data ends here.
    Ends(usize),
    /// A literal announced longer than the rest of the command.
    Truncated,
}

/// The literal announced at `open`: `{n}` or `{n+}` ending a line, as the command reader
/// takes it (`~{n}` included: the `~` is an ordinary byte here).
fn literal_at(command: &[u8], open: usize) -> Literal {
    let Some(rest) = command.get(open + 1..) else {
        return Literal::Not;
    };
    let Some(close) = rest.iter().position(|&b| b == b'}') else {
        return Literal::Not;
    };
    let inner = rest.get(..close).unwrap_or_default();
    let digits = inner.strip_suffix(b"+").unwrap_or(inner);
    // As the reader: at most 10 digits (its lengths fit a u64).
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Literal::Not;
    }
    let after = open + 1 + close + 1;
    if command.get(after..after + 2) != Some(b"\r\n".as_slice()) {
        return Literal::Not;
    }
    let n: Option<usize> = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok());
    match n.and_then(|n| (after + 2).checked_add(n)) {
        Some(end) if end <= command.len() => Literal::Ends(end),
        _ => Literal::Truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(command: &str) -> Result<String, Refused> {
        to_literals(command.as_bytes(), 1 << 20, |_| true)
            .map(|bytes| String::from_utf8(bytes.into_owned()).expect("UTF-8"))
    }

    #[test]
    fn seven_bit_commands_are_left_alone() {
        let command = b"a SELECT \"Entw&APw-rfe\"\r\n";
        assert!(matches!(
            to_literals(command, 100, |_| panic!("no copy")),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn an_eight_bit_quoted_string_becomes_a_literal() {
        assert_eq!(
            rewrite("a SELECT \"Entwürfe\"\r\n").as_deref(),
            Ok("a SELECT {9+}\r\nEntwürfe\r\n")
        );
        // Several strings, escapes undone in the literal, 7-bit strings kept quoted.
        assert_eq!(
            rewrite("a RENAME \"ä\\\"b\\\\\" \"x\"\r\n").as_deref(),
            Ok("a RENAME {5+}\r\nä\"b\\ \"x\"\r\n")
        );
        assert_eq!(
            rewrite("a SEARCH CHARSET UTF-8 (SUBJECT \"Grüße\")\r\n").as_deref(),
            Ok("a SEARCH CHARSET UTF-8 (SUBJECT {7+}\r\nGrüße)\r\n")
        );
        assert_eq!(
            rewrite("a LIST \"\" \"日本*\"\r\n").as_deref(),
            Ok("a LIST \"\" {7+}\r\n日本*\r\n")
        );
    }

    #[test]
    fn literals_are_stepped_over() {
        // A literal's bytes that look like a quoted 8-bit string stay as they are.
        let command = "a APPEND x {8}\r\n\"Grüß\"\r\n";
        assert_eq!(rewrite(command).as_deref(), Ok(command));
        let command = "a APPEND x ~{8+}\r\n\"Grüß\"\r\n";
        assert_eq!(rewrite(command).as_deref(), Ok(command));
        // After a literal, a quoted string is rewritten.
        assert_eq!(
            rewrite("a RENAME {1}\r\nx \"é\"\r\n").as_deref(),
            Ok("a RENAME {1}\r\nx {2+}\r\né\r\n")
        );
        // A brace that opens no literal is an ordinary byte.
        assert_eq!(
            rewrite("a X {1a} \"é\"\r\n").as_deref(),
            Ok("a X {1a} {2+}\r\né\r\n")
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            to_literals(b"a SELECT \"Entw\xfcrfe\"\r\n", 100, |_| true),
            Err(Refused::NotUtf8)
        );
        // Cut in the middle of a character.
        assert_eq!(
            to_literals(b"a SELECT \"\xc3\"\r\n", 100, |_| true),
            Err(Refused::NotUtf8)
        );
    }

    #[test]
    fn malformed_strings_are_left_for_the_decoder() {
        for command in [
            "a SELECT \"Entwürfe\r\n",
            "a SELECT \"Entw\\ürfe\"\r\n",
            "a SELECT x\"ü\"\r\n",
            "a SELECT \"ü{3}\r\nabc\"\r\n",
        ] {
            assert_eq!(rewrite(command).as_deref(), Ok(command), "{command:?}");
        }
        // A literal announced longer than the command (never so from the reader): nothing
        // read past the end, and nothing rewritten, which would lengthen the command until
        // the literal swallowed what came after it (found by the imap_quoted_utf8 target).
        for command in ["a X {99}\r\nü", "a X {12}\r\nx (\"ü\")\r\n"] {
            assert_eq!(rewrite(command).as_deref(), Ok(command), "{command:?}");
        }
    }

    #[test]
    fn the_limit_holds() {
        let command = "a SELECT \"ü\"\r\n";
        assert!(to_literals(command.as_bytes(), command.len() + 10, |_| true).is_ok());
        assert_eq!(
            to_literals(command.as_bytes(), command.len(), |_| true),
            Err(Refused::TooLong)
        );
        // Many short strings grow a command the most: still bounded by the limit.
        let many = format!("a X{}\r\n", " \"é\"".repeat(10_000));
        // Each ` "é"` (5 bytes) becomes ` {2+}\r\né` (9 bytes).
        let grown = many.len() + 4 * 10_000;
        assert_eq!(
            to_literals(many.as_bytes(), grown - 1, |_| true),
            Err(Refused::TooLong)
        );
        assert_eq!(
            to_literals(many.as_bytes(), grown, |_| true).map(|c| c.len()),
            Ok(grown)
        );
    }

    #[test]
    fn the_copy_is_granted_first() {
        let command = "a SELECT \"ü\"\r\n";
        let mut asked = 0;
        let refused = to_literals(command.as_bytes(), 100, |n| {
            asked = n;
            false
        });
        assert_eq!(refused, Err(Refused::Busy));
        assert_eq!(asked, "a SELECT {2+}\r\nü\r\n".len());
    }

    #[test]
    fn the_rewrite_decodes() {
        use imap_codec::decode::Decoder;
        use imap_codec::imap_types::command::CommandBody;
        use imap_codec::imap_types::mailbox::Mailbox;
        use imap_codec::CommandCodec;
        let bytes =
            to_literals("a CREATE \"Entwürfe\"\r\n".as_bytes(), 100, |_| true).expect("rewritten");
        let (_, command) = CommandCodec::default().decode(&bytes).expect("decodes");
        let CommandBody::Create {
            mailbox: Mailbox::Other(name),
        } = command.body
        else {
            panic!("{command:?}");
        };
        assert_eq!(name.as_ref(), "Entwürfe".as_bytes());
    }
}
