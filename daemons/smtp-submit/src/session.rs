//! One SMTP submission session (RFC 5321, RFC 6409): greeting → EHLO → (STARTTLS) → AUTH →
//! MAIL → RCPT… → DATA, with PIPELINING (RFC 2920) and enhanced status codes (RFC 3463) on
//! every reply.
//!
//! The session is generic over its stream, so STARTTLS swaps a TCP stream for a TLS one and
//! the same loop runs again, with everything learnt before it forgotten (RFC 3207 §4.2).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use inetkit_auth::address::parse_address;
use inetkit_auth::sasl::{self, LineChallenger, Sasl};
use inetkit_auth::AuthError;
use inetkit_runtime::conn::{Farewell, LineConn};
use inetkit_runtime::log::End;
use inetkit_runtime::server::Peer;
use inetkit_runtime::session::{serve_lines, Flow, LineProtocol, SessionStream};

use crate::accepted::log_queued;
use crate::command::{parse, Command, MailFrom, ParseError};
use crate::data::{discard_input, read_data_line, DataLine};
use crate::from_header::{addresses, FromError};
use crate::message::{received_header, HeaderFilter};
use crate::recipients::{Refusal, Target};
use crate::Submit;
use inetkit_spool::{now, Envelope, Recipient};

/// Longest line inside DATA (RFC 5322 says 998; we are lenient, within a bound).
const MAX_DATA_LINE: usize = 1024 * 1024;
/// How long input is still read (and thrown away) after a refusal that closes the session.
const LINGER: Duration = Duration::from_secs(5);
/// Bad commands before the connection is closed.
const MAX_ERRORS: u32 = 20;
/// Authentication failures before the connection is closed.
const MAX_AUTH_FAILURES: u32 = 3;

/// A mail transaction in progress.
enum Transaction {
    Idle,
    Mail {
        from: String,
        recipients: Vec<Recipient>,
        /// RCPT commands accepted: what `max_recipients` bounds (an alias of many users is
        /// one, as Postfix counts; its expansion has a bound of its own).
        accepted: usize,
    },
}

pub(crate) struct Session {
    submit: Arc<Submit>,
    helo: Option<String>,
    esmtp: bool,
    user: Option<String>,
    transaction: Transaction,
    errors: u32,
    auth_failures: u32,
}

/// Serves one connection; `implicit_tls` for the submissions port (465).
pub(crate) async fn serve(submit: Arc<Submit>, stream: TcpStream, peer: Peer, implicit_tls: bool) {
    let tls = submit.tls.clone();
    serve_lines(Session::new(submit), stream, peer, tls, implicit_tls).await;
}

type Conn<S> = LineConn<S>;

/// One line of message data: longer lines are allowed than for commands, lines end only at
/// CRLF, and a shutdown does not cut a message short. `None`: the client is gone or idled out.
async fn data_line<S>(conn: &mut Conn<S>, buf: &mut Vec<u8>) -> Option<DataLine>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(
        conn.peer.idle_timeout,
        read_data_line(&mut conn.reader, buf, MAX_DATA_LINE),
    )
    .await
    {
        Ok(Ok(DataLine::Eof)) | Ok(Err(_)) | Err(_) => None,
        Ok(Ok(line)) => Some(line),
    }
}

/// Sends the reply that ends a session in the middle of DATA, then reads what the client
/// was still sending so the reply is not lost to a reset (bounded in time and bytes).
async fn refuse_and_close<S>(conn: &mut Conn<S>, reply: &str, max_bytes: u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.reply(reply);
    if conn.flush().await.is_err() {
        return;
    }
    // Our end of the stream is closed first, so the client sees the end after the reply.
    let _ = conn.reader.get_mut().shutdown().await;
    let shutdown = conn.peer.shutdown.clone();
    tokio::select! {
        () = discard_input(&mut conn.reader, LINGER, max_bytes) => {}
        () = shutdown.cancelled() => {}
    }
}

impl LineProtocol for Session {
    /// RFC 5321 §4.5.3.1.4 says 512; AUTH responses need more.
    const MAX_LINE: usize = 4096;
    const FAREWELL: Farewell = Farewell {
        idle: "421 4.4.2 Idle too long; closing the connection.",
        shutdown: "421 4.3.2 Server shutting down; try again later.",
        login: "421 4.4.2 No login in the time allowed; closing the connection.",
    };

    fn greeting(&self) -> String {
        format!(
            "220 {} ESMTP inetkit submission ready",
            self.submit.hostname
        )
    }

    async fn handle_line<S: SessionStream>(&mut self, line: &[u8], conn: &mut Conn<S>) -> Flow {
        match parse(line) {
            Ok(command) => self.handle(command, conn).await,
            Err(ParseError::Unknown) => self.error(conn, "500 5.5.2 Command not recognized."),
            Err(ParseError::Syntax(hint)) => {
                self.error(conn, &format!("501 5.5.4 Syntax error: {hint}."))
            }
            Err(ParseError::Parameter(param)) => {
                let param: String = param
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect();
                self.error(conn, &format!("555 5.5.4 Unsupported parameter {param}."))
            }
        }
    }

    fn line_too_long<S: SessionStream>(&mut self, conn: &mut Conn<S>) -> Flow {
        self.error(conn, "500 5.5.6 Line too long.")
    }
}

impl Session {
    pub(crate) fn new(submit: Arc<Submit>) -> Session {
        Session {
            submit,
            helo: None,
            esmtp: false,
            user: None,
            transaction: Transaction::Idle,
            errors: 0,
            auth_failures: 0,
        }
    }

    fn error<S>(&mut self, conn: &mut Conn<S>, reply: &str) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            conn.peer.log.ended(End::Closed("too many errors"));
            conn.reply("421 4.7.0 Too many errors; closing the connection.");
            return Flow::Close;
        }
        conn.reply(reply);
        Flow::Continue
    }

    async fn handle<S>(&mut self, command: Command, conn: &mut Conn<S>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match command {
            Command::Ehlo(domain) => {
                self.transaction = Transaction::Idle;
                self.esmtp = true;
                conn.reply(&format!(
                    "250-{} greets {}",
                    self.submit.hostname,
                    printable(&domain)
                ));
                self.helo = Some(domain);
                let mut extensions = vec![
                    "PIPELINING".to_owned(),
                    format!("SIZE {}", self.submit.max_size),
                    "8BITMIME".to_owned(),
                    "ENHANCEDSTATUSCODES".to_owned(),
                    "SMTPUTF8".to_owned(),
                ];
                let ip = conn.peer.addr.ip();
                if self.user.is_none() && self.submit.auth.plaintext_allowed(ip, conn.is_tls()) {
                    extensions.push("AUTH PLAIN LOGIN".to_owned());
                }
                if !conn.is_tls() && self.submit.tls.is_some() {
                    extensions.push("STARTTLS".to_owned());
                }
                extensions.push("HELP".to_owned());
                let last = extensions.len() - 1;
                for (i, extension) in extensions.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    conn.reply(&format!("250{sep}{extension}"));
                }
            }
            Command::Helo(domain) => {
                self.transaction = Transaction::Idle;
                self.esmtp = false;
                conn.reply(&format!("250 {}", self.submit.hostname));
                self.helo = Some(domain);
            }
            Command::StartTls => {
                if conn.is_tls() {
                    conn.reply("503 5.5.1 TLS is already active.");
                } else if self.submit.tls.is_none() {
                    conn.reply("454 4.7.0 TLS is not available.");
                } else {
                    conn.reply("220 2.0.0 Ready to start TLS.");
                    // RFC 3207 §4.2: the client starts over with EHLO, and a login made in
                    // the clear (loopback) does not carry over into the TLS session.
                    self.helo = None;
                    self.user = None;
                    self.transaction = Transaction::Idle;
                    return Flow::StartTls;
                }
            }
            Command::Auth { mechanism, initial } => {
                return self.auth(&mechanism, initial, conn).await
            }
            Command::Mail(mail) => self.mail(mail, conn),
            Command::Rcpt(address) => self.rcpt(&address, conn),
            Command::Data => return self.data(conn).await,
            Command::Rset => {
                self.transaction = Transaction::Idle;
                conn.reply("250 2.0.0 Reset.");
            }
            Command::Noop => conn.reply("250 2.0.0 OK."),
            Command::Vrfy => conn
                .reply("252 2.5.0 Cannot verify the user; send mail and delivery will be tried."),
            // As Postfix with disable_vrfy_command: lists are not shown to anybody.
            Command::Expn => conn.reply("502 5.5.1 EXPN is not available."),
            Command::Help => conn.reply("214 2.0.0 See RFC 5321 and RFC 6409."),
            Command::Quit => {
                conn.peer.log.ended(End::Quit);
                conn.reply("221 2.0.0 Bye.");
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn auth<S>(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
        conn: &mut Conn<S>,
    ) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.helo.is_none() || !self.esmtp {
            conn.reply("503 5.5.1 Send EHLO first.");
            return Flow::Continue;
        }
        if self.user.is_some() {
            conn.reply("503 5.5.1 Already authenticated.");
            return Flow::Continue;
        }
        if !matches!(self.transaction, Transaction::Idle) {
            conn.reply("503 5.5.1 AUTH is not allowed during a mail transaction.");
            return Flow::Continue;
        }
        if !self
            .submit
            .auth
            .plaintext_allowed(conn.peer.addr.ip(), conn.is_tls())
        {
            conn.reply("538 5.7.11 Encryption required: use STARTTLS first.");
            return Flow::Continue;
        }
        // "=" is an empty initial response (RFC 4954 §4).
        let (name, password) = match sasl::exchange(
            &mut LineChallenger {
                conn,
                prefix: "334 ",
            },
            mechanism,
            initial,
        )
        .await
        {
            Sasl::Credentials(c) => (c.name, c.password),
            Sasl::Cancelled => {
                conn.reply("501 5.0.0 Authentication cancelled.");
                return Flow::Continue;
            }
            Sasl::Malformed => {
                conn.reply("501 5.5.2 Invalid base64 data.");
                return Flow::Continue;
            }
            Sasl::Unsupported => {
                conn.reply("504 5.5.4 Unsupported authentication mechanism.");
                return Flow::Continue;
            }
            Sasl::Gone => return Flow::Close,
        };
        match self
            .submit
            .auth
            .login(conn.peer.addr.ip(), &name, &password)
            .await
        {
            Ok(user) => {
                conn.peer.logged_in(&user.name);
                tracing::info!("authenticated");
                self.user = Some(user.name);
                conn.reply("235 2.7.0 Authentication successful.");
                Flow::Continue
            }
            Err(AuthError::Failed) => {
                conn.reply("535 5.7.8 Authentication credentials invalid.");
                self.auth_failures += 1;
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    conn.peer.log.ended(End::Closed("too many failed logins"));
                    conn.reply("421 4.7.0 Too many failed logins; closing the connection.");
                    return Flow::Close;
                }
                Flow::Continue
            }
            Err(AuthError::Throttled) => {
                conn.peer.log.ended(End::Closed("login throttled"));
                conn.reply("421 4.7.0 Too many failed logins from your address; try later.");
                Flow::Close
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                conn.reply("454 4.7.0 Temporary authentication failure.");
                Flow::Continue
            }
        }
    }

    fn mail<S>(&mut self, mail: MailFrom, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.helo.is_none() {
            return conn.reply("503 5.5.1 Send EHLO first.");
        }
        let Some(user) = &self.user else {
            return conn.reply("530 5.7.0 Authentication required.");
        };
        if !matches!(self.transaction, Transaction::Idle) {
            return conn.reply("503 5.5.1 Nested MAIL command.");
        }
        if mail.size.is_some_and(|size| size > self.submit.max_size) {
            return conn.reply(&format!(
                "552 5.3.4 Message size exceeds the limit of {} bytes.",
                self.submit.max_size
            ));
        }
        if !mail.address.is_empty() {
            if let Err(err) = parse_address(&mail.address) {
                return conn.reply(&format!("501 5.1.7 Bad sender address syntax: {err}."));
            }
        }
        match self.submit.may_send_as(user, &mail.address) {
            Ok(true) => {}
            Ok(false) => {
                return conn.reply(&format!(
                    "553 5.7.1 Sender address <{}> does not belong to user {user}.",
                    printable(&mail.address)
                ))
            }
            Err(err) => {
                tracing::error!(error = %err, "users file unavailable");
                return conn.reply("451 4.3.0 Cannot check the sender now; try again later.");
            }
        }
        self.transaction = Transaction::Mail {
            from: mail.address,
            recipients: Vec::new(),
            accepted: 0,
        };
        conn.reply("250 2.1.0 Sender OK.");
    }

    fn rcpt<S>(&mut self, address: &str, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Transaction::Mail {
            recipients,
            accepted,
            ..
        } = &mut self.transaction
        else {
            return conn.reply("503 5.5.1 Send MAIL first.");
        };
        if *accepted >= self.submit.max_recipients {
            return conn.reply("452 4.5.3 Too many recipients.");
        }
        // RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
        let address = if address.eq_ignore_ascii_case("postmaster") {
            let domain = self.submit.auth.local_domains().first();
            format!("postmaster@{}", domain.map_or("localhost", String::as_str))
        } else {
            address.to_owned()
        };
        let targets = match self.submit.resolve(&address) {
            Ok(Ok(targets)) => targets,
            Ok(Err(refusal)) => {
                if !matches!(refusal, Refusal::NoSuchUser | Refusal::BadAddress(_)) {
                    // An alias the postmaster should fix: say so in the log as well.
                    tracing::warn!(recipient = %printable(&address), "{}", refusal.reply());
                }
                return conn.reply(&refusal.reply());
            }
            Err(err) => {
                tracing::error!("{err}");
                return conn.reply("451 4.3.0 Cannot check recipients now; try again later.");
            }
        };
        let direct = matches!(targets.as_slice(), [Target::Remote(a)] if *a == address);
        if !self.submit.relay_enabled {
            if direct {
                return conn.reply(
                    "550 5.7.1 Relaying denied: no smarthost is configured for non-local recipients.",
                );
            }
            if let Some(Target::Remote(remote)) =
                targets.iter().find(|t| matches!(t, Target::Remote(_)))
            {
                tracing::warn!(recipient = %printable(&address), remote = %remote, "alias leads to a remote address and no smarthost is configured");
                return conn.reply(&format!(
                    "550 5.7.1 <{}> leads to the remote address <{}>, but no smarthost is \
                     configured.",
                    printable(&address),
                    printable(remote)
                ));
            }
        }
        for target in targets {
            recipients.push(match target {
                Target::Local(user) => Recipient::Local {
                    address: address.clone(),
                    user,
                },
                Target::Remote(remote) => Recipient::Remote { address: remote },
            });
        }
        *accepted += 1;
        conn.reply("250 2.1.5 Recipient OK.");
    }

    async fn data<S>(&mut self, conn: &mut Conn<S>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (from, recipients) = match &self.transaction {
            Transaction::Idle => {
                conn.reply("503 5.5.1 Send MAIL first.");
                return Flow::Continue;
            }
            Transaction::Mail { recipients, .. } if recipients.is_empty() => {
                conn.reply("554 5.5.1 No valid recipients.");
                return Flow::Continue;
            }
            Transaction::Mail {
                from, recipients, ..
            } => (from.clone(), recipients.clone()),
        };
        let user = self.user.clone().unwrap_or_default();
        let submit = self.submit.clone();
        let spool = submit.spool.clone();
        let mut incoming = match tokio::task::spawn_blocking(move || spool.create()).await {
            Ok(Ok(incoming)) => Some(incoming),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot create a spool file");
                None
            }
            Err(_) => None,
        };
        conn.reply("354 Start mail input; end with <CRLF>.<CRLF>");
        if conn.flush().await.is_err() {
            return Flow::Close;
        }
        // Any failure below is remembered and reported after the final dot: the client is
        // sending the data regardless, and it is read and thrown away, never kept.
        let mut failure: Option<&'static str> = incoming
            .is_none()
            .then_some("452 4.3.1 Insufficient system storage; try again later.");
        let mut out = Vec::with_capacity(64 * 1024);
        if let Some(incoming) = &mut incoming {
            let single = match recipients.as_slice() {
                [one] => Some(match one {
                    Recipient::Local { address, .. } | Recipient::Remote { address } => {
                        address.as_str()
                    }
                }),
                _ => None,
            };
            let protocol = if conn.is_tls() { "ESMTPSA" } else { "ESMTPA" };
            let helo = self.helo.clone().unwrap_or_default();
            out.extend_from_slice(
                received_header(
                    &helo,
                    conn.peer.addr.ip(),
                    &submit.hostname,
                    protocol,
                    &incoming.id,
                    single,
                )
                .as_bytes(),
            );
        }
        let mut filter = HeaderFilter::new(&submit.hostname);
        let mut line = Vec::with_capacity(1024);
        let mut size: u64 = 0;
        loop {
            match data_line(conn, &mut line).await {
                None | Some(DataLine::Eof) => {
                    // Disconnect mid-DATA: nothing was accepted, so nothing is kept.
                    drop(incoming);
                    tracing::info!("client gone during DATA; message discarded");
                    return Flow::Close;
                }
                Some(DataLine::TooLong) => {
                    failure.get_or_insert("552 5.3.4 Message line too long.");
                    continue;
                }
                Some(bare @ (DataLine::BareLf | DataLine::BareCr)) => {
                    // Where the client thinks its data ends is not where we do: nothing
                    // after this point can be read as commands (RFC 5321 §4.1.1.4).
                    drop(incoming);
                    self.transaction = Transaction::Idle;
                    let what = if bare == DataLine::BareLf { "LF" } else { "CR" };
                    tracing::warn!("bare {what} in DATA; message refused, connection closed");
                    let reply = format!(
                        "550 5.5.2 Bare <{what}> received: lines must end with <CR><LF>; \
                         closing the connection."
                    );
                    refuse_and_close(conn, &reply, submit.max_size.saturating_add(1 << 20)).await;
                    return Flow::Close;
                }
                Some(DataLine::Complete) => {}
            }
            if line == b"." {
                break;
            }
            if failure.is_some() {
                continue;
            }
            let data = line.strip_prefix(b".").unwrap_or(&line);
            size += data.len() as u64 + 2;
            if size > submit.max_size {
                failure = Some("552 5.3.4 Message size exceeds the fixed limit.");
                continue;
            }
            if data.contains(&0) {
                failure = Some("554 5.6.0 The message contains NUL characters.");
                continue;
            }
            filter.line(data, &mut out);
            if out.len() >= 64 * 1024 {
                if let Some(incoming) = &mut incoming {
                    if let Err(err) = incoming.write(&out) {
                        tracing::error!(error = %err, "writing to the spool failed");
                        failure = Some("452 4.3.1 Insufficient system storage; try again later.");
                    }
                }
                out.clear();
            }
        }
        self.transaction = Transaction::Idle;
        if let Some(reply) = failure {
            conn.reply(reply);
            return Flow::Continue;
        }
        let Some(mut incoming) = incoming else {
            conn.reply("452 4.3.1 Insufficient system storage; try again later.");
            return Flow::Continue;
        };
        filter.finish(&mut out);
        if submit.check_from_header {
            if let Err(refusal) = check_from(&submit, &user, &filter) {
                tracing::info!("message refused: {refusal}");
                conn.reply(&refusal);
                return Flow::Continue;
            }
        }
        let envelope = Envelope {
            from,
            user,
            received: now(),
            recipients,
        };
        let committed = tokio::task::spawn_blocking(move || {
            incoming.write(&out)?;
            let id = incoming.commit(&envelope)?;
            Ok::<_, std::io::Error>((id, envelope))
        })
        .await;
        match committed {
            Ok(Ok((id, envelope))) => {
                log_queued(&id, size, &envelope);
                conn.reply(&format!("250 2.0.0 Ok: queued as {id}"));
                // The client hears of the acceptance before delivery starts.
                let flushed = conn.flush().await;
                submit.queue.accepted(id);
                if flushed.is_err() {
                    return Flow::Close;
                }
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "committing to the spool failed");
                conn.reply("452 4.3.1 Insufficient system storage; try again later.");
            }
            Err(err) => {
                tracing::error!(error = %err, "spool task failed");
                conn.reply("452 4.3.1 Insufficient system storage; try again later.");
            }
        }
        Flow::Continue
    }
}

/// May `user` put these `From:` fields in a message? Every address in them must be one they
/// may use as the envelope sender; a message without `From:` passes. The error is the reply.
fn check_from(submit: &Submit, user: &str, filter: &HeaderFilter) -> Result<(), String> {
    let unreadable =
        |err: FromError| format!("550 5.7.1 The From: header cannot be checked: {err}.");
    for field in filter.author_fields().map_err(unreadable)? {
        for address in addresses(field).map_err(unreadable)? {
            match submit.may_send_as(user, &address) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "550 5.7.1 From: address <{}> does not belong to user {user}.",
                        printable(&address)
                    ))
                }
                Err(err) => {
                    tracing::error!(error = %err, "users file unavailable");
                    return Err(
                        "451 4.3.0 Cannot check the From: header now; try again later.".to_owned(),
                    );
                }
            }
        }
    }
    Ok(())
}

/// A client-supplied string made safe to echo back in one reply line.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(255).collect()
}

#[cfg(test)]
mod tests;
