//! `fleet-lab inventory`: an Ansible inventory (YAML) for the running lab. Hosts are
//! reached the way Ansible reaches real machines, over SSH as root with the lab's key;
//! every host boots from one image and so shares one host key, hence no known_hosts.

use crate::config::{controller_endpoint, host_addr, host_name, Paths};
use crate::packages;
use std::fmt::Write;

/// What the inventory says about the lab besides its hosts.
pub struct LabFacts {
    /// `None` for a lab without a controller (`--no-fleet`).
    pub ca_pin: Option<String>,
    /// The repository's public key on this (the outer) machine, if the lab serves one.
    pub keyring: Option<std::path::PathBuf>,
}

/// YAML-safe: every value is quoted; only the lab's own paths and names go in, but a path
/// may still hold a quote or backslash.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn render(paths: &Paths, hosts: &[u32], facts: &LabFacts) -> String {
    let mut y =
        String::from("# fleet-lab inventory: ansible-playbook -i <(fleet-lab inventory) ...\n");
    y.push_str("all:\n  vars:\n");
    let mut var = |k: &str, v: &str| {
        let _ = writeln!(y, "    {k}: {}", quoted(v));
    };
    var("ansible_user", "root");
    var(
        "ansible_ssh_private_key_file",
        &paths.ssh_key().display().to_string(),
    );
    var(
        "ansible_ssh_common_args",
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
    );
    var("ansible_python_interpreter", "/usr/bin/python3");
    if let Some(pin) = &facts.ca_pin {
        var("fleet_controller", &controller_endpoint());
        var("fleet_ca_pin", pin);
    }
    if let Some(k) = &facts.keyring {
        var("fleet_repo_url", &packages::repo_url());
        var("fleet_repo_line", &packages::sources_line());
        var("fleet_repo_keyring", &k.display().to_string());
    }
    y.push_str("  children:\n    fleet_hosts:\n      hosts:\n");
    for &n in hosts {
        let _ = writeln!(
            y,
            "        {}:\n          ansible_host: {}",
            host_name(n),
            quoted(&host_addr(n))
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_hosts_and_lab_facts() {
        let paths = Paths {
            state: "/var/lib/fleet-lab".into(),
            cache: "/var/cache/fleet-lab".into(),
        };
        let facts = LabFacts {
            ca_pin: Some("sha256:ab".into()),
            keyring: Some("/w/target/debian/fleet-archive-keyring.gpg".into()),
        };
        let y = render(&paths, &[1, 2], &facts);
        for want in [
            "    ansible_user: \"root\"\n",
            "    ansible_ssh_private_key_file: \"/var/lib/fleet-lab/lab_key\"\n",
            "    fleet_ca_pin: \"sha256:ab\"\n",
            "    fleet_controller: \"198.18.0.1:7443\"\n",
            "    fleet_repo_line: \"deb [signed-by=/usr/share/keyrings/fleet-archive-keyring.gpg] http://198.18.0.1:7480/ ./\"\n",
            "        host1:\n          ansible_host: \"198.18.0.11\"\n",
            "        host2:\n          ansible_host: \"198.18.0.12\"\n",
        ] {
            assert!(y.contains(want), "missing {want:?} in\n{y}");
        }
        let bare = render(
            &paths,
            &[1],
            &LabFacts {
                ca_pin: None,
                keyring: None,
            },
        );
        assert!(!bare.contains("fleet_ca_pin") && !bare.contains("fleet_repo"));
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
