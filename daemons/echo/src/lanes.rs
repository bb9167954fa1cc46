//! Per-CPU lanes: a plain TCP echo session runs on a thread pinned to the CPU its client's
//! packets arrive on, and follows its client to another CPU.
//!
//! Why: a small round trip costs about twice as much when the daemon and the client run on
//! different CPUs (on the 2-core development VM with both cores busy, 64-byte echoes took
//! 16-19 us on one CPU and 31-42 us across; idle, 17 us against 55). A long-running daemon's
//! thread stays where it last ran, and the kernel seldom pulls it over to the client, while
//! xinetd's child, forked as the connection comes in, lands on either side. The socket says
//! where its packets were handled (`SO_INCOMING_CPU`: on loopback the client's CPU, from a
//! network card the CPU serving its receive queue), so the session goes to the lane of that
//! CPU. A lane is a thread with a runtime of its own, made when its CPU first has a client (a
//! daemon that has served no client has none) and kept until the daemon exits: at most one
//! per CPU the daemon may run on.
//!
//! Where a lane's thread cannot be started or pinned (a seccomp filter without
//! `sched_setaffinity`, a CPU taken out of the cgroup's set), new sessions from that CPU stay
//! on the main thread, as with one CPU, and one that would move there stays where it is; a
//! lane that could not pin itself serves the sessions it was already given and ends.
//! `[tcp] lanes = false` turns lanes off (a network card whose one receive queue is handled by
//! one busy CPU would put every remote client's session on that CPU).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// A session moved to a lane: runs there to its end.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The lanes of one daemon, one slot per CPU it may run on.
#[derive(Clone)]
pub(crate) struct Lanes {
    /// Indexed by CPU number; `Some` for the CPUs this process may run on.
    slots: Arc<Mutex<Vec<Option<Slot>>>>,
}

enum Slot {
    /// No client from this CPU yet.
    Unused,
    /// The lane's thread, taking sessions.
    Running(mpsc::UnboundedSender<Job>),
    /// Its thread could not be started or pinned: new sessions from this CPU stay where they
    /// are (on the main thread, or on the lane of a client that moved).
    Unavailable,
}

impl Lanes {
    /// Lanes for the CPUs this process may run on; `None` if that is one CPU (nothing to gain)
    /// or cannot be found out.
    pub(crate) fn for_this_process() -> Option<Lanes> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let slots: Vec<Option<Slot>> = (0..CpuSet::count())
            .map(|cpu| allowed.is_set(cpu).ok()?.then_some(Slot::Unused))
            .collect();
        if slots.iter().flatten().count() < 2 {
            return None;
        }
        Some(Lanes {
            slots: Arc::new(Mutex::new(slots)),
        })
    }

    /// Runs `session` on the lane of the CPU `stream`'s packets arrive on, or here if there is
    /// none, and again on another lane each time it hands the stream back because the client
    /// moved ([`Here::client_moved`]). Returns when the session has ended, wherever it ran.
    pub(crate) async fn run<S, F>(&self, stream: TcpStream, session: S)
    where
        S: FnMut(TcpStream, Here) -> F + Send + 'static,
        F: Future<Output = Option<TcpStream>> + Send + 'static,
    {
        // Dropped by the session's last job when it ends (or with a lane's runtime).
        let (done, ended) = oneshot::channel::<()>();
        let span = tracing::Span::current();
        match self.dispatch(stream, session, done, &span) {
            Some(here) => here.await,
            None => {
                let _ = ended.await;
            }
        }
    }

    /// Sends the session to the lane of `stream`'s CPU; returns it as a future to run on this
    /// thread instead if there is no such lane or the lane's thread has ended.
    fn dispatch<S, F>(
        &self,
        stream: TcpStream,
        session: S,
        done: oneshot::Sender<()>,
        span: &tracing::Span,
    ) -> Option<Job>
    where
        S: FnMut(TcpStream, Here) -> F + Send + 'static,
        F: Future<Output = Option<TcpStream>> + Send + 'static,
    {
        let Some((cpu, lane)) = cpu_of(&stream).and_then(|cpu| self.lane_or_start(cpu)) else {
            let job = self.job(Moving::Registered(stream), Here::STAYS, session, done, span);
            return Some(job);
        };
        // Off this runtime's reactor, onto the lane's (`from_std` registers with the runtime
        // it runs on; readiness the socket already has is reported there at once).
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, "cannot move the session to its lane; closing it");
                return None;
            }
        };
        let here = Here {
            cpu: Some(cpu),
            wakeups: 0,
        };
        let job = self.job(Moving::Unregistered(stream), here, session, done, span);
        match lane.send(job) {
            Ok(()) => None,
            // The lane's thread has ended: the session runs here after all. (`here` names the
            // lane's CPU, so the session looks again within 64 wake-ups.)
            Err(mpsc::error::SendError(job)) => Some(job),
        }
    }

    /// The session running at `here` until it ends or its client moves to another lane's CPU.
    fn job<S, F>(
        &self,
        stream: Moving,
        here: Here,
        mut session: S,
        done: oneshot::Sender<()>,
        span: &tracing::Span,
    ) -> Job
    where
        S: FnMut(TcpStream, Here) -> F + Send + 'static,
        F: Future<Output = Option<TcpStream>> + Send + 'static,
    {
        let lanes = self.clone();
        let job = async move {
            let mut stream = match stream.register() {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!(%err, "cannot take the session on in its lane; closing it");
                    return;
                }
            };
            loop {
                let Some(moved) = session(stream, here).await else {
                    return;
                };
                let elsewhere = cpu_of(&moved).is_some_and(|cpu| Some(cpu) != here.cpu);
                if elsewhere {
                    let span = tracing::Span::current();
                    if let Some(job) = lanes.dispatch(moved, session, done, &span) {
                        job.await;
                    }
                    return;
                }
                stream = moved;
            }
        };
        Box::pin(job.instrument(span.clone()))
    }

    /// `cpu` and its lane, started if this is the CPU's first session; `None` if the daemon
    /// may not run there or its lane could not be started.
    fn lane_or_start(&self, cpu: usize) -> Option<(usize, mpsc::UnboundedSender<Job>)> {
        let mut slots = self.slots.lock().ok()?;
        let slot = slots.get_mut(cpu)?.as_mut()?;
        if let Slot::Unused = slot {
            // Unbounded in type only: each job is a session the server admitted, so its
            // connection limits bound the queue.
            let (jobs, incoming) = mpsc::unbounded_channel();
            *slot = match self.start_lane(cpu, incoming) {
                Ok(()) => Slot::Running(jobs),
                Err(err) => {
                    tracing::warn!(cpu, %err, "cannot start a session thread");
                    Slot::Unavailable
                }
            };
        }
        match slot {
            Slot::Running(lane) => Some((cpu, lane.clone())),
            Slot::Unused | Slot::Unavailable => None,
        }
    }

    /// Starts the thread of `cpu`'s lane, which runs the sessions sent to it on `incoming`.
    /// Does not wait for it to be pinned: sessions queue until it is.
    fn start_lane(
        &self,
        cpu: usize,
        mut incoming: mpsc::UnboundedReceiver<Job>,
    ) -> std::io::Result<()> {
        // Built here, so that a failure (out of file descriptors or memory) leaves the CPU's
        // sessions where they are before any is sent.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let lanes = self.clone();
        std::thread::Builder::new()
            .name(format!("echo-cpu{cpu}"))
            .spawn(move || {
                if let Err(err) = pin_to(cpu) {
                    tracing::warn!(
                        cpu,
                        %err,
                        "cannot pin a thread to the CPU; new sessions from it stay where they are"
                    );
                    // Drops the lane's sender: what was sent runs here, unpinned, then the
                    // thread ends.
                    lanes.set_unavailable(cpu);
                }
                let sessions = TaskTracker::new();
                runtime.block_on(async {
                    while let Some(job) = incoming.recv().await {
                        sessions.spawn(job);
                    }
                    sessions.close();
                    sessions.wait().await;
                });
            })?;
        Ok(())
    }

    fn set_unavailable(&self, cpu: usize) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(Some(slot)) = slots.get_mut(cpu) {
                *slot = Slot::Unavailable;
            }
        }
    }
}

/// A session's socket on its way to a runtime.
enum Moving {
    /// Still registered with this runtime (the session stays).
    Registered(TcpStream),
    /// Taken off the runtime it came from.
    Unregistered(std::net::TcpStream),
}

impl Moving {
    fn register(self) -> std::io::Result<TcpStream> {
        match self {
            Moving::Registered(stream) => Ok(stream),
            Moving::Unregistered(stream) => TcpStream::from_std(stream),
        }
    }
}

/// Where a session runs: lets it notice that its client now runs on another CPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Here {
    /// The lane's CPU; `None` off the lanes (the session stays on its thread).
    cpu: Option<usize>,
    /// Wake-ups so far on this lane: the session looks at every 64th.
    wakeups: u32,
}

impl Here {
    /// Not on a lane: the session stays on the thread it runs on.
    pub(crate) const STAYS: Here = Here {
        cpu: None,
        wakeups: 0,
    };

    /// Whether the client's packets now arrive on another CPU than this lane's: then the
    /// session should hand its stream back to move there. Asked at every wake-up; looks
    /// (one `getsockopt`) at every 64th, so a client that moved is followed soon enough and
    /// a session that never moves pays almost nothing.
    pub(crate) fn client_moved(&mut self, stream: &TcpStream) -> bool {
        let Some(cpu) = self.cpu else {
            return false;
        };
        self.wakeups = self.wakeups.wrapping_add(1);
        self.wakeups % 64 == 0 && cpu_of(stream).is_some_and(|now| now != cpu)
    }
}

/// The CPU that handled `stream`'s last incoming packet.
fn cpu_of(stream: &TcpStream) -> Option<usize> {
    socket2::SockRef::from(stream).cpu_affinity().ok()
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// The server's end of a loopback connection whose client has sent a byte, and the client.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(b"x").await.expect("send");
        server.readable().await.expect("readable");
        (server, client)
    }

    fn allowed_cpus() -> Vec<usize> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        (0..CpuSet::count())
            .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
            .collect()
    }

    #[tokio::test]
    async fn a_session_looks_where_its_client_runs_at_every_64th_wake_up() {
        let (server, _client) = connected().await;
        let cpu = cpu_of(&server).expect("SO_INCOMING_CPU");
        let mut elsewhere = Here {
            cpu: Some(cpu + 1),
            wakeups: 0,
        };
        let looks: Vec<bool> = (0..128).map(|_| elsewhere.client_moved(&server)).collect();
        let moved_at: Vec<usize> = (0..128).filter(|&i| looks[i]).collect();
        assert_eq!(moved_at, [63, 127]);

        let mut there = Here {
            cpu: Some(cpu),
            wakeups: 0,
        };
        assert!((0..128).all(|_| !there.client_moved(&server)));
        let mut stays = Here::STAYS;
        assert!((0..128).all(|_| !stays.client_moved(&server)));
    }

    #[test]
    fn there_are_lanes_only_with_two_cpus_or_more() {
        assert_eq!(
            Lanes::for_this_process().is_some(),
            allowed_cpus().len() >= 2
        );
    }

    /// A client on CPU `a`, then on CPU `b`, 200 round trips on each.
    fn client_moving(addr: SocketAddr, a: usize, b: usize) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut stream = None;
            for cpu in [a, b] {
                pin_to(cpu).expect("pin the client");
                let stream = stream
                    .get_or_insert_with(|| std::net::TcpStream::connect(addr).expect("connect"));
                for i in 0..200u32 {
                    let message = i.to_be_bytes();
                    stream.write_all(&message).expect("send");
                    let mut answer = [0; 4];
                    stream.read_exact(&mut answer).expect("answer");
                    assert_eq!(answer, message);
                }
            }
        })
    }

    /// The threads a session ran on, in order, for a client on CPU `a` then on CPU `b`; `b`'s
    /// lane made unavailable first if `b_unavailable`. `None` with fewer than two CPUs.
    async fn lanes_of_a_moving_client(b_unavailable: bool) -> Option<(usize, usize, Vec<String>)> {
        let cpus = allowed_cpus();
        let Some(lanes) = Lanes::for_this_process() else {
            assert!(cpus.len() < 2, "no lanes with CPUs {cpus:?}");
            return None;
        };
        let (a, b) = (cpus[0], cpus[1]);
        if b_unavailable {
            lanes.set_unavailable(b);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = client_moving(listener.local_addr().expect("address"), a, b);
        let (stream, _) = listener.accept().await.expect("accept");
        let ran_on = Arc::new(Mutex::new(Vec::new()));
        let seen = ran_on.clone();
        let session = move |stream, here| {
            let seen = seen.clone();
            async move {
                let thread = std::thread::current().name().map(str::to_owned);
                seen.lock().expect("record").push(thread);
                let minute = Duration::from_secs(60);
                crate::tcp::echo(stream, minute, minute, here)
                    .await
                    .expect("echo")
            }
        };
        lanes.run(stream, session).await;
        client.join().expect("the client's round trips");
        let ran_on = ran_on.lock().expect("record").clone();
        Some((a, b, ran_on.into_iter().flatten().collect()))
    }

    #[tokio::test]
    async fn a_session_runs_on_its_clients_lane_and_follows_the_client() {
        if let Some((a, b, ran_on)) = lanes_of_a_moving_client(false).await {
            assert_eq!(ran_on, [format!("echo-cpu{a}"), format!("echo-cpu{b}")]);
        }
    }

    #[tokio::test]
    async fn a_session_whose_client_moves_to_an_unavailable_cpu_stays_on_its_lane() {
        if let Some((a, _, ran_on)) = lanes_of_a_moving_client(true).await {
            // Handed back once (the client moved), taken on again where it was, never again.
            assert_eq!(ran_on, [format!("echo-cpu{a}"), format!("echo-cpu{a}")]);
        }
    }
}
