//! What the fuzz targets `maildir_name` and `uidlist` run (see `inetkit_runtime::fuzzing`):
//! Maildir file names as other programs may write them, and the per-folder uid list file.

use std::sync::Arc;

use inetkit_runtime::fuzzing::take_byte;

use crate::maildir::{arrival_key, cur_name, name_time, size_field, split_name, SizeCounter};
use crate::uidlist::{Entry, UidList};
use crate::Flags;

/// Target `maildir_name`: a file name from `new/` or `cur/` (UTF-8, as the folder scan only
/// takes those) split into base and flags and written back, the `,S=`/`,W=` fields and the
/// delivery time read from it; and, on the same bytes as message content, the size counter.
/// Flags survive a round trip through the name, the fields found are in the name, and the
/// sizes do not depend on how the content was cut into reads.
pub fn maildir_name(data: &[u8]) {
    let (cut, bytes) = take_byte(data);
    sizes(bytes, usize::from(cut) + 1);
    let Ok(name) = std::str::from_utf8(bytes) else {
        return;
    };
    let (base, flags) = split_name(name);
    assert!(name.starts_with(base) && !base.contains(':'));
    if !name.contains(':') {
        assert_eq!((base, flags), (name, Flags::EMPTY));
    }
    let letters = flags.to_maildir();
    assert!(letters.bytes().is_sorted() && letters.bytes().all(|b| b.is_ascii_alphabetic()));
    assert_eq!(Flags::from_maildir(&letters), flags);
    assert_eq!(split_name(&cur_name(base, flags)), (base, flags));

    for key in ['S', 'W'] {
        if let Some(value) = size_field(base, key) {
            let found = base.split(',').skip(1).any(|field| {
                field
                    .strip_prefix(key)
                    .and_then(|f| f.strip_prefix('='))
                    .and_then(|digits| digits.parse::<u64>().ok())
                    == Some(value)
            });
            assert!(found, "{key}={value} is not in {base:?}");
        }
    }
    if let Some(secs) = name_time(base) {
        assert!(secs < 10u64.pow(12));
        assert!(base.starts_with(|c: char| c.is_ascii_digit()));
    }
    let (time, _micros, sort_base) = arrival_key(base);
    assert_eq!(time, name_time(base));
    assert_eq!(sort_base, base);
}

/// Size and CRLF size of `bytes` read whole and in pieces of `chunk` bytes: the same, and the
/// CRLF size is the size plus one per LF without a CR before it.
fn sizes(bytes: &[u8], chunk: usize) {
    let mut whole = SizeCounter::default();
    whole.update(bytes);
    let mut pieces = SizeCounter::default();
    for piece in bytes.chunks(chunk) {
        pieces.update(piece);
    }
    assert_eq!((whole.size, whole.vsize), (pieces.size, pieces.vsize));
    let bare_lf = bytes
        .iter()
        .enumerate()
        .filter(|&(at, &b)| b == b'\n' && (at == 0 || bytes[at - 1] != b'\r'))
        .count();
    assert_eq!(whole.size, bytes.len() as u64);
    assert_eq!(whole.vsize, (bytes.len() + bare_lf) as u64);
}

/// Target `uidlist`: the `inetkit-uidlist` file ([`UidList::parse`]) on arbitrary text, and on
/// lists written from arbitrary entries. A list that parses has UIDs in strictly rising order
/// below its next UID, which is never `u32::MAX`; written out and read back it is the same
/// list; read in two parts (as a file that grew is) it is the same as read whole; and a list
/// written from any entries with names the folder scan takes reads back as written.
pub fn uidlist(data: &[u8]) {
    let (split, bytes) = take_byte(data);
    if let Ok(text) = std::str::from_utf8(bytes) {
        parsed(text, usize::from(split));
    }
    written(bytes);
}

fn parsed(text: &str, split: usize) {
    let Ok(list) = UidList::parse(text) else {
        return;
    };
    assert_ne!(list.next_uid, u32::MAX);
    assert_ne!(list.validity, 0);
    for pair in list.entries.windows(2) {
        assert!(pair[0].uid < pair[1].uid);
    }
    if let Some(last) = list.entries.last() {
        assert!(last.uid < list.next_uid && last.uid > 0);
        // Facts are only ever read, never computed into a panic.
        let _ = last.facts();
    }
    let text_again = list.to_text();
    let Ok(again) = UidList::parse(&text_again) else {
        panic!("{text_again:?} written from {text:?} does not parse");
    };
    let mut expected = list.clone();
    expected.needs_rewrite = false;
    expected.forgotten = 0;
    assert_eq!(again, expected);
    assert_eq!(again.to_text(), text_again);

    // The same file read as a cached copy and the lines appended since.
    if list.needs_rewrite {
        return;
    }
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let tail = lines.split_off((split % lines.len()).max(1)).concat();
    let Ok(mut first) = UidList::parse(&lines.concat()) else {
        panic!("the first lines of {text:?} do not parse");
    };
    assert!(first.parse_lines(&tail, 0).is_ok(), "{tail:?}");
    assert_eq!(first, list);
}

/// Entries from `bytes`: each line is `uid-byte name`, with the sizes and time set from the
/// uid byte's bits, names as the folder scan keeps them (no LF, not empty).
fn written(bytes: &[u8]) {
    let mut list = UidList::new(1);
    let mut uid = 0u32;
    for line in bytes.split(|&b| b == b'\n') {
        let Some((&step, name)) = line.split_first() else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        uid += u32::from(step) + 1;
        let value = |bit: u8| (step & bit != 0).then_some(u64::from(step) << 30);
        list.entries.push(Entry::new(
            uid,
            Arc::from(name),
            value(1),
            value(2),
            value(4),
        ));
    }
    list.next_uid = uid + 1;
    let text = list.to_text();
    let Ok(again) = UidList::parse(&text) else {
        panic!("{text:?} does not parse");
    };
    assert_eq!(again, list);
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn maildir_name_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "maildir_name", maildir_name) > 0);
    }

    #[test]
    fn uidlist_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "uidlist", uidlist) > 0);
    }
}
