//! Entry (and fuzz target) `imap_quoted_utf8`: an IMAP4rev2 command's quoted UTF-8 strings
//! turned into literals before decoding ([`crate::quoted_utf8`]).

use std::borrow::Cow;

use crate::quoted_utf8::{to_literals, Refused};

/// The input as a whole command, under a loose limit and under one as long as the input. A
/// rewrite stays within the limit, asks for exactly the bytes it returns, holds the same
/// strings in the same places as the input (a model that reads quoted strings and literals
/// alike as strings says so), leaves no 8-bit quoted string behind (a second pass changes
/// nothing), and is only made when some quoted string has 8-bit bytes.
pub fn imap_quoted_utf8(data: &[u8]) {
    for limit in [data.len().saturating_mul(2) + 64, data.len()] {
        let mut granted = None;
        let result = to_literals(data, limit, |n| {
            granted = Some(n);
            true
        });
        match result {
            Ok(Cow::Borrowed(same)) => {
                assert_eq!(same, data);
                assert_eq!(granted, None);
            }
            Ok(Cow::Owned(out)) => {
                assert!(out.len() <= limit);
                assert_eq!(granted, Some(out.len()));
                assert_ne!(out, data);
                let before = pieces(data).expect("a rewritten command reads as strings");
                let after = pieces(&out).expect("so does the rewrite");
                assert!(same(&before, &after), "{before:?} {after:?}");
                assert!(before
                    .iter()
                    .any(|p| matches!(p, Piece::Quoted(s) if !s.is_ascii())));
                let again = to_literals(&out, usize::MAX, |_| panic!("a second copy"));
                assert!(matches!(again, Ok(Cow::Borrowed(_))));
            }
            Err(Refused::TooLong) => assert!(limit < data.len().saturating_mul(2) + 64),
            Err(Refused::NotUtf8) => assert!(!data.is_ascii()),
            Err(Refused::Busy) => panic!("granted, never busy"),
        }
    }
}

/// A command read as a model: strings (quoted or literal, with their text) and the bytes
/// between them.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Byte(u8),
    Quoted(Vec<u8>),
    Literal(Vec<u8>),
}

impl Piece {
    /// A string's text, however it was written.
    fn text(&self) -> Option<&[u8]> {
        match self {
            Piece::Byte(_) => None,
            Piece::Quoted(t) | Piece::Literal(t) => Some(t),
        }
    }
}

/// Two readings are the same command when their bytes and strings' texts agree in order.
fn same(a: &[Piece], b: &[Piece]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x.text(), y.text()) {
            (Some(s), Some(t)) => s == t,
            _ => x == y,
        })
}

fn pieces(command: &[u8]) -> Option<Vec<Piece>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = command.get(i) {
        if b == b'"' {
            let mut text = Vec::new();
            i += 1;
            loop {
                match *command.get(i)? {
                    b'"' => break,
                    b'\\' => {
                        text.push(*command.get(i + 1)?);
                        i += 2;
                    }
                    c => {
                        text.push(c);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push(Piece::Quoted(text));
        } else if let Some((n, data_at)) = literal(command, i) {
            let text = command.get(data_at..data_at + n)?;
            out.push(Piece::Literal(text.to_vec()));
            i = data_at + n;
        } else {
            out.push(Piece::Byte(b));
            i += 1;
        }
    }
    Some(out)
}

/// `{digits}` or `{digits+}` then CRLF at `at`: the length and where the data starts.
fn literal(command: &[u8], at: usize) -> Option<(usize, usize)> {
    let rest = command.get(at..)?.strip_prefix(b"{")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 10 {
        return None;
    }
    let n: usize = std::str::from_utf8(rest.get(..digits)?)
        .ok()?
        .parse()
        .ok()?;
    let tail = rest.get(digits..)?;
    let tail = tail.strip_prefix(b"+").unwrap_or(tail);
    tail.strip_prefix(b"}\r\n")?;
    let data_at = command.len() - tail.len() + 3;
    (command.len() >= data_at.checked_add(n)?).then_some((n, data_at))
}
