//! CATENATE (RFC 4469): the parts of an `APPEND … CATENATE (…)` message and the IMAP URLs
//! (RFC 5092) they name. `imap-codec` parses neither; [`crate::extended`] calls
//! [`Parser::cat_parts`] where a message's data starts with `CATENATE`, and the session
//! (`session/catenate.rs`) resolves the URLs against the user's own folders.
//!
//! A URL may be absolute (`imap://user@host/Box;UIDVALIDITY=9/;UID=3/;SECTION=1.2`), start at
//! the server's root (`/Box/;UID=3`), or be relative to the selected folder (`;UID=3`). It
//! names one message or part of one: `;UID=` is required, `;SECTION=` and `;PARTIAL=` are
//! optional; URLAUTH (`;EXPIRE=`, `;URLAUTH=`, RFC 4467) is not supported here.

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::imap_types::ToStatic;
use imap_codec::CommandCodec;

use crate::extended::Parser;

/// Most parts in one CATENATE.
const MAX_PARTS: usize = 256;
/// Longest URL taken (longer ones are refused as syntax errors).
pub(crate) const MAX_URL: usize = 2048;

/// One part of a CATENATE: literal text, or a URL as sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CatPart {
    Text(Vec<u8>),
    Url(Vec<u8>),
}

impl Parser<'_> {
    /// `"(" cat-part *(SP cat-part) ")"`, after `CATENATE SP`: `TEXT SP literal` or
    /// `URL SP astring`. A TEXT literal with a NUL is refused (it is not a literal8).
    pub(crate) fn cat_parts(&mut self) -> Option<Vec<CatPart>> {
        let parts = self.list_of(MAX_PARTS, |p| {
            if p.keyword(b"TEXT").is_some() {
                p.space()?;
                let text = p.literal(false)?;
                (!text.contains(&0)).then(|| CatPart::Text(text.to_vec()))
            } else {
                p.keyword(b"URL")?;
                p.space()?;
                let url = p.astring(false)?;
                (url.len() <= MAX_URL).then_some(CatPart::Url(url))
            }
        })?;
        (!parts.is_empty()).then_some(parts)
    }
}

/// Where a URL's server part points.
#[derive(Debug, PartialEq, Eq, Default)]
pub(crate) struct Server {
    /// The user (percent-decoded), when the URL names one.
    pub(crate) user: Option<String>,
    /// The host, lower-cased, without a port.
    pub(crate) host: String,
}

/// An IMAP URL of a message or a part of one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ImapUrl {
    /// `imap://…` URLs only.
    pub(crate) server: Option<Server>,
    /// The folder's name (UTF-8, percent-decoded); `None`: the selected folder.
    pub(crate) mailbox: Option<String>,
    pub(crate) uid_validity: Option<u32>,
    pub(crate) uid: u32,
    pub(crate) section: Option<Section<'static>>,
    /// `;PARTIAL=offset[.length]`.
    pub(crate) partial: Option<(u64, Option<u64>)>,
}

/// Parses a URL of CATENATE; `None` for anything this server cannot take (answered BADURL).
pub(crate) fn parse_url(url: &[u8]) -> Option<ImapUrl> {
    let url = std::str::from_utf8(url).ok()?;
    if url.len() > MAX_URL || url.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return None;
    }
    let (server, path) = match strip_prefix_ignore_case(url, "imap://") {
        Some(rest) => {
            let (authority, path) = rest.split_once('/')?;
            (Some(server(authority)?), Some(path))
        }
        None => (None, url.strip_prefix('/')),
    };
    // `path` is after the root's `/`; without one, the URL is relative to the selected folder
    // and starts with its first parameter.
    let rest = match path {
        Some(path) => path,
        None => url.strip_prefix(';').map(|_| url)?,
    };
    let mut segments = rest.split(';');
    // The text before each parameter: the mailbox, then each parameter's value.
    let mut before = segments.next().unwrap_or_default();
    let mailbox = match path {
        Some(_) => {
            let name = before.strip_suffix('/').unwrap_or(before);
            let name = String::from_utf8(percent_decode(name)?).ok()?;
            if name.is_empty() || name.chars().any(char::is_control) {
                return None;
            }
            Some(name)
        }
        None => None,
    };
    let mut uid_validity = None;
    let mut uid = None;
    let mut section = None;
    let mut partial = None;
    // The parameters in their order: UIDVALIDITY (right after the mailbox), then UID,
    // SECTION and PARTIAL, each after a `/` (but the first of a relative URL).
    let mut next = 0;
    for (i, param) in segments.enumerate() {
        let (key, value) = param.split_once('=')?;
        let rank = ["UIDVALIDITY", "UID", "SECTION", "PARTIAL"]
            .iter()
            .position(|k| k.eq_ignore_ascii_case(key))?;
        let after_slash = before.ends_with('/');
        let placed = match rank {
            0 => i == 0 && mailbox.is_some() && !after_slash,
            _ => after_slash || i == 0 && mailbox.is_none(),
        };
        if rank < next || !placed {
            return None;
        }
        next = rank + 1;
        before = value;
        let value = value.strip_suffix('/').unwrap_or(value);
        match rank {
            0 => uid_validity = Some(nz_number(value)?),
            1 => uid = Some(nz_number(value)?),
            2 => section = Some(parse_section(&percent_decode(value)?)?),
            _ => partial = Some(parse_partial(value)?),
        }
    }
    if before.ends_with('/') {
        return None;
    }
    Some(ImapUrl {
        server,
        mailbox,
        uid_validity,
        uid: uid?,
        section,
        partial,
    })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// `[enc-user [";AUTH=" mechanism] "@"] host [":" port]`.
fn server(authority: &str) -> Option<Server> {
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let user = match userinfo {
        Some(info) => {
            let (user, auth) = match info.split_once(';') {
                Some((user, auth)) => (user, Some(auth)),
                None => (info, None),
            };
            if let Some(auth) = auth {
                let mechanism = strip_prefix_ignore_case(auth, "AUTH=")?;
                if mechanism.is_empty() {
                    return None;
                }
            }
            let user = String::from_utf8(percent_decode(user)?).ok()?;
            if user.is_empty() {
                return None;
            }
            Some(user)
        }
        None => None,
    };
    // An IPv6 literal keeps its brackets; a port after the host is dropped.
    let host = match hostport.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            if !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            host
        }
        _ => hostport,
    };
    if host.is_empty() {
        return None;
    }
    Some(Server {
        user,
        host: host.to_ascii_lowercase(),
    })
}

/// `%XX` escapes undone; `None` for a broken escape.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&n| n <= u64::from(u32::MAX))
}

fn nz_number(text: &str) -> Option<u32> {
    number(text)
        .filter(|&n| n > 0)
        .and_then(|n| u32::try_from(n).ok())
}

/// `offset ["." length]`, the length not zero.
fn parse_partial(text: &str) -> Option<(u64, Option<u64>)> {
    match text.split_once('.') {
        Some((offset, length)) => Some((number(offset)?, Some(u64::from(nz_number(length)?)))),
        None => Some((number(text)?, None)),
    }
}

/// A section as FETCH takes it (`1.2`, `HEADER`, `1.MIME`, `HEADER.FIELDS (TO)`), decoded by
/// `imap-codec` inside a FETCH command.
fn parse_section(text: &[u8]) -> Option<Section<'static>> {
    if text.is_empty()
        || text
            .iter()
            .any(|&b| !(b' '..0x7f).contains(&b) || b == b']')
    {
        return None;
    }
    let mut command = b"x FETCH 1 BODY.PEEK[".to_vec();
    command.extend_from_slice(text);
    command.extend_from_slice(b"]\r\n");
    let (rest, decoded) = CommandCodec::default().decode(&command).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let CommandBody::Fetch {
        macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
        ..
    } = decoded.body
    else {
        return None;
    };
    match items.as_slice() {
        [MessageDataItemName::BodyExt {
            section: Some(section),
            partial: None,
            ..
        }] => Some(section.to_static()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use imap_codec::imap_types::core::Vec1;
    use imap_codec::imap_types::fetch::Part;
    use std::num::NonZeroU32;

    use super::*;

    fn part(numbers: &[u32]) -> Part {
        let numbers: Vec<NonZeroU32> = numbers.iter().filter_map(|&n| NonZeroU32::new(n)).collect();
        Part(Vec1::try_from(numbers).expect("one number at least"))
    }

    #[test]
    fn relative_urls() {
        let u = parse_url(b"/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=1.2").expect("url");
        assert_eq!(u.server, None);
        assert_eq!(u.mailbox.as_deref(), Some("Drafts"));
        assert_eq!((u.uid_validity, u.uid), (Some(385759045), 20));
        assert_eq!(u.section, Some(Section::Part(part(&[1, 2]))));
        assert_eq!(u.partial, None);
        let u = parse_url(b"/a/b%20c/;uid=7/;section=header/;partial=100000.1").expect("url");
        assert_eq!(u.mailbox.as_deref(), Some("a/b c"));
        assert_eq!((u.uid_validity, u.uid), (None, 7));
        assert_eq!(u.section, Some(Section::Header(None)));
        assert_eq!(u.partial, Some((100000, Some(1))));
        let u = parse_url(b";UID=3/;SECTION=1.MIME").expect("url");
        assert_eq!(u.mailbox, None);
        assert_eq!(u.section, Some(Section::Mime(part(&[1]))));
        let u = parse_url(b"/INBOX/;UID=3/;SECTION=HEADER.FIELDS%20(To%20From)").expect("url");
        assert!(matches!(u.section, Some(Section::HeaderFields(None, _))));
        let u = parse_url(b"/INBOX/;UID=3/;PARTIAL=5").expect("url");
        assert_eq!(u.partial, Some((5, None)));
    }

    #[test]
    fn absolute_urls() {
        let u =
            parse_url(b"imap://fred%40x@Example.COM:143/INBOX;UIDVALIDITY=1/;UID=2").expect("url");
        assert_eq!(
            u.server,
            Some(Server {
                user: Some("fred@x".into()),
                host: "example.com".into()
            })
        );
        assert_eq!(u.mailbox.as_deref(), Some("INBOX"));
        let u = parse_url(b"imap://bob;AUTH=*@[::1]/Sent/;UID=9").expect("url");
        let server = u.server.expect("server");
        assert_eq!(
            (server.user.as_deref(), server.host.as_str()),
            (Some("bob"), "[::1]")
        );
        let u = parse_url(b"IMAP://host/x/;UID=1").expect("url");
        assert_eq!(u.server.and_then(|s| s.user), None);
    }

    #[test]
    fn bad_urls() {
        for bad in [
            &b""[..],
            b"/",
            b"/INBOX",
            b"/INBOX/;UID=0",
            b"/INBOX/;UID=x",
            b"/INBOX/;UID=99999999999",
            b"/INBOX/;SECTION=1",
            b"/INBOX/;UID=1;SECTION=1",
            b"/INBOX/;SECTION=1/;UID=1",
            b"/INBOX/;UID=1/;UID=2",
            b"/INBOX/;UIDVALIDITY=1/;UID=2",
            b";UIDVALIDITY=1/;UID=2",
            b"/INBOX/;UID=1/;SECTION=1]",
            b"/INBOX/;UID=1/;SECTION=BOGUS",
            b"/INBOX/;UID=1/;PARTIAL=1.0",
            b"/INBOX/;UID=1/;URLAUTH=anonymous",
            b"/INBOX/;UID=1/;EXPIRE=2030-01-01T00:00:00Z",
            b"/%zz/;UID=1",
            b"/%0a/;UID=1",
            b"/a b/;UID=1",
            b"INBOX/;UID=1",
            b"imap://host",
            b"imap:///INBOX/;UID=1",
            b"imap://@host/INBOX/;UID=1",
            b"imap://u;X=1@host/INBOX/;UID=1",
            b"imap://host:x/INBOX/;UID=1",
            b"http://host/INBOX/;UID=1",
            b"/INBOX/;UID=1/",
            b"/\xc3/;UID=1",
        ] {
            assert_eq!(parse_url(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("/INBOX/;UID=1/;SECTION=1{}", ".1".repeat(MAX_URL));
        assert_eq!(parse_url(long.as_bytes()), None);
    }

    fn parts(input: &[u8]) -> Option<Vec<CatPart>> {
        let mut p = Parser::new(input);
        let parts = p.cat_parts()?;
        p.at_end().then_some(parts)
    }

    #[test]
    fn catenate_parts() {
        assert_eq!(
            parts(b"(TEXT {3}\r\nabc url \"/INBOX/;UID=1\" text {2+}\r\nde URL ;UID=2)"),
            Some(vec![
                CatPart::Text(b"abc".to_vec()),
                CatPart::Url(b"/INBOX/;UID=1".to_vec()),
                CatPart::Text(b"de".to_vec()),
                CatPart::Url(b";UID=2".to_vec()),
            ])
        );
        for bad in [
            &b"()"[..],
            b"(TEXT \"abc\")",
            b"(TEXT {3}\r\na\0c)",
            b"(TEXT ~{3}\r\nabc)",
            b"(URL)",
            b"(FOO {1}\r\na)",
            b"(TEXT {3}\r\nabc",
            b"(TEXT {9}\r\nabc)",
        ] {
            assert_eq!(parts(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let many = format!("({})", vec!["URL x"; MAX_PARTS + 1].join(" "));
        assert_eq!(parts(many.as_bytes()), None);
    }
}
