//! The records this process last read or wrote, so that a look at a folder whose record has
//! not changed costs a `stat`, not a parse: every session looks at its folder's record after
//! each change to the folder, and a record of a large folder is megabytes.
//!
//! A record is known by its file's identity (device, inode, size, modification and change
//! times, taken from the open file, so they belong to the bytes read): a record is only ever
//! replaced by a rename, so a different file is a different identity.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::ModSeqs;

/// Folders whose record is kept; past this the cache starts afresh.
const MAX_FOLDERS: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
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

    pub(super) fn of_file(file: &File) -> Option<Identity> {
        file.metadata().ok().map(|m| Identity::of(&m))
    }

    pub(super) fn of_path(path: &Path) -> Option<Identity> {
        std::fs::metadata(path).ok().map(|m| Identity::of(&m))
    }
}

type Records = HashMap<PathBuf, (Identity, Arc<ModSeqs>)>;

fn records() -> &'static Mutex<Records> {
    static RECORDS: OnceLock<Mutex<Records>> = OnceLock::new();
    RECORDS.get_or_init(Mutex::default)
}

/// The record read from the file with this identity, if this process has it.
pub(super) fn get(path: &Path, id: Identity) -> Option<Arc<ModSeqs>> {
    let records = records().lock().ok()?;
    records
        .get(path)
        .filter(|(known, _)| *known == id)
        .map(|(_, record)| record.clone())
}

pub(super) fn put(path: &Path, id: Identity, record: Arc<ModSeqs>) {
    if let Ok(mut records) = records().lock() {
        if records.len() >= MAX_FOLDERS && !records.contains_key(path) {
            records.clear();
        }
        records.insert(path.to_owned(), (id, record));
    }
}
