//! Local data: `[[record]]`s, a hosts-style file (with PTR records made for both) and the
//! blocklist, answered without asking an upstream.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use inetkit_runtime::config::{KeyPath, Problem};

use crate::cache::KeyBuf;
use crate::config::{BlockMode, DnsConfig};

/// What local data says about a question.
#[derive(Debug, PartialEq)]
pub(crate) enum LocalAnswer {
    /// Authoritative answer: rcode and records (empty for NODATA).
    Records(ResponseCode, Vec<Record>),
}

#[derive(Debug, Default, Clone)]
pub(crate) struct LocalData {
    records: HashMap<Name, Vec<Record>>,
    blocked: HashSet<Name>,
    /// The same names in lowercase wire form, for the fast path's check.
    owners_wire: HashSet<Box<[u8]>>,
    blocked_wire: HashSet<Box<[u8]>>,
    block_mode: Option<BlockMode>,
    ttl: u32,
}

impl LocalData {
    /// The local data of a config; its problems are the checks of `[[record]]` and `[local]`.
    pub(crate) fn load(config: &DnsConfig) -> Result<Self, Problem> {
        let mut data = LocalData {
            ttl: config.local.ttl,
            block_mode: Some(config.local.block_mode),
            ..LocalData::default()
        };
        for (i, r) in config.record.iter().enumerate() {
            let at = |key: &str| KeyPath::new("record").index(i).key(key);
            let name = parse_name(&r.name).map_err(|e| at("name").problem(e))?;
            let ttl = r.ttl.unwrap_or(config.local.ttl);
            let value = |e: String| at("value").problem(e);
            let rdata = match r.kind.to_ascii_uppercase().as_str() {
                "A" => RData::A(A(r
                    .value
                    .parse::<Ipv4Addr>()
                    .map_err(|_| value(format!("{:?} is not an IPv4 address", r.value)))?)),
                "AAAA" => {
                    RData::AAAA(AAAA(r.value.parse::<Ipv6Addr>().map_err(|_| {
                        value(format!("{:?} is not an IPv6 address", r.value))
                    })?))
                }
                "CNAME" => RData::CNAME(CNAME(parse_name(&r.value).map_err(value)?)),
                "PTR" => RData::PTR(PTR(parse_name(&r.value).map_err(value)?)),
                "TXT" => RData::TXT(TXT::new(vec![r.value.clone()])),
                other => {
                    return Err(at("type").problem(format!(
                        "type {other:?} is not served (A, AAAA, CNAME, PTR, TXT)"
                    )))
                }
            };
            data.add(name, ttl, rdata);
        }
        let local = |key: &str| KeyPath::new("local").key(key);
        if let Some(path) = &config.local.hosts_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                local("hosts_file").problem(format!("cannot read {}: {e}", path.display()))
            })?;
            data.add_hosts(&text);
        }
        for (i, name) in config.local.blocklist.iter().enumerate() {
            let name = parse_name(name).map_err(|e| local("blocklist").index(i).problem(e))?;
            data.block(name);
        }
        if let Some(path) = &config.local.blocklist_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                local("blocklist_file").problem(format!("cannot read {}: {e}", path.display()))
            })?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                // Plain names, or hosts-file lines ("0.0.0.0 ads.example").
                for word in line.split_whitespace() {
                    if word.parse::<IpAddr>().is_err() {
                        if let Ok(name) = parse_name(word) {
                            data.block(name);
                        }
                    }
                }
            }
        }
        Ok(data)
    }

    fn block(&mut self, name: Name) {
        let name = name.to_lowercase();
        self.blocked_wire.extend(lower_wire(&name));
        self.blocked.insert(name);
    }

    /// Adds a record and, for an address, the PTR record pointing back at its name.
    fn add(&mut self, name: Name, ttl: u32, rdata: RData) {
        let reverse = match &rdata {
            RData::A(a) => Some(Name::from(IpAddr::V4(a.0))),
            RData::AAAA(a) => Some(Name::from(IpAddr::V6(a.0))),
            _ => None,
        };
        if let Some(reverse) = reverse {
            let ptr = Record::from_rdata(reverse.clone(), ttl, RData::PTR(PTR(name.clone())));
            self.owners_wire.extend(lower_wire(&reverse));
            let list = self.records.entry(reverse.to_lowercase()).or_default();
            // One PTR per address: the first name given for it.
            if !list.iter().any(|r| r.record_type() == RecordType::PTR) {
                list.push(ptr);
            }
        }
        let record = Record::from_rdata(name.clone(), ttl, rdata);
        self.owners_wire.extend(lower_wire(&name));
        let list = self.records.entry(name.to_lowercase()).or_default();
        if !list.contains(&record) {
            list.push(record);
        }
    }

    fn add_hosts(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            for word in words {
                let Ok(name) = parse_name(word) else { continue };
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                self.add(name, self.ttl, rdata);
            }
        }
    }

    /// The local answer for `name`/`qtype`, if local data covers the name.
    pub(crate) fn lookup(&self, name: &Name, qtype: RecordType) -> Option<LocalAnswer> {
        if self.records.is_empty() && self.blocked.is_empty() {
            return None;
        }
        let lower = name.to_lowercase();
        if let Some(records) = self.records.get(&lower) {
            let answer: Vec<Record> = records
                .iter()
                .filter(|r| r.record_type() == qtype || r.record_type() == RecordType::CNAME)
                .map(|r| {
                    // Answer with the name as asked (case included).
                    let mut r = r.clone();
                    r.set_name(name.clone());
                    r
                })
                .collect();
            return Some(LocalAnswer::Records(ResponseCode::NoError, answer));
        }
        if self.is_blocked(&lower) {
            let zero = match qtype {
                RecordType::A => Some(RData::A(A(Ipv4Addr::UNSPECIFIED))),
                RecordType::AAAA => Some(RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))),
                _ => None,
            };
            return Some(match self.block_mode {
                Some(BlockMode::Zero) => LocalAnswer::Records(
                    ResponseCode::NoError,
                    zero.map(|rd| Record::from_rdata(name.clone(), self.ttl, rd))
                        .into_iter()
                        .collect(),
                ),
                _ => LocalAnswer::Records(ResponseCode::NXDomain, Vec::new()),
            });
        }
        None
    }

    /// Whether local data answers for a name (lowercase wire form, uncompressed): [`Self::lookup`]
    /// is Some. For the fast path, without parsing the name.
    pub(crate) fn covers(&self, lower: &[u8]) -> bool {
        if self.owners_wire.contains(lower) {
            return true;
        }
        if self.blocked_wire.is_empty() {
            return false;
        }
        // The name, then each parent down to the root.
        let mut at = 0;
        while let Some(suffix) = lower.get(at..) {
            if suffix.is_empty() {
                break;
            }
            if self.blocked_wire.contains(suffix) {
                return true;
            }
            at += 1 + usize::from(suffix[0]);
        }
        false
    }

    /// Whether the name or one of its parents is on the blocklist.
    fn is_blocked(&self, lower: &Name) -> bool {
        if self.blocked.is_empty() {
            return false;
        }
        let mut name = lower.clone();
        loop {
            if self.blocked.contains(&name) {
                return true;
            }
            if name.is_root() {
                return false;
            }
            name = name.base_name();
        }
    }
}

fn lower_wire(name: &Name) -> Option<Box<[u8]>> {
    let key = KeyBuf::from_name(name, RecordType::A, DNSClass::IN, false, false)?;
    Some(key.name().into())
}

fn parse_name(text: &str) -> Result<Name, String> {
    let mut name =
        Name::from_ascii(text).map_err(|e| format!("{text:?} is not a DNS name: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RecordConfig;

    fn data(records: &[(&str, &str, &str)], hosts: &str, blocked: &[&str]) -> LocalData {
        let mut config = DnsConfig {
            record: records
                .iter()
                .map(|(n, t, v)| RecordConfig {
                    name: n.to_string(),
                    kind: t.to_string(),
                    value: v.to_string(),
                    ttl: None,
                })
                .collect(),
            ..DnsConfig::default()
        };
        config.local.blocklist = blocked.iter().map(|s| s.to_string()).collect();
        let mut d = LocalData::load(&config).unwrap();
        d.add_hosts(hosts);
        d
    }

    fn name(s: &str) -> Name {
        parse_name(s).unwrap()
    }

    #[test]
    fn records_and_ptrs() {
        let d = data(
            &[
                ("Printer.LAN", "A", "192.0.2.7"),
                ("printer.lan", "TXT", "hi"),
            ],
            "2001:db8::1 nas.lan nas\n# comment\n",
            &[],
        );
        let Some(LocalAnswer::Records(rc, rrs)) = d.lookup(&name("printer.lan"), RecordType::A)
        else {
            panic!()
        };
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(rrs.len(), 1);
        assert_eq!(rrs[0].data(), &RData::A(A("192.0.2.7".parse().unwrap())));
        let Some(LocalAnswer::Records(_, rrs)) =
            d.lookup(&name("7.2.0.192.in-addr.arpa"), RecordType::PTR)
        else {
            panic!()
        };
        assert_eq!(rrs[0].data(), &RData::PTR(PTR(name("Printer.LAN"))));
        // NODATA for a type the name does not have.
        assert_eq!(
            d.lookup(&name("nas.lan"), RecordType::A),
            Some(LocalAnswer::Records(ResponseCode::NoError, vec![]))
        );
        assert!(d.lookup(&name("nas"), RecordType::AAAA).is_some());
        assert!(d.lookup(&name("other.lan"), RecordType::A).is_none());
        // The fast path's check agrees, whatever the case.
        for (n, local) in [
            ("PRINTER.lan", true),
            ("7.2.0.192.in-addr.arpa", true),
            ("nas", true),
            ("other.lan", false),
            ("lan", false),
        ] {
            assert_eq!(covers(&d, n), local, "{n}");
        }
    }

    fn covers(d: &LocalData, n: &str) -> bool {
        d.covers(&lower_wire(&name(n)).unwrap())
    }

    #[test]
    fn blocklist_covers_subdomains() {
        let d = data(&[], "", &["ads.example"]);
        assert_eq!(
            d.lookup(&name("x.ADS.example"), RecordType::A),
            Some(LocalAnswer::Records(ResponseCode::NXDomain, vec![]))
        );
        assert!(d.lookup(&name("example"), RecordType::A).is_none());
        assert!(covers(&d, "x.ADS.example") && covers(&d, "ads.example"));
        assert!(!covers(&d, "example") && !covers(&d, "bads.example"));
        let everything = data(&[], "", &["."]);
        assert!(covers(&everything, "www.example"));
    }
}
