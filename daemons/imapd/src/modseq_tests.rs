use inetkit_maildir::{FlagChange, Folder, Store};
use inetkit_runtime::testing::TempDir;

use super::*;

/// A store with `n` messages in alice's INBOX.
fn inbox(n: u32) -> (TempDir, Folder) {
    let root = TempDir::new("imapd-modseq");
    let store = Store::new(root.path().join("mail"));
    for i in 0..n {
        let text = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        store
            .deliver("alice", &mut text.as_bytes())
            .expect("delivery");
    }
    let folder = store.mailbox("alice").expect("mailbox").inbox();
    (root, folder)
}

#[test]
fn arrival_flag_change_and_expunge_move_the_modseq() {
    let (_root, folder) = inbox(3);
    let snap = folder.snapshot().unwrap();
    let first = sync(folder.path(), &snap);
    let h0 = first.highest();
    assert!((1..=3).all(|uid| first.of(uid) == h0));
    // Nothing changed: nothing moves, nothing is written.
    assert_eq!(sync(folder.path(), &snap), first);

    let mut msg = snap.messages[1].clone();
    folder
        .update_flags(&mut msg, FlagChange::Add(Flags::SEEN))
        .unwrap();
    let after_flag = sync(folder.path(), &folder.snapshot().unwrap());
    let h1 = after_flag.highest();
    assert!(h1 > h0);
    assert_eq!((after_flag.of(1), after_flag.of(2)), (h0, h1));

    folder.delete(&snap.messages[..1]).unwrap();
    let after_expunge = sync(folder.path(), &folder.snapshot().unwrap());
    let h2 = after_expunge.highest();
    assert!(h2 > h1);
    assert_eq!(after_expunge.vanished_since(h1), Vanished::Known(vec![1]));
    assert_eq!(after_expunge.vanished_since(h2), Vanished::Known(vec![]));
    // Below where the record starts, it cannot say.
    assert_eq!(after_expunge.vanished_since(1), Vanished::Unknown);

    // Saved: another process reads the same.
    assert_eq!(current(folder.path(), snap.uid_validity), after_expunge);
}

#[test]
fn a_stale_look_neither_vanishes_newer_mail_nor_revives_expunged() {
    let (_root, folder) = inbox(2);
    let stale = folder.snapshot().unwrap();
    sync(folder.path(), &stale);
    let store_root = folder.path().parent().unwrap();
    Store::new(store_root)
        .deliver("alice", &mut &b"Subject: new\r\n\r\nx\r\n"[..])
        .unwrap();
    let fresh = folder.snapshot().unwrap();
    let record = sync(folder.path(), &fresh);
    assert!(record.of(3) == record.highest());
    folder.delete(&fresh.messages[..1]).unwrap();
    let record = sync(folder.path(), &folder.snapshot().unwrap());
    let h = record.highest();
    // The stale snapshot lacks UID 3 (above its UIDNEXT) and still has UID 1.
    let again = sync(folder.path(), &stale);
    assert_eq!(again.highest(), h);
    assert!(again.messages.contains_key(&3));
    assert!(!again.messages.contains_key(&1));
}

#[test]
fn a_missing_or_corrupt_file_is_rebuilt_above_the_old_numbers() {
    let (_root, folder) = inbox(2);
    let snap = folder.snapshot().unwrap();
    let before = sync(folder.path(), &snap).highest();
    let path = folder.path().join(FILE);
    // A damaged line: rebuilt, numbers above the old ones.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("m 2 ", "m 2 x")).unwrap();
    let rebuilt = sync(folder.path(), &snap);
    assert!(rebuilt.highest() > before);
    assert!(rebuilt.of(1) > before && rebuilt.of(2) > before);
    assert_eq!(rebuilt.vanished_since(before), Vanished::Unknown);
    // Garbage, then nothing at all.
    std::fs::write(&path, b"\xff\xfe garbage").unwrap();
    assert!(sync(folder.path(), &snap).highest() > before);
    std::fs::remove_file(&path).unwrap();
    let again = sync(folder.path(), &snap);
    assert!(again.highest() > before);
    assert_eq!(current(folder.path(), snap.uid_validity), again);
    // A record of another UIDVALIDITY is not used.
    let other = current(folder.path(), snap.uid_validity.wrapping_add(1));
    assert!(other.messages.is_empty() && other.highest() > again.highest());
}

#[test]
fn the_expunge_record_is_bounded() {
    let mut record = ModSeqs::fresh(1, 0);
    let base = record.highest;
    for uid in 1..=(MAX_VANISHED as u32 + 5) {
        record.vanished.insert(uid, base + u64::from(uid));
    }
    record.bound();
    assert_eq!(record.vanished.len(), MAX_VANISHED);
    assert_eq!(record.floor, base + 5);
    assert_eq!(record.vanished_since(base + 4), Vanished::Unknown);
    assert!(
        matches!(record.vanished_since(base + 5), Vanished::Known(v) if v.len() == MAX_VANISHED)
    );
    // And a file with more than that is not believed.
    record.vanished.insert(MAX_VANISHED as u32 + 100, base + 1);
    assert!(ModSeqs::parse(&record.to_text()).is_err());
}

#[test]
fn text_round_trip() {
    let mut record = ModSeqs::fresh(7, 0);
    let h = record.highest;
    record.messages.insert(
        3,
        Entry {
            modseq: h,
            flags: Flags::SEEN | Flags::FLAGGED,
        },
    );
    record.messages.insert(
        4,
        Entry {
            modseq: h,
            flags: Flags::EMPTY,
        },
    );
    record.vanished.insert(2, h);
    assert_eq!(ModSeqs::parse(&record.to_text()), Ok(record));
    for bad in [
        "",
        "inetkit-modseq 1 7 5",
        "inetkit-modseq 1 7 9 5\n",
        "inetkit-modseq 1 7 5 9 b\n",
        "inetkit-modseq 1 7 9 5 b\nm 0 3 S\n",
        "inetkit-modseq 1 7 9 5 b\nm 1 10 S\n",
        "inetkit-modseq 1 7 9 5 b\nq 1 3\n",
        "inetkit-modseq 1 7 9 5 b\nv 1 3 S\n",
    ] {
        assert!(ModSeqs::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn uid_sets() {
    let text = |uids: &[u32]| {
        uid_sequence(uids).map(|s| {
            let mut out = Vec::new();
            crate::wire::data(
                &mut out,
                imap_codec::imap_types::response::Data::Vanished {
                    earlier: false,
                    known_uids: s,
                },
            );
            String::from_utf8(out).unwrap()
        })
    };
    assert_eq!(text(&[]), None);
    assert_eq!(
        text(&[1, 2, 3, 5, 7, 8]).as_deref(),
        Some("* VANISHED 1:3,5,7:8\r\n")
    );
    assert_eq!(
        text(&[9, 4_000_000_000]).as_deref(),
        Some("* VANISHED 9,4000000000\r\n")
    );
}

#[test]
fn a_snapshot_from_before_another_sessions_change_records_nothing() {
    let (_root, folder) = inbox(2);
    let before = folder.snapshot().unwrap();
    sync(folder.path(), &before);
    // Another session changes message 1 and records it.
    let mut msg = before.messages[0].clone();
    folder
        .update_flags(&mut msg, FlagChange::Add(Flags::FLAGGED))
        .unwrap();
    let after = note(
        folder.path(),
        before.uid_validity,
        std::slice::from_ref(&msg),
    );
    // A look taken before that change must not record the old flags as a new change.
    assert_eq!(sync(folder.path(), &before), after);
    assert_eq!(sync(folder.path(), &folder.snapshot().unwrap()), after);
}

#[test]
fn a_record_from_an_earlier_boot_moves_on() {
    let (_root, folder) = inbox(2);
    let snap = folder.snapshot().unwrap();
    folder.delete(&snap.messages[..1]).unwrap();
    sync(folder.path(), &snap);
    let record = sync(folder.path(), &folder.snapshot().unwrap());
    let path = folder.path().join(FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let old_boot = text.replacen(boot_id(), "0-earlier-boot", 1);
    std::fs::write(&path, old_boot).unwrap();
    let after = current(folder.path(), snap.uid_validity);
    assert_eq!(after.highest(), record.highest() + BOOT_GAP);
    // Messages keep their numbers; the expunges before are no longer vouched for.
    assert_eq!(after.of(2), record.of(2));
    assert_eq!(after.vanished_since(record.highest()), Vanished::Unknown);
    // Saved with this boot: it moves on once.
    assert_eq!(sync(folder.path(), &folder.snapshot().unwrap()), after);
    assert_eq!(current(folder.path(), snap.uid_validity), after);
}
