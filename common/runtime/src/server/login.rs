//! The login side of admission: a session of a daemon with a login counts against
//! `[limits] max_unauthenticated_per_ip` and must log in within `[limits] login_timeout`,
//! until it tells the runtime, once, that it has logged in ([`Login::logged_in`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;

/// Whether a session has logged in yet; every clone of a session's [`Peer`](super::Peer)
/// shares it. Sessions of daemons without a login (echo, dns-forwarder) have
/// [`Login::none`]: no deadline, and nothing to tell.
#[derive(Clone, Debug, Default)]
pub struct Login {
    state: Option<Arc<State>>,
}

#[derive(Debug)]
struct State {
    logged_in: AtomicBool,
    /// When the session must have logged in by, if it must.
    deadline: Option<Instant>,
    /// The server's count of this address's unauthenticated sessions, to leave on login.
    count: Option<Counted>,
}

/// A place in the server's count of unauthenticated sessions from one address.
struct Counted {
    server: Weak<Inner>,
    ip: IpAddr,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").field("ip", &self.ip).finish()
    }
}

impl Login {
    /// A session with no login to wait for.
    pub fn none() -> Self {
        Login { state: None }
    }

    /// A session that must log in within `timeout` from now (if any), not counted by a
    /// server: for tests and sessions served outside one.
    pub fn pending(timeout: Option<Duration>) -> Self {
        Login::with_count(timeout, None)
    }

    pub(super) fn counted(timeout: Option<Duration>, server: &Arc<Inner>, ip: IpAddr) -> Self {
        let count = Counted {
            server: Arc::downgrade(server),
            ip,
        };
        Login::with_count(timeout, Some(count))
    }

    fn with_count(timeout: Option<Duration>, count: Option<Counted>) -> Self {
        Login {
            state: Some(Arc::new(State {
                logged_in: AtomicBool::new(false),
                deadline: timeout.map(|t| Instant::now() + t),
                count,
            })),
        }
    }

    /// Tells the runtime that the session has logged in: it no longer counts against
    /// `max_unauthenticated_per_ip` and the login deadline is lifted. Call it once the
    /// credentials are checked; calling it again does nothing.
    pub fn logged_in(&self) {
        if let Some(state) = &self.state {
            state.leave_count();
        }
    }

    /// Whether [`logged_in`](Self::logged_in) was called (always `true` for [`Login::none`]).
    pub fn is_logged_in(&self) -> bool {
        self.state
            .as_ref()
            .is_none_or(|s| s.logged_in.load(Ordering::Acquire))
    }

    /// The moment the session is closed unless it has logged in by then; `None` once it has,
    /// or when there is no such limit.
    pub fn deadline(&self) -> Option<Instant> {
        let state = self.state.as_ref()?;
        if state.logged_in.load(Ordering::Acquire) {
            return None;
        }
        state.deadline
    }

    /// Called when the session ends: an unauthenticated session leaves the count.
    pub(super) fn session_ended(&self) {
        if let Some(state) = &self.state {
            state.leave_count();
        }
    }
}

impl State {
    /// Leaves the unauthenticated count, exactly once whichever of login and the end of the
    /// session comes first.
    fn leave_count(&self) {
        if self.logged_in.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(count) = &self.count {
            if let Some(server) = count.server.upgrade() {
                server.leave_unauthenticated(count.ip);
            }
        }
    }
}
