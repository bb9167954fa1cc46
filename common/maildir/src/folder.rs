//! One Maildir folder (`tmp/ new/ cur/` and its uid list): snapshot, read, flag, delete, add.
//!
//! Concurrency rules, which every operation here keeps:
//! - Writing a message needs no lock: it goes to `tmp/` under a unique name, is fsynced, and is
//!   renamed (never over an existing file) into `new/` or `cur/`; then the directory is fsynced.
//! - The folder lock (`inetkit-uidlist.lock`, an exclusive flock) is held to read or change the
//!   uid list, to rename a message (flags, or `new/` to `cur/`) and to unlink one. While it is
//!   held, no inetkit process renames files in the folder, so a directory scan under the lock
//!   sees every message (a rename in a directory being read can hide the file from readdir).
//!   Programs outside inetkit do not take the lock: a known message missing from a scan is
//!   looked for once more before it counts as expunged.
//! - A snapshot is first tried without the lock: it stands only if the uid list is unchanged
//!   since this process last read it under the lock (not read again) and a scan agrees with it
//!   line for line. A rename racing the scan can only hide a file, which makes them disagree,
//!   and the snapshot is then taken under the lock.
//! - A message keeps its base name for life; the uid list maps base names to UIDs, so flags
//!   can change and files can move from `new/` to `cur/` without UIDs changing. A caller
//!   holding an old file name (another process renamed the file since) is followed to the
//!   current name by base.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::fsutil::{Lock, Owner};
use super::index::{self, Index, Sub};
use super::listing::Listing;
use super::maildir::{cur_name, name_time, new_name, split_name};
use super::uidlist::{Entry, Loaded, UidList};
use super::{Flags, StoreError};

pub(crate) const LOCK_FILE: &str = "inetkit-uidlist.lock";
/// Maildir convention: a file left in `tmp/` this long is from a writer that died.
const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);
/// Attempts at a fresh unique name when one is taken (practically never).
const NAME_ATTEMPTS: usize = 10;

mod measure;
mod scan;
use scan::message_info;
mod transfer;
mod write;

pub use transfer::Transferred;

thread_local! {
    static FILES_READ: Cell<u64> = const { Cell::new(0) };
    static DIRS_READ: Cell<u64> = const { Cell::new(0) };
}

/// How many times this thread has read a folder's directories (to let tests check that a
/// followed folder is not read again).
#[doc(hidden)]
pub fn directory_reads() -> u64 {
    DIRS_READ.with(Cell::get)
}

/// How many message files this thread has read to measure their size with CRLF line ends.
/// Lets tests check that a folder is numbered without reading its messages.
#[doc(hidden)]
pub fn message_files_read() -> u64 {
    FILES_READ.with(Cell::get)
}

/// A folder of a mailbox. Cheap to create; holds no open files or locks between calls.
///
/// All methods block on the file system (and briefly on the folder lock): async daemons call
/// them through `tokio::task::spawn_blocking`.
#[derive(Debug, Clone)]
pub struct Folder {
    name: String,
    path: PathBuf,
    mailbox: PathBuf,
    owner: Option<Owner>,
    /// What this process last read of the folder (shared with its other `Folder`s).
    index: Arc<Mutex<Index>>,
}

/// The folder's messages at one moment, in UID order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// IMAP UIDVALIDITY: UIDs are only comparable between snapshots with the same value. It
    /// changes when the uid list was lost or corrupt and the folder was renumbered.
    pub uid_validity: u32,
    /// IMAP UIDNEXT: the UID the next message added will get at the earliest; higher than
    /// every UID ever handed out in this folder, including those of deleted messages.
    pub uid_next: u32,
    /// Every message, in ascending UID order (sequence number = position + 1).
    pub messages: Vec<MessageInfo>,
}

/// One message as a snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Its IMAP UID: unique in the folder under the snapshot's `uid_validity`, never reused.
    pub uid: u32,
    /// The unique file name without flags: stable for the message's life. Other programs may
    /// write bases of any length or character set, so a POP3 UIDL derives from `uid` and
    /// `uid_validity` (as Dovecot's default does) or checks the base fits before using it.
    /// Shared (not copied) by every snapshot that lists the message.
    pub base: Arc<str>,
    /// Bytes in the file.
    pub size: u64,
    /// Bytes with every bare LF sent as CRLF: POP3 LIST and IMAP RFC822.SIZE. `None` until
    /// measured ([`Folder::measure`]): a message another program delivered without `,W=` in
    /// its name is read for it only when asked (as Dovecot does), not at its first snapshot.
    pub vsize: Option<u64>,
    /// Its flags when the snapshot was taken (or after this session's last change to them).
    pub flags: Flags,
    /// When the message arrived (IMAP INTERNALDATE), to the second.
    pub internal_date: SystemTime,
    /// It was in `new/`: no client has seen it yet (IMAP \Recent).
    pub recent: bool,
    /// `new/<name>` or `cur/<name>`, relative to the folder.
    file: Arc<str>,
}

impl MessageInfo {
    /// The file's path relative to the folder, as last seen (`cur/<base>:2,<flags>`).
    pub fn file(&self) -> &str {
        &self.file
    }
}

/// A change to a message's flags, made atomically against other processes' changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagChange {
    /// Replace every flag, keywords and letters set by other programs included (IMAP
    /// `STORE FLAGS`).
    Set(Flags),
    /// Set these, keep the rest (`+FLAGS`).
    Add(Flags),
    /// Clear these, keep the rest (`-FLAGS`).
    Remove(Flags),
}

impl FlagChange {
    fn apply(self, mut flags: Flags) -> Flags {
        match self {
            FlagChange::Set(f) => return f,
            FlagChange::Add(f) => flags.insert(f),
            FlagChange::Remove(f) => flags.remove(f),
        }
        flags
    }
}

/// A message delivered into `new/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Where it was put: `<folder>/new/<base>`. Another process may move it to `cur/` (and
    /// rename it for flags) at any time after.
    pub path: PathBuf,
    /// Its base name, which carries `,S=` and `,W=`: the message's identity from now on.
    pub base: String,
    /// Bytes written.
    pub size: u64,
    /// Bytes with every bare LF counted as CRLF (see [`MessageInfo::vsize`]).
    pub vsize: u64,
}

/// A message added with [`Folder::append`] (IMAP APPENDUID needs both numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The folder's UIDVALIDITY the UID belongs to.
    pub uid_validity: u32,
    /// The new message, with its UID, as a snapshot would show it.
    pub message: MessageInfo,
}

/// Opens a message file for reading, refusing what is not a regular file: without following
/// a symbolic link, and without waiting for a writer if it is a FIFO.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

impl Folder {
    pub(crate) fn new(name: String, path: PathBuf, mailbox: PathBuf, owner: Option<Owner>) -> Self {
        Folder {
            index: index::for_folder(&path),
            name,
            path,
            mailbox,
            owner,
        }
    }

    /// The folder's listing, for a watcher to keep up to date (see [`Listing`]).
    pub fn listing(&self) -> Listing {
        Listing {
            index: self.index.clone(),
            pending: self.index().pending.clone(),
        }
    }

    /// The folder's name: `INBOX`, `Sent`, `a/b`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder's directory (the mailbox directory for INBOX).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Indexes new messages (found in `new/` or `cur/` and not in the uid list yet) and returns
    /// every message, in UID order. Leaves files where they are.
    ///
    /// With a current uid list this reads two directories and the list; message files are only
    /// opened for messages never seen before whose names lack `,S=`/`,W=`.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        if let Some(snapshot) = self.sync_unlocked(false) {
            return Ok(snapshot);
        }
        let lock = self.lock()?;
        self.sync_locked(&lock, false)
    }

    /// Like [`snapshot`](Self::snapshot), and moves messages from `new/` to `cur/`: the caller
    /// (an IMAP session that selected the folder) is the one that reports them as `recent`.
    pub fn claim_new(&self) -> Result<Snapshot, StoreError> {
        if let Some(snapshot) = self.sync_unlocked(true) {
            return Ok(snapshot);
        }
        let lock = self.lock()?;
        self.sync_locked(&lock, true)
    }

    /// Opens a message for reading. If another process renamed it since the snapshot (a flag
    /// change, a move to `cur/`), the file is found again by its base name.
    ///
    /// Only a regular file is opened: a FIFO a user left in their Maildir would block the
    /// reader for ever, and a symbolic link could point at another user's mail.
    pub fn open(&self, msg: &MessageInfo) -> Result<File, StoreError> {
        let path = self.path.join(&*msg.file);
        match open_regular(&path) {
            Ok(file) => return Ok(file),
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(StoreError::io("opening", &path, err)),
        }
        // Most often renamed by a flag change in another session: the listing a watcher keeps
        // knows the new name, with no lock and no read of the directories.
        if let Some(rel) = self.listed(&msg.base) {
            let path = self.path.join(&*rel);
            match open_regular(&path) {
                Ok(file) => return Ok(file),
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::io("opening", &path, err)),
            }
        }
        let _lock = self.lock()?;
        let found = self.find(&msg.base)?;
        let path = self.path.join(&*found.rel);
        open_regular(&path).map_err(|err| StoreError::io("opening", &path, err))
    }

    /// Changes a message's flags (renames it to `cur/<base>:2,<FLAGS>`) and updates `msg`.
    /// The change applies to the flags the file has now, so concurrent `Add`s of different
    /// flags by two sessions both survive.
    pub fn update_flags(
        &self,
        msg: &mut MessageInfo,
        change: FlagChange,
    ) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        self.update_flags_locked(msg, change)
    }

    /// [`update_flags`](Self::update_flags) for many messages under one lock (POP3 marking
    /// every retrieved message seen, IMAP STORE on a range, FETCH setting \Seen). A message
    /// found gone is skipped and keeps its old flags in `msgs`; their positions in `msgs` are
    /// returned.
    pub fn update_flags_many(
        &self,
        msgs: &mut [MessageInfo],
        change: FlagChange,
    ) -> Result<Vec<usize>, StoreError> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut gone = Vec::new();
        for (at, msg) in msgs.iter_mut().enumerate() {
            match self.update_flags_locked(msg, change) {
                Ok(()) => {}
                Err(StoreError::MessageGone { .. }) => gone.push(at),
                Err(err) => return Err(err),
            }
        }
        Ok(gone)
    }

    fn update_flags_locked(
        &self,
        msg: &mut MessageInfo,
        change: FlagChange,
    ) -> Result<(), StoreError> {
        let mut from = msg.file.clone();
        let mut current = msg.flags;
        for attempt in 0..2 {
            let flags = change.apply(current);
            let to = format!("cur/{}", cur_name(&msg.base, flags));
            if *to == *from {
                msg.flags = flags;
                return Ok(());
            }
            match std::fs::rename(self.path.join(&*from), self.path.join(&to)) {
                Ok(()) => {
                    msg.flags = flags;
                    msg.file = to.into();
                    return Ok(());
                }
                Err(err) if err.kind() == ErrorKind::NotFound && attempt == 0 => {
                    let found = self.find(&msg.base)?;
                    current = split_name(found.name()).1;
                    from = found.rel;
                }
                Err(err) => return Err(StoreError::io("renaming", &self.path.join(&*from), err)),
            }
        }
        Err(StoreError::MessageGone {
            base: msg.base.to_string(),
        })
    }

    /// Deletes messages (POP3 UPDATE, IMAP EXPUNGE). One already gone is not an error.
    pub fn delete(&self, msgs: &[MessageInfo]) -> Result<(), StoreError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut stale = Vec::new();
        for msg in msgs {
            let path = self.path.join(&*msg.file);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => stale.push(msg),
                Err(err) => return Err(StoreError::io("deleting", &path, err)),
            }
        }
        if !stale.is_empty() {
            // Renamed since the caller's snapshot, or already deleted.
            let bases: Vec<&str> = stale.iter().map(|m| &*m.base).collect();
            for found in self.locate(&bases)?.into_iter().flatten() {
                let path = self.path.join(&*found.rel);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(err) => return Err(StoreError::io("deleting", &path, err)),
                }
            }
        }
        // The directories are not fsynced: a crash that loses an unlink brings the message
        // back (as a new one), which costs less than two flushes per EXPUNGE; Dovecot's
        // default (`fsync_mode = optimized`) makes the same trade. What is added is fsynced.
        // Drop them from the uid list now, so the next snapshot need not look twice.
        self.forget_locked(&msgs.iter().map(|m| &*m.base).collect())
    }

    /// Drops the lines of messages no longer in the folder from its uid list. Call with the
    /// folder lock held.
    fn forget_locked(&self, gone: &HashSet<&str>) -> Result<(), StoreError> {
        let mut index = self.index();
        if let Loaded::Ok(mut list) = UidList::load_cached(&self.path, &mut index.list)? {
            let forgotten: Vec<u32> = list
                .entries
                .iter()
                .filter(|e| gone.contains(&*e.base))
                .map(|e| e.uid)
                .collect();
            if !forgotten.is_empty() {
                Arc::make_mut(&mut list)
                    .entries
                    .retain(|e| !gone.contains(&*e.base));
                list.forget(&self.path, self.owner, &forgotten, &mut index.list)?;
            } else if list.needs_rewrite {
                list.save(&self.path, self.owner, &mut index.list)?;
            }
        }
        Ok(())
    }

    /// Delivers a message into `new/` (SMTP, `inetkit deliver`). Takes no lock: the message
    /// gets its UID from the next snapshot. On any error (a full disk) nothing is left behind.
    pub fn deliver(&self, message: &mut dyn Read) -> Result<Delivered, StoreError> {
        let (path, base, sizes, _file) =
            self.write_message(message, SystemTime::now(), Sub::New, Flags::EMPTY)?;
        Ok(Delivered {
            path,
            base,
            size: sizes.size,
            vsize: sizes.vsize,
        })
    }

    /// Adds a message with flags and an internal date (IMAP APPEND, the Sent copy of
    /// submitted mail) and gives it the next UID at once. It goes to `new/`, its flags in its
    /// name, so that the next session to select the folder sees it `\Recent` (RFC 3501
    /// §6.3.11, §2.3.2).
    pub fn append(
        &self,
        message: &mut dyn Read,
        flags: Flags,
        internal_date: Option<SystemTime>,
    ) -> Result<Appended, StoreError> {
        self.append_into(Sub::New, message, flags, internal_date)
    }

    /// [`append`](Self::append) straight into `cur/`, for a caller that has the folder open
    /// and takes the message as \Recent itself (an IMAP session appending to its selected
    /// folder): no other session claims it, and no move from `new/` follows.
    pub fn append_claimed(
        &self,
        message: &mut dyn Read,
        flags: Flags,
        internal_date: Option<SystemTime>,
    ) -> Result<Appended, StoreError> {
        self.append_into(Sub::Cur, message, flags, internal_date)
    }

    fn append_into(
        &self,
        sub: Sub,
        message: &mut dyn Read,
        flags: Flags,
        internal_date: Option<SystemTime>,
    ) -> Result<Appended, StoreError> {
        let date = internal_date.unwrap_or_else(SystemTime::now);
        let (tmp, file, sizes) = self.write_tmp(message, date)?;
        // Named into place under the lock, and numbered before it is let go: a session that
        // looks at the folder meanwhile never meets a file without its uid list line (it would
        // take the lock and number the message itself, syncing the list once more).
        let placed = self.lock().and_then(|lock| {
            let (path, base) = self.place(&tmp, date, sub, flags, &sizes)?;
            if internal_date.is_some() {
                // After the rename: the tmp/ cleaner must never see an old date on a live file.
                if let Err(err) = file.set_modified(date) {
                    tracing::debug!(path = %path.display(), error = %err, "cannot set mtime");
                }
            }
            let secs = name_time(&base).unwrap_or(0);
            let message = MessageInfo {
                uid: 0,
                file: match sub {
                    Sub::New => format!("new/{}", new_name(&base, flags)),
                    Sub::Cur => format!("cur/{}", cur_name(&base, flags)),
                }
                .into(),
                base: base.into(),
                size: sizes.size,
                vsize: Some(sizes.vsize),
                flags,
                internal_date: UNIX_EPOCH + Duration::from_secs(secs),
                recent: sub == Sub::New,
            };
            // Durable before anyone can see it and move it on (a session claiming it from
            // new/), and before it is numbered. On failure nothing is left that a retry would
            // duplicate (its uid list line, if written, goes at the next look).
            let numbered = crate::fsutil::sync_dir(&self.path.join(sub.dir()))
                .and_then(|()| self.number_appended(&lock, message));
            if numbered.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            numbered
        });
        drop(file);
        if placed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        placed
    }

    /// Gives a message just placed its UID. Call with the lock held.
    fn number_appended(
        &self,
        lock: &Lock,
        mut message: MessageInfo,
    ) -> Result<Appended, StoreError> {
        let mut index = self.index();
        // The quick way: add one line to a sound uid list, without reading the directories.
        // (Nobody numbered it before: it was placed under this lock.)
        if let Loaded::Ok(mut list) = UidList::load_cached(&self.path, &mut index.list)? {
            if !list.needs_rewrite && list.next_uid < u32::MAX - 1 {
                let entry = Entry::new(list.next_uid, message.base.clone(), None, None, None);
                message.uid = entry.uid;
                let edited = Arc::make_mut(&mut list);
                edited.next_uid += 1;
                edited.entries.push(entry.clone());
                list.append(&self.path, &[entry], &mut index.list)?;
                return Ok(Appended {
                    uid_validity: list.validity,
                    message,
                });
            }
        }
        drop(index);
        let snapshot = self.sync_locked(lock, false)?;
        let found = snapshot
            .messages
            .into_iter()
            .find(|m| m.base == message.base)
            .ok_or_else(|| StoreError::MessageGone {
                base: message.base.to_string(),
            })?;
        Ok(Appended {
            uid_validity: snapshot.uid_validity,
            message: found,
        })
    }

    fn lock(&self) -> Result<Lock, StoreError> {
        Lock::acquire(&self.path.join(LOCK_FILE), self.owner)
    }

    /// The shared index. Lock order: the folder lock, then this; never the folder lock while
    /// holding this. Changes to the uid list are made only with both (a look without the
    /// folder lock, `sync_unlocked`, only reads what was cached under it).
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}
