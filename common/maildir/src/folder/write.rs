//! Adding a message to a folder: written to `tmp/`, fsynced, renamed into `new/` or `cur/`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::faults::{self, Step};
use crate::fsutil::{self};
use crate::index::Sub;
use crate::maildir::{cur_name, new_name, unique_name, SizeCounter};
use crate::{Flags, StoreError};

use super::{Folder, NAME_ATTEMPTS};

impl Folder {
    /// Writes the message to `tmp/`, fsyncs it, and renames it into `new/` or `cur/` under a
    /// name that no existing file has. Returns the final path, the base, the sizes and the
    /// still open file.
    pub(super) fn write_message(
        &self,
        message: &mut dyn Read,
        date: SystemTime,
        sub: Sub,
        flags: Flags,
    ) -> Result<(PathBuf, String, SizeCounter, File), StoreError> {
        let (tmp, file, sizes) = self.write_tmp(message, date)?;
        let (path, base) = match self.place(&tmp, date, sub, flags, &sizes) {
            Ok(placed) => placed,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
        };
        if let Err(err) = fsutil::sync_dir(&self.path.join(sub.dir())) {
            // Not known to be durable: report failure, and leave nothing behind that a retry
            // would duplicate.
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        Ok((path, base, sizes, file))
    }

    /// Renames a message written to `tmp/` into `new/` or `cur/` under a base no file has yet
    /// (the caller syncs the directory). Returns the final path and the base; on error `tmp`
    /// is left for the caller to remove.
    pub(super) fn place(
        &self,
        tmp: &Path,
        date: SystemTime,
        sub: Sub,
        flags: Flags,
        sizes: &SizeCounter,
    ) -> Result<(PathBuf, String), StoreError> {
        let dir = self.path.join(sub.dir());
        for _ in 0..NAME_ATTEMPTS {
            let base = format!("{},S={},W={}", unique_name(date), sizes.size, sizes.vsize);
            let name = match sub {
                Sub::New => new_name(&base, flags),
                Sub::Cur => cur_name(&base, flags),
            };
            let path = dir.join(&name);
            match faults::check(Step::Place).and_then(|()| fsutil::rename_noreplace(tmp, &path)) {
                Ok(()) => return Ok((path, base)),
                Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(StoreError::io("renaming", tmp, err)),
            }
        }
        Err(StoreError::io(
            "naming",
            tmp,
            std::io::Error::new(ErrorKind::AlreadyExists, "no unique name found"),
        ))
    }

    pub(super) fn write_tmp(
        &self,
        message: &mut dyn Read,
        date: SystemTime,
    ) -> Result<(PathBuf, File, SizeCounter), StoreError> {
        let tmp_dir = self.path.join("tmp");
        let mut attempt = 0;
        let (path, mut file) = loop {
            let path = tmp_dir.join(unique_name(date));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == ErrorKind::AlreadyExists && attempt < NAME_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(StoreError::io("creating", &path, err)),
            }
        };
        let result = (|| {
            faults::check(Step::WriteTmp).map_err(|err| StoreError::io("writing", &path, err))?;
            fsutil::chown_file(&file, &path, self.owner)?;
            let mut sizes = SizeCounter::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match message.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => return Err(StoreError::Input(err)),
                };
                sizes.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(|err| StoreError::io("writing", &path, err))?;
            }
            file.sync_all()
                .map_err(|err| StoreError::io("syncing", &path, err))?;
            Ok(sizes)
        })();
        match result {
            Ok(sizes) => Ok((path, file, sizes)),
            Err(err) => {
                drop(file);
                let _ = std::fs::remove_file(&path);
                Err(err)
            }
        }
    }
}
