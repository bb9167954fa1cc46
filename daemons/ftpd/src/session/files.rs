//! Files: RETR, STOR, APPE and STOU open what a transfer reads or writes; DELE, RNFR/RNTO,
//! SIZE, MDTM and MLST answer on the control connection.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::fs::{UserFs, VPath, WriteMode};
use crate::listing;

use super::control::Conn;
use super::{fs_error, Transfer};

pub(super) fn size<S>(fs: &UserFs, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match fs.resolve(path).and_then(|p| fs.metadata(&p)) {
        Ok(meta) if meta.is_file() => conn.reply(&format!("213 {}", meta.len())),
        Ok(_) => conn.reply("550 Not a plain file."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) fn mdtm<S>(fs: &UserFs, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match fs.resolve(path).and_then(|p| fs.metadata(&p)) {
        Ok(meta) if meta.is_file() => conn.reply(&format!(
            "213 {}",
            listing::timeval(listing::modified(&meta))
        )),
        Ok(_) => conn.reply("550 Not a plain file."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) fn mlst<S>(fs: &UserFs, path: Option<&str>, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = fs.resolve(path.unwrap_or("."));
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

pub(super) fn dele<S>(fs: &UserFs, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match fs.resolve(path).and_then(|p| fs.remove_file(&p).map(|_| p)) {
        Ok(p) => {
            tracing::info!(path = %p.display(), "deleted");
            conn.reply("250 Delete operation successful.")
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

/// RNFR: the path RNTO will rename, when it exists and may be changed.
pub(super) fn rnfr<S>(fs: &UserFs, path: &str, conn: &mut Conn<S>) -> Option<VPath>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match fs
        .resolve(path)
        .and_then(|p| fs.symlink_metadata(&p).map(|_| p))
    {
        Ok(_) if fs.read_only => conn.reply("550 Permission denied."),
        Ok(p) => {
            conn.reply("350 Ready for RNTO.");
            return Some(p);
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
    None
}

/// RNTO: `from` is what the RNFR just before named, if any.
pub(super) fn rnto<S>(fs: &UserFs, from: Option<VPath>, path: &str, conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(from) = from else {
        conn.reply("503 RNFR required first.");
        return;
    };
    match fs
        .resolve(path)
        .and_then(|to| fs.rename(&from, &to).map(|_| to))
    {
        Ok(to) => {
            tracing::info!(from = %from.display(), to = %to.display(), "renamed");
            conn.reply("250 Rename successful.");
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

/// RETR, from `rest` on (REST).
pub(super) fn retr(fs: &UserFs, path: &str, rest: u64) -> io::Result<Transfer> {
    let path = fs.resolve(path)?;
    let mut file = fs.open_read(&path)?;
    if rest > 0 {
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(rest))?;
    }
    Ok(Transfer::Send { file, path })
}

/// STOR: a new file, or (REST) the rest of one from `rest` on.
pub(super) fn stor(fs: &UserFs, path: &str, rest: u64) -> io::Result<Transfer> {
    let mode = if rest > 0 {
        WriteMode::At(rest)
    } else {
        WriteMode::Truncate
    };
    let path = fs.resolve(path)?;
    let file = fs.open_write(&path, mode)?;
    Ok(Transfer::Receive { file, path })
}

/// APPE: appended to the file, made if missing.
pub(super) fn appe(fs: &UserFs, path: &str) -> io::Result<Transfer> {
    let path = fs.resolve(path)?;
    let file = fs.open_write(&path, WriteMode::Append)?;
    Ok(Transfer::Receive { file, path })
}

/// STOU: a new file with a name of ours, after `base` if given.
pub(super) fn stou(fs: &UserFs, base: Option<&str>) -> io::Result<Transfer> {
    let (path, file) = fs.create_unique(base)?;
    Ok(Transfer::Receive { file, path })
}
