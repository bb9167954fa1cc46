//! The message commands (RFC 3501 §6.3.11, §6.4): APPEND, CHECK, CLOSE, UNSELECT
//! (RFC 3691), EXPUNGE and UID EXPUNGE (RFC 4315), STORE, COPY and MOVE (RFC 6851).
//! FETCH and SEARCH have modules of their own, [`super::fetch`] and [`super::search`].

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::Mailbox as ImapMailbox;
use imap_codec::imap_types::response::{Code, StatusKind};
use imap_codec::imap_types::sequence::SequenceSet;
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_maildir::{Appended, FlagChange, Flags, Folder, MessageInfo, StoreError};

use super::quota::message_len;
use super::reply::{bad, expunge_issued, ok, ok_code, read_only, store_error, Done};
use super::{blocking, quick_for, Conn, Session};
use crate::keywords::Keywords;
use crate::search;
use crate::selected::Selected;
use crate::wire::{self, nz};

impl Session {
    pub(super) fn append(
        &mut self,
        mailbox: &ImapMailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<DateTime>,
        message: &LiteralOrLiteral8<'_>,
    ) -> Done {
        let folder = match self.folder(mailbox) {
            Ok(f) => f,
            Err(d) => return d,
        };
        if let Err(done) = self.quota_allows(message_len(message), 1) {
            return done;
        }
        match self.append_one(&folder, flags, date, message) {
            Ok(a) => {
                let code = Code::AppendUid {
                    uid_validity: nz(a.uid_validity),
                    uid: nz(a.message.uid),
                };
                ok_code(code, "APPEND completed.")
            }
            Err(e) => store_error(&e),
        }
    }

    /// Adds one message of an APPEND to `folder`.
    pub(super) fn append_one(
        &mut self,
        folder: &Folder,
        flags: &[Flag<'_>],
        date: Option<DateTime>,
        message: &LiteralOrLiteral8<'_>,
    ) -> Result<Appended, StoreError> {
        let data = match message {
            LiteralOrLiteral8::Literal(l) => l.data(),
            LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
        };
        // BINARY (RFC 3516): binary parts of a literal8 are stored in base64.
        let converted = match message {
            LiteralOrLiteral8::Literal8(_) => crate::binary::to_base64_parts(data),
            LiteralOrLiteral8::Literal(_) => None,
        };
        let data = converted.as_deref().unwrap_or(data);
        let date = date.map(|d| {
            let ts = d.as_ref().timestamp().max(0) as u64;
            UNIX_EPOCH + Duration::from_secs(ts)
        });
        // Into the folder this session has selected: the message goes straight to `cur/` as
        // this session's \Recent (RFC 3501 §6.3.11), not to `new/` for whichever session looks
        // first to claim and move.
        let selected_here = self
            .selected
            .as_mut()
            .filter(|sel| sel.folder.path() == folder.path());
        let claim = selected_here.as_ref().is_some_and(|sel| !sel.read_only);
        if let Some(sel) = selected_here {
            sel.own_change = true;
        }
        let appended = blocking(|| {
            // The keyword file only for a keyword (read at every APPEND, it was two failed
            // opens each in a folder without one).
            let mut keywords = if flags.iter().any(|f| matches!(f, Flag::Keyword(_))) {
                Keywords::load(folder.path())
            } else {
                Keywords::default()
            };
            let flags = to_flags(flags, &mut keywords, folder.path());
            if claim {
                folder.append_claimed(&mut &data[..], flags, date)
            } else {
                folder.append(&mut &data[..], flags, date)
            }
        })?;
        if let Some(sel) = self.selected.as_mut().filter(|_| claim) {
            sel.claim_appended(appended.uid_validity, appended.message.uid);
        }
        Ok(appended)
    }

    pub(super) fn expunge<S>(&mut self, uids: Option<SequenceSet>, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        if sel.read_only {
            return read_only();
        }
        let doomed = deleted(sel, uids.as_ref());
        match quick_for(doomed.len(), || sel.expunge(&doomed, Some(&mut conn.out))) {
            // With QRESYNC on, the new HIGHESTMODSEQ, which the client keeps (RFC 7162).
            Ok(_) if sel.resync.qresync => ok_code(
                Code::HighestModSeq(crate::modseq::nz64(sel.modseqs.highest())),
                "EXPUNGE completed.",
            ),
            Ok(_) => ok("EXPUNGE completed."),
            Err(e) => store_error(&e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn store<S>(
        &mut self,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        unchanged_since: Option<u64>,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if unchanged_since.is_some() {
            self.turn_on(
                crate::modseq::Resync {
                    condstore: true,
                    qresync: false,
                },
                &mut conn.out,
            );
        }
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        if sel.read_only {
            return read_only();
        }
        let Some(mut indexes) = sel.resolve(set, uid) else {
            return bad("Invalid message sequence number.");
        };
        // UNCHANGEDSINCE (RFC 7162 §3.1.3): messages changed since are left alone and named
        // in [MODIFIED].
        let modified = match unchanged_since {
            Some(since) => blocking(|| sel.changed_since(&mut indexes, since)),
            None => Vec::new(),
        };
        let changed = quick_for(indexes.len(), || {
            let path = sel.folder.path().to_owned();
            let wanted = to_flags(flags, &mut sel.keywords, &path);
            let change = match kind {
                StoreType::Add => FlagChange::Add(wanted),
                StoreType::Remove => FlagChange::Remove(wanted),
                StoreType::Replace => FlagChange::Set(wanted),
            };
            sel.change_flags(&indexes, change)
        });
        let gone = match changed {
            Ok(gone) => gone,
            Err(e) => return store_error(&e),
        };
        sel.announce_keywords(&mut conn.out);
        // With CONDSTORE on, even .SILENT tells the new MODSEQ.
        let answer = matches!(response, StoreResponse::Answer);
        if answer || sel.resync.condstore {
            for &i in indexes.iter().filter(|i| !gone.contains(i)) {
                sel.tell_flags(&mut conn.out, i, answer);
            }
        }
        if !modified.is_empty() {
            let numbers: Vec<u32> = modified
                .iter()
                .map(|&i| {
                    if uid {
                        sel.messages[i].uid
                    } else {
                        i as u32 + 1
                    }
                })
                .collect();
            if let Some(set) = crate::modseq::uid_sequence(&numbers) {
                return ok_code(Code::Modified(set), "Conditional STORE failed.");
            }
        }
        if gone.is_empty() {
            ok("STORE completed.")
        } else {
            expunge_issued()
        }
    }

    pub(super) fn copy<S>(
        &mut self,
        set: &SequenceSet,
        mailbox: &ImapMailbox<'_>,
        uid: bool,
        moving: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let target = match self.folder(mailbox) {
            Ok(f) => f,
            Err(d) => return d,
        };
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        if moving && sel.read_only {
            return read_only();
        }
        let Some(indexes) = sel.resolve(set, uid) else {
            return bad("Invalid message sequence number.");
        };
        if moving || target.path() == sel.folder.path() {
            sel.own_change = true;
        }
        let chosen: Vec<MessageInfo> = indexes.iter().map(|&i| sel.messages[i].clone()).collect();
        // A MOVE stays within the user's one quota root: only a COPY adds to it.
        if let (false, Some(login)) = (moving, &self.login) {
            let bytes = chosen.iter().map(|m| m.size).sum();
            if let Err(done) = login.quota_allows(bytes, chosen.len() as u64) {
                return done;
            }
        }
        // All or nothing, by the store: a COPY leaves the target as it was on any error, and
        // a MOVE renames each file, so a message is in exactly one folder at every instant.
        let transferred = blocking(|| {
            let keywords = KeywordMap::new(&sel.folder, &target);
            let flags = |f| keywords.translate(f);
            if moving {
                sel.folder.move_to(&target, &chosen, &flags)
            } else {
                sel.folder.copy_to(&target, &chosen, &flags)
            }
        });
        let done = if moving {
            "MOVE completed."
        } else {
            "COPY completed."
        };
        let transferred = match transferred {
            Ok(t) => t,
            Err(e) => return store_error(&e),
        };
        let from: Vec<u32> = transferred.messages.iter().map(|(uid, _)| *uid).collect();
        let to: Vec<u32> = transferred.messages.iter().map(|(_, m)| m.uid).collect();
        let (Some(source), Some(destination)) = (wire::uid_set(&from), wire::uid_set(&to)) else {
            // Every chosen message was expunged meanwhile: nothing to report.
            return ok(done);
        };
        let code = Code::CopyUid {
            uid_validity: nz(transferred.uid_validity),
            source,
            destination,
        };
        if !moving {
            return ok_code(code, done);
        }
        // RFC 6851 §4.3: COPYUID untagged, then an EXPUNGE for each message moved.
        let moved = wire::untagged(StatusKind::Ok, Some(code), wire::text("Moved."));
        wire::status(&mut conn.out, moved);
        let gone: HashSet<u32> = from.into_iter().collect();
        let moved: Vec<usize> = (0..sel.messages.len())
            .filter(|&i| gone.contains(&sel.messages[i].uid))
            .collect();
        sel.remove(&moved, &mut conn.out);
        ok(done)
    }

    /// CHECK: every change is on disk already.
    pub(super) fn check(&self) -> Done {
        ok("CHECK completed.")
    }

    /// CLOSE: expunges silently (unless read-only) and leaves the selected state.
    pub(super) fn close(&mut self) -> Done {
        if let Some(mut sel) = self.selected.take() {
            if !sel.read_only {
                let doomed = deleted(&sel, None);
                if let Err(err) = quick_for(doomed.len(), || sel.expunge(&doomed, None)) {
                    return store_error(&err);
                }
            }
        }
        ok("CLOSE completed.")
    }

    /// UNSELECT (RFC 3691): leaves the selected state without expunging.
    pub(super) fn unselect(&mut self) -> Done {
        self.selected = None;
        ok("UNSELECT completed.")
    }
}

/// Translates flags from the source folder's keyword letters to the target's, by name
/// (Maildir keeps keywords as letters per folder), giving the target a letter for a name it
/// lacks. A letter the source has no name for is dropped; every other flag is kept.
struct KeywordMap {
    /// `None` within one folder: the letters stay as they are.
    source: Option<Keywords>,
    target: RefCell<Keywords>,
    target_path: PathBuf,
}

impl KeywordMap {
    fn new(source: &Folder, target: &Folder) -> KeywordMap {
        let same = source.path() == target.path();
        KeywordMap {
            // Read now, not from the session's view: another session may have named a
            // letter since.
            source: (!same).then(|| Keywords::load(source.path())),
            target: RefCell::new(Keywords::load(target.path())),
            target_path: target.path().to_owned(),
        }
    }

    fn translate(&self, flags: Flags) -> Flags {
        let Some(source) = &self.source else {
            return flags;
        };
        let mut out = flags;
        out.remove(*wire::ALL_KEYWORDS);
        for n in 0..26u8 {
            let Some(bit) = Flags::keyword(n) else {
                continue;
            };
            if !flags.contains(bit) {
                continue;
            }
            let Some(name) = source.name(n) else {
                continue;
            };
            let mut target = self.target.borrow_mut();
            if let Some(k) = target
                .find_or_add(&self.target_path, name)
                .and_then(Flags::keyword)
            {
                out.insert(k);
            }
        }
        out
    }
}

/// Indexes of messages flagged \Deleted (and, for UID EXPUNGE, in the UID set).
fn deleted(sel: &Selected, uids: Option<&SequenceSet>) -> Vec<usize> {
    let largest = sel.messages.last().map_or(0, |m| m.uid);
    sel.messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.flags.contains(Flags::TRASHED))
        .filter(|(_, m)| uids.is_none_or(|set| search::in_set(set, m.uid, largest)))
        .map(|(i, _)| i)
        .collect()
}

/// IMAP flags to Maildir flags; keywords get (or are given) a letter in this folder.
fn to_flags(flags: &[Flag<'_>], keywords: &mut Keywords, folder: &std::path::Path) -> Flags {
    let mut out = Flags::EMPTY;
    for flag in flags {
        match flag {
            Flag::Answered => out.insert(Flags::REPLIED),
            Flag::Deleted => out.insert(Flags::TRASHED),
            Flag::Draft => out.insert(Flags::DRAFT),
            Flag::Flagged => out.insert(Flags::FLAGGED),
            Flag::Seen => out.insert(Flags::SEEN),
            Flag::Keyword(k) => {
                if let Some(bit) = keywords
                    .find_or_add(folder, k.as_ref())
                    .and_then(Flags::keyword)
                {
                    out.insert(bit);
                }
            }
            Flag::Extension(_) => {}
        }
    }
    out
}
