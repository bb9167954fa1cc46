//! SEARCH and UID SEARCH (RFC 3501 §6.4.4) with ESEARCH (RFC 4731), SEARCHRES (RFC 5182)
//! and WITHIN (RFC 5032); SORT (RFC 5256, RFC 5957) with ESORT (RFC 5267); THREAD
//! (RFC 5256); CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4: UPDATE, PARTIAL, CANCELUPDATE;
//! the updates are [`super::context`]'s). The matching is [`crate::search`], the ordering
//! [`crate::sort`] and [`crate::thread`]; what imap-codec does not parse (`RETURN (…)`, `$`)
//! is [`crate::search_args`].

use std::borrow::Cow;
use std::fmt::Write as _;

use imap_codec::imap_types::core::{Charset, Tag};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
use imap_codec::imap_types::response::{Code, Data, StatusKind};
use imap_codec::imap_types::search::SearchKey;
use tokio::io::{AsyncRead, AsyncWrite};

use super::context::Update;
use super::input::client_gone;
use super::reply::{bad, no_code, ok, reply, Done};
use super::{blocking, Conn, Session};
use crate::search::{self, Need, Query, Stopped};
use crate::search_args::{self, Prepared, ReturnOptions, Saved};
use crate::selected::Selected;
use crate::sort::{self, Keys};
use crate::thread::{self, Algorithm, Facts};
use crate::wire::{self, nz};

/// What this module adds to CAPABILITY.
pub(super) const CAPABILITIES: &[&str] = &[
    "ESEARCH",
    "SEARCHRES",
    "WITHIN",
    "SORT",
    "SORT=DISPLAY",
    "ESORT",
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
    "THREAD=REFS",
    "CONTEXT=SEARCH",
    "CONTEXT=SORT",
];

/// A session's search state.
#[derive(Default)]
pub(super) struct SearchState {
    /// SEARCHRES's `$`: the UIDs a `RETURN (SAVE)` kept, ascending; empty when unset.
    pub(super) saved: Vec<u32>,
    /// The current command's `RETURN (…)`, which imap-codec does not parse.
    returning: Option<Returning>,
    /// Searches and sorts with `RETURN (UPDATE)` (CONTEXT=SEARCH, CONTEXT=SORT), oldest
    /// first.
    pub(super) updates: Vec<Update>,
}

impl SearchState {
    /// The selected folder changes: `$` and the updated searches are gone.
    pub(super) fn deselected(&mut self) {
        self.saved.clear();
        self.updates.clear();
    }
}

struct Returning {
    options: ReturnOptions,
    /// The command as decoded (RETURN taken out), with UPDATE only.
    command: Vec<u8>,
}

/// A search that ended early, as the command's reply.
fn stopped(stopped: Stopped, command: &str) -> Done {
    match stopped {
        Stopped::Gone => Done::Close,
        Stopped::TooLong => no_code(
            wire::code("LIMIT"),
            format!("{command} took too long: narrow it down."),
        ),
    }
}

fn charset_refused(charset: Option<&Charset<'_>>) -> Option<Done> {
    let cs: &str = charset?.as_ref();
    if cs.eq_ignore_ascii_case("UTF-8") || cs.eq_ignore_ascii_case("US-ASCII") {
        return None;
    }
    let allowed = ["UTF-8", "US-ASCII"]
        .into_iter()
        .filter_map(|c| Charset::try_from(c).ok())
        .collect();
    Some(no_code(
        Code::BadCharset { allowed },
        "Unsupported charset.",
    ))
}

/// The message numbers a reply gives: UIDs or sequence numbers.
pub(super) fn numbers_of(sel: &Selected, indexes: &[usize], uid: bool) -> Vec<u32> {
    indexes
        .iter()
        .map(|&i| {
            if uid {
                sel.messages.get(i).map_or(0, |m| m.uid)
            } else {
                i as u32 + 1
            }
        })
        .collect()
}

/// `* ESEARCH (TAG "a") UID MIN 1 MAX 9 COUNT 4 ALL 1:2,7,9`; `numbers` in the order
/// they are given (sorted for ESORT), MIN and MAX the first and last of them.
/// `modseq`: with a MODSEQ search key, the highest mod-sequence the answer covers (RFC 7162
/// §3.1.5).
fn esearch(
    out: &mut Vec<u8>,
    tag: &Tag<'_>,
    uid: bool,
    r: &ReturnOptions,
    numbers: &[u32],
    modseq: Option<u64>,
) {
    let mut line = String::from("* ESEARCH (TAG \"");
    line.push_str(tag.as_ref());
    line.push_str("\")");
    if uid {
        line.push_str(" UID");
    }
    if let (true, Some(min)) = (r.min, numbers.first()) {
        let _ = write!(line, " MIN {min}");
    }
    if let (true, Some(max)) = (r.max, numbers.last()) {
        let _ = write!(line, " MAX {max}");
    }
    if r.count {
        let _ = write!(line, " COUNT {}", numbers.len());
    }
    if r.all && !numbers.is_empty() {
        line.push_str(" ALL ");
        line.push_str(&search_args::set_text(numbers));
    }
    if let Some((low, high)) = r.partial {
        let from = low as usize - 1;
        let to = (high as usize).min(numbers.len());
        let _ = write!(line, " PARTIAL ({low}:{high} ");
        match numbers.get(from..to) {
            Some(part) if !part.is_empty() => line.push_str(&search_args::set_text(part)),
            _ => line.push_str("NIL"),
        }
        line.push(')');
    }
    if let Some(modseq) = modseq.filter(|&m| m > 0) {
        let _ = write!(line, " MODSEQ {modseq}");
    }
    line.push_str("\r\n");
    out.extend_from_slice(line.as_bytes());
}

/// The mod-sequence an ESEARCH answer carries (RFC 7162 §3.1.5): the highest of the messages
/// it names when it names only the MIN and/or MAX one, else the highest of all found.
fn esearch_modseq(sel: &Selected, hits: &[usize], r: &ReturnOptions) -> Option<u64> {
    let of = |&i: &usize| sel.messages.get(i).map(|m| sel.modseqs.of(m.uid));
    if r.all || r.count || r.partial.is_some() {
        hits.iter().filter_map(of).max()
    } else {
        let min = hits.first().filter(|_| r.min);
        let max = hits.last().filter(|_| r.max);
        min.into_iter().chain(max).filter_map(of).max()
    }
}

impl Session {
    /// Before imap-codec decodes a command: takes out `RETURN (…)` (kept for the handler)
    /// and puts the saved result where `$` stands. `None` when the command was answered
    /// already (refused, or a command on an empty `$`).
    pub(super) fn prepare<'b, S>(
        &mut self,
        bytes: &'b [u8],
        conn: &mut Conn<S>,
    ) -> Option<Cow<'b, [u8]>> {
        self.search.returning = None;
        let folder: Vec<u32>;
        let saved = match &self.selected {
            Some(sel) => {
                // The UIDs in sequence order, only for a `$` to turn into sequence numbers.
                folder = if bytes.contains(&b'$') {
                    sel.messages.iter().map(|m| m.uid).collect()
                } else {
                    Vec::new()
                };
                Some(Saved {
                    uids: &self.search.saved,
                    folder: &folder,
                })
            }
            None => None,
        };
        let prepared = search_args::prepare(bytes, saved.as_ref());
        match prepared {
            Ok(Prepared::AsIs) => Some(Cow::Borrowed(bytes)),
            Ok(Prepared::Rewritten { bytes, returns }) => {
                // A SAVE empties `$` now (its `$`s are replaced already): a command that
                // then fails, even as BAD, leaves it empty (RFC 5182 §2.1).
                if returns.is_some_and(|r| r.save) {
                    self.search.saved.clear();
                }
                self.search.returning = returns.map(|options| Returning {
                    options,
                    // Kept to search again while updating (the `$` in it fixed now).
                    command: if options.update {
                        bytes.clone()
                    } else {
                        Vec::new()
                    },
                });
                Some(Cow::Owned(bytes))
            }
            Ok(Prepared::OnNothing(command)) => {
                let text = format!("{command} completed (no messages).");
                let tag = wire::tag_of(bytes);
                let text = wire::text(text);
                match tag {
                    Some(tag) => wire::send(
                        &mut conn.out,
                        &wire::tagged(tag, StatusKind::Ok, None, text),
                    ),
                    None => {
                        wire::status(&mut conn.out, wire::untagged(StatusKind::Bad, None, text))
                    }
                }
                None
            }
            Ok(Prepared::CancelUpdate(tags)) => {
                self.search.updates.retain(|u| !tags.contains(&u.tag));
                let done = wire::text("CANCELUPDATE completed.");
                if let Some(tag) = wire::tag_of(bytes) {
                    wire::send(
                        &mut conn.out,
                        &wire::tagged(tag, StatusKind::Ok, None, done),
                    );
                }
                None
            }
            Err(search_args::Refused(text)) => {
                reply(conn, wire::tag_of(bytes), StatusKind::Bad, None, text);
                None
            }
        }
    }

    /// The indexes of the messages that match, stopped as SEARCH stops.
    fn matching<S>(
        &mut self,
        criteria: &[SearchKey<'_>],
        conn: &mut Conn<S>,
    ) -> Result<Vec<usize>, Stopped>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let reader = &mut conn.reader;
        let mut gone = || client_gone(reader);
        let mut watch = search::Watch::new(search::TIME_LIMIT, &mut gone);
        self.matching_within(criteria, &mut watch)
    }

    /// [`Session::matching`] under a watch the caller goes on using (SORT, THREAD: one time
    /// limit for the search and the ordering together).
    fn matching_within(
        &mut self,
        criteria: &[SearchKey<'_>],
        watch: &mut search::Watch<'_>,
    ) -> Result<Vec<usize>, Stopped> {
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Vec::new());
        };
        let query = Query::new(criteria);
        if query.uses_size() {
            blocking(|| search::measure_sizes(sel, watch))?;
        }
        let sel = &*sel;
        blocking(|| search::run(sel, &query, watch))
    }

    /// SEARCH and UID SEARCH, with `RETURN (…)` (ESEARCH, SAVE). The search stops when the
    /// client goes away (looked at between keys) and after [`search::TIME_LIMIT`].
    pub(super) fn search<S>(
        &mut self,
        charset: Option<&Charset<'_>>,
        criteria: &[SearchKey<'_>],
        uid: bool,
        tag: &Tag<'_>,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let returning = self.search.returning.take();
        // IMAP4rev2 has no `* SEARCH`: without RETURN, ESEARCH with ALL (RFC 9051 §6.4.4).
        let returns = returning.as_ref().map(|r| r.options).or_else(|| {
            self.rev2.then_some(ReturnOptions {
                all: true,
                ..ReturnOptions::default()
            })
        });
        if let Some(refused) = charset_refused(charset) {
            self.forget_on_save(returns.as_ref());
            return refused;
        }
        if self.selected.is_none() {
            return bad("No mailbox selected.");
        }
        // A MODSEQ key turns CONDSTORE on (RFC 7162 §3.1).
        let uses_modseq = Query::new(criteria).uses_modseq();
        if uses_modseq {
            let condstore = crate::modseq::Resync {
                condstore: true,
                qresync: false,
            };
            self.turn_on(condstore, &mut conn.out);
        }
        let hits = match self.matching(criteria, conn) {
            Ok(hits) => hits,
            Err(s) => {
                self.forget_on_save(returns.as_ref());
                return stopped(s, "SEARCH");
            }
        };
        let Some(sel) = self.selected.as_ref() else {
            return bad("No mailbox selected.");
        };
        let numbers = numbers_of(sel, &hits, uid);
        let hit_uids = numbers_of(sel, &hits, true);
        let Some(r) = returns else {
            // With a MODSEQ key: the highest mod-sequence of the messages found (§3.1.5).
            let modseq = uses_modseq
                .then(|| {
                    hits.iter()
                        .filter_map(|&i| sel.messages.get(i))
                        .map(|m| sel.modseqs.of(m.uid))
                        .max()
                })
                .flatten()
                .and_then(std::num::NonZeroU64::new);
            wire::data(
                &mut conn.out,
                Data::Search(numbers.into_iter().map(nz).collect(), modseq),
            );
            return ok("SEARCH completed.");
        };
        let modseq = uses_modseq
            .then(|| esearch_modseq(sel, &hits, &r))
            .flatten();
        if r.save {
            self.save(&hits, &r);
        }
        if r.answers() {
            esearch(&mut conn.out, tag, uid, &r, &numbers, modseq);
        }
        if let Some(Returning { command, .. }) = returning.filter(|r| r.options.update) {
            self.keep_updated(tag, uid, command, hit_uids, &mut conn.out);
        }
        ok("SEARCH completed.")
    }

    /// A failed search with SAVE leaves `$` empty (RFC 5182 §2.1).
    fn forget_on_save(&mut self, returns: Option<&ReturnOptions>) {
        if returns.is_some_and(|r| r.save) {
            self.search.saved.clear();
        }
    }

    /// Keeps the result as `$` (UIDs): only the first and last when SAVE comes with MIN or
    /// MAX and neither ALL nor COUNT (RFC 5182 §2.4). `hits` in the result's order.
    fn save(&mut self, hits: &[usize], r: &ReturnOptions) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let chosen: Vec<usize> = if (r.min || r.max) && !(r.all || r.count) {
            let mut ends: Vec<usize> = Vec::new();
            let first = hits.iter().min().copied();
            let last = hits.iter().max().copied();
            ends.extend(first.filter(|_| r.min));
            ends.extend(last.filter(|_| r.max));
            ends
        } else {
            hits.to_vec()
        };
        let mut uids = numbers_of(sel, &chosen, true);
        uids.sort_unstable();
        uids.dedup();
        self.search.saved = uids;
    }

    /// SORT and UID SORT, with `RETURN (…)` (ESORT).
    pub(super) fn sort_command<S>(
        &mut self,
        criteria: &[SortCriterion],
        charset: &Charset<'_>,
        keys: &[SearchKey<'_>],
        uid: bool,
        tag: &Tag<'_>,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let returning = self.search.returning.take();
        let returns = returning.as_ref().map(|r| r.options);
        if let Some(refused) = charset_refused(Some(charset)) {
            self.forget_on_save(returns.as_ref());
            return refused;
        }
        let reader = &mut conn.reader;
        let mut gone = || client_gone(reader);
        let mut watch = search::Watch::new(search::TIME_LIMIT, &mut gone);
        let sorted = self.matching_within(keys, &mut watch).and_then(|hits| {
            let Some(sel) = self.selected.as_mut() else {
                return Ok(Vec::new());
            };
            if criteria.iter().any(|c| matches!(c.key, SortKey::Size)) {
                let _ = blocking(|| sel.measure(&hits));
            }
            let sel = &*sel;
            blocking(|| {
                sort::sort(&sel.messages, &hits, criteria, &mut watch, |msg| {
                    search::read(sel, msg, Need::Header)
                })
            })
        });
        let sorted = match sorted {
            Ok(sorted) => sorted,
            Err(s) => {
                self.forget_on_save(returns.as_ref());
                return stopped(s, "SORT");
            }
        };
        let Some(sel) = self.selected.as_ref() else {
            return bad("No mailbox selected.");
        };
        let numbers = numbers_of(sel, &sorted, uid);
        let sorted_uids = numbers_of(sel, &sorted, true);
        match returns {
            None => {
                let mut line = String::from("* SORT");
                for n in &numbers {
                    let _ = write!(line, " {n}");
                }
                line.push_str("\r\n");
                conn.out.extend_from_slice(line.as_bytes());
            }
            Some(r) => {
                if r.save {
                    self.save(&sorted, &r);
                }
                if r.answers() {
                    esearch(&mut conn.out, tag, uid, &r, &numbers, None);
                }
            }
        }
        if let Some(Returning { command, .. }) = returning.filter(|r| r.options.update) {
            self.keep_updated(tag, uid, command, sorted_uids, &mut conn.out);
        }
        ok("SORT completed.")
    }

    /// THREAD and UID THREAD.
    pub(super) fn thread_command<S>(
        &mut self,
        algorithm: &ThreadingAlgorithm<'_>,
        charset: &Charset<'_>,
        keys: &[SearchKey<'_>],
        uid: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let algorithm = match algorithm {
            ThreadingAlgorithm::OrderedSubject => Algorithm::OrderedSubject,
            ThreadingAlgorithm::References => Algorithm::References,
            ThreadingAlgorithm::Other(other) if other.as_ref().eq_ignore_ascii_case("REFS") => {
                Algorithm::Refs
            }
            ThreadingAlgorithm::Other(_) => return bad("Unknown threading algorithm."),
        };
        if let Some(refused) = charset_refused(Some(charset)) {
            return refused;
        }
        let reader = &mut conn.reader;
        let mut gone = || client_gone(reader);
        let mut watch = search::Watch::new(search::TIME_LIMIT, &mut gone);
        let facts = self.matching_within(keys, &mut watch).and_then(|hits| {
            let Some(sel) = self.selected.as_ref() else {
                return Ok(Vec::new());
            };
            blocking(|| thread_facts(sel, &hits, uid, &mut watch))
        });
        let facts = match facts {
            Ok(facts) => facts,
            Err(s) => return stopped(s, "THREAD"),
        };
        let threads = thread::thread(&facts, algorithm);
        let mut line = String::from("* THREAD");
        if !threads.is_empty() {
            line.push(' ');
            line.push_str(&threads);
        }
        line.push_str("\r\n");
        conn.out.extend_from_slice(line.as_bytes());
        ok("THREAD completed.")
    }
}

/// What THREAD needs of each matching message: its header read and parsed once.
fn thread_facts(
    sel: &Selected,
    hits: &[usize],
    uid: bool,
    watch: &mut search::Watch<'_>,
) -> Result<Vec<Facts>, Stopped> {
    let mut facts = Vec::with_capacity(hits.len());
    for &i in hits {
        let Some(msg) = sel.messages.get(i) else {
            continue;
        };
        if watch.stop() {
            return Err(watch.stopped());
        }
        let bytes = search::read(sel, msg, Need::Header);
        let parsed = crate::session::fetch::mime::parse(&bytes);
        let number = if uid { msg.uid } else { i as u32 + 1 };
        let keys = Keys::of(msg, parsed.as_ref());
        facts.push(Facts::of(number, keys, parsed.as_ref()));
    }
    Ok(facts)
}
