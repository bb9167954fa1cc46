//! GETQUOTA, GETQUOTAROOT and SETQUOTA (RFC 9208), and the check APPEND and COPY make before
//! adding messages ([`crate::quota`] has the limits and the usage).

use imap_codec::imap_types::core::{AString, Vec1};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::quota::{QuotaGet, Resource};
use imap_codec::imap_types::mailbox::Mailbox as ImapMailbox;
use imap_codec::imap_types::response::{Code, Data};

use super::reply::{no, no_code, ok, store_error, Done};
use super::{blocking, Conn, Login, Session};
use crate::quota::{self, Usage};
use crate::wire;

/// The one quota root: all of a user's folders.
const ROOT: &str = "";

fn root_name() -> AString<'static> {
    AString::String(wire::istring(ROOT.as_bytes()))
}

/// The bytes of an APPENDed message.
pub(super) fn message_len(message: &LiteralOrLiteral8<'_>) -> u64 {
    match message {
        LiteralOrLiteral8::Literal(l) => l.data().len() as u64,
        LiteralOrLiteral8::Literal8(l) => l.data.len() as u64,
    }
}

impl Login {
    /// `Err` with `NO [OVERQUOTA]` when `bytes` in `messages` more messages would pass a limit.
    pub(super) fn quota_allows(&self, bytes: u64, messages: u64) -> Result<(), Done> {
        if self.limits.is_unlimited() {
            return Ok(());
        }
        let usage = blocking(|| quota::usage(&self.mailbox)).map_err(|e| store_error(&e))?;
        if quota::exceeds(self.limits, usage, bytes, messages) {
            return Err(no_code(Code::OverQuota, "Quota exceeded."));
        }
        Ok(())
    }
}

impl Session {
    pub(super) fn quota_allows(&self, bytes: u64, messages: u64) -> Result<(), Done> {
        match &self.login {
            Some(login) => login.quota_allows(bytes, messages),
            None => Ok(()),
        }
    }

    /// The QUOTA line of the root, or `None` when the user has no limit (RFC 9208 §4.2: a
    /// root without limits has no resources to list).
    fn quota_data(&self) -> Result<Option<Data<'static>>, Done> {
        let Some(login) = &self.login else {
            return Ok(None);
        };
        let limits = login.limits;
        if limits.is_unlimited() {
            return Ok(None);
        }
        let usage: Usage =
            blocking(|| quota::usage(&login.mailbox)).map_err(|e| store_error(&e))?;
        let mut quotas = Vec::new();
        if let Some(limit) = limits.storage {
            // STORAGE is counted in units of 1024 octets, usage rounded up.
            quotas.push(QuotaGet {
                resource: Resource::Storage,
                usage: usage.bytes.div_ceil(1024),
                limit: limit / 1024,
            });
        }
        if let Some(limit) = limits.messages {
            quotas.push(QuotaGet {
                resource: Resource::Message,
                usage: usage.messages,
                limit,
            });
        }
        Ok(Vec1::try_from(quotas).ok().map(|quotas| Data::Quota {
            root: root_name(),
            quotas,
        }))
    }

    pub(super) fn getquota<S>(&self, root: &AString<'_>, conn: &mut Conn<S>) -> Done {
        if root.as_ref() != ROOT.as_bytes() {
            return no("No such quota root.");
        }
        match self.quota_data() {
            Ok(Some(data)) => wire::data(&mut conn.out, data),
            Ok(None) => return no("No quota limits for this user."),
            Err(done) => return done,
        }
        ok("GETQUOTA completed.")
    }

    pub(super) fn getquotaroot<S>(&self, mailbox: &ImapMailbox<'_>, conn: &mut Conn<S>) -> Done {
        if let Err(done) = self.folder(mailbox) {
            return done;
        }
        let data = match self.quota_data() {
            Ok(data) => data,
            Err(done) => return done,
        };
        let roots = if data.is_some() {
            vec![root_name()]
        } else {
            Vec::new()
        };
        let quota_root = Data::QuotaRoot {
            mailbox: mailbox.clone(),
            roots,
        };
        wire::data(&mut conn.out, quota_root);
        if let Some(data) = data {
            wire::data(&mut conn.out, data);
        }
        ok("GETQUOTAROOT completed.")
    }

    /// SETQUOTA: limits are the administrator's, in the users file or the config.
    pub(super) fn setquota(&self) -> Done {
        no_code(
            wire::code("NOPERM"),
            "Quota limits are set by the administrator.",
        )
    }
}
