//! TLS (RFC 4217): AUTH TLS, PBSZ, PROT and CCC; the handshakes of implicit TLS, of AUTH TLS
//! and of PROT P data connections, which must resume this control connection's TLS session.

use std::sync::Arc;

use rustls::server::ServerSessionMemoryCache;
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use inetkit_runtime::tls::HANDSHAKE_TIMEOUT;

use crate::data::DataStream;

use super::control::{Conn, ControlStream};
use super::{Next, Session, State};

/// The control and the data connections' TLS setups of one session, sharing a ticket key and
/// session cache of their own.
pub(super) fn session_tls_config(
    base: &Arc<ServerConfig>,
) -> (Arc<ServerConfig>, Arc<ServerConfig>) {
    let mut config = (**base).clone();
    config.session_storage = ServerSessionMemoryCache::new(32);
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Without tickets, TLS 1.2 session ids in the session's own cache still resume.
        Err(err) => tracing::warn!(error = %err, "no TLS ticket key"),
    }
    let mut data = config.clone();
    data.send_tls13_tickets = 0;
    (Arc::new(config), Arc::new(data))
}

/// CCC: the control connection never goes back to plaintext.
pub(super) fn ccc<S>(conn: &mut Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.reply("533 The control connection stays protected.");
}

impl Session {
    /// The TLS handshake of the ftps port (`greet`) or of AUTH TLS, then the session over it.
    pub(super) async fn serve_tls(&mut self, stream: ControlStream, greet: bool) {
        let Some(config) = self.tls_config.clone() else {
            return;
        };
        let acceptor = TlsAcceptor::from(config);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                self.tls = true;
                self.run(stream, greet).await;
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    pub(super) fn auth_tls<S>(&mut self, mechanism: &str, conn: &mut Conn<S>) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !matches!(
            mechanism.to_ascii_uppercase().as_str(),
            "TLS" | "SSL" | "TLS-C" | "TLS-P"
        ) {
            conn.reply("504 Unknown security mechanism.");
        } else if self.tls {
            conn.reply("503 Already using TLS.");
        } else if self.tls_config.is_none() {
            conn.reply("431 TLS is not configured.");
        } else if matches!(self.state, State::Ready { .. }) {
            conn.reply("503 AUTH must come before login.");
        } else {
            // RFC 4217 §4: a new security exchange forgets any USER given before it.
            self.state = State::Login {
                user: None,
                failures: 0,
            };
            conn.reply("234 Proceed with negotiation.");
            return Next::StartTls;
        }
        Next::Continue
    }

    pub(super) fn pbsz<S>(&self, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.tls {
            conn.reply("200 PBSZ=0");
        } else {
            conn.reply("503 PBSZ needs a TLS control connection (AUTH TLS first).");
        }
    }

    pub(super) fn prot<S>(&mut self, level: &str, conn: &mut Conn<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.tls {
            conn.reply("503 PROT needs a TLS control connection (AUTH TLS first).");
            return;
        }
        match level.to_ascii_uppercase().as_str() {
            "C" => {
                self.protected = false;
                conn.reply("200 PROT now Clear.");
            }
            "P" => {
                self.protected = true;
                conn.reply("200 PROT now Private.");
            }
            "S" | "E" => conn.reply("536 Only C and P are supported."),
            _ => conn.reply("504 Unknown protection level."),
        }
    }

    /// TLS on the data connection; it must resume this session's TLS session.
    pub(super) async fn data_tls(&self, tcp: TcpStream) -> Result<DataStream, &'static str> {
        let Some(config) = self.data_tls_config.clone() else {
            return Err("425 TLS is not configured.");
        };
        let acceptor = TlsAcceptor::from(config);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::info!(error = %err, "data connection TLS handshake failed");
                return Err("522 TLS negotiation on the data connection failed.");
            }
            Err(_) => return Err("425 TLS negotiation on the data connection timed out."),
        };
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        if self.ftp.config.require_tls_reuse && !resumed {
            tracing::warn!("data connection did not resume the control connection's TLS session");
            return Err("522 TLS session reuse required: the data connection must resume the control connection's session.");
        }
        Ok(DataStream::Tls(Box::new(stream)))
    }
}
