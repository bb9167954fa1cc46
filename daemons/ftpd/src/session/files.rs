//! Files: RETR, STOR, APPE and STOU open what a transfer reads or writes; DELE, RNFR/RNTO,
//! SIZE, MDTM and MLST answer on the control connection.

use std::io;

use cap_std::fs::Metadata;
use inetkit_runtime::conn::LineConn;
use inetkit_runtime::session::SessionStream;

use crate::fs::{UserFs, VPath, WriteMode};
use crate::listing;

use super::{fs_error, Transfer};

/// The metadata of a client path.
async fn metadata_of(fs: &UserFs, path: &str) -> io::Result<(VPath, Metadata)> {
    let path = fs.resolve(path)?;
    let meta = fs.metadata(&path).await?;
    Ok((path, meta))
}

pub(super) async fn size<S>(fs: &UserFs, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    match metadata_of(fs, path).await {
        Ok((_, meta)) if meta.is_file() => conn.reply(&format!("213 {}", meta.len())),
        Ok(_) => conn.reply("550 Not a plain file."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) async fn mdtm<S>(fs: &UserFs, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    match metadata_of(fs, path).await {
        Ok((_, meta)) if meta.is_file() => conn.reply(&format!(
            "213 {}",
            listing::timeval(listing::modified(&meta))
        )),
        Ok(_) => conn.reply("550 Not a plain file."),
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) async fn mlst<S>(fs: &UserFs, path: Option<&str>, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    match metadata_of(fs, path.unwrap_or(".")).await {
        Ok((path, meta)) => {
            conn.reply(&format!("250-Listing {}", path.display()));
            conn.reply(&format!(
                " {}",
                listing::facts(&path.display(), &meta, None, !fs.read_only())
            ));
            conn.reply("250 End");
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

pub(super) async fn dele<S>(fs: &UserFs, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    let deleted = async {
        let path = fs.resolve(path)?;
        fs.remove_file(&path).await?;
        Ok(path)
    };
    match deleted.await {
        Ok(path) => {
            tracing::info!(path = %path.display(), "deleted");
            conn.reply("250 Delete operation successful.")
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

/// RNFR: the path RNTO will rename, when it exists and may be changed.
pub(super) async fn rnfr<S>(fs: &UserFs, path: &str, conn: &mut LineConn<S>) -> Option<VPath>
where
    S: SessionStream,
{
    let found = async {
        let path = fs.resolve(path)?;
        fs.symlink_metadata(&path).await?;
        Ok(path)
    };
    match found.await {
        Ok(_) if fs.read_only() => conn.reply("550 Permission denied."),
        Ok(path) => {
            conn.reply("350 Ready for RNTO.");
            return Some(path);
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
    None
}

/// RNTO: `from` is what the RNFR just before named, if any.
pub(super) async fn rnto<S>(fs: &UserFs, from: Option<VPath>, path: &str, conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    let Some(from) = from else {
        conn.reply("503 RNFR required first.");
        return;
    };
    let renamed = async {
        let to = fs.resolve(path)?;
        fs.rename(&from, &to).await?;
        Ok(to)
    };
    match renamed.await {
        Ok(to) => {
            tracing::info!(from = %from.display(), to = %to.display(), "renamed");
            conn.reply("250 Rename successful.");
        }
        Err(err) => conn.reply(&fs_error(&err)),
    }
}

/// RETR, from `rest` on (REST).
pub(super) async fn retr(fs: &UserFs, path: &str, rest: u64) -> io::Result<Transfer> {
    let path = fs.resolve(path)?;
    let (file, size) = fs.open_read(&path, rest).await?;
    Ok(Transfer::Send {
        file,
        path,
        size,
        offset: rest,
    })
}

/// STOR: a new file, or (REST) the rest of one from `rest` on.
pub(super) async fn stor(fs: &UserFs, path: &str, rest: u64) -> io::Result<Transfer> {
    let mode = if rest > 0 {
        WriteMode::At(rest)
    } else {
        WriteMode::Truncate
    };
    let path = fs.resolve(path)?;
    let file = fs.open_write(&path, mode).await?;
    Ok(Transfer::Receive { file, path })
}

/// APPE: appended to the file, made if missing.
pub(super) async fn appe(fs: &UserFs, path: &str) -> io::Result<Transfer> {
    let path = fs.resolve(path)?;
    let file = fs.open_write(&path, WriteMode::Append).await?;
    Ok(Transfer::Receive { file, path })
}

/// STOU: a new file with a name of ours, after `base` if given.
pub(super) async fn stou(fs: &UserFs, base: Option<&str>) -> io::Result<Transfer> {
    let (path, file) = fs.create_unique(base).await?;
    Ok(Transfer::Receive { file, path })
}
