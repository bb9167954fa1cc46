//! USER and PASS: named users against the users file (over TLS unless plaintext is allowed),
//! and the optional read-only anonymous login.

use inetkit_auth::AuthError;
use inetkit_runtime::conn::LineConn;
use inetkit_runtime::log::End;
use inetkit_runtime::session::SessionStream;

use crate::fs::UserFs;

use super::{Flow, Session, State};

/// Failed logins on one connection before it is closed.
const MAX_FAILURES: u32 = 3;

fn is_anonymous(name: &str) -> bool {
    name.eq_ignore_ascii_case("anonymous") || name.eq_ignore_ascii_case("ftp")
}

impl Session {
    pub(super) fn user<S>(&mut self, name: String, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        let anonymous = is_anonymous(&name);
        let plaintext = self.plaintext_allowed(conn.is_tls());
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

    pub(super) async fn pass<S>(&mut self, password: String, conn: &mut LineConn<S>) -> Flow
    where
        S: SessionStream,
    {
        let name = match &mut self.state {
            State::Login { user, .. } => user.take(),
            State::Ready { .. } => {
                conn.reply("230 Already logged in.");
                return Flow::Continue;
            }
        };
        let Some(name) = name else {
            conn.reply("503 Login with USER first.");
            return Flow::Continue;
        };
        if is_anonymous(&name) {
            let root = self.ftp.config.anonymous_root.clone();
            return match UserFs::open(root, false, true).await {
                Ok(fs) => {
                    self.peer.logged_in("anonymous");
                    tracing::info!("anonymous login");
                    self.state = State::Ready {
                        user: "anonymous".into(),
                        fs,
                    };
                    conn.reply("230 Login successful (read-only).");
                    Flow::Continue
                }
                Err(err) => {
                    tracing::error!(root = %self.ftp.config.anonymous_root.display(), error = %err, "cannot open the anonymous root");
                    conn.reply("421 Service not available.");
                    Flow::Close
                }
            };
        }
        if !self.plaintext_allowed(conn.is_tls()) {
            conn.reply("530 Non-anonymous sessions must use encryption: AUTH TLS first.");
            return Flow::Continue;
        }
        let ip = self.peer.addr.ip();
        let user = match self.ftp.auth.login(ip, &name, password.as_bytes()).await {
            Ok(user) => user,
            Err(AuthError::Throttled) => {
                self.peer.log.ended(End::Closed("login throttled"));
                conn.reply("421 Too many failed logins from your address; try again later.");
                return Flow::Close;
            }
            Err(AuthError::Failed) => {
                conn.reply("530 Login incorrect.");
                if let State::Login { failures, .. } = &mut self.state {
                    *failures += 1;
                    if *failures >= MAX_FAILURES {
                        self.peer.log.ended(End::Closed("too many failed logins"));
                        return Flow::Close;
                    }
                }
                return Flow::Continue;
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                conn.reply("421 Authentication is temporarily unavailable.");
                return Flow::Close;
            }
        };
        // The home field is the user's root; without one, a directory of ours. Either is
        // made on first login, as vsftpd users expect of a new account.
        let root = match &user.home {
            Some(home) => home.clone(),
            None => self.ftp.config.root.join(&user.name),
        };
        match UserFs::open(root.clone(), true, false).await {
            Ok(fs) => {
                self.peer.logged_in(&user.name);
                tracing::info!(root = %root.display(), "logged in");
                self.state = State::Ready {
                    user: user.name,
                    fs,
                };
                conn.reply("230 Login successful.");
                Flow::Continue
            }
            Err(err) => {
                tracing::error!(user = %user.name, root = %root.display(), error = %err, "cannot open the user's root");
                conn.reply("421 Cannot open your directory; try again later.");
                Flow::Close
            }
        }
    }
}
