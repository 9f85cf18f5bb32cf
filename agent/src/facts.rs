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
        package_version: std::fs::read_to_string(DPKG_STATUS)
            .ok()
            .and_then(|t| installed_version(&t, "fleet-agent"))
            .unwrap_or_default(),
    }
}

const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// The Version of `package` in dpkg's status file, if it is unpacked (an upgrade's
/// postinst restarts the agent while dpkg still calls it half-configured).
pub fn installed_version(status: &str, package: &str) -> Option<String> {
    status.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if field("Package") != Some(package) {
            return None;
        }
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
