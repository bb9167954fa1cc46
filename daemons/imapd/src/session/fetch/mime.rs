//! FETCH data built from a message's bytes: ENVELOPE, BODY/BODYSTRUCTURE and the parts that
//! BODY[section] addresses, with the MIME structure from `mail-parser`.

use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::core::{IString, NString, Vec1};
use imap_codec::imap_types::envelope::{Address as ImapAddress, Envelope};
use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use crate::wire::{istring, nstring};

/// Deeper MIME nesting than this is shown as an opaque part: a client cannot need more, and
/// the encoder's recursion stays bounded.
const MAX_DEPTH: usize = 40;
/// Parts described in one BODYSTRUCTURE. Depth alone does not bound the work: a part list
/// that leads back to a part already on the path repeats whole subtrees, so a 408-byte
/// message once grew a structure of many GiB (imap_mime fuzz target).
const MAX_PARTS: usize = 5_000;

pub(crate) fn parse(bytes: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(bytes)
}

/// A part addressed by a section's part numbers: the message it belongs to, and its index
/// in that message's parts.
pub(crate) struct Located<'m, 'x> {
    pub message: &'m Message<'x>,
    pub part: &'m MessagePart<'x>,
}

/// Finds part `path` (1-based numbers). `None` when there is no such part.
pub(crate) fn locate<'m, 'x>(msg: &'m Message<'x>, path: &[u32]) -> Option<Located<'m, 'x>> {
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

pub(crate) fn slice(raw: &[u8], from: u32, to: u32) -> &[u8] {
    let (from, to) = (from as usize, (to as usize).min(raw.len()));
    raw.get(from..to.max(from)).unwrap_or_default()
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
pub(crate) fn envelope(msg: &Message<'_>) -> Envelope<'static> {
    let raw = &msg.raw_message[..];
    let Some(top) = msg.parts.first() else {
        return empty_envelope();
    };
    let header = |name| nstring(raw_header(raw, top, name));
    let from = msg.from();
    Envelope {
        date: header("Date"),
        subject: header("Subject"),
        from: addresses(from),
        sender: addresses(msg.sender().or(from)),
        reply_to: addresses(msg.reply_to().or(from)),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        bcc: addresses(msg.bcc()),
        in_reply_to: header("In-Reply-To"),
        message_id: header("Message-ID"),
    }
}

/// The ENVELOPE of a message that could not be parsed: all NIL.
pub(crate) fn empty_envelope() -> Envelope<'static> {
    let nil = || NString(None);
    Envelope {
        date: nil(),
        subject: nil(),
        from: Vec::new(),
        sender: Vec::new(),
        reply_to: Vec::new(),
        to: Vec::new(),
        cc: Vec::new(),
        bcc: Vec::new(),
        in_reply_to: nil(),
        message_id: nil(),
    }
}

/// An address list; a group is its start marker (the group's name as the mailbox, no host),
/// its members and the end marker (all NIL), as RFC 3501 §7.4.2 says.
fn addresses(list: Option<&Address<'_>>) -> Vec<ImapAddress<'static>> {
    let mut items = Vec::new();
    match list {
        Some(Address::List(addrs)) => {
            for a in addrs {
                items.push(address(a.name.as_deref(), a.address.as_deref()));
            }
        }
        Some(Address::Group(groups)) => {
            for g in groups {
                if let Some(name) = &g.name {
                    items.push(ImapAddress {
                        name: NString(None),
                        adl: NString(None),
                        mailbox: nstring(Some(encode_word(name).into_bytes())),
                        host: NString(None),
                    });
                }
                // A comment alone in a group (`g: (foo) ;`) is no member: mail-parser keeps
                // it as a name without an address.
                for a in g.addresses.iter().filter(|a| a.address.is_some()) {
                    items.push(address(a.name.as_deref(), a.address.as_deref()));
                }
                if g.name.is_some() {
                    items.push(ImapAddress {
                        name: NString(None),
                        adl: NString(None),
                        mailbox: NString(None),
                        host: NString(None),
                    });
                }
            }
        }
        None => {}
    }
    items
}

fn address(name: Option<&str>, addr: Option<&str>) -> ImapAddress<'static> {
    // An obsolete source route (`<@route:user@domain>`) is the address's adl (RFC 3501 §7.4.2).
    let (adl, addr) = match addr.and_then(|a| a.strip_prefix('@')?.split_once(':')) {
        Some((route, rest)) => (Some(format!("@{route}")), Some(rest)),
        None => (None, addr),
    };
    let (mailbox, host) = match addr {
        Some(a) => match a.rsplit_once('@') {
            Some((m, h)) => (Some(m), Some(h)),
            None => (Some(a), None),
        },
        None => (None, None),
    };
    let owned = |s: Option<&str>| nstring(s.map(|s| s.as_bytes().to_vec()));
    ImapAddress {
        name: nstring(name.map(|n| encode_word(n).into_bytes())),
        adl: nstring(adl.map(String::into_bytes)),
        mailbox: owned(mailbox),
        host: owned(host),
    }
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
pub(crate) fn body_structure(msg: &Message<'_>, extended: bool) -> BodyStructure<'static> {
    // A real part takes a boundary line and headers: one part per 32 bytes is plenty.
    let mut budget = MAX_PARTS.min(msg.raw_message.len() / 32 + 8);
    match msg.parts.first() {
        Some(part) => part_structure(msg, part, extended, 0, &mut budget),
        None => single(
            Vec::from([(istring(&b"CHARSET"[..]), istring(&b"US-ASCII"[..]))]),
            text_plain(),
        ),
    }
}

/// The BODY of a message that could not be parsed: an empty text part.
pub(crate) fn empty_body() -> BodyStructure<'static> {
    single(Vec::new(), text_plain())
}

fn text_plain() -> SpecificFields<'static> {
    SpecificFields::Text {
        subtype: istring(&b"PLAIN"[..]),
        number_of_lines: 0,
    }
}

/// An empty 7-bit part without extension data.
fn single(
    parameter_list: Vec<(IString<'static>, IString<'static>)>,
    specific: SpecificFields<'static>,
) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list,
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring(&b"7BIT"[..]),
                size: 0,
            },
            specific,
        },
        extension_data: None,
    }
}

/// Disposition, language and location: the extension data after the MD5 (single part) or
/// the parameters (multipart).
fn extension_tail(
    part: &MessagePart<'_>,
    language: Vec<IString<'static>>,
    location: NString<'static>,
) -> Option<Disposition<'static>> {
    Some(Disposition {
        disposition: disposition(part),
        tail: Some(Language {
            language,
            tail: Some(Location {
                location,
                extensions: Vec::new(),
            }),
        }),
    })
}

fn part_structure(
    msg: &Message<'_>,
    part: &MessagePart<'_>,
    extended: bool,
    depth: usize,
    budget: &mut usize,
) -> BodyStructure<'static> {
    // Past the budget, parts are described as empty text parts.
    let Some(left) = budget.checked_sub(1) else {
        return empty_body();
    };
    *budget = left;
    let raw = &msg.raw_message[..];
    let ct = part.content_type();
    let attributes = ct.and_then(|c| c.attributes.as_deref());
    if let (PartType::Multipart(children), true) = (&part.body, depth < MAX_DEPTH) {
        let bodies: Vec<BodyStructure<'static>> = children
            .iter()
            .filter_map(|&id| msg.parts.get(id as usize))
            .map(|child| part_structure(msg, child, extended, depth + 1, budget))
            .collect();
        // RFC 3501 needs at least one body in a multipart: an empty text part.
        let bodies = Vec1::try_from(bodies).unwrap_or_else(|_| Vec1::from(empty_body()));
        let subtype = ct
            .and_then(|c| c.c_subtype.as_deref())
            .unwrap_or("MIXED")
            .to_ascii_uppercase();
        return BodyStructure::Multi {
            bodies,
            subtype: istring(subtype.into_bytes()),
            extension_data: extended.then(|| MultiPartExtensionData {
                parameter_list: params(attributes),
                tail: extension_tail(part, Vec::new(), NString(None)),
            }),
        };
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
    let parameter_list = match attributes {
        Some(a) if !a.is_empty() => params(Some(a)),
        _ if ty == "TEXT" => Vec::from([(istring(&b"CHARSET"[..]), istring(&b"US-ASCII"[..]))]),
        _ => Vec::new(),
    };
    let encoding = part
        .content_transfer_encoding()
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| "7BIT".to_owned());
    let basic = BasicFields {
        parameter_list,
        id: nstring(raw_header(raw, part, "Content-ID")),
        description: nstring(raw_header(raw, part, "Content-Description")),
        content_transfer_encoding: istring(encoding.into_bytes()),
        size: u32::try_from(body.len()).unwrap_or(u32::MAX),
    };
    // A last line without its CRLF (the one before a boundary belongs to the boundary)
    // still counts.
    let lines = body.iter().filter(|&&b| b == b'\n').count()
        + usize::from(!body.is_empty() && !body.ends_with(b"\n"));
    let lines = u32::try_from(lines).unwrap_or(u32::MAX);
    let specific = match &part.body {
        // imap-codec writes this as "MESSAGE" "RFC822" (message/global included).
        PartType::Message(inner) if same_raw(msg, inner) && depth < MAX_DEPTH => {
            SpecificFields::Message {
                envelope: Box::new(envelope(inner)),
                body_structure: Box::new(match inner.parts.first() {
                    Some(p) => part_structure(inner, p, extended, depth + 1, budget),
                    None => body_structure(inner, extended),
                }),
                number_of_lines: lines,
            }
        }
        _ if ty == "TEXT" => SpecificFields::Text {
            subtype: istring(subtype.into_bytes()),
            number_of_lines: lines,
        },
        _ => SpecificFields::Basic {
            r#type: istring(ty.into_bytes()),
            subtype: istring(subtype.into_bytes()),
        },
    };
    let extension_data = extended.then(|| {
        // Content-Language is a list: `en, de` is sent as ("en" "de").
        let language = raw_header(raw, part, "Content-Language")
            .map(|l| {
                l.split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|l| !l.is_empty())
                    .map(|l| istring(l.to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        SinglePartExtensionData {
            md5: nstring(raw_header(raw, part, "Content-MD5")),
            tail: extension_tail(
                part,
                language,
                nstring(raw_header(raw, part, "Content-Location")),
            ),
        }
    });
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data,
    }
}

fn default_subtype(ty: &str) -> String {
    match ty.to_ascii_lowercase().as_str() {
        "text" => "PLAIN",
        "message" => "RFC822",
        _ => "OCTET-STREAM",
    }
    .to_owned()
}

/// Content-Type or Content-Disposition parameters, names upper-cased.
fn params(
    attrs: Option<&[mail_parser::Attribute<'_>]>,
) -> Vec<(IString<'static>, IString<'static>)> {
    attrs
        .unwrap_or_default()
        .iter()
        .map(|attr| {
            (
                istring(attr.name.to_ascii_uppercase().into_bytes()),
                istring(attr.value.as_bytes().to_vec()),
            )
        })
        .collect()
}

#[allow(clippy::type_complexity)]
fn disposition(
    part: &MessagePart<'_>,
) -> Option<(IString<'static>, Vec<(IString<'static>, IString<'static>)>)> {
    let d = part.content_disposition()?;
    Some((
        istring(d.c_type.to_ascii_uppercase().into_bytes()),
        params(d.attributes.as_deref()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.org, \"B, C\" <c@x.org>\r\nSubject: =?utf-8?q?h=C3=A9?=\r\nMessage-ID: <1@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: x@y\r\n\r\ninner body\r\n--b--\r\n";

    /// An item as the encoder writes it in a FETCH response.
    fn encoded(item: imap_codec::imap_types::fetch::MessageDataItem<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        crate::wire::data(
            &mut out,
            imap_codec::imap_types::response::Data::Fetch {
                seq: crate::wire::nz(1),
                items: Vec1::from(item),
            },
        );
        let out = out.strip_prefix(b"* 1 FETCH (").unwrap();
        out.strip_suffix(b")\r\n").unwrap().to_vec()
    }

    fn envelope_bytes(msg: &[u8]) -> Vec<u8> {
        use imap_codec::imap_types::fetch::MessageDataItem;
        let out = encoded(MessageDataItem::Envelope(envelope(&parse(msg).unwrap())));
        out.strip_prefix(b"ENVELOPE ").unwrap().to_vec()
    }

    fn envelope_of(msg: &[u8]) -> String {
        String::from_utf8(envelope_bytes(msg)).unwrap()
    }

    fn structure_of(msg: &[u8], extended: bool) -> String {
        use imap_codec::imap_types::fetch::MessageDataItem;
        let s = body_structure(&parse(msg).unwrap(), extended);
        let text = if extended {
            encoded(MessageDataItem::BodyStructure(s))
        } else {
            encoded(MessageDataItem::Body(s))
        };
        let text = String::from_utf8(text).unwrap();
        let prefix = if extended { "BODYSTRUCTURE " } else { "BODY " };
        text.strip_prefix(prefix).unwrap().to_owned()
    }

    #[test]
    fn structure_and_envelope() {
        let msg = parse(MIXED).unwrap();
        let text = envelope_of(MIXED);
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
        let text = structure_of(MIXED, false);
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
    fn bodystructure_of_a_multipart() {
        let m = b"From: a@b\r\nContent-Type: multipart/alternative; boundary=A\r\n\r\n\
            --A\r\nContent-Type: text/plain\r\nContent-Language: en, de\r\n\
            Content-Location: http://x/y\r\nContent-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n\
            Content-ID: <id@x>\r\nContent-Description: desc \"q\"\r\n\r\nplain\r\n\
            --A\r\nContent-Type: message/rfc822\r\n\r\n\
            From: inner@x\r\nSubject: inner\r\n\r\ninner body\r\nline2\r\n\
            --A\r\nContent-Type: multipart/mixed; boundary=B\r\n\
            Content-Disposition: inline; foo=bar\r\n\r\n\
            --B\r\nContent-Type: image/png; name=a.png\r\nContent-Transfer-Encoding: base64\r\n\r\n\
            AAAA\r\n--B--\r\n--A--\r\n";
        let inner_envelope = "(NIL \"inner\" ((NIL NIL \"inner\" \"x\")) \
            ((NIL NIL \"inner\" \"x\")) ((NIL NIL \"inner\" \"x\")) NIL NIL NIL NIL NIL)";
        assert_eq!(
            structure_of(m, true),
            format!(
                "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") \"<id@x>\" \"desc \\\"q\\\"\" \
                 \"7BIT\" 5 1 \"Q2hlY2sgSW50ZWdyaXR5IQ==\" NIL (\"en\" \"de\") \"http://x/y\")\
                 (\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 50 {inner_envelope} \
                 (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 17 2 \
                 NIL NIL NIL NIL) 5 NIL NIL NIL NIL)\
                 ((\"IMAGE\" \"PNG\" (\"NAME\" \"a.png\") NIL NIL \"BASE64\" 4 NIL NIL NIL NIL) \
                 \"MIXED\" (\"BOUNDARY\" \"B\") (\"INLINE\" (\"FOO\" \"bar\")) NIL NIL) \
                 \"ALTERNATIVE\" (\"BOUNDARY\" \"A\") NIL NIL NIL)"
            )
        );
        // BODY: the same without extension data.
        assert_eq!(
            structure_of(m, false),
            format!(
                "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") \"<id@x>\" \"desc \\\"q\\\"\" \
                 \"7BIT\" 5 1)\
                 (\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 50 {inner_envelope} \
                 (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 17 2) 5)\
                 ((\"IMAGE\" \"PNG\" (\"NAME\" \"a.png\") NIL NIL \"BASE64\" 4) \"MIXED\") \
                 \"ALTERNATIVE\")"
            )
        );
        // A multipart without parts still has a body (RFC 3501 needs one).
        assert_eq!(
            structure_of(
                b"Content-Type: multipart/mixed; boundary=E\r\n\r\n--E--\r\n",
                false
            ),
            "((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0) \"MIXED\")"
        );
    }

    #[test]
    fn envelope_with_odd_headers() {
        // Groups (an empty one, one between plain addresses), quotes and a backslash.
        let m = b"From: undisclosed-recipients:;\r\n\
            To: Team: a@x.org, \"B b\" <b@y.org>;, c@z.org\r\nCc: Grp:;\r\n\
            Subject: groups \"quoted\" \\ back\r\n\r\nbody\r\n";
        let undisclosed = "((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL))";
        assert_eq!(
            envelope_of(m),
            format!(
                "(NIL \"groups \\\"quoted\\\" \\\\ back\" {undisclosed} {undisclosed} \
                 {undisclosed} ((NIL NIL \"Team\" NIL)(NIL NIL \"a\" \"x.org\")\
                 (\"B b\" NIL \"b\" \"y.org\")(NIL NIL NIL NIL)(NIL NIL \"c\" \"z.org\")) \
                 ((NIL NIL \"Grp\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL)"
            )
        );
        // Groups with nothing in them but a comment (imaptest's fetch-envelope).
        assert_eq!(
            envelope_of(b"Cc: group:;, group2: (foo) ;\r\n\r\nx\r\n"),
            "(NIL NIL NIL NIL NIL NIL ((NIL NIL \"group\" NIL)(NIL NIL NIL NIL)\
             (NIL NIL \"group2\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL)"
        );
        // A source route is the adl.
        assert_eq!(
            envelope_of(b"From: <@route:user@domain>\r\n\r\nx\r\n"),
            "(NIL NIL ((NIL \"@route\" \"user\" \"domain\")) ((NIL \"@route\" \"user\" \"domain\")) \
             ((NIL \"@route\" \"user\" \"domain\")) NIL NIL NIL NIL NIL)"
        );
        // An 8-bit subject goes as a literal; a decoded non-ASCII name is encoded again.
        let m = b"Subject: \xe4\xf6\xfc caf\xc3\xa9\r\nFrom: =?utf-8?q?J=C3=B6rg?= <j@x.org>\r\n\
            Sender: s@x\r\nReply-To: r@x\r\nIn-Reply-To: <a@b>\r\nBcc: hidden@x\r\n\
            Date: whenever\r\n\r\nx\r\n";
        let expected = [
            &b"(\"whenever\" {9}\r\n"[..],
            b"\xe4\xf6\xfc caf\xc3\xa9",
            b" ((\"=?utf-8?b?SsO2cmc=?=\" NIL \"j\" \"x.org\")) ((NIL NIL \"s\" \"x\")) \
              ((NIL NIL \"r\" \"x\")) NIL NIL ((NIL NIL \"hidden\" \"x\")) \"<a@b>\" NIL)",
        ]
        .concat();
        assert_eq!(envelope_bytes(m), expected);
        // No header at all: every field NIL.
        assert_eq!(
            envelope_of(b"\r\nbody\r\n"),
            "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        );
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
        let text = structure_of(&m, true);
        assert!(text.len() < 100_000);
        assert!(text.starts_with("(((((("), "{text}");
    }
}
