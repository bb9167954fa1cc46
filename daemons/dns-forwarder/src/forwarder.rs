//! One query in, one answer out: checks, local data, the cache, then upstreams with failover,
//! identical questions in flight sharing one upstream query.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::HINFO;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::sync::oneshot;

use crate::cache::{Answer, Cache, Hit, Key, KeyBuf};
use crate::config::CacheConfig;
use crate::fast;
use crate::local::LocalAnswer;
use crate::upstream::{Ask, Upstream};

mod reply;
mod settings;
use reply::{
    answer_of, error_reply, finish_wire, max_size, randomize_case, render, render_message,
    stored_answer, stored_form,
};
pub(crate) use settings::{resolv_conf_upstreams, Settings};

/// How the query came, which bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
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

/// The least time between two "every upstream failed" warnings.
const ALL_FAILED_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Forwarder {
    settings: RwLock<Arc<Settings>>,
    pub cache: Cache,
    inflight: Mutex<HashMap<Key, Vec<oneshot::Sender<Outcome>>>>,
    /// When "every upstream failed" was last logged, and how many times it was not since.
    all_failed_log: Mutex<(Option<Instant>, u64)>,
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
    /// What the upstream is asked: the query's question, or the target of local CNAMEs.
    asked: Query,
    /// The local CNAMEs that led to `asked`, answered before what the upstream says.
    chain: Vec<Record>,
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
            all_failed_log: Mutex::new((None, 0)),
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
        let mut asked = question.clone();
        let mut chain = Vec::new();
        match settings
            .local
            .lookup(question.name(), question.query_type())
        {
            Some(LocalAnswer::Records(rcode, answers, authority)) => {
                stats.local.fetch_add(1, Ordering::Relaxed);
                let answer = Answer {
                    rcode,
                    authentic_data: false,
                    answers,
                    authority,
                    additional: vec![],
                };
                let mut local = render_message(&query, &answer, 0, settings);
                local.set_authoritative(true);
                return reply(Some(finish_wire(&query, local, settings, max)));
            }
            Some(LocalAnswer::Chase {
                chain: local,
                target,
            }) => {
                stats.local.fetch_add(1, Ordering::Relaxed);
                asked.set_name(target);
                chain = local;
            }
            None => {}
        }
        let edns = query.extensions().as_ref();
        let Some(key) = KeyBuf::from_name(
            asked.name(),
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
                let answer = chained(&chain, answer);
                return reply(Some(render(&query, &answer, age, settings, max)));
            }
        }
        Step::Forward(Box::new(Pending {
            query,
            asked,
            chain,
            wire: wire.into(),
            client,
            via,
            key: key.to_key(),
            max,
        }))
    }

    /// REFUSED for a query that needed an upstream, while the daemon is over its memory soft
    /// limit: as dnsmasq answers when its table of queries in flight is full. Unlike SERVFAIL
    /// (RFC 2308 §7.1) no resolver caches it, and a stub resolver asks its next server at once
    /// instead of waiting out a timeout, as it would after a dropped query.
    pub(crate) fn refuse_busy(
        &self,
        pending: &Pending,
        settings: &Settings,
        out: &mut Vec<u8>,
    ) -> bool {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        match error_reply(&pending.query, ResponseCode::Refused, settings, pending.max) {
            Some(reply) => {
                out.extend_from_slice(&reply);
                true
            }
            None => false,
        }
    }

    /// Answers a query that needed an upstream.
    pub(crate) async fn finish(self: &Arc<Self>, pending: Box<Pending>) -> Vec<u8> {
        let Pending {
            query,
            asked,
            chain,
            wire,
            client,
            via,
            key,
            max,
        } = *pending;
        let settings = self.settings();
        if let Some(answer) = self.resolve(key.clone(), asked).await {
            // Now cached (as a rule): a plain query's reply is a copy, not a new rendering.
            let mut out = Vec::new();
            if chain.is_empty()
                && self.answer_cached(&wire, client, via, &settings, Instant::now(), &mut out)
            {
                return out;
            }
            let answer = chained(&chain, (*answer).clone());
            return render(&query, &answer, 0, &settings, max);
        }
        let cached = self.cache.get(key.as_bytes(), Instant::now(), true);
        let parsed =
            cached.and_then(|hit| Some((chained(&chain, stored_answer(&hit.entry)?), hit)));
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
        let mut order: Vec<&Arc<Upstream>> =
            settings.upstreams_for(question.name()).iter().collect();
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
        let mut failures = Vec::with_capacity(order.len());
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
                        failures.push(format!("{} {rcode}", upstream.addr));
                        continue;
                    }
                    return Some(self.keep(key, &stored_question, message, &settings));
                }
                Err(err) => {
                    tracing::debug!(upstream = %upstream.addr, error = %err, "upstream failed");
                    failures.push(format!("{} {err}", upstream.addr));
                }
            }
        }
        // Every upstream failed or said SERVFAIL: the caller answers stale or SERVFAIL, and
        // nothing is cached.
        self.warn_all_failed(&ask.query, &failures);
        None
    }

    /// Says that no upstream answered, at most once a minute (a dead link must not flood
    /// the journal), with how many such questions went unsaid since.
    fn warn_all_failed(&self, query: &Query, failures: &[String]) {
        let now = Instant::now();
        let mut log = self
            .all_failed_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let due = log
            .0
            .is_none_or(|last| now.duration_since(last) >= ALL_FAILED_EVERY);
        if !due {
            log.1 += 1;
            return;
        }
        let unsaid = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        let tried = if failures.is_empty() {
            "no upstream configured".to_string()
        } else {
            failures.join("; ")
        };
        tracing::warn!(
            question = %query.name(),
            qtype = %query.query_type(),
            tried = %tried,
            since_last_warning = unsaid,
            "every upstream failed: answered SERVFAIL (or stale)"
        );
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

/// An upstream's answer after the local CNAMEs that led to its question.
fn chained(chain: &[Record], mut answer: Answer) -> Answer {
    if !chain.is_empty() {
        answer.answers.splice(0..0, chain.iter().cloned());
    }
    answer
}

#[cfg(test)]
mod tests;
