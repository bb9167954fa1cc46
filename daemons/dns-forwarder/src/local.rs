//! Local data: `[[record]]`s, a hosts-style file (with PTR records made for both), the
//! blocklist and the domains never forwarded, answered without asking an upstream. A local
//! CNAME is followed (RFC 1034 §4.3.2) through local data, and to an upstream when its target
//! is not local; local NODATA and NXDOMAIN answers carry an SOA (RFC 2308 §3).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use inetkit_runtime::config::{KeyPath, Problem};

use crate::cache::KeyBuf;
use crate::config::{BlockMode, DnsConfig, RecordConfig};

/// CNAMEs followed in one answer before giving up (a loop, or a chain nobody needs).
const MAX_CHAIN: usize = 8;

/// What local data says about a question.
#[derive(Debug, PartialEq)]
pub(crate) enum LocalAnswer {
    /// Authoritative answer: rcode, answer records (empty for NODATA) and authority records
    /// (the SOA of a NODATA or NXDOMAIN answer).
    Records(ResponseCode, Vec<Record>, Vec<Record>),
    /// Local CNAMEs lead to `target`, which local data does not have: the answer is `chain`
    /// followed by what an upstream says about `target`.
    Chase { chain: Vec<Record>, target: Name },
}

#[derive(Debug, Default, Clone)]
pub(crate) struct LocalData {
    records: HashMap<Name, Vec<Record>>,
    blocked: HashSet<Name>,
    /// Domains (`[[domain]]` without upstreams) whose names are only ever answered from here.
    local_zones: HashSet<Name>,
    /// The same names in lowercase wire form, for the fast path's check.
    owners_wire: HashSet<Box<[u8]>>,
    blocked_wire: HashSet<Box<[u8]>>,
    block_mode: Option<BlockMode>,
    ttl: u32,
    /// Lines of the hosts file that were skipped, as "PATH:LINE: why".
    pub warnings: Vec<String>,
}

impl LocalData {
    /// The local data of a config; its problems are the checks of `[[record]]`, `[local]` and
    /// `[[domain]]` names.
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
            data.add(name, ttl, record_data(r, at)?);
        }
        let local = |key: &str| KeyPath::new("local").key(key);
        if let Some(path) = &config.local.hosts_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                local("hosts_file").problem(format!("cannot read {}: {e}", path.display()))
            })?;
            data.add_hosts(&text, path);
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
        for (i, domain) in config.domain.iter().enumerate() {
            let name = parse_name(&domain.name)
                .map_err(|e| KeyPath::new("domain").index(i).key("name").problem(e))?;
            if domain.upstreams.is_empty() {
                let name = name.to_lowercase();
                data.blocked_wire.extend(lower_wire(&name));
                data.local_zones.insert(name);
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

    /// The lines of a hosts file; those that do not parse are skipped and noted in
    /// `warnings` with their line number (as dnsmasq does, the rest still counts).
    fn add_hosts(&mut self, text: &str, path: &Path) {
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            let warn = |why: String| format!("{}:{}: {why}", path.display(), number + 1);
            let Ok(ip) = first.parse::<IpAddr>() else {
                self.warnings.push(warn(format!(
                    "{first:?} is not an IP address; line skipped"
                )));
                continue;
            };
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            let mut names = 0;
            for word in words {
                match parse_name(word) {
                    Ok(name) => {
                        self.add(name, self.ttl, rdata.clone());
                        names += 1;
                    }
                    Err(why) => self.warnings.push(warn(format!("{why}; name skipped"))),
                }
            }
            if names == 0 {
                self.warnings.push(warn(format!("no name for {ip}")));
            }
        }
    }

    /// The local answer for `name`/`qtype`, if local data covers the name. A CNAME is
    /// followed through local data; to a name it does not cover, [`LocalAnswer::Chase`].
    pub(crate) fn lookup(&self, name: &Name, qtype: RecordType) -> Option<LocalAnswer> {
        if self.records.is_empty() && self.blocked.is_empty() && self.local_zones.is_empty() {
            return None;
        }
        let mut chain = Vec::new();
        // The owner as asked (case included), then each CNAME's target as written.
        let mut current = name.clone();
        for _ in 0..MAX_CHAIN {
            let lower = current.to_lowercase();
            let named = |r: &Record| {
                let mut r = r.clone();
                r.set_name(current.clone());
                r
            };
            if let Some(records) = self.records.get(&lower) {
                let direct: Vec<Record> = records
                    .iter()
                    .filter(|r| r.record_type() == qtype)
                    .map(named)
                    .collect();
                let cname = records
                    .iter()
                    .find(|r| r.record_type() == RecordType::CNAME);
                match (direct.is_empty(), cname.map(Record::data)) {
                    (true, Some(RData::CNAME(target))) => {
                        chain.extend(cname.map(named));
                        current = target.0.clone();
                        continue;
                    }
                    (true, _) => {
                        // NODATA: the name is here, the type is not.
                        let soa = self.soa(&lower);
                        return Some(LocalAnswer::Records(ResponseCode::NoError, chain, soa));
                    }
                    (false, _) => {
                        chain.extend(direct);
                        return Some(LocalAnswer::Records(ResponseCode::NoError, chain, vec![]));
                    }
                }
            }
            if let Some(zone) = self.blocked_zone(&lower) {
                return Some(self.blocked_answer(&current, qtype, chain, zone));
            }
            if let Some(zone) = self.local_zone(&lower) {
                let soa = self.soa_at(zone);
                return Some(LocalAnswer::Records(ResponseCode::NXDomain, chain, soa));
            }
            if chain.is_empty() {
                return None;
            }
            return Some(LocalAnswer::Chase {
                chain,
                target: current,
            });
        }
        // A loop, or longer than anyone needs: what was found, as a failure.
        Some(LocalAnswer::Records(ResponseCode::ServFail, chain, vec![]))
    }

    fn blocked_answer(
        &self,
        name: &Name,
        qtype: RecordType,
        mut chain: Vec<Record>,
        zone: &Name,
    ) -> LocalAnswer {
        if self.block_mode == Some(BlockMode::Zero) {
            let zero = match qtype {
                RecordType::A => Some(RData::A(A(Ipv4Addr::UNSPECIFIED))),
                RecordType::AAAA => Some(RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))),
                _ => None,
            };
            let Some(zero) = zero else {
                return LocalAnswer::Records(ResponseCode::NoError, chain, self.soa_at(zone));
            };
            chain.push(Record::from_rdata(name.clone(), self.ttl, zero));
            return LocalAnswer::Records(ResponseCode::NoError, chain, vec![]);
        }
        LocalAnswer::Records(ResponseCode::NXDomain, chain, self.soa_at(zone))
    }

    /// The SOA of a negative answer about the local name `lower`: owned by its parent, the
    /// "zone" local data is authoritative for.
    fn soa(&self, lower: &Name) -> Vec<Record> {
        let zone = if lower.num_labels() > 1 {
            lower.base_name()
        } else {
            lower.clone()
        };
        self.soa_at(&zone)
    }

    /// An SOA owned by `zone`, its minimum (the negative TTL, RFC 2308 §5) the local TTL.
    fn soa_at(&self, zone: &Name) -> Vec<Record> {
        let host = |text: &str| Name::from_ascii(text).unwrap_or_else(|_| Name::root());
        let soa = SOA::new(
            host("localhost."),
            host("hostmaster.localhost."),
            1,
            3600,
            600,
            86400,
            self.ttl,
        );
        vec![Record::from_rdata(zone.clone(), self.ttl, RData::SOA(soa))]
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

    /// The entry of the blocklist that blocks `lower` (the name or one of its parents).
    fn blocked_zone(&self, lower: &Name) -> Option<&Name> {
        find_zone(&self.blocked, lower)
    }

    /// The domain never forwarded that `lower` is in.
    fn local_zone(&self, lower: &Name) -> Option<&Name> {
        find_zone(&self.local_zones, lower)
    }
}

/// The name of `set` that is `lower` or its closest parent.
fn find_zone<'a>(set: &'a HashSet<Name>, lower: &Name) -> Option<&'a Name> {
    if set.is_empty() {
        return None;
    }
    let mut name = lower.clone();
    loop {
        if let Some(found) = set.get(&name) {
            return Some(found);
        }
        if name.is_root() {
            return None;
        }
        name = name.base_name();
    }
}

/// The record data of a `[[record]]`; `at` names its keys for problems.
fn record_data(r: &RecordConfig, at: impl Fn(&str) -> KeyPath) -> Result<RData, Problem> {
    let value = |e: String| at("value").problem(e);
    let words: Vec<&str> = r.value.split_whitespace().collect();
    let number = |word: &str, what: &str| {
        word.parse::<u16>()
            .map_err(|_| value(format!("{word:?} is not a {what} (0 to 65535)")))
    };
    Ok(match r.kind.to_ascii_uppercase().as_str() {
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
        // A TXT string holds at most 255 bytes (RFC 1035 §3.3.14): a longer value is split.
        "TXT" => RData::TXT(TXT::from_bytes(r.value.as_bytes().chunks(255).collect())),
        "MX" => match words.as_slice() {
            [preference, exchange] => RData::MX(MX::new(
                number(preference, "preference")?,
                parse_name(exchange).map_err(value)?,
            )),
            _ => {
                return Err(value(format!(
                    "{:?} is not \"PREFERENCE HOST\" (e.g. \"10 mail.lan\")",
                    r.value
                )))
            }
        },
        "SRV" => match words.as_slice() {
            [priority, weight, port, target] => RData::SRV(SRV::new(
                number(priority, "priority")?,
                number(weight, "weight")?,
                number(port, "port")?,
                parse_name(target).map_err(value)?,
            )),
            _ => {
                return Err(value(format!(
                    "{:?} is not \"PRIORITY WEIGHT PORT TARGET\" (e.g. \"0 5 5060 sip.lan\")",
                    r.value
                )))
            }
        },
        other => {
            return Err(at("type").problem(format!(
                "type {other:?} is not served (A, AAAA, CNAME, MX, PTR, SRV, TXT)"
            )))
        }
    })
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
        d.add_hosts(hosts, Path::new("hosts"));
        d
    }

    /// The answer records and the rcode, or None when local data does not answer.
    fn answer(d: &LocalData, n: &str, qtype: RecordType) -> Option<(ResponseCode, Vec<RData>)> {
        match d.lookup(&name(n), qtype)? {
            LocalAnswer::Records(rc, rrs, _) => {
                Some((rc, rrs.iter().map(|r| r.data().clone()).collect()))
            }
            LocalAnswer::Chase { .. } => panic!("chase"),
        }
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
        let Some(LocalAnswer::Records(rc, rrs, _)) = d.lookup(&name("printer.lan"), RecordType::A)
        else {
            panic!()
        };
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(rrs.len(), 1);
        assert_eq!(rrs[0].data(), &RData::A(A("192.0.2.7".parse().unwrap())));
        let Some(LocalAnswer::Records(_, rrs, _)) =
            d.lookup(&name("7.2.0.192.in-addr.arpa"), RecordType::PTR)
        else {
            panic!()
        };
        assert_eq!(rrs[0].data(), &RData::PTR(PTR(name("Printer.LAN"))));
        // NODATA for a type the name does not have, with the SOA of its parent.
        let Some(LocalAnswer::Records(rc, rrs, soa)) = d.lookup(&name("nas.lan"), RecordType::A)
        else {
            panic!()
        };
        assert_eq!((rc, rrs.len()), (ResponseCode::NoError, 0));
        assert_eq!(soa[0].record_type(), RecordType::SOA);
        assert_eq!(soa[0].name(), &name("lan"));
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
        let Some(LocalAnswer::Records(rc, rrs, soa)) =
            d.lookup(&name("x.ADS.example"), RecordType::A)
        else {
            panic!()
        };
        assert_eq!((rc, rrs.len()), (ResponseCode::NXDomain, 0));
        assert_eq!(soa[0].name(), &name("ads.example"));
        assert!(d.lookup(&name("example"), RecordType::A).is_none());
        assert!(covers(&d, "x.ADS.example") && covers(&d, "ads.example"));
        assert!(!covers(&d, "example") && !covers(&d, "bads.example"));
        let everything = data(&[], "", &["."]);
        assert!(covers(&everything, "www.example"));
    }

    #[test]
    fn cnames_are_followed() {
        let d = data(
            &[
                ("alias.lan", "CNAME", "Printer.lan"),
                ("printer.lan", "A", "192.0.2.7"),
                ("far.lan", "CNAME", "alias.lan"),
                ("out.lan", "CNAME", "www.example.org"),
                ("loop1.lan", "CNAME", "loop2.lan"),
                ("loop2.lan", "CNAME", "loop1.lan"),
            ],
            "",
            &[],
        );
        let Some((rc, rrs)) = answer(&d, "far.lan", RecordType::A) else {
            panic!()
        };
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(
            rrs,
            vec![
                RData::CNAME(CNAME(name("alias.lan"))),
                RData::CNAME(CNAME(name("Printer.lan"))),
                RData::A(A("192.0.2.7".parse().unwrap())),
            ]
        );
        // Asked for the CNAME itself, only that.
        let cname = answer(&d, "alias.lan", RecordType::CNAME).map(|a| a.1.len());
        assert_eq!(cname, Some(1));
        // NODATA at the end of the chain keeps the chain.
        let Some((rc, rrs)) = answer(&d, "alias.lan", RecordType::AAAA) else {
            panic!()
        };
        assert_eq!((rc, rrs.len()), (ResponseCode::NoError, 1));
        let Some(LocalAnswer::Chase { chain, target }) = d.lookup(&name("OUT.lan"), RecordType::A)
        else {
            panic!()
        };
        assert_eq!(chain[0].name().to_ascii(), "OUT.lan.");
        assert_eq!(target, name("www.example.org"));
        assert_eq!(
            answer(&d, "loop1.lan", RecordType::A).map(|a| a.0),
            Some(ResponseCode::ServFail)
        );
    }

    #[test]
    fn mx_srv_and_long_txt_records() {
        let long = "x".repeat(300);
        let d = data(
            &[
                ("lan", "MX", "10 mail.lan"),
                ("_sip._udp.lan", "SRV", "0 5 5060 sip.lan"),
                ("t.lan", "TXT", long.as_str()),
            ],
            "",
            &[],
        );
        assert_eq!(
            answer(&d, "lan", RecordType::MX).map(|a| a.1),
            Some(vec![RData::MX(MX::new(10, name("mail.lan")))])
        );
        assert_eq!(
            answer(&d, "_sip._udp.lan", RecordType::SRV).map(|a| a.1),
            Some(vec![RData::SRV(SRV::new(0, 5, 5060, name("sip.lan")))])
        );
        let Some((_, txt)) = answer(&d, "t.lan", RecordType::TXT) else {
            panic!()
        };
        let RData::TXT(txt) = &txt[0] else { panic!() };
        let lens: Vec<usize> = txt.iter().map(|s| s.len()).collect();
        assert_eq!(lens, vec![255, 45]);
    }

    #[test]
    fn hosts_lines_that_do_not_parse_are_noted_with_their_number() {
        let d = data(
            &[],
            "192.0.2.1 ok.lan\n300.1.1.1 bad.lan\n\n192.0.2.2\n192.0.2.3 good.lan bad..name\n",
            &[],
        );
        assert_eq!(d.warnings.len(), 3, "{:?}", d.warnings);
        assert!(d.warnings[0].starts_with("hosts:2: \"300.1.1.1\" is not an IP address"));
        assert!(d.warnings[1].starts_with("hosts:4: no name for 192.0.2.2"));
        assert!(d.warnings[2].starts_with("hosts:5: \"bad..name\" is not a DNS name"));
        assert!(answer(&d, "good.lan", RecordType::A).is_some());
    }
}
