//! A listing a watcher keeps: snapshots use it as reported, without reading the directories,
//! and read them again whenever the reports cannot be trusted.

use std::ffi::OsStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::*;
use crate::{directory_reads, Dir};

/// Renames `cur/<from>` to `cur/<to>` behind the store's back (as another mail program).
fn rename_in_cur(folder: &Folder, from: &str, to: &str) {
    let cur = folder.path().join("cur");
    std::fs::rename(cur.join(from), cur.join(to)).unwrap();
}

fn name_of(msg: &MessageInfo) -> &str {
    msg.file().trim_start_matches("cur/")
}

fn files(snapshot: &Snapshot) -> Vec<(u32, String)> {
    let files = snapshot.messages.iter();
    files.map(|m| (m.uid, m.file().to_owned())).collect()
}

#[test]
fn a_followed_folder_is_not_read_again_and_follows_the_reports() {
    let dir = TestDir::new();
    let store = dir.store();
    for i in 0..3 {
        deliver(&store, "kim", &format!("Subject: {i}\n\n"));
    }
    let inbox = store.mailbox("kim").unwrap().inbox();
    let first = inbox.claim_new().unwrap();
    assert_eq!(first.messages.len(), 3);

    let caught_up = Arc::new(AtomicBool::new(true));
    let listing = inbox.listing();
    let answer = caught_up.clone();
    listing.follow(Arc::new(move || answer.load(Ordering::SeqCst)));
    // Trusted from the first read after `follow`.
    let reads = directory_reads();
    assert_eq!(files(&inbox.snapshot().unwrap()), files(&first));
    assert_eq!(directory_reads(), reads + 1);
    assert_eq!(files(&inbox.snapshot().unwrap()), files(&first));
    assert_eq!(
        directory_reads(),
        reads + 1,
        "a followed folder was read again"
    );

    // A flag change another program makes, reported: seen without a read.
    let old = name_of(&first.messages[0]).to_owned();
    let new = old.replace(":2,", ":2,S");
    rename_in_cur(&inbox, &old, &new);
    listing.removed(Dir::Cur, OsStr::new(&old));
    listing.added(Dir::Cur, OsStr::new(&new));
    let after = inbox.snapshot().unwrap();
    assert_eq!(after.messages[0].flags, Flags::SEEN);
    assert_eq!(after.messages[0].uid, first.messages[0].uid);

    // A delivery (into new/) and an expunge (by a session, which drops the message's line),
    // reported: the new message gets the next UID, the other is gone, still without reading
    // the directories. (A file another program removes is looked for once more: a read.)
    let delivered = deliver(&store, "kim", "Subject: late\n\n");
    listing.added(Dir::New, OsStr::new(&delivered.base));
    let gone = name_of(&first.messages[1]).to_owned();
    inbox.delete(&first.messages[1..2]).unwrap();
    listing.removed(Dir::Cur, OsStr::new(&gone));
    let after = inbox.snapshot().unwrap();
    let uids: Vec<u32> = after.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 3, 4]);
    assert_eq!(&*after.messages[2].base, delivered.base);
    assert_eq!(
        directory_reads(),
        reads + 1,
        "a reported change made a read"
    );

    // What is not reported is not seen (the watcher's promise is what makes this safe)...
    let old = name_of(&after.messages[0]).to_owned();
    rename_in_cur(&inbox, &old, &old.replace(":2,S", ":2,F"));
    assert_eq!(inbox.snapshot().unwrap().messages[0].flags, Flags::SEEN);
    // ...until reports are said lost: then the folder is read.
    listing.lost();
    assert_eq!(inbox.snapshot().unwrap().messages[0].flags, Flags::FLAGGED);
    assert_eq!(directory_reads(), reads + 2);
    inbox.snapshot().unwrap();
    assert_eq!(directory_reads(), reads + 2);

    // A watcher that can no longer catch up is dropped: every snapshot reads again.
    caught_up.store(false, Ordering::SeqCst);
    inbox.snapshot().unwrap();
    inbox.snapshot().unwrap();
    assert_eq!(directory_reads(), reads + 4);
    caught_up.store(true, Ordering::SeqCst);
    inbox.snapshot().unwrap();
    assert_eq!(
        directory_reads(),
        reads + 5,
        "an unfollowed folder was trusted"
    );
}

#[test]
fn reports_applied_after_a_read_that_saw_them_change_nothing() {
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "kim", "Subject: 1\n\n");
    let inbox = store.mailbox("kim").unwrap().inbox();
    let listing = inbox.listing();
    listing.follow(Arc::new(|| true));
    let first = inbox.claim_new().unwrap();
    let name = name_of(&first.messages[0]).to_owned();
    // Two flag changes, both already seen by a read, their reports arriving after it: the
    // listing ends where the directory is, not at the first report's name.
    let seen = name.replace(":2,", ":2,S");
    let flagged = name.replace(":2,", ":2,FS");
    rename_in_cur(&inbox, &name, &seen);
    rename_in_cur(&inbox, &seen, &flagged);
    listing.lost();
    assert_eq!(
        inbox.snapshot().unwrap().messages[0].flags,
        Flags::FLAGGED | Flags::SEEN
    );
    listing.removed(Dir::Cur, OsStr::new(&name));
    listing.added(Dir::Cur, OsStr::new(&seen));
    listing.removed(Dir::Cur, OsStr::new(&seen));
    listing.added(Dir::Cur, OsStr::new(&flagged));
    let reads = directory_reads();
    let snap = inbox.snapshot().unwrap();
    assert_eq!(directory_reads(), reads);
    assert_eq!(snap.messages[0].flags, Flags::FLAGGED | Flags::SEEN);
    assert!(inbox.open(&snap.messages[0]).is_ok());
}

/// A message renamed since the caller's snapshot is found again from the listing, not by
/// reading the directories.
#[test]
fn a_renamed_message_is_found_from_the_listing() {
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "kim", "Subject: 1\n\nbody\n");
    let inbox = store.mailbox("kim").unwrap().inbox();
    let listing = inbox.listing();
    listing.follow(Arc::new(|| true));
    let stale = inbox.claim_new().unwrap().messages.remove(0);
    let name = name_of(&stale).to_owned();
    let renamed = name.replace(":2,", ":2,S");
    rename_in_cur(&inbox, &name, &renamed);
    listing.removed(Dir::Cur, OsStr::new(&name));
    listing.added(Dir::Cur, OsStr::new(&renamed));
    let reads = directory_reads();
    assert_eq!(read_all(&inbox, &stale), "Subject: 1\n\nbody\n");
    assert_eq!(directory_reads(), reads, "the directories were read");
    // Removed by a program that leaves the uid list alone: the caught-up listing lacks it
    // but the list still has its line, so the directories are read before it counts as gone.
    std::fs::remove_file(inbox.path().join("cur").join(&renamed)).unwrap();
    listing.removed(Dir::Cur, OsStr::new(&renamed));
    assert!(matches!(
        inbox.open(&stale),
        Err(StoreError::MessageGone { .. })
    ));
    assert_eq!(directory_reads(), reads + 1);
    // Once a look has dropped its line, the listing alone says so.
    assert!(inbox.snapshot().unwrap().messages.is_empty());
    let reads = directory_reads();
    assert!(matches!(
        inbox.open(&stale),
        Err(StoreError::MessageGone { .. })
    ));
    assert_eq!(directory_reads(), reads, "the directories were read");
    // Without a trusted listing the directories are read.
    listing.lost();
    assert!(matches!(
        inbox.open(&stale),
        Err(StoreError::MessageGone { .. })
    ));
    assert_eq!(directory_reads(), reads + 1);
}

/// A rename's two reports applied one at a time (another program renamed, the arrival's
/// report not applied yet): the message is looked for in the directories, and keeps its UID.
#[test]
fn a_half_reported_rename_keeps_the_uid() {
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "kim", "Subject: a\n\n");
    deliver(&store, "kim", "Subject: b\n\n");
    let inbox = store.mailbox("kim").unwrap().inbox();
    let listing = inbox.listing();
    listing.follow(Arc::new(|| true));
    let first = inbox.claim_new().unwrap();
    let name = name_of(&first.messages[0]).to_owned();
    let renamed = name.replace(":2,", ":2,S");
    rename_in_cur(&inbox, &name, &renamed);
    listing.removed(Dir::Cur, OsStr::new(&name));
    let late = deliver(&store, "kim", "Subject: c\n\n");
    listing.added(Dir::New, OsStr::new(&late.base));
    let uids = |s: &Snapshot| s.messages.iter().map(|m| m.uid).collect::<Vec<_>>();
    let snapshot = inbox.claim_new().unwrap();
    assert_eq!(uids(&snapshot), [1, 2, 3]);
    assert_eq!(snapshot.messages[0].flags, Flags::SEEN);
    listing.added(Dir::Cur, OsStr::new(&renamed));
    assert_eq!(uids(&inbox.snapshot().unwrap()), [1, 2, 3]);
}

/// Reports wait in a queue for the next snapshot, so the watcher never waits for the folder;
/// past 10,000 unapplied ones the queue is dropped and the folder read instead.
#[test]
fn too_many_unapplied_reports_make_the_folder_read_again() {
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "kim", "Subject: 1\n\n");
    let inbox = store.mailbox("kim").unwrap().inbox();
    let listing = inbox.listing();
    listing.follow(Arc::new(|| true));
    inbox.claim_new().unwrap();
    let reads = directory_reads();
    for i in 0..10_000 {
        listing.added(Dir::Cur, OsStr::new(&format!("{i}.ghost:2,")));
    }
    for i in 0..10_000 {
        listing.removed(Dir::Cur, OsStr::new(&format!("{i}.ghost:2,")));
    }
    assert_eq!(inbox.snapshot().unwrap().messages.len(), 1);
    assert_eq!(
        directory_reads(),
        reads + 1,
        "an overflowing queue was trusted"
    );
    inbox.snapshot().unwrap();
    assert_eq!(directory_reads(), reads + 1);
}
