//! BODY[section]: the bytes a section names (RFC 3501 §6.4.5), and the section as the
//! response names it.

use std::borrow::Cow;

use imap_codec::imap_types::core::{AString, Vec1};
use imap_codec::imap_types::fetch::{Part, Section};
use mail_parser::{Message, PartType};

use super::{mime, raw};

/// The section as the response names it: header field names upper-cased.
pub(super) fn response_section(section: &Section<'_>) -> Section<'static> {
    use imap_codec::imap_types::ToStatic;
    let upper = |names: &Vec1<AString<'_>>| -> Vec1<AString<'static>> {
        let names: Vec<AString<'static>> = names
            .as_ref()
            .iter()
            .map(|n| {
                let name = n.as_ref().to_ascii_uppercase();
                AString::try_from(name).unwrap_or_else(|_| n.to_static())
            })
            .collect();
        // As many names as the request had: at least one.
        Vec1::unvalidated(names)
    };
    match section {
        Section::HeaderFields(part, names) => Section::HeaderFields(part.clone(), upper(names)),
        Section::HeaderFieldsNot(part, names) => {
            Section::HeaderFieldsNot(part.clone(), upper(names))
        }
        other => other.to_static(),
    }
}

/// The bytes of a section other than the whole message and the top-level TEXT (which are
/// ranges of the message: see `response`), borrowed from the message where they are a part
/// of it. `None`: no such part (sent as an empty string).
pub(crate) fn section_data<'a>(
    content: &'a [u8],
    parsed: Option<&'a Message<'a>>,
    section: &Section<'_>,
) -> Option<Cow<'a, [u8]>> {
    let header_of = |bytes: &'a [u8]| bytes.get(..raw::header_len(bytes)).unwrap_or(bytes);
    let fields = |bytes: &'a [u8], names: &Vec1<AString<'_>>, not: bool| {
        let names: Vec<Vec<u8>> = names.as_ref().iter().map(|n| n.as_ref().to_vec()).collect();
        Cow::Owned(raw::header_fields(header_of(bytes), &names, not))
    };
    // Top-level header sections need no MIME parsing.
    match section {
        Section::Header(None) => return Some(Cow::Borrowed(header_of(content))),
        Section::HeaderFields(None, names) => return Some(fields(content, names, false)),
        Section::HeaderFieldsNot(None, names) => return Some(fields(content, names, true)),
        Section::Text(None) => {
            let body = content.get(raw::header_len(content)..).unwrap_or_default();
            return Some(Cow::Borrowed(body));
        }
        _ => {}
    }
    let msg = parsed?;
    let path = |p: &Part| p.0.as_ref().iter().map(|n| n.get()).collect::<Vec<u32>>();
    // The message encapsulated in a message/rfc822 part, as its own bytes.
    let inner = |p: &Part| -> Option<&'a [u8]> {
        let loc = mime::locate(msg, &path(p))?;
        match &loc.part.body {
            PartType::Message(_) => Some(mime::slice(
                &loc.message.raw_message,
                loc.part.offset_body,
                loc.part.offset_end,
            )),
            _ => None,
        }
    };
    let data = match section {
        Section::Part(p) => {
            let loc = mime::locate(msg, &path(p))?;
            let raw = &loc.message.raw_message;
            Cow::Borrowed(mime::slice(raw, loc.part.offset_body, loc.part.offset_end))
        }
        Section::Mime(p) => {
            let loc = mime::locate(msg, &path(p))?;
            let raw = &loc.message.raw_message;
            Cow::Borrowed(mime::slice(
                raw,
                loc.part.offset_header,
                loc.part.offset_body,
            ))
        }
        Section::Header(Some(p)) => Cow::Borrowed(header_of(inner(p)?)),
        Section::HeaderFields(Some(p), names) => fields(inner(p)?, names, false),
        Section::HeaderFieldsNot(Some(p), names) => fields(inner(p)?, names, true),
        Section::Text(Some(p)) => {
            let m = inner(p)?;
            Cow::Borrowed(m.get(raw::header_len(m)..).unwrap_or_default())
        }
        _ => return None,
    };
    Some(data)
}
