//! The transfer log in the xferlog(5) format of wu-ftpd and vsftpd's `xferlog_std_format`,
//! one line per finished or interrupted upload or download, so that the tools that read
//! vsftpd's `/var/log/xferlog` read ours:
//!
//! ```text
//! Thu Dec  3 15:42:44 2026 1 127.0.0.1 4096 /pub/file.bin b _ o r alice ftp 0 * c
//! ```
//!
//! time (UTC), seconds taken, remote host, bytes, path, `a`scii/`b`inary, no special action
//! `_`, `o`utgoing/`i`ncoming, `r`eal user or `a`nonymous, user, service `ftp`, no RFC 931
//! authentication `0 *`, `c`omplete or `i`ncomplete. Into the configured file, else into the
//! journal (target `xferlog`). The file is opened again on SIGHUP (`systemctl reload`), so
//! that logrotate can move it away and the next line starts the new one.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use time::{OffsetDateTime, UtcOffset};

use crate::fs::blocking;

/// One transfer, as logged.
pub(crate) struct Entry<'a> {
    pub(crate) finished: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) host: IpAddr,
    pub(crate) bytes: u64,
    pub(crate) path: &'a str,
    pub(crate) ascii: bool,
    pub(crate) incoming: bool,
    pub(crate) anonymous: bool,
    pub(crate) user: &'a str,
    pub(crate) complete: bool,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A field without spaces or control characters, so that the line splits on spaces (a file
/// name with spaces is written with `_`, as wu-ftpd does).
fn field(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl Entry<'_> {
    pub(crate) fn line(&self) -> String {
        let t = OffsetDateTime::from(self.finished).to_offset(UtcOffset::UTC);
        let day = DAYS[usize::from(t.weekday().number_days_from_monday())];
        let month = MONTHS[usize::from(u8::from(t.month())) - 1];
        // Whole seconds, rounded up: a transfer that happened took at least one.
        let seconds = self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0);
        format!(
            "{day} {month} {:>2} {:02}:{:02}:{:02} {} {} {} {} {} {} _ {} {} {} ftp 0 * {}",
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.year(),
            seconds.max(1),
            self.host.to_canonical(),
            self.bytes,
            field(self.path),
            if self.ascii { 'a' } else { 'b' },
            if self.incoming { 'i' } else { 'o' },
            if self.anonymous { 'a' } else { 'r' },
            field(self.user),
            if self.complete { 'c' } else { 'i' },
        )
    }
}

/// Where transfer lines go.
pub(crate) enum Xferlog {
    Journal,
    File {
        path: PathBuf,
        file: Arc<Mutex<std::fs::File>>,
    },
}

fn open_for_append(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Xferlog {
    /// The file `path` opened for appending (made if missing), or the journal without one.
    pub(crate) fn open(path: Option<&Path>) -> io::Result<Xferlog> {
        let Some(path) = path else {
            return Ok(Xferlog::Journal);
        };
        Ok(Xferlog::File {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(open_for_append(path)?)),
        })
    }

    /// Opens the file again by its name (after logrotate moved it); lines go on to the old
    /// one when that fails, and the failure is logged.
    pub(crate) fn reopen(&self) {
        let Xferlog::File { path, file } = self else {
            return;
        };
        match open_for_append(path) {
            Ok(new) => {
                *file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = new;
                tracing::info!(path = %path.display(), "transfer log reopened");
            }
            Err(err) => tracing::error!(path = %path.display(), error = %err,
                "cannot reopen the transfer log; writing on to the old file"),
        }
    }

    pub(crate) async fn record(&self, entry: &Entry<'_>) {
        let line = entry.line();
        match self {
            Xferlog::Journal => tracing::info!(target: "xferlog", "{line}"),
            Xferlog::File { file, .. } => {
                let file = file.clone();
                // One write(2) of the whole line on an O_APPEND file: lines of concurrent
                // sessions never interleave. On the blocking pool, as all disk work is.
                let written = blocking(move || {
                    let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    file.write_all(format!("{line}\n").as_bytes())
                })
                .await;
                if let Err(err) = written {
                    tracing::error!(error = %err, "cannot write the transfer log");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_in_the_xferlog_format() {
        let entry = Entry {
            finished: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(1500),
            host: "::ffff:127.0.0.1".parse().expect("ip"),
            bytes: 4096,
            path: "/pub/my file.bin",
            ascii: false,
            incoming: false,
            anonymous: false,
            user: "alice",
            complete: true,
        };
        assert_eq!(
            entry.line(),
            "Tue Nov 14 22:13:20 2023 2 127.0.0.1 4096 /pub/my_file.bin b _ o r alice ftp 0 * c"
        );
        let quick = Entry {
            duration: Duration::ZERO,
            incoming: true,
            ascii: true,
            anonymous: true,
            complete: false,
            ..entry
        };
        assert!(quick
            .line()
            .ends_with(" 1 127.0.0.1 4096 /pub/my_file.bin a _ i a alice ftp 0 * i"));
    }
}
