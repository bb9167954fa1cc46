//! The `[mail]` section of the mail daemons' configs.

use std::path::PathBuf;

use serde::Deserialize;

/// Where the mail store lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// One Maildir++ per user below it, created on first use.
    pub root: PathBuf,
}

/// The store root a fresh install uses (`StateDirectory=inetkit` in the units, owned by the
/// `inetkit` user); `[mail] root` overrides it.
pub const DEFAULT_MAIL_ROOT: &str = "/var/lib/inetkit/mail";

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            root: PathBuf::from(DEFAULT_MAIL_ROOT),
        }
    }
}
