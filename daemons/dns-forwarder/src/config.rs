//! `/etc/inetkit/dns-forwarder.toml`: besides the shared sections, upstreams, cache, ACL,
//! local data and the rate limit.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use inetkit_runtime::config::{DaemonConfig, KeyPath, Problem, SocketRole, Transport};

use crate::local::LocalData;
use crate::upstream::Upstream;

/// The forwarder's own part of its config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DnsConfig {
    pub upstream: Vec<UpstreamConfig>,
    pub forward: ForwardConfig,
    pub cache: CacheConfig,
    pub acl: AclConfig,
    pub local: LocalConfig,
    pub record: Vec<RecordConfig>,
    pub domain: Vec<DomainConfig>,
    pub rate_limit: RateLimitConfig,
}

impl DaemonConfig for DnsConfig {
    const LISTEN: &'static [(&'static str, &'static [&'static str])] = &[(
        "dns",
        &[
            "udp://127.0.0.1:53",
            "tcp://127.0.0.1:53",
            "udp://[::1]:53",
            "tcp://[::1]:53",
        ],
    )];
    // RFC 7766 §6.2.3: idle TCP connections are closed after a few seconds.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

    fn socket(name: &str, _transport: Transport) -> Result<SocketRole, String> {
        match name {
            "dns" | "connection" => Ok(SocketRole::Plain),
            _ => Err("the forwarder serves sockets named dns".into()),
        }
    }

    /// Builds what the start builds from the config (upstreams, ACL, local data), so that
    /// whatever would stop the start is found here.
    fn validate(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self
            .upstream
            .iter()
            .enumerate()
            .filter_map(|(i, u)| Upstream::new(u, KeyPath::new("upstream").index(i)).err())
            .collect();
        for (i, domain) in self.domain.iter().enumerate() {
            problems.extend(domain.upstreams().err().map(|(j, e)| {
                KeyPath::new("domain")
                    .index(i)
                    .key("upstreams")
                    .index(j)
                    .problem(e)
            }));
        }
        problems.extend(Acl::parse(&self.acl).err());
        problems.extend(LocalData::load(self).err());
        problems
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// UDP, retried over TCP when the answer is truncated.
    Udp,
    /// DNS-over-TLS (RFC 7858).
    Tls,
}

/// `[[upstream]]`: one server to forward to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// `IP` or `IP:PORT` (`[IPv6]:PORT`); the port defaults to 53, or 853 for TLS.
    pub address: String,
    #[serde(default = "udp")]
    pub protocol: Protocol,
    /// The name the TLS certificate must be valid for (required for TLS).
    pub tls_name: Option<String>,
    /// PEM file of CAs to trust for this upstream instead of the system's.
    pub tls_ca: Option<PathBuf>,
}

fn udp() -> Protocol {
    Protocol::Udp
}

impl UpstreamConfig {
    /// The address to ask; `Err` says why `address` is not one.
    pub(crate) fn socket_addr(&self) -> Result<SocketAddr, String> {
        let port = match self.protocol {
            Protocol::Udp => 53,
            Protocol::Tls => 853,
        };
        if let Ok(addr) = self.address.parse::<SocketAddr>() {
            return Ok(addr);
        }
        self.address
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, port))
            .map_err(|_| {
                format!(
                    "{:?} is not IP or IP:PORT (names are not looked up)",
                    self.address
                )
            })
    }
}

/// `[forward]`: how upstreams are asked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ForwardConfig {
    /// How long to wait for one upstream before trying the next.
    #[serde(deserialize_with = "inetkit_runtime::config::seconds")]
    pub timeout: Duration,
    /// Where upstreams come from when none is configured.
    pub resolv_conf: PathBuf,
    /// Randomise the case of the question name (the "0x20" defence) and require it back.
    pub randomize_case: bool,
    /// EDNS buffer size we advertise, upstream and to clients (1232: DNS flag day 2020).
    pub edns_buffer: u16,
    /// Upstream questions in flight at once; beyond that, new ones get SERVFAIL (a flood of
    /// unique names cannot take every socket and task).
    pub max_outstanding: usize,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            timeout: Duration::from_millis(1500),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            randomize_case: false,
            edns_buffer: 1232,
            max_outstanding: 4096,
        }
    }
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CacheConfig {
    /// Most answers kept; 0 switches the cache off.
    pub max_entries: usize,
    /// Most bytes (answers' wire size) kept.
    pub max_bytes: usize,
    /// TTLs are raised to at least this (seconds).
    pub min_ttl: u32,
    /// And lowered to at most this.
    pub max_ttl: u32,
    /// Negative answers (RFC 2308) are kept at most this long.
    pub max_negative_ttl: u32,
    /// RFC 8767: answer from expired entries when no upstream answers.
    pub serve_stale: bool,
    /// How long after expiry an entry may still be served stale (seconds).
    pub max_stale: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
            min_ttl: 0,
            max_ttl: 86_400,
            max_negative_ttl: 3_600,
            serve_stale: false,
            max_stale: 86_400,
        }
    }
}

/// `[acl]`: who is answered at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AclConfig {
    /// Networks (`ADDR/LEN` or `ADDR`) whose clients are answered; others get REFUSED.
    pub allow: Vec<String>,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BlockMode {
    /// NXDOMAIN for the name and everything under it.
    Nxdomain,
    /// A 0.0.0.0 / :: answer (what ad-blocking hosts files do).
    Zero,
}

/// `[local]`: data answered without asking anyone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LocalConfig {
    /// A hosts-style file (`ADDRESS NAME ALIASES...`), read at start and on SIGHUP.
    pub hosts_file: Option<PathBuf>,
    /// TTL of answers from the hosts file, `[[record]]`s without one, and blocks.
    pub ttl: u32,
    /// Names blocked, with everything under them.
    pub blocklist: Vec<String>,
    /// A file of more blocked names, one per line (`#` comments; hosts-file lines work too).
    pub blocklist_file: Option<PathBuf>,
    pub block_mode: BlockMode,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            hosts_file: None,
            ttl: 300,
            blocklist: Vec::new(),
            blocklist_file: None,
            block_mode: BlockMode::Nxdomain,
        }
    }
}

/// `[[record]]`: one local record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordConfig {
    pub name: String,
    /// A, AAAA, CNAME, PTR or TXT.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub ttl: Option<u32>,
}

/// `[[domain]]`: names under `name` asked of these upstreams instead (dnsmasq's
/// `server=/corp.example/10.0.0.1`), or, with none, answered from local data only and never
/// forwarded (dnsmasq's `local=/lan/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainConfig {
    pub name: String,
    /// `IP` or `IP:PORT`, asked over UDP (TCP when an answer is truncated).
    pub upstreams: Vec<String>,
}

impl DomainConfig {
    /// The upstreams as `[[upstream]]`s would say them; `Err` has the index of one that is not
    /// an address, and why.
    pub(crate) fn upstreams(&self) -> Result<Vec<UpstreamConfig>, (usize, String)> {
        self.upstreams
            .iter()
            .enumerate()
            .map(|(j, address)| {
                let config = UpstreamConfig {
                    address: address.clone(),
                    protocol: Protocol::Udp,
                    tls_name: None,
                    tls_ca: None,
                };
                config.socket_addr().map(|_| config).map_err(|e| (j, e))
            })
            .collect()
    }
}

/// `[rate_limit]`: queries over UDP answered per client address. It is there against
/// reflection (answers sent to a forged source address); loopback is never limited, as no
/// packet from outside the host can carry a loopback source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RateLimitConfig {
    /// Queries per second per client address; 0 for no limit.
    pub rate: u32,
    /// How many may come at once before the rate applies.
    pub burst: u32,
    /// Whether the networks `[acl]` allows are exempt too (then only the REFUSED answers to
    /// everyone else are limited).
    pub exempt_allowed: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rate: 200,
            burst: 400,
            exempt_allowed: true,
        }
    }
}

/// A parsed `[acl]`.
#[derive(Debug, Clone)]
pub(crate) struct Acl {
    nets: Vec<(IpAddr, u8)>,
}

impl Acl {
    pub(crate) fn parse(config: &AclConfig) -> Result<Self, Problem> {
        let mut nets = Vec::new();
        for (i, text) in config.allow.iter().enumerate() {
            let at = || KeyPath::new("acl").key("allow").index(i);
            let (addr, len) = match text.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (text.as_str(), None),
            };
            let ip: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| at().problem(format!("{text:?} is not an address")))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| at().problem(format!("{text:?} has a bad prefix length")))?,
                None => max,
            };
            nets.push((ip, len));
        }
        Ok(Acl { nets })
    }

    /// Whether a network of the list is everything (`0.0.0.0/0`, `::/0`).
    pub(crate) fn allows_everyone(&self) -> bool {
        self.nets.iter().any(|&(_, len)| len == 0)
    }

    pub(crate) fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.nets.iter().any(|&(net, len)| in_net(client, net, len))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_matches_networks() {
        let acl = Acl::parse(&AclConfig {
            allow: vec!["127.0.0.0/8".into(), "::1".into(), "10.1.0.0/16".into()],
        })
        .unwrap();
        assert!(acl.allows("127.9.9.9".parse().unwrap()));
        assert!(acl.allows("::1".parse().unwrap()));
        assert!(acl.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(acl.allows("10.1.200.3".parse().unwrap()));
        assert!(!acl.allows("10.2.0.1".parse().unwrap()));
        assert!(!acl.allows("::2".parse().unwrap()));
        let all = Acl::parse(&AclConfig {
            allow: vec!["0.0.0.0/0".into()],
        })
        .unwrap();
        assert!(all.allows("192.0.2.1".parse().unwrap()));
        assert!(Acl::parse(&AclConfig {
            allow: vec!["10.0.0.0/33".into()]
        })
        .is_err());
    }

    fn refused(text: &str) -> String {
        let path = std::path::Path::new("dns.toml");
        match inetkit_runtime::config::from_text::<DnsConfig>(text, path) {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => err.to_string(),
        }
    }

    const RECORD: &str = "[[record]]\nname = \"ok.lan\"\ntype = \"A\"\nvalue = \"192.0.2.1\"\n\n";

    #[test]
    fn a_record_value_that_is_no_address_is_refused_at_the_value() {
        let err = refused(&format!(
            "{RECORD}[[record]]\nname = \"a.lan\"\ntype = \"a\"\nvalue = \"not-an-ip\"\n"
        ));
        assert_eq!(
            err,
            "dns.toml:9:1: record[1].value: \"not-an-ip\" is not an IPv4 address"
        );
    }

    #[test]
    fn a_record_type_not_served_is_refused_at_the_type() {
        let err = refused("[[record]]\nname = \"a.lan\"\ntype = \"NAPTR\"\nvalue = \"x\"\n");
        assert!(err.starts_with("dns.toml:3:1: record[0].type: "), "{err}");
        assert!(err.contains("\"NAPTR\" is not served"), "{err}");
    }

    #[test]
    fn new_record_types_are_checked() {
        let err = refused("[[record]]\nname = \"lan\"\ntype = \"MX\"\nvalue = \"mail.lan\"\n");
        assert!(err.starts_with("dns.toml:4:1: record[0].value: "), "{err}");
        assert!(err.contains("\"PREFERENCE HOST\""), "{err}");
        let err =
            refused("[[record]]\nname = \"s.lan\"\ntype = \"SRV\"\nvalue = \"0 5 99999 x.lan\"\n");
        assert!(err.contains("\"99999\" is not a port"), "{err}");
        let path = std::path::Path::new("dns.toml");
        let good = "[[record]]\nname = \"lan\"\ntype = \"mx\"\nvalue = \"10 mail.lan\"\n\n\
                    [[record]]\nname = \"_sip._udp.lan\"\ntype = \"SRV\"\nvalue = \"0 5 5060 sip.lan\"\n";
        assert!(inetkit_runtime::config::from_text::<DnsConfig>(good, path).is_ok());
    }

    #[test]
    fn a_domain_upstream_that_is_no_address_is_refused_at_it() {
        let err = refused(
            "[[domain]]\nname = \"corp.example\"\nupstreams = [\"10.0.0.1\", \"ns.corp\"]\n",
        );
        assert!(
            err.starts_with("dns.toml:3:26: domain[0].upstreams[1]: "),
            "{err}"
        );
        let err = refused("[[domain]]\nname = \"bad..name\"\nupstreams = []\n");
        assert!(err.starts_with("dns.toml:2:1: domain[0].name: "), "{err}");
    }

    #[test]
    fn a_bad_acl_prefix_is_refused_at_the_network() {
        let err = refused("[acl]\nallow = [\"127.0.0.0/8\", \"10.0.0.0/33\"]\n");
        assert_eq!(
            err,
            "dns.toml:2:25: acl.allow[1]: \"10.0.0.0/33\" has a bad prefix length"
        );
    }

    #[test]
    fn an_upstream_name_is_refused_at_the_address() {
        let err = refused("[[upstream]]\naddress = \"dns.google\"\n");
        assert!(
            err.starts_with("dns.toml:2:1: upstream[0].address: "),
            "{err}"
        );
        assert!(err.contains("\"dns.google\" is not IP or IP:PORT"), "{err}");
    }

    #[test]
    fn a_tls_upstream_without_tls_name_is_refused_at_the_protocol() {
        let err = refused(
            "[[upstream]]\naddress = \"192.0.2.1\"\n\n[[upstream]]\naddress = \"192.0.2.2\"\n\
             protocol = \"tls\"\n",
        );
        assert!(
            err.starts_with("dns.toml:6:1: upstream[1].protocol: "),
            "{err}"
        );
        assert!(err.contains("tls_name"), "{err}");
    }

    #[test]
    fn a_missing_hosts_file_is_refused_at_the_key() {
        let err = refused("[local]\nttl = 60\nhosts_file = \"/nonexistent/hosts\"\n");
        assert!(
            err.starts_with("dns.toml:3:1: local.hosts_file: cannot read /nonexistent/hosts: "),
            "{err}"
        );
    }

    #[test]
    fn the_forward_timeout_is_seconds() {
        let path = std::path::Path::new("dns.toml");
        let checked =
            inetkit_runtime::config::from_text::<DnsConfig>("[forward]\ntimeout = 0.25\n", path);
        let Ok(checked) = checked else {
            panic!("refused")
        };
        assert_eq!(
            checked.config.daemon.forward.timeout,
            Duration::from_millis(250)
        );
        let err = refused("[forward]\ntimeout_ms = 1500\n");
        assert!(
            err.starts_with("dns.toml:2:1: unknown field `timeout_ms`"),
            "{err}"
        );
    }

    #[test]
    fn upstream_ports_default_by_protocol() {
        let u = UpstreamConfig {
            address: "192.0.2.1".into(),
            protocol: Protocol::Tls,
            tls_name: None,
            tls_ca: None,
        };
        assert_eq!(u.socket_addr().unwrap(), "192.0.2.1:853".parse().unwrap());
        let u = UpstreamConfig {
            address: "[::1]:5353".into(),
            protocol: Protocol::Udp,
            tls_name: None,
            tls_ca: None,
        };
        assert_eq!(u.socket_addr().unwrap(), "[::1]:5353".parse().unwrap());
    }
}
