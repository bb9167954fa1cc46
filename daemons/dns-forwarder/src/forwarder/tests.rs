use super::*;
use crate::config::DnsConfig;
use hickory_proto::op::{Edns, MessageType};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::Name;
use std::net::SocketAddr;

fn settings() -> Settings {
    let mut config = DnsConfig::default();
    config.forward.resolv_conf = "/nonexistent".into();
    Settings::from_config(&config, &[]).unwrap()
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new();
    m.set_id(4242)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

fn forwarder() -> Arc<Forwarder> {
    Arc::new(Forwarder::new(settings(), CacheConfig::default()))
}

fn reply(f: &Forwarder, wire: &[u8], client: &str, via: Transport) -> Option<Message> {
    let mut out = Vec::new();
    match f.start(wire, client.parse().unwrap(), via, &mut out) {
        Step::Reply => Some(Message::from_vec(&out).unwrap()),
        Step::Drop => None,
        Step::Forward(_) => panic!("wanted an answer without upstream"),
    }
}

#[test]
fn refuses_other_networks() {
    let f = forwarder();
    let q = query("example.", RecordType::A, None).to_vec().unwrap();
    let r = reply(&f, &q, "192.0.2.1", Transport::Udp).unwrap();
    assert_eq!(r.response_code(), ResponseCode::Refused);
    assert_eq!(r.id(), 4242);
    assert_eq!(r.queries().len(), 1);
}

#[test]
fn errors_follow_the_rfcs() {
    let f = forwarder();
    // Garbage after a header: FORMERR with the ID.
    let r = reply(
        &f,
        &[0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7],
        "127.0.0.1",
        Transport::Udp,
    )
    .unwrap();
    assert_eq!(r.response_code(), ResponseCode::FormErr);
    assert_eq!(r.id(), 0x1234);
    // Compression pointer pointing at itself.
    let looped = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
    let r = reply(&f, &looped, "127.0.0.1", Transport::Udp).unwrap();
    assert_eq!(r.response_code(), ResponseCode::FormErr);
    // No question.
    let mut none = query("example.", RecordType::A, None);
    none.take_queries();
    let r = reply(&f, &none.to_vec().unwrap(), "127.0.0.1", Transport::Udp).unwrap();
    assert_eq!(r.response_code(), ResponseCode::FormErr);
    // A response is never answered; nor is a short packet.
    let mut resp = query("example.", RecordType::A, None);
    resp.set_message_type(MessageType::Response);
    assert!(reply(&f, &resp.to_vec().unwrap(), "127.0.0.1", Transport::Udp).is_none());
    assert!(reply(&f, &[1, 2, 3], "127.0.0.1", Transport::Udp).is_none());
    // NOTIFY, UPDATE: not implemented.
    let mut notify = query("example.", RecordType::SOA, None);
    notify.set_op_code(OpCode::Update);
    let r = reply(&f, &notify.to_vec().unwrap(), "127.0.0.1", Transport::Udp).unwrap();
    assert_eq!(r.response_code(), ResponseCode::NotImp);
}

#[test]
fn any_gets_a_minimal_answer() {
    let f = forwarder();
    let q = query("example.", RecordType::ANY, Some(1232))
        .to_vec()
        .unwrap();
    let r = reply(&f, &q, "::1", Transport::Udp).unwrap();
    assert_eq!(r.answers().len(), 1);
    assert_eq!(r.answers()[0].record_type(), RecordType::HINFO);
}

#[test]
fn big_answers_are_truncated_to_the_client_buffer() {
    let s = settings();
    let records: Vec<Record> = (0..40)
        .map(|i| {
            Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                60,
                RData::TXT(TXT::new(vec![format!("{i:02}{}", "x".repeat(40))])),
            )
        })
        .collect();
    let answer = Answer {
        rcode: ResponseCode::NoError,
        authentic_data: false,
        answers: records,
        authority: vec![],
        additional: vec![],
    };
    let q = query("big.example.", RecordType::TXT, None);
    let udp = Message::from_vec(&render(
        &q,
        &answer,
        0,
        &s,
        max_size(&q, Transport::Udp, 1232),
    ))
    .unwrap();
    assert!(udp.truncated());
    assert!(udp.answers().is_empty());
    let tcp = Message::from_vec(&render(
        &q,
        &answer,
        0,
        &s,
        max_size(&q, Transport::Tcp, 1232),
    ))
    .unwrap();
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 40);
    let q = query("big.example.", RecordType::TXT, Some(4096));
    let wire = render(&q, &answer, 0, &s, max_size(&q, Transport::Udp, 4096));
    assert!(!Message::from_vec(&wire).unwrap().truncated());
    assert!(wire.len() > 1232);
}

/// The fast path's patched copy is byte for byte what the full path renders.
#[test]
fn fast_replies_equal_full_renders() {
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    let s = settings();
    let f = forwarder();
    let name = |n: &str| Name::from_ascii(n).unwrap();
    let positive = Answer {
        rcode: ResponseCode::NoError,
        authentic_data: true,
        answers: vec![
            Record::from_rdata(
                name("www.example."),
                300,
                RData::CNAME(CNAME(name("web.example."))),
            ),
            Record::from_rdata(name("web.example."), 200, RData::A(A::new(192, 0, 2, 1))),
        ],
        authority: vec![],
        additional: vec![],
    };
    let soa = SOA::new(
        name("example."),
        name("host.example."),
        1,
        3600,
        600,
        86400,
        30,
    );
    let negative = Answer {
        rcode: ResponseCode::NXDomain,
        authentic_data: false,
        answers: vec![],
        authority: vec![Record::from_rdata(name("example."), 30, RData::SOA(soa))],
        additional: vec![],
    };
    let t0 = Instant::now().checked_sub(Duration::from_secs(20)).unwrap();
    let now = t0 + Duration::from_secs(20);
    for (qname, answer) in [("WwW.Example.", &positive), ("nx.EXAMPLE.", &negative)] {
        for (edns, dnssec_ok, cd, ad) in [
            (None, false, false, false),
            (None, false, true, true),
            (Some(1232), false, false, true),
            (Some(4096), true, false, false),
            (Some(600), true, true, false),
        ] {
            let mut q = query(qname, RecordType::A, edns);
            q.set_checking_disabled(cd).set_authentic_data(ad);
            if let Some(e) = q.extensions_mut().as_mut() {
                e.set_dnssec_ok(dnssec_ok);
            }
            let wire = q.to_vec().unwrap();
            let q = Message::from_vec(&wire).unwrap();
            let question = &q.queries()[0];
            let key = KeyBuf::from_name(
                question.name(),
                RecordType::A,
                question.query_class(),
                dnssec_ok,
                cd,
            )
            .unwrap()
            .to_key();
            let mut lower = Query::query(question.name().to_lowercase(), RecordType::A);
            lower.set_query_class(question.query_class());
            let stored = stored_form(&key, &lower, answer, &s).unwrap();
            f.cache.insert(&key, &stored, 30, t0);
            let mut fast = Vec::new();
            assert!(f.answer_cached(
                &wire,
                "127.0.0.1".parse().unwrap(),
                Transport::Udp,
                &s,
                now,
                &mut fast
            ));
            let hit = f.cache.get(key.as_bytes(), now, false).unwrap();
            assert_eq!(hit.age, 20);
            let parsed = stored_answer(&hit.entry).unwrap();
            let full = render(&q, &parsed, 20, &s, max_size(&q, Transport::Udp, 1232));
            let what = format!("{qname} {edns:?} do={dnssec_ok} cd={cd} ad={ad}");
            let fast_message = Message::from_vec(&fast).unwrap();
            assert_eq!(fast_message, Message::from_vec(&full).unwrap(), "{what}");
            // The owner name as the client wrote it.
            let owner = fast_message.answers().first().map(|r| r.name().clone());
            assert!(owner.is_none_or(|o| o.eq_case(question.name())), "{what}");
            // Names the full path compresses only when they match in case too (hickory
            // compares case-sensitively): then the bytes are the same.
            let mut lower = q.clone();
            let lower_name = question.name().to_lowercase();
            lower.queries_mut()[0].set_name(lower_name);
            let wire = lower.to_vec().unwrap();
            let mut fast = Vec::new();
            assert!(f.answer_cached(
                &wire,
                "127.0.0.1".parse().unwrap(),
                Transport::Udp,
                &s,
                now,
                &mut fast
            ));
            let full = render(&lower, &parsed, 20, &s, max_size(&q, Transport::Udp, 1232));
            assert_eq!(fast, full, "{what}");
        }
    }
}

#[test]
fn resolv_conf_skips_ourselves() {
    let dir = std::env::temp_dir().join(format!("dnsfwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resolv.conf");
    std::fs::write(
        &path,
        "search lan\nnameserver 127.0.0.1\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n",
    )
    .unwrap();
    let own: Vec<SocketAddr> = vec!["127.0.0.1:53".parse().unwrap()];
    let found: Vec<SocketAddr> = resolv_conf_upstreams(&path, &own)
        .iter()
        .map(|u| u.addr)
        .collect();
    assert_eq!(
        found,
        vec![
            "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
