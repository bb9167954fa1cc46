//! One IMAP session: the not-authenticated → authenticated → selected states of RFC 3501 §3,
//! with STARTTLS swapping the stream and running the same loop again.
//!
//! Commands are read as a line plus any literals it announces (`{n}` gets a `+` continuation;
//! `{n+}`, LITERAL+, does not), bounded in size, then decoded whole by `imap-codec`.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::CommandCodec;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use inetkit_common::auth::{sasl, AuthError};
use inetkit_common::conn::{Farewell, LineConn};
use inetkit_common::lines::Line;
use inetkit_common::mail::{FlagChange, Flags, Folder, Mailbox, MessageInfo, StoreError};
use inetkit_common::server::Peer;

use crate::fetch::{self, Crlf};
use crate::keywords::Keywords;
use crate::names::{self, decode_utf7, encode_utf7};
use crate::search;
use crate::selected::{uid_set, Selected};
use crate::wire::{self, flag_list, string, SYSTEM_FLAGS};
use crate::Imap;

/// Longest command line (without literals).
const MAX_LINE: usize = 64 * 1024;
/// Largest command with its literals (an APPENDed message).
const MAX_COMMAND: u64 = 64 * 1024 * 1024;
/// Largest command before login.
const MAX_COMMAND_UNAUTHENTICATED: u64 = 16 * 1024;
/// Output is sent once this much is queued.
const FLUSH_AT: usize = 64 * 1024;
const MAX_FAILURES: u32 = 3;
/// Messages up to this size are read whole for FETCH; larger ones are streamed in chunks.
const SMALL_MESSAGE: u64 = 1024 * 1024;
/// How often IDLE looks at the folder.
const IDLE_POLL: Duration = Duration::from_secs(1);

const SPECIAL_USE: [(&str, &str); 4] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
];

struct Login {
    mailbox: Mailbox,
}

pub struct Session {
    imap: Arc<Imap>,
    peer: Peer,
    tls: bool,
    login: Option<Login>,
    selected: Option<Selected>,
    failures: u32,
}

enum Ending<S> {
    Closed,
    StartTls(S),
}

/// How a command finished: the tagged status and text, or the end of the connection.
enum Done {
    Tagged(&'static str, String),
    Close,
    StartTls,
}

fn ok(text: impl Into<String>) -> Done {
    Done::Tagged("OK", text.into())
}
fn no(text: impl Into<String>) -> Done {
    Done::Tagged("NO", text.into())
}
fn bad(text: impl Into<String>) -> Done {
    Done::Tagged("BAD", text.into())
}

pub async fn serve(imap: Arc<Imap>, stream: TcpStream, peer: Peer, implicit_tls: bool) {
    let mut session = Session {
        imap,
        peer,
        tls: false,
        login: None,
        selected: None,
        failures: 0,
    };
    if implicit_tls {
        session.serve_tls(stream, true).await;
    } else if let Ending::StartTls(stream) = session.run(stream, true).await {
        session.serve_tls(stream, false).await;
    }
}

type Conn<S> = LineConn<S>;

const FAREWELL: Farewell = Farewell {
    idle: "* BYE Autologout: idle for too long.",
    shutdown: "* BYE Server shutting down.",
};

/// What reading a command gave.
enum Input {
    Command(Vec<u8>),
    /// Refused before reading all of it (a literal too large); the reply is queued.
    Refused,
    Gone,
}

/// IMAP's additions to the shared line connection: literals, and flushing mid-response.
trait ImapConn {
    async fn flush_if_full(&mut self) -> bool;
    async fn read_command(&mut self, max: u64) -> Input;
}

impl<S: AsyncRead + AsyncWrite + Unpin> ImapConn for Conn<S> {
    async fn flush_if_full(&mut self) -> bool {
        self.out.len() < FLUSH_AT || self.flush().await.is_ok()
    }

    /// A command line with its literals, at most `max` bytes in all.
    async fn read_command(&mut self, max: u64) -> Input {
        let mut command = Vec::new();
        let mut line = Vec::with_capacity(256);
        loop {
            match self.next_line(&mut line).await {
                None => return Input::Gone,
                Some(Line::TooLong) => {
                    let tag = wire::tag_of(&command);
                    self.reply(&format!("{tag} BAD Command line too long."));
                    return Input::Refused;
                }
                Some(_) => {}
            }
            command.extend_from_slice(&line);
            command.extend_from_slice(b"\r\n");
            let Some((length, sync)) = literal_announced(&line) else {
                return Input::Command(command);
            };
            if command.len() as u64 + length > max {
                let tag = wire::tag_of(&command);
                if sync {
                    // Refused before the client sends it: nothing to read or allocate.
                    self.reply(&format!("{tag} NO [TOOBIG] Literal too large."));
                    return Input::Refused;
                }
                // A LITERAL+ client sends the data anyway: the connection cannot recover.
                self.reply("* BYE Literal too large.");
                return Input::Gone;
            }
            if sync {
                self.reply("+ Ready for literal data");
                if self.flush().await.is_err() {
                    return Input::Gone;
                }
            }
            let start = command.len();
            command.resize(start + length as usize, 0);
            let read = tokio::time::timeout(
                self.peer.idle_timeout,
                self.reader.read_exact(&mut command[start..]),
            );
            match read.await {
                Ok(Ok(_)) => {}
                _ => return Input::Gone,
            }
        }
    }
}

/// `{123}` or `{123+}` at the end of a line: the literal's length and whether it is
/// synchronising.
fn literal_announced(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, sync))
}

fn mailbox_name(mailbox: &ImapMailbox<'_>) -> Option<String> {
    match mailbox {
        ImapMailbox::Inbox => Some("INBOX".to_owned()),
        ImapMailbox::Other(other) => {
            let name = decode_utf7(other.as_ref())?;
            let name = name.trim_end_matches(names::DELIMITER);
            if name.eq_ignore_ascii_case("INBOX") {
                Some("INBOX".to_owned())
            } else {
                Some(name.to_owned())
            }
        }
    }
}

fn quoted_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, encode_utf7(name).as_bytes());
    out
}

fn store_error(err: &StoreError) -> Done {
    match err {
        StoreError::NoSuchFolder(_) => no("[NONEXISTENT] No such mailbox."),
        StoreError::FolderExists(_) => no("[ALREADYEXISTS] Mailbox already exists."),
        StoreError::InvalidFolder(_) => no("[CANNOT] Invalid mailbox name."),
        StoreError::Inbox(what) => no(format!("[CANNOT] INBOX cannot be {what}.")),
        e if e.is_no_space() => no("[OVERQUOTA] Not enough disk space."),
        e => {
            tracing::error!(error = %e, "store error");
            no("[SERVERBUG] Internal error; try again later.")
        }
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Session {
    async fn serve_tls(&mut self, stream: TcpStream, greet: bool) {
        let Some(tls) = self.imap.tls.clone() else {
            return;
        };
        match tls.accept(stream).await {
            Ok(stream) => {
                self.tls = true;
                self.run(stream, greet).await;
            }
            Err(err) => tracing::debug!(error = %err, "TLS handshake failed"),
        }
    }

    fn plaintext_allowed(&self) -> bool {
        self.imap
            .auth_config
            .plaintext_allowed(self.peer.addr.ip(), self.tls)
    }

    fn capabilities(&self) -> String {
        let mut caps = vec![
            "IMAP4rev1",
            "LITERAL+",
            "SASL-IR",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "CHILDREN",
            "SPECIAL-USE",
            "UIDPLUS",
            "MOVE",
        ];
        if self.login.is_none() {
            if !self.tls && self.imap.tls.is_some() {
                caps.push("STARTTLS");
            }
            if self.plaintext_allowed() {
                caps.push("AUTH=PLAIN");
            } else {
                caps.push("LOGINDISABLED");
            }
        }
        caps.join(" ")
    }

    async fn run<S>(&mut self, stream: S, greet: bool) -> Ending<S>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut conn = LineConn::new(stream, self.peer.clone(), MAX_LINE, FAREWELL);
        if greet {
            let caps = self.capabilities();
            conn.reply(&format!("* OK [CAPABILITY {caps}] inetkit IMAP ready."));
        }
        loop {
            // Before login nothing needs more than a user name and password.
            let max = if self.login.is_some() {
                MAX_COMMAND
            } else {
                MAX_COMMAND_UNAUTHENTICATED
            };
            let bytes = match conn.read_command(max).await {
                Input::Command(bytes) => bytes,
                Input::Refused => continue,
                Input::Gone => {
                    let _ = conn.flush().await;
                    return Ending::Closed;
                }
            };
            let command = match CommandCodec::default().decode(&bytes) {
                Ok((_, command)) => command,
                Err(_) => {
                    let tag = wire::tag_of(&bytes);
                    conn.reply(&format!("{tag} BAD Syntax error."));
                    continue;
                }
            };
            let tag = command.tag.inner().to_owned();
            let done = self.handle(command, &tag, &mut conn).await;
            match done {
                Done::Tagged(status, text) => {
                    conn.reply(&format!("{tag} {status} {text}"));
                    if self.failures >= MAX_FAILURES {
                        conn.reply("* BYE Too many failed logins.");
                        let _ = conn.flush().await;
                        return Ending::Closed;
                    }
                }
                Done::Close => {
                    let _ = conn.flush().await;
                    let _ = conn.reader.get_mut().shutdown().await;
                    return Ending::Closed;
                }
                Done::StartTls => {
                    if conn.flush().await.is_err() {
                        return Ending::Closed;
                    }
                    // Whatever was pipelined after STARTTLS came in the clear: dropped.
                    return Ending::StartTls(conn.into_inner());
                }
            }
        }
    }

    async fn handle<S>(&mut self, command: Command<'_>, tag: &str, conn: &mut Conn<S>) -> Done
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
        );
        let done = self.dispatch(command, tag, conn).await;
        if let (Done::Tagged(..), Some(sel)) = (&done, self.selected.as_mut()) {
            let mut updates = Vec::new();
            if let Err(err) = blocking(|| sel.refresh(&mut updates, expunge_ok)) {
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

    async fn dispatch<S>(&mut self, command: Command<'_>, tag: &str, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let authenticated = self.login.is_some();
        let selected = self.selected.is_some();
        match command.body {
            CommandBody::Capability => {
                conn.reply(&format!("* CAPABILITY {}", self.capabilities()));
                ok("CAPABILITY completed.")
            }
            CommandBody::Noop => ok("NOOP completed."),
            CommandBody::Logout => {
                conn.reply("* BYE Logging out.");
                conn.reply(&format!("{tag} OK LOGOUT completed."));
                Done::Close
            }
            CommandBody::Id { .. } => {
                conn.reply("* ID (\"name\" \"inetkit\")");
                ok("ID completed.")
            }
            CommandBody::StartTLS => {
                if authenticated {
                    bad("Already logged in.")
                } else if self.tls {
                    bad("TLS is already active.")
                } else if self.imap.tls.is_none() {
                    no("TLS is not configured.")
                } else {
                    conn.reply(&format!("{tag} OK Begin TLS negotiation now."));
                    Done::StartTls
                }
            }
            CommandBody::Login { username, password } if !authenticated => {
                if !self.plaintext_allowed() {
                    return no("[PRIVACYREQUIRED] Plaintext login is not allowed without TLS: use STARTTLS first.");
                }
                let name = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password = password.declassify().as_ref().to_vec();
                self.login(&name, &password).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authenticated => {
                if !matches!(mechanism, AuthMechanism::Plain) {
                    return no("[CANNOT] Unsupported authentication mechanism.");
                }
                if !self.plaintext_allowed() {
                    return no(
                        "[PRIVACYREQUIRED] Plaintext authentication is not allowed without TLS.",
                    );
                }
                // SASL-IR: "=" is an empty initial response, which PLAIN cannot use.
                let initial_response = initial_response.filter(|ir| !ir.declassify().is_empty());
                let response = match initial_response {
                    Some(ir) => base64::engine::general_purpose::STANDARD
                        .encode(ir.declassify().as_ref())
                        .into_bytes(),
                    None => {
                        conn.reply("+ ");
                        let mut line = Vec::new();
                        match conn.next_line(&mut line).await {
                            Some(Line::Complete) => line,
                            None => return Done::Close,
                            Some(_) => return bad("Response too long."),
                        }
                    }
                };
                if response == b"*" {
                    return bad("Authentication cancelled.");
                }
                match sasl::decode_plain(&response) {
                    Ok(c) => self.login(&c.name, &c.password).await,
                    Err(_) => bad("Invalid base64 data in the response."),
                }
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                bad("Already logged in.")
            }
            _ if !authenticated => bad("Not logged in."),
            CommandBody::Enable { .. } => {
                // No extension that ENABLE can turn on is implemented.
                conn.reply("* ENABLED");
                ok("ENABLE completed.")
            }
            CommandBody::Namespace => {
                conn.reply("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                ok("NAMESPACE completed.")
            }
            CommandBody::Select { mailbox, .. } => self.select(&mailbox, false, conn),
            CommandBody::Examine { mailbox, .. } => self.select(&mailbox, true, conn),
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
            } => {
                let data = match &message {
                    LiteralOrLiteral8::Literal(l) => l.data(),
                    LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
                };
                let date = date.map(|d| {
                    let ts = d.as_ref().timestamp().max(0) as u64;
                    UNIX_EPOCH + Duration::from_secs(ts)
                });
                self.append(&mailbox, &flags, date, data)
            }
            CommandBody::Idle => self.idle(conn).await,
            _ if !selected => bad("No mailbox selected."),
            CommandBody::Check => ok("CHECK completed."),
            CommandBody::Close => {
                if let Some(mut sel) = self.selected.take() {
                    if !sel.read_only {
                        let doomed = deleted(&sel, None);
                        if let Err(err) = blocking(|| sel.expunge(&doomed, None)) {
                            return store_error(&err);
                        }
                    }
                }
                ok("CLOSE completed.")
            }
            CommandBody::Unselect => {
                self.selected = None;
                ok("UNSELECT completed.")
            }
            CommandBody::Expunge => self.expunge(None, conn),
            CommandBody::ExpungeUid { sequence_set } => self.expunge(Some(sequence_set), conn),
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if let Some(cs) = charset {
                    let cs: &str = cs.as_ref();
                    if !(cs.eq_ignore_ascii_case("UTF-8") || cs.eq_ignore_ascii_case("US-ASCII")) {
                        return no("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset.");
                    }
                }
                let Some(sel) = self.selected.as_ref() else {
                    return bad("No mailbox selected.");
                };
                let hits = blocking(|| search::run(sel, criteria.as_ref()));
                let mut line = String::from("* SEARCH");
                for i in hits {
                    let n = if uid {
                        sel.messages[i].uid
                    } else {
                        i as u32 + 1
                    };
                    line.push_str(&format!(" {n}"));
                }
                conn.reply(&line);
                ok("SEARCH completed.")
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                ..
            } => {
                let items = match macro_or_item_names {
                    MacroOrMessageDataItemNames::Macro(m) => match m {
                        Macro::Fast => vec![
                            MessageDataItemName::Flags,
                            MessageDataItemName::InternalDate,
                            MessageDataItemName::Rfc822Size,
                        ],
                        Macro::All => vec![
                            MessageDataItemName::Flags,
                            MessageDataItemName::InternalDate,
                            MessageDataItemName::Rfc822Size,
                            MessageDataItemName::Envelope,
                        ],
                        _ => vec![
                            MessageDataItemName::Flags,
                            MessageDataItemName::InternalDate,
                            MessageDataItemName::Rfc822Size,
                            MessageDataItemName::Envelope,
                            MessageDataItemName::Body,
                        ],
                    },
                    MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
                };
                self.fetch(&sequence_set, &items, uid, conn).await
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                ..
            } => self.store(&sequence_set, kind, response, &flags, uid, conn),
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
            _ => bad("Command not supported."),
        }
    }

    async fn login(&mut self, name: &str, password: &[u8]) -> Done {
        let ip = self.peer.addr.ip();
        let user = match self.imap.auth.login(ip, name, password).await {
            Ok(user) => user,
            Err(AuthError::Throttled) => {
                return no("[UNAVAILABLE] Too many failed logins from your address; try later.")
            }
            Err(AuthError::Failed) => {
                self.failures += 1;
                return no("[AUTHENTICATIONFAILED] Authentication failed.");
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                return no("[UNAVAILABLE] Authentication is temporarily unavailable.");
            }
        };
        let store = self.imap.store.clone();
        let user_name = user.name.clone();
        match blocking(|| store.mailbox(&user_name)) {
            Ok(mailbox) => {
                tracing::Span::current().record("user", user.name.as_str());
                tracing::info!("logged in");
                self.login = Some(Login { mailbox });
                ok(format!("[CAPABILITY {}] Logged in.", self.capabilities()))
            }
            Err(err) => {
                tracing::error!(user = %user.name, error = %err, "cannot open the mailbox");
                no("[UNAVAILABLE] Cannot open the mailbox; try again later.")
            }
        }
    }

    fn mailbox(&self) -> &Mailbox {
        // Only called in authenticated states.
        self.login
            .as_ref()
            .map(|l| &l.mailbox)
            .expect("dispatch only calls this once logged in")
    }

    fn folder(&self, mailbox: &ImapMailbox<'_>) -> Result<Folder, Done> {
        let Some(name) = mailbox_name(mailbox) else {
            return Err(no("[CANNOT] Invalid mailbox name."));
        };
        let mbox = self.mailbox().clone();
        blocking(|| mbox.folder(&name)).map_err(|e| match e {
            StoreError::NoSuchFolder(_) | StoreError::InvalidFolder(_) => {
                no("[TRYCREATE] No such mailbox.")
            }
            e => store_error(&e),
        })
    }

    fn select<S>(&mut self, mailbox: &ImapMailbox<'_>, read_only: bool, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.selected = None;
        let folder = match self.folder(mailbox) {
            Ok(f) => f,
            Err(Done::Tagged(_, _)) => return no("[NONEXISTENT] No such mailbox."),
            Err(d) => return d,
        };
        let watches = self.imap.watches.clone();
        let sel = match blocking(|| Selected::open(folder, read_only, &watches)) {
            Ok(sel) => sel,
            Err(err) => return store_error(&err),
        };
        let keywords: Vec<&str> = sel.keywords.all().collect();
        let kw = if keywords.is_empty() {
            String::new()
        } else {
            format!(" {}", keywords.join(" "))
        };
        conn.reply(&format!(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw})"
        ));
        if read_only {
            conn.reply("* OK [PERMANENTFLAGS ()] Read-only mailbox.");
        } else {
            conn.reply(&format!(
                "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw} \\*)] Flags permitted."
            ));
        }
        conn.reply(&format!("* {} EXISTS", sel.messages.len()));
        conn.reply(&format!("* {} RECENT", sel.recent.len()));
        if let Some(n) = sel.unseen_first() {
            conn.reply(&format!("* OK [UNSEEN {n}] First unseen."));
        }
        conn.reply(&format!(
            "* OK [UIDVALIDITY {}] UIDs valid.",
            sel.uid_validity
        ));
        conn.reply(&format!(
            "* OK [UIDNEXT {}] Predicted next UID.",
            sel.uid_next
        ));
        self.selected = Some(sel);
        if read_only {
            ok("[READ-ONLY] EXAMINE completed.")
        } else {
            ok("[READ-WRITE] SELECT completed.")
        }
    }

    fn create(&mut self, mailbox: &ImapMailbox<'_>) -> Done {
        let Some(name) = mailbox_name(mailbox) else {
            return no("[CANNOT] Invalid mailbox name.");
        };
        let mbox = self.mailbox().clone();
        match blocking(|| mbox.create(&name)) {
            Ok(_) => ok("CREATE completed."),
            Err(e) => store_error(&e),
        }
    }

    fn delete(&mut self, mailbox: &ImapMailbox<'_>) -> Done {
        let Some(name) = mailbox_name(mailbox) else {
            return no("[CANNOT] Invalid mailbox name.");
        };
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.folder.name() == name)
        {
            self.selected = None;
        }
        let mbox = self.mailbox().clone();
        match blocking(|| mbox.delete(&name)) {
            Ok(()) => {
                let _ = names::set_subscribed(mbox.path(), &name, false);
                ok("DELETE completed.")
            }
            Err(e) => store_error(&e),
        }
    }

    fn rename(&mut self, from: &ImapMailbox<'_>, to: &ImapMailbox<'_>) -> Done {
        let (Some(from), Some(to)) = (mailbox_name(from), mailbox_name(to)) else {
            return no("[CANNOT] Invalid mailbox name.");
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
        match blocking(|| mbox.rename(&from, &to)) {
            Ok(()) => {
                if names::subscriptions(mbox.path()).contains(&from) {
                    let _ = names::set_subscribed(mbox.path(), &from, false);
                    let _ = names::set_subscribed(mbox.path(), &to, true);
                }
                ok("RENAME completed.")
            }
            Err(e) => store_error(&e),
        }
    }

    fn subscribe(&mut self, mailbox: &ImapMailbox<'_>, on: bool) -> Done {
        let Some(name) = mailbox_name(mailbox) else {
            return no("[CANNOT] Invalid mailbox name.");
        };
        let mbox = self.mailbox().clone();
        seed_subscriptions(&mbox);
        match blocking(|| names::set_subscribed(mbox.path(), &name, on)) {
            Ok(()) => ok(if on {
                "SUBSCRIBE completed."
            } else {
                "UNSUBSCRIBE completed."
            }),
            Err(err) => {
                tracing::error!(error = %err, "cannot write subscriptions");
                no("[SERVERBUG] Cannot save the subscription.")
            }
        }
    }

    fn list<S>(
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
        let pattern_bytes: &[u8] = match pattern {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(s) => s.as_ref(),
        };
        let reference = match reference {
            ImapMailbox::Inbox => "INBOX".to_owned(),
            ImapMailbox::Other(o) => decode_utf7(o.as_ref()).unwrap_or_default(),
        };
        let Some(pattern) = decode_utf7(pattern_bytes) else {
            return ok(format!("{verb} completed."));
        };
        if pattern.is_empty() {
            if !lsub {
                conn.reply("* LIST (\\Noselect) \"/\" \"\"");
            }
            return ok("LIST completed.");
        }
        let full = format!("{reference}{pattern}");
        let mbox = self.mailbox().clone();
        let folders = match blocking(|| mbox.folders()) {
            Ok(f) => f,
            Err(e) => return store_error(&e),
        };
        let subscribed = subscribed_set(&mbox, &folders);
        // A folder whose parent does not exist (Maildir++ allows `a/b` without `a`): the
        // parent is shown as \Noselect when the pattern stops at its level (RFC 3501 §6.3.8).
        if !lsub {
            let mut implied: Vec<String> = folders
                .iter()
                .flat_map(|f| {
                    f.match_indices('/')
                        .map(|(i, _)| f[..i].to_owned())
                        .collect::<Vec<_>>()
                })
                .filter(|p| !folders.contains(p))
                .collect();
            implied.sort();
            implied.dedup();
            for parent in implied.iter().filter(|p| names::matches(&full, p)) {
                conn.out
                    .extend_from_slice(b"* LIST (\\Noselect \\HasChildren) \"/\" ");
                conn.out.extend_from_slice(&quoted_name(parent));
                conn.out.extend_from_slice(b"\r\n");
            }
        }
        for name in &folders {
            if !names::matches(&full, name) {
                continue;
            }
            if lsub && !subscribed.contains(name) {
                continue;
            }
            let prefix = format!("{name}/");
            let children = folders.iter().any(|f| f.starts_with(&prefix));
            let mut attrs = vec![if children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            }];
            if let Some((_, flag)) = SPECIAL_USE.iter().find(|(n, _)| n == name) {
                attrs.push(flag);
            }
            let mut line = format!("* {verb} ({}) \"/\" ", attrs.join(" ")).into_bytes();
            line.extend_from_slice(&quoted_name(name));
            conn.out.extend_from_slice(&line);
            conn.out.extend_from_slice(b"\r\n");
        }
        ok(format!("{verb} completed."))
    }

    fn status<S>(
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
            Err(_) => return no("[NONEXISTENT] No such mailbox."),
        };
        let snapshot = match blocking(|| folder.snapshot()) {
            Ok(s) => s,
            Err(e) => return store_error(&e),
        };
        let mut parts = Vec::new();
        for item in items {
            let msgs = &snapshot.messages;
            match item {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", msgs.len())),
                StatusDataItemName::Recent => parts.push(format!(
                    "RECENT {}",
                    msgs.iter().filter(|m| m.recent).count()
                )),
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", snapshot.uid_next)),
                StatusDataItemName::UidValidity => {
                    parts.push(format!("UIDVALIDITY {}", snapshot.uid_validity))
                }
                StatusDataItemName::Unseen => parts.push(format!(
                    "UNSEEN {}",
                    msgs.iter()
                        .filter(|m| !m.flags.contains(Flags::SEEN))
                        .count()
                )),
                _ => return bad("Unsupported STATUS item."),
            }
        }
        let mut line = b"* STATUS ".to_vec();
        line.extend_from_slice(&quoted_name(folder.name()));
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        conn.out.extend_from_slice(&line);
        ok("STATUS completed.")
    }

    fn append(
        &mut self,
        mailbox: &ImapMailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<SystemTime>,
        data: &[u8],
    ) -> Done {
        let folder = match self.folder(mailbox) {
            Ok(f) => f,
            Err(d) => return d,
        };
        if let Some(sel) = self.selected.as_mut() {
            if sel.folder.path() == folder.path() {
                sel.own_change = true;
            }
        }
        let mut keywords = Keywords::load(folder.path());
        let flags = to_flags(flags, &mut keywords, folder.path());
        match blocking(|| folder.append(&mut &data[..], flags, date)) {
            Ok(a) => ok(format!(
                "[APPENDUID {} {}] APPEND completed.",
                a.uid_validity, a.message.uid
            )),
            Err(e) => store_error(&e),
        }
    }

    fn expunge<S>(
        &mut self,
        uids: Option<imap_codec::imap_types::sequence::SequenceSet>,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        if sel.read_only {
            return no("[READ-ONLY] Mailbox is read-only.");
        }
        let doomed = deleted(sel, uids.as_ref());
        match blocking(|| sel.expunge(&doomed, Some(&mut conn.out))) {
            Ok(_) => ok("EXPUNGE completed."),
            Err(e) => store_error(&e),
        }
    }

    fn store<S>(
        &mut self,
        set: &imap_codec::imap_types::sequence::SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        if sel.read_only {
            return no("[READ-ONLY] Mailbox is read-only.");
        }
        let Some(indexes) = sel.resolve(set, uid) else {
            return bad("Invalid message sequence number.");
        };
        let path = sel.folder.path().to_owned();
        let wanted = to_flags(flags, &mut sel.keywords, &path);
        let change = match kind {
            StoreType::Add => FlagChange::Add(wanted),
            StoreType::Remove => FlagChange::Remove(wanted),
            StoreType::Replace => FlagChange::Set(wanted),
        };
        let mut failed = false;
        sel.own_change = true;
        for i in indexes {
            let folder = sel.folder.clone();
            let msg = &mut sel.messages[i];
            match blocking(|| folder.update_flags(msg, change)) {
                Ok(()) => {}
                Err(StoreError::MessageGone { .. }) => {
                    failed = true;
                    continue;
                }
                Err(e) => return store_error(&e),
            }
            if matches!(response, StoreResponse::Answer) || uid {
                let recent = sel.recent.contains(&msg.uid);
                let flags = flag_list(msg.flags, recent, &sel.keywords);
                if matches!(response, StoreResponse::Answer) {
                    conn.reply(&format!(
                        "* {} FETCH (UID {} FLAGS {flags})",
                        i + 1,
                        msg.uid
                    ));
                }
            }
        }
        if failed {
            no("[EXPUNGEISSUED] Some messages were expunged meanwhile.")
        } else {
            ok("STORE completed.")
        }
    }

    fn copy<S>(
        &mut self,
        set: &imap_codec::imap_types::sequence::SequenceSet,
        mailbox: &ImapMailbox<'_>,
        uid: bool,
        moving: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let target = match self.folder(mailbox) {
            Ok(f) => f,
            Err(d) => return d,
        };
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        if moving && sel.read_only {
            return no("[READ-ONLY] Mailbox is read-only.");
        }
        let Some(indexes) = sel.resolve(set, uid) else {
            return bad("Invalid message sequence number.");
        };
        if target.path() == sel.folder.path() {
            sel.own_change = true;
        }
        let mut target_keywords = Keywords::load(target.path());
        let mut from = Vec::new();
        let mut to = Vec::new();
        let mut validity = 0;
        let mut copied = Vec::new();
        for &i in &indexes {
            let msg = &sel.messages[i];
            // Keywords are letters per folder: translate them by name.
            let mut flags = Flags::EMPTY;
            for (f, _) in SYSTEM_FLAGS {
                if msg.flags.contains(f) {
                    flags.insert(f);
                }
            }
            for n in 0..26u8 {
                let (Some(bit), Some(name)) = (Flags::keyword(n), sel.keywords.name(n)) else {
                    continue;
                };
                if msg.flags.contains(bit) {
                    if let Some(k) = target_keywords
                        .find_or_add(target.path(), name)
                        .and_then(Flags::keyword)
                    {
                        flags.insert(k);
                    }
                }
            }
            let result = blocking(|| -> Result<_, StoreError> {
                let mut file = sel.folder.open(msg)?;
                target.append(&mut file, flags, Some(msg.internal_date))
            });
            match result {
                Ok(a) => {
                    validity = a.uid_validity;
                    from.push(msg.uid);
                    to.push(a.message.uid);
                    copied.push(i);
                }
                Err(StoreError::MessageGone { .. }) => {}
                Err(e) => return store_error(&e),
            }
        }
        if from.is_empty() {
            return ok(if moving {
                "MOVE completed."
            } else {
                "COPY completed."
            });
        }
        let code = format!("COPYUID {} {} {}", validity, uid_set(&from), uid_set(&to));
        if !moving {
            return ok(format!("[{code}] COPY completed."));
        }
        conn.reply(&format!("* OK [{code}] Moved."));
        match blocking(|| sel.expunge(&copied, Some(&mut conn.out))) {
            Ok(_) => ok("MOVE completed."),
            Err(e) => store_error(&e),
        }
    }

    async fn idle<S>(&mut self, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        conn.reply("+ idling");
        if conn.flush().await.is_err() {
            return Done::Close;
        }
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(IDLE_POLL);
        // The client's DONE line, gathered with `fill_buf` (which loses nothing when the
        // poll timer interrupts it) rather than a line reader that would drop a partial line.
        let mut line: Vec<u8> = Vec::new();
        let shutdown = self.peer.shutdown.clone();
        let changed = self.selected.as_ref().and_then(Selected::notifier);
        loop {
            let woken = async {
                match &changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woken => {
                    if !self.idle_update(conn).await {
                        return Done::Close;
                    }
                }
                read = conn.reader.fill_buf() => {
                    let (used, complete) = match read {
                        Ok([]) | Err(_) => return Done::Close,
                        Ok(bytes) => match bytes.iter().position(|&b| b == b'\n') {
                            Some(i) => {
                                line.extend_from_slice(&bytes[..i]);
                                (i + 1, true)
                            }
                            None => {
                                line.extend_from_slice(bytes);
                                (bytes.len(), false)
                            }
                        },
                    };
                    conn.reader.consume(used);
                    if complete {
                        let text = line.strip_suffix(b"\r").unwrap_or(&line);
                        return if text.eq_ignore_ascii_case(b"DONE") {
                            ok("IDLE terminated.")
                        } else {
                            bad("Expected DONE.")
                        };
                    }
                    if line.len() > MAX_LINE {
                        return Done::Close;
                    }
                }
                _ = tick.tick() => {
                    if started.elapsed() > self.peer.idle_timeout {
                        conn.reply("* BYE Autologout: idle for too long.");
                        let _ = conn.flush().await;
                        return Done::Close;
                    }
                    if !self.idle_update(conn).await {
                        return Done::Close;
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.reply("* BYE Server shutting down.");
                    let _ = conn.flush().await;
                    return Done::Close;
                }
            }
        }
    }

    /// Sends what changed in the selected folder during IDLE; false when the session must end.
    async fn idle_update<S>(&mut self, conn: &mut Conn<S>) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(sel) = self.selected.as_mut() else {
            return true;
        };
        let mut updates = Vec::new();
        let refreshed = blocking(|| sel.refresh(&mut updates, true));
        conn.out.extend_from_slice(&updates);
        refreshed.is_ok() && conn.flush().await.is_ok()
    }

    async fn fetch<S>(
        &mut self,
        set: &imap_codec::imap_types::sequence::SequenceSet,
        items: &[MessageDataItemName<'_>],
        uid: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(sel) = self.selected.as_mut() else {
            return bad("No mailbox selected.");
        };
        let Some(indexes) = sel.resolve(set, uid) else {
            return bad("Invalid message sequence number.");
        };
        let sets_seen = !sel.read_only
            && items.iter().any(|i| match i {
                MessageDataItemName::BodyExt { peek, .. } => !peek,
                MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
                _ => false,
            });
        let want_flags = items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Flags));
        let need = items.iter().map(need_of).max().unwrap_or(Need::Nothing);
        let mut missing = false;
        for i in indexes {
            let mut seen_changed = false;
            if sets_seen && !sel.messages[i].flags.contains(Flags::SEEN) {
                let folder = sel.folder.clone();
                let msg = &mut sel.messages[i];
                sel.own_change = true;
                if blocking(|| folder.update_flags(msg, FlagChange::Add(Flags::SEEN))).is_ok() {
                    seen_changed = true;
                }
            }
            let msg = sel.messages[i].clone();
            // Content, read once per message as far as the items need it.
            let content = match need {
                Need::Nothing | Need::Stream => None,
                Need::Header | Need::Whole => {
                    let read = blocking(|| -> std::io::Result<Vec<u8>> {
                        let mut file = sel
                            .folder
                            .open(&msg)
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        if need == Need::Whole {
                            fetch::read_all(&mut file)
                        } else {
                            fetch::read_header(&mut file)
                        }
                    });
                    match read {
                        Ok(c) => Some(c),
                        Err(_) => {
                            missing = true;
                            continue;
                        }
                    }
                }
            };
            let parsed = content.as_deref().and_then(fetch::parse);
            conn.out
                .extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
            let mut first = true;
            let mut sep = |out: &mut Vec<u8>| {
                if !first {
                    out.push(b' ');
                }
                first = false;
            };
            if uid || items.iter().any(|i| matches!(i, MessageDataItemName::Uid)) {
                sep(&mut conn.out);
                conn.out
                    .extend_from_slice(format!("UID {}", msg.uid).as_bytes());
            }
            if want_flags || seen_changed {
                sep(&mut conn.out);
                let f = flag_list(msg.flags, sel.recent.contains(&msg.uid), &sel.keywords);
                conn.out.extend_from_slice(format!("FLAGS {f}").as_bytes());
            }
            for item in items {
                match item {
                    MessageDataItemName::Uid | MessageDataItemName::Flags => {}
                    MessageDataItemName::InternalDate => {
                        sep(&mut conn.out);
                        conn.out.extend_from_slice(
                            format!("INTERNALDATE {}", wire::internal_date(msg.internal_date))
                                .as_bytes(),
                        );
                    }
                    MessageDataItemName::Rfc822Size => {
                        sep(&mut conn.out);
                        conn.out
                            .extend_from_slice(format!("RFC822.SIZE {}", msg.vsize).as_bytes());
                    }
                    MessageDataItemName::Envelope => {
                        sep(&mut conn.out);
                        conn.out.extend_from_slice(b"ENVELOPE ");
                        match &parsed {
                            Some(p) => fetch::envelope(&mut conn.out, p),
                            None => conn
                                .out
                                .extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
                        }
                    }
                    MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
                        let ext = matches!(item, MessageDataItemName::BodyStructure);
                        sep(&mut conn.out);
                        conn.out
                            .extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                        match &parsed {
                            Some(p) => fetch::body_structure(&mut conn.out, p, ext),
                            None => conn.out.extend_from_slice(
                                b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)",
                            ),
                        }
                    }
                    MessageDataItemName::Rfc822 => {
                        sep(&mut conn.out);
                        conn.out.extend_from_slice(b"RFC822 ");
                        if !stream_body(sel, &msg, 0, None, conn).await {
                            return Done::Close;
                        }
                    }
                    MessageDataItemName::Rfc822Header | MessageDataItemName::Rfc822Text => {
                        let header = matches!(item, MessageDataItemName::Rfc822Header);
                        sep(&mut conn.out);
                        let c = content.as_deref().unwrap_or_default();
                        let split = fetch::header_len(c);
                        if header {
                            conn.out.extend_from_slice(b"RFC822.HEADER ");
                            string_or_literal(&mut conn.out, &c[..split]);
                        } else {
                            conn.out.extend_from_slice(b"RFC822.TEXT ");
                            string_or_literal(&mut conn.out, &c[split..]);
                        }
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        sep(&mut conn.out);
                        let name = section_name(section.as_ref());
                        let origin = partial.map(|(o, _)| format!("<{o}>")).unwrap_or_default();
                        conn.out
                            .extend_from_slice(format!("BODY[{name}]{origin} ").as_bytes());
                        let (offset, length) = partial
                            .map(|(o, l)| (u64::from(o), Some(u64::from(l.get()))))
                            .unwrap_or((0, None));
                        if section.is_none() {
                            if !stream_body(sel, &msg, offset, length, conn).await {
                                return Done::Close;
                            }
                            continue;
                        }
                        let c = content.as_deref().unwrap_or_default();
                        let data = section_data(c, parsed.as_ref(), section.as_ref());
                        let data = data.unwrap_or_default();
                        let from = (offset as usize).min(data.len());
                        let to = length.map_or(data.len(), |l| (from + l as usize).min(data.len()));
                        wire::literal(&mut conn.out, &data[from..to]);
                    }
                    _ => {}
                }
            }
            conn.out.extend_from_slice(b")\r\n");
            if !conn.flush_if_full().await {
                return Done::Close;
            }
        }
        if missing {
            no("[EXPUNGEISSUED] Some messages were expunged meanwhile.")
        } else {
            ok("FETCH completed.")
        }
    }
}

/// When the subscriptions file does not exist yet, every folder counts as subscribed (a
/// fresh mailbox shows its folders in clients that list only subscribed ones); the first
/// change writes that list down.
fn seed_subscriptions(mbox: &Mailbox) {
    if !mbox.path().join("inetkit-subscriptions").exists() {
        if let Ok(folders) = mbox.folders() {
            for f in folders {
                let _ = names::set_subscribed(mbox.path(), &f, true);
            }
        }
    }
}

fn subscribed_set(mbox: &Mailbox, folders: &[String]) -> std::collections::HashSet<String> {
    if mbox.path().join("inetkit-subscriptions").exists() {
        names::subscriptions(mbox.path()).into_iter().collect()
    } else {
        folders.iter().cloned().collect()
    }
}

/// Indexes of messages flagged \Deleted (and, for UID EXPUNGE, in the UID set).
fn deleted(
    sel: &Selected,
    uids: Option<&imap_codec::imap_types::sequence::SequenceSet>,
) -> Vec<usize> {
    let largest = sel.messages.last().map_or(0, |m| m.uid);
    sel.messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.flags.contains(Flags::TRASHED))
        .filter(|(_, m)| uids.is_none_or(|set| search::in_set(set, m.uid, largest)))
        .map(|(i, _)| i)
        .collect()
}

/// IMAP flags to Maildir flags; keywords get (or are given) a letter in this folder.
fn to_flags(flags: &[Flag<'_>], keywords: &mut Keywords, folder: &std::path::Path) -> Flags {
    let mut out = Flags::EMPTY;
    for flag in flags {
        match flag {
            Flag::Answered => out.insert(Flags::REPLIED),
            Flag::Deleted => out.insert(Flags::TRASHED),
            Flag::Draft => out.insert(Flags::DRAFT),
            Flag::Flagged => out.insert(Flags::FLAGGED),
            Flag::Seen => out.insert(Flags::SEEN),
            Flag::Keyword(k) => {
                if let Some(bit) = keywords
                    .find_or_add(folder, k.as_ref())
                    .and_then(Flags::keyword)
                {
                    out.insert(bit);
                }
            }
            Flag::Extension(_) => {}
        }
    }
    out
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Need {
    Nothing,
    Stream,
    Header,
    Whole,
}

fn need_of(item: &MessageDataItemName<'_>) -> Need {
    match item {
        MessageDataItemName::Envelope | MessageDataItemName::Rfc822Header => Need::Header,
        MessageDataItemName::Rfc822 => Need::Stream,
        MessageDataItemName::BodyExt { section, .. } => match section {
            None => Need::Stream,
            Some(Section::Header(None))
            | Some(Section::HeaderFields(None, _))
            | Some(Section::HeaderFieldsNot(None, _)) => Need::Header,
            Some(_) => Need::Whole,
        },
        MessageDataItemName::Body
        | MessageDataItemName::BodyStructure
        | MessageDataItemName::Rfc822Text => Need::Whole,
        _ => Need::Nothing,
    }
}

fn part_string(part: &imap_codec::imap_types::fetch::Part) -> String {
    part.0
        .as_ref()
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

fn section_name(section: Option<&Section<'_>>) -> String {
    let prefix = |p: &Option<imap_codec::imap_types::fetch::Part>| match p {
        Some(p) => format!("{}.", part_string(p)),
        None => String::new(),
    };
    let fields =
        |names: &imap_codec::imap_types::core::Vec1<imap_codec::imap_types::core::AString<'_>>| {
            names
                .as_ref()
                .iter()
                .map(|n| {
                    let name = n.as_ref();
                    let atom = !name.is_empty()
                        && name
                            .iter()
                            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(b));
                    let mut out = Vec::new();
                    if atom {
                        out.extend_from_slice(name);
                    } else {
                        string(&mut out, name);
                    }
                    String::from_utf8_lossy(&out).to_ascii_uppercase()
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
    match section {
        None => String::new(),
        Some(Section::Part(p)) => part_string(p),
        Some(Section::Header(p)) => format!("{}HEADER", prefix(p)),
        Some(Section::HeaderFields(p, names)) => {
            format!("{}HEADER.FIELDS ({})", prefix(p), fields(names))
        }
        Some(Section::HeaderFieldsNot(p, names)) => {
            format!("{}HEADER.FIELDS.NOT ({})", prefix(p), fields(names))
        }
        Some(Section::Text(p)) => format!("{}TEXT", prefix(p)),
        Some(Section::Mime(p)) => format!("{}.MIME", part_string(p)),
    }
}

/// The bytes of a section (other than the whole message). `None`: no such part (sent as an
/// empty string).
fn section_data(
    content: &[u8],
    parsed: Option<&mail_parser::Message<'_>>,
    section: Option<&Section<'_>>,
) -> Option<Vec<u8>> {
    let header_of = |bytes: &[u8]| bytes[..fetch::header_len(bytes)].to_vec();
    let names_of =
        |names: &imap_codec::imap_types::core::Vec1<imap_codec::imap_types::core::AString<'_>>| {
            names
                .as_ref()
                .iter()
                .map(|n| n.as_ref().to_vec())
                .collect::<Vec<_>>()
        };
    // Top-level header sections need no MIME parsing.
    match section? {
        Section::Header(None) => return Some(header_of(content)),
        Section::HeaderFields(None, names) => {
            return Some(fetch::header_fields(
                &header_of(content),
                &names_of(names),
                false,
            ))
        }
        Section::HeaderFieldsNot(None, names) => {
            return Some(fetch::header_fields(
                &header_of(content),
                &names_of(names),
                true,
            ))
        }
        Section::Text(None) => return Some(content[fetch::header_len(content)..].to_vec()),
        _ => {}
    }
    let msg = parsed?;
    let path = |p: &imap_codec::imap_types::fetch::Part| {
        p.0.as_ref().iter().map(|n| n.get()).collect::<Vec<u32>>()
    };
    // The message encapsulated in a message/rfc822 part, as its own bytes.
    let inner = |p: &imap_codec::imap_types::fetch::Part| -> Option<Vec<u8>> {
        let loc = fetch::locate(msg, &path(p))?;
        match &loc.part.body {
            mail_parser::PartType::Message(_) => Some(
                fetch::slice(
                    &loc.message.raw_message,
                    loc.part.offset_body,
                    loc.part.offset_end,
                )
                .to_vec(),
            ),
            _ => None,
        }
    };
    match section? {
        Section::Part(p) => {
            let loc = fetch::locate(msg, &path(p))?;
            Some(
                fetch::slice(
                    &loc.message.raw_message,
                    loc.part.offset_body,
                    loc.part.offset_end,
                )
                .to_vec(),
            )
        }
        Section::Mime(p) => {
            let loc = fetch::locate(msg, &path(p))?;
            Some(
                fetch::slice(
                    &loc.message.raw_message,
                    loc.part.offset_header,
                    loc.part.offset_body,
                )
                .to_vec(),
            )
        }
        Section::Header(Some(p)) => inner(p).map(|m| header_of(&m)),
        Section::HeaderFields(Some(p), names) => {
            inner(p).map(|m| fetch::header_fields(&header_of(&m), &names_of(names), false))
        }
        Section::HeaderFieldsNot(Some(p), names) => {
            inner(p).map(|m| fetch::header_fields(&header_of(&m), &names_of(names), true))
        }
        Section::Text(Some(p)) => inner(p).map(|m| m[fetch::header_len(&m)..].to_vec()),
        _ => None,
    }
}

fn string_or_literal(out: &mut Vec<u8>, data: &[u8]) {
    wire::literal(out, data);
}

/// Sends a whole message (or the `offset`/`length` part of it) as a literal, read from its
/// file in chunks with bare LFs made CRLF: never held whole in memory. The literal's length
/// comes from the message's CRLF size; a file that changed under us is cut or padded to it.
async fn stream_body<S>(
    sel: &Selected,
    msg: &MessageInfo,
    offset: u64,
    length: Option<u64>,
    conn: &mut Conn<S>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let total = msg.vsize;
    let start = offset.min(total);
    let end = length.map_or(total, |l| (start + l).min(total));
    let want = end - start;
    conn.out
        .extend_from_slice(format!("{{{want}}}\r\n").as_bytes());
    if msg.size <= SMALL_MESSAGE {
        // Most messages: one blocking call reads the file whole.
        let data = blocking(|| -> Result<Vec<u8>, StoreError> {
            let mut file = sel.folder.open(msg)?;
            fetch::read_all(&mut file).map_err(StoreError::Input)
        });
        let data = data.unwrap_or_else(|err| {
            tracing::warn!(uid = msg.uid, error = %err, "cannot read a message");
            Vec::new()
        });
        let from = (start as usize).min(data.len());
        let to = (from + want as usize).min(data.len());
        conn.out.extend_from_slice(&data[from..to]);
        // A file that shrank under us is padded to the promised length.
        conn.out
            .resize(conn.out.len() + want as usize - (to - from), b' ');
        return conn.flush_if_full().await;
    }
    let mut file = match blocking(|| sel.folder.open(msg)) {
        Ok(f) => Some(f),
        Err(err) => {
            tracing::warn!(uid = msg.uid, error = %err, "cannot open a message");
            None
        }
    };
    let mut pos: u64 = 0; // in CRLF bytes
    let mut sent: u64 = 0;
    let mut conv = Crlf::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut chunk = Vec::with_capacity(buf.len() + 4096);
    while sent < want {
        let n = match file.as_mut().map(|f| blocking(|| f.read(&mut buf))) {
            Some(Ok(n)) if n > 0 => n,
            _ => 0,
        };
        if n == 0 {
            // The file ended early (or could not be read): pad to the promised length.
            conn.out
                .resize(conn.out.len() + (want - sent) as usize, b' ');
            break;
        }
        chunk.clear();
        conv.push(&buf[..n], &mut chunk);
        let chunk_start = pos;
        pos += chunk.len() as u64;
        if pos <= start {
            continue;
        }
        let from = start.saturating_sub(chunk_start) as usize;
        let take = ((chunk.len() - from) as u64).min(want - sent) as usize;
        conn.out.extend_from_slice(&chunk[from..from + take]);
        sent += take as u64;
        if !conn.flush_if_full().await {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_announced(b"a LOGIN {5}"), Some((5, true)));
        assert_eq!(literal_announced(b"a APPEND x {12+}"), Some((12, false)));
        assert_eq!(
            literal_announced(b"a LOGIN {2147483648}"),
            Some((2_147_483_648, true))
        );
        // Too many digits to be a length we would take: not a literal, so a syntax error.
        assert_eq!(literal_announced(b"a LOGIN {99999999999999999999}"), None);
        assert_eq!(literal_announced(b"a NOOP"), None);
        assert_eq!(literal_announced(b"a LOGIN {}"), None);
        assert_eq!(literal_announced(b"a LOGIN {+}"), None);
        assert_eq!(literal_announced(b"a LOGIN {1a}"), None);
    }

    #[test]
    fn whole_commands_decode() {
        let (_, c) = CommandCodec::default()
            .decode(b"a1 LOGIN {5}\r\nalice {3+}\r\npw!\r\n")
            .expect("decodes");
        assert!(matches!(c.body, CommandBody::Login { .. }));
        let (_, c) = CommandCodec::default()
            .decode(b"a2 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)]<0.100>)\r\n")
            .expect("decodes");
        assert!(matches!(c.body, CommandBody::Fetch { uid: true, .. }));
        assert!(CommandCodec::default().decode(b"a3 FROB\r\n").is_err());
    }
}
