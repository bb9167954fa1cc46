//! BODY[section]: the bytes a section names (RFC 3501 §6.4.5), and the section as the
//! response names it.

use imap_codec::imap_types::core::{AString, Vec1};
use imap_codec::imap_types::fetch::Section;

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

/// The bytes of a section (other than the whole message). `None`: no such part (sent as an
/// empty string).
pub(super) fn section_data(
    content: &[u8],
    parsed: Option<&mail_parser::Message<'_>>,
    section: Option<&Section<'_>>,
) -> Option<Vec<u8>> {
    let header_of = |bytes: &[u8]| bytes[..raw::header_len(bytes)].to_vec();
    let names_of =
        |names: &imap_codec::imap_types::core::Vec1<imap_codec::imap_types::core::AString<'_>>| {
            names
                .as_ref()
                .iter()
                .map(|n| n.as_ref().to_vec())
                .collect::<Vec<_>>()
        };
    // Top-level header sections need no MIME parsing.
    match section? {
        Section::Header(None) => return Some(header_of(content)),
        Section::HeaderFields(None, names) => {
            return Some(raw::header_fields(
                &header_of(content),
                &names_of(names),
                false,
            ))
        }
        Section::HeaderFieldsNot(None, names) => {
            return Some(raw::header_fields(
                &header_of(content),
                &names_of(names),
                true,
            ))
        }
        Section::Text(None) => return Some(content[raw::header_len(content)..].to_vec()),
        _ => {}
    }
    let msg = parsed?;
    let path = |p: &imap_codec::imap_types::fetch::Part| {
        p.0.as_ref().iter().map(|n| n.get()).collect::<Vec<u32>>()
    };
    // The message encapsulated in a message/rfc822 part, as its own bytes.
    let inner = |p: &imap_codec::imap_types::fetch::Part| -> Option<Vec<u8>> {
        let loc = mime::locate(msg, &path(p))?;
        match &loc.part.body {
            mail_parser::PartType::Message(_) => Some(
                mime::slice(
                    &loc.message.raw_message,
                    loc.part.offset_body,
                    loc.part.offset_end,
                )
                .to_vec(),
            ),
            _ => None,
        }
    };
    match section? {
        Section::Part(p) => {
            let loc = mime::locate(msg, &path(p))?;
            Some(
                mime::slice(
                    &loc.message.raw_message,
                    loc.part.offset_body,
                    loc.part.offset_end,
                )
                .to_vec(),
            )
        }
        Section::Mime(p) => {
            let loc = mime::locate(msg, &path(p))?;
            Some(
                mime::slice(
                    &loc.message.raw_message,
                    loc.part.offset_header,
                    loc.part.offset_body,
                )
                .to_vec(),
            )
        }
        Section::Header(Some(p)) => inner(p).map(|m| header_of(&m)),
        Section::HeaderFields(Some(p), names) => {
            inner(p).map(|m| raw::header_fields(&header_of(&m), &names_of(names), false))
        }
        Section::HeaderFieldsNot(Some(p), names) => {
            inner(p).map(|m| raw::header_fields(&header_of(&m), &names_of(names), true))
        }
        Section::Text(Some(p)) => inner(p).map(|m| m[raw::header_len(&m)..].to_vec()),
        _ => None,
    }
}
