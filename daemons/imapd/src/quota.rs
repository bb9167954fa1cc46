//! Quotas (RFC 9208): one quota root per user, `""`, over all their folders, with the
//! `STORAGE` (bytes, reported in KiB) and `MESSAGE` resources.
//!
//! The limits come from the user's extra fields in the users file (`quota=2G`,
//! `quota_messages=50000`, or Dovecot's `userdb_quota_rule=*:storage=2G:messages=50000`), else
//! from `[quota]` in the config; none of them means unlimited. Usage is the sum of each
//! folder's message sizes, cached per folder and computed again only when one of its `new/`
//! or `cur/` directories changed since.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use inetkit_auth::User;
use inetkit_maildir::{Mailbox, StoreError};

/// Folders whose usage is remembered (all users together); past it, the cache starts over.
const MAX_CACHED: usize = 16 * 1024;
/// A directory changed this recently may change again within its timestamp's resolution
/// unseen: its usage is not cached.
const SETTLED: Duration = Duration::from_secs(2);

/// The `[quota]` section: the default limits for users without their own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct QuotaConfig {
    /// Bytes, with an optional K, M, G or T suffix (powers of 1024): `"2G"`.
    storage: Option<Size>,
    messages: Option<u64>,
}

/// A size in the config: a number of bytes, or text such as `"2G"`; checked when the config
/// is read, so `--check-config` reports a bad one with its line.
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(if n == 0 { u64::MAX } else { n })),
            Raw::Text(t) => parse_size(&t).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!("not a size: {t:?} (bytes, or e.g. \"2G\")"))
            }),
        }
    }
}

/// A user's limits; `None` is unlimited.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) storage: Option<u64>,
    pub(crate) messages: Option<u64>,
}

impl Limits {
    pub(crate) fn is_unlimited(&self) -> bool {
        self.storage.is_none() && self.messages.is_none()
    }
}

impl QuotaConfig {
    /// The default limits.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            storage: self.storage.map(|s| s.0),
            messages: self.messages,
        }
    }
}

/// The limits of `user`: their extra fields where they set one, else `default`. A field that
/// does not parse is logged and the default applies.
pub(crate) fn user_limits(user: &User, default: Limits) -> Limits {
    limits_from(|key| user.extra_field(key), &user.name, default)
}

fn limits_from<'u>(field: impl Fn(&str) -> Option<&'u str>, user: &str, default: Limits) -> Limits {
    let mut limits = default;
    let mut storage = field("quota").map(str::to_owned);
    let mut messages = field("quota_messages").map(str::to_owned);
    if let Some(rule) = field("userdb_quota_rule") {
        // `*:storage=1G:messages=100`: the rule for the whole mailbox.
        for part in rule.trim_start_matches("*:").split(':') {
            match part.split_once('=') {
                Some(("storage", v)) => storage = storage.or(Some(v.to_owned())),
                Some(("messages", v)) => messages = messages.or(Some(v.to_owned())),
                _ => {}
            }
        }
    }
    if let Some(s) = storage {
        match parse_size(&s) {
            Some(n) => limits.storage = Some(n),
            None => tracing::warn!(user, value = %s, "unreadable storage quota"),
        }
    }
    if let Some(m) = messages {
        match m.parse() {
            Ok(n) => limits.messages = Some(n),
            Err(_) => tracing::warn!(user, value = %m, "unreadable message quota"),
        }
    }
    limits
}

/// `2G`, `512M`, `100k`, `1048576`: bytes (suffixes are powers of 1024); `0` or `unlimited`
/// (as Dovecot writes "none") is `u64::MAX`.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("unlimited") {
        return Some(u64::MAX);
    }
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => (text.get(..at)?, text.get(at..)?),
        None => (text, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    if n == 0 {
        return Some(u64::MAX);
    }
    n.checked_mul(1u64 << shift)
}

/// What a user's folders hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) bytes: u64,
    pub(crate) messages: u64,
}

#[derive(Clone, Copy)]
struct Cached {
    stamps: [Option<SystemTime>; 2],
    usage: Usage,
}

static CACHE: LazyLock<Mutex<HashMap<PathBuf, Cached>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn stamps(folder: &Path) -> [Option<SystemTime>; 2] {
    let modified = |sub| {
        std::fs::metadata(folder.join(sub))
            .and_then(|m| m.modified())
            .ok()
    };
    [modified("new"), modified("cur")]
}

/// The usage of all of `mailbox`'s folders. Blocks (file system).
pub(crate) fn usage(mailbox: &Mailbox) -> Result<Usage, StoreError> {
    let mut total = Usage::default();
    for name in mailbox.folders()? {
        let folder = match mailbox.folder(&name) {
            Ok(f) => f,
            // Deleted meanwhile.
            Err(StoreError::NoSuchFolder(_)) => continue,
            Err(e) => return Err(e),
        };
        let path = folder.path().to_path_buf();
        let before = stamps(&path);
        let hit = CACHE
            .lock()
            .ok()
            .and_then(|cache| cache.get(&path).copied())
            .filter(|c| c.stamps == before);
        let usage = match hit {
            Some(c) => c.usage,
            None => {
                let snapshot = folder.snapshot()?;
                let usage = Usage {
                    bytes: snapshot.messages.iter().map(|m| m.size).sum(),
                    messages: snapshot.messages.len() as u64,
                };
                let settled = before.iter().all(|s| {
                    s.and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= SETTLED)
                });
                if settled && stamps(&path) == before {
                    if let Ok(mut cache) = CACHE.lock() {
                        if cache.len() >= MAX_CACHED {
                            cache.clear();
                        }
                        cache.insert(
                            path,
                            Cached {
                                stamps: before,
                                usage,
                            },
                        );
                    }
                }
                usage
            }
        };
        total.bytes = total.bytes.saturating_add(usage.bytes);
        total.messages = total.messages.saturating_add(usage.messages);
    }
    Ok(total)
}

/// Would adding `bytes` in `messages` messages to `usage` pass a limit?
pub(crate) fn exceeds(limits: Limits, usage: Usage, bytes: u64, messages: u64) -> bool {
    let over = |limit: Option<u64>, used: u64, more: u64| {
        limit.is_some_and(|l| used.saturating_add(more) > l)
    };
    over(limits.storage, usage.bytes, bytes) || over(limits.messages, usage.messages, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("100k"), Some(100 << 10));
        assert_eq!(parse_size("10KB"), Some(10 << 10));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("0"), Some(u64::MAX));
        assert_eq!(parse_size("unlimited"), Some(u64::MAX));
        for bad in [
            "",
            "G",
            "2X",
            "-1",
            "1.5G",
            "99999999999999999999T",
            "20000000T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    fn with(extra: &'static [&'static str], default: Limits) -> Limits {
        let field = |key: &str| {
            extra
                .iter()
                .find_map(|f| f.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
        };
        limits_from(field, "alice", default)
    }

    #[test]
    fn a_users_fields_override_the_default() {
        let default = Limits {
            storage: Some(1000),
            messages: None,
        };
        assert_eq!(with(&[], default), default);
        let limits = with(&["quota=1M", "quota_messages=5"], default);
        assert_eq!(
            limits,
            Limits {
                storage: Some(1 << 20),
                messages: Some(5)
            }
        );
        let limits = with(&["userdb_quota_rule=*:storage=2k:messages=7"], default);
        assert_eq!(
            limits,
            Limits {
                storage: Some(2048),
                messages: Some(7)
            }
        );
        // Unreadable: the default stays.
        assert_eq!(with(&["quota=lots"], default), default);
    }

    #[test]
    fn limits_are_inclusive() {
        let limits = Limits {
            storage: Some(100),
            messages: Some(2),
        };
        let used = Usage {
            bytes: 60,
            messages: 1,
        };
        assert!(!exceeds(limits, used, 40, 1));
        assert!(exceeds(limits, used, 41, 1));
        assert!(exceeds(limits, used, 1, 2));
        assert!(!exceeds(Limits::default(), used, u64::MAX, u64::MAX));
    }
}
