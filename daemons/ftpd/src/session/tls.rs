//! TLS (RFC 4217): AUTH TLS, PBSZ, PROT and CCC; the session's own [`TlsContext`]s, for the
//! handshakes of implicit TLS and AUTH TLS (which the runtime's session skeleton runs) and of
//! PROT P data connections, which must resume this control connection's TLS session.

use std::io;

use inetkit_runtime::conn::LineConn;
use inetkit_runtime::session::SessionStream;
use rustls::server::ServerSessionMemoryCache;
use rustls::HandshakeKind;
use tokio::net::TcpStream;

use inetkit_runtime::tls::TlsContext;

use crate::data::DataStream;

use inetkit_runtime::session::Flow;

use super::{Session, State};

/// One session's TLS: the daemon's certificate with a ticket key and session cache of the
/// session's own, so that a data connection can resume only this control connection's
/// session.
pub(super) struct SessionTls {
    control: TlsContext,
    /// The same for data connections, which issue no TLS 1.3 tickets of their own: a client
    /// that only uploads never reads them, and closing a socket with unread data resets it,
    /// losing the end of the upload.
    data: TlsContext,
}

impl SessionTls {
    pub(super) fn new(daemon: &TlsContext) -> SessionTls {
        let control = daemon.derive(|config| {
            config.session_storage = ServerSessionMemoryCache::new(32);
            match rustls::crypto::ring::Ticketer::new() {
                Ok(ticketer) => config.ticketer = ticketer,
                // Without tickets, TLS 1.2 session ids in the session's own cache still resume.
                Err(err) => tracing::warn!(error = %err, "no TLS ticket key"),
            }
        });
        let data = control.derive(|config| config.send_tls13_tickets = 0);
        SessionTls { control, data }
    }

    /// The control connection's context, for its handshake.
    pub(super) fn control(&self) -> TlsContext {
        self.control.clone()
    }
}

/// CCC: the control connection never goes back to plaintext.
pub(super) fn ccc<S>(conn: &mut LineConn<S>)
where
    S: SessionStream,
{
    conn.reply("533 The control connection stays protected.");
}

impl Session {
    pub(super) fn auth_tls<S>(&mut self, mechanism: &str, conn: &mut LineConn<S>) -> Flow
    where
        S: SessionStream,
    {
        if !matches!(
            mechanism.to_ascii_uppercase().as_str(),
            "TLS" | "SSL" | "TLS-C" | "TLS-P"
        ) {
            conn.reply("504 Unknown security mechanism.");
        } else if conn.is_tls() {
            conn.reply("503 Already using TLS.");
        } else if self.tls.is_none() {
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
            return Flow::StartTls;
        }
        Flow::Continue
    }

    pub(super) fn pbsz<S>(&self, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        if conn.is_tls() {
            conn.reply("200 PBSZ=0");
        } else {
            conn.reply("503 PBSZ needs a TLS control connection (AUTH TLS first).");
        }
    }

    pub(super) fn prot<S>(&mut self, level: &str, conn: &mut LineConn<S>)
    where
        S: SessionStream,
    {
        if !conn.is_tls() {
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
        let Some(tls) = &self.tls else {
            return Err("425 TLS is not configured.");
        };
        let stream = match tls.data.accept(tcp).await {
            Ok(stream) => stream,
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                return Err("425 TLS negotiation on the data connection timed out.")
            }
            Err(err) => {
                tracing::info!(error = %err, "data connection TLS handshake failed");
                return Err("522 TLS negotiation on the data connection failed.");
            }
        };
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        if self.ftp.config.require_tls_reuse && !resumed {
            tracing::warn!("data connection did not resume the control connection's TLS session");
            return Err("522 TLS session reuse required: the data connection must resume the control connection's session.");
        }
        Ok(DataStream::Tls(Box::new(stream)))
    }
}
