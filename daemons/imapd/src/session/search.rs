//! SEARCH and UID SEARCH (RFC 3501 §6.4.4); the matching itself is [`crate::search`].

use imap_codec::imap_types::core::Charset;
use imap_codec::imap_types::response::{Code, Data};
use imap_codec::imap_types::search::SearchKey;
use tokio::io::{AsyncRead, AsyncWrite};

use super::input::client_gone;
use super::reply::{bad, no_code, ok, Done};
use super::{blocking, Conn, Session};
use crate::search::{self, Query, Stopped};
use crate::wire::{self, nz};

impl Session {
    /// SEARCH and UID SEARCH. The search stops when the client goes away (looked at
    /// between keys) and after [`search::TIME_LIMIT`].
    pub(super) fn search<S>(
        &mut self,
        charset: Option<&Charset<'_>>,
        criteria: &[SearchKey<'_>],
        uid: bool,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some(cs) = charset {
            let cs: &str = cs.as_ref();
            if !(cs.eq_ignore_ascii_case("UTF-8") || cs.eq_ignore_ascii_case("US-ASCII")) {
                let allowed = ["UTF-8", "US-ASCII"]
                    .into_iter()
                    .filter_map(|c| Charset::try_from(c).ok())
                    .collect();
                return no_code(Code::BadCharset { allowed }, "Unsupported charset.");
            }
        }
        let Some(sel) = self.selected.as_ref() else {
            return bad("No mailbox selected.");
        };
        let query = Query::new(criteria);
        let reader = &mut conn.reader;
        let mut gone = || client_gone(reader);
        let mut watch = search::Watch::new(search::TIME_LIMIT, &mut gone);
        let hits = match blocking(|| search::run(sel, &query, &mut watch)) {
            Ok(hits) => hits,
            Err(Stopped::Gone) => return Done::Close,
            Err(Stopped::TooLong) => {
                return no_code(wire::code("LIMIT"), "SEARCH took too long: narrow it down.")
            }
        };
        let numbers = hits
            .into_iter()
            .map(|i| {
                nz(if uid {
                    sel.messages[i].uid
                } else {
                    i as u32 + 1
                })
            })
            .collect();
        wire::data(&mut conn.out, Data::Search(numbers));
        ok("SEARCH completed.")
    }
}
