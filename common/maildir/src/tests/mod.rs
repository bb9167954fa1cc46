//! Store tests on a real file system (a fresh directory under the system temp dir each).
//! Several processes at once are tested from Python (tests/daemons/test_store.py).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

mod files;
mod listing;
mod sharing;

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

pub(crate) fn deliver(store: &Store, user: &str, text: &str) -> Delivered {
    store.deliver(user, &mut text.as_bytes()).unwrap()
}

pub(crate) fn read_all(folder: &Folder, msg: &MessageInfo) -> String {
    let mut text = String::new();
    folder.open(msg).unwrap().read_to_string(&mut text).unwrap();
    text
}

pub(crate) fn files_in(dir: &Path) -> Vec<String> {
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
    assert!(first
        .messages
        .iter()
        .all(|m| m.recent && Some(m.size) == m.vsize));
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

/// A message another program delivered: numbered from its name and metadata, and measured
/// (read for its size with CRLF line ends) only when asked for, once.
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
    let unmeasured = inbox.snapshot().unwrap();
    assert_eq!(message_files_read(), before, "read to be numbered");
    assert!(unmeasured.messages.iter().all(|m| m.vsize.is_none()));
    let list = std::fs::read_to_string(root.join("inetkit-uidlist")).unwrap();
    assert!(list.contains(" S=4 :1700000000.12345_1.host\n"), "{list}");
    let mut snap = unmeasured.clone();
    inbox.measure(&mut snap.messages).unwrap();
    assert_eq!(message_files_read() - before, 2);
    let by_base: HashMap<&str, &MessageInfo> =
        snap.messages.iter().map(|m| (&*m.base, m)).collect();
    let a = by_base["1700000000.12345_1.host"];
    assert_eq!((a.size, a.vsize, a.flags), (4, Some(6), Flags::EMPTY));
    assert_eq!(
        a.internal_date,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );
    let b = by_base["handmade"];
    assert_eq!(
        (b.size, b.vsize, b.flags),
        (5, Some(6), Flags::SEEN | Flags::FLAGGED)
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

    // Two measured: kept in this process's copy of the list, not written (a rewrite for
    // each message a client opens would cost more than measuring again elsewhere).
    let list = std::fs::read_to_string(root.join("inetkit-uidlist")).unwrap();
    assert!(!list.contains("W="), "{list}");

    let before = message_files_read();
    assert_eq!(inbox.snapshot().unwrap(), snap);
    // Measuring again reads nothing: this process knows them.
    inbox.measure(&mut unmeasured.clone().messages).unwrap();
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
    // In new/ with its flags: \Recent for the next session to select the folder.
    assert!(a.message.file().starts_with("new/") && a.message.file().ends_with(":2,S"));
    assert!(a.message.recent);
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

    // The session that claims them takes them to cur/, flags kept; they are recent only to it.
    let claimed = sent.claim_new().unwrap();
    assert!(claimed.messages.iter().all(|m| m.recent));
    let again = sent.snapshot().unwrap();
    assert!(again.messages.iter().all(|m| !m.recent));
    assert!(
        again.messages[0].file().starts_with("cur/") && again.messages[0].file().ends_with(":2,S")
    );
    assert_eq!(again.messages[0].flags, Flags::SEEN);

    // Appending to a folder whose list was lost falls back to a full sync.
    std::fs::remove_file(sent.path().join("inetkit-uidlist")).unwrap();
    let c = sent
        .append(&mut &b"Subject: c\n\n"[..], Flags::EMPTY, None)
        .unwrap();
    assert!(c.uid_validity > a.uid_validity);
    assert_eq!(c.message.uid, 3);

    // Claimed by the appender: straight into cur/, recent to no one else.
    sent.claim_new().unwrap();
    let d = sent
        .append_claimed(&mut &b"Subject: d\n\n"[..], Flags::FLAGGED, None)
        .unwrap();
    assert_eq!(d.message.uid, 4);
    assert!(!d.message.recent);
    assert!(d.message.file().starts_with("cur/") && d.message.file().ends_with(":2,F"));
    assert!(files_in(&sent.path().join("new")).is_empty());
    let claimed = sent.claim_new().unwrap();
    assert_eq!(claimed.messages.last(), Some(&d.message));
}

#[test]
fn special_use_folders_are_made_when_asked_for() {
    let dir = TestDir::new();
    let bare = dir.0.join("mail/ann");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(bare.join(sub)).unwrap();
    }
    // Another program's Maildir: left as it is, unless the store is told to add them.
    let store = dir.store();
    assert_eq!(store.mailbox("ann").unwrap().folders().unwrap(), ["INBOX"]);
    let store = store.with_special_use_folders(true);
    assert_eq!(
        store.mailbox("ann").unwrap().folders().unwrap(),
        ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    );
}

#[test]
fn non_ascii_folders_are_modified_utf7_on_disk() {
    let dir = TestDir::new();
    let mailbox = dir.store().mailbox("gus").unwrap();
    mailbox.create("Entwürfe/Neu").unwrap();
    assert!(mailbox.path().join(".Entw&APw-rfe.Neu/cur").is_dir());
    // A folder an older inetkit made under its UTF-8 name is found, renamed and deleted.
    std::fs::create_dir_all(mailbox.path().join(".Größe/cur")).unwrap();
    assert!(mailbox.folders().unwrap().contains(&"Größe".to_owned()));
    mailbox.folder("Größe").unwrap();
    assert!(matches!(
        mailbox.create("Größe"),
        Err(StoreError::FolderExists(_))
    ));
    mailbox.rename("Größe", "Maße").unwrap();
    assert!(mailbox.path().join(".Ma&AN8-e/cur").is_dir());
    mailbox.delete("Maße").unwrap();
    assert!(!mailbox.path().join(".Ma&AN8-e").exists());
}

#[test]
fn folders_create_rename_delete() {
    let dir = TestDir::new();
    let store = dir.store();
    let mailbox = store.mailbox("gus").unwrap();
    let work = mailbox.create("Work").unwrap();
    mailbox.create("Work/2024").unwrap();
    mailbox.create("Work/2025").unwrap();
    // A dot is the separator on disk: it would make a hierarchy the client did not ask for.
    assert!(matches!(
        mailbox.create("Work.2026"),
        Err(StoreError::InvalidFolder(_))
    ));
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

/// An expunge appends a forget line (the list is not rewritten and flushed); a version-1
/// list is rewritten as version 2 at its first forget; forget lines are compacted away once
/// they outnumber what they would save.
#[test]
fn expunges_append_forget_lines_and_compact() {
    let dir = TestDir::new();
    let store = dir.store();
    for i in 0..300 {
        deliver(&store, "fay", &format!("Subject: {i}\n\n"));
    }
    let inbox = store.mailbox("fay").unwrap().inbox();
    let list_path = inbox.path().join("inetkit-uidlist");
    let first = inbox.snapshot().unwrap();
    let ino = || std::fs::metadata(&list_path).unwrap().ino();

    // A version-1 file (as an older inetkit wrote it): rewritten at the first forget.
    let text = std::fs::read_to_string(&list_path).unwrap();
    assert!(text.starts_with("inetkit-uidlist 2 "), "{text}");
    std::fs::write(&list_path, text.replacen(" 2 ", " 1 ", 1)).unwrap();
    let before = ino();
    inbox.delete(&first.messages[..1]).unwrap();
    let text = std::fs::read_to_string(&list_path).unwrap();
    assert!(
        text.starts_with("inetkit-uidlist 2 ") && !text.contains("\n-"),
        "{text}"
    );
    assert_ne!(ino(), before, "a version-1 list was appended to");

    // Version 2: each expunge appends, the file stays the same one.
    let before = ino();
    inbox.delete(&first.messages[1..2]).unwrap();
    inbox.delete(&first.messages[2..4]).unwrap();
    let text = std::fs::read_to_string(&list_path).unwrap();
    assert!(text.ends_with("\n-2\n-3\n-4\n"), "{text}");
    assert_eq!(ino(), before, "the list was rewritten");
    let uids: Vec<u32> = inbox
        .snapshot()
        .unwrap()
        .messages
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, (5..=300).collect::<Vec<u32>>());

    // Until the forget lines outnumber both the messages and 256: then written whole.
    for at in 4..300 {
        inbox.delete(&first.messages[at..=at]).unwrap();
        let text = std::fs::read_to_string(&list_path).unwrap();
        let forget_lines = text.lines().filter(|l| l.starts_with('-')).count();
        assert!(
            forget_lines <= 256,
            "{forget_lines} forget lines after {at}"
        );
    }
    assert!(inbox.snapshot().unwrap().messages.is_empty());
    let text = std::fs::read_to_string(&list_path).unwrap();
    assert!(crate::uidlist::UidList::parse(&text)
        .unwrap()
        .entries
        .is_empty());
}

/// A move renames: a message not measured yet is not read to name it (nor left behind when it
/// cannot be read); it is measured where it lands, when asked for.
#[test]
fn a_move_reads_no_message_to_name_it() {
    let dir = TestDir::new();
    let store = dir.store();
    let mailbox = store.mailbox("hal").unwrap();
    let inbox = mailbox.inbox();
    let archive = mailbox.create("Archive").unwrap();
    let cur = inbox.path().join("cur");
    std::fs::write(cur.join("1700000001.one:2,S"), "Subject: 1\n\nx\n").unwrap();
    std::fs::write(cur.join("1700000002.two:2,"), "Subject: 2\n\nyy\n").unwrap();
    let snapshot = inbox.snapshot().unwrap();
    assert!(snapshot.messages.iter().all(|m| m.vsize.is_none()));
    let before = message_files_read();
    let moved = inbox
        .move_to(&archive, &snapshot.messages, &|flags| flags)
        .unwrap();
    assert_eq!(moved.messages.len(), 2);
    assert_eq!(message_files_read(), before, "read to be moved");
    assert!(inbox.snapshot().unwrap().messages.is_empty());
    let mut landed = archive.snapshot().unwrap();
    assert!(landed.messages.iter().all(|m| m.vsize.is_none()));
    archive.measure(&mut landed.messages).unwrap();
    let vsizes: Vec<Option<u64>> = landed.messages.iter().map(|m| m.vsize).collect();
    assert_eq!(vsizes, [Some(17), Some(18)]);
}
