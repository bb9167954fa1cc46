//! Logging through `tracing`: to the journal when systemd connected stderr to it
//! (`JOURNAL_STREAM`), otherwise formatted lines on stderr.
//!
//! Sessions run inside a span carrying the peer address (and the user once known), so every
//! line a session logs says whose it is, and end with one line that sums them up
//! ([`SessionLog`]).

mod session;
pub use session::{Counted, End, SessionLog, TlsInfo};

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogLevel};

/// `INETKIT_LOG=debug` overrides the configured level (handy under `systemd-run` or in tests).
const LEVEL_OVERRIDE: &str = "INETKIT_LOG";

/// Set once [`init`] installed the lines on stderr (not the journal).
static TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Whether [`init`] sends the log to stderr as lines (`false` before it, or for the journal):
/// a daemon writing a frequent line preformatted (rpcd's per-request line) writes it there
/// itself, in the same format, and through `tracing` otherwise.
pub fn to_stderr() -> bool {
    TO_STDERR.load(Ordering::Relaxed)
}

/// Installs the process-wide subscriber: journald when `JOURNAL_STREAM` is set (and the
/// journal socket answers), else plain lines on stderr without colours or targets. The level is
/// `INETKIT_LOG` when that parses (`error` … `trace`), else `[log] level`.
///
/// Call once, early in `main`; later calls (several tests in one process) leave the first
/// subscriber in place and do nothing.
pub fn init(config: &LogConfig) {
    let level = std::env::var(LEVEL_OVERRIDE)
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or_else(|| level_filter(config.level));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    // The level filters the whole subscriber rather than its one layer: a per-layer filter
    // is asked again at every entry into a span and every exit from it (each poll of a
    // session's task), 1-2% of rpcd's time under load.
    let result = match journald {
        Some(journald) => tracing_subscriber::registry()
            .with(level)
            .with(journald)
            .try_init(),
        None => {
            let result = tracing_subscriber::registry()
                .with(level)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(false)
                        .with_target(false),
                )
                .try_init();
            if result.is_ok() {
                TO_STDERR.store(true, Ordering::Relaxed);
            }
            result
        }
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}
