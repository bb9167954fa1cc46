//! A folder's listing kept up to date from the outside, so that a snapshot need not read the
//! directories.
//!
//! A directory read costs time in proportion to the folder (15 ms for 10,000 messages), and a
//! folder that several IMAP sessions have open changes at every STORE, EXPUNGE or APPEND. A
//! process that watches the folder's `new/` and `cur/` (imapd, with inotify) reports each
//! file added or removed here, and the snapshots of its sessions then use the listing as the
//! reports left it (Dovecot's writers keep its index up to date for the same reason).
//!
//! Why that is safe:
//! - The reports must start before the listing is trusted: a watcher [`follow`]s the folder
//!   once its watch is in place, and the listing is trusted only from the first directory
//!   read after that. A report applied after that read, of a change the read already saw,
//!   repeats what the listing holds: applied in order, reports converge on the directory.
//! - The kernel queues a report within the system call that renames or removes, so a watcher
//!   that reads every queued report before a snapshot (the `catch_up` it gave [`follow`])
//!   has every change made before that snapshot, by any process, in the listing.
//! - Reports lost (the kernel's queue overflowed, the watch went) are said with [`lost`] or
//!   [`unfollow`]: the next snapshot reads the directories again.
//!
//! [`follow`]: Listing::follow
//! [`lost`]: Listing::lost
//! [`unfollow`]: Listing::unfollow

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::index::{Index, Sub};

/// Reads and applies every report queued so far; `false` when it no longer can (the watcher
/// is gone), and the folder is then read as if never followed.
pub type CatchUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// Which of a folder's message directories a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// `new/`
    New,
    /// `cur/`
    Cur,
}

/// A handle on the listing of one folder, shared by every `Folder` of this process for it
/// (see [`Folder::listing`](crate::Folder::listing)).
///
/// Reports are queued here, not applied: the next snapshot applies them under the index it
/// holds anyway. So the watcher never waits for a folder's index (which a long first
/// indexing of another session holds for seconds), and every other folder's reports go on.
#[derive(Clone)]
pub struct Listing {
    pub(crate) index: Arc<Mutex<Index>>,
    pub(crate) pending: Arc<Mutex<Pending>>,
}

/// Reports not applied yet, and what the watcher said of the listing meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// In the order reported: the directory, added (or else removed), the name.
    pub reports: Vec<(Sub, bool, String)>,
    /// Reports were lost (or more came than are kept): read the directories.
    pub lost: bool,
    /// The watch is gone: no more reports will come.
    pub unfollowed: bool,
}

/// Reports kept for a folder no snapshot looks at (a session idling on another): past
/// these, they are dropped and the folder read again at its next snapshot.
const MAX_PENDING: usize = 10_000;

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listing")
    }
}

impl Listing {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on every change to the folder's `new/` and `cur/` is reported here, and
    /// `catch_up` applies those queued so far. Call once the watch is in place.
    pub fn follow(&self, catch_up: CatchUp) {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        *self.pending() = Pending::default();
        index.follower = Some(catch_up);
        // Trusted from the next read of the directories on.
        index.live = false;
    }

    /// Reports stop (the watch is removed): the directories are read again.
    pub fn unfollow(&self) {
        let mut pending = self.pending();
        pending.reports.clear();
        pending.unfollowed = true;
    }

    /// Reports were lost: the next snapshot reads the directories (and trusts the listing
    /// again from then on, if still followed).
    pub fn lost(&self) {
        let mut pending = self.pending();
        pending.reports.clear();
        pending.lost = true;
    }

    /// A file appeared in `dir` under `name` (created, or renamed there).
    pub fn added(&self, dir: Dir, name: &OsStr) {
        self.report(dir, true, name);
    }

    /// The file `name` left `dir` (removed, or renamed elsewhere).
    pub fn removed(&self, dir: Dir, name: &OsStr) {
        self.report(dir, false, name);
    }

    fn report(&self, dir: Dir, added: bool, name: &OsStr) {
        let Some(name) = message_name(name) else {
            return;
        };
        let mut pending = self.pending();
        if pending.lost || pending.unfollowed {
            return;
        }
        if pending.reports.len() >= MAX_PENDING {
            pending.reports.clear();
            pending.lost = true;
            return;
        }
        pending.reports.push((sub(dir), added, name.to_owned()));
    }
}

impl Index {
    /// Applies what the watcher queued (see [`Listing`]). Whether the listing can be trusted
    /// without a read of the directories: followed, caught up, and nothing lost since the
    /// last read.
    pub(crate) fn apply_pending(&mut self, caught_up: bool) -> bool {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.unfollowed {
            self.follower = None;
            self.live = false;
        }
        if pending.lost {
            self.live = false;
        }
        if !(self.live && caught_up) {
            // Read next: what the reports say, the read sees (and they are gone now).
            self.live = false;
            return false;
        }
        for (sub, added, name) in &pending.reports {
            if *added {
                self.saw(*sub, name);
            } else {
                self.gone(*sub, name);
            }
        }
        true
    }
}

fn sub(dir: Dir) -> Sub {
    match dir {
        Dir::New => Sub::New,
        Dir::Cur => Sub::Cur,
    }
}

/// A name the directory scan would take as a message (and the reason it would not, logged
/// there, needs no second warning here).
pub(crate) fn message_name(name: &OsStr) -> Option<&str> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    if bytes.first() == Some(&b'.') || bytes.contains(&b'\n') {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}
