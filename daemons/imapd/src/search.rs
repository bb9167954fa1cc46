//! SEARCH (RFC 3501 §6.4.4).
//!
//! The keys are compiled once per command into a [`Query`]: needles lowercased once, text
//! keys (BODY, TEXT, and the header keys) interned so that a key given many times is one key,
//! duplicate keys of an AND dropped. Each message is then read once, as far as the keys need
//! (nothing, its header, or all of it), and prepared once, lazily: parsed once, lowercased
//! once, its header values gathered once; a text key is answered once per message however
//! often the query names it. A search also stops, between keys, when the client has gone or
//! when it has run for [`TIME_LIMIT`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use inetkit_maildir::{Flags, MessageInfo};

use crate::selected::{octets, Selected};

mod content;

pub(crate) use self::content::read;
use self::content::Content;

/// The longest a SEARCH may run.
pub(crate) const TIME_LIMIT: Duration = Duration::from_secs(30);
/// How often a running search looks at the client.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// Why a search stopped before its end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The client went away.
    Gone,
    /// It ran for [`TIME_LIMIT`].
    TooLong,
}

/// What a search needs from each message's file.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy, Debug)]
pub(crate) enum Need {
    Nothing,
    Header,
    Whole,
}

/// A text key: where it looks, and the lowercased needle.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Text {
    /// A header field (name lowercased): its raw and decoded values.
    Header(String, String),
    /// An address field (FROM, TO, CC, BCC; name lowercased): its addresses as parsed,
    /// `name <mailbox@host>` with comments and folding gone, and group names.
    Address(String, String),
    /// The body: raw, and the decoded text of each part.
    Body(String),
    /// The whole message: raw, the decoded parts and the decoded header values.
    All(String),
}

/// A compiled key. Text keys refer to [`Query::texts`] by index.
#[derive(PartialEq, Eq, Hash)]
enum Key {
    All,
    Seq(SequenceSet),
    Uid(SequenceSet),
    Has(Flags),
    Lacks(Flags),
    Recent,
    Old,
    New,
    Keyword(String),
    Unkeyword(String),
    Larger(u64),
    Smaller(u64),
    Before(chrono::NaiveDate),
    On(chrono::NaiveDate),
    Since(chrono::NaiveDate),
    /// WITHIN (RFC 5032): the internal date at or before this instant (OLDER n).
    NotAfter(SystemTime),
    /// At or after this instant (YOUNGER n).
    NotBefore(SystemTime),
    SentBefore(chrono::NaiveDate),
    SentOn(chrono::NaiveDate),
    SentSince(chrono::NaiveDate),
    Text(usize),
    /// CONDSTORE (RFC 7162 §3.1.5): a mod-sequence at least this.
    ModSeq(u64),
    And(Vec<Key>),
    Or(Box<Key>, Box<Key>),
    Not(Box<Key>),
}

/// A SEARCH command's keys, compiled.
pub(crate) struct Query {
    keys: Vec<Key>,
    texts: Vec<Text>,
    need: Need,
}

impl Query {
    pub(crate) fn new(keys: &[SearchKey<'_>]) -> Query {
        let mut interned = HashMap::new();
        let mut texts = Vec::new();
        let mut need = Need::Nothing;
        let mut compiler = Compiler {
            now: SystemTime::now(),
            interned: &mut interned,
            texts: &mut texts,
            need: &mut need,
        };
        let keys = compiler.all(keys);
        Query { keys, texts, need }
    }

    /// Whether a key is MODSEQ: the reply then carries the highest mod-sequence found.
    pub(crate) fn uses_modseq(&self) -> bool {
        fn has(key: &Key) -> bool {
            match key {
                Key::ModSeq(_) => true,
                Key::And(keys) => keys.iter().any(has),
                Key::Or(a, b) => has(a) || has(b),
                Key::Not(k) => has(k),
                _ => false,
            }
        }
        self.keys.iter().any(has)
    }

    /// Whether a key is LARGER or SMALLER: the messages' sizes must then be measured.
    pub(crate) fn uses_size(&self) -> bool {
        fn has(key: &Key) -> bool {
            match key {
                Key::Larger(_) | Key::Smaller(_) => true,
                Key::And(keys) => keys.iter().any(has),
                Key::Or(a, b) => has(a) || has(b),
                Key::Not(k) => has(k),
                _ => false,
            }
        }
        self.keys.iter().any(has)
    }
}

struct Compiler<'c> {
    now: SystemTime,
    interned: &'c mut HashMap<Text, usize>,
    texts: &'c mut Vec<Text>,
    need: &'c mut Need,
}

impl Compiler<'_> {
    /// Keys that must all hold, duplicates dropped.
    fn all(&mut self, keys: &[SearchKey<'_>]) -> Vec<Key> {
        let mut seen = HashSet::new();
        keys.iter()
            .filter(|k| seen.insert(*k))
            .map(|k| self.key(k))
            .collect()
    }

    /// A text key, interned: the same text twice is the same key.
    fn text(&mut self, text: Text, need: Need) -> Key {
        self.needs(need);
        if let Some(&id) = self.interned.get(&text) {
            return Key::Text(id);
        }
        let id = self.texts.len();
        self.interned.insert(text.clone(), id);
        self.texts.push(text);
        Key::Text(id)
    }

    fn ago(&self, seconds: u32) -> SystemTime {
        let ago = Duration::from_secs(u64::from(seconds));
        self.now.checked_sub(ago).unwrap_or(UNIX_EPOCH)
    }

    fn needs(&mut self, need: Need) {
        *self.need = (*self.need).max(need);
    }

    fn header(&mut self, name: &str, needle: &[u8]) -> Key {
        let text = Text::Header(name.to_ascii_lowercase(), lower(needle));
        self.text(text, Need::Header)
    }

    fn address(&mut self, name: &str, needle: &[u8]) -> Key {
        let text = Text::Address(name.to_owned(), lower(needle));
        self.text(text, Need::Header)
    }

    fn key(&mut self, key: &SearchKey<'_>) -> Key {
        let date = |d: &imap_codec::imap_types::datetime::NaiveDate| *d.as_ref();
        match key {
            SearchKey::And(keys) => Key::And(self.all(keys.as_ref())),
            SearchKey::Or(a, b) => Key::Or(Box::new(self.key(a)), Box::new(self.key(b))),
            SearchKey::Not(k) => Key::Not(Box::new(self.key(k))),
            SearchKey::All => Key::All,
            SearchKey::SequenceSet(set) => Key::Seq(set.clone()),
            SearchKey::Uid(set) => Key::Uid(set.clone()),
            SearchKey::Answered => Key::Has(Flags::REPLIED),
            SearchKey::Unanswered => Key::Lacks(Flags::REPLIED),
            SearchKey::Deleted => Key::Has(Flags::TRASHED),
            SearchKey::Undeleted => Key::Lacks(Flags::TRASHED),
            SearchKey::Draft => Key::Has(Flags::DRAFT),
            SearchKey::Undraft => Key::Lacks(Flags::DRAFT),
            SearchKey::Flagged => Key::Has(Flags::FLAGGED),
            SearchKey::Unflagged => Key::Lacks(Flags::FLAGGED),
            SearchKey::Seen => Key::Has(Flags::SEEN),
            SearchKey::Unseen => Key::Lacks(Flags::SEEN),
            SearchKey::Recent => Key::Recent,
            SearchKey::Old => Key::Old,
            SearchKey::New => Key::New,
            SearchKey::Keyword(k) => Key::Keyword(k.as_ref().to_owned()),
            SearchKey::Unkeyword(k) => Key::Unkeyword(k.as_ref().to_owned()),
            SearchKey::Larger(n) => Key::Larger(u64::from(*n)),
            SearchKey::Smaller(n) => Key::Smaller(u64::from(*n)),
            SearchKey::Before(d) => Key::Before(date(d)),
            SearchKey::On(d) => Key::On(date(d)),
            SearchKey::Since(d) => Key::Since(date(d)),
            // Seconds before the search: the instant is fixed once, when it is compiled.
            SearchKey::Older(n) => Key::NotAfter(self.ago(n.get())),
            SearchKey::Younger(n) => Key::NotBefore(self.ago(n.get())),
            SearchKey::SentBefore(d) => {
                self.needs(Need::Header);
                Key::SentBefore(date(d))
            }
            SearchKey::SentOn(d) => {
                self.needs(Need::Header);
                Key::SentOn(date(d))
            }
            SearchKey::SentSince(d) => {
                self.needs(Need::Header);
                Key::SentSince(date(d))
            }
            SearchKey::Bcc(s) => self.address("bcc", s.as_ref()),
            SearchKey::Cc(s) => self.address("cc", s.as_ref()),
            SearchKey::From(s) => self.address("from", s.as_ref()),
            SearchKey::To(s) => self.address("to", s.as_ref()),
            SearchKey::Subject(s) => self.header("Subject", s.as_ref()),
            SearchKey::Header(name, s) => {
                self.header(&String::from_utf8_lossy(name.as_ref()), s.as_ref())
            }
            SearchKey::Body(s) => self.text(Text::Body(lower(s.as_ref())), Need::Whole),
            SearchKey::Text(s) => self.text(Text::All(lower(s.as_ref())), Need::Whole),
            SearchKey::ModSequence { modseq, .. } => Key::ModSeq(*modseq),
        }
    }
}

/// Measures every message's size for LARGER and SMALLER, within the search's watch (a folder
/// another program filled can have many thousands to read). Should measuring fail, the file
/// sizes stand in.
pub(crate) fn measure_sizes(sel: &mut Selected, watch: &mut Watch<'_>) -> Result<(), Stopped> {
    let all: Vec<usize> = (0..sel.messages.len()).collect();
    let _ = sel.measure_until(&all, &mut || watch.stop());
    if watch.stop() {
        return Err(watch.stopped());
    }
    Ok(())
}

pub(super) fn lower(s: &[u8]) -> String {
    String::from_utf8_lossy(s).to_lowercase()
}

/// Keeps a search within its time and stops it when the client has gone.
pub(crate) struct Watch<'p> {
    deadline: Instant,
    next_probe: Instant,
    /// True when the client has gone.
    client_gone: &'p mut dyn FnMut() -> bool,
    stopped: Option<Stopped>,
}

impl<'p> Watch<'p> {
    /// A watch that stops a search after `limit` ([`TIME_LIMIT`]) or once `client_gone`.
    pub(crate) fn new(limit: Duration, client_gone: &'p mut dyn FnMut() -> bool) -> Watch<'p> {
        let now = Instant::now();
        Watch {
            deadline: now + limit,
            next_probe: now,
            client_gone,
            stopped: None,
        }
    }

    /// Why it stopped, once [`Watch::stop`] said so ([`Stopped::TooLong`] otherwise).
    pub(crate) fn stopped(&mut self) -> Stopped {
        self.stopped.take().unwrap_or(Stopped::TooLong)
    }

    /// Whether to stop; looks at the clock and the client at most every [`PROBE_EVERY`].
    pub(crate) fn stop(&mut self) -> bool {
        if self.stopped.is_some() {
            return true;
        }
        let now = Instant::now();
        if now < self.next_probe {
            return false;
        }
        self.next_probe = now + PROBE_EVERY;
        if (self.client_gone)() {
            self.stopped = Some(Stopped::Gone);
        } else if now >= self.deadline {
            self.stopped = Some(Stopped::TooLong);
        }
        self.stopped.is_some()
    }
}

/// Indexes of the matching messages, or why the search stopped. Blocking: reads messages.
pub(crate) fn run(
    selected: &Selected,
    query: &Query,
    watch: &mut Watch<'_>,
) -> Result<Vec<usize>, Stopped> {
    run_over(selected, query, watch, |msg, need| {
        read(selected, msg, need)
    })
}

/// [`run`] with each message's content (as far as `Need` says, in CRLF form) from `content`
/// rather than its file: the fuzz target's way in.
pub(crate) fn run_over(
    selected: &Selected,
    query: &Query,
    watch: &mut Watch<'_>,
    mut content: impl FnMut(&MessageInfo, Need) -> Vec<u8>,
) -> Result<Vec<usize>, Stopped> {
    let mut hits = Vec::new();
    let mut memo = Vec::new();
    for (i, msg) in selected.messages.iter().enumerate() {
        if watch.stop() {
            break;
        }
        let bytes = match query.need {
            Need::Nothing => Vec::new(),
            need => content(msg, need),
        };
        memo.clear();
        memo.resize(query.texts.len(), None);
        let mut ctx = Ctx {
            selected,
            query,
            seq: i as u32 + 1,
            msg,
            content: Content::new(&bytes),
            memo: &mut memo,
            watch,
        };
        if query.keys.iter().all(|k| ctx.matches(k)) {
            hits.push(i);
        }
    }
    match watch.stopped.take() {
        Some(stopped) => Err(stopped),
        None => Ok(hits),
    }
}

struct Ctx<'s, 'b, 'w, 'p> {
    selected: &'s Selected,
    query: &'s Query,
    seq: u32,
    msg: &'s MessageInfo,
    content: Content<'b>,
    /// Text keys already answered for this message.
    memo: &'s mut Vec<Option<bool>>,
    watch: &'w mut Watch<'p>,
}

impl Ctx<'_, '_, '_, '_> {
    fn matches(&mut self, key: &Key) -> bool {
        let flags = self.msg.flags;
        let selected = self.selected;
        let recent = selected.recent.contains(&self.msg.uid);
        let has_keyword = |name: &str| {
            selected
                .keywords
                .find(name)
                .and_then(Flags::keyword)
                .is_some_and(|f| flags.contains(f))
        };
        match key {
            Key::And(keys) => keys.iter().all(|k| self.matches(k)),
            Key::Or(a, b) => self.matches(a) || self.matches(b),
            Key::Not(k) => !self.matches(k),
            Key::All => true,
            Key::Seq(set) => in_set(set, self.seq, selected.messages.len() as u32),
            Key::Uid(set) => in_set(
                set,
                self.msg.uid,
                selected.messages.last().map_or(0, |m| m.uid),
            ),
            Key::Has(f) => flags.contains(*f),
            Key::Lacks(f) => !flags.contains(*f),
            Key::Recent => recent,
            Key::Old => !recent,
            Key::New => recent && !flags.contains(Flags::SEEN),
            Key::Keyword(k) => has_keyword(k),
            Key::Unkeyword(k) => !has_keyword(k),
            Key::ModSeq(n) => selected.modseqs.of(self.msg.uid) >= *n,
            Key::Larger(n) => octets(self.msg) > *n,
            Key::Smaller(n) => octets(self.msg) < *n,
            Key::Before(d) => internal_date(self.msg) < *d,
            Key::On(d) => internal_date(self.msg) == *d,
            Key::Since(d) => internal_date(self.msg) >= *d,
            Key::NotAfter(t) => self.msg.internal_date <= *t,
            Key::NotBefore(t) => self.msg.internal_date >= *t,
            Key::SentBefore(d) => self.content.sent_date().is_some_and(|s| s < *d),
            Key::SentOn(d) => self.content.sent_date().is_some_and(|s| s == *d),
            Key::SentSince(d) => self.content.sent_date().is_some_and(|s| s >= *d),
            Key::Text(id) => {
                if let Some(Some(known)) = self.memo.get(*id) {
                    return *known;
                }
                // A stopped search matches nothing more.
                if self.watch.stop() {
                    return false;
                }
                let found = self
                    .query
                    .texts
                    .get(*id)
                    .is_some_and(|text| self.content.has(text));
                if let Some(slot) = self.memo.get_mut(*id) {
                    *slot = Some(found);
                }
                found
            }
        }
    }
}

pub(crate) fn in_set(set: &SequenceSet, n: u32, largest: u32) -> bool {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(x) => x.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(v) => value(v) == n,
        Sequence::Range(a, b) => {
            let (a, b) = (value(a), value(b));
            (a.min(b)..=a.max(b)).contains(&n)
        }
    })
}

fn internal_date(msg: &MessageInfo) -> chrono::NaiveDate {
    let secs = msg
        .internal_date
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::CommandBody;
    use imap_codec::CommandCodec;

    fn query(command: &str) -> Query {
        let line = format!("a SEARCH {command}\r\n");
        let (_, command) = CommandCodec::default()
            .decode(line.as_bytes())
            .expect("a SEARCH");
        match command.body {
            CommandBody::Search { criteria, .. } => Query::new(criteria.as_ref()),
            _ => panic!("not a SEARCH"),
        }
    }

    /// An INBOX with three messages, selected; removed with the guard.
    fn inbox(name: &str) -> (Selected, impl Drop) {
        let messages: Vec<String> = (1..=3)
            .map(|n| format!("From: a@example.org\r\nSubject: s{n}\r\n\r\nBody {n} here.\r\n"))
            .collect();
        inbox_of(name, &messages)
    }

    fn inbox_of(name: &str, messages: &[String]) -> (Selected, impl Drop) {
        crate::testing::inbox(name, messages)
    }

    #[test]
    fn keys_given_many_times_are_one_key() {
        let q = query(&["TEXT x"; 500].join(" "));
        assert_eq!((q.keys.len(), q.texts.len()), (1, 1));
        // Needles compare lowercased; the same needle elsewhere in the tree is the same text.
        let q = query("TEXT Here TEXT HERE OR TEXT here FROM A FROM a NOT from \"A\"");
        assert_eq!(q.texts.len(), 2);
        assert!(q.need == Need::Whole);
        assert!(query("FROM a SENTON 1-Jan-2020").need == Need::Header);
        assert!(query("SEEN 1:*").need == Need::Nothing);
    }

    #[test]
    fn a_search_runs_and_stops() {
        let (selected, _dir) = inbox("run");
        let mut here = || false;
        let mut watch = Watch::new(TIME_LIMIT, &mut here);
        let q = query("TEXT HERE NOT BODY s2 OR SUBJECT s1 SUBJECT S3");
        assert_eq!(run(&selected, &q, &mut watch), Ok(vec![0, 2]));
        let q = query("HEADER subject \"\" NOT HEADER X-None \"\"");
        assert_eq!(run(&selected, &q, &mut watch), Ok(vec![0, 1, 2]));
        // The client has gone: nothing more is looked at.
        let mut gone = || true;
        let mut watch = Watch::new(TIME_LIMIT, &mut gone);
        assert_eq!(run(&selected, &q, &mut watch), Err(Stopped::Gone));
        // Out of time.
        let mut watch = Watch::new(Duration::ZERO, &mut here);
        assert_eq!(run(&selected, &q, &mut watch), Err(Stopped::TooLong));
    }

    /// Messages another program wrote, without sizes in their names, measured for LARGER
    /// within the search's watch: none read once it has stopped.
    #[test]
    fn sizes_are_measured_within_the_watch() {
        let (mut selected, _dir) = inbox("measure");
        let cur = selected.folder.path().join("cur");
        for n in 0..5 {
            let body = "x".repeat(100 * (n + 1));
            std::fs::write(
                cur.join(format!("1700000000.M{n}P1.other:2,")),
                format!("\n{body}\n"),
            )
            .expect("a message");
        }
        selected = Selected::open(selected.folder.clone(), true, &crate::watch::Watches::new())
            .expect("open");
        let unmeasured = selected.messages.iter().filter(|m| m.vsize.is_none());
        assert_eq!(unmeasured.count(), 5);
        let mut here = || false;
        let before = inetkit_maildir::message_files_read();
        let mut watch = Watch::new(Duration::ZERO, &mut here);
        assert_eq!(
            measure_sizes(&mut selected, &mut watch),
            Err(Stopped::TooLong)
        );
        assert_eq!(
            inetkit_maildir::message_files_read(),
            before,
            "read after the stop"
        );
        let mut watch = Watch::new(TIME_LIMIT, &mut here);
        assert_eq!(measure_sizes(&mut selected, &mut watch), Ok(()));
        assert_eq!(inetkit_maildir::message_files_read(), before + 5);
        let q = query("LARGER 300");
        let hits = run(&selected, &q, &mut watch).expect("a search");
        // Bare LFs count as CRLF: 100n + 4 bytes for the n-th.
        let sizes: Vec<u64> = hits
            .iter()
            .map(|&i| selected.messages[i].vsize.unwrap_or(0))
            .collect();
        assert_eq!(sizes, [304, 404, 504]);
    }

    #[test]
    fn address_keys_match_the_parsed_addresses() {
        let messages: Vec<String> = [
            "From: one@example.org\r\nTo: Ann Other <ann@example.net>\r\n",
            "From: <one (a comment)@ (another) example.org>\r\n",
            "From: one@example.org (Shown Name)\r\n",
            "To: team: x1@example.org, x2@example.org;, crew: y@example.org;\r\n",
        ]
        .iter()
        .map(|h| format!("{h}Subject: s\r\n\r\nbody\r\n"))
        .collect();
        let (selected, _dir) = inbox_of("addresses", &messages);
        let mut here = || false;
        let mut search = |keys: &str| {
            let mut watch = Watch::new(TIME_LIMIT, &mut here);
            run(&selected, &query(keys), &mut watch).expect("a search")
        };
        // The comments inside the second address are not part of it.
        assert_eq!(search("FROM one@example.org"), vec![0, 1, 2]);
        assert_eq!(search("FROM \"ne@example.o\""), vec![0, 1, 2]);
        // A trailing comment is the display name.
        assert_eq!(search("FROM \"shown name\""), vec![2]);
        assert_eq!(search("TO \"ann other\""), vec![0]);
        // Group names and members; the raw text between them is not an address.
        assert_eq!(search("TO team"), vec![3]);
        assert_eq!(search("TO crew"), vec![3]);
        assert_eq!(search("TO y@example.org"), vec![3]);
        assert_eq!(search("TO \";,\""), Vec::<usize>::new());
        // An empty needle: every message with the field.
        assert_eq!(search("TO \"\""), vec![0, 3]);
    }
}
