//! COMPRESS (RFC 4978): the tagged OK in the clear, then the loop goes on over a
//! [`crate::compress::Deflate`] stream (see `Session::run`).

use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::response::{Code, StatusKind};

use super::reply::{no_code, Done};
use super::{Conn, Session};
use crate::wire;

impl Session {
    /// COMPRESS DEFLATE (the only algorithm imap-codec parses; others are a syntax error).
    pub(super) fn compress<S>(&self, tag: &Tag<'_>, conn: &mut Conn<S>) -> Done {
        if self.compressed {
            return no_code(Code::CompressionActive, "DEFLATE is active already.");
        }
        let text = wire::text("DEFLATE active.");
        wire::send(
            &mut conn.out,
            &wire::tagged(tag.clone(), StatusKind::Ok, None, text),
        );
        Done::Compress
    }
}
