//! One IMAP session: the not-authenticated → authenticated → selected states of RFC 3501 §3,
//! with STARTTLS swapping the stream and running the same loop again.
//!
//! This module holds the [`Session`], its command loop and the dispatch; each command's
//! handler is an `impl Session` block in the file of its group (after Stalwart's
//! `crates/imap/src/op/`):
//!
//! | file | commands |
//! |---|---|
//! | [`auth`] | CAPABILITY, NOOP, LOGOUT, ID, ENABLE, STARTTLS, LOGIN, AUTHENTICATE |
//! | [`mailboxes`] | SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, NAMESPACE |
//! | [`messages`] | APPEND, CHECK, CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE, STORE, COPY, MOVE |
//! | [`extended`], [`catenate`] | LIST-EXTENDED, CREATE-SPECIAL-USE, MULTIAPPEND, CATENATE |
//! | [`search`], [`context`] | SEARCH, SORT, THREAD; their results kept up to date |
//! | [`fetch`] | FETCH (and the message data it sends: ENVELOPE, BODYSTRUCTURE, sections) |
//! | [`idle`] | IDLE |
//! | [`rev2`] | what ENABLE IMAP4rev2 changes (RFC 9051) |
//!
//! Reading a command with its literals is [`input`]; the tagged reply and shared error
//! replies are [`reply`].

mod auth;
mod catenate;
mod compress;
mod condstore;
mod context;
mod extended;
pub(crate) mod fetch;
mod idle;
pub(crate) mod input;
mod mailboxes;
mod messages;
mod notify;
mod quota;
mod reply;
mod rev2;
#[cfg(test)]
mod rev2_tests;
mod search;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::response::{Code, Greeting, GreetingKind, StatusKind};
use imap_codec::CommandCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use inetkit_maildir::Mailbox;
use inetkit_runtime::conn::LineConn;
use inetkit_runtime::log::End;
use inetkit_runtime::server::Peer;
use inetkit_runtime::session::{serve_session, Flow, TlsSession};
use inetkit_runtime::tls::TlsContext;

use self::input::{ImapConn, Input, LiteralBudget};
use self::reply::{bad, farewell, ok, reply, Done};
use crate::compress::Deflate;
use crate::selected::Selected;
use crate::wire;
use crate::Imap;

/// Longest command line (without literals).
const MAX_LINE: usize = 64 * 1024;
/// Largest command with its literals (an APPENDed message).
const MAX_COMMAND: u64 = 64 * 1024 * 1024;
/// Largest command before login.
const MAX_COMMAND_UNAUTHENTICATED: u64 = 16 * 1024;
const MAX_FAILURES: u32 = 3;

struct Login {
    mailbox: Mailbox,
    limits: crate::quota::Limits,
}

pub(crate) struct Session {
    imap: Arc<Imap>,
    peer: Peer,
    tls: bool,
    login: Option<Login>,
    selected: Option<Selected>,
    failures: u32,
    /// COMPRESS=DEFLATE is on.
    compressed: bool,
    /// CONDSTORE and QRESYNC, once the client turned them on.
    resync: crate::modseq::Resync,
    /// The budget of literal bytes in flight, the daemon's (a test's own in tests).
    literals: &'static LiteralBudget,
    /// SEARCHRES's `$`, the current command's `RETURN (…)`, the searches kept up to date.
    search: search::SearchState,
    /// What NOTIFY follows, once the client set it.
    notifying: Option<notify::Notifying>,
    /// The client enabled IMAP4rev2 (RFC 9051; [`rev2`]).
    rev2: bool,
}

impl Session {
    fn new(imap: Arc<Imap>, peer: Peer) -> Session {
        Session {
            imap,
            peer,
            tls: false,
            login: None,
            selected: None,
            failures: 0,
            compressed: false,
            resync: Default::default(),
            literals: &input::LITERALS,
            search: search::SearchState::default(),
            notifying: None,
            rev2: false,
        }
    }
}

pub(crate) async fn serve(imap: Arc<Imap>, stream: TcpStream, peer: Peer, implicit_tls: bool) {
    let mut session = Session::new(imap, peer);
    serve_session(&mut session, stream, implicit_tls).await;
}

type Conn<S> = LineConn<S>;

/// Runs `f`, which may wait for the disk or run long (a synced write: APPEND, COPY, MOVE,
/// mailbox changes; a pass over many messages: SEARCH, SORT, first indexing), on this thread,
/// after handing this worker's other tasks to another worker, so other sessions keep running.
///
/// Why `block_in_place` and not `spawn_blocking`: the calls borrow the session's state (the
/// selected folder's view, the output buffer, an APPENDed message of up to 64 MiB held in
/// the command's bytes); `spawn_blocking` needs `'static` closures, so each call would move
/// that state out and back or copy it. The price: it needs tokio's multi-thread runtime (the
/// daemon's; in-process tests use `flavor = "multi_thread"`), and this session's task does
/// nothing else meanwhile, so long work (SEARCH over large messages) runs in slices with a
/// look at the client between them.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs `f`, a store call bounded by a few file operations, right here on the worker: the
/// look at the folder after each command, STORE and EXPUNGE of up to [`IN_PLACE_MESSAGES`]
/// messages, STATUS without SIZE, LIST, opening a message and reading a small one. A hand-off
/// ([`blocking`]) wakes another thread to run the worker, which cost more than these calls:
/// in place, imapd's CPU per command under imaptest's persistent sessions fell by 12-18%.
/// A wait for a folder lock another holds, and the first look at a folder never indexed (its
/// names read, a uid list written), still hand off (`inetkit_maildir::set_hand_off`, set at
/// start).
fn quick<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Messages a store call may touch in place; past this it hands off: renaming or unlinking
/// thousands of files takes milliseconds.
const IN_PLACE_MESSAGES: usize = 64;

/// [`quick`] for a call over `count` messages, [`blocking`] past [`IN_PLACE_MESSAGES`].
fn quick_for<T>(count: usize, f: impl FnOnce() -> T) -> T {
    if count <= IN_PLACE_MESSAGES {
        quick(f)
    } else {
        blocking(f)
    }
}

impl TlsSession for Session {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn tls_context(&self) -> Option<TlsContext> {
        self.imap.tls.clone()
    }

    fn tls_started(&mut self) {
        self.tls = true;
    }

    async fn run<S>(&mut self, stream: S, greet: bool) -> Option<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match self.command_loop(stream, greet).await {
            LoopEnd::StartTls(stream) => Some(stream),
            LoopEnd::Compress(stream) => {
                // The same loop over the deflating stream; it refuses a second COMPRESS and
                // STARTTLS, so it ends for good.
                self.compressed = true;
                let _ = self.command_loop(Deflate::new(stream), false).await;
                None
            }
            LoopEnd::Over => None,
        }
    }
}

/// How a command loop ended.
enum LoopEnd<S> {
    Over,
    StartTls(S),
    Compress(S),
}

impl Session {
    async fn command_loop<S>(&mut self, stream: S, greet: bool) -> LoopEnd<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut conn = LineConn::new(stream, self.peer.clone(), MAX_LINE, farewell());
        if greet {
            let greeting = Greeting {
                kind: GreetingKind::Ok,
                code: Some(Code::Capability(self.capabilities())),
                text: wire::text("inetkit IMAP ready."),
            };
            conn.out.extend_from_slice(&wire::greeting(&greeting));
        }
        loop {
            // Before login nothing needs more than a user name and password.
            let max = if self.login.is_some() {
                MAX_COMMAND
            } else {
                MAX_COMMAND_UNAUTHENTICATED
            };
            let (bytes, mut held) = match conn.read_command(max, self.literals).await {
                Input::Command(bytes, held) => (bytes, held),
                Input::Refused => continue,
                Input::Gone => {
                    let _ = conn.flush().await;
                    return LoopEnd::Over;
                }
            };
            let Some(bytes) = self.quoted_utf8(bytes, max, &mut held, &mut conn) else {
                continue;
            };
            let Some(bytes) = self.prepare(&bytes, &mut conn) else {
                continue;
            };
            let (tag, done) = match CommandCodec::default().decode(&bytes) {
                Ok((_, command)) => {
                    let tag = command.tag.clone();
                    (tag.clone(), self.handle(command, &tag, &mut conn).await)
                }
                // NOTIFY (notify.rs), then the forms of other extensions (extended.rs), which
                // imap-codec does not parse.
                Err(_) => match self
                    .login
                    .as_ref()
                    .and_then(|_| crate::notify::parse(&bytes))
                {
                    Some(notify) => {
                        let Ok(tag) = Tag::try_from(notify.tag) else {
                            continue;
                        };
                        let last_uid = self.selected_last_uid();
                        let done = self.notify_command(notify.request, &mut conn).await;
                        let done = self.after_command(done, true, last_uid, &mut conn).await;
                        (tag, done)
                    }
                    None => match crate::extended::parse(&bytes) {
                        Some(ext) if self.login.is_some() => match Tag::try_from(ext.tag) {
                            Ok(tag) => (tag, self.handle_extended(ext.command, &mut conn).await),
                            Err(_) => continue,
                        },
                        _ => {
                            let tag = wire::tag_of(&bytes);
                            reply(&mut conn, tag, StatusKind::Bad, None, "Syntax error.");
                            continue;
                        }
                    },
                },
            };
            match done {
                Done::Tagged(kind, code, text) => {
                    wire::send(&mut conn.out, &wire::tagged(tag, kind, code, text));
                    if self.failures >= MAX_FAILURES {
                        self.peer.log.ended(End::Closed("too many failed logins"));
                        wire::status(&mut conn.out, wire::bye("Too many failed logins."));
                        let _ = conn.flush().await;
                        return LoopEnd::Over;
                    }
                }
                Done::Close => {
                    conn.end(Flow::Close).await;
                    return LoopEnd::Over;
                }
                // Whatever was pipelined after STARTTLS came in the clear: dropped.
                Done::StartTls => {
                    let stream = conn.end(Flow::StartTls).await;
                    return stream.map_or(LoopEnd::Over, LoopEnd::StartTls);
                }
                // Likewise after COMPRESS (RFC 4978 §3: the client waits for the OK).
                Done::Compress => {
                    let stream = conn.end(Flow::StartTls).await;
                    return stream.map_or(LoopEnd::Over, LoopEnd::Compress);
                }
                Done::Proxy(backend, capabilities) => {
                    let line = format!(
                        "{} OK [CAPABILITY {capabilities}] Logged in (proxied).\r\n",
                        tag.inner()
                    );
                    conn.out.extend_from_slice(line.as_bytes());
                    inetkit_runtime::proxy::relay(conn, *backend).await;
                    return LoopEnd::Over;
                }
            }
        }
    }
}

impl Session {
    async fn handle<S>(&mut self, command: Command<'_>, tag: &Tag<'_>, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Updates from other sessions may go out before the tagged reply; EXPUNGE may not
        // during FETCH, STORE and SEARCH by sequence number (RFC 3501 §7.4.1).
        let expunge_ok = !matches!(
            &command.body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
                | CommandBody::Sort { uid: false, .. }
                | CommandBody::Thread { uid: false, .. }
        );
        // `$` and updated searches are the selected folder's only (RFC 5182 §2.1, 5267 §4).
        if matches!(
            &command.body,
            CommandBody::Select { .. }
                | CommandBody::Examine { .. }
                | CommandBody::Close
                | CommandBody::Unselect
        ) {
            self.search.deselected();
        }
        let mut mark = self.update_snapshot(&command.body, conn.out.len());
        let reselect = matches!(
            &command.body,
            CommandBody::Select { .. } | CommandBody::Examine { .. }
        );
        let last_uid = self.selected_last_uid().filter(|_| !reselect);
        let done = self.dispatch(command, tag, conn).await;
        if let Some(mark) = mark.as_mut() {
            mark.command_done(conn.out.len());
        }
        let done = self.after_command(done, expunge_ok, last_uid, conn).await;
        if let Done::Tagged(..) = done {
            if let Err(stopped) = self.send_updates(mark, conn) {
                return stopped;
            }
        }
        done
    }

    /// After a command: the selected folder's changes, then NOTIFY's (the new messages
    /// fetched, other mailboxes' STATUS and LIST), before the tagged reply. `last_uid` is the
    /// selected mailbox's highest UID before the command (none when it selected one).
    async fn after_command<S>(
        &mut self,
        done: Done,
        expunge_ok: bool,
        last_uid: Option<u32>,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let done = self.refresh_selected(done, expunge_ok, conn);
        if let Done::Tagged(..) = done {
            if let Some(last) = last_uid {
                self.notify_fetch(last, conn).await;
            }
            let mut out = Vec::new();
            self.notify_updates(&mut out);
            conn.out.extend_from_slice(&out);
        }
        done
    }

    /// After a command: the selected folder's changes go out before the tagged reply.
    fn refresh_selected<S>(&mut self, done: Done, expunge_ok: bool, conn: &mut Conn<S>) -> Done {
        if let (Done::Tagged(..), Some(sel)) = (&done, self.selected.as_mut()) {
            let mut updates = Vec::new();
            let refreshed = quick(|| sel.refresh(&mut updates, expunge_ok));
            if let Err(err) = refreshed {
                tracing::warn!(error = %err, "cannot refresh the selected folder");
                conn.out.extend_from_slice(&updates);
                if updates.starts_with(b"* BYE") {
                    return Done::Close;
                }
            } else {
                conn.out.extend_from_slice(&updates);
            }
        }
        done
    }

    async fn dispatch<S>(&mut self, command: Command<'_>, tag: &Tag<'_>, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let authenticated = self.login.is_some();
        let selected = self.selected.is_some();
        match command.body {
            // Any state, and not authenticated (auth.rs).
            CommandBody::Capability => self.capability(conn),
            CommandBody::Noop => ok("NOOP completed."),
            CommandBody::Logout => self.logout(tag, conn),
            CommandBody::Id { .. } => self.id(conn),
            CommandBody::StartTLS => self.starttls(tag, conn),
            CommandBody::Login { username, password } if !authenticated => {
                self.login_command(&username, &password).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authenticated => self.authenticate(&mechanism, initial_response, conn).await,
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                bad("Already logged in.")
            }
            _ if !authenticated => bad("Not logged in."),
            CommandBody::Enable { capabilities } => self.enable(capabilities.as_ref(), conn),
            CommandBody::Compress { .. } => self.compress(tag, conn),
            // Authenticated (mailboxes.rs, messages.rs, idle.rs).
            CommandBody::Namespace => self.namespace(conn),
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select_resync(&mailbox, false, &parameters, conn),
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select_resync(&mailbox, true, &parameters, conn),
            CommandBody::Create { mailbox } => self.create(&mailbox),
            CommandBody::Delete { mailbox } => self.delete(&mailbox),
            CommandBody::Rename { from, to } => self.rename(&from, &to),
            CommandBody::Subscribe { mailbox } => self.subscribe(&mailbox, true),
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&mailbox, false),
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, false, conn),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, true, conn),
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&mailbox, &item_names, conn),
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(&mailbox, &flags, date, &message),
            CommandBody::Idle => self.idle(conn).await,
            // QUOTA (quota.rs).
            CommandBody::GetQuota { root } => self.getquota(&root, conn),
            CommandBody::GetQuotaRoot { mailbox } => self.getquotaroot(&mailbox, conn),
            CommandBody::SetQuota { .. } => self.setquota(),
            // Selected (messages.rs, search.rs, fetch/); other commands are not supported in
            // any state (below).
            _ if !selected && selected_state(&command.body) => bad("No mailbox selected."),
            CommandBody::Check => self.check(),
            CommandBody::Close => self.close(),
            CommandBody::Unselect => self.unselect(),
            CommandBody::Expunge => self.expunge(None, conn),
            CommandBody::ExpungeUid { sequence_set } => self.expunge(Some(sequence_set), conn),
            // IMAP4rev2 has no \Recent, so no keys that test it.
            CommandBody::Search { criteria: keys, .. }
            | CommandBody::Sort {
                search_criteria: keys,
                ..
            }
            | CommandBody::Thread {
                search_criteria: keys,
                ..
            } if self.rev2 && rev2::uses_recent(keys.as_ref()) => {
                bad("RECENT, NEW and OLD are not IMAP4rev2 search keys.")
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => self.search(charset.as_ref(), criteria.as_ref(), uid, tag, conn),
            CommandBody::Sort {
                sort_criteria,
                charset,
                search_criteria,
                uid,
            } => self.sort_command(
                sort_criteria.as_ref(),
                &charset,
                search_criteria.as_ref(),
                uid,
                tag,
                conn,
            ),
            CommandBody::Thread {
                algorithm,
                charset,
                search_criteria,
                uid,
            } => self.thread_command(&algorithm, &charset, search_criteria.as_ref(), uid, conn),
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch_resync(&sequence_set, macro_or_item_names, uid, &modifiers, conn)
                    .await
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let unchanged_since = condstore::unchanged_since(&modifiers);
                self.store(
                    &sequence_set,
                    kind,
                    response,
                    &flags,
                    uid,
                    unchanged_since,
                    conn,
                )
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, false, conn),
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, true, conn),
        }
    }
}

/// The commands of the selected state (RFC 3501 §6.4): without a mailbox selected they are
/// refused as such.
fn selected_state(body: &CommandBody<'_>) -> bool {
    matches!(
        body,
        CommandBody::Check
            | CommandBody::Close
            | CommandBody::Unselect
            | CommandBody::Expunge
            | CommandBody::ExpungeUid { .. }
            | CommandBody::Search { .. }
            | CommandBody::Sort { .. }
            | CommandBody::Thread { .. }
            | CommandBody::Fetch { .. }
            | CommandBody::Store { .. }
            | CommandBody::Copy { .. }
            | CommandBody::Move { .. }
    )
}
