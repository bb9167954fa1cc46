//! Sharing a folder: threads at once, the in-process index, and changes made behind its back.

use super::*;

/// Threads of one process contend like processes do (each call takes its own flock).
#[test]
fn concurrent_threads_lose_nothing_and_keep_uids() {
    let dir = TestDir::new();
    let store = dir.store();
    let inbox = store.mailbox("lee").unwrap().inbox();
    // A large directory: readdir then takes several getdents calls, and a rename between two
    // of them can hide a file from the scan (which the lock is there to prevent).
    let mut preseeded = Vec::new();
    for i in 0..3000 {
        let base = format!("{}.P1Q{i}.host", 1_600_000_000 + i);
        std::fs::write(inbox.path().join(format!("cur/{base}:2,S")), "x\n").unwrap();
        preseeded.push(base);
    }
    let validity = inbox.snapshot().unwrap().uid_validity;
    let writers = 4;
    let per_writer = 50;
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen: HashMap<String, u32> = std::thread::scope(|s| {
        let flagger = s.spawn(|| {
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed) {
                let mut snap = inbox.snapshot().unwrap();
                for msg in snap.messages.iter_mut().filter(|m| m.uid % 3 == n % 3) {
                    let change =
                        FlagChange::Set(Flags::from_maildir(["S", "F", "RS"][n as usize % 3]));
                    inbox.update_flags(msg, change).unwrap();
                }
                n += 1;
            }
        });
        let watcher = s.spawn(|| {
            let mut seen: HashMap<String, u32> = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                let snap = inbox.claim_new().unwrap();
                assert_eq!(snap.uid_validity, validity);
                for m in snap.messages {
                    let uid = *seen.entry(m.base.to_string()).or_insert(m.uid);
                    assert_eq!(uid, m.uid, "{} changed UID", m.base);
                }
            }
            seen
        });
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let store = &store;
                s.spawn(move || {
                    (0..per_writer)
                        .map(|i| deliver(store, "lee", &format!("Subject: {w}/{i}\n\n")).base)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let delivered: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        done.store(true, Ordering::Relaxed);
        flagger.join().unwrap();
        let seen = watcher.join().unwrap();
        assert_eq!(delivered.len(), writers * per_writer);
        let snap = inbox.snapshot().unwrap();
        let mut bases: Vec<&str> = snap.messages.iter().map(|m| &*m.base).collect();
        bases.sort();
        let mut expected: Vec<&str> = delivered
            .iter()
            .chain(&preseeded)
            .map(String::as_str)
            .collect();
        expected.sort();
        assert_eq!(bases, expected, "every message exactly once");
        for m in &snap.messages {
            if let Some(&uid) = seen.get(&*m.base) {
                assert_eq!(uid, m.uid);
            }
        }
        seen
    });
    assert!(!seen.is_empty());
}

/// 100,000 messages whose names carry no sizes: the first snapshot numbers them without
/// reading one (their sizes with CRLF are measured when asked for, once: the uid list keeps
/// them); the next must come from the uid list and a directory read alone. (Time:
/// bench/store/.)
#[test]
fn a_large_indexed_folder_is_not_reread() {
    let dir = TestDir::new();
    let inbox = dir.store().mailbox("max").unwrap().inbox();
    let cur = inbox.path().join("cur");
    const N: usize = 100_000;
    for i in 0..N {
        std::fs::write(
            cur.join(format!("{}.P1Q{i}.host:2,S", 1_600_000_000 + i)),
            "x\n",
        )
        .unwrap();
    }
    let before = message_files_read();
    let mut first = inbox.snapshot().unwrap();
    assert_eq!(message_files_read(), before, "a file was read to number it");
    assert_eq!(first.messages.len(), N);
    assert_eq!(first.messages[N - 1].uid, N as u32);
    assert!(first
        .messages
        .iter()
        .all(|m| m.size == 2 && m.vsize.is_none()));
    inbox.measure(&mut first.messages).unwrap();
    assert_eq!(message_files_read() - before, N as u64);
    assert!(first.messages.iter().all(|m| m.vsize == Some(3)));

    let before = message_files_read();
    let second = inbox.snapshot().unwrap();
    assert_eq!(
        message_files_read(),
        before,
        "an indexed folder was re-read"
    );
    assert_eq!(second, first);
}

#[test]
fn flags_of_many_messages_change_under_one_lock_and_gone_ones_are_skipped() {
    let dir = TestDir::new();
    let store = dir.store();
    for n in 0..3 {
        deliver(&store, "alice", &format!("Subject: {n}\n\nbody\n"));
    }
    let inbox = store.mailbox("alice").unwrap().inbox();
    let mut messages = inbox.snapshot().unwrap().messages;
    // Another session expunges the middle one meanwhile.
    inbox.delete(&messages[1..2]).unwrap();
    let gone = inbox
        .update_flags_many(&mut messages, FlagChange::Add(Flags::SEEN))
        .unwrap();
    assert_eq!(gone, [1]);
    let after = inbox.snapshot().unwrap().messages;
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|m| m.flags.contains(Flags::SEEN)));
    assert!(!messages[1].flags.contains(Flags::SEEN));
}

/// The in-process index (cached uid list and directory listing) must follow what other
/// processes do behind its back: lines appended to the list, a list rewritten, files renamed
/// and removed.
#[test]
fn the_index_follows_changes_made_behind_its_back() {
    let dir = TestDir::new();
    let store = dir.store();
    for i in 0..3 {
        deliver(&store, "ida", &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
    }
    let inbox = store.mailbox("ida").unwrap().inbox();
    let first = inbox.snapshot().unwrap();
    assert_eq!(first.uid_next, 4);
    let list_path = inbox.path().join("inetkit-uidlist");

    // Another process files a message and appends its line (UID 9, not the next one we
    // would have picked): the cached list is extended by the new line, not renumbered.
    std::fs::write(inbox.path().join("cur/outside.1:2,F"), "x\n").unwrap();
    let mut text = std::fs::read_to_string(&list_path).unwrap();
    text.push_str("9 S=2 W=3 T=1600000000 :outside.1\n");
    std::fs::write(&list_path, &text).unwrap();
    // ... and renames one of ours (a flag change) and removes another.
    let renamed = &first.messages[0];
    std::fs::rename(
        inbox.path().join(renamed.file()),
        inbox.path().join(format!("cur/{}:2,S", renamed.base)),
    )
    .unwrap();
    std::fs::remove_file(inbox.path().join(first.messages[1].file())).unwrap();

    let second = inbox.snapshot().unwrap();
    let uids: Vec<u32> = second.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 3, 9]);
    assert_eq!(second.uid_next, 10);
    assert_eq!(second.messages[0].flags, Flags::SEEN);
    assert_eq!(second.messages[2].flags, Flags::FLAGGED);
    assert_eq!(
        (second.messages[2].size, second.messages[2].vsize),
        (2, Some(3))
    );

    // Another process rewrites the list (temp file and rename), under a new UIDVALIDITY and
    // with other numbers: that is what counts, not the cached copy.
    let rewritten = format!(
        "inetkit-uidlist 1 V{} N30\n21 :{}\n23 :{}\n29 S=2 W=3 T=1600000000 :outside.1\n",
        second.uid_validity + 1,
        second.messages[0].base,
        second.messages[1].base
    );
    std::fs::write(inbox.path().join("list.tmp"), rewritten).unwrap();
    std::fs::rename(inbox.path().join("list.tmp"), &list_path).unwrap();
    let third = inbox.snapshot().unwrap();
    assert_eq!(third.uid_validity, second.uid_validity + 1);
    let uids: Vec<u32> = third.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [21, 23, 29]);
    assert_eq!(third.uid_next, 30);

    // A second Folder of the same process shares the index and sees the same.
    let again = store.mailbox("ida").unwrap().inbox();
    assert_eq!(again.snapshot().unwrap(), third);
}

/// A freed inode number is soon given to a new file: a uid list that is another file with the
/// old list's inode (and longer) must be read afresh, not taken as the old one with lines
/// appended. Simulated by writing new text into the list's own inode.
#[test]
fn a_new_list_in_a_reused_inode_is_read_afresh() {
    let dir = TestDir::new();
    let store = dir.store();
    for i in 0..2 {
        deliver(&store, "ina", &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
    }
    let inbox = store.mailbox("ina").unwrap().inbox();
    let first = inbox.snapshot().unwrap();
    let list = inbox.path().join("inetkit-uidlist");
    let (a, b) = (&first.messages[0].base, &first.messages[1].base);
    let v = first.uid_validity;
    for (validity, text, expected) in [
        // Same header, other lines: the old last line is not where it was.
        (
            v,
            format!("inetkit-uidlist 1 V{v} N3\n7 :{b}\n8 :{a}\n9 :gone\n"),
            [(7, b), (8, a)],
        ),
        // Another header (the folder made again).
        (
            v + 9,
            format!("inetkit-uidlist 1 V{} N3\n1 :{a}\n2 :{b}\n3 :gone\n", v + 9),
            [(1, a), (2, b)],
        ),
    ] {
        let before = std::fs::metadata(&list).unwrap();
        assert!(text.len() as u64 > before.len());
        std::fs::write(&list, &text).unwrap(); // the same inode, longer, other text
        assert_eq!(std::fs::metadata(&list).unwrap().ino(), before.ino());
        let snap = inbox.snapshot().unwrap();
        assert_eq!(snap.uid_validity, validity);
        let got: Vec<(u32, &str)> = snap.messages.iter().map(|m| (m.uid, &*m.base)).collect();
        let expected: Vec<(u32, &str)> = expected.iter().map(|(u, b)| (*u, &***b)).collect();
        assert_eq!(got, expected);
    }
}

/// A look at a folder whose uid list this process has and which nothing added to or took
/// from needs no folder lock (flag changes rename files and leave the list alone); anything
/// new waits for the lock, and is numbered under it.
#[test]
fn a_look_that_finds_nothing_new_takes_no_lock() {
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "nia", "Subject: one\n\nx\n");
    deliver(&store, "nia", "Subject: two\n\ny\n");
    let inbox = store.mailbox("nia").unwrap().inbox();
    let first = inbox.claim_new().unwrap();
    assert_eq!(first.messages.len(), 2);

    // Someone holds the folder lock (another process, say, in the middle of a change).
    let held =
        crate::fsutil::Lock::acquire(&inbox.path().join(crate::folder::LOCK_FILE), None).unwrap();
    // A program that does not lock flags a message: a rename in cur/.
    let msg = &first.messages[0];
    let seen = format!("cur/{}:2,S", msg.base);
    std::fs::rename(inbox.path().join(msg.file()), inbox.path().join(&seen)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            tx.send(inbox.claim_new().map(|snap| snap.messages))
                .unwrap()
        });
        let looked = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the look waited for the folder lock")
            .unwrap();
        assert_eq!(looked.len(), 2);
        assert_eq!(looked[0].flags, Flags::SEEN, "the rename is seen");
        assert_eq!(looked[0].file(), seen);
        assert_eq!(looked[1].uid, first.messages[1].uid);

        // New mail: that look must number it, so it waits for the lock.
        deliver(&store, "nia", "Subject: three\n\nz\n");
        let waiting = s.spawn(|| {
            let snap = inbox.snapshot().unwrap();
            done.store(true, Ordering::SeqCst);
            snap
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !done.load(Ordering::SeqCst),
            "a new message was numbered without the lock"
        );
        drop(held);
        let snap = waiting.join().unwrap();
        assert_eq!(snap.messages.len(), 3);
        assert_eq!(snap.messages[2].uid, first.messages[1].uid + 1);
    });
}

/// An APPEND names its file into `cur/` under the folder lock, together with its uid list
/// line: a look meanwhile never meets a message without a UID (it would take the lock and
/// number it itself, writing and syncing the list a second time).
#[test]
fn an_append_is_placed_and_numbered_under_one_lock() {
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "ola", "Subject: one\n\nx\n");
    let inbox = store.mailbox("ola").unwrap().inbox();
    let first = inbox.claim_new().unwrap();
    let count = |sub: &str| std::fs::read_dir(inbox.path().join(sub)).unwrap().count();

    let held =
        crate::fsutil::Lock::acquire(&inbox.path().join(crate::folder::LOCK_FILE), None).unwrap();
    std::thread::scope(|s| {
        let appending = s.spawn(|| {
            inbox
                .append_claimed(&mut &b"Subject: two\r\n\r\ny\r\n"[..], Flags::SEEN, None)
                .unwrap()
        });
        // Written and synced in tmp/ without the lock; then it waits.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while count("tmp") + count("cur") == 1 {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count("cur"), 1, "placed in cur/ without the lock");
        assert_eq!(count("tmp"), 1);
        drop(held);
        let appended = appending.join().unwrap();
        assert_eq!(appended.message.uid, first.messages[0].uid + 1);
        assert_eq!((count("tmp"), count("cur")), (0, 2));
    });
}

thread_local! {
    static WAITS_HANDED_OFF: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The hand-off hook of these tests (one for the process: the first set stays): counts, per
/// thread, what it was handed.
fn counting_hand_off(work: &mut dyn FnMut()) {
    WAITS_HANDED_OFF.with(|n| n.set(n.get() + 1));
    work();
}

/// A lock another holds is waited for through the hook a daemon sets (imapd:
/// `block_in_place`); a free one is taken without it.
#[test]
fn only_a_contended_lock_waits_through_the_hook() {
    crate::set_hand_off(counting_hand_off);
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "pia", "Subject: one\n\nx\n");
    let inbox = store.mailbox("pia").unwrap().inbox();
    // (The folder's first look, its indexing, goes through the hook: counted from after it.)
    let mut msg = inbox.claim_new().unwrap().messages.remove(0);
    let waits = || WAITS_HANDED_OFF.with(std::cell::Cell::get);
    let before = waits();
    inbox
        .update_flags(&mut msg, FlagChange::Add(Flags::SEEN))
        .unwrap();
    assert_eq!(waits() - before, 0, "a free lock went through the hook");

    let held =
        crate::fsutil::Lock::acquire(&inbox.path().join(crate::folder::LOCK_FILE), None).unwrap();
    std::thread::scope(|s| {
        let flagging = s.spawn(|| {
            let mut msg = msg.clone();
            inbox
                .update_flags(&mut msg, FlagChange::Add(Flags::FLAGGED))
                .unwrap();
            (waits(), msg.flags)
        });
        std::thread::sleep(Duration::from_millis(500));
        drop(held);
        let (handed_off, flags) = flagging.join().unwrap();
        assert_eq!(handed_off, 1);
        assert_eq!(flags, Flags::SEEN | Flags::FLAGGED);
    });
}

/// A folder another program filled is indexed at its first look (every name read, a uid list
/// written and synced): that runs through the hook, once; later looks do not.
#[test]
fn only_a_folders_first_indexing_runs_through_the_hook() {
    crate::set_hand_off(counting_hand_off);
    let dir = TestDir::new();
    let store = dir.store();
    let mailbox = store.mailbox("quinn").unwrap();
    let root = mailbox.path().to_owned();
    for n in 0..20 {
        std::fs::write(
            root.join(format!("new/17000000{n:02}.1_{n}.host")),
            "a\nb\n",
        )
        .unwrap();
    }
    let inbox = mailbox.inbox();
    assert!(!inbox.path().join(crate::folder::LOCK_FILE).exists());
    let waits = || WAITS_HANDED_OFF.with(std::cell::Cell::get);
    let before = waits();
    assert_eq!(inbox.snapshot().unwrap().messages.len(), 20);
    assert_eq!(
        waits() - before,
        1,
        "the first indexing did not go through the hook"
    );
    std::fs::write(root.join("new/1700000099.1_99.host"), "c\n").unwrap();
    assert_eq!(inbox.snapshot().unwrap().messages.len(), 21);
    assert_eq!(waits() - before, 1, "a later look went through the hook");
}
