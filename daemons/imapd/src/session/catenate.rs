//! APPEND with CATENATE (RFC 4469): a message made of TEXT literals and of messages or parts
//! of messages in the user's own folders, named by IMAP URLs (RFC 5092, parsed by
//! [`crate::catenate`]). MULTIAPPEND (session/extended.rs) builds every message here first,
//! so a bad URL adds nothing.
//!
//! A URL must name this server (`localhost`, this host's name, or the address the client
//! reached) and the logged-in user, or no server at all; anything else is `NO [BADURL …]`,
//! as are a folder, UIDVALIDITY, message or part that is not there. The messages built by
//! one command together are bounded by the command limit (`NO [TOOBIG]`) and charged to the
//! daemon's literal budget like the literals they are made of.

use std::net::IpAddr;
use std::path::PathBuf;

use imap_codec::imap_types::response::{Code, CodeOther};
use inetkit_maildir::{Folder, Snapshot, StoreError};

use super::fetch::{mime, raw, section::section_data};
use super::input::Held;
use super::mailboxes::{mailbox_name, mailbox_of};
use super::reply::{no_code, Done};
use super::{blocking, Session, MAX_COMMAND};
use crate::catenate::{parse_url, CatPart, ImapUrl, Server};
use crate::names::Coding;
use crate::selected::octets;
use crate::wire;

/// Longest URL repeated in a BADURL response code.
const MAX_URL_ECHO: usize = 512;
/// Most message bytes one command's URLs may have read (each URL reads its whole message,
/// however little of it it takes).
const MAX_READ: u64 = 4 * MAX_COMMAND;

/// What one command's CATENATEs have built so far: bytes against the command limit, the
/// budget they hold, and the folders their URLs looked at.
pub(super) struct Built {
    bytes: u64,
    /// Bytes of source messages read, against [`MAX_READ`].
    read: u64,
    held: Held,
    folders: Vec<(PathBuf, Folder, Snapshot)>,
}

impl Built {
    pub(super) fn new(session: &Session) -> Built {
        Built {
            bytes: 0,
            read: 0,
            held: Held::new(session.literals),
            folders: Vec::new(),
        }
    }

    /// Makes room for `n` more bytes: within the command limit and the literal budget.
    fn grow(&mut self, n: usize) -> Result<(), Done> {
        let n = n as u64;
        if self.bytes.saturating_add(n) > MAX_COMMAND {
            return Err(no_code(Code::TooBig, "The message would be too large."));
        }
        if !self.held.take(n) {
            return Err(no_code(
                wire::code("LIMIT"),
                "Too much data in flight from other clients; try again later.",
            ));
        }
        self.bytes += n;
        Ok(())
    }
}

/// Why a URL gives no data.
enum Refused {
    BadUrl(&'static str),
    Other(Done),
}

impl From<Done> for Refused {
    fn from(done: Done) -> Refused {
        Refused::Other(done)
    }
}

impl Session {
    /// The message `parts` make, in order.
    pub(super) fn catenate(&self, parts: &[CatPart], built: &mut Built) -> Result<Vec<u8>, Done> {
        let mut message = Vec::new();
        for part in parts {
            match part {
                CatPart::Text(text) => {
                    built.grow(text.len())?;
                    message.extend_from_slice(text);
                }
                CatPart::Url(url) => match self.url_data(url, built) {
                    Ok(data) => {
                        built.grow(data.len())?;
                        message.extend_from_slice(&data);
                    }
                    Err(Refused::BadUrl(why)) => return Err(bad_url(url, why)),
                    Err(Refused::Other(done)) => return Err(done),
                },
            }
        }
        Ok(message)
    }

    /// The bytes a URL names.
    fn url_data(&self, url: &[u8], built: &mut Built) -> Result<Vec<u8>, Refused> {
        let url = parse_url(url).ok_or(Refused::BadUrl("Not an IMAP URL of a message here."))?;
        if let Some(server) = &url.server {
            if !self.is_this_server(server) {
                return Err(Refused::BadUrl(
                    "Only this server's own messages can be used.",
                ));
            }
        }
        let name = match &url.mailbox {
            Some(name) => {
                // A URL's name is UTF-8 (RFC 5092 §3) in both revisions.
                mailbox_name(&mailbox_of(name, Coding::Utf8), Coding::Utf8)
                    .ok_or(Refused::BadUrl("No such mailbox."))?
            }
            None => match &self.selected {
                Some(sel) => sel.folder.name().to_owned(),
                None => return Err(Refused::BadUrl("No mailbox selected for a relative URL.")),
            },
        };
        let index = self.source(&name, built)?;
        let (_, folder, snapshot) = built
            .folders
            .get(index)
            .ok_or(Refused::BadUrl("No such mailbox."))?;
        if url.uid_validity.is_some_and(|v| v != snapshot.uid_validity) {
            return Err(Refused::BadUrl("The mailbox's UIDVALIDITY has changed."));
        }
        let msg = snapshot
            .messages
            .binary_search_by_key(&url.uid, |m| m.uid)
            .ok()
            .and_then(|i| snapshot.messages.get(i))
            .ok_or(Refused::BadUrl("No such message."))?;
        // The whole message is read to take the part: a message larger than any command
        // could be is not read at all. Its size is only what its name or the uid list says
        // (a program that wrote it may have named it wrong): what is read is what counts.
        let too_big = || no_code(Code::TooBig, "The message named is too large.").into();
        let over_budget = || {
            let text = "The URLs name more than one command may read; send fewer.";
            no_code(wire::code("LIMIT"), text).into()
        };
        if octets(msg) > MAX_COMMAND {
            return Err(too_big());
        }
        if built.read.saturating_add(octets(msg)) > MAX_READ {
            return Err(over_budget());
        }
        let read = blocking(|| -> Result<Option<Vec<u8>>, StoreError> {
            let file = folder.open(msg)?;
            // The file's bytes are never more than its CRLF form's: past the command limit
            // on disk is past it in a command.
            let mut limited = std::io::Read::take(file, MAX_COMMAND + 1);
            let content = raw::read_all(&mut limited).map_err(StoreError::Input)?;
            Ok((limited.limit() > 0).then_some(content))
        });
        let content = read
            .map_err(|_| Refused::BadUrl("The message cannot be read."))?
            .ok_or_else(too_big)?;
        built.read = built.read.saturating_add(content.len() as u64);
        if content.len() as u64 > MAX_COMMAND {
            return Err(too_big());
        }
        if built.read > MAX_READ {
            return Err(over_budget());
        }
        let data = part_of(content, &url).ok_or(Refused::BadUrl("No such part."))?;
        Ok(data)
    }

    /// A folder the URLs of this command name, looked at once: its place in `built`.
    fn source(&self, name: &str, built: &mut Built) -> Result<usize, Refused> {
        let mbox = self.mailbox().clone();
        let folder =
            blocking(|| mbox.folder(name)).map_err(|_| Refused::BadUrl("No such mailbox."))?;
        if let Some(i) = built.folders.iter().position(|(p, ..)| p == folder.path()) {
            return Ok(i);
        }
        let snapshot = blocking(|| folder.snapshot())
            .map_err(|_| Refused::BadUrl("The mailbox cannot be read."))?;
        built
            .folders
            .push((folder.path().to_path_buf(), folder, snapshot));
        Ok(built.folders.len() - 1)
    }

    /// Whether an `imap://` URL's server is this one, for the logged-in user.
    fn is_this_server(&self, server: &Server) -> bool {
        let user_ok = server.user.as_deref() == Some(self.mailbox().user());
        user_ok && is_local_host(&server.host, self.peer.local.ip())
    }
}

/// `localhost`, this host's name (whole or its first label), or `local`, the address the
/// client reached (IPv6 in brackets).
fn is_local_host(host: &str, local: IpAddr) -> bool {
    if host == "localhost" {
        return true;
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return ip.to_canonical() == local.to_canonical();
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim().to_ascii_lowercase();
    let first = name.split('.').next().unwrap_or_default();
    !name.is_empty() && (host == name || host == first)
}

/// The section and partial range a URL names of a message (CRLF form); `None`: no such part.
fn part_of(content: Vec<u8>, url: &ImapUrl) -> Option<Vec<u8>> {
    let data = match &url.section {
        None => content,
        Some(section) => {
            let parsed = mime::parse(&content);
            section_data(&content, parsed.as_ref(), section)?.into_owned()
        }
    };
    Some(match url.partial {
        None => data,
        Some((offset, length)) => {
            let total = data.len() as u64;
            let start = offset.min(total);
            let end = length.map_or(total, |l| start.saturating_add(l).min(total));
            data.get(start as usize..end as usize)
                .unwrap_or_default()
                .to_vec()
        }
    })
}

/// `NO [BADURL url] why`: the URL as sent, less what a response code cannot hold.
fn bad_url(url: &[u8], why: &'static str) -> Done {
    let mut code = b"BADURL ".to_vec();
    code.extend(
        url.iter()
            .copied()
            .filter(|&b| (b' '..0x7f).contains(&b) && b != b']')
            .take(MAX_URL_ECHO),
    );
    if code.len() == b"BADURL ".len() {
        code.push(b'?');
    }
    no_code(Code::Other(CodeOther::unvalidated(code)), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(is_local_host("localhost", local));
        assert!(is_local_host("127.0.0.1", local));
        assert!(is_local_host("[::ffff:127.0.0.1]", local));
        assert!(!is_local_host("192.0.2.1", local));
        assert!(!is_local_host("mail.example.invalid", local));
        let v6: IpAddr = "::1".parse().expect("ip");
        assert!(is_local_host("[::1]", v6));
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if !name.trim().is_empty() {
            assert!(is_local_host(&name.trim().to_ascii_lowercase(), local));
        }
    }

    fn url(text: &str) -> ImapUrl {
        parse_url(text.as_bytes()).expect("url")
    }

    #[test]
    fn parts_and_ranges() {
        let msg = b"From: a\r\nTo: b\r\n\r\nbody\r\n".to_vec();
        let part = |u: &str| part_of(msg.clone(), &url(u));
        assert_eq!(part("/x/;UID=1").as_deref(), Some(&msg[..]));
        assert_eq!(
            part("/x/;UID=1/;SECTION=HEADER").as_deref(),
            Some(&b"From: a\r\nTo: b\r\n\r\n"[..])
        );
        assert_eq!(
            part("/x/;UID=1/;SECTION=TEXT").as_deref(),
            Some(&b"body\r\n"[..])
        );
        assert_eq!(
            part("/x/;UID=1/;SECTION=1").as_deref(),
            Some(&b"body\r\n"[..])
        );
        assert_eq!(
            part("/x/;UID=1/;SECTION=HEADER.FIELDS%20(to)").as_deref(),
            Some(&b"To: b\r\n\r\n"[..])
        );
        assert_eq!(
            part("/x/;UID=1/;PARTIAL=6.4").as_deref(),
            Some(&b"a\r\nT"[..])
        );
        assert_eq!(
            part("/x/;UID=1/;PARTIAL=6").map(|p| p.len()),
            Some(msg.len() - 6)
        );
        assert_eq!(
            part("/x/;UID=1/;PARTIAL=100000.1").as_deref(),
            Some(&b""[..])
        );
        // A part a single-part message does not have.
        assert_eq!(part("/x/;UID=1/;SECTION=2"), None);
    }

    #[test]
    fn bad_url_codes_hold_only_text() {
        let code = |text: &[u8]| Some(Code::Other(CodeOther::unvalidated(text.to_vec())));
        for (url, expected) in [
            (&b"/a]b\r\n\0c"[..], &b"BADURL /abc"[..]),
            (b"]", b"BADURL ?"),
        ] {
            let Done::Tagged(_, got, _) = bad_url(url, "x") else {
                panic!("not a tagged reply");
            };
            assert_eq!(got, code(expected));
        }
        let long = vec![b'x'; 2 * MAX_URL_ECHO];
        let Done::Tagged(_, Some(Code::Other(got)), _) = bad_url(&long, "x") else {
            panic!("no code");
        };
        assert_eq!(got.inner().len(), "BADURL ".len() + MAX_URL_ECHO);
    }
}
