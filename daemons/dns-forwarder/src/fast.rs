//! The cache-hit fast path: a plain query (one question, at most an OPT record, no compression)
//! is read by hand, and a cached answer goes out as a copy of the stored reply with the ID,
//! flags, question case and TTLs patched in place and an OPT record added for an EDNS query.
//! Anything else takes the full path (hickory-proto).

use crate::cache::{Entry, KeyBuf};

/// What the fast path needs of a query.
pub(crate) struct Plain {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub authentic_data: bool,
    /// The question as sent (name, type, class).
    pub question: std::ops::Range<usize>,
    pub qtype: u16,
    pub qclass: u16,
    /// EDNS: the client's buffer size and DO bit.
    pub edns: Option<(u16, bool)>,
}

impl Plain {
    /// The cache key for this query.
    pub(crate) fn key(&self, wire: &[u8]) -> Option<KeyBuf> {
        let name = wire.get(self.question.start..self.question.end - 4)?;
        let dnssec_ok = self.edns.is_some_and(|(_, d)| d);
        KeyBuf::from_wire_name(
            name,
            self.qtype,
            self.qclass,
            dnssec_ok,
            self.checking_disabled,
        )
    }
}

fn u16_at(wire: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]))
}

/// Reads a plain standard query; None for anything else (the full parser then decides).
pub(crate) fn parse(wire: &[u8]) -> Option<Plain> {
    let flags = u16_at(wire, 2)?;
    // QR=0, opcode QUERY, one question, no answer or authority, at most one additional.
    if flags & 0xf800 != 0 || u16_at(wire, 4)? != 1 || u16_at(wire, 6)? != 0 {
        return None;
    }
    if u16_at(wire, 8)? != 0 || u16_at(wire, 10)? > 1 {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*wire.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        // A compression pointer or an extended label type: not plain.
        if len > 63 || at + 1 + len > wire.len() {
            return None;
        }
        at += 1 + len;
        if at - 12 > 255 {
            return None;
        }
    }
    let qtype = u16_at(wire, at)?;
    let qclass = u16_at(wire, at + 2)?;
    let question = 12..at + 4;
    at += 4;
    let mut edns = None;
    if u16_at(wire, 10)? == 1 {
        // OPT: root owner, type 41, class = buffer size, TTL = rcode, version, DO+Z.
        if *wire.get(at)? != 0 || u16_at(wire, at + 1)? != 41 {
            return None;
        }
        let payload = u16_at(wire, at + 3)?;
        let version = *wire.get(at + 6)?;
        let dnssec_ok = *wire.get(at + 7)? & 0x80 != 0;
        let rdlen = usize::from(u16_at(wire, at + 9)?);
        if version != 0 || !plain_options(wire.get(at + 11..at + 11 + rdlen)?) {
            return None;
        }
        at += 11 + rdlen;
        edns = Some((payload, dnssec_ok));
    }
    if at != wire.len() {
        return None;
    }
    Some(Plain {
        id: u16_at(wire, 0)?,
        recursion_desired: flags & 0x0100 != 0,
        authentic_data: flags & 0x0020 != 0,
        checking_disabled: flags & 0x0010 != 0,
        question,
        qtype,
        qclass,
        edns,
    })
}

/// Whether EDNS options are framed as hickory-proto reads them (code, length, data, up to the
/// end of the record), with none whose contents it checks further (client subnet): anything
/// else it may refuse with FORMERR, so the full path must judge it, cached or not.
fn plain_options(mut options: &[u8]) -> bool {
    const CLIENT_SUBNET: u16 = 8;
    while !options.is_empty() {
        let (Some(code), Some(len)) = (u16_at(options, 0), u16_at(options, 2)) else {
            return false;
        };
        let Some(rest) = options.get(4 + usize::from(len)..) else {
            return false;
        };
        if code == CLIENT_SUBNET {
            return false;
        }
        options = rest;
    }
    true
}

/// Appends the reply to `query` from a cache entry `age` seconds old, with an OPT record
/// offering `edns_buffer` if the query had one. False (and nothing appended) if the reply would
/// be longer than `max` or the entry cannot be walked (it always can): the full path decides.
pub(crate) fn reply(
    entry: &Entry,
    wire: &[u8],
    query: &Plain,
    age: u32,
    edns_buffer: u16,
    max: usize,
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    let header = entry.header();
    let opt = if query.edns.is_some() { 11 } else { 0 };
    let len = header.len() + query.question.len() + entry.records().len() + opt;
    if len > max || query.question.len() != entry.question_len() {
        return false;
    }
    out.extend_from_slice(&query.id.to_be_bytes());
    // RFC 6840 §5.8: AD only to clients that showed they understand it.
    let wants_ad = query.authentic_data || query.edns.is_some_and(|(_, d)| d);
    out.push((header[2] & !0x01) | u8::from(query.recursion_desired));
    out.push(
        (header[3] & !0x30)
            | if wants_ad { header[3] & 0x20 } else { 0 }
            | if query.checking_disabled { 0x10 } else { 0 },
    );
    out.extend_from_slice(&header[4..12]);
    // Same name, maybe other case: the client's bytes, which answer names point at.
    out.extend_from_slice(&wire[query.question.clone()]);
    out.extend_from_slice(entry.records());
    if let Some((_, dnssec_ok)) = query.edns {
        // OPT last (RFC 6891 §6.1.1): root owner, type 41, our buffer size, extended rcode
        // and version 0, the DO bit as the client sent it, no options.
        let arcount = u16::from_be_bytes([out[start + 10], out[start + 11]]).wrapping_add(1);
        out[start + 10..start + 12].copy_from_slice(&arcount.to_be_bytes());
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&edns_buffer.max(512).to_be_bytes());
        out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    if age > 0 && count_down(&mut out[start..], 12 + query.question.len(), age).is_none() {
        out.truncate(start);
        return false;
    }
    true
}

/// Lowers the TTL of every record but OPT by `age` seconds; `at` is where the records start.
fn count_down(reply: &mut [u8], mut at: usize, age: u32) -> Option<()> {
    let rrs = usize::from(u16_at(reply, 6)?)
        + usize::from(u16_at(reply, 8)?)
        + usize::from(u16_at(reply, 10)?);
    for _ in 0..rrs {
        at = skip_name(reply, at)?;
        let rtype = u16_at(reply, at)?;
        let ttl = reply.get_mut(at + 4..at + 8)?;
        if rtype != 41 {
            let old = u32::from_be_bytes([ttl[0], ttl[1], ttl[2], ttl[3]]);
            ttl.copy_from_slice(&old.saturating_sub(age).to_be_bytes());
        }
        at += 10 + usize::from(u16_at(reply, at + 8)?);
    }
    (at == reply.len()).then_some(())
}

/// The offset after a (possibly compressed) name.
fn skip_name(wire: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *wire.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l < 64 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str, edns: bool) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e.set_dnssec_ok(true);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn plain_queries_parse() {
        let wire = query("WwW.Example.", true);
        let q = parse(&wire).unwrap();
        assert_eq!(q.id, 7);
        assert!(q.recursion_desired);
        assert_eq!(q.edns, Some((1232, true)));
        assert_eq!(q.qtype, 1);
        assert_eq!(q.key(&wire).unwrap().name(), b"\x03www\x07example\x00");
        let q = parse(&query("a.b.", false)).unwrap();
        assert_eq!(q.edns, None);
        // A pointer, trailing bytes, a response: not plain.
        assert!(parse(&[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]).is_none());
        let mut long = query("a.b.", false);
        long.push(0);
        assert!(parse(&long).is_none());
        let mut resp = query("a.b.", false);
        resp[2] |= 0x80;
        assert!(parse(&resp).is_none());
    }

    /// Found by the dns_query fuzz target: an OPT record whose options are cut short was
    /// answered from the cache by the fast path, while hickory-proto (the full path, and the
    /// same query when not cached) refuses the message with FORMERR.
    #[test]
    fn edns_options_must_be_whole() {
        let with_options = |options: &[u8]| {
            let mut wire = query("a.b.", true);
            let end = wire.len();
            wire[end - 2..].copy_from_slice(&(options.len() as u16).to_be_bytes());
            wire.extend_from_slice(options);
            wire
        };
        // A cookie (code 10): plain, and hickory-proto reads it.
        let cookie = with_options(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(parse(&cookie).is_some());
        assert!(Message::from_vec(&cookie).is_ok());
        for bad in [&[1][..], &[0, 10, 0], &[0, 10, 0, 0, 0]] {
            let wire = with_options(bad);
            assert!(parse(&wire).is_none(), "{bad:?}");
            assert!(Message::from_vec(&wire).is_err(), "{bad:?}");
        }
        // A last option longer than the record: hickory-proto drops the options, the full
        // path answers.
        assert!(parse(&with_options(&[0, 10, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8])).is_none());
        // Client subnet: hickory-proto checks its contents, so the full path decides.
        let subnet = with_options(&[0, 8, 0, 4, 0, 1, 0, 0]);
        assert!(parse(&subnet).is_none());
    }
}
