//! The mailbox commands (RFC 3501 §6.3): SELECT, EXAMINE, CREATE, DELETE, RENAME,
//! SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, and NAMESPACE (RFC 2342).

use imap_codec::imap_types::core::{Atom, QuotedChar};
use imap_codec::imap_types::extensions::namespace::Namespace;
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_codec::imap_types::response::{Code, Data, StatusKind};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_maildir::{Flags, Folder, Mailbox, StoreError};

use super::extended::special_attribute;
use super::reply::{bad, invalid_name, no_code, no_such_mailbox, ok, ok_code, store_error, Done};
use super::rev2::status_item_refused;
use super::{blocking, quick, Conn, Session};
use crate::modseq;
use crate::names::{self, Coding};
use crate::selected::{octets, Selected};
use crate::special_use::SpecialUse;
use crate::wire::{self, nz};

/// The store's name of a mailbox the client named, in the session's `coding`.
pub(super) fn mailbox_name(mailbox: &ImapMailbox<'_>, coding: Coding) -> Option<String> {
    match mailbox {
        ImapMailbox::Inbox => Some("INBOX".to_owned()),
        ImapMailbox::Other(other) => {
            let name = coding.decode(other.as_ref())?;
            let name = name.trim_end_matches(names::DELIMITER);
            // INBOX in any case, also as the first part of a longer name (`inbox/x`).
            let first = name.split(names::DELIMITER).next().unwrap_or_default();
            if first.eq_ignore_ascii_case("INBOX") {
                let rest = name.get(first.len()..).unwrap_or_default();
                Some(format!("INBOX{rest}"))
            } else {
                Some(name.to_owned())
            }
        }
    }
}

/// A folder name as LIST, LSUB and STATUS send it, in the session's `coding`.
pub(super) fn mailbox_of(name: &str, coding: Coding) -> ImapMailbox<'static> {
    wire::mailbox(coding.encode(name))
}

impl Session {
    pub(super) fn mailbox(&self) -> &Mailbox {
        // Only called in authenticated states.
        self.login
            .as_ref()
            .map(|l| &l.mailbox)
            .expect("dispatch only calls this once logged in")
    }

    pub(super) fn folder(&self, mailbox: &ImapMailbox<'_>) -> Result<Folder, Done> {
        let Some(name) = mailbox_name(mailbox, self.coding()) else {
            return Err(invalid_name());
        };
        let mbox = self.mailbox().clone();
        quick(|| mbox.folder(&name)).map_err(|e| match e {
            StoreError::NoSuchFolder(_) | StoreError::InvalidFolder(_) => {
                no_code(Code::TryCreate, "No such mailbox.")
            }
            e => store_error(&e),
        })
    }

    pub(super) fn select<S>(
        &mut self,
        mailbox: &ImapMailbox<'_>,
        read_only: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.selected = None;
        let folder = match self.folder(mailbox) {
            Ok(f) => f,
            Err(Done::Tagged(..)) => return no_such_mailbox(),
            Err(d) => return d,
        };
        let watches = self.imap.watches.clone();
        let mut sel = match blocking(|| Selected::open(folder, read_only, &watches)) {
            Ok(sel) => sel.with_structures(self.imap.structures.clone()),
            Err(err) => return store_error(&err),
        };
        sel.rev2 = self.rev2;
        let out = &mut conn.out;
        sel.write_flags(out);
        let ok_line = |out: &mut Vec<u8>, code, text| {
            wire::status(
                out,
                wire::untagged(StatusKind::Ok, Some(code), wire::text(text)),
            );
        };
        wire::data(out, Data::Exists(sel.messages.len() as u32));
        if self.rev2 {
            // RFC 9051 §6.3.2: the mailbox's LIST line; no RECENT, and no UNSEEN code.
            self.select_list(sel.folder.name(), out);
        } else {
            wire::data(out, Data::Recent(sel.recent.len() as u32));
            if let Some(n) = sel.unseen_first() {
                ok_line(out, Code::Unseen(nz(n as u32)), "First unseen.");
            }
        }
        ok_line(out, Code::UidValidity(nz(sel.uid_validity)), "UIDs valid.");
        ok_line(out, Code::UidNext(nz(sel.uid_next)), "Predicted next UID.");
        self.selected = Some(sel);
        if read_only {
            ok_code(Code::ReadOnly, "EXAMINE completed.")
        } else {
            ok_code(Code::ReadWrite, "SELECT completed.")
        }
    }

    pub(super) fn create(&mut self, mailbox: &ImapMailbox<'_>) -> Done {
        let Some(name) = mailbox_name(mailbox, self.coding()) else {
            return invalid_name();
        };
        let mbox = self.mailbox().clone();
        match blocking(|| mbox.create(&name)) {
            Ok(_) => ok("CREATE completed."),
            Err(e) => store_error(&e),
        }
    }

    pub(super) fn delete(&mut self, mailbox: &ImapMailbox<'_>) -> Done {
        let Some(name) = mailbox_name(mailbox, self.coding()) else {
            return invalid_name();
        };
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.folder.name() == name)
        {
            self.selected = None;
        }
        let mbox = self.mailbox().clone();
        let deleted = blocking(|| {
            mbox.delete(&name)?;
            // Without the seed, the first change would write a list of this one name and
            // unsubscribe every other folder.
            seed_subscriptions(&mbox);
            // The subscription stays (RFC 3501 §6.3.6; LIST-EXTENDED shows it \NonExistent);
            // a special use chosen at CREATE goes with the folder.
            let _ = SpecialUse::set(mbox.path(), &name, &[]);
            Ok(())
        });
        match deleted {
            Ok(()) => ok("DELETE completed."),
            Err(e) => store_error(&e),
        }
    }

    pub(super) fn rename(&mut self, from: &ImapMailbox<'_>, to: &ImapMailbox<'_>) -> Done {
        let (Some(from), Some(to)) = (
            mailbox_name(from, self.coding()),
            mailbox_name(to, self.coding()),
        ) else {
            return invalid_name();
        };
        let mbox = self.mailbox().clone();
        if from == "INBOX" {
            // RFC 3501 §6.3.5: renaming INBOX moves its messages to the new name and leaves
            // INBOX empty.
            let result = blocking(|| -> Result<(), StoreError> {
                let target = mbox.create(&to)?;
                let inbox = mbox.inbox();
                // The new folder takes INBOX's keyword letters as they are.
                let keywords = inbox.path().join(crate::keywords::FILE);
                if keywords.exists() {
                    std::fs::copy(&keywords, target.path().join(crate::keywords::FILE)).map_err(
                        |err| StoreError::Io {
                            op: "copying",
                            path: keywords.clone(),
                            err,
                        },
                    )?;
                }
                let snapshot = inbox.snapshot()?;
                for msg in &snapshot.messages {
                    let mut file = inbox.open(msg)?;
                    target.append(&mut file, msg.flags, Some(msg.internal_date))?;
                }
                inbox.delete(&snapshot.messages)
            });
            return match result {
                Ok(()) => ok("RENAME completed."),
                Err(e) => store_error(&e),
            };
        }
        let renamed = blocking(|| {
            seed_subscriptions(&mbox);
            mbox.rename(&from, &to)?;
            let uses = SpecialUse::load(mbox.path()).chosen(&from);
            if !uses.is_empty() {
                let _ = SpecialUse::set(mbox.path(), &to, &uses);
                let _ = SpecialUse::set(mbox.path(), &from, &[]);
            }
            if names::subscriptions(mbox.path()).contains(&from) {
                let _ = names::set_subscribed(mbox.path(), &from, false);
                let _ = names::set_subscribed(mbox.path(), &to, true);
            }
            Ok(())
        });
        match renamed {
            Ok(()) => ok("RENAME completed."),
            Err(e) => store_error(&e),
        }
    }

    pub(super) fn subscribe(&mut self, mailbox: &ImapMailbox<'_>, on: bool) -> Done {
        let Some(name) = mailbox_name(mailbox, self.coding()) else {
            return invalid_name();
        };
        let mbox = self.mailbox().clone();
        let saved = blocking(|| {
            seed_subscriptions(&mbox);
            names::set_subscribed(mbox.path(), &name, on)
        });
        match saved {
            Ok(()) => ok(if on {
                "SUBSCRIBE completed."
            } else {
                "UNSUBSCRIBE completed."
            }),
            Err(err) => {
                tracing::error!(error = %err, "cannot write subscriptions");
                no_code(wire::code("SERVERBUG"), "Cannot save the subscription.")
            }
        }
    }

    pub(super) fn list<S>(
        &mut self,
        reference: &ImapMailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let verb = if lsub { "LSUB" } else { "LIST" };
        let coding = self.coding();
        let pattern_bytes: &[u8] = match pattern {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(s) => s.as_ref(),
        };
        let reference = match reference {
            ImapMailbox::Inbox => "INBOX".to_owned(),
            ImapMailbox::Other(o) => coding.decode(o.as_ref()).unwrap_or_default(),
        };
        let Some(pattern) = coding.decode(pattern_bytes) else {
            return ok(format!("{verb} completed."));
        };
        let delimiter = Some(QuotedChar::unvalidated(names::DELIMITER));
        // One LIST or LSUB line.
        let line = |out: &mut Vec<u8>, items: Vec<FlagNameAttribute<'static>>, name: &str| {
            let mailbox = mailbox_of(name, coding);
            let data = if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            };
            wire::data(out, data);
        };
        if pattern.is_empty() {
            if !lsub {
                line(&mut conn.out, vec![FlagNameAttribute::Noselect], "");
            }
            return ok(format!("{verb} completed."));
        }
        let full = format!("{reference}{pattern}");
        let mbox = self.mailbox().clone();
        let listed = quick(|| {
            let folders = mbox.folders()?;
            let subscribed = subscribed_set(&mbox, &folders);
            Ok((folders, subscribed, SpecialUse::load(mbox.path())))
        });
        let (folders, subscribed, special_use) = match listed {
            Ok(listed) => listed,
            Err(e) => return store_error(&e),
        };
        // A folder whose parent does not exist (Maildir++ allows `a/b` without `a`): the
        // parent is shown as \Noselect when the pattern stops at its level (RFC 3501 §6.3.8).
        if !lsub {
            let mut implied: Vec<String> = folders
                .iter()
                .flat_map(|f| {
                    // Every ancestor: the prefixes before each '/' (ASCII, so split is safe).
                    let parts: Vec<&str> = f.split('/').collect();
                    (1..parts.len())
                        .map(|n| parts[..n].join("/"))
                        .collect::<Vec<_>>()
                })
                // INBOX always exists, whatever the case its children were made with.
                .filter(|p| !folders.contains(p) && !p.eq_ignore_ascii_case("INBOX"))
                .collect();
            implied.sort();
            implied.dedup();
            for parent in implied.iter().filter(|p| names::matches(&full, p)) {
                let items = vec![FlagNameAttribute::Noselect, attribute("HasChildren")];
                line(&mut conn.out, items, parent);
            }
        }
        if lsub {
            for (name, items) in lsub_lines(&full, &subscribed) {
                line(&mut conn.out, items, &name);
            }
            return ok(format!("{verb} completed."));
        }
        for name in &folders {
            if !names::matches(&full, name) {
                continue;
            }
            let prefix = format!("{name}/");
            let children = folders.iter().any(|f| f.starts_with(&prefix));
            let mut items = vec![attribute(if children {
                "HasChildren"
            } else {
                "HasNoChildren"
            })];
            items.extend(
                special_use
                    .of(name)
                    .into_iter()
                    .filter_map(special_attribute),
            );
            line(&mut conn.out, items, name);
        }
        ok(format!("{verb} completed."))
    }

    pub(super) fn status<S>(
        &mut self,
        mailbox: &ImapMailbox<'_>,
        items: &[StatusDataItemName],
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let folder = match self.folder(mailbox) {
            Ok(f) => f,
            Err(_) => return no_such_mailbox(),
        };
        if let Some(refused) = items.iter().find_map(|i| status_item_refused(i, self.rev2)) {
            return bad(refused);
        }
        let wants_size = items.iter().any(|i| matches!(i, StatusDataItemName::Size));
        // Measuring sizes may read every message: that hands off.
        let look = || {
            let mut snapshot = folder.snapshot()?;
            if wants_size {
                folder.measure(&mut snapshot.messages)?;
            }
            Ok(snapshot)
        };
        let snapshot = if wants_size {
            blocking(look)
        } else {
            quick(look)
        };
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => return store_error(&e),
        };
        let mut parts = Vec::new();
        for item in items {
            let msgs = &snapshot.messages;
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            parts.push(match item {
                StatusDataItemName::Messages => StatusDataItem::Messages(count(msgs.len())),
                StatusDataItemName::Recent => {
                    StatusDataItem::Recent(count(msgs.iter().filter(|m| m.recent).count()))
                }
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(snapshot.uid_next)),
                StatusDataItemName::UidValidity => {
                    StatusDataItem::UidValidity(nz(snapshot.uid_validity))
                }
                // STATUS=SIZE (RFC 8438): the sum of the RFC822.SIZEs.
                StatusDataItemName::Size => StatusDataItem::Size(msgs.iter().map(octets).sum()),
                // RFC 9051 §6.3.11 (IMAP4rev2 only: refused above otherwise).
                StatusDataItemName::Deleted => StatusDataItem::Deleted(count(
                    msgs.iter()
                        .filter(|m| m.flags.contains(Flags::TRASHED))
                        .count(),
                )),
                StatusDataItemName::Unseen => StatusDataItem::Unseen(count(
                    msgs.iter()
                        .filter(|m| !m.flags.contains(Flags::SEEN))
                        .count(),
                )),
                StatusDataItemName::HighestModSeq => {
                    let modseqs = quick(|| modseq::sync(folder.path(), &snapshot));
                    StatusDataItem::HighestModSeq(modseqs.highest())
                }
                _ => return bad("Unsupported STATUS item."),
            });
        }
        let status = Data::Status {
            mailbox: mailbox_of(folder.name(), self.coding()),
            items: parts.into(),
        };
        wire::data(&mut conn.out, status);
        ok("STATUS completed.")
    }

    /// NAMESPACE: one personal namespace, no prefix.
    pub(super) fn namespace<S>(&self, conn: &mut Conn<S>) -> Done {
        let personal = Namespace {
            prefix: wire::istring(&b""[..]),
            delimiter: Some(QuotedChar::unvalidated(names::DELIMITER)),
            extensions: Vec::new(),
        };
        let namespace = Data::Namespace {
            personal: vec![personal],
            other: Vec::new(),
            shared: Vec::new(),
        };
        wire::data(&mut conn.out, namespace);
        ok("NAMESPACE completed.")
    }
}

/// LSUB's answer (RFC 3501 §6.3.9): the subscribed names the pattern matches, and, as
/// `\Noselect`, the unsubscribed parents it matches of subscribed names it does not (with
/// `%`, `a/%` shows `a/b` for a subscribed `a/b/c`).
fn lsub_lines(
    pattern: &str,
    subscribed: &std::collections::HashSet<String>,
) -> Vec<(String, Vec<FlagNameAttribute<'static>>)> {
    let mut lines = std::collections::BTreeMap::new();
    for name in subscribed {
        if names::matches(pattern, name) {
            lines.insert(name.clone(), Vec::new());
            continue;
        }
        let mut parent = name.as_str();
        while let Some((up, _)) = parent.rsplit_once(names::DELIMITER) {
            parent = up;
            if !subscribed.contains(parent) && names::matches(pattern, parent) {
                lines
                    .entry(parent.to_owned())
                    .or_insert_with(|| vec![FlagNameAttribute::Noselect]);
            }
        }
    }
    lines.into_iter().collect()
}

/// A LIST attribute such as `\\HasChildren` (given without its backslash).
pub(super) fn attribute(name: &'static str) -> FlagNameAttribute<'static> {
    FlagNameAttribute::from(Atom::unvalidated(name))
}

/// When the subscriptions file does not exist yet, every folder counts as subscribed (a
/// fresh mailbox shows its folders in clients that list only subscribed ones); the first
/// change writes that list down.
pub(super) fn seed_subscriptions(mbox: &Mailbox) {
    if !mbox.path().join("inetkit-subscriptions").exists() {
        if let Ok(folders) = mbox.folders() {
            for f in folders {
                let _ = names::set_subscribed(mbox.path(), &f, true);
            }
        }
    }
}

pub(super) fn subscribed_set(
    mbox: &Mailbox,
    folders: &[String],
) -> std::collections::HashSet<String> {
    if mbox.path().join("inetkit-subscriptions").exists() {
        names::subscriptions(mbox.path()).into_iter().collect()
    } else {
        folders.iter().cloned().collect()
    }
}
