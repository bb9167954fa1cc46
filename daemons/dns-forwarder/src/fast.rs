//! The cache-hit fast path: a plain query (one question, at most an OPT record, no compression)
//! is read by hand, and a cached answer goes out as a copy of a reply rendered before with the
//! ID, flags, question case and TTLs patched in place. Anything else takes the full path.

use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// What the fast path needs of a query.
pub struct Plain {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub authentic_data: bool,
    /// The question as sent (name, type, class).
    pub question: std::ops::Range<usize>,
    pub name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// EDNS: the client's buffer size and DO bit.
    pub edns: Option<(u16, bool)>,
}

fn u16_at(wire: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]))
}

/// Reads a plain standard query; None for anything else (the full parser then decides).
pub fn parse(wire: &[u8]) -> Option<Plain> {
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
    let name = Name::read(&mut BinDecoder::new(&wire[12..at])).ok()?;
    let qtype = RecordType::from(u16_at(wire, at)?);
    let qclass = DNSClass::from(u16_at(wire, at + 2)?);
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
        if version != 0 {
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
        name,
        qtype,
        qclass,
        edns,
    })
}

/// A full reply rendered once, and where its TTLs are.
#[derive(Debug)]
pub struct Template {
    wire: Vec<u8>,
    ttls: Vec<usize>,
    /// The age (seconds) the TTLs in `wire` were rendered at.
    age: u32,
}

impl Template {
    /// From a reply we rendered; None if it cannot be walked (it always can).
    pub fn new(wire: Vec<u8>, age: u32) -> Option<Self> {
        let ttls = ttl_offsets(&wire)?;
        Some(Template { wire, ttls, age })
    }

    pub fn len(&self) -> usize {
        self.wire.len()
    }

    /// The reply for `query`, `age` seconds into the answer's life; `ad` is the AD bit.
    pub fn reply(&self, wire: &[u8], query: &Plain, age: u32, ad: bool) -> Vec<u8> {
        let mut out = self.wire.clone();
        out[0..2].copy_from_slice(&query.id.to_be_bytes());
        out[2] = (out[2] & !0x01) | u8::from(query.recursion_desired);
        out[3] = (out[3] & !0x30)
            | if ad { 0x20 } else { 0 }
            | if query.checking_disabled { 0x10 } else { 0 };
        // Same name, maybe other case: the client's bytes, which answer names point at.
        out[query.question.clone()].copy_from_slice(&wire[query.question.clone()]);
        let less = age.saturating_sub(self.age);
        if less > 0 {
            for &at in &self.ttls {
                let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
                out[at..at + 4].copy_from_slice(&ttl.saturating_sub(less).to_be_bytes());
            }
        }
        out
    }
}

/// Offsets of the TTL fields of every record but OPT.
fn ttl_offsets(wire: &[u8]) -> Option<Vec<usize>> {
    let qd = u16_at(wire, 4)?;
    let rrs = usize::from(u16_at(wire, 6)?)
        + usize::from(u16_at(wire, 8)?)
        + usize::from(u16_at(wire, 10)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(wire, at)? + 4;
    }
    let mut ttls = Vec::with_capacity(rrs);
    for _ in 0..rrs {
        at = skip_name(wire, at)?;
        let rtype = u16_at(wire, at)?;
        if rtype != 41 {
            ttls.push(at + 4);
        }
        let rdlen = usize::from(u16_at(wire, at + 8)?);
        at += 10 + rdlen;
        if at > wire.len() {
            return None;
        }
    }
    Some(ttls)
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
        let q = parse(&query("WwW.Example.", true)).unwrap();
        assert_eq!(q.id, 7);
        assert!(q.recursion_desired);
        assert_eq!(q.edns, Some((1232, true)));
        assert_eq!(q.name, Name::from_ascii("www.example.").unwrap());
        assert_eq!(q.qtype, RecordType::A);
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

    #[test]
    fn templates_patch_id_case_and_ttls() {
        use hickory_proto::rr::{rdata::A, RData, Record};
        let mut reply = Message::from_vec(&query("www.example.", true)).unwrap();
        reply.set_message_type(hickory_proto::op::MessageType::Response);
        reply.add_answer(Record::from_rdata(
            Name::from_ascii("www.example.").unwrap(),
            300,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        let t = Template::new(reply.to_vec().unwrap(), 0).unwrap();
        let mut q2 = query("WWW.example.", true);
        q2[0] = 0x12;
        q2[1] = 0x34;
        let plain = parse(&q2).unwrap();
        let out = Message::from_vec(&t.reply(&q2, &plain, 100, false)).unwrap();
        assert_eq!(out.id(), 0x1234);
        assert_eq!(out.answers()[0].ttl(), 200);
        assert!(out.answers()[0]
            .name()
            .eq_case(&Name::from_ascii("WWW.example.").unwrap()));
        assert_eq!(out.extensions().as_ref().unwrap().max_payload(), 1232);
    }
}
