//! Which folders changed: inotify on the `new/` and `cur/` directories of every folder some
//! session has selected. A change bumps the folder's generation and wakes sessions in IDLE;
//! sessions compare generations instead of rescanning directories.
//!
//! Only what changes a folder's listing is asked of the kernel (a file created, renamed,
//! removed or written, a directory gone): not reads. Every FETCH opens message files, and a
//! watcher told of every open (as the `notify` crate asks) woke for each, which was half of
//! imapd's CPU under imaptest's persistent sessions.
//!
//! The folder's last snapshot is kept with the generation it was taken at, so that the sessions
//! of one folder scan it once per change rather than once each. The generation is read before
//! the snapshot: a change the snapshot missed has bumped it since, so nothing is served stale.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use inetkit_maildir::Snapshot;
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
/// The folder each watch descriptor reports for.
type Descriptors = Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>;

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

/// The inotify instance's watches, added and removed here while a thread of its own reads
/// its events (and stops when this goes: see [`Kernel::start`]).
struct Kernel {
    watches: inotify::Watches,
    descriptors: Descriptors,
    /// A watched directory's descriptor, to remove it.
    by_dir: HashMap<PathBuf, WatchDescriptor>,
    /// Its other end is in the reader thread: dropping this wakes and stops it.
    _stop: UnixStream,
    /// Events the kernel reported (which the tests read).
    #[cfg_attr(not(test), allow(dead_code))]
    reports: Arc<AtomicU64>,
}

impl Kernel {
    fn start(folders: Map) -> std::io::Result<Kernel> {
        let inotify = Inotify::init()?;
        let (stop, stopped) = UnixStream::pair()?;
        let descriptors = Descriptors::default();
        let reports = Arc::new(AtomicU64::new(0));
        let kernel = Kernel {
            watches: inotify.watches(),
            descriptors: descriptors.clone(),
            by_dir: HashMap::new(),
            _stop: stop,
            reports: reports.clone(),
        };
        let reader = Reader {
            descriptors,
            folders,
            reports,
        };
        std::thread::Builder::new()
            .name("imapd-inotify".into())
            .spawn(move || reader.run(inotify, &stopped))?;
        Ok(kernel)
    }

    fn watch(&mut self, dir: PathBuf, folder: &Path) -> std::io::Result<()> {
        let wd = self.watches.add(&dir, MASK)?;
        if let Ok(mut descriptors) = self.descriptors.lock() {
            descriptors.insert(wd.clone(), folder.to_owned());
        }
        self.by_dir.insert(dir, wd);
        Ok(())
    }

    fn unwatch(&mut self, dir: &Path) {
        if let Some(wd) = self.by_dir.remove(dir) {
            if let Ok(mut descriptors) = self.descriptors.lock() {
                descriptors.remove(&wd);
            }
            let _ = self.watches.remove(wd);
        }
    }
}

/// What the reader thread shares with the [`Kernel`] and the [`Watches`].
struct Reader {
    descriptors: Descriptors,
    folders: Map,
    reports: Arc<AtomicU64>,
}

impl Reader {
    /// Bumps the folders the kernel reports, once per folder per read, until the `stopped`
    /// socket's other end is dropped.
    fn run(self, mut inotify: Inotify, stopped: &UnixStream) {
        // Never seen: the watches go on, and every folder is taken as changed, so that no
        // change goes unseen meanwhile.
        let failed = |what: &str, err: &dyn std::fmt::Display| {
            tracing::warn!(error = %err, "inotify: {what} failed: folders are taken as changed");
            bump_all(&self.folders);
            std::thread::sleep(std::time::Duration::from_secs(1));
        };
        let mut buffer = [0u8; 8192];
        loop {
            let mut fds = [
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(stopped.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    failed("poll", &err);
                    continue;
                }
            }
            if fds[1].any().unwrap_or(true) {
                return;
            }
            let events = match inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    failed("read", &err);
                    continue;
                }
            };
            let mut changed = HashSet::new();
            // A panic elsewhere while holding the map leaves it as it was: go on with it.
            let mut by_wd = self.descriptors.lock().unwrap_or_else(|e| e.into_inner());
            for event in events {
                self.reports.fetch_add(1, Ordering::Relaxed);
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    // Events were lost: any folder may have changed.
                    drop(by_wd);
                    bump_all(&self.folders);
                    changed.clear();
                    break;
                }
                let folder = if event.mask.contains(EventMask::IGNORED) {
                    // The directory is gone (or its watch removed).
                    by_wd.remove(&event.wd)
                } else {
                    by_wd.get(&event.wd).cloned()
                };
                changed.extend(folder);
            }
            if changed.is_empty() {
                continue;
            }
            if let Ok(folders) = self.folders.lock() {
                changed
                    .iter()
                    .filter_map(|folder| folders.get(folder))
                    .for_each(Entry::bump);
            }
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

    /// Starts (or joins) watching a folder; `None` if it cannot be watched.
    pub fn watch(self: &Arc<Self>, folder: &Path) -> Option<Watch> {
        if let Some(watch) = self.join(folder) {
            return Some(watch);
        }
        // Only when a watch is added: joining one stays cheap.
        self.sweep();
        {
            let mut watcher = self.watcher.lock().ok()?;
            let watcher = watcher.as_mut()?;
            for sub in ["new", "cur"] {
                if let Err(err) = watcher.watch(folder.join(sub), folder) {
                    tracing::warn!(folder = %folder.display(), error = %err, "cannot watch a folder");
                    watcher.unwatch(&folder.join("new"));
                    return None;
                }
            }
        }
        let mut folders = self.folders.lock().ok()?;
        let entry = folders.entry(folder.to_owned()).or_insert_with(|| Entry {
            generation: Arc::new(AtomicU64::new(0)),
            changed: Arc::new(Notify::new()),
            sessions: 0,
            cache: None,
            dirs: None,
            idle_since: None,
        });
        entry.dirs = dir_ids(folder);
        entry.cache = None;
        // Whatever happened while it was not watched.
        entry.bump();
        drop(folders);
        self.join(folder)
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

fn bump_all(map: &Map) {
    if let Ok(folders) = map.lock() {
        folders.values().for_each(Entry::bump);
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
