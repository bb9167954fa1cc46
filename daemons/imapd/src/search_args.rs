//! The parts of SEARCH, SORT and THREAD commands imap-codec does not parse, taken out (or
//! replaced) before it decodes the rest: `RETURN (…)` of ESEARCH (RFC 4731) and ESORT
//! (RFC 5267), and `$`, the saved search result of SEARCHRES (RFC 5182), wherever a
//! sequence set may stand (FETCH, STORE, COPY, MOVE, UID EXPUNGE, and as a search key);
//! and CANCELUPDATE (RFC 5267 §4.3), which imap-codec does not know.
//!
//! The command is cut into tokens (atoms, quoted strings, literals, parentheses) only as far
//! as needed to know where a sequence set or a search key stands: a `$` inside a string
//! (`SUBJECT $`) or a mailbox name stays as it is.

use std::fmt::Write as _;
use std::ops::Range;

/// What `RETURN (…)` asked for. `RETURN ()` is ALL.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReturnOptions {
    pub(crate) min: bool,
    pub(crate) max: bool,
    pub(crate) count: bool,
    pub(crate) all: bool,
    pub(crate) save: bool,
    /// CONTEXT=SEARCH (RFC 5267 §4): keep the client told of changes to the result.
    pub(crate) update: bool,
    /// CONTEXT=SEARCH's PARTIAL: the results at these positions (1-based, low first).
    pub(crate) partial: Option<(u32, u32)>,
}

impl ReturnOptions {
    /// Whether an ESEARCH response goes out: not for SAVE alone (RFC 5182 §2.4).
    pub(crate) fn answers(&self) -> bool {
        self.min || self.max || self.count || self.all || self.partial.is_some()
    }
}

/// Why a command's extension arguments were refused (a BAD).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) &'static str);

/// A command with its extension arguments taken out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Nothing to take out: decode the bytes as they came.
    AsIs,
    /// Decode these bytes instead; `returns` when the command had `RETURN (…)`.
    Rewritten {
        bytes: Vec<u8>,
        returns: Option<ReturnOptions>,
    },
    /// A command on `$` while the saved result names no message: it does nothing and
    /// succeeds (RFC 5182 §2.1). Holds the command's name, upper case.
    OnNothing(String),
    /// CANCELUPDATE with the tags of the searches to stop updating.
    CancelUpdate(Vec<String>),
}

/// The saved result and what it is needed against: `uids` ascending, and the selected
/// folder's UIDs in sequence order (to turn the saved UIDs into sequence numbers).
pub(crate) struct Saved<'s> {
    pub(crate) uids: &'s [u32],
    pub(crate) folder: &'s [u32],
}

impl Saved<'_> {
    /// The saved messages still in the folder, as sequence numbers.
    fn sequence_numbers(&self) -> Vec<u32> {
        self.uids
            .iter()
            .filter_map(|uid| self.folder.binary_search(uid).ok())
            .map(|i| i as u32 + 1)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Atom,
    Quoted,
    Literal,
    Open,
    Close,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    span: Range<usize>,
}

/// The tokens of a command (with its literals), up to its final CRLF. `None` when it does
/// not tokenize (imap-codec will then refuse it).
fn tokens(bytes: &[u8]) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = *bytes.get(i)?;
        let start = i;
        let kind = match b {
            b' ' => {
                i += 1;
                continue;
            }
            b'\r' | b'\n' => break,
            b'(' => {
                i += 1;
                Kind::Open
            }
            b')' => {
                i += 1;
                Kind::Close
            }
            b'"' => {
                i += 1;
                loop {
                    match *bytes.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        b'\r' | b'\n' => return None,
                        _ => i += 1,
                    }
                }
                i += 1;
                Kind::Quoted
            }
            b'{' | b'~' => {
                // {n}, {n+}, ~{n} (literal8), then CRLF and n bytes.
                let close = i + bytes.get(i..)?.iter().position(|&c| c == b'}')?;
                let inner = bytes.get(i..close)?;
                let inner = inner.strip_prefix(b"~").unwrap_or(inner);
                let inner = inner.strip_prefix(b"{")?;
                let digits = inner.strip_suffix(b"+").unwrap_or(inner);
                // Only `{digits}`: anything else is not a literal the reader took in, and a
                // size made of whatever digits stood between the braces could be any number
                // (an overflow found by the imap_search_args fuzz target).
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
                if bytes.get(close + 1..close + 3)? != b"\r\n" {
                    return None;
                }
                i = close.checked_add(3)?.checked_add(n)?;
                if i > bytes.len() {
                    return None;
                }
                Kind::Literal
            }
            _ => {
                while let Some(&c) = bytes.get(i) {
                    if matches!(c, b' ' | b'(' | b')' | b'\r' | b'\n' | b'"') {
                        break;
                    }
                    i += 1;
                }
                Kind::Atom
            }
        };
        out.push(Token {
            kind,
            span: start..i,
        });
    }
    Some(out)
}

/// Search keys followed by this many arguments (RFC 3501 §6.4.4, RFC 5032, RFC 7162).
fn key_arguments(key: &[u8]) -> usize {
    const ONE: &[&str] = &[
        "BCC",
        "BEFORE",
        "BODY",
        "CC",
        "FROM",
        "KEYWORD",
        "LARGER",
        "ON",
        "SENTBEFORE",
        "SENTON",
        "SENTSINCE",
        "SINCE",
        "SMALLER",
        "SUBJECT",
        "TEXT",
        "TO",
        "UID",
        "UNKEYWORD",
        "OLDER",
        "YOUNGER",
    ];
    if key.eq_ignore_ascii_case(b"HEADER") {
        2
    } else if ONE.iter().any(|k| key.eq_ignore_ascii_case(k.as_bytes())) {
        1
    } else {
        0
    }
}

struct Edit {
    span: Range<usize>,
    with: String,
}

/// Takes out `RETURN (…)` and replaces `$` so imap-codec can decode the command. `saved` is
/// `None` outside the selected state (a `$` is then left for imap-codec to refuse).
pub(crate) fn prepare(bytes: &[u8], saved: Option<&Saved<'_>>) -> Result<Prepared, Refused> {
    // Only these commands have anything to take out; the rest (an APPEND's message above
    // all) are not even looked through.
    if !named_here(bytes) {
        return Ok(Prepared::AsIs);
    }
    let Some(tokens) = tokens(bytes) else {
        return Ok(Prepared::AsIs);
    };
    let word = |t: Option<&Token>| -> &[u8] {
        match t {
            Some(t) if t.kind == Kind::Atom => bytes.get(t.span.clone()).unwrap_or_default(),
            _ => b"",
        }
    };
    let mut at = 1;
    let uid = word(tokens.get(at)).eq_ignore_ascii_case(b"UID");
    if uid {
        at += 1;
    }
    let name = word(tokens.get(at)).to_ascii_uppercase();
    at += 1;
    let mut edits = Vec::new();
    let mut returns = None;
    match name.as_slice() {
        b"CANCELUPDATE" if !uid => return cancel_update(bytes, &tokens, at),
        b"FETCH" | b"STORE" | b"COPY" | b"MOVE" | b"EXPUNGE" => {
            let is_dollar = word(tokens.get(at)) == b"$";
            if let (true, Some(saved), Some(token)) = (is_dollar, saved, tokens.get(at)) {
                let numbers = if uid {
                    saved.uids.to_vec()
                } else {
                    saved.sequence_numbers()
                };
                if numbers.is_empty() {
                    let command = if uid {
                        format!("UID {}", str(&name))
                    } else {
                        str(&name)
                    };
                    return Ok(Prepared::OnNothing(command));
                }
                edits.push(Edit {
                    span: token.span.clone(),
                    with: set_text(&numbers),
                });
            }
        }
        b"SEARCH" | b"SORT" | b"THREAD" => {
            if word(tokens.get(at)).eq_ignore_ascii_case(b"RETURN") && name != b"THREAD" {
                let start = tokens.get(at).map_or(0, |t| t.span.start);
                let (options, end) = return_options(bytes, &tokens, at + 1)?;
                returns = Some(options);
                // Up to the next token, so no double space is left.
                let next = tokens.get(end).map_or(bytes.len(), |t| t.span.start);
                edits.push(Edit {
                    span: start..next,
                    with: String::new(),
                });
                at = end;
            }
            // SORT's criteria and charset, THREAD's algorithm and charset: no keys.
            if name == b"SORT" {
                let close = tokens.iter().skip(at).position(|t| t.kind == Kind::Close);
                at += close.map_or(0, |c| c + 2);
            } else if name == b"THREAD" {
                at += 2;
            }
            if let Some(saved) = saved {
                saved_keys(bytes, &tokens, at, saved, &mut edits);
            }
        }
        _ => {}
    }
    if edits.is_empty() && returns.is_none() {
        return Ok(Prepared::AsIs);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for edit in &edits {
        out.extend_from_slice(bytes.get(from..edit.span.start).unwrap_or_default());
        out.extend_from_slice(edit.with.as_bytes());
        from = edit.span.end;
    }
    out.extend_from_slice(bytes.get(from..).unwrap_or_default());
    Ok(Prepared::Rewritten {
        bytes: out,
        returns,
    })
}

/// Whether the command (the word after the tag, and after UID) is one this module handles.
fn named_here(bytes: &[u8]) -> bool {
    const NAMES: &[&str] = &[
        "SEARCH",
        "SORT",
        "THREAD",
        "FETCH",
        "STORE",
        "COPY",
        "MOVE",
        "EXPUNGE",
        "CANCELUPDATE",
    ];
    let line = bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut words = line.split(|&b| b == b' ').skip(1);
    let mut name = words.next().unwrap_or_default();
    if name.eq_ignore_ascii_case(b"UID") {
        name = words.next().unwrap_or_default();
    }
    NAMES
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

fn str(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `(MIN MAX …)` from token `at`: the options and the index of the token after `)`.
fn return_options(
    bytes: &[u8],
    tokens: &[Token],
    at: usize,
) -> Result<(ReturnOptions, usize), Refused> {
    const MALFORMED: Refused = Refused("RETURN wants a list of options: RETURN (MIN MAX ...).");
    if tokens.get(at).map(|t| t.kind) != Some(Kind::Open) {
        return Err(MALFORMED);
    }
    let mut options = ReturnOptions::default();
    let mut any = false;
    let mut i = at + 1;
    loop {
        let token = tokens.get(i).ok_or(MALFORMED)?;
        i += 1;
        match token.kind {
            Kind::Close => break,
            Kind::Atom => {}
            _ => return Err(MALFORMED),
        }
        let option = bytes.get(token.span.clone()).unwrap_or_default();
        let flag = match option.to_ascii_uppercase().as_slice() {
            b"PARTIAL" => {
                let range = tokens.get(i).filter(|t| t.kind == Kind::Atom);
                let range = range.and_then(|t| bytes.get(t.span.clone()));
                options.partial = Some(partial_range(range.unwrap_or_default())?);
                i += 1;
                any = true;
                continue;
            }
            b"UPDATE" => &mut options.update,
            b"MIN" => &mut options.min,
            b"MAX" => &mut options.max,
            b"COUNT" => &mut options.count,
            b"ALL" => &mut options.all,
            b"SAVE" => &mut options.save,
            _ => return Err(Refused("Unknown RETURN option.")),
        };
        *flag = true;
        any = true;
    }
    // RFC 5267 §4.4: PARTIAL and ALL exclude each other (Dovecot says BAD too).
    if options.all && options.partial.is_some() {
        return Err(Refused("PARTIAL and ALL exclude each other."));
    }
    // RETURN () is ALL, and so is UPDATE alone.
    let only_update = options.update && !(options.min || options.max || options.count);
    if !any || (only_update && options.partial.is_none() && !options.save) {
        options.all = true;
    }
    Ok((options, i))
}

/// PARTIAL's `low:high` (either order; no `*`).
fn partial_range(text: &[u8]) -> Result<(u32, u32), Refused> {
    const BAD: Refused = Refused("PARTIAL wants a range of positions: PARTIAL 1:100.");
    let text = std::str::from_utf8(text).map_err(|_| BAD)?;
    let (a, b) = text.split_once(':').ok_or(BAD)?;
    let number = |s: &str| -> Result<u32, Refused> {
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(BAD);
        }
        s.parse::<u32>().ok().filter(|&n| n > 0).ok_or(BAD)
    };
    let (a, b) = (number(a)?, number(b)?);
    Ok((a.min(b), a.max(b)))
}

/// `CANCELUPDATE "tag" …` (RFC 5267 §4.3): the tags.
fn cancel_update(bytes: &[u8], tokens: &[Token], at: usize) -> Result<Prepared, Refused> {
    const BAD: Refused = Refused("CANCELUPDATE wants the tags of searches: CANCELUPDATE \"a1\".");
    let mut tags = Vec::new();
    for token in tokens.get(at..).unwrap_or_default() {
        let text = bytes.get(token.span.clone()).unwrap_or_default();
        let tag = match token.kind {
            Kind::Quoted => text
                .strip_prefix(b"\"")
                .and_then(|t| t.strip_suffix(b"\""))
                .unwrap_or_default(),
            Kind::Atom => text,
            _ => return Err(BAD),
        };
        tags.push(str(tag));
    }
    if tags.is_empty() {
        return Err(BAD);
    }
    Ok(Prepared::CancelUpdate(tags))
}

/// Replaces each `$` standing as a search key by the saved messages as a UID key (or a key
/// that matches nothing when there are none), and `UID $` likewise. Strings, the charset and
/// SORT's criteria are skipped over.
fn saved_keys(
    bytes: &[u8],
    tokens: &[Token],
    mut at: usize,
    saved: &Saved<'_>,
    edits: &mut Vec<Edit>,
) {
    let word = |t: &Token| -> Vec<u8> {
        if t.kind == Kind::Atom {
            bytes
                .get(t.span.clone())
                .unwrap_or_default()
                .to_ascii_uppercase()
        } else {
            Vec::new()
        }
    };
    let uids = if saved.uids.is_empty() {
        "NOT ALL".to_owned()
    } else {
        format!("UID {}", set_text(saved.uids))
    };
    let as_key = format!("({uids})");
    while let Some(token) = tokens.get(at) {
        let w = word(token);
        match w.as_slice() {
            b"$" => edits.push(Edit {
                span: token.span.clone(),
                with: as_key.clone(),
            }),
            b"CHARSET" => at += 1,
            _ => {
                let arguments = key_arguments(&w);
                if arguments == 1 && w == b"UID" {
                    if let Some(next) = tokens.get(at + 1).filter(|t| word(t) == b"$") {
                        edits.push(Edit {
                            span: token.span.start..next.span.end,
                            with: as_key.clone(),
                        });
                    }
                }
                at += arguments;
            }
        }
        at += 1;
    }
}

/// `1:3,7` from ascending numbers; runs of consecutive numbers as ranges. Also used for
/// ESEARCH's ALL and ESORT's (in sort order, so only ascending runs are ranges).
pub(crate) fn set_text(numbers: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&first) = numbers.get(i) {
        let mut j = i;
        while numbers
            .get(j + 1)
            .is_some_and(|&next| Some(next) == numbers.get(j).and_then(|n| n.checked_add(1)))
        {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let last = numbers.get(j).copied().unwrap_or(first);
        if j == i {
            let _ = write!(out, "{first}");
        } else {
            let _ = write!(out, "{first}:{last}");
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(command: &str, saved: Option<&Saved<'_>>) -> (String, Option<ReturnOptions>) {
        match prepare(command.as_bytes(), saved) {
            Ok(Prepared::Rewritten { bytes, returns }) => (str(&bytes), returns),
            other => panic!("{command}: {other:?}"),
        }
    }

    const FOLDER: &[u32] = &[3, 5, 8, 9, 10];

    #[test]
    fn only_a_real_literal_is_skipped_whatever_digits_stand_in_braces() {
        // Digits gathered from `{…}` once made a size near usize::MAX: in release builds the
        // position wrapped around and tokenizing never ended, from one line before login.
        assert!(tokens(b"a SEARCH RETURN () {18446744073709551613x}\r\n").is_none());
        assert!(tokens(b"a SEARCH {1x8446744073709551615}\r\n").is_none());
        assert!(tokens(b"a SEARCH {18446744073709551615}\r\n").is_none());
        let literal = tokens(b"a SEARCH SUBJECT {3+}\r\nabc\r\n").expect("tokens");
        assert!(literal.iter().any(|t| t.kind == Kind::Literal));
        let literal8 = tokens(b"a SEARCH SUBJECT ~{3}\r\nabc\r\n").expect("tokens");
        assert!(literal8.iter().any(|t| t.kind == Kind::Literal));
    }

    #[test]
    fn return_options_are_taken_out() {
        let (bytes, r) = rewritten("a SEARCH RETURN (MIN count) ALL\r\n", None);
        assert_eq!(bytes, "a SEARCH ALL\r\n");
        let r = r.expect("options");
        assert!(r.min && r.count && !r.max && !r.all && !r.save);
        let (bytes, r) = rewritten("a UID SEARCH RETURN () CHARSET UTF-8 SEEN\r\n", None);
        assert_eq!(bytes, "a UID SEARCH CHARSET UTF-8 SEEN\r\n");
        assert!(r.expect("options").all);
        let (bytes, r) = rewritten("a SORT RETURN (SAVE) (ARRIVAL) UTF-8 ALL\r\n", None);
        assert_eq!(bytes, "a SORT (ARRIVAL) UTF-8 ALL\r\n");
        let r = r.expect("options");
        assert!(r.save && !r.answers());
        // Not an extension: left to imap-codec.
        assert_eq!(
            prepare(b"a SEARCH SUBJECT RETURN\r\n", None),
            Ok(Prepared::AsIs)
        );
        assert_eq!(prepare(b"a NOOP\r\n", None), Ok(Prepared::AsIs));
        // An APPEND is not looked through, whatever its message holds.
        let saved = Saved {
            uids: &[],
            folder: FOLDER,
        };
        let append = b"a APPEND $ {12}\r\nRETURN () $\r\n";
        assert_eq!(prepare(append, Some(&saved)), Ok(Prepared::AsIs));
    }

    #[test]
    fn context_options_and_cancelupdate() {
        let (_, r) = rewritten("a SEARCH RETURN (PARTIAL 4:2 COUNT) ALL\r\n", None);
        let r = r.expect("options");
        assert_eq!(r.partial, Some((2, 4)));
        assert!(r.count && !r.all);
        let (_, r) = rewritten("a SEARCH RETURN (UPDATE) SEEN\r\n", None);
        let r = r.expect("options");
        assert!(r.update && r.all);
        for bad in [
            "PARTIAL 1",
            "PARTIAL 1:*",
            "PARTIAL *:1",
            "PARTIAL 0:3",
            "PARTIAL",
        ] {
            let command = format!("a SEARCH RETURN ({bad}) ALL\r\n");
            assert!(prepare(command.as_bytes(), None).is_err(), "{bad}");
        }
        assert_eq!(
            prepare(b"b CANCELUPDATE \"a1\" a2\r\n", None),
            Ok(Prepared::CancelUpdate(vec!["a1".into(), "a2".into()]))
        );
        assert!(prepare(b"b CANCELUPDATE\r\n", None).is_err());
    }

    #[test]
    fn bad_return_options_are_refused() {
        for bad in [
            "a SEARCH RETURN (PARTIALLY) ALL\r\n",
            "a SEARCH RETURN MIN ALL\r\n",
            "a SEARCH RETURN (MIN\r\n",
            "a SEARCH RETURN (\"MIN\") ALL\r\n",
        ] {
            assert!(prepare(bad.as_bytes(), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn dollar_becomes_the_saved_messages() {
        let saved = Saved {
            uids: &[5, 8, 9, 11],
            folder: FOLDER,
        };
        // UID 11 is gone: not a sequence number any more.
        let (bytes, _) = rewritten("a FETCH $ (FLAGS)\r\n", Some(&saved));
        assert_eq!(bytes, "a FETCH 2:4 (FLAGS)\r\n");
        let (bytes, _) = rewritten("a UID COPY $ $\r\n", Some(&saved));
        assert_eq!(bytes, "a UID COPY 5,8:9,11 $\r\n");
        let (bytes, _) = rewritten("a UID EXPUNGE $\r\n", Some(&saved));
        assert_eq!(bytes, "a UID EXPUNGE 5,8:9,11\r\n");
        let (bytes, _) = rewritten("a SEARCH SUBJECT $ OR $ UID $ NOT $\r\n", Some(&saved));
        assert_eq!(
            bytes,
            "a SEARCH SUBJECT $ OR (UID 5,8:9,11) (UID 5,8:9,11) NOT (UID 5,8:9,11)\r\n"
        );
        let (bytes, _) = rewritten(
            "a SORT (SUBJECT) UTF-8 HEADER $ $ {1}\r\n$ ($)\r\n",
            Some(&saved),
        );
        assert_eq!(
            bytes,
            "a SORT (SUBJECT) UTF-8 HEADER $ $ {1}\r\n$ ((UID 5,8:9,11))\r\n"
        );
        // Outside the selected state `$` stays for imap-codec to refuse.
        assert_eq!(prepare(b"a FETCH $ FLAGS\r\n", None), Ok(Prepared::AsIs));
    }

    #[test]
    fn dollar_when_nothing_is_saved() {
        let saved = Saved {
            uids: &[],
            folder: FOLDER,
        };
        assert_eq!(
            prepare(b"a STORE $ +FLAGS (\\Seen)\r\n", Some(&saved)),
            Ok(Prepared::OnNothing("STORE".into()))
        );
        assert_eq!(
            prepare(b"a UID MOVE $ Trash\r\n", Some(&saved)),
            Ok(Prepared::OnNothing("UID MOVE".into()))
        );
        let (bytes, _) = rewritten("a SEARCH $\r\n", Some(&saved));
        assert_eq!(bytes, "a SEARCH (NOT ALL)\r\n");
    }

    #[test]
    fn sets_are_written_with_ranges() {
        assert_eq!(set_text(&[]), "");
        assert_eq!(set_text(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(set_text(&[5, 3, 4, 2, 1]), "5,3:4,2,1");
        assert_eq!(set_text(&[u32::MAX, 1]), "4294967295,1");
    }
}
