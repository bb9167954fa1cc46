//! The records this process last read or wrote, so that a look at a folder whose record has
//! not changed costs a `stat`, not a parse, and one whose record only grew reads the new
//! bytes: every session looks at its folder's record after each change to the folder, and a
//! record of a large folder is megabytes.
//!
//! A file is known by its identity (device, inode, size, modification and change times,
//! taken from the open file, so they belong to the bytes read).

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::file::COMPACT_AT;
use super::ModSeqs;

/// Folders whose record is kept; past this the cache starts afresh.
const MAX_FOLDERS: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Identity {
    dev: u64,
    ino: u64,
    pub(super) size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    pub(super) fn of(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The same inode (which a file renamed over this one may reuse: see `read_appended`).
    pub(super) fn same_file(&self, other: &Identity) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// A record file as this process last read or wrote it.
#[derive(Debug)]
pub(super) struct Known {
    pub(super) id: Identity,
    pub(super) record: Arc<ModSeqs>,
    /// Bytes up to the end of the last commit, and of the compacted base.
    pub(super) end: u64,
    pub(super) base: u64,
    /// The last commit line; `None` in a file of the older format.
    pub(super) commit: Option<String>,
}

impl Known {
    /// Whether a change can be appended: the file ends with a complete commit.
    pub(super) fn appendable(&self) -> bool {
        self.commit.is_some() && self.end == self.id.size
    }

    /// Whether the appended changes have outgrown the base they amend.
    pub(super) fn wants_compaction(&self) -> bool {
        self.end.saturating_sub(self.base) > COMPACT_AT.max(self.base)
    }
}

type Records = HashMap<PathBuf, Arc<Known>>;

fn records() -> &'static Mutex<Records> {
    static RECORDS: OnceLock<Mutex<Records>> = OnceLock::new();
    RECORDS.get_or_init(Mutex::default)
}

/// What this process last knew of the file at `path`.
pub(super) fn get(path: &Path) -> Option<Arc<Known>> {
    records().lock().ok()?.get(path).cloned()
}

/// Remembers `known` for `path`, unless what is remembered is a later state of the same
/// file: a look without the lock can finish after a change another session made and put.
pub(super) fn put(path: &Path, known: Arc<Known>) {
    if let Ok(mut records) = records().lock() {
        if let Some(kept) = records.get(path) {
            if kept.id.same_file(&known.id)
                && kept.end > known.end
                && kept.id.ctime >= known.id.ctime
            {
                return;
            }
        }
        if records.len() >= MAX_FOLDERS && !records.contains_key(path) {
            records.clear();
        }
        records.insert(path.to_owned(), known);
    }
}

/// Forgets the file at `path`, as a process that just started knows none.
#[cfg(test)]
pub(super) fn forget(path: &Path) {
    if let Ok(mut records) = records().lock() {
        records.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known_of(path: &Path, end: u64) -> Arc<Known> {
        let meta = std::fs::metadata(path).unwrap();
        Arc::new(Known {
            id: Identity::of(&meta),
            record: Arc::new(ModSeqs::fresh(1, 0)),
            end,
            base: end,
            commit: Some(String::new()),
        })
    }

    #[test]
    fn a_look_that_finishes_late_does_not_put_back_an_older_state() {
        let dir = inetkit_runtime::testing::TempDir::new("imapd-modseq-cache");
        let path = dir.path().join("inetkit-modseq");
        std::fs::write(&path, "a".repeat(100)).unwrap();
        let older = known_of(&path, 100);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "a".repeat(160)).unwrap();
        let newer = known_of(&path, 160);
        put(&path, newer.clone());
        put(&path, older);
        assert!(Arc::ptr_eq(&get(&path).unwrap(), &newer));
        // Another file at the path (a compacted record) replaces it, whatever its size.
        let replaced = dir.path().join("replacement");
        std::fs::write(&replaced, "b".repeat(50)).unwrap();
        std::fs::rename(&replaced, &path).unwrap();
        let compacted = known_of(&path, 50);
        put(&path, compacted.clone());
        assert!(Arc::ptr_eq(&get(&path).unwrap(), &compacted));
        forget(&path);
    }
}
