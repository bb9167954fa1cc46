//! Whole-file exclusive locks that hold across hosts sharing the store (NFSv4, CephFS).
//!
//! `flock(2)` is a lock of one kernel on some shared file systems; POSIX byte-range locks
//! (`fcntl`) are what NFSv4's lock protocol and CephFS carry between hosts. Classic POSIX locks
//! belong to the process and vanish when *any* descriptor of the file is closed, which a daemon
//! with many threads cannot promise, so these are open-file-description locks (`F_OFD_SETLKW`,
//! Linux 3.15 and later): like flock they belong to the open file, so two threads (two
//! sessions) of one daemon exclude each other, and closing the file releases the lock.

use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

/// Runs work that may block for long: [`set_hand_off`].
pub type HandOff = fn(&mut dyn FnMut());

static HAND_OFF: std::sync::OnceLock<HandOff> = std::sync::OnceLock::new();

/// How this process runs the store's long waits: a wait for a lock another session or
/// process holds, and a folder's first indexing (every name read, a uid list written and
/// synced). imapd runs its short store calls on the async runtime's worker threads and hands
/// these to `tokio::task::block_in_place`, so that a session queued behind another one's
/// APPEND (a synced write under the lock), or looking at a folder another program filled,
/// does not hold a worker. Without it they run as they are. Set once, at start.
pub fn set_hand_off(hand_off: HandOff) {
    let _ = HAND_OFF.set(hand_off);
}

/// Runs `work` through the hook of [`set_hand_off`], if one is set.
pub(crate) fn hand_off<T>(work: impl FnOnce() -> T) -> T {
    let Some(hook) = HAND_OFF.get().copied() else {
        return work();
    };
    let mut work = Some(work);
    let mut done = None;
    hook(&mut || done = work.take().map(|work| work()));
    match (done, work) {
        (Some(done), _) => done,
        // A hook that did not run what it was handed: the work runs here.
        (None, Some(work)) => work(),
        (None, None) => unreachable!("the work was taken and not run, yet returned"),
    }
}

/// An exclusive lock on a whole file, released when dropped (the file is closed).
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

/// Lock the whole file for writing (`l_len` 0 reaches past any end of file).
fn whole_file() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for open-file-description locks.
        l_pid: 0,
    }
}

impl FileLock {
    /// Waits until the file (opened for writing) is locked.
    pub fn wait(file: File) -> io::Result<FileLock> {
        let request = whole_file();
        loop {
            match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLKW(&request)) {
                Ok(_) => return Ok(FileLock { file }),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// Locks the file now if nobody holds it, else waits through the process's hand-off hook
    /// ([`set_hand_off`]). An uncontended lock costs what [`wait`](Self::wait)'s does.
    pub fn lock_or_wait(file: File) -> io::Result<FileLock> {
        if set_if_free(&file)? {
            return Ok(FileLock { file });
        }
        hand_off(|| FileLock::wait(file))
    }

    /// Locks the file if nobody holds it; `Ok(None)` when somebody does.
    pub fn try_lock(file: File) -> io::Result<Option<FileLock>> {
        Ok(set_if_free(&file)?.then_some(FileLock { file }))
    }
}

/// Takes the lock if nobody holds it; `false` when somebody does.
fn set_if_free(file: &File) -> io::Result<bool> {
    match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&whole_file())) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

impl Deref for FileLock {
    type Target = File;

    fn deref(&self) -> &File {
        &self.file
    }
}

impl DerefMut for FileLock {
    fn deref_mut(&mut self) -> &mut File {
        &mut self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TestDir;
    use std::fs::OpenOptions;

    fn open(path: &std::path::Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .expect("open the lock file")
    }

    #[test]
    fn two_opens_in_one_process_exclude_each_other_until_dropped() {
        // With classic POSIX locks the second open of the same process would get the lock too:
        // this is what makes them unusable between a daemon's sessions.
        let dir = TestDir::new();
        let path = dir.0.join("lock");
        let held = FileLock::wait(open(&path)).expect("first lock");
        assert!(FileLock::try_lock(open(&path)).expect("try").is_none());
        drop(held);
        assert!(FileLock::try_lock(open(&path)).expect("try").is_some());
    }

    #[test]
    fn a_waiting_thread_gets_the_lock_once_it_is_released() {
        let dir = TestDir::new();
        let path = dir.0.join("lock");
        let held = FileLock::wait(open(&path)).expect("first lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let lock = FileLock::wait(open(&path)).expect("second lock");
                tx.send(()).expect("send");
                drop(lock);
            })
        };
        // The waiter cannot have it while it is held.
        assert!(rx.try_recv().is_err());
        drop(held);
        rx.recv().expect("the waiter got the lock");
        waiter.join().expect("waiter");
    }
}
