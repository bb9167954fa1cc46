//! How a folder's mod-sequence record is stored: a base, then changes appended to it.
//!
//! A compacted file is the header, every message's and expunge's line, and a commit line
//! `h <highestmodseq> <floor>`. A change appends only the lines that differ and a commit line,
//! in one `write(2)` to a file opened `O_APPEND`: a STORE on a 10,000-message folder writes a
//! few dozen bytes, not the whole record (that rewrite was a seventh of imapd's time under
//! imaptest's persistent sessions). Past [`COMPACT_AT`] appended bytes (or the base's own size,
//! whichever is larger) the next change rewrites the file whole (temp file, rename).
//!
//! Reading applies the lines up to the last commit; a tail without one (a write cut short by
//! a full disk, or one still under way while a reader looks without the lock) is ignored, and
//! the next change compacts. The process keeps what it last read ([`cache`]), so a look at a
//! file that only grew reads just the new bytes. A file of the older format (no commit lines,
//! always written whole) is read as one block and compacted at its next change.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use inetkit_maildir::Flags;
use nix::fcntl::{Flock, FlockArg};

use super::cache::{self, Identity, Known};
use super::{Entry, Expunged, ModSeqs, BOOT_GAP, MAX_MODSEQ, MAX_VANISHED};

pub(crate) const FILE: &str = "inetkit-modseq";
const LOCK: &str = "inetkit-modseq.lock";
/// The header's first words: version 2 has commit lines and appended blocks; a file of
/// version 1 (written whole, no commit lines) is read and compacted to version 2 at its first
/// change. A version-1 reader takes a version-2 file for damaged and rebuilds it.
const MAGIC: &str = "inetkit-modseq 2";
const MAGIC_V1: &str = "inetkit-modseq 1";
/// A file larger than this is not read (taken as corrupt): a few million messages.
const MAX_FILE: u64 = 256 * 1024 * 1024;
/// Appended bytes that never force a compaction (a larger base allows as many as its size).
pub(super) const COMPACT_AT: u64 = 64 * 1024;

/// A record as loaded for a change or a look.
pub(super) struct Loaded {
    /// As the file says (or rebuilt): shared with the cache until changed.
    pub(super) record: Arc<ModSeqs>,
    /// Rebuilt or moved on, so it must be written whole.
    rebuilt: bool,
    /// The file as read, when a change can be appended to it.
    appendable: Option<Arc<Known>>,
}

/// Reads the record (a fresh one when missing, corrupt or of another UIDVALIDITY), applies
/// `change`, and stores it when `change` says it changed anything. The look without the lock
/// comes first: most looks change nothing.
pub(super) fn update(
    folder: &Path,
    uid_validity: u32,
    change: impl Fn(&mut Arc<ModSeqs>) -> bool,
) -> Arc<ModSeqs> {
    let mut unlocked = load(folder, uid_validity);
    if !change(&mut unlocked.record) && !unlocked.rebuilt {
        return unlocked.record;
    }
    let lock = match lock(folder) {
        Ok(lock) => lock,
        Err(err) => {
            tracing::warn!(folder = %folder.display(), error = %err, "cannot lock the modseq file");
            return unlocked.record;
        }
    };
    let Loaded {
        mut record,
        rebuilt,
        appendable,
    } = load(folder, uid_validity);
    if change(&mut record) || rebuilt {
        let stored = match appendable {
            Some(known) if !known.wants_compaction() => append(folder, &known, &record),
            _ => save(folder, &record),
        };
        if let Err(err) = stored {
            tracing::warn!(folder = %folder.display(), error = %err, "cannot save the modseq file");
        }
    }
    drop(lock);
    record
}

/// The record as the file says now; a fresh one (to be saved) when missing, corrupt, of
/// another UIDVALIDITY, or moved on when written before the last boot.
pub(super) fn load(folder: &Path, uid_validity: u32) -> Loaded {
    let path = folder.join(FILE);
    let read = match unchanged(&path) {
        Some(known) => Ok(known),
        None => File::open(&path).and_then(|file| read(&path, file)),
    };
    let known = match read {
        Ok(known) => Ok(known),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Loaded::rebuilt(ModSeqs::fresh(uid_validity, 0));
        }
        Err(err) => Err(err),
    };
    let known = match known {
        Ok(known) => known,
        Err(err) => {
            tracing::warn!(file = %path.display(), error = %err, "corrupt modseq file: rebuilt");
            let at_least = corrupt_highest(&err).map_or(0, |h| h.saturating_add(1));
            return Loaded::rebuilt(ModSeqs::fresh(uid_validity, at_least));
        }
    };
    let record = &known.record;
    if record.uid_validity != uid_validity {
        return Loaded::rebuilt(ModSeqs::fresh(uid_validity, record.highest + 1));
    }
    if record.boot != boot_id() {
        // Written before the last boot: its last writes may be lost (see the module doc).
        let mut record = (*known.record).clone();
        record.highest = record.highest.saturating_add(BOOT_GAP).min(MAX_MODSEQ);
        record.floor = record.highest;
        record.vanished.clear();
        record.boot = boot_id().to_owned();
        return Loaded::rebuilt(record);
    }
    Loaded {
        record: known.record.clone(),
        rebuilt: false,
        appendable: known.appendable().then_some(known),
    }
}

impl Loaded {
    fn rebuilt(record: ModSeqs) -> Loaded {
        Loaded {
            record: Arc::new(record),
            rebuilt: true,
            appendable: None,
        }
    }
}

/// The record this process last read or wrote, if the file at `path` is still that one (a
/// `stat`, where opening it to read would cost an open and a close as well): most looks
/// after a command find it so.
fn unchanged(path: &Path) -> Option<Arc<Known>> {
    let known = cache::get(path)?;
    let now = Identity::of(&std::fs::metadata(path).ok()?);
    (known.id == now).then_some(known)
}

/// The file as parsed: from this process's cache when it has not changed, by reading only
/// what was appended when it only grew, else whole.
fn read(path: &Path, mut file: File) -> std::io::Result<Arc<Known>> {
    let mut id = Identity::of(&file.metadata()?);
    if let Some(known) = cache::get(path) {
        if known.id.same_file(&id) && known.end > id.size {
            // Another session appended and cached since this file's size was taken (the
            // look takes no lock): take it again rather than parse an older record whole.
            id = Identity::of(&file.metadata()?);
        }
        if known.id == id {
            return Ok(known);
        }
        if let Some(grown) = read_appended(&mut file, &known, id)? {
            let grown = Arc::new(grown);
            cache::put(path, grown.clone());
            return Ok(grown);
        }
    }
    if id.size > MAX_FILE {
        return Err(corrupt(None));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.take(id.size).read_to_end(&mut bytes)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt(None))?;
    let parsed = parse(text).map_err(corrupt)?;
    let known = Arc::new(Known {
        id,
        record: Arc::new(parsed.record),
        end: parsed.end as u64,
        base: parsed.base as u64,
        commit: parsed.commit,
    });
    cache::put(path, known.clone());
    Ok(known)
}

/// `known` brought up to the file when the file is `known`'s with lines appended: its last
/// commit line is still where it was (a file replaced by a rename, whatever its inode, has
/// other bytes there: every commit names a higher mod-sequence). `None` when it is not.
fn read_appended(file: &mut File, known: &Known, id: Identity) -> std::io::Result<Option<Known>> {
    let Some(commit) = &known.commit else {
        return Ok(None);
    };
    let from = known.end - commit.len() as u64;
    if !id.same_file(&known.id) || id.size <= known.end || id.size - from > MAX_FILE {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(id.size - from).read_to_end(&mut bytes)?;
    let Some(tail) = bytes.strip_prefix(commit.as_bytes()) else {
        return Ok(None);
    };
    let Ok(tail) = std::str::from_utf8(tail) else {
        return Ok(None);
    };
    let mut record = (*known.record).clone();
    match replay(&mut record, tail, false) {
        Ok(replayed) if replayed.commits > 0 => Ok(Some(Known {
            id,
            record: Arc::new(record),
            end: known.end + replayed.end as u64,
            base: known.base,
            commit: replayed.commit,
        })),
        // Nothing complete was added (a write under way): the same record, at the new size.
        Ok(_) => Ok(Some(Known {
            id,
            record: known.record.clone(),
            end: known.end,
            base: known.base,
            commit: known.commit.clone(),
        })),
        Err(_) => Ok(None),
    }
}

/// Appends the change from the record `known` holds to `record` (the lock is held, so
/// nobody else wrote since it was read).
fn append(folder: &Path, known: &Known, record: &Arc<ModSeqs>) -> std::io::Result<()> {
    let path = folder.join(FILE);
    let lines = changes(&known.record, record);
    let mut file = OpenOptions::new().append(true).open(&path)?;
    file.write_all(lines.as_bytes())?;
    let id = Identity::of(&file.metadata()?);
    let end = known.end + lines.len() as u64;
    if id.same_file(&known.id) && id.size == end {
        cache::put(&path, written(id, record, end, known.base));
    }
    Ok(())
}

/// Writes the record whole: a temp file renamed over the old one.
fn save(folder: &Path, record: &Arc<ModSeqs>) -> std::io::Result<()> {
    let temp = folder.join(format!("{FILE}.tmp"));
    let mut file = File::create(&temp)?;
    let text = to_text(record);
    file.write_all(text.as_bytes())?;
    let path = folder.join(FILE);
    std::fs::rename(&temp, &path)?;
    // After the rename, which changes the file's ctime. The lock is held: nobody replaced
    // it since.
    let id = Identity::of(&file.metadata()?);
    let end = text.len() as u64;
    cache::put(&path, written(id, record, end, end));
    Ok(())
}

/// A file this process just wrote, `end` bytes long, ending with `record`'s commit.
fn written(id: Identity, record: &Arc<ModSeqs>, end: u64, base: u64) -> Arc<Known> {
    Arc::new(Known {
        id,
        record: record.clone(),
        end,
        base,
        commit: Some(commit_line(record)),
    })
}

fn commit_line(record: &ModSeqs) -> String {
    format!("h {} {}\n", record.highest, record.floor)
}

/// The whole record, compacted: header, messages, expunges, commit.
pub(super) fn to_text(record: &ModSeqs) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64 + 32 * (record.messages.len() + record.vanished.len()));
    let _ = writeln!(
        text,
        "{MAGIC} {} {} {} {}",
        record.uid_validity, record.highest, record.floor, record.boot
    );
    // Few distinct flag sets: each spelled once.
    let mut spelled: std::collections::HashMap<Flags, String> = Default::default();
    for (uid, e) in &record.messages {
        let letters = spelled.entry(e.flags).or_insert_with(|| letters(e.flags));
        let _ = writeln!(text, "m {uid} {} {letters}", e.modseq);
    }
    for (uid, modseq) in record.vanished.iter() {
        let _ = writeln!(text, "v {uid} {modseq}");
    }
    text.push_str(&commit_line(record));
    text
}

/// The lines that take `before` to `after`, and their commit. Replaying them gives `after`
/// exactly: UIDs gone from the messages are written as expunged, also those that
/// [`ModSeqs::bound`] then forgot again, so that the replay's bound forgets the same.
pub(super) fn changes(before: &ModSeqs, after: &ModSeqs) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for (uid, e) in differing(&after.messages, &before.messages) {
        let _ = writeln!(text, "m {uid} {} {}", e.modseq, letters(e.flags));
    }
    // Every expunge a change records is at a mod-sequence above the record it changes.
    let mut expunged: BTreeMap<u32, u64> = after
        .vanished
        .iter()
        .filter(|&(_, modseq)| modseq > before.highest)
        .collect();
    for (&uid, _) in differing(&before.messages, &after.messages) {
        if !after.messages.contains_key(&uid) {
            // Expunged now (so in the map already), or forgotten at once by bound().
            expunged.entry(uid).or_insert(after.highest);
        }
    }
    for (uid, modseq) in expunged {
        let _ = writeln!(text, "v {uid} {modseq}");
    }
    text.push_str(&commit_line(after));
    text
}

/// The entries of `a` that `b` lacks or holds otherwise (both walked once, in UID order).
fn differing<'a, V: PartialEq>(
    a: &'a BTreeMap<u32, V>,
    b: &'a BTreeMap<u32, V>,
) -> impl Iterator<Item = (&'a u32, &'a V)> {
    let mut b = b.iter().peekable();
    a.iter().filter(move |(uid, value)| {
        while b.next_if(|(other, _)| other < uid).is_some() {}
        !matches!(b.peek(), Some((other, v)) if other == uid && v == value)
    })
}

fn letters(flags: Flags) -> String {
    let letters = flags.to_maildir();
    if letters.is_empty() {
        "-".to_owned()
    } else {
        letters
    }
}

/// A whole file parsed.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) record: ModSeqs,
    /// Bytes up to the end of the last commit (the whole text in the older format).
    end: usize,
    /// Bytes up to the end of the first commit: the compacted base.
    base: usize,
    /// The last commit line, when there is one (the file can be appended to).
    commit: Option<String>,
}

/// Parses a file's text. The error carries the highest mod-sequence the file vouches for
/// (the header's, or the last good commit's), when it names one, so that a rebuilt record
/// starts above it.
pub(super) fn parse(text: &str) -> Result<Parsed, Option<u64>> {
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let (fields, v1) = match (head.strip_prefix(MAGIC), head.strip_prefix(MAGIC_V1)) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err(None),
    };
    let fields: Vec<&str> = fields.split(' ').collect();
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
        vanished: Expunged::default(),
    };
    let head_len = text.len() - body.len();
    // A damaged block: the rebuilt record starts above what the blocks before it gave out,
    // not only above the base's number.
    let Ok(replayed) = replay(&mut record, body, true) else {
        return Err(Some(record.highest));
    };
    match (v1, replayed.commits) {
        // The older format: whole, no commit line.
        (true, 0) => {
            return Ok(Parsed {
                record,
                end: text.len(),
                base: text.len(),
                commit: None,
            })
        }
        (false, 1..) => {}
        _ => return Err(Some(record.highest)),
    }
    Ok(Parsed {
        record,
        end: head_len + replayed.end,
        base: head_len + replayed.base,
        commit: replayed.commit,
    })
}

/// What [`replay`] applied.
pub(super) struct Replayed {
    pub(super) commits: usize,
    /// Bytes up to the end of the last commit, and of the first.
    end: usize,
    base: usize,
    commit: Option<String>,
}

/// Applies the lines of `text` to `record`, a block at a time: the lines up to a commit
/// line, which gives the new highest mod-sequence and floor. Lines after the last commit are
/// ignored, except in a file of the older format (`follows_header` and no commit at all),
/// where all lines are one block, complete.
pub(super) fn replay(
    record: &mut ModSeqs,
    text: &str,
    follows_header: bool,
) -> Result<Replayed, ()> {
    let mut replayed = Replayed {
        commits: 0,
        end: 0,
        base: 0,
        commit: None,
    };
    let mut block: Vec<Line> = Vec::new();
    let mut at = 0;
    let mut cut_short = false;
    for line in text.split_inclusive('\n') {
        at += line.len();
        let Some(line) = line.strip_suffix('\n') else {
            // A last line without its newline: still being written, or cut short.
            cut_short = true;
            break;
        };
        match parse_line(line)? {
            Line::Commit { highest, floor } => {
                let first = follows_header && replayed.commits == 0;
                commit(record, &block, highest, floor, first)?;
                block.clear();
                replayed.commits += 1;
                replayed.end = at;
                if first {
                    replayed.base = at;
                }
                replayed.commit = Some(format!("{line}\n"));
            }
            change => block.push(change),
        }
    }
    if replayed.commits == 0 && follows_header {
        // The older format: every line belongs to the header's record, and it was written
        // whole (by a rename), so a line cut short is damage.
        if cut_short {
            return Err(());
        }
        let (highest, floor) = (record.highest, record.floor);
        commit(record, &block, highest, floor, true)?;
    }
    Ok(replayed)
}

enum Line {
    Message(u32, Entry),
    Expunged(u32, u64),
    Commit { highest: u64, floor: u64 },
}

fn parse_line(line: &str) -> Result<Line, ()> {
    let mut fields = line.split(' ');
    let kind = fields.next();
    let number = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok()).ok_or(());
    let first = number(fields.next())?;
    let second = number(fields.next())?;
    let line = match (kind, fields.next(), fields.next()) {
        (Some("h"), None, None) if second <= first && first <= MAX_MODSEQ => Line::Commit {
            highest: first,
            floor: second,
        },
        (Some(kind @ ("m" | "v")), flags, None) => {
            let uid = u32::try_from(first).map_err(|_| ())?;
            if uid == 0 {
                return Err(());
            }
            match (kind, flags) {
                ("m", Some("-")) => Line::Message(uid, Entry::new(second, Flags::EMPTY)),
                ("m", Some(flags)) => {
                    Line::Message(uid, Entry::new(second, Flags::from_maildir(flags)))
                }
                ("v", None) => Line::Expunged(uid, second),
                _ => return Err(()),
            }
        }
        _ => return Err(()),
    };
    Ok(line)
}

/// Applies one block: its changes, then the commit's numbers (which only move forward).
fn commit(
    record: &mut ModSeqs,
    block: &[Line],
    highest: u64,
    floor: u64,
    first: bool,
) -> Result<(), ()> {
    if highest < record.highest || floor > highest {
        return Err(());
    }
    let mut expunged = Vec::new();
    for line in block {
        match *line {
            Line::Message(uid, entry) if entry.modseq <= highest => {
                record.messages.insert(uid, entry);
            }
            Line::Expunged(uid, modseq) if modseq <= highest => {
                record.messages.remove(&uid);
                expunged.push((uid, modseq));
            }
            _ => return Err(()),
        }
    }
    record.vanished.extend(expunged);
    // A compacted record holds no more expunges than it may; later blocks are bounded as
    // their writer bounded them.
    if first && record.vanished.len() > MAX_VANISHED {
        return Err(());
    }
    record.highest = highest;
    record.bound();
    record.floor = record.floor.max(floor);
    Ok(())
}

/// A corrupt file as an I/O error that remembers the header's highest mod-sequence.
fn corrupt(highest: Option<u64>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, Corrupt(highest))
}

fn corrupt_highest(err: &std::io::Error) -> Option<u64> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<Corrupt>())
        .and_then(|c| c.0)
}

#[derive(Debug)]
struct Corrupt(Option<u64>);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a modseq record")
    }
}

impl std::error::Error for Corrupt {}

/// This boot's id; `-` where the kernel does not say.
pub(super) fn boot_id() -> &'static str {
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
