//! Which folders changed: inotify (through `notify`) on the `new/` and `cur/` directories of
//! every folder some session has selected. A change bumps the folder's generation and wakes
//! sessions in IDLE; sessions compare generations instead of rescanning directories.
//!
//! The folder's last snapshot is kept with the generation it was taken at, so that the sessions
//! of one folder scan it once per change rather than once each. The generation is read before
//! the snapshot: a change the snapshot missed has bumped it since, so nothing is served stale.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use inetkit_maildir::Snapshot;
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
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

pub struct Watches {
    folders: Map,
    watcher: Mutex<Option<RecommendedWatcher>>,
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
        let map = folders.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            let Ok(event) = event else {
                // An error (queue overflow): treat every folder as changed.
                bump_all(&map);
                return;
            };
            if event.need_rescan() {
                bump_all(&map);
                return;
            }
            // Reading a message is no change.
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let Ok(folders) = map.lock() else { return };
            for path in &event.paths {
                // <folder>/new/<file> or <folder>/cur/<file> (or the directory itself).
                for folder in path.ancestors().skip(1).take(2) {
                    if let Some(entry) = folders.get(folder) {
                        entry.generation.fetch_add(1, Ordering::SeqCst);
                        entry.changed.notify_waiters();
                    }
                }
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
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
    ///
    /// `notify` adds a watch by asking its event thread and waiting for the answer, and that
    /// thread runs our handler, which takes the folder map's lock: so the map is never locked
    /// while the watcher is called.
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
                if let Err(err) = watcher.watch(&folder.join(sub), RecursiveMode::NonRecursive) {
                    tracing::warn!(folder = %folder.display(), error = %err, "cannot watch a folder");
                    let _ = watcher.unwatch(&folder.join("new"));
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
        entry.generation.fetch_add(1, Ordering::SeqCst);
        drop(folders);
        self.join(folder)
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
                let _ = w.unwatch(&folder.join("new"));
                let _ = w.unwatch(&folder.join("cur"));
            }
        }
    }
}

fn bump_all(map: &Map) {
    if let Ok(folders) = map.lock() {
        for entry in folders.values() {
            entry.generation.fetch_add(1, Ordering::SeqCst);
            entry.changed.notify_waiters();
        }
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
