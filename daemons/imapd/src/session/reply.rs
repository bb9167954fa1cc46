//! How a command ends: the tagged reply ([`Done`]) and the replies several command groups
//! share (store errors, the usual NO codes), plus the connection's farewells.

use std::borrow::Cow;
use std::sync::LazyLock;

use imap_codec::imap_types::core::{Tag, Text};
use imap_codec::imap_types::response::{Code, StatusKind};
use inetkit_maildir::StoreError;
use inetkit_runtime::conn::Farewell;

use super::Conn;
use crate::wire;

/// How a command finished: the tagged status, code and text, or the end of the connection.
/// Not the runtime's `Flow`: an IMAP command always ends in its tagged reply, which `Flow`
/// cannot carry, and `Flow::Continue` would be a command without one. `Close` and `StartTls`
/// become the `Flow` of the same name in one place, the session loop.
pub(super) enum Done {
    Tagged(StatusKind, Option<Code<'static>>, Text<'static>),
    Close,
    StartTls,
    /// COMPRESS=DEFLATE: after the tagged OK (already in the output), the stream deflates.
    Compress,
    /// Proxy mode: the backend accepted the login. The client gets a tagged OK with the
    /// backend's capabilities (the `String`), then the session is relayed.
    Proxy(Box<inetkit_runtime::proxy::Backend>, String),
}

pub(super) fn ok(text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::Ok, None, wire::text(text))
}
pub(super) fn no(text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::No, None, wire::text(text))
}
pub(super) fn bad(text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::Bad, None, wire::text(text))
}
pub(super) fn ok_code(code: Code<'static>, text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::Ok, Some(code), wire::text(text))
}
pub(super) fn no_code(code: Code<'static>, text: impl Into<Cow<'static, str>>) -> Done {
    Done::Tagged(StatusKind::No, Some(code), wire::text(text))
}

pub(super) const IDLE_TEXT: &str = "Autologout: idle for too long.";
pub(super) const SHUTDOWN_TEXT: &str = "Server shutting down.";
pub(super) const LOGIN_TIMEOUT_TEXT: &str = "No login in the time allowed.";
// The connection's farewells are lines of text: encoded once.
static IDLE_BYE: LazyLock<String> = LazyLock::new(|| wire::line(wire::bye(IDLE_TEXT)));
static SHUTDOWN_BYE: LazyLock<String> = LazyLock::new(|| wire::line(wire::bye(SHUTDOWN_TEXT)));
static LOGIN_TIMEOUT_BYE: LazyLock<String> =
    LazyLock::new(|| wire::line(wire::bye(LOGIN_TIMEOUT_TEXT)));

pub(super) fn farewell() -> Farewell {
    Farewell {
        idle: IDLE_BYE.as_str(),
        shutdown: SHUTDOWN_BYE.as_str(),
        login: LOGIN_TIMEOUT_BYE.as_str(),
    }
}

/// A status reply, tagged when the command's tag is known, untagged (`*`) otherwise.
pub(super) fn reply<S>(
    conn: &mut Conn<S>,
    tag: Option<Tag<'_>>,
    kind: StatusKind,
    code: Option<Code<'_>>,
    text: &'static str,
) {
    let text = wire::text(text);
    match tag {
        Some(tag) => wire::send(&mut conn.out, &wire::tagged(tag, kind, code, text)),
        None => wire::status(&mut conn.out, wire::untagged(kind, code, text)),
    }
}

pub(super) fn store_error(err: &StoreError) -> Done {
    match err {
        StoreError::NoSuchFolder(_) => no_code(wire::code("NONEXISTENT"), "No such mailbox."),
        StoreError::FolderExists(_) => {
            no_code(wire::code("ALREADYEXISTS"), "Mailbox already exists.")
        }
        StoreError::InvalidFolder(_) => invalid_name(),
        StoreError::Inbox(what) => {
            no_code(wire::code("CANNOT"), format!("INBOX cannot be {what}."))
        }
        e if e.is_no_space() => no_code(Code::OverQuota, "Not enough disk space."),
        e => {
            tracing::error!(error = %e, "store error");
            no_code(wire::code("SERVERBUG"), "Internal error; try again later.")
        }
    }
}

pub(super) fn invalid_name() -> Done {
    no_code(wire::code("CANNOT"), "Invalid mailbox name.")
}

pub(super) fn no_such_mailbox() -> Done {
    no_code(wire::code("NONEXISTENT"), "No such mailbox.")
}

pub(super) fn read_only() -> Done {
    no_code(Code::ReadOnly, "Mailbox is read-only.")
}

/// A FETCH or STORE that met messages another session expunged: done for the others, OK as
/// Dovecot answers (RFC 2180 §4.1, §4.2; RFC 5530 §3), and the client learns of the
/// expunge at its next command.
pub(super) fn expunge_issued() -> Done {
    ok_code(
        wire::code("EXPUNGEISSUED"),
        "Some messages were already expunged.",
    )
}
