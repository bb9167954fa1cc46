//! The per-folder UID list, `inetkit-uidlist`: which base name has which IMAP UID.
//!
//! ```text
//! inetkit-uidlist 2 V1700000000 N43
//! 40 :1700000000.M0P2Q0.host,S=1100,W=1130
//! 41 :1700000000.M1P2Q0.host,S=1200,W=1230
//! 42 S=880 W=902 T=1699999999 :msg-from-procmail
//! -40
//! ```
//!
//! The header holds the format version, UIDVALIDITY and the next UID; then one line per
//! message in UID order. Sizes (`S=`, `W=`) and the internal date (`T=`, seconds) appear only
//! when the base name does not carry them, so that they are computed from the file once.
//! A line `-<uid>` forgets a message (expunged or moved away): appended, so that an EXPUNGE
//! costs one small write, not the whole list rewritten and flushed twice.
//!
//! Every read and write happens under the folder's lock (`inetkit-uidlist.lock`, flock).
//! New UIDs are appended (and fsynced before the lock is released); forgetting is appended
//! without an fsync (lost in a crash, the next snapshot finds the file gone and forgets it
//! again); the file is rewritten atomically (temp file, fsync, rename, fsync of the
//! directory) when something must be dropped otherwise, or once the forget lines outnumber
//! the messages. A crash mid-append leaves a last line without its newline: it is ignored
//! (its UID was never handed out, since the append had not returned) and the next write
//! rewrites the file. Anything else that does not parse makes the list corrupt, and the
//! folder is renumbered under a new UIDVALIDITY. Version 1 (no forget lines) is read as well
//! and rewritten as version 2 at its first forget; a version-1 reader takes a version-2 file
//! as corrupt (a rollback costs clients one resync of each folder).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::faults::{self, Step};
use super::fsutil::{self, Owner};
use super::index::FileState;
use super::maildir::{name_time, size_field};
use super::StoreError;

pub(crate) const FILE: &str = "inetkit-uidlist";
const TEMP: &str = "inetkit-uidlist.new";
const MAGIC: &str = "inetkit-uidlist";
const VERSION: &str = "2";
/// The version before forget lines, still read.
const VERSION_1: &str = "1";
/// Forget lines appended before the list is written whole again (or the messages listed,
/// when more).
const MAX_FORGOTTEN: usize = 256;
/// Dovecot's uid list, taken over when a folder has no list of ours.
const DOVECOT_FILE: &str = "dovecot-uidlist";

/// One message's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub uid: u32,
    /// Shared with the snapshots that name this message.
    pub base: Arc<str>,
    /// Cached only when the base name has no `,S=`.
    pub size: Option<u64>,
    /// Cached only when the base name has no `,W=`.
    pub vsize: Option<u64>,
    /// Cached only when the base name does not start with a time.
    pub time: Option<u64>,
    /// Size, size with CRLF and arrival time, from the name or else the line: worked out
    /// once, as every snapshot needs them.
    known: [Option<u64>; 3],
}

impl Entry {
    /// The line for `base`, with the values its name does not carry if they are known.
    pub(crate) fn new(
        uid: u32,
        base: Arc<str>,
        size: Option<u64>,
        vsize: Option<u64>,
        time: Option<u64>,
    ) -> Entry {
        let known = [
            size_field(&base, 'S').or(size),
            size_field(&base, 'W').or(vsize),
            name_time(&base).or(time),
        ];
        Entry {
            uid,
            base,
            size,
            vsize,
            time,
            known,
        }
    }

    /// Size, size with CRLF line ends (`None` until measured), arrival (seconds); 0 where
    /// nothing tells.
    pub(crate) fn facts(&self) -> (u64, Option<u64>, u64) {
        let [size, vsize, time] = self.known;
        (size.unwrap_or(0), vsize, time.unwrap_or(0))
    }

    /// Neither the name nor the line has the size or the arrival time: the file's metadata
    /// must be read once. (The size with CRLF line ends, which takes reading the whole file,
    /// is measured only when asked for: `Folder::measure`.)
    pub(crate) fn incomplete(&self) -> bool {
        self.known[0].is_none() || self.known[2].is_none()
    }

    /// Records the size with CRLF line ends, measured: kept in the line from now on. Whether
    /// it was unknown.
    pub(crate) fn measured(&mut self, vsize: u64) -> bool {
        let unknown = self.known[1].is_none();
        if unknown {
            self.vsize = Some(vsize);
            self.known[1] = Some(vsize);
        }
        unknown
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UidList {
    pub validity: u32,
    /// Never lower than the last UID handed out plus one.
    pub next_uid: u32,
    /// In UID order.
    pub entries: Vec<Entry>,
    /// The file ends in a partial line: rewrite before appending to it.
    pub needs_rewrite: bool,
    /// Forget lines in the file since it was last written whole.
    pub forgotten: usize,
}

/// What reading a folder's list found.
#[derive(Debug)]
pub(crate) enum Loaded {
    Missing,
    /// Unusable; `validity` is the old UIDVALIDITY if the header could still be read.
    Corrupt {
        reason: String,
        validity: Option<u32>,
    },
    /// Shared with the cache: changed through `Arc::make_mut`, so a list nobody changes is
    /// never copied.
    Ok(Arc<UidList>),
}

impl UidList {
    pub(crate) fn new(validity: u32) -> UidList {
        UidList {
            validity,
            next_uid: 1,
            entries: Vec::new(),
            needs_rewrite: false,
            forgotten: 0,
        }
    }

    pub(crate) fn parse(text: &str) -> Result<UidList, (String, Option<u32>)> {
        let mut lines = text.split_inclusive('\n');
        let header = lines.next().unwrap_or("");
        let (validity, header_next) =
            parse_header(header).ok_or_else(|| (format!("bad header {header:?}"), None))?;
        let mut list = UidList {
            validity,
            next_uid: header_next,
            entries: Vec::new(),
            needs_rewrite: !header.ends_with('\n'),
            forgotten: 0,
        };
        let rest = text.strip_prefix(header).unwrap_or_default();
        list.parse_lines(rest, 2)?;
        Ok(list)
    }

    /// Adds the entries of `text`, whose first line is line `first` of the file.
    pub(crate) fn parse_lines(
        &mut self,
        text: &str,
        first: usize,
    ) -> Result<(), (String, Option<u32>)> {
        let validity = self.validity;
        let corrupt = |why: String| (why, Some(validity));
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let Some(line) = line.strip_suffix('\n') else {
                // A crash mid-append: nobody was told about this UID.
                self.needs_rewrite = true;
                break;
            };
            if let Some(uid) = line.strip_prefix('-') {
                let uid: u32 = uid
                    .parse()
                    .map_err(|_| corrupt(format!("line {}: cannot parse {line:?}", n + first)))?;
                if let Ok(at) = self.entries.binary_search_by_key(&uid, |e| e.uid) {
                    self.entries.remove(at);
                }
                self.forgotten += 1;
                continue;
            }
            let entry = parse_entry(line)
                .ok_or_else(|| corrupt(format!("line {}: cannot parse {line:?}", n + first)))?;
            if self
                .entries
                .last()
                .is_some_and(|last| last.uid >= entry.uid)
            {
                return Err(corrupt(format!(
                    "line {}: UID {} out of order",
                    n + first,
                    entry.uid
                )));
            }
            self.next_uid = self.next_uid.max(entry.uid.saturating_add(1));
            self.entries.push(entry);
        }
        if self.next_uid == u32::MAX {
            return Err(corrupt("UIDs exhausted".to_owned()));
        }
        Ok(())
    }

    /// The folder's `dovecot-uidlist` (version 3, what Dovecot 1.0 and later write), when it
    /// has one and it parses: a Maildir Dovecot kept moves over with its UIDs and UIDVALIDITY,
    /// so clients keep their caches. Read once, when our own list is missing.
    pub(crate) fn from_dovecot(dir: &Path) -> Option<UidList> {
        let text = std::fs::read_to_string(dir.join(DOVECOT_FILE)).ok()?;
        let mut lines = text.lines();
        let mut header = lines.next()?.split(' ');
        if header.next()? != "3" {
            return None;
        }
        let (mut validity, mut next_uid) = (0, 1);
        for word in header {
            if let Some(v) = word.strip_prefix('V') {
                validity = v.parse().ok()?;
            } else if let Some(n) = word.strip_prefix('N') {
                next_uid = n.parse().ok()?;
            }
        }
        if validity == 0 {
            return None;
        }
        let mut list = UidList {
            validity,
            next_uid: next_uid.max(1),
            entries: Vec::new(),
            needs_rewrite: false,
            forgotten: 0,
        };
        for line in lines.filter(|l| !l.is_empty()) {
            let (fields, base) = line.split_once(" :")?;
            let mut words = fields.split(' ');
            let uid: u32 = words.next()?.parse().ok()?;
            if uid == 0 || base.is_empty() || list.entries.last().is_some_and(|l| l.uid >= uid) {
                return None;
            }
            // Extension fields: S<size>, W<size with CRLF>; the others (G, P, O) are not ours.
            let (mut size, mut vsize) = (None, None);
            for word in words {
                if let Some(n) = word.strip_prefix('S') {
                    size = n.parse().ok();
                } else if let Some(n) = word.strip_prefix('W') {
                    vsize = n.parse().ok();
                }
            }
            list.next_uid = list.next_uid.max(uid.saturating_add(1));
            list.entries
                .push(Entry::new(uid, base.into(), size, vsize, None));
        }
        (list.next_uid != u32::MAX).then_some(list)
    }

    /// Where this message's line is: its UID's, if it names the same base (a list
    /// renumbered since gives the UID to another message).
    pub(crate) fn position(&self, uid: u32, base: &str) -> Option<usize> {
        let at = self.entries.binary_search_by_key(&uid, |e| e.uid).ok()?;
        (*self.entries[at].base == *base).then_some(at)
    }

    /// Records measured sizes (UID, base, size with CRLF); whether any was new.
    pub(crate) fn measured(&mut self, measured: &[(u32, Arc<str>, u64)]) -> bool {
        let mut changed = false;
        for (uid, base, vsize) in measured {
            if let Some(at) = self.position(*uid, base) {
                changed |= self.entries[at].measured(*vsize);
            }
        }
        changed
    }

    fn header_line(&self) -> String {
        format!("{MAGIC} {VERSION} V{} N{}\n", self.validity, self.next_uid)
    }

    pub(crate) fn to_text(&self) -> String {
        let mut text = self.header_line();
        for entry in &self.entries {
            text.push_str(&entry_line(entry));
        }
        text
    }

    /// Reads `<dir>/inetkit-uidlist`, and returns the text it was parsed from too. Call with
    /// the folder lock held.
    fn load_text(dir: &Path) -> Result<(Loaded, String), StoreError> {
        let path = dir.join(FILE);
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut file) => {
                if let Err(err) = file.read_to_string(&mut text) {
                    if err.kind() == std::io::ErrorKind::InvalidData {
                        let corrupt = Loaded::Corrupt {
                            reason: "not UTF-8".to_owned(),
                            validity: None,
                        };
                        return Ok((corrupt, String::new()));
                    }
                    return Err(StoreError::io("reading", &path, err));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Loaded::Missing, text))
            }
            Err(err) => return Err(StoreError::io("opening", &path, err)),
        }
        let loaded = match UidList::parse(&text) {
            Ok(list) => Loaded::Ok(Arc::new(list)),
            Err((reason, validity)) => Loaded::Corrupt { reason, validity },
        };
        Ok((loaded, text))
    }

    /// Reads `<dir>/inetkit-uidlist` through this process's copy in `cache`: the file is read again
    /// only when it changed, and only its new lines when it just grew (new UIDs are appended).
    /// Call with the folder lock held.
    pub(crate) fn load_cached(
        dir: &Path,
        cache: &mut Option<CachedList>,
    ) -> Result<Loaded, StoreError> {
        let path = dir.join(FILE);
        let state = match FileState::of(&path) {
            Ok(state) => state,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                *cache = None;
                return Ok(Loaded::Missing);
            }
            Err(err) => return Err(StoreError::io("reading", &path, err)),
        };
        if let Some(cached) = cache.as_ref() {
            if cached.state == state {
                return Ok(Loaded::Ok(cached.list.clone()));
            }
        }
        if let Some(mut cached) = cache.take() {
            if state.grew_from(&cached.state) && !cached.list.needs_rewrite {
                if let Some(tail) = cached.appended(&path) {
                    // Extended in place: nothing else holds the cached list between syncs.
                    if Arc::make_mut(&mut cached.list)
                        .parse_lines(&tail, 0)
                        .is_ok()
                    {
                        if let Some(last) = last_line(&tail) {
                            cached.last = last.to_owned();
                        }
                        cached.state = state;
                        let list = cached.list.clone();
                        *cache = Some(cached);
                        return Ok(Loaded::Ok(list));
                    }
                }
            }
        }
        let (loaded, text) = UidList::load_text(dir)?;
        *cache = match &loaded {
            Loaded::Ok(list) => Some(CachedList {
                state,
                header: text.split_inclusive('\n').next().unwrap_or("").to_owned(),
                last: last_line(&text).unwrap_or("").to_owned(),
                list: list.clone(),
            }),
            _ => None,
        };
        Ok(loaded)
    }

    /// Records in `cache` that the file, beginning with `header`, now holds this list.
    /// `last` is the file's last line, or `None` when that is the last entry's (or the
    /// header, for none).
    fn remember(
        self: &Arc<Self>,
        dir: &Path,
        cache: &mut Option<CachedList>,
        header: String,
        last: Option<String>,
    ) {
        *cache = FileState::of(&dir.join(FILE)).ok().map(|state| CachedList {
            state,
            last: last.unwrap_or_else(|| match self.entries.last() {
                Some(entry) => entry_line(entry),
                None => header.clone(),
            }),
            header,
            list: Arc::clone(self),
        });
    }

    /// Replaces the file atomically and durably, and records it in `cache`. Call with the
    /// folder lock held.
    pub(crate) fn save(
        self: &Arc<Self>,
        dir: &Path,
        owner: Option<Owner>,
        cache: &mut Option<CachedList>,
    ) -> Result<(), StoreError> {
        let temp = dir.join(TEMP);
        let path = dir.join(FILE);
        let result = (|| {
            let mut file = create_truncated(&temp)?;
            fsutil::chown_file(&file, &temp, owner)?;
            file.write_all(self.to_text().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|err| StoreError::io("writing", &temp, err))?;
            std::fs::rename(&temp, &path).map_err(|err| StoreError::io("renaming", &temp, err))?;
            fsutil::sync_dir(dir)
        })();
        match result {
            Ok(()) => self.remember(dir, cache, self.header_line(), None),
            Err(_) => {
                let _ = std::fs::remove_file(&temp);
                *cache = None;
            }
        }
        result
    }

    /// Appends entries (which the caller has also pushed onto `self.entries`) to the file,
    /// fsyncs it, and records it in `cache`. Call with the folder lock held, on a list loaded
    /// from `dir` (through `cache`, whose header the file keeps).
    pub(crate) fn append(
        self: &Arc<Self>,
        dir: &Path,
        new: &[Entry],
        cache: &mut Option<CachedList>,
    ) -> Result<(), StoreError> {
        let path = dir.join(FILE);
        let header = cache.take().map(|c| c.header);
        let text: String = new.iter().map(entry_line).collect();
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|err| StoreError::io("opening", &path, err))?;
        let old_len = file
            .metadata()
            .map_err(|err| StoreError::io("reading", &path, err))?
            .len();
        let written = faults::write_all(Step::UidListAppend, &mut file, text.as_bytes())
            .and_then(|()| file.sync_data());
        if let Err(err) = written {
            // A full disk can take part of the text: cut it off again (which needs no space),
            // so that the list is as it was and none of these UIDs is in it.
            if let Err(cut) = file.set_len(old_len).and_then(|()| file.sync_data()) {
                tracing::warn!(path = %path.display(), error = %cut,
                    "cannot cut a failed append off the uid list");
            }
            return Err(StoreError::io("appending to", &path, err));
        }
        if let Some(header) = header.or_else(|| first_line(&path)) {
            let last = new.last().map(entry_line);
            self.remember(dir, cache, header, last);
        }
        Ok(())
    }

    /// Drops the entries of `uids` (which the caller has removed from `self.entries`): a
    /// forget line each appended to the file, not flushed (see the module doc), or the file
    /// written whole when it is of version 1, ends in a partial line, or holds too many forget
    /// lines already. Call with the folder lock held, on a list loaded from `dir` through
    /// `cache`.
    pub(crate) fn forget(
        self: &mut Arc<Self>,
        dir: &Path,
        owner: Option<Owner>,
        uids: &[u32],
        cache: &mut Option<CachedList>,
    ) -> Result<(), StoreError> {
        let version_2 = cache
            .as_ref()
            .is_some_and(|c| c.header.split(' ').nth(1) == Some(VERSION));
        let forgotten = self.forgotten + uids.len();
        if !version_2 || self.needs_rewrite || forgotten > MAX_FORGOTTEN.max(self.entries.len()) {
            Arc::make_mut(self).forgotten = 0;
            return self.save(dir, owner, cache);
        }
        let path = dir.join(FILE);
        let header = cache.take().map(|c| c.header);
        let text: String = uids.iter().map(|uid| format!("-{uid}\n")).collect();
        let appended = OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        if let Err(err) = appended {
            // The cache is gone: the file is read again next time, and the lines of the files
            // found gone are dropped then.
            return Err(StoreError::io("appending to", &path, err));
        }
        Arc::make_mut(self).forgotten = forgotten;
        if let Some(header) = header {
            let last = text.lines().last().map(|l| format!("{l}\n"));
            self.remember(dir, cache, header, last);
        }
        Ok(())
    }
}

/// The cached copy of a folder's uid list, with what identifies the file it came from.
#[derive(Debug)]
pub(crate) struct CachedList {
    pub state: FileState,
    /// The file's first line and its last complete line: a file that only had lines appended
    /// still has both where they were (checked before its new lines are used, as a freed
    /// inode number is soon given to a new file).
    header: String,
    last: String,
    pub list: Arc<UidList>,
}

impl CachedList {
    /// What was appended to the file since, if it still begins as the cached copy did.
    fn appended(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::FileExt;
        let file = File::open(path).ok()?;
        let mut header = vec![0u8; self.header.len()];
        file.read_exact_at(&mut header, 0).ok()?;
        if header != self.header.as_bytes() {
            return None;
        }
        let from = self.state.len.checked_sub(self.last.len() as u64)?;
        let mut file = file;
        file.seek(SeekFrom::Start(from)).ok()?;
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        let tail = text.strip_prefix(self.last.as_str())?;
        Some(tail.to_owned())
    }
}

/// The last line of `text` that ends in a newline.
fn last_line(text: &str) -> Option<&str> {
    text.split_inclusive('\n').rev().find(|l| l.ends_with('\n'))
}

/// The first line of a file (with its newline).
fn first_line(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).ok()?;
    let mut buf = vec![0u8; 128];
    let n = file.read_at(&mut buf, 0).ok()?;
    let end = buf[..n].iter().position(|&b| b == b'\n')?;
    String::from_utf8(buf[..=end].to_vec()).ok()
}

fn create_truncated(path: &PathBuf) -> Result<File, StoreError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| StoreError::io("creating", path, err))
}

fn parse_header(line: &str) -> Option<(u32, u32)> {
    let mut words = line.trim_end().split(' ');
    if words.next()? != MAGIC || !matches!(words.next()?, VERSION | VERSION_1) {
        return None;
    }
    let validity: u32 = words.next()?.strip_prefix('V')?.parse().ok()?;
    let next: u32 = words.next()?.strip_prefix('N')?.parse().ok()?;
    (validity != 0 && next != 0 && words.next().is_none()).then_some((validity, next))
}

fn parse_entry(line: &str) -> Option<Entry> {
    let (fields, base) = line.split_once(" :")?;
    if base.is_empty() {
        return None;
    }
    let mut words = fields.split(' ');
    let uid: u32 = words.next()?.parse().ok()?;
    if uid == 0 {
        return None;
    }
    let (mut size, mut vsize, mut time) = (None, None, None);
    for word in words {
        let (key, value) = word.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "S" => size = Some(value),
            "W" => vsize = Some(value),
            "T" => time = Some(value),
            _ => return None,
        }
    }
    Some(Entry::new(uid, base.into(), size, vsize, time))
}

fn entry_line(entry: &Entry) -> String {
    let mut line = entry.uid.to_string();
    for (key, value) in [("S", entry.size), ("W", entry.vsize), ("T", entry.time)] {
        if let Some(value) = value {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line.push_str(" :");
    line.push_str(&entry.base);
    line.push('\n');
    line
}

#[cfg(test)]
#[path = "uidlist_tests.rs"]
mod tests;
