//! Target `imap_literal`: the command reader (`session/input.rs`) over a client's bytes.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use inetkit_runtime::conn::{Farewell, LineConn};
use inetkit_runtime::fuzzing::take_byte;
use inetkit_runtime::server::{Login, Peer};

use crate::session::input::{Held, ImapConn, Input, LiteralBudget};

/// The daemon-wide literal budget of the fuzzed reader: inputs pre-charge all but a small
/// part of it, as other sessions would.
const LIMIT: u64 = 1 << 20;
static BUDGET: LiteralBudget = LiteralBudget::new(LIMIT);

/// What reading one command gave, as the model and the reader both say it.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The command's bytes (lines with CRLF, literal data in place).
    Command(Vec<u8>),
    /// A command line over the line limit: `BAD`.
    LineTooLong,
    /// A synchronising literal over the command limit: `NO [TOOBIG]`, before it is sent.
    TooBig,
    /// Over the literal budget: `NO [LIMIT]`.
    Busy,
    /// A LITERAL+ literal over the command limit: `BYE`, the connection ends.
    GoneTooBig,
    /// The input ended (mid-line or mid-literal).
    Gone,
}

/// Target `imap_literal`: the first three bytes set the line limit, the command limit and
/// the literal budget left by other sessions; the rest is what the client sends. The commands
/// read must be exactly what a plain model of RFC 3501 §4.3 and RFC 7888 (LITERAL+) says,
/// refusals included; a `+` continuation goes out for each synchronising literal taken and
/// for no other; the command's buffer never holds much more than the command; and every
/// literal byte charged to the budget is given back once the commands are dropped.
pub fn imap_literal(data: &[u8]) {
    let (line_param, data) = take_byte(data);
    let (max_param, data) = take_byte(data);
    let (budget_param, input) = take_byte(data);
    let max_line = usize::from(line_param % 128) + 1;
    let max = u64::from(max_param) * 8;
    let available = u64::from(budget_param) * 8;

    let mut others = Held::new(&BUDGET);
    assert!(
        others.take(LIMIT - available),
        "the budget was not given back"
    );

    let expected = model(input, max_line, max, available);
    let (got, output) = read_all(input, max_line, max);
    assert_eq!(
        got, expected.outcomes,
        "line limit {max_line}, command limit {max}, budget {available}"
    );
    let continuations = output
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"+ "))
        .count();
    assert_eq!(
        continuations,
        expected.continuations,
        "{:?}",
        String::from_utf8_lossy(&output)
    );
    drop(others);
    assert_eq!(BUDGET.available(), LIMIT, "literal bytes not given back");
}

thread_local! {
    /// One runtime for every input: the reader needs tokio's clock, and building a runtime per
    /// input would cost more than the reading.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
}

/// Reads commands off `input` until the reader says the client is gone; each command's bytes
/// (and its budget) are dropped before the next is read, as the session does. Returns the
/// outcomes and everything the reader wrote.
fn read_all(input: &[u8], max_line: usize, max: u64) -> (Vec<Outcome>, Vec<u8>) {
    let written = RefCell::new(Vec::new());
    let stream = Script {
        input,
        written: &written,
    };
    let farewell = Farewell {
        idle: "* BYE idle",
        shutdown: "* BYE shutdown",
        login: "* BYE login",
    };
    let peer = Peer {
        addr: SocketAddr::from(([192, 0, 2, 1], 40000)),
        local: SocketAddr::from(([192, 0, 2, 2], 143)),
        listener: "imap".into(),
        idle_timeout: Duration::from_secs(600),
        write_timeout: Duration::from_secs(30),
        shutdown: CancellationToken::new(),
        login: Login::none(),
        log: Default::default(),
    };
    let mut conn = LineConn::new(stream, peer, max_line, farewell);
    let mut got = Vec::new();
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            loop {
                let input = conn.read_command(max, &BUDGET).await;
                let outcome = match input {
                    Input::Command(bytes, held) => {
                        // Literals keep within `max`; one more line may follow the last.
                        assert!(bytes.len() as u64 <= max + max_line as u64 + 2);
                        assert!(
                            bytes.capacity() <= 2 * bytes.len() + 512,
                            "a buffer of {} for {} bytes",
                            bytes.capacity(),
                            bytes.len()
                        );
                        drop(held);
                        Outcome::Command(bytes)
                    }
                    Input::Refused => refusal(&conn.out),
                    Input::Gone if last_line(&conn.out).starts_with(b"* BYE") => {
                        Outcome::GoneTooBig
                    }
                    Input::Gone => Outcome::Gone,
                };
                let done = matches!(outcome, Outcome::Gone | Outcome::GoneTooBig);
                got.push(outcome);
                if done {
                    break;
                }
            }
        });
    });
    let queued = std::mem::take(&mut conn.out);
    drop(conn);
    let mut output = written.into_inner();
    output.extend_from_slice(&queued);
    (got, output)
}

/// The refusal the reader just queued (its last reply line).
fn refusal(out: &[u8]) -> Outcome {
    let line = String::from_utf8_lossy(last_line(out));
    if line.contains(" BAD ") {
        Outcome::LineTooLong
    } else if line.contains(" NO [TOOBIG] ") {
        Outcome::TooBig
    } else if line.contains(" NO [LIMIT] ") {
        Outcome::Busy
    } else {
        panic!("an unexpected refusal: {line:?}")
    }
}

fn last_line(out: &[u8]) -> &[u8] {
    let body = out.strip_suffix(b"\r\n").unwrap_or(out);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    body.get(start..).unwrap_or_default()
}

/// What the model expects.
struct Expected {
    outcomes: Vec<Outcome>,
    /// `+` continuation requests sent.
    continuations: usize,
}

/// The reader spelled out: lines end at LF (a CR before it dropped) and hold at most
/// `max_line` bytes; a line ending in `{n}` or `{n+}` is followed by n bytes of literal; a
/// command with its literals is at most `max` bytes; its literal bytes together must fit in
/// what is `available` of the budget, else the rest of it is read and dropped and it is
/// refused (a synchronising literal is refused before it is sent, so its bytes are not read).
fn model(input: &[u8], max_line: usize, max: u64, available: u64) -> Expected {
    let mut outcomes = Vec::new();
    let mut continuations = 0;
    let mut rest = input;
    'commands: loop {
        let mut command = Vec::new();
        let mut size = 0u64;
        let mut held = 0u64;
        let mut over_budget = false;
        loop {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                outcomes.push(Outcome::Gone);
                break 'commands;
            };
            let (line, after) = rest.split_at(end);
            rest = after.get(1..).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > max_line {
                outcomes.push(Outcome::LineTooLong);
                continue 'commands;
            }
            size += line.len() as u64 + 2;
            if !over_budget {
                command.extend_from_slice(line);
                command.extend_from_slice(b"\r\n");
            }
            let Some((length, sync)) = announced(line) else {
                outcomes.push(if over_budget {
                    Outcome::Busy
                } else {
                    Outcome::Command(command)
                });
                continue 'commands;
            };
            if size + length > max {
                if sync {
                    outcomes.push(Outcome::TooBig);
                    continue 'commands;
                }
                outcomes.push(Outcome::GoneTooBig);
                break 'commands;
            }
            size += length;
            if sync && (over_budget || available - held < length) {
                outcomes.push(Outcome::Busy);
                continue 'commands;
            }
            if sync {
                continuations += 1;
            }
            // `length` is at most `max`, a few KiB.
            let Some((literal, after)) = rest.split_at_checked(length as usize) else {
                outcomes.push(Outcome::Gone);
                break 'commands;
            };
            rest = after;
            if over_budget || held + length > available {
                over_budget = true;
            } else {
                held += length;
                command.extend_from_slice(literal);
            }
        }
    }
    Expected {
        outcomes,
        continuations,
    }
}

/// `{digits}` or `{digits+}` at the end of a line (whatever bytes come before), at most ten
/// digits.
fn announced(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let inside = std::str::from_utf8(inner.get(open + 1..)?).ok()?;
    let (digits, sync) = match inside.strip_suffix('+') {
        Some(digits) => (digits, false),
        None => (inside, true),
    };
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, sync))
}

/// A client that has sent `input` and then closed its side; what the server writes is kept.
struct Script<'a> {
    input: &'a [u8],
    written: &'a RefCell<Vec<u8>>,
}

impl AsyncRead for Script<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        let (now, later) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.borrow_mut().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
