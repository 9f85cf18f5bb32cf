//! Running the fleet.fleet collection (`ansible/`) against lab hosts the way an operator
//! does: ansible-playbook on this machine, SSH into the hosts with the lab's key. The
//! toolchain is the pinned venv of `lab/ansible-venv.sh` (installed by lab/test-all.sh).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn workspace() -> PathBuf {
    PathBuf::from(WORKSPACE)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(WORKSPACE))
}

/// The collection's source directory.
pub fn collection_dir() -> PathBuf {
    workspace().join("ansible")
}

/// The pinned venv's directory; an error saying how to install it when it is missing.
pub fn venv() -> Result<PathBuf> {
    let script = workspace().join("lab/ansible-venv.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg("--path")
        .output()
        .with_context(|| format!("run {} --path", script.display()))?;
    anyhow::ensure!(out.status.success(), "{} --path failed", script.display());
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.join(".complete").exists() {
        bail!(
            "the pinned Ansible toolchain is not installed at {}: run `sh lab/ansible-venv.sh` (lab/test-all.sh does)",
            dir.display()
        );
    }
    Ok(dir)
}

/// A collections path holding `fleet.fleet` as this checkout's `ansible/` (a symlink, so
/// edits are picked up without `ansible-galaxy collection install`).
pub fn collections_path(under: &Path) -> Result<PathBuf> {
    let root = under.join("ansible-collections");
    let ns = root.join("ansible_collections/fleet");
    std::fs::create_dir_all(&ns).with_context(|| format!("create {}", ns.display()))?;
    let link = ns.join("fleet");
    if std::fs::read_link(&link).ok() != Some(collection_dir()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(collection_dir(), &link)
            .with_context(|| format!("link {}", link.display()))?;
    }
    Ok(root)
}

/// `tool` (ansible-playbook, ansible-lint ...) from the venv, with the collection on its
/// path, colours off and the venv first on PATH.
pub fn command(tool: &str, work: &Path) -> Result<Command> {
    let venv = venv()?;
    let mut cmd = Command::new(venv.join("bin").join(tool));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv.join("bin")];
    paths.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths)?)
        .env("ANSIBLE_COLLECTIONS_PATH", collections_path(work)?)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        // What operators turn on for speed: modules go over the SSH session's stdin.
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_FORKS", "20")
        .env("ANSIBLE_LOCAL_TEMP", work.join("ansible-tmp"))
        .current_dir(work);
    Ok(cmd)
}

/// `ansible-playbook fleet.fleet.site` with these inventories, extra-vars files and
/// arguments; returns the output whatever the exit code.
pub fn site(work: &Path, inventories: &[&Path], vars: &[&Path], args: &[&str]) -> Result<Output> {
    let mut cmd = command("ansible-playbook", work)?;
    for i in inventories {
        cmd.arg("-i").arg(i);
    }
    for v in vars {
        cmd.arg("-e").arg(format!("@{}", v.display()));
    }
    cmd.args(args).arg("fleet.fleet.site");
    cmd.output().context("run ansible-playbook")
}

/// The lab's inventory (what `fleet-lab inventory` prints) for `lab`, written to `work`.
pub fn lab_inventory(lab: &crate::Lab, work: &Path) -> Result<PathBuf> {
    let facts = crate::inventory::LabFacts {
        ca_pin: lab.ca_pin().map(str::to_owned),
        keyring: lab.packages().map(|p| p.keyring()),
    };
    let p = work.join("lab.yml");
    std::fs::write(
        &p,
        crate::inventory::render(&lab.paths, lab.hosts(), &facts),
    )?;
    Ok(p)
}

/// An inventory that makes the lab inventory's hosts the playbook's `fleet_agents`.
pub fn agents_group(work: &Path) -> Result<PathBuf> {
    let p = work.join("groups.yml");
    std::fs::write(
        &p,
        "all:\n  children:\n    fleet_agents:\n      children:\n        fleet_hosts:\n",
    )?;
    Ok(p)
}

/// The agent role's variables from the lab inventory's facts (`pin` overrides the CA pin)
/// plus the token: a 0600 file, as an operator's vault file would be.
pub fn agent_vars(
    work: &Path,
    name: &str,
    version: &str,
    token: &str,
    pin: Option<&str>,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let v = serde_json::json!({
        "agent_package_version": version,
        "agent_apt_repo_url": "{{ fleet_repo_url }}",
        "agent_apt_keyring_src": "{{ fleet_repo_keyring }}",
        "agent_controller": "{{ fleet_controller }}",
        "agent_ca_pin": pin.unwrap_or("{{ fleet_ca_pin }}"),
        "agent_join_token": token,
    });
    let p = work.join(name);
    std::fs::write(&p, "")?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(&p, v.to_string())?;
    Ok(p)
}

/// One host's line of PLAY RECAP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recap {
    pub ok: u32,
    pub changed: u32,
    pub unreachable: u32,
    pub failed: u32,
    pub skipped: u32,
    pub rescued: u32,
    pub ignored: u32,
}

/// The PLAY RECAP of ansible-playbook's output, by host.
pub fn recap(output: &str) -> BTreeMap<String, Recap> {
    let mut out = BTreeMap::new();
    let Some(start) = output.rfind("PLAY RECAP") else {
        return out;
    };
    for line in output[start..].lines().skip(1) {
        let Some((host, counts)) = line.split_once(" : ") else {
            continue;
        };
        let mut r = Recap::default();
        for kv in counts.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u32 = v.parse().unwrap_or(0);
            match k {
                "ok" => r.ok = v,
                "changed" => r.changed = v,
                "unreachable" => r.unreachable = v,
                "failed" => r.failed = v,
                "skipped" => r.skipped = v,
                "rescued" => r.rescued = v,
                "ignored" => r.ignored = v,
                _ => {}
            }
        }
        out.insert(host.trim().to_owned(), r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recap_lines_are_parsed_per_host() {
        let text = "TASK [x]\nok: [host1]\n\nPLAY RECAP *********\n\
            host1                      : ok=9    changed=0    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0   \n\
            host2                      : ok=3    changed=2    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0   \n";
        let r = recap(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r["host1"],
            Recap {
                ok: 9,
                skipped: 1,
                ..Recap::default()
            }
        );
        assert_eq!((r["host2"].changed, r["host2"].failed), (2, 1));
        assert!(recap("no recap here").is_empty());
    }
}
