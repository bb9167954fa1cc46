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
//! - A message keeps its base name for life; the uid list maps base names to UIDs, so flags
//!   can change and files can move from `new/` to `cur/` without UIDs changing. A caller
//!   holding an old file name (another process renamed the file since) is followed to the
//!   current name by base.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::faults::{self, Step};
use super::fsutil::{self, Lock, Owner};
use super::index::{self, Found, FxMap, Index, Sub};
use super::maildir::{
    arrival_key, cur_name, name_time, size_field, split_name, unique_name, SizeCounter,
};
use super::uidlist::{Entry, Loaded, UidList};
use super::{Flags, StoreError};

const LOCK_FILE: &str = "inetkit-uidlist.lock";
/// Maildir convention: a file left in `tmp/` this long is from a writer that died.
const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);
/// Attempts at a fresh unique name when one is taken (practically never).
const NAME_ATTEMPTS: usize = 10;

mod transfer;

pub use transfer::Transferred;

thread_local! {
    static FILES_READ: Cell<u64> = const { Cell::new(0) };
}

/// How many message files this thread has opened to learn a size or date while indexing.
/// Lets tests check that an indexed folder is opened from its uid list alone.
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
    /// Bytes with every bare LF sent as CRLF: POP3 LIST and IMAP RFC822.SIZE.
    pub vsize: u64,
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
        let lock = self.lock()?;
        self.sync_locked(&lock, false)
    }

    /// Like [`snapshot`](Self::snapshot), and moves messages from `new/` to `cur/`: the caller
    /// (an IMAP session that selected the folder) is the one that reports them as `recent`.
    pub fn claim_new(&self) -> Result<Snapshot, StoreError> {
        let lock = self.lock()?;
        self.sync_locked(&lock, true)
    }

    /// Opens a message for reading. If another process renamed it since the snapshot (a flag
    /// change, a move to `cur/`), the file is found again by its base name.
    pub fn open(&self, msg: &MessageInfo) -> Result<File, StoreError> {
        let path = self.path.join(&*msg.file);
        match File::open(&path) {
            Ok(file) => return Ok(file),
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(StoreError::io("opening", &path, err)),
        }
        let _lock = self.lock()?;
        let found = self.find(&msg.base)?;
        let path = self.path.join(&*found.rel);
        File::open(&path).map_err(|err| StoreError::io("opening", &path, err))
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
            let found = self.scan()?;
            for msg in stale {
                if let Some(f) = found.get(&msg.base) {
                    let path = self.path.join(&*f.rel);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(err) if err.kind() == ErrorKind::NotFound => {}
                        Err(err) => return Err(StoreError::io("deleting", &path, err)),
                    }
                }
            }
        }
        for sub in [Sub::New, Sub::Cur] {
            fsutil::sync_dir(&self.path.join(sub.dir()))?;
        }
        // Drop them from the uid list now, so the next snapshot need not look twice.
        self.forget_locked(&msgs.iter().map(|m| &*m.base).collect())
    }

    /// Drops the lines of messages no longer in the folder from its uid list. Call with the
    /// folder lock held.
    fn forget_locked(&self, gone: &HashSet<&str>) -> Result<(), StoreError> {
        let mut index = self.index();
        if let Loaded::Ok(mut list) = UidList::load_cached(&self.path, &mut index.list)? {
            let before = list.entries.len();
            let edited = Arc::make_mut(&mut list);
            edited.entries.retain(|e| !gone.contains(&*e.base));
            if edited.entries.len() != before || edited.needs_rewrite {
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

    /// Adds a message with flags and an internal date (IMAP APPEND and COPY, the Sent copy of
    /// submitted mail) and gives it the next UID at once. Without flags it goes to `new/`.
    pub fn append(
        &self,
        message: &mut dyn Read,
        flags: Flags,
        internal_date: Option<SystemTime>,
    ) -> Result<Appended, StoreError> {
        let date = internal_date.unwrap_or_else(SystemTime::now);
        let sub = if flags.is_empty() { Sub::New } else { Sub::Cur };
        let (path, base, sizes, file) = self.write_message(message, date, sub, flags)?;
        if internal_date.is_some() {
            // After the rename: the tmp/ cleaner must never see an old date on a live file.
            if let Err(err) = file.set_modified(date) {
                tracing::debug!(path = %path.display(), error = %err, "cannot set mtime");
            }
        }
        drop(file);
        let secs = name_time(&base).unwrap_or(0);
        let mut message = MessageInfo {
            uid: 0,
            file: match sub {
                Sub::New => format!("new/{base}").into(),
                Sub::Cur => format!("cur/{}", cur_name(&base, flags)).into(),
            },
            base: base.into(),
            size: sizes.size,
            vsize: sizes.vsize,
            flags,
            internal_date: UNIX_EPOCH + Duration::from_secs(secs),
            recent: sub == Sub::New,
        };

        let lock = self.lock()?;
        let mut index = self.index();
        // The quick way: add one line to a sound uid list, without reading the directories.
        if let Loaded::Ok(mut list) = UidList::load_cached(&self.path, &mut index.list)? {
            // A concurrent snapshot indexed it already (then its line is near the end).
            if let Some(e) = list.entries.iter().rev().find(|e| e.base == message.base) {
                message.uid = e.uid; // a concurrent snapshot indexed it already
                return Ok(Appended {
                    uid_validity: list.validity,
                    message,
                });
            }
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
        let snapshot = self.sync_locked(&lock, false)?;
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

    /// The shared index; take it only while holding the folder lock (lock order: the flock,
    /// then this).
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the message to `tmp/`, fsyncs it, and renames it into `new/` or `cur/` under a
    /// name that no existing file has. Returns the final path, the base, the sizes and the
    /// still open file.
    fn write_message(
        &self,
        message: &mut dyn Read,
        date: SystemTime,
        sub: Sub,
        flags: Flags,
    ) -> Result<(PathBuf, String, SizeCounter, File), StoreError> {
        let (tmp, file, sizes) = self.write_tmp(message, date)?;
        let (path, base) = match self.place(&tmp, date, sub, flags, &sizes) {
            Ok(placed) => placed,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
        };
        if let Err(err) = fsutil::sync_dir(&self.path.join(sub.dir())) {
            // Not known to be durable: report failure, and leave nothing behind that a retry
            // would duplicate.
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        Ok((path, base, sizes, file))
    }

    /// Renames a message written to `tmp/` into `new/` or `cur/` under a base no file has yet
    /// (the caller syncs the directory). Returns the final path and the base; on error `tmp`
    /// is left for the caller to remove.
    fn place(
        &self,
        tmp: &Path,
        date: SystemTime,
        sub: Sub,
        flags: Flags,
        sizes: &SizeCounter,
    ) -> Result<(PathBuf, String), StoreError> {
        let dir = self.path.join(sub.dir());
        for _ in 0..NAME_ATTEMPTS {
            let base = format!("{},S={},W={}", unique_name(date), sizes.size, sizes.vsize);
            let name = match sub {
                Sub::New => base.clone(),
                Sub::Cur => cur_name(&base, flags),
            };
            let path = dir.join(&name);
            match faults::check(Step::Place).and_then(|()| fsutil::rename_noreplace(tmp, &path)) {
                Ok(()) => return Ok((path, base)),
                Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(StoreError::io("renaming", tmp, err)),
            }
        }
        Err(StoreError::io(
            "naming",
            tmp,
            std::io::Error::new(ErrorKind::AlreadyExists, "no unique name found"),
        ))
    }

    fn write_tmp(
        &self,
        message: &mut dyn Read,
        date: SystemTime,
    ) -> Result<(PathBuf, File, SizeCounter), StoreError> {
        let tmp_dir = self.path.join("tmp");
        let mut attempt = 0;
        let (path, mut file) = loop {
            let path = tmp_dir.join(unique_name(date));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == ErrorKind::AlreadyExists && attempt < NAME_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(StoreError::io("creating", &path, err)),
            }
        };
        let result = (|| {
            faults::check(Step::WriteTmp).map_err(|err| StoreError::io("writing", &path, err))?;
            fsutil::chown_file(&file, &path, self.owner)?;
            let mut sizes = SizeCounter::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match message.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => return Err(StoreError::Input(err)),
                };
                sizes.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(|err| StoreError::io("writing", &path, err))?;
            }
            file.sync_all()
                .map_err(|err| StoreError::io("syncing", &path, err))?;
            Ok(sizes)
        })();
        match result {
            Ok(sizes) => Ok((path, file, sizes)),
            Err(err) => {
                drop(file);
                let _ = std::fs::remove_file(&path);
                Err(err)
            }
        }
    }

    /// Reads `new/` and `cur/`: base name -> where the file is now.
    fn scan(&self) -> Result<FxMap<Arc<str>, Found>, StoreError> {
        let mut found = FxMap::default();
        self.scan_into(&mut found, 0)?;
        Ok(found)
    }

    /// Reads `new/` and `cur/` into `found`, marking each file seen with `epoch`. A file seen
    /// before under the same name costs a lookup, not new strings. `cur/` comes last, so that
    /// a file another program copied into both counts once, from `cur/`.
    fn scan_into(&self, found: &mut FxMap<Arc<str>, Found>, epoch: u64) -> Result<(), StoreError> {
        for sub in [Sub::New, Sub::Cur] {
            let path = self.path.join(sub.dir());
            let fail = |errno: nix::errno::Errno| StoreError::io("reading", &path, errno.into());
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let mut dir = Dir::open(&path, flags, Mode::empty()).map_err(fail)?;
            for entry in dir.iter() {
                let entry = entry.map_err(fail)?;
                let bytes = entry.file_name().to_bytes();
                if bytes.first() == Some(&b'.') || bytes.contains(&b'\n') {
                    continue;
                }
                let Ok(name) = std::str::from_utf8(bytes) else {
                    tracing::warn!(dir = %path.display(), name = ?String::from_utf8_lossy(bytes),
                        "skipping a file whose name is not UTF-8");
                    continue;
                };
                let (base, _) = split_name(name);
                if base.is_empty() {
                    continue;
                }
                match found.get_mut(base) {
                    Some(f) if f.sub == sub && f.name() == name => f.epoch = epoch,
                    Some(f) => *f = Found::new(sub, name, epoch),
                    None => {
                        found.insert(base.into(), Found::new(sub, name, epoch));
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the message with this base is now. Call with the lock held.
    fn find(&self, base: &str) -> Result<Found, StoreError> {
        self.scan()?
            .remove(base)
            .ok_or_else(|| StoreError::MessageGone {
                base: base.to_owned(),
            })
    }

    /// A new list for this folder, under a UIDVALIDITY never used in this mailbox before.
    fn fresh_list(&self) -> Result<UidList, StoreError> {
        Ok(UidList::new(fsutil::next_uid_validity(
            &self.mailbox,
            self.owner,
        )?))
    }

    /// The heart of `snapshot`: brings the uid list up to date with the directories.
    fn sync_locked(&self, lock: &Lock, claim: bool) -> Result<Snapshot, StoreError> {
        self.clean_tmp();
        let mut index = self.index();
        let result = self.sync_indexed(lock, claim, &mut index);
        if result.is_err() {
            index.forget();
        }
        result
    }

    fn sync_indexed(
        &self,
        lock: &Lock,
        claim: bool,
        index: &mut Index,
    ) -> Result<Snapshot, StoreError> {
        index.epoch += 1;
        let epoch = index.epoch;
        self.scan_into(&mut index.found, epoch)?;
        let (mut list, mut rewrite) = match UidList::load_cached(&self.path, &mut index.list)? {
            Loaded::Ok(list) => {
                let rewrite = list.needs_rewrite;
                (list, rewrite)
            }
            Loaded::Missing => {
                // The lock file outlives the list: without it, this folder was never indexed
                // (a new folder, or one another program filled), and nothing was lost.
                if lock.existed && !index.found.is_empty() {
                    tracing::warn!(folder = %self.path.display(), messages = index.found.len(),
                        "uid list missing: numbering every message afresh under a new UIDVALIDITY");
                }
                (Arc::new(self.fresh_list()?), true)
            }
            Loaded::Corrupt { reason, validity } => {
                tracing::warn!(folder = %self.path.display(), reason, old_uidvalidity = ?validity,
                    "uid list corrupt: numbering every message afresh under a new UIDVALIDITY");
                (Arc::new(self.fresh_list()?), true)
            }
        };

        // Known messages missing from the scan were expunged, or renamed by a program that
        // does not take our lock while we read. Look once more before forgetting them.
        let seen = |found: &FxMap<Arc<str>, Found>, base: &str| {
            found.get(base).is_some_and(|f| f.epoch == epoch)
        };
        if list.entries.iter().any(|e| !seen(&index.found, &e.base)) {
            self.scan_into(&mut index.found, epoch)?;
            let before = list.entries.len();
            let edited = Arc::make_mut(&mut list);
            edited.entries.retain(|e| seen(&index.found, &e.base));
            rewrite |= edited.entries.len() != before;
        }
        index.found.retain(|_, f| f.epoch == epoch);
        let found = &mut index.found;

        // Every line of the list names a file found, and no two lines the same base (UIDs are
        // only given to bases not in the list): equal counts mean nothing new.
        let mut fresh: Vec<Arc<str>> = if found.len() == list.entries.len() {
            Vec::new()
        } else {
            let known: HashSet<&str> = list.entries.iter().map(|e| &*e.base).collect();
            found
                .keys()
                .filter(|base| !known.contains(&***base))
                .cloned()
                .collect()
        };
        if u64::from(list.next_uid) + fresh.len() as u64 >= u64::from(u32::MAX) {
            tracing::warn!(folder = %self.path.display(),
                "UIDs exhausted: numbering every message afresh under a new UIDVALIDITY");
            list = Arc::new(self.fresh_list()?);
            rewrite = true;
            fresh = found.keys().cloned().collect();
        }
        // Oldest first, so UIDs follow arrival where the names tell it.
        fresh.sort_by_cached_key(|base| {
            let (secs, micros, _) = arrival_key(base);
            (secs, micros, base.clone())
        });

        let mut added = Vec::new();
        let measured = self.index_entries(&fresh, found)?;
        let mut next_uid = list.next_uid;
        for (base, entry) in fresh.iter().zip(measured) {
            match entry {
                Some(mut entry) => {
                    entry.uid = next_uid;
                    next_uid += 1;
                    added.push(entry);
                }
                None => {
                    found.remove(base);
                }
            }
        }
        // Lines that lack a cached value their name does not carry (a hand-edited list).
        if list.entries.iter().any(Entry::incomplete) {
            let mut buf = Vec::new();
            for entry in &mut Arc::make_mut(&mut list).entries {
                if entry.incomplete() {
                    if let Some(f) = found.get(&entry.base) {
                        if let Some(filled) =
                            self.index_entry(entry.uid, &entry.base, f, &mut buf)?
                        {
                            *entry = filled;
                            rewrite = true;
                        }
                    }
                }
            }
        }
        if !added.is_empty() {
            let edited = Arc::make_mut(&mut list);
            edited.next_uid = next_uid;
            edited.entries.extend(added.iter().cloned());
        }

        if rewrite {
            list.save(&self.path, self.owner, &mut index.list)?;
        } else if !added.is_empty() {
            list.append(&self.path, &added, &mut index.list)?;
        }

        let found = &mut index.found;
        let mut messages: Vec<MessageInfo> = list
            .entries
            .iter()
            .map(|e| message_info(e, &found[&e.base]))
            .collect();
        if claim {
            self.move_to_cur(&mut messages, found, epoch)?;
        }
        Ok(Snapshot {
            uid_validity: list.validity,
            uid_next: list.next_uid,
            messages,
        })
    }

    /// A uid list line for a message seen for the first time: sizes and date come from the
    /// name, or else from the file, once. `None` if the file vanished meanwhile.
    fn index_entry(
        &self,
        uid: u32,
        base: &Arc<str>,
        found: &Found,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Entry>, StoreError> {
        let entry = Entry::new(uid, base.clone(), None, None, None);
        if !entry.incomplete() {
            return Ok(Some(entry));
        }
        let (mut size, mut vsize, mut time) = (None, None, None);
        let path = self.path.join(&*found.rel);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(StoreError::io("opening", &path, err)),
        };
        FILES_READ.with(|n| n.set(n.get() + 1));
        let meta = file
            .metadata()
            .map_err(|err| StoreError::io("reading", &path, err))?;
        if size_field(base, 'S').is_none() {
            size = Some(meta.len());
        }
        if name_time(base).is_none() {
            let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
            time = Some(mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        }
        if size_field(base, 'W').is_none() {
            let mut sizes = SizeCounter::default();
            buf.resize(64 * 1024, 0);
            loop {
                match file.read(buf) {
                    Ok(0) => break,
                    Ok(n) => sizes.update(&buf[..n]),
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) => return Err(StoreError::io("reading", &path, err)),
                }
            }
            vsize = Some(sizes.vsize);
        }
        Ok(Some(Entry::new(uid, base.clone(), size, vsize, time)))
    }

    /// [`index_entry`](Self::index_entry) for many new messages (a folder seen for the first
    /// time: each file read once), spread over the CPUs; UIDs are left 0 for the caller.
    fn index_entries(
        &self,
        bases: &[Arc<str>],
        found: &FxMap<Arc<str>, Found>,
    ) -> Result<Vec<Option<Entry>>, StoreError> {
        let work = |bases: &[Arc<str>]| {
            let mut buf = Vec::new();
            let entries: Result<Vec<_>, _> = bases
                .iter()
                .map(|base| self.index_entry(0, base, &found[base], &mut buf))
                .collect();
            (entries, message_files_read())
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        if bases.len() < 256 || threads < 2 {
            return work(bases).0;
        }
        let chunk = bases.len().div_ceil(threads);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = bases
                .chunks(chunk)
                .map(|part| scope.spawn(move || work(part)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut entries = Vec::with_capacity(bases.len());
        for result in results {
            // A panic in a worker is a bug; the caller sees an error, not a crash.
            let (part, files_read) = result.map_err(|_| {
                StoreError::io(
                    "indexing",
                    &self.path,
                    std::io::Error::other("thread failed"),
                )
            })?;
            FILES_READ.with(|n| n.set(n.get() + files_read));
            entries.extend(part?);
        }
        Ok(entries)
    }

    /// Moves the messages in `new/` to `cur/`, and tells the index where they went.
    fn move_to_cur(
        &self,
        messages: &mut [MessageInfo],
        found: &mut FxMap<Arc<str>, Found>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        for msg in messages.iter_mut().filter(|m| m.file.starts_with("new/")) {
            let name = cur_name(&msg.base, msg.flags);
            let moved = Found::new(Sub::Cur, &name, epoch);
            match std::fs::rename(self.path.join(&*msg.file), self.path.join(&*moved.rel)) {
                Ok(()) => {
                    msg.file = moved.rel.clone();
                    found.insert(msg.base.clone(), moved);
                }
                // Moved by a program that ignores our lock; `open` will find it.
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(StoreError::io("renaming", &self.path.join(&*msg.file), err))
                }
            }
        }
        Ok(())
    }

    /// Removes files a dead writer left in `tmp/`. Failures only cost disk space: logged.
    fn clean_tmp(&self) {
        let dir = self.path.join("tmp");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > TMP_MAX_AGE);
            if meta.is_file() && old {
                let path = entry.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a stale file from tmp/")
                    }
                    Err(err) => {
                        tracing::warn!(path = %path.display(), error = %err, "cannot remove a stale file")
                    }
                }
            }
        }
    }
}

fn message_info(e: &Entry, found: &Found) -> MessageInfo {
    let (size, vsize, secs) = e.facts();
    MessageInfo {
        uid: e.uid,
        base: e.base.clone(),
        size,
        vsize,
        flags: found.flags,
        internal_date: UNIX_EPOCH + Duration::from_secs(secs),
        recent: found.sub == Sub::New,
        file: found.rel.clone(),
    }
}
