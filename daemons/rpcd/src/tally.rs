//! One log line per HTTP request, however many calls it made: a `system.multicall` or a
//! JSON-RPC batch of a hundred calls writes one line, not a hundred.
//!
//! The line is at INFO when it is worth an audit trail: a logged-in user's request, one that
//! ran a configured command, one with a failed call. An anonymous request whose calls were all
//! read-only builtins (`host.uptime`, introspection) and succeeded logs at DEBUG: at tens of
//! thousands of requests a second, writing each one cost a tenth of the daemon's time.

use std::time::Instant;

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
    fn worth_auditing(&self, caller: &Caller) -> bool {
        caller.user.is_some() || self.ran_command || self.first_failure.is_some()
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
        let shown: String = method
            .chars()
            .take(MAX_NAME_CHARS)
            .flat_map(char::escape_debug)
            .collect();
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
        let mut names = self.names.join(",");
        if self.more_names {
            names.push_str(",…");
        }
        if names.is_empty() {
            names.push('-');
        }
        names
    }

    /// Writes the request's log line.
    pub(crate) fn log(&self, caller: &Caller) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !self.worth_auditing(caller) {
            tracing::debug!(
                peer = %caller.peer,
                user = caller.name(),
                method = self.names(),
                calls = self.calls,
                ms,
                "call ok"
            );
            return;
        }
        let method = self.names();
        match self.first_failure {
            None => tracing::info!(
                peer = %caller.peer,
                user = caller.name(),
                method,
                calls = self.calls,
                ms,
                "call ok"
            ),
            Some((code, outcome)) => tracing::info!(
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
