//! One message's content for a search: read as far as the keys need, then parsed,
//! lowercased and its headers gathered at most once each, whatever the number of keys.

use std::cell::OnceCell;
use std::collections::HashMap;

use inetkit_maildir::MessageInfo;
use mail_parser::{HeaderValue, Message, PartType};

use super::{lower, Need, Text};
use crate::selected::Selected;
use crate::session::fetch::{mime, raw};

/// A message's header or whole content in CRLF form; empty if it cannot be read (then only
/// keys that need no content can match).
pub(crate) fn read(selected: &Selected, msg: &MessageInfo, need: Need) -> Vec<u8> {
    let read = selected.folder.open(msg).ok().and_then(|mut f| {
        if need == Need::Whole {
            raw::read_all(&mut f).ok()
        } else {
            raw::read_header(&mut f).ok()
        }
    });
    read.unwrap_or_default()
}

/// One message's content, prepared on first use and then kept for every key.
pub(super) struct Content<'b> {
    bytes: &'b [u8],
    parsed: OnceCell<Option<Message<'b>>>,
    /// The raw message lowercased, and where its body starts in that text.
    lower: OnceCell<(String, usize)>,
    /// Header values by field name (lowercased): raw and decoded, lowercased.
    headers: OnceCell<HashMap<String, Vec<String>>>,
    /// Address fields by name (lowercased): each address as parsed, lowercased.
    addresses: OnceCell<HashMap<String, Vec<String>>>,
    /// The decoded text of each text part, lowercased.
    parts: OnceCell<Vec<String>>,
    /// The decoded header values, lowercased.
    decoded_headers: OnceCell<Vec<String>>,
}

impl<'b> Content<'b> {
    pub(super) fn new(bytes: &'b [u8]) -> Content<'b> {
        Content {
            bytes,
            parsed: OnceCell::new(),
            lower: OnceCell::new(),
            headers: OnceCell::new(),
            addresses: OnceCell::new(),
            parts: OnceCell::new(),
            decoded_headers: OnceCell::new(),
        }
    }

    pub(super) fn parsed(&self) -> Option<&Message<'b>> {
        self.parsed.get_or_init(|| mime::parse(self.bytes)).as_ref()
    }

    pub(super) fn lower(&self) -> &(String, usize) {
        self.lower.get_or_init(|| {
            let split = raw::header_len(self.bytes);
            let (header, body) = self.bytes.split_at(split.min(self.bytes.len()));
            let mut text = lower(header);
            let body_start = text.len();
            text.push_str(&lower(body));
            (text, body_start)
        })
    }

    pub(super) fn headers(&self) -> &HashMap<String, Vec<String>> {
        self.headers.get_or_init(|| {
            let mut map: HashMap<String, Vec<String>> = HashMap::new();
            let Some(msg) = self.parsed() else {
                return map;
            };
            let raw = &msg.raw_message[..];
            for h in msg.parts.first().map_or(&[][..], |top| &top.headers[..]) {
                let values = map.entry(h.name.as_str().to_ascii_lowercase()).or_default();
                values.push(lower(mime::slice(raw, h.offset_start, h.offset_end)));
                // The decoded text too, where mail-parser has it (encoded words).
                if let HeaderValue::Text(t) = &h.value {
                    values.push(t.to_lowercase());
                }
            }
            map
        })
    }

    /// SEARCH FROM and the like compare with the addresses, not the raw field (RFC 3501
    /// §6.4.4 names the structure): `<user (comment)@ domain.org>` is `user@domain.org`. A
    /// field that is no address list is compared raw.
    pub(super) fn addresses(&self) -> &HashMap<String, Vec<String>> {
        self.addresses.get_or_init(|| {
            let mut map: HashMap<String, Vec<String>> = HashMap::new();
            let Some(msg) = self.parsed() else {
                return map;
            };
            let raw = &msg.raw_message[..];
            for h in msg.parts.first().map_or(&[][..], |top| &top.headers[..]) {
                let name = h.name.as_str().to_ascii_lowercase();
                if !matches!(name.as_str(), "from" | "to" | "cc" | "bcc") {
                    continue;
                }
                let values = map.entry(name).or_default();
                match &h.value {
                    HeaderValue::Address(list) => address_texts(list, values),
                    _ => values.push(lower(mime::slice(raw, h.offset_start, h.offset_end))),
                }
                // An empty needle matches every message with the field.
                if values.is_empty() {
                    values.push(String::new());
                }
            }
            map
        })
    }

    pub(super) fn parts(&self) -> &[String] {
        self.parts.get_or_init(|| {
            let Some(msg) = self.parsed() else {
                return Vec::new();
            };
            msg.parts
                .iter()
                .filter_map(|p| match &p.body {
                    PartType::Text(t) | PartType::Html(t) => Some(t.to_lowercase()),
                    _ => None,
                })
                .collect()
        })
    }

    pub(super) fn decoded_headers(&self) -> &[String] {
        self.decoded_headers.get_or_init(|| {
            let Some(top) = self.parsed().and_then(|m| m.parts.first()) else {
                return Vec::new();
            };
            top.headers
                .iter()
                .filter_map(|h| h.value.as_text().map(str::to_lowercase))
                .collect()
        })
    }

    pub(super) fn has(&self, text: &Text) -> bool {
        match text {
            // HEADER with an empty string matches every message that has the field.
            Text::Header(name, needle) => self
                .headers()
                .get(name)
                .is_some_and(|values| values.iter().any(|v| v.contains(needle.as_str()))),
            Text::Address(name, needle) => self
                .addresses()
                .get(name)
                .is_some_and(|values| values.iter().any(|v| v.contains(needle.as_str()))),
            Text::Body(needle) => {
                let (text, body_start) = self.lower();
                let body = text.get(*body_start..).unwrap_or_default();
                body.contains(needle.as_str())
                    || self.parts().iter().any(|p| p.contains(needle.as_str()))
            }
            Text::All(needle) => {
                self.lower().0.contains(needle.as_str())
                    || self.parts().iter().any(|p| p.contains(needle.as_str()))
                    || self
                        .decoded_headers()
                        .iter()
                        .any(|h| h.contains(needle.as_str()))
            }
        }
    }

    pub(super) fn sent_date(&self) -> Option<chrono::NaiveDate> {
        let d = self.parsed()?.date()?;
        chrono::NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
    }
}

/// Each address of a list as `name <mailbox@host>` (lowercased), and each group's name.
fn address_texts(list: &mail_parser::Address<'_>, out: &mut Vec<String>) {
    let one = |a: &mail_parser::Addr<'_>| {
        let text = match (a.name.as_deref(), a.address.as_deref()) {
            (Some(name), Some(addr)) => format!("{name} <{addr}>"),
            (Some(name), None) => name.to_owned(),
            (None, Some(addr)) => addr.to_owned(),
            (None, None) => return None,
        };
        Some(text.to_lowercase())
    };
    match list {
        mail_parser::Address::List(addrs) => out.extend(addrs.iter().filter_map(one)),
        mail_parser::Address::Group(groups) => {
            for g in groups {
                out.extend(g.name.as_deref().map(str::to_lowercase));
                out.extend(g.addresses.iter().filter_map(one));
            }
        }
    }
}
