//! The `[mail]` section of the mail daemons' configs.

use std::path::PathBuf;

use serde::Deserialize;

/// Where the mail store lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// One Maildir++ per user below it, created on first use.
    pub root: PathBuf,
    /// How imapd learns that a folder changed under a selected or idling session.
    pub watch: FolderWatch,
}

/// How a daemon learns of changes other processes make to a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderWatch {
    /// inotify: immediate, but it sees only this host's changes.
    #[default]
    Inotify,
    /// The folder's directories are looked at before each command's reply and every second in
    /// IDLE: for a mail root on shared storage (NFS, CephFS) that other hosts change too.
    Poll,
}

/// The store root a fresh install uses (`StateDirectory=inetkit` in the units, owned by the
/// `inetkit` user); `[mail] root` overrides it.
pub const DEFAULT_MAIL_ROOT: &str = "/var/lib/inetkit/mail";

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            root: PathBuf::from(DEFAULT_MAIL_ROOT),
            watch: FolderWatch::default(),
        }
    }
}
