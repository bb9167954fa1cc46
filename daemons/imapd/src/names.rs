//! Mailbox names: IMAP's modified UTF-7 (RFC 3501 §5.1.3) to and from the store's UTF-8,
//! LIST patterns with `*` and `%`, and the subscriptions file.

use std::path::Path;

/// The hierarchy separator we show.
pub(crate) const DELIMITER: char = '/';
const SUBSCRIPTIONS: &str = "inetkit-subscriptions";

pub(crate) use inetkit_maildir::mutf7::{decode as decode_utf7, encode as encode_utf7};

/// How mailbox names travel on the wire: modified UTF-7 (RFC 3501 §5.1.3), or UTF-8 once the
/// client enabled IMAP4rev2 (RFC 9051 §5.1). The store's names are UTF-8 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Coding {
    #[default]
    Utf7,
    Utf8,
}

impl Coding {
    /// A name (or LIST pattern) as the client sent it, in UTF-8; `None` when it is not valid
    /// in this coding.
    pub(crate) fn decode(self, raw: &[u8]) -> Option<String> {
        match self {
            Coding::Utf7 => decode_utf7(raw),
            Coding::Utf8 => std::str::from_utf8(raw).ok().map(str::to_owned),
        }
    }

    /// A store name as the client is to see it.
    pub(crate) fn encode(self, name: &str) -> String {
        match self {
            Coding::Utf7 => encode_utf7(name),
            Coding::Utf8 => name.to_owned(),
        }
    }
}

/// Does `name` match the LIST pattern? `*` matches anything, `%` anything but the delimiter.
/// INBOX matches case-insensitively.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let name_cmp: String = if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".into()
    } else {
        name.into()
    };
    // `get` rather than slicing: byte 5 may fall inside a character (`abcd&AOk-` decodes to
    // `abcdé`), which panicked the session.
    let pattern_cmp: String = match (pattern.get(..5), pattern.get(5..)) {
        (Some(head), Some(rest)) if head.eq_ignore_ascii_case("INBOX") => format!("INBOX{rest}"),
        _ => pattern.into(),
    };
    glob(pattern_cmp.as_bytes(), name_cmp.as_bytes())
}

/// `pattern` against `name` by dynamic programming: O(len(pattern) * len(name)), whatever
/// the number of wildcards.
fn glob(p: &[u8], n: &[u8]) -> bool {
    if p.len() > 1024 {
        return false;
    }
    // row[j]: p[i..] matches n[j..], for the current i, built from the end of the pattern.
    let mut next = vec![false; n.len() + 1];
    next[n.len()] = true;
    for i in (0..p.len()).rev() {
        let mut row = vec![false; n.len() + 1];
        for j in (0..=n.len()).rev() {
            row[j] = match p[i] {
                b'*' => next[j] || (j < n.len() && row[j + 1]),
                b'%' => next[j] || (j < n.len() && n[j] != DELIMITER as u8 && row[j + 1]),
                c => j < n.len() && n[j] == c && next[j + 1],
            };
        }
        next = row;
    }
    next[0]
}

/// The subscribed names (UTF-8), one per line in the mailbox directory.
pub(crate) fn subscriptions(mailbox: &Path) -> Vec<String> {
    std::fs::read_to_string(mailbox.join(SUBSCRIPTIONS))
        .map(|text| {
            text.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Adds or removes a subscription; written to a new file and renamed into place.
pub(crate) fn set_subscribed(mailbox: &Path, name: &str, on: bool) -> std::io::Result<()> {
    let mut names = subscriptions(mailbox);
    names.retain(|n| n != name);
    if on {
        names.push(name.to_owned());
    }
    names.sort();
    let tmp = mailbox.join(format!("{SUBSCRIPTIONS}.{}.tmp", std::process::id()));
    let mut text = names.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, mailbox.join(SUBSCRIPTIONS))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_pattern_with_a_multibyte_character_at_byte_five_matches_without_panic() {
        assert!(matches("abcdé", "abcdé"));
        assert!(!matches("abcdé", "abcde"));
        assert!(matches("inbox/%", "INBOX/x"));
        assert!(matches("é*", "éa"));
    }

    use super::*;

    #[test]
    fn utf7() {
        assert_eq!(encode_utf7("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(decode_utf7(b"Entw&APw-rfe").as_deref(), Some("Entwürfe"));
        assert_eq!(encode_utf7("A&B"), "A&-B");
        assert_eq!(decode_utf7(b"A&-B").as_deref(), Some("A&B"));
        let s = "日本語/😀";
        assert_eq!(decode_utf7(encode_utf7(s).as_bytes()).as_deref(), Some(s));
        assert_eq!(decode_utf7(b"&Jjo"), None);
        assert_eq!(decode_utf7("ü".as_bytes()), None);
    }

    #[test]
    fn codings() {
        assert_eq!(
            Coding::Utf7.decode(b"Entw&APw-rfe").as_deref(),
            Some("Entwürfe")
        );
        assert_eq!(Coding::Utf7.decode("Entwürfe".as_bytes()), None);
        // A rev2 client's `&` is a plain character: no modified UTF-7 decoding.
        assert_eq!(
            Coding::Utf8.decode(b"Entw&APw-rfe").as_deref(),
            Some("Entw&APw-rfe")
        );
        assert_eq!(
            Coding::Utf8.decode("Entwürfe".as_bytes()).as_deref(),
            Some("Entwürfe")
        );
        assert_eq!(Coding::Utf8.decode(b"Entw\xfcrfe"), None);
        assert_eq!(Coding::Utf7.encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(Coding::Utf8.encode("Entwürfe"), "Entwürfe");
    }

    #[test]
    fn patterns() {
        assert!(matches("*", "a/b"));
        assert!(matches("%", "Sent"));
        assert!(!matches("%", "a/b"));
        assert!(matches("a/%", "a/b"));
        assert!(matches("inbox", "INBOX"));
        assert!(matches("I*", "INBOX"));
        assert!(!matches("S%x", "Sent"));
        assert!(matches("%/%", "a/b"));
        // A character across byte 5 (once a panic: the pattern was sliced there).
        assert!(!matches("abcdé", "INBOX"));
        assert!(matches("abcdé", "abcdé"));
        assert!(matches("inboxé*", "INBOXé/x"));
        assert!(!matches("é", "INBOX"));
    }
}
