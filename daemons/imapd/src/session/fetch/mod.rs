//! FETCH (RFC 3501 §6.4.5): the session side, which reads each message as far as the items
//! need it and writes the response, streaming large bodies from their files. The data
//! itself comes from [`mime`] (ENVELOPE, BODYSTRUCTURE, parts), [`raw`] (message bytes in
//! CRLF form) and [`section`] (BODY[section] extraction).

pub(crate) mod mime;
pub(crate) mod raw;
mod section;

use imap_codec::imap_types::core::{IString, NString, Vec1};
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::sequence::SequenceSet;
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_maildir::{FlagChange, Flags, MessageInfo, StoreError};

use self::raw::RangeReader;
use self::section::{response_section, section_data};
use super::input::ImapConn;
use super::reply::{bad, expunge_issued, ok, Done};
use super::{blocking, Conn, Session};
use crate::selected::Selected;
use crate::wire::{self, nz};

/// Messages up to this size are read whole for FETCH; larger ones are streamed in chunks.
const SMALL_MESSAGE: u64 = 1024 * 1024;

impl Session {
    /// FETCH and UID FETCH; a macro (ALL, FAST, FULL) stands for its items.
    pub(super) async fn fetch_command<S>(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let items = match items {
            MacroOrMessageDataItemNames::Macro(m) => match m {
                Macro::Fast => vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                ],
                Macro::All => vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                    MessageDataItemName::Envelope,
                ],
                _ => vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                    MessageDataItemName::Envelope,
                    MessageDataItemName::Body,
                ],
            },
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
        };
        self.fetch(set, &items, uid, conn).await
    }

    async fn fetch<S>(
        &mut self,
        set: &SequenceSet,
        items: &[MessageDataItemName<'_>],
        uid: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        let Some(indexes) = sel.resolve(set, uid) else {
            return bad("Invalid message sequence number.");
        };
        let sets_seen = !sel.read_only
            && items.iter().any(|i| match i {
                MessageDataItemName::BodyExt { peek, .. } => !peek,
                MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
                _ => false,
            });
        let want_uid = uid || items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
        let want_flags = items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Flags));
        let need = items.iter().map(need_of).max().unwrap_or(Need::Nothing);
        // \Seen set first, for all of them under one lock; their FLAGS go out with them.
        let mut seen_now = std::collections::HashSet::new();
        if sets_seen {
            let unseen: Vec<usize> = indexes
                .iter()
                .copied()
                .filter(|&i| !sel.messages[i].flags.contains(Flags::SEEN))
                .collect();
            if let Ok(gone) = blocking(|| sel.change_flags(&unseen, FlagChange::Add(Flags::SEEN))) {
                seen_now = unseen.into_iter().filter(|i| !gone.contains(i)).collect();
            }
        }
        let sel = &*sel;
        let mut missing = false;
        for i in indexes {
            let seen_changed = seen_now.contains(&i);
            let msg = &sel.messages[i];
            // Content, read once per message as far as the items need it.
            let content = match need {
                Need::Nothing | Need::Stream => None,
                Need::Header | Need::Whole => {
                    let read = blocking(|| -> std::io::Result<Vec<u8>> {
                        let mut file = sel
                            .folder
                            .open(msg)
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        if need == Need::Whole {
                            raw::read_all(&mut file)
                        } else {
                            raw::read_header(&mut file)
                        }
                    });
                    match read {
                        Ok(c) => Some(c),
                        Err(_) => {
                            missing = true;
                            continue;
                        }
                    }
                }
            };
            let parsed = content.as_deref().and_then(mime::parse);
            // The whole message, when it was read whole.
            let whole = content.as_deref().filter(|_| need == Need::Whole);
            // UID first: Thunderbird relies on it.
            let mut out = Vec::with_capacity(items.len() + 1);
            if want_uid {
                out.push(MessageDataItem::Uid(nz(msg.uid)));
            }
            if want_flags || seen_changed {
                let recent = sel.recent.contains(&msg.uid);
                out.push(MessageDataItem::Flags(wire::flags(
                    msg.flags,
                    recent,
                    &sel.keywords,
                )));
            }
            // Whole-message literals too large to hold in memory: streamed after the rest.
            let mut streamed = Vec::new();
            for item in items {
                match item {
                    MessageDataItemName::Uid | MessageDataItemName::Flags => {}
                    MessageDataItemName::InternalDate => {
                        let date = wire::internal_date(msg.internal_date);
                        out.push(MessageDataItem::InternalDate(date));
                    }
                    MessageDataItemName::Rfc822Size => {
                        let size = u32::try_from(msg.vsize).unwrap_or(u32::MAX);
                        out.push(MessageDataItem::Rfc822Size(size));
                    }
                    MessageDataItemName::Envelope => {
                        let envelope = parsed
                            .as_ref()
                            .map_or_else(mime::empty_envelope, mime::envelope);
                        out.push(MessageDataItem::Envelope(envelope));
                    }
                    MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
                        let ext = matches!(item, MessageDataItemName::BodyStructure);
                        let structure = parsed
                            .as_ref()
                            .map_or_else(mime::empty_body, |p| mime::body_structure(p, ext));
                        out.push(if ext {
                            MessageDataItem::BodyStructure(structure)
                        } else {
                            MessageDataItem::Body(structure)
                        });
                    }
                    MessageDataItemName::Rfc822 => {
                        let want = msg.vsize;
                        if want > SMALL_MESSAGE {
                            streamed.push(("RFC822".to_owned(), 0, want));
                        } else {
                            let data = read_range(sel, msg, whole, 0, want);
                            out.push(MessageDataItem::Rfc822(literal(data)));
                        }
                    }
                    MessageDataItemName::Rfc822Header | MessageDataItemName::Rfc822Text => {
                        let c = content.as_deref().unwrap_or_default();
                        let split = raw::header_len(c);
                        out.push(if matches!(item, MessageDataItemName::Rfc822Header) {
                            MessageDataItem::Rfc822Header(literal(c[..split].to_vec()))
                        } else {
                            MessageDataItem::Rfc822Text(literal(c[split..].to_vec()))
                        });
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        let origin = partial.map(|(o, _)| o);
                        let (offset, length) = partial
                            .map(|(o, l)| (u64::from(o), Some(u64::from(l.get()))))
                            .unwrap_or((0, None));
                        let data = if section.is_none() {
                            let start = offset.min(msg.vsize);
                            let want =
                                length.map_or(msg.vsize, |l| (start + l).min(msg.vsize)) - start;
                            if want > SMALL_MESSAGE {
                                let origin = origin.map(|o| format!("<{o}>")).unwrap_or_default();
                                streamed.push((format!("BODY[]{origin}"), start, want));
                                continue;
                            }
                            read_range(sel, msg, whole, start, want)
                        } else {
                            let c = content.as_deref().unwrap_or_default();
                            let data = section_data(c, parsed.as_ref(), section.as_ref());
                            let data = data.unwrap_or_default();
                            let from = (offset as usize).min(data.len());
                            let to =
                                length.map_or(data.len(), |l| (from + l as usize).min(data.len()));
                            data[from..to].to_vec()
                        };
                        out.push(MessageDataItem::BodyExt {
                            section: section.as_ref().map(response_section),
                            origin,
                            data: literal(data),
                        });
                    }
                    _ => {}
                }
            }
            // A FETCH response needs an item; for a fetch of only streamed bodies it is the UID.
            if out.is_empty() {
                out.push(MessageDataItem::Uid(nz(msg.uid)));
            }
            let Ok(out) = Vec1::try_from(out) else {
                continue;
            };
            let seq = nz(i as u32 + 1);
            wire::data(&mut conn.out, Data::Fetch { seq, items: out });
            if !streamed.is_empty() {
                // imap-codec needs a literal's bytes in memory, which a message of many
                // megabytes should not be: its item name and literal are written here and the
                // bytes streamed from the file, inside the encoded response (before its `)`).
                if conn.out.ends_with(b")\r\n") {
                    conn.out.truncate(conn.out.len() - 3);
                }
                for (name, start, want) in streamed {
                    let head = format!(" {name} {{{want}}}\r\n");
                    conn.out.extend_from_slice(head.as_bytes());
                    if !stream_body(sel, msg, start, want, conn).await {
                        return Done::Close;
                    }
                }
                conn.out.extend_from_slice(b")\r\n");
            }
            if !conn.flush_if_full().await {
                return Done::Close;
            }
        }
        if missing {
            expunge_issued()
        } else {
            ok("FETCH completed.")
        }
    }
}

/// Message content as a FETCH literal.
fn literal(data: Vec<u8>) -> NString<'static> {
    NString(Some(IString::Literal(wire::literal(data))))
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Need {
    Nothing,
    Stream,
    Header,
    Whole,
}

fn need_of(item: &MessageDataItemName<'_>) -> Need {
    match item {
        MessageDataItemName::Envelope | MessageDataItemName::Rfc822Header => Need::Header,
        MessageDataItemName::Rfc822 => Need::Stream,
        MessageDataItemName::BodyExt { section, .. } => match section {
            None => Need::Stream,
            Some(Section::Header(None))
            | Some(Section::HeaderFields(None, _))
            | Some(Section::HeaderFieldsNot(None, _)) => Need::Header,
            Some(_) => Need::Whole,
        },
        MessageDataItemName::Body
        | MessageDataItemName::BodyStructure
        | MessageDataItemName::Rfc822Text => Need::Whole,
        _ => Need::Nothing,
    }
}

/// Bytes `start..start + want` of a message in CRLF form, read now; `whole` is the message
/// when it was read already. A file that changed under us is cut or padded to the length
/// promised by RFC822.SIZE.
fn read_range(
    sel: &Selected,
    msg: &MessageInfo,
    whole: Option<&[u8]>,
    start: u64,
    want: u64,
) -> Vec<u8> {
    let range = |len: usize| {
        let from = (start as usize).min(len);
        (from, (from + want as usize).min(len))
    };
    let mut data = if let Some(all) = whole {
        let (from, to) = range(all.len());
        all[from..to].to_vec()
    } else if msg.size <= SMALL_MESSAGE {
        // Most messages: one blocking call reads the file whole.
        let mut all = blocking(|| -> Result<Vec<u8>, StoreError> {
            let mut file = sel.folder.open(msg)?;
            raw::read_all(&mut file).map_err(StoreError::Input)
        })
        .unwrap_or_else(|err| {
            tracing::warn!(uid = msg.uid, error = %err, "cannot read a message");
            Vec::new()
        });
        let (from, to) = range(all.len());
        all.truncate(to);
        all.drain(..from);
        all
    } else {
        // A part of a large message: only as far into the file as needed.
        let mut reader = RangeReader::new(open_message(sel, msg), start, want);
        let mut data = Vec::with_capacity(want as usize);
        blocking(|| while reader.next_into(&mut data) {});
        data
    };
    // A file that shrank under us is padded to the promised length.
    data.resize(want as usize, b' ');
    data
}

fn open_message(sel: &Selected, msg: &MessageInfo) -> Option<std::fs::File> {
    match blocking(|| sel.folder.open(msg)) {
        Ok(f) => Some(f),
        Err(err) => {
            tracing::warn!(uid = msg.uid, error = %err, "cannot open a message");
            None
        }
    }
}

/// Streams bytes `start..start + want` of a large message into the connection, read from its
/// file in chunks with bare LFs made CRLF: never held whole in memory. Its literal's `{n}`
/// is written already.
async fn stream_body<S>(
    sel: &Selected,
    msg: &MessageInfo,
    start: u64,
    want: u64,
    conn: &mut Conn<S>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = RangeReader::new(open_message(sel, msg), start, want);
    while blocking(|| reader.next_into(&mut conn.out)) {
        if !conn.flush_if_full().await {
            return false;
        }
    }
    true
}
