//! Entries (and fuzz targets) for the forms imapd parses itself: `imap_extended`, the
//! extended LIST/CREATE/APPEND commands, `imap_catenate`, CATENATE's parts and IMAP URLs,
//! and `imap_binary`, BINARY's transfer decoders and the APPEND literal8 conversion.

use base64::Engine;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::CommandCodec;

use crate::binary::{decode_base64, decode_qp, to_base64_parts};
use crate::catenate::{parse_url, CatPart, MAX_URL};
use crate::extended::{parse, ExtCommand, Parser};

/// The input as a command (CRLF added when missing). A LIST has at least one pattern; each
/// message of a MULTIAPPEND is a single APPEND that `imap-codec` decodes, or refuses, without
/// panicking, and whose message is bytes of the input (empty for a CATENATE, which has
/// parts).
pub fn imap_extended(data: &[u8]) {
    let mut command = data.to_vec();
    if !command.ends_with(b"\r\n") {
        command.extend_from_slice(b"\r\n");
    }
    let Some(parsed) = parse(&command) else {
        return;
    };
    match parsed.command {
        ExtCommand::List(list) => assert!(!list.patterns.is_empty()),
        ExtCommand::Create { uses, .. } => assert!(uses.len() <= 32),
        ExtCommand::Append { messages } => {
            for m in messages {
                if let Some(parts) = &m.catenate {
                    assert!(!parts.is_empty());
                }
                let Ok((_, c)) = CommandCodec::default().decode(&m.command) else {
                    continue;
                };
                let CommandBody::Append { message, .. } = c.body else {
                    panic!("a MULTIAPPEND part decoded as another command");
                };
                let bytes = match &message {
                    LiteralOrLiteral8::Literal(l) => l.data(),
                    LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
                };
                assert!(
                    command.windows(bytes.len().max(1)).any(|w| w == bytes) || bytes.is_empty(),
                    "a message that is not in the input"
                );
                assert!(m.catenate.is_none() || bytes.is_empty());
            }
        }
    }
}

/// Target `imap_catenate`: the input as CATENATE's parenthesised parts, and as one URL. A
/// TEXT part is bytes of the input without a NUL, a URL part at most [`MAX_URL`] long; a URL
/// taken names a message (UID not zero) of a folder with a name, or of the selected one.
pub fn imap_catenate(data: &[u8]) {
    let mut parser = Parser::new(data);
    for part in parser.cat_parts().unwrap_or_default() {
        match part {
            CatPart::Text(text) => {
                assert!(!text.contains(&0));
                assert!(data.windows(text.len().max(1)).any(|w| w == text) || text.is_empty());
            }
            CatPart::Url(url) => {
                assert!(url.len() <= MAX_URL);
                check_url(&url);
            }
        }
    }
    check_url(data);
}

fn check_url(url: &[u8]) {
    let Some(parsed) = parse_url(url) else {
        return;
    };
    assert!(parsed.uid > 0);
    assert!(parsed.uid_validity != Some(0));
    if let Some(name) = &parsed.mailbox {
        assert!(
            !name.is_empty() && !name.chars().any(char::is_control),
            "{name:?}"
        );
    }
    if let Some(server) = &parsed.server {
        assert!(!server.host.is_empty());
        assert_eq!(server.host, server.host.to_ascii_lowercase());
    }
    assert!(!matches!(parsed.partial, Some((_, Some(0)))));
}

/// The input through both decoders (no panic, base64 never longer than its input); base64
/// encoding and decoding again gives the input back; and a message converted for storage
/// needs no second conversion (every binary part it had is base64 now).
pub fn imap_binary(data: &[u8]) {
    assert!(decode_base64(data).len() <= data.len());
    decode_qp(data);
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    assert_eq!(decode_base64(encoded.as_bytes()), data);
    if let Some(stored) = to_base64_parts(data) {
        assert_eq!(to_base64_parts(&stored), None, "{stored:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        for seed in [
            &b"a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (% {1}\r\n*) RETURN (STATUS (SIZE))"[..],
            b"a CREATE x (USE (\\Sent \\Junk))",
            b"a APPEND x (\\Seen) {3}\r\nabc ~{2}\r\n\0\0 \"bad date\" {1}\r\nz",
            b"a APPEND x {99999999999}\r\n",
            b"a LIST \"\" ((((",
        ] {
            imap_extended(seed);
        }
        for seed in [
            &b"(TEXT {3}\r\nabc URL \"/INBOX;UIDVALIDITY=1/;UID=2/;SECTION=1.MIME\")"[..],
            b"imap://u;AUTH=*@[::1]:143/a%20b/;UID=1/;PARTIAL=0.5",
            b";UID=1/;SECTION=HEADER.FIELDS%20(A%20B)",
            b"(URL {99999999999}\r\n)",
        ] {
            imap_catenate(seed);
        }
        for seed in [
            &b"Content-Transfer-Encoding: binary\r\n\r\n\0\x01\xff"[..],
            b"=\r\n=4=41=\n==",
            b"",
            b"\xff\xfe====AAAA",
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\0\r\n--b\r\n\
              Content-Transfer-Encoding: binary\r\n\r\nx\r\n--b--\r\n",
        ] {
            imap_binary(seed);
        }
    }
}
