//! Moves and copies between folders: what they leave on disk, after success, after a failure
//! injected at each step, and after a process killed between the rename and the numbering.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::faults::{fail_at, Step};
use crate::tests::TestDir;
use crate::{FlagChange, Flags, Folder, MessageInfo, Store};

const USER: &str = "alice";

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Everything a client could ever see of a folder: its files and its uid list, byte for byte.
fn state(folder: &Folder) -> (Vec<String>, Vec<String>, Vec<String>, String) {
    let dir = folder.path();
    (
        names(&dir.join("tmp")),
        names(&dir.join("new")),
        names(&dir.join("cur")),
        std::fs::read_to_string(dir.join("inetkit-uidlist")).unwrap_or_default(),
    )
}

fn content(folder: &Folder, msg: &MessageInfo) -> String {
    let mut text = String::new();
    folder.open(msg).unwrap().read_to_string(&mut text).unwrap();
    text
}

fn uids(msgs: &[MessageInfo]) -> Vec<u32> {
    msgs.iter().map(|m| m.uid).collect()
}

/// alice with `n` messages in INBOX (indexed) and an indexed, empty Archive.
fn setup(dir: &TestDir, n: usize) -> (Store, Folder, Folder) {
    let store = dir.store();
    for i in 0..n {
        store
            .deliver(
                USER,
                &mut format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(),
            )
            .unwrap();
    }
    let mailbox = store.mailbox(USER).unwrap();
    let archive = mailbox.create("Archive").unwrap();
    archive.snapshot().unwrap();
    let inbox = mailbox.inbox();
    inbox.snapshot().unwrap();
    (store, inbox, archive)
}

fn same(flags: Flags) -> Flags {
    flags
}

#[test]
fn a_move_renames_files_into_the_target_and_numbers_them_there() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 3);
    archive
        .append(
            &mut &b"Subject: already there\r\n\r\n"[..],
            Flags::SEEN,
            None,
        )
        .unwrap();
    inbox.claim_new().unwrap();
    let mut before = inbox.snapshot().unwrap();
    inbox
        .update_flags(&mut before.messages[0], FlagChange::Add(Flags::SEEN))
        .unwrap();
    let archive_validity = archive.snapshot().unwrap().uid_validity;
    let texts: Vec<String> = before.messages.iter().map(|m| content(&inbox, m)).collect();
    let inode = |folder: &Folder, m: &MessageInfo| {
        std::fs::metadata(folder.path().join(m.file()))
            .unwrap()
            .ino()
    };
    let inodes = [
        inode(&inbox, &before.messages[0]),
        inode(&inbox, &before.messages[2]),
    ];

    let chosen = [before.messages[0].clone(), before.messages[2].clone()];
    let flagged = |f: Flags| f | Flags::FLAGGED;
    let moved = inbox.move_to(&archive, &chosen, &flagged).unwrap();

    assert_eq!(moved.uid_validity, archive_validity);
    let pairs: Vec<(u32, u32)> = moved.messages.iter().map(|(s, m)| (*s, m.uid)).collect();
    assert_eq!(pairs, [(1, 2), (3, 3)]);
    let target = archive.snapshot().unwrap();
    assert_eq!(target.uid_validity, archive_validity);
    assert_eq!(target.uid_next, 4);
    assert_eq!(
        target.messages[1..],
        [moved.messages[0].1.clone(), moved.messages[1].1.clone()]
    );
    for ((_, m), (old, text, ino)) in moved.messages.iter().zip([
        (&chosen[0], &texts[0], inodes[0]),
        (&chosen[1], &texts[2], inodes[1]),
    ]) {
        // In new/, flags in the name: \Recent for the next session to select the target.
        assert!(m.file().starts_with("new/") && m.recent);
        assert_eq!(m.flags, old.flags | Flags::FLAGGED);
        assert_eq!((m.size, m.vsize), (old.size, old.vsize));
        assert_eq!(m.internal_date, old.internal_date);
        assert_eq!(&content(&archive, m), text);
        assert_eq!(inode(&archive, m), ino, "renamed, not copied");
    }

    // The source lost exactly those, and kept its numbers.
    let after = inbox.snapshot().unwrap();
    assert_eq!(after.uid_validity, before.uid_validity);
    assert_eq!(after.messages, [before.messages[1].clone()]);
    let text = std::fs::read_to_string(inbox.path().join("inetkit-uidlist")).unwrap();
    let list = crate::uidlist::UidList::parse(&text).unwrap();
    assert!(list
        .entries
        .iter()
        .all(|e| e.base != chosen[0].base && e.base != chosen[1].base));
    assert!(names(&inbox.path().join("tmp")).is_empty());
    assert!(names(&archive.path().join("tmp")).is_empty());
}

#[test]
fn a_move_follows_renamed_files_and_skips_deleted_ones() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 3);
    let stale = inbox.snapshot().unwrap().messages;
    // Another session changes the first message's flags and expunges the second.
    let mut other = stale.clone();
    inbox
        .update_flags(&mut other[0], FlagChange::Set(Flags::REPLIED))
        .unwrap();
    inbox.delete(&other[1..2]).unwrap();

    let moved = inbox.move_to(&archive, &stale, &same).unwrap();
    let sources: Vec<u32> = moved.messages.iter().map(|(s, _)| *s).collect();
    assert_eq!(sources, [1, 3]);
    assert_eq!(moved.messages[0].1.flags, Flags::REPLIED);
    assert_eq!(uids(&archive.snapshot().unwrap().messages), [1, 2]);
    assert!(inbox.snapshot().unwrap().messages.is_empty());
}

#[test]
fn a_failed_move_leaves_both_folders_as_they_were() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 3);
    inbox.claim_new().unwrap();
    let msgs = inbox.snapshot().unwrap().messages;
    let (source, target) = (state(&inbox), state(&archive));

    for (step, nth) in [(Step::Move, 2), (Step::Move, 3), (Step::UidListAppend, 1)] {
        fail_at(step, nth);
        let err = inbox.move_to(&archive, &msgs, &same).unwrap_err();
        assert!(err.is_no_space(), "{step:?} {nth}: {err}");
        assert_eq!(state(&inbox), source, "{step:?} {nth}");
        assert_eq!(state(&archive), target, "{step:?} {nth}");
        assert_eq!(inbox.snapshot().unwrap().messages, msgs);
        assert!(archive.snapshot().unwrap().messages.is_empty());
    }

    // Nothing was left half done: the same move now succeeds, with the UIDs it would have had.
    let moved = inbox.move_to(&archive, &msgs, &same).unwrap();
    assert_eq!(uids(&archive.snapshot().unwrap().messages), [1, 2, 3]);
    assert_eq!(moved.messages.len(), 3);
}

#[test]
fn a_move_within_one_folder_gives_new_uids() {
    let dir = TestDir::new();
    let (_store, inbox, _archive) = setup(&dir, 2);
    let before = inbox.snapshot().unwrap();
    let moved = inbox.move_to(&inbox, &before.messages[..1], &same).unwrap();
    assert_eq!(moved.messages[0].0, 1);
    assert_eq!(moved.messages[0].1.uid, 3);
    let after = inbox.snapshot().unwrap();
    assert_eq!(after.uid_validity, before.uid_validity);
    assert_eq!(uids(&after.messages), [2, 3]);
    assert_eq!(
        content(&inbox, &after.messages[1]),
        "Subject: 0\r\n\r\nbody 0\r\n"
    );
}

/// What `move_to` leaves when the process is killed after renaming (some of) the files and
/// before either uid list changed: the store's snapshots alone must put it right.
#[test]
fn a_process_killed_between_rename_and_numbering_loses_nothing() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 4);
    archive
        .append(
            &mut &b"Subject: already there\r\n\r\n"[..],
            Flags::EMPTY,
            None,
        )
        .unwrap();
    inbox.claim_new().unwrap();
    let source = inbox.snapshot().unwrap();
    let target = archive.snapshot().unwrap();
    // Two of three chosen messages renamed, as move_files does, then the "kill".
    for m in &source.messages[1..3] {
        let name = format!(
            "1700000000.M{}P9Q9.moved,S={},W={}:2,",
            m.uid,
            m.size,
            m.vsize.unwrap()
        );
        std::fs::rename(
            inbox.path().join(m.file()),
            archive.path().join("cur").join(name),
        )
        .unwrap();
    }

    let target_after = archive.snapshot().unwrap();
    assert_eq!(target_after.uid_validity, target.uid_validity);
    assert_eq!(target_after.messages[0], target.messages[0]);
    assert_eq!(uids(&target_after.messages), [1, 2, 3], "the next UIDs");
    let source_after = inbox.snapshot().unwrap();
    assert_eq!(source_after.uid_validity, source.uid_validity);
    assert_eq!(
        source_after.messages,
        [source.messages[0].clone(), source.messages[3].clone()]
    );
    // Every message in exactly one folder.
    let mut texts: Vec<String> = source_after
        .messages
        .iter()
        .map(|m| content(&inbox, m))
        .chain(
            target_after.messages[1..]
                .iter()
                .map(|m| content(&archive, m)),
        )
        .collect();
    texts.sort();
    let expected: Vec<String> = (0..4)
        .map(|i| format!("Subject: {i}\r\n\r\nbody {i}\r\n"))
        .collect();
    assert_eq!(texts, expected);
    // The source's list no longer names them; no UID is given twice anywhere.
    let list = std::fs::read_to_string(inbox.path().join("inetkit-uidlist")).unwrap();
    assert!(!list.contains(&*source.messages[1].base));
    assert_eq!(inbox.snapshot().unwrap().uid_next, source.uid_next);
}

#[test]
fn a_copy_adds_every_message_with_its_date_and_mapped_flags() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 2);
    let mut msgs = inbox.claim_new().unwrap().messages;
    inbox
        .update_flags(&mut msgs[1], FlagChange::Add(Flags::SEEN))
        .unwrap();
    let source = state(&inbox);
    let seen_to_flagged = |f: Flags| {
        if f.contains(Flags::SEEN) {
            f | Flags::FLAGGED
        } else {
            f
        }
    };
    let copied = inbox.copy_to(&archive, &msgs, &seen_to_flagged).unwrap();

    assert_eq!(state(&inbox), source, "the source is untouched");
    let target = archive.snapshot().unwrap();
    assert_eq!(copied.uid_validity, target.uid_validity);
    let got: Vec<MessageInfo> = copied.messages.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(target.messages, got);
    assert_eq!(copied.messages[0].0, 1);
    assert_eq!(copied.messages[1].0, 2);
    // In new/ (\Recent), as APPEND does, with or without flags.
    assert!(got[0].recent && got[0].flags.is_empty());
    assert!(got[1].recent && got[1].file().starts_with("new/"));
    assert_eq!(got[1].flags, Flags::SEEN | Flags::FLAGGED);
    for (old, new) in msgs.iter().zip(&got) {
        assert_eq!(content(&archive, new), content(&inbox, old));
        assert_eq!(new.internal_date, old.internal_date);
        assert_ne!(new.base, old.base);
        let mtime = std::fs::metadata(archive.path().join(new.file()))
            .unwrap()
            .modified()
            .unwrap();
        let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(mtime), secs(old.internal_date));
    }
    assert!(names(&archive.path().join("tmp")).is_empty());
}

#[test]
fn a_failed_copy_leaves_the_target_as_it_was() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 3);
    archive
        .append(
            &mut &b"Subject: already there\r\n\r\n"[..],
            Flags::SEEN,
            None,
        )
        .unwrap();
    let mut msgs = inbox.snapshot().unwrap().messages;
    // One copy goes to new/, the others to cur/.
    for m in &mut msgs[1..] {
        inbox.update_flags(m, FlagChange::Add(Flags::SEEN)).unwrap();
    }
    let (source, target) = (state(&inbox), state(&archive));
    let target_snapshot = archive.snapshot().unwrap();

    for (step, nth) in [
        (Step::WriteTmp, 1),
        (Step::WriteTmp, 2),
        (Step::WriteTmp, 3),
        (Step::Place, 2),
        (Step::Place, 3),
        (Step::UidListAppend, 1),
    ] {
        fail_at(step, nth);
        let err = inbox.copy_to(&archive, &msgs, &same).unwrap_err();
        assert!(err.is_no_space(), "{step:?} {nth}: {err}");
        assert_eq!(state(&archive), target, "{step:?} {nth}");
        assert_eq!(state(&inbox), source, "{step:?} {nth}");
        assert_eq!(archive.snapshot().unwrap(), target_snapshot);
    }

    let copied = inbox.copy_to(&archive, &msgs, &same).unwrap();
    let target_uids: Vec<u32> = copied.messages.iter().map(|(_, m)| m.uid).collect();
    assert_eq!(target_uids, [2, 3, 4]);
    assert_eq!(uids(&archive.snapshot().unwrap().messages), [1, 2, 3, 4]);
}

#[test]
fn a_copy_skips_a_message_deleted_since_the_snapshot() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 2);
    let msgs = inbox.snapshot().unwrap().messages;
    inbox.delete(&msgs[..1]).unwrap();
    let copied = inbox.copy_to(&archive, &msgs, &same).unwrap();
    assert_eq!(copied.messages.len(), 1);
    assert_eq!(copied.messages[0].0, 2);
    assert_eq!(archive.snapshot().unwrap().messages.len(), 1);
}

/// Two threads move every message back and forth in opposite directions: the folder locks
/// are taken in one order, so neither waits for the other forever, and nothing is lost.
#[test]
fn moves_in_opposite_directions_at_once_lose_nothing() {
    let dir = TestDir::new();
    let (_store, inbox, archive) = setup(&dir, 6);
    let expected: Vec<String> = (0..6)
        .map(|i| format!("Subject: {i}\r\n\r\nbody {i}\r\n"))
        .collect();
    let shuttle = |from: &Folder, to: &Folder| {
        for _ in 0..30 {
            let msgs = from.snapshot().unwrap().messages;
            from.move_to(to, &msgs, &same).unwrap();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| shuttle(&inbox, &archive));
        s.spawn(|| shuttle(&archive, &inbox));
    });
    let mut texts: Vec<String> = Vec::new();
    for folder in [&inbox, &archive] {
        let snapshot = folder.snapshot().unwrap();
        texts.extend(snapshot.messages.iter().map(|m| content(folder, m)));
        assert!(names(&folder.path().join("tmp")).is_empty());
    }
    texts.sort();
    assert_eq!(texts, expected);
}
