//! SEARCH (RFC 3501 §6.4.4): every key, evaluated message by message. Message files are read
//! only when a key needs their content, and only the header when no key needs the body.

use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use inetkit_maildir::{Flags, MessageInfo};
use mail_parser::PartType;

use crate::selected::Selected;
use crate::session::fetch::{mime, raw};

/// What a search needs from each message's file.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Need {
    Nothing,
    Header,
    Whole,
}

fn need(key: &SearchKey<'_>) -> Need {
    match key {
        SearchKey::And(keys) => keys
            .as_ref()
            .iter()
            .map(need)
            .max()
            .unwrap_or(Need::Nothing),
        SearchKey::Not(k) => need(k),
        SearchKey::Or(a, b) => need(a).max(need(b)),
        SearchKey::Bcc(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::To(_)
        | SearchKey::Subject(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_) => Need::Header,
        SearchKey::Body(_) | SearchKey::Text(_) => Need::Whole,
        _ => Need::Nothing,
    }
}

/// The content of one message, loaded on first use.
struct Content {
    bytes: Vec<u8>,
}

struct Ctx<'s> {
    selected: &'s Selected,
    seq: u32,
    msg: &'s MessageInfo,
    content: Option<&'s Content>,
}

/// Indexes of the matching messages.
pub(crate) fn run(selected: &Selected, keys: &[SearchKey<'_>]) -> Vec<usize> {
    let needed = keys.iter().map(need).max().unwrap_or(Need::Nothing);
    let mut hits = Vec::new();
    for (i, msg) in selected.messages.iter().enumerate() {
        let content = match needed {
            Need::Nothing => None,
            _ => {
                let bytes = selected.folder.open(msg).ok().and_then(|mut f| {
                    if needed == Need::Whole {
                        raw::read_all(&mut f).ok()
                    } else {
                        raw::read_header(&mut f).ok()
                    }
                });
                Some(Content {
                    bytes: bytes.unwrap_or_default(),
                })
            }
        };
        let ctx = Ctx {
            selected,
            seq: i as u32 + 1,
            msg,
            content: content.as_ref(),
        };
        if keys.iter().all(|k| matches(&ctx, k)) {
            hits.push(i);
        }
    }
    hits
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

fn lower(s: &[u8]) -> String {
    String::from_utf8_lossy(s).to_lowercase()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let needle = lower(needle);
    needle.is_empty() || lower(hay).contains(&needle)
}

fn header_has(ctx: &Ctx<'_>, name: &str, needle: &[u8]) -> bool {
    let Some(content) = ctx.content else {
        return false;
    };
    let Some(msg) = mime::parse(&content.bytes) else {
        return false;
    };
    let values = mime::header_text(&msg, name);
    // HEADER with an empty string matches every message that has the field.
    !values.is_empty() && values.iter().any(|v| contains(v, needle))
}

fn body_has(ctx: &Ctx<'_>, needle: &[u8], with_header: bool) -> bool {
    let Some(content) = ctx.content else {
        return false;
    };
    let bytes = &content.bytes;
    let split = raw::header_len(bytes);
    let raw = if with_header {
        &bytes[..]
    } else {
        &bytes[split..]
    };
    if contains(raw, needle) {
        return true;
    }
    // Also the decoded text of each part (quoted-printable, base64, charsets).
    let Some(msg) = mime::parse(bytes) else {
        return false;
    };
    let needle = lower(needle);
    let decoded = msg.parts.iter().any(|p| match &p.body {
        PartType::Text(t) | PartType::Html(t) => t.to_lowercase().contains(&needle),
        _ => false,
    });
    decoded
        || (with_header
            && msg.parts.first().is_some_and(|top| {
                top.headers.iter().any(|h| {
                    h.value
                        .as_text()
                        .is_some_and(|t| t.to_lowercase().contains(&needle))
                })
            }))
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

fn sent_date(ctx: &Ctx<'_>) -> Option<chrono::NaiveDate> {
    let content = ctx.content?;
    let msg = mime::parse(&content.bytes)?;
    let d = msg.date()?;
    chrono::NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
}

fn matches(ctx: &Ctx<'_>, key: &SearchKey<'_>) -> bool {
    let flags = ctx.msg.flags;
    let recent = ctx.selected.recent.contains(&ctx.msg.uid);
    let has_keyword = |name: &str| {
        ctx.selected
            .keywords
            .find(name)
            .and_then(Flags::keyword)
            .is_some_and(|f| flags.contains(f))
    };
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| matches(ctx, k)),
        SearchKey::Or(a, b) => matches(ctx, a) || matches(ctx, b),
        SearchKey::Not(k) => !matches(ctx, k),
        SearchKey::All => true,
        SearchKey::SequenceSet(set) => in_set(set, ctx.seq, ctx.selected.messages.len() as u32),
        SearchKey::Uid(set) => in_set(
            set,
            ctx.msg.uid,
            ctx.selected.messages.last().map_or(0, |m| m.uid),
        ),
        SearchKey::Answered => flags.contains(Flags::REPLIED),
        SearchKey::Unanswered => !flags.contains(Flags::REPLIED),
        SearchKey::Deleted => flags.contains(Flags::TRASHED),
        SearchKey::Undeleted => !flags.contains(Flags::TRASHED),
        SearchKey::Draft => flags.contains(Flags::DRAFT),
        SearchKey::Undraft => !flags.contains(Flags::DRAFT),
        SearchKey::Flagged => flags.contains(Flags::FLAGGED),
        SearchKey::Unflagged => !flags.contains(Flags::FLAGGED),
        SearchKey::Seen => flags.contains(Flags::SEEN),
        SearchKey::Unseen => !flags.contains(Flags::SEEN),
        SearchKey::Recent => recent,
        SearchKey::Old => !recent,
        SearchKey::New => recent && !flags.contains(Flags::SEEN),
        SearchKey::Keyword(k) => has_keyword(k.as_ref()),
        SearchKey::Unkeyword(k) => !has_keyword(k.as_ref()),
        SearchKey::Larger(n) => ctx.msg.vsize > u64::from(*n),
        SearchKey::Smaller(n) => ctx.msg.vsize < u64::from(*n),
        SearchKey::Before(d) => internal_date(ctx.msg) < *d.as_ref(),
        SearchKey::On(d) => internal_date(ctx.msg) == *d.as_ref(),
        SearchKey::Since(d) => internal_date(ctx.msg) >= *d.as_ref(),
        SearchKey::SentBefore(d) => sent_date(ctx).is_some_and(|s| s < *d.as_ref()),
        SearchKey::SentOn(d) => sent_date(ctx).is_some_and(|s| s == *d.as_ref()),
        SearchKey::SentSince(d) => sent_date(ctx).is_some_and(|s| s >= *d.as_ref()),
        SearchKey::Bcc(s) => header_has(ctx, "Bcc", s.as_ref()),
        SearchKey::Cc(s) => header_has(ctx, "Cc", s.as_ref()),
        SearchKey::From(s) => header_has(ctx, "From", s.as_ref()),
        SearchKey::To(s) => header_has(ctx, "To", s.as_ref()),
        SearchKey::Subject(s) => header_has(ctx, "Subject", s.as_ref()),
        SearchKey::Header(name, s) => {
            header_has(ctx, &String::from_utf8_lossy(name.as_ref()), s.as_ref())
        }
        SearchKey::Body(s) => body_has(ctx, s.as_ref(), false),
        SearchKey::Text(s) => body_has(ctx, s.as_ref(), true),
    }
}
