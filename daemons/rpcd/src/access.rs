//! The request's log line ([`Tally`](crate::tally::Tally)) on stderr: formatted by hand into a
//! buffer the thread keeps, and written in one `write`, in the format of the `tracing` lines
//! around it:
//!
//! ```text
//! 2026-12-04T15:00:27.778428Z  INFO session{peer=127.0.0.1:52478 socket=rpc user="bob"}: call ok peer=127.0.0.1 user="bob" method="host.uptime" calls=1 ms=0
//! ```
//!
//! Through `tracing`'s formatter the line cost 9% of the daemon's time under a load of
//! logged-in calls (its field visitors, timestamp and padding three quarters of that). Under
//! systemd the log is the journal, and the line goes through `tracing` as every other one, so
//! each field stays a journal field.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A line's level: the two the request line uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Info,
    Debug,
}

/// Whether lines of `level` are logged now (the configured level, `INETKIT_LOG`).
pub(crate) fn enabled(level: Level) -> bool {
    match level {
        Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
    }
}

/// The longest line kept in the thread's buffer between lines; a longer one (a user's long
/// name) is written all the same, and its buffer let go.
const KEEP: usize = 1024;

/// A thread's line buffer and the date and time of its last line, to the second.
struct Scratch {
    line: Vec<u8>,
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    date: [u8; 19],
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            line: Vec::new(),
            second: u64::MAX,
            date: [0; 19],
        })
    };
}

/// Who a line is about: the session's span as `tracing` shows it, and the peer and user
/// fields of the line.
pub(crate) struct Session<'a> {
    pub peer: SocketAddr,
    pub socket: &'a str,
    pub user: Option<&'a str>,
}

/// A connection's [`Session`] as text, made once for all its lines (formatting the addresses
/// was a third of a line's cost) and again when the user changes.
#[derive(Default)]
pub(crate) struct SessionText {
    made: Mutex<Option<Made>>,
}

struct Made {
    user: Option<String>,
    /// `session{peer=… socket=… user="…"}: `
    span: String,
    /// ` peer=… user="…"`
    fields: String,
}

impl Made {
    fn of(session: &Session<'_>) -> Made {
        use std::fmt::Write as _;
        let mut span = format!("session{{peer={} socket={}", session.peer, session.socket);
        if let Some(user) = session.user {
            let _ = write!(span, " user={user:?}");
        }
        span.push_str("}: ");
        let name = session.user.unwrap_or("-");
        Made {
            user: session.user.map(str::to_owned),
            span,
            fields: format!(" peer={} user={name:?}", session.peer.ip()),
        }
    }
}

impl SessionText {
    /// `session`'s two pieces of text, made now if they were made for another user.
    fn with<R>(&self, session: &Session<'_>, f: impl FnOnce(&str, &str) -> R) -> R {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        let made = match &mut *made {
            Some(m) if m.user.as_deref() == session.user => m,
            slot => slot.insert(Made::of(session)),
        };
        f(&made.span, &made.fields)
    }
}

/// The fields after the message: ` name=value`.
pub(crate) struct Fields<'a>(&'a mut Vec<u8>);

impl Fields<'_> {
    /// A value as it is (numbers, addresses).
    pub(crate) fn plain(&mut self, name: &str, value: impl Display) -> &mut Self {
        let _ = write!(self.0, " {name}={value}");
        self
    }

    /// A string already escaped (no `"`, `\` or control character left raw), quoted.
    pub(crate) fn escaped<'s>(
        &mut self,
        name: &str,
        parts: impl IntoIterator<Item = &'s str>,
    ) -> &mut Self {
        let _ = write!(self.0, " {name}=\"");
        for part in parts {
            self.0.extend_from_slice(part.as_bytes());
        }
        self.0.push(b'"');
        self
    }
}

/// Writes one line: timestamp, level, the session, `message` and what `fields` adds.
pub(crate) fn line(
    level: Level,
    session: &Session<'_>,
    text: &SessionText,
    message: impl Display,
    fields: impl FnOnce(&mut Fields<'_>),
) {
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            return;
        };
        let scratch = &mut *scratch;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() != scratch.second {
            scratch.second = now.as_secs();
            scratch.date = date(now.as_secs());
        }
        let buf = &mut scratch.line;
        buf.clear();
        let at = Timestamp {
            date: &scratch.date,
            micros: now.subsec_micros(),
        };
        text.with(session, |span, who| {
            format(buf, &at, level, [span, who], message, fields);
        });
        // Best effort, as `tracing`'s own lines: a log that cannot be written is not a
        // reason to fail the request.
        let _ = std::io::stderr().write_all(buf);
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
    });
}

/// When a line was written.
struct Timestamp<'a> {
    /// `YYYY-MM-DDTHH:MM:SS`.
    date: &'a [u8; 19],
    micros: u32,
}

/// The line; `session` is the span's text and the peer and user fields (see [`Made`]).
fn format(
    buf: &mut Vec<u8>,
    at: &Timestamp<'_>,
    level: Level,
    [span, who]: [&str; 2],
    message: impl Display,
    fields: impl FnOnce(&mut Fields<'_>),
) {
    buf.extend_from_slice(at.date);
    let level = match level {
        Level::Info => "  INFO ",
        Level::Debug => " DEBUG ",
    };
    let _ = write!(buf, ".{:06}Z{level}", at.micros);
    buf.extend_from_slice(span.as_bytes());
    let _ = write!(buf, "{message}");
    buf.extend_from_slice(who.as_bytes());
    fields(&mut Fields(buf));
    buf.push(b'\n');
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time.
fn date(secs: u64) -> [u8; 19] {
    let mut out = *b"1970-01-01T00:00:00";
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    if let Some(t) = at {
        let text = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        if let Some(bytes) = text.as_bytes().get(..out.len()) {
            out.copy_from_slice(bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    /// What the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The same line as the formatter common/runtime's `log::init` installs for stderr writes,
    /// timestamp aside (the formatter's is now; ours is given).
    #[test]
    fn lines_as_the_tracing_formatter_writes_them() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_target(false)
                .with_filter(tracing::level_filters::LevelFilter::DEBUG),
        );
        let peer: SocketAddr = "[2001:db8::7]:50312".parse().expect("address");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "session",
                peer = %peer,
                socket = %"rpcs",
                user = tracing::field::Empty
            );
            let _entered = span.enter();
            tracing::debug!(peer = %peer.ip(), user = "-", method = "a", calls = 1, ms = 0, "call ok");
            span.record("user", "b\"ob");
            let outcome = "method not found";
            tracing::info!(
                peer = %peer.ip(),
                user = "b\"ob",
                method = "x,y",
                calls = 2,
                failed = 1,
                ms = 12,
                code = -32601,
                "call failed: {outcome}"
            );
        });
        let theirs = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("UTF-8");

        let date = *b"2026-12-04T15:00:27";
        let at = Timestamp {
            date: &date,
            micros: 78,
        };
        let mut ours = Vec::new();
        let text = SessionText::default();
        let mut session = Session {
            peer,
            socket: "rpcs",
            user: None,
        };
        text.with(&session, |span, who| {
            format(&mut ours, &at, Level::Debug, [span, who], "call ok", |f| {
                f.escaped("method", ["a"]).plain("calls", 1).plain("ms", 0);
            });
        });
        session.user = Some("b\"ob");
        let outcome = "method not found";
        let message = format_args!("call failed: {outcome}");
        text.with(&session, |span, who| {
            format(&mut ours, &at, Level::Info, [span, who], message, |f| {
                f.escaped("method", ["x", ",", "y"])
                    .plain("calls", 2)
                    .plain("failed", 1)
                    .plain("ms", 12)
                    .plain("code", -32601);
            });
        });
        let ours = String::from_utf8(ours).expect("UTF-8");
        assert!(
            ours.starts_with("2026-12-04T15:00:27.000078Z DEBUG session{"),
            "{ours}"
        );
        let ours: Vec<&str> = ours.lines().collect();
        let theirs: Vec<&str> = theirs.lines().collect();
        assert_eq!(ours.len(), 2);
        assert_eq!(theirs.len(), 2, "{theirs:?}");
        for (ours, theirs) in ours.iter().zip(&theirs) {
            // The timestamp: 2026-12-04T15:00:27.000078Z
            assert_eq!(ours.get(27..), theirs.get(27..));
            assert_eq!(theirs.as_bytes().get(26), Some(&b'Z'), "{theirs}");
        }
    }

    #[test]
    fn dates_as_tracing_writes_them() {
        assert_eq!(&date(0), b"1970-01-01T00:00:00");
        assert_eq!(&date(1_796_483_999), b"2026-12-05T15:19:59");
        assert_eq!(&date(4_102_444_799), b"2099-12-31T23:59:59");
        assert_eq!(&date(951_782_400), b"2000-02-29T00:00:00");
    }
}
