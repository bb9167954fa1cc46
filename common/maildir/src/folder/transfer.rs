//! Copying and moving messages into another folder (IMAP COPY and MOVE).
//!
//! - A move renames each file into the target's `new/`, so that a message is in exactly one
//!   folder at every instant, whenever the process is killed (RFC 6851 §3.3).
//! - A copy writes every message to the target's `tmp/` first and then renames them all into
//!   place; on any error (a full disk) what it wrote is removed and the target is left as it
//!   was (RFC 3501 §6.4.7).
//!
//! Both hold the target's folder lock (a move the source's too; two locks are taken in path
//! order, so that moves in opposite directions cannot deadlock) from the first rename into the
//! target until its uid list numbers the new messages: no other inetkit process sees part of
//! the operation. A process killed in between loses nothing: a file the target's uid list
//! lacks gets the next UID at the target's next snapshot, and a source line whose file has
//! gone is dropped at the source's next snapshot, as for any expunge.
//!
//! Messages get a new base name in the target (with the source's internal date and sizes), so
//! that a base is never in a folder twice, whatever another program copied there before. They
//! arrive in `new/`, flags in their names, so that the next session to select the target sees
//! them `\Recent` (RFC 3501 §6.4.7).

use std::collections::HashSet;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{message_info, Folder, MessageInfo, NAME_ATTEMPTS};
use crate::faults::{self, Step};
use crate::fsutil::{self, Lock};
use crate::index::{Found, FxMap, Sub};
use crate::maildir::{name_time, new_name, size_field, unique_name, SizeCounter};
use crate::uidlist::{Entry, Loaded, UidList};
use crate::{Flags, StoreError};

/// What [`Folder::copy_to`] or [`Folder::move_to`] did: what IMAP's COPYUID reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// The target folder's UIDVALIDITY.
    pub uid_validity: u32,
    /// Each message copied or moved, in the order given: its UID in the source folder and
    /// the message as it now is in the target. Messages found gone (expunged by another
    /// session since the caller's snapshot) are left out.
    pub messages: Vec<(u32, MessageInfo)>,
}

/// A message renamed into the target, and where from (to put it back).
struct Moved {
    source_uid: u32,
    from: PathBuf,
    to: PathBuf,
    base: Arc<str>,
    flags: Flags,
    size: u64,
    vsize: Option<u64>,
    internal_date: SystemTime,
}

/// A copy written to the target's `tmp/`, and once placed, where it went.
struct Written {
    source_uid: u32,
    tmp: PathBuf,
    sizes: SizeCounter,
    date: SystemTime,
    flags: Flags,
    placed: Option<(PathBuf, Arc<str>)>,
}

/// A message the target's uid list is to number.
struct Arrival {
    base: Arc<str>,
    size: u64,
    vsize: Option<u64>,
    date: SystemTime,
}

impl Folder {
    /// Moves messages into `target` by renaming their files into its `new/`, with their flags
    /// passed through `flags` (IMAP keywords are letters per folder), and numbers them there.
    /// A file another process renamed since the caller's snapshot is followed; one deleted
    /// since is skipped. On an error every message already moved is moved back, so the
    /// error leaves both folders as they were.
    ///
    /// Moving within one folder gives the messages new UIDs, as a move elsewhere would.
    pub fn move_to(
        &self,
        target: &Folder,
        msgs: &[MessageInfo],
        flags: &dyn Fn(Flags) -> Flags,
    ) -> Result<Transferred, StoreError> {
        let same = self.path == target.path;
        let (source_lock, target_lock) = if same {
            (self.lock()?, None)
        } else if self.path < target.path {
            let source = self.lock()?;
            (source, Some(target.lock()?))
        } else {
            let target = target.lock()?;
            (self.lock()?, Some(target))
        };
        let target_lock = target_lock.as_ref().unwrap_or(&source_lock);

        let mut moved = Vec::new();
        let numbered = self
            .move_files(target, msgs, flags, &mut moved)
            .and_then(|()| {
                let arrivals: Vec<Arrival> = moved
                    .iter()
                    .map(|m| Arrival {
                        base: m.base.clone(),
                        size: m.size,
                        vsize: m.vsize,
                        date: m.internal_date,
                    })
                    .collect();
                target.number_locked(target_lock, &arrivals)
            });
        let (uid_validity, uids) = match numbered {
            Ok(numbered) => numbered,
            Err(err) => {
                move_back(&moved);
                return Err(err);
            }
        };

        // The source's lines for them go now, so that its next snapshot need not look twice;
        // should this fail, that snapshot drops them.
        let gone: HashSet<&str> = msgs.iter().map(|m| &*m.base).collect();
        if let Err(err) = self.forget_locked(&gone) {
            tracing::warn!(folder = %self.path.display(), error = %err,
                "cannot drop moved messages from the uid list");
        }
        let messages = moved
            .into_iter()
            .zip(uids)
            .filter_map(|(m, uid)| {
                let uid = uid?;
                let name = new_name(&m.base, m.flags);
                let found = Found::new(Sub::New, &name, 0);
                let entry = entry_for(uid, &m.base, m.size, m.vsize, m.internal_date);
                Some((m.source_uid, message_info(&entry, &found)))
            })
            .collect();
        Ok(Transferred {
            uid_validity,
            messages,
        })
    }

    /// The renames of [`move_to`](Self::move_to), recorded in `moved` as they happen. Call
    /// with both folder locks held.
    fn move_files(
        &self,
        target: &Folder,
        msgs: &[MessageInfo],
        flags: &dyn Fn(Flags) -> Flags,
        moved: &mut Vec<Moved>,
    ) -> Result<(), StoreError> {
        let target_new = target.path.join(Sub::New.dir());
        for msg in msgs {
            let mut from = self.path.join(&*msg.file);
            let mut current = msg.flags;
            let mut followed = false;
            let mut attempts = 0;
            loop {
                // The size with CRLF line ends in the name when it is known (a message not
                // measured yet is not read for it: it is measured when asked for, as before).
                let vsize = msg.vsize.map_or(String::new(), |w| format!(",W={w}"));
                let base: Arc<str> =
                    format!("{},S={}{vsize}", unique_name(msg.internal_date), msg.size,).into();
                let new_flags = flags(current);
                let to = target_new.join(new_name(&base, new_flags));
                match faults::check(Step::Move).and_then(|()| fsutil::move_noreplace(&from, &to)) {
                    Ok(()) => {
                        moved.push(Moved {
                            source_uid: msg.uid,
                            from,
                            to,
                            base,
                            flags: new_flags,
                            size: msg.size,
                            vsize: msg.vsize,
                            internal_date: msg.internal_date,
                        });
                        break;
                    }
                    // Renamed since the snapshot (flags changed, or new/ to cur/ by a program
                    // that does not lock): look for it once.
                    Err(err) if err.kind() == ErrorKind::NotFound && !followed => {
                        followed = true;
                        match self.find(&msg.base) {
                            Ok(found) => {
                                current = found.flags;
                                from = self.path.join(&*found.rel);
                            }
                            Err(StoreError::MessageGone { .. }) => break,
                            Err(err) => return Err(err),
                        }
                    }
                    Err(err)
                        if err.kind() == ErrorKind::AlreadyExists && attempts < NAME_ATTEMPTS =>
                    {
                        attempts += 1;
                    }
                    Err(err) => return Err(StoreError::io("moving", &from, err)),
                }
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        // The target's entries first: should the machine stop between the two, the message
        // is in the target (and perhaps still in the source), never in neither.
        fsutil::sync_dir(&target_new)?;
        for sub in [Sub::New, Sub::Cur] {
            fsutil::sync_dir(&self.path.join(sub.dir()))?;
        }
        Ok(())
    }

    /// Copies messages into `target`, with their flags passed through `flags`, and numbers
    /// them there. All or nothing: on any error (a full disk, a quota) the copies made so far
    /// are removed and the target is as it was. A message deleted since the caller's snapshot
    /// is skipped.
    pub fn copy_to(
        &self,
        target: &Folder,
        msgs: &[MessageInfo],
        flags: &dyn Fn(Flags) -> Flags,
    ) -> Result<Transferred, StoreError> {
        let mut written = Vec::new();
        // Written without a lock: tmp/ is nobody else's business.
        if let Err(err) = self.write_copies(target, msgs, flags, &mut written) {
            discard(&written);
            return Err(err);
        }
        let lock = match target.lock() {
            Ok(lock) => lock,
            Err(err) => {
                discard(&written);
                return Err(err);
            }
        };
        let numbered = target.publish_locked(&lock, &mut written);
        let (uid_validity, uids) = match numbered {
            Ok(numbered) => numbered,
            Err(err) => {
                // Still under the lock: no inetkit process saw them.
                discard(&written);
                return Err(err);
            }
        };
        drop(lock);

        let mut messages = Vec::with_capacity(written.len());
        for (w, uid) in written.into_iter().zip(uids) {
            let (Some((path, base)), Some(uid)) = (w.placed, uid) else {
                continue;
            };
            // After the rename: the tmp/ cleaner must never see an old date on a live file.
            if let Err(err) = File::open(&path).and_then(|f| f.set_modified(w.date)) {
                tracing::debug!(path = %path.display(), error = %err, "cannot set mtime");
            }
            let name = new_name(&base, w.flags);
            let entry = entry_for(uid, &base, w.sizes.size, Some(w.sizes.vsize), w.date);
            let found = Found::new(Sub::New, &name, 0);
            messages.push((w.source_uid, message_info(&entry, &found)));
        }
        Ok(Transferred {
            uid_validity,
            messages,
        })
    }

    /// Writes a copy of each message into `target`'s `tmp/`, recorded in `written`.
    fn write_copies(
        &self,
        target: &Folder,
        msgs: &[MessageInfo],
        flags: &dyn Fn(Flags) -> Flags,
        written: &mut Vec<Written>,
    ) -> Result<(), StoreError> {
        for msg in msgs {
            let mut file = match self.open(msg) {
                Ok(file) => file,
                Err(StoreError::MessageGone { .. }) => continue,
                Err(err) => return Err(err),
            };
            let (tmp, _, sizes) = target.write_tmp(&mut file, msg.internal_date)?;
            written.push(Written {
                source_uid: msg.uid,
                tmp,
                sizes,
                date: msg.internal_date,
                flags: flags(msg.flags),
                placed: None,
            });
        }
        Ok(())
    }

    /// Renames the copies from `tmp/` into place, makes that durable, and numbers them. Call
    /// with the folder lock held.
    fn publish_locked(
        &self,
        lock: &Lock,
        written: &mut [Written],
    ) -> Result<(u32, Vec<Option<u32>>), StoreError> {
        for w in written.iter_mut() {
            let (path, base) = self.place(&w.tmp, w.date, Sub::New, w.flags, &w.sizes)?;
            w.placed = Some((path, base.into()));
        }
        if !written.is_empty() {
            fsutil::sync_dir(&self.path.join(Sub::New.dir()))?;
        }
        let arrivals: Vec<Arrival> = written
            .iter()
            .filter_map(|w| {
                let (_, base) = w.placed.as_ref()?;
                Some(Arrival {
                    base: base.clone(),
                    size: w.sizes.size,
                    vsize: Some(w.sizes.vsize),
                    date: w.date,
                })
            })
            .collect();
        self.number_locked(lock, &arrivals)
    }

    /// Gives messages just renamed into the folder their UIDs, in the order given, and returns
    /// the UIDVALIDITY with them (`None` for a message that vanished meanwhile). Call with the
    /// folder lock held. On an error the uid list is as it was.
    fn number_locked(
        &self,
        lock: &Lock,
        arrivals: &[Arrival],
    ) -> Result<(u32, Vec<Option<u32>>), StoreError> {
        let mut index = self.index();
        // The quick way: lines appended to a sound list, without reading the directories.
        if let Loaded::Ok(mut list) = UidList::load_cached(&self.path, &mut index.list)? {
            let room = u64::from(list.next_uid) + arrivals.len() as u64 + 1;
            if !list.needs_rewrite && room < u64::from(u32::MAX) {
                let first = list.next_uid;
                let added: Vec<Entry> = (first..)
                    .zip(arrivals)
                    .map(|(uid, a)| entry_for(uid, &a.base, a.size, a.vsize, a.date))
                    .collect();
                if added.is_empty() {
                    return Ok((list.validity, Vec::new()));
                }
                let edited = Arc::make_mut(&mut list);
                edited.next_uid = first + added.len() as u32;
                edited.entries.extend(added.iter().cloned());
                list.append(&self.path, &added, &mut index.list)?;
                let uids = added.iter().map(|e| Some(e.uid)).collect();
                return Ok((list.validity, uids));
            }
        }
        drop(index);
        // A list missing, corrupt or ending in a partial line: a snapshot mends it, and
        // numbers these with the rest.
        let snapshot = self.sync_locked(lock, false)?;
        let by_base: FxMap<&str, u32> = snapshot
            .messages
            .iter()
            .map(|m| (&*m.base, m.uid))
            .collect();
        let uids = arrivals
            .iter()
            .map(|a| by_base.get(&*a.base).copied())
            .collect();
        Ok((snapshot.uid_validity, uids))
    }
}

/// A uid list line, with the values the base name does not carry.
fn entry_for(uid: u32, base: &Arc<str>, size: u64, vsize: Option<u64>, date: SystemTime) -> Entry {
    let secs = date.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Entry::new(
        uid,
        base.clone(),
        size_field(base, 'S').is_none().then_some(size),
        size_field(base, 'W').is_none().then_some(vsize).flatten(),
        name_time(base).is_none().then_some(secs),
    )
}

/// Undoes the renames of a failed move, last first.
fn move_back(moved: &[Moved]) {
    for m in moved.iter().rev() {
        if let Err(err) = fsutil::move_noreplace(&m.to, &m.from) {
            // Still in exactly one folder: the target's next snapshot numbers it.
            tracing::warn!(from = %m.to.display(), to = %m.from.display(), error = %err,
                "cannot move a message back after a failed move");
        }
    }
}

/// Removes the files of a failed copy, wherever they got to.
fn discard(written: &[Written]) {
    for w in written {
        let path: &Path = match &w.placed {
            Some((path, _)) => path,
            None => &w.tmp,
        };
        if let Err(err) = std::fs::remove_file(path) {
            if err.kind() != ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err,
                    "cannot remove part of a failed copy");
            }
        }
    }
}

#[cfg(test)]
mod tests;
