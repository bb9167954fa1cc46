use std::io::Write as _;

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
    // Nothing changed: nothing moves, nothing is written, nothing is copied (the record is
    // the one this process holds).
    assert_eq!(sync(folder.path(), &snap), first);
    assert!(Arc::ptr_eq(&sync(folder.path(), &snap), &first));

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
    // The UIDs' index follows the list: the forgotten ones are gone from it, and a UID
    // expunged again (a message come back) is listed once, at its new place.
    assert!(!record.vanished.contains(5) && record.vanished.contains(6));
    let newest = record.highest + 1_000_000;
    record.vanished.extend([(6, newest)]);
    assert_eq!(record.vanished.len(), MAX_VANISHED);
    assert_eq!(record.vanished.iter().last(), Some((6, newest)));
    // And a file with more than that is not believed.
    record.vanished.insert(MAX_VANISHED as u32 + 100, base + 1);
    assert!(ModSeqs::parse(&record.to_text()).is_err());
}

/// A session's copy of the record for a flag change shares the expunge list (up to 10,000
/// entries) with the record it came from; an expunge copies it, and leaves the original as
/// it was.
#[test]
fn a_flag_change_does_not_copy_the_expunge_list() {
    let mut record = ModSeqs::fresh(1, 0);
    let base = record.highest;
    for uid in 1..=100 {
        record.vanished.insert(uid, base + u64::from(uid));
    }
    let shared = Arc::new(record);
    let mut flagged = shared.clone();
    let next = flagged.highest + 1;
    Arc::make_mut(&mut flagged).apply(vec![(200, Entry::new(next, Flags::SEEN))], &[], next);
    assert!(flagged.vanished.shares_with(&shared.vanished));
    let mut expunged = flagged.clone();
    let next = expunged.highest + 1;
    Arc::make_mut(&mut expunged).apply(Vec::new(), &[200], next);
    // Only the last run of 256 is copied.
    assert!(!expunged.vanished.shares_with(&shared.vanished));
    assert_eq!((shared.vanished.len(), expunged.vanished.len()), (100, 101));
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

/// The record as a process that never saw the folder reads it.
fn read_afresh(folder: &Folder, uid_validity: u32) -> Arc<ModSeqs> {
    cache::forget(&folder.path().join(FILE));
    current(folder.path(), uid_validity)
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn a_change_is_appended_and_read_back_the_same() {
    let (_root, folder) = inbox(40);
    let snap = folder.snapshot().unwrap();
    let validity = snap.uid_validity;
    sync(folder.path(), &snap);
    let path = folder.path().join(FILE);
    let (ino, mut size) = (inode(&path), std::fs::metadata(&path).unwrap().len());
    for (i, msg) in snap.messages.iter().take(10).enumerate() {
        let mut msg = msg.clone();
        let flag = if i % 2 == 0 {
            Flags::SEEN
        } else {
            Flags::FLAGGED
        };
        folder
            .update_flags(&mut msg, FlagChange::Add(flag))
            .unwrap();
        let after = note(folder.path(), validity, std::slice::from_ref(&msg));
        // One message's line and a commit, to the same file: not the 40 lines again.
        let grown = std::fs::metadata(&path).unwrap().len();
        assert!(grown > size && grown - size < 80, "{size} -> {grown}");
        assert_eq!(inode(&path), ino);
        size = grown;
        assert_eq!(read_afresh(&folder, validity), after);
    }
    // Expunges and arrivals found by a look are appended too.
    folder.delete(&snap.messages[20..25]).unwrap();
    Store::new(folder.path().parent().unwrap())
        .deliver("alice", &mut &b"Subject: new\r\n\r\nx\r\n"[..])
        .unwrap();
    let after = sync(folder.path(), &folder.snapshot().unwrap());
    assert_eq!(inode(&path), ino);
    assert_eq!(
        after.vanished_since(after.highest() - 1),
        Vanished::Known((21..=25).collect())
    );
    assert_eq!(read_afresh(&folder, validity), after);
    // A process that read the file before reads only what was added since, to the same end.
    let mut msg = folder.snapshot().unwrap().messages[0].clone();
    folder
        .update_flags(&mut msg, FlagChange::Add(Flags::REPLIED))
        .unwrap();
    let read_before = read_afresh(&folder, validity);
    let noted = note(folder.path(), validity, std::slice::from_ref(&msg));
    assert_ne!(noted, read_before);
    assert_eq!(current(folder.path(), validity), noted);
    assert_eq!(read_afresh(&folder, validity), noted);
}

#[test]
fn appended_changes_are_compacted_when_they_outgrow_the_base() {
    let (_root, folder) = inbox(3);
    let snap = folder.snapshot().unwrap();
    let validity = snap.uid_validity;
    sync(folder.path(), &snap);
    let path = folder.path().join(FILE);
    let ino = inode(&path);
    let mut msg = snap.messages[0].clone();
    let mut rewritten = false;
    for i in 0..3_000 {
        let flag = if i % 2 == 0 {
            Flags::SEEN
        } else {
            Flags::EMPTY
        };
        folder
            .update_flags(&mut msg, FlagChange::Set(flag))
            .unwrap();
        note(folder.path(), validity, std::slice::from_ref(&msg));
        if inode(&path) != ino {
            rewritten = true;
            break;
        }
    }
    assert!(rewritten, "never compacted");
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len < 400, "the compacted file is {len} bytes");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("h ")).count(), 1);
    let record = current(folder.path(), validity);
    assert_eq!(read_afresh(&folder, validity), record);
}

#[test]
fn a_tail_cut_short_is_ignored_until_the_next_change_compacts_it() {
    let (_root, folder) = inbox(3);
    let snap = folder.snapshot().unwrap();
    let validity = snap.uid_validity;
    let before = sync(folder.path(), &snap);
    let path = folder.path().join(FILE);
    // Half a block: a line without its commit, and a commit without its newline.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let highest = before.highest() + 1;
    write!(file, "m 1 {highest} S\nh {highest} ").unwrap();
    drop(file);
    assert_eq!(current(folder.path(), validity), before);
    assert_eq!(read_afresh(&folder, validity), before);
    // The next change does not append after the torn tail: it rewrites the file.
    let ino = inode(&path);
    let mut msg = snap.messages[1].clone();
    folder
        .update_flags(&mut msg, FlagChange::Add(Flags::DRAFT))
        .unwrap();
    let after = note(folder.path(), validity, std::slice::from_ref(&msg));
    assert_ne!(inode(&path), ino);
    assert_eq!(after.of(1), before.of(1));
    assert_eq!(read_afresh(&folder, validity), after);
}

#[test]
fn a_file_rewritten_in_place_is_read_whole() {
    let (_root, folder) = inbox(3);
    let snap = folder.snapshot().unwrap();
    let validity = snap.uid_validity;
    let known = sync(folder.path(), &snap);
    let (h, floor) = (known.highest(), known.floor);
    let path = folder.path().join(FILE);
    // Other bytes in the same inode (as a file renamed over this one may reuse it), longer,
    // and from where this process stopped reading, a valid block: the last commit line is
    // not where it was, so they are not taken for lines appended to the known record, and
    // read whole they are damaged (a commit below the header's number).
    let text = std::fs::read_to_string(&path).unwrap();
    let commit = format!("h {h} {floor}\n");
    assert!(text.ends_with(&commit));
    let mut other = text.replace(&commit, &format!("h {} {floor}\n", h - 1));
    let next = h + 1;
    other.push_str(&format!("m 1 {next} S\nh {next} {floor}\n"));
    std::fs::write(&path, other).unwrap();
    let read = current(folder.path(), validity);
    assert!(
        read.highest() > next,
        "{} was taken as appended",
        read.highest()
    );
    assert_eq!(read.vanished_since(next), Vanished::Unknown);
}

#[test]
fn replaying_the_appended_lines_gives_the_record_exactly() {
    // Every UID expunged at once, more than the expunge record keeps: bound() forgets some
    // of them at once, and a replay must forget the same ones.
    let mut before = ModSeqs::fresh(1, 0);
    let h = before.highest;
    let n = MAX_VANISHED as u32 + 7;
    for uid in 1..=n {
        let flags = if uid % 3 == 0 {
            Flags::SEEN
        } else {
            Flags::EMPTY
        };
        before.messages.insert(uid, Entry { modseq: h, flags });
    }
    fn expunge_all(r: &mut ModSeqs, n: u32) {
        let next = r.highest + 1;
        for uid in 1..=n {
            r.messages.remove(&uid);
            r.vanished.insert(uid, next);
        }
        r.highest = next;
        r.bound();
    }
    fn flag_arrive_and_expunge(r: &mut ModSeqs, n: u32) {
        let next = r.highest + 1;
        let flags = Flags::FLAGGED | Flags::from_maildir("ab");
        for uid in (1..=n).step_by(7) {
            r.messages.insert(
                uid,
                Entry {
                    modseq: next,
                    flags,
                },
            );
        }
        let flags = Flags::EMPTY;
        r.messages.insert(
            n + 1,
            Entry {
                modseq: next,
                flags,
            },
        );
        r.messages.remove(&2);
        r.vanished.insert(2, next);
        r.highest = next;
        r.bound();
    }
    let cases: [fn(&mut ModSeqs, u32); 2] = [expunge_all, flag_arrive_and_expunge];
    for change in cases {
        let mut after = before.clone();
        change(&mut after, n);
        let lines = file::changes(&before, &after);
        let mut replayed = before.clone();
        let done = file::replay(&mut replayed, &lines, false).unwrap();
        assert_eq!(done.commits, 1);
        assert_eq!(replayed, after);
    }
}

#[test]
fn expunges_are_kept_oldest_first_each_uid_once() {
    let mut expunged = Expunged::from_entries(vec![(9, 3), (5, 7), (9, 1), (6, 3)]);
    assert_eq!(
        expunged.iter().collect::<Vec<_>>(),
        [(7, 5), (1, 9), (3, 9)]
    );
    expunged.insert(7, 12);
    expunged.insert(2, 10);
    assert_eq!(expunged.get(7), Some(12));
    assert!(!expunged.contains(4));
    assert_eq!(expunged.since(9), [2, 7]);
    assert_eq!(expunged.since(0), [1, 2, 3, 7]);
    assert_eq!(expunged.keep_newest(2), Some(9));
    assert_eq!(expunged.iter().collect::<Vec<_>>(), [(2, 10), (7, 12)]);
    assert_eq!(expunged.keep_newest(5), None);
}

#[test]
fn a_record_of_the_first_format_is_read_and_compacted_at_its_first_change() {
    let (_root, folder) = inbox(3);
    let snap = folder.snapshot().unwrap();
    let validity = snap.uid_validity;
    let record = sync(folder.path(), &snap);
    let path = folder.path().join(FILE);
    // As version 1 wrote it: the same lines, no commit line.
    let text = std::fs::read_to_string(&path).unwrap();
    let (body, commit) = text.trim_end().rsplit_once('\n').unwrap();
    assert!(commit.starts_with("h "));
    let v1 = format!(
        "{}\n",
        body.replacen("inetkit-modseq 2 ", "inetkit-modseq 1 ", 1)
    );
    std::fs::write(&path, &v1).unwrap();
    assert_eq!(read_afresh(&folder, validity), record);
    let mut msg = snap.messages[0].clone();
    folder
        .update_flags(&mut msg, FlagChange::Add(Flags::SEEN))
        .unwrap();
    let after = note(folder.path(), validity, std::slice::from_ref(&msg));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("inetkit-modseq 2 "), "{text}");
    assert_eq!(read_afresh(&folder, validity), after);
    // A version-2 header with no commit line at all is damage, not the first format.
    std::fs::write(
        &path,
        v1.replacen("inetkit-modseq 1 ", "inetkit-modseq 2 ", 1),
    )
    .unwrap();
    assert!(read_afresh(&folder, validity).highest() > after.highest());
}

#[test]
fn a_damaged_block_is_rebuilt_above_the_numbers_the_blocks_before_it_gave() {
    let (_root, folder) = inbox(2);
    let snap = folder.snapshot().unwrap();
    let validity = snap.uid_validity;
    sync(folder.path(), &snap);
    let path = folder.path().join(FILE);
    let mut text = std::fs::read_to_string(&path).unwrap();
    let base_highest = read_afresh(&folder, validity).highest();
    // Blocks appended far above the base's number, then one damaged.
    let far = base_highest + 1_000_000_000;
    text.push_str(&format!(
        "m 1 {far} S\nh {far} 0\nm 1 x S\nh {} 0\n",
        far + 1
    ));
    std::fs::write(&path, text).unwrap();
    assert!(read_afresh(&folder, validity).highest() > far);
}

#[test]
fn expunging_many_at_once_keeps_each_uid_once_in_order() {
    let mut expunged = Expunged::default();
    expunged.extend((1..=5).map(|uid| (uid, 10)));
    expunged.extend([(3, 12), (9, 11), (9, 13)]);
    assert_eq!(
        expunged.iter().collect::<Vec<_>>(),
        [(1, 10), (2, 10), (4, 10), (5, 10), (3, 12), (9, 13)]
    );
}

#[test]
fn expunged_uids_are_found_with_their_modseqs_and_absent_ones_are_not() {
    let expunged =
        Expunged::from_entries((1..=10_000).map(|uid| (u64::from(uid) * 2, uid)).collect());
    let mut found = expunged.find(&[9_999, 3, 20_000, 10_000]);
    found.sort_unstable();
    assert_eq!(found, [(3, 6), (9_999, 19_998), (10_000, 20_000)]);
    assert!(expunged.find(&[]).is_empty());
}
