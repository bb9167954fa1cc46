//! The selected folder: this session's view of it (messages by sequence number), and how that
//! view catches up with changes made by other sessions and processes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, FlagPerm};
use imap_codec::imap_types::response::{Code, Data, StatusKind};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use inetkit_maildir::{FlagChange, Flags, Folder, MessageInfo, Snapshot, StoreError};

use crate::keywords::Keywords;
use crate::modseq::{self, ModSeqs, Resync};
use crate::structures::Structures;
use crate::watch::{Stamp, Watch, Watches};
use crate::wire::{self, nz};

pub(crate) struct Selected {
    pub folder: Folder,
    pub read_only: bool,
    pub uid_validity: u32,
    pub uid_next: u32,
    /// Sequence number n is `messages[n - 1]`.
    pub messages: Vec<MessageInfo>,
    /// UIDs that are \Recent in this session.
    pub recent: HashSet<u32>,
    /// UIDs this session appended straight into `cur/` ([`Selected::claim_appended`]):
    /// \Recent to it once its view has them.
    claimed: HashSet<u32>,
    /// The client enabled IMAP4rev2: `\Recent` is kept (SELECT still claims new messages)
    /// but never shown.
    pub rev2: bool,
    pub keywords: Keywords,
    /// The keywords the client was told of in FLAGS.
    told: Vec<String>,
    /// Modification times of `new/` and `cur/` when last looked at.
    stamp: Option<(SystemTime, SystemTime)>,
    /// The stamp was taken within a second of a change: look once more after that second
    /// (only without a watch: inotify has no such blind spot).
    recheck: bool,
    /// The folder's watch, and its generation our view is from.
    watch: Option<Watch>,
    generation: u64,
    /// This session changed the folder since its last refresh: a snapshot another session
    /// keeps may predate that change (its events may not have arrived yet), so the next
    /// refresh reads the folder itself.
    pub own_change: bool,
    /// The folder's mod-sequences as of our view (CONDSTORE), and what the client enabled.
    pub modseqs: Arc<ModSeqs>,
    pub resync: Resync,
    /// The process's cache of encoded message structures (FETCH), if it shares one.
    pub structures: Option<Arc<Structures>>,
}

impl Selected {
    /// SELECT (`read_only` false: takes new messages as \Recent) or EXAMINE.
    pub(crate) fn open(
        folder: Folder,
        read_only: bool,
        watches: &Arc<Watches>,
    ) -> Result<Selected, StoreError> {
        // A folder nobody here watches yet (often one another program filled): its new
        // messages are claimed before the kernel is asked to watch it, which would queue an
        // event per message moved to cur/ (thousands, each a wake-up) and then make every
        // session look again. Whatever changed in between, the look below sees.
        let claimed = if !read_only && watches.unwatched(folder.path()) {
            Some(folder.claim_new()?)
        } else {
            None
        };
        let watch = watches.watch(&folder);
        let generation = watch.as_ref().map_or(0, Watch::generation);
        let stamp = stamp(&folder);
        let recheck = watch.is_none() && !settled(stamp);
        let snapshot = take_snapshot(&folder, read_only, watch.as_ref(), generation, stamp, true)?;
        let recent = snapshot
            .messages
            .iter()
            // Claimed under the same UIDVALIDITY: a uid list rebuilt in between numbers
            // other messages.
            .chain(
                claimed
                    .iter()
                    .filter(|c| c.uid_validity == snapshot.uid_validity)
                    .flat_map(|c| &c.messages),
            )
            .filter(|m| m.recent)
            .map(|m| m.uid)
            .filter(|uid| {
                snapshot
                    .messages
                    .binary_search_by_key(uid, |m| m.uid)
                    .is_ok()
            })
            .collect();
        let keywords = Keywords::load(folder.path());
        let modseqs = modseq::sync(folder.path(), &snapshot);
        Ok(Selected {
            folder,
            read_only,
            uid_validity: snapshot.uid_validity,
            uid_next: snapshot.uid_next,
            // The session's own copy (taken without copying when nobody else holds it).
            messages: Arc::try_unwrap(snapshot).map_or_else(|s| s.messages.clone(), |s| s.messages),
            recent,
            claimed: HashSet::new(),
            rev2: false,
            told: keywords.all().map(str::to_owned).collect(),
            keywords,
            stamp,
            recheck,
            watch,
            generation,
            own_change: false,
            modseqs,
            resync: Resync::default(),
            structures: None,
        })
    }

    /// Shares the process's cache of encoded message structures with FETCH.
    pub(crate) fn with_structures(mut self, structures: Arc<Structures>) -> Selected {
        self.structures = Some(structures);
        self
    }

    /// The untagged FLAGS and `OK [PERMANENTFLAGS ...]` of the folder: the system flags and
    /// its keywords.
    pub(crate) fn write_flags(&self, out: &mut Vec<u8>) {
        let mut flags = vec![
            Flag::Answered,
            Flag::Flagged,
            Flag::Deleted,
            Flag::Seen,
            Flag::Draft,
        ];
        flags.extend(self.keywords.all().filter_map(wire::keyword));
        wire::data(out, Data::Flags(flags.clone()));
        let (permanent, text) = if self.read_only {
            (Vec::new(), "Read-only mailbox.")
        } else {
            let mut permanent: Vec<FlagPerm<'_>> = flags.into_iter().map(FlagPerm::Flag).collect();
            permanent.push(FlagPerm::Asterisk);
            (permanent, "Flags permitted.")
        };
        let code = Code::PermanentFlags(permanent);
        wire::status(
            out,
            wire::untagged(StatusKind::Ok, Some(code), wire::text(text)),
        );
    }

    /// Tells the client of keywords first used since it was last told (by this session's
    /// STORE or by another's), with FLAGS and PERMANENTFLAGS: RFC 3501 §7.2.6 wants a flag
    /// announced before a FETCH carries it.
    pub(crate) fn announce_keywords(&mut self, out: &mut Vec<u8>) {
        if self
            .keywords
            .all()
            .all(|k| self.told.iter().any(|t| t == k))
        {
            return;
        }
        self.write_flags(out);
        self.told = self.keywords.all().map(str::to_owned).collect();
    }

    /// Woken when the folder changes (IDLE), if it is watched.
    pub(crate) fn notifier(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.watch.as_ref().map(Watch::notifier)
    }

    fn generation_changed(&self) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|w| w.generation() != self.generation)
    }

    pub(crate) fn changed_on_disk(&self) -> bool {
        self.generation_changed()
            || self.stamp.is_none()
            || stamp(&self.folder) != self.stamp
            || (self.recheck && settled(self.stamp))
    }

    /// Catches up with the folder. Untagged responses go to `out`: EXPUNGE (only when
    /// `expunge_allowed`; otherwise expunged messages stay in the view until a later command
    /// may announce them), FETCH for flags others changed, EXISTS and RECENT for new mail.
    pub(crate) fn refresh(
        &mut self,
        out: &mut Vec<u8>,
        expunge_allowed: bool,
    ) -> Result<(), StoreError> {
        if let Some(watch) = &self.watch {
            watch.catch_up();
        }
        if !self.changed_on_disk() {
            return Ok(());
        }
        // The cached snapshot is only as new as the generation: when the directories changed
        // and the generation has not (yet), look for ourselves.
        let use_cache = self.generation_changed() && !self.own_change;
        self.own_change = false;
        let generation = self.watch.as_ref().map_or(0, Watch::generation);
        let stamp = stamp(&self.folder);
        self.recheck = self.watch.is_none() && !settled(stamp);
        let take = |use_cache| {
            take_snapshot(
                &self.folder,
                self.read_only,
                self.watch.as_ref(),
                generation,
                stamp,
                use_cache,
            )
        };
        let mut snapshot = take(use_cache)?;
        if use_cache && snapshot.uid_next < self.uid_next {
            // Kept by another session before this one's own look at the folder (the events
            // since have not arrived): never step back from what the client was told.
            snapshot = take(false)?;
        }
        tracing::debug!(
            generation,
            use_cache,
            messages = snapshot.messages.len(),
            "refreshed the selected folder"
        );
        self.generation = generation;
        if snapshot.uid_validity != self.uid_validity {
            // The uid list was lost and rebuilt: nothing we told the client holds.
            wire::status(
                out,
                wire::bye("The folder was renumbered; please reconnect."),
            );
            return Err(StoreError::NoSuchFolder(self.folder.name().to_owned()));
        }
        // The file is read again only for a letter it did not name when last read: the
        // refresh follows every command, and the file rarely changes.
        let used = snapshot
            .messages
            .iter()
            .fold(Flags::EMPTY, |all, m| all | m.flags);
        if !self.keywords.names_all(used) {
            self.keywords = Keywords::load(self.folder.path());
        }
        let told_modseqs = std::mem::replace(
            &mut self.modseqs,
            modseq::sync(self.folder.path(), &snapshot),
        );
        self.announce_keywords(out);
        // Both lists are in UID order: walk them side by side.
        let now = &snapshot.messages;
        let mut kept = vec![false; self.messages.len()];
        let mut changed: Vec<(usize, MessageInfo)> = Vec::new();
        let mut j = 0;
        for (i, msg) in self.messages.iter().enumerate() {
            while j < now.len() && now[j].uid < msg.uid {
                j += 1;
            }
            if j < now.len() && now[j].uid == msg.uid {
                kept[i] = true;
                if now[j] != *msg {
                    changed.push((i, now[j].clone()));
                }
                j += 1;
            }
        }
        // Flag changes (and new file names), before any expunge moves sequence numbers.
        // With CONDSTORE, also a new MODSEQ alone (flags changed and changed back).
        let mut changed = changed.into_iter().peekable();
        for (i, &was_kept) in kept.iter().enumerate() {
            let new = changed.next_if(|(at, _)| *at == i).map(|(_, new)| new);
            let uid = self.messages[i].uid;
            let mut tell =
                self.resync.condstore && was_kept && told_modseqs.of(uid) != self.modseqs.of(uid);
            if let Some(new) = new {
                tell |= new.flags != self.messages[i].flags;
                self.messages[i] = new;
            }
            if tell {
                self.tell_flags(out, i, true);
            }
        }
        // Expunges, from the highest sequence number down so that each number is right as
        // the client applies them in order.
        let kept_gone = kept.iter().any(|k| !k);
        if expunge_allowed && kept_gone {
            let gone: Vec<usize> = (0..kept.len()).filter(|&i| !kept[i]).collect();
            self.remove(&gone, out);
        }
        let kept_gone = kept_gone && !expunge_allowed;
        // New messages: those above the UIDs we know.
        let last = self.messages.last().map_or(0, |m| m.uid);
        let first_fresh = now.partition_point(|m| m.uid <= last);
        let fresh = &now[first_fresh..];
        if !fresh.is_empty() {
            for m in fresh {
                if m.recent || self.claimed.remove(&m.uid) {
                    self.recent.insert(m.uid);
                }
            }
            self.messages.extend_from_slice(fresh);
            wire::data(out, Data::Exists(self.messages.len() as u32));
            if !self.rev2 {
                wire::data(out, Data::Recent(self.recent.len() as u32));
            }
        }
        self.uid_next = self.uid_next.max(snapshot.uid_next);
        // An appended message gone before the view had it (expunged by another session, a
        // MULTIAPPEND undone) is not waited for.
        let last = self.messages.last().map_or(0, |m| m.uid);
        self.claimed.retain(|&uid| uid > last);
        // Keep looking until the expunges could be told.
        self.stamp = if kept_gone { None } else { stamp };
        Ok(())
    }

    /// Indexes (0-based) of the messages a sequence set names, in ascending order. With `uid`,
    /// the numbers are UIDs and ones that do not exist are ignored; otherwise a number past
    /// the end is an error (`None`).
    pub(crate) fn resolve(&self, set: &SequenceSet, uid: bool) -> Option<Vec<usize>> {
        let len = self.messages.len();
        let mut hit = vec![false; len];
        let largest = if uid {
            self.messages.last().map_or(0, |m| m.uid)
        } else {
            len as u32
        };
        let value = |v: &SeqOrUid| match v {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => largest,
        };
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(v) => (value(v), value(v)),
                Sequence::Range(x, y) => (value(x), value(y)),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            if uid {
                // Binary search: messages are in UID order.
                let start = self.messages.partition_point(|m| m.uid < lo);
                let end = self.messages.partition_point(|m| m.uid <= hi);
                hit[start..end].iter_mut().for_each(|h| *h = true);
            } else {
                if lo == 0 || hi as usize > len {
                    return None;
                }
                hit[lo as usize - 1..hi as usize]
                    .iter_mut()
                    .for_each(|h| *h = true);
            }
        }
        Some(
            hit.iter()
                .enumerate()
                .filter(|(_, h)| **h)
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// Changes the flags of the messages at these indexes, under one folder lock, and
    /// returns the indexes of those found gone (expunged by another session meanwhile; their
    /// view is left as it was).
    pub(crate) fn change_flags(
        &mut self,
        indexes: &[usize],
        change: FlagChange,
    ) -> Result<HashSet<usize>, StoreError> {
        if indexes.is_empty() {
            return Ok(HashSet::new());
        }
        self.own_change = true;
        let mut msgs: Vec<MessageInfo> =
            indexes.iter().map(|&i| self.messages[i].clone()).collect();
        let gone = self.folder.update_flags_many(&mut msgs, change)?;
        let changed: Vec<MessageInfo> = msgs
            .iter()
            .enumerate()
            .filter(|(at, _)| !gone.contains(at))
            .map(|(_, m)| m.clone())
            .collect();
        let newer = modseq::note(self.folder.path(), self.uid_validity, &changed);
        let uids: Vec<u32> = changed.iter().map(|m| m.uid).collect();
        Arc::make_mut(&mut self.modseqs).adopt(&newer, &uids);
        for (&i, msg) in indexes.iter().zip(msgs) {
            self.messages[i] = msg;
        }
        Ok(gone.into_iter().map(|at| indexes[at]).collect())
    }

    /// An untagged FETCH of a message's flags (`* n FETCH (UID u FLAGS (...))`), with its
    /// MODSEQ once CONDSTORE is on; with `flags` false only UID and MODSEQ (a STORE .SILENT).
    pub(crate) fn tell_flags(&self, out: &mut Vec<u8>, index: usize, flags: bool) {
        let Some(msg) = self.messages.get(index) else {
            return;
        };
        let mut items = vec![MessageDataItem::Uid(nz(msg.uid))];
        if flags {
            items.push(MessageDataItem::Flags(wire::flags(
                msg.flags,
                self.shows_recent(msg.uid),
                &self.keywords,
            )));
        }
        if self.resync.condstore {
            items.push(MessageDataItem::ModSeq(modseq::nz64(
                self.modseqs.of(msg.uid),
            )));
        }
        if let Ok(items) = Vec1::try_from(items) {
            let seq = nz(u32::try_from(index + 1).unwrap_or(u32::MAX));
            wire::data(out, Data::Fetch { seq, items });
        }
    }

    /// Takes the messages at these indexes (ascending) out of the view and tells the client:
    /// EXPUNGE for each, from the highest sequence number down so that each number is right
    /// as the client applies them in order, or one VANISHED once QRESYNC is on (RFC 7162
    /// §3.2.10).
    pub(crate) fn remove(&mut self, indexes: &[usize], out: &mut Vec<u8>) {
        let mut uids = Vec::with_capacity(indexes.len());
        for &i in indexes.iter().rev() {
            if i >= self.messages.len() {
                continue;
            }
            if !self.resync.qresync {
                wire::data(out, Data::Expunge(nz(i as u32 + 1)));
            }
            let gone = self.messages.remove(i);
            self.recent.remove(&gone.uid);
            uids.push(gone.uid);
        }
        if self.resync.qresync {
            uids.reverse();
            if let Some(known_uids) = modseq::uid_sequence(&uids) {
                wire::data(
                    out,
                    Data::Vanished {
                        earlier: false,
                        known_uids,
                    },
                );
            }
        }
    }

    /// Whether FETCH FLAGS shows the message `\Recent`: never to an IMAP4rev2 client.
    /// This session appended `uid` straight into `cur/` (`Folder::append_claimed`): it is
    /// \Recent here once the view has it, unless the folder was renumbered meanwhile.
    pub(crate) fn claim_appended(&mut self, uid_validity: u32, uid: u32) {
        if uid_validity == self.uid_validity {
            self.claimed.insert(uid);
        }
    }

    pub(crate) fn shows_recent(&self, uid: u32) -> bool {
        !self.rev2 && self.recent.contains(&uid)
    }

    pub(crate) fn unseen_first(&self) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| !m.flags.contains(inetkit_maildir::Flags::SEEN))
            .map(|i| i + 1)
    }

    /// Measures the sizes (RFC822.SIZE) of the messages at these indexes where unknown: see
    /// [`Folder::measure`]. A message gone meanwhile is left as it was.
    pub(crate) fn measure(&mut self, indexes: &[usize]) -> Result<(), StoreError> {
        self.measure_until(indexes, &mut || false)
    }

    /// [`Selected::measure`], asking `stop` before each file (see [`Folder::measure_until`]).
    pub(crate) fn measure_until(
        &mut self,
        indexes: &[usize],
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<(), StoreError> {
        let unknown: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|&i| self.messages.get(i).is_some_and(|m| m.vsize.is_none()))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut msgs: Vec<MessageInfo> =
            unknown.iter().map(|&i| self.messages[i].clone()).collect();
        self.folder.measure_until(&mut msgs, stop)?;
        for (i, msg) in unknown.into_iter().zip(msgs) {
            self.messages[i].vsize = msg.vsize;
        }
        Ok(())
    }

    /// Removes the messages at these indexes from the folder and the view, telling the client
    /// with EXPUNGE responses (when `out` is given). Returns the UIDs removed.
    pub(crate) fn expunge(
        &mut self,
        indexes: &[usize],
        out: Option<&mut Vec<u8>>,
    ) -> Result<Vec<u32>, StoreError> {
        let doomed: Vec<MessageInfo> = indexes.iter().map(|&i| self.messages[i].clone()).collect();
        self.own_change = true;
        self.folder.delete(&doomed)?;
        let uids: Vec<u32> = doomed.iter().map(|m| m.uid).collect();
        let newer = modseq::note_expunged(self.folder.path(), self.uid_validity, &uids);
        Arc::make_mut(&mut self.modseqs).adopt(&newer, &uids);
        let mut lines = Vec::new();
        self.remove(indexes, &mut lines);
        if let Some(out) = out {
            out.extend_from_slice(&lines);
        }
        // Our own deletions are in the view already; changes by others since are picked up
        // by the next refresh all the same, as it compares against the folder itself.
        Ok(doomed.iter().map(|m| m.uid).collect())
    }
}

/// A message's size as IMAP counts it (RFC822.SIZE: every line ending CRLF), once measured
/// ([`Selected::measure`]); the file's size for one not measured (gone meanwhile).
pub(crate) fn octets(msg: &MessageInfo) -> u64 {
    msg.vsize.unwrap_or(msg.size)
}

/// The folder's messages: the snapshot another session took at this generation when there is
/// one (and it can serve: a SELECT must take new messages from `new/` itself), else a fresh
/// one, kept for the others when it moved nothing.
///
/// `stamp` (the directories' times, read before) must match the one read before the cached
/// snapshot was taken: a change the inotify event has not told yet is not missed.
fn take_snapshot(
    folder: &Folder,
    read_only: bool,
    watch: Option<&Watch>,
    generation: u64,
    stamp: Stamp,
    use_cache: bool,
) -> Result<Arc<Snapshot>, StoreError> {
    if let (Some(w), true) = (watch, use_cache) {
        if let Some(cached) = w.cached(generation, stamp) {
            if read_only || !cached.messages.iter().any(|m| m.recent) {
                return Ok(cached);
            }
        }
    }
    let snapshot = Arc::new(if read_only {
        folder.snapshot()?
    } else {
        folder.claim_new()?
    });
    if let Some(w) = watch {
        if read_only || !snapshot.messages.iter().any(|m| m.recent) {
            w.store(generation, stamp, snapshot.clone());
        }
    }
    Ok(snapshot)
}

/// The directories' modification times, read before a snapshot: a later change moves them
/// on.
pub(crate) fn stamp(folder: &Folder) -> Stamp {
    let m = |sub: &str| std::fs::metadata(folder.path().join(sub)).and_then(|m| m.modified());
    Some((m("new").ok()?, m("cur").ok()?))
}

/// File systems keep mtimes in coarse ticks, so a change in the same tick as our look leaves
/// them as they were: a stamp is only trusted once it is a second old (until then the folder
/// is looked at once more, a second later).
pub(crate) fn settled(stamp: Option<(SystemTime, SystemTime)>) -> bool {
    let old = |t: SystemTime| {
        SystemTime::now()
            .duration_since(t)
            .is_ok_and(|age| age >= std::time::Duration::from_secs(1))
    };
    stamp.is_some_and(|(new, cur)| old(new) && old(cur))
}
