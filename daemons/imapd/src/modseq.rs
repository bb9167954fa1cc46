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
//! The format is text, rewritten whole and atomically (temp file, rename):
//!
//! ```text
//! inetkit-modseq 1 <uidvalidity> <highestmodseq> <floor> <boot id>
//! m <uid> <modseq> <maildir flags or ->
//! v <uid> <modseq>
//! ```
//!
//! `floor` is where the expunge record starts: it keeps the last [`MAX_VANISHED`] UIDs, and
//! a rebuilt file knows none. A missing or corrupt file (or one of another UIDVALIDITY) is
//! rebuilt: every message gets a fresh mod-sequence above any the old file could have given
//! (they start from the clock in microseconds), so a client that cached the old ones fetches
//! everything again rather than missing a change.
//!
//! The file is not fsynced (as Dovecot's indexes are not): it is rewritten on every flag
//! change, and a fsync per STORE doubled STORE's time on a 10,000-message folder. What a
//! crash may cost instead is its last writes, so numbers already given out could be given
//! again: the header names the boot it was written in, and a record from an earlier boot
//! moves its numbers on by [`BOOT_GAP`] and forgets its expunges (the clients' VANISHED
//! then name every UID not in the folder).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use inetkit_maildir::{Flags, MessageInfo, Snapshot};
use nix::fcntl::{Flock, FlockArg};

#[path = "modseq_cache.rs"]
mod cache;

pub(crate) const FILE: &str = "inetkit-modseq";
const LOCK: &str = "inetkit-modseq.lock";
const MAGIC: &str = "inetkit-modseq 1";
/// Expunged UIDs remembered for VANISHED (EARLIER); older ones are forgotten, raising the
/// floor.
pub(crate) const MAX_VANISHED: usize = 10_000;
/// A file larger than this is not read (taken as corrupt): a few million messages.
const MAX_FILE: u64 = 256 * 1024 * 1024;
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
    vanished: BTreeMap<u32, u64>,
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
            boot: boot_id().to_owned(),
            messages: BTreeMap::new(),
            vanished: BTreeMap::new(),
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
        for uid in uids {
            if let Some(entry) = newer.messages.get(uid) {
                self.messages.insert(*uid, *entry);
                self.highest = self.highest.max(entry.modseq);
            } else if let Some(&modseq) = newer.vanished.get(uid) {
                self.messages.remove(uid);
                self.vanished.insert(*uid, modseq);
                self.highest = self.highest.max(modseq);
            }
        }
        self.bound();
    }

    /// UIDs expunged after `since`, as far as the record reaches.
    pub(crate) fn vanished_since(&self, since: u64) -> Vanished {
        if since < self.floor {
            return Vanished::Unknown;
        }
        Vanished::Known(
            self.vanished
                .iter()
                .filter(|(_, &m)| m > since)
                .map(|(&uid, _)| uid)
                .collect(),
        )
    }

    /// Brings the record up to the folder as `snapshot` saw it: new messages and changed
    /// flags get the next mod-sequence, UIDs gone are recorded as expunged. Returns whether
    /// anything changed.
    ///
    /// `current` says whether the snapshot's file name (so its flags) is still the message's:
    /// a snapshot taken just before another session's change must not record the old flags
    /// as a change of their own.
    fn sync(&mut self, snapshot: &Snapshot, current: &dyn Fn(&MessageInfo) -> bool) -> bool {
        let next = self.highest + 1;
        let mut changed = self.note(&snapshot.messages, next, current);
        // Only UIDs below the snapshot's UIDNEXT can be judged gone: a newer one arrived
        // after it was taken (and another session recorded it).
        let present: std::collections::HashSet<u32> =
            snapshot.messages.iter().map(|m| m.uid).collect();
        let gone: Vec<u32> = self
            .messages
            .range(..snapshot.uid_next)
            .map(|(&uid, _)| uid)
            .filter(|uid| !present.contains(uid))
            .collect();
        for uid in gone {
            self.messages.remove(&uid);
            self.vanished.insert(uid, next);
            changed = true;
        }
        if changed {
            self.highest = next;
            self.bound();
        }
        changed
    }

    /// Records these messages' flags (a partial look: nothing is judged gone), giving the
    /// changed and new ones `next`.
    fn note(
        &mut self,
        messages: &[MessageInfo],
        next: u64,
        current: &dyn Fn(&MessageInfo) -> bool,
    ) -> bool {
        let mut changed = false;
        for msg in messages {
            // An expunged message seen again is a stale look at the folder.
            if self.vanished.contains_key(&msg.uid) {
                continue;
            }
            let entry = Entry {
                modseq: next,
                flags: msg.flags,
            };
            match self.messages.get_mut(&msg.uid) {
                Some(e) if e.flags == msg.flags => {}
                Some(_) if !current(msg) => {}
                Some(e) => {
                    *e = entry;
                    changed = true;
                }
                None => {
                    self.messages.insert(msg.uid, entry);
                    changed = true;
                }
            }
        }
        if changed {
            self.highest = next;
        }
        changed
    }

    /// Forgets the oldest expunges past [`MAX_VANISHED`], raising the floor to them.
    fn bound(&mut self) {
        let excess = self.vanished.len().saturating_sub(MAX_VANISHED);
        if excess == 0 {
            return;
        }
        let mut by_modseq: Vec<(u64, u32)> = self.vanished.iter().map(|(&u, &m)| (m, u)).collect();
        by_modseq.sort_unstable();
        for &(modseq, uid) in by_modseq.iter().take(excess) {
            self.vanished.remove(&uid);
            self.floor = self.floor.max(modseq);
        }
    }

    fn parse(text: &str) -> Result<ModSeqs, Option<u64>> {
        let mut lines = text.lines();
        let head = lines.next().ok_or(None)?;
        let fields: Vec<&str> = head.strip_prefix(MAGIC).ok_or(None)?.split(' ').collect();
        let [_, validity, highest, floor, boot] = fields.as_slice() else {
            return Err(None);
        };
        let highest: u64 = highest.parse().map_err(|_| None)?;
        let corrupt = Some(highest);
        let uid_validity = validity.parse().map_err(|_| corrupt)?;
        let floor = floor.parse().map_err(|_| corrupt)?;
        if highest > MAX_MODSEQ || floor > highest || boot.is_empty() {
            return Err(None);
        }
        let mut record = ModSeqs {
            uid_validity,
            highest,
            floor,
            boot: (*boot).to_owned(),
            messages: BTreeMap::new(),
            vanished: BTreeMap::new(),
        };
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok()).ok_or(corrupt);
        for line in lines {
            let mut fields = line.split(' ');
            let kind = fields.next();
            let uid = u32::try_from(number(fields.next())?).map_err(|_| corrupt)?;
            let modseq = number(fields.next())?;
            if uid == 0 || modseq > highest {
                return Err(corrupt);
            }
            match (kind, fields.next(), fields.next()) {
                (Some("m"), Some(flags), None) => {
                    let flags = if flags == "-" {
                        Flags::EMPTY
                    } else {
                        Flags::from_maildir(flags)
                    };
                    record.messages.insert(uid, Entry { modseq, flags });
                }
                (Some("v"), None, None) => {
                    record.vanished.insert(uid, modseq);
                }
                _ => return Err(corrupt),
            }
        }
        if record.vanished.len() > MAX_VANISHED {
            return Err(corrupt);
        }
        Ok(record)
    }

    fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(64 + 32 * (self.messages.len() + self.vanished.len()));
        let _ = writeln!(
            text,
            "{MAGIC} {} {} {} {}",
            self.uid_validity, self.highest, self.floor, self.boot
        );
        // Few distinct flag sets: each spelled once.
        let mut spelled: std::collections::HashMap<Flags, String> = Default::default();
        for (uid, e) in &self.messages {
            let letters = spelled.entry(e.flags).or_insert_with(|| {
                let letters = e.flags.to_maildir();
                if letters.is_empty() {
                    "-".to_owned()
                } else {
                    letters
                }
            });
            let _ = writeln!(text, "m {uid} {} {letters}", e.modseq);
        }
        for (uid, modseq) in &self.vanished {
            let _ = writeln!(text, "v {uid} {modseq}");
        }
        text
    }
}

/// The folder's record, brought up to `snapshot` (and saved when that changed it). Never
/// fails: a record that cannot be saved is still right for this look, and logged.
pub(crate) fn sync(folder: &Path, snapshot: &Snapshot) -> ModSeqs {
    let current = |msg: &MessageInfo| folder.join(msg.file()).exists();
    update(folder, snapshot.uid_validity, |r| {
        r.sync(snapshot, &current)
    })
}

/// The folder's record after this session changed these messages' flags.
pub(crate) fn note(folder: &Path, uid_validity: u32, messages: &[MessageInfo]) -> ModSeqs {
    update(folder, uid_validity, |r| {
        let next = r.highest + 1;
        r.note(messages, next, &|_| true)
    })
}

/// The folder's record after this session expunged these UIDs.
pub(crate) fn note_expunged(folder: &Path, uid_validity: u32, uids: &[u32]) -> ModSeqs {
    update(folder, uid_validity, |r| {
        let next = r.highest + 1;
        let mut changed = false;
        for uid in uids {
            if r.messages.remove(uid).is_some() {
                r.vanished.insert(*uid, next);
                changed = true;
            }
        }
        if changed {
            r.highest = next;
            r.bound();
        }
        changed
    })
}

/// The folder's record as saved now (a fresh one when missing or corrupt, not saved).
pub(crate) fn current(folder: &Path, uid_validity: u32) -> ModSeqs {
    load(folder, uid_validity).0
}

/// Reads the record (a fresh one when missing, corrupt or of another UIDVALIDITY), applies
/// `change`, and saves it when `change` says it changed anything. The look without the lock
/// comes first: most looks change nothing.
fn update(folder: &Path, uid_validity: u32, change: impl Fn(&mut ModSeqs) -> bool) -> ModSeqs {
    let mut record = load(folder, uid_validity);
    if !change(&mut record.0) && !record.1 {
        return record.0;
    }
    let lock = match lock(folder) {
        Ok(lock) => lock,
        Err(err) => {
            tracing::warn!(folder = %folder.display(), error = %err, "cannot lock the modseq file");
            return record.0;
        }
    };
    let (mut record, _) = load(folder, uid_validity);
    change(&mut record);
    if let Err(err) = save(folder, &record) {
        tracing::warn!(folder = %folder.display(), error = %err, "cannot save the modseq file");
    }
    drop(lock);
    record
}

/// The record and whether it was rebuilt (so must be saved).
fn load(folder: &Path, uid_validity: u32) -> (ModSeqs, bool) {
    let path = folder.join(FILE);
    let text = File::open(&path).and_then(|file| {
        let id = cache::Identity::of_file(&file);
        if let Some(record) = id.and_then(|id| cache::get(&path, id)) {
            return Ok(Loaded::Cached(record));
        }
        let mut text = String::new();
        file.take(MAX_FILE + 1).read_to_string(&mut text)?;
        Ok(Loaded::Text(text, id))
    });
    let parsed = match text {
        Ok(Loaded::Cached(record)) => Ok(Arc::unwrap_or_clone(record)),
        Ok(Loaded::Text(text, _)) if text.len() as u64 > MAX_FILE => Err(None),
        Ok(Loaded::Text(text, id)) => ModSeqs::parse(&text).inspect(|record| {
            if let Some(id) = id {
                cache::put(&path, id, Arc::new(record.clone()));
            }
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return (ModSeqs::fresh(uid_validity, 0), true);
        }
        Err(_) => Err(None),
    };
    match parsed {
        Ok(mut record) if record.uid_validity == uid_validity && record.boot != boot_id() => {
            // Written before the last boot: its last writes may be lost (see the module doc).
            record.highest = record.highest.saturating_add(BOOT_GAP).min(MAX_MODSEQ);
            record.floor = record.highest;
            record.vanished.clear();
            record.boot = boot_id().to_owned();
            (record, true)
        }
        Ok(record) if record.uid_validity == uid_validity => (record, false),
        Ok(record) => (ModSeqs::fresh(uid_validity, record.highest + 1), true),
        Err(highest) => {
            tracing::warn!(file = %path.display(), "corrupt modseq file: rebuilt");
            let at_least = highest.map_or(0, |h| h.saturating_add(1));
            (ModSeqs::fresh(uid_validity, at_least), true)
        }
    }
}

/// A record file as read: parsed before (by this process), or its text.
enum Loaded {
    Cached(Arc<ModSeqs>),
    Text(String, Option<cache::Identity>),
}

/// This boot's id; `-` where the kernel does not say.
fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty() && !id.contains(char::is_whitespace))
            .unwrap_or_else(|| "-".to_owned())
    })
}

fn lock(folder: &Path) -> std::io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(folder.join(LOCK))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
}

fn save(folder: &Path, record: &ModSeqs) -> std::io::Result<()> {
    let temp = folder.join(format!("{FILE}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(record.to_text().as_bytes())?;
    let path = folder.join(FILE);
    std::fs::rename(&temp, &path)?;
    // The lock is held: nobody replaced it since.
    if let Some(id) = cache::Identity::of_path(&path) {
        cache::put(&path, id, Arc::new(record.clone()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "modseq_tests.rs"]
mod tests;
