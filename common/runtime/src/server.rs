//! The server loop every daemon runs: accept with global and per-address limits, sessions
//! tracked until they end, and the lifecycle systemd sees (READY, STATUS, WATCHDOG, reload on
//! SIGHUP, a bounded drain on SIGTERM, exit when idle).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::LimitsConfig;
use crate::log::SessionLog;

mod login;
mod memory;
pub use login::Login;
use memory::MemoryBudget;

/// A session's view of its connection and the limits it must keep.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address and port (IPv4-mapped IPv6 as the socket reports it).
    pub addr: SocketAddr,
    /// Our end of the connection: the address the client reached (FTP's PASV reply, logs).
    /// Falls back to `addr` in the rare case the kernel cannot say.
    pub local: SocketAddr,
    /// The name of the socket it came in on (`LISTEN_FDNAMES` / `[listen]` key).
    pub listener: Arc<str>,
    /// How long the session waits for the client's next bytes before closing:
    /// `[limits] idle_timeout`, else the protocol's own default.
    pub idle_timeout: Duration,
    /// How long one write may wait for the client to take our output (`[limits]
    /// write_timeout`): a client that stops reading cannot hold a session forever.
    pub write_timeout: Duration,
    /// Cancelled when the daemon begins to shut down: a session at a clean point between
    /// commands may say goodbye and end; one mid-transfer may finish within the deadline.
    pub shutdown: CancellationToken,
    /// Whether the session has logged in: the session calls [`Login::logged_in`] once it
    /// has, and until then its reads are bounded by the login deadline too.
    pub login: Login,
    /// What the session's end line will say: user, TLS, why it ended, bytes moved.
    pub log: SessionLog,
}

/// When the client's next bytes must have come ([`Peer::read_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    /// The moment.
    pub at: tokio::time::Instant,
    /// Whether it is the login deadline (say "login timed out") rather than the idle timeout.
    pub login: bool,
}

impl Peer {
    /// The session has logged in as `user`: it leaves the unauthenticated count and the login
    /// deadline ([`Login::logged_in`]), and its log lines name the user from now on.
    pub fn logged_in(&self, user: &str) {
        self.login.logged_in();
        self.log.user(user);
    }

    /// When the client's next bytes must have come, from now: after the idle timeout, or at
    /// the login deadline if that is sooner and the session has not logged in.
    pub fn read_limit(&self) -> ReadLimit {
        let idle = tokio::time::Instant::now() + self.idle_timeout;
        match self.login.deadline() {
            Some(login) if login <= idle => ReadLimit {
                at: login,
                login: true,
            },
            _ => ReadLimit {
                at: idle,
                login: false,
            },
        }
    }
}

/// What a listener's sessions are admitted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// No login (echo, DNS): only the connection limits.
    Open,
    /// Sessions log in: until they do, they count against `max_unauthenticated_per_ip` and
    /// must do so within `login_timeout`.
    Login,
}

/// One daemon process's accept loops, session bookkeeping and lifecycle.
///
/// Clones share one state (cheap: an `Arc`), so setup code can hand clones to reload hooks and
/// background tasks. Sockets are registered with [`serve_tcp`](Self::serve_tcp) /
/// [`serve_stream`](Self::serve_stream) and begin accepting at once; [`run`](Self::run) then
/// tells systemd the daemon is ready and returns when it has shut down.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    limits: LimitsConfig,
    shutdown: CancellationToken,
    /// Cancelled when the only session of an Accept=yes process is over.
    done: CancellationToken,
    sessions: TaskTracker,
    tasks: TaskTracker,
    active: AtomicUsize,
    served: AtomicU64,
    refused: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    last_activity: Mutex<Instant>,
    reloaders: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// The daemon's own figures for STATUS=, ahead of the session counts.
    status_detail: Mutex<Option<Box<dyn Fn() -> String + Send + Sync>>>,
    socket_activated: bool,
    /// Caught from the server's making on: sockets accept from setup on, before `run`, and a
    /// SIGTERM with no handler yet would kill the process without a clean stop.
    signals: Mutex<Option<Signals>>,
    memory: MemoryBudget,
}

/// The signals `run` acts on.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// One client address's sessions.
#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    sessions: usize,
    /// Those of them that have yet to log in.
    unauthenticated: usize,
}

/// Holds one admitted session's place in the limits; released when dropped.
struct Slot {
    inner: Arc<Inner>,
    ip: IpAddr,
    login: Login,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Leaves the unauthenticated count first, if still in it.
        self.login.session_ended();
        let mut per_ip = self.inner.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            count.sessions -= 1;
            if count.sessions == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.inner.active.fetch_sub(1, Ordering::AcqRel);
        self.inner.touch();
    }
}

impl Inner {
    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// A place for a new session from `ip`, or why there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr, admission: Admission) -> Result<Slot, &'static str> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.active.load(Ordering::Acquire) >= self.limits.max_connections {
            return Err("connection limit reached");
        }
        let now = per_ip.get(&ip).copied().unwrap_or_default();
        if now.sessions >= self.limits.max_connections_per_ip {
            return Err("connection limit per address reached");
        }
        let login = match admission {
            Admission::Open => Login::none(),
            Admission::Login if now.unauthenticated >= self.limits.max_unauthenticated_per_ip => {
                return Err("limit of connections not logged in per address reached");
            }
            Admission::Login => Login::counted(self.limits.login_timeout(), self, ip),
        };
        let count = per_ip.entry(ip).or_default();
        count.sessions += 1;
        if admission == Admission::Login {
            count.unauthenticated += 1;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        drop(per_ip);
        self.touch();
        Ok(Slot {
            inner: self.clone(),
            ip,
            login,
        })
    }

    /// A session from `ip` logged in, or ended without.
    fn leave_unauthenticated(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&ip) {
            count.unauthenticated = count.unauthenticated.saturating_sub(1);
        }
    }

    fn status(&self) -> String {
        let sessions = format!(
            "{} active sessions, {} served, {} refused",
            self.active.load(Ordering::Acquire),
            self.served.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed)
        );
        match &*self.status_detail.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(detail) => format!("{}; {sessions}", detail()),
            None => sessions,
        }
    }
}

impl Server {
    /// `socket_activated` says whether the listeners came from systemd; `idle_exit` only makes
    /// sense then, because only then is someone holding the socket while we are gone.
    pub fn new(limits: LimitsConfig, socket_activated: bool) -> Self {
        raise_fd_limit();
        let memory = MemoryBudget::new(&limits);
        Server {
            inner: Arc::new(Inner {
                memory,
                limits,
                shutdown: CancellationToken::new(),
                done: CancellationToken::new(),
                sessions: TaskTracker::new(),
                tasks: TaskTracker::new(),
                active: AtomicUsize::new(0),
                served: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                per_ip: Mutex::new(HashMap::new()),
                last_activity: Mutex::new(Instant::now()),
                reloaders: Mutex::new(Vec::new()),
                status_detail: Mutex::new(None),
                socket_activated,
                // Outside a runtime (unit tests) `run` makes them itself.
                signals: Mutex::new(
                    tokio::runtime::Handle::try_current()
                        .ok()
                        .and_then(|_| Signals::new().ok()),
                ),
            }),
        }
    }

    /// The `[limits]` this server enforces (connection counts, timeouts, idle exit).
    pub fn limits(&self) -> &LimitsConfig {
        &self.inner.limits
    }

    /// Cancelled when the daemon begins to shut down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Number of sessions running now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Whether a datagram (or other work that is not a session) may be served now: `false`
    /// while memory is over `[limits] memory_soft_limit`, counted as refused. The UDP services
    /// then answer as cheaply as they can, or not at all.
    pub fn admits_datagram(&self) -> bool {
        if self.inner.memory.admits() {
            return true;
        }
        let refused = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(refused, "memory soft limit reached, refusing datagrams");
        }
        false
    }

    /// Marks activity that is not a session (a UDP packet), so `idle_exit` waits.
    pub fn touch(&self) {
        self.inner.touch();
    }

    /// Puts the daemon's own figures (cache hits, queue length) in STATUS=, before the
    /// session counts; the server loop sends it when it changes.
    pub fn set_status_detail(&self, detail: impl Fn() -> String + Send + Sync + 'static) {
        *self
            .inner
            .status_detail
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(detail));
    }

    /// Runs `reload` on SIGHUP (certificates, config parts that are safe to change).
    pub fn on_reload(&self, reload: impl Fn() + Send + Sync + 'static) {
        self.inner
            .reloaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(reload));
    }

    /// Accepts connections on `listener` until shutdown; each admitted one runs `session`.
    /// A connection over the limits is sent `busy_reply` (if any, best effort) and closed.
    pub fn serve_tcp<H, F>(
        &self,
        name: &str,
        listener: std::net::TcpListener,
        busy_reply: Option<&'static [u8]>,
        session: H,
    ) -> std::io::Result<()>
    where
        H: Fn(TcpStream, Peer) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.accept_tcp(name, listener, busy_reply, Admission::Open, session)
    }

    /// [`serve_tcp`](Self::serve_tcp), with sessions admitted as `admission` says.
    fn accept_tcp<H, F>(
        &self,
        name: &str,
        listener: std::net::TcpListener,
        busy_reply: Option<&'static [u8]>,
        admission: Admission,
        session: H,
    ) -> std::io::Result<()>
    where
        H: Fn(TcpStream, Peer) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let local = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let server = self.clone();
        tracing::info!(socket = %name, address = %local, "listening (tcp)");
        self.inner.tasks.spawn(async move {
            let shutdown = server.inner.shutdown.clone();
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    // Checked here rather than in `admit`: an Accept=yes process has one
                    // connection and nothing to gain by refusing it.
                    Ok((stream, addr)) if !server.inner.memory.admits() => {
                        server.refuse(stream, addr, busy_reply, "memory soft limit reached")
                    }
                    Ok((stream, addr)) => {
                        server.start_session(stream, addr, &name, busy_reply, admission, &session)
                    }
                    Err(err) => {
                        // EMFILE, ENOBUFS and friends: wait a little rather than spin.
                        tracing::warn!(socket = %name, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }

    fn start_session<H, F>(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        name: &Arc<str>,
        busy_reply: Option<&'static [u8]>,
        admission: Admission,
        session: &H,
    ) where
        H: Fn(TcpStream, Peer) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let slot = match self.inner.admit(addr.ip(), admission) {
            Ok(slot) => slot,
            Err(reason) => return self.refuse(stream, addr, busy_reply, reason),
        };
        self.inner.served.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let peer = Peer {
            addr,
            local: stream.local_addr().unwrap_or(addr),
            listener: name.clone(),
            idle_timeout: self.inner.limits.idle_timeout(),
            write_timeout: self.inner.limits.write_timeout,
            shutdown: self.inner.shutdown.clone(),
            login: slot.login.clone(),
            log: SessionLog::default(),
        };
        let span = tracing::info_span!(
            "session",
            peer = %addr,
            socket = %name,
            user = tracing::field::Empty
        );
        SessionLog::log_start(addr, peer.local, name);
        // Logged outside the span: the line names peer and user itself, in the same fields in
        // the journal and on stderr.
        let end_line = peer
            .log
            .end_line(addr, name.clone(), self.inner.shutdown.clone());
        let fut = tracing::Instrument::instrument(session(stream, peer), span);
        self.inner.sessions.spawn(async move {
            let _slot = slot;
            let _end_line = end_line;
            fut.await;
        });
    }

    /// Counts a refused connection and sends it `busy_reply`, if any.
    fn refuse(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        busy_reply: Option<&'static [u8]>,
        reason: &'static str,
    ) {
        let refused = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(peer = %addr, refused, "{reason}, refusing");
        }
        if let Some(reply) = busy_reply {
            // Best effort and bounded: a refused client gets no more than one write.
            self.inner.tasks.spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply)).await;
            });
        }
    }

    /// Serves the one connection of an Accept=yes (inetd-style) activation; the daemon exits
    /// when it ends.
    pub fn serve_connected<H, F>(
        &self,
        name: &str,
        stream: std::net::TcpStream,
        session: H,
    ) -> std::io::Result<()>
    where
        H: Fn(TcpStream, Peer) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.connected(name, stream, Admission::Open, session)
    }

    /// [`serve_connected`](Self::serve_connected), the session admitted as `admission` says.
    fn connected<H, F>(
        &self,
        name: &str,
        stream: std::net::TcpStream,
        admission: Admission,
        session: H,
    ) -> std::io::Result<()>
    where
        H: Fn(TcpStream, Peer) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        stream.set_nonblocking(true)?;
        let stream = TcpStream::from_std(stream)?;
        let addr = stream.peer_addr()?;
        let done = self.inner.done.clone();
        let session = move |stream, peer| {
            let fut = session(stream, peer);
            let done = done.clone();
            async move {
                fut.await;
                done.cancel();
            }
        };
        self.start_session(stream, addr, &Arc::from(name), None, admission, &session);
        Ok(())
    }

    /// Serves a stream socket of either kind: a listener (each connection runs `session`) or
    /// the single connection of an Accept=yes activation.
    pub fn serve_stream<H, F>(
        &self,
        listener: crate::activation::Listener,
        busy_reply: Option<&'static [u8]>,
        session: H,
    ) -> anyhow::Result<()>
    where
        H: Fn(TcpStream, Peer) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.serve_stream_as(listener, busy_reply, Admission::Open, session)
    }

    /// [`serve_stream`](Self::serve_stream), with sessions admitted as `admission` says.
    pub(crate) fn serve_stream_as<H, F>(
        &self,
        listener: crate::activation::Listener,
        busy_reply: Option<&'static [u8]>,
        admission: Admission,
        session: H,
    ) -> anyhow::Result<()>
    where
        H: Fn(TcpStream, Peer) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        use crate::activation::Socket;
        let name = listener.name;
        match listener.socket {
            Socket::Tcp(l) => self.accept_tcp(&name, l, busy_reply, admission, session)?,
            Socket::Connected(s) => self.connected(&name, s, admission, session)?,
            Socket::Udp(_) => anyhow::bail!("socket {name:?} is UDP; this service is TCP only"),
        }
        Ok(())
    }

    /// Runs a background task (a UDP loop, a cache sweeper) that ends at shutdown.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(task);
    }

    /// Tells systemd we are ready, then runs until SIGTERM/SIGINT, idle exit, or the end of an
    /// Accept=yes session; then drains sessions up to the shutdown deadline.
    pub async fn run(self) -> anyhow::Result<()> {
        let inner = &self.inner;
        let caught = inner
            .signals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Signals {
            term: mut sigterm,
            int: mut sigint,
            hup: mut sighup,
        } = match caught {
            Some(signals) => signals,
            None => Signals::new()?,
        };
        let mut last_status = inner.status();
        notify(&[NotifyState::Ready, NotifyState::Status(&last_status)]);

        let mut watchdog_usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
            .then(|| Duration::from_micros(watchdog_usec / 2));
        let tick_every = watchdog
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        let idle_exit = inner.limits.idle_exit().filter(|_| {
            if !inner.socket_activated {
                tracing::info!("idle_exit is ignored: the sockets are not socket-activated");
            }
            inner.socket_activated
        });

        let reason = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = inner.done.cancelled() => break "connection closed",
                _ = sighup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    notify(&[NotifyState::Reloading]);
                    for reload in inner.reloaders.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                        reload();
                    }
                    notify(&[NotifyState::Ready]);
                }
                _ = tick.tick() => {
                    if watchdog.is_some() {
                        notify(&[NotifyState::Watchdog]);
                    }
                    let status = inner.status();
                    if status != last_status {
                        notify(&[NotifyState::Status(&status)]);
                        last_status = status;
                    }
                    if let Some(idle) = idle_exit {
                        let quiet = inner.last_activity.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                        if inner.active.load(Ordering::Acquire) == 0 && quiet >= idle {
                            break "idle";
                        }
                    }
                }
            }
        };

        tracing::info!(reason, active = self.active(), "shutting down");
        notify(&[
            NotifyState::Stopping,
            NotifyState::Status(&format!("stopping ({reason}): {}", inner.status())),
        ]);
        inner.shutdown.cancel();
        inner.tasks.close();
        inner.sessions.close();
        let deadline = inner.limits.shutdown_timeout;
        if tokio::time::timeout(deadline, inner.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                cut = self.active(),
                "sessions still running at the shutdown deadline are cut"
            );
        }
        // Background tasks (accept loops, UDP loops) watch the same token.
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.tasks.wait()).await;
        Ok(())
    }
}

fn notify(states: &[NotifyState<'_>]) {
    // Outside systemd there is no NOTIFY_SOCKET and this does nothing.
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::debug!(error = %err, "sd_notify failed");
    }
}

/// Lifts the soft open-files limit to the hard one: systemd's default soft limit (1024) is far
/// below the connections a daemon is meant to hold.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

#[cfg(test)]
mod tests;
