//! Reaching a backend: TCP with a timeout, TLS (implicit or after STARTTLS) checked against
//! the configured CAs, and the few bounded line reads and writes a login exchange needs.

use std::io;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{BackendTls, Proxy, ProxyError, Target};
use crate::lines::{Line, LineReader};
use crate::stream::PlainOrTls;

/// The longest line a backend may send during the login exchange (a capability list).
const MAX_BACKEND_LINE: usize = 8 * 1024;

/// The connection to a backend: plaintext (loopback, or allowed by `[proxy] plaintext`), or
/// TLS, implicit or after STARTTLS.
pub type BackendStream = PlainOrTls<TlsStream<TcpStream>>;

/// A backend connection during its login exchange, and then the relay's other end.
#[derive(Debug)]
pub struct Backend {
    /// Buffered input; what is left in it after the login goes to the client first.
    pub reader: BufReader<BackendStream>,
    /// `host:port`, for logs and errors.
    pub name: String,
    lines: LineReader,
    host: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Proxy {
    /// Connects to `target` (and, for `ssl=yes`, completes the TLS handshake), within
    /// `[proxy] connect_timeout`. Plaintext goes only to loopback addresses unless the
    /// config allows it anywhere.
    pub async fn connect(&self, target: &Target) -> Result<Backend, ProxyError> {
        let name = target.to_string();
        let timeout = self.connect_timeout;
        let connecting = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| ProxyError::Connect(name.clone(), e))?;
            let _ = tcp.set_nodelay(true);
            if target.tls == BackendTls::Plaintext
                && !self.plaintext_anywhere
                && !tcp
                    .peer_addr()
                    .is_ok_and(|a| a.ip().to_canonical().is_loopback())
            {
                return Err(ProxyError::PlaintextRefused(name.clone()));
            }
            let mut backend = Backend {
                reader: BufReader::new(BackendStream::Plain(tcp)),
                name: name.clone(),
                lines: LineReader::new(),
                host: target.host.clone(),
                tls: Arc::clone(&self.tls),
            };
            if target.tls == BackendTls::Implicit {
                backend = backend.start_tls().await?;
            }
            Ok(backend)
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .unwrap_or_else(|_| Err(ProxyError::Timeout(name.clone(), timeout)))
    }
}

impl Backend {
    /// The next line from the backend, without its line end; a line too long or the backend
    /// closing is an error.
    pub async fn read_line(&mut self) -> Result<String, ProxyError> {
        let mut buf = Vec::new();
        match self
            .lines
            .read(&mut self.reader, &mut buf, MAX_BACKEND_LINE)
            .await
        {
            Ok(Line::Complete) => Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(Line::TooLong) => Err(ProxyError::Protocol(
                self.name.clone(),
                "a line too long".into(),
            )),
            Ok(Line::Eof) => Err(ProxyError::Io(
                self.name.clone(),
                io::ErrorKind::UnexpectedEof.into(),
            )),
            Err(err) => Err(ProxyError::Io(self.name.clone(), err)),
        }
    }

    /// Sends `line` and its CRLF.
    pub async fn send_line(&mut self, line: &str) -> Result<(), ProxyError> {
        let stream = self.reader.get_mut();
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let written = async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        };
        written
            .await
            .map_err(|e| ProxyError::Io(self.name.clone(), e))
    }

    /// Whether the connection is TLS now.
    pub fn is_tls(&self) -> bool {
        matches!(self.reader.get_ref(), BackendStream::Tls(_))
    }

    /// The TLS handshake, at the start (`ssl=yes`) or after the backend's go-ahead to
    /// STARTTLS. Anything it sent after the go-ahead came in the clear and is dropped.
    pub async fn start_tls(self) -> Result<Backend, ProxyError> {
        let Backend {
            reader,
            name,
            host,
            tls,
            ..
        } = self;
        let BackendStream::Plain(tcp) = reader.into_inner() else {
            return Err(ProxyError::Protocol(name, "TLS started twice".into()));
        };
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| ProxyError::Field(format!("{host:?} is not a host name TLS can check")))?;
        let connector = TlsConnector::from(Arc::clone(&tls));
        let stream = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| ProxyError::Connect(name.clone(), e))?;
        Ok(Backend {
            reader: BufReader::new(BackendStream::Tls(Box::new(stream))),
            name,
            lines: LineReader::new(),
            host,
            tls,
        })
    }
}
