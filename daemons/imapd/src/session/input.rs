//! Reading a command: a line plus any literals it announces (`{n}` gets a `+` continuation;
//! `{n+}`, LITERAL+, does not), bounded in size, for `imap-codec` to decode whole.

use imap_codec::imap_types::response::{Code, StatusKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use inetkit_runtime::lines::Line;

use super::reply::reply;
use super::Conn;
use crate::wire;

/// Output is sent once this much is queued.
const FLUSH_AT: usize = 64 * 1024;

/// What reading a command gave.
pub(super) enum Input {
    Command(Vec<u8>),
    /// Refused before reading all of it (a literal too large); the reply is queued.
    Refused,
    Gone,
}

/// IMAP's additions to the shared line connection: literals, and flushing mid-response.
pub(super) trait ImapConn {
    async fn flush_if_full(&mut self) -> bool;
    async fn read_command(&mut self, max: u64) -> Input;
}

impl<S: AsyncRead + AsyncWrite + Unpin> ImapConn for Conn<S> {
    async fn flush_if_full(&mut self) -> bool {
        self.out.len() < FLUSH_AT || self.flush().await.is_ok()
    }

    /// A command line with its literals, at most `max` bytes in all.
    async fn read_command(&mut self, max: u64) -> Input {
        let mut command = Vec::new();
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
            command.extend_from_slice(&line);
            command.extend_from_slice(b"\r\n");
            let Some((length, sync)) = literal_announced(&line) else {
                return Input::Command(command);
            };
            if command.len() as u64 + length > max {
                let tag = wire::tag_of(&command);
                if sync {
                    // Refused before the client sends it: nothing to read or allocate.
                    let code = Some(Code::TooBig);
                    reply(self, tag, StatusKind::No, code, "Literal too large.");
                    return Input::Refused;
                }
                // A LITERAL+ client sends the data anyway: the connection cannot recover.
                wire::status(&mut self.out, wire::bye("Literal too large."));
                return Input::Gone;
            }
            if sync {
                wire::continuation(&mut self.out, "Ready for literal data");
                if self.flush().await.is_err() {
                    return Input::Gone;
                }
            }
            let start = command.len();
            command.resize(start + length as usize, 0);
            let read = tokio::time::timeout(
                self.peer.idle_timeout,
                self.reader.read_exact(&mut command[start..]),
            );
            match read.await {
                Ok(Ok(_)) => {}
                _ => return Input::Gone,
            }
        }
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
