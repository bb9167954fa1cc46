//! Entry (and fuzz target) `imap_notify`: the NOTIFY command (RFC 5465) that imapd parses
//! itself.

use crate::notify::{parse, validate, Event, Filter, Request, MAX_GROUPS, MAX_NAMES};

/// The input as a command (CRLF added when missing). A parsed SET has between one and
/// [`MAX_GROUPS`] groups, no list of names is empty or longer than [`MAX_NAMES`], fetch
/// attributes are a parenthesised piece of the input, and [`validate`] answers without
/// panicking.
pub fn imap_notify(data: &[u8]) {
    let mut command = data.to_vec();
    if !command.ends_with(b"\r\n") {
        command.extend_from_slice(b"\r\n");
    }
    let Some(parsed) = parse(&command) else {
        return;
    };
    let Request::Set { groups, .. } = parsed.request else {
        return;
    };
    assert!(!groups.is_empty() && groups.len() <= MAX_GROUPS);
    for g in &groups {
        if let Filter::Subtree(names) | Filter::Mailboxes(names) = &g.filter {
            assert!(!names.is_empty() && names.len() <= MAX_NAMES);
        }
        for e in &g.events {
            if let Event::MessageNew(Some(atts)) = e {
                assert!(atts.starts_with(b"(") && atts.ends_with(b")"));
                assert!(command.windows(atts.len()).any(|w| w == atts.as_slice()));
            }
        }
    }
    let _ = validate(&groups);
}
