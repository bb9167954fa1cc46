//! One FTP control connection: login, AUTH TLS, the file commands, and transfers over a data
//! connection during which the control connection is still read (ABOR, STAT, NOOP).
//!
//! The session is generic over its stream, so AUTH TLS swaps a TCP stream for a TLS one and
//! the same loop runs again.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::SystemTime;

use rustls::server::ServerSessionMemoryCache;
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use inetkit_auth::AuthError;
use inetkit_runtime::server::Peer;
use inetkit_runtime::tls::HANDSHAKE_TIMEOUT;

use crate::command::{parse, Command, ParseError};
use crate::data::{self, DataStream, Pending, Progress};
use crate::fs::{UserFs, VPath, WriteMode};
use crate::listing;
use crate::Ftp;

/// Longest command line accepted (paths up to PATH_MAX and then some).
const MAX_LINE: usize = 8192;
/// Failed logins on one connection before it is closed.
const MAX_FAILURES: u32 = 3;

enum State {
    Login { user: Option<String>, failures: u32 },
    Ready { user: String, fs: UserFs },
}

enum Ending<S> {
    Closed,
    StartTls(S),
}

enum Next {
    Continue,
    Close,
    StartTls,
}

/// What a transfer command asks for once the data connection is up.
enum Transfer {
    Send { file: std::fs::File, path: VPath },
    Listing(Vec<u8>),
    Receive { file: std::fs::File, path: VPath },
}

pub(crate) struct Session {
    ftp: Arc<Ftp>,
    peer: Peer,
    /// This session's TLS setup: the daemon's certificate with a ticket key and session cache
    /// of its own, so a data connection can resume only this control connection's session.
    tls_config: Option<Arc<ServerConfig>>,
    /// The same for data connections, which issue no TLS 1.3 tickets of their own: a client
    /// that only uploads never reads them, and closing a socket with unread data resets it,
    /// losing the end of the upload.
    data_tls_config: Option<Arc<ServerConfig>>,
    tls: bool,
    state: State,
    ascii: bool,
    protected: bool,
    data: Pending,
    rest: u64,
    rename_from: Option<VPath>,
    epsv_all: bool,
}

/// Serves one connection; `implicit_tls` for the ftps port.
pub(crate) async fn serve(ftp: Arc<Ftp>, stream: TcpStream, peer: Peer, implicit_tls: bool) {
    // ftplib and others send ABOR's last byte as urgent data: keep it in the stream.
    let _ = socket2::SockRef::from(&stream).set_out_of_band_inline(true);
    let stream = ControlStream(stream);
    let (tls_config, data_tls_config) = match ftp.tls.as_ref() {
        Some(tls) => {
            let (control, data) = session_tls_config(tls.server_config());
            (Some(control), Some(data))
        }
        None => (None, None),
    };
    let mut session = Session {
        ftp,
        peer,
        tls_config,
        data_tls_config,
        tls: false,
        state: State::Login {
            user: None,
            failures: 0,
        },
        ascii: false,
        protected: false,
        data: Pending::None,
        rest: 0,
        rename_from: None,
        epsv_all: false,
    };
    if implicit_tls {
        session.serve_tls(stream, true).await;
    } else if let Ending::StartTls(stream) = session.run(stream, true).await {
        session.serve_tls(stream, false).await;
    }
}

/// The control connection's TCP stream. Reads go through `try_read`, which keeps tokio's
/// readiness after a short read: the kernel ends a read at the urgent mark of an ABOR sent
/// with MSG_OOB, and tokio's own `poll_read` would take that short read to mean "drained"
/// and wait for an edge that never comes for the byte behind the mark.
pub(crate) struct ControlStream(TcpStream);

impl AsyncRead for ControlStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for ControlStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The control and the data connections' TLS setups of one session, sharing a ticket key and
/// session cache of their own.
fn session_tls_config(base: &Arc<ServerConfig>) -> (Arc<ServerConfig>, Arc<ServerConfig>) {
    let mut config = (**base).clone();
    config.session_storage = ServerSessionMemoryCache::new(32);
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Without tickets, TLS 1.2 session ids in the session's own cache still resume.
        Err(err) => tracing::warn!(error = %err, "no TLS ticket key"),
    }
    let mut data = config.clone();
    data.send_tls13_tickets = 0;
    (Arc::new(config), Arc::new(data))
}

/// What the control connection gave us.
enum Input {
    Line(Vec<u8>),
    TooLong,
    Eof,
}

struct Conn<S> {
    reader: BufReader<S>,
    /// The line being read; kept across cancelled reads (the read races a transfer).
    line: Vec<u8>,
    too_long: bool,
    /// Commands that arrived during a transfer, answered after it.
    queued: VecDeque<Vec<u8>>,
    out: Vec<u8>,
    peer: Peer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let stream = self.reader.get_mut();
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.peer.write_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        self.out.clear();
        Ok(())
    }

    /// Reads one line, bounded by [`MAX_LINE`]. Cancel-safe: a partly read line stays in
    /// `self.line` for the next call.
    async fn read_input(&mut self) -> io::Result<Input> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(Input::Eof);
            }
            let (chunk, end) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if !self.too_long {
                if self.line.len() + chunk.len() > MAX_LINE + 1 {
                    self.too_long = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let consumed = end.unwrap_or(chunk.len());
            self.reader.consume(consumed);
            if end.is_some() {
                if std::mem::take(&mut self.too_long) {
                    return Ok(Input::TooLong);
                }
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Input::Line(line));
            }
        }
    }

    /// The next command line; `None` when the client is gone, idle too long, or we are
    /// stopping (the last two are told so first).
    async fn next_input(&mut self) -> Option<Input> {
        if let Some(line) = self.queued.pop_front() {
            return Some(Input::Line(line));
        }
        if self.reader.buffer().is_empty() && self.flush().await.is_err() {
            return None;
        }
        let shutdown = self.peer.shutdown.clone();
        let idle = self.peer.idle_timeout;
        tokio::select! {
            read = tokio::time::timeout(idle, self.read_input()) => match read {
                Ok(Ok(Input::Eof)) | Ok(Err(_)) => None,
                Ok(Ok(input)) => Some(input),
                Err(_) => {
                    self.reply("421 Timeout.");
                    let _ = self.flush().await;
                    None
                }
            },
            _ = shutdown.cancelled() => {
                self.reply("421 Server shutting down.");
                let _ = self.flush().await;
                None
            }
        }
    }
}

impl Session {
    async fn serve_tls(&mut self, stream: ControlStream, greet: bool) {
        let Some(config) = self.tls_config.clone() else {
            return;
        };
        let acceptor = TlsAcceptor::from(config);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                self.tls = true;
                self.run(stream, greet).await;
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    async fn run<S>(&mut self, stream: S, greet: bool) -> Ending<S>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut conn = Conn {
            reader: BufReader::new(stream),
            line: Vec::new(),
            too_long: false,
            queued: VecDeque::new(),
            out: Vec::with_capacity(1024),
            peer: self.peer.clone(),
        };
        if greet {
            conn.reply("220 inetkit FTP server ready.");
        }
        loop {
            let next = match conn.next_input().await {
                None | Some(Input::Eof) => Next::Close,
                Some(Input::TooLong) => {
                    conn.reply("500 Command line too long.");
                    Next::Continue
                }
                Some(Input::Line(line)) => match parse(&line) {
                    Ok(command) => self.handle(command, &mut conn).await,
                    Err(ParseError::Unknown) => {
                        conn.reply("500 Unknown command.");
                        Next::Continue
                    }
                    Err(ParseError::Syntax(hint)) => {
                        conn.reply(&format!("501 Syntax error: {hint}."));
                        Next::Continue
                    }
                },
            };
            match next {
                Next::Continue => {}
                Next::Close => {
                    let _ = conn.flush().await;
                    let _ = conn.reader.get_mut().shutdown().await;
                    return Ending::Closed;
                }
                Next::StartTls => {
                    if conn.flush().await.is_err() {
                        return Ending::Closed;
                    }
                    // Whatever was pipelined in the clear after AUTH is dropped.
                    return Ending::StartTls(conn.reader.into_inner());
                }
            }
        }
    }

    fn plaintext_allowed(&self) -> bool {
        self.ftp
            .auth_config
            .plaintext_allowed(self.peer.addr.ip(), self.tls)
    }

    async fn handle<S>(&mut self, command: Command, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Commands that work logged in or not.
        match command {
            Command::Quit => {
                conn.reply("221 Goodbye.");
                return Next::Close;
            }
            Command::Noop => conn.reply("200 NOOP ok."),
            Command::Syst => conn.reply("215 UNIX Type: L8"),
            Command::Feat => self.feat(conn),
            Command::Help => {
                conn.reply("214-The following commands are recognized:");
                conn.reply(" ABOR APPE AUTH CCC CDUP CWD DELE EPRT EPSV FEAT HELP LIST MDTM MKD");
                conn.reply(" MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD QUIT REST");
                conn.reply(" RETR RMD RNFR RNTO SIZE STAT STOR STOU STRU SYST TYPE USER");
                conn.reply("214 Help OK.");
            }
            Command::Opts(option) => {
                let upper = option.to_ascii_uppercase();
                if upper == "UTF8 ON" || upper == "UTF-8 ON" {
                    conn.reply("200 Always in UTF8 mode.");
                } else if upper.starts_with("MLST ") {
                    conn.reply("200 MLST OPTS type;size;modify;perm;unique;");
                } else {
                    conn.reply("501 Option not understood.");
                }
            }
            Command::Auth(mechanism) => return self.auth_tls(&mechanism, conn),
            Command::Pbsz(_) => {
                if self.tls {
                    conn.reply("200 PBSZ=0");
                } else {
                    conn.reply("503 PBSZ needs a TLS control connection (AUTH TLS first).");
                }
            }
            Command::Prot(level) => {
                if !self.tls {
                    conn.reply("503 PROT needs a TLS control connection (AUTH TLS first).");
                } else {
                    match level.to_ascii_uppercase().as_str() {
                        "C" => {
                            self.protected = false;
                            conn.reply("200 PROT now Clear.");
                        }
                        "P" => {
                            self.protected = true;
                            conn.reply("200 PROT now Private.");
                        }
                        "S" | "E" => conn.reply("536 Only C and P are supported."),
                        _ => conn.reply("504 Unknown protection level."),
                    }
                }
            }
            Command::Ccc => conn.reply("533 The control connection stays protected."),
            Command::Type(kind) => match kind.to_ascii_uppercase().as_str() {
                "A" | "A N" => {
                    self.ascii = true;
                    conn.reply("200 Switching to ASCII mode.");
                }
                "I" | "L 8" => {
                    self.ascii = false;
                    conn.reply("200 Switching to Binary mode.");
                }
                _ => conn.reply("504 Only TYPE A and I are supported."),
            },
            Command::Mode(mode) => match mode.to_ascii_uppercase().as_str() {
                "S" => conn.reply("200 Mode set to S."),
                _ => conn.reply("504 Only MODE S is supported."),
            },
            Command::Stru(stru) => match stru.to_ascii_uppercase().as_str() {
                "F" => conn.reply("200 Structure set to F."),
                _ => conn.reply("504 Only STRU F is supported."),
            },
            Command::User(name) => self.user(name, conn),
            Command::Pass(password) => return self.pass(password, conn).await,
            Command::Stat(None) => self.status(conn),
            Command::Abor => {
                self.data = Pending::None;
                conn.reply("225 No transfer to abort.");
            }
            command => {
                if matches!(self.state, State::Ready { .. }) {
                    return self.logged_in(command, conn).await;
                }
                conn.reply("530 Please login with USER and PASS.");
            }
        }
        Next::Continue
    }

    fn feat<S>(&self, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        conn.reply("211-Features:");
        if self.tls_config.is_some() {
            conn.reply(" AUTH TLS");
            conn.reply(" PBSZ");
            conn.reply(" PROT");
        }
        for feature in [
            " EPRT",
            " EPSV",
            " MDTM",
            " MLST type*;size*;modify*;perm*;unique*;",
            " PASV",
            " REST STREAM",
            " SIZE",
            " TVFS",
            " UTF8",
        ] {
            conn.reply(feature);
        }
        conn.reply("211 End");
    }

    fn auth_tls<S>(&mut self, mechanism: &str, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !matches!(
            mechanism.to_ascii_uppercase().as_str(),
            "TLS" | "SSL" | "TLS-C" | "TLS-P"
        ) {
            conn.reply("504 Unknown security mechanism.");
        } else if self.tls {
            conn.reply("503 Already using TLS.");
        } else if self.tls_config.is_none() {
            conn.reply("431 TLS is not configured.");
        } else if matches!(self.state, State::Ready { .. }) {
            conn.reply("503 AUTH must come before login.");
        } else {
            // RFC 4217 §4: a new security exchange forgets any USER given before it.
            self.state = State::Login {
                user: None,
                failures: 0,
            };
            conn.reply("234 Proceed with negotiation.");
            return Next::StartTls;
        }
        Next::Continue
    }

    fn is_anonymous(name: &str) -> bool {
        name.eq_ignore_ascii_case("anonymous") || name.eq_ignore_ascii_case("ftp")
    }

    fn user<S>(&mut self, name: String, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let anonymous = Self::is_anonymous(&name);
        let plaintext = self.plaintext_allowed();
        let State::Login { user, .. } = &mut self.state else {
            conn.reply("503 Already logged in.");
            return;
        };
        if anonymous && !self.ftp.config.anonymous {
            conn.reply("530 Anonymous logins are not allowed here.");
        } else if !anonymous && !plaintext {
            conn.reply("530 Non-anonymous sessions must use encryption: AUTH TLS first.");
        } else {
            *user = Some(name);
            conn.reply("331 Please specify the password.");
        }
    }

    async fn pass<S>(&mut self, password: String, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match &mut self.state {
            State::Login { user, .. } => user.take(),
            State::Ready { .. } => {
                conn.reply("230 Already logged in.");
                return Next::Continue;
            }
        };
        let Some(name) = name else {
            conn.reply("503 Login with USER first.");
            return Next::Continue;
        };
        if Self::is_anonymous(&name) {
            let root = self.ftp.config.anonymous_root.clone();
            return match tokio::task::spawn_blocking(move || UserFs::open(&root, false, true)).await
            {
                Ok(Ok(fs)) => {
                    tracing::Span::current().record("user", "anonymous");
                    tracing::info!("anonymous login");
                    self.state = State::Ready {
                        user: "anonymous".into(),
                        fs,
                    };
                    conn.reply("230 Login successful (read-only).");
                    Next::Continue
                }
                Ok(Err(err)) => {
                    tracing::error!(root = %self.ftp.config.anonymous_root.display(), error = %err, "cannot open the anonymous root");
                    conn.reply("421 Service not available.");
                    Next::Close
                }
                Err(_) => Next::Close,
            };
        }
        if !self.plaintext_allowed() {
            conn.reply("530 Non-anonymous sessions must use encryption: AUTH TLS first.");
            return Next::Continue;
        }
        let ip = self.peer.addr.ip();
        let user = match self.ftp.auth.login(ip, &name, password.as_bytes()).await {
            Ok(user) => user,
            Err(AuthError::Throttled) => {
                conn.reply("421 Too many failed logins from your address; try again later.");
                return Next::Close;
            }
            Err(AuthError::Failed) => {
                conn.reply("530 Login incorrect.");
                if let State::Login { failures, .. } = &mut self.state {
                    *failures += 1;
                    if *failures >= MAX_FAILURES {
                        return Next::Close;
                    }
                }
                return Next::Continue;
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                conn.reply("421 Authentication is temporarily unavailable.");
                return Next::Close;
            }
        };
        // The home field is the user's root; without one, a directory of ours made now.
        let (root, create) = match &user.home {
            Some(home) => (home.clone(), false),
            None => (self.ftp.config.root.join(&user.name), true),
        };
        let opened = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || UserFs::open(&root, create, false)).await
        };
        match opened {
            Ok(Ok(fs)) => {
                tracing::Span::current().record("user", user.name.as_str());
                tracing::info!(root = %root.display(), "logged in");
                self.state = State::Ready {
                    user: user.name,
                    fs,
                };
                conn.reply("230 Login successful.");
                Next::Continue
            }
            Ok(Err(err)) => {
                tracing::error!(user = %user.name, root = %root.display(), error = %err, "cannot open the user's root");
                conn.reply("421 Cannot open your directory; try again later.");
                Next::Close
            }
            Err(_) => Next::Close,
        }
    }

    fn status<S>(&self, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        conn.reply("211-inetkit FTP server status:");
        conn.reply(&format!("     Connected to {}", self.peer.addr.ip()));
        match &self.state {
            State::Ready { user, .. } => conn.reply(&format!("     Logged in as {user}")),
            State::Login { .. } => conn.reply("     Not logged in"),
        }
        conn.reply(&format!(
            "     TYPE: {}; MODE: Stream; STRU: File",
            if self.ascii { "ASCII" } else { "BINARY" }
        ));
        conn.reply(&format!(
            "     Control connection: {}; data connections: {}",
            if self.tls { "TLS" } else { "plain" },
            if self.protected { "TLS" } else { "plain" }
        ));
        conn.reply("211 End of status");
    }

    /// The commands that need a login.
    async fn logged_in<S>(&mut self, command: Command, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let State::Ready { fs, .. } = &mut self.state else {
            return Next::Continue;
        };
        // RNTO must follow RNFR directly; REST the transfer it is for.
        let rename_from = self.rename_from.take();
        let rest = std::mem::take(&mut self.rest);
        match command {
            Command::Pwd => conn.reply(&format!(
                "257 {} is the current directory.",
                quote(&fs.cwd().display())
            )),
            Command::Cwd(path) => match fs.change_dir(&path) {
                Ok(()) => conn.reply("250 Directory successfully changed."),
                Err(err) => conn.reply(&fs_error(&err)),
            },
            Command::Cdup => match fs.change_dir("..") {
                Ok(()) => conn.reply("250 Directory successfully changed."),
                Err(err) => conn.reply(&fs_error(&err)),
            },
            Command::Stat(Some(path)) => {
                let path = strip_list_options(&path);
                match listing_of(fs, path, ListKind::Long) {
                    Ok(text) => {
                        conn.reply("213-Status follows:");
                        for line in String::from_utf8_lossy(&text).lines() {
                            conn.reply(&format!(" {line}"));
                        }
                        conn.reply("213 End of status");
                    }
                    Err(err) => conn.reply(&fs_error(&err)),
                }
            }
            Command::Size(path) => match fs.resolve(&path).and_then(|p| fs.metadata(&p)) {
                Ok(meta) if meta.is_file() => conn.reply(&format!("213 {}", meta.len())),
                Ok(_) => conn.reply("550 Not a plain file."),
                Err(err) => conn.reply(&fs_error(&err)),
            },
            Command::Mdtm(path) => match fs.resolve(&path).and_then(|p| fs.metadata(&p)) {
                Ok(meta) if meta.is_file() => conn.reply(&format!(
                    "213 {}",
                    listing::timeval(listing::modified(&meta))
                )),
                Ok(_) => conn.reply("550 Not a plain file."),
                Err(err) => conn.reply(&fs_error(&err)),
            },
            Command::Mlst(path) => {
                let target = fs.resolve(path.as_deref().unwrap_or("."));
                match target.and_then(|p| fs.metadata(&p).map(|m| (p, m))) {
                    Ok((p, meta)) => {
                        conn.reply(&format!("250-Listing {}", p.display()));
                        conn.reply(&format!(
                            " {}",
                            listing::facts(&p.display(), &meta, None, !fs.read_only)
                        ));
                        conn.reply("250 End");
                    }
                    Err(err) => conn.reply(&fs_error(&err)),
                }
            }
            Command::Dele(path) => match fs
                .resolve(&path)
                .and_then(|p| fs.remove_file(&p).map(|_| p))
            {
                Ok(p) => {
                    tracing::info!(path = %p.display(), "deleted");
                    conn.reply("250 Delete operation successful.")
                }
                Err(err) => conn.reply(&fs_error(&err)),
            },
            Command::Mkd(path) => {
                match fs.resolve(&path).and_then(|p| fs.create_dir(&p).map(|_| p)) {
                    Ok(p) => conn.reply(&format!("257 {} created.", quote(&p.display()))),
                    Err(err) => conn.reply(&fs_error(&err)),
                }
            }
            Command::Rmd(path) => match fs.resolve(&path).and_then(|p| fs.remove_dir(&p)) {
                Ok(()) => conn.reply("250 Remove directory operation successful."),
                Err(err) => conn.reply(&fs_error(&err)),
            },
            Command::Rnfr(path) => match fs
                .resolve(&path)
                .and_then(|p| fs.symlink_metadata(&p).map(|_| p))
            {
                Ok(_) if fs.read_only => conn.reply("550 Permission denied."),
                Ok(p) => {
                    self.rename_from = Some(p);
                    conn.reply("350 Ready for RNTO.");
                }
                Err(err) => conn.reply(&fs_error(&err)),
            },
            Command::Rnto(path) => match rename_from {
                None => conn.reply("503 RNFR required first."),
                Some(from) => match fs
                    .resolve(&path)
                    .and_then(|to| fs.rename(&from, &to).map(|_| to))
                {
                    Ok(to) => {
                        tracing::info!(from = %from.display(), to = %to.display(), "renamed");
                        conn.reply("250 Rename successful.");
                    }
                    Err(err) => conn.reply(&fs_error(&err)),
                },
            },
            Command::Rest(offset) => {
                self.rest = offset;
                conn.reply(&format!("350 Restart position accepted ({offset})."));
            }
            Command::Pasv => self.passive(false, conn),
            Command::Epsv(arg) => match arg.as_deref().map(str::to_ascii_uppercase).as_deref() {
                Some("ALL") => {
                    self.epsv_all = true;
                    conn.reply("200 EPSV ALL ok.");
                }
                None | Some("1") | Some("2") => self.passive(true, conn),
                Some(_) => conn.reply("522 Network protocol not supported, use (1,2)"),
            },
            Command::Port(addr) | Command::Eprt(addr) => {
                if self.epsv_all {
                    conn.reply("503 EPSV ALL was given: only EPSV is allowed.");
                } else if addr.ip().to_canonical() != self.peer.addr.ip().to_canonical()
                    || addr.port() < 1024
                {
                    // FTP bounce (RFC 2577): only the client itself, never a privileged port.
                    tracing::warn!(to = %addr, "PORT to another address or a privileged port refused");
                    conn.reply(
                        "500 Illegal PORT command: only your own address and ports from 1024.",
                    );
                } else {
                    self.data = Pending::Active(addr);
                    conn.reply("200 PORT command successful. Consider using PASV.");
                }
            }
            // A transfer needs a data connection set up first; nothing is opened or created
            // without one.
            Command::List(_)
            | Command::Nlst(_)
            | Command::Mlsd(_)
            | Command::Retr(_)
            | Command::Stor(_)
            | Command::Appe(_)
            | Command::Stou(_)
                if matches!(self.data, Pending::None) =>
            {
                conn.reply("425 Use PORT or PASV first.");
            }
            Command::List(arg) => {
                let listing = listing_of(
                    fs,
                    strip_list_options(arg.as_deref().unwrap_or("")),
                    ListKind::Long,
                );
                return self.start_listing(listing, conn).await;
            }
            Command::Nlst(arg) => {
                let listing = listing_of(
                    fs,
                    strip_list_options(arg.as_deref().unwrap_or("")),
                    ListKind::Names,
                );
                return self.start_listing(listing, conn).await;
            }
            Command::Mlsd(arg) => {
                let listing = fs.resolve(arg.as_deref().unwrap_or(".")).and_then(|p| {
                    if fs.metadata(&p)?.is_dir() {
                        listing_of(fs, &p.display(), ListKind::Facts)
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::NotADirectory,
                            "not a directory",
                        ))
                    }
                });
                return self.start_listing(listing, conn).await;
            }
            Command::Retr(path) => {
                let opened = fs.resolve(&path).and_then(|p| {
                    let mut file = fs.open_read(&p)?;
                    if rest > 0 {
                        use std::io::Seek;
                        file.seek(io::SeekFrom::Start(rest))?;
                    }
                    Ok((p, file))
                });
                return match opened {
                    Ok((path, file)) => self.transfer(Transfer::Send { file, path }, conn).await,
                    Err(err) => {
                        self.data = Pending::None;
                        conn.reply(&fs_error(&err));
                        Next::Continue
                    }
                };
            }
            Command::Stor(ref path) | Command::Appe(ref path) => {
                let mode = match command {
                    Command::Appe(_) => WriteMode::Append,
                    _ if rest > 0 => WriteMode::At(rest),
                    _ => WriteMode::Truncate,
                };
                let opened = fs
                    .resolve(path)
                    .and_then(|p| fs.open_write(&p, mode).map(|f| (p, f)));
                return match opened {
                    Ok((path, file)) => self.transfer(Transfer::Receive { file, path }, conn).await,
                    Err(err) => {
                        self.data = Pending::None;
                        conn.reply(&fs_error(&err));
                        Next::Continue
                    }
                };
            }
            Command::Stou(base) => {
                return match fs.create_unique(base.as_deref()) {
                    Ok((path, file)) => self.transfer(Transfer::Receive { file, path }, conn).await,
                    Err(err) => {
                        self.data = Pending::None;
                        conn.reply(&fs_error(&err));
                        Next::Continue
                    }
                };
            }
            // Handled before logging in.
            _ => conn.reply("502 Command not implemented."),
        }
        Next::Continue
    }

    /// PASV / EPSV: listen on the address the client reached us on.
    fn passive<S>(&mut self, extended: bool, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.data = Pending::None;
        if !extended && self.epsv_all {
            conn.reply("503 EPSV ALL was given: only EPSV is allowed.");
            return;
        }
        let local = self.peer.local.ip().to_canonical();
        let advertised = match (extended, self.ftp.config.passive_address, local) {
            (true, _, _) => None,
            (false, Some(IpAddr::V4(v4)), _) | (false, None, IpAddr::V4(v4)) => Some(v4),
            _ => {
                conn.reply("425 PASV is for IPv4: use EPSV.");
                return;
            }
        };
        match data::listen(local, self.ftp.config.passive_ports) {
            Ok(listener) => {
                let port = match listener.local_addr() {
                    Ok(addr) => addr.port(),
                    Err(_) => {
                        conn.reply("425 Cannot open a passive port.");
                        return;
                    }
                };
                self.data = Pending::Passive(listener);
                match advertised {
                    Some(ip) => {
                        let [a, b, c, d] = ip.octets();
                        conn.reply(&format!(
                            "227 Entering Passive Mode ({a},{b},{c},{d},{},{}).",
                            port >> 8,
                            port & 0xff
                        ));
                    }
                    None => {
                        conn.reply(&format!("229 Entering Extended Passive Mode (|||{port}|)."))
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot open a passive port");
                conn.reply("425 Cannot open a passive port.");
            }
        }
    }

    async fn start_listing<S>(&mut self, listing: io::Result<Vec<u8>>, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match listing {
            Ok(bytes) => self.transfer(Transfer::Listing(bytes), conn).await,
            Err(err) => {
                self.data = Pending::None;
                conn.reply(&fs_error(&err));
                Next::Continue
            }
        }
    }

    /// Opens the data connection, runs the transfer, and keeps reading the control
    /// connection meanwhile: ABOR stops the transfer, STAT and NOOP are answered, anything
    /// else waits until the transfer is over.
    async fn transfer<S>(&mut self, transfer: Transfer, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let timeout = self.ftp.config.data_timeout();
        let tcp = match std::mem::take(&mut self.data) {
            Pending::None => {
                conn.reply("425 Use PORT or PASV first.");
                return Next::Continue;
            }
            Pending::Passive(listener) => {
                let expect = (!self.ftp.config.passive_any_address).then_some(self.peer.addr.ip());
                data::accept(listener, expect, timeout).await
            }
            Pending::Active(addr) => data::connect(addr, timeout).await,
        };
        let tcp = match tcp {
            Ok(tcp) => tcp,
            Err(err) => {
                tracing::info!(error = %err, "no data connection");
                conn.reply("425 Failed to establish the data connection.");
                return Next::Continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let what = match &transfer {
            Transfer::Send { file, path } => {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                format!("{} ({size} bytes)", path.display())
            }
            Transfer::Listing(_) => "the directory listing".to_owned(),
            Transfer::Receive { path, .. } => path.display(),
        };
        let mode = if self.ascii { "ASCII" } else { "BINARY" };
        match &transfer {
            Transfer::Receive { path, .. } => {
                conn.reply(&format!("150 Ok to send data: FILE: {}", path.display()))
            }
            _ => conn.reply(&format!(
                "150 Opening {mode} mode data connection for {what}."
            )),
        }
        if conn.flush().await.is_err() {
            return Next::Close;
        }
        let stream = if self.protected {
            match self.data_tls(tcp).await {
                Ok(stream) => stream,
                Err(reply) => {
                    conn.reply(reply);
                    return Next::Continue;
                }
            }
        } else {
            DataStream::Plain(tcp)
        };

        let progress = Progress::default();
        let ascii = self.ascii;
        let (direction, path, outcome) = {
            let job_progress = progress.clone();
            match transfer {
                Transfer::Send { file, path } => {
                    let job = data::send_file(stream, file, ascii, timeout, job_progress);
                    let outcome = self.while_transferring(job, &progress, conn).await;
                    ("sent", Some(path), outcome)
                }
                Transfer::Listing(bytes) => {
                    let job = data::send_bytes(stream, bytes, timeout);
                    let outcome = self.while_transferring(job, &progress, conn).await;
                    ("listed", None, outcome)
                }
                Transfer::Receive { mut file, path } => {
                    let job = async move {
                        let result =
                            data::receive_file(stream, &mut file, ascii, timeout, job_progress)
                                .await;
                        // Whatever arrived stays (so REST can resume it); cut anything past it
                        // left by an earlier, longer upload resumed with REST.
                        use std::io::Seek;
                        if let Ok(end) = file.stream_position() {
                            if file.metadata().map(|m| m.len() > end).unwrap_or(false) {
                                let _ = file.set_len(end);
                            }
                        }
                        result
                    };
                    let outcome = self.while_transferring(job, &progress, conn).await;
                    ("received", Some(path), outcome)
                }
            }
        };
        let shown = path.as_ref().map(VPath::display).unwrap_or_default();
        match outcome {
            Outcome::Done(Ok(bytes)) => {
                if path.is_some() {
                    tracing::info!(path = %shown, bytes, "{direction}");
                }
                conn.reply("226 Transfer complete.");
                Next::Continue
            }
            Outcome::Done(Err(err)) => {
                let bytes = progress.load(Ordering::Relaxed);
                if direction == "received" {
                    tracing::warn!(path = %shown, bytes, error = %err, "upload interrupted; partial file kept");
                } else {
                    tracing::info!(path = %shown, bytes, error = %err, "transfer failed");
                }
                if err.kind() == io::ErrorKind::TimedOut {
                    conn.reply("426 Data connection timed out; transfer aborted.");
                } else {
                    conn.reply("426 Connection closed; transfer aborted.");
                }
                Next::Continue
            }
            Outcome::Aborted => {
                let bytes = progress.load(Ordering::Relaxed);
                tracing::info!(path = %shown, bytes, "transfer aborted by the client");
                conn.reply("426 Transfer aborted.");
                conn.reply("226 ABOR successful.");
                Next::Continue
            }
            Outcome::ControlGone => {
                if direction == "received" {
                    let bytes = progress.load(Ordering::Relaxed);
                    tracing::warn!(path = %shown, bytes, "control connection lost mid-upload; partial file kept");
                }
                Next::Close
            }
        }
    }

    /// TLS on the data connection; it must resume this session's TLS session.
    async fn data_tls(&self, tcp: TcpStream) -> Result<DataStream, &'static str> {
        let Some(config) = self.data_tls_config.clone() else {
            return Err("425 TLS is not configured.");
        };
        let acceptor = TlsAcceptor::from(config);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::info!(error = %err, "data connection TLS handshake failed");
                return Err("522 TLS negotiation on the data connection failed.");
            }
            Err(_) => return Err("425 TLS negotiation on the data connection timed out."),
        };
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        if self.ftp.config.require_tls_reuse && !resumed {
            tracing::warn!("data connection did not resume the control connection's TLS session");
            return Err("522 TLS session reuse required: the data connection must resume the control connection's session.");
        }
        Ok(DataStream::Tls(Box::new(stream)))
    }

    async fn while_transferring<S, F>(
        &mut self,
        job: F,
        progress: &Progress,
        conn: &mut Conn<S>,
    ) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: std::future::Future<Output = io::Result<u64>>,
    {
        let mut job = std::pin::pin!(job);
        loop {
            tokio::select! {
                result = &mut job => return Outcome::Done(result),
                input = conn.read_input() => match input {
                    Ok(Input::Line(line)) => match parse(&line) {
                        Ok(Command::Abor) => return Outcome::Aborted,
                        Ok(Command::Stat(None)) => {
                            conn.reply(&format!(
                                "213 Status: {} bytes transferred so far.",
                                progress.load(Ordering::Relaxed)
                            ));
                            if conn.flush().await.is_err() {
                                return Outcome::ControlGone;
                            }
                        }
                        Ok(Command::Noop) => {
                            conn.reply("200 NOOP ok.");
                            if conn.flush().await.is_err() {
                                return Outcome::ControlGone;
                            }
                        }
                        _ => {
                            // Bounded: a client that floods commands mid-transfer is cut off.
                            if conn.queued.len() >= 64 {
                                return Outcome::ControlGone;
                            }
                            conn.queued.push_back(line);
                        }
                    },
                    Ok(Input::TooLong) => conn.queued.push_back(vec![0xff; MAX_LINE + 2]),
                    Ok(Input::Eof) | Err(_) => return Outcome::ControlGone,
                },
            }
        }
    }
}

enum Outcome {
    Done(io::Result<u64>),
    Aborted,
    ControlGone,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Long,
    Names,
    Facts,
}

/// LIST options (`-la`) are ignored: the listing is always the long one with dot files.
fn strip_list_options(arg: &str) -> &str {
    let mut rest = arg.trim_start();
    while rest.starts_with('-') {
        rest = rest.split_once(' ').map_or("", |(_, r)| r).trim_start();
    }
    rest
}

/// The text of a listing of `arg` (a directory's entries, or one file).
fn listing_of(fs: &UserFs, arg: &str, kind: ListKind) -> io::Result<Vec<u8>> {
    let path = fs.resolve(if arg.is_empty() { "." } else { arg })?;
    let meta = fs.metadata(&path)?;
    let now = SystemTime::now();
    let writable = !fs.read_only;
    let mut out = Vec::new();
    let mut line = |name: &str, meta: &cap_std::fs::Metadata| {
        let text = match kind {
            ListKind::Long => listing::ls_line(name, meta, now),
            ListKind::Names => name.to_owned(),
            ListKind::Facts => listing::facts(name, meta, None, writable),
        };
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    if meta.is_dir() {
        for (name, meta) in fs.list(&path)? {
            line(&name, &meta);
        }
    } else {
        line(path.name(), &meta);
    }
    Ok(out)
}

/// A path in a 257 reply: quoted, with quotes inside doubled (RFC 959 appendix II).
fn quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

/// The reply for a failed file operation; the detail stays in our log.
fn fs_error(err: &io::Error) -> String {
    tracing::debug!(error = %err, "file operation failed");
    match err.kind() {
        io::ErrorKind::InvalidInput => "553 File name not allowed.".into(),
        io::ErrorKind::NotFound => "550 No such file or directory.".into(),
        io::ErrorKind::PermissionDenied => "550 Permission denied.".into(),
        io::ErrorKind::AlreadyExists => "550 File exists.".into(),
        io::ErrorKind::NotADirectory => "550 Not a directory.".into(),
        io::ErrorKind::IsADirectory => "550 Not a plain file.".into(),
        io::ErrorKind::DirectoryNotEmpty => "550 Directory not empty.".into(),
        io::ErrorKind::StorageFull => "552 No space left.".into(),
        _ => "550 Operation failed.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_options_are_dropped() {
        assert_eq!(strip_list_options("-la"), "");
        assert_eq!(strip_list_options("-l -a dir"), "dir");
        assert_eq!(strip_list_options("dir name"), "dir name");
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote("/a\"b"), "\"/a\"\"b\"");
    }
}
