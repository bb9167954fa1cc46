//! SITE commands as vsftpd users know them: CHMOD (within the user's root), UMASK (for this
//! session's STOR and MKD) and HELP.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::fs::UserFs;
use crate::FtpConfig;

use super::fs_error;
use inetkit_runtime::conn::LineConn;

/// setuid, setgid and sticky: refused by SITE CHMOD unless `[ftp] chmod_special_bits`.
const SPECIAL_BITS: u32 = 0o7000;

/// The SITE commands, as HELP and FEAT name them.
pub(super) const SITE_COMMANDS: &str = "CHMOD UMASK HELP";

/// An octal mode of up to four digits (`644`, `0755`, `4755`).
fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8).ok()
}

pub(super) async fn site<S>(fs: &mut UserFs, config: &FtpConfig, arg: &str, conn: &mut LineConn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let arg = arg.trim_start();
    let (verb, rest) = arg.split_once(' ').unwrap_or((arg, ""));
    match verb.to_ascii_uppercase().as_str() {
        "CHMOD" => chmod(fs, config, rest, conn).await,
        "UMASK" => umask(fs, rest.trim(), conn),
        "HELP" => conn.reply(&format!("214 SITE commands: {SITE_COMMANDS}.")),
        _ => conn.reply("500 Unknown SITE command; SITE HELP lists them."),
    }
}

async fn chmod<S>(fs: &UserFs, config: &FtpConfig, arg: &str, conn: &mut LineConn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some((mode, path)) = arg.trim_start().split_once(' ') else {
        conn.reply("501 Usage: SITE CHMOD <octal mode> <path>.");
        return;
    };
    let Some(mode) = parse_mode(mode) else {
        conn.reply("501 SITE CHMOD takes an octal mode such as 644 or 0755.");
        return;
    };
    if mode & SPECIAL_BITS != 0 && !config.chmod_special_bits {
        conn.reply("550 setuid, setgid and sticky bits are not allowed here.");
        return;
    }
    if fs.read_only() {
        conn.reply("550 Permission denied.");
        return;
    }
    let changed = async {
        let path = fs.resolve(path)?;
        fs.chmod(&path, mode).await?;
        Ok(path)
    };
    match changed.await {
        Ok(path) => {
            tracing::info!(path = %path.display(), mode = format!("{mode:04o}"), "chmod");
            conn.reply("200 SITE CHMOD command ok.");
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

fn umask<S>(fs: &mut UserFs, arg: &str, conn: &mut LineConn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if arg.is_empty() {
        match fs.umask() {
            Some(umask) => conn.reply(&format!("200 Your current UMASK is {umask:04o}.")),
            None => conn.reply("200 No UMASK set for this session: the server's applies."),
        }
        return;
    }
    match parse_mode(arg) {
        Some(umask) if umask <= 0o777 => {
            fs.set_umask(umask);
            conn.reply(&format!("200 UMASK set to {umask:04o}."));
        }
        _ => conn.reply("501 SITE UMASK takes an octal mask such as 022 or 077."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_and_short() {
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("8"), None);
        assert_eq!(parse_mode("77777"), None);
        assert_eq!(parse_mode("-1"), None);
        assert_eq!(parse_mode(""), None);
    }
}
