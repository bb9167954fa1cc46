//! Entries (and fuzz targets) for the forms imapd parses itself: `imap_extended`, the
//! extended LIST/CREATE/APPEND commands, and `imap_binary`, BINARY's transfer decoders and
//! the APPEND literal8 conversion.

use base64::Engine;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::CommandCodec;

use crate::binary::{decode_base64, decode_qp, to_base64_parts};
use crate::extended::{parse, ExtCommand};

/// The input as a command (CRLF added when missing). A LIST has at least one pattern; each
/// message of a MULTIAPPEND is a single APPEND that `imap-codec` decodes, or refuses, without
/// panicking, and whose message is bytes of the input.
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
            for message in messages {
                let Ok((_, c)) = CommandCodec::default().decode(&message) else {
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
            }
        }
    }
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
