//! One POP3 session: the AUTHORIZATION → TRANSACTION → UPDATE state machine of RFC 1939, with
//! STLS (RFC 2595), CAPA (RFC 2449) and SASL AUTH (RFC 5034).
//!
//! The session is generic over its stream, so STLS swaps a TCP stream for a TLS one and the
//! same loop runs again.

use std::sync::Arc;

use tokio::net::TcpStream;

use inetkit_auth::sasl::{self, Credentials, LineChallenger, Sasl};
use inetkit_auth::AuthError;
use inetkit_runtime::conn::{Farewell, LineConn};
use inetkit_runtime::lines::DotStuffer;
use inetkit_runtime::log::End;
use inetkit_runtime::proxy::{Backend, Proxy, Target};
use inetkit_runtime::server::Peer;
use inetkit_runtime::session::{serve_lines, Flow, LineProtocol, SessionStream};

use crate::command::{parse, Command, ParseError};
use crate::maildrop::{octets, read_chunk, Extent, ExtentFilter, Maildrop, OpenError};
use crate::Pop3;

/// Output is sent once this much is queued (or when the client has nothing more pipelined).
const FLUSH_AT: usize = 64 * 1024;
/// Authentication failures on one connection before it is closed.
const MAX_FAILURES: u32 = 3;

enum State {
    Authorization { user: Option<String>, failures: u32 },
    Transaction { user: String, maildrop: Maildrop },
}

pub(crate) struct Session {
    pop3: Arc<Pop3>,
    state: State,
    /// Proxy mode: the backend that accepted the login, until the relay takes it.
    backend: Option<Backend>,
}

/// Serves one connection; `implicit_tls` for the pop3s port.
pub(crate) async fn serve(pop3: Arc<Pop3>, stream: TcpStream, peer: Peer, implicit_tls: bool) {
    let tls = pop3.tls.clone();
    serve_lines(Session::new(pop3), stream, peer, tls, implicit_tls).await;
}

type Conn<S> = LineConn<S>;

impl LineProtocol for Session {
    /// RFC 2449 allows 255 octets; SASL responses with long passwords need more.
    const MAX_LINE: usize = 4096;
    const FAREWELL: Farewell = Farewell {
        idle: "-ERR Disconnected for inactivity.",
        shutdown: "-ERR [SYS/TEMP] Server shutting down.",
        login: "-ERR Disconnected: no login in the time allowed.",
    };

    fn greeting(&self) -> String {
        "+OK inetkit POP3 ready.".to_owned()
    }

    async fn handle_line<S: SessionStream>(&mut self, line: &[u8], conn: &mut Conn<S>) -> Flow {
        match parse(line) {
            Ok(command) => self.handle(command, conn).await,
            Err(ParseError::Unknown(_)) => {
                conn.reply("-ERR Unknown command.");
                Flow::Continue
            }
            Err(ParseError::Syntax(hint)) => {
                conn.reply(&format!("-ERR Syntax error: {hint}."));
                Flow::Continue
            }
        }
    }

    fn line_too_long<S: SessionStream>(&mut self, conn: &mut Conn<S>) -> Flow {
        conn.reply("-ERR Command line too long.");
        Flow::Continue
    }

    fn take_backend(&mut self) -> Option<Backend> {
        self.backend.take()
    }
}

impl Session {
    pub(crate) fn new(pop3: Arc<Pop3>) -> Session {
        Session {
            pop3,
            state: State::Authorization {
                user: None,
                failures: 0,
            },
            backend: None,
        }
    }

    async fn handle<S: SessionStream>(&mut self, command: Command, conn: &mut Conn<S>) -> Flow {
        match command {
            Command::Capa => {
                self.capabilities(conn);
                Flow::Continue
            }
            Command::Quit => self.quit(conn).await,
            _ => match &mut self.state {
                State::Authorization { .. } => self.authorization(command, conn).await,
                State::Transaction { .. } => self.transaction(command, conn).await,
            },
        }
    }

    fn capabilities<S: SessionStream>(&self, conn: &mut Conn<S>) {
        conn.reply("+OK Capability list follows");
        for capability in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"] {
            conn.reply(capability);
        }
        if matches!(self.state, State::Authorization { .. }) {
            if self
                .pop3
                .auth
                .plaintext_allowed(conn.peer.addr.ip(), conn.is_tls())
            {
                conn.reply("USER");
                conn.reply("SASL PLAIN LOGIN");
            }
            if !conn.is_tls() && self.pop3.tls.is_some() {
                conn.reply("STLS");
            }
        }
        conn.reply("IMPLEMENTATION inetkit");
        conn.reply(".");
    }

    async fn authorization<S: SessionStream>(
        &mut self,
        command: Command,
        conn: &mut Conn<S>,
    ) -> Flow {
        let plaintext_allowed = self
            .pop3
            .auth
            .plaintext_allowed(conn.peer.addr.ip(), conn.is_tls());
        match command {
            Command::Stls => {
                if conn.is_tls() {
                    conn.reply("-ERR TLS is already active.");
                } else if self.pop3.tls.is_none() {
                    conn.reply("-ERR TLS is not configured.");
                } else {
                    conn.reply("+OK Begin TLS negotiation now.");
                    return Flow::StartTls;
                }
                Flow::Continue
            }
            Command::User(name) => {
                if !plaintext_allowed {
                    conn.reply(PLAINTEXT_REFUSED);
                } else if let State::Authorization { user, .. } = &mut self.state {
                    *user = Some(name);
                    conn.reply("+OK");
                }
                Flow::Continue
            }
            Command::Pass(password) => {
                let name = match &mut self.state {
                    State::Authorization { user, .. } => user.take(),
                    State::Transaction { .. } => None,
                };
                match name {
                    None => {
                        conn.reply("-ERR No user name given: send USER first.");
                        Flow::Continue
                    }
                    Some(_) if !plaintext_allowed => {
                        conn.reply(PLAINTEXT_REFUSED);
                        Flow::Continue
                    }
                    Some(name) => {
                        let credentials = Credentials {
                            name,
                            password,
                            authzid: None,
                        };
                        self.login(credentials, conn).await
                    }
                }
            }
            Command::Auth {
                mechanism: None, ..
            } => {
                conn.reply("+OK Mechanisms follow");
                conn.reply("PLAIN");
                conn.reply("LOGIN");
                conn.reply(".");
                Flow::Continue
            }
            Command::Auth { .. } if !plaintext_allowed => {
                conn.reply(PLAINTEXT_REFUSED);
                Flow::Continue
            }
            Command::Auth {
                mechanism: Some(mechanism),
                initial,
            } => self.auth(&mechanism, initial, conn).await,
            _ => {
                conn.reply("-ERR Not logged in.");
                Flow::Continue
            }
        }
    }

    /// AUTH (RFC 5034) with PLAIN or LOGIN; credentials then go the same way as USER/PASS.
    async fn auth<S: SessionStream>(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
        conn: &mut Conn<S>,
    ) -> Flow {
        // "=" is an empty initial response (RFC 5034 §4). A master user ([auth] master_users)
        // may name another user as authzid.
        match sasl::exchange_for_master(
            &mut LineChallenger { conn, prefix: "+ " },
            mechanism,
            initial,
        )
        .await
        {
            Sasl::Credentials(c) => self.login(c, conn).await,
            Sasl::Cancelled => {
                conn.reply("-ERR Authentication cancelled.");
                Flow::Continue
            }
            Sasl::Malformed => {
                conn.reply("-ERR [AUTH] Invalid base64 data in the response.");
                Flow::Continue
            }
            Sasl::Unsupported => {
                conn.reply("-ERR Unsupported authentication mechanism.");
                Flow::Continue
            }
            Sasl::Gone => Flow::Close,
        }
    }

    async fn login<S: SessionStream>(
        &mut self,
        credentials: Credentials,
        conn: &mut Conn<S>,
    ) -> Flow {
        let ip = conn.peer.addr.ip();
        let user = match self.pop3.auth.login_credentials(ip, &credentials).await {
            Ok(user) => user,
            Err(AuthError::Throttled) => {
                conn.reply("-ERR [SYS/TEMP] Too many failed logins from your address; try later.");
                conn.peer.log.ended(End::Closed("login throttled"));
                return Flow::Close;
            }
            Err(AuthError::Failed) => {
                conn.reply("-ERR [AUTH] Authentication failed.");
                if let State::Authorization { failures, .. } = &mut self.state {
                    *failures += 1;
                    if *failures >= MAX_FAILURES {
                        conn.peer.log.ended(End::Closed("too many failed logins"));
                        return Flow::Close;
                    }
                }
                return Flow::Continue;
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                conn.reply("-ERR [SYS/TEMP] Authentication is temporarily unavailable.");
                return Flow::Continue;
            }
        };
        if let Some(proxy) = &self.pop3.proxy {
            match Target::from_fields(|key| user.extra_field(key), crate::proxy::PORTS) {
                Ok(Some(target)) => {
                    let proxy = proxy.clone();
                    return self
                        .proxied(&proxy, &user.name, &target, &credentials.password, conn)
                        .await;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(user = %user.name, "cannot proxy: {err}");
                    conn.reply(BACKEND_UNAVAILABLE);
                    return Flow::Continue;
                }
            }
        }
        let pop3 = self.pop3.clone();
        let user_name = user.name.clone();
        let opened =
            tokio::task::spawn_blocking(move || Maildrop::open(&pop3.store, &user_name)).await;
        match opened {
            Ok(Ok(maildrop)) => {
                conn.peer.logged_in(&user.name);
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
        Flow::Continue
    }

    /// Proxy mode: logs in on the user's backend, then the session is relayed there. No
    /// maildrop is opened here. A backend that cannot be reached or refuses is a temporary
    /// failure: the client keeps its password and tries again later.
    async fn proxied<S: SessionStream>(
        &mut self,
        proxy: &Proxy,
        user: &str,
        target: &Target,
        password: &[u8],
        conn: &mut Conn<S>,
    ) -> Flow {
        let login = proxy.login_for(target, user, password);
        match crate::proxy::login(proxy, target, &login).await {
            Ok(backend) => {
                conn.peer.logged_in(user);
                tracing::info!(backend = %target, backend_user = %login.user(), master = !login.authzid.is_empty(), "logged in, proxied");
                conn.reply("+OK Logged in (proxied).");
                self.backend = Some(backend);
                Flow::Relay
            }
            Err(err) => {
                tracing::error!(user, backend = %target, "proxy login failed: {err}");
                conn.reply(BACKEND_UNAVAILABLE);
                Flow::Continue
            }
        }
    }

    async fn transaction<S: SessionStream>(
        &mut self,
        command: Command,
        conn: &mut Conn<S>,
    ) -> Flow {
        let State::Transaction { maildrop, .. } = &mut self.state else {
            return Flow::Continue;
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
                    conn.reply(&format!("{n} {}", octets(info)));
                }
                conn.reply(".");
            }
            Command::List(Some(n)) => match maildrop.get(n) {
                Some(info) => conn.reply(&format!("+OK {n} {}", octets(info))),
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
        Flow::Continue
    }

    /// QUIT: in TRANSACTION, the UPDATE state removes what was marked deleted. It runs to the
    /// end even if the client is gone by then.
    async fn quit<S: SessionStream>(&mut self, conn: &mut Conn<S>) -> Flow {
        conn.peer.log.ended(End::Quit);
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
        Flow::Close
    }
}

/// RFC 3206's SYS/TEMP: try again later, the password is not the problem.
const BACKEND_UNAVAILABLE: &str =
    "-ERR [SYS/TEMP] The mail server is unavailable; try again later.";
const NO_SUCH_MESSAGE: &str = "-ERR There is no such message.";
const PLAINTEXT_REFUSED: &str =
    "-ERR [AUTH] Plaintext authentication is not allowed without TLS: use STLS first.";

/// RETR and TOP: a status line, then the message streamed with CRLF line ends and
/// byte-stuffing, never held whole in memory.
async fn send_message<S: SessionStream>(
    maildrop: &mut Maildrop,
    n: u32,
    extent: Extent,
    conn: &mut Conn<S>,
) -> Flow {
    let Some(size) = maildrop.get(n).map(octets) else {
        conn.reply(NO_SUCH_MESSAGE);
        return Flow::Continue;
    };
    let mut file = match maildrop.open_message(n) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!(message = n, error = %err, "cannot open message");
            conn.reply("-ERR [SYS/TEMP] The message cannot be read now.");
            return Flow::Continue;
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
                return Flow::Close;
            }
        };
        let take = filter.take(&buf[..read]);
        stuffer.push(&buf[..take], &mut conn.out);
        if conn.out.len() >= FLUSH_AT && conn.flush().await.is_err() {
            return Flow::Close;
        }
        if read == 0 || take < read {
            break;
        }
    }
    stuffer.finish(&mut conn.out);
    Flow::Continue
}

#[cfg(test)]
mod tests;
