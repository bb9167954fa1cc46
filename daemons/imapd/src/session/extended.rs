//! The commands [`crate::extended`] parses: LIST-EXTENDED with LIST-STATUS and SPECIAL-USE
//! (RFC 5258, 5819, 6154), CREATE-SPECIAL-USE (RFC 6154 §3) and MULTIAPPEND (RFC 3502) with
//! CATENATE (RFC 4469, whose messages [`super::catenate`] builds).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::{Atom, Literal, LiteralMode, QuotedChar};
use imap_codec::imap_types::extensions::binary::{Literal8, LiteralOrLiteral8};
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::response::{Code, CodeOther, Data};
use imap_codec::CommandCodec;
use tokio::io::{AsyncRead, AsyncWrite};

use super::catenate::Built;
use super::mailboxes::{mailbox_name, mailbox_of, subscribed_set};
use super::quota::message_len;
use super::reply::{bad, invalid_name, no_code, ok, ok_code, store_error, Done};
use super::{blocking, quick, Conn, Session};
use crate::extended::{AppendMessage, ExtCommand, ListExtended};
use crate::names;
use crate::special_use::{SpecialUse, CREATABLE};
use crate::wire;

/// One name LIST-EXTENDED may answer with.
#[derive(Default)]
struct Entry {
    /// A folder (not only a parent implied by a child's name, nor only a subscription).
    exists: bool,
    /// A parent some folder's name implies, itself missing (`\Noselect`).
    implied: bool,
    subscribed: bool,
}

impl Session {
    pub(super) async fn handle_extended<S>(
        &mut self,
        command: ExtCommand,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let last_uid = self.selected_last_uid();
        let done = match command {
            ExtCommand::List(list) => self.list_extended(&list, conn),
            ExtCommand::Create { mailbox, uses } => self.create_special_use(&mailbox, &uses),
            ExtCommand::Append { messages } => self.multiappend(&messages),
        };
        self.after_command(done, true, last_uid, conn).await
    }

    fn list_extended<S>(&mut self, list: &ListExtended, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let coding = self.coding();
        if let Some(items) = &list.returns.status {
            if let Some(refused) = items
                .iter()
                .find_map(|i| super::rev2::status_item_refused(i, self.rev2))
            {
                return bad(refused);
            }
        }
        let reference = coding.decode(&list.reference).unwrap_or_default();
        let patterns: Vec<String> = list
            .patterns
            .iter()
            .filter_map(|p| coding.decode(p))
            .map(|p| format!("{reference}{p}"))
            .collect();
        let delimiter = Some(QuotedChar::unvalidated(names::DELIMITER));
        if list.patterns.len() == 1 && list.patterns[0].is_empty() {
            let data = Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter,
                mailbox: mailbox_of("", coding),
            };
            wire::data(&mut conn.out, data);
            return ok("LIST completed.");
        }
        let mbox = self.mailbox().clone();
        let listed = quick(|| {
            let folders = mbox.folders()?;
            let subscribed = subscribed_set(&mbox, &folders);
            Ok((folders, subscribed, SpecialUse::load(mbox.path())))
        });
        let (folders, subscribed, uses) = match listed {
            Ok(listed) => listed,
            Err(e) => return store_error(&e),
        };
        let entries = entries(&folders, &subscribed);
        let matched = |name: &str| patterns.iter().any(|p| names::matches(p, name));
        let selection = list.selection;
        let selecting = selection.subscribed || selection.special_use;
        let meets = |name: &str, e: &Entry| {
            (!selection.subscribed || e.subscribed)
                && (!selection.special_use || e.exists && !uses.of(name).is_empty())
                && (selecting || e.exists || e.implied)
        };
        for (name, entry) in &entries {
            if !matched(name) {
                continue;
            }
            let prefix = format!("{name}{}", names::DELIMITER);
            let mut childinfo = false;
            if !meets(name, entry) {
                // RECURSIVEMATCH (RFC 5258 §3.5): a name that does not meet the selection but
                // has a descendant that does and that no pattern matches.
                childinfo = selection.recursive_match
                    && entries
                        .range(prefix.clone()..)
                        .take_while(|(n, _)| n.starts_with(&prefix))
                        .any(|(n, e)| meets(n, e) && !matched(n));
                if !childinfo {
                    continue;
                }
            }
            let mut items = Vec::new();
            if !entry.exists && !entry.implied {
                items.push(attribute("NonExistent"));
            } else if entry.implied {
                items.push(FlagNameAttribute::Noselect);
            }
            if list.returns.subscribed && entry.subscribed {
                items.push(attribute("Subscribed"));
            }
            if (list.returns.children || !selecting) && (entry.exists || entry.implied) {
                let children = entries
                    .range(prefix.clone()..)
                    .take_while(|(n, _)| n.starts_with(&prefix))
                    .any(|(_, e)| e.exists || e.implied);
                items.push(attribute(if children {
                    "HasChildren"
                } else {
                    "HasNoChildren"
                }));
            }
            if entry.exists {
                items.extend(uses.of(name).into_iter().filter_map(special_attribute));
            }
            let data = Data::List {
                items,
                delimiter,
                mailbox: mailbox_of(name, coding),
            };
            let mut line = Vec::new();
            wire::data(&mut line, data);
            if childinfo && selection.subscribed {
                // imap-codec has no extended items on LIST: added before the CRLF.
                line.truncate(line.len().saturating_sub(2));
                line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
            }
            conn.out.extend_from_slice(&line);
            if let Some(items) = &list.returns.status {
                if entry.exists {
                    // RFC 5819: the STATUS of each selectable name, after its LIST line.
                    let _ = self.status(&mailbox_of(name, coding), items, conn);
                }
            }
        }
        ok("LIST completed.")
    }

    fn create_special_use(&mut self, mailbox: &[u8], uses: &[String]) -> Done {
        let coding = self.coding();
        let name = coding.decode(mailbox).unwrap_or_default();
        let Some(name) = mailbox_name(&mailbox_of(&name, coding), coding)
            .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
        else {
            return invalid_name();
        };
        let mut chosen: Vec<String> = Vec::new();
        for u in uses {
            let Some(known) = CREATABLE.iter().find(|c| c.eq_ignore_ascii_case(u)) else {
                return no_code(
                    wire::code("USEATTR"),
                    format!("Special-use attribute \\{u} is not supported here."),
                );
            };
            if !chosen.iter().any(|c| c == known) {
                chosen.push((*known).to_owned());
            }
        }
        let mbox = self.mailbox().clone();
        let created = blocking(|| {
            mbox.create(&name)?;
            if let Err(err) = SpecialUse::set(mbox.path(), &name, &chosen) {
                tracing::error!(error = %err, "cannot record a special-use attribute");
                let _ = mbox.delete(&name);
                return Ok(false);
            }
            Ok(true)
        });
        match created {
            Ok(true) => ok("CREATE completed."),
            Ok(false) => no_code(wire::code("SERVERBUG"), "Cannot record the special use."),
            Err(e) => store_error(&e),
        }
    }

    /// APPEND of several messages (RFC 3502), each a literal or a CATENATE (RFC 4469): all
    /// are added, or none.
    fn multiappend(&mut self, messages: &[AppendMessage]) -> Done {
        let mut decoded = Vec::with_capacity(messages.len());
        for m in messages {
            match CommandCodec::default().decode(&m.command) {
                Ok((_, command)) => match command.body {
                    CommandBody::Append {
                        mailbox,
                        flags,
                        date,
                        message,
                    } => decoded.push((mailbox, flags, date, message)),
                    _ => return bad("Syntax error."),
                },
                Err(_) => return bad("Syntax error."),
            }
        }
        let Some((mailbox, ..)) = decoded.first() else {
            return bad("Syntax error.");
        };
        let folder = match self.folder(mailbox) {
            Ok(f) => f,
            Err(d) => return d,
        };
        // The CATENATEs' messages, built before anything is added.
        let mut built = Built::new(self);
        for (m, (.., message)) in messages.iter().zip(decoded.iter_mut()) {
            if let Some(parts) = &m.catenate {
                match self.catenate(parts, &mut built) {
                    Ok(bytes) => *message = owned_message(bytes),
                    Err(done) => return done,
                }
            }
        }
        let total: u64 = decoded.iter().map(|(.., m)| message_len(m)).sum();
        if let Err(done) = self.quota_allows(total, decoded.len() as u64) {
            return done;
        }
        let mut appended = Vec::with_capacity(decoded.len());
        for (_, flags, date, message) in &decoded {
            match self.append_one(&folder, flags, date.clone(), message) {
                Ok(a) => appended.push(a),
                Err(err) => {
                    // All or none: the messages added so far go again.
                    let added: Vec<_> = appended.into_iter().map(|a| a.message).collect();
                    if let Err(undo) = blocking(|| folder.delete(&added)) {
                        tracing::error!(error = %undo, "cannot take back a failed MULTIAPPEND");
                    }
                    return store_error(&err);
                }
            }
        }
        let uid_validity = appended.first().map_or(1, |a| a.uid_validity);
        let uids: Vec<u32> = appended.iter().map(|a| a.message.uid).collect();
        let code = format!("APPENDUID {uid_validity} {}", uid_ranges(&uids));
        ok_code(
            Code::Other(CodeOther::unvalidated(code.into_bytes())),
            "APPEND completed.",
        )
    }
}

/// A message CATENATE built, as APPEND's literal: a literal8 when it holds a NUL (a part of
/// a message stored so), which BINARY's conversion then stores.
fn owned_message(bytes: Vec<u8>) -> LiteralOrLiteral8<'static> {
    if Literal::validate(&bytes).is_ok() {
        LiteralOrLiteral8::Literal(Literal::unvalidated(bytes))
    } else {
        LiteralOrLiteral8::Literal8(Literal8 {
            data: Cow::Owned(bytes),
            mode: LiteralMode::Sync,
        })
    }
}

/// Every name LIST may show: folders, the parents their names imply, subscriptions.
fn entries(folders: &[String], subscribed: &HashSet<String>) -> BTreeMap<String, Entry> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for folder in folders {
        let mut parent = folder.as_str();
        while let Some((up, _)) = parent.rsplit_once(names::DELIMITER) {
            parent = up;
            if !parent.eq_ignore_ascii_case("INBOX") {
                entries.entry(parent.to_owned()).or_default().implied = true;
            }
        }
    }
    for folder in folders {
        let entry = entries.entry(folder.clone()).or_default();
        entry.exists = true;
        entry.implied = false;
    }
    for name in subscribed {
        entries.entry(name.clone()).or_default().subscribed = true;
    }
    entries
}

/// UIDs as an IMAP set, consecutive ones as ranges (`4:6,9`).
fn uid_ranges(uids: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(&first) = uids.get(i) {
        let mut last = first;
        while uids.get(i + 1) == Some(&(last.wrapping_add(1))) {
            last += 1;
            i += 1;
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}:{last}")
        });
        i += 1;
    }
    out.join(",")
}

fn attribute(name: &'static str) -> FlagNameAttribute<'static> {
    FlagNameAttribute::from(Atom::unvalidated(name))
}

/// The attribute of a special use known here.
pub(super) fn special_attribute(name: &str) -> Option<FlagNameAttribute<'static>> {
    CREATABLE.iter().find(|c| **c == name).map(|c| attribute(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_collapse_runs() {
        assert_eq!(uid_ranges(&[4, 5, 6, 9]), "4:6,9");
        assert_eq!(uid_ranges(&[1]), "1");
        assert_eq!(uid_ranges(&[]), "");
    }

    #[test]
    fn entries_mark_implied_parents_and_lone_subscriptions() {
        let folders = vec!["INBOX".to_owned(), "a/b/c".to_owned(), "x".to_owned()];
        let subscribed: HashSet<String> = ["gone".to_owned(), "a/b/c".to_owned()].into();
        let e = entries(&folders, &subscribed);
        assert!(e["a"].implied && e["a/b"].implied && !e["a"].exists);
        assert!(e["a/b/c"].exists && e["a/b/c"].subscribed);
        assert!(!e["gone"].exists && !e["gone"].implied && e["gone"].subscribed);
        assert!(e["INBOX"].exists && !e["INBOX"].implied);
    }
}
