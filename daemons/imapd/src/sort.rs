//! SORT (RFC 5256 §3) with SORT=DISPLAY (RFC 5957), and the base subject of RFC 5256 §2.1
//! that THREAD shares.
//!
//! Each matching message's header is read and parsed once, and only the keys the criteria
//! name are kept (each cut to [`MAX_KEY`] bytes, so a folder's keys stay small); then one
//! stable sort on the criteria in order, ties in sequence order (§3).

use std::cmp::Ordering;
use std::time::UNIX_EPOCH;

use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use inetkit_maildir::MessageInfo;
use mail_parser::{Address, Message};

use crate::search::{Need, Stopped, Watch};
use crate::selected::octets;
use crate::session::fetch::mime;

/// The longest text key kept per message, in bytes: longer ones are compared by their start.
const MAX_KEY: usize = 256;

/// The keys of one message that a SORT or THREAD needs.
#[derive(Default, Clone, Debug)]
pub(crate) struct Keys {
    /// The sent date (Date:, in UTC), else the internal date: seconds since 1970.
    pub(crate) date: i64,
    pub(crate) subject: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) cc: String,
    pub(crate) display_from: String,
    pub(crate) display_to: String,
}

/// Whether sorting by these criteria reads the messages' headers.
pub(crate) fn need(criteria: &[SortCriterion]) -> Need {
    if criteria
        .iter()
        .all(|c| matches!(c.key, SortKey::Arrival | SortKey::Size))
    {
        Need::Nothing
    } else {
        Need::Header
    }
}

impl Keys {
    /// The keys from a message's header (`None` when it has none or is not read).
    pub(crate) fn of(msg: &MessageInfo, header: Option<&Message<'_>>) -> Keys {
        let internal = internal_date(msg);
        let Some(m) = header else {
            return Keys {
                date: internal,
                ..Keys::default()
            };
        };
        let date = m
            .date()
            .filter(|d| d.is_valid())
            .map_or(internal, |d| d.to_timestamp());
        Keys {
            date,
            subject: cut(base_subject(m.subject().unwrap_or_default())),
            from: cut(mailbox(m.from())),
            to: cut(mailbox(m.to())),
            cc: cut(mailbox(m.cc())),
            display_from: cut(display(m.from())),
            display_to: cut(display(m.to())),
        }
    }
}

fn internal_date(msg: &MessageInfo) -> i64 {
    msg.internal_date
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The first `MAX_KEY` bytes, at a character boundary.
fn cut(mut s: String) -> String {
    if s.len() > MAX_KEY {
        let end = (0..=MAX_KEY)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(end);
    }
    s
}

/// The first address's mailbox (local part), i;ascii-casemap (RFC 5256 §3: FROM, TO, CC).
/// A group comes first in the envelope as its name (RFC 3501 §7.4.2): that is its mailbox.
fn mailbox(list: Option<&Address<'_>>) -> String {
    let local = match list {
        Some(Address::Group(groups)) => groups
            .first()
            .and_then(|g| g.name.as_deref())
            .unwrap_or_default(),
        Some(list) => list
            .first()
            .and_then(|a| a.address.as_deref())
            .and_then(|a| a.split('@').next())
            .unwrap_or_default(),
        None => "",
    };
    local.to_ascii_uppercase()
}

/// The first address's display name, else its address; a group's name for a group
/// (RFC 5957 §3, as Dovecot), case folded.
fn display(list: Option<&Address<'_>>) -> String {
    let text = match list {
        Some(Address::Group(groups)) => groups
            .first()
            .and_then(|g| g.name.as_deref())
            .unwrap_or_default()
            .to_owned(),
        Some(list) => match list.first() {
            Some(a) => match (a.name.as_deref(), a.address.as_deref()) {
                (Some(name), _) if !name.trim().is_empty() => name.trim().to_owned(),
                (_, Some(address)) => address.to_owned(),
                _ => String::new(),
            },
            None => String::new(),
        },
        None => String::new(),
    };
    text.to_lowercase()
}

/// Orders messages (indexes into the folder, with their keys) by the criteria, ties by
/// sequence number.
pub(crate) fn order(
    messages: &[MessageInfo],
    keyed: &mut [(usize, Keys)],
    criteria: &[SortCriterion],
) {
    keyed.sort_by(|(a, ka), (b, kb)| {
        for c in criteria {
            let o = compare(&c.key, messages, (*a, ka), (*b, kb));
            let o = if c.reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.cmp(b)
    });
}

fn compare(
    key: &SortKey,
    messages: &[MessageInfo],
    a: (usize, &Keys),
    b: (usize, &Keys),
) -> Ordering {
    let info = |i: usize| messages.get(i);
    match key {
        // Arrival order is the internal date, then the sequence number (§3).
        SortKey::Arrival => {
            let date = |i| info(i).map_or(0, internal_date);
            date(a.0).cmp(&date(b.0))
        }
        SortKey::Size => {
            let size = |i| info(i).map_or(0, octets);
            size(a.0).cmp(&size(b.0))
        }
        SortKey::Date => a.1.date.cmp(&b.1.date),
        SortKey::Subject => a.1.subject.cmp(&b.1.subject),
        SortKey::From => a.1.from.cmp(&b.1.from),
        SortKey::To => a.1.to.cmp(&b.1.to),
        SortKey::Cc => a.1.cc.cmp(&b.1.cc),
        SortKey::DisplayFrom => a.1.display_from.cmp(&b.1.display_from),
        SortKey::DisplayTo => a.1.display_to.cmp(&b.1.display_to),
    }
}

/// The indexes of `hits` in the criteria's order. Blocking: `content` reads a message's
/// header; the watch stops it as it stops SEARCH.
pub(crate) fn sort(
    messages: &[MessageInfo],
    hits: &[usize],
    criteria: &[SortCriterion],
    watch: &mut Watch<'_>,
    mut content: impl FnMut(&MessageInfo) -> Vec<u8>,
) -> Result<Vec<usize>, Stopped> {
    let reads = need(criteria) == Need::Header;
    let mut keyed = Vec::with_capacity(hits.len());
    for &i in hits {
        let Some(msg) = messages.get(i) else {
            continue;
        };
        if watch.stop() {
            return Err(watch.stopped());
        }
        let keys = if reads {
            let bytes = content(msg);
            Keys::of(msg, mime::parse(&bytes).as_ref())
        } else {
            Keys::of(msg, None)
        };
        keyed.push((i, keys));
    }
    order(messages, &mut keyed, criteria);
    Ok(keyed.into_iter().map(|(i, _)| i).collect())
}

/// The base subject of RFC 5256 §2.1, in i;ascii-casemap (upper case): a reply or forward
/// has its original's base subject. `subject` is decoded already (step 1's encoded words).
pub(crate) fn base_subject(subject: &str) -> String {
    base_subject_and_reply(subject).0
}

/// The base subject, and whether the subject marked a reply or forward (a "Re:" or "Fwd:"
/// leader, a "(fwd)" trailer or a "[Fwd: …]" wrapper was removed): THREAD's step 5 wants it.
pub(crate) fn base_subject_and_reply(subject: &str) -> (String, bool) {
    let mut reply = false;
    // (1) Runs of whitespace (folding included) become one space.
    let mut s: Vec<char> = Vec::with_capacity(subject.len());
    for c in subject.chars() {
        let c = if c.is_ascii_whitespace() { ' ' } else { c };
        if c == ' ' && s.last() == Some(&' ') {
            continue;
        }
        s.push(c.to_ascii_uppercase());
    }
    loop {
        // (2) Trailing "(fwd)" and whitespace.
        loop {
            if s.last() == Some(&' ') {
                s.pop();
            } else if s.ends_with(&['(', 'F', 'W', 'D', ')']) {
                s.truncate(s.len() - 5);
                reply = true;
            } else {
                break;
            }
        }
        // (3)-(5): leaders ("Re:", "[blob] Fwd:", whitespace) and a leading blob, while
        // something is left.
        let mut at = 0;
        loop {
            if let Some(end) = leader(&s, at) {
                reply |= end > at + 1 || s.get(at) != Some(&' ');
                at = end;
                continue;
            }
            match blob(&s, at) {
                Some(end) if end < s.len() => at = end,
                _ => break,
            }
        }
        s.drain(..at);
        // (6) "[Fwd: …]" around all of it: unwrap and start again.
        if s.starts_with(&['[', 'F', 'W', 'D', ':']) && s.last() == Some(&']') {
            s.pop();
            s.drain(..5);
            reply = true;
            continue;
        }
        break;
    }
    (s.into_iter().collect(), reply)
}

/// `subj-leader` at `at`: one space, or blobs then "re"/"fw"/"fwd", spaces, a blob, ":".
/// Where it ends.
fn leader(s: &[char], at: usize) -> Option<usize> {
    if s.get(at) == Some(&' ') {
        return Some(at + 1);
    }
    let mut i = at;
    while let Some(end) = blob(s, i) {
        i = end;
    }
    let rest = s.get(i..)?;
    i += if rest.starts_with(&['R', 'E']) {
        2
    } else if rest.starts_with(&['F', 'W', 'D']) {
        3
    } else if rest.starts_with(&['F', 'W']) {
        2
    } else {
        return None;
    };
    while s.get(i) == Some(&' ') {
        i += 1;
    }
    if let Some(end) = blob(s, i) {
        i = end;
    }
    (s.get(i) == Some(&':')).then_some(i + 1)
}

/// `subj-blob` at `at`: "[" without brackets inside "]" and the spaces after. Where it ends.
fn blob(s: &[char], at: usize) -> Option<usize> {
    if s.get(at) != Some(&'[') {
        return None;
    }
    let close = at
        + 1
        + s.get(at + 1..)?
            .iter()
            .position(|&c| c == ']' || c == '[')?;
    if s.get(close) != Some(&']') {
        return None;
    }
    let mut i = close + 1;
    while s.get(i) == Some(&' ') {
        i += 1;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects() {
        for (subject, base) in [
            ("a", "A"),
            ("Re: a", "A"),
            ("RE: Re: re[2]:  a  (fwd)", "A"),
            ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "B"),
            ("Re: [FWD: c]", "C"),
            ("[xyz]", "[XYZ]"),
            ("re: [fwd: [fwd: re: [fwd: babylon]]]", "BABYLON"),
            ("Ad: Re: Ad: Re: Ad: x", "AD: RE: AD: RE: AD: X"),
            ("[list] subject [x]", "SUBJECT [X]"),
            ("", ""),
            ("  ", ""),
            ("Re:", ""),
            ("Fwd: Grüße", "GRüßE"),
        ] {
            assert_eq!(base_subject(subject), base, "{subject:?}");
        }
    }

    #[test]
    fn a_sort_orders_and_stops() {
        let messages: Vec<String> = [
            "Subject: b\r\nFrom: y@x\r\n",
            "Subject: Re: a\r\n",
            "Subject: c\r\nFrom: x@x\r\n",
        ]
        .iter()
        .map(|h| format!("{h}\r\nbody\r\n"))
        .collect();
        let (selected, _dir) = crate::testing::inbox("sort-run", &messages);
        let criteria = |text: &str| -> Vec<SortCriterion> {
            use imap_codec::decode::Decoder;
            use imap_codec::imap_types::command::CommandBody;
            let line = format!("a SORT ({text}) UTF-8 ALL\r\n");
            let (_, command) = imap_codec::CommandCodec::default()
                .decode(line.as_bytes())
                .expect("a SORT");
            match command.body {
                CommandBody::Sort { sort_criteria, .. } => sort_criteria.as_ref().to_vec(),
                _ => panic!("not a SORT"),
            }
        };
        let read = |m: &MessageInfo| crate::search::read(&selected, m, Need::Header);
        let mut here = || false;
        let mut watch = Watch::new(crate::search::TIME_LIMIT, &mut here);
        let all = [0, 1, 2];
        let by = |c: &str, watch: &mut Watch<'_>| {
            sort(&selected.messages, &all, &criteria(c), watch, read)
        };
        assert_eq!(by("SUBJECT", &mut watch), Ok(vec![1, 0, 2]));
        assert_eq!(by("REVERSE SUBJECT", &mut watch), Ok(vec![2, 0, 1]));
        // No From: an empty mailbox, first; ties stay in sequence order.
        assert_eq!(by("FROM", &mut watch), Ok(vec![1, 2, 0]));
        // Delivered within a second: equal arrival, so REVERSE changes nothing.
        assert_eq!(by("REVERSE ARRIVAL", &mut watch), Ok(vec![0, 1, 2]));
        // The client has gone: the sort stops as SEARCH does.
        let mut gone = || true;
        let mut watch = Watch::new(crate::search::TIME_LIMIT, &mut gone);
        assert_eq!(by("SUBJECT", &mut watch), Err(Stopped::Gone));
    }

    #[test]
    fn long_keys_are_cut_at_a_character() {
        let long = "é".repeat(200);
        let cut = cut(long);
        assert!(cut.len() <= MAX_KEY && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn keys_from_a_header() {
        let raw = b"From: \"Zed\" <alice@example.org>\r\nTo: team: b@x.org;\r\n\
            Cc: carol@example.org\r\nSubject: Re: [list] Hello\r\n\
            Date: Fri, 22 Feb 2008 02:00:00 +0200\r\n\r\n";
        let msg = mime::parse(raw);
        let (selected, _dir) = crate::testing::inbox("sort-keys", &["x\r\n".to_owned()]);
        let info = selected.messages.first().expect("a message");
        let keys = Keys::of(info, msg.as_ref());
        assert_eq!(keys.subject, "HELLO");
        assert_eq!(keys.from, "ALICE");
        assert_eq!(keys.to, "TEAM");
        assert_eq!(keys.cc, "CAROL");
        assert_eq!(keys.display_from, "zed");
        assert_eq!(keys.display_to, "team");
        assert_eq!(keys.date, 1_203_638_400);
    }
}
