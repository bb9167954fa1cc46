//! IMAP4rev2 (RFC 9051), behind `ENABLE IMAP4rev2` (§6.3.1): until a client enables it, the
//! session is the IMAP4rev1 one it always was. Once enabled:
//!
//! - mailbox names are UTF-8 on the wire (§5.1), read and sent through [`Coding::Utf8`]; a
//!   quoted string may hold UTF-8, which [`crate::quoted_utf8`] turns into a literal before
//!   the command is decoded;
//! - no `\Recent` (§2.3.2 lists no such flag): no `* n RECENT`, no `\Recent` in FETCH FLAGS,
//!   and STATUS RECENT and the RECENT, NEW and OLD search keys are not in the grammar (BAD);
//! - SEARCH answers with ESEARCH (§7.3.4), RETURN (ALL) when the client named no option;
//! - STATUS answers DELETED (§6.3.11);
//! - SELECT and EXAMINE send the mailbox's LIST line (§6.3.2) and no `OK [UNSEEN n]`, which
//!   RFC 9051's grammar no longer has.
//!
//! What RFC 9051 folds in from extensions (ENABLE, IDLE, NAMESPACE, UNSELECT, UIDPLUS, MOVE,
//! ESEARCH, SEARCHRES, LIST-EXTENDED, LIST-STATUS, BINARY, SPECIAL-USE, SASL-IR, LITERAL-
//! through LITERAL+, STATUS=SIZE, `OK [CLOSED]`) the session does in both revisions.

use std::borrow::Cow;

use imap_codec::imap_types::core::QuotedChar;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::response::{Data, StatusKind};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::status::StatusDataItemName;

use super::extended::special_attribute;
use super::input::{Held, BUSY_TEXT};
use super::mailboxes::{attribute, mailbox_of};
use super::reply::reply;
use super::{blocking, Conn, Session};
use crate::names::{self, Coding};
use crate::notify::Filter;
use crate::quoted_utf8::{self, Refused};
use crate::special_use::SpecialUse;
use crate::wire;

/// The capability CAPABILITY lists and ENABLE takes.
pub(super) const CAPABILITY: &str = "IMAP4rev2";

/// Whether ENABLE names IMAP4rev2 (capability names are case-insensitive).
pub(super) fn is_rev2(capability: &CapabilityEnable<'_>) -> bool {
    capability.to_string().eq_ignore_ascii_case(CAPABILITY)
}

/// Why a STATUS item is refused in this revision: RECENT is IMAP4rev1's only, DELETED
/// IMAP4rev2's (RFC 9051 §6.3.11; a rev1 session answers what it always did).
pub(super) fn status_item_refused(item: &StatusDataItemName, rev2: bool) -> Option<&'static str> {
    match item {
        StatusDataItemName::Recent if rev2 => Some("RECENT is not an IMAP4rev2 STATUS item."),
        StatusDataItemName::Deleted if !rev2 => Some("Unsupported STATUS item."),
        _ => None,
    }
}

/// Whether search criteria use RECENT, NEW or OLD, which IMAP4rev2 has not (its grammar
/// lists no such keys: the flag they test is gone).
pub(super) fn uses_recent(keys: &[SearchKey<'_>]) -> bool {
    keys.iter().any(|key| match key {
        SearchKey::Recent | SearchKey::New | SearchKey::Old => true,
        SearchKey::And(keys) => uses_recent(keys.as_ref()),
        SearchKey::Or(a, b) => {
            uses_recent(std::slice::from_ref(a.as_ref()))
                || uses_recent(std::slice::from_ref(b.as_ref()))
        }
        SearchKey::Not(key) => uses_recent(std::slice::from_ref(key.as_ref())),
        _ => false,
    })
}

/// A filter with its mailbox names, as the client wrote them in `coding`, turned to UTF-8 for
/// NOTIFY: they keep naming the same mailboxes whatever ENABLE comes later. A name not
/// valid in `coding` names no mailbox, as before.
pub(super) fn filter_in_utf8(filter: Filter, coding: Coding) -> Filter {
    let convert = |list: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        list.iter()
            .filter_map(|raw| coding.decode(raw))
            .map(String::into_bytes)
            .collect()
    };
    match filter {
        Filter::Subtree(list) => Filter::Subtree(convert(list)),
        Filter::Mailboxes(list) => Filter::Mailboxes(convert(list)),
        other => other,
    }
}

impl Session {
    /// An IMAP4rev2 client's command with its quoted UTF-8 strings as literals
    /// ([`crate::quoted_utf8`]), the copy charged to the literal budget with the rest of the
    /// command; `None` when it is refused (the reply is queued). A rev1 session's command is
    /// left as it is.
    pub(super) fn quoted_utf8<S>(
        &self,
        bytes: Vec<u8>,
        limit: u64,
        held: &mut Held,
        conn: &mut Conn<S>,
    ) -> Option<Vec<u8>> {
        if !self.rev2 {
            return Some(bytes);
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let rewritten = match quoted_utf8::to_literals(&bytes, limit, |n| held.take(n as u64)) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(rewritten)) => Some(rewritten),
            Err(refused) => {
                let tag = wire::tag_of(&bytes);
                let (kind, code, text) = match refused {
                    Refused::NotUtf8 => (StatusKind::Bad, None, "Quoted string is not UTF-8."),
                    Refused::TooLong => (StatusKind::Bad, None, "Command too long."),
                    Refused::Busy => (StatusKind::No, Some(wire::code("LIMIT")), BUSY_TEXT),
                };
                reply(conn, tag, kind, code, text);
                return None;
            }
        };
        Some(rewritten.unwrap_or(bytes))
    }

    /// How mailbox names travel in this session.
    pub(super) fn coding(&self) -> Coding {
        if self.rev2 {
            Coding::Utf8
        } else {
            Coding::Utf7
        }
    }

    /// ENABLE IMAP4rev2: from now on, for the rest of the session. A folder selected already
    /// (RFC 9051 §6.3.1 wants ENABLE before SELECT, without making the server check) stops
    /// showing `\Recent` too.
    pub(super) fn enable_rev2(&mut self) {
        self.rev2 = true;
        if let Some(sel) = self.selected.as_mut() {
            sel.rev2 = true;
        }
    }

    /// SELECT's and EXAMINE's `* LIST (attributes) "/" name` (RFC 9051 §6.3.2): whether it
    /// has children, and its special use.
    pub(super) fn select_list(&self, name: &str, out: &mut Vec<u8>) {
        let mbox = self.mailbox().clone();
        let (children, uses) = blocking(|| {
            let prefix = format!("{name}{}", names::DELIMITER);
            let children = mbox
                .folders()
                .map(|all| all.iter().any(|f| f.starts_with(&prefix)))
                .unwrap_or(false);
            let uses: Vec<String> = SpecialUse::load(mbox.path())
                .of(name)
                .into_iter()
                .map(str::to_owned)
                .collect();
            (children, uses)
        });
        let mut items = vec![attribute(if children {
            "HasChildren"
        } else {
            "HasNoChildren"
        })];
        items.extend(uses.iter().filter_map(|u| special_attribute(u)));
        let data = Data::List {
            items,
            delimiter: Some(QuotedChar::unvalidated(names::DELIMITER)),
            mailbox: mailbox_of(name, Coding::Utf8),
        };
        wire::data(out, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::CommandBody;
    use imap_codec::CommandCodec;

    fn criteria(command: &str) -> bool {
        let (_, c) = CommandCodec::default()
            .decode(command.as_bytes())
            .expect("decodes");
        match c.body {
            CommandBody::Search { criteria, .. } => uses_recent(criteria.as_ref()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recent_keys_are_found_however_deep() {
        assert!(criteria("a SEARCH RECENT\r\n"));
        assert!(criteria("a SEARCH NEW\r\n"));
        assert!(criteria("a SEARCH SEEN (FROM x OLD)\r\n"));
        assert!(criteria("a SEARCH OR SEEN NOT NEW\r\n"));
        assert!(criteria("a SEARCH NOT (OR SEEN (UNSEEN RECENT))\r\n"));
        assert!(!criteria("a SEARCH OR SEEN NOT FLAGGED\r\n"));
        // A string is not a key.
        assert!(!criteria("a SEARCH SUBJECT RECENT\r\n"));
    }

    #[test]
    fn status_items_by_revision() {
        let recent = StatusDataItemName::Recent;
        let deleted = StatusDataItemName::Deleted;
        assert!(status_item_refused(&recent, false).is_none());
        assert!(status_item_refused(&recent, true).is_some());
        assert!(status_item_refused(&deleted, false).is_some());
        assert!(status_item_refused(&deleted, true).is_none());
        assert!(status_item_refused(&StatusDataItemName::Messages, true).is_none());
    }

    #[test]
    fn enable_names_rev2_in_any_case() {
        let cap = |s: &'static str| CapabilityEnable::try_from(s).expect("atom");
        assert!(is_rev2(&cap("IMAP4rev2")));
        assert!(is_rev2(&cap("imap4REV2")));
        assert!(!is_rev2(&cap("IMAP4rev1")));
        assert!(!is_rev2(&cap("CONDSTORE")));
    }
}
