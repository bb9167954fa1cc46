//! What the fuzz targets `dns_query` and `dns_answer` run (see `inetkit_runtime::fuzzing`):
//! a client's query through the forwarder, fast path and full path, and an upstream's answer
//! through the checks and the cache into the fast path's copy.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use inetkit_runtime::fuzzing::take_byte;

use crate::cache::KeyBuf;
use crate::config::DnsConfig;
use crate::fast;
use crate::forwarder::{Forwarder, Settings, Step, Transport};
use crate::upstream::{check_answer, Ask};

/// Local data for the local paths (a record, a blocked domain); no upstream.
const CONFIG: &str = r#"
[forward]
resolv_conf = "/nonexistent"

[local]
blocklist = ["ads.example"]

[[record]]
name = "host.lan"
type = "A"
value = "192.0.2.7"
"#;

/// What the forwarder offers clients (its default `edns_buffer`).
const OURS: usize = 1232;

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let config: DnsConfig = toml::from_str(CONFIG).expect("the fuzzing config");
        Settings::from_config(&config, &[]).expect("the fuzzing settings")
    })
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a fixed name")
}

/// A response from an upstream to `question`.
fn upstream_reply(question: Query, rcode: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::new();
    m.set_message_type(MessageType::Response)
        .set_response_code(rcode)
        .add_query(question);
    m.add_answers(answers);
    m
}

/// A forwarder whose cache holds answers for a few names, with and without DO and CD: a
/// CNAME chain, a name error with its SOA, and a TXT set too big for a 512-byte reply.
fn cached_forwarder() -> &'static Forwarder {
    static FORWARDER: OnceLock<Forwarder> = OnceLock::new();
    FORWARDER.get_or_init(|| {
        let settings = settings();
        let forwarder = Forwarder::new(settings.clone(), settings.cache.clone());
        let soa = SOA::new(
            name("example."),
            name("host.example."),
            1,
            3600,
            600,
            86400,
            86400,
        );
        let txt = (0..20)
            .map(|i| {
                let text = format!("{i:02}{}", "x".repeat(40));
                Record::from_rdata(
                    name("big.example."),
                    86400,
                    RData::TXT(TXT::new(vec![text])),
                )
            })
            .collect();
        let answers = [
            (
                Query::query(name("www.example."), RecordType::A),
                ResponseCode::NoError,
                vec![
                    Record::from_rdata(
                        name("www.example."),
                        86400,
                        RData::CNAME(CNAME(name("web.example."))),
                    ),
                    Record::from_rdata(name("web.example."), 86400, RData::A(A::new(192, 0, 2, 1))),
                ],
            ),
            (
                Query::query(name("big.example."), RecordType::TXT),
                ResponseCode::NoError,
                txt,
            ),
            (
                Query::query(name("nx.example."), RecordType::AAAA),
                ResponseCode::NXDomain,
                vec![],
            ),
        ];
        for (question, rcode, records) in answers {
            for (dnssec_ok, checking_disabled) in [(false, false), (true, false), (false, true)] {
                let key = KeyBuf::from_name(
                    question.name(),
                    question.query_type(),
                    question.query_class(),
                    dnssec_ok,
                    checking_disabled,
                )
                .expect("a short name")
                .to_key();
                let mut reply = upstream_reply(question.clone(), rcode, records.clone());
                if rcode == ResponseCode::NXDomain {
                    reply.add_name_server(Record::from_rdata(
                        name("example."),
                        86400,
                        RData::SOA(soa.clone()),
                    ));
                }
                forwarder.keep(&key, &question, reply, settings);
            }
        }
        forwarder
    })
}

/// A reply as a message with every TTL zeroed: the fast and the full path may read the clock
/// a second apart.
fn without_ttls(wire: &[u8], what: &str) -> Message {
    let mut message = Message::from_vec(wire).unwrap_or_else(|e| panic!("{what}: {e}"));
    for r in message.answers_mut().iter_mut() {
        r.set_ttl(0);
    }
    for r in message.name_servers_mut().iter_mut() {
        r.set_ttl(0);
    }
    for r in message.additionals_mut().iter_mut() {
        r.set_ttl(0);
    }
    message
}

fn transport(bit: bool) -> Transport {
    if bit {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

/// Target `dns_query`: a client's message (transport and client address from the first byte)
/// through [`Forwarder::start`], with a cache holding a few answers. A message is dropped only
/// when it is too short, a response, or unreadable from a refused client; a reply parses, is
/// a response with the query's ID, and fits the client's size. A query the hand-written fast
/// path reads is one hickory-proto reads the same way (ID, flags, question, EDNS, cache key),
/// and the fast path's patched copy of a cached answer is the reply the full path renders.
pub fn dns_query(data: &[u8]) {
    let (selector, wire) = take_byte(data);
    let via = transport(selector & 1 != 0);
    let refused = selector & 2 != 0;
    let client: IpAddr = if refused {
        IpAddr::from([192, 0, 2, 1])
    } else {
        IpAddr::from([127, 0, 0, 1])
    };
    let forwarder = cached_forwarder();
    let settings = forwarder.settings();
    let parsed = Message::from_vec(wire).ok();

    let mut out = Vec::new();
    match forwarder.start(wire, client, via, &mut out) {
        Step::Drop => assert!(
            wire.len() < 12 || wire[2] & 0x80 != 0 || (parsed.is_none() && refused),
            "dropped a query that deserves an answer"
        ),
        Step::Reply => {
            let reply = Message::from_vec(&out).expect("a reply that does not parse");
            assert_eq!(reply.message_type(), MessageType::Response);
            assert_eq!(reply.id(), u16::from_be_bytes([wire[0], wire[1]]));
            if via == Transport::Udp {
                let edns = parsed.as_ref().is_some_and(|q| q.extensions().is_some());
                let limit = if edns { OURS } else { 512 };
                assert!(out.len() <= limit, "{} bytes over UDP", out.len());
            }
            if refused {
                assert!(matches!(
                    reply.response_code(),
                    ResponseCode::Refused | ResponseCode::FormErr
                ));
            }
        }
        // Not cached: an upstream would be asked.
        Step::Forward(_) => assert!(!refused),
    }

    let Some(plain) = fast::parse(wire) else {
        return;
    };
    let Some(key) = plain.key(wire) else {
        return;
    };
    let Some(query) = parsed else {
        panic!("the fast path reads a query hickory-proto refuses");
    };
    assert_eq!(query.id(), plain.id);
    assert_eq!(query.recursion_desired(), plain.recursion_desired);
    assert_eq!(query.checking_disabled(), plain.checking_disabled);
    assert_eq!(query.authentic_data(), plain.authentic_data);
    let [question] = query.queries() else {
        panic!(
            "the fast path read one question, hickory-proto {}",
            query.queries().len()
        );
    };
    assert_eq!(u16::from(question.query_type()), plain.qtype);
    assert_eq!(u16::from(question.query_class()), plain.qclass);
    let edns = query.extensions().as_ref();
    assert_eq!(
        edns.map(|e| (e.max_payload().max(512), e.flags().dnssec_ok)),
        plain
            .edns
            .map(|(size, dnssec_ok)| (size.max(512), dnssec_ok))
    );
    let full_key = KeyBuf::from_name(
        question.name(),
        question.query_type(),
        question.query_class(),
        edns.is_some_and(|e| e.flags().dnssec_ok),
        query.checking_disabled(),
    );
    assert_eq!(
        full_key.as_ref().map(KeyBuf::as_bytes),
        Some(key.as_bytes())
    );

    let mut fast = Vec::new();
    if forwarder.answer_cached(wire, client, via, &settings, Instant::now(), &mut fast) {
        let mut full = Vec::new();
        let step = forwarder.start_full(wire, client, via, &settings, &mut full);
        assert!(matches!(step, Step::Reply), "cached for one path only");
        assert_eq!(
            without_ttls(&fast, "fast reply"),
            without_ttls(&full, "full reply")
        );
    }
}

/// Target `dns_answer`: an upstream's answer (our flags and transport from the first byte)
/// checked against the question it carries, kept as the forwarder keeps it, then asked for by
/// a client. The check refuses exactly what is not a response; what is cached parses back,
/// and the fast path's copy of it is the reply the full path renders (or, too big for the
/// client, the full path's reply is truncated).
pub fn dns_answer(data: &[u8]) {
    let (selector, wire) = take_byte(data);
    let Ok(message) = Message::from_vec(wire) else {
        return;
    };
    let [question] = message.queries() else {
        return;
    };
    let question = question.clone();
    if matches!(
        question.query_type(),
        RecordType::ANY | RecordType::AXFR | RecordType::IXFR
    ) {
        // Answered without asking upstream.
        return;
    }
    let dnssec_ok = selector & 1 != 0;
    let checking_disabled = selector & 2 != 0;
    let via = transport(selector & 4 != 0);
    let client_edns = dnssec_ok || selector & 8 != 0;
    let ask = Ask {
        query: question.clone(),
        dnssec_ok,
        checking_disabled,
        edns_buffer: OURS as u16,
        exact_case: selector & 16 != 0,
    };
    let is_response = message.message_type() == MessageType::Response;
    assert_eq!(check_answer(wire, message.id(), &ask).is_ok(), is_response);
    if !is_response
        || matches!(
            message.response_code(),
            ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp
        )
    {
        return;
    }
    let Some(key) = KeyBuf::from_name(
        question.name(),
        question.query_type(),
        question.query_class(),
        dnssec_ok,
        checking_disabled,
    ) else {
        return;
    };
    let settings = settings();
    if settings.local.covers(key.name()) {
        return;
    }
    let mut stored_question = Query::query(question.name().to_lowercase(), question.query_type());
    stored_question.set_query_class(question.query_class());
    let forwarder = Forwarder::new(settings.clone(), settings.cache.clone());
    forwarder.keep(&key.to_key(), &stored_question, message, settings);
    let cached = forwarder.cache.size().0 == 1;

    let mut query = Message::new();
    query
        .set_id(0x1234)
        .set_recursion_desired(true)
        .set_checking_disabled(checking_disabled)
        .add_query(question);
    let client_buffer: usize = if selector & 32 != 0 { 4096 } else { 512 };
    if client_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(client_buffer as u16);
        edns.set_dnssec_ok(dnssec_ok);
        query.set_edns(edns);
    }
    let Ok(query) = query.to_vec() else {
        return;
    };
    let client = IpAddr::from([127, 0, 0, 1]);
    let mut fast = Vec::new();
    let fast_hit =
        forwarder.answer_cached(&query, client, via, settings, Instant::now(), &mut fast);
    let mut full = Vec::new();
    let step = forwarder.start_full(&query, client, via, settings, &mut full);
    if !cached {
        assert!(!fast_hit);
        return;
    }
    assert!(
        matches!(step, Step::Reply),
        "a cached answer that does not parse back"
    );
    let full = without_ttls(&full, "full reply");
    if fast_hit {
        assert_eq!(without_ttls(&fast, "fast reply"), full);
    } else {
        // Declined only for size: the stored copy with the client's question (and an OPT)
        // does not fit, and then the full path's rendering hardly fits either.
        assert!(fast::parse(&query).is_some(), "our own query is not plain");
        let records = forwarder
            .cache
            .with_fresh(key.as_bytes(), Instant::now(), |entry, _| {
                entry.records().len()
            })
            .expect("still cached");
        let copy = 12 + key.name().len() + 4 + records + if client_edns { 11 } else { 0 };
        let max = match (via, client_edns) {
            (Transport::Tcp, _) => 65535,
            (Transport::Udp, false) => 512,
            (Transport::Udp, true) => client_buffer.clamp(512, OURS),
        };
        assert!(
            copy > max || full.truncated(),
            "the fast path declined a reply of {copy} bytes for {max}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn dns_query_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "dns_query", dns_query) > 0);
    }

    #[test]
    fn dns_answer_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "dns_answer", dns_answer) > 0);
    }

    /// The cached names answer from the cache (else the corpus would test only misses).
    #[test]
    fn the_fuzzing_cache_answers() {
        let forwarder = cached_forwarder();
        let mut query = Message::new();
        query
            .set_id(1)
            .add_query(Query::query(name("WWW.example."), RecordType::A));
        let wire = query.to_vec().unwrap();
        let mut out = Vec::new();
        let settings = forwarder.settings();
        assert!(forwarder.answer_cached(
            &wire,
            IpAddr::from([127, 0, 0, 1]),
            Transport::Udp,
            &settings,
            Instant::now(),
            &mut out
        ));
        assert_eq!(Message::from_vec(&out).unwrap().answers().len(), 2);
    }
}
