//! Transfers: setting up the data connection (PASV, EPSV, PORT, EPRT), REST, ABOR, and running
//! a transfer while the control connection is still read (ABOR stops it, STAT and NOOP are
//! answered, anything else waits).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use inetkit_runtime::conn::LineConn;
use inetkit_runtime::session::SessionStream;

use crate::command::{parse, Command};
use crate::data::{self, DataStream, Pending, Progress};
use crate::fs::{blocking, VPath};
use crate::passive::{self, Passive, PassiveError};
use crate::rate::Throttle;
use crate::xferlog::Entry;

use inetkit_runtime::lines::Line;
use inetkit_runtime::session::Flow;

use super::{fs_error, Session, State, Transfer};

/// Truncates `file` at its position when it is longer.
fn cut_after_position(file: &mut std::fs::File) -> io::Result<()> {
    use std::io::Seek;
    let end = file.stream_position()?;
    if file.metadata()?.len() > end {
        file.set_len(end)?;
    }
    Ok(())
}

/// The disk (or the user's quota) is full.
fn storage_full(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::StorageFull
        || matches!(
            err.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
        )
}

/// How a transfer ended.
enum Outcome {
    Done(io::Result<u64>),
    Aborted,
    ControlGone,
}

impl Session {
    pub(super) fn rest<S>(&mut self, offset: u64, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        self.rest = offset;
        conn.reply(&format!("350 Restart position accepted ({offset})."));
    }

    /// ABOR with no transfer running: forgets a prepared data connection.
    pub(super) fn abor_idle<S>(&mut self, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        self.data = Pending::None;
        conn.reply("225 No transfer to abort.");
    }

    pub(super) fn epsv<S>(&mut self, arg: Option<&str>, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        match arg.map(str::to_ascii_uppercase).as_deref() {
            Some("ALL") => {
                self.epsv_all = true;
                conn.reply("200 EPSV ALL ok.");
            }
            None | Some("1") | Some("2") => self.passive(true, conn),
            Some(_) => conn.reply("522 Network protocol not supported, use (1,2)"),
        }
    }

    /// PASV / EPSV: listen on the address the client reached us on.
    pub(super) fn passive<S>(&mut self, extended: bool, conn: &mut LineConn<S>)
    where
        S: SessionStream,
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
        let opened = Passive::open(
            &self.ftp.passive,
            self.peer.addr.ip(),
            local,
            self.ftp.config.passive_ports,
            self.ftp.config.data_timeout(),
        );
        let port = match opened {
            Ok(passive) => {
                let port = passive.port();
                self.data = Pending::Passive(passive);
                port
            }
            Err(PassiveError::TooMany(client)) => {
                tracing::warn!(%client, "passive ports per address exhausted");
                conn.reply("425 Too many passive ports open for your address; try again later.");
                return;
            }
            // The cause itself: the error's own text would add nothing to this message.
            Err(PassiveError::Listen(err)) => {
                tracing::error!(error = %err, "cannot open a passive port");
                conn.reply("425 Cannot open a passive port.");
                return;
            }
        };
        match advertised {
            Some(ip) => {
                let [a, b, c, d] = ip.octets();
                conn.reply(&format!(
                    "227 Entering Passive Mode ({a},{b},{c},{d},{},{}).",
                    port >> 8,
                    port & 0xff
                ));
            }
            None => conn.reply(&format!("229 Entering Extended Passive Mode (|||{port}|).")),
        }
    }

    /// A passive port nobody connected to in `data_timeout` is closed, its port free again.
    pub(super) fn passive_expired(&mut self) {
        if let Pending::Passive(passive) = std::mem::take(&mut self.data) {
            let port = passive.port();
            // Closed before it is logged: whoever reads the log finds the port free.
            drop(passive);
            tracing::info!(port, "passive port unused for data_timeout: closed");
        }
    }

    /// PORT / EPRT: the data connection will be made to `addr`, the client's own address.
    pub(super) fn port<S>(&mut self, addr: SocketAddr, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        if self.epsv_all {
            conn.reply("503 EPSV ALL was given: only EPSV is allowed.");
        } else if addr.ip().to_canonical() != self.peer.addr.ip().to_canonical()
            || addr.port() < 1024
        {
            // FTP bounce (RFC 2577): only the client itself, never a privileged port.
            tracing::warn!(to = %addr, "PORT to another address or a privileged port refused");
            conn.reply("500 Illegal PORT command: only your own address and ports from 1024.");
        } else {
            self.data = Pending::Active(addr);
            conn.reply("200 PORT command successful. Consider using PASV.");
        }
    }

    /// Runs the transfer a command prepared, or answers why it could not be prepared.
    pub(super) async fn start_transfer<S>(
        &mut self,
        prepared: io::Result<Transfer>,
        conn: &mut LineConn<S>,
    ) -> Flow
    where
        S: SessionStream,
    {
        match prepared {
            Ok(transfer) => self.transfer(transfer, conn).await,
            Err(err) => {
                self.data = Pending::None;
                conn.reply(&fs_error(&err));
                Flow::Continue
            }
        }
    }

    /// Opens the data connection, runs the transfer, and keeps reading the control
    /// connection meanwhile: ABOR stops the transfer, STAT and NOOP are answered, anything
    /// else waits until the transfer is over.
    async fn transfer<S>(&mut self, transfer: Transfer, conn: &mut LineConn<S>) -> Flow
    where
        S: SessionStream,
    {
        let timeout = self.ftp.config.data_timeout();
        let tcp = match std::mem::take(&mut self.data) {
            Pending::None => {
                conn.reply("425 Use PORT or PASV first.");
                return Flow::Continue;
            }
            Pending::Passive(passive) => {
                let expect = (!self.ftp.config.passive_any_address).then_some(self.peer.addr.ip());
                passive::accept(passive, expect, timeout).await
            }
            Pending::Active(addr) => data::connect(addr, timeout).await,
        };
        let tcp = match tcp {
            Ok(tcp) => tcp,
            Err(err) => {
                tracing::info!(error = %err, "no data connection");
                conn.reply("425 Failed to establish the data connection.");
                return Flow::Continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let what = match &transfer {
            Transfer::Send { path, size, .. } => format!("{} ({size} bytes)", path.display()),
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
            return Flow::Close;
        }
        let stream = if self.protected {
            match self.data_tls(tcp).await {
                Ok(stream) => stream,
                Err(reply) => {
                    conn.reply(reply);
                    return Flow::Continue;
                }
            }
        } else {
            DataStream::Plain(tcp)
        };

        let progress = Progress::default();
        let ascii = self.ascii;
        let started = (SystemTime::now(), Instant::now());
        let throttle = self.throttle().await;
        let (direction, path, outcome) = {
            let job_progress = progress.clone();
            match transfer {
                Transfer::Send {
                    file,
                    path,
                    size,
                    offset,
                } => {
                    let left = size.saturating_sub(offset);
                    let job = data::send_file(
                        stream,
                        file,
                        offset,
                        left,
                        ascii,
                        timeout,
                        job_progress,
                        throttle,
                    );
                    let outcome = self.while_transferring(job, &progress, conn).await;
                    ("sent", Some(path), outcome)
                }
                Transfer::Listing(bytes) => {
                    let job = data::send_bytes(stream, bytes, timeout);
                    let outcome = self.while_transferring(job, &progress, conn).await;
                    ("listed", None, outcome)
                }
                Transfer::Receive { mut file, path } => {
                    // An lseek on an open descriptor: it never waits on the disk.
                    let start = std::io::Seek::stream_position(&mut file);
                    // The job only borrows the file: ABOR or a lost control connection drop
                    // the job, and the upload is still settled below.
                    let job = data::receive_file(
                        stream,
                        &mut file,
                        ascii,
                        timeout,
                        job_progress,
                        throttle,
                    );
                    let outcome = self.while_transferring(job, &progress, conn).await;
                    self.settle_upload(file, start, &path, &outcome).await;
                    ("received", Some(path), outcome)
                }
            }
        };
        let shown = path.as_ref().map(VPath::display).unwrap_or_default();
        if path.is_some() {
            let bytes = match &outcome {
                Outcome::Done(Ok(bytes)) => *bytes,
                _ => progress.load(Ordering::Relaxed),
            };
            self.log_transfer(&shown, direction == "received", bytes, started, &outcome)
                .await;
        }
        match outcome {
            Outcome::Done(Ok(bytes)) => {
                if path.is_some() {
                    tracing::info!(path = %shown, bytes, "{direction}");
                }
                conn.reply("226 Transfer complete.");
                Flow::Continue
            }
            Outcome::Done(Err(err)) => {
                let bytes = progress.load(Ordering::Relaxed);
                if direction == "received" {
                    tracing::warn!(path = %shown, bytes, error = %err, "upload interrupted; partial file kept");
                } else {
                    tracing::info!(path = %shown, bytes, error = %err, "transfer failed");
                }
                if storage_full(&err) {
                    conn.reply("452 Insufficient storage space; the upload was removed.");
                } else if err.kind() == io::ErrorKind::TimedOut {
                    conn.reply("426 Data connection timed out; transfer aborted.");
                } else {
                    conn.reply("426 Connection closed; transfer aborted.");
                }
                Flow::Continue
            }
            Outcome::Aborted => {
                let bytes = progress.load(Ordering::Relaxed);
                tracing::info!(path = %shown, bytes, "transfer aborted by the client");
                conn.reply("426 Transfer aborted.");
                conn.reply("226 ABOR successful.");
                Flow::Continue
            }
            Outcome::ControlGone => {
                if direction == "received" {
                    let bytes = progress.load(Ordering::Relaxed);
                    tracing::warn!(path = %shown, bytes, "control connection lost mid-upload; partial file kept");
                }
                Flow::Close
            }
        }
    }

    /// After an upload however it ended (done, failed, aborted, control connection gone).
    /// A full disk undoes it: truncated back to where it began, or removed if it began the
    /// file, so no client sees a half-written file and the space goes back. Otherwise whatever
    /// arrived stays (so REST can resume it), and anything past it left by an earlier, longer
    /// upload resumed with REST is cut, so SIZE tells where to resume.
    async fn settle_upload(
        &self,
        mut file: std::fs::File,
        start: io::Result<u64>,
        path: &VPath,
        outcome: &Outcome,
    ) {
        match (outcome, start) {
            (Outcome::Done(Err(err)), Ok(start)) if storage_full(err) => {
                let _ = blocking(move || file.set_len(start)).await;
                if start == 0 {
                    if let State::Ready { fs, .. } = &self.state {
                        let _ = fs.remove_file(path).await;
                    }
                }
            }
            _ => {
                let _ = blocking(move || cut_after_position(&mut file)).await;
            }
        }
    }

    /// The limits of this session's next file transfer: the user's `ftp_max_rate` extra
    /// field, else `[ftp] max_rate`, and the shared `max_rate_total`.
    async fn throttle(&self) -> Throttle {
        let mut rate = self.ftp.config.max_rate;
        if let State::Ready { user, fs } = &self.state {
            if !fs.read_only() {
                let (ftp, name) = (self.ftp.clone(), user.clone());
                // The users file may be re-read: disk work, so on the blocking pool.
                let found = blocking(move || Ok(ftp.auth.lookup(&name))).await;
                let field = found
                    .ok()
                    .flatten()
                    .and_then(|u| u.extra_field("ftp_max_rate").map(str::to_owned));
                if let Some(field) = field {
                    match field.parse() {
                        Ok(own) => rate = own,
                        Err(_) => tracing::warn!(
                            value = %field,
                            "ftp_max_rate in the users file is not a number of bytes per second; [ftp] max_rate applies"
                        ),
                    }
                }
            }
        }
        Throttle::new(rate, self.ftp.shared_rate.clone())
    }

    /// The transfer's xferlog line; `started` is when its data began to move.
    async fn log_transfer(
        &self,
        path: &str,
        incoming: bool,
        bytes: u64,
        started: (SystemTime, Instant),
        outcome: &Outcome,
    ) {
        let (user, anonymous) = match &self.state {
            State::Ready { user, fs } => (user.as_str(), fs.read_only() && user == "anonymous"),
            State::Login { .. } => return,
        };
        let entry = Entry {
            finished: started.0 + started.1.elapsed(),
            duration: started.1.elapsed(),
            host: self.peer.addr.ip(),
            bytes,
            path,
            ascii: self.ascii,
            incoming,
            anonymous,
            user,
            complete: matches!(outcome, Outcome::Done(Ok(_))),
        };
        self.ftp.xferlog.record(&entry).await;
    }

    async fn while_transferring<S, F>(
        &mut self,
        job: F,
        progress: &Progress,
        conn: &mut LineConn<S>,
    ) -> Outcome
    where
        S: SessionStream,
        F: std::future::Future<Output = io::Result<u64>>,
    {
        let mut job = std::pin::pin!(job);
        let mut line = Vec::new();
        loop {
            tokio::select! {
                result = &mut job => return Outcome::Done(result),
                // Cancel-safe: a line half read when the transfer ends is finished by the
                // command loop.
                input = conn.read_line(&mut line) => match input {
                    Ok(Line::Complete) => match parse(&line) {
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
                        // Answered after the transfer. Bounded: a client that floods commands
                        // mid-transfer is cut off.
                        _ => {
                            if !conn.defer(Line::Complete, std::mem::take(&mut line)) {
                                return Outcome::ControlGone;
                            }
                        }
                    },
                    Ok(Line::TooLong) => {
                        if !conn.defer(Line::TooLong, Vec::new()) {
                            return Outcome::ControlGone;
                        }
                    }
                    Ok(Line::Eof) | Err(_) => return Outcome::ControlGone,
                },
            }
        }
    }
}
