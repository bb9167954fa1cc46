//! One FTP control connection: login, AUTH TLS, the file commands, and transfers over a data
//! connection during which the control connection is still read (ABOR, STAT, NOOP).
//!
//! The session is the runtime's line-protocol skeleton ([`LineProtocol`], [`serve_lines`])
//! driven by FTP's commands: AUTH TLS answers [`Flow::StartTls`] and the same session goes on
//! over TLS. A transfer reads the control connection itself (ABOR), putting aside for the
//! command loop what must wait.
//!
//! Where each command is handled:
//!
//! | file | commands |
//! |---|---|
//! | `mod.rs` | the session, its [`LineProtocol`] side and dispatch; QUIT, NOOP |
//! | `control.rs` | (no command) the control connection's stream (urgent data for ABOR) |
//! | `settings.rs` | FEAT, HELP, SYST, OPTS, STAT without a path, TYPE, MODE, STRU |
//! | `login.rs` | USER, PASS |
//! | `tls.rs` | AUTH TLS, PBSZ, PROT, CCC; implicit TLS; TLS on data connections |
//! | `directories.rs` | PWD, CWD, CDUP, MKD, RMD, LIST, NLST, MLSD, STAT with a path |
//! | `files.rs` | RETR, STOR, APPE, STOU, DELE, RNFR, RNTO, SIZE, MDTM, MLST |
//! | `site.rs` | SITE CHMOD, SITE UMASK, SITE HELP |
//! | `transfer.rs` | PASV, EPSV, PORT, EPRT, REST, ABOR; the data connection of a transfer |

mod control;
mod directories;
mod files;
mod login;
mod settings;
mod site;
mod tls;
mod transfer;

use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;

use inetkit_runtime::conn::{Farewell, LineConn};
use inetkit_runtime::log::End;
use inetkit_runtime::server::Peer;
use inetkit_runtime::session::{serve_lines, Flow, LineProtocol, SessionStream};

use crate::command::{parse, Command};
use crate::data::Pending;
use crate::fs::{RestBeyondEnd, UserFs, VPath};
use crate::Ftp;

use self::control::ControlStream;
use self::tls::SessionTls;

enum State {
    Login { user: Option<String>, failures: u32 },
    Ready { user: String, fs: UserFs },
}

/// What a transfer command asks for once the data connection is up.
enum Transfer {
    /// A download of `size` bytes from `offset` on (REST).
    Send {
        file: std::fs::File,
        path: VPath,
        size: u64,
        offset: u64,
    },
    Listing(Vec<u8>),
    Receive {
        file: std::fs::File,
        path: VPath,
    },
}

pub(crate) struct Session {
    ftp: Arc<Ftp>,
    peer: Peer,
    /// This session's TLS setup, when the daemon has a certificate.
    tls: Option<SessionTls>,
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
    let tls = ftp.tls.as_ref().map(SessionTls::new);
    // The control connection's handshakes (implicit, AUTH TLS) use the session's own context,
    // so that its data connections can resume its TLS session and no other.
    let control_tls = tls.as_ref().map(SessionTls::control);
    let session = Session {
        tls,
        ftp,
        peer: peer.clone(),
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
    serve_lines(
        session,
        ControlStream(stream),
        peer,
        control_tls,
        implicit_tls,
    )
    .await;
}

impl LineProtocol for Session {
    /// Paths up to PATH_MAX and then some.
    const MAX_LINE: usize = 8192;
    const FAREWELL: Farewell = Farewell {
        idle: "421 Timeout.",
        shutdown: "421 Server shutting down.",
        login: "421 Login timed out.",
    };

    fn greeting(&self) -> String {
        "220 inetkit FTP server ready.".to_owned()
    }

    async fn handle_line<S: SessionStream>(&mut self, line: &[u8], conn: &mut LineConn<S>) -> Flow {
        match parse(line) {
            Ok(command) => self.handle(command, conn).await,
            Err(err) => {
                conn.reply(&err.reply());
                Flow::Continue
            }
        }
    }

    fn line_too_long<S: SessionStream>(&mut self, conn: &mut LineConn<S>) -> Flow {
        conn.reply("500 Command line too long.");
        Flow::Continue
    }

    /// A passive port waits for its data connection only so long.
    fn deadline(&self) -> Option<Instant> {
        self.data.expires()
    }

    fn deadline_passed(&mut self) {
        self.passive_expired();
    }
}

impl Session {
    /// May this client send a password now (`tls`: the control connection is encrypted)?
    fn plaintext_allowed(&self, tls: bool) -> bool {
        self.ftp.auth.plaintext_allowed(self.peer.addr.ip(), tls)
    }

    /// The commands that work logged in or not.
    async fn handle<S>(&mut self, command: Command, conn: &mut LineConn<S>) -> Flow
    where
        S: SessionStream,
    {
        match command {
            Command::Quit => {
                self.peer.log.ended(End::Quit);
                conn.reply("221 Goodbye.");
                return Flow::Close;
            }
            Command::Noop => conn.reply("200 NOOP ok."),
            Command::Syst => settings::syst(conn),
            Command::Feat => self.feat(conn),
            Command::Help => settings::help(conn),
            Command::Opts(option) => settings::opts(&option, conn),
            Command::Auth(mechanism) => return self.auth_tls(&mechanism, conn),
            Command::Pbsz(_) => self.pbsz(conn),
            Command::Prot(level) => self.prot(&level, conn),
            Command::Ccc => tls::ccc(conn),
            Command::Type(kind) => self.type_(&kind, conn),
            Command::Mode(mode) => settings::mode(&mode, conn),
            Command::Stru(stru) => settings::stru(&stru, conn),
            Command::User(name) => self.user(name, conn),
            Command::Pass(password) => return self.pass(password, conn).await,
            Command::Stat(None) => self.status(conn),
            Command::Abor => self.abor_idle(conn),
            command => {
                if matches!(self.state, State::Ready { .. }) {
                    return self.logged_in(command, conn).await;
                }
                conn.reply("530 Please login with USER and PASS.");
            }
        }
        Flow::Continue
    }

    /// The commands that need a login.
    async fn logged_in<S>(&mut self, command: Command, conn: &mut LineConn<S>) -> Flow
    where
        S: SessionStream,
    {
        let State::Ready { fs, .. } = &mut self.state else {
            return Flow::Continue;
        };
        // RNTO must follow RNFR directly; REST the transfer it is for.
        let rename_from = self.rename_from.take();
        let rest = std::mem::take(&mut self.rest);
        match command {
            Command::Pwd => directories::pwd(fs, conn),
            Command::Cwd(path) => directories::cwd(fs, &path, conn).await,
            Command::Cdup => directories::cwd(fs, "..", conn).await,
            Command::Stat(Some(path)) => directories::stat(fs, &path, conn).await,
            Command::Mkd(path) => directories::mkd(fs, &path, conn).await,
            Command::Rmd(path) => directories::rmd(fs, &path, conn).await,
            Command::Size(path) => files::size(fs, &path, conn).await,
            Command::Mdtm(path) => files::mdtm(fs, &path, conn).await,
            Command::Mlst(path) => files::mlst(fs, path.as_deref(), conn).await,
            Command::Dele(path) => files::dele(fs, &path, conn).await,
            Command::Rnfr(path) => self.rename_from = files::rnfr(fs, &path, conn).await,
            Command::Rnto(path) => files::rnto(fs, rename_from, &path, conn).await,
            Command::Site(arg) => site::site(fs, &self.ftp.config, &arg, conn).await,
            Command::Rest(offset) => self.rest(offset, conn),
            Command::Pasv => self.passive(false, conn),
            Command::Epsv(arg) => self.epsv(arg.as_deref(), conn),
            Command::Port(addr) | Command::Eprt(addr) => self.port(addr, conn),
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
                let listing = directories::list(fs, arg.as_deref()).await;
                return self
                    .start_transfer(listing.map(Transfer::Listing), conn)
                    .await;
            }
            Command::Nlst(arg) => {
                let listing = directories::nlst(fs, arg.as_deref()).await;
                return self
                    .start_transfer(listing.map(Transfer::Listing), conn)
                    .await;
            }
            Command::Mlsd(arg) => {
                let listing = directories::mlsd(fs, arg.as_deref()).await;
                return self
                    .start_transfer(listing.map(Transfer::Listing), conn)
                    .await;
            }
            Command::Retr(path) => {
                let opened = files::retr(fs, &path, rest).await;
                return self.start_transfer(opened, conn).await;
            }
            Command::Stor(path) => {
                let opened = files::stor(fs, &path, rest).await;
                return self.start_transfer(opened, conn).await;
            }
            Command::Appe(path) => {
                let opened = files::appe(fs, &path).await;
                return self.start_transfer(opened, conn).await;
            }
            Command::Stou(base) => {
                let opened = files::stou(fs, base.as_deref()).await;
                return self.start_transfer(opened, conn).await;
            }
            // Handled before logging in.
            _ => conn.reply("502 Command not implemented."),
        }
        Flow::Continue
    }
}

/// A path in a 257 reply: quoted, with quotes inside doubled (RFC 959 appendix II).
fn quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

/// The reply for a failed file operation; the detail stays in our log.
fn fs_error(err: &io::Error) -> String {
    tracing::debug!(error = %err, "file operation failed");
    if let Some(rest) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<RestBeyondEnd>())
    {
        // RFC 3659 §5.5: 554 for a REST the transfer cannot honour.
        return format!(
            "554 Restart position {} is beyond the end of the file ({} bytes); nothing was written.",
            rest.offset, rest.size
        );
    }
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
    fn quotes_are_doubled() {
        assert_eq!(quote("/a\"b"), "\"/a\"\"b\"");
    }
}
