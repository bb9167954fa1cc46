//! NOTIFY (RFC 5465): which mailboxes a client follows, and the `* STATUS` and `* LIST` it is
//! sent when they change, at command boundaries ([`Session::notify_updates`], after each
//! command) and during IDLE (woken by the folders' watches, or IDLE's poll).
//!
//! A followed mailbox keeps the folder's [`Watch`] (for the first [`MAX_WATCHED`]; the rest
//! are compared at every look) and the state last told: a look takes a new snapshot only when
//! the watch's generation moved. The set of mailboxes is resolved again at each look when a
//! filter depends on the folder list (`personal`, `subtree`, `subscribed`); past
//! [`MAX_MAILBOXES`] the client gets `* OK [NOTIFICATIONOVERFLOW]` and NOTIFY stops, as if
//! NONE (§5.8). So does a look that would queue more than [`MAX_QUEUED`] bytes.
//!
//! The selected mailbox is told as before (EXISTS, EXPUNGE, FETCH), never by STATUS; a
//! `selected` group's MessageNew with fetch attributes adds a FETCH of each new message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::status::StatusDataItem;
use imap_codec::CommandCodec;
use inetkit_maildir::{Flags, Mailbox};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::mailboxes::{mailbox_name, mailbox_of, subscribed_set};
use super::reply::{bad, no_code, ok, Done};
use super::rev2::filter_in_utf8;
use super::{blocking, Conn, Session};
use crate::names::{self, Coding};
use crate::notify::{Event, Events, Filter, Group, Refusal, Request, BADEVENT};
use crate::selected::{settled, stamp};
use crate::watch::{Stamp, Watch};
use crate::{modseq, wire};

/// Most mailboxes one NOTIFY follows.
pub(super) const MAX_MAILBOXES: usize = 256;
/// Of those, most followed through inotify watches; the others are compared at each look.
const MAX_WATCHED: usize = 32;
/// Most bytes of notifications one look may queue before it is an overflow.
const MAX_QUEUED: usize = 256 * 1024;

/// What a client follows; `None` in the session when NOTIFY is off.
pub(super) struct Notifying {
    groups: Vec<(Filter, Events)>,
    /// The fetch attributes of a `selected` group's MessageNew, as a FETCH's.
    fetch: Option<Vec<u8>>,
    followed: BTreeMap<String, Followed>,
    /// The folder list and subscriptions as last told (when MailboxName or
    /// SubscriptionChange is asked for).
    names: BTreeSet<String>,
    subscribed: BTreeSet<String>,
    /// Wakes IDLE when a watched folder changes.
    pub(super) changed: Arc<Notify>,
}

struct Followed {
    events: Events,
    watch: Option<Watch>,
    generation: u64,
    /// Without a watch: the directories' modification times at the last look, which spare
    /// the next look a snapshot when they have not moved (and are a second old).
    stamp: Stamp,
    /// As last told; `None` until a look, and while the mailbox is selected.
    told: Option<State>,
    /// Passes the watch's wake-ups on to [`Notifying::changed`]; stopped with this.
    forwarder: Option<JoinHandle<()>>,
}

impl Drop for Followed {
    fn drop(&mut self) {
        if let Some(f) = &self.forwarder {
            f.abort();
        }
    }
}

/// What STATUS tells of a mailbox.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct State {
    messages: u32,
    uid_next: u32,
    uid_validity: u32,
    unseen: u32,
    highest: u64,
}

/// The STATUS items a change (or, with `initial`, SET STATUS) tells for these events.
fn items(events: Events, state: &State, condstore: bool, initial: bool) -> Vec<StatusDataItem> {
    let mut items = Vec::new();
    if events.new || events.expunge {
        items.push(StatusDataItem::Messages(state.messages));
    }
    if events.new {
        items.push(StatusDataItem::UidNext(wire::nz(state.uid_next)));
    }
    if events.new || events.flags {
        items.push(StatusDataItem::UidValidity(wire::nz(state.uid_validity)));
    }
    if !initial && (events.new || events.flags) {
        items.push(StatusDataItem::Unseen(state.unseen));
    }
    // Initially as Dovecot does (imaptest's notify script expects it); on changes when the
    // client enabled CONDSTORE.
    if events.flags && (initial || condstore) {
        items.push(StatusDataItem::HighestModSeq(state.highest));
    }
    items
}

/// Whether a change from `old` to `new` is one these events ask to be told of.
fn relevant(events: Events, old: &State, new: &State) -> bool {
    (events.new && (new.uid_next != old.uid_next || new.messages > old.messages))
        || (events.expunge && new.messages < old.messages)
        || (events.flags && (new.unseen != old.unseen || new.highest != old.highest))
        || ((events.new || events.flags) && new.uid_validity != old.uid_validity)
}

/// The mailboxes `filter` covers among `folders`.
fn covers(filter: &Filter, name: &str, subscribed: &BTreeSet<String>) -> bool {
    // UTF-8 since SET ([`filter_in_utf8`]); the round trip writes INBOX and trailing delimiters as
    // the store does.
    let named = |raw: &Vec<u8>| -> Option<String> {
        let name = Coding::Utf8.decode(raw)?;
        mailbox_name(&mailbox_of(&name, Coding::Utf8), Coding::Utf8)
    };
    match filter {
        Filter::Selected | Filter::SelectedDelayed => false,
        Filter::Inboxes => name == "INBOX",
        Filter::Personal => true,
        Filter::Subscribed => subscribed.contains(name),
        Filter::Mailboxes(list) => list.iter().filter_map(named).any(|n| n == name),
        Filter::Subtree(list) => list.iter().filter_map(named).any(|n| {
            name == n
                || name
                    .strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with(names::DELIMITER))
        }),
    }
}

/// The events that apply to a mailbox: those of the first group that covers it.
fn events_for(
    groups: &[(Filter, Events)],
    name: &str,
    subscribed: &BTreeSet<String>,
) -> Option<Events> {
    groups
        .iter()
        .find(|(f, _)| covers(f, name, subscribed))
        .map(|(_, e)| *e)
}

/// The folder list and subscriptions.
fn listing(mbox: &Mailbox) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let folders = mbox.folders().ok()?;
    let subscribed = subscribed_set(mbox, &folders).into_iter().collect();
    Some((folders.into_iter().collect(), subscribed))
}

impl Session {
    pub(super) async fn notify_command<S>(&mut self, request: Request, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (status, groups) = match request {
            Request::None => {
                self.notifying = None;
                return ok("NOTIFY completed.");
            }
            Request::Set { status, groups } => (status, groups),
        };
        match crate::notify::validate(&groups) {
            Ok(()) => {}
            Err(Refusal::Bad(text)) => return bad(text),
            Err(Refusal::BadEvent) => {
                return no_code(wire::code(BADEVENT), "Unsupported event.");
            }
        }
        let fetch = groups.iter().find_map(|g: &Group| {
            g.events.iter().find_map(|e| match e {
                Event::MessageNew(Some(atts)) if g.filter.is_selected() => Some(atts.clone()),
                _ => None,
            })
        });
        if let Some(atts) = &fetch {
            let mut line = b"x FETCH 1 ".to_vec();
            line.extend_from_slice(atts);
            line.extend_from_slice(b"\r\n");
            if CommandCodec::default().decode(&line).is_err() {
                return bad("Invalid fetch attributes.");
            }
        }
        let mut notifying = Notifying {
            groups: groups
                .into_iter()
                .map(|g| {
                    (
                        filter_in_utf8(g.filter, self.coding()),
                        Events::of(&g.events),
                    )
                })
                .collect(),
            fetch,
            followed: BTreeMap::new(),
            names: BTreeSet::new(),
            subscribed: BTreeSet::new(),
            changed: Arc::new(Notify::new()),
        };
        let mbox = self.mailbox().clone();
        let Some((names, subscribed)) = blocking(|| listing(&mbox)) else {
            return no_code(wire::code("SERVERBUG"), "Cannot list the mailboxes.");
        };
        if !self.follow(&mut notifying, &names, &subscribed) {
            return no_code(
                wire::code("LIMIT"),
                format!("NOTIFY follows at most {MAX_MAILBOXES} mailboxes."),
            );
        }
        notifying.names = names;
        notifying.subscribed = subscribed;
        // The state now is what later changes are told against; with STATUS, it is told.
        let selected = self.selected_name();
        let condstore = self.resync.condstore || self.resync.qresync;
        let coding = self.coding();
        let mut out = Vec::new();
        // One hand-off of the worker for all of them, not one per mailbox.
        blocking(|| {
            for (name, f) in &mut notifying.followed {
                let Some(state) = look(&mbox, name, f.events) else {
                    continue;
                };
                f.told = Some(state);
                if status && f.events.messages() && selected.as_deref() != Some(name.as_str()) {
                    let items = items(f.events, &state, condstore, true);
                    send_status(&mut out, name, items, coding);
                }
            }
        });
        conn.out.extend_from_slice(&out);
        self.notifying = Some(notifying);
        ok("NOTIFY completed.")
    }

    fn selected_name(&self) -> Option<String> {
        self.selected.as_ref().map(|s| s.folder.name().to_owned())
    }

    /// Brings the followed set up to date with the folder list; false past the bound.
    fn follow(
        &self,
        notifying: &mut Notifying,
        names: &BTreeSet<String>,
        subscribed: &BTreeSet<String>,
    ) -> bool {
        let wanted: Vec<(&String, Events)> = names
            .iter()
            .filter_map(|n| Some((n, events_for(&notifying.groups, n, subscribed)?)))
            .collect();
        if wanted.len() > MAX_MAILBOXES {
            return false;
        }
        notifying
            .followed
            .retain(|n, _| wanted.iter().any(|(w, _)| *w == n));
        let watches = self.imap.watches.clone();
        let mbox = self.mailbox().clone();
        for (name, events) in wanted {
            if let Some(f) = notifying.followed.get_mut(name) {
                f.events = events;
                continue;
            }
            let mut watch = None;
            let watched = notifying.followed.values().filter(|f| f.watch.is_some());
            if events.messages() && watched.count() < MAX_WATCHED {
                watch = blocking(|| mbox.folder(name).ok().and_then(|f| watches.watch(&f)));
            }
            let forwarder = watch.as_ref().map(|w| {
                let changed = notifying.changed.clone();
                let notifier = w.notifier();
                tokio::spawn(async move {
                    loop {
                        notifier.notified().await;
                        changed.notify_one();
                    }
                })
            });
            notifying.followed.insert(
                name.clone(),
                Followed {
                    events,
                    generation: watch.as_ref().map_or(0, Watch::generation),
                    watch,
                    stamp: None,
                    told: None,
                    forwarder,
                },
            );
        }
        true
    }

    /// After a command, and in IDLE: what changed in the followed mailboxes.
    pub(super) fn notify_updates(&mut self, out: &mut Vec<u8>) {
        let Some(mut notifying) = self.notifying.take() else {
            return;
        };
        let mbox = self.mailbox().clone();
        let selected = self.selected_name();
        let condstore = self.resync.condstore || self.resync.qresync;
        let coding = self.coding();
        let mut queued = Vec::new();
        let dynamic = notifying.groups.iter().any(|(f, e)| {
            e.name
                || e.subscription
                || matches!(
                    f,
                    Filter::Personal | Filter::Subtree(_) | Filter::Subscribed
                )
        });
        if dynamic {
            let Some((names, subscribed)) = blocking(|| listing(&mbox)) else {
                self.notifying = Some(notifying);
                return;
            };
            tell_names(&notifying, &names, &subscribed, coding, &mut queued);
            if !self.follow(&mut notifying, &names, &subscribed) {
                return overflow(out);
            }
            notifying.names = names;
            notifying.subscribed = subscribed;
        }
        // One hand-off of the worker for every mailbox looked at, not one per mailbox.
        blocking(|| {
            let followed = &mut notifying.followed;
            look_all(
                &mbox,
                followed,
                selected.as_deref(),
                condstore,
                coding,
                &mut queued,
            );
        });
        if deliver(&queued, out) {
            self.notifying = Some(notifying);
        }
    }

    /// A `selected` group's MessageNew with fetch attributes: the new messages fetched.
    pub(super) fn notify_fetch_atts(&self) -> Option<Vec<u8>> {
        self.notifying.as_ref()?.fetch.clone()
    }

    /// The highest UID of the selected mailbox's view.
    pub(super) fn selected_last_uid(&self) -> Option<u32> {
        self.selected
            .as_ref()
            .map(|s| s.messages.last().map_or(0, |m| m.uid))
    }

    /// FETCHes the messages above `last_uid` with the NOTIFY's attributes.
    pub(super) async fn notify_fetch<S>(&mut self, last_uid: u32, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(atts) = self.notify_fetch_atts() else {
            return;
        };
        if self.selected_last_uid().is_none_or(|uid| uid <= last_uid) {
            return;
        }
        let mut line = format!("x UID FETCH {}:* ", last_uid.saturating_add(1)).into_bytes();
        line.extend_from_slice(&atts);
        line.extend_from_slice(b"\r\n");
        if let Ok((_, command)) = CommandCodec::default().decode(&line) {
            if let CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } = command.body
            {
                let _ = self
                    .fetch_resync(&sequence_set, macro_or_item_names, uid, &modifiers, conn)
                    .await;
            }
        }
    }
}

/// Queues one look's notifications; past [`MAX_QUEUED`] the overflow instead, and false: the
/// caller drops the NOTIFY (RFC 5465 §5.8).
fn deliver(queued: &[u8], out: &mut Vec<u8>) -> bool {
    if queued.len() > MAX_QUEUED {
        overflow(out);
        return false;
    }
    out.extend_from_slice(queued);
    true
}

/// `* OK [NOTIFICATIONOVERFLOW]` (the caller has dropped the NOTIFY).
fn overflow(out: &mut Vec<u8>) {
    let status = wire::untagged(
        imap_codec::imap_types::response::StatusKind::Ok,
        Some(wire::code("NOTIFICATIONOVERFLOW")),
        wire::text("Too many changes to tell; NOTIFY is off."),
    );
    wire::status(out, status);
}

/// `* LIST` for names created, deleted or renamed, and for subscriptions changed.
fn tell_names(
    notifying: &Notifying,
    names: &BTreeSet<String>,
    subscribed: &BTreeSet<String>,
    coding: Coding,
    out: &mut Vec<u8>,
) {
    let wants = |name: &str, subs: &BTreeSet<String>, which: fn(Events) -> bool| {
        events_for(&notifying.groups, name, subs).is_some_and(which)
    };
    let gone: Vec<&String> = notifying.names.difference(names).collect();
    let new: Vec<&String> = names.difference(&notifying.names).collect();
    if let ([old], [new]) = (gone.as_slice(), new.as_slice()) {
        // One name gone and one come: a RENAME (RFC 5465 §5.4, OLDNAME of RFC 5258).
        if wants(new, subscribed, |e| e.name) || wants(old, &notifying.subscribed, |e| e.name) {
            let mut line = Vec::new();
            list_line(&mut line, new, Vec::new(), coding);
            line.truncate(line.len().saturating_sub(2));
            out.extend_from_slice(&line);
            out.extend_from_slice(b" (\"OLDNAME\" (");
            let mut old_name = Vec::new();
            wire::data(
                &mut old_name,
                Data::Status {
                    mailbox: mailbox_of(old, coding),
                    items: Vec::new().into(),
                },
            );
            // `* STATUS <name> ()\r\n`: the name as encoded, between the verb and the list.
            let encoded = old_name
                .strip_prefix(b"* STATUS ")
                .and_then(|rest| rest.strip_suffix(b" ()\r\n"))
                .unwrap_or_default();
            out.extend_from_slice(encoded);
            out.extend_from_slice(b"))\r\n");
        }
    } else {
        for name in gone {
            if wants(name, &notifying.subscribed, |e| e.name) {
                list_line(out, name, vec![attribute("NonExistent")], coding);
            }
        }
        for name in new {
            if wants(name, subscribed, |e| e.name) {
                list_line(out, name, Vec::new(), coding);
            }
        }
    }
    for name in subscribed.difference(&notifying.subscribed) {
        if wants(name, subscribed, |e| e.subscription) {
            list_line(out, name, vec![attribute("Subscribed")], coding);
        }
    }
    for name in notifying.subscribed.difference(subscribed) {
        if names.contains(name) && wants(name, &notifying.subscribed, |e| e.subscription) {
            list_line(out, name, Vec::new(), coding);
        }
    }
}

fn attribute(name: &'static str) -> FlagNameAttribute<'static> {
    FlagNameAttribute::from(imap_codec::imap_types::core::Atom::unvalidated(name))
}

fn list_line(
    out: &mut Vec<u8>,
    name: &str,
    items: Vec<FlagNameAttribute<'static>>,
    coding: Coding,
) {
    let data = Data::List {
        items,
        delimiter: Some(imap_codec::imap_types::core::QuotedChar::unvalidated(
            names::DELIMITER,
        )),
        mailbox: mailbox_of(name, coding),
    };
    wire::data(out, data);
}

fn send_status(out: &mut Vec<u8>, name: &str, items: Vec<StatusDataItem>, coding: Coding) {
    let status = Data::Status {
        mailbox: mailbox_of(name, coding),
        items: items.into(),
    };
    wire::data(out, status);
}

/// What changed in the followed mailboxes (all but the selected one) since they were last
/// told, as STATUS responses into `queued`. Blocking: reads the folders.
fn look_all(
    mbox: &Mailbox,
    followed: &mut BTreeMap<String, Followed>,
    selected: Option<&str>,
    condstore: bool,
    coding: Coding,
    queued: &mut Vec<u8>,
) {
    for (name, f) in followed {
        if selected == Some(name.as_str()) {
            f.told = None;
            continue;
        }
        if !f.events.messages() {
            continue;
        }
        if let (Some(w), Some(_)) = (&f.watch, &f.told) {
            let generation = w.generation();
            if generation == f.generation {
                continue;
            }
            f.generation = generation;
        } else if f.watch.is_none() {
            let stamp = mbox.folder(name).ok().and_then(|f| stamp(&f));
            if f.told.is_some() && stamp.is_some() && stamp == f.stamp && settled(stamp) {
                continue;
            }
            f.stamp = stamp;
        }
        let Some(state) = look(mbox, name, f.events) else {
            continue;
        };
        if let Some(old) = f.told.replace(state) {
            if relevant(f.events, &old, &state) {
                let items = items(f.events, &state, condstore, false);
                send_status(queued, name, items, coding);
            }
        }
    }
}

/// A mailbox's state now; `None` when it cannot be read (gone meanwhile). Blocking.
fn look(mbox: &Mailbox, name: &str, events: Events) -> Option<State> {
    let folder = mbox.folder(name).ok()?;
    let snapshot = folder.snapshot().ok()?;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let highest = if events.flags {
        modseq::sync(folder.path(), &snapshot).highest()
    } else {
        0
    };
    Some(State {
        messages: count(snapshot.messages.len()),
        uid_next: snapshot.uid_next,
        uid_validity: snapshot.uid_validity,
        unseen: count(
            snapshot
                .messages
                .iter()
                .filter(|m| !m.flags.contains(Flags::SEEN))
                .count(),
        ),
        highest,
    })
}

#[cfg(test)]
#[path = "notify_tests.rs"]
mod tests;
