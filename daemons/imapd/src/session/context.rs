//! CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4): searches and sorts with `RETURN (UPDATE)`
//! kept up to date. After every command each runs again, and what left or joined its result
//! is told as `REMOVEFROM` and `ADDTO` (§4.4): for a search with position 0, for a sort with
//! each message's position in the result, so the client can keep its sorted view without
//! asking again. One that can no longer run in time is given up (`NO [NOUPDATE]`).

use std::collections::HashSet;
use std::fmt::Write as _;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Tag;
use imap_codec::CommandCodec;

use super::input::client_gone;
use super::reply::Done;
use super::search::numbers_of;
use super::{blocking, Conn, Session};
use crate::search::{self, Need, Query, Stopped};
use crate::search_args;
use crate::selected::Selected;
use crate::sort;

/// The most searches and sorts a session keeps up to date at once (each is run again after
/// every command); one more is answered NOUPDATE.
const MAX_UPDATES: usize = 4;

/// A search or sort kept up to date: its tag, its command, and its result as UIDs (ascending
/// for a search, in sort order for a sort).
pub(super) struct Update {
    pub(super) tag: String,
    uid: bool,
    command: Vec<u8>,
    uids: Vec<u32>,
}

/// A kept command's result now.
struct Now {
    uids: Vec<u32>,
    sorted: bool,
}

/// What a command's updates need from before it ran: the sequence numbers of the messages
/// it expunges, and where in the output the EXPUNGE responses start (a REMOVEFROM for an
/// expunged message goes before its EXPUNGE, while its number is still valid).
pub(super) struct UpdateMark {
    before: Vec<u32>,
    at: usize,
    /// The command writes its own EXPUNGEs (EXPUNGE, UID EXPUNGE, MOVE; none flushes the
    /// output midway); others' come from the refresh after it.
    expunges: bool,
}

impl UpdateMark {
    /// The command is done; the refresh (with other sessions' expunges) comes next.
    pub(super) fn command_done(&mut self, out_len: usize) {
        if !self.expunges {
            self.at = out_len;
        }
    }
}

impl Session {
    /// After a SEARCH or SORT with `RETURN (UPDATE)`: keeps its result (`uids`, in the
    /// result's order) up to date from now on, or says it will not.
    pub(super) fn keep_updated(
        &mut self,
        tag: &Tag<'_>,
        uid: bool,
        command: Vec<u8>,
        uids: Vec<u32>,
        out: &mut Vec<u8>,
    ) {
        let tag = tag.as_ref().to_owned();
        let updates = &mut self.search.updates;
        if updates.len() >= MAX_UPDATES {
            no_update(out, &tag, "Too many searches kept up to date.");
            return;
        }
        updates.retain(|u| u.tag != tag);
        updates.push(Update {
            tag,
            uid,
            command,
            uids,
        });
    }

    /// Before a command, when searches are kept up to date: the folder's UIDs in sequence
    /// order and the output's length.
    pub(super) fn update_snapshot(
        &self,
        body: &CommandBody<'_>,
        out_len: usize,
    ) -> Option<UpdateMark> {
        let sel = self.selected.as_ref()?;
        (!self.search.updates.is_empty()).then(|| UpdateMark {
            before: sel.messages.iter().map(|m| m.uid).collect(),
            at: out_len,
            expunges: matches!(
                body,
                CommandBody::Expunge | CommandBody::ExpungeUid { .. } | CommandBody::Move { .. }
            ),
        })
    }

    /// After a command: each search and sort kept up to date runs again, and what left or
    /// joined its result is told. `Err` when the client has gone.
    pub(super) fn send_updates<S>(
        &mut self,
        mark: Option<UpdateMark>,
        conn: &mut Conn<S>,
    ) -> Result<(), Done>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        // Sizes first, for a kept search by size (LARGER, SORT SIZE): new messages another
        // program delivered are measured, not judged by their file size.
        if let (Some(_), Some(sel)) = (&mark, self.selected.as_mut()) {
            if self.search.updates.iter().any(|u| uses_size(&u.command)) {
                let all: Vec<usize> = (0..sel.messages.len()).collect();
                let _ = blocking(|| sel.measure(&all));
            }
        }
        let (Some(mark), Some(sel)) = (mark, self.selected.as_ref()) else {
            return Ok(());
        };
        // REMOVEFROM for expunged messages, to go before the EXPUNGEs.
        let mut early = Vec::new();
        let mut out = Vec::new();
        let mut updates = std::mem::take(&mut self.search.updates);
        let reader = &mut conn.reader;
        let mut gone = || client_gone(reader);
        let mut watch = search::Watch::new(search::TIME_LIMIT, &mut gone);
        let mut kept = Vec::with_capacity(updates.len());
        for mut update in updates.drain(..) {
            let now = match blocking(|| result_now(sel, &update.command, &mut watch)) {
                Ok(now) => now,
                Err(Stopped::Gone) => return Err(Done::Close),
                Err(Stopped::TooLong) => {
                    let text = "The search takes too long to keep up to date.";
                    no_update(&mut out, &update.tag, text);
                    continue;
                }
            };
            let changes = Changes {
                sel,
                before: &mark.before,
                update: &update,
            };
            if now.sorted {
                changes.sorted(&now.uids, &mut early, &mut out);
            } else {
                changes.searched(&now.uids, &mut early, &mut out);
            }
            update.uids = now.uids;
            kept.push(update);
        }
        self.search.updates = kept;
        let at = mark.at.min(conn.out.len());
        conn.out.splice(at..at, early);
        conn.out.extend_from_slice(&out);
        Ok(())
    }
}

/// What one kept result lost and gained, as ESEARCH updates.
struct Changes<'c> {
    sel: &'c Selected,
    /// The folder's UIDs in sequence order before the command.
    before: &'c [u32],
    update: &'c Update,
}

impl Changes<'_> {
    /// The number the client knows a message by: its UID, or its sequence number now (or,
    /// for a message expunged, before the command).
    fn number(&self, uid: u32) -> Option<u32> {
        if self.update.uid {
            return Some(uid);
        }
        let now = self.sel.messages.binary_search_by_key(&uid, |m| m.uid).ok();
        let then = || self.before.iter().position(|&u| u == uid);
        now.or_else(then).map(|i| i as u32 + 1)
    }

    fn present(&self, uid: u32) -> bool {
        self.sel
            .messages
            .binary_search_by_key(&uid, |m| m.uid)
            .is_ok()
    }

    /// `* ESEARCH (TAG "t") [UID] WHAT (pairs)`.
    fn line(&self, what: &str, pairs: &str, into: &mut Vec<u8>) {
        let uid = if self.update.uid { " UID" } else { "" };
        let tag = &self.update.tag;
        let line = format!("* ESEARCH (TAG \"{tag}\"){uid} {what} ({pairs})\r\n");
        into.extend_from_slice(line.as_bytes());
    }

    /// A search's changes (both results ascending): position 0 and a set of numbers.
    fn searched(&self, now: &[u32], early: &mut Vec<u8>, out: &mut Vec<u8>) {
        let then = &self.update.uids;
        let removed = then.iter().filter(|u| now.binary_search(u).is_err());
        let (expunged, still): (Vec<u32>, Vec<u32>) = removed.partition(|&&u| !self.present(u));
        let added: Vec<u32> = now
            .iter()
            .filter(|u| then.binary_search(u).is_err())
            .copied()
            .collect();
        for (what, uids, is_early) in [
            ("REMOVEFROM", &expunged, true),
            ("REMOVEFROM", &still, false),
            ("ADDTO", &added, false),
        ] {
            let into = if is_early { &mut *early } else { &mut *out };
            let mut numbers: Vec<u32> = uids.iter().filter_map(|&u| self.number(u)).collect();
            if numbers.is_empty() {
                continue;
            }
            numbers.sort_unstable();
            self.line(
                what,
                &format!("0 {}", search_args::set_text(&numbers)),
                into,
            );
        }
    }

    /// A sort's changes: each message removed at its position in the result as the client
    /// has it (the last first, so every position holds as the client applies them in turn),
    /// then each one added at its position in the new result (the first first).
    fn sorted(&self, now: &[u32], early: &mut Vec<u8>, out: &mut Vec<u8>) {
        let now_set: HashSet<u32> = now.iter().copied().collect();
        let mut list = self.update.uids.clone();
        // The expunged first (before the EXPUNGEs, while their numbers hold), then the rest.
        let expunged = remove_at(&mut list, |u| !now_set.contains(&u) && !self.present(u));
        let still = remove_at(&mut list, |u| !now_set.contains(&u));
        let then: HashSet<u32> = list.into_iter().collect();
        let added: Vec<(usize, u32)> = now
            .iter()
            .enumerate()
            .filter(|(_, u)| !then.contains(u))
            .map(|(i, &u)| (i + 1, u))
            .collect();
        for (what, pairs, is_early) in [
            ("REMOVEFROM", &expunged, true),
            ("REMOVEFROM", &still, false),
            ("ADDTO", &added, false),
        ] {
            let into = if is_early { &mut *early } else { &mut *out };
            let mut text = String::new();
            for &(position, uid) in pairs {
                if let Some(n) = self.number(uid) {
                    let space = if text.is_empty() { "" } else { " " };
                    let _ = write!(text, "{space}{position} {n}");
                }
            }
            if !text.is_empty() {
                self.line(what, &text, into);
            }
        }
    }
}

/// Takes out of `list` the UIDs `gone` picks, the last first: each with its position (from
/// 1) in the list as it is when that one goes.
fn remove_at(list: &mut Vec<u32>, gone: impl Fn(u32) -> bool) -> Vec<(usize, u32)> {
    let removed: Vec<(usize, u32)> = list
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, &u)| gone(u))
        .map(|(i, &u)| (i + 1, u))
        .collect();
    list.retain(|&u| !gone(u));
    removed
}

/// `* NO [NOUPDATE "tag"] …`: that search is not (or no longer) kept up to date. A tag
/// has no quotes or backslashes (RFC 3501 §9: astring-char less "+").
fn no_update(out: &mut Vec<u8>, tag: &str, text: &str) {
    out.extend_from_slice(format!("* NO [NOUPDATE \"{tag}\"] {text}\r\n").as_bytes());
}

/// A kept search's or sort's result now, as UIDs.
/// Whether a kept command looks at sizes (LARGER, SMALLER, SORT SIZE).
fn uses_size(command: &[u8]) -> bool {
    let Ok((_, decoded)) = CommandCodec::default().decode(command) else {
        return false;
    };
    match decoded.body {
        CommandBody::Search { criteria, .. } => Query::new(criteria.as_ref()).uses_size(),
        CommandBody::Sort {
            sort_criteria,
            search_criteria,
            ..
        } => {
            Query::new(search_criteria.as_ref()).uses_size()
                || sort_criteria.as_ref().iter().any(|c| {
                    matches!(
                        c.key,
                        imap_codec::imap_types::extensions::sort::SortKey::Size
                    )
                })
        }
        _ => false,
    }
}

fn result_now(
    sel: &Selected,
    command: &[u8],
    watch: &mut search::Watch<'_>,
) -> Result<Now, Stopped> {
    let nothing = Now {
        uids: Vec::new(),
        sorted: false,
    };
    let Ok((_, decoded)) = CommandCodec::default().decode(command) else {
        return Ok(nothing);
    };
    match decoded.body {
        CommandBody::Search { criteria, .. } => {
            let hits = search::run(sel, &Query::new(criteria.as_ref()), watch)?;
            Ok(Now {
                uids: numbers_of(sel, &hits, true),
                sorted: false,
            })
        }
        CommandBody::Sort {
            sort_criteria,
            search_criteria,
            ..
        } => {
            let hits = search::run(sel, &Query::new(search_criteria.as_ref()), watch)?;
            let sorted = sort::sort(&sel.messages, &hits, sort_criteria.as_ref(), watch, |m| {
                search::read(sel, m, Need::Header)
            })?;
            Ok(Now {
                uids: numbers_of(sel, &sorted, true),
                sorted: true,
            })
        }
        _ => Ok(nothing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_go_last_first_at_the_position_they_have_then() {
        let mut list = vec![5, 3, 9, 1, 7];
        let removed = remove_at(&mut list, |u| u == 3 || u == 7);
        assert_eq!(removed, vec![(5, 7), (2, 3)]);
        assert_eq!(list, vec![5, 9, 1]);
        // Applied in turn by a client, the positions name the right messages.
        let mut client = vec![5, 3, 9, 1, 7];
        for (position, uid) in removed {
            assert_eq!(client.remove(position - 1), uid);
        }
        assert_eq!(client, list);
        assert!(remove_at(&mut list, |_| false).is_empty());
    }
}
