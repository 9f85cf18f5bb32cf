//! Host facts sent in `Hello`. Each fact is best effort: a missing one is sent empty (or 0)
//! rather than keeping the host off the controller.

use fleet_proto::v1::HostFacts;
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// `metrics_port`: where this agent's `/metrics` listens (0: disabled), for the
/// controller's Prometheus service discovery.
pub fn collect(metrics_port: u16) -> HostFacts {
    let memory_bytes = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .map(|s| s.total_memory())
    .unwrap_or(0);
    HostFacts {
        hostname: hostname().unwrap_or_default(),
        os: std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| pretty_name(&t))
            .or_else(|| System::long_os_version().ok())
            .unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        cores: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(0),
        memory_bytes,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        metrics_port: u32::from(metrics_port),
        package_version: installed_version(&dpkg_records(), "fleet-agent").unwrap_or_default(),
    }
}

const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// dpkg's journal of status changes not yet merged into the status file. While dpkg runs
/// (an upgrade's postinst restarts the agent), the new version is only here.
const DPKG_UPDATES: &str = "/var/lib/dpkg/updates";

/// dpkg's status file followed by its pending updates, oldest first: later stanzas of a
/// package supersede earlier ones, as dpkg itself reads them.
fn dpkg_records() -> String {
    let mut text = std::fs::read_to_string(DPKG_STATUS).unwrap_or_default();
    let mut updates: Vec<_> = std::fs::read_dir(DPKG_UPDATES)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                // Journal entries are named by number; "tmp.i" is one being written.
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    updates.sort();
    for u in updates {
        if let Ok(t) = std::fs::read_to_string(u) {
            text.push_str("\n\n");
            text.push_str(&t);
        }
    }
    text
}

/// The Version of `package` in dpkg status records (the last stanza of the package wins),
/// if it is unpacked (an upgrade's postinst restarts the agent while dpkg still calls it
/// half-configured).
pub fn installed_version(records: &str, package: &str) -> Option<String> {
    let last = records.split("\n\n").filter(|stanza| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix("Package")?.strip_prefix(':'))
            .map(str::trim)
            == Some(package)
    });
    last.last().and_then(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let state = field("Status")?.split_whitespace().nth(2)?;
        matches!(
            state,
            "installed" | "half-configured" | "unpacked" | "triggers-awaited" | "triggers-pending"
        )
        .then(|| field("Version").map(str::to_owned))
        .flatten()
    })
}

pub fn hostname() -> Option<String> {
    System::host_name().ok().filter(|h| !h.is_empty())
}

/// `PRETTY_NAME` from os-release(5) text, unquoted.
pub fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.trim().strip_prefix("PRETTY_NAME=")?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(value.replace("\\\"", "\"")).filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("PRETTY_NAME=Alpine").as_deref(), Some("Alpine"));
        assert_eq!(pretty_name("PRETTY_NAME='x y'").as_deref(), Some("x y"));
        assert_eq!(pretty_name("ID=debian\n"), None);
        assert_eq!(pretty_name("PRETTY_NAME=\"\""), None);
    }

    #[test]
    fn the_package_version_comes_from_dpkg_status() {
        let status = "Package: fleet-agentx\nStatus: install ok installed\nVersion: 9\n\n\
                      Package: fleet-agent\nStatus: install ok half-configured\nPriority: optional\nVersion: 0.1.1-1\n\n\
                      Package: other\nStatus: install ok installed\nVersion: 1\n";
        assert_eq!(
            installed_version(status, "fleet-agent").as_deref(),
            Some("0.1.1-1")
        );
        // The journal's newer record of the package supersedes the status file's.
        let journal = "Package: fleet-agent\nStatus: install ok installed\nVersion: 0.1.0-1\n\n\n\
                       Package: fleet-agent\nStatus: install ok half-configured\nVersion: 0.1.0-2\n";
        assert_eq!(
            installed_version(journal, "fleet-agent").as_deref(),
            Some("0.1.0-2")
        );
        let removed = "Package: fleet-agent\nStatus: deinstall ok config-files\nVersion: 0.1.0-1\n";
        assert_eq!(installed_version(removed, "fleet-agent"), None);
        assert_eq!(installed_version("", "fleet-agent"), None);
    }

    #[test]
    fn facts_of_this_machine() {
        let f = collect(9437);
        assert_eq!(f.metrics_port, 9437);
        assert!(f.cores >= 1);
        assert!(f.memory_bytes > 0);
        assert_eq!(f.agent_version, env!("CARGO_PKG_VERSION"));
    }
}
