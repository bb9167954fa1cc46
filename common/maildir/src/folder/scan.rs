//! Reading a folder: the directory scan and the in-process index kept in step with the uid
//! list, under the folder lock (the rules are in the parent module's doc).

use std::collections::HashSet;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use rustc_hash::FxHashSet;

use crate::fsutil::{self, Lock};
use crate::index::{self, Found, FxMap, Index, Sub};
use crate::maildir::{arrival_key, cur_name, name_time, size_field};
use crate::uidlist::{Entry, Loaded, UidList};
use crate::StoreError;

use super::{
    message_files_read, Folder, MessageInfo, Snapshot, DIRS_READ, FILES_READ, TMP_MAX_AGE,
};

/// A folder's `tmp/` is looked at for stale files at most this often by one process.
const TMP_CLEAN_EVERY: Duration = Duration::from_secs(600);

impl Folder {
    /// Reads `new/` and `cur/`: base name -> where the file is now.
    pub(super) fn scan(&self) -> Result<FxMap<Arc<str>, Found>, StoreError> {
        let mut found = FxMap::default();
        self.scan_into(&mut found, 0)?;
        Ok(found)
    }

    /// Reads `new/` and `cur/` into `found`, marking each file seen with `epoch`. A file seen
    /// before under the same name costs a lookup, not new strings. `cur/` comes last, so that
    /// a file another program copied into both counts once, from `cur/`.
    pub(super) fn scan_into(
        &self,
        found: &mut FxMap<Arc<str>, Found>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        DIRS_READ.with(|n| n.set(n.get() + 1));
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
                index::saw(found, sub, name, epoch);
            }
        }
        Ok(())
    }

    /// Brings `index.found` up to date, and returns the epoch its current entries carry: a
    /// listing a watcher keeps (`listing.rs`) is used as it is, once the watcher has caught
    /// up (`caught_up`, called before the index was taken); otherwise the directories are read.
    fn list_dirs(&self, index: &mut Index, caught_up: bool) -> Result<u64, StoreError> {
        if index.apply_pending(caught_up) {
            return Ok(index.epoch);
        }
        let caught_up = caught_up && index.follower.is_some();
        index.epoch += 1;
        let epoch = index.epoch;
        index.live = false;
        self.scan_into(&mut index.found, epoch)?;
        // Trusted from this read on: the watcher's reports since are applied after it.
        index.live = caught_up;
        Ok(epoch)
    }

    /// Has the watcher following this folder, if any, apply every change reported so far.
    /// Call without the index held (applying the reports takes it). `false` when there is no
    /// watcher, or it is gone (then the folder is no longer followed).
    pub(super) fn catch_up(&self) -> bool {
        let Some(follower) = self.index().follower.clone() else {
            return false;
        };
        if follower() {
            return true;
        }
        let mut index = self.index();
        if index
            .follower
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &follower))
        {
            index.follower = None;
            index.live = false;
        }
        false
    }

    /// Where the message with this base is now. Call with the lock held (see
    /// [`locate`](Self::locate)).
    pub(super) fn find(&self, base: &str) -> Result<Found, StoreError> {
        self.locate(&[base])?
            .pop()
            .flatten()
            .ok_or_else(|| StoreError::MessageGone {
                base: base.to_owned(),
            })
    }

    /// Where the messages with these bases are now, in the same order (`None`: gone): from
    /// the listing a watcher keeps, else one read of the directories. Call with the lock held:
    /// every rename and unlink made under it has then been reported whole, so a caught-up
    /// listing that lacks a base means the message is gone, when whoever removed it also
    /// dropped its uid list line (as our expunges do, under the lock). A base the list still
    /// has is looked for in the directories: a program that renames without our lock can be
    /// caught between a rename's two reports, and taking such a message for gone would
    /// forget its UID.
    pub(super) fn locate(&self, bases: &[&str]) -> Result<Vec<Option<Found>>, StoreError> {
        let caught_up = self.catch_up();
        {
            let mut index = self.index();
            if index.apply_pending(caught_up) {
                let located: Vec<Option<Found>> =
                    bases.iter().map(|b| index.found.get(*b).cloned()).collect();
                let missing: FxHashSet<&str> = bases
                    .iter()
                    .zip(&located)
                    .filter(|(_, found)| found.is_none())
                    .map(|(base, _)| *base)
                    .collect();
                // One pass over the list, however many are missing (an EXPUNGE of thousands
                // another session expunged first).
                let unsure = !missing.is_empty()
                    && index.list.as_ref().is_none_or(|cached| {
                        cached
                            .list
                            .entries
                            .iter()
                            .any(|e| missing.contains(&*e.base))
                    });
                if !unsure {
                    return Ok(located);
                }
            }
        }
        let mut found = self.scan()?;
        Ok(bases.iter().map(|b| found.remove(*b)).collect())
    }

    /// Where the listing a watcher keeps (caught up first) has the message with this base;
    /// `None` without a trusted listing. A hint, not under the lock: the file may have moved
    /// on by the time it is opened.
    pub(super) fn listed(&self, base: &str) -> Option<Arc<str>> {
        let caught_up = self.catch_up();
        let mut index = self.index();
        if !index.apply_pending(caught_up) {
            return None;
        }
        index.found.get(base).map(|found| found.rel.clone())
    }

    /// A new list for this folder, under a UIDVALIDITY never used in this mailbox before.
    pub(super) fn fresh_list(&self) -> Result<UidList, StoreError> {
        Ok(UidList::new(fsutil::next_uid_validity(
            &self.mailbox,
            self.owner,
        )?))
    }

    /// A snapshot taken without the folder lock, when that is safe: the uid list is the one
    /// this process last read or wrote under the lock (same file, size and times, so it is not
    /// read again and never seen half-appended), it needs no repair, and the scan agrees with
    /// it line for line (every line's file found, no file without a line, and for `claim`
    /// nothing in `new/`). A change another process makes meanwhile shows up as a difference
    /// and sends the caller the locked way (`None`), as does any error. Most looks at a busy
    /// folder end here: setting flags renames files and leaves the list alone.
    pub(super) fn sync_unlocked(&self, claim: bool) -> Option<Snapshot> {
        let caught_up = self.catch_up();
        // No folder lock is taken while the index is held (the lock order), so taking the
        // index alone is safe.
        let mut index = self.index();
        let list = {
            let cached = index.list.as_ref()?;
            let now = crate::index::FileState::of(&self.path.join(crate::uidlist::FILE)).ok()?;
            if cached.state != now || cached.list.needs_rewrite {
                return None;
            }
            cached.list.clone()
        };
        if list.entries.iter().any(Entry::incomplete) {
            return None;
        }
        let epoch = self.list_dirs(&mut index, caught_up).ok()?;
        let found = &index.found;
        let agrees = list.entries.iter().all(|e| {
            found
                .get(&e.base)
                .is_some_and(|f| f.epoch == epoch && !(claim && f.sub == Sub::New))
        }) && found.values().filter(|f| f.epoch == epoch).count()
            == list.entries.len();
        if !agrees {
            return None;
        }
        index.found.retain(|_, f| f.epoch == epoch);
        let found = &index.found;
        Some(Snapshot {
            uid_validity: list.validity,
            uid_next: list.next_uid,
            messages: list
                .entries
                .iter()
                .map(|e| message_info(e, &found[&e.base]))
                .collect(),
        })
    }

    /// The heart of `snapshot`: brings the uid list up to date with the directories.
    pub(super) fn sync_locked(&self, lock: &Lock, claim: bool) -> Result<Snapshot, StoreError> {
        if self.tmp_clean_due() {
            self.clean_tmp();
        }
        let caught_up = self.catch_up();
        let mut index = self.index();
        let result = if lock.existed {
            self.sync_indexed(lock, claim, caught_up, &mut index)
        } else {
            // Never locked, so never indexed: every name is read and a uid list written and
            // synced. Long for a folder another program filled: through the hand-off hook.
            crate::filelock::hand_off(|| self.sync_indexed(lock, claim, caught_up, &mut index))
        };
        if result.is_err() {
            index.forget();
        }
        result
    }

    pub(super) fn sync_indexed(
        &self,
        lock: &Lock,
        claim: bool,
        caught_up: bool,
        index: &mut Index,
    ) -> Result<Snapshot, StoreError> {
        let epoch = self.list_dirs(index, caught_up)?;
        let (mut list, mut rewrite) = match UidList::load_cached(&self.path, &mut index.list)? {
            Loaded::Ok(list) => {
                let rewrite = list.needs_rewrite;
                (list, rewrite)
            }
            Loaded::Missing => {
                // The lock file outlives the list: without it, this folder was never indexed
                // (a new folder, or one another program filled), and nothing was lost.
                // Dovecot's list only for a folder we never indexed: once we have numbered
                // messages, its list is stale, and its UIDs could be ones we gave others.
                let dovecot = (!lock.existed)
                    .then(|| UidList::from_dovecot(&self.path))
                    .flatten();
                if let Some(list) = dovecot {
                    tracing::info!(folder = %self.path.display(), uidvalidity = list.validity,
                        "took over the UIDs of dovecot-uidlist");
                    (Arc::new(list), true)
                } else {
                    if lock.existed && !index.found.is_empty() {
                        tracing::warn!(folder = %self.path.display(), messages = index.found.len(),
                            "uid list missing: numbering every message afresh under a new UIDVALIDITY");
                    }
                    (Arc::new(self.fresh_list()?), true)
                }
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
        // So with a followed listing, as in `locate`: a program renaming without our lock can
        // be caught between a rename's two reports. (The read adds to the listing under the
        // same epoch.)
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
            for entry in &mut Arc::make_mut(&mut list).entries {
                if entry.incomplete() {
                    if let Some(f) = found.get(&entry.base) {
                        if let Some(filled) = self.index_entry(entry.uid, &entry.base, f)? {
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

    /// A uid list line for a message seen for the first time: size and date come from the
    /// name, or else from the file's metadata, once (its size with CRLF line ends is measured
    /// when asked for: [`Folder::measure`]). `None` if the file vanished meanwhile.
    pub(super) fn index_entry(
        &self,
        uid: u32,
        base: &Arc<str>,
        found: &Found,
    ) -> Result<Option<Entry>, StoreError> {
        let entry = Entry::new(uid, base.clone(), None, None, None);
        if !entry.incomplete() {
            return Ok(Some(entry));
        }
        let (mut size, mut time) = (None, None);
        let path = self.path.join(&*found.rel);
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(StoreError::io("reading", &path, err)),
        };
        if size_field(base, 'S').is_none() {
            size = Some(meta.len());
        }
        if name_time(base).is_none() {
            let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
            time = Some(mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        }
        Ok(Some(Entry::new(uid, base.clone(), size, None, time)))
    }

    /// [`index_entry`](Self::index_entry) for many new messages (a folder seen for the first
    /// time: each file read once), spread over the CPUs; UIDs are left 0 for the caller.
    pub(super) fn index_entries(
        &self,
        bases: &[Arc<str>],
        found: &FxMap<Arc<str>, Found>,
    ) -> Result<Vec<Option<Entry>>, StoreError> {
        let work = |bases: &[Arc<str>]| {
            let entries: Result<Vec<_>, _> = bases
                .iter()
                .map(|base| self.index_entry(0, base, &found[base]))
                .collect();
            (entries, message_files_read())
        };
        // Few: here, without asking for the CPU count (which reads cgroup files each time).
        if bases.len() < 256 {
            return work(bases).0;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        if threads < 2 {
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
    pub(super) fn move_to_cur(
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

    /// Whether `tmp/` is to be cleaned now: files there turn stale after a day and a half, so
    /// looking more than every [`TMP_CLEAN_EVERY`] (a busy folder syncs many times a second)
    /// finds nothing more. Marked as cleaned when it says so.
    fn tmp_clean_due(&self) -> bool {
        let mut index = self.index();
        let now = Instant::now();
        if index
            .tmp_cleaned
            .is_some_and(|at| now.duration_since(at) < TMP_CLEAN_EVERY)
        {
            return false;
        }
        index.tmp_cleaned = Some(now);
        true
    }

    /// Removes files a dead writer left in `tmp/`. Failures only cost disk space: logged.
    pub(super) fn clean_tmp(&self) {
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

pub(super) fn message_info(e: &Entry, found: &Found) -> MessageInfo {
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
