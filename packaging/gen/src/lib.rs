//! What `fleet-pkg-gen OUT_DIR` writes: the man pages (OUT_DIR/man/*.1, one per command and
//! subcommand) and shell completions (OUT_DIR/completions/{bash,zsh,fish}/) of the three
//! fleet programs, rendered from their clap definitions, so the packages' documentation
//! can never drift from the flags the binaries accept. packaging/deb/build.sh runs it;
//! the `[package.metadata.deb]` assets of each crate pick the files up from there.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The programs, by binary name, with their clap definition.
fn programs() -> Vec<clap::Command> {
    vec![
        fleet_agent::cli::Cli::command().name("fleet-agent"),
        fleet_controller::cli::Cli::command().name("fleet-controller"),
        fleetctl::Cli::command().name("fleetctl"),
    ]
}

/// File name of `bin`'s completion script for `shell`, as each shell's vendor directory
/// expects it (bash-completion: the command name; zsh: `_NAME`; fish: `NAME.fish`).
pub fn completion_file(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        _ => bin.to_owned(),
    }
}

/// Writes OUT/man and OUT/completions, replacing whatever OUT held.
pub fn generate(out: &Path) -> Result<()> {
    let man = out.join("man");
    // Stale pages of a renamed subcommand must not end up in a package.
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    for cmd in programs() {
        let bin = cmd.get_name().to_owned();
        clap_mangen::generate_to(cmd.clone(), &man)
            .with_context(|| format!("cannot write the man pages of {bin}"))?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let dir = out.join("completions").join(shell.to_string());
            fs::create_dir_all(&dir)?;
            let path = dir.join(completion_file(shell, &bin));
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &bin, &mut buf);
            fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_gets_pages_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gen");
        generate(&out).unwrap();
        for bin in ["fleet-agent", "fleet-controller", "fleetctl"] {
            let page = fs::read_to_string(out.join("man").join(format!("{bin}.1"))).unwrap();
            assert!(page.contains(".TH"), "{bin}.1 is not a man page");
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let f = out
                    .join("completions")
                    .join(shell.to_string())
                    .join(completion_file(shell, bin));
                let text = fs::read_to_string(&f).unwrap();
                assert!(text.contains(bin), "{} does not name {bin}", f.display());
            }
        }
        // Subcommands get their own pages (what `man fleet-agent-join` opens).
        assert!(out.join("man/fleet-agent-join.1").exists());
        assert!(out.join("man/fleetctl-token-create.1").exists());
        let bash = fs::read_to_string(out.join("completions/bash/fleetctl")).unwrap();
        assert!(
            bash.contains("rollout"),
            "fleetctl's subcommands are completed"
        );
    }
}
