//! Directories and listings: PWD, CWD, CDUP, MKD, RMD, STAT with a path, and the text that
//! LIST, NLST and MLSD send over the data connection.

use std::io;
use std::time::SystemTime;

use inetkit_runtime::conn::LineConn;
use inetkit_runtime::session::SessionStream;

use crate::fs::{Tree, UserFs, VPath};
use crate::listing;

use super::{fs_error, quote};

pub(super) fn pwd<S>(fs: &UserFs, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    conn.reply(&format!(
        "257 {} is the current directory.",
        quote(&fs.cwd().display())
    ));
}

/// CWD, and CDUP as `CWD ..`.
pub(super) async fn cwd<S>(fs: &mut UserFs, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    match fs.change_dir(path).await {
        Ok(()) => conn.reply("250 Directory successfully changed."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) async fn mkd<S>(fs: &UserFs, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    let made = async {
        let path = fs.resolve(path)?;
        fs.create_dir(&path).await?;
        Ok(path)
    };
    match made.await {
        Ok(path) => conn.reply(&format!("257 {} created.", quote(&path.display()))),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) async fn rmd<S>(fs: &UserFs, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    let removed = async { fs.remove_dir(&fs.resolve(path)?).await };
    match removed.await {
        Ok(()) => conn.reply("250 Remove directory operation successful."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

/// STAT with a path: its long listing on the control connection.
pub(super) async fn stat<S>(fs: &UserFs, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    match listing_of(fs, strip_list_options(path), ListKind::Long).await {
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
pub(super) async fn list(fs: &UserFs, arg: Option<&str>) -> io::Result<Vec<u8>> {
    listing_of(fs, strip_list_options(arg.unwrap_or("")), ListKind::Long).await
}

/// NLST: names only.
pub(super) async fn nlst(fs: &UserFs, arg: Option<&str>) -> io::Result<Vec<u8>> {
    listing_of(fs, strip_list_options(arg.unwrap_or("")), ListKind::Names).await
}

/// MLSD: RFC 3659 facts of a directory's entries.
pub(super) async fn mlsd(fs: &UserFs, arg: Option<&str>) -> io::Result<Vec<u8>> {
    let path = fs.resolve(arg.unwrap_or("."))?;
    fs.run(move |tree| {
        if !tree.metadata(&path)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        listing(tree, &path, ListKind::Facts)
    })
    .await
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
async fn listing_of(fs: &UserFs, arg: &str, kind: ListKind) -> io::Result<Vec<u8>> {
    let path = fs.resolve(if arg.is_empty() { "." } else { arg })?;
    fs.run(move |tree| listing(tree, &path, kind)).await
}

/// The listing of `path`, on the blocking pool: one trip for the whole directory.
fn listing(tree: &Tree, path: &VPath, kind: ListKind) -> io::Result<Vec<u8>> {
    let meta = tree.metadata(path)?;
    let now = SystemTime::now();
    let writable = !tree.read_only;
    let mut out = Vec::new();
    let mut line = |name: &str, meta: &cap_std::fs::Metadata| {
        let text = match kind {
            // `name -> target` as ls shows it, for links that stay inside the root.
            ListKind::Long if meta.file_type().is_symlink() => {
                let mut text = listing::ls_line(name, meta, now);
                if let Some(target) = tree.link_target(&path.join(name)) {
                    text.push_str(" -> ");
                    text.push_str(&target);
                }
                text
            }
            ListKind::Long => listing::ls_line(name, meta, now),
            ListKind::Names => name.to_owned(),
            ListKind::Facts => listing::facts(name, meta, None, writable),
        };
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    if meta.is_dir() {
        for (name, meta) in tree.list(path)? {
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
