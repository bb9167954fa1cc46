//! One log line per HTTP request, however many calls it made: a `system.multicall` or a
//! JSON-RPC batch of a hundred calls writes one line, not a hundred.

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
        }
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
