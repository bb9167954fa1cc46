//! Directory listings: `ls -l` lines for LIST, facts for MLSD/MLST (RFC 3659 §7), and the
//! timestamps of MDTM.

use std::time::SystemTime;

use cap_std::fs::{Metadata, MetadataExt};
use time::{OffsetDateTime, UtcOffset};

/// The modification time, or the epoch if the file system has none.
pub(crate) fn modified(meta: &Metadata) -> SystemTime {
    meta.modified()
        .map(|t| t.into_std())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `YYYYMMDDHHMMSS` in UTC (RFC 3659 §2.3).
pub(crate) fn timeval(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t).to_offset(UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// One `ls -l` line (without CRLF), as clients parse it:
/// `-rw-r--r-- 1 ftp ftp 1234 Nov 25 17:02 name`.
pub(crate) fn ls_line(name: &str, meta: &Metadata, now: SystemTime) -> String {
    let kind = if meta.is_dir() {
        'd'
    } else if meta.file_type().is_symlink() {
        'l'
    } else {
        '-'
    };
    let mode = meta.mode();
    let mut perms = String::with_capacity(9);
    for (bit, c) in [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ] {
        perms.push(if mode & bit != 0 { c } else { '-' });
    }
    let mtime = modified(meta);
    let t = OffsetDateTime::from(mtime).to_offset(UtcOffset::UTC);
    let month = MONTHS[usize::from(u8::from(t.month())) - 1];
    // Like ls: the time of day for the last six months, else the year.
    let recent = now
        .duration_since(mtime)
        .map(|age| age.as_secs() < 180 * 86_400)
        .unwrap_or(true);
    let when = if recent {
        format!("{month} {:>2} {:02}:{:02}", t.day(), t.hour(), t.minute())
    } else {
        format!("{month} {:>2}  {}", t.day(), t.year())
    };
    format!(
        "{kind}{perms} {:>3} ftp      ftp {:>12} {when} {name}",
        meta.nlink(),
        meta.len()
    )
}

/// MLSD/MLST facts followed by a space and the name (RFC 3659 §7.2).
pub(crate) fn facts(
    name: &str,
    meta: &Metadata,
    kind_override: Option<&str>,
    writable: bool,
) -> String {
    let kind = kind_override.unwrap_or(if meta.is_dir() { "dir" } else { "file" });
    let perm = match (meta.is_dir(), writable) {
        (true, true) => "elcmfp",
        (true, false) => "el",
        (false, true) => "radfw",
        (false, false) => "r",
    };
    let mut line = format!("type={kind};");
    if !meta.is_dir() {
        line.push_str(&format!("size={};", meta.len()));
    }
    line.push_str(&format!(
        "modify={};perm={perm};unique={:x}g{:x}; {name}",
        timeval(modified(meta)),
        meta.dev(),
        meta.ino()
    ));
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timeval_is_utc_digits() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(timeval(t), "20231114221320");
    }

    #[test]
    fn ls_and_facts() {
        let dir =
            cap_std::fs::Dir::open_ambient_dir(std::env::temp_dir(), cap_std::ambient_authority())
                .expect("tmp");
        let name = format!("inetkit-ftpd-listing-{}", std::process::id());
        dir.write(&name, b"12345").expect("write");
        let meta = dir.metadata(&name).expect("meta");
        let line = ls_line(&name, &meta, SystemTime::now());
        assert!(line.starts_with("-rw"), "{line}");
        assert!(line.contains(&format!(" ftp {:>12} ", 5)), "{line}");
        assert!(line.ends_with(&format!(" {name}")), "{line}");
        let facts = facts(&name, &meta, None, true);
        assert!(facts.starts_with("type=file;size=5;modify="), "{facts}");
        assert!(facts.ends_with(&format!("; {name}")), "{facts}");
        dir.remove_file(&name).expect("rm");
    }
}
