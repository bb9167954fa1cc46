//! CONDSTORE and QRESYNC (RFC 7162), the session side: what turns them on, SELECT's
//! `(CONDSTORE)` and `(QRESYNC (...))`, FETCH's `(CHANGEDSINCE n VANISHED)`, and the
//! `VANISHED (EARLIER)` answers. The mod-sequences themselves are [`crate::modseq`]; STORE's
//! UNCHANGEDSINCE is in [`super::messages`], MODSEQ items in [`super::fetch`].

use imap_codec::imap_types::command::{FetchModifier, SelectParameter, StoreModifier};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::mailbox::Mailbox as ImapMailbox;
use imap_codec::imap_types::response::{Code, Data, StatusKind};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use tokio::io::{AsyncRead, AsyncWrite};

use super::reply::{bad, Done};
use super::{Conn, Session};
use crate::modseq::{self, Resync, Vanished};
use crate::search;
use crate::selected::Selected;
use crate::wire;

const CONDSTORE: Resync = Resync {
    condstore: true,
    qresync: false,
};

impl Session {
    /// Turns on what a command enabled. The first time CONDSTORE comes on with a folder
    /// selected, the client is told its HIGHESTMODSEQ (RFC 7162 §3.1).
    pub(super) fn turn_on(&mut self, resync: Resync, out: &mut Vec<u8>) {
        self.resync.condstore |= resync.condstore;
        self.resync.qresync |= resync.qresync;
        if let Some(sel) = self.selected.as_mut() {
            let was_on = sel.resync.condstore;
            sel.resync = self.resync;
            if !was_on && sel.resync.condstore {
                highest_modseq(sel, out);
            }
        }
    }

    /// ENABLE (RFC 5161): CONDSTORE, QRESYNC (which includes CONDSTORE) and IMAP4rev2
    /// (RFC 9051 §6.3.1); others are ignored, as the RFC wants.
    pub(super) fn enable<S>(
        &mut self,
        capabilities: &[CapabilityEnable<'_>],
        conn: &mut Conn<S>,
    ) -> Done {
        let mut enabled = Vec::new();
        let mut resync = Resync::default();
        let mut rev2 = false;
        for capability in capabilities {
            match capability {
                CapabilityEnable::CondStore => resync.condstore = true,
                other if super::rev2::is_rev2(other) => rev2 = true,
                other if other.to_string().eq_ignore_ascii_case("QRESYNC") => {
                    resync = Resync {
                        condstore: true,
                        qresync: true,
                    };
                }
                _ => continue,
            }
            if !enabled.contains(capability) {
                enabled.push(capability.clone());
            }
        }
        self.turn_on(resync, &mut conn.out);
        if rev2 {
            self.enable_rev2();
        }
        wire::data(
            &mut conn.out,
            Data::Enabled {
                capabilities: enabled,
            },
        );
        super::reply::ok("ENABLE completed.")
    }

    /// SELECT and EXAMINE with their RFC 7162 parameters: `[CLOSED]` when they replace a
    /// selected folder, `[HIGHESTMODSEQ]` always, and for QRESYNC the expunges and changes
    /// since the client's mod-sequence.
    pub(super) fn select_resync<S>(
        &mut self,
        mailbox: &ImapMailbox<'_>,
        read_only: bool,
        parameters: &[SelectParameter],
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut qresync = None;
        let mut resync = Resync::default();
        for parameter in parameters {
            match parameter {
                SelectParameter::CondStore => resync.condstore = true,
                SelectParameter::QResync { .. } if !self.resync.qresync => {
                    return bad("QRESYNC is not enabled.");
                }
                SelectParameter::QResync { .. } if qresync.is_some() => {
                    return bad("QRESYNC given twice.");
                }
                SelectParameter::QResync { .. } => qresync = Some(parameter),
            }
        }
        if self.selected.is_some() {
            let closed = wire::untagged(StatusKind::Ok, Some(Code::Closed), wire::text("Closed."));
            wire::status(&mut conn.out, closed);
        }
        let done = self.select(mailbox, read_only, conn);
        let Some(sel) = self.selected.as_mut() else {
            return done;
        };
        self.resync.condstore |= resync.condstore;
        sel.resync = self.resync;
        highest_modseq(sel, &mut conn.out);
        if let Some(SelectParameter::QResync {
            uid_validity,
            mod_sequence_value,
            known_uids,
            ..
        }) = qresync
        {
            // Another UIDVALIDITY: the client's cache is void and it gets nothing to resync.
            if uid_validity.get() == sel.uid_validity {
                let since = mod_sequence_value.get();
                if let Some(set) = sel.vanished_earlier(since, known_uids.as_ref()) {
                    let vanished = Data::Vanished {
                        earlier: true,
                        known_uids: set,
                    };
                    wire::data(&mut conn.out, vanished);
                }
                for i in 0..sel.messages.len() {
                    if sel.modseqs.of(sel.messages[i].uid) > since {
                        sel.tell_flags(&mut conn.out, i, true);
                    }
                }
            }
        }
        done
    }

    /// FETCH with its RFC 7162 modifiers and the MODSEQ item.
    pub(super) async fn fetch_resync<S>(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut changed_since = None;
        let mut vanished = false;
        for modifier in modifiers {
            match modifier {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && !(uid && self.resync.qresync) {
            return bad("VANISHED needs UID FETCH and QRESYNC enabled.");
        }
        if vanished && changed_since.is_none() {
            return bad("VANISHED needs CHANGEDSINCE.");
        }
        let asks_modseq = match &items {
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::ModSeq)),
            MacroOrMessageDataItemNames::Macro(_) => false,
        };
        if asks_modseq || changed_since.is_some() {
            self.turn_on(CONDSTORE, &mut conn.out);
        }
        if let (true, Some(since), Some(sel)) = (vanished, changed_since, self.selected.as_ref()) {
            if let Some(set) = sel.vanished_earlier(since, Some(set)) {
                let vanished = Data::Vanished {
                    earlier: true,
                    known_uids: set,
                };
                wire::data(&mut conn.out, vanished);
            }
        }
        self.fetch_command(set, items, uid, changed_since, conn)
            .await
    }
}

/// STORE's `(UNCHANGEDSINCE n)`.
pub(super) fn unchanged_since(modifiers: &[StoreModifier]) -> Option<u64> {
    modifiers
        .iter()
        .map(|m| match m {
            StoreModifier::UnchangedSince(n) => *n,
        })
        .min()
}

fn highest_modseq(sel: &Selected, out: &mut Vec<u8>) {
    let code = Code::HighestModSeq(modseq::nz64(sel.modseqs.highest()));
    let line = wire::untagged(StatusKind::Ok, Some(code), wire::text("Highest"));
    wire::status(out, line);
}

impl Selected {
    /// Takes out of `indexes` the messages whose mod-sequence (as saved now: other sessions'
    /// changes count) is above `since`, and returns them.
    pub(crate) fn changed_since(&self, indexes: &mut Vec<usize>, since: u64) -> Vec<usize> {
        // Not kept: the others' changes are told at the next refresh.
        let now = modseq::current(self.folder.path(), self.uid_validity);
        let (changed, unchanged): (Vec<usize>, Vec<usize>) = indexes
            .iter()
            .partition(|&&i| now.of(self.messages[i].uid) > since);
        *indexes = unchanged;
        changed
    }

    /// The UIDs to tell a client as `VANISHED (EARLIER)` when it last knew the folder at
    /// mod-sequence `since`: those in `known` (all below UIDNEXT when `None`) expunged since.
    /// When the record of expunges does not reach back that far, every UID of `known` that is
    /// not in the folder (RFC 7162 §3.2.5 allows naming UIDs that never existed).
    pub(crate) fn vanished_earlier(
        &self,
        since: u64,
        known: Option<&SequenceSet>,
    ) -> Option<SequenceSet> {
        let top = self.uid_next.saturating_sub(1);
        match self.modseqs.vanished_since(since) {
            Vanished::Known(uids) => {
                let uids: Vec<u32> = uids
                    .into_iter()
                    .filter(|&uid| known.is_none_or(|set| search::in_set(set, uid, top)))
                    .collect();
                modseq::uid_sequence(&uids)
            }
            Vanished::Unknown => {
                let mut ranges = known.map_or_else(|| vec![(1, top)], |set| ranges_of(set, top));
                ranges.retain(|&(lo, hi)| lo <= hi && lo > 0);
                let mut gaps = Vec::new();
                for (lo, hi) in ranges {
                    let mut next = lo;
                    let start = self.messages.partition_point(|m| m.uid < lo);
                    for m in self.messages[start..].iter().take_while(|m| m.uid <= hi) {
                        if m.uid > next {
                            gaps.push((next, m.uid - 1));
                        }
                        next = m.uid.saturating_add(1);
                    }
                    if next <= hi {
                        gaps.push((next, hi));
                    }
                }
                modseq::range_sequence(&gaps)
            }
        }
    }
}

/// A sequence set's ranges, `*` as `top`, each cut to `top`, sorted and merged.
fn ranges_of(set: &SequenceSet, top: u32) -> Vec<(u32, u32)> {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => top,
    };
    let mut ranges: Vec<(u32, u32)> = set
        .0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(v) => (value(v), value(v)),
            Sequence::Range(a, b) => (value(a).min(value(b)), value(a).max(value(b))),
        })
        .map(|(lo, hi)| (lo, hi.min(top)))
        .filter(|(lo, hi)| lo <= hi)
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some((_, last)) if lo <= last.saturating_add(1) => *last = (*last).max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
#[path = "condstore_tests.rs"]
mod tests;
