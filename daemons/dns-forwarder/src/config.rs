//! `/etc/inetkit/dns-forwarder.toml`: the shared sections plus upstreams, cache, ACL, local
//! data and the rate limit.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use inetkit_runtime::config::{LimitsConfig, ListenConfig, LogConfig, TlsConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub upstream: Vec<UpstreamConfig>,
    pub forward: ForwardConfig,
    pub cache: CacheConfig,
    pub acl: AclConfig,
    pub local: LocalConfig,
    pub record: Vec<RecordConfig>,
    pub rate_limit: RateLimitConfig,
}
// RFC 7766 §6.2.3: idle TCP connections are closed after a few seconds.
inetkit_runtime::shared_sections!(Config, idle_timeout = 10);

impl Default for Config {
    fn default() -> Self {
        let mut listen = ListenConfig::new();
        listen.insert(
            "dns".into(),
            vec![
                "udp://127.0.0.1:53".into(),
                "tcp://127.0.0.1:53".into(),
                "udp://[::1]:53".into(),
                "tcp://[::1]:53".into(),
            ],
        );
        Config {
            listen,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            upstream: Vec::new(),
            forward: ForwardConfig::default(),
            cache: CacheConfig::default(),
            acl: AclConfig::default(),
            local: LocalConfig::default(),
            record: Vec::new(),
            rate_limit: RateLimitConfig::default(),
        }
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
            .map_err(|_| format!("upstream address {:?} is not IP or IP:PORT", self.address))
    }
}

/// `[forward]`: how upstreams are asked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ForwardConfig {
    /// How long to wait for one upstream before trying the next, in milliseconds.
    pub timeout_ms: u64,
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
            timeout_ms: 1500,
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

/// `[rate_limit]`: queries over UDP answered per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RateLimitConfig {
    /// Queries per second per client address; 0 for no limit.
    pub rate: u32,
    /// How many may come at once before the rate applies.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rate: 200,
            burst: 400,
        }
    }
}

/// A parsed `[acl]`.
#[derive(Debug, Clone)]
pub(crate) struct Acl {
    nets: Vec<(IpAddr, u8)>,
}

impl Acl {
    pub(crate) fn parse(config: &AclConfig) -> Result<Self, String> {
        let mut nets = Vec::new();
        for text in &config.allow {
            let (addr, len) = match text.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (text.as_str(), None),
            };
            let ip: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| format!("[acl] allow: {text:?} is not an address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("[acl] allow: {text:?} has a bad prefix length"))?,
                None => max,
            };
            nets.push((ip, len));
        }
        Ok(Acl { nets })
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
