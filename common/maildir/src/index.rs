//! What this process last read of a folder: its uid list and its directory listing, so that the
//! next snapshot reads only what changed (Dovecot keeps an index file for the same reason).
//!
//! Nothing here is trusted without a check against the file system, made under the folder
//! lock: the uid list is reused when its file is the same (inode, birth time, size, times),
//! and extended by the lines appended since when it only grew and still holds the cached header
//! and last line where they were; the directories are always read again, but a file seen
//! before costs a hash lookup instead of new strings. Sessions of one process that have the
//! same folder open share one index, and it is kept a while after the last one leaves.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustc_hash::FxHasher;

use super::listing::{CatchUp, Pending};
use super::maildir::{split_name, Flags};
use super::uidlist::CachedList;

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Which of the two message directories a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    New,
    Cur,
}

impl Sub {
    pub(crate) fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// Where a scan found a message.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub sub: Sub,
    /// `new/<name>` or `cur/<name>`: shared with every snapshot that names this file.
    pub rel: Arc<str>,
    /// The flags its name carries (read once, not at every snapshot).
    pub flags: Flags,
    /// The scan that last saw it.
    pub(crate) epoch: u64,
}

impl Found {
    pub(crate) fn new(sub: Sub, name: &str, epoch: u64) -> Found {
        Found {
            sub,
            rel: format!("{}/{name}", sub.dir()).into(),
            flags: split_name(name).1,
            epoch,
        }
    }

    /// The file name without the directory.
    pub(crate) fn name(&self) -> &str {
        self.rel
            .split_once('/')
            .map_or(&*self.rel, |(_, name)| name)
    }
}

/// Identifies one state of a file: an append changes the size, a rewrite (temp file and
/// rename) the inode and its birth time (inode numbers are reused), and either one the change
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileState {
    dev: u64,
    ino: u64,
    born: Option<std::time::SystemTime>,
    pub len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileState {
    pub(crate) fn of(path: &Path) -> std::io::Result<FileState> {
        let m = std::fs::metadata(path)?;
        Ok(FileState {
            dev: m.dev(),
            ino: m.ino(),
            born: m.created().ok(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// The same file, only longer: lines were appended.
    pub(crate) fn grew_from(&self, before: &FileState) -> bool {
        self.dev == before.dev
            && self.ino == before.ino
            && self.born == before.born
            && self.len > before.len
    }
}

/// One folder's cached state. Use only with the folder lock held (changes reported by a
/// watcher, `listing.rs`, excepted).
#[derive(Default)]
pub(crate) struct Index {
    /// The uid list as last read or written, and the file it matches.
    pub list: Option<CachedList>,
    /// The last directory scan: base name -> where the file was.
    pub found: FxMap<Arc<str>, Found>,
    /// Counts scans; entries of `found` not seen by the current one are dropped after it.
    pub epoch: u64,
    /// Applies the changes a watcher was told of since (see `listing.rs`).
    pub follower: Option<CatchUp>,
    /// `found` is the directories as they are, once `follower` has caught up: every change
    /// since the last scan was reported and applied, so there is no need to read them.
    pub live: bool,
    /// Reports queued by the watcher, applied by the next snapshot (see `listing.rs`).
    pub pending: Arc<Mutex<Pending>>,
    /// When this process last cleaned the folder's `tmp/` of stale files.
    pub tmp_cleaned: Option<std::time::Instant>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("list", &self.list)
            .field("found", &self.found.len())
            .field("epoch", &self.epoch)
            .field("followed", &self.follower.is_some())
            .field("live", &self.live)
            .finish()
    }
}

impl Index {
    /// Forgets what was read (after an error, when what is cached may not match the disk);
    /// a watcher following the folder goes on.
    pub(crate) fn forget(&mut self) {
        let follower = self.follower.take();
        let pending = std::mem::take(&mut self.pending);
        *self = Index {
            follower,
            pending,
            tmp_cleaned: self.tmp_cleaned,
            ..Index::default()
        };
    }

    /// A file `name` is in `sub` (reported by a watcher).
    pub(crate) fn saw(&mut self, sub: Sub, name: &str) {
        let epoch = self.epoch;
        saw(&mut self.found, sub, name, epoch);
    }

    /// The file `name` left `sub`. (Its base may be listed under another name already, when
    /// a rename's arrival was applied first: a scan raced the reports.)
    pub(crate) fn gone(&mut self, sub: Sub, name: &str) {
        let (base, _) = split_name(name);
        if self
            .found
            .get(base)
            .is_some_and(|f| f.sub == sub && f.name() == name)
        {
            self.found.remove(base);
        }
    }
}

/// A file `name` is in `sub`, seen by the scan stamped `epoch`. A file seen before under the
/// same name costs a lookup, not new strings.
pub(crate) fn saw(found: &mut FxMap<Arc<str>, Found>, sub: Sub, name: &str, epoch: u64) {
    let (base, _) = split_name(name);
    if base.is_empty() {
        return;
    }
    match found.get_mut(base) {
        Some(f) if f.sub == sub && f.name() == name => f.epoch = epoch,
        Some(f) => *f = Found::new(sub, name, epoch),
        None => {
            found.insert(base.into(), Found::new(sub, name, epoch));
        }
    }
}

/// Indexes no session uses are kept this long, so that the next session on the same folder
/// (a mail client polling, the next POP3 check) starts from them.
const KEEP_UNUSED: Duration = Duration::from_secs(120);
/// And at most this many of them.
const MAX_UNUSED: usize = 16;

struct Open {
    index: Arc<Mutex<Index>>,
    used: Instant,
}

/// The index of the folder at `path`, shared by every `Folder` of this process for it.
pub(crate) fn for_folder(path: &Path) -> Arc<Mutex<Index>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Open>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if let Some(entry) = open.get_mut(path) {
        entry.used = now;
        return entry.index.clone();
    }
    // A folder not open yet: first let go of indexes nobody else holds, the old ones and the
    // oldest beyond the limit (only here, so that a lookup stays a lookup).
    let unused = |o: &Open| Arc::strong_count(&o.index) == 1;
    open.retain(|_, o| !unused(o) || now.duration_since(o.used) < KEEP_UNUSED);
    let mut idle: Vec<Instant> = open
        .values()
        .filter(|o| unused(o))
        .map(|o| o.used)
        .collect();
    if idle.len() > MAX_UNUSED {
        idle.sort_unstable();
        let cutoff = idle[idle.len() - MAX_UNUSED];
        open.retain(|_, o| !unused(o) || o.used >= cutoff);
    }
    let index = Arc::new(Mutex::new(Index::default()));
    let used = now;
    open.insert(
        path.to_owned(),
        Open {
            index: index.clone(),
            used,
        },
    );
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_name_drops_the_directory() {
        let found = Found::new(Sub::Cur, "ü€:2,S", 0);
        assert_eq!(&*found.rel, "cur/ü€:2,S");
        assert_eq!(found.name(), "ü€:2,S");
        assert_eq!(found.flags, Flags::SEEN);
        assert_eq!(Found::new(Sub::New, "日", 0).name(), "日");
    }
}
