use std::io::Read as _;
use std::time::Duration;

use inetkit_maildir::{FlagChange, Flags, Folder, Store};
use inetkit_runtime::testing::TempDir;

use super::*;

/// Waits (a bounded while) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn deliver(store: &Store) {
    store
        .deliver("alice", &mut &b"Subject: hi\r\n\r\nbody\r\n"[..])
        .expect("delivery");
}

#[test]
fn listing_changes_bump_the_generation_and_reading_does_not() {
    let root = TempDir::new("imapd-watch");
    let store = Store::new(root.path().join("mail"));
    deliver(&store);
    let mailbox = store.mailbox("alice").unwrap();
    let inbox: Folder = mailbox.inbox();
    let other = mailbox.create("Other").unwrap();
    let watches = Watches::new();
    let watch = watches.watch(&inbox).expect("inotify");
    let sentinel = watches.watch(&other).expect("inotify");

    // A delivery (a rename from tmp/ into new/).
    let before = watch.generation();
    deliver(&store);
    eventually("a delivery is seen", || watch.generation() > before);

    // Reading every message, three times, then a change elsewhere: the kernel reports in
    // order, so once the other folder's change is seen, any report of the reads would have
    // been too. Not even reported: no wake-up of the reader per message read.
    let snapshot = inbox.snapshot().unwrap();
    let before = watch.generation();
    let reports = || {
        let kernel = watches.watcher.lock().unwrap();
        kernel.as_ref().unwrap().count.load(Ordering::Relaxed)
    };
    eventually("the delivery's reports are all read", || {
        let seen = reports();
        std::thread::sleep(Duration::from_millis(50));
        reports() == seen
    });
    let reports_before = reports();
    for _ in 0..3 {
        for msg in &snapshot.messages {
            let mut text = String::new();
            std::fs::File::open(inbox.path().join(msg.file()))
                .and_then(|mut f| f.read_to_string(&mut text))
                .unwrap();
            assert!(text.contains("body"));
        }
    }
    let other_before = sentinel.generation();
    // Made in place (not as Maildir delivers): a create and a close after writing.
    std::fs::write(other.path().join("cur").join("1.sentinel:2,"), "x").unwrap();
    eventually("the other folder's change is seen", || {
        sentinel.generation() > other_before && reports() >= reports_before + 2
    });
    assert_eq!(watch.generation(), before, "reading counted as a change");
    assert_eq!(reports(), reports_before + 2, "reads were reported");

    // A flag change (a rename within cur/) and an expunge (an unlink).
    let mut msg = snapshot.messages[0].clone();
    inbox
        .update_flags(&mut msg, FlagChange::Add(Flags::SEEN))
        .unwrap();
    eventually("a flag change is seen", || watch.generation() > before);
    let before = watch.generation();
    inbox.delete(std::slice::from_ref(&msg)).unwrap();
    eventually("an expunge is seen", || watch.generation() > before);
}

#[test]
fn the_reader_thread_stops_with_the_watches() {
    let watches = Watches::new();
    let folders = Arc::downgrade(&watches.folders);
    assert!(watches.watcher.lock().unwrap().is_some(), "no inotify here");
    drop(watches);
    // The thread held the folder map; it lets go when it ends.
    eventually("the reader thread ends", || folders.upgrade().is_none());
}

#[test]
fn a_first_select_claims_new_mail_before_the_kernel_watches() {
    let root = TempDir::new("imapd-watch-claim");
    let store = Store::new(root.path().join("mail"));
    for _ in 0..20 {
        deliver(&store);
    }
    let mailbox = store.mailbox("alice").unwrap();
    let inbox = mailbox.inbox();
    assert_eq!(
        std::fs::read_dir(inbox.path().join("new")).unwrap().count(),
        20
    );
    let other = mailbox.create("Other").unwrap();
    let watches = Watches::new();
    let sentinel = watches.watch(&other).expect("inotify");
    let reports = || {
        let kernel = watches.watcher.lock().unwrap();
        kernel.as_ref().unwrap().count.load(Ordering::Relaxed)
    };
    let before = reports();

    let selected = crate::selected::Selected::open(inbox.clone(), false, &watches).unwrap();
    assert_eq!(selected.messages.len(), 20);
    assert_eq!(
        selected.recent.len(),
        20,
        "the claimed messages are \\Recent"
    );
    assert_eq!(
        std::fs::read_dir(inbox.path().join("new")).unwrap().count(),
        0
    );

    // A change elsewhere, then: the moves to cur/ were not reported (the kernel reports in
    // order), only the sentinel's create and close.
    let other_before = sentinel.generation();
    std::fs::write(other.path().join("cur").join("1.sentinel:2,"), "x").unwrap();
    eventually("the other folder's change is seen", || {
        sentinel.generation() > other_before && reports() >= before + 2
    });
    assert_eq!(reports(), before + 2, "the moves to cur/ were reported");

    // Watched from then on: a delivery is seen.
    assert!(!watches.unwatched(inbox.path()));
    let watch = watches.watch(&inbox).unwrap();
    let generation = watch.generation();
    deliver(&store);
    eventually("a delivery is seen", || watch.generation() > generation);
}

/// The sessions of a watched folder take its listing from the kernel's reports: a change
/// another program made is in the next snapshot at once (its report is read first), and the
/// directories are not read again. When the watches go, the folder is read as before.
#[test]
fn a_watched_folder_is_listed_from_the_reports_without_reading_it() {
    let root = TempDir::new("imapd-watch-listing");
    let store = Store::new(root.path().join("mail"));
    for _ in 0..5 {
        deliver(&store);
    }
    let mailbox = store.mailbox("alice").unwrap();
    let inbox = mailbox.inbox();
    let watches = Watches::new();
    let selected = crate::selected::Selected::open(inbox.clone(), false, &watches).unwrap();
    assert_eq!(selected.messages.len(), 5);
    let reads = inetkit_maildir::directory_reads();

    // Another program sets a flag (a rename in cur/) and a delivery arrives; snapshots right
    // after, with no wait for the reader thread.
    let first = &selected.messages[0];
    let cur = inbox.path().join("cur");
    let name = first.file().trim_start_matches("cur/").to_owned();
    std::fs::rename(cur.join(&name), cur.join(name.replace(":2,", ":2,S"))).unwrap();
    deliver(&store);
    let snapshot = inbox.claim_new().unwrap();
    let uids: Vec<u32> = snapshot.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 2, 3, 4, 5, 6]);
    assert_eq!(snapshot.messages[0].flags, Flags::SEEN);
    assert_eq!(inbox.snapshot().unwrap().messages.len(), 6);
    assert_eq!(
        inetkit_maildir::directory_reads(),
        reads,
        "a watched folder was read"
    );
    // A file another program deletes (its line still in the uid list) is looked for once
    // more before it counts as expunged: one read.
    std::fs::remove_file(inbox.path().join(snapshot.messages[1].file())).unwrap();
    let snapshot = inbox.snapshot().unwrap();
    let uids: Vec<u32> = snapshot.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 3, 4, 5, 6]);
    assert_eq!(inetkit_maildir::directory_reads(), reads + 1);

    // Without the watches, nothing reports: read again.
    drop(selected);
    drop(watches);
    std::fs::remove_file(inbox.path().join(snapshot.messages[0].file())).unwrap();
    assert_eq!(inbox.snapshot().unwrap().messages.len(), 4);
    assert!(inetkit_maildir::directory_reads() > reads, "not read");
}

/// A folder renamed away takes its directories, and their watches, along: what arrives in it
/// under its new name never reaches the listing of a folder made again under the old name,
/// and renaming it back does not leave a listing trusted that no longer gets reports.
#[test]
fn reports_of_a_renamed_folder_reach_no_other_listing() {
    let root = TempDir::new("imapd-watch-rename");
    let store = Store::new(root.path().join("mail"));
    let mailbox = store.mailbox("alice").unwrap();
    let watches = Watches::new();
    let a = mailbox.create("A").unwrap();
    let first = crate::selected::Selected::open(a, false, &watches).unwrap();
    drop(first);
    mailbox.rename("A", "B").unwrap();
    let a = mailbox.create("A").unwrap();
    let again = crate::selected::Selected::open(a.clone(), false, &watches).unwrap();
    assert!(again.messages.is_empty());
    // Mail into B (the old directories), nobody having B selected.
    let b = mailbox.folder("B").unwrap();
    b.append(&mut &b"Subject: for B\r\n\r\nx\r\n"[..], Flags::EMPTY, None)
        .unwrap();
    assert!(
        a.snapshot().unwrap().messages.is_empty(),
        "B's mail listed in A"
    );
    assert_eq!(b.snapshot().unwrap().messages.len(), 1);
    drop(again);

    // B selected (its directories' descriptors now report for B), then renamed back to A:
    // A's listing is not trusted any more; a delivery into it is seen.
    let selected_b = crate::selected::Selected::open(b, false, &watches).unwrap();
    drop(selected_b);
    mailbox.delete("A").unwrap();
    mailbox.rename("B", "A").unwrap();
    let a = mailbox.folder("A").unwrap();
    a.append(&mut &b"Subject: 2\r\n\r\nx\r\n"[..], Flags::EMPTY, None)
        .unwrap();
    std::fs::write(
        a.path().join("cur").join("1.outside:2,"),
        "Subject: 3\r\n\r\n",
    )
    .unwrap();
    assert_eq!(a.snapshot().unwrap().messages.len(), 3);
}

/// A message another session renamed (a flag change) is opened where the watcher's listing
/// says it went, without waiting for the folder lock: sessions reading a busy folder do not
/// queue behind one that holds it for an fsync.
#[test]
fn a_renamed_message_is_opened_from_the_listing_without_the_lock() {
    let root = TempDir::new("imapd-watch-open");
    let store = Store::new(root.path().join("mail"));
    deliver(&store);
    let inbox = store.mailbox("alice").unwrap().inbox();
    let watches = Watches::new();
    let selected = crate::selected::Selected::open(inbox.clone(), false, &watches).unwrap();
    let before = selected.messages[0].clone();
    let mut renamed = before.clone();
    inbox
        .update_flags(&mut renamed, FlagChange::Add(Flags::SEEN))
        .unwrap();
    assert_ne!(renamed.file(), before.file());

    // Someone holds the folder lock (as during another session's APPEND).
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(inbox.path().join("inetkit-uidlist.lock"))
        .unwrap();
    let held = inetkit_maildir::FileLock::wait(lock_file).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = inbox.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let read = reader
            .open(&before)
            .map(|mut file| file.read_to_string(&mut text));
        let _ = tx.send(read.is_ok().then_some(text));
    });
    let text = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("waited for the folder lock");
    assert!(text.is_some_and(|t| t.contains("Subject: hi")));
    drop(held);
}

/// A message another session expunged is known gone from the listing: opening it, setting
/// its flags or deleting it again reads no directory (each did, under imaptest's concurrent
/// EXPUNGEs).
#[test]
fn a_message_expunged_elsewhere_is_known_gone_without_reading_the_folder() {
    let root = TempDir::new("imapd-watch-gone");
    let store = Store::new(root.path().join("mail"));
    deliver(&store);
    deliver(&store);
    let inbox = store.mailbox("alice").unwrap().inbox();
    let watches = Watches::new();
    let selected = crate::selected::Selected::open(inbox.clone(), false, &watches).unwrap();
    let (gone, kept) = (selected.messages[0].clone(), selected.messages[1].clone());
    inbox.delete(std::slice::from_ref(&gone)).unwrap();

    let reads = inetkit_maildir::directory_reads();
    assert!(matches!(
        inbox.open(&gone),
        Err(inetkit_maildir::StoreError::MessageGone { .. })
    ));
    let mut stale = gone.clone();
    assert!(inbox
        .update_flags(&mut stale, FlagChange::Add(Flags::SEEN))
        .is_err());
    inbox.delete(std::slice::from_ref(&gone)).unwrap();
    assert_eq!(
        inetkit_maildir::directory_reads(),
        reads,
        "read the directories"
    );
    // A message renamed meanwhile is still found, from the listing.
    let mut renamed = kept.clone();
    inbox
        .update_flags(&mut renamed, FlagChange::Add(Flags::SEEN))
        .unwrap();
    inbox.delete(std::slice::from_ref(&kept)).unwrap();
    assert_eq!(
        inetkit_maildir::directory_reads(),
        reads,
        "read the directories"
    );
    assert_eq!(inbox.snapshot().unwrap().messages.len(), 0);
}

/// A message this session appended straight into `cur/` is \Recent here once the view has it;
/// one expunged by someone else before that never counts towards RECENT.
#[test]
fn an_appended_message_claimed_here_is_recent_only_once_seen() {
    let root = TempDir::new("imapd-claimed");
    let store = Store::new(root.path().join("mail"));
    deliver(&store);
    let inbox = store.mailbox("alice").unwrap().inbox();
    let watches = Watches::new();
    let mut selected = crate::selected::Selected::open(inbox.clone(), false, &watches).unwrap();
    let recent_line = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| l.strip_prefix("* ")?.strip_suffix(" RECENT"))
            .map(|n| n.parse::<usize>().unwrap())
            .next_back()
    };
    let append = |selected: &mut crate::selected::Selected| {
        let a = inbox
            .append_claimed(&mut &b"Subject: mine\r\n\r\nx\r\n"[..], Flags::EMPTY, None)
            .unwrap();
        selected.claim_appended(a.uid_validity, a.message.uid);
        a
    };
    let kept = append(&mut selected);
    let mut out = Vec::new();
    selected.refresh(&mut out, true).unwrap();
    assert_eq!(recent_line(&out), Some(2));
    assert!(selected.shows_recent(kept.message.uid));

    // Gone before this view had it: not counted, now or later.
    let gone = append(&mut selected);
    std::fs::remove_file(inbox.path().join(gone.message.file())).unwrap();
    let mut out = Vec::new();
    selected.refresh(&mut out, true).unwrap();
    deliver(&store);
    selected.refresh(&mut out, true).unwrap();
    assert_eq!(selected.messages.len(), 3);
    assert_eq!(recent_line(&out), Some(3));
    assert_eq!(selected.recent.len(), 3);
}

/// A session about to look at its folder has the queued reports read itself: the generation
/// it sees then already counts every change made before, whatever the reader thread is doing
/// (it pauses between reads to let reports gather).
#[test]
fn catch_up_reads_what_is_queued_before_a_look() {
    let root = TempDir::new("imapd-watch-catch-up");
    let store = Store::new(root.path().join("mail"));
    deliver(&store);
    let inbox = store.mailbox("alice").unwrap().inbox();
    let watches = Watches::new();
    let watch = watches.watch(&inbox).expect("inotify");
    for _ in 0..20 {
        let before = watch.generation();
        deliver(&store);
        watch.catch_up();
        assert!(watch.generation() > before, "a delivery not counted yet");
    }
}
