//! The services: RFC 862 echo and the classic inetd built-ins, discard (RFC 863), chargen
//! (RFC 864), daytime (RFC 867) and time (RFC 868). A socket's name picks its service;
//! a `-tls` suffix wraps the stream service in TLS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use inetkit_runtime::log::End;
use inetkit_runtime::server::Peer;

use crate::lanes::Here;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Echo,
    Discard,
    Chargen,
    Daytime,
    Time,
}

impl Service {
    /// The service for a socket name, and whether that socket speaks TLS.
    /// systemd names an Accept=yes connection "connection" unless told otherwise: that is echo.
    pub(crate) fn from_socket_name(name: &str) -> Option<(Service, bool)> {
        let (base, tls) = match name.strip_suffix("-tls") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let service = match base {
            "echo" | "connection" => Service::Echo,
            "discard" => Service::Discard,
            "chargen" => Service::Chargen,
            "daytime" => Service::Daytime,
            "time" => Service::Time,
            _ => return None,
        };
        Some((service, tls))
    }

    /// The answer to one UDP datagram, if the service sends one.
    pub(crate) fn datagram_reply(self, request: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        match self {
            Service::Echo => Some(request.to_vec()),
            Service::Discard => None,
            // RFC 864: a datagram of a random length between 0 and 512.
            Service::Chargen => {
                let len = rand::random::<usize>() % 513;
                Some(Chargen::default().take(len).collect())
            }
            Service::Daytime => Some(daytime(now).into_bytes()),
            Service::Time => Some(rfc868_time(now).to_be_bytes().to_vec()),
        }
    }
}

/// Serves one plain TCP connection at `here`; returns the stream if the session should go on
/// on another CPU's lane (echo follows its client, see [`Here::client_moved`]).
pub(crate) async fn serve_tcp(
    service: Service,
    stream: TcpStream,
    peer: Peer,
    here: Here,
) -> Option<TcpStream> {
    let result = match service {
        Service::Echo => {
            match crate::tcp::echo(stream, peer.idle_timeout, peer.write_timeout, here).await {
                Ok(Some(moved)) => return Some(moved),
                Ok(None) => Ok(()),
                Err(err) => Err(err),
            }
        }
        other => serve_stream(other, stream, &peer).await,
    };
    log_end(result, &peer);
    None
}

/// Serves one stream that is not a bare socket (TLS).
pub(crate) async fn serve_stream<S>(
    service: Service,
    mut stream: S,
    peer: &Peer,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match service {
        Service::Echo => echo_stream(stream, peer).await,
        Service::Discard => discard(stream, peer).await,
        Service::Chargen => chargen(stream, peer).await,
        Service::Daytime => {
            let text = daytime(SystemTime::now());
            timed(peer.write_timeout, stream.write_all(text.as_bytes())).await?;
            stream.shutdown().await
        }
        Service::Time => {
            let time = rfc868_time(SystemTime::now()).to_be_bytes();
            timed(peer.write_timeout, stream.write_all(&time)).await?;
            stream.shutdown().await
        }
    }
}

/// Records how the session ended for its end line (the server loop logs it): the client
/// closing is the normal end of every stream service.
pub(crate) fn log_end(result: std::io::Result<()>, peer: &Peer) {
    let end = match result {
        Ok(()) => End::Disconnected,
        Err(err) if is_idle_timeout(&err) => End::IdleTimeout,
        Err(err) => End::from_io(&err),
    };
    peer.log.ended(end);
}

async fn echo_stream<S>(mut stream: S, peer: &Peer) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = idle(peer.idle_timeout, stream.read(&mut buf)).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        timed(peer.write_timeout, stream.write_all(&buf[..n])).await?;
        timed(peer.write_timeout, stream.flush()).await?;
    }
}

async fn discard<S>(mut stream: S, peer: &Peer) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    while idle(peer.idle_timeout, stream.read(&mut buf)).await? > 0 {}
    Ok(())
}

/// Sends the character pattern until the client goes away; what it sends is thrown away.
async fn chargen<S>(stream: S, peer: &Peer) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let block = chargen_block();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sink = async {
        let mut buf = vec![0u8; 4096];
        while reader.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let source = async {
        loop {
            timed(peer.write_timeout, writer.write_all(&block)).await?;
        }
    };
    tokio::select! {
        result = sink => result,
        result = source => result,
    }
}

/// What an idle timeout fails with: TimedOut, told from a write timeout by its message so the
/// end line can say `reason=idle-timeout`.
const IDLE_TIMEOUT: &str = "idle timeout";

pub(crate) fn idle_timeout_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, IDLE_TIMEOUT)
}

fn is_idle_timeout(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::TimedOut && err.to_string() == IDLE_TIMEOUT
}

/// Reading with the idle timeout: fails with [`idle_timeout_error`] after `limit`.
async fn idle<T>(
    limit: Duration,
    future: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err(idle_timeout_error()))
}

/// Writing with the write timeout: fails with TimedOut ("write timeout") after `limit`.
pub(crate) async fn timed<T>(
    limit: Duration,
    future: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timeout",
            ))
        })
}

/// RFC 864's pattern: lines of 72 printable ASCII characters, each starting one character later
/// in the 95-character cycle than the one before.
#[derive(Debug, Default)]
pub(crate) struct Chargen {
    line: usize,
    column: usize,
}

const PRINTABLE: usize = 95;
const LINE: usize = 72;

impl Iterator for Chargen {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let byte = match self.column {
            c if c < LINE => b' ' + ((self.line + c) % PRINTABLE) as u8,
            LINE => b'\r',
            _ => b'\n',
        };
        self.column += 1;
        if self.column == LINE + 2 {
            self.column = 0;
            self.line = (self.line + 1) % PRINTABLE;
        }
        Some(byte)
    }
}

/// One full cycle of the pattern (95 lines), which repeats exactly.
fn chargen_block() -> Vec<u8> {
    Chargen::default().take(PRINTABLE * (LINE + 2)).collect()
}

/// RFC 867 leaves the format open; this is RFC 2822's, in UTC.
pub(crate) fn daytime(now: SystemTime) -> String {
    let now = time::OffsetDateTime::from(now);
    let text = now
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    format!("{text}\r\n")
}

/// RFC 868: seconds since 1900-01-01 00:00 UTC, as 32 bits (which wrap in 2036, as the RFC's
/// clients expect).
pub(crate) fn rfc868_time(now: SystemTime) -> u32 {
    const SECONDS_1900_TO_1970: u64 = 2_208_988_800;
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (unix + SECONDS_1900_TO_1970) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_pick_services() {
        assert_eq!(
            Service::from_socket_name("echo"),
            Some((Service::Echo, false))
        );
        assert_eq!(
            Service::from_socket_name("echo-tls"),
            Some((Service::Echo, true))
        );
        assert_eq!(
            Service::from_socket_name("connection"),
            Some((Service::Echo, false))
        );
        assert_eq!(
            Service::from_socket_name("chargen"),
            Some((Service::Chargen, false))
        );
        assert_eq!(
            Service::from_socket_name("time"),
            Some((Service::Time, false))
        );
        assert_eq!(Service::from_socket_name("bogus"), None);
        assert_eq!(Service::from_socket_name("-tls"), None);
    }

    #[test]
    fn chargen_lines_follow_rfc_864() {
        let block = chargen_block();
        let lines: Vec<&[u8]> = block.split(|&b| b == b'\n').collect();
        assert_eq!(
            lines[0],
            &b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r"[..]
        );
        assert_eq!(&lines[1][..3], b"!\"#");
        assert!(lines
            .iter()
            .take(95)
            .all(|l| l.len() == 73 && l[72] == b'\r'));
        // The block ends where the pattern starts over.
        let mut next = Chargen::default().skip(block.len());
        assert_eq!(next.next(), Some(b' '));
    }

    #[test]
    fn rfc868_epoch() {
        assert_eq!(rfc868_time(UNIX_EPOCH), 2_208_988_800);
        // 2026-11-25T00:00:00Z
        let t = UNIX_EPOCH + Duration::from_secs(1_795_564_800);
        assert_eq!(rfc868_time(t), (1_795_564_800u64 + 2_208_988_800) as u32);
    }

    #[test]
    fn daytime_is_one_line() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_564_800);
        assert_eq!(daytime(t), "Wed, 25 Nov 2026 00:00:00 +0000\r\n");
    }

    #[test]
    fn datagram_replies() {
        let now = SystemTime::now();
        assert_eq!(
            Service::Echo.datagram_reply(b"hi", now),
            Some(b"hi".to_vec())
        );
        assert_eq!(Service::Discard.datagram_reply(b"hi", now), None);
        assert_eq!(
            Service::Time.datagram_reply(b"", now).map(|r| r.len()),
            Some(4)
        );
        for _ in 0..50 {
            let r = Service::Chargen.datagram_reply(b"", now).unwrap();
            assert!(r.len() <= 512);
        }
    }
}
