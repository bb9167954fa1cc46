//! The addresses in a `From:` header (RFC 5322 §3.4, §3.6.2), so a submitted message can only
//! claim to be from addresses its user may send as (`[smtp] check_from_header`).
//!
//! Display names and comments are skipped; every address counts, whether written
//! `Name <addr>`, bare, in a group or one of several authors. Anything that cannot be read
//! with certainty is an error rather than a guess: the check refuses what it cannot read.

/// Why a `From:` header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FromError {
    #[error("unbalanced quotes, parentheses or angle brackets")]
    Unbalanced,
    #[error("an address is not valid UTF-8")]
    NotUtf8,
    #[error("it names no address")]
    NoAddress,
    /// `<>` (or a source route with nothing after it): the null sender is no author.
    #[error("an address is empty")]
    EmptyAddress,
    #[error("it is longer than {MAX_FROM} bytes")]
    TooLong,
}

/// The most `From:` header bytes (all such headers together) that are kept for the check.
pub(crate) const MAX_FROM: usize = 8 * 1024;

/// The addresses of one `From:` field body (unfolded or not), in order.
pub(crate) fn addresses(value: &[u8]) -> Result<Vec<String>, FromError> {
    let mut out = Vec::new();
    // The current mailbox: its text outside comments and angle brackets (an addr-spec or a
    // display name), and the contents of its angle brackets.
    let mut plain: Vec<u8> = Vec::new();
    let mut angle: Option<Vec<u8>> = None;
    let mut angles: Vec<Vec<u8>> = Vec::new();
    let mut bytes = value.iter().copied();
    while let Some(b) = bytes.next() {
        // Inside <...>: everything but comments is the address.
        if let Some(inside) = &mut angle {
            match b {
                b'>' => angles.push(angle.take().unwrap_or_default()),
                b'<' => return Err(FromError::Unbalanced),
                b'(' => skip_comment(&mut bytes)?,
                b'"' => quoted(&mut bytes, inside)?,
                b' ' | b'\t' | b'\r' | b'\n' => {}
                _ => inside.push(b),
            }
            continue;
        }
        match b {
            b'<' => angle = Some(Vec::new()),
            b'>' | b')' => return Err(FromError::Unbalanced),
            b'(' => skip_comment(&mut bytes)?,
            b'"' => quoted(&mut bytes, &mut plain)?,
            // A group's name ends: what came before was a display name.
            b':' => {
                if !angles.is_empty() {
                    return Err(FromError::Unbalanced);
                }
                plain.clear();
            }
            b',' | b';' => finish(&mut plain, &mut angles, &mut out)?,
            // Folding whitespace is not part of an address (and a display name is dropped).
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => plain.push(b),
        }
    }
    if angle.is_some() {
        return Err(FromError::Unbalanced);
    }
    finish(&mut plain, &mut angles, &mut out)?;
    if out.is_empty() {
        return Err(FromError::NoAddress);
    }
    Ok(out)
}

/// Ends one mailbox: its bracketed addresses if it had any (the rest was its display name),
/// else its text. An empty one (`a@x,,b@y`) is nothing.
fn finish(
    plain: &mut Vec<u8>,
    angles: &mut Vec<Vec<u8>>,
    out: &mut Vec<String>,
) -> Result<(), FromError> {
    let found: Vec<Vec<u8>> = if !angles.is_empty() {
        std::mem::take(angles)
    } else if plain.is_empty() {
        Vec::new()
    } else {
        vec![std::mem::take(plain)]
    };
    plain.clear();
    for address in found {
        // An obsolete source route (`<@relay:user@host>`) is not part of the address.
        let address = match address.iter().rposition(|&b| b == b':') {
            Some(colon) if address.first() == Some(&b'@') => {
                address.get(colon + 1..).unwrap_or_default().to_vec()
            }
            _ => address,
        };
        if address.is_empty() {
            return Err(FromError::EmptyAddress);
        }
        out.push(String::from_utf8(address).map_err(|_| FromError::NotUtf8)?);
    }
    Ok(())
}

/// After an opening `"`: copies the quoted string, quotes included, into `into`.
fn quoted(bytes: &mut impl Iterator<Item = u8>, into: &mut Vec<u8>) -> Result<(), FromError> {
    into.push(b'"');
    while let Some(b) = bytes.next() {
        match b {
            b'"' => {
                into.push(b'"');
                return Ok(());
            }
            b'\\' => {
                into.push(b'\\');
                into.push(bytes.next().ok_or(FromError::Unbalanced)?);
            }
            _ => into.push(b),
        }
    }
    Err(FromError::Unbalanced)
}

/// After an opening `(`: skips to the matching `)`; comments nest.
fn skip_comment(bytes: &mut impl Iterator<Item = u8>) -> Result<(), FromError> {
    let mut depth = 1usize;
    while let Some(b) = bytes.next() {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
            b'\\' => {
                bytes.next().ok_or(FromError::Unbalanced)?;
            }
            _ => {}
        }
    }
    Err(FromError::Unbalanced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> Result<Vec<String>, FromError> {
        addresses(value.as_bytes())
    }

    fn list(items: &[&str]) -> Result<Vec<String>, FromError> {
        Ok(items.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn the_forms_clients_write() {
        assert_eq!(parsed(" alice@example.org"), list(&["alice@example.org"]));
        assert_eq!(
            parsed(" Alice <alice@example.org>"),
            list(&["alice@example.org"])
        );
        assert_eq!(
            parsed(" \"Smith, Alice (work)\" <alice@example.org>"),
            list(&["alice@example.org"])
        );
        assert_eq!(
            parsed(" =?utf-8?q?Al=C3=AFce?= <alice@example.org> (comment, with <brackets>)"),
            list(&["alice@example.org"])
        );
        assert_eq!(
            parsed(" alice@example.org (Alice (nested) \\) x)"),
            list(&["alice@example.org"])
        );
        // Folded over lines, as the filter hands it over.
        assert_eq!(
            parsed(" Alice\r\n <alice@example.org>"),
            list(&["alice@example.org"])
        );
        assert_eq!(
            parsed(" \"a b\"@example.org"),
            list(&["\"a b\"@example.org"])
        );
        assert_eq!(parsed(" <@relay.example:alice@x>"), list(&["alice@x"]));
        assert_eq!(
            parsed(" Ålice <ålice@exämple.org>"),
            list(&["ålice@exämple.org"])
        );
    }

    /// Every address counts: a second author, an address hidden in a group, a second pair
    /// of brackets in one mailbox.
    #[test]
    fn every_address_is_found() {
        assert_eq!(
            parsed(" alice@example.org, Bob <bob@example.org>"),
            list(&["alice@example.org", "bob@example.org"])
        );
        assert_eq!(
            parsed(" team: alice@example.org, <bob@example.org>;, carol@x"),
            list(&["alice@example.org", "bob@example.org", "carol@x"])
        );
        assert_eq!(
            parsed(" <bob@example.org> <alice@example.org>"),
            list(&["bob@example.org", "alice@example.org"])
        );
        assert_eq!(
            parsed(" a@x,, b@y"),
            list(&["a@x", "b@y"]),
            "empty list elements are skipped"
        );
        assert_eq!(
            parsed(" bob"),
            list(&["bob"]),
            "not an address: left to the check"
        );
    }

    #[test]
    fn what_cannot_be_read_is_an_error() {
        for bad in [
            " Alice <alice@example.org",
            " alice@example.org>",
            " \"Alice <alice@example.org>",
            " (Alice <alice@example.org>",
            " <a<b@x>>",
            " <a@x> group: b@y;",
        ] {
            assert_eq!(parsed(bad), Err(FromError::Unbalanced), "{bad}");
        }
        assert_eq!(parsed(""), Err(FromError::NoAddress));
        assert_eq!(parsed(" (just a comment)"), Err(FromError::NoAddress));
        assert_eq!(parsed(" undisclosed:;"), Err(FromError::NoAddress));
        assert_eq!(addresses(b" <\xff@example.org>"), Err(FromError::NotUtf8));
    }

    /// fuzz/regressions/smtp_from/empty-angle-addr*: `<>` was read as the address "", which
    /// a user allowed the null sender (`senders = [""]`) could put in From:.
    #[test]
    fn an_empty_address_is_an_error() {
        for bad in [
            "<>",
            " Alice <>",
            " alice@example.org, <>",
            " <> <alice@example.org>",
            " <(comment) >",
            " <@relay.example:>",
        ] {
            assert_eq!(parsed(bad), Err(FromError::EmptyAddress), "{bad}");
        }
        assert_eq!(
            addresses(b"\xff?\"Alice \x80x)\" <>"),
            Err(FromError::EmptyAddress)
        );
    }
}
