//! Target `imap_sequence`: sequence sets and UID sets as a client writes them.

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::extensions::uidplus::UidElement;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::CommandCodec;
use inetkit_maildir::Flags;
use inetkit_runtime::fuzzing::take_byte;

use super::folder::{with_messages, Facts};
use crate::search::in_set;
use crate::wire;

/// The most messages an input's folder holds.
const MAX_MESSAGES: u8 = 24;

/// Target `imap_sequence`: the first byte says how many messages the folder holds and the
/// next ones the gaps between their UIDs (255: a jump towards 2³²); the rest is a sequence
/// set, decoded as the daemon does (in a FETCH command). Resolving it by sequence number and
/// by UID (binary search, `*` the last) must agree with SEARCH's plain membership test, a
/// sequence number past the end must be an error and a UID that does not exist must not; the
/// COPYUID set made of the UIDs found must name exactly them, in the fewest elements.
pub fn imap_sequence(data: &[u8]) {
    let (count, data) = take_byte(data);
    let count = usize::from(count % (MAX_MESSAGES + 1)).min(data.len());
    let (gaps, text) = data.split_at(count);
    let mut uids: Vec<u32> = Vec::new();
    let mut last = 0u32;
    for &gap in gaps {
        let step = if gap == 255 {
            u32::MAX / 3
        } else {
            u32::from(gap) + 1
        };
        let Some(uid) = last.checked_add(step) else {
            break;
        };
        uids.push(uid);
        last = uid;
    }
    let mut command = b"a FETCH ".to_vec();
    command.extend_from_slice(text);
    command.extend_from_slice(b" FLAGS\r\n");
    let Ok((_, decoded)) = CommandCodec::default().decode(&command) else {
        return;
    };
    let CommandBody::Fetch { sequence_set, .. } = decoded.body else {
        return;
    };
    let facts: Vec<Facts> = uids
        .iter()
        .map(|&uid| Facts {
            uid,
            flags: Flags::EMPTY,
            vsize: 0,
            days: 0,
            recent: false,
        })
        .collect();
    let len = uids.len() as u32;
    let largest_uid = uids.last().copied().unwrap_or(0);
    let (by_seq, by_uid) = with_messages(&facts, |selected| {
        (
            selected.resolve(&sequence_set, false),
            selected.resolve(&sequence_set, true),
        )
    });

    let members = |n: u32, largest: u32| in_set(&sequence_set, n, largest);
    let expected_seq = seq_in_range(&sequence_set, len).then(|| {
        (0..uids.len())
            .filter(|&i| members(i as u32 + 1, len))
            .collect::<Vec<_>>()
    });
    assert_eq!(by_seq, expected_seq, "{sequence_set:?} over {len} messages");
    let expected_uid: Vec<usize> = (0..uids.len())
        .filter(|&i| members(uids[i], largest_uid))
        .collect();
    assert_eq!(
        by_uid.as_ref(),
        Some(&expected_uid),
        "{sequence_set:?} over {uids:?}"
    );

    let chosen: Vec<u32> = expected_uid.iter().map(|&i| uids[i]).collect();
    let Some(set) = wire::uid_set(&chosen) else {
        assert!(chosen.is_empty(), "no UID set for {chosen:?}");
        return;
    };
    let mut named: Vec<u32> = Vec::new();
    let mut previous_end: Option<u32> = None;
    for element in set.0.as_ref() {
        let (start, end) = match element {
            UidElement::Single(n) => (n.get(), n.get()),
            UidElement::Range(a, b) => {
                assert!(a < b, "a range {a}:{b} that is not ascending");
                (a.get(), b.get())
            }
        };
        if let Some(previous) = previous_end {
            assert!(
                start > previous.saturating_add(1),
                "{set:?}: elements that could be one"
            );
        }
        previous_end = Some(end);
        named.extend(start..=end);
        assert!(
            named.len() <= chosen.len(),
            "{set:?} names more than {chosen:?}"
        );
    }
    assert_eq!(named, chosen);
}

/// RFC 3501 §6.4.8 vs §9 (seq-number): every number of a sequence set (`*` the last message)
/// must name an existing message; with no messages, `*` names none.
fn seq_in_range(set: &SequenceSet, len: u32) -> bool {
    let fits = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get() <= len,
        SeqOrUid::Asterisk => len > 0,
    };
    set.0.as_ref().iter().all(|s| match s {
        Sequence::Single(v) => fits(v),
        Sequence::Range(a, b) => fits(a) && fits(b),
    })
}
