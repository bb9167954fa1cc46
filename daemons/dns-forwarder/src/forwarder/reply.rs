//! Answers as the client gets them: sections kept from upstream, error replies, size limits,
//! and the wire form.

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, Record};

use crate::cache::{Answer, Entry, Key};

use super::{Settings, Transport};

/// Keeps the sections of an upstream answer (its OPT record is ours to write).
pub(super) fn answer_of(mut message: Message) -> Answer {
    Answer {
        rcode: message.response_code(),
        authentic_data: message.authentic_data(),
        answers: message.take_answers(),
        authority: message.take_name_servers(),
        additional: message.take_additionals(),
    }
}

/// The form an answer is cached in: the reply to its question (`question`, in lowercase)
/// without EDNS, with AD as the upstream said and TTLs as they are now.
pub(super) fn stored_form(
    key: &Key,
    question: &Query,
    answer: &Answer,
    settings: &Settings,
) -> Option<Vec<u8>> {
    let mut query = Message::new();
    query.set_checking_disabled(key.checking_disabled());
    query.add_query(question.clone());
    let mut reply = render_message(&query, answer, 0, settings);
    reply.set_authentic_data(answer.authentic_data);
    reply.to_vec().ok()
}

/// A cached answer parsed back, for the paths that render with hickory-proto.
pub(super) fn stored_answer(entry: &Entry) -> Option<Answer> {
    Message::from_vec(&entry.wire()).ok().map(answer_of)
}

/// Each letter of the name in random case (draft-vixie-dnsext-dns0x20).
pub(super) fn randomize_case(name: &Name) -> Name {
    let text: String = name
        .to_ascii()
        .chars()
        .map(|c| {
            if rand::random::<bool>() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    Name::from_ascii(&text).unwrap_or_else(|_| name.clone())
}

/// The largest answer the client takes: 512 over UDP without EDNS, else its buffer size (RFC
/// 6891 §6.2.5: never below 512), capped by ours; 65535 over TCP.
pub(super) fn max_size(query: &Message, via: Transport, ours: u16) -> usize {
    match via {
        Transport::Tcp => 65535,
        Transport::Udp => match query.extensions().as_ref() {
            Some(e) => usize::from(e.max_payload().min(ours.max(512)).max(512)),
            None => 512,
        },
    }
}

/// The reply's header, question and OPT, before any records.
fn reply_to(query: &Message, rcode: ResponseCode, settings: &Settings) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .set_response_code(rcode);
    reply.add_queries(query.queries().iter().cloned());
    if let Some(client) = query.extensions().as_ref() {
        let mut edns = Edns::new();
        edns.set_max_payload(settings.forward.edns_buffer.max(512));
        edns.set_dnssec_ok(client.flags().dnssec_ok);
        reply.set_edns(edns);
    }
    reply
}

pub(super) fn error_reply(
    query: &Message,
    rcode: ResponseCode,
    settings: &Settings,
    max: usize,
) -> Option<Vec<u8>> {
    let reply = reply_to(query, rcode, settings);
    Some(finish_wire(query, reply, settings, max))
}

/// The answer as a reply to `query`, TTLs lowered by `age` seconds.
pub(super) fn render_message(
    query: &Message,
    answer: &Answer,
    age: u32,
    settings: &Settings,
) -> Message {
    let mut reply = reply_to(query, answer.rcode, settings);
    // RFC 6840 §5.8: AD only to clients that showed they understand it.
    let wants_ad = query.authentic_data()
        || query
            .extensions()
            .as_ref()
            .is_some_and(|e| e.flags().dnssec_ok);
    reply.set_authentic_data(answer.authentic_data && wants_ad);
    let aged = |r: &Record| {
        let mut r = r.clone();
        r.set_ttl(r.ttl().saturating_sub(age));
        r
    };
    // The name as the client wrote it, in the answer's owner names where they match.
    let asked = query.queries()[0].name();
    let answers = answer.answers.iter().map(|r| {
        let mut r = aged(r);
        if r.name() == asked {
            r.set_name(asked.clone());
        }
        r
    });
    reply.insert_answers(answers.collect());
    reply.insert_name_servers(answer.authority.iter().map(aged).collect());
    reply.insert_additionals(answer.additional.iter().map(aged).collect());
    reply
}

pub(super) fn render(
    query: &Message,
    answer: &Answer,
    age: u32,
    settings: &Settings,
    max: usize,
) -> Vec<u8> {
    let reply = render_message(query, answer, age, settings);
    finish_wire(query, reply, settings, max)
}

/// Serialises a reply; one that does not fit `max` goes out empty with TC set (RFC 2181 §9:
/// the client retries over TCP).
pub(super) fn finish_wire(
    query: &Message,
    reply: Message,
    settings: &Settings,
    max: usize,
) -> Vec<u8> {
    match reply.to_vec() {
        Ok(wire) if wire.len() <= max => wire,
        result => {
            let mut short = reply_to(query, reply.response_code(), settings);
            if result.is_ok() {
                short.set_truncated(true);
            } else {
                short.set_response_code(ResponseCode::ServFail);
            }
            short.set_authentic_data(reply.authentic_data());
            let wire = short.to_vec().unwrap_or_default();
            if wire.len() <= max {
                return wire;
            }
            // Only a refused or malformed query of many questions gets here: the questions
            // alone are over the limit (fuzz target dns_query: 539 bytes over UDP without
            // EDNS), so the reply goes without them.
            short.take_queries();
            short.to_vec().unwrap_or_default()
        }
    }
}
