//! Target `imap_search`: a SEARCH program evaluated over arbitrary messages.

use std::collections::BTreeSet;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::CommandCodec;
use inetkit_maildir::MessageInfo;
use inetkit_runtime::fuzzing::take_byte;

use super::folder::{flags, with_messages, Facts};
use crate::search::{run_over, Need, Query, Watch, TIME_LIMIT};
use crate::selected::Selected;
use crate::session::fetch::raw::{header_len, Crlf};

/// Target `imap_search`: two bytes of flags (one per message, the fixture's keywords among
/// them), then a SEARCH program up to the first LF, then two messages separated by the first
/// NUL. The search runs as the daemon runs it (keys compiled, deduplicated and interned, each
/// message prepared once and its text keys memoised) and must end, within its time limit,
/// with ascending indexes that agree with the keys evaluated one at a time: the program is
/// the AND of its keys, NOT the complement, OR the union.
pub fn imap_search(data: &[u8]) {
    let (first_flags, data) = take_byte(data);
    let (second_flags, data) = take_byte(data);
    let (program, messages) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (
            data.get(..at).unwrap_or_default(),
            data.get(at + 1..).unwrap_or_default(),
        ),
        None => (data, &b""[..]),
    };
    let (first, second) = match messages.iter().position(|&b| b == 0) {
        Some(at) => (
            messages.get(..at).unwrap_or_default(),
            messages.get(at + 1..).unwrap_or_default(),
        ),
        None => (messages, &b""[..]),
    };
    let mut command = b"a SEARCH ".to_vec();
    command.extend_from_slice(program);
    command.extend_from_slice(b"\r\n");
    let Ok((_, decoded)) = CommandCodec::default().decode(&command) else {
        return;
    };
    let CommandBody::Search { criteria, .. } = decoded.body else {
        return;
    };
    let keys: &[SearchKey<'_>] = criteria.as_ref();

    let contents = [crlf(first), crlf(second)];
    let facts = [
        Facts {
            uid: 3,
            flags: flags(first_flags),
            vsize: contents[0].len() as u64,
            days: 10_000,
            recent: first_flags & 0x80 != 0,
        },
        Facts {
            uid: 9,
            flags: flags(second_flags),
            vsize: contents[1].len() as u64,
            days: 20_000,
            recent: second_flags & 0x80 != 0,
        },
    ];
    with_messages(&facts, |selected| {
        let all = search(selected, keys, &contents);
        assert!(
            all.windows(2).all(|w| w[0] < w[1]) && all.iter().all(|&i| i < contents.len()),
            "{all:?}"
        );
        let found = |keys: &[SearchKey<'_>]| -> BTreeSet<usize> {
            search(selected, keys, &contents).into_iter().collect()
        };
        let one = |key: &SearchKey<'_>| found(std::slice::from_ref(key));
        let mut expected: BTreeSet<usize> = (0..contents.len()).collect();
        for key in keys {
            let alone = one(key);
            expected = expected.intersection(&alone).copied().collect();
            match key {
                SearchKey::Not(inner) => {
                    let inner = one(inner);
                    let complement = (0..contents.len()).filter(|i| !inner.contains(i)).collect();
                    assert_eq!(alone, complement, "{key:?}");
                }
                SearchKey::Or(a, b) => {
                    let union = one(a).union(&one(b)).copied().collect();
                    assert_eq!(alone, union, "{key:?}");
                }
                _ => {}
            }
        }
        assert_eq!(all, expected.into_iter().collect::<Vec<_>>(), "{keys:?}");
    });
}

/// The indexes a search with these keys finds.
fn search(selected: &Selected, keys: &[SearchKey<'_>], contents: &[Vec<u8>; 2]) -> Vec<usize> {
    let query = Query::new(keys);
    let mut here = || false;
    let mut watch = Watch::new(TIME_LIMIT, &mut here);
    let content = |msg: &MessageInfo, need: Need| {
        let whole = contents
            .get(usize::from(msg.uid != 3))
            .cloned()
            .unwrap_or_default();
        match need {
            Need::Header => whole.get(..header_len(&whole)).unwrap_or_default().to_vec(),
            _ => whole,
        }
    };
    match run_over(selected, &query, &mut watch, content) {
        Ok(hits) => hits,
        Err(stopped) => panic!("the search stopped: {stopped:?}"),
    }
}

/// A message as the daemon reads it from its file: line ends made CRLF.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Crlf::default().push(bytes, &mut out);
    out
}
