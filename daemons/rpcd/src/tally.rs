//! One log line per HTTP request, however many calls it made: a `system.multicall` or a
//! JSON-RPC batch of a hundred calls writes one line, not a hundred.
//!
//! The line is at INFO when it is worth an audit trail: a request that ran (or asked for) a
//! configured command, one with a failed call. A request whose calls were all read-only
//! builtins (`host.uptime`, introspection) and succeeded logs at DEBUG, logged in or not: a
//! monitor polls those by the thousand, and under systemd each INFO line is a journal entry
//! that cost the daemon ~10 us and journald ~23 us more per request, twice the daemon's own
//! work (a journald on a tmpfs, `wrk -c16` of logged-in `host.uptime` calls). Who logged in
//! stays at INFO all the same, as with Dovecot: the `login ok` of each password check and
//! the connection's `session ended` line with its user.
//!
//! On stderr the line is written preformatted ([`access`]); in the journal it is a `tracing`
//! event with its fields.

use std::time::Instant;

use inetkit_runtime::server::Peer;

use crate::access::{self, Fields, Level, Session, SessionText};
use crate::methods::Caller;
use crate::value::Fault;

/// Method names shown in one line; more are summed up as `…`.
const MAX_NAMES: usize = 8;
/// Characters of one method name shown (a client chooses them).
const MAX_NAME_CHARS: usize = 64;

/// What the calls of one request came to.
pub struct Tally {
    started: Instant,
    calls: usize,
    failed: usize,
    /// The code and outcome of the first call that failed.
    first_failure: Option<(i64, &'static str)>,
    /// The distinct method names, in the order first called, escaped and cut short.
    names: Vec<String>,
    more_names: bool,
    /// A configured command ran (or was asked for) in this request.
    ran_command: bool,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            started: Instant::now(),
            calls: 0,
            failed: 0,
            first_failure: None,
            names: Vec::new(),
            more_names: false,
            ran_command: false,
        }
    }

    /// Marks the request as one that reached a configured command.
    pub(crate) fn command(&mut self) {
        self.ran_command = true;
    }

    /// Whether the request's line goes out at INFO (see the module's doc).
    fn worth_auditing(&self) -> bool {
        self.ran_command || self.first_failure.is_some()
    }

    /// One call: of `method` (`None`: a request too malformed to name one), failed or not.
    pub(crate) fn add(&mut self, method: Option<&str>, failure: Option<&Fault>) {
        self.calls += 1;
        if let Some(fault) = failure {
            self.failed += 1;
            self.first_failure
                .get_or_insert((fault.code, fault.outcome()));
        }
        if let Some(method) = method {
            self.name(method);
        }
    }

    /// Shows `method` in the line without counting a call (a multicall's own name).
    pub(crate) fn name(&mut self, method: &str) {
        // Most names need no escaping: compared before anything is copied.
        let plain = method.len() <= MAX_NAME_CHARS
            && method
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'\'');
        if plain && self.names.iter().any(|n| n == method) {
            return;
        }
        let shown: String = if plain {
            method.to_owned()
        } else {
            method
                .chars()
                .take(MAX_NAME_CHARS)
                .flat_map(char::escape_debug)
                .collect()
        };
        if self.names.contains(&shown) {
            return;
        }
        if self.names.len() < MAX_NAMES {
            self.names.push(shown);
        } else {
            self.more_names = true;
        }
    }

    /// The names as the log shows them: `a,b,c`, `-` for none.
    fn names(&self) -> String {
        self.shown_names().collect()
    }

    /// [`names`](Self::names) in pieces, for writing without joining them first.
    fn shown_names(&self) -> impl Iterator<Item = &str> {
        let more = self.more_names.then_some(",…");
        let none = (self.names.is_empty() && !self.more_names).then_some("-");
        let names = self.names.iter().enumerate().flat_map(|(i, name)| {
            let comma = (i > 0).then_some(",");
            comma.into_iter().chain(std::iter::once(name.as_str()))
        });
        names.chain(more).chain(none)
    }

    /// Writes the request's log line: at INFO when worth auditing, else at DEBUG.
    pub(crate) fn log(&self, caller: &Caller, peer: &Peer, text: &SessionText) {
        let level = if self.worth_auditing() {
            Level::Info
        } else {
            Level::Debug
        };
        if !access::enabled(level) {
            return;
        }
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !inetkit_runtime::log::to_stderr() {
            return self.log_event(level, caller, ms);
        }
        let session = Session {
            peer: peer.addr,
            socket: &peer.listener,
            user: caller.user.as_ref().map(|u| u.name.as_str()),
        };
        let fields = |f: &mut Fields<'_>| {
            f.escaped("method", self.shown_names())
                .plain("calls", self.calls);
            if let Some((code, _)) = self.first_failure {
                f.plain("failed", self.failed)
                    .plain("ms", ms)
                    .plain("code", code);
            } else {
                f.plain("ms", ms);
            }
        };
        match self.first_failure {
            None => access::line(level, &session, text, "call ok", fields),
            Some((_, outcome)) => {
                let message = format_args!("call failed: {outcome}");
                access::line(level, &session, text, message, fields)
            }
        }
    }

    /// The line as a `tracing` event, for the journal: each field a journal field.
    fn log_event(&self, level: Level, caller: &Caller, ms: u64) {
        let method = self.names();
        match (level, self.first_failure) {
            (Level::Debug, _) => tracing::debug!(
                peer = %caller.peer,
                user = caller.name(),
                method,
                calls = self.calls,
                ms,
                "call ok"
            ),
            (Level::Info, None) => tracing::info!(
                peer = %caller.peer,
                user = caller.name(),
                method,
                calls = self.calls,
                ms,
                "call ok"
            ),
            (Level::Info, Some((code, outcome))) => tracing::info!(
                peer = %caller.peer,
                user = caller.name(),
                method,
                calls = self.calls,
                failed = self.failed,
                ms,
                code,
                "call failed: {outcome}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_escaped_cut_and_bounded() {
        let mut tally = Tally::new();
        tally.name("system.multicall");
        for n in 0..20 {
            let name = format!("m{}", n % 10);
            tally.add(Some(&name), None);
        }
        tally.add(None, Some(&Fault::not_found("x")));
        tally.add(Some("m0"), Some(&Fault::invalid_params("y")));
        assert_eq!((tally.calls, tally.failed), (22, 2));
        assert_eq!(
            tally.first_failure,
            Some((Fault::METHOD_NOT_FOUND, "method not found"))
        );
        assert_eq!(tally.names(), "system.multicall,m0,m1,m2,m3,m4,m5,m6,…");

        let mut tally = Tally::new();
        assert_eq!(tally.names(), "-");
        tally.name(&format!("a\n{}", "x".repeat(1000)));
        assert_eq!(
            tally.names(),
            format!("a\\n{}", "x".repeat(MAX_NAME_CHARS - 2))
        );
    }
}
