//! FETCH BINARY[section] and BINARY.SIZE[section] (RFC 3516): the part located as BODY's
//! sections are, its content-transfer-encoding undone ([`crate::binary`]).

use std::borrow::Cow;
use std::num::NonZeroU32;

use mail_parser::{Message, MimeHeaders, PartType};
use tokio::io::{AsyncRead, AsyncWrite};

use super::mime;
use super::response::copy_literal;
use crate::binary::{self, UnknownCte};
use crate::session::input::ImapConn;
use crate::session::Conn;

/// Literal8 bytes are copied into the output this much at a time.
const CHUNK: usize = 64 * 1024;

/// `BINARY[1.2]<origin>` (or `BINARY.SIZE[...]`): the item's name in the response.
pub(super) fn item_name(prefix: &[u8], section: &[NonZeroU32], origin: Option<u32>) -> Vec<u8> {
    let path: Vec<String> = section.iter().map(|n| n.to_string()).collect();
    let mut name = prefix.to_vec();
    name.extend_from_slice(format!("[{}]", path.join(".")).as_bytes());
    if let Some(origin) = origin {
        name.extend_from_slice(format!("<{origin}>").as_bytes());
    }
    name
}

/// The decoded content of part `section` (not empty) of a message read whole; a part that
/// does not exist is empty.
pub(super) fn decoded<'a>(
    content: &'a [u8],
    parsed: Option<&'a Message<'a>>,
    section: &[NonZeroU32],
) -> Result<Cow<'a, [u8]>, UnknownCte> {
    let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
    let Some(loc) = parsed.and_then(|msg| mime::locate(msg, &path)) else {
        return Ok(Cow::Borrowed(&content[..0]));
    };
    let body = mime::slice(
        &loc.message.raw_message,
        loc.part.offset_body,
        loc.part.offset_end,
    );
    // A message or multipart part has no encoding of its own to undo.
    if matches!(loc.part.body, PartType::Message(_) | PartType::Multipart(_)) {
        return Ok(Cow::Borrowed(body));
    }
    binary::decode(body, loc.part.content_transfer_encoding())
}

/// ` NAME {n}` and the bytes, or ` NAME ~{n}` and the bytes as they are when they hold a NUL
/// (which a plain literal may not carry).
pub(super) async fn write<S>(conn: &mut Conn<S>, name: &[u8], data: &[u8]) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let binary = data.contains(&0);
    conn.out.extend_from_slice(name);
    let tilde = if binary { "~" } else { "" };
    conn.out
        .extend_from_slice(format!(" {tilde}{{{}}}\r\n", data.len()).as_bytes());
    if !binary {
        return copy_literal(data, conn).await;
    }
    for chunk in data.chunks(CHUNK) {
        conn.out.extend_from_slice(chunk);
        if !conn.flush_if_full().await {
            return false;
        }
    }
    true
}
