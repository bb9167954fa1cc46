//! What can change on SIGHUP: upstreams (general and per domain), ACL, local data.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::rr::Name;

use inetkit_runtime::config::KeyPath;

use crate::config::{Acl, CacheConfig, DnsConfig, ForwardConfig};
use crate::local::LocalData;
use crate::upstream::Upstream;
/// What can change on SIGHUP (the cache stays).
#[derive(Clone)]
pub(crate) struct Settings {
    pub upstreams: Vec<Arc<Upstream>>,
    /// `[[domain]]`s with upstreams of their own: a lowercase domain and who is asked for the
    /// names under it, most labels first (the closest domain wins).
    pub domains: Vec<(Name, Vec<Arc<Upstream>>)>,
    pub acl: Acl,
    pub local: LocalData,
    pub forward: ForwardConfig,
    pub cache: CacheConfig,
}

impl Settings {
    /// The upstreams asked about `name`: those of the closest `[[domain]]` it is in, else the
    /// general ones.
    pub(crate) fn upstreams_for(&self, name: &Name) -> &[Arc<Upstream>] {
        self.domains
            .iter()
            .find(|(domain, _)| domain.zone_of(name))
            .map_or(&self.upstreams, |(_, upstreams)| upstreams)
    }

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
        let mut domains = Vec::new();
        for (i, domain) in config.domain.iter().enumerate() {
            let at = KeyPath::new("domain").index(i);
            let configs = domain
                .upstreams()
                .map_err(|(j, e)| at.clone().key("upstreams").index(j).problem(e))?;
            if configs.is_empty() {
                // Answered from local data only (LocalData has it).
                continue;
            }
            let name = Name::from_ascii(&domain.name)
                .map_err(|e| at.clone().key("name").problem(e.to_string()))?
                .to_lowercase();
            let mut asked = Vec::new();
            for (j, u) in configs.iter().enumerate() {
                let upstream = Upstream::new(u, at.clone().key("upstreams").index(j))?;
                anyhow::ensure!(
                    !own.contains(&upstream.addr),
                    "upstream {} of domain {} is this forwarder itself",
                    upstream.addr,
                    domain.name
                );
                asked.push(Arc::new(upstream));
            }
            domains.push((name, asked));
        }
        domains.sort_by_key(|(name, _)| std::cmp::Reverse(name.num_labels()));
        if upstreams.is_empty() {
            upstreams = resolv_conf_upstreams(&config.forward.resolv_conf, own);
            if upstreams.is_empty() {
                tracing::warn!(
                    path = %config.forward.resolv_conf.display(),
                    "no upstream configured and none usable in resolv.conf: only local data is answered"
                );
            }
        }
        let local = LocalData::load(config)?;
        for warning in &local.warnings {
            tracing::warn!("{warning}");
        }
        Ok(Settings {
            upstreams,
            domains,
            acl: Acl::parse(&config.acl)?,
            local,
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
