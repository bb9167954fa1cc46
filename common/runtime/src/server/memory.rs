//! The memory side of admission: `[limits] memory_soft_limit`, or one derived from the
//! service's cgroup, checked against the process's resident memory.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// `[limits] memory_soft_limit`: new connections are refused while the process's resident
/// memory is above it, so a daemon says "try later" before systemd's `MemoryHigh=` throttles it
/// (or `MemoryMax=` kills it and every session with it).
pub(super) struct MemoryBudget {
    /// In bytes; `None` when there is no limit.
    soft_limit: Option<u64>,
    /// The last reading of resident memory and when it was taken: a burst of accepts reads
    /// /proc at most once per [`MEMORY_RECHECK`].
    last: Mutex<Option<(Instant, u64)>>,
}

/// How long a reading of resident memory is trusted.
pub(super) const MEMORY_RECHECK: Duration = Duration::from_millis(50);

/// The share of the cgroup's limit the soft limit sits at: new work stops a little before the
/// kernel starts throttling.
const SOFT_LIMIT_PERCENT: u64 = 90;

impl MemoryBudget {
    pub(super) fn new(limits: &LimitsConfig) -> Self {
        let soft_limit = match limits.memory_soft_limit {
            Some(0) => None,
            Some(mib) => {
                tracing::info!(mib, "memory soft limit from [limits] memory_soft_limit");
                Some(mib.saturating_mul(1 << 20))
            }
            None => {
                let derived = cgroup_memory_limit().map(soft_limit_from_cgroup);
                if let Some(bytes) = derived {
                    tracing::info!(mib = bytes >> 20, "memory soft limit from the cgroup");
                }
                derived
            }
        };
        MemoryBudget {
            soft_limit,
            last: Mutex::new(None),
        }
    }

    /// Whether a new connection may start now.
    pub(super) fn admits(&self) -> bool {
        let Some(limit) = self.soft_limit else {
            return true;
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let resident = match *last {
            Some((at, resident)) if at.elapsed() < MEMORY_RECHECK => Some(resident),
            _ => {
                let resident = resident_bytes();
                *last = resident.map(|r| (Instant::now(), r));
                resident
            }
        };
        memory_admits(resident, Some(limit))
    }
}

/// The admission decision: below the soft limit, or no limit, admits. An unreadable figure
/// admits too: refusing everyone because /proc could not be read would be the worse failure.
fn memory_admits(resident: Option<u64>, soft_limit: Option<u64>) -> bool {
    match (resident, soft_limit) {
        (Some(resident), Some(limit)) => resident < limit,
        _ => true,
    }
}

/// The soft limit for a cgroup memory limit in bytes.
fn soft_limit_from_cgroup(limit: u64) -> u64 {
    limit / 100 * SOFT_LIMIT_PERCENT
}

/// This process's resident memory in bytes (`VmRSS` of /proc/self/status).
pub(super) fn resident_bytes() -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory limit of this process's cgroup (unified hierarchy, Debian's default): `memory.high`
/// (systemd's `MemoryHigh=`), else `memory.max` (`MemoryMax=`). `None` outside such a cgroup
/// or when neither is set.
fn cgroup_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_memory_limit_in(&cgroups, Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_memory_limit`] for the /proc/self/cgroup text `cgroups` and a cgroup2 mount at
/// `root`.
fn cgroup_memory_limit_in(cgroups: &str, root: &Path) -> Option<u64> {
    let dir = root.join(unified_cgroup_path(cgroups)?);
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| parse_cgroup_limit(&text))
    };
    read("memory.high").or_else(|| read("memory.max"))
}

/// The unified-hierarchy path in /proc/self/cgroup (the `0::/…` line), without its leading `/`.
fn unified_cgroup_path(cgroups: &str) -> Option<&str> {
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(path.trim_start_matches('/'))
}

/// A cgroup memory file's value in bytes; `max` (no limit) is `None`.
fn parse_cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_decision() {
        assert!(memory_admits(Some(100 << 20), Some(200 << 20)));
        assert!(
            !memory_admits(Some(200 << 20), Some(200 << 20)),
            "at the limit refuses"
        );
        assert!(!memory_admits(Some(300 << 20), Some(200 << 20)));
        assert!(memory_admits(Some(300 << 20), None), "no limit admits");
        assert!(memory_admits(None, Some(1)), "an unreadable figure admits");
    }

    #[test]
    fn memory_figures_parse() {
        let status = "Name:\tinetkit-pop3d\nVmHWM:\t   9000 kB\nVmRSS:\t    8192 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(8192 * 1024));
        assert_eq!(parse_vm_rss("VmRSS:\t12 pages\n"), None);
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);

        let hybrid = "4:memory:/user.slice\n0::/system.slice/inetkit-pop3d.service\n";
        assert_eq!(
            unified_cgroup_path(hybrid),
            Some("system.slice/inetkit-pop3d.service")
        );
        assert_eq!(unified_cgroup_path("0::/\n"), Some(""));
        assert_eq!(unified_cgroup_path("4:memory:/x\n"), None);

        assert_eq!(parse_cgroup_limit("268435456\n"), Some(256 << 20));
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(soft_limit_from_cgroup(1000 << 20), 900 << 20);
        assert_eq!(soft_limit_from_cgroup(u64::MAX), u64::MAX / 100 * 90);
    }

    #[test]
    fn memory_soft_limit_zero_is_off_and_mib_are_bytes() {
        let off = MemoryBudget::new(&LimitsConfig {
            memory_soft_limit: Some(0),
            ..LimitsConfig::default()
        });
        assert_eq!(off.soft_limit, None);
        assert!(off.admits());
        let tiny = MemoryBudget::new(&LimitsConfig {
            memory_soft_limit: Some(1),
            ..LimitsConfig::default()
        });
        assert_eq!(tiny.soft_limit, Some(1 << 20));
        assert!(!tiny.admits(), "this test process is above 1 MiB");
    }

    #[test]
    fn cgroup_limit_is_memory_high_else_memory_max() {
        let root = std::env::temp_dir().join(format!("inetkit-cgroup-test-{}", std::process::id()));
        let unit = root.join("system.slice/inetkit-pop3d.service");
        std::fs::create_dir_all(&unit).unwrap();
        let cgroups = "0::/system.slice/inetkit-pop3d.service\n";

        std::fs::write(unit.join("memory.high"), "max\n").unwrap();
        std::fs::write(unit.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_limit_in(cgroups, &root), None, "no limit set");

        std::fs::write(unit.join("memory.max"), "402653184\n").unwrap();
        assert_eq!(cgroup_memory_limit_in(cgroups, &root), Some(384 << 20));

        std::fs::write(unit.join("memory.high"), "201326592\n").unwrap();
        assert_eq!(cgroup_memory_limit_in(cgroups, &root), Some(192 << 20));
        assert_eq!(soft_limit_from_cgroup(192 << 20) >> 20, 172);

        assert_eq!(cgroup_memory_limit_in("0::/elsewhere\n", &root), None);
        assert_eq!(cgroup_memory_limit_in("4:memory:/x\n", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
