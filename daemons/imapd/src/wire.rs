//! Writing IMAP responses. Everything the server sends is built from `imap-types` values and
//! encoded by `imap-codec`; the exception is FETCH literals, which are written (or streamed
//! from the message's file) an item at a time, behind names encoded here (see
//! `session/fetch/response.rs`).
//!
//! This module holds the encoding entry points and the small conversions the rest of imapd
//! needs: IMAP strings (quoted or literal), flag lists, INTERNALDATE, response codes that
//! `imap-codec` has no variant for, and UID sets.

use std::borrow::Cow;
use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use imap_codec::encode::{Encoder, Fragment};
use imap_codec::imap_types::core::{AString, IString, Literal, NString, Quoted, Tag, Text, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, FlagFetch};
use imap_codec::imap_types::mailbox::{Mailbox, MailboxOther};
use imap_codec::imap_types::response::{
    Bye, Code, CodeOther, CommandContinuationRequest, Data, Greeting, Response, Status, StatusBody,
    StatusKind, Tagged,
};
use imap_codec::{GreetingCodec, ResponseCodec};
use inetkit_maildir::Flags;

use crate::keywords::Keywords;

/// Strings up to this long go quoted when they can; longer ones as literals.
const MAX_QUOTED: usize = 1024;

/// Appends the encoding of `response` to `out`.
pub(crate) fn send(out: &mut Vec<u8>, response: &Response<'_>) {
    for fragment in ResponseCodec::default().encode(response) {
        match fragment {
            Fragment::Line { data } | Fragment::Literal { data, .. } => {
                out.extend_from_slice(&data)
            }
        }
    }
}

pub(crate) fn data(out: &mut Vec<u8>, data: Data<'_>) {
    send(out, &Response::Data(data));
}

pub(crate) fn status(out: &mut Vec<u8>, status: Status<'_>) {
    send(out, &Response::Status(status));
}

/// The greeting, with CRLF.
pub(crate) fn greeting(greeting: &Greeting<'_>) -> Vec<u8> {
    GreetingCodec::default().encode(greeting).dump()
}

/// Response text: ours is always short 7-bit prose, so a text that would not validate is a
/// bug; it is replaced rather than sent.
pub(crate) fn text(s: impl Into<Cow<'static, str>>) -> Text<'static> {
    let text = match s.into() {
        Cow::Borrowed(s) => Text::try_from(s),
        Cow::Owned(s) => Text::try_from(s),
    };
    text.unwrap_or_else(|_| Text::unvalidated("Done."))
}

/// A tagged status response: `a1 OK [code] text`.
pub(crate) fn tagged<'a>(
    tag: Tag<'a>,
    kind: StatusKind,
    code: Option<Code<'a>>,
    text: Text<'a>,
) -> Response<'a> {
    Response::Status(Status::Tagged(Tagged {
        tag,
        body: StatusBody { kind, code, text },
    }))
}

/// `* OK [code] text` (or NO, BAD).
pub(crate) fn untagged<'a>(kind: StatusKind, code: Option<Code<'a>>, text: Text<'a>) -> Status<'a> {
    Status::Untagged(StatusBody { kind, code, text })
}

/// `* BYE text`.
pub(crate) fn bye(text: &'static str) -> Status<'static> {
    Status::Bye(Bye {
        code: None,
        text: self::text(text),
    })
}

/// `* BYE [code] text`.
pub(crate) fn bye_with(code: Code<'static>, text: &'static str) -> Status<'static> {
    Status::Bye(Bye {
        code: Some(code),
        text: self::text(text),
    })
}

/// `+ text`, a continuation request.
pub(crate) fn continuation(out: &mut Vec<u8>, text: &'static str) {
    let request = CommandContinuationRequest::basic(None, text)
        .unwrap_or_else(|_| CommandContinuationRequest::base64(&b""[..]));
    send(out, &Response::CommandContinuationRequest(request));
}

/// A response line as text without its CRLF, for the connection's farewells.
pub(crate) fn line(status: Status<'_>) -> String {
    let mut out = Vec::new();
    self::status(&mut out, status);
    let line = out.strip_suffix(b"\r\n").unwrap_or(&out);
    String::from_utf8_lossy(line).into_owned()
}

/// A response code `imap-codec` has no variant for (RFC 5530's NONEXISTENT, CANNOT, …), sent
/// as the atom it is.
pub(crate) fn code(name: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(name.as_bytes()))
}

/// An IMAP string: quoted when it is short text that may be quoted, a literal otherwise.
pub(crate) fn istring<'a>(s: impl Into<Cow<'a, [u8]>>) -> IString<'a> {
    let s = s.into();
    if s.len() > MAX_QUOTED || Quoted::validate(&s).is_err() {
        return IString::Literal(literal(s));
    }
    // What may be quoted is 7-bit, so UTF-8.
    let text = match s {
        Cow::Borrowed(b) => std::str::from_utf8(b)
            .map(Cow::Borrowed)
            .map_err(|_| Cow::Borrowed(b)),
        Cow::Owned(b) => String::from_utf8(b)
            .map(Cow::Owned)
            .map_err(|e| Cow::Owned(e.into_bytes())),
    };
    match text {
        Ok(text) => IString::Quoted(Quoted::unvalidated(text)),
        Err(bytes) => IString::Literal(literal(bytes)),
    }
}

/// A literal. A literal may not hold NUL (RFC 3501 CHAR8), so NULs are sent as 0x80, as
/// Dovecot does.
pub(crate) fn literal<'a>(data: impl Into<Cow<'a, [u8]>>) -> Literal<'a> {
    let mut data = data.into();
    // NUL is the one byte a literal may not hold: a memchr over message bodies rather than
    // `Literal::validate`'s byte loop.
    if data.contains(&0) {
        replace_nuls(data.to_mut());
    }
    Literal::unvalidated(data)
}

/// NUL to 0x80, for literal data.
pub(crate) fn replace_nuls(data: &mut [u8]) {
    for b in data.iter_mut().filter(|b| **b == 0) {
        *b = 0x80;
    }
}

/// An nstring: NIL for `None`.
pub(crate) fn nstring<'a>(s: Option<impl Into<Cow<'a, [u8]>>>) -> NString<'a> {
    NString(s.map(istring))
}

/// A mailbox name as sent in LIST, LSUB and STATUS (already in modified UTF-7): INBOX as the
/// atom, any other name as a string.
pub(crate) fn mailbox(name: String) -> Mailbox<'static> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Mailbox::Inbox;
    }
    match MailboxOther::try_from(AString::String(istring(name.into_bytes()))) {
        Ok(other) => Mailbox::Other(other),
        // Only a name that is INBOX is refused, and that was answered above.
        Err(_) => Mailbox::Inbox,
    }
}

/// The system flags in Maildir letter order and their IMAP flags.
pub(crate) const SYSTEM_FLAGS: [(Flags, Flag<'static>); 5] = [
    (Flags::DRAFT, Flag::Draft),
    (Flags::FLAGGED, Flag::Flagged),
    (Flags::REPLIED, Flag::Answered),
    (Flags::SEEN, Flag::Seen),
    (Flags::TRASHED, Flag::Deleted),
];

/// The keyword letters `a`-`z`.
pub(crate) static ALL_KEYWORDS: LazyLock<Flags> = LazyLock::new(|| {
    (0..26u8)
        .filter_map(Flags::keyword)
        .fold(Flags::EMPTY, |all, k| all | k)
});

/// A message's flags for FETCH: `(\Seen \Answered $Forwarded)`, with `\Recent` when asked.
pub(crate) fn flags<'k>(flags: Flags, recent: bool, keywords: &'k Keywords) -> Vec<FlagFetch<'k>> {
    let mut out = Vec::with_capacity(4);
    for (f, flag) in &SYSTEM_FLAGS {
        if flags.contains(*f) {
            out.push(FlagFetch::Flag(flag.clone()));
        }
    }
    if recent {
        out.push(FlagFetch::Recent);
    }
    // Most messages have no keyword: the 26 letters are only looked at when there is one.
    let mut system = flags;
    system.remove(*ALL_KEYWORDS);
    if system == flags {
        return out;
    }
    for n in 0..26u8 {
        let Some(f) = Flags::keyword(n) else {
            continue;
        };
        if flags.contains(f) {
            if let Some(flag) = keywords.name(n).and_then(keyword) {
                out.push(FlagFetch::Flag(flag));
            }
        }
    }
    out
}

/// One FETCH item as the encoder writes it inside `* n FETCH (...)`: responses too large to
/// encode whole are written an item at a time.
pub(crate) fn fetch_item(item: MessageDataItem<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    data(
        &mut out,
        Data::Fetch {
            seq: NonZeroU32::MIN,
            items: Vec1::from(item),
        },
    );
    let inner = out
        .strip_prefix(b"* 1 FETCH (")
        .and_then(|rest| rest.strip_suffix(b")\r\n"));
    inner.map(<[u8]>::to_vec).unwrap_or_default()
}

/// The name of a FETCH item with a literal, as the encoder writes it (`BODY[1.MIME]<0>`,
/// `BODY[HEADER.FIELDS (SUBJECT)]`), for a literal written separately. `item` carries NIL.
pub(crate) fn fetch_item_name(item: MessageDataItem<'_>) -> Vec<u8> {
    let mut name = fetch_item(item);
    if name.ends_with(b" NIL") {
        name.truncate(name.len() - 4);
    }
    name
}

/// A keyword as a flag; `None` for a name that is not an atom (the keywords file is checked
/// when read, so only a bug gets here).
pub(crate) fn keyword(name: &str) -> Option<Flag<'_>> {
    imap_codec::imap_types::core::Atom::try_from(name)
        .ok()
        .map(Flag::Keyword)
}

/// INTERNALDATE: `"17-Jul-1996 02:44:25 +0000"` (we keep UTC).
pub(crate) fn internal_date(t: SystemTime) -> DateTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let epoch = chrono::DateTime::<chrono::Utc>::default().fixed_offset();
    let utc = chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
        .map_or(epoch, |t| t.fixed_offset());
    // Only years past 9999 fail: shown as the epoch.
    DateTime::try_from(utc).unwrap_or_else(|_| DateTime::unvalidated(epoch))
}

/// A sequence number or UID; 0 (which no message has) becomes 1 rather than a panic.
pub(crate) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// A UID set for COPYUID: `1:3,7`. `None` when empty.
pub(crate) fn uid_set(uids: &[u32]) -> Option<UidSet> {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j].wrapping_add(1) {
            j += 1;
        }
        parts.push(if i == j {
            UidElement::Single(nz(uids[i]))
        } else {
            UidElement::Range(nz(uids[i]), nz(uids[j]))
        });
        i = j + 1;
    }
    Vec1::try_from(parts).ok().map(UidSet)
}

/// The (ASCII) tag at the start of a command line, for replies to lines that did not parse;
/// `None` when it has none we could send back.
pub(crate) fn tag_of(line: &[u8]) -> Option<Tag<'static>> {
    let tag: String = line
        .iter()
        .take_while(|&&b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b))
        .take(64)
        .map(|&b| char::from(b))
        .collect();
    Tag::try_from(tag).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(items: Vec<MessageDataItem<'_>>) -> Vec<u8> {
        let mut out = Vec::new();
        data(
            &mut out,
            Data::Fetch {
                seq: nz(7),
                items: Vec1::try_from(items).unwrap(),
            },
        );
        out
    }

    #[test]
    fn strings() {
        let env = |s: IString<'_>| fetch(vec![MessageDataItem::Rfc822Header(NString(Some(s)))]);
        assert_eq!(
            env(istring(&b"a \"b\"\\"[..])),
            b"* 7 FETCH (RFC822.HEADER \"a \\\"b\\\"\\\\\")\r\n"
        );
        assert_eq!(
            env(istring("ü".as_bytes())),
            b"* 7 FETCH (RFC822.HEADER {2}\r\n\xc3\xbc)\r\n"
        );
        // CR, LF and long strings go as literals; NUL as 0x80.
        assert_eq!(
            env(istring(&b"a\r\nb"[..])),
            b"* 7 FETCH (RFC822.HEADER {4}\r\na\r\nb)\r\n"
        );
        assert_eq!(
            env(istring(&b"a\0b"[..])),
            b"* 7 FETCH (RFC822.HEADER {3}\r\na\x80b)\r\n"
        );
        let long = vec![b'x'; MAX_QUOTED + 1];
        assert!(env(istring(long)).starts_with(b"* 7 FETCH (RFC822.HEADER {1025}\r\nxxx"));
        assert_eq!(
            fetch(vec![MessageDataItem::Rfc822Header(nstring(None::<&[u8]>))]),
            b"* 7 FETCH (RFC822.HEADER NIL)\r\n"
        );
    }

    #[test]
    fn flag_lists() {
        let dir = std::env::temp_dir().join(format!("imapd-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::keywords::FILE), "0 Junk\n2 $Forwarded\n").unwrap();
        let keywords = Keywords::load(&dir);
        let mut f = Flags::SEEN;
        f.insert(Flags::REPLIED);
        f.insert(Flags::TRASHED);
        f.insert(Flags::keyword(2).unwrap());
        let out = fetch(vec![
            MessageDataItem::Uid(nz(9)),
            MessageDataItem::Flags(flags(f, true, &keywords)),
        ]);
        assert_eq!(
            out,
            b"* 7 FETCH (UID 9 FLAGS (\\Answered \\Seen \\Deleted \\Recent $Forwarded))\r\n"
        );
        let out = fetch(vec![MessageDataItem::Flags(flags(
            Flags::EMPTY,
            false,
            &keywords,
        ))]);
        assert_eq!(out, b"* 7 FETCH (FLAGS ())\r\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(837571465);
        assert_eq!(
            fetch(vec![MessageDataItem::InternalDate(internal_date(t))]),
            b"* 7 FETCH (INTERNALDATE \"17-Jul-1996 02:44:25 +0000\")\r\n"
        );
        // A day below 10 keeps its two digits.
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1700000000 - 10 * 86400);
        assert_eq!(
            fetch(vec![MessageDataItem::InternalDate(internal_date(t))]),
            b"* 7 FETCH (INTERNALDATE \"04-Nov-2023 22:13:20 +0000\")\r\n"
        );
    }

    #[test]
    fn statuses_and_codes() {
        let mut out = Vec::new();
        send(
            &mut out,
            &tagged(
                Tag::try_from("a1").unwrap(),
                StatusKind::No,
                Some(code("NONEXISTENT")),
                text("No such mailbox."),
            ),
        );
        status(
            &mut out,
            untagged(
                StatusKind::Ok,
                Some(Code::CopyUid {
                    uid_validity: nz(5),
                    source: uid_set(&[1, 2, 3, 7, 9, 10]).unwrap(),
                    destination: uid_set(&[4]).unwrap(),
                }),
                text("Moved."),
            ),
        );
        continuation(&mut out, "idling");
        assert_eq!(
            out,
            b"a1 NO [NONEXISTENT] No such mailbox.\r\n\
              * OK [COPYUID 5 1:3,7,9:10 4] Moved.\r\n\
              + idling\r\n"
        );
        assert_eq!(line(bye("Logging out.")), "* BYE Logging out.");
        assert!(uid_set(&[]).is_none());
    }

    #[test]
    fn mailboxes() {
        let mut out = Vec::new();
        for name in ["INBOX", "Sent", "a \"q\"", ""] {
            data(
                &mut out,
                Data::Status {
                    mailbox: mailbox(name.to_owned()),
                    items: vec![].into(),
                },
            );
        }
        assert_eq!(
            out,
            b"* STATUS INBOX ()\r\n* STATUS \"Sent\" ()\r\n* STATUS \"a \\\"q\\\"\" ()\r\n* STATUS \"\" ()\r\n"
        );
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of(b"a1 NOOP").unwrap().inner(), "a1");
        assert!(tag_of(b"\x00\x01").is_none());
        assert_eq!(tag_of(b"x{5}").unwrap().inner(), "x");
    }
}
