//! The store root, users' mailboxes and their folders.

use std::fs::DirBuilder;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::folder::{Delivered, Folder};
use super::fsutil::{self, Owner};
use super::maildir::unique_name;
use super::mutf7;
use super::StoreError;

/// Folders every new mailbox starts with (the IMAP special-use ones).
pub const DEFAULT_FOLDERS: [&str; 4] = ["Sent", "Drafts", "Trash", "Junk"];

/// The mail store: one Maildir++ per user under a root (`/var/lib/inetkit/mail`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    owner: Option<Owner>,
    special_use: bool,
}

impl Store {
    /// A store under `root` (normally [`DEFAULT_MAIL_ROOT`](crate::DEFAULT_MAIL_ROOT)). Touches
    /// nothing on disk: the root and each mailbox are created on first use.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            owner: None,
            special_use: false,
        }
    }

    /// Makes [`Store::mailbox`] create any of the [`DEFAULT_FOLDERS`] a mailbox lacks each time
    /// it opens one, not only when it creates the mailbox: a Maildir another program delivered
    /// into then has the folders IMAP clients look for (imapd, at login).
    pub fn with_special_use_folders(mut self, on: bool) -> Store {
        self.special_use = on;
        self
    }

    /// Makes everything the store creates from now on belong to `owner` (for tools run as root).
    pub fn with_owner(mut self, owner: Option<Owner>) -> Store {
        self.owner = owner;
        self
    }

    /// The directory holding one mailbox per user.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A user's mailbox, created on first use with INBOX (`tmp/ new/ cur/` at its top) and the
    /// [`DEFAULT_FOLDERS`]. A Maildir another program made is used as it is (only a missing
    /// `tmp/`, `new/` or `cur/` is added, and the default folders when
    /// [`Store::with_special_use_folders`] says so).
    pub fn mailbox(&self, user: &str) -> Result<Mailbox, StoreError> {
        if !valid_user(user) {
            return Err(StoreError::InvalidUser(user.to_owned()));
        }
        if !self.root.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(|err| StoreError::io("creating", &self.root, err))?;
            if let Some(o) = self.owner {
                std::os::unix::fs::chown(&self.root, Some(o.uid), Some(o.gid))
                    .map_err(|err| StoreError::io("changing the owner of", &self.root, err))?;
            }
        }
        let path = self.root.join(user);
        let created = fsutil::make_dir(&path, self.owner)?;
        make_maildir(&path, self.owner)?;
        let mailbox = Mailbox {
            user: user.to_owned(),
            path,
            owner: self.owner,
        };
        if created || self.special_use {
            for name in DEFAULT_FOLDERS {
                match mailbox.create(name) {
                    Ok(_) | Err(StoreError::FolderExists(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(mailbox)
    }

    /// Delivers a message into the user's INBOX (creating the mailbox on first use).
    pub fn deliver(&self, user: &str, message: &mut dyn Read) -> Result<Delivered, StoreError> {
        self.mailbox(user)?.inbox().deliver(message)
    }
}

/// One user's Maildir++: INBOX at the top, folder `a/b` in `.a.b/`.
///
/// Folder names (UTF-8) use `/` as the hierarchy separator; on disk it is `.`, so a name part
/// never contains a dot. Directory names are modified UTF-7, as Dovecot and Courier write
/// them, so a Maildir moves between them and inetkit with its folder names intact.
#[derive(Debug, Clone)]
pub struct Mailbox {
    user: String,
    path: PathBuf,
    owner: Option<Owner>,
}

impl Mailbox {
    /// The user whose mailbox this is (also its directory name under the store root).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The mailbox directory: INBOX's `tmp/ new/ cur/` and the `.folder` directories.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// INBOX, which always exists (the mailbox directory itself).
    pub fn inbox(&self) -> Folder {
        Folder::new(
            "INBOX".to_owned(),
            self.path.clone(),
            self.path.clone(),
            self.owner,
        )
    }

    /// An existing folder. `INBOX` (any case) is the top of the mailbox.
    pub fn folder(&self, name: &str) -> Result<Folder, StoreError> {
        let Some(dir) = self.existing_dir(name)? else {
            return Ok(self.inbox());
        };
        let path = self.path.join(&dir);
        if !path.join("cur").is_dir() {
            return Err(StoreError::NoSuchFolder(name.to_owned()));
        }
        // A folder another program made may lack tmp/ (or new/).
        make_maildir(&path, self.owner)?;
        Ok(self.folder_at(&dir, path))
    }

    /// Every folder's name, `INBOX` first, the rest sorted.
    pub fn folders(&self) -> Result<Vec<String>, StoreError> {
        let entries = std::fs::read_dir(&self.path)
            .map_err(|err| StoreError::io("reading", &self.path, err))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| StoreError::io("reading", &self.path, err))?;
            let Some(name) = entry.file_name().to_str().and_then(display_name) else {
                continue;
            };
            if entry.path().join("cur").is_dir() {
                names.push(name);
            }
        }
        names.sort();
        names.insert(0, "INBOX".to_owned());
        Ok(names)
    }

    /// Creates a folder. Its parent need not exist (`a/b` without `a` is allowed in Maildir++).
    pub fn create(&self, name: &str) -> Result<Folder, StoreError> {
        let Some(dir) = dir_name(name)? else {
            return Err(StoreError::FolderExists("INBOX".to_owned()));
        };
        if self.existing_dir(name)?.as_deref() != Some(dir.as_str()) {
            // The folder is there under its older, UTF-8 directory name.
            return Err(StoreError::FolderExists(name.to_owned()));
        }
        let path = self.path.join(&dir);
        if !fsutil::make_dir(&path, self.owner)? {
            return Err(StoreError::FolderExists(name.to_owned()));
        }
        make_maildir(&path, self.owner)?;
        // Maildir++ marks folders so that delivery agents do not mistake them for mailboxes.
        fsutil::touch(&path.join("maildirfolder"), self.owner)?;
        Ok(self.folder_at(&dir, path))
    }

    /// Deletes a folder and its messages; its subfolders stay. The folder is first renamed
    /// out of sight in one step, so no process sees it half deleted.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let Some(dir) = self.existing_dir(name)? else {
            return Err(StoreError::Inbox("deleted"));
        };
        let path = self.path.join(&dir);
        if !path.is_dir() {
            return Err(StoreError::NoSuchFolder(name.to_owned()));
        }
        // `..` + anything is never a folder name (its first part is empty).
        let doomed = self
            .path
            .join(format!("..deleted.{}", unique_name(SystemTime::now())));
        std::fs::rename(&path, &doomed).map_err(|err| StoreError::io("renaming", &path, err))?;
        if let Err(err) = std::fs::remove_dir_all(&doomed) {
            tracing::warn!(path = %doomed.display(), error = %err, "cannot remove a deleted folder's files");
        }
        Ok(())
    }

    /// Renames a folder and its subfolders (`a` -> `b` moves `a/x` to `b/x`). UIDs and
    /// UIDVALIDITY move with the folder. Each folder moves atomically; a hierarchy moves one
    /// folder at a time. Renaming INBOX is not supported.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let Some(from_dir) = self.existing_dir(from)? else {
            return Err(StoreError::Inbox("renamed"));
        };
        let Some(to_dir) = dir_name(to)? else {
            return Err(StoreError::FolderExists("INBOX".to_owned()));
        };
        if to_dir == from_dir || to_dir.starts_with(&format!("{from_dir}.")) {
            return Err(StoreError::InvalidFolder(to.to_owned()));
        }
        if !self.path.join(&from_dir).is_dir() {
            return Err(StoreError::NoSuchFolder(from.to_owned()));
        }
        let entries = std::fs::read_dir(&self.path)
            .map_err(|err| StoreError::io("reading", &self.path, err))?;
        let mut moves = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| StoreError::io("reading", &self.path, err))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let suffix = match name.strip_prefix(&from_dir) {
                Some(s) if s.is_empty() || s.starts_with('.') => s.to_owned(),
                _ => continue,
            };
            let target = format!("{to_dir}{suffix}");
            if self.path.join(&target).exists() {
                let shown = display_name(&target).unwrap_or(target);
                return Err(StoreError::FolderExists(shown));
            }
            moves.push((name, target));
        }
        // On disk a subfolder is a sibling (`.a.x` beside `.a`), so order does not matter.
        for (name, target) in moves {
            let (src, dst) = (self.path.join(&name), self.path.join(&target));
            fsutil::rename_noreplace(&src, &dst).map_err(|err| {
                if err.kind() == std::io::ErrorKind::AlreadyExists {
                    StoreError::FolderExists(display_name(&target).unwrap_or(target))
                } else {
                    StoreError::io("renaming", &src, err)
                }
            })?;
        }
        Ok(())
    }

    /// The directory of folder `name` as it is on disk: its modified UTF-7 name ([`dir_name`]),
    /// or, when only that is missing, the UTF-8 name inetkit used to give non-ASCII folders.
    /// `None` for INBOX.
    fn existing_dir(&self, name: &str) -> Result<Option<String>, StoreError> {
        let Some(dir) = dir_name(name)? else {
            return Ok(None);
        };
        let legacy = format!(".{}", inbox_first(name).replace('/', "."));
        if legacy != dir && !self.path.join(&dir).exists() && self.path.join(&legacy).is_dir() {
            return Ok(Some(legacy));
        }
        Ok(Some(dir))
    }

    fn folder_at(&self, dir: &str, path: PathBuf) -> Folder {
        let name = display_name(dir).unwrap_or_else(|| dir.to_owned());
        Folder::new(name, path, self.path.clone(), self.owner)
    }
}

fn make_maildir(path: &Path, owner: Option<Owner>) -> Result<(), StoreError> {
    for sub in ["tmp", "new", "cur"] {
        fsutil::make_dir(&path.join(sub), owner)?;
    }
    Ok(())
}

/// A user name that is safe as one directory name.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 255
        && !user.starts_with('.')
        && !user.contains('/')
        && !user.chars().any(char::is_control)
}

/// The directory of a folder: `None` for INBOX, `.a.b` for `a/b`, each part in modified
/// UTF-7 as Dovecot and Courier write them (`.Entw&APw-rfe` for `Entwürfe`). A `.` inside a
/// part is refused: on disk it is the hierarchy separator, so `a.b` would silently be `a/b`.
/// A first part spelt `inbox` in any case is `INBOX`, so `INBOX/x` is one folder.
fn dir_name(name: &str) -> Result<Option<String>, StoreError> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok(None);
    }
    let name_inbox = inbox_first(name);
    let parts: Vec<&str> = name_inbox.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || p.contains('.') || p.chars().any(char::is_control))
    {
        return Err(StoreError::InvalidFolder(name.to_owned()));
    }
    let encoded: Vec<String> = parts.iter().map(|p| mutf7::encode(p)).collect();
    let dir = format!(".{}", encoded.join("."));
    if dir.len() > 255 {
        return Err(StoreError::InvalidFolder(name.to_owned()));
    }
    Ok(Some(dir))
}

/// `name` with a first part spelt `inbox` in any case written `INBOX`.
fn inbox_first(name: &str) -> String {
    match name.split_once('/') {
        Some((first, rest)) if first.eq_ignore_ascii_case("INBOX") => format!("INBOX/{rest}"),
        _ => name.to_owned(),
    }
}

/// The folder name of a directory, or `None` if it is not a folder's. A part that is modified
/// UTF-7 (and written the way it would be encoded, so no two directories show as one name) is
/// decoded; any other part (inetkit's older UTF-8 names, a plain `R&D`) is shown as it is.
fn display_name(dir: &str) -> Option<String> {
    let rest = dir.strip_prefix('.')?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || p.chars().any(char::is_control))
    {
        return None;
    }
    let decoded: Vec<String> = parts
        .iter()
        .map(|p| match mutf7::decode(p.as_bytes()) {
            Some(text) if mutf7::encode(&text) == *p => text,
            _ => (*p).to_owned(),
        })
        .collect();
    Some(inbox_first(&decoded.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_map_to_directories() {
        assert_eq!(dir_name("INBOX").unwrap(), None);
        assert_eq!(dir_name("inbox").unwrap(), None);
        assert_eq!(dir_name("Sent").unwrap().as_deref(), Some(".Sent"));
        assert_eq!(dir_name("a/b").unwrap().as_deref(), Some(".a.b"));
        assert_eq!(
            dir_name("Entwürfe").unwrap().as_deref(),
            Some(".Entw&APw-rfe")
        );
        assert_eq!(dir_name("R&D").unwrap().as_deref(), Some(".R&-D"));
        assert_eq!(
            dir_name("inbox/sub").unwrap().as_deref(),
            Some(".INBOX.sub")
        );
        // The on-disk separator inside a name would make a hierarchy: refused.
        for bad in [
            "",
            ".",
            "..",
            "a//b",
            "/a",
            "a/",
            ".a",
            "a\nb",
            "a\0b",
            "a.b",
            "inbox.sub",
        ] {
            assert!(dir_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(display_name(".a.b").as_deref(), Some("a/b"));
        // Dovecot's modified UTF-7, inetkit's older UTF-8, and names that only look encoded.
        assert_eq!(
            display_name(".Entw&APw-rfe.x").as_deref(),
            Some("Entwürfe/x")
        );
        assert_eq!(display_name(".Entwürfe").as_deref(), Some("Entwürfe"));
        assert_eq!(display_name(".R&D").as_deref(), Some("R&D"));
        assert_eq!(display_name(".R&-D").as_deref(), Some("R&D"));
        assert_eq!(display_name(".inbox.sub").as_deref(), Some("INBOX/sub"));
        for not_folder in ["..deleted.1", ".", "..", "cur", ".a..b", ".a."] {
            assert_eq!(display_name(not_folder), None, "{not_folder:?}");
        }
    }

    #[test]
    fn user_names() {
        for good in ["alice", "bob@example.org", "a.b", "x-1_2"] {
            assert!(valid_user(good), "{good:?}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "a\0", "a\nb"] {
            assert!(!valid_user(bad), "{bad:?}");
        }
    }
}
