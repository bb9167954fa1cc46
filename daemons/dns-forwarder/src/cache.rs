//! The answer cache: bounded in entries and bytes, TTLs counted down, negative answers kept per
//! RFC 2308, expired entries optionally served stale (RFC 8767).
//!
//! An answer is kept compactly, as the wire form of a reply to its question (hickory-proto
//! rendered it): the fast path copies it and patches ID, flags, case and TTLs; the rarer paths
//! parse it back with hickory-proto. Keys are the question in lowercase wire form.

use std::borrow::Borrow;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::CacheConfig;

/// Longest key: a name (255 bytes in wire form), type, class and the flag byte.
pub(crate) const KEY_MAX: usize = 255 + 4 + 1;
const FLAG_DO: u8 = 1;
const FLAG_CD: u8 = 2;

/// A key being built, on the stack: the question name in lowercase wire form (uncompressed),
/// type, class, then a byte of the flags that change the answer (DO: DNSSEC records; CD: the
/// upstream did not validate).
pub(crate) struct KeyBuf {
    bytes: [u8; KEY_MAX],
    len: usize,
    name_len: usize,
}

impl KeyBuf {
    /// From the labels of a name in wire form (ending with the root label, no pointers).
    pub(crate) fn from_wire_name(
        name: &[u8],
        qtype: u16,
        qclass: u16,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Option<Self> {
        if name.len() > 255 {
            return None;
        }
        let mut key = KeyBuf {
            bytes: [0; KEY_MAX],
            len: 0,
            name_len: name.len(),
        };
        for (to, from) in key.bytes.iter_mut().zip(name) {
            *to = from.to_ascii_lowercase();
        }
        key.finish(qtype, qclass, dnssec_ok, checking_disabled);
        Some(key)
    }

    /// From a parsed name.
    pub(crate) fn from_name(
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Option<Self> {
        let mut key = KeyBuf {
            bytes: [0; KEY_MAX],
            len: 0,
            name_len: 0,
        };
        let mut at = 0;
        for label in name.iter() {
            let end = at + 1 + label.len();
            if label.len() > 63 || end > 254 {
                return None;
            }
            key.bytes[at] = label.len() as u8;
            for (to, from) in key.bytes[at + 1..end].iter_mut().zip(label) {
                *to = from.to_ascii_lowercase();
            }
            at = end;
        }
        key.name_len = at + 1;
        key.finish(qtype.into(), qclass.into(), dnssec_ok, checking_disabled);
        Some(key)
    }

    fn finish(&mut self, qtype: u16, qclass: u16, dnssec_ok: bool, checking_disabled: bool) {
        let at = self.name_len;
        self.bytes[at..at + 2].copy_from_slice(&qtype.to_be_bytes());
        self.bytes[at + 2..at + 4].copy_from_slice(&qclass.to_be_bytes());
        self.bytes[at + 4] =
            if dnssec_ok { FLAG_DO } else { 0 } | if checking_disabled { FLAG_CD } else { 0 };
        self.len = at + 5;
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The name in lowercase wire form.
    pub(crate) fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }

    pub(crate) fn to_key(&self) -> Key {
        Key(self.as_bytes().into())
    }
}

/// What a cached answer is stored under (a [`KeyBuf`] kept; shared, as a query in flight
/// holds it in several places).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(Arc<[u8]>);

impl Key {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn dnssec_ok(&self) -> bool {
        self.0.last().is_some_and(|f| f & FLAG_DO != 0)
    }

    pub(crate) fn checking_disabled(&self) -> bool {
        self.0.last().is_some_and(|f| f & FLAG_CD != 0)
    }
}

/// An upstream answer as parsed: sections without the OPT record.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub rcode: ResponseCode,
    pub authentic_data: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Answer {
    /// How long this answer may be cached, with TTLs clamped in place; None if it may not be.
    pub(crate) fn prepare_for_cache(&mut self, config: &CacheConfig) -> Option<u32> {
        let clamp = |ttl: u32| ttl.clamp(config.min_ttl, config.max_ttl.max(config.min_ttl));
        match self.rcode {
            ResponseCode::NoError if !self.answers.is_empty() => {
                let mut ttl = u32::MAX;
                for r in self
                    .answers
                    .iter_mut()
                    .chain(self.authority.iter_mut())
                    .chain(self.additional.iter_mut())
                {
                    let t = clamp(r.ttl());
                    r.set_ttl(t);
                    ttl = ttl.min(t);
                }
                Some(ttl)
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                // RFC 2308 §5: the negative TTL is the SOA's minimum, capped by its own TTL.
                let soa = self
                    .authority
                    .iter_mut()
                    .find(|r| r.record_type() == RecordType::SOA)?;
                let RData::SOA(data) = soa.data() else {
                    return None;
                };
                let ttl = soa
                    .ttl()
                    .min(data.minimum())
                    .min(config.max_negative_ttl)
                    .max(config.min_ttl.min(config.max_negative_ttl));
                soa.set_ttl(ttl);
                for r in self.authority.iter_mut() {
                    r.set_ttl(r.ttl().min(ttl));
                }
                Some(ttl)
            }
            _ => None,
        }
    }
}

/// A cache hit: the entry and how many seconds of its TTLs have passed.
pub(crate) struct Hit {
    pub entry: Arc<Entry>,
    pub age: u32,
    pub stale: bool,
}

/// One cached answer: the key, then the stored reply's 12-byte header, then the reply after its
/// question (whose bytes are the key's, less the flag byte), in one allocation.
#[derive(Debug)]
pub(crate) struct Entry {
    data: Box<[u8]>,
    key_len: u16,
    stored: Instant,
    ttl: u32,
}

impl Entry {
    /// From a reply rendered to the key's question; None if its question is not the key's.
    fn new(key: &[u8], reply: &[u8], stored: Instant, ttl: u32) -> Option<Self> {
        let question = key.len().checked_sub(1)?;
        if reply.get(12..12 + question)? != &key[..question] {
            return None;
        }
        let mut data = Vec::with_capacity(key.len() + reply.len() - question);
        data.extend_from_slice(key);
        data.extend_from_slice(&reply[..12]);
        data.extend_from_slice(&reply[12 + question..]);
        Some(Entry {
            data: data.into_boxed_slice(),
            key_len: u16::try_from(key.len()).ok()?,
            stored,
            ttl,
        })
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.data[..usize::from(self.key_len)]
    }

    /// The reply's header (TTLs as stored, ID 0).
    pub(crate) fn header(&self) -> &[u8] {
        let k = usize::from(self.key_len);
        &self.data[k..k + 12]
    }

    /// The question's length in the reply.
    pub(crate) fn question_len(&self) -> usize {
        usize::from(self.key_len) - 1
    }

    /// The reply after its question: the records.
    pub(crate) fn records(&self) -> &[u8] {
        &self.data[usize::from(self.key_len) + 12..]
    }

    /// The stored reply as one message, for hickory-proto on the slow paths.
    pub(crate) fn wire(&self) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.data.len());
        wire.extend_from_slice(self.header());
        wire.extend_from_slice(&self.key()[..self.question_len()]);
        wire.extend_from_slice(self.records());
        wire
    }

    /// Bytes held, for the byte bound.
    fn size(&self) -> usize {
        self.data.len()
    }
}

/// An entry in the map, found by its key bytes.
struct Slot(Arc<Entry>);

impl Borrow<[u8]> for Slot {
    fn borrow(&self) -> &[u8] {
        self.0.key()
    }
}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As [u8] hashes, so lookups by key bytes find it.
        self.0.key().hash(state);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}

impl Eq for Slot {}

pub(crate) struct Cache {
    config: CacheConfig,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashSet<Slot>,
    /// Insertion order, for eviction. An entry replaced since is passed over.
    order: VecDeque<Arc<Entry>>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &[u8]) {
        if let Some(slot) = self.map.take(key) {
            self.bytes -= slot.0.size();
        }
    }
}

impl Cache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        Cache {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh entry given to `f` with its age, under the lock (the fast path copies from it).
    pub(crate) fn with_fresh<R>(
        &self,
        key: &[u8],
        now: Instant,
        f: impl FnOnce(&Entry, u32) -> R,
    ) -> Option<R> {
        let inner = self.lock();
        let entry = &inner.map.get(key)?.0;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        (age < u64::from(entry.ttl)).then(|| f(entry, age as u32))
    }

    /// A fresh answer, or (when `stale_ok`) an expired one still within `max_stale`.
    pub(crate) fn get(&self, key: &[u8], now: Instant, stale_ok: bool) -> Option<Hit> {
        let mut inner = self.lock();
        let entry = &inner.map.get(key)?.0;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        if age < u64::from(entry.ttl) {
            return Some(Hit {
                entry: entry.clone(),
                age: age as u32,
                stale: false,
            });
        }
        let keep = self.config.serve_stale
            && age < u64::from(entry.ttl) + u64::from(self.config.max_stale);
        if keep {
            return stale_ok.then(|| Hit {
                entry: entry.clone(),
                age: 0,
                stale: true,
            });
        }
        inner.remove(key);
        None
    }

    /// Keeps `reply` (rendered to the key's question, TTLs as they are now) for `ttl` seconds.
    pub(crate) fn insert(&self, key: &Key, reply: &[u8], ttl: u32, now: Instant) {
        if self.config.max_entries == 0 || ttl == 0 {
            return;
        }
        let Some(entry) = Entry::new(key.as_bytes(), reply, now, ttl) else {
            return;
        };
        if entry.size() > self.config.max_bytes {
            return;
        }
        let entry = Arc::new(entry);
        let mut inner = self.lock();
        inner.remove(key.as_bytes());
        inner.bytes += entry.size();
        inner.order.push_back(entry.clone());
        inner.map.insert(Slot(entry));
        while inner.map.len() > self.config.max_entries || inner.bytes > self.config.max_bytes {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if inner
                .map
                .get(old.key())
                .is_some_and(|s| Arc::ptr_eq(&s.0, &old))
            {
                inner.remove(old.key());
            }
        }
        // Keys replaced in place leave stale order entries behind; drop them now and then.
        if inner.order.len() > 2 * inner.map.len() + 64 {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|e| map.get(e.key()).is_some_and(|s| Arc::ptr_eq(&s.0, e)));
        }
    }

    /// Entries and bytes held.
    pub(crate) fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.bytes)
    }

    /// Drops entries past all use (expired, and past the stale window).
    pub(crate) fn sweep(&self, now: Instant) {
        let keep = if self.config.serve_stale {
            self.config.max_stale
        } else {
            0
        };
        let mut inner = self.lock();
        let mut freed = 0;
        inner.map.retain(|slot| {
            let e = &slot.0;
            let end = e.stored + Duration::from_secs(u64::from(e.ttl) + u64::from(keep));
            let live = end > now;
            if !live {
                freed += e.size();
            }
            live
        });
        inner.bytes -= freed;
        let Inner { map, order, .. } = &mut *inner;
        order.retain(|e| map.get(e.key()).is_some_and(|s| Arc::ptr_eq(&s.0, e)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::rdata::{A, SOA};

    fn key(n: &str) -> Key {
        KeyBuf::from_name(
            &Name::from_ascii(n).unwrap(),
            RecordType::A,
            DNSClass::IN,
            false,
            false,
        )
        .unwrap()
        .to_key()
    }

    /// A reply to `n`'s question with `count` A records.
    fn reply(n: &str, count: u8) -> Vec<u8> {
        let name = Name::from_ascii(n).unwrap();
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.add_query(Query::query(name.clone(), RecordType::A));
        for i in 0..count {
            m.add_answer(Record::from_rdata(
                name.clone(),
                50,
                RData::A(A::new(192, 0, 2, i)),
            ));
        }
        m.to_vec().unwrap()
    }

    fn answer(ttl: u32) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            authentic_data: false,
            answers: vec![Record::from_rdata(
                Name::from_ascii("a.example.").unwrap(),
                ttl,
                RData::A(A::new(192, 0, 2, 1)),
            )],
            authority: vec![],
            additional: vec![],
        }
    }

    fn config() -> CacheConfig {
        CacheConfig {
            max_entries: 3,
            max_bytes: 1000,
            min_ttl: 5,
            max_ttl: 100,
            ..CacheConfig::default()
        }
    }

    #[test]
    fn keys_ignore_case_and_keep_flags() {
        let name = Name::from_ascii("WwW.Example.").unwrap();
        let k = KeyBuf::from_name(&name, RecordType::AAAA, DNSClass::IN, true, false).unwrap();
        assert_eq!(k.name(), b"\x03www\x07example\x00");
        assert_eq!(&k.as_bytes()[k.name().len()..], &[0, 28, 0, 1, FLAG_DO]);
        let wire = KeyBuf::from_wire_name(b"\x03WWW\x07exAMPLE\x00", 28, 1, true, false).unwrap();
        assert_eq!(wire.as_bytes(), k.as_bytes());
        assert!(k.to_key().dnssec_ok() && !k.to_key().checking_disabled());
        let root = KeyBuf::from_name(&Name::root(), RecordType::NS, DNSClass::IN, false, true)
            .unwrap()
            .to_key();
        assert_eq!(root.as_bytes(), &[0, 0, 2, 0, 1, FLAG_CD]);
    }

    #[test]
    fn entries_give_back_the_reply() {
        let cache = Cache::new(config());
        let t0 = Instant::now();
        let wire = reply("a.example.", 1);
        cache.insert(&key("A.example."), &wire, 50, t0);
        let hit = cache.get(key("a.example.").as_bytes(), t0, false).unwrap();
        assert_eq!(hit.entry.wire(), wire);
        // A reply to another question is not kept under this key.
        cache.insert(&key("b.example."), &wire, 50, t0);
        assert!(cache.get(key("b.example.").as_bytes(), t0, false).is_none());
    }

    #[test]
    fn ttls_are_clamped_and_count_down() {
        let cache = Cache::new(config());
        let mut a = answer(1000);
        let ttl = a.prepare_for_cache(&config()).unwrap();
        assert_eq!(ttl, 100);
        assert_eq!(a.answers[0].ttl(), 100);
        let mut short = answer(1);
        assert_eq!(short.prepare_for_cache(&config()), Some(5));
        let t0 = Instant::now();
        cache.insert(&key("a."), &reply("a.", 1), ttl, t0);
        let k = key("a.");
        let hit = cache
            .get(k.as_bytes(), t0 + Duration::from_secs(30), false)
            .unwrap();
        assert_eq!(hit.age, 30);
        let later = t0 + Duration::from_secs(40);
        assert_eq!(
            cache.with_fresh(k.as_bytes(), later, |_, age| age),
            Some(40)
        );
        let expired = t0 + Duration::from_secs(100);
        assert!(cache
            .with_fresh(k.as_bytes(), expired, |_, age| age)
            .is_none());
        assert!(cache.get(k.as_bytes(), expired, false).is_none());
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let cache = Cache::new(config());
        let t0 = Instant::now();
        for n in ["a.", "b.", "c.", "d."] {
            cache.insert(&key(n), &reply(n, 1), 50, t0);
        }
        let one = reply("a.", 1).len() + 1;
        assert_eq!(cache.size(), (3, 3 * one));
        assert!(cache.get(key("a.").as_bytes(), t0, false).is_none());
        // 70 records: more than 1000 bytes, never kept.
        let big = reply("e.", 70);
        assert!(big.len() > 1000);
        cache.insert(&key("e."), &big, 50, t0);
        assert_eq!(cache.size(), (3, 3 * one));
        // 58 records fit, once the count bound has evicted b and the byte bound c.
        let bigger = reply("e.", 58);
        cache.insert(&key("e."), &bigger, 50, t0);
        assert_eq!(cache.size(), (2, bigger.len() + 1 + one));
        assert!(cache.get(key("c.").as_bytes(), t0, false).is_none());
        assert!(cache.get(key("e.").as_bytes(), t0, false).is_some());
        // Replacing a key many times does not grow the order queue without bound.
        for _ in 0..1000 {
            cache.insert(&key("e."), &reply("e.", 1), 50, t0);
        }
        assert!(cache.lock().order.len() < 200);
        assert_eq!(cache.size(), (2, 2 * one));
    }

    #[test]
    fn negative_ttl_from_soa() {
        let soa = SOA::new(
            Name::from_ascii("example.").unwrap(),
            Name::from_ascii("host.example.").unwrap(),
            1,
            3600,
            600,
            86400,
            30,
        );
        let mut a = Answer {
            rcode: ResponseCode::NXDomain,
            authentic_data: false,
            answers: vec![],
            authority: vec![Record::from_rdata(
                Name::from_ascii("example.").unwrap(),
                3600,
                RData::SOA(soa),
            )],
            additional: vec![],
        };
        assert_eq!(a.prepare_for_cache(&CacheConfig::default()), Some(30));
        assert_eq!(a.authority[0].ttl(), 30);
        let mut no_soa = answer(10);
        no_soa.answers.clear();
        assert_eq!(no_soa.prepare_for_cache(&CacheConfig::default()), None);
    }

    #[test]
    fn stale_entries_only_when_asked() {
        let cfg = CacheConfig {
            serve_stale: true,
            max_stale: 60,
            ..config()
        };
        let cache = Cache::new(cfg);
        let t0 = Instant::now();
        cache.insert(&key("a."), &reply("a.", 1), 10, t0);
        let k = key("a.");
        let later = t0 + Duration::from_secs(20);
        assert!(cache.get(k.as_bytes(), later, false).is_none());
        assert!(cache
            .get(k.as_bytes(), later, true)
            .is_some_and(|h| h.stale));
        assert!(cache
            .get(k.as_bytes(), t0 + Duration::from_secs(100), true)
            .is_none());
    }
}
