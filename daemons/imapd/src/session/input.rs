//! Reading a command: a line plus any literals it announces (`{n}` gets a `+` continuation;
//! `{n+}`, LITERAL+, does not), bounded in size, for `imap-codec` to decode whole.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use imap_codec::imap_types::response::{Code, StatusKind};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use inetkit_runtime::lines::Line;
use inetkit_runtime::log::End;

use super::reply::reply;
use super::Conn;
use crate::wire;

/// Output is sent once this much is queued.
const FLUSH_AT: usize = 64 * 1024;
/// Literal bytes are read (and charged to the budget) this much at a time.
const LITERAL_CHUNK: usize = 64 * 1024;
/// Literal bytes all sessions together may hold (commands being read or handled): four
/// APPENDs of the largest message at once.
const LITERAL_BUDGET: u64 = 256 * 1024 * 1024;

/// The daemon's budget for literal bytes in flight, shared by all sessions.
pub(super) static LITERALS: LiteralBudget = LiteralBudget::new(LITERAL_BUDGET);

pub(super) const BUSY_TEXT: &str = "Too much data in flight from other clients; try again later.";

/// A budget of literal bytes that sessions charge as the bytes arrive (never as announced:
/// a literal announced and not sent costs nothing) and give back when the command is done.
pub(crate) struct LiteralBudget {
    limit: u64,
    used: AtomicU64,
}

impl LiteralBudget {
    pub(crate) const fn new(limit: u64) -> LiteralBudget {
        LiteralBudget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    pub(crate) fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    fn try_charge(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The literal bytes one command holds, given back to the budget when it is dropped.
pub(crate) struct Held {
    budget: &'static LiteralBudget,
    bytes: u64,
}

impl Held {
    pub(crate) fn new(budget: &'static LiteralBudget) -> Held {
        Held { budget, bytes: 0 }
    }

    /// Charges `n` more bytes to the budget; `false` (and nothing charged) when it lacks them.
    pub(crate) fn take(&mut self, n: u64) -> bool {
        let charged = self.budget.try_charge(n);
        if charged {
            self.bytes += n;
        }
        charged
    }

    fn give_back(&mut self, n: u64) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        self.budget.release(n);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// What reading a command gave.
pub(crate) enum Input {
    /// The command's bytes, and the budget they hold until the command is done.
    Command(Vec<u8>, Held),
    /// Refused before reading all of it (a literal too large, or over the budget); the reply
    /// is queued.
    Refused,
    Gone,
}

/// Why a literal was not read.
enum Unread {
    /// The budget ran out; the rest of the literal was read and dropped.
    OverBudget,
    Gone,
}

/// IMAP's additions to the shared line connection: literals, and flushing mid-response.
pub(crate) trait ImapConn {
    async fn flush_if_full(&mut self) -> bool;
    async fn read_command(&mut self, max: u64, budget: &'static LiteralBudget) -> Input;
}

impl<S: AsyncRead + AsyncWrite + Unpin> ImapConn for Conn<S> {
    async fn flush_if_full(&mut self) -> bool {
        self.out.len() < FLUSH_AT || self.flush().await.is_ok()
    }

    /// A command line with its literals, at most `max` bytes in all. Literal bytes are
    /// charged to `budget` as they arrive; when it runs out, the rest of the command is read
    /// and dropped and the command refused (NO [LIMIT]), as is a synchronising literal larger
    /// than what is left of it, before the client sends it.
    async fn read_command(&mut self, max: u64, budget: &'static LiteralBudget) -> Input {
        let mut command = Vec::new();
        let mut held = Held::new(budget);
        // The command's size, with literals dropped over the budget.
        let mut size = 0u64;
        let mut over_budget = false;
        let mut line = Vec::with_capacity(256);
        loop {
            match self.next_line(&mut line).await {
                None => return Input::Gone,
                Some(Line::TooLong) => {
                    let tag = wire::tag_of(&command);
                    reply(self, tag, StatusKind::Bad, None, "Command line too long.");
                    return Input::Refused;
                }
                Some(_) => {}
            }
            size += line.len() as u64 + 2;
            if !over_budget {
                command.extend_from_slice(&line);
                command.extend_from_slice(b"\r\n");
            }
            let announced = literal_announced(&line);
            let busy = |conn: &mut Self, command: &[u8]| {
                let tag = wire::tag_of(command);
                reply(
                    conn,
                    tag,
                    StatusKind::No,
                    Some(wire::code("LIMIT")),
                    BUSY_TEXT,
                );
                Input::Refused
            };
            let Some((length, sync)) = announced else {
                if over_budget {
                    return busy(self, &command);
                }
                return Input::Command(command, held);
            };
            if size + length > max {
                let tag = wire::tag_of(&command);
                if sync {
                    // Refused before the client sends it: nothing to read or allocate.
                    let code = Some(Code::TooBig);
                    reply(self, tag, StatusKind::No, code, "Literal too large.");
                    return Input::Refused;
                }
                // A LITERAL+ client sends the data anyway: the connection cannot recover.
                self.peer
                    .log
                    .ended(End::Closed("non-synchronising literal too large"));
                wire::status(&mut self.out, wire::bye("Literal too large."));
                return Input::Gone;
            }
            size += length;
            // A client told NO instead of `+` does not send the literal (RFC 3501 §7.5).
            if sync && (over_budget || budget.available() < length) {
                return busy(self, &command);
            }
            if sync {
                wire::continuation(&mut self.out, "Ready for literal data");
                if self.flush().await.is_err() {
                    return Input::Gone;
                }
            }
            // A literal before login is bounded by the login deadline too.
            let deadline = self.peer.read_limit().at;
            let read = if over_budget {
                discard(self, length, deadline).await
            } else {
                read_literal(self, &mut command, length, &mut held, deadline).await
            };
            match read {
                Ok(()) => {}
                Err(Unread::OverBudget) => over_budget = true,
                Err(Unread::Gone) => return Input::Gone,
            }
        }
    }
}

/// Reads a literal of `length` bytes onto the end of `command` by `deadline`, charging
/// `held` a chunk at a time before reading it. The buffer grows as bytes arrive (to at
/// most the literal's end), so a literal announced and not sent costs nothing.
async fn read_literal<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    command: &mut Vec<u8>,
    length: u64,
    held: &mut Held,
    deadline: Instant,
) -> Result<(), Unread> {
    // `length` is at most the command's limit, which fits in memory.
    let end = command.len() + length as usize;
    while command.len() < end {
        let chunk = (end - command.len()).min(LITERAL_CHUNK);
        if !held.take(chunk as u64) {
            let rest = (end - command.len()) as u64;
            discard(conn, rest, deadline).await?;
            return Err(Unread::OverBudget);
        }
        if command.capacity() < command.len() + chunk {
            // Doubling, for linear copying, but never past the literal's end.
            let target = (command.capacity() * 2).clamp(command.len() + chunk, end);
            command.reserve_exact(target - command.len());
        }
        let mut source = (&mut conn.reader).take(chunk as u64);
        match tokio::time::timeout_at(deadline, source.read_buf(command)).await {
            Ok(Ok(n)) if n > 0 => held.give_back((chunk - n) as u64),
            _ => return Err(Unread::Gone),
        }
    }
    Ok(())
}

/// Reads `length` bytes of a literal by `deadline` and drops them.
async fn discard<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    length: u64,
    deadline: Instant,
) -> Result<(), Unread> {
    let mut sink = tokio::io::sink();
    let mut rest = (&mut conn.reader).take(length);
    let copy = tokio::io::copy(&mut rest, &mut sink);
    match tokio::time::timeout_at(deadline, copy).await {
        Ok(Ok(n)) if n == length => Ok(()),
        _ => Err(Unread::Gone),
    }
}

/// Whether the client has gone (closed the connection or broken it), looked at without
/// waiting: for work that runs long between reads (SEARCH). Bytes it sent meanwhile stay
/// buffered for the next command.
pub(super) fn client_gone<R: AsyncBufRead + Unpin>(reader: &mut R) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(reader).poll_fill_buf(&mut cx) {
        Poll::Ready(Ok(buffered)) => buffered.is_empty(),
        Poll::Ready(Err(_)) => true,
        Poll::Pending => false,
    }
}

/// `{123}` or `{123+}` at the end of a line: the literal's length and whether it is
/// synchronising.
fn literal_announced(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, sync))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::CommandBody;
    use imap_codec::CommandCodec;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_announced(b"a LOGIN {5}"), Some((5, true)));
        assert_eq!(literal_announced(b"a APPEND x {12+}"), Some((12, false)));
        assert_eq!(
            literal_announced(b"a LOGIN {2147483648}"),
            Some((2_147_483_648, true))
        );
        // Too many digits to be a length we would take: not a literal, so a syntax error.
        assert_eq!(literal_announced(b"a LOGIN {99999999999999999999}"), None);
        assert_eq!(literal_announced(b"a NOOP"), None);
        assert_eq!(literal_announced(b"a LOGIN {}"), None);
        assert_eq!(literal_announced(b"a LOGIN {+}"), None);
        assert_eq!(literal_announced(b"a LOGIN {1a}"), None);
    }

    #[test]
    fn whole_commands_decode() {
        let (_, c) = CommandCodec::default()
            .decode(b"a1 LOGIN {5}\r\nalice {3+}\r\npw!\r\n")
            .expect("decodes");
        assert!(matches!(c.body, CommandBody::Login { .. }));
        let (_, c) = CommandCodec::default()
            .decode(b"a2 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)]<0.100>)\r\n")
            .expect("decodes");
        assert!(matches!(c.body, CommandBody::Fetch { uid: true, .. }));
        assert!(CommandCodec::default().decode(b"a3 FROB\r\n").is_err());
    }
}
