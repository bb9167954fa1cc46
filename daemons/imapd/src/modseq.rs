//! Mod-sequences of a folder (CONDSTORE and QRESYNC, RFC 7162), kept beside its uid list in
//! `inetkit-modseq`.
//!
//! Maildir has no change counter, and messages change under other programs too (smtp-submit
//! delivers, pop3d deletes, other imapd sessions set flags), so mod-sequences are derived:
//! the file records, for each UID, the flags last seen and the mod-sequence they were given.
//! Whoever looks at the folder next ([`ModSeqs::sync`], under the file's lock) gives every
//! message whose flags differ, and every new message, the next mod-sequence, and records
//! UIDs that are gone as expunged at that mod-sequence, for `VANISHED (EARLIER)`.
//!
//! The format is text (see [`file`] for how it is stored):
//!
//! ```text
//! inetkit-modseq 2 <uidvalidity> <highestmodseq> <floor> <boot id>
//! m <uid> <modseq> <maildir flags or ->
//! v <uid> <modseq>
//! h <highestmodseq> <floor>
//! ```
//!
//! `floor` is where the expunge record starts: it keeps the last [`MAX_VANISHED`] UIDs, and
//! a rebuilt file knows none. A missing or corrupt file (or one of another UIDVALIDITY) is
//! rebuilt: every message gets a fresh mod-sequence above any the old file could have given
//! (they start from the clock in microseconds), so a client that cached the old ones fetches
//! everything again rather than missing a change.
//!
//! The file is not fsynced (as Dovecot's indexes are not): it changes on every flag change,
//! and a fsync per STORE doubled STORE's time on a 10,000-message folder. What a
//! crash may cost instead is its last writes, so numbers already given out could be given
//! again: the header names the boot it was written in, and a record from an earlier boot
//! moves its numbers on by [`BOOT_GAP`] and forgets its expunges (the clients' VANISHED
//! then name every UID not in the folder).

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use inetkit_maildir::{Flags, MessageInfo, Snapshot};

#[path = "modseq_cache.rs"]
mod cache;
#[path = "modseq_expunged.rs"]
mod expunged;
#[path = "modseq_file.rs"]
mod file;

use expunged::Expunged;
#[cfg(test)]
use file::{boot_id, FILE};
use file::{load, update};
/// Expunged UIDs remembered for VANISHED (EARLIER); older ones are forgotten, raising the
/// floor.
pub(crate) const MAX_VANISHED: usize = 10_000;
/// How far a record written before the last boot moves its numbers on: more than the
/// changes a crash can lose (those of the seconds before it).
const BOOT_GAP: u64 = 1 << 20;
/// The largest mod-sequence IMAP allows (RFC 7162 `mod-sequence-value`: 63 bits).
const MAX_MODSEQ: u64 = i64::MAX as u64;

/// What the client turned on (RFC 7162 §3.1 and §3.2.3): CONDSTORE by any command that
/// uses it, QRESYNC only by ENABLE (which turns CONDSTORE on too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Resync {
    pub(crate) condstore: bool,
    pub(crate) qresync: bool,
}

/// A mod-sequence for the wire (they are never 0).
pub(crate) fn nz64(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

/// UIDs (ascending) as a sequence set of ranges (`3:5,9`); `None` when there are none.
pub(crate) fn uid_sequence(uids: &[u32]) -> Option<SequenceSet> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &uid in uids {
        match ranges.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(uid) => *hi = uid,
            Some((_, hi)) if *hi >= uid => {}
            _ => ranges.push((uid, uid)),
        }
    }
    range_sequence(&ranges)
}

/// Inclusive UID ranges (ascending, apart) as a sequence set; `None` when there are none.
pub(crate) fn range_sequence(ranges: &[(u32, u32)]) -> Option<SequenceSet> {
    let value = |n| NonZeroU32::new(n).map(SeqOrUid::Value);
    let sequences: Vec<Sequence> = ranges
        .iter()
        .filter_map(|&(lo, hi)| {
            Some(if lo == hi {
                Sequence::Single(value(lo)?)
            } else {
                Sequence::Range(value(lo)?, value(hi)?)
            })
        })
        .collect();
    Vec1::try_from(sequences).ok().map(SequenceSet)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    modseq: u64,
    flags: Flags,
}

impl Entry {
    fn new(modseq: u64, flags: Flags) -> Entry {
        Entry { modseq, flags }
    }
}

/// A folder's mod-sequences as last read or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModSeqs {
    uid_validity: u32,
    highest: u64,
    /// Expunges with a mod-sequence above this are all in `vanished`.
    floor: u64,
    /// The boot it was written in (`/proc/sys/kernel/random/boot_id`).
    boot: String,
    messages: BTreeMap<u32, Entry>,
    vanished: Expunged,
}

/// What a client asking for expunges since a mod-sequence is told.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Vanished {
    /// Exactly these UIDs.
    Known(Vec<u32>),
    /// The record does not reach back that far: every UID the client knows that is not in
    /// the folder now.
    Unknown,
}

impl ModSeqs {
    /// A rebuilt record: nothing known, numbers above anything given before.
    fn fresh(uid_validity: u32, at_least: u64) -> ModSeqs {
        let clock = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| {
            u64::try_from(d.as_micros()).unwrap_or(MAX_MODSEQ / 2)
        });
        let highest = clock.max(at_least).min(MAX_MODSEQ / 2);
        ModSeqs {
            uid_validity,
            highest,
            floor: highest,
            boot: file::boot_id().to_owned(),
            messages: BTreeMap::new(),
            vanished: Expunged::default(),
        }
    }

    /// The folder's HIGHESTMODSEQ (never 0).
    pub(crate) fn highest(&self) -> u64 {
        self.highest.max(1)
    }

    /// A message's mod-sequence; one not recorded yet counts as changed now.
    pub(crate) fn of(&self, uid: u32) -> u64 {
        self.messages
            .get(&uid)
            .map_or(self.highest(), |e| e.modseq.max(1))
    }

    /// Takes these UIDs' entries (or their expunge) from a newer record, and no others: what
    /// a session's own change gives it, while other sessions' changes in `newer` are still to
    /// be told (the next refresh compares against what this record says).
    pub(crate) fn adopt(&mut self, newer: &ModSeqs, uids: &[u32]) {
        if newer.uid_validity != self.uid_validity {
            *self = newer.clone();
            return;
        }
        let mut expunged = Vec::new();
        for uid in uids {
            if let Some(entry) = newer.messages.get(uid) {
                self.messages.insert(*uid, *entry);
                self.highest = self.highest.max(entry.modseq);
            } else {
                expunged.push(*uid);
            }
        }
        if !expunged.is_empty() {
            let adopted = newer.vanished.find(&expunged);
            for &(uid, modseq) in &adopted {
                self.messages.remove(&uid);
                self.highest = self.highest.max(modseq);
            }
            self.vanished.extend(adopted);
        }
        self.bound();
    }

    /// UIDs expunged after `since`, as far as the record reaches.
    pub(crate) fn vanished_since(&self, since: u64) -> Vanished {
        if since < self.floor {
            return Vanished::Unknown;
        }
        Vanished::Known(self.vanished.since(since))
    }

    /// What a look at the folder as `snapshot` saw it changes: new messages and changed
    /// flags (to be given `next`), and UIDs gone. Read-only, one walk over both lists (in UID
    /// order): most looks change nothing, and then the record is not copied.
    ///
    /// `current` says whether the snapshot's file name (so its flags) is still the message's:
    /// a snapshot taken just before another session's change must not record the old flags
    /// as a change of their own.
    fn look(
        &self,
        snapshot: &Snapshot,
        next: u64,
        current: &dyn Fn(&MessageInfo) -> bool,
    ) -> (Vec<(u32, Entry)>, Vec<u32>) {
        let (mut noted, mut gone, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        // Only UIDs below the snapshot's UIDNEXT can be judged gone: a newer one arrived
        // after it was taken (and another session recorded it).
        let mut known = self.messages.range(..snapshot.uid_next).peekable();
        for msg in &snapshot.messages {
            while let Some((&uid, _)) = known.next_if(|(&uid, _)| uid < msg.uid) {
                gone.push(uid);
            }
            let entry = match known.next_if(|(&uid, _)| uid == msg.uid) {
                Some((_, entry)) => Some(entry),
                None => self.messages.get(&msg.uid),
            };
            match entry {
                Some(e) if e.flags != msg.flags && current(msg) => {
                    noted.push((msg.uid, Entry::new(next, msg.flags)));
                }
                Some(_) => {}
                None => unknown.push(msg),
            }
        }
        gone.extend(known.map(|(&uid, _)| uid));
        noted.extend(self.new_ones(unknown, next));
        (noted, gone)
    }

    /// Messages the record does not know, as new (given `next`): all but those expunged,
    /// which are a stale look at the folder.
    fn new_ones(&self, unknown: Vec<&MessageInfo>, next: u64) -> Vec<(u32, Entry)> {
        if unknown.is_empty() {
            return Vec::new();
        }
        let uids: Vec<u32> = unknown.iter().map(|m| m.uid).collect();
        let expunged: FxHashSet<u32> = self
            .vanished
            .find(&uids)
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        unknown
            .into_iter()
            .filter(|msg| !expunged.contains(&msg.uid))
            .map(|msg| (msg.uid, Entry::new(next, msg.flags)))
            .collect()
    }

    /// Applies what a look or a session's own change found, at mod-sequence `next`.
    fn apply(&mut self, noted: Vec<(u32, Entry)>, gone: &[u32], next: u64) {
        self.messages.extend(noted);
        let removed: Vec<(u32, u64)> = gone
            .iter()
            .filter(|&uid| self.messages.remove(uid).is_some())
            .map(|&uid| (uid, next))
            .collect();
        self.vanished.extend(removed);
        self.highest = next;
        self.bound();
    }

    /// A session's own flag changes to these messages (a partial look: nothing is judged
    /// gone), as [`ModSeqs::look`] finds them.
    fn noted(&self, messages: &[MessageInfo], next: u64) -> Vec<(u32, Entry)> {
        let mut unknown = Vec::new();
        let mut noted: Vec<(u32, Entry)> = Vec::new();
        for msg in messages {
            match self.messages.get(&msg.uid) {
                Some(e) if e.flags != msg.flags => {
                    noted.push((msg.uid, Entry::new(next, msg.flags)));
                }
                Some(_) => {}
                None => unknown.push(msg),
            }
        }
        noted.extend(self.new_ones(unknown, next));
        noted
    }

    /// Forgets the oldest expunges past [`MAX_VANISHED`], raising the floor to them.
    fn bound(&mut self) {
        if let Some(forgotten) = self.vanished.keep_newest(MAX_VANISHED) {
            self.floor = self.floor.max(forgotten);
        }
    }
}

/// The folder's record, brought up to `snapshot` (and saved when that changed it). Never
/// fails: a record that cannot be saved is still right for this look, and logged.
pub(crate) fn sync(folder: &Path, snapshot: &Snapshot) -> Arc<ModSeqs> {
    let current = |msg: &MessageInfo| folder.join(msg.file()).exists();
    update(folder, snapshot.uid_validity, |record| {
        let next = record.highest + 1;
        let (noted, gone) = record.look(snapshot, next, &current);
        changing(record, noted, &gone, next)
    })
}

/// The folder's record after this session changed these messages' flags.
pub(crate) fn note(folder: &Path, uid_validity: u32, messages: &[MessageInfo]) -> Arc<ModSeqs> {
    update(folder, uid_validity, |record| {
        let next = record.highest + 1;
        let noted = record.noted(messages, next);
        changing(record, noted, &[], next)
    })
}

/// The folder's record after this session expunged these UIDs.
pub(crate) fn note_expunged(folder: &Path, uid_validity: u32, uids: &[u32]) -> Arc<ModSeqs> {
    update(folder, uid_validity, |record| {
        let next = record.highest + 1;
        let gone: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|uid| record.messages.contains_key(uid))
            .collect();
        changing(record, Vec::new(), &gone, next)
    })
}

/// Applies a change to the record, copying it first if others share it; whether there was
/// any.
fn changing(record: &mut Arc<ModSeqs>, noted: Vec<(u32, Entry)>, gone: &[u32], next: u64) -> bool {
    if noted.is_empty() && gone.is_empty() {
        return false;
    }
    Arc::make_mut(record).apply(noted, gone, next);
    true
}

/// The folder's record as saved now (a fresh one when missing or corrupt, not saved).
pub(crate) fn current(folder: &Path, uid_validity: u32) -> Arc<ModSeqs> {
    load(folder, uid_validity).record
}

#[cfg(test)]
impl ModSeqs {
    fn parse(text: &str) -> Result<ModSeqs, Option<u64>> {
        file::parse(text).map(|parsed| parsed.record)
    }

    fn to_text(&self) -> String {
        file::to_text(self)
    }
}

#[cfg(test)]
#[path = "modseq_tests.rs"]
mod tests;
