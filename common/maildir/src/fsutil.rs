//! File system steps the store repeats: directories, ownership, fsync, locks, no-replace renames.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

use super::filelock::FileLock;
use super::StoreError;

/// Who should own what the store creates. Set when a tool running as root writes into the
/// store, so that the daemons (running as `inetkit`) can still read and change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Numeric user id (the `inetkit` system user's, looked up by the caller).
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
}

pub(crate) fn chown_file(file: &File, path: &Path, owner: Option<Owner>) -> Result<(), StoreError> {
    match owner {
        Some(o) => std::os::unix::fs::fchown(file, Some(o.uid), Some(o.gid))
            .map_err(|err| StoreError::io("changing the owner of", path, err)),
        None => Ok(()),
    }
}

/// Creates a directory (mode 0700, then chowned); `Ok(false)` when it already existed.
pub(crate) fn make_dir(path: &Path, owner: Option<Owner>) -> Result<bool, StoreError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            if let Some(o) = owner {
                std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
                    .map_err(|err| StoreError::io("changing the owner of", path, err))?;
            }
            Ok(true)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(StoreError::io("creating", path, err)),
    }
}

/// Creates an empty file (mode 0600) if it is missing.
pub(crate) fn touch(path: &Path, owner: Option<Owner>) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => chown_file(&file, path, owner),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(StoreError::io("creating", path, err)),
    }
}

/// Makes the directory's entries (a rename into it, an unlink) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| StoreError::io("syncing", dir, err))
}

/// Renames without replacing an existing `to` (which `rename(2)` would silently do): a clash
/// of unique names must never overwrite a message. `AlreadyExists` when `to` exists.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // File systems without RENAME_NOREPLACE: fall back to link + unlink below.
            Err(Errno::EINVAL | Errno::ENOSYS) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Like [`rename_noreplace`], but never by a link and an unlink: at every instant the file has
/// exactly one name, so a message moved between folders is never in both. Without
/// `RENAME_NOREPLACE` (NFS) `to` is checked first; the caller holds the folder locks, so only a
/// program outside inetkit could take that unique name in between.
pub(crate) fn move_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL | Errno::ENOSYS) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    match std::fs::symlink_metadata(to) {
        Ok(_) => Err(std::io::ErrorKind::AlreadyExists.into()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => std::fs::rename(from, to),
        Err(err) => Err(err),
    }
}

/// An exclusive lock on a folder's lock file, released when dropped.
pub(crate) struct Lock {
    _lock: FileLock,
    /// The lock file was there before (the folder has been locked, so indexed, before).
    pub existed: bool,
}

impl Lock {
    pub(crate) fn acquire(path: &Path, owner: Option<Owner>) -> Result<Lock, StoreError> {
        let (file, existed) = open_lock_file(path, owner)?;
        Ok(Lock {
            _lock: lock(file, path)?,
            existed,
        })
    }
}

/// Waits for an exclusive lock (per open file, so threads exclude each other too, and held
/// across hosts on a shared file system: see [`FileLock`]), through the process's hand-off
/// hook when somebody else holds it ([`crate::set_hand_off`]).
fn lock(file: File, path: &Path) -> Result<FileLock, StoreError> {
    FileLock::lock_or_wait(file).map_err(|err| StoreError::io("locking", path, err))
}

/// Opens (creating if need be) a file to lock; says whether it existed. It nearly always
/// does (every change to a folder locks it), so that open comes first.
fn open_lock_file(path: &Path, owner: Option<Owner>) -> Result<(File, bool), StoreError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    // Bounded: another process could remove the file between the two opens each time.
    for _ in 0..8 {
        match options.open(path) {
            Ok(file) => return Ok((file, true)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(StoreError::io("opening", path, err)),
        }
        match options.clone().create_new(true).open(path) {
            Ok(file) => {
                chown_file(&file, path, owner)?;
                return Ok((file, false));
            }
            // Made by another process between the two opens: open that one.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(StoreError::io("creating", path, err)),
        }
    }
    Err(StoreError::io(
        "creating",
        path,
        std::io::Error::other("created and removed by another process, again and again"),
    ))
}

/// Hands out a new UIDVALIDITY for a folder of this mailbox: the current time, or one more than
/// the last value handed out if that is not lower. The last value lives in
/// `<mailbox>/inetkit-uidvalidity`, so a folder deleted and re-created (or whose uid list was
/// lost) within the same second still gets a different UIDVALIDITY.
pub(crate) fn next_uid_validity(mailbox: &Path, owner: Option<Owner>) -> Result<u32, StoreError> {
    let path = mailbox.join("inetkit-uidvalidity");
    let mut file = lock(open_lock_file(&path, owner)?.0, &path)?;
    let mut text = String::new();
    // An unreadable counter is no worse than a missing one: the clock still moves on.
    let _ = file.read_to_string(&mut text);
    let last: u32 = text.trim().parse().unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX - 1));
    let next = now.max(last.saturating_add(1)).max(1);
    file.rewind()
        .and_then(|()| file.set_len(0))
        .and_then(|()| file.write_all(format!("{next}\n").as_bytes()))
        .and_then(|()| file.sync_data())
        .map_err(|err| StoreError::io("writing", &path, err))?;
    Ok(next)
}
