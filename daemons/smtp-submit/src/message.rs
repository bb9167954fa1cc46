//! What submission does to a message on its way into the spool (RFC 6409 §8): a `Received:`
//! line first, `Bcc:` removed, `Message-ID:` and `Date:` added when the client left them out,
//! and the `From:` fields kept aside for the sender check. It works line by line, so a message
//! streams through without being held in memory.

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

use crate::from_header::{FromError, MAX_FROM};

pub(crate) fn rfc2822_now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_owned())
}

/// The first line of what we write: duplicate detection after a crash looks for ` id <id>;`
/// in a delivered file's first header (see `queue::already_delivered`).
pub(crate) fn received_header(
    helo: &str,
    peer: std::net::IpAddr,
    hostname: &str,
    protocol: &str,
    id: &str,
    recipient: Option<&str>,
) -> String {
    let peer = peer.to_canonical();
    let helo: String = helo.chars().filter(|c| c.is_ascii_graphic()).collect();
    let mut header = format!(
        "Received: from {helo} ([{peer}]) by {hostname} (inetkit-smtp-submit) with {protocol} id {id};\r\n"
    );
    if let Some(recipient) = recipient {
        header.push_str(&format!("\tfor <{recipient}>;\r\n"));
    }
    header.push_str(&format!("\t{}\r\n", rfc2822_now()));
    header
}

/// Rewrites the header section of a message given one line (without its line end) at a time.
pub(crate) struct HeaderFilter {
    in_headers: bool,
    skipping: bool,
    has_message_id: bool,
    has_date: bool,
    hostname: String,
    /// The body of each `From:` field, unfolded, at most [`MAX_FROM`] bytes in all.
    from: Vec<Vec<u8>>,
    /// The line being read continues a `From:` field.
    in_from: bool,
    /// Bytes kept in `from`, plus one per field so that empty fields count too.
    from_size: usize,
    /// The `From:` fields passed [`MAX_FROM`] bytes.
    from_too_long: bool,
}

impl HeaderFilter {
    pub(crate) fn new(hostname: &str) -> Self {
        HeaderFilter {
            in_headers: true,
            skipping: false,
            has_message_id: false,
            has_date: false,
            hostname: hostname.to_owned(),
            from: Vec::new(),
            in_from: false,
            from_size: 0,
            from_too_long: false,
        }
    }

    /// The body of every `From:` field of the message, once its header section has ended.
    pub(crate) fn author_fields(&self) -> Result<&[Vec<u8>], FromError> {
        if self.from_too_long {
            return Err(FromError::TooLong);
        }
        Ok(&self.from)
    }

    /// Starts keeping a new `From:` field whose first line holds `text`.
    fn start_from(&mut self, text: &[u8]) {
        self.in_from = true;
        self.from_size += 1;
        if self.from_size > MAX_FROM {
            self.from_too_long = true;
        }
        if !self.from_too_long {
            self.from.push(Vec::new());
        }
        self.keep_from(text);
    }

    /// Keeps `text` (part of a `From:` field body) for the check, within the bound.
    fn keep_from(&mut self, text: &[u8]) {
        self.from_size = self.from_size.saturating_add(text.len());
        if self.from_size > MAX_FROM {
            self.from_too_long = true;
            self.from = Vec::new();
        } else if let Some(field) = self.from.last_mut() {
            field.extend_from_slice(text);
        }
    }

    /// Appends what `line` becomes (CRLF-terminated) to `out`.
    pub(crate) fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.in_headers {
            if line.is_empty() {
                self.end_headers(out);
                out.extend_from_slice(b"\r\n");
                return;
            }
            if matches!(line.first(), Some(b' ' | b'\t')) {
                if self.in_from {
                    self.keep_from(line);
                }
                if !self.skipping {
                    push_line(line, out);
                }
                return;
            }
            self.in_from = false;
            match header_name(line) {
                Some(name) => {
                    if name.eq_ignore_ascii_case(b"from") {
                        self.start_from(line.get(name.len() + 1..).unwrap_or_default());
                    }
                    self.skipping = name.eq_ignore_ascii_case(b"bcc");
                    if name.eq_ignore_ascii_case(b"message-id") {
                        self.has_message_id = true;
                    } else if name.eq_ignore_ascii_case(b"date") {
                        self.has_date = true;
                    }
                    if self.skipping {
                        return;
                    }
                }
                None => {
                    // Not a header: the body began without an empty line; add it.
                    self.end_headers(out);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        push_line(line, out);
    }

    /// Called after the last line: a message that is all headers still gets ours.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if self.in_headers {
            self.end_headers(out);
        }
    }

    fn end_headers(&mut self, out: &mut Vec<u8>) {
        self.in_headers = false;
        self.skipping = false;
        self.in_from = false;
        if !self.has_message_id {
            let id = format!(
                "Message-ID: <{:016x}.{:08x}@{}>\r\n",
                rand::random::<u64>(),
                rand::random::<u32>(),
                self.hostname
            );
            out.extend_from_slice(id.as_bytes());
        }
        if !self.has_date {
            out.extend_from_slice(format!("Date: {}\r\n", rfc2822_now()).as_bytes());
        }
    }
}

fn push_line(line: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// `Name` of a `Name: value` line (RFC 5322 §2.2: printable ASCII but colon, no spaces).
fn header_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line.get(..colon)?;
    (!name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(lines: &[&[u8]]) -> String {
        let mut filter = HeaderFilter::new("mx.example");
        let mut out = Vec::new();
        for line in lines {
            filter.line(line, &mut out);
        }
        filter.finish(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn strips_bcc_with_continuations_and_keeps_ids() {
        let out = filter(&[
            b"From: a@x",
            b"Bcc: secret@x,",
            b"  other@x",
            b"Message-ID: <1@x>",
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
            b"",
            b"Bcc: in the body stays",
        ]);
        assert_eq!(
            out,
            "From: a@x\r\nMessage-ID: <1@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nBcc: in the body stays\r\n"
        );
    }

    #[test]
    fn adds_missing_message_id_and_date() {
        let out = filter(&[b"Subject: hi", b"", b"body"]);
        assert!(out.starts_with("Subject: hi\r\nMessage-ID: <"));
        assert!(out.contains("@mx.example>\r\nDate: "));
        assert!(out.ends_with("\r\n\r\nbody\r\n"));
        // Headers only, and a body without the empty line.
        assert!(filter(&[b"Subject: hi"]).contains("Date: "));
        let out = filter(&[b"just text"]);
        assert!(out.ends_with("\r\n\r\njust text\r\n"), "{out}");
    }

    fn author_fields(lines: &[&[u8]]) -> Result<Vec<Vec<u8>>, FromError> {
        let mut filter = HeaderFilter::new("mx.example");
        let mut out = Vec::new();
        for line in lines {
            filter.line(line, &mut out);
        }
        filter.finish(&mut out);
        filter.author_fields().map(<[Vec<u8>]>::to_vec)
    }

    #[test]
    fn keeps_every_from_field_unfolded_and_nothing_from_the_body() {
        let fields = author_fields(&[
            b"FROM: Alice",
            b"\t<alice@example.org>",
            b"Subject: hi",
            b" from: continued subject",
            b"From:bob@example.org",
            b"",
            b"From: in the body",
        ]);
        assert_eq!(
            fields,
            Ok(vec![
                b" Alice\t<alice@example.org>".to_vec(),
                b"bob@example.org".to_vec()
            ])
        );
        assert_eq!(author_fields(&[b"Subject: none", b"", b"body"]), Ok(vec![]));
    }

    #[test]
    fn from_fields_are_bounded() {
        let long = vec![b'a'; MAX_FROM];
        let mut first = b"From: ".to_vec();
        first.extend_from_slice(&long);
        let lines: Vec<&[u8]> = vec![&first, b"", b"body"];
        assert_eq!(author_fields(&lines), Err(FromError::TooLong));
        // Many small fields count together.
        let many: Vec<&[u8]> = std::iter::repeat_n(&b"From: a@x"[..], MAX_FROM).collect();
        assert_eq!(author_fields(&many), Err(FromError::TooLong));
    }
}
