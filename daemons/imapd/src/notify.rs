//! NOTIFY (RFC 5465): the command's syntax, which `imap-codec` does not parse, and the checks
//! §3.1 and §5 ask for before anything is watched ([`validate`]).
//!
//! ```text
//! notify           = "NOTIFY" SP (notify-set / notify-none)
//! notify-set       = "SET" [SP "STATUS"] SP event-groups
//! event-group      = "(" filter-mailboxes SP events ")"
//! filter-mailboxes = "selected" / "selected-delayed" / "inboxes" / "personal" / "subscribed"
//!                    / "subtree" SP one-or-more-mailbox / "mailboxes" SP one-or-more-mailbox
//! events           = "(" event *(SP event) ")" / "NONE"
//! event            = "MessageNew" [SP "(" fetch-att *(SP fetch-att) ")"] / "MessageExpunge"
//!                    / "FlagChange" / "MailboxName" / "SubscriptionChange" / atom
//! ```
//!
//! The input is a whole command with its literals. MessageNew's fetch attributes are kept as
//! sent (the parenthesised list), for `imap-codec` to decode as a FETCH's.

use crate::extended::Parser;

/// Most event groups in one NOTIFY.
pub(crate) const MAX_GROUPS: usize = 16;
/// Most mailbox names one NOTIFY may name (all groups together).
pub(crate) const MAX_NAMES: usize = 256;
/// Most events in one group.
const MAX_EVENTS: usize = 16;
/// Longest list of fetch attributes after MessageNew.
const MAX_FETCH_ATTS: usize = 4096;

/// The response code of a NOTIFY naming an event not sent here: the events that are.
pub(crate) const BADEVENT: &str =
    "BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)";

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotifyCommand<'a> {
    pub(crate) tag: &'a [u8],
    pub(crate) request: Request,
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub(crate) enum Request {
    None,
    Set { status: bool, groups: Vec<Group> },
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub(crate) struct Group {
    pub(crate) filter: Filter,
    /// Empty for `NONE`.
    pub(crate) events: Vec<Event>,
}

/// Which mailboxes a group covers; names as sent (modified UTF-7).
#[derive(Debug, PartialEq, Eq, Clone)]
pub(crate) enum Filter {
    Selected,
    SelectedDelayed,
    Inboxes,
    Personal,
    Subscribed,
    Subtree(Vec<Vec<u8>>),
    Mailboxes(Vec<Vec<u8>>),
}

impl Filter {
    pub(crate) fn is_selected(&self) -> bool {
        matches!(self, Filter::Selected | Filter::SelectedDelayed)
    }
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub(crate) enum Event {
    /// With the fetch attributes as sent, `(` and `)` included.
    MessageNew(Option<Vec<u8>>),
    MessageExpunge,
    FlagChange,
    MailboxName,
    SubscriptionChange,
    /// Any other event (AnnotationChange, MailboxMetadataChange, ...): not sent here.
    Other(String),
}

/// The events of one group, as flags.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub(crate) struct Events {
    pub(crate) new: bool,
    pub(crate) expunge: bool,
    pub(crate) flags: bool,
    pub(crate) name: bool,
    pub(crate) subscription: bool,
}

impl Events {
    pub(crate) fn of(events: &[Event]) -> Events {
        let mut e = Events::default();
        for event in events {
            match event {
                Event::MessageNew(_) => e.new = true,
                Event::MessageExpunge => e.expunge = true,
                Event::FlagChange => e.flags = true,
                Event::MailboxName => e.name = true,
                Event::SubscriptionChange => e.subscription = true,
                Event::Other(_) => {}
            }
        }
        e
    }

    /// Any event about messages (what a STATUS tells).
    pub(crate) fn messages(self) -> bool {
        self.new || self.expunge || self.flags
    }
}

/// Why a NOTIFY is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A syntax or §5 rule broken: BAD with this text.
    Bad(&'static str),
    /// An event this server does not send: NO [BADEVENT (...)].
    BadEvent,
}

/// The NOTIFY command in `input`, if that is what it is.
pub(crate) fn parse(input: &[u8]) -> Option<NotifyCommand<'_>> {
    let mut p = Parser::new(input);
    let tag = p.tag()?;
    p.space()?;
    p.keyword(b"NOTIFY")?;
    p.space()?;
    let request = if p.keyword(b"NONE").is_some() {
        Request::None
    } else {
        p.keyword(b"SET")?;
        p.space()?;
        let status = p.keyword(b"STATUS").is_some();
        if status {
            p.space()?;
        }
        let mut groups = Vec::new();
        loop {
            if groups.len() == MAX_GROUPS {
                return None;
            }
            groups.push(group(&mut p)?);
            if p.space().is_none() {
                break;
            }
        }
        Request::Set { status, groups }
    };
    p.crlf()?;
    p.at_end().then_some(NotifyCommand { tag, request })
}

fn group(p: &mut Parser<'_>) -> Option<Group> {
    p.eat(b'(')?;
    let word = p.atom()?.to_ascii_lowercase();
    let filter = match word.as_slice() {
        b"selected" => Filter::Selected,
        b"selected-delayed" => Filter::SelectedDelayed,
        b"inboxes" => Filter::Inboxes,
        b"personal" => Filter::Personal,
        b"subscribed" => Filter::Subscribed,
        b"subtree" => {
            p.space()?;
            Filter::Subtree(mailboxes(p)?)
        }
        b"mailboxes" => {
            p.space()?;
            Filter::Mailboxes(mailboxes(p)?)
        }
        _ => return None,
    };
    p.space()?;
    let events = if p.keyword(b"NONE").is_some() {
        Vec::new()
    } else {
        let events = p.list_of(MAX_EVENTS, event)?;
        if events.is_empty() {
            return None;
        }
        events
    };
    p.eat(b')')?;
    Some(Group { filter, events })
}

fn mailboxes(p: &mut Parser<'_>) -> Option<Vec<Vec<u8>>> {
    let names = if p.peek() == Some(b'(') {
        p.list_of(MAX_NAMES, |p| p.astring(false))?
    } else {
        vec![p.astring(false)?]
    };
    (!names.is_empty()).then_some(names)
}

fn event(p: &mut Parser<'_>) -> Option<Event> {
    let word = p.atom()?;
    let lower = word.to_ascii_lowercase();
    Some(match lower.as_slice() {
        b"messagenew" => {
            let mut atts = None;
            if p.peek() == Some(b' ') && p.peek_at(1) == Some(b'(') {
                p.space()?;
                atts = Some(balanced(p)?);
            }
            Event::MessageNew(atts)
        }
        b"messageexpunge" => Event::MessageExpunge,
        b"flagchange" => Event::FlagChange,
        b"mailboxname" => Event::MailboxName,
        b"subscriptionchange" => Event::SubscriptionChange,
        _ => Event::Other(String::from_utf8_lossy(word).into_owned()),
    })
}

/// A parenthesised list taken whole, with nested lists, brackets and quoted strings (fetch
/// attributes like `BODY.PEEK[HEADER.FIELDS (FROM)]`), for `imap-codec` to decode.
fn balanced(p: &mut Parser<'_>) -> Option<Vec<u8>> {
    let start = p.position();
    let mut depth = 0usize;
    let mut quoted = false;
    loop {
        let b = p.next()?;
        if p.position() - start > MAX_FETCH_ATTS || b == b'\r' || b == b'\n' {
            return None;
        }
        match b {
            b'\\' if quoted => {
                p.next()?;
            }
            b'"' => quoted = !quoted,
            b'(' | b'[' if !quoted => depth += 1,
            b')' | b']' if !quoted => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (b == b')').then(|| p.since(start).to_vec());
                }
            }
            _ => {}
        }
    }
}

/// The checks of RFC 5465 §3.1 and §5 on a parsed SET.
pub(crate) fn validate(groups: &[Group]) -> Result<(), Refusal> {
    let mut names = 0usize;
    let mut unsupported = false;
    let mut selected = 0;
    for g in groups {
        if let Filter::Subtree(n) | Filter::Mailboxes(n) = &g.filter {
            names = names.saturating_add(n.len());
        }
        if g.filter.is_selected() {
            selected += 1;
        }
        let e = Events::of(&g.events);
        // For the selected mailbox, whose messages' numbers the client keeps (§5).
        if g.filter.is_selected() && e.new != e.expunge {
            return Err(Refusal::Bad(
                "MessageNew and MessageExpunge go together (RFC 5465 section 5).",
            ));
        }
        if g.filter.is_selected() && e.flags && !e.new {
            return Err(Refusal::Bad(
                "FlagChange needs MessageNew and MessageExpunge (RFC 5465 section 5).",
            ));
        }
        for event in &g.events {
            match event {
                Event::MessageNew(Some(_)) if !g.filter.is_selected() => {
                    return Err(Refusal::Bad(
                        "Fetch attributes only for the selected mailbox.",
                    ))
                }
                Event::Other(_) => unsupported = true,
                _ => {}
            }
        }
    }
    if selected > 1 {
        return Err(Refusal::Bad("Only one selected or selected-delayed group."));
    }
    if names > MAX_NAMES {
        return Err(Refusal::Bad("Too many mailbox names."));
    }
    if unsupported {
        return Err(Refusal::BadEvent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(line: &str) -> Option<(bool, Vec<Group>)> {
        match parse(line.as_bytes())?.request {
            Request::Set { status, groups } => Some((status, groups)),
            Request::None => None,
        }
    }

    #[test]
    fn none_and_set_with_status() {
        let c = parse(b"a NOTIFY NONE\r\n").unwrap();
        assert_eq!((c.tag, c.request), (&b"a"[..], Request::None));
        let (status, groups) =
            set("t1 notify set status (selected (MessageNew (UID FLAGS) MessageExpunge)) (personal (MessageNew MessageExpunge FlagChange MailboxName))\r\n")
                .unwrap();
        assert!(status);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].filter, Filter::Selected);
        assert_eq!(
            groups[0].events,
            vec![
                Event::MessageNew(Some(b"(UID FLAGS)".to_vec())),
                Event::MessageExpunge
            ]
        );
        assert_eq!(groups[1].filter, Filter::Personal);
        assert!(Events::of(&groups[1].events).name);
    }

    #[test]
    fn filters_with_mailboxes() {
        let (status, groups) = set(
            "a NOTIFY SET (subtree (INBOX \"a b\" {3+}\r\nx&A) (MessageNew MessageExpunge)) (mailboxes Sent NONE) (inboxes NONE) (subscribed (MailboxName)) (selected-delayed (MessageNew MessageExpunge))\r\n",
        )
        .unwrap();
        assert!(!status);
        assert_eq!(
            groups[0].filter,
            Filter::Subtree(vec![b"INBOX".to_vec(), b"a b".to_vec(), b"x&A".to_vec()])
        );
        assert_eq!(groups[1].filter, Filter::Mailboxes(vec![b"Sent".to_vec()]));
        assert!(groups[1].events.is_empty());
        assert_eq!(groups[2].filter, Filter::Inboxes);
        assert_eq!(groups[3].filter, Filter::Subscribed);
        assert_eq!(groups[4].filter, Filter::SelectedDelayed);
    }

    #[test]
    fn fetch_attributes_with_sections_and_quotes() {
        let (_, groups) = set(
            "a NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (FROM \")\")] ENVELOPE) MessageExpunge))\r\n",
        )
        .unwrap();
        assert_eq!(
            groups[0].events[0],
            Event::MessageNew(Some(
                b"(UID BODY.PEEK[HEADER.FIELDS (FROM \")\")] ENVELOPE)".to_vec()
            ))
        );
    }

    #[test]
    fn syntax_errors_are_refused() {
        for bad in [
            "a NOTIFY\r\n",
            "a NOTIFY SET\r\n",
            "a NOTIFY SET STATUS\r\n",
            "a NOTIFY SET (personal)\r\n",
            "a NOTIFY SET (personal ())\r\n",
            "a NOTIFY SET (everything (MessageNew))\r\n",
            "a NOTIFY SET (mailboxes (MessageNew))\r\n",
            "a NOTIFY SET (mailboxes () (MessageNew))\r\n",
            "a NOTIFY SET (selected (MessageNew (UID)\r\n",
            "a NOTIFY SET (selected (MessageNew (UID]))\r\n",
            "a NOTIFY SET (personal (MessageNew)) \r\n",
            "a NOTIFY NONE extra\r\n",
            "a NOTIFY SET (personal (MessageNew))",
            "a NOTIFY SET (mailboxes {9}\r\nx (MessageNew))\r\n",
            "a LIST \"\" *\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn lists_are_bounded() {
        let many = vec!["(inboxes NONE)"; MAX_GROUPS + 1].join(" ");
        assert!(parse(format!("a NOTIFY SET {many}\r\n").as_bytes()).is_none());
        let ok = vec!["(inboxes NONE)"; MAX_GROUPS].join(" ");
        assert!(parse(format!("a NOTIFY SET {ok}\r\n").as_bytes()).is_some());
        let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("m{i}")).collect();
        let line = format!("a NOTIFY SET (mailboxes ({}) NONE)\r\n", names.join(" "));
        assert!(parse(line.as_bytes()).is_none());
        // Across groups: parsed, then refused.
        let half: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
        let g = format!("(mailboxes ({}) NONE)", half.join(" "));
        let (_, groups) = set(&format!("a NOTIFY SET {g} {g}\r\n")).unwrap();
        assert_eq!(
            validate(&groups),
            Err(Refusal::Bad("Too many mailbox names."))
        );
    }

    #[test]
    fn rules_of_section_5() {
        let check = |line: &str| validate(&set(line).unwrap().1);
        assert_eq!(
            check("a NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))\r\n"),
            Ok(())
        );
        // Other mailboxes are told by STATUS: any event alone (RFC 5465's own examples).
        assert_eq!(check("a NOTIFY SET (personal (MessageNew))\r\n"), Ok(()));
        assert_eq!(check("a NOTIFY SET (inboxes (FlagChange))\r\n"), Ok(()));
        assert!(matches!(
            check("a NOTIFY SET (selected (MessageNew))\r\n"),
            Err(Refusal::Bad(_))
        ));
        assert!(matches!(
            check("a NOTIFY SET (selected (FlagChange))\r\n"),
            Err(Refusal::Bad(_))
        ));
        assert!(matches!(
            check("a NOTIFY SET (personal (MessageNew (UID) MessageExpunge))\r\n"),
            Err(Refusal::Bad(_))
        ));
        assert!(matches!(
            check("a NOTIFY SET (selected NONE) (selected-delayed NONE)\r\n"),
            Err(Refusal::Bad(_))
        ));
        assert_eq!(
            check("a NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))\r\n"),
            Err(Refusal::BadEvent)
        );
        assert_eq!(
            check("a NOTIFY SET (personal (MailboxMetadataChange))\r\n"),
            Err(Refusal::BadEvent)
        );
    }
}
