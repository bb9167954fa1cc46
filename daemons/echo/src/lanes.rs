//! Per-CPU lanes: a plain TCP session runs on a thread pinned to the CPU its client's packets
//! arrive on.
//!
//! Why: a small round trip costs about twice as much when the daemon and the client run on
//! different CPUs (on the 2-core development VM with both cores busy, 64-byte echoes took
//! 16-19 us on one CPU and 31-42 us across). A long-running daemon's thread stays where it
//! last ran, and when the cores are busy the kernel seldom pulls it over to the client; xinetd
//! does not have this problem because its child, forked as the connection comes in, starts
//! on the client's CPU. The socket says where its packets were handled (`SO_INCOMING_CPU`: on
//! loopback the client's CPU, from a network card the CPU serving its receive queue), so the
//! session goes to the lane of that CPU. A lane is a thread with a runtime of its own, made
//! when its CPU first has a client: an idle daemon has none.
//!
//! Where a thread cannot be pinned (a seccomp filter without `sched_setaffinity`, a CPU
//! outside the process's affinity), sessions stay on the main thread, as with one CPU.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

/// A session moved to a lane: runs there to its end.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The lanes of one daemon, one slot per CPU it may run on.
#[derive(Clone)]
pub(crate) struct Lanes {
    inner: Arc<Mutex<Slots>>,
}

struct Slots {
    /// Indexed by CPU number; `Some` for the CPUs this process may run on.
    lanes: Vec<Option<Slot>>,
}

enum Slot {
    /// No client from this CPU yet.
    Unused,
    Running(mpsc::UnboundedSender<Job>),
    /// Pinning failed: this CPU's sessions run on the main thread.
    Unavailable,
}

impl Lanes {
    /// Lanes for the CPUs this process may run on; `None` if that is one CPU (nothing to gain)
    /// or cannot be found out.
    pub(crate) fn for_this_process() -> Option<Lanes> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let lanes: Vec<Option<Slot>> = (0..CpuSet::count())
            .map(|cpu| allowed.is_set(cpu).ok()?.then_some(Slot::Unused))
            .collect();
        if lanes.iter().flatten().count() < 2 {
            return None;
        }
        Some(Lanes {
            inner: Arc::new(Mutex::new(Slots { lanes })),
        })
    }

    /// Runs `session` on the lane of the CPU `stream`'s packets arrive on, or here if there is
    /// none, and again on another lane each time it returns the stream because the client
    /// moved ([`Here::client_moved`]). Returns when the session has ended, wherever it ran.
    pub(crate) async fn run<S, F>(&self, stream: TcpStream, session: S)
    where
        S: FnMut(TcpStream, Here) -> F + Send + 'static,
        F: Future<Output = Option<TcpStream>> + Send + 'static,
    {
        // Dropped by the session's last job when it ends (or by a lane's thread that ends).
        let (done, ended) = oneshot::channel::<()>();
        let span = tracing::Span::current();
        match self.clone().dispatch(stream, session, done, &span) {
            Some(here) => here.await,
            None => {
                let _ = ended.await;
            }
        }
    }

    /// Sends the session to the lane for `stream`'s CPU; returns it as a future to run here
    /// if there is no such lane.
    fn dispatch<S, F>(
        self,
        stream: TcpStream,
        session: S,
        done: oneshot::Sender<()>,
        span: &tracing::Span,
    ) -> Option<Job>
    where
        S: FnMut(TcpStream, Here) -> F + Send + 'static,
        F: Future<Output = Option<TcpStream>> + Send + 'static,
    {
        let Some((cpu, lane)) = self.lane_for(&stream) else {
            return Some(self.job(
                Moving::Registered(stream),
                Here::NOWHERE,
                session,
                done,
                span,
            ));
        };
        // Off this runtime's reactor, onto the lane's (`from_std` registers with the runtime
        // it runs on).
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%err, "moving the session to its lane");
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
            // The lane's thread ended: the session runs here after all.
            Err(mpsc::error::SendError(job)) => Some(job),
        }
    }

    /// The session running at `here` until it ends or its client moves to another lane's CPU.
    fn job<S, F>(
        self,
        stream: Moving,
        mut here: Here,
        mut session: S,
        done: oneshot::Sender<()>,
        span: &tracing::Span,
    ) -> Job
    where
        S: FnMut(TcpStream, Here) -> F + Send + 'static,
        F: Future<Output = Option<TcpStream>> + Send + 'static,
    {
        let job_span = span.clone();
        Box::pin(
            async move {
                let mut stream = match stream.register() {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(%err, "taking the session on in its lane");
                        return;
                    }
                };
                loop {
                    let Some(moved) = session(stream, here).await else {
                        return;
                    };
                    match self.lane_for(&moved) {
                        Some((cpu, _)) if Some(cpu) == here.cpu => {}
                        Some(_) => {
                            let span = tracing::Span::current();
                            if let Some(job) = self.dispatch(moved, session, done, &span) {
                                job.await;
                            }
                            return;
                        }
                        None => here = Here::NOWHERE,
                    }
                    stream = moved;
                    here.wakeups = 0;
                }
            }
            .instrument(job_span),
        )
    }

    /// The running lane for `stream`'s CPU, started if it is the first of that CPU.
    fn lane_for(&self, stream: &TcpStream) -> Option<(usize, mpsc::UnboundedSender<Job>)> {
        let cpu = cpu_of(stream)?;
        let mut slots = self.inner.lock().ok()?;
        let slot = slots.lanes.get_mut(cpu)?.as_mut()?;
        if let Slot::Unused = slot {
            *slot = match start_lane(cpu) {
                Ok(lane) => {
                    tracing::debug!(cpu, "session lane started");
                    Slot::Running(lane)
                }
                Err(err) => {
                    tracing::warn!(cpu, %err, "cannot run a thread on the client's CPU; its sessions run on the main thread");
                    Slot::Unavailable
                }
            };
        }
        match slot {
            Slot::Running(lane) => Some((cpu, lane.clone())),
            Slot::Unused | Slot::Unavailable => None,
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
    /// The lane's CPU; `None` off the lanes (the session never moves).
    cpu: Option<usize>,
    wakeups: u32,
}

impl Here {
    /// Not on a lane: the session stays where it is.
    pub(crate) const NOWHERE: Here = Here {
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
/// Starts the thread of `cpu`'s lane and waits until it is pinned there.
fn start_lane(cpu: usize) -> anyhow::Result<mpsc::UnboundedSender<Job>> {
    let (jobs, mut incoming) = mpsc::unbounded_channel::<Job>();
    let (pinned, started) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
    std::thread::Builder::new()
        .name(format!("echo-cpu{cpu}"))
        .spawn(move || {
            let runtime = pin_to(cpu).and_then(|()| {
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            });
            let runtime = match runtime {
                Ok(runtime) => {
                    let _ = pinned.send(Ok(()));
                    runtime
                }
                Err(err) => return drop(pinned.send(Err(err))),
            };
            runtime.block_on(async move {
                while let Some(job) = incoming.recv().await {
                    tokio::spawn(job);
                }
            });
        })?;
    started.recv()??;
    Ok(jobs)
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
        let mut nowhere = Here::NOWHERE;
        assert!((0..128).all(|_| !nowhere.client_moved(&server)));
    }

    #[test]
    fn there_are_lanes_only_with_two_cpus_or_more() {
        let allowed = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        let cpus = (0..CpuSet::count())
            .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
            .count();
        assert_eq!(Lanes::for_this_process().is_some(), cpus >= 2);
    }

    #[test]
    fn a_lane_runs_on_its_cpu_only() {
        let allowed = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        let cpu = (0..CpuSet::count())
            .find(|&cpu| allowed.is_set(cpu).unwrap_or(false))
            .expect("a CPU");
        let lane = start_lane(cpu).expect("lane");
        let (answer, asked) = std::sync::mpsc::channel();
        let job: Job = Box::pin(async move {
            let affinity = sched_getaffinity(Pid::from_raw(0)).expect("lane's affinity");
            let on: Vec<usize> = (0..CpuSet::count())
                .filter(|&c| affinity.is_set(c).unwrap_or(false))
                .collect();
            let name = std::thread::current().name().map(str::to_owned);
            let _ = answer.send((on, name));
        });
        assert!(lane.send(job).is_ok());
        let (on, name) = asked.recv().expect("the lane ran the job");
        assert_eq!(on, [cpu]);
        assert_eq!(name, Some(format!("echo-cpu{cpu}")));
    }
}
