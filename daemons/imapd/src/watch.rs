//! Which folders changed: inotify on the `new/` and `cur/` directories of every folder some
//! session has selected. A change bumps the folder's generation and wakes sessions in IDLE;
//! sessions compare generations instead of rescanning directories.
//!
//! Only what changes a folder's listing is asked of the kernel (a file created, renamed,
//! removed or written, a directory gone): not reads. Every FETCH opens message files, and a
//! watcher told of every open (as the `notify` crate asks) woke for each, which was half of
//! imapd's CPU under imaptest's persistent sessions.
//!
//! The reports also keep each watched folder's listing (`inetkit_maildir::Listing`): the
//! file each one names is added to or removed from it, so that a snapshot need not read the
//! directories again (for 10,000 messages, 15 ms at every change another session made). A
//! snapshot first has every queued report read and applied ([`Kernel::catch_up`]), which is
//! what makes that safe: the kernel queues a report within the call that changed the folder.
//!
//! The folder's last snapshot is kept with the generation it was taken at, so that the sessions
//! of one folder build it once per change rather than once each. The generation is read
//! before the snapshot: a change the snapshot missed has bumped it since, so nothing is served
//! stale.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use inetkit_maildir::{CatchUp, Dir, Folder, Listing, Snapshot};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::Notify;

struct Entry {
    generation: Arc<AtomicU64>,
    changed: Arc<Notify>,
    sessions: usize,
    cache: Option<(u64, Stamp, Arc<Snapshot>)>,
    /// The watched directories (`new/`, `cur/`): a folder deleted and made again has others,
    /// which need watches of their own.
    dirs: Option<[(u64, u64); 2]>,
    /// The folder's listing, kept from the reports.
    listing: Option<Listing>,
    /// Since when no session has the folder selected. The watch is kept a while: adding one
    /// costs the kernel a walk over the directory's entries.
    idle_since: Option<Instant>,
}

/// The modification times of a folder's `new/` and `cur/`.
pub(crate) type Stamp = Option<(SystemTime, SystemTime)>;

/// Watches of folders no session has selected are kept this long, and at most this many.
const KEEP_IDLE: Duration = Duration::from_secs(120);
const MAX_IDLE: usize = 16;

fn dir_ids(folder: &Path) -> Option<[(u64, u64); 2]> {
    let id = |sub: &str| {
        std::fs::metadata(folder.join(sub))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    Some([id("new")?, id("cur")?])
}

type Map = Arc<Mutex<HashMap<PathBuf, Entry>>>;
/// The folder and directory each watch descriptor reports for, and that directory's
/// (device, inode): a folder renamed away takes its directories (and their watches) along.
type Descriptors = Arc<Mutex<HashMap<WatchDescriptor, (PathBuf, Dir, (u64, u64))>>>;

/// What changes a folder's listing: a message arriving (created, or renamed in from `tmp/`),
/// its flags changing (a rename within `cur/`), an expunge, the directory itself going.
const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

pub struct Watches {
    folders: Map,
    watcher: Mutex<Option<Kernel>>,
}

/// The inotify instance's watches, added and removed here, while its reports are read by a
/// thread of its own (which stops when this goes: see [`Kernel::start`]) and by any session
/// about to look at a followed folder ([`Reports::catch_up`]).
struct Kernel {
    watches: inotify::Watches,
    descriptors: Descriptors,
    /// A watched directory's descriptor, to remove it.
    by_dir: HashMap<PathBuf, WatchDescriptor>,
    reports: Arc<Mutex<Reports>>,
    /// Its other end is in the reader thread: dropping this wakes and stops it.
    _stop: UnixStream,
    /// Events the kernel reported (which the tests read).
    #[cfg_attr(not(test), allow(dead_code))]
    count: Arc<AtomicU64>,
    /// Cleared when this goes: the reader thread may hold the reports a moment longer, but
    /// no listing is to trust them from then on.
    open: Arc<AtomicBool>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.open.store(false, Ordering::SeqCst);
    }
}

impl Kernel {
    fn start(folders: Map) -> std::io::Result<Kernel> {
        let inotify = Inotify::init()?;
        // The thread waits on its own descriptor of the queue, without the lock that reading
        // it takes.
        let readable = inotify.as_fd().try_clone_to_owned()?;
        let (stop, stopped) = UnixStream::pair()?;
        let descriptors = Descriptors::default();
        let count = Arc::new(AtomicU64::new(0));
        let reports = Arc::new(Mutex::new(Reports {
            inotify,
            buffer: vec![0; 8192],
            descriptors: descriptors.clone(),
            folders,
            count: count.clone(),
        }));
        let kernel = Kernel {
            watches: reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .inotify
                .watches(),
            descriptors,
            by_dir: HashMap::new(),
            reports: reports.clone(),
            _stop: stop,
            count,
            open: Arc::new(AtomicBool::new(true)),
        };
        std::thread::Builder::new()
            .name("imapd-inotify".into())
            .spawn(move || wait_for_reports(&reports, &readable, &stopped))?;
        Ok(kernel)
    }

    /// Watches one of the folder's directories. The kernel gives a directory watched already
    /// (under another folder's name: renamed since) the same descriptor: that folder, whose
    /// reports come here from now on, is returned.
    fn watch(&mut self, folder: &Path, dir: Dir) -> std::io::Result<Option<PathBuf>> {
        let path = folder.join(dir_name(dir));
        let wd = self.watches.add(&path, MASK)?;
        let meta = std::fs::metadata(&path)?;
        let id = (meta.dev(), meta.ino());
        let mut displaced = None;
        if let Ok(mut descriptors) = self.descriptors.lock() {
            if let Some((before, ..)) = descriptors.insert(wd.clone(), (folder.to_owned(), dir, id))
            {
                displaced = (before != folder).then_some(before);
            }
        }
        self.by_dir.insert(path, wd);
        Ok(displaced)
    }

    fn unwatch(&mut self, dir: &Path) {
        if let Some(wd) = self.by_dir.remove(dir) {
            if let Ok(mut descriptors) = self.descriptors.lock() {
                descriptors.remove(&wd);
            }
            let _ = self.watches.remove(wd);
        }
    }

    /// What a followed folder's listing calls before a snapshot: every report queued so far,
    /// applied. `false` once the watches are gone.
    /// `dirs` are the folder's directories the watches were added to: a folder renamed away
    /// (its directories go with it) and made again has others, which nothing reports on.
    fn catch_up(&self, folder: PathBuf, dirs: [(u64, u64); 2]) -> CatchUp {
        let reports = Arc::downgrade(&self.reports);
        let open = self.open.clone();
        Arc::new(move || {
            let Some(reports) = reports.upgrade().filter(|_| open.load(Ordering::SeqCst)) else {
                return false;
            };
            if dir_ids(&folder) != Some(dirs) {
                return false;
            }
            let mut reports = reports.lock().unwrap_or_else(|e| e.into_inner());
            // A failed read made every listing lost: read again, not trusted.
            let _ = reports.read_all();
            true
        })
    }
}

fn dir_name(dir: Dir) -> &'static str {
    match dir {
        Dir::New => "new",
        Dir::Cur => "cur",
    }
}

/// The reader thread: waits for reports and has them read, until the `stopped` socket's
/// other end is dropped.
fn wait_for_reports(reports: &Mutex<Reports>, readable: &OwnedFd, stopped: &UnixStream) {
    loop {
        let mut fds = [
            PollFd::new(readable.as_fd(), PollFlags::POLLIN),
            PollFd::new(stopped.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => {
                failed(reports, "poll", &err);
                continue;
            }
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        let read = reports.lock().unwrap_or_else(|e| e.into_inner()).read_all();
        if let Err(err) = read {
            failed(reports, "read", &err);
        }
        // In a busy folder reports come every few microseconds: waking for each cost more
        // CPU than the rest of the reading. Sessions read what is queued themselves before
        // they look (`Watch::catch_up`), so only IDLE's wake-up waits for this pause.
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// How long the reader thread lets reports gather after reading some.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Never seen: the watches go on, and every folder is taken as changed (and read again), so
/// that no change goes unseen meanwhile.
fn failed(reports: &Mutex<Reports>, what: &str, err: &dyn std::fmt::Display) {
    tracing::warn!(error = %err, "inotify: {what} failed: folders are taken as changed");
    reports.lock().unwrap_or_else(|e| e.into_inner()).lost();
    std::thread::sleep(std::time::Duration::from_secs(1));
}

/// The inotify queue and where its reports go: the folders' listings (see
/// `inetkit_maildir::Listing`) and generations. Read under its lock, so that a session that
/// has caught up knows every report queued before has been applied.
struct Reports {
    inotify: Inotify,
    buffer: Vec<u8>,
    descriptors: Descriptors,
    folders: Map,
    count: Arc<AtomicU64>,
}

impl Reports {
    /// Reads and applies every queued report: changes go to the folders' listings, and each
    /// folder changed is bumped once. On an error, every folder is taken as changed.
    fn read_all(&mut self) -> std::io::Result<()> {
        let mut changed = HashSet::new();
        loop {
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.lost();
                    return Err(err);
                }
            };
            // A panic elsewhere while holding a map leaves it as it was: go on with it.
            let mut by_wd = self.descriptors.lock().unwrap_or_else(|e| e.into_inner());
            let folders = self.folders.lock().unwrap_or_else(|e| e.into_inner());
            let mut overflow = false;
            for event in events {
                self.count.fetch_add(1, Ordering::Relaxed);
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                    continue;
                }
                let gone = event
                    .mask
                    .intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF);
                let Some((folder, dir, id)) = (if event.mask.contains(EventMask::IGNORED) {
                    // The directory is gone (or its watch removed).
                    by_wd.remove(&event.wd)
                } else {
                    by_wd.get(&event.wd).cloned()
                }) else {
                    continue;
                };
                // Only to the listing of the directories it follows: not to a folder made
                // again under the name of one renamed away.
                let listing = folders
                    .get(&folder)
                    .filter(|e| {
                        e.dirs
                            .is_some_and(|[new, cur]| id == if dir == Dir::New { new } else { cur })
                    })
                    .and_then(|e| e.listing.as_ref());
                if let Some(listing) = listing {
                    match event.name {
                        _ if gone => listing.unfollow(),
                        Some(name)
                            if event
                                .mask
                                .intersects(EventMask::CREATE | EventMask::MOVED_TO) =>
                        {
                            listing.added(dir, name)
                        }
                        Some(name)
                            if event
                                .mask
                                .intersects(EventMask::DELETE | EventMask::MOVED_FROM) =>
                        {
                            listing.removed(dir, name)
                        }
                        _ => {}
                    }
                }
                changed.insert(folder);
            }
            if overflow {
                // Reports were lost: any folder may have changed.
                drop(folders);
                drop(by_wd);
                self.lost();
                return Ok(());
            }
        }
        let folders = self.folders.lock().unwrap_or_else(|e| e.into_inner());
        changed
            .iter()
            .filter_map(|folder| folders.get(folder))
            .for_each(Entry::bump);
        Ok(())
    }

    /// Every folder may have changed unreported: their listings are read again.
    fn lost(&self) {
        let folders = self.folders.lock().unwrap_or_else(|e| e.into_inner());
        for entry in folders.values() {
            if let Some(listing) = &entry.listing {
                listing.lost();
            }
            entry.bump();
        }
    }
}

impl Watches {
    /// Watches without inotify: sessions compare the folders' directories (`[mail] watch =
    /// "poll"`, for a mail root other hosts change too, which inotify does not see).
    pub fn polling() -> Arc<Watches> {
        Arc::new(Watches {
            folders: Arc::default(),
            watcher: Mutex::new(None),
        })
    }

    /// Without inotify (a limit reached, an odd file system) sessions fall back to comparing
    /// directory modification times.
    pub fn new() -> Arc<Watches> {
        let folders: Map = Arc::default();
        let watcher = match Kernel::start(folders.clone()) {
            Ok(kernel) => Some(kernel),
            Err(err) => {
                tracing::warn!(error = %err, "no inotify: folders are checked by modification time");
                None
            }
        };
        Arc::new(Watches {
            folders,
            watcher: Mutex::new(watcher),
        })
    }

    /// Starts (or joins) watching a folder; `None` if it cannot be watched. A folder watched
    /// has its listing kept from the reports (see `inetkit_maildir::Listing`).
    pub fn watch(self: &Arc<Self>, folder: &Folder) -> Option<Watch> {
        let path = folder.path();
        if let Some(watch) = self.join(path) {
            return Some(watch);
        }
        // Only when a watch is added: joining one stays cheap.
        self.sweep();
        let mut displaced = Vec::new();
        let (dirs, catch_up) = {
            let mut watcher = self.watcher.lock().ok()?;
            let watcher = watcher.as_mut()?;
            for dir in [Dir::New, Dir::Cur] {
                match watcher.watch(path, dir) {
                    Ok(before) => displaced.extend(before),
                    Err(err) => {
                        tracing::warn!(folder = %path.display(), error = %err, "cannot watch a folder");
                        watcher.unwatch(&path.join("new"));
                        return None;
                    }
                }
            }
            let dirs = dir_ids(path);
            (dirs, dirs.map(|d| watcher.catch_up(path.to_owned(), d)))
        };
        let mut folders = self.folders.lock().ok()?;
        let entry = folders.entry(path.to_owned()).or_insert_with(|| Entry {
            generation: Arc::new(AtomicU64::new(0)),
            changed: Arc::new(Notify::new()),
            sessions: 0,
            cache: None,
            dirs: None,
            listing: None,
            idle_since: None,
        });
        entry.dirs = dirs;
        entry.cache = None;
        // The folders whose directories these are under another name now (renamed): their
        // listings get no more reports.
        for other in displaced {
            if let Some(listing) = folders.get(&other).and_then(|e| e.listing.as_ref()) {
                listing.unfollow();
            }
        }
        let entry = folders.get_mut(path)?;
        if let Some(catch_up) = catch_up {
            let listing = folder.listing();
            listing.follow(catch_up);
            entry.listing = Some(listing);
        }
        // Whatever happened while it was not watched.
        entry.bump();
        drop(folders);
        self.join(path)
    }

    /// Whether watching this folder would add a kernel watch: inotify is in use and no
    /// session's watch of the folder's current directories is in place.
    pub fn unwatched(&self, folder: &Path) -> bool {
        if !self.watcher.lock().is_ok_and(|w| w.is_some()) {
            return false;
        }
        let Ok(folders) = self.folders.lock() else {
            return false;
        };
        folders
            .get(folder)
            .is_none_or(|e| e.dirs.is_none() || e.dirs != dir_ids(folder))
    }

    /// Joins the folder's watch if it has one that still watches its directories.
    fn join(self: &Arc<Self>, folder: &Path) -> Option<Watch> {
        let mut folders = self.folders.lock().ok()?;
        let entry = folders.get_mut(folder)?;
        // A folder deleted and made again has other directories, which need their own watch.
        if entry.dirs.is_none() || entry.dirs != dir_ids(folder) {
            return None;
        }
        entry.idle_since = None;
        entry.sessions += 1;
        Some(Watch {
            folder: folder.to_owned(),
            generation: entry.generation.clone(),
            changed: entry.changed.clone(),
            watches: self.clone(),
        })
    }
}

impl Watches {
    /// Stops the watches of folders idle too long, or beyond the number kept.
    ///
    /// The watcher stays locked throughout, so that no session can start watching a folder
    /// between its entry going and its watch being removed. A directory another entry still
    /// watches (a folder renamed: inotify watches the directory, not its name) is left alone.
    fn sweep(&self) {
        let Ok(mut watcher) = self.watcher.lock() else {
            return;
        };
        let now = Instant::now();
        let mut stale = Vec::new();
        if let Ok(mut folders) = self.folders.lock() {
            let mut idle: Vec<(Instant, PathBuf)> = folders
                .iter()
                .filter_map(|(path, e)| e.idle_since.map(|t| (t, path.clone())))
                .collect();
            idle.sort();
            let excess = idle.len().saturating_sub(MAX_IDLE);
            for (i, (since, path)) in idle.into_iter().enumerate() {
                if i < excess || now.duration_since(since) >= KEEP_IDLE {
                    if let Some(entry) = folders.remove(&path) {
                        if let Some(listing) = &entry.listing {
                            listing.unfollow();
                        }
                        stale.push((path, entry.dirs));
                    }
                }
            }
            let live: Vec<(u64, u64)> = folders.values().filter_map(|e| e.dirs).flatten().collect();
            stale.retain(|(_, dirs)| {
                dirs.is_some_and(|dirs| dirs.iter().all(|d| !live.contains(d)))
            });
        }
        if let Some(w) = watcher.as_mut() {
            for (folder, _) in stale {
                w.unwatch(&folder.join("new"));
                w.unwatch(&folder.join("cur"));
            }
        }
    }
}

impl Entry {
    /// The folder changed: a new generation, and sessions in IDLE woken.
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// One session's interest in a folder; dropping it stops the watch when no session is left.
pub struct Watch {
    folder: PathBuf,
    generation: Arc<AtomicU64>,
    changed: Arc<Notify>,
    watches: Arc<Watches>,
}

impl Watch {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Has every report queued so far read (generations bumped), as the reader thread would:
    /// a session about to look at its folder then sees the generation of what it will find,
    /// and can use the snapshot another session kept for it.
    pub fn catch_up(&self) {
        let reports = match self.watches.watcher.lock() {
            Ok(watcher) => watcher.as_ref().map(|k| k.reports.clone()),
            Err(_) => None,
        };
        if let Some(reports) = reports {
            let _ = reports.lock().unwrap_or_else(|e| e.into_inner()).read_all();
        }
    }

    /// Woken on every change (IDLE).
    pub fn notifier(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// The folder's snapshot taken at `generation`, if one is kept.
    pub fn cached(&self, generation: u64, stamp: Stamp) -> Option<Arc<Snapshot>> {
        let folders = self.watches.folders.lock().ok()?;
        match &folders.get(&self.folder)?.cache {
            Some((g, s, snapshot)) if *g == generation && s.is_some() && *s == stamp => {
                Some(snapshot.clone())
            }
            _ => None,
        }
    }

    /// Keeps a snapshot taken after reading `generation` and `stamp`.
    pub fn store(&self, generation: u64, stamp: Stamp, snapshot: Arc<Snapshot>) {
        if let Ok(mut folders) = self.watches.folders.lock() {
            if let Some(entry) = folders.get_mut(&self.folder) {
                // A slow snapshot finishing late does not replace a newer one.
                if entry
                    .cache
                    .as_ref()
                    .is_none_or(|(g, _, _)| *g <= generation)
                {
                    entry.cache = Some((generation, stamp, snapshot));
                }
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Ok(mut folders) = self.watches.folders.lock() else {
            return;
        };
        if let Some(entry) = folders.get_mut(&self.folder) {
            entry.sessions = entry.sessions.saturating_sub(1);
            if entry.sessions == 0 {
                // Kept watching, with its snapshot, for the next session (Watches::sweep
                // ends it).
                entry.idle_since = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
