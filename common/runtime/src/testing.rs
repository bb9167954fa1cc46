//! In-process session tests (feature `testing`): a [`LineProtocol`] session served over an
//! in-memory pipe and driven on raw bytes, as tokio's mini-redis tests its server. A whole
//! dialogue takes milliseconds and needs no sockets, binaries or ports.
//!
//! ```ignore
//! let mut client = testing::serve(Session::new(shared), testing::peer());
//! assert_eq!(client.line().await, "+OK inetkit POP3 ready.");
//! client.send("CAPA\r\n").await;
//! assert_eq!(client.lines_until(".").await, ["+OK Capability list follows", ...]);
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio_util::sync::CancellationToken;

use crate::server::Peer;
use crate::session::{serve_lines, LineProtocol};

/// How long a test waits for a reply before it fails instead of hanging. Not a performance
/// limit: replies come in microseconds, and this only turns a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

/// A client on 127.0.0.1 with roomy timeouts.
pub fn peer() -> Peer {
    peer_at(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A client at `ip` (e.g. a documentation address, for the policies that treat loopback
/// differently) with roomy timeouts.
pub fn peer_at(ip: IpAddr) -> Peer {
    Peer {
        addr: SocketAddr::new(ip, 40000),
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 110),
        listener: "test".into(),
        idle_timeout: Duration::from_secs(600),
        write_timeout: Duration::from_secs(30),
        shutdown: CancellationToken::new(),
        login: crate::server::Login::none(),
        log: Default::default(),
    }
}

/// Serves `session` as a plain-port connection from `peer` on a task of its own, and hands
/// back the client's end.
pub fn serve<P: LineProtocol + 'static>(session: P, peer: Peer) -> Client {
    let (server, client) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve_lines(session, server, peer, None, false));
    Client {
        stream: BufReader::new(client),
    }
}

/// The client's end of an in-process session.
pub struct Client {
    stream: BufReader<DuplexStream>,
}

impl Client {
    /// Sends `bytes` as they are (add the CRLF yourself).
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        if let Err(err) = self.stream.get_mut().write_all(bytes.as_ref()).await {
            panic!("the session stopped reading: {err}");
        }
    }

    /// The next reply line, without its CRLF. Fails the test when the session closes first.
    pub async fn line(&mut self) -> String {
        match self.next_line().await {
            Some(line) => line,
            None => panic!("the session closed the connection"),
        }
    }

    /// Reply lines up to and including the first that is `last` (a POP3 `.`, say).
    pub async fn lines_until(&mut self, last: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = line == last;
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Sends one command line (CRLF added) and returns the first reply line.
    pub async fn ask(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n")).await;
        self.line().await
    }

    /// Whether the session closed the connection, with nothing more sent.
    pub async fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(HANG, self.stream.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }

    async fn next_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        match tokio::time::timeout(HANG, self.stream.read_until(b'\n', &mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(_)) => {
                let text = String::from_utf8_lossy(&line);
                match text.strip_suffix("\r\n") {
                    Some(text) => Some(text.to_owned()),
                    None => panic!("a reply line without CRLF: {text:?}"),
                }
            }
            Err(_) => panic!("no reply within {HANG:?}"),
        }
    }
}

/// A directory of its own under the system's temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name starts with `tag`.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("inetkit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(err) = std::fs::create_dir_all(&dir) {
            panic!("{}: {err}", dir.display());
        }
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside it and returns the file's path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Err(err) = std::fs::write(&path, text) {
            panic!("{}: {err}", path.display());
        }
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
