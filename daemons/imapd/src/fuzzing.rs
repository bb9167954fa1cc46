//! What imapd's fuzz targets run (see `inetkit_runtime::fuzzing`): mailbox names in modified
//! UTF-7 and LIST patterns (`imap_names`, here), the command reader with its literals
//! (`imap_literal`), sequence and UID sets (`imap_sequence`), SEARCH (`imap_search`), and
//! ENVELOPE/BODYSTRUCTURE (`imap_mime`), SEARCH/SORT's `RETURN (…)` and `$`
//! (`imap_search_args`), the extended LIST/CREATE/APPEND forms (`imap_extended`), CATENATE's
//! parts and IMAP URLs (`imap_catenate`), BINARY's decoders (`imap_binary`), NOTIFY
//! (`imap_notify`) and IMAP4rev2's quoted UTF-8 strings turned into literals
//! (`imap_quoted_utf8`).

mod extended;
mod folder;
mod literal;
mod mime;
mod notify;
mod quoted_utf8;
mod search;
mod search_args;
mod sequence;

pub use self::extended::{imap_binary, imap_catenate, imap_extended};
pub use self::literal::imap_literal;
pub use self::mime::imap_mime;
pub use self::notify::imap_notify;
pub use self::quoted_utf8::imap_quoted_utf8;
pub use self::search::imap_search;
pub use self::search_args::imap_search_args;
pub use self::sequence::imap_sequence;

use crate::names::{decode_utf7, encode_utf7, matches, DELIMITER};

/// Target `imap_names`: the input as a modified UTF-7 name, as a UTF-8 name, and split at its
/// first NUL into a LIST pattern and a name. Every UTF-8 name survives encoding and decoding,
/// a decoded name encodes to printable ASCII that decodes to it again, and [`matches`] agrees
/// with a plain backtracking matcher (`*` anything, `%` anything but the delimiter, INBOX in
/// any case).
pub fn imap_names(data: &[u8]) {
    if let Some(name) = decode_utf7(data) {
        let encoded = encode_utf7(&name);
        assert!(
            encoded.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{encoded:?}"
        );
        assert_eq!(
            decode_utf7(encoded.as_bytes()).as_deref(),
            Some(name.as_str())
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let encoded = encode_utf7(text);
        assert_eq!(decode_utf7(encoded.as_bytes()).as_deref(), Some(text));
        let (pattern, name) = text.split_once('\0').unwrap_or((text, text));
        // The reference costs pattern × name² (each `*` tries every rest of the name): long
        // names timed the harness out, not `matches` (pattern × name). Names in LIST are short.
        if name.len() <= REFERENCE_MAX_NAME {
            assert_eq!(
                matches(pattern, name),
                reference(pattern, name),
                "{pattern:?} against {name:?}"
            );
        } else {
            matches(pattern, name);
        }
    }
}

/// The longest name the reference matcher is asked about.
const REFERENCE_MAX_NAME: usize = 128;

/// LIST matching spelled out: INBOX compared in upper case, then wildcards by backtracking
/// (memoised, so any pattern costs at most its length times the name's).
fn reference(pattern: &str, name: &str) -> bool {
    let inbox = |s: &str| match s.get(..5) {
        Some(head) if head.eq_ignore_ascii_case("INBOX") => {
            format!("INBOX{}", s.get(5..).unwrap_or_default())
        }
        _ => s.to_owned(),
    };
    let name = if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_owned()
    } else {
        name.to_owned()
    };
    let pattern = inbox(pattern);
    if pattern.len() > 1024 {
        return false;
    }
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let mut memo = vec![None; (p.len() + 1) * (n.len() + 1)];
    fn go(p: &[u8], n: &[u8], i: usize, j: usize, memo: &mut [Option<bool>]) -> bool {
        let slot = i * (n.len() + 1) + j;
        if let Some(known) = memo[slot] {
            return known;
        }
        let result = match p.get(i) {
            None => j == n.len(),
            Some(b'*') => (j..=n.len()).any(|k| go(p, n, i + 1, k, memo)),
            Some(b'%') => {
                let stop = n[j..]
                    .iter()
                    .position(|&c| c == DELIMITER as u8)
                    .map_or(n.len(), |at| j + at);
                (j..=stop).any(|k| go(p, n, i + 1, k, memo))
            }
            Some(&c) => n.get(j) == Some(&c) && go(p, n, i + 1, j + 1, memo),
        };
        memo[slot] = Some(result);
        result
    }
    go(p, n, 0, 0, &mut memo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn imap_names_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_names", imap_names) > 0);
    }

    #[test]
    fn imap_literal_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_literal", imap_literal) > 0);
    }

    #[test]
    fn imap_sequence_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_sequence", imap_sequence) > 0);
    }

    #[test]
    fn imap_search_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_search", imap_search) > 0);
    }

    #[test]
    fn imap_mime_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_mime", imap_mime) > 0);
    }

    #[test]
    fn imap_search_args_corpus() {
        assert!(
            replay(
                env!("CARGO_MANIFEST_DIR"),
                "imap_search_args",
                imap_search_args
            ) > 0
        );
    }

    #[test]
    fn imap_extended_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_extended", imap_extended) > 0);
    }

    #[test]
    fn imap_catenate_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_catenate", imap_catenate) > 0);
    }

    #[test]
    fn imap_notify_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_notify", imap_notify) > 0);
    }

    #[test]
    fn imap_quoted_utf8_corpus() {
        assert!(
            replay(
                env!("CARGO_MANIFEST_DIR"),
                "imap_quoted_utf8",
                imap_quoted_utf8
            ) > 0
        );
    }

    #[test]
    fn imap_binary_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "imap_binary", imap_binary) > 0);
    }
}
