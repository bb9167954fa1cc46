//! The answer cache: bounded in entries and bytes, TTLs counted down, negative answers kept per
//! RFC 2308, expired entries optionally served stale (RFC 8767).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::CacheConfig;
use crate::fast::Template;

/// What a cached answer is stored under: the question, and the bits that change the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// DO: the answer carries DNSSEC records.
    pub dnssec_ok: bool,
    /// CD: the upstream did not validate.
    pub checking_disabled: bool,
}

/// An upstream answer as kept: sections without the OPT record.
#[derive(Debug)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authentic_data: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
    /// Wire size, for the byte bound.
    pub size: usize,
    /// Rendered replies for the fast path: to queries without and with EDNS.
    pub templates: [OnceLock<Option<Template>>; 2],
}

impl Answer {
    /// How long this answer may be cached, with TTLs clamped in place; None if it may not be.
    pub fn prepare_for_cache(&mut self, config: &CacheConfig) -> Option<u32> {
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

/// A cache hit: the answer and how many seconds of its TTLs have passed.
pub struct Hit {
    pub answer: Arc<Answer>,
    pub age: u32,
    pub stale: bool,
}

struct Entry {
    answer: Arc<Answer>,
    stored: Instant,
    ttl: u32,
    seq: u64,
}

pub struct Cache {
    config: CacheConfig,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Arc<Key>, Entry>,
    /// Insertion order, for eviction: (key, seq of the entry it was inserted with). The key is
    /// shared with the map's.
    order: VecDeque<(Arc<Key>, u64)>,
    bytes: usize,
    seq: u64,
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.answer.size;
        }
    }
}

impl Cache {
    pub fn new(config: CacheConfig) -> Self {
        Cache {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh answer, or (when `stale_ok`) an expired one still within `max_stale`.
    pub fn get(&self, key: &Key, now: Instant, stale_ok: bool) -> Option<Hit> {
        let mut inner = self.lock();
        let entry = inner.map.get(key)?;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        if age < u64::from(entry.ttl) {
            return Some(Hit {
                answer: entry.answer.clone(),
                age: age as u32,
                stale: false,
            });
        }
        let keep = self.config.serve_stale
            && age < u64::from(entry.ttl) + u64::from(self.config.max_stale);
        if keep {
            return stale_ok.then(|| Hit {
                answer: entry.answer.clone(),
                age: 0,
                stale: true,
            });
        }
        inner.remove(key);
        None
    }

    pub fn insert(&self, key: Key, answer: Arc<Answer>, ttl: u32, now: Instant) {
        if self.config.max_entries == 0 || ttl == 0 || answer.size > self.config.max_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.remove(&key);
        inner.seq += 1;
        let seq = inner.seq;
        inner.bytes += answer.size;
        let key = Arc::new(key);
        inner.order.push_back((key.clone(), seq));
        inner.map.insert(
            key,
            Entry {
                answer,
                stored: now,
                ttl,
                seq,
            },
        );
        while inner.map.len() > self.config.max_entries || inner.bytes > self.config.max_bytes {
            let Some((old, old_seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&*old).is_some_and(|e| e.seq == old_seq) {
                inner.remove(&old);
            }
        }
        // Keys replaced in place leave stale order entries behind; drop them now and then.
        if inner.order.len() > 2 * inner.map.len() + 64 {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(k, s)| map.get(&**k).is_some_and(|e| e.seq == *s));
        }
    }

    /// Entries and bytes held.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.bytes)
    }

    /// Drops entries past all use (expired, and past the stale window).
    pub fn sweep(&self, now: Instant) {
        let keep = if self.config.serve_stale {
            self.config.max_stale
        } else {
            0
        };
        let mut inner = self.lock();
        let mut freed = 0;
        inner.map.retain(|_, e| {
            let end = e.stored + Duration::from_secs(u64::from(e.ttl) + u64::from(keep));
            let live = end > now;
            if !live {
                freed += e.answer.size;
            }
            live
        });
        inner.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};

    fn key(n: &str) -> Key {
        Key {
            name: Name::from_ascii(n).unwrap(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn answer(ttl: u32, size: usize) -> Answer {
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
            size,
            templates: Default::default(),
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
    fn ttls_are_clamped_and_count_down() {
        let cache = Cache::new(config());
        let mut a = answer(1000, 10);
        let ttl = a.prepare_for_cache(&config()).unwrap();
        assert_eq!(ttl, 100);
        assert_eq!(a.answers[0].ttl(), 100);
        let mut short = answer(1, 10);
        assert_eq!(short.prepare_for_cache(&config()), Some(5));
        let t0 = Instant::now();
        cache.insert(key("a."), Arc::new(a), ttl, t0);
        let hit = cache
            .get(&key("a."), t0 + Duration::from_secs(30), false)
            .unwrap();
        assert_eq!(hit.age, 30);
        assert!(cache
            .get(&key("a."), t0 + Duration::from_secs(100), false)
            .is_none());
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let cache = Cache::new(config());
        let t0 = Instant::now();
        for n in ["a.", "b.", "c.", "d."] {
            cache.insert(key(n), Arc::new(answer(50, 100)), 50, t0);
        }
        assert_eq!(cache.size(), (3, 300));
        assert!(cache.get(&key("a."), t0, false).is_none());
        cache.insert(key("e."), Arc::new(answer(50, 900)), 50, t0);
        assert_eq!(cache.size(), (2, 1000));
        assert!(cache.get(&key("e."), t0, false).is_some());
        // Replacing a key many times does not grow the order queue without bound.
        for _ in 0..1000 {
            cache.insert(key("e."), Arc::new(answer(50, 10)), 50, t0);
        }
        assert!(cache.lock().order.len() < 200);
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
            size: 50,
            templates: Default::default(),
        };
        assert_eq!(a.prepare_for_cache(&CacheConfig::default()), Some(30));
        assert_eq!(a.authority[0].ttl(), 30);
        let mut no_soa = answer(10, 10);
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
        cache.insert(key("a."), Arc::new(answer(10, 10)), 10, t0);
        let later = t0 + Duration::from_secs(20);
        assert!(cache.get(&key("a."), later, false).is_none());
        assert!(cache.get(&key("a."), later, true).is_some_and(|h| h.stale));
        assert!(cache
            .get(&key("a."), t0 + Duration::from_secs(100), true)
            .is_none());
    }
}
