//! RFC 862 echo on a bare TCP socket: the path of small round trips, kept to the system calls
//! a blocking echo makes plus the one wait (`epoll_wait`) that serves every session at once.
//!
//! Per message: the wait, one `recv`, one `send`. No `recv` that only says EAGAIN (a read that
//! did not fill the buffer emptied the socket), no timer armed per message (the idle timer is
//! armed once and moved only when it goes off; the write timer only when the socket cannot
//! take the whole answer at once), no allocation (reads go into the thread's one buffer).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::lanes::Here;
use crate::service::timed;

/// How much one read takes. A session holds no buffer of its own while data flows, only what
/// the client has not yet read back (at most this much), and nothing while the client is idle,
/// so thousands of idle sessions cost little memory.
const BUFFER: usize = 64 * 1024;

thread_local! {
    /// The buffer the sessions of this thread read into. A read and the write of what it got
    /// happen with no await between them, so one buffer serves every session: no 64 KiB
    /// allocation per wake-up (malloc and free showed in profiles of small round trips).
    static SHARED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Echoes until the client closes, stays silent for `idle_timeout` or leaves our answer
/// unread for `write_timeout`; or until the client has moved to another CPU than `here`'s
/// lane: then the stream, with what the client sent not yet read, is returned for the session
/// to go on there.
///
/// A client that stops reading stalls our write, so we stop reading too: memory stays at one
/// buffer's worth whatever the client does, and the write timeout ends the session.
pub(crate) async fn echo(
    mut stream: TcpStream,
    idle_timeout: Duration,
    write_timeout: Duration,
    mut here: Here,
) -> io::Result<Option<TcpStream>> {
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        readable_within(&stream, idle.as_mut(), idle_timeout).await?;
        if here.client_moved(&stream) {
            return Ok(Some(stream));
        }
        loop {
            match echo_available(&stream)? {
                Echoed::Drained => break,
                Echoed::More => {}
                Echoed::Unsent(rest) => timed(write_timeout, stream.write_all(&rest)).await?,
                Echoed::Closed => return stream.shutdown().await.map(|()| None),
            }
        }
    }
}

/// What one read and the write of what it got came to.
#[derive(Debug, PartialEq, Eq)]
enum Echoed {
    /// All of it went back and the socket is empty: wait for the client.
    Drained,
    /// All of it went back and the read filled the buffer: there may be more.
    More,
    /// The socket did not take all of the answer: the rest, for the write timeout to bound.
    Unsent(Vec<u8>),
    /// The client closed its side.
    Closed,
}

/// Reads what the socket holds (up to [`BUFFER`]) and sends it back as far as the socket
/// takes it without waiting.
fn echo_available(stream: &TcpStream) -> io::Result<Echoed> {
    with_buffer(|buf| {
        let got = match read_available(stream, buf) {
            Ok(0) => return Ok(Echoed::Closed),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Echoed::Drained),
            Err(e) => return Err(e),
        };
        let data = buf.get(..got).unwrap_or_default();
        let sent = match stream.try_write(data) {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        Ok(match data.get(sent..) {
            Some(rest) if !rest.is_empty() => Echoed::Unsent(rest.to_vec()),
            _ if got == buf.len() => Echoed::More,
            _ => Echoed::Drained,
        })
    })
}

/// Runs `f` on the thread's shared buffer (zeroed once, on first use).
fn with_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SHARED.with(|shared| match shared.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() != BUFFER {
                buf.resize(BUFFER, 0);
            }
            f(&mut buf)
        }
        // Not reached (nothing awaits while holding it); a buffer of its own if it were.
        Err(_) => f(&mut vec![0; BUFFER]),
    })
}

/// Waits until `stream` is readable, for at most `timeout` from now; TimedOut after that.
///
/// `timer` is the session's one idle timer. It stays in the runtime's timer wheel between
/// waits, with an earlier deadline than this wait's (set by an earlier wait): when it goes off
/// it is moved to this wait's deadline, and only when it goes off at that one has the client
/// been silent for `timeout`. The readiness is polled directly (`poll_read_ready`), which keeps
/// the task's waker in the socket's reader slot rather than queueing a waiter per wait.
async fn readable_within(
    stream: &TcpStream,
    mut timer: Pin<&mut Sleep>,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    poll_fn(|cx| {
        if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
            return Poll::Ready(ready);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= deadline {
                return Poll::Ready(Err(crate::service::idle_timeout_error()));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Reads what the socket holds into `buf`; WouldBlock when it holds nothing.
///
/// A read that leaves room in the buffer emptied the socket: the stream's readiness is cleared
/// then (as tokio's own `poll_read` does), so that the next read says WouldBlock without a
/// `recv` and the session goes straight back to waiting. Data that comes in meanwhile raises
/// a new readiness event, which clearing does not lose (tokio compares the event's tick).
fn read_available(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        got = stream.try_read(buf)?;
        if got > 0 && got < buf.len() {
            // Not an error: the signal to try_io that the socket is empty now.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(got)
        }
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A session on a loopback connection; the client's end.
    async fn session(
        idle: Duration,
        write: Duration,
    ) -> (
        TcpStream,
        tokio::task::JoinHandle<io::Result<Option<TcpStream>>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, tokio::spawn(echo(server, idle, write, Here::STAYS)))
    }

    async fn round_trip(client: &mut TcpStream, message: &[u8]) {
        client.write_all(message).await.expect("send");
        let mut answer = vec![0; message.len()];
        client.read_exact(&mut answer).await.expect("answer");
        assert_eq!(answer, message);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_for_the_idle_timeout_ends_the_session() {
        let (mut client, session) = session(10 * SECOND, SECOND).await;
        round_trip(&mut client, b"hello").await;
        let started = Instant::now();
        let result = session.await.expect("session task");
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(io::ErrorKind::TimedOut)
        );
        // The clock is paused: only timers move it, so this is where the idle timer fired.
        assert_eq!(started.elapsed(), 10 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn each_message_gives_the_client_the_whole_idle_timeout_again() {
        let (mut client, session) = session(10 * SECOND, SECOND).await;
        // Past the first deadline by far, never silent for 10 s: the idle timer, armed at the
        // start, goes off and is moved on each time.
        for _ in 0..5 {
            tokio::time::sleep(6 * SECOND).await;
            round_trip(&mut client, b"still here").await;
        }
        let last = Instant::now();
        let result = session.await.expect("session task");
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(io::ErrorKind::TimedOut)
        );
        assert_eq!(last.elapsed(), 10 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_cut_by_the_write_timeout() {
        let (mut client, session) = session(3600 * SECOND, 5 * SECOND).await;
        // Far more than the two sockets' buffers hold, never read: the daemon's write stalls.
        let chunk = vec![b'x'; BUFFER];
        let sender = tokio::spawn(async move {
            for _ in 0..4096 {
                if client.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            client
        });
        let result = session.await.expect("session task");
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(io::ErrorKind::TimedOut)
        );
        sender.abort();
    }

    #[tokio::test]
    async fn an_answer_held_for_a_slow_reader_is_not_the_next_sessions_buffer() {
        // The sessions share the thread's read buffer; what one of them could not send yet must
        // be its own copy. Client A sends far more than the sockets hold without reading, so
        // its session holds an unsent answer, while client B's session reads through the
        // shared buffer; then A reads everything back.
        let (a, session_a) = session(60 * SECOND, 60 * SECOND).await;
        let (mut b, session_b) = session(60 * SECOND, 60 * SECOND).await;
        let (mut a_reader, mut a_writer) = a.into_split();
        let data: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writing = tokio::spawn(async move {
            a_writer.write_all(&sent).await.expect("A sends");
            a_writer
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..100u8 {
            round_trip(&mut b, &[0xBB ^ i; 1000]).await;
        }
        let mut echoed = vec![0; data.len()];
        a_reader.read_exact(&mut echoed).await.expect("A's echo");
        assert!(echoed == data, "A's answer came back changed");
        let mut a_writer = writing.await.expect("writer");
        a_writer.shutdown().await.expect("A closes");
        b.shutdown().await.expect("B closes");
        assert!(matches!(session_a.await.expect("session A"), Ok(None)));
        assert!(matches!(session_b.await.expect("session B"), Ok(None)));
    }

    #[tokio::test]
    async fn bursts_and_small_messages_come_back_whole_and_in_order() {
        let (client, session) = session(60 * SECOND, 60 * SECOND).await;
        let (mut reader, mut writer) = client.into_split();
        // Several buffers' worth at once (full reads), then small messages (short reads that
        // clear the readiness), then the close.
        let data: Vec<u8> = (0..5 * BUFFER + 123).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.expect("burst");
            writer
        });
        let mut echoed = vec![0; data.len()];
        reader.read_exact(&mut echoed).await.expect("burst echoed");
        assert!(echoed == data, "the burst came back changed");
        let mut writer = writing.await.expect("writer");
        for i in 0..200u8 {
            let message = [i; 64];
            writer.write_all(&message).await.expect("send");
            let mut answer = [0; 64];
            reader.read_exact(&mut answer).await.expect("answer");
            assert_eq!(answer, message);
        }
        writer.shutdown().await.expect("close");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.expect("end");
        assert!(rest.is_empty());
        assert!(matches!(session.await.expect("session task"), Ok(None)));
    }
}
