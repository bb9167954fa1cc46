//! RFC 862 echo on a bare TCP socket: the path of small round trips, kept to the system calls
//! a blocking echo makes plus the one wait (`epoll_wait`) that serves every session at once.
//!
//! Per message: the wait, one `recv`, one `send`. No `recv` that only says EAGAIN (a read that
//! did not fill the buffer emptied the socket), no timer armed per message (the idle timer is
//! armed once and moved only when it goes off; the write timer only when the socket cannot
//! take the whole answer at once).

use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::service::timed;

/// Size of a session's transfer buffer while data flows; released while the client is idle,
/// so thousands of idle sessions cost little memory.
const BUFFER: usize = 64 * 1024;

/// Echoes until the client closes, stays silent for `idle_timeout` or leaves our answer
/// unread for `write_timeout`.
///
/// No buffer is held while waiting for the client. A client that stops reading stalls our
/// write, so we stop reading too: memory stays at one buffer whatever the client does, and
/// the write timeout ends the session.
pub(crate) async fn echo(
    mut stream: TcpStream,
    idle_timeout: Duration,
    write_timeout: Duration,
) -> io::Result<()> {
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        readable_within(&stream, idle.as_mut(), idle_timeout).await?;
        // Uninitialised capacity: zeroing 64 KiB per wake-up showed up in profiles of small
        // round trips.
        let mut buf = Vec::with_capacity(BUFFER);
        loop {
            buf.clear();
            match read_available(&stream, &mut buf) {
                Ok(0) => return stream.shutdown().await,
                Ok(_) => write_all(&mut stream, &buf, write_timeout).await?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits until `stream` is readable, for at most `timeout` from now; TimedOut after that.
///
/// `timer` is the session's one idle timer. It stays in the runtime's timer wheel between
/// waits, with an earlier deadline than this wait's (set by an earlier wait): when it goes off
/// it is moved to this wait's deadline, and only when it goes off at that one has the client
/// been silent for `timeout`.
async fn readable_within(
    stream: &TcpStream,
    mut timer: Pin<&mut Sleep>,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        tokio::select! {
            biased;
            ready = stream.readable() => return ready,
            () = timer.as_mut() => {
                if timer.deadline() >= deadline {
                    return Err(crate::service::idle_timeout_error());
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// Reads what the socket holds into `buf`'s spare capacity; WouldBlock when it holds nothing.
///
/// A read that leaves room in the buffer emptied the socket: the stream's readiness is cleared
/// then (as tokio's own `poll_read` does), so that the next read says WouldBlock without a
/// `recv` and the session goes straight back to waiting. Data that comes in meanwhile raises
/// a new readiness event, which clearing does not lose (tokio compares the event's tick).
fn read_available(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        got = stream.try_read_buf(buf)?;
        if got > 0 && buf.len() < buf.capacity() {
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

/// Writes all of `data`. The socket nearly always takes it at once; the write timeout is
/// armed only for what it does not take.
async fn write_all(stream: &mut TcpStream, data: &[u8], limit: Duration) -> io::Result<()> {
    let rest = match stream.try_write(data) {
        Ok(n) => data.get(n..).unwrap_or_default(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => data,
        Err(e) => return Err(e),
    };
    if rest.is_empty() {
        return Ok(());
    }
    timed(limit, stream.write_all(rest)).await
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
    ) -> (TcpStream, tokio::task::JoinHandle<io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, tokio::spawn(echo(server, idle, write)))
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
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
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
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
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
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        sender.abort();
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
        assert!(session.await.expect("session task").is_ok());
    }
}
