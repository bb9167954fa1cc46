//! One POP3 session: the AUTHORIZATION → TRANSACTION → UPDATE state machine of RFC 1939, with
//! STLS (RFC 2595), CAPA (RFC 2449) and SASL AUTH (RFC 5034).
//!
//! The session is generic over its stream, so STLS swaps a TCP stream for a TLS one and the
//! same loop runs again.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use inetkit_auth::sasl::{self, LineChallenger, Sasl};
use inetkit_auth::AuthError;
use inetkit_runtime::conn::{serve_session, Ending, Farewell, LineConn, TlsSession};
use inetkit_runtime::lines::{DotStuffer, Line};
use inetkit_runtime::server::Peer;
use inetkit_runtime::tls::TlsContext;

use crate::command::{parse, Command, ParseError};
use crate::maildrop::{read_chunk, Extent, ExtentFilter, Maildrop, OpenError};
use crate::Pop3;

/// Longest command line accepted. RFC 2449 allows 255 octets; SASL responses with long
/// passwords need more.
const MAX_LINE: usize = 4096;
/// Output is sent once this much is queued (or when the client has nothing more pipelined).
const FLUSH_AT: usize = 64 * 1024;
/// Authentication failures on one connection before it is closed.
const MAX_FAILURES: u32 = 3;

enum State {
    Authorization { user: Option<String>, failures: u32 },
    Transaction { user: String, maildrop: Maildrop },
}

/// What a command asks of the loop.
enum Next {
    Continue,
    Close,
    StartTls,
}

pub(crate) struct Session {
    pop3: Arc<Pop3>,
    peer: Peer,
    state: State,
    tls: bool,
}

/// Serves one connection; `implicit_tls` for the pop3s port.
pub(crate) async fn serve(pop3: Arc<Pop3>, stream: TcpStream, peer: Peer, implicit_tls: bool) {
    let mut session = Session {
        pop3,
        peer,
        state: State::Authorization {
            user: None,
            failures: 0,
        },
        tls: false,
    };
    serve_session(&mut session, stream, implicit_tls).await;
}

type Conn<S> = LineConn<S>;

const FAREWELL: Farewell = Farewell {
    idle: "-ERR Disconnected for inactivity.",
    shutdown: "-ERR [SYS/TEMP] Server shutting down.",
};

impl TlsSession for Session {
    fn tls_context(&self) -> Option<TlsContext> {
        self.pop3.tls.clone()
    }

    fn tls_started(&mut self) {
        self.tls = true;
    }

    async fn run<S>(&mut self, stream: S, greet: bool) -> Ending<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut conn = LineConn::new(stream, self.peer.clone(), MAX_LINE, FAREWELL);
        if greet {
            conn.reply("+OK inetkit POP3 ready.");
        }
        let mut line = Vec::with_capacity(256);
        loop {
            let next = match conn.next_line(&mut line).await {
                None => Next::Close,
                Some(Line::TooLong) => {
                    conn.reply("-ERR Command line too long.");
                    Next::Continue
                }
                Some(_) => match parse(&line) {
                    Ok(command) => self.handle(command, &mut conn).await,
                    Err(ParseError::Unknown(_)) => {
                        conn.reply("-ERR Unknown command.");
                        Next::Continue
                    }
                    Err(ParseError::Syntax(hint)) => {
                        conn.reply(&format!("-ERR Syntax error: {hint}."));
                        Next::Continue
                    }
                },
            };
            match next {
                Next::Continue => {}
                Next::Close => return conn.close().await,
                // Anything pipelined after the command came in the clear: dropped.
                Next::StartTls => return conn.start_tls().await,
            }
        }
    }
}

impl Session {
    async fn handle<S>(&mut self, command: Command, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match command {
            Command::Capa => {
                self.capabilities(conn);
                Next::Continue
            }
            Command::Quit => self.quit(conn).await,
            _ => match &mut self.state {
                State::Authorization { .. } => self.authorization(command, conn).await,
                State::Transaction { .. } => self.transaction(command, conn).await,
            },
        }
    }

    fn plaintext_allowed(&self) -> bool {
        self.pop3
            .auth_config
            .plaintext_allowed(self.peer.addr.ip(), self.tls)
    }

    fn capabilities<S>(&self, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        conn.reply("+OK Capability list follows");
        for capability in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"] {
            conn.reply(capability);
        }
        if matches!(self.state, State::Authorization { .. }) {
            if self.plaintext_allowed() {
                conn.reply("USER");
                conn.reply("SASL PLAIN LOGIN");
            }
            if !self.tls && self.pop3.tls.is_some() {
                conn.reply("STLS");
            }
        }
        conn.reply("IMPLEMENTATION inetkit");
        conn.reply(".");
    }

    async fn authorization<S>(&mut self, command: Command, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match command {
            Command::Stls => {
                if self.tls {
                    conn.reply("-ERR TLS is already active.");
                } else if self.pop3.tls.is_none() {
                    conn.reply("-ERR TLS is not configured.");
                } else {
                    conn.reply("+OK Begin TLS negotiation now.");
                    return Next::StartTls;
                }
                Next::Continue
            }
            Command::User(name) => {
                if !self.plaintext_allowed() {
                    conn.reply(PLAINTEXT_REFUSED);
                } else if let State::Authorization { user, .. } = &mut self.state {
                    *user = Some(name);
                    conn.reply("+OK");
                }
                Next::Continue
            }
            Command::Pass(password) => {
                let name = match &mut self.state {
                    State::Authorization { user, .. } => user.take(),
                    State::Transaction { .. } => None,
                };
                match name {
                    None => {
                        conn.reply("-ERR No user name given: send USER first.");
                        Next::Continue
                    }
                    Some(_) if !self.plaintext_allowed() => {
                        conn.reply(PLAINTEXT_REFUSED);
                        Next::Continue
                    }
                    Some(name) => self.login(&name, &password, conn).await,
                }
            }
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial, conn).await,
            _ => {
                conn.reply("-ERR Not logged in.");
                Next::Continue
            }
        }
    }

    /// AUTH (RFC 5034) with PLAIN or LOGIN; credentials then go the same way as USER/PASS.
    async fn auth<S>(
        &mut self,
        mechanism: Option<String>,
        initial: Option<String>,
        conn: &mut Conn<S>,
    ) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(mechanism) = mechanism else {
            conn.reply("+OK Mechanisms follow");
            conn.reply("PLAIN");
            conn.reply("LOGIN");
            conn.reply(".");
            return Next::Continue;
        };
        if !self.plaintext_allowed() {
            conn.reply(PLAINTEXT_REFUSED);
            return Next::Continue;
        }
        // "=" is an empty initial response (RFC 5034 §4).
        match sasl::exchange(
            &mut LineChallenger { conn, prefix: "+ " },
            &mechanism,
            initial,
        )
        .await
        {
            Sasl::Credentials(c) => self.login(&c.name, &c.password, conn).await,
            Sasl::Cancelled => {
                conn.reply("-ERR Authentication cancelled.");
                Next::Continue
            }
            Sasl::Malformed => {
                conn.reply("-ERR [AUTH] Invalid base64 data in the response.");
                Next::Continue
            }
            Sasl::Unsupported => {
                conn.reply("-ERR Unsupported authentication mechanism.");
                Next::Continue
            }
            Sasl::Gone => Next::Close,
        }
    }

    async fn login<S>(&mut self, name: &str, password: &[u8], conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ip = self.peer.addr.ip();
        let user = match self.pop3.auth.login(ip, name, password).await {
            Ok(user) => user,
            Err(AuthError::Throttled) => {
                conn.reply("-ERR [SYS/TEMP] Too many failed logins from your address; try later.");
                return Next::Close;
            }
            Err(AuthError::Failed) => {
                conn.reply("-ERR [AUTH] Authentication failed.");
                if let State::Authorization { failures, .. } = &mut self.state {
                    *failures += 1;
                    if *failures >= MAX_FAILURES {
                        return Next::Close;
                    }
                }
                return Next::Continue;
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                conn.reply("-ERR [SYS/TEMP] Authentication is temporarily unavailable.");
                return Next::Continue;
            }
        };
        let pop3 = self.pop3.clone();
        let user_name = user.name.clone();
        let opened =
            tokio::task::spawn_blocking(move || Maildrop::open(&pop3.store, &user_name)).await;
        match opened {
            Ok(Ok(maildrop)) => {
                tracing::Span::current().record("user", user.name.as_str());
                let (count, size) = maildrop.stat();
                tracing::info!(messages = count, "logged in");
                conn.reply(&format!("+OK Logged in: {count} messages ({size} octets)."));
                self.state = State::Transaction {
                    user: user.name,
                    maildrop,
                };
            }
            Ok(Err(OpenError::InUse)) => {
                conn.reply("-ERR [IN-USE] Mailbox is locked by another POP3 session.");
            }
            Ok(Err(err)) => {
                tracing::error!(user = %user.name, error = %err, "cannot open the maildrop");
                conn.reply("-ERR [SYS/TEMP] Cannot open the mailbox; try again later.");
            }
            Err(err) => {
                tracing::error!(error = %err, "maildrop task failed");
                conn.reply("-ERR [SYS/TEMP] Internal error.");
            }
        }
        Next::Continue
    }

    async fn transaction<S>(&mut self, command: Command, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let State::Transaction { maildrop, .. } = &mut self.state else {
            return Next::Continue;
        };
        match command {
            Command::Stat => {
                let (count, size) = maildrop.stat();
                conn.reply(&format!("+OK {count} {size}"));
            }
            Command::List(None) => {
                let (count, size) = maildrop.stat();
                conn.reply(&format!("+OK {count} messages ({size} octets)"));
                for (n, info) in maildrop.live() {
                    conn.reply(&format!("{n} {}", info.vsize));
                }
                conn.reply(".");
            }
            Command::List(Some(n)) => match maildrop.get(n) {
                Some(info) => conn.reply(&format!("+OK {n} {}", info.vsize)),
                None => conn.reply(NO_SUCH_MESSAGE),
            },
            Command::Uidl(None) => {
                conn.reply("+OK");
                for (n, info) in maildrop.live() {
                    let uidl = maildrop.uidl(info);
                    conn.reply(&format!("{n} {uidl}"));
                }
                conn.reply(".");
            }
            Command::Uidl(Some(n)) => match maildrop.get(n) {
                Some(info) => {
                    let uidl = maildrop.uidl(info);
                    conn.reply(&format!("+OK {n} {uidl}"));
                }
                None => conn.reply(NO_SUCH_MESSAGE),
            },
            Command::Retr(n) => return send_message(maildrop, n, Extent::Whole, conn).await,
            Command::Top(n, lines) => {
                return send_message(maildrop, n, Extent::Top(lines), conn).await
            }
            Command::Dele(n) => {
                if maildrop.delete(n) {
                    conn.reply("+OK Marked to be deleted.");
                } else {
                    conn.reply(NO_SUCH_MESSAGE);
                }
            }
            Command::Rset => {
                maildrop.reset();
                let (count, size) = maildrop.stat();
                conn.reply(&format!("+OK {count} messages ({size} octets)."));
            }
            Command::Noop => conn.reply("+OK"),
            Command::Stls => conn.reply("-ERR STLS is only allowed before login."),
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } => {
                conn.reply("-ERR Already logged in.")
            }
            Command::Capa | Command::Quit => {}
        }
        Next::Continue
    }

    /// QUIT: in TRANSACTION, the UPDATE state removes what was marked deleted. It runs to the
    /// end even if the client is gone by then.
    async fn quit<S>(&mut self, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let state = std::mem::replace(
            &mut self.state,
            State::Authorization {
                user: None,
                failures: 0,
            },
        );
        match state {
            State::Authorization { .. } => conn.reply("+OK Bye."),
            State::Transaction { user, maildrop } => {
                match tokio::task::spawn_blocking(move || maildrop.commit()).await {
                    Ok(Ok(removed)) => {
                        tracing::info!(%user, removed, "logged out");
                        conn.reply(&format!("+OK Logging out, {removed} messages deleted."));
                    }
                    Ok(Err(err)) => {
                        tracing::error!(%user, error = %err, "update failed");
                        conn.reply("-ERR [SYS/TEMP] Some deleted messages could not be removed.");
                    }
                    Err(err) => {
                        tracing::error!(%user, error = %err, "update task failed");
                        conn.reply("-ERR [SYS/TEMP] Internal error.");
                    }
                }
            }
        }
        Next::Close
    }
}

const NO_SUCH_MESSAGE: &str = "-ERR There is no such message.";
const PLAINTEXT_REFUSED: &str =
    "-ERR [AUTH] Plaintext authentication is not allowed without TLS: use STLS first.";

/// RETR and TOP: a status line, then the message streamed with CRLF line ends and
/// byte-stuffing, never held whole in memory.
async fn send_message<S>(
    maildrop: &mut Maildrop,
    n: u32,
    extent: Extent,
    conn: &mut Conn<S>,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(size) = maildrop.get(n).map(|info| info.vsize) else {
        conn.reply(NO_SUCH_MESSAGE);
        return Next::Continue;
    };
    let mut file = match maildrop.open_message(n) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!(message = n, error = %err, "cannot open message");
            conn.reply("-ERR [SYS/TEMP] The message cannot be read now.");
            return Next::Continue;
        }
    };
    match extent {
        Extent::Whole => conn.reply(&format!("+OK {size} octets")),
        Extent::Top(_) => conn.reply("+OK"),
    }
    let mut filter = ExtentFilter::new(extent);
    let mut stuffer = DotStuffer::new();
    // Sized to the message, up to FLUSH_AT: most messages are far smaller, and a fresh
    // 64 KiB buffer per RETR costs a 64 KiB memset each time.
    let mut buf = vec![0u8; usize::try_from(size).map_or(FLUSH_AT, |s| s.clamp(512, FLUSH_AT))];
    loop {
        // Local message files: a short blocking read, as the page cache usually answers it.
        let read = match read_chunk(&mut file, &mut buf) {
            Ok(read) => read,
            Err(err) => {
                // The status line has gone out: the only honest signal left is to close.
                tracing::error!(message = n, error = %err, "read failed mid-message");
                return Next::Close;
            }
        };
        let take = filter.take(&buf[..read]);
        stuffer.push(&buf[..take], &mut conn.out);
        if conn.out.len() >= FLUSH_AT && conn.flush().await.is_err() {
            return Next::Close;
        }
        if read == 0 || take < read {
            break;
        }
    }
    stuffer.finish(&mut conn.out);
    Next::Continue
}
