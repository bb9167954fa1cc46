use super::*;

fn entry(uid: u32, base: &str) -> Entry {
    Entry::new(uid, base.into(), None, None, None)
}

#[test]
fn dovecot_lists_are_taken_over() {
    let dir = std::env::temp_dir().join(format!("uidlist-dovecot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(DOVECOT_FILE),
        "3 V1700000000 N9 G0123abcd\n3 :1700000000.M1P2.host,S=10,W=12\n\
         7 G0123 W40 S38 :1700000001.M2P2.host\n",
    )
    .unwrap();
    let list = UidList::from_dovecot(&dir).expect("a Dovecot list");
    assert_eq!((list.validity, list.next_uid), (1_700_000_000, 9));
    let uids: Vec<u32> = list.entries.iter().map(|e| e.uid).collect();
    assert_eq!(uids, [3, 7]);
    assert_eq!(list.entries[1].facts(), (38, Some(40), 1_700_000_001));
    // Anything else is not taken: the folder is numbered afresh.
    for bad in [
        "1 1700000000 3\n",
        "3 N9\n",
        "3 V1 N2\n2 :a\n1 :b\n",
        "3 V1 N2\nx :a\n",
    ] {
        std::fs::write(dir.join(DOVECOT_FILE), bad).unwrap();
        assert!(UidList::from_dovecot(&dir).is_none(), "{bad:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_trip() {
    let mut list = UidList::new(1_700_000_000);
    list.entries.push(entry(1, "1.M1P1Q1.h,S=10,W=11"));
    list.entries.push(Entry::new(
        7,
        "a name with spaces".into(),
        Some(5),
        Some(6),
        Some(99),
    ));
    list.next_uid = 9;
    let text = list.to_text();
    assert!(text.starts_with("inetkit-uidlist 2 V1700000000 N9\n1 :1.M1P1Q1.h,S=10,W=11\n"));
    assert_eq!(UidList::parse(&text).unwrap(), list);
}

/// A forget line drops its message; one for a UID not listed changes nothing; a second
/// process extending its cached copy by the appended lines ends with the same list.
#[test]
fn forget_lines_drop_their_messages() {
    let text = "inetkit-uidlist 2 V5 N9\n1 :a\n3 :b\n4 :c\n-3\n-7\n8 :d\n-1\n";
    let list = UidList::parse(text).unwrap();
    let bases: Vec<&str> = list.entries.iter().map(|e| &*e.base).collect();
    assert_eq!(bases, ["c", "d"]);
    assert_eq!((list.forgotten, list.next_uid), (3, 9));
    let (head, tail) = text.split_at(text.find("-3").unwrap());
    let mut cached = UidList::parse(head).unwrap();
    cached.parse_lines(tail, 0).unwrap();
    assert_eq!(cached, list);
    // Written whole: no forget lines, and read back the same.
    let again = UidList::parse(&list.to_text()).unwrap();
    assert_eq!((again.entries, again.forgotten), (list.entries, 0));
}

/// Other programs' base names may be any UTF-8; the header's end is found by its newline.
#[test]
fn multi_byte_names_parse() {
    let text = "inetkit-uidlist 1 V5 N1\n1 :Grüße.€\n2 S=3 W=3 T=1 :日本\n";
    let list = UidList::parse(text).unwrap();
    let bases: Vec<&str> = list.entries.iter().map(|e| &*e.base).collect();
    assert_eq!(bases, ["Grüße.€", "日本"]);
    assert_eq!(UidList::parse(&list.to_text()).unwrap(), list);
    // A header of multi-byte garbage is corrupt, not a panic.
    assert_eq!(UidList::parse("ü€\n1 :a\n").unwrap_err().1, None);
}

#[test]
fn appended_lines_raise_next_uid() {
    let text = "inetkit-uidlist 1 V5 N3\n1 :a\n3 :b\n4 :c\n";
    let list = UidList::parse(text).unwrap();
    assert_eq!(list.next_uid, 5);
    assert_eq!(list.entries.len(), 3);
    assert!(!list.needs_rewrite);
}

#[test]
fn partial_last_line_is_dropped() {
    let list = UidList::parse("inetkit-uidlist 1 V5 N1\n1 :a\n2 :b").unwrap();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.next_uid, 2);
    assert!(list.needs_rewrite);
}

#[test]
fn corruption_is_detected() {
    for (text, validity) in [
        ("", None),
        ("garbage\n", None),
        ("inetkit-uidlist 1 V0 N1\n", None),
        ("inetkit-uidlist 3 V5 N1\n", None),
        ("inetkit-uidlist 2 V5 N1\n1 :a\n-x\n", Some(5)),
        ("inetkit-uidlist 1 V5 N1\n1 :a\nx :b\n", Some(5)),
        ("inetkit-uidlist 1 V5 N1\n2 :a\n2 :b\n", Some(5)),
        ("inetkit-uidlist 1 V5 N1\n0 :a\n", Some(5)),
        ("inetkit-uidlist 1 V5 N1\n1 Q=1 :a\n", Some(5)),
        ("inetkit-uidlist 1 V5 N1\n1 :\n", Some(5)),
        ("inetkit-uidlist 1 V5 N1\n4294967294 :a\n", Some(5)),
    ] {
        let err = UidList::parse(text).unwrap_err();
        assert_eq!(err.1, validity, "{text:?}: {}", err.0);
    }
}
