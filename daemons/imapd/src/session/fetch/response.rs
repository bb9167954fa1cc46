//! One message's FETCH response, planned from the items and written an item at a time.
//!
//! A message is read at most once per response, and only as far as the items need it (its
//! header, or all of it); a message over [`SMALL_MESSAGE`] is not read whole for `BODY[]`,
//! `RFC822` or `TEXT` at all: those are streamed from its file. Every literal is written
//! straight from the message (or its file) into the connection in chunks, flushed as they
//! fill it: however many items a command names, the session holds one copy of the message,
//! never one per item. One response may carry at most [`budget`] bytes: far more than any
//! client asks for, and a refusal for a request that would turn a line into gigabytes.

use std::borrow::Cow;
use std::sync::Arc;

use imap_codec::imap_types::core::NString;
use imap_codec::imap_types::fetch::{MessageDataItem, MessageDataItemName, Section};
use imap_codec::imap_types::flag::FlagFetch;
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_maildir::{MessageInfo, StoreError};

use super::raw::{self, RangeReader};
use super::section::{response_section, section_data};
use super::{mime, SMALL_MESSAGE};
use crate::selected::{octets, Selected};
use crate::session::input::ImapConn;
use crate::session::{blocking, quick, Conn};
use crate::structures::{Bodies, Structure};
use crate::wire::{self, nz};

/// Literal bytes are copied into the output this much at a time.
const CHUNK: usize = 64 * 1024;
/// The smallest [`budget`] (small messages with their structure and a few header fields).
const BUDGET_FLOOR: u64 = 64 * 1024;
/// A response may carry the message this many times over (BODY[] with its parts, headers
/// and MIME headers is at most about twice).
const BUDGET_FACTOR: u64 = 4;

/// The most bytes one FETCH response for a message of `vsize` bytes may carry.
pub(super) fn budget(vsize: u64) -> u64 {
    vsize
        .saturating_mul(BUDGET_FACTOR)
        .saturating_add(BUDGET_FLOOR)
}

/// How a message's response went.
pub(super) enum Written {
    Sent,
    /// The message file is gone (expunged by another session or process): nothing sent.
    Missing,
    /// The response would exceed its [`budget`]: nothing sent.
    TooLarge,
    /// The client is gone.
    Gone,
    /// BINARY of a part in a transfer encoding we cannot undo: nothing sent.
    UnknownCte,
}

/// What is read from a message's file before its response is written.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Need {
    Nothing,
    Header,
    Whole,
}

fn need_of(item: &MessageDataItemName<'_>, large: bool) -> Need {
    // The whole message or its text: streamed from the file when large.
    let whole_or = |when_large| if large { when_large } else { Need::Whole };
    match item {
        MessageDataItemName::Envelope | MessageDataItemName::Rfc822Header => Need::Header,
        MessageDataItemName::Rfc822 => whole_or(Need::Nothing),
        // The header's length is where the text starts.
        MessageDataItemName::Rfc822Text => whole_or(Need::Header),
        MessageDataItemName::BodyExt { section, .. } => match section {
            None => whole_or(Need::Nothing),
            Some(Section::Text(None)) => whole_or(Need::Header),
            Some(Section::Header(None))
            | Some(Section::HeaderFields(None, _))
            | Some(Section::HeaderFieldsNot(None, _)) => Need::Header,
            Some(_) => Need::Whole,
        },
        MessageDataItemName::Body | MessageDataItemName::BodyStructure => Need::Whole,
        MessageDataItemName::Binary { section, .. } if section.is_empty() => {
            whole_or(Need::Nothing)
        }
        MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => Need::Whole,
        _ => Need::Nothing,
    }
}

/// Items whose answer depends on the message's size (RFC822.SIZE, and the whole message or
/// its text, streamed or cut by it): those need it measured.
pub(super) fn uses_size(item: &MessageDataItemName<'_>) -> bool {
    match item {
        MessageDataItemName::Uid
        | MessageDataItemName::Flags
        | MessageDataItemName::InternalDate
        | MessageDataItemName::ModSeq
        | MessageDataItemName::Envelope
        | MessageDataItemName::Rfc822Header => false,
        MessageDataItemName::BodyExt { section, .. } => !matches!(
            section,
            Some(Section::Header(None))
                | Some(Section::HeaderFields(None, _))
                | Some(Section::HeaderFieldsNot(None, _))
        ),
        _ => true,
    }
}

/// Items that need the MIME structure.
fn needs_parse(item: &MessageDataItemName<'_>) -> bool {
    match item {
        MessageDataItemName::Envelope
        | MessageDataItemName::Body
        | MessageDataItemName::BodyStructure => true,
        MessageDataItemName::BodyExt {
            section: Some(section),
            ..
        } => !matches!(
            section,
            Section::Text(None)
                | Section::Header(None)
                | Section::HeaderFields(None, _)
                | Section::HeaderFieldsNot(None, _)
        ),
        MessageDataItemName::Binary { section, .. }
        | MessageDataItemName::BinarySize { section } => !section.is_empty(),
        _ => false,
    }
}

/// A piece of a response, in the order the items were asked for.
enum Part<'a> {
    /// An item encoded whole (UID, FLAGS, dates, sizes, ENVELOPE, BODYSTRUCTURE).
    Encoded(Vec<u8>),
    /// A literal from the message in memory, behind its item name (`BODY[1]<0>`).
    Memory(Vec<u8>, Cow<'a, [u8]>),
    /// A literal streamed from the message's file: its item name, and where in the message
    /// (in CRLF form) it starts and how long it is.
    File(Vec<u8>, u64, u64),
    /// BINARY's decoded content, sent as a literal8 (`~{n}`) when it holds a NUL.
    Binary(Vec<u8>, Cow<'a, [u8]>),
    /// BINARY of a part we cannot decode.
    UnknownCte,
}

impl Part<'_> {
    fn len(&self) -> u64 {
        match self {
            Part::Encoded(bytes) => bytes.len() as u64,
            Part::Memory(name, data) => (name.len() + data.len()) as u64,
            Part::File(name, _, want) => name.len() as u64 + want,
            Part::Binary(name, data) => (name.len() + data.len()) as u64,
            Part::UnknownCte => 0,
        }
    }
}

/// What goes first in every response: the UID (Thunderbird relies on it coming first) and
/// the flags, when asked for or changed by this FETCH.
pub(super) struct Head<'k> {
    pub(super) uid: Option<u32>,
    pub(super) flags: Option<Vec<FlagFetch<'k>>>,
    /// MODSEQ (CONDSTORE), when asked for or with a flag change.
    pub(super) modseq: Option<u64>,
}

/// Writes the FETCH response of message `index` (sequence number `index + 1`).
pub(super) async fn write<S>(
    sel: &Selected,
    index: usize,
    items: &[MessageDataItemName<'_>],
    head: Head<'_>,
    conn: &mut Conn<S>,
) -> Written
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let msg = &sel.messages[index];
    if msg.vsize.is_none() && items.iter().any(uses_size) {
        // Could not be measured (gone, unreadable): no size, and no body cut to a wrong one.
        write_known(index, msg.uid, head, &mut conn.out);
        return Written::Missing;
    }
    let large = octets(msg) > SMALL_MESSAGE;
    // ENVELOPE, BODY and BODYSTRUCTURE kept from an earlier FETCH need no read and no parse.
    let kept = match &sel.structures {
        Some(cache) if items.iter().any(is_structure) => cache.get(sel.folder.path(), &msg.base),
        _ => None,
    };
    let answered = |item: &MessageDataItemName<'_>| kept.as_ref().is_some_and(|k| answers(k, item));
    let need = items
        .iter()
        .filter(|i| !answered(i))
        .map(|i| need_of(i, large))
        .max()
        .unwrap_or(Need::Nothing);
    let content = match need {
        Need::Nothing => None,
        Need::Header | Need::Whole => {
            let read = || -> Result<Vec<u8>, StoreError> {
                let mut file = sel.folder.open(msg)?;
                let read = if need == Need::Whole {
                    raw::read_all(&mut file)
                } else {
                    raw::read_header(&mut file)
                };
                read.map_err(StoreError::Input)
            };
            // In place for a small message; a large one read whole hands off.
            let read = if large && need == Need::Whole {
                blocking(read)
            } else {
                quick(read)
            };
            match read {
                Ok(content) => Some(content),
                Err(_) => {
                    write_known(index, msg.uid, head, &mut conn.out);
                    return Written::Missing;
                }
            }
        }
    };
    let parsed = match &content {
        Some(content) if items.iter().any(|i| needs_parse(i) && !answered(i)) => {
            mime::parse(content)
        }
        _ => None,
    };
    let whole = need == Need::Whole;
    let kept = match (&sel.structures, &content) {
        (Some(cache), Some(_)) if items.iter().any(|i| is_structure(i) && !answered(i)) => {
            let structure = encode_structure(parsed.as_ref(), whole);
            Some(cache.put(sel.folder.path(), &msg.base, structure))
        }
        _ => kept,
    };
    let message = Message {
        info: msg,
        content: content.as_deref().unwrap_or_default(),
        whole,
        parsed: parsed.as_ref(),
        kept,
    };
    let mut parts = Vec::with_capacity(items.len() + 2);
    if let Some(uid) = head.uid {
        parts.push(Part::Encoded(wire::fetch_item(MessageDataItem::Uid(nz(
            uid,
        )))));
    }
    if let Some(flags) = head.flags {
        parts.push(Part::Encoded(wire::fetch_item(MessageDataItem::Flags(
            flags,
        ))));
    }
    if let Some(modseq) = head.modseq {
        let modseq = MessageDataItem::ModSeq(crate::modseq::nz64(modseq));
        parts.push(Part::Encoded(wire::fetch_item(modseq)));
    }
    parts.extend(items.iter().filter_map(|item| message.part(item)));
    if parts.is_empty() {
        // A FETCH response needs an item.
        parts.push(Part::Encoded(wire::fetch_item(MessageDataItem::Uid(nz(
            msg.uid,
        )))));
    }
    if parts.iter().any(|p| matches!(p, Part::UnknownCte)) {
        return Written::UnknownCte;
    }
    let size: u64 = parts.iter().map(Part::len).sum();
    if size > budget(octets(msg)) {
        tracing::info!(
            uid = msg.uid,
            size,
            "FETCH response over its budget: refused"
        );
        return Written::TooLarge;
    }
    let seq = u32::try_from(index + 1).unwrap_or(u32::MAX);
    conn.out
        .extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    for (n, part) in parts.into_iter().enumerate() {
        if n > 0 {
            conn.out.push(b' ');
        }
        let sent = match part {
            Part::Encoded(bytes) => {
                conn.out.extend_from_slice(&bytes);
                conn.flush_if_full().await
            }
            Part::Memory(name, data) => {
                literal_head(conn, &name, data.len() as u64);
                copy_literal(&data, conn).await
            }
            Part::File(name, start, want) => {
                literal_head(conn, &name, want);
                stream_literal(sel, msg, start, want, conn).await
            }
            Part::Binary(name, data) => super::binary::write(conn, &name, &data).await,
            Part::UnknownCte => true,
        };
        if !sent {
            return Written::Gone;
        }
    }
    conn.out.extend_from_slice(b")\r\n");
    Written::Sent
}

/// The FETCH response of a message another session expunged (its file is gone, the view still
/// holds it): what the view knows, UID, FLAGS and MODSEQ, without the items that need the
/// message (RFC 2180 §4.1: return what is still accessible).
fn write_known(index: usize, uid: u32, head: Head<'_>, out: &mut Vec<u8>) {
    let mut parts = vec![wire::fetch_item(MessageDataItem::Uid(nz(uid)))];
    if let Some(flags) = head.flags {
        parts.push(wire::fetch_item(MessageDataItem::Flags(flags)));
    }
    if let Some(modseq) = head.modseq {
        let modseq = MessageDataItem::ModSeq(crate::modseq::nz64(modseq));
        parts.push(wire::fetch_item(modseq));
    }
    let seq = u32::try_from(index + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    out.extend_from_slice(&parts.join(&b' '));
    out.extend_from_slice(b")\r\n");
}

/// ENVELOPE, BODY and BODYSTRUCTURE: what the structure cache holds.
fn is_structure(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::Envelope
            | MessageDataItemName::Body
            | MessageDataItemName::BodyStructure
    )
}

/// Whether a kept structure answers `item` (the bodies only when the whole message was read).
fn answers(kept: &Structure, item: &MessageDataItemName<'_>) -> bool {
    match item {
        MessageDataItemName::Envelope => true,
        MessageDataItemName::Body | MessageDataItemName::BodyStructure => kept.bodies.is_some(),
        _ => false,
    }
}

/// The encoded structure items of a message, from its parse (the bodies only
/// when that was of the whole message). Unparseable is answered as [`Message::part`] does.
fn encode_structure(parsed: Option<&mail_parser::Message<'_>>, whole: bool) -> Structure {
    let structure =
        |extended| parsed.map_or_else(mime::empty_body, |p| mime::body_structure(p, extended));
    Structure {
        envelope: wire::fetch_item(MessageDataItem::Envelope(
            parsed.map_or_else(mime::empty_envelope, mime::envelope),
        ))
        .into(),
        bodies: whole.then(|| Bodies {
            body: wire::fetch_item(MessageDataItem::Body(structure(false))).into(),
            body_structure: wire::fetch_item(MessageDataItem::BodyStructure(structure(true)))
                .into(),
        }),
    }
}

/// A message as far as it was read.
struct Message<'a> {
    info: &'a MessageInfo,
    /// The header or the whole message (`whole`), in CRLF form; empty when not read.
    content: &'a [u8],
    whole: bool,
    parsed: Option<&'a mail_parser::Message<'a>>,
    /// Its structure items, kept from an earlier FETCH or made for this one.
    kept: Option<Arc<Structure>>,
}

impl<'a> Message<'a> {
    /// The part of the response for `item`; `None` for UID and FLAGS (in the head) and for
    /// items we do not send.
    fn part(&self, item: &MessageDataItemName<'_>) -> Option<Part<'a>> {
        let encoded = |item| Some(Part::Encoded(wire::fetch_item(item)));
        let msg = self.info;
        if let Some(kept) = self.kept.as_ref().filter(|k| answers(k, item)) {
            let bytes = match (item, &kept.bodies) {
                (MessageDataItemName::Body, Some(b)) => &b.body,
                (MessageDataItemName::BodyStructure, Some(b)) => &b.body_structure,
                _ => &kept.envelope,
            };
            return Some(Part::Encoded(bytes.to_vec()));
        }
        match item {
            MessageDataItemName::InternalDate => encoded(MessageDataItem::InternalDate(
                wire::internal_date(msg.internal_date),
            )),
            MessageDataItemName::Rfc822Size => encoded(MessageDataItem::Rfc822Size(
                u32::try_from(octets(msg)).unwrap_or(u32::MAX),
            )),
            MessageDataItemName::Envelope => encoded(MessageDataItem::Envelope(
                self.parsed
                    .map_or_else(mime::empty_envelope, mime::envelope),
            )),
            MessageDataItemName::Body => encoded(MessageDataItem::Body(self.structure(false))),
            MessageDataItemName::BodyStructure => {
                encoded(MessageDataItem::BodyStructure(self.structure(true)))
            }
            MessageDataItemName::Rfc822 => Some(self.whole_range(b"RFC822".to_vec(), 0, None)),
            MessageDataItemName::Rfc822Header => {
                let header = self.section(&Section::Header(None));
                Some(Part::Memory(b"RFC822.HEADER".to_vec(), header))
            }
            MessageDataItemName::Rfc822Text => Some(self.text(b"RFC822.TEXT".to_vec(), 0, None)),
            MessageDataItemName::BodyExt {
                section, partial, ..
            } => {
                let origin = partial.map(|(o, _)| o);
                let name = wire::fetch_item_name(MessageDataItem::BodyExt {
                    section: section.as_ref().map(response_section),
                    origin,
                    data: NString(None),
                });
                let offset = partial.map_or(0, |(o, _)| u64::from(o));
                let length = partial.map(|(_, l)| u64::from(l.get()));
                Some(match section {
                    None => self.whole_range(name, offset, length),
                    Some(Section::Text(None)) => self.text(name, offset, length),
                    Some(section) => Part::Memory(name, cut(self.section(section), offset, length)),
                })
            }
            MessageDataItemName::Binary {
                section, partial, ..
            } => {
                let name = super::binary::item_name(b"BINARY", section, partial.map(|(o, _)| o));
                let offset = partial.map_or(0, |(o, _)| u64::from(o));
                let length = partial.map(|(_, l)| u64::from(l.get()));
                if section.is_empty() {
                    // The whole message, undecoded.
                    return Some(self.whole_range(name, offset, length));
                }
                Some(
                    match super::binary::decoded(self.content, self.parsed, section) {
                        Ok(data) => Part::Binary(name, cut(data, offset, length)),
                        Err(_) => Part::UnknownCte,
                    },
                )
            }
            MessageDataItemName::BinarySize { section } => {
                let size = if section.is_empty() {
                    Ok(octets(msg))
                } else {
                    super::binary::decoded(self.content, self.parsed, section)
                        .map(|d| d.len() as u64)
                };
                Some(match size {
                    Ok(size) => {
                        let mut item = super::binary::item_name(b"BINARY.SIZE", section, None);
                        item.extend_from_slice(format!(" {size}").as_bytes());
                        Part::Encoded(item)
                    }
                    Err(_) => Part::UnknownCte,
                })
            }
            _ => None,
        }
    }

    fn structure(&self, extended: bool) -> imap_codec::imap_types::body::BodyStructure<'static> {
        self.parsed
            .map_or_else(mime::empty_body, |p| mime::body_structure(p, extended))
    }

    fn section(&self, section: &Section<'_>) -> Cow<'a, [u8]> {
        section_data(self.content, self.parsed, section).unwrap_or_default()
    }

    /// Bytes `offset..offset + length` of the whole message, which RFC822.SIZE promised to
    /// be `vsize` long: from memory when it was read, else from its file.
    fn whole_range(&self, name: Vec<u8>, offset: u64, length: Option<u64>) -> Part<'a> {
        let (start, want) = window(octets(self.info), offset, length);
        if !self.whole {
            return Part::File(name, start, want);
        }
        // A file that changed under us is cut or padded to the promised length.
        let data = self.content.get(start as usize..).unwrap_or_default();
        let data = match data.get(..want as usize) {
            Some(data) => Cow::Borrowed(data),
            None => {
                let mut padded = data.to_vec();
                padded.resize(want as usize, b' ');
                Cow::Owned(padded)
            }
        };
        Part::Memory(name, data)
    }

    /// The top-level TEXT, from memory or (large messages) from the file after the header.
    fn text(&self, name: Vec<u8>, offset: u64, length: Option<u64>) -> Part<'a> {
        if self.whole {
            return Part::Memory(
                name,
                cut(self.section(&Section::Text(None)), offset, length),
            );
        }
        // Only the header was read: the text is the rest of the file.
        let header = raw::header_len(self.content) as u64;
        let (start, want) = window(octets(self.info).saturating_sub(header), offset, length);
        Part::File(name, header + start, want)
    }
}

/// Where `offset..offset + length` of something `total` bytes long starts and how long it
/// is, cut to what there is.
fn window(total: u64, offset: u64, length: Option<u64>) -> (u64, u64) {
    let start = offset.min(total);
    let want = length.map_or(total - start, |l| l.min(total - start));
    (start, want)
}

/// `offset..offset + length` of `data` (a partial FETCH), cut to what there is.
fn cut(data: Cow<'_, [u8]>, offset: u64, length: Option<u64>) -> Cow<'_, [u8]> {
    let (start, want) = window(data.len() as u64, offset, length);
    let (start, end) = (start as usize, (start + want) as usize);
    match data {
        Cow::Borrowed(bytes) => Cow::Borrowed(bytes.get(start..end).unwrap_or_default()),
        Cow::Owned(mut bytes) => {
            bytes.truncate(end);
            bytes.drain(..start);
            Cow::Owned(bytes)
        }
    }
}

/// ` NAME {n}\r\n`, before a literal's bytes.
fn literal_head<S>(conn: &mut Conn<S>, name: &[u8], len: u64) {
    conn.out.extend_from_slice(name);
    conn.out
        .extend_from_slice(format!(" {{{len}}}\r\n").as_bytes());
}

/// A literal's bytes from memory, a chunk at a time; NULs as 0x80, as in any literal.
pub(super) async fn copy_literal<S>(data: &[u8], conn: &mut Conn<S>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for chunk in data.chunks(CHUNK) {
        let at = conn.out.len();
        conn.out.extend_from_slice(chunk);
        if let Some(written) = conn.out.get_mut(at..) {
            wire::replace_nuls(written);
        }
        if !conn.flush_if_full().await {
            return false;
        }
    }
    true
}

/// Streams bytes `start..start + want` of a message into the connection, read from its file
/// in chunks with bare LFs made CRLF: never held whole in memory.
async fn stream_literal<S>(
    sel: &Selected,
    msg: &MessageInfo,
    start: u64,
    want: u64,
    conn: &mut Conn<S>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let file = match quick(|| sel.folder.open(msg)) {
        Ok(file) => Some(file),
        Err(err) => {
            tracing::warn!(uid = msg.uid, error = %err, "cannot open a message");
            None
        }
    };
    let mut reader = RangeReader::new(file, start, want);
    while quick(|| reader.next_into(&mut conn.out)) {
        if !conn.flush_if_full().await {
            return false;
        }
    }
    true
}
