//! Directories and listings: PWD, CWD, CDUP, MKD, RMD, STAT with a path, and the text that
//! LIST, NLST and MLSD send over the data connection.

use std::io;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::fs::UserFs;
use crate::listing;

use super::control::Conn;
use super::{fs_error, quote};

pub(super) fn pwd<S>(fs: &UserFs, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.reply(&format!(
        "257 {} is the current directory.",
        quote(&fs.cwd().display())
    ));
}

/// CWD, and CDUP as `CWD ..`.
pub(super) fn cwd<S>(fs: &mut UserFs, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match fs.change_dir(path) {
        Ok(()) => conn.reply("250 Directory successfully changed."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) fn mkd<S>(fs: &UserFs, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match fs.resolve(path).and_then(|p| fs.create_dir(&p).map(|_| p)) {
        Ok(p) => conn.reply(&format!("257 {} created.", quote(&p.display()))),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) fn rmd<S>(fs: &UserFs, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match fs.resolve(path).and_then(|p| fs.remove_dir(&p)) {
        Ok(()) => conn.reply("250 Remove directory operation successful."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

/// STAT with a path: its long listing on the control connection.
pub(super) fn stat<S>(fs: &UserFs, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = strip_list_options(path);
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

/// LIST: `ls -l` lines.
pub(super) fn list(fs: &UserFs, arg: Option<&str>) -> io::Result<Vec<u8>> {
    listing_of(fs, strip_list_options(arg.unwrap_or("")), ListKind::Long)
}

/// NLST: names only.
pub(super) fn nlst(fs: &UserFs, arg: Option<&str>) -> io::Result<Vec<u8>> {
    listing_of(fs, strip_list_options(arg.unwrap_or("")), ListKind::Names)
}

/// MLSD: RFC 3659 facts of a directory's entries.
pub(super) fn mlsd(fs: &UserFs, arg: Option<&str>) -> io::Result<Vec<u8>> {
    let path = fs.resolve(arg.unwrap_or("."))?;
    if fs.metadata(&path)?.is_dir() {
        listing_of(fs, &path.display(), ListKind::Facts)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_options_are_dropped() {
        assert_eq!(strip_list_options("-la"), "");
        assert_eq!(strip_list_options("-l -a dir"), "dir");
        assert_eq!(strip_list_options("dir name"), "dir name");
    }
}
