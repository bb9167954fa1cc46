//! The skeleton every line protocol's session runs on: one command loop, one vocabulary for
//! what happens after a command ([`Flow`]), and one way through STARTTLS and implicit TLS.
//!
//! A protocol (POP3, SMTP submission, FTP) implements [`LineProtocol`]: its greeting, its line
//! limit, its farewells, what to do with one command line and with a line that is too long,
//! and, if it needs one, a deadline to be woken at between commands.
//! [`serve_lines`] then serves a connection, with the daemon's TLS setup:
//!
//! ```text
//! plain port:    greeting -> run_lines ... Flow::StartTls -> handshake -> run_lines (no greeting)
//! implicit TLS:  handshake -> greeting -> run_lines
//! ```
//!
//! The session value lives across the upgrade, so it decides itself what STARTTLS forgets
//! (RFC 3207 §4.2, RFC 2595 §4). Whether the connection is encrypted now is
//! [`LineConn::is_tls`]: what a session asks before offering STARTTLS or a login in the clear.
//!
//! A protocol whose loop is not "one line, one command" (IMAP, with literals) implements
//! [`TlsSession`] instead and runs its own loop on a [`LineConn`], ending it with
//! [`LineConn::end`]; [`serve_session`] takes it through TLS the same way.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::conn::{Farewell, LineConn};
use crate::lines::Line;
use crate::log::{End, TlsInfo};
use crate::proxy::Backend;
use crate::server::Peer;
use crate::tls::TlsContext;

/// What a session does after a command. Every line protocol's handlers answer with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Send what is queued and close the connection.
    Close,
    /// Send what is queued (the go-ahead), then start TLS on the bare stream. Anything the
    /// client pipelined after the command is dropped: it came in the clear.
    StartTls,
    /// Proxy mode: the backend accepted the login; send what is queued (the login reply),
    /// then relay the connection to the backend [`LineProtocol::take_backend`] hands over.
    Relay,
}

/// A byte stream a session can run on: TCP, TLS over TCP, or an in-memory pipe in tests.
pub trait SessionStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> SessionStream for S {}

/// One line protocol's part of the skeleton. The session value holds the protocol's state
/// (an enum of its states, whatever STARTTLS must reset) and lives for the whole connection.
pub trait LineProtocol: Send {
    /// Longest command line, CRLF excluded. A longer one goes to
    /// [`line_too_long`](LineProtocol::line_too_long), without being buffered.
    const MAX_LINE: usize;
    /// What the client is told when it idles out or the daemon stops.
    const FAREWELL: Farewell;

    /// The first line the client gets (on an implicit-TLS port, once TLS is up; not again
    /// after STARTTLS).
    fn greeting(&self) -> String;

    /// Handles one command line (without its CRLF; any bytes, not necessarily UTF-8) and
    /// queues its replies on `conn`. May read more from `conn` (SASL challenges, message
    /// data) and flush as it goes.
    fn handle_line<S: SessionStream>(
        &mut self,
        line: &[u8],
        conn: &mut LineConn<S>,
    ) -> impl Future<Output = Flow> + Send;

    /// Answers a command line longer than [`MAX_LINE`](LineProtocol::MAX_LINE), which has been
    /// read to its end and thrown away.
    fn line_too_long<S: SessionStream>(&mut self, conn: &mut LineConn<S>) -> Flow;

    /// When the session wants to act between commands while it waits for one (ftpd: a passive
    /// port nobody connected to is closed); `None`, the default, waits for the client only.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Called when [`deadline`](LineProtocol::deadline) passed before a command came; the wait
    /// for that command goes on, keeping what part of it had arrived.
    fn deadline_passed(&mut self) {}

    /// After [`Flow::Relay`]: the backend the session goes on with (proxy mode). `None`, the
    /// default, closes the connection.
    fn take_backend(&mut self) -> Option<Backend> {
        None
    }
}

/// The command loop: reads a line, hands it to the protocol, and goes on until a command says
/// otherwise or the client is gone (or idled out, or the daemon stops: then `Flow::Close`).
/// Returns `Flow::Close`, `Flow::StartTls` or `Flow::Relay`, never `Flow::Continue`.
pub async fn run_lines<P, S>(protocol: &mut P, conn: &mut LineConn<S>) -> Flow
where
    P: LineProtocol,
    S: SessionStream,
{
    let mut line = Vec::with_capacity(256);
    loop {
        let deadline = protocol.deadline();
        // `next_line` is cancel-safe: a deadline in the middle of a line loses none of it.
        let next = tokio::select! {
            next = conn.next_line(&mut line) => next,
            () = sleep_until(deadline), if deadline.is_some() => {
                protocol.deadline_passed();
                continue;
            }
        };
        let flow = match next {
            None | Some(Line::Eof) => Flow::Close,
            Some(Line::TooLong) => protocol.line_too_long(conn),
            Some(Line::Complete) => protocol.handle_line(&line, conn).await,
        };
        if flow != Flow::Continue {
            return flow;
        }
    }
}

/// Sleeps until `deadline`; for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Serves one connection of a line protocol from `peer`: over TLS from the start
/// (`implicit_tls`), or in the clear until the client asks for STARTTLS and then over TLS.
/// `tls` is the daemon's TLS setup; without one, an implicit-TLS connection is closed at once
/// and a STARTTLS go-ahead ends the connection (protocols refuse STARTTLS then).
pub async fn serve_lines<P, T>(
    protocol: P,
    stream: T,
    peer: Peer,
    tls: Option<TlsContext>,
    implicit_tls: bool,
) where
    P: LineProtocol,
    T: SessionStream,
{
    let mut lines = Lines {
        protocol,
        peer,
        tls,
        tls_started: false,
    };
    serve_session(&mut lines, stream, implicit_tls).await;
}

/// A [`LineProtocol`] as a [`TlsSession`]: a [`LineConn`] per stream, [`run_lines`] on it.
struct Lines<P> {
    protocol: P,
    peer: Peer,
    tls: Option<TlsContext>,
    tls_started: bool,
}

impl<P: LineProtocol> TlsSession for Lines<P> {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn tls_context(&self) -> Option<TlsContext> {
        self.tls.clone()
    }

    fn tls_started(&mut self) {
        self.tls_started = true;
    }

    async fn run<S: SessionStream>(&mut self, stream: S, greet: bool) -> Option<S> {
        let mut conn = LineConn::new(stream, self.peer.clone(), P::MAX_LINE, P::FAREWELL)
            .with_tls(self.tls_started);
        if greet {
            conn.reply(&self.protocol.greeting());
        }
        let flow = run_lines(&mut self.protocol, &mut conn).await;
        if flow == Flow::Relay {
            if let Some(backend) = self.protocol.take_backend() {
                crate::proxy::relay(conn, backend).await;
                return None;
            }
        }
        conn.end(flow).await
    }
}

/// A session of a protocol with STARTTLS on its plain port and an implicit-TLS port of its
/// own, running a loop of its own (IMAP). Line protocols implement [`LineProtocol`] instead.
pub trait TlsSession: Send {
    /// The connection's peer: where the skeleton records the session's TLS, bytes and end.
    fn peer(&self) -> &Peer;
    /// The TLS setup, if TLS is configured.
    fn tls_context(&self) -> Option<TlsContext>;
    /// Told once the TLS handshake succeeded.
    fn tls_started(&mut self);
    /// The command loop over `stream`; `greet` sends the greeting first (not after STARTTLS).
    /// Returns the bare stream when the client asked for STARTTLS and got the go-ahead
    /// ([`LineConn::end`] with [`Flow::StartTls`]), `None` when the session is over.
    fn run<S: SessionStream>(
        &mut self,
        stream: S,
        greet: bool,
    ) -> impl Future<Output = Option<S>> + Send;
}

/// Serves one connection: over TLS from the start (`implicit_tls`), or in the clear until the
/// client asks for STARTTLS and then over TLS. The session's end line gets the bytes moved,
/// the TLS version and cipher, and a failed handshake as the reason it ended.
pub async fn serve_session<T: SessionStream>(
    session: &mut impl TlsSession,
    stream: T,
    implicit_tls: bool,
) {
    let log = session.peer().log.clone();
    // Counted under TLS: the bytes on the wire, as the client's traffic costs them.
    let stream = log.count(stream);
    let stream = if implicit_tls {
        stream
    } else {
        match session.run(stream, true).await {
            Some(stream) => stream,
            None => return,
        }
    };
    let Some(tls) = session.tls_context() else {
        log.ended(End::Closed("STARTTLS without TLS configured"));
        return;
    };
    match tls.accept(stream).await {
        Ok(stream) => {
            log.tls(TlsInfo::of(stream.get_ref().1));
            session.tls_started();
            // A second STARTTLS is refused by the protocol: nothing more to do either way.
            let _ = session.run(stream, implicit_tls).await;
        }
        // The cause is in the end line, once.
        Err(err) => log.ended(End::handshake(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::Notify;

    use crate::testing::{self, Client};

    /// A toy protocol: `ECHO x` answers `x`, `BYE` closes, `TLS` asks for STARTTLS (with no
    /// TLS configured, so the connection then ends), `WAKE` sets a deadline a moment away,
    /// `WOKEN` tells how many deadlines passed.
    #[derive(Default)]
    struct Toy {
        too_long: u32,
        wake_at: Option<Instant>,
        woken: u32,
        /// Told each time a deadline passes.
        on_wake: Arc<Notify>,
    }

    impl LineProtocol for Toy {
        const MAX_LINE: usize = 16;
        const FAREWELL: Farewell = Farewell {
            idle: "BYE idle",
            shutdown: "BYE stopping",
            login: "BYE too slow",
        };

        fn greeting(&self) -> String {
            "HELLO".to_owned()
        }

        async fn handle_line<S: SessionStream>(
            &mut self,
            line: &[u8],
            conn: &mut LineConn<S>,
        ) -> Flow {
            match line {
                b"BYE" => {
                    conn.reply("BYE");
                    Flow::Close
                }
                b"TLS" => {
                    conn.reply("GO AHEAD");
                    Flow::StartTls
                }
                b"WAKE" => {
                    self.wake_at = Some(Instant::now() + Duration::from_millis(20));
                    conn.reply("ARMED");
                    Flow::Continue
                }
                b"WOKEN" => {
                    conn.reply(&format!("WOKEN {}", self.woken));
                    Flow::Continue
                }
                _ => match line.strip_prefix(b"ECHO ") {
                    Some(text) => {
                        conn.reply(&String::from_utf8_lossy(text));
                        Flow::Continue
                    }
                    None => {
                        conn.reply("WHAT?");
                        Flow::Continue
                    }
                },
            }
        }

        fn line_too_long<S: SessionStream>(&mut self, conn: &mut LineConn<S>) -> Flow {
            self.too_long += 1;
            conn.reply(&format!("TOO LONG {}", self.too_long));
            Flow::Continue
        }

        fn deadline(&self) -> Option<Instant> {
            self.wake_at
        }

        fn deadline_passed(&mut self) {
            self.wake_at = None;
            self.woken += 1;
            self.on_wake.notify_one();
        }
    }

    fn toy() -> (Client, Peer) {
        let peer = testing::peer();
        (testing::serve(Toy::default(), peer.clone()), peer)
    }

    #[tokio::test]
    async fn greeting_commands_overlong_lines_and_close() {
        let (mut client, _) = toy();
        assert_eq!(client.line().await, "HELLO");
        // 16 bytes is the limit, and fits.
        client.send("ECHO a\r\nNOPE\r\nECHO 0123456789a\r\n").await;
        assert_eq!(client.line().await, "a");
        assert_eq!(client.line().await, "WHAT?");
        assert_eq!(client.line().await, "0123456789a");
        client
            .send(format!("ECHO {}\r\nECHO b\r\n", "x".repeat(100)))
            .await;
        assert_eq!(client.line().await, "TOO LONG 1");
        assert_eq!(client.line().await, "b");
        // The command after BYE is never read.
        client.send("BYE\r\nECHO c\r\n").await;
        assert_eq!(client.line().await, "BYE");
        assert!(client.is_closed().await);
    }

    #[tokio::test]
    async fn shutdown_says_farewell_and_closes() {
        let (mut client, peer) = toy();
        assert_eq!(client.line().await, "HELLO");
        assert_eq!(client.ask("ECHO x").await, "x");
        peer.shutdown.cancel();
        assert_eq!(client.line().await, "BYE stopping");
        assert!(client.is_closed().await);
    }

    #[tokio::test]
    async fn starttls_without_tls_ends_after_the_go_ahead() {
        let (mut client, _) = toy();
        assert_eq!(client.line().await, "HELLO");
        client.send("TLS\r\nECHO in the clear\r\n").await;
        assert_eq!(client.line().await, "GO AHEAD");
        assert!(client.is_closed().await);
    }

    #[tokio::test]
    async fn a_client_that_leaves_ends_the_loop() {
        let peer = testing::peer();
        let (server, client) = tokio::io::duplex(1024);
        let mut toy = Toy::default();
        let mut conn = LineConn::new(server, peer, Toy::MAX_LINE, Toy::FAREWELL);
        drop(client);
        assert_eq!(run_lines(&mut toy, &mut conn).await, Flow::Close);
    }

    #[tokio::test]
    async fn a_deadline_wakes_the_session_between_commands_and_keeps_a_partial_line() {
        let peer = testing::peer();
        let toy = Toy::default();
        let on_wake = toy.on_wake.clone();
        let mut client = testing::serve(toy, peer);
        assert_eq!(client.line().await, "HELLO");
        assert_eq!(client.ask("WOKEN").await, "WOKEN 0");
        assert_eq!(client.ask("WAKE").await, "ARMED");
        client.send("WOK").await;
        // Bounded only so that a deadline that never fires fails the test instead of hanging it.
        let woke = tokio::time::timeout(Duration::from_secs(30), on_wake.notified()).await;
        assert!(woke.is_ok(), "the deadline never woke the session");
        client.send("EN\r\n").await;
        assert_eq!(client.line().await, "WOKEN 1");
        // Woken once: the deadline is gone until a command sets another.
        assert_eq!(client.ask("WOKEN").await, "WOKEN 1");
    }
}
