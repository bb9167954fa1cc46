//! Store tests on a real file system (a fresh directory under the system temp dir each).
//! Several processes at once are tested from Python (tests/daemons/test_store.py).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    pub(crate) fn new() -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "inetkit-mail-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
    pub(crate) fn store(&self) -> Store {
        Store::new(self.0.join("mail"))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn deliver(store: &Store, user: &str, text: &str) -> Delivered {
    store.deliver(user, &mut text.as_bytes()).unwrap()
}

fn read_all(folder: &Folder, msg: &MessageInfo) -> String {
    let mut text = String::new();
    folder.open(msg).unwrap().read_to_string(&mut text).unwrap();
    text
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn first_use_creates_the_mailbox_and_delivery_lands_in_new() {
    let dir = TestDir::new();
    let store = dir.store();
    let d = deliver(&store, "alice", "Subject: one\n\nbody\n");
    assert_eq!(d.size, 19);
    assert_eq!(d.vsize, 22);
    assert!(d.base.ends_with(",S=19,W=22"), "{}", d.base);
    assert_eq!(d.path, dir.0.join("mail/alice/new").join(&d.base));
    assert!(files_in(&dir.0.join("mail/alice/tmp")).is_empty());

    let mailbox = store.mailbox("alice").unwrap();
    assert_eq!(
        mailbox.folders().unwrap(),
        ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    );
    assert!(dir.0.join("mail/alice/.Sent/maildirfolder").exists());
    let mode = std::fs::metadata(dir.0.join("mail/alice/.Sent/cur"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let mode = std::fs::metadata(&d.path).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);

    assert!(matches!(
        store.mailbox("../etc"),
        Err(StoreError::InvalidUser(_))
    ));
    assert!(matches!(
        store.deliver(".x", &mut &b""[..]),
        Err(StoreError::InvalidUser(_))
    ));
}

#[test]
fn snapshot_numbers_messages_and_keeps_numbers() {
    let dir = TestDir::new();
    let store = dir.store();
    for i in 0..3 {
        deliver(&store, "bob", &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
    }
    let inbox = store.mailbox("bob").unwrap().inbox();
    let first = inbox.snapshot().unwrap();
    assert_eq!(
        first.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(first.uid_next, 4);
    assert!(first.messages.iter().all(|m| m.recent && m.size == m.vsize));
    for (i, msg) in first.messages.iter().enumerate() {
        assert_eq!(
            read_all(&inbox, msg),
            format!("Subject: {i}\r\n\r\nbody {i}\r\n")
        );
        let age = SystemTime::now().duration_since(msg.internal_date).unwrap();
        assert!(age < Duration::from_secs(60));
    }
    deliver(&store, "bob", "Subject: 3\n\nx\n");
    let second = inbox.snapshot().unwrap();
    assert_eq!(second.uid_validity, first.uid_validity);
    assert_eq!(second.messages[..3], first.messages[..]);
    assert_eq!(second.messages[3].uid, 4);

    // A deleted message's UID is never given again.
    inbox.delete(&second.messages[3..]).unwrap();
    deliver(&store, "bob", "Subject: 4\n\nx\n");
    let third = inbox.snapshot().unwrap();
    assert_eq!(
        third.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3, 5]
    );
    assert_eq!(third.uid_validity, first.uid_validity);
}

#[test]
fn outside_deliveries_are_measured_once() {
    let dir = TestDir::new();
    let store = dir.store();
    let mailbox = store.mailbox("carol").unwrap();
    let root = mailbox.path().to_owned();
    // What procmail or a script leaves: no S=/W=, and one name without a time at all.
    std::fs::write(root.join("new/1700000000.12345_1.host"), "a\nb\n").unwrap();
    std::fs::write(root.join("cur/handmade:2,SF"), "x\r\ny\n").unwrap();
    let before = message_files_read();
    let inbox = mailbox.inbox();
    let snap = inbox.snapshot().unwrap();
    assert_eq!(message_files_read() - before, 2);
    let by_base: HashMap<&str, &MessageInfo> =
        snap.messages.iter().map(|m| (&*m.base, m)).collect();
    let a = by_base["1700000000.12345_1.host"];
    assert_eq!((a.size, a.vsize, a.flags), (4, 6, Flags::EMPTY));
    assert_eq!(
        a.internal_date,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );
    let b = by_base["handmade"];
    assert_eq!(
        (b.size, b.vsize, b.flags),
        (5, 6, Flags::SEEN | Flags::FLAGGED)
    );
    assert!(!b.recent);
    let mtime = std::fs::metadata(root.join("cur/handmade:2,SF"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        b.internal_date
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        mtime.duration_since(UNIX_EPOCH).unwrap().as_secs()
    );

    let list = std::fs::read_to_string(root.join("inetkit-uidlist")).unwrap();
    assert!(
        list.contains(" S=4 W=6 :1700000000.12345_1.host\n"),
        "{list}"
    );
    assert!(list.contains(" S=5 W=6 T="), "{list}");

    let before = message_files_read();
    assert_eq!(inbox.snapshot().unwrap(), snap);
    assert_eq!(
        message_files_read(),
        before,
        "an indexed folder was re-read"
    );
}

#[test]
fn a_stale_name_is_followed_after_another_process_renames() {
    let dir = TestDir::new();
    let store = dir.store();
    deliver(&store, "dave", "Subject: x\n\nhello\n");
    let inbox = store.mailbox("dave").unwrap().inbox();
    let mine = inbox.snapshot().unwrap().messages.remove(0);

    // Another session moves it to cur/ and flags it.
    let other = store.mailbox("dave").unwrap().inbox();
    let mut theirs = other.claim_new().unwrap().messages.remove(0);
    assert!(theirs.recent && theirs.file().starts_with("cur/"));
    other
        .update_flags(&mut theirs, FlagChange::Add(Flags::SEEN))
        .unwrap();
    assert_eq!(theirs.file(), format!("cur/{}:2,S", theirs.base));

    // My snapshot still says new/<base>: opening and flagging find the file by its base.
    assert_eq!(mine.file(), format!("new/{}", mine.base));
    assert_eq!(read_all(&inbox, &mine), "Subject: x\n\nhello\n");
    let mut stale = mine.clone();
    inbox
        .update_flags(&mut stale, FlagChange::Add(Flags::FLAGGED))
        .unwrap();
    assert_eq!(
        stale.flags,
        Flags::SEEN | Flags::FLAGGED,
        "their Seen was kept"
    );
    inbox
        .update_flags(&mut stale, FlagChange::Remove(Flags::SEEN))
        .unwrap();
    inbox
        .update_flags(&mut stale, FlagChange::Remove(Flags::SEEN))
        .unwrap();
    assert_eq!(
        files_in(&inbox.path().join("cur")),
        [format!("{}:2,F", mine.base)]
    );

    let snap = inbox.snapshot().unwrap();
    assert_eq!(snap.messages.len(), 1);
    assert_eq!(snap.messages[0].uid, mine.uid);
    assert_eq!(snap.messages[0].flags, Flags::FLAGGED);

    // Deleting through the stale name works too, and twice is fine.
    inbox.delete(std::slice::from_ref(&mine)).unwrap();
    inbox.delete(std::slice::from_ref(&mine)).unwrap();
    assert!(inbox.snapshot().unwrap().messages.is_empty());
    assert!(matches!(
        inbox.open(&mine),
        Err(StoreError::MessageGone { .. })
    ));
    let mut gone = mine.clone();
    assert!(matches!(
        inbox.update_flags(&mut gone, FlagChange::Set(Flags::SEEN)),
        Err(StoreError::MessageGone { .. })
    ));
}

#[test]
fn a_lost_or_corrupt_uid_list_renumbers_under_a_new_uidvalidity() {
    let dir = TestDir::new();
    let store = dir.store();
    for i in 0..4 {
        deliver(&store, "erin", &format!("Subject: {i}\n\n"));
    }
    let inbox = store.mailbox("erin").unwrap().inbox();
    let list = inbox.path().join("inetkit-uidlist");
    let first = inbox.snapshot().unwrap();
    let mut validities = vec![first.uid_validity];

    // A partial last line (a crash mid-append) is not corruption.
    let text = std::fs::read_to_string(&list).unwrap();
    std::fs::write(&list, format!("{text}99 :half-writ")).unwrap();
    assert_eq!(inbox.snapshot().unwrap(), first);
    assert_eq!(std::fs::read_to_string(&list).unwrap(), text);

    for damage in [
        None,
        Some("garbage\n"),
        Some("inetkit-uidlist 1 V5 N9\n3 :a\n2 :b\n"),
    ] {
        match damage {
            None => std::fs::remove_file(&list).unwrap(),
            Some(text) => std::fs::write(&list, text).unwrap(),
        }
        let snap = inbox.snapshot().unwrap();
        assert!(
            validities.iter().all(|&v| snap.uid_validity > v),
            "{damage:?}: {} after {validities:?}",
            snap.uid_validity
        );
        validities.push(snap.uid_validity);
        assert_eq!(
            snap.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let mut bases: Vec<_> = snap.messages.iter().map(|m| m.base.clone()).collect();
        let mut expected: Vec<_> = first.messages.iter().map(|m| m.base.clone()).collect();
        bases.sort();
        expected.sort();
        assert_eq!(bases, expected);
        assert_eq!(inbox.snapshot().unwrap(), snap, "stable again afterwards");
    }
}

#[test]
fn append_gives_the_next_uid_with_flags_and_date() {
    let dir = TestDir::new();
    let store = dir.store();
    let mailbox = store.mailbox("fay").unwrap();
    let sent = mailbox.folder("Sent").unwrap();
    assert_eq!(sent.name(), "Sent");
    let date = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let a = sent
        .append(&mut &b"Subject: a\n\n"[..], Flags::SEEN, Some(date))
        .unwrap();
    assert_eq!(a.message.uid, 1);
    assert!(a.message.file().starts_with("cur/") && a.message.file().ends_with(":2,S"));
    let b = sent
        .append(&mut &b"Subject: b\n\n"[..], Flags::EMPTY, None)
        .unwrap();
    assert_eq!(b.message.uid, 2);
    assert_eq!(b.uid_validity, a.uid_validity);
    assert!(b.message.recent && b.message.file().starts_with("new/"));

    let snap = sent.snapshot().unwrap();
    assert_eq!(snap.messages, [a.message.clone(), b.message]);
    assert_eq!(snap.messages[0].internal_date, date);
    let mtime = std::fs::metadata(sent.path().join(a.message.file()))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, date);

    // Appending to a folder whose list was lost falls back to a full sync.
    std::fs::remove_file(sent.path().join("inetkit-uidlist")).unwrap();
    let c = sent
        .append(&mut &b"Subject: c\n\n"[..], Flags::EMPTY, None)
        .unwrap();
    assert!(c.uid_validity > a.uid_validity);
    assert_eq!(c.message.uid, 3);
}

#[test]
fn folders_create_rename_delete() {
    let dir = TestDir::new();
    let store = dir.store();
    let mailbox = store.mailbox("gus").unwrap();
    let work = mailbox.create("Work").unwrap();
    mailbox.create("Work/2024").unwrap();
    mailbox.create("Work.2025").unwrap();
    assert!(mailbox.create("work/2024").is_ok()); // names are case-sensitive
    assert!(matches!(
        mailbox.create("Work/2024"),
        Err(StoreError::FolderExists(_))
    ));
    assert!(matches!(
        mailbox.create("inbox"),
        Err(StoreError::FolderExists(_))
    ));
    assert!(matches!(
        mailbox.create("a//b"),
        Err(StoreError::InvalidFolder(_))
    ));
    assert!(matches!(
        mailbox.folder("Nope"),
        Err(StoreError::NoSuchFolder(_))
    ));

    work.append(&mut &b"Subject: w\n\n"[..], Flags::SEEN, None)
        .unwrap();
    let before = work.snapshot().unwrap();

    mailbox.rename("Work", "Jobs").unwrap();
    assert_eq!(
        mailbox.folders().unwrap(),
        [
            "INBOX",
            "Drafts",
            "Jobs",
            "Jobs/2024",
            "Jobs/2025",
            "Junk",
            "Sent",
            "Trash",
            "work/2024"
        ]
    );
    let jobs = mailbox.folder("Jobs").unwrap();
    assert_eq!(
        jobs.snapshot().unwrap(),
        before,
        "UIDs move with the folder"
    );
    assert!(matches!(
        mailbox.rename("Jobs", "Jobs/x"),
        Err(StoreError::InvalidFolder(_))
    ));
    assert!(matches!(
        mailbox.rename("Jobs", "Sent"),
        Err(StoreError::FolderExists(_))
    ));
    assert!(matches!(
        mailbox.rename("INBOX", "x"),
        Err(StoreError::Inbox(_))
    ));
    assert!(matches!(
        mailbox.rename("Nope", "x"),
        Err(StoreError::NoSuchFolder(_))
    ));

    // A folder deleted and made again at once still gets a new UIDVALIDITY.
    mailbox.delete("Jobs").unwrap();
    assert!(matches!(
        mailbox.folder("Jobs"),
        Err(StoreError::NoSuchFolder(_))
    ));
    assert!(mailbox.folder("Jobs/2024").is_ok(), "subfolders stay");
    let again = mailbox.create("Jobs").unwrap().snapshot().unwrap();
    assert!(again.messages.is_empty());
    assert!(again.uid_validity > before.uid_validity);
    assert!(matches!(mailbox.delete("INBOX"), Err(StoreError::Inbox(_))));
    assert!(!files_in(mailbox.path()).iter().any(|n| n.starts_with("..")));
}

#[test]
fn an_outside_maildir_is_used_as_it_is() {
    let dir = TestDir::new();
    let user = dir.0.join("mail/hal");
    for sub in ["new", "cur"] {
        std::fs::create_dir_all(user.join(sub)).unwrap();
    }
    std::fs::write(user.join("cur/1.2.h:2,S"), "Subject: old\n\n").unwrap();
    let mailbox = dir.store().mailbox("hal").unwrap();
    assert_eq!(
        mailbox.folders().unwrap(),
        ["INBOX"],
        "no folders forced on it"
    );
    assert!(user.join("tmp").is_dir());
    let snap = mailbox.inbox().snapshot().unwrap();
    assert_eq!(snap.messages.len(), 1);
    assert_eq!(snap.messages[0].flags, Flags::SEEN);
}

#[test]
fn stale_tmp_files_are_cleaned() {
    let dir = TestDir::new();
    let inbox = dir.store().mailbox("ivy").unwrap().inbox();
    let tmp = inbox.path().join("tmp");
    std::fs::write(tmp.join("old"), "x").unwrap();
    std::fs::write(tmp.join("young"), "x").unwrap();
    let old = SystemTime::now() - Duration::from_secs(37 * 3600);
    std::fs::File::options()
        .write(true)
        .open(tmp.join("old"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    inbox.snapshot().unwrap();
    assert_eq!(files_in(&tmp), ["young"]);
}

#[test]
fn a_failed_read_leaves_nothing_behind() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("connection lost"));
            }
            self.0 -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }
    let dir = TestDir::new();
    let store = dir.store();
    let err = store.deliver("jo", &mut Broken(100)).unwrap_err();
    assert!(matches!(err, StoreError::Input(_)), "{err}");
    let inbox = store.mailbox("jo").unwrap().inbox();
    for sub in ["tmp", "new", "cur"] {
        assert!(files_in(&inbox.path().join(sub)).is_empty(), "{sub}");
    }
}

#[test]
fn owner_is_set_on_what_the_store_creates() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let dir = TestDir::new();
    let owner = Owner {
        uid: 65534,
        gid: 65534,
    };
    let store = dir.store().with_owner(Some(owner));
    let d = deliver(&store, "kim", "Subject: x\n\n");
    store.mailbox("kim").unwrap().inbox().snapshot().unwrap();
    let user = dir.0.join("mail/kim");
    for path in [
        dir.0.join("mail"),
        user.clone(),
        user.join("new"),
        user.join(".Sent/cur"),
        user.join(".Sent/maildirfolder"),
        user.join("inetkit-uidlist"),
        user.join("inetkit-uidlist.lock"),
        user.join("inetkit-uidvalidity"),
        d.path,
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65534),
            "{}",
            path.display()
        );
    }
}

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

/// 100,000 messages: the first snapshot measures the files (their names have no sizes); the
/// second must come from the uid list and a directory read alone. (Time: bench/store/.)
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
    let first = inbox.snapshot().unwrap();
    assert_eq!(message_files_read() - before, N as u64);
    assert_eq!(first.messages.len(), N);
    assert_eq!(first.messages[N - 1].uid, N as u32);
    assert!(first.messages.iter().all(|m| m.size == 2 && m.vsize == 3));

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
    assert_eq!((second.messages[2].size, second.messages[2].vsize), (2, 3));

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
