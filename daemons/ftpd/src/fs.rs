//! A user's confined file tree.
//!
//! Client paths are first resolved lexically against the virtual working directory (so `..`
//! stops at the user's root and an absolute path starts there), then every operation goes
//! through a `cap_std::fs::Dir` opened on the root, which refuses whatever would lead outside
//! it: a symlink to `/`, a `..` hidden behind a symlink, an absolute symlink.

use std::io;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Metadata, OpenOptions};

/// The most path components a client path may have.
const MAX_DEPTH: usize = 256;

/// A path inside the user's tree, as components below the root (never `.`, `..` or empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VPath(Vec<String>);

impl VPath {
    /// The path relative to the root, as cap-std takes it.
    pub(crate) fn rel(&self) -> PathBuf {
        if self.0.is_empty() {
            PathBuf::from(".")
        } else {
            self.0.iter().collect()
        }
    }

    /// The path as the client sees it (`/a/b`).
    pub(crate) fn display(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component (the root is `/`).
    pub(crate) fn name(&self) -> &str {
        self.0.last().map_or("/", String::as_str)
    }

    pub(crate) fn join(&self, name: &str) -> VPath {
        let mut path = self.clone();
        path.0.push(name.to_owned());
        path
    }
}

/// The error for names a client may not use.
pub(crate) fn bad_name() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "file name not allowed")
}

pub(crate) struct UserFs {
    root: Dir,
    cwd: VPath,
    pub read_only: bool,
}

impl UserFs {
    /// Opens `root`; with `create`, makes it first if it does not exist (a user without a
    /// home field, on first login).
    pub(crate) fn open(root: &Path, create: bool, read_only: bool) -> io::Result<UserFs> {
        if create {
            std::fs::create_dir_all(root)?;
        }
        let root = Dir::open_ambient_dir(root, ambient_authority())?;
        Ok(UserFs {
            root,
            cwd: VPath::default(),
            read_only,
        })
    }

    pub(crate) fn cwd(&self) -> &VPath {
        &self.cwd
    }

    /// Resolves a client path against the working directory, without touching the disk.
    /// NUL, CR and LF are refused: no file name of ours holds them.
    pub(crate) fn resolve(&self, arg: &str) -> io::Result<VPath> {
        if arg.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
            return Err(bad_name());
        }
        let mut parts = if arg.starts_with('/') {
            Vec::new()
        } else {
            self.cwd.0.clone()
        };
        for part in arg.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name => parts.push(name.to_owned()),
            }
            if parts.len() > MAX_DEPTH {
                return Err(bad_name());
            }
        }
        Ok(VPath(parts))
    }

    /// CWD: the target must be a directory reachable inside the root.
    pub(crate) fn change_dir(&mut self, arg: &str) -> io::Result<()> {
        let path = self.resolve(arg)?;
        if !self.root.metadata(path.rel())?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        self.cwd = path;
        Ok(())
    }

    /// Metadata following symlinks (inside the root only).
    pub(crate) fn metadata(&self, path: &VPath) -> io::Result<Metadata> {
        self.root.metadata(path.rel())
    }

    pub(crate) fn open_read(&self, path: &VPath) -> io::Result<std::fs::File> {
        let file = self.root.open(path.rel())?.into_std();
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "not a plain file",
            ));
        }
        Ok(file)
    }

    /// Opens a file to upload into: truncated, appended to, or (REST) written from an offset.
    pub(crate) fn open_write(&self, path: &VPath, mode: WriteMode) -> io::Result<std::fs::File> {
        self.writable(path)?;
        let mut options = OpenOptions::new();
        options.write(true).create(true);
        match mode {
            WriteMode::Truncate => {
                options.truncate(true);
            }
            WriteMode::Append => {
                options.append(true);
            }
            WriteMode::At(_) => {}
        }
        let file = self.root.open_with(path.rel(), &options)?.into_std();
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "not a plain file",
            ));
        }
        if let WriteMode::At(offset) = mode {
            use std::io::Seek;
            let mut file = file;
            file.seek(io::SeekFrom::Start(offset))?;
            return Ok(file);
        }
        Ok(file)
    }

    /// STOU: a new file named after `base` (or `file`) with a unique suffix.
    pub(crate) fn create_unique(&self, base: Option<&str>) -> io::Result<(VPath, std::fs::File)> {
        let base = match base {
            Some(base) => self.resolve(base)?,
            None => self.cwd.join("file"),
        };
        self.writable(&base)?;
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        for _ in 0..100 {
            let path = match &base.0[..] {
                [.., last] => {
                    let mut path = base.clone();
                    let suffix: u32 = rand::random::<u32>() % 1_000_000;
                    *path.0.last_mut().unwrap_or(&mut String::new()) =
                        format!("{last}.{suffix:06}");
                    path
                }
                [] => return Err(bad_name()),
            };
            match self.root.open_with(path.rel(), &options) {
                Ok(file) => return Ok((path, file.into_std())),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unique name found",
        ))
    }

    pub(crate) fn remove_file(&self, path: &VPath) -> io::Result<()> {
        self.writable(path)?;
        self.root.remove_file(path.rel())
    }

    pub(crate) fn remove_dir(&self, path: &VPath) -> io::Result<()> {
        self.writable(path)?;
        self.root.remove_dir(path.rel())
    }

    pub(crate) fn create_dir(&self, path: &VPath) -> io::Result<()> {
        self.writable(path)?;
        self.root.create_dir(path.rel())
    }

    pub(crate) fn rename(&self, from: &VPath, to: &VPath) -> io::Result<()> {
        self.writable(from)?;
        self.writable(to)?;
        self.root.rename(from.rel(), &self.root, to.rel())
    }

    /// The entries of a directory, sorted by name, with their own metadata (a symlink is
    /// listed as a symlink: following it could read outside the root).
    pub(crate) fn list(&self, path: &VPath) -> io::Result<Vec<(String, Metadata)>> {
        let mut entries = Vec::new();
        for entry in self.root.read_dir(path.rel())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match entry.metadata() {
                Ok(meta) => entries.push((name, meta)),
                // Gone since the directory was read.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// Metadata of `path` itself (not following a final symlink).
    pub(crate) fn symlink_metadata(&self, path: &VPath) -> io::Result<Metadata> {
        self.root.symlink_metadata(path.rel())
    }

    fn writable(&self, path: &VPath) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"));
        }
        if path.is_root() {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the root"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    Truncate,
    Append,
    At(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (PathBuf, UserFs) {
        let base = std::env::temp_dir().join(format!(
            "inetkit-ftpd-fs-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(base.join("secret"), b"outside").expect("write");
        std::fs::write(root.join("sub/file"), b"inside").expect("write");
        std::os::unix::fs::symlink("/", root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("../secret", root.join("up")).expect("symlink");
        std::os::unix::fs::symlink("sub/file", root.join("ok")).expect("symlink");
        let fs = UserFs::open(&root, false, false).expect("open");
        (base, fs)
    }

    #[test]
    fn dot_dot_stops_at_the_root() {
        let (base, mut fs) = tree();
        fs.change_dir("sub").expect("cwd");
        assert_eq!(
            fs.resolve("../../../etc/passwd")
                .expect("resolve")
                .display(),
            "/etc/passwd"
        );
        assert_eq!(
            fs.resolve("/sub/./file").expect("resolve").display(),
            "/sub/file"
        );
        assert_eq!(fs.resolve("file").expect("resolve").display(), "/sub/file");
        assert!(fs.resolve("a\0b").is_err());
        assert!(fs.resolve("a\rb").is_err());
        assert!(fs
            .open_read(&fs.resolve("../../../secret").expect("resolve"))
            .is_err());
        std::fs::remove_dir_all(base).ok();
    }

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let (base, mut fs) = tree();
        let root = VPath::default();
        assert!(fs.open_read(&root.join("up")).is_err());
        assert!(fs
            .open_read(&root.join("escape").join("etc").join("passwd"))
            .is_err());
        assert!(fs.change_dir("escape").is_err());
        assert!(fs
            .open_write(&root.join("up"), WriteMode::Truncate)
            .is_err());
        assert_eq!(
            std::fs::read(base.join("secret")).expect("read"),
            b"outside"
        );
        // A symlink that stays inside is followed.
        let mut file = fs.open_read(&root.join("ok")).expect("inside symlink");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).expect("read");
        assert_eq!(text, "inside");
        std::fs::remove_dir_all(base).ok();
    }

    #[test]
    fn read_only_refuses_changes() {
        let (base, mut fs) = tree();
        fs.read_only = true;
        let path = fs.resolve("new").expect("resolve");
        assert!(fs.open_write(&path, WriteMode::Truncate).is_err());
        assert!(fs.create_dir(&path).is_err());
        assert!(fs
            .remove_file(&fs.resolve("sub/file").expect("resolve"))
            .is_err());
        std::fs::remove_dir_all(base).ok();
    }
}
