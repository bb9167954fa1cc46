//! Commands about the session itself rather than files: FEAT, HELP, SYST, OPTS, STAT without
//! a path, TYPE, MODE, STRU.

use inetkit_runtime::conn::LineConn;
use inetkit_runtime::session::SessionStream;

use super::{Session, State};

pub(super) fn syst<S>(conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    conn.reply("215 UNIX Type: L8");
}

pub(super) fn help<S>(conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    conn.reply("214-The following commands are recognized:");
    conn.reply(" ABOR APPE AUTH CCC CDUP CWD DELE EPRT EPSV FEAT HELP LIST MDTM MKD");
    conn.reply(" MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD QUIT REST");
    conn.reply(" RETR RMD RNFR RNTO SITE SIZE STAT STOR STOU STRU SYST TYPE USER");
    conn.reply(&format!(" SITE {}", super::site::SITE_COMMANDS));
    conn.reply("214 Help OK.");
}

pub(super) fn opts<S>(option: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    let upper = option.to_ascii_uppercase();
    if upper == "UTF8 ON" || upper == "UTF-8 ON" {
        conn.reply("200 Always in UTF8 mode.");
    } else if upper.starts_with("MLST ") {
        conn.reply("200 MLST OPTS type;size;modify;perm;unique;");
    } else {
        conn.reply("501 Option not understood.");
    }
}

pub(super) fn mode<S>(mode: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    match mode.to_ascii_uppercase().as_str() {
        "S" => conn.reply("200 Mode set to S."),
        _ => conn.reply("504 Only MODE S is supported."),
    }
}

pub(super) fn stru<S>(stru: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    match stru.to_ascii_uppercase().as_str() {
        "F" => conn.reply("200 Structure set to F."),
        _ => conn.reply("504 Only STRU F is supported."),
    }
}

impl Session {
    pub(super) fn feat<S>(&self, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        conn.reply("211-Features:");
        if self.tls.is_some() {
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
            " SITE CHMOD",
            " SITE HELP",
            " SITE UMASK",
            " SIZE",
            " TVFS",
            " UTF8",
        ] {
            conn.reply(feature);
        }
        conn.reply("211 End");
    }

    /// TYPE: `type` is a keyword, hence the underscore.
    pub(super) fn type_<S>(&mut self, kind: &str, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        match kind.to_ascii_uppercase().as_str() {
            "A" | "A N" => {
                self.ascii = true;
                conn.reply("200 Switching to ASCII mode.");
            }
            "I" | "L 8" => {
                self.ascii = false;
                conn.reply("200 Switching to Binary mode.");
            }
            _ => conn.reply("504 Only TYPE A and I are supported."),
        }
    }

    /// STAT without an argument: the session's state.
    pub(super) fn status<S>(&self, conn: &mut LineConn<S>)
    where
        S: SessionStream,
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
            if conn.is_tls() { "TLS" } else { "plain" },
            if self.protected { "TLS" } else { "plain" }
        ));
        conn.reply("211 End of status");
    }
}
