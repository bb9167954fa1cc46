//! A user's confined file tree, and where its disk work runs.
//!
//! Client paths are first resolved lexically against the virtual working directory (so `..`
//! stops at the user's root and an absolute path starts there), then every operation goes
//! through a `cap_std::fs::Dir` opened on the root, which refuses whatever would lead outside
//! it: a symlink to `/`, a `..` hidden behind a symlink, an absolute symlink.
//!
//! # Blocking I/O
//!
//! Filesystem calls block the thread that makes them, for as long as the disk, an NFS server
//! or a huge directory takes, and an async worker that blocks stalls every session it runs.
//! So ftpd makes none on async workers: [`Tree`] holds the synchronous operations, and
//! [`UserFs`], what sessions use, runs each of them on tokio's blocking pool through
//! [`blocking`], the one place that does so. That covers opening files (with the user's root
//! at login), metadata, listing directories, creating, renaming and removing, and the
//! fstat/seek/truncate of files being transferred. The bytes of a transfer are the one
//! exception, by design: `sendfile(2)` and `splice(2)` (plain binary transfers) and the
//! buffered reads and writes (TLS, TYPE A) move them where the transfer runs, a bounded chunk
//! at a time, between the page cache and a socket; a trip to the pool per chunk would cost
//! more than the copy. They only ever touch a regular file, checked on its descriptor when it
//! was opened, so no read or write can wait on a FIFO or a device.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Metadata, OpenOptions, PermissionsExt};

/// Runs a filesystem call on tokio's blocking pool and waits for it there, never on an async
/// worker (see the module doc). A call that panics is an error, not a panic of the session.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(err) => Err(io::Error::other(format!("filesystem call failed: {err}"))),
    }
}

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

/// The error for what is not a regular file (a directory, a FIFO, a device).
fn not_plain() -> io::Error {
    io::Error::new(io::ErrorKind::IsADirectory, "not a plain file")
}

/// REST before an upload pointed past the end of the file: writing there would leave a hole
/// as large as the client likes (`REST 4398046511104` made a 4 TiB sparse file).
#[derive(Debug, thiserror::Error)]
#[error("restart position {offset} is beyond the end of the file ({size} bytes)")]
pub(crate) struct RestBeyondEnd {
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

impl From<RestBeyondEnd> for io::Error {
    fn from(err: RestBeyondEnd) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, err)
    }
}

/// A user's tree: the root, opened once, and the synchronous operations inside it. Shared
/// (`Arc`) so that [`UserFs`] can hand it to the blocking pool.
pub(crate) struct Tree {
    root: Dir,
    pub(crate) read_only: bool,
}

impl Tree {
    /// Opens `root`; with `create`, makes it first if it does not exist (a user's root on
    /// first login).
    pub(crate) fn open(root: &Path, create: bool, read_only: bool) -> io::Result<Tree> {
        if create {
            std::fs::create_dir_all(root)?;
        }
        let root = Dir::open_ambient_dir(root, ambient_authority())?;
        Ok(Tree { root, read_only })
    }

    /// Whether `path` is a directory reachable inside the root.
    pub(crate) fn is_dir(&self, path: &VPath) -> io::Result<bool> {
        Ok(self.root.metadata(path.rel())?.is_dir())
    }

    /// Metadata following symlinks (inside the root only).
    pub(crate) fn metadata(&self, path: &VPath) -> io::Result<Metadata> {
        self.root.metadata(path.rel())
    }

    pub(crate) fn open_read(&self, path: &VPath) -> io::Result<std::fs::File> {
        self.open_regular(path, OpenOptions::new().read(true))
    }

    /// Opens a file to upload into: truncated, appended to, or (REST) written from an offset
    /// no further than its end.
    /// With a session `umask` (SITE UMASK), a file this makes gets exactly `0666 & !umask`.
    pub(crate) fn open_write(
        &self,
        path: &VPath,
        mode: WriteMode,
        umask: Option<u32>,
    ) -> io::Result<std::fs::File> {
        self.writable(path)?;
        if let (Some(umask), WriteMode::Truncate | WriteMode::Append) = (umask, mode) {
            // Made new here, or else opened as it is: an existing file keeps its mode.
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            match self.open_regular(path, &options) {
                Ok(file) => {
                    // fchmod: the process umask must not take away what the client asked for.
                    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                        0o666 & !umask,
                    ))?;
                    return Ok(file);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(err),
            }
        }
        let mut options = OpenOptions::new();
        options.write(true);
        match mode {
            WriteMode::Truncate => options.create(true).truncate(true),
            WriteMode::Append => options.create(true).append(true),
            // A resumed upload needs the file it resumes: nothing is created.
            WriteMode::At(_) => &mut options,
        };
        let opened = self.open_regular(path, &options);
        let WriteMode::At(offset) = mode else {
            return opened;
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(RestBeyondEnd { offset, size: 0 }.into())
            }
            Err(err) => return Err(err),
        };
        let size = file.metadata()?.len();
        if offset > size {
            return Err(RestBeyondEnd { offset, size }.into());
        }
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(offset))?;
        Ok(file)
    }

    /// Opens `path` if it is a regular file, without waiting: `O_NONBLOCK`, so that opening a
    /// FIFO returns at once (for writing with no reader, ENXIO) instead of waiting for its
    /// other end, then the type checked on the descriptor (no window for a swap between a
    /// check by name and the open). The flag is cleared again for the transfer.
    fn open_regular(&self, path: &VPath, options: &OpenOptions) -> io::Result<std::fs::File> {
        use cap_std::fs::OpenOptionsExt;
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        let mut options = options.clone();
        options.custom_flags(OFlag::O_NONBLOCK.bits());
        let file = match self.root.open_with(path.rel(), &options) {
            Ok(file) => file.into_std(),
            Err(err) if err.raw_os_error() == Some(nix::libc::ENXIO) => return Err(not_plain()),
            Err(err) => return Err(err),
        };
        if !file.metadata()?.is_file() {
            return Err(not_plain());
        }
        let flags = OFlag::from_bits_truncate(fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            file.as_raw_fd(),
            FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK),
        )?;
        Ok(file)
    }

    /// STOU: a new file named after `base` with a unique suffix.
    pub(crate) fn create_unique(&self, base: &VPath) -> io::Result<(VPath, std::fs::File)> {
        self.writable(base)?;
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

    /// MKD; with a session `umask` (SITE UMASK) the directory gets exactly `0777 & !umask`.
    pub(crate) fn create_dir(&self, path: &VPath, umask: Option<u32>) -> io::Result<()> {
        self.writable(path)?;
        self.root.create_dir(path.rel())?;
        if let Some(umask) = umask {
            self.root
                .set_permissions(path.rel(), PermissionsExt::from_mode(0o777 & !umask))?;
        }
        Ok(())
    }

    /// SITE CHMOD: the mode of `path`, a symlink followed only inside the root (cap-std
    /// refuses one that leads out).
    pub(crate) fn chmod(&self, path: &VPath, mode: u32) -> io::Result<()> {
        self.writable(path)?;
        self.root
            .set_permissions(path.rel(), PermissionsExt::from_mode(mode))
    }

    /// What the symlink `path` points at, as written in it, when following it stays inside
    /// the root and reaches something; `None` otherwise (a link out of the root is never
    /// followed, so where it leads is not shown either).
    pub(crate) fn link_target(&self, path: &VPath) -> Option<String> {
        let target = self.root.read_link_contents(path.rel()).ok()?;
        self.root.metadata(path.rel()).ok()?;
        let target = target.to_str()?;
        // A listing line is one line: no name with a line break is shown.
        (!target.contains(['\r', '\n'])).then(|| target.to_owned())
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

/// What sessions use: the user's [`Tree`] and working directory. Every method that touches
/// the disk runs on the blocking pool (see the module doc); `resolve` does not touch it.
#[derive(Clone)]
pub(crate) struct UserFs {
    tree: Arc<Tree>,
    cwd: VPath,
    /// SITE UMASK, for this session's STOR and MKD; `None`: the process umask alone.
    umask: Option<u32>,
}

impl UserFs {
    /// Opens the user's root (see [`Tree::open`]).
    pub(crate) async fn open(root: PathBuf, create: bool, read_only: bool) -> io::Result<UserFs> {
        let tree = blocking(move || Tree::open(&root, create, read_only)).await?;
        Ok(UserFs {
            tree: Arc::new(tree),
            cwd: VPath::default(),
            umask: None,
        })
    }

    pub(crate) fn read_only(&self) -> bool {
        self.tree.read_only
    }

    pub(crate) fn umask(&self) -> Option<u32> {
        self.umask
    }

    pub(crate) fn set_umask(&mut self, umask: u32) {
        self.umask = Some(umask & 0o777);
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

    /// Runs `f` on the user's tree on the blocking pool: for work of several calls (a listing).
    pub(crate) async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce(&Tree) -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let tree = self.tree.clone();
        blocking(move || f(&tree)).await
    }

    /// CWD: the target must be a directory reachable inside the root.
    pub(crate) async fn change_dir(&mut self, arg: &str) -> io::Result<()> {
        let path = self.resolve(arg)?;
        let target = path.clone();
        if !self.run(move |tree| tree.is_dir(&target)).await? {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        self.cwd = path;
        Ok(())
    }

    pub(crate) async fn metadata(&self, path: &VPath) -> io::Result<Metadata> {
        let path = path.clone();
        self.run(move |tree| tree.metadata(&path)).await
    }

    pub(crate) async fn symlink_metadata(&self, path: &VPath) -> io::Result<Metadata> {
        let path = path.clone();
        self.run(move |tree| tree.symlink_metadata(&path)).await
    }

    /// Opens a file to download, positioned at `offset` (REST); with the file's size.
    pub(crate) async fn open_read(
        &self,
        path: &VPath,
        offset: u64,
    ) -> io::Result<(std::fs::File, u64)> {
        let path = path.clone();
        self.run(move |tree| {
            let mut file = tree.open_read(&path)?;
            let size = file.metadata()?.len();
            if offset > 0 {
                use std::io::Seek;
                file.seek(io::SeekFrom::Start(offset))?;
            }
            Ok((file, size))
        })
        .await
    }

    pub(crate) async fn open_write(
        &self,
        path: &VPath,
        mode: WriteMode,
    ) -> io::Result<std::fs::File> {
        let (path, umask) = (path.clone(), self.umask);
        self.run(move |tree| tree.open_write(&path, mode, umask))
            .await
    }

    /// STOU: a new file named after `base` (or `file`) with a unique suffix.
    pub(crate) async fn create_unique(
        &self,
        base: Option<&str>,
    ) -> io::Result<(VPath, std::fs::File)> {
        let base = match base {
            Some(base) => self.resolve(base)?,
            None => self.cwd.join("file"),
        };
        self.run(move |tree| tree.create_unique(&base)).await
    }

    pub(crate) async fn remove_file(&self, path: &VPath) -> io::Result<()> {
        let path = path.clone();
        self.run(move |tree| tree.remove_file(&path)).await
    }

    pub(crate) async fn remove_dir(&self, path: &VPath) -> io::Result<()> {
        let path = path.clone();
        self.run(move |tree| tree.remove_dir(&path)).await
    }

    pub(crate) async fn create_dir(&self, path: &VPath) -> io::Result<()> {
        let (path, umask) = (path.clone(), self.umask);
        self.run(move |tree| tree.create_dir(&path, umask)).await
    }

    pub(crate) async fn chmod(&self, path: &VPath, mode: u32) -> io::Result<()> {
        let path = path.clone();
        self.run(move |tree| tree.chmod(&path, mode)).await
    }

    pub(crate) async fn rename(&self, from: &VPath, to: &VPath) -> io::Result<()> {
        let (from, to) = (from.clone(), to.clone());
        self.run(move |tree| tree.rename(&from, &to)).await
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
    use std::os::unix::fs::MetadataExt;

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
        let tree = Tree::open(&root, false, false).expect("open");
        let fs = UserFs {
            tree: Arc::new(tree),
            cwd: VPath::default(),
            umask: None,
        };
        (base, fs)
    }

    #[tokio::test]
    async fn dot_dot_stops_at_the_root() {
        let (base, mut fs) = tree();
        fs.change_dir("sub").await.expect("cwd");
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
        let outside = fs.resolve("../../../secret").expect("resolve");
        assert!(fs.open_read(&outside, 0).await.is_err());
        std::fs::remove_dir_all(base).ok();
    }

    #[tokio::test]
    async fn symlinks_cannot_leave_the_root() {
        let (base, mut fs) = tree();
        let root = VPath::default();
        assert!(fs.open_read(&root.join("up"), 0).await.is_err());
        let passwd = root.join("escape").join("etc").join("passwd");
        assert!(fs.open_read(&passwd, 0).await.is_err());
        assert!(fs.change_dir("escape").await.is_err());
        assert!(fs
            .open_write(&root.join("up"), WriteMode::Truncate)
            .await
            .is_err());
        assert_eq!(
            std::fs::read(base.join("secret")).expect("read"),
            b"outside"
        );
        // A symlink that stays inside is followed.
        let (mut file, _) = fs.open_read(&root.join("ok"), 0).await.expect("inside");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).expect("read");
        assert_eq!(text, "inside");
        std::fs::remove_dir_all(base).ok();
    }

    #[tokio::test]
    async fn chmod_and_link_targets_stay_inside_the_root() {
        let (base, fs) = tree();
        let inside = fs.resolve("ok").expect("resolve");
        fs.chmod(&inside, 0o600)
            .await
            .expect("chmod through an inside link");
        let mode = std::fs::metadata(base.join("root/sub/file"))
            .expect("meta")
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o600);
        let outside = fs.resolve("up").expect("resolve");
        assert!(fs.chmod(&outside, 0o777).await.is_err());
        let mode = std::fs::metadata(base.join("secret")).expect("meta").mode() & 0o7777;
        assert_ne!(mode, 0o777);
        let targets = fs
            .run(|tree| {
                Ok(["ok", "up", "escape"].map(|name| tree.link_target(&VPath(vec![name.into()]))))
            })
            .await
            .expect("run");
        assert_eq!(targets, [Some("sub/file".to_owned()), None, None]);
        std::fs::remove_dir_all(base).ok();
    }

    #[test]
    fn read_only_refuses_changes() {
        let (base, fs) = tree();
        let mut tree = Tree::open(&base.join("root"), false, true).expect("open");
        tree.read_only = true;
        let path = fs.resolve("new").expect("resolve");
        assert!(tree.open_write(&path, WriteMode::Truncate, None).is_err());
        assert!(tree.create_dir(&path, None).is_err());
        assert!(tree
            .remove_file(&fs.resolve("sub/file").expect("resolve"))
            .is_err());
        assert!(base.join("root/sub/file").exists());
        std::fs::remove_dir_all(base).ok();
    }

    #[tokio::test]
    async fn fifos_are_refused_without_waiting() {
        let (base, fs) = tree();
        let fifo = base.join("root/pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let path = fs.resolve("pipe").expect("resolve");
        let err = fs.open_read(&path, 0).await.expect_err("a FIFO");
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory, "{err}");
        for mode in [WriteMode::Truncate, WriteMode::Append] {
            let err = fs.open_write(&path, mode).await.expect_err("a FIFO");
            assert_eq!(err.kind(), io::ErrorKind::IsADirectory, "{err}");
        }
        std::fs::remove_dir_all(base).ok();
    }

    #[tokio::test]
    async fn rest_may_not_pass_the_end_of_an_upload() {
        let (base, fs) = tree();
        let file = fs.resolve("sub/file").expect("resolve");
        let err = fs
            .open_write(&file, WriteMode::At(7))
            .await
            .expect_err("past the end");
        let rest = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<RestBeyondEnd>());
        assert!(
            matches!(rest, Some(RestBeyondEnd { offset: 7, size: 6 })),
            "{err}"
        );
        let missing = fs.resolve("missing").expect("resolve");
        assert!(fs.open_write(&missing, WriteMode::At(1)).await.is_err());
        assert!(!base.join("root/missing").exists());
        let mut at_end = fs
            .open_write(&file, WriteMode::At(6))
            .await
            .expect("at the end");
        std::io::Write::write_all(&mut at_end, b"!").expect("write");
        assert_eq!(
            std::fs::read(base.join("root/sub/file")).expect("read"),
            b"inside!"
        );
        std::fs::remove_dir_all(base).ok();
    }
}
