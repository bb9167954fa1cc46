//! One query in, one answer out: checks, local data, the cache, then upstreams with failover,
//! identical questions in flight sharing one upstream query.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::HINFO;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::sync::oneshot;

use inetkit_runtime::config::KeyPath;

use crate::cache::{Answer, Cache, Entry, Hit, Key, KeyBuf};
use crate::config::{Acl, CacheConfig, DnsConfig, ForwardConfig};
use crate::fast;
use crate::local::{LocalAnswer, LocalData};
use crate::upstream::{Ask, Upstream};

/// How the query came, which bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What can change on SIGHUP (the cache stays).
#[derive(Clone)]
pub(crate) struct Settings {
    pub upstreams: Vec<Arc<Upstream>>,
    pub acl: Acl,
    pub local: LocalData,
    pub forward: ForwardConfig,
    pub cache: CacheConfig,
}

impl Settings {
    /// Builds everything from a config; `own` are the addresses we listen on, never upstreams.
    /// The config's problems were found when it was checked (`DnsConfig::validate` builds
    /// the same); only a file changed since then, or an upstream that is us, fails here.
    pub(crate) fn from_config(config: &DnsConfig, own: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut upstreams = Vec::new();
        for (i, u) in config.upstream.iter().enumerate() {
            let upstream = Upstream::new(u, KeyPath::new("upstream").index(i))?;
            anyhow::ensure!(
                !own.contains(&upstream.addr),
                "upstream {} is this forwarder itself",
                upstream.addr
            );
            upstreams.push(Arc::new(upstream));
        }
        if upstreams.is_empty() {
            upstreams = resolv_conf_upstreams(&config.forward.resolv_conf, own);
            if upstreams.is_empty() {
                tracing::warn!(
                    path = %config.forward.resolv_conf.display(),
                    "no upstream configured and none usable in resolv.conf: only local data is answered"
                );
            }
        }
        Ok(Settings {
            upstreams,
            acl: Acl::parse(&config.acl)?,
            local: LocalData::load(config)?,
            forward: config.forward.clone(),
            cache: config.cache.clone(),
        })
    }
}

/// The nameservers of a resolv.conf, minus our own listening addresses (dnsmasq does the same,
/// so a forwarder that is also the system resolver does not ask itself).
pub(crate) fn resolv_conf_upstreams(
    path: &std::path::Path,
    own: &[SocketAddr],
) -> Vec<Arc<Upstream>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // Zone indexes (fe80::1%eth0) are not kept.
        let Some(Ok(ip)) = words
            .next()
            .map(|w| w.split('%').next().unwrap_or(w).parse::<IpAddr>())
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        let ours = own.iter().any(|o| {
            o.port() == 53 && (o.ip() == ip || (o.ip().is_unspecified() && ip.is_loopback()))
        });
        if ours {
            tracing::info!(%addr, "resolv.conf names this forwarder; skipped");
            continue;
        }
        found.push(Arc::new(Upstream::udp(addr)));
    }
    found
}

#[derive(Default)]
pub(crate) struct Stats {
    pub queries: AtomicU64,
    pub cache_hits: AtomicU64,
    pub local: AtomicU64,
    pub forwarded: AtomicU64,
    pub servfail: AtomicU64,
    pub refused: AtomicU64,
    pub rate_limited: AtomicU64,
    pub malformed: AtomicU64,
    pub stale: AtomicU64,
    pub coalesced: AtomicU64,
    pub overload: AtomicU64,
}

type Outcome = Option<Arc<Answer>>;

pub(crate) struct Forwarder {
    settings: RwLock<Arc<Settings>>,
    pub cache: Cache,
    inflight: Mutex<HashMap<Key, Vec<oneshot::Sender<Outcome>>>>,
    /// Upstream questions in flight (bounded by `max_outstanding`).
    outstanding: AtomicUsize,
    pub stats: Stats,
}

/// The fast part of handling a query is done: answered, dropped, or it needs an upstream.
pub(crate) enum Step {
    /// The reply was appended to the caller's buffer.
    Reply,
    /// Nothing is sent back.
    Drop,
    Forward(Box<Pending>),
}

/// A query waiting for an upstream.
pub(crate) struct Pending {
    query: Message,
    /// The query as received, for the fast path's reply once the answer is cached.
    wire: Box<[u8]>,
    client: IpAddr,
    via: Transport,
    key: Key,
    max: usize,
}

impl Forwarder {
    pub(crate) fn new(settings: Settings, cache: CacheConfig) -> Self {
        Forwarder {
            settings: RwLock::new(Arc::new(settings)),
            cache: Cache::new(cache),
            inflight: Mutex::new(HashMap::new()),
            outstanding: AtomicUsize::new(0),
            stats: Stats::default(),
        }
    }

    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New upstreams (resolv.conf changed), everything else as it is.
    pub(crate) fn replace_upstreams(&self, upstreams: Vec<Arc<Upstream>>) {
        let mut settings = (*self.settings()).clone();
        settings.upstreams = upstreams;
        self.replace_settings(settings);
    }

    pub(crate) fn replace_settings(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    /// Everything that needs no upstream: checks, errors, local data, cache hits. A reply is
    /// appended to `out`.
    pub(crate) fn start(
        &self,
        wire: &[u8],
        client: IpAddr,
        via: Transport,
        out: &mut Vec<u8>,
    ) -> Step {
        let settings = self.settings();
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        if self.answer_cached(wire, client, via, &settings, Instant::now(), out) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Step::Reply;
        }
        self.start_full(wire, client, via, &settings, out)
    }

    /// A plain query answered from the cache without parsing it in full, the reply appended to
    /// `out`; false if it takes the full path. Counts nothing: the caller does.
    pub(crate) fn answer_cached(
        &self,
        wire: &[u8],
        client: IpAddr,
        via: Transport,
        settings: &Settings,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        if !settings.acl.allows(client) {
            return false;
        }
        let Some(plain) = fast::parse(wire) else {
            return false;
        };
        // Never cached: the full path answers these.
        if matches!(
            RecordType::from(plain.qtype),
            RecordType::ANY | RecordType::AXFR | RecordType::IXFR
        ) {
            return false;
        }
        let Some(key) = plain.key(wire) else {
            return false;
        };
        if settings.local.covers(key.name()) {
            return false;
        }
        let ours = settings.forward.edns_buffer;
        let max = match (via, plain.edns) {
            (Transport::Tcp, _) => 65535,
            (Transport::Udp, None) => 512,
            (Transport::Udp, Some((size, _))) => usize::from(size.min(ours.max(512)).max(512)),
        };
        self.cache
            .with_fresh(key.as_bytes(), now, |entry, age| {
                fast::reply(entry, wire, &plain, age, ours, max, out)
            })
            .unwrap_or(false)
    }

    /// The full path of [`Self::start`], after the fast one found nothing; counts all but the
    /// query itself.
    pub(crate) fn start_full(
        &self,
        wire: &[u8],
        client: IpAddr,
        via: Transport,
        settings: &Settings,
        out: &mut Vec<u8>,
    ) -> Step {
        let stats = &self.stats;
        // Shorter than a header, or a response (QR set): never answered, so two servers
        // cannot be made to bounce errors at each other.
        if wire.len() < 12 || wire[2] & 0x80 != 0 {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return Step::Drop;
        }
        let allowed = settings.acl.allows(client);
        let mut reply = |bytes: Option<Vec<u8>>| match bytes {
            Some(bytes) => {
                out.extend_from_slice(&bytes);
                Step::Reply
            }
            None => Step::Drop,
        };
        let query = match Message::from_vec(wire) {
            Ok(query) => query,
            Err(_) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                if !allowed {
                    return Step::Drop;
                }
                // RFC 1035 §4.1.1: FORMERR, with the ID and opcode we could read.
                let id = u16::from_be_bytes([wire[0], wire[1]]);
                let opcode = OpCode::from_u8((wire[2] >> 3) & 0x0f);
                let mut error = Message::error_msg(id, opcode, ResponseCode::FormErr);
                error.set_recursion_desired(wire[2] & 1 != 0);
                return reply(error.to_vec().ok());
            }
        };
        let max = max_size(&query, via, settings.forward.edns_buffer);
        if !allowed {
            // Never an open resolver: REFUSED (RFC 1035 §4.1.1, policy).
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return reply(error_reply(&query, ResponseCode::Refused, settings, max));
        }
        if query.op_code() != OpCode::Query {
            return reply(error_reply(&query, ResponseCode::NotImp, settings, max));
        }
        if query.queries().len() != 1 {
            return reply(error_reply(&query, ResponseCode::FormErr, settings, max));
        }
        if query.extensions().as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 §6.1.3.
            return reply(error_reply(&query, ResponseCode::BADVERS, settings, max));
        }
        let question = &query.queries()[0];
        match question.query_type() {
            RecordType::AXFR | RecordType::IXFR => {
                return reply(error_reply(&query, ResponseCode::NotImp, settings, max));
            }
            RecordType::ANY => {
                // RFC 8482 §4.2: one synthesised HINFO instead of everything.
                stats.local.fetch_add(1, Ordering::Relaxed);
                let hinfo = Record::from_rdata(
                    question.name().clone(),
                    3600,
                    RData::HINFO(HINFO::new("RFC8482".into(), String::new())),
                );
                let answer = Answer {
                    rcode: ResponseCode::NoError,
                    authentic_data: false,
                    answers: vec![hinfo],
                    authority: vec![],
                    additional: vec![],
                };
                return reply(Some(render(&query, &answer, 0, settings, max)));
            }
            _ => {}
        }
        if let Some(LocalAnswer::Records(rcode, records)) = settings
            .local
            .lookup(question.name(), question.query_type())
        {
            stats.local.fetch_add(1, Ordering::Relaxed);
            let answer = Answer {
                rcode,
                authentic_data: false,
                answers: records,
                authority: vec![],
                additional: vec![],
            };
            let mut local = render_message(&query, &answer, 0, settings);
            local.set_authoritative(true);
            return reply(Some(finish_wire(&query, local, settings, max)));
        }
        let edns = query.extensions().as_ref();
        let Some(key) = KeyBuf::from_name(
            question.name(),
            question.query_type(),
            question.query_class(),
            edns.is_some_and(|e| e.flags().dnssec_ok),
            query.checking_disabled(),
        ) else {
            return reply(error_reply(&query, ResponseCode::FormErr, settings, max));
        };
        if let Some(Hit { entry, age, .. }) = self.cache.get(key.as_bytes(), Instant::now(), false)
        {
            if let Some(answer) = stored_answer(&entry) {
                stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return reply(Some(render(&query, &answer, age, settings, max)));
            }
        }
        Step::Forward(Box::new(Pending {
            query,
            wire: wire.into(),
            client,
            via,
            key: key.to_key(),
            max,
        }))
    }

    /// Answers a query that needed an upstream.
    pub(crate) async fn finish(self: &Arc<Self>, pending: Box<Pending>) -> Vec<u8> {
        let Pending {
            query,
            wire,
            client,
            via,
            key,
            max,
        } = *pending;
        let settings = self.settings();
        let question = query.queries()[0].clone();
        if let Some(answer) = self.resolve(key.clone(), question).await {
            // Now cached (as a rule): a plain query's reply is a copy, not a new rendering.
            let mut out = Vec::new();
            if self.answer_cached(&wire, client, via, &settings, Instant::now(), &mut out) {
                return out;
            }
            return render(&query, &answer, 0, &settings, max);
        }
        let cached = self.cache.get(key.as_bytes(), Instant::now(), true);
        let parsed = cached.and_then(|hit| Some((stored_answer(&hit.entry)?, hit)));
        if let Some((answer, hit)) = parsed {
            if !hit.stale {
                return render(&query, &answer, hit.age, &settings, max);
            }
            // RFC 8767 §4: stale answers go out with a TTL of 30 seconds.
            self.stats.stale.fetch_add(1, Ordering::Relaxed);
            let mut reply = render_message(&query, &answer, 0, &settings);
            for r in reply.answers_mut().iter_mut() {
                r.set_ttl(30);
            }
            for r in reply.name_servers_mut().iter_mut() {
                r.set_ttl(30);
            }
            return finish_wire(&query, reply, &settings, max);
        }
        self.stats.servfail.fetch_add(1, Ordering::Relaxed);
        error_reply(&query, ResponseCode::ServFail, &settings, max).unwrap_or_default()
    }

    /// The upstream answer for `key`, shared by every query for it that arrives meanwhile.
    async fn resolve(self: &Arc<Self>, key: Key, question: Query) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let leader = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get_mut(&key) {
                Some(waiters) => {
                    waiters.push(tx);
                    false
                }
                None => {
                    inflight.insert(key.clone(), vec![tx]);
                    true
                }
            }
        };
        if leader {
            // Its own task: a client that goes away must not cancel the others' answer.
            let this = self.clone();
            let limit = self.settings().forward.max_outstanding;
            tokio::spawn(async move {
                let running = this.outstanding.fetch_add(1, Ordering::AcqRel);
                let outcome = if running < limit {
                    this.fetch(&key, question).await
                } else {
                    this.stats.overload.fetch_add(1, Ordering::Relaxed);
                    None
                };
                this.outstanding.fetch_sub(1, Ordering::AcqRel);
                let waiters = this
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key)
                    .unwrap_or_default();
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
            });
        } else {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        rx.await.ok().flatten()
    }

    /// Asks the upstreams, fastest (by smoothed RTT) first, moving on after a timeout or a
    /// SERVFAIL/REFUSED; caches what comes back.
    async fn fetch(&self, key: &Key, question: Query) -> Outcome {
        let settings = self.settings();
        let stored_question = {
            let mut q = Query::query(question.name().to_lowercase(), question.query_type());
            q.set_query_class(question.query_class());
            q
        };
        let mut order: Vec<&Arc<Upstream>> = settings.upstreams.iter().collect();
        order.sort_by_key(|u| u.srtt());
        for later in order.iter().skip(1) {
            later.decay();
        }
        let mut query = question;
        if settings.forward.randomize_case {
            query.set_name(randomize_case(query.name()));
        }
        let ask = Ask {
            query,
            dnssec_ok: key.dnssec_ok(),
            checking_disabled: key.checking_disabled(),
            edns_buffer: settings.forward.edns_buffer,
            exact_case: settings.forward.randomize_case,
        };
        let timeout = settings.forward.timeout.max(Duration::from_millis(1));
        for upstream in order {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            match upstream.exchange(&ask, timeout).await {
                Ok((message, _)) => {
                    let rcode = message.response_code();
                    if matches!(
                        rcode,
                        ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp
                    ) {
                        tracing::debug!(upstream = %upstream.addr, %rcode, "trying the next upstream");
                        upstream.failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    return Some(self.keep(key, &stored_question, message, &settings));
                }
                Err(err) => {
                    tracing::debug!(upstream = %upstream.addr, error = %err, "upstream failed");
                }
            }
        }
        // Every upstream failed or said SERVFAIL: the caller answers stale or SERVFAIL, and
        // nothing is cached.
        None
    }

    /// An upstream's answer to `key` (already checked against the question) as it is served:
    /// minimal unless DNSSEC records were asked for, TTLs clamped, and cached when it may be,
    /// as the reply to `stored_question` (the question in lowercase).
    pub(crate) fn keep(
        &self,
        key: &Key,
        stored_question: &Query,
        message: Message,
        settings: &Settings,
    ) -> Arc<Answer> {
        let mut answer = answer_of(message);
        if !key.dnssec_ok() && answer.rcode == ResponseCode::NoError && !answer.answers.is_empty() {
            // Minimal responses (as Unbound's default): a stub needs neither the NS records
            // nor their glue, and they cost cache memory and bytes on the wire. With DO they
            // stay: DNSSEC proofs may be among them.
            answer.authority = Vec::new();
            answer.additional = Vec::new();
        }
        let ttl = answer.prepare_for_cache(&settings.cache);
        let answer = Arc::new(answer);
        let stored =
            ttl.and_then(|ttl| Some((ttl, stored_form(key, stored_question, &answer, settings)?)));
        if let Some((ttl, wire)) = stored {
            self.cache.insert(key, &wire, ttl, Instant::now());
        }
        answer
    }

    /// One line of statistics, for STATUS= and the SIGUSR1 log.
    pub(crate) fn status(&self) -> String {
        let s = &self.stats;
        let (entries, bytes) = self.cache.size();
        let settings = self.settings();
        let rtts: Vec<String> = settings
            .upstreams
            .iter()
            .map(|u| format!("{} {:.1}ms", u.addr, u.srtt().as_secs_f64() * 1000.0))
            .collect();
        format!(
            "{} queries, {} cache hits, {} local, {} upstream queries, {} coalesced, {} SERVFAIL, {} stale, {} refused, {} rate-limited, {} malformed, {} over max_outstanding; cache {} entries {} bytes; upstream RTT: {}",
            s.queries.load(Ordering::Relaxed),
            s.cache_hits.load(Ordering::Relaxed),
            s.local.load(Ordering::Relaxed),
            s.forwarded.load(Ordering::Relaxed),
            s.coalesced.load(Ordering::Relaxed),
            s.servfail.load(Ordering::Relaxed),
            s.stale.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed),
            s.rate_limited.load(Ordering::Relaxed),
            s.malformed.load(Ordering::Relaxed),
            s.overload.load(Ordering::Relaxed),
            entries,
            bytes,
            if rtts.is_empty() { "none".into() } else { rtts.join(", ") },
        )
    }
}

/// Keeps the sections of an upstream answer (its OPT record is ours to write).
fn answer_of(mut message: Message) -> Answer {
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
fn stored_form(
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
fn stored_answer(entry: &Entry) -> Option<Answer> {
    Message::from_vec(&entry.wire()).ok().map(answer_of)
}

/// Each letter of the name in random case (draft-vixie-dnsext-dns0x20).
fn randomize_case(name: &Name) -> Name {
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
fn max_size(query: &Message, via: Transport, ours: u16) -> usize {
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

fn error_reply(
    query: &Message,
    rcode: ResponseCode,
    settings: &Settings,
    max: usize,
) -> Option<Vec<u8>> {
    let reply = reply_to(query, rcode, settings);
    Some(finish_wire(query, reply, settings, max))
}

/// The answer as a reply to `query`, TTLs lowered by `age` seconds.
fn render_message(query: &Message, answer: &Answer, age: u32, settings: &Settings) -> Message {
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

fn render(query: &Message, answer: &Answer, age: u32, settings: &Settings, max: usize) -> Vec<u8> {
    let reply = render_message(query, answer, age, settings);
    finish_wire(query, reply, settings, max)
}

/// Serialises a reply; one that does not fit `max` goes out empty with TC set (RFC 2181 §9:
/// the client retries over TCP).
fn finish_wire(query: &Message, reply: Message, settings: &Settings, max: usize) -> Vec<u8> {
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
            short.to_vec().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::TXT;

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
}
