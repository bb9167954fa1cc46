//! One IMAP session: the not-authenticated → authenticated → selected states of RFC 3501 §3,
//! with STARTTLS swapping the stream and running the same loop again.
//!
//! Commands are read as a line plus any literals it announces (`{n}` gets a `+` continuation;
//! `{n+}`, LITERAL+, does not), bounded in size, then decoded whole by `imap-codec`.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{AString, Atom, Charset, IString, NString, QuotedChar, Tag};
use imap_codec::imap_types::core::{Text, Vec1};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::namespace::Namespace;
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{Flag, FlagNameAttribute, FlagPerm, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_codec::imap_types::response::{
    Capability, Code, CommandContinuationRequest, Data, Greeting, GreetingKind, Response,
    StatusKind,
};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use imap_codec::CommandCodec;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use inetkit_auth::{sasl, AuthError};
use inetkit_maildir::{FlagChange, Flags, Folder, Mailbox, MessageInfo, StoreError};
use inetkit_runtime::conn::{Farewell, LineConn};
use inetkit_runtime::lines::Line;
use inetkit_runtime::server::Peer;
use inetkit_runtime::session::{serve_session, Flow, TlsSession};
use inetkit_runtime::tls::TlsContext;

use crate::fetch::{self, RangeReader};
use crate::keywords::Keywords;
use crate::names::{self, decode_utf7, encode_utf7};
use crate::search;
use crate::selected::Selected;
use crate::wire::{self, nz, SYSTEM_FLAGS};
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

/// SPECIAL-USE folders and their attribute (as an atom, without its backslash).
const SPECIAL_USE: [&str; 4] = ["Sent", "Drafts", "Trash", "Junk"];

struct Login {
    mailbox: Mailbox,
}

pub(crate) struct Session {
    imap: Arc<Imap>,
    peer: Peer,
    tls: bool,
    login: Option<Login>,
    selected: Option<Selected>,
    failures: u32,
}

/// How a command finished: the tagged status, code and text, or the end of the connection.
enum Done {
    Tagged(StatusKind, Option<Code<'static>>, Text<'static>),
    Close,
    StartTls,
}

fn ok(text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::Ok, None, wire::text(text))
}
fn no(text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::No, None, wire::text(text))
}
fn bad(text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::Bad, None, wire::text(text))
}
fn ok_code(code: Code<'static>, text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::Ok, Some(code), wire::text(text))
}
fn no_code(code: Code<'static>, text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::No, Some(code), wire::text(text))
}

pub(crate) async fn serve(imap: Arc<Imap>, stream: TcpStream, peer: Peer, implicit_tls: bool) {
    let mut session = Session {
        imap,
        peer,
        tls: false,
        login: None,
        selected: None,
        failures: 0,
    };
    serve_session(&mut session, stream, implicit_tls).await;
}

type Conn<S> = LineConn<S>;

const IDLE_TEXT: &str = "Autologout: idle for too long.";
const SHUTDOWN_TEXT: &str = "Server shutting down.";
// The connection's farewells are lines of text: encoded once.
static IDLE_BYE: LazyLock<String> = LazyLock::new(|| wire::line(wire::bye(IDLE_TEXT)));
static SHUTDOWN_BYE: LazyLock<String> = LazyLock::new(|| wire::line(wire::bye(SHUTDOWN_TEXT)));

fn farewell() -> Farewell {
    Farewell {
        idle: IDLE_BYE.as_str(),
        shutdown: SHUTDOWN_BYE.as_str(),
    }
}

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
                    reply(self, tag, StatusKind::Bad, None, "Command line too long.");
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
                    let code = Some(Code::TooBig);
                    reply(self, tag, StatusKind::No, code, "Literal too large.");
                    return Input::Refused;
                }
                // A LITERAL+ client sends the data anyway: the connection cannot recover.
                wire::status(&mut self.out, wire::bye("Literal too large."));
                return Input::Gone;
            }
            if sync {
                wire::continuation(&mut self.out, "Ready for literal data");
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

/// A status reply, tagged when the command's tag is known, untagged (`*`) otherwise.
fn reply<S>(
    conn: &mut Conn<S>,
    tag: Option<Tag<'_>>,
    kind: StatusKind,
    code: Option<Code<'_>>,
    text: &'static str,
) {
    let text = wire::text(text);
    match tag {
        Some(tag) => wire::send(&mut conn.out, &wire::tagged(tag, kind, code, text)),
        None => wire::status(&mut conn.out, wire::untagged(kind, code, text)),
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

/// A folder name as LIST, LSUB and STATUS send it.
fn mailbox_of(name: &str) -> ImapMailbox<'static> {
    wire::mailbox(encode_utf7(name))
}

fn store_error(err: &StoreError) -> Done {
    match err {
        StoreError::NoSuchFolder(_) => no_code(wire::code("NONEXISTENT"), "No such mailbox."),
        StoreError::FolderExists(_) => {
            no_code(wire::code("ALREADYEXISTS"), "Mailbox already exists.")
        }
        StoreError::InvalidFolder(_) => invalid_name(),
        StoreError::Inbox(what) => {
            no_code(wire::code("CANNOT"), format!("INBOX cannot be {what}."))
        }
        e if e.is_no_space() => no_code(Code::OverQuota, "Not enough disk space."),
        e => {
            tracing::error!(error = %e, "store error");
            no_code(wire::code("SERVERBUG"), "Internal error; try again later.")
        }
    }
}

fn invalid_name() -> Done {
    no_code(wire::code("CANNOT"), "Invalid mailbox name.")
}

fn no_such_mailbox() -> Done {
    no_code(wire::code("NONEXISTENT"), "No such mailbox.")
}

fn read_only() -> Done {
    no_code(Code::ReadOnly, "Mailbox is read-only.")
}

fn expunge_issued() -> Done {
    no_code(
        wire::code("EXPUNGEISSUED"),
        "Some messages were expunged meanwhile.",
    )
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl TlsSession for Session {
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
            let bytes = match conn.read_command(max).await {
                Input::Command(bytes) => bytes,
                Input::Refused => continue,
                Input::Gone => {
                    let _ = conn.flush().await;
                    return None;
                }
            };
            let command = match CommandCodec::default().decode(&bytes) {
                Ok((_, command)) => command,
                Err(_) => {
                    let tag = wire::tag_of(&bytes);
                    reply(&mut conn, tag, StatusKind::Bad, None, "Syntax error.");
                    continue;
                }
            };
            let tag = command.tag.clone();
            let done = self.handle(command, &tag, &mut conn).await;
            match done {
                Done::Tagged(kind, code, text) => {
                    wire::send(&mut conn.out, &wire::tagged(tag, kind, code, text));
                    if self.failures >= MAX_FAILURES {
                        wire::status(&mut conn.out, wire::bye("Too many failed logins."));
                        let _ = conn.flush().await;
                        return None;
                    }
                }
                Done::Close => return conn.end(Flow::Close).await,
                // Whatever was pipelined after STARTTLS came in the clear: dropped.
                Done::StartTls => return conn.end(Flow::StartTls).await,
            }
        }
    }
}

impl Session {
    fn plaintext_allowed(&self) -> bool {
        self.imap
            .auth_config
            .plaintext_allowed(self.peer.addr.ip(), self.tls)
    }

    fn capabilities(&self) -> Vec1<Capability<'static>> {
        // CHILDREN and SPECIAL-USE have no variant in imap-types: atoms.
        let other = |name: &'static str| Capability::from(Atom::unvalidated(name));
        let mut caps = vec![
            Capability::Imap4Rev1,
            Capability::LiteralPlus,
            Capability::SaslIr,
            Capability::Id,
            Capability::Enable,
            Capability::Idle,
            Capability::Namespace,
            Capability::Unselect,
            other("CHILDREN"),
            other("SPECIAL-USE"),
            Capability::UidPlus,
            Capability::Move,
        ];
        if self.login.is_none() {
            if !self.tls && self.imap.tls.is_some() {
                caps.push(Capability::StartTls);
            }
            if self.plaintext_allowed() {
                caps.push(Capability::Auth(AuthMechanism::Plain));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        }
        Vec1::try_from(caps).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }

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

    async fn dispatch<S>(&mut self, command: Command<'_>, tag: &Tag<'_>, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let authenticated = self.login.is_some();
        let selected = self.selected.is_some();
        match command.body {
            CommandBody::Capability => {
                wire::data(&mut conn.out, Data::Capability(self.capabilities()));
                ok("CAPABILITY completed.")
            }
            CommandBody::Noop => ok("NOOP completed."),
            CommandBody::Logout => {
                wire::status(&mut conn.out, wire::bye("Logging out."));
                let text = wire::text("LOGOUT completed.");
                let done = wire::tagged(tag.clone(), StatusKind::Ok, None, text);
                wire::send(&mut conn.out, &done);
                Done::Close
            }
            CommandBody::Id { .. } => {
                let parameters = vec![(
                    wire::istring(&b"name"[..]),
                    wire::nstring(Some(&b"inetkit"[..])),
                )];
                let id = Data::Id {
                    parameters: Some(parameters),
                };
                wire::data(&mut conn.out, id);
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
                    let text = wire::text("Begin TLS negotiation now.");
                    let done = wire::tagged(tag.clone(), StatusKind::Ok, None, text);
                    wire::send(&mut conn.out, &done);
                    Done::StartTls
                }
            }
            CommandBody::Login { username, password } if !authenticated => {
                if !self.plaintext_allowed() {
                    return no_code(
                        wire::code("PRIVACYREQUIRED"),
                        "Plaintext login is not allowed without TLS: use STARTTLS first.",
                    );
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
                    return no_code(
                        wire::code("CANNOT"),
                        "Unsupported authentication mechanism.",
                    );
                }
                if !self.plaintext_allowed() {
                    return no_code(
                        wire::code("PRIVACYREQUIRED"),
                        "Plaintext authentication is not allowed without TLS.",
                    );
                }
                // SASL-IR: "=" is an empty initial response, which PLAIN cannot use.
                let initial_response = initial_response.filter(|ir| !ir.declassify().is_empty());
                let response = match initial_response {
                    Some(ir) => base64::engine::general_purpose::STANDARD
                        .encode(ir.declassify().as_ref())
                        .into_bytes(),
                    None => {
                        // An empty challenge: `+ `.
                        let challenge = CommandContinuationRequest::base64(&b""[..]);
                        let challenge = Response::CommandContinuationRequest(challenge);
                        wire::send(&mut conn.out, &challenge);
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
                let enabled = Data::Enabled {
                    capabilities: Vec::new(),
                };
                wire::data(&mut conn.out, enabled);
                ok("ENABLE completed.")
            }
            CommandBody::Namespace => {
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
                        let allowed = ["UTF-8", "US-ASCII"]
                            .into_iter()
                            .filter_map(|c| Charset::try_from(c).ok())
                            .collect();
                        return no_code(Code::BadCharset { allowed }, "Unsupported charset.");
                    }
                }
                let Some(sel) = self.selected.as_ref() else {
                    return bad("No mailbox selected.");
                };
                let hits = blocking(|| search::run(sel, criteria.as_ref()));
                let numbers = hits
                    .into_iter()
                    .map(|i| {
                        nz(if uid {
                            sel.messages[i].uid
                        } else {
                            i as u32 + 1
                        })
                    })
                    .collect();
                wire::data(&mut conn.out, Data::Search(numbers));
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
                return no_code(
                    wire::code("UNAVAILABLE"),
                    "Too many failed logins from your address; try later.",
                )
            }
            Err(AuthError::Failed) => {
                self.failures += 1;
                return no_code(wire::code("AUTHENTICATIONFAILED"), "Authentication failed.");
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                return no_code(
                    wire::code("UNAVAILABLE"),
                    "Authentication is temporarily unavailable.",
                );
            }
        };
        let store = self.imap.store.clone();
        let user_name = user.name.clone();
        match blocking(|| store.mailbox(&user_name)) {
            Ok(mailbox) => {
                tracing::Span::current().record("user", user.name.as_str());
                tracing::info!("logged in");
                self.login = Some(Login { mailbox });
                ok_code(Code::Capability(self.capabilities()), "Logged in.")
            }
            Err(err) => {
                tracing::error!(user = %user.name, error = %err, "cannot open the mailbox");
                no_code(
                    wire::code("UNAVAILABLE"),
                    "Cannot open the mailbox; try again later.",
                )
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
            return Err(invalid_name());
        };
        let mbox = self.mailbox().clone();
        blocking(|| mbox.folder(&name)).map_err(|e| match e {
            StoreError::NoSuchFolder(_) | StoreError::InvalidFolder(_) => {
                no_code(Code::TryCreate, "No such mailbox.")
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
            Err(Done::Tagged(..)) => return no_such_mailbox(),
            Err(d) => return d,
        };
        let watches = self.imap.watches.clone();
        let sel = match blocking(|| Selected::open(folder, read_only, &watches)) {
            Ok(sel) => sel,
            Err(err) => return store_error(&err),
        };
        let mut flags = vec![
            Flag::Answered,
            Flag::Flagged,
            Flag::Deleted,
            Flag::Seen,
            Flag::Draft,
        ];
        flags.extend(sel.keywords.all().filter_map(wire::keyword));
        let out = &mut conn.out;
        wire::data(out, Data::Flags(flags.clone()));
        let (permanent, text) = if read_only {
            (Vec::new(), "Read-only mailbox.")
        } else {
            let mut permanent: Vec<FlagPerm<'_>> = flags.into_iter().map(FlagPerm::Flag).collect();
            permanent.push(FlagPerm::Asterisk);
            (permanent, "Flags permitted.")
        };
        let ok_line = |out: &mut Vec<u8>, code, text| {
            wire::status(
                out,
                wire::untagged(StatusKind::Ok, Some(code), wire::text(text)),
            );
        };
        ok_line(out, Code::PermanentFlags(permanent), text);
        wire::data(out, Data::Exists(sel.messages.len() as u32));
        wire::data(out, Data::Recent(sel.recent.len() as u32));
        if let Some(n) = sel.unseen_first() {
            ok_line(out, Code::Unseen(nz(n as u32)), "First unseen.");
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

    fn create(&mut self, mailbox: &ImapMailbox<'_>) -> Done {
        let Some(name) = mailbox_name(mailbox) else {
            return invalid_name();
        };
        let mbox = self.mailbox().clone();
        match blocking(|| mbox.create(&name)) {
            Ok(_) => ok("CREATE completed."),
            Err(e) => store_error(&e),
        }
    }

    fn delete(&mut self, mailbox: &ImapMailbox<'_>) -> Done {
        let Some(name) = mailbox_name(mailbox) else {
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
            return invalid_name();
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
                no_code(wire::code("SERVERBUG"), "Cannot save the subscription.")
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
        let delimiter = Some(QuotedChar::unvalidated(names::DELIMITER));
        // One LIST or LSUB line.
        let line = |out: &mut Vec<u8>, items: Vec<FlagNameAttribute<'static>>, name: &str| {
            let mailbox = mailbox_of(name);
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
                    // Every ancestor: the prefixes before each '/' (ASCII, so split is safe).
                    let parts: Vec<&str> = f.split('/').collect();
                    (1..parts.len())
                        .map(|n| parts[..n].join("/"))
                        .collect::<Vec<_>>()
                })
                .filter(|p| !folders.contains(p))
                .collect();
            implied.sort();
            implied.dedup();
            for parent in implied.iter().filter(|p| names::matches(&full, p)) {
                let items = vec![FlagNameAttribute::Noselect, attribute("HasChildren")];
                line(&mut conn.out, items, parent);
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
            let mut items = vec![attribute(if children {
                "HasChildren"
            } else {
                "HasNoChildren"
            })];
            if let Some(special) = SPECIAL_USE.iter().find(|n| *n == name) {
                items.push(attribute(special));
            }
            line(&mut conn.out, items, name);
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
            Err(_) => return no_such_mailbox(),
        };
        let snapshot = match blocking(|| folder.snapshot()) {
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
                StatusDataItemName::Unseen => StatusDataItem::Unseen(count(
                    msgs.iter()
                        .filter(|m| !m.flags.contains(Flags::SEEN))
                        .count(),
                )),
                _ => return bad("Unsupported STATUS item."),
            });
        }
        let status = Data::Status {
            mailbox: mailbox_of(folder.name()),
            items: parts.into(),
        };
        wire::data(&mut conn.out, status);
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
            Ok(a) => {
                let code = Code::AppendUid {
                    uid_validity: nz(a.uid_validity),
                    uid: nz(a.message.uid),
                };
                ok_code(code, "APPEND completed.")
            }
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
            return read_only();
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
            return read_only();
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
        let gone = match blocking(|| sel.change_flags(&indexes, change)) {
            Ok(gone) => gone,
            Err(e) => return store_error(&e),
        };
        if matches!(response, StoreResponse::Answer) {
            for &i in indexes.iter().filter(|i| !gone.contains(i)) {
                let msg = &sel.messages[i];
                let recent = sel.recent.contains(&msg.uid);
                let flags = wire::flags(msg.flags, recent, &sel.keywords);
                wire::flags_fetch(&mut conn.out, i + 1, msg.uid, flags);
            }
        }
        if gone.is_empty() {
            ok("STORE completed.")
        } else {
            expunge_issued()
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
            return read_only();
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
        let (Some(source), Some(destination)) = (wire::uid_set(&from), wire::uid_set(&to)) else {
            // Nothing was copied.
            return ok(if moving {
                "MOVE completed."
            } else {
                "COPY completed."
            });
        };
        let code = Code::CopyUid {
            uid_validity: nz(validity),
            source,
            destination,
        };
        if !moving {
            return ok_code(code, "COPY completed.");
        }
        let moved = wire::untagged(StatusKind::Ok, Some(code), wire::text("Moved."));
        wire::status(&mut conn.out, moved);
        match blocking(|| sel.expunge(&copied, Some(&mut conn.out))) {
            Ok(_) => ok("MOVE completed."),
            Err(e) => store_error(&e),
        }
    }

    async fn idle<S>(&mut self, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        wire::continuation(&mut conn.out, "idling");
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
                        wire::status(&mut conn.out, wire::bye(IDLE_TEXT));
                        let _ = conn.flush().await;
                        return Done::Close;
                    }
                    if !self.idle_update(conn).await {
                        return Done::Close;
                    }
                }
                _ = shutdown.cancelled() => {
                    wire::status(&mut conn.out, wire::bye(SHUTDOWN_TEXT));
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
        let want_uid = uid || items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
        let want_flags = items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Flags));
        let need = items.iter().map(need_of).max().unwrap_or(Need::Nothing);
        // \Seen set first, for all of them under one lock; their FLAGS go out with them.
        let mut seen_now = std::collections::HashSet::new();
        if sets_seen {
            let unseen: Vec<usize> = indexes
                .iter()
                .copied()
                .filter(|&i| !sel.messages[i].flags.contains(Flags::SEEN))
                .collect();
            if let Ok(gone) = blocking(|| sel.change_flags(&unseen, FlagChange::Add(Flags::SEEN))) {
                seen_now = unseen.into_iter().filter(|i| !gone.contains(i)).collect();
            }
        }
        let sel = &*sel;
        let mut missing = false;
        for i in indexes {
            let seen_changed = seen_now.contains(&i);
            let msg = &sel.messages[i];
            // Content, read once per message as far as the items need it.
            let content = match need {
                Need::Nothing | Need::Stream => None,
                Need::Header | Need::Whole => {
                    let read = blocking(|| -> std::io::Result<Vec<u8>> {
                        let mut file = sel
                            .folder
                            .open(msg)
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
            // The whole message, when it was read whole.
            let whole = content.as_deref().filter(|_| need == Need::Whole);
            // UID first: Thunderbird relies on it.
            let mut out = Vec::with_capacity(items.len() + 1);
            if want_uid {
                out.push(MessageDataItem::Uid(nz(msg.uid)));
            }
            if want_flags || seen_changed {
                let recent = sel.recent.contains(&msg.uid);
                out.push(MessageDataItem::Flags(wire::flags(
                    msg.flags,
                    recent,
                    &sel.keywords,
                )));
            }
            // Whole-message literals too large to hold in memory: streamed after the rest.
            let mut streamed = Vec::new();
            for item in items {
                match item {
                    MessageDataItemName::Uid | MessageDataItemName::Flags => {}
                    MessageDataItemName::InternalDate => {
                        let date = wire::internal_date(msg.internal_date);
                        out.push(MessageDataItem::InternalDate(date));
                    }
                    MessageDataItemName::Rfc822Size => {
                        let size = u32::try_from(msg.vsize).unwrap_or(u32::MAX);
                        out.push(MessageDataItem::Rfc822Size(size));
                    }
                    MessageDataItemName::Envelope => {
                        let envelope = parsed
                            .as_ref()
                            .map_or_else(fetch::empty_envelope, fetch::envelope);
                        out.push(MessageDataItem::Envelope(envelope));
                    }
                    MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
                        let ext = matches!(item, MessageDataItemName::BodyStructure);
                        let structure = parsed
                            .as_ref()
                            .map_or_else(fetch::empty_body, |p| fetch::body_structure(p, ext));
                        out.push(if ext {
                            MessageDataItem::BodyStructure(structure)
                        } else {
                            MessageDataItem::Body(structure)
                        });
                    }
                    MessageDataItemName::Rfc822 => {
                        let want = msg.vsize;
                        if want > SMALL_MESSAGE {
                            streamed.push(("RFC822".to_owned(), 0, want));
                        } else {
                            let data = read_range(sel, msg, whole, 0, want);
                            out.push(MessageDataItem::Rfc822(literal(data)));
                        }
                    }
                    MessageDataItemName::Rfc822Header | MessageDataItemName::Rfc822Text => {
                        let c = content.as_deref().unwrap_or_default();
                        let split = fetch::header_len(c);
                        out.push(if matches!(item, MessageDataItemName::Rfc822Header) {
                            MessageDataItem::Rfc822Header(literal(c[..split].to_vec()))
                        } else {
                            MessageDataItem::Rfc822Text(literal(c[split..].to_vec()))
                        });
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        let origin = partial.map(|(o, _)| o);
                        let (offset, length) = partial
                            .map(|(o, l)| (u64::from(o), Some(u64::from(l.get()))))
                            .unwrap_or((0, None));
                        let data = if section.is_none() {
                            let start = offset.min(msg.vsize);
                            let want =
                                length.map_or(msg.vsize, |l| (start + l).min(msg.vsize)) - start;
                            if want > SMALL_MESSAGE {
                                let origin = origin.map(|o| format!("<{o}>")).unwrap_or_default();
                                streamed.push((format!("BODY[]{origin}"), start, want));
                                continue;
                            }
                            read_range(sel, msg, whole, start, want)
                        } else {
                            let c = content.as_deref().unwrap_or_default();
                            let data = section_data(c, parsed.as_ref(), section.as_ref());
                            let data = data.unwrap_or_default();
                            let from = (offset as usize).min(data.len());
                            let to =
                                length.map_or(data.len(), |l| (from + l as usize).min(data.len()));
                            data[from..to].to_vec()
                        };
                        out.push(MessageDataItem::BodyExt {
                            section: section.as_ref().map(response_section),
                            origin,
                            data: literal(data),
                        });
                    }
                    _ => {}
                }
            }
            // A FETCH response needs an item; for a fetch of only streamed bodies it is the UID.
            if out.is_empty() {
                out.push(MessageDataItem::Uid(nz(msg.uid)));
            }
            let Ok(out) = Vec1::try_from(out) else {
                continue;
            };
            let seq = nz(i as u32 + 1);
            wire::data(&mut conn.out, Data::Fetch { seq, items: out });
            if !streamed.is_empty() {
                // imap-codec needs a literal's bytes in memory, which a message of many
                // megabytes should not be: its item name and literal are written here and the
                // bytes streamed from the file, inside the encoded response (before its `)`).
                if conn.out.ends_with(b")\r\n") {
                    conn.out.truncate(conn.out.len() - 3);
                }
                for (name, start, want) in streamed {
                    let head = format!(" {name} {{{want}}}\r\n");
                    conn.out.extend_from_slice(head.as_bytes());
                    if !stream_body(sel, msg, start, want, conn).await {
                        return Done::Close;
                    }
                }
                conn.out.extend_from_slice(b")\r\n");
            }
            if !conn.flush_if_full().await {
                return Done::Close;
            }
        }
        if missing {
            expunge_issued()
        } else {
            ok("FETCH completed.")
        }
    }
}

/// Message content as a FETCH literal.
fn literal(data: Vec<u8>) -> NString<'static> {
    NString(Some(IString::Literal(wire::literal(data))))
}

/// The section as the response names it: header field names upper-cased.
fn response_section(section: &Section<'_>) -> Section<'static> {
    use imap_codec::imap_types::ToStatic;
    let upper = |names: &Vec1<AString<'_>>| -> Vec1<AString<'static>> {
        let names: Vec<AString<'static>> = names
            .as_ref()
            .iter()
            .map(|n| {
                let name = n.as_ref().to_ascii_uppercase();
                AString::try_from(name).unwrap_or_else(|_| n.to_static())
            })
            .collect();
        // As many names as the request had: at least one.
        Vec1::unvalidated(names)
    };
    match section {
        Section::HeaderFields(part, names) => Section::HeaderFields(part.clone(), upper(names)),
        Section::HeaderFieldsNot(part, names) => {
            Section::HeaderFieldsNot(part.clone(), upper(names))
        }
        other => other.to_static(),
    }
}

/// A LIST attribute such as `\\HasChildren` (given without its backslash).
fn attribute(name: &'static str) -> FlagNameAttribute<'static> {
    FlagNameAttribute::from(Atom::unvalidated(name))
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

/// Bytes `start..start + want` of a message in CRLF form, read now; `whole` is the message
/// when it was read already. A file that changed under us is cut or padded to the length
/// promised by RFC822.SIZE.
fn read_range(
    sel: &Selected,
    msg: &MessageInfo,
    whole: Option<&[u8]>,
    start: u64,
    want: u64,
) -> Vec<u8> {
    let range = |len: usize| {
        let from = (start as usize).min(len);
        (from, (from + want as usize).min(len))
    };
    let mut data = if let Some(all) = whole {
        let (from, to) = range(all.len());
        all[from..to].to_vec()
    } else if msg.size <= SMALL_MESSAGE {
        // Most messages: one blocking call reads the file whole.
        let mut all = blocking(|| -> Result<Vec<u8>, StoreError> {
            let mut file = sel.folder.open(msg)?;
            fetch::read_all(&mut file).map_err(StoreError::Input)
        })
        .unwrap_or_else(|err| {
            tracing::warn!(uid = msg.uid, error = %err, "cannot read a message");
            Vec::new()
        });
        let (from, to) = range(all.len());
        all.truncate(to);
        all.drain(..from);
        all
    } else {
        // A part of a large message: only as far into the file as needed.
        let mut reader = RangeReader::new(open_message(sel, msg), start, want);
        let mut data = Vec::with_capacity(want as usize);
        blocking(|| while reader.next_into(&mut data) {});
        data
    };
    // A file that shrank under us is padded to the promised length.
    data.resize(want as usize, b' ');
    data
}

fn open_message(sel: &Selected, msg: &MessageInfo) -> Option<std::fs::File> {
    match blocking(|| sel.folder.open(msg)) {
        Ok(f) => Some(f),
        Err(err) => {
            tracing::warn!(uid = msg.uid, error = %err, "cannot open a message");
            None
        }
    }
}

/// Streams bytes `start..start + want` of a large message into the connection, read from its
/// file in chunks with bare LFs made CRLF: never held whole in memory. Its literal's `{n}`
/// is written already.
async fn stream_body<S>(
    sel: &Selected,
    msg: &MessageInfo,
    start: u64,
    want: u64,
    conn: &mut Conn<S>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = RangeReader::new(open_message(sel, msg), start, want);
    while blocking(|| reader.next_into(&mut conn.out)) {
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
