//! The relay: once the backend accepted the login, the client's bytes go to the backend and
//! the backend's to the client, unchanged, until either side closes, the session idles out
//! or the daemon stops. Two fixed buffers, one per direction: a side that stops reading
//! stops the other side's reads too (bounded by the write timeout), nothing piles up.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Backend;
use crate::conn::LineConn;
use crate::log::End;

/// Bytes read from one side before they are written to the other.
const CHUNK: usize = 16 * 1024;

/// How long closing the two connections may take at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays `conn` (the client, whose login reply is queued in it) and `backend` until the
/// session ends. What the client pipelined after its login goes to the backend first, and
/// what the backend sent after accepting it goes to the client first. The session's end line
/// gets the backend's name and the bytes sent to and received from it.
pub async fn relay<S>(mut conn: LineConn<S>, backend: Backend)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = conn.peer.clone();
    let log = peer.log.clone();
    log.proxied(&backend.name);
    if !conn.flush_or_end().await {
        return;
    }
    let unread = conn.take_unread();
    let mut client = conn.reader.into_inner();
    let leftover = backend.reader.buffer().to_vec();
    let mut server = backend.reader.into_inner();
    let (mut sent, mut received) = (0u64, 0u64);
    let write_timeout = peer.write_timeout;
    let end = 'relay: {
        if let Err(end) = write(&mut server, &unread, write_timeout, Side::Backend).await {
            break 'relay end;
        }
        sent += unread.len() as u64;
        if let Err(end) = write(&mut client, &leftover, write_timeout, Side::Client).await {
            break 'relay end;
        }
        received += leftover.len() as u64;
        let mut up = vec![0u8; CHUNK];
        let mut down = vec![0u8; CHUNK];
        loop {
            // A fresh sleep each time round: any traffic, either way, keeps the session alive.
            let idle = tokio::time::sleep(peer.idle_timeout);
            tokio::select! {
                read = client.read(&mut up) => match read {
                    Ok(0) => break 'relay End::Disconnected,
                    Ok(n) => {
                        let bytes = up.get(..n).unwrap_or_default();
                        if let Err(end) = write(&mut server, bytes, write_timeout, Side::Backend).await {
                            break 'relay end;
                        }
                        sent += n as u64;
                    }
                    Err(err) => break 'relay End::from_io(&err),
                },
                read = server.read(&mut down) => match read {
                    Ok(0) => break 'relay End::Closed("the backend ended the session"),
                    Ok(n) => {
                        let bytes = down.get(..n).unwrap_or_default();
                        if let Err(end) = write(&mut client, bytes, write_timeout, Side::Client).await {
                            break 'relay end;
                        }
                        received += n as u64;
                    }
                    Err(err) => break 'relay End::Error(format!("backend: {err}")),
                },
                () = idle => break 'relay End::IdleTimeout,
                () = peer.shutdown.cancelled() => break 'relay End::Shutdown,
            }
        }
    };
    log.ended(end);
    log.backend_bytes(sent, received);
    // Best effort: both sides learn the session is over (TLS gets its close_notify).
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, server.shutdown()).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.shutdown()).await;
}

/// Which end a write goes to, for the end line.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

/// Writes all of `bytes` within `timeout`; the session's end when it cannot.
async fn write<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    timeout: Duration,
    side: Side,
) -> Result<(), End> {
    if bytes.is_empty() {
        return Ok(());
    }
    let written = async {
        to.write_all(bytes).await?;
        to.flush().await
    };
    match (tokio::time::timeout(timeout, written).await, side) {
        (Ok(Ok(())), _) => Ok(()),
        (Ok(Err(err)), Side::Client) => Err(End::from_io(&err)),
        (Ok(Err(err)), Side::Backend) => Err(End::Error(format!("backend: {err}"))),
        (Err(_), Side::Client) => Err(End::Error(
            "write timed out: the client stopped reading".into(),
        )),
        (Err(_), Side::Backend) => Err(End::Error(
            "write timed out: the backend stopped reading".into(),
        )),
    }
}
