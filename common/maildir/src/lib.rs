//! The Maildir++ mail store shared by smtp-submit, pop3d and imapd.
//!
//! ```text
//! /var/lib/inetkit/mail/<user>/         INBOX: tmp/ new/ cur/, inetkit-uidlist(.lock)
//!                              .Sent/   a folder: the same, plus an empty `maildirfolder`
//!                              .a.b/    folder "a/b"
//!                              inetkit-uidvalidity   last UIDVALIDITY handed out
//! ```
//!
//! A user's directory is their name exactly as the users file spells it (`alice`, or
//! `alice@example.org` for a user named by address): the daemons pass the name the login or
//! recipient lookup found, never what the client typed, and `inetkit_auth::check_name` keeps
//! names lower case `[a-z0-9._@-]`, starting with a letter or digit, without `..`, so each is
//! one safe directory name; [`Store::mailbox`] refuses anything else that could leave the root.
//!
//! - [`Store::mailbox`] opens (and on first use creates) a user's mailbox; [`Store::deliver`]
//!   drops a message into INBOX the Maildir way (tmp/, fsync, rename into new/, fsync).
//! - [`Folder::snapshot`] gives the messages in UID order with sizes, flags and dates, reading
//!   only the directories and the uid list when nothing is new. UIDs live in the folder's
//!   uid list ([`uidlist`] describes the format); losing it costs a new
//!   UIDVALIDITY, never a lost message. Each process keeps what it last read of a folder
//!   (`index.rs`), so a snapshot of a folder that changed a little costs a directory read and
//!   a few lookups, not a re-read of everything; a process that watches the folder can keep
//!   its listing up to date instead ([`Listing`]), and then not even the directories are read.
//! - Flags are the letters after `:2,` in `cur/` file names; [`Folder::update_flags`] renames.
//!
//! Several processes use one folder at once; `folder.rs` states the locking rules. Every call
//! blocks on file I/O: async code runs it with `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use inetkit_maildir::{FlagChange, Flags, Store};
//! # fn main() -> Result<(), inetkit_maildir::StoreError> {
//! let store = Store::new("/var/lib/inetkit/mail");
//! store.deliver("alice", &mut &b"Subject: hi\n\nhello\n"[..])?;
//! let inbox = store.mailbox("alice")?.inbox();
//! let mut snapshot = inbox.snapshot()?;
//! for msg in &mut snapshot.messages {
//!     let _file = inbox.open(msg)?; // RETR / FETCH
//!     inbox.update_flags(msg, FlagChange::Add(Flags::SEEN))?;
//! }
//! inbox.delete(&snapshot.messages)?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod faults;
mod filelock;
mod folder;
mod fsutil;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod listing;
mod maildir;
pub mod mutf7;
mod store;
pub mod uidlist;

use std::io;
use std::path::{Path, PathBuf};

pub use config::{FolderWatch, MailConfig, DEFAULT_MAIL_ROOT};
pub use filelock::{set_hand_off, FileLock, HandOff};
#[doc(hidden)]
pub use folder::{directory_reads, message_files_read};
pub use folder::{Appended, Delivered, FlagChange, Folder, MessageInfo, Snapshot, Transferred};
pub use fsutil::Owner;
pub use listing::{CatchUp, Dir, Listing};
pub use maildir::Flags;
pub use store::{Mailbox, Store, DEFAULT_FOLDERS};

/// What went wrong in the store, with the path it went wrong on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system call failed; [`StoreError::is_no_space`] tells a full disk apart.
    #[error("{op} {path}: {err}")]
    Io {
        /// What was being done, as a verb for the message ("creating", "renaming", …).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The error the system call returned.
        err: io::Error,
    },
    /// The message being delivered could not be read (the client or pipe went away).
    #[error("reading the message: {0}")]
    Input(io::Error),
    /// The user name cannot be one directory name: empty, over 255 bytes, starting with `.`,
    /// or holding `/` or a control character.
    #[error("invalid user name {0:?}")]
    InvalidUser(String),
    /// The folder name has an empty part (`a//b`, a leading or trailing `/` or `.`), a
    /// control character, or makes a directory name over 255 bytes.
    #[error("invalid folder name {0:?}")]
    InvalidFolder(String),
    /// The folder does not exist (IMAP `[NONEXISTENT]`).
    #[error("no folder {0:?}")]
    NoSuchFolder(String),
    /// Creating or renaming onto a folder that exists (IMAP `[ALREADYEXISTS]`).
    #[error("folder {0:?} already exists")]
    FolderExists(String),
    /// INBOX cannot be deleted or renamed; the text says which was tried.
    #[error("INBOX cannot be {0}")]
    Inbox(&'static str),
    /// The message was deleted (by another session) since the caller's snapshot.
    #[error("message {base} is gone")]
    MessageGone {
        /// The message's base name (see [`MessageInfo::base`]).
        base: String,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &Path, err: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.to_owned(),
            err,
        }
    }

    /// The underlying I/O error, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StoreError::Io { err, .. } | StoreError::Input(err) => Some(err),
            _ => None,
        }
    }

    /// The disk (or the quota, or the file size limit) is full: a temporary failure for
    /// SMTP (452) and IMAP (`[OVERQUOTA]`/`NO`).
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            StoreError::Io { err, .. }
                if matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG))
        )
    }
}

#[cfg(test)]
mod tests;
