//! FETCH (RFC 3501 §6.4.5): the session side. Each message's response is planned and
//! written by [`response`], an item at a time, reading the message once and streaming large
//! bodies from their files. The data itself comes from [`mime`] (ENVELOPE, BODYSTRUCTURE,
//! parts), [`raw`] (message bytes in CRLF form) and [`section`] (BODY[section] extraction).

mod binary;
pub(crate) mod mime;
pub(crate) mod raw;
mod response;
pub(crate) mod section;
#[cfg(test)]
mod structure_tests;

use std::collections::HashSet;

use imap_codec::imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::sequence::SequenceSet;
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_maildir::{FlagChange, Flags};

use self::response::{Head, Written};
use super::input::ImapConn;
use super::reply::{bad, expunge_issued, no_code, ok, Done};
use super::{blocking, quick_for, Conn, Session};
use crate::wire;

/// Messages up to this size are read whole for FETCH; larger ones are streamed in chunks.
const SMALL_MESSAGE: u64 = 1024 * 1024;

impl Session {
    /// FETCH and UID FETCH; a macro (ALL, FAST, FULL) stands for its items.
    pub(super) async fn fetch_command<S>(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        changed_since: Option<u64>,
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
        self.fetch(set, &items, uid, changed_since, conn).await
    }

    async fn fetch<S>(
        &mut self,
        set: &SequenceSet,
        items: &[MessageDataItemName<'_>],
        uid: bool,
        changed_since: Option<u64>,
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
        // CHANGEDSINCE (RFC 7162 §3.1.4): only messages changed since, with their MODSEQ.
        let mut indexes = indexes;
        if let Some(since) = changed_since {
            indexes.retain(|&i| sel.modseqs.of(sel.messages[i].uid) > since);
        }
        let want_modseq = changed_since.is_some()
            || items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::ModSeq));
        let sets_seen = !sel.read_only
            && items.iter().any(|i| match i {
                MessageDataItemName::BodyExt { peek, .. }
                | MessageDataItemName::Binary { peek, .. } => !peek,
                MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
                _ => false,
            });
        let want_uid = uid || items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
        let want_flags = items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Flags));
        // \Seen set first, for all of them under one lock; their FLAGS go out with them.
        let mut seen_now = HashSet::new();
        if sets_seen {
            let unseen: Vec<usize> = indexes
                .iter()
                .copied()
                .filter(|&i| !sel.messages[i].flags.contains(Flags::SEEN))
                .collect();
            let seen = || sel.change_flags(&unseen, FlagChange::Add(Flags::SEEN));
            if let Ok(gone) = quick_for(unseen.len(), seen) {
                seen_now = unseen.into_iter().filter(|i| !gone.contains(i)).collect();
            }
        }
        // Sizes not measured yet (a folder another program filled), for the items that use
        // them; should that fail, the file sizes stand in.
        if items.iter().any(response::uses_size) {
            let _ = blocking(|| sel.measure(&indexes));
        }
        let sel = &*sel;
        let (mut missing, mut too_large, mut unknown_cte) = (false, false, false);
        for i in indexes {
            let msg = &sel.messages[i];
            let flags = (want_flags || seen_now.contains(&i))
                .then(|| wire::flags(msg.flags, sel.shows_recent(msg.uid), &sel.keywords));
            // A flag change this FETCH made carries its MODSEQ once CONDSTORE is on.
            let modseq = (want_modseq || (sel.resync.condstore && seen_now.contains(&i)))
                .then(|| sel.modseqs.of(msg.uid));
            let head = Head {
                uid: want_uid.then_some(msg.uid),
                flags,
                modseq,
            };
            match response::write(sel, i, items, head, conn).await {
                Written::Sent => {}
                Written::Missing => missing = true,
                Written::TooLarge => too_large = true,
                Written::Gone => return Done::Close,
                Written::UnknownCte => unknown_cte = true,
            }
            if !conn.flush_if_full().await {
                return Done::Close;
            }
        }
        if unknown_cte {
            no_code(
                wire::code("UNKNOWN-CTE"),
                "Cannot decode a part's content-transfer-encoding.",
            )
        } else if too_large {
            no_code(
                wire::code("LIMIT"),
                "FETCH response too large: fetch fewer items at once.",
            )
        } else if missing {
            expunge_issued()
        } else {
            ok("FETCH completed.")
        }
    }
}
