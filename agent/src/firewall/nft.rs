//! The programs the firewall drives: `nft` for the table, `systemctl` for units.

use std::path::Path;

use fleet_proto::firewall::TABLE;
use tokio::process::Command as Proc;

pub(super) const NFT: &str = "/usr/sbin/nft";

#[derive(Debug, thiserror::Error)]
pub(super) enum NftError {
    #[error("cannot run {prog}: {source}")]
    Spawn {
        prog: String,
        source: std::io::Error,
    },
    /// The command line and what the program printed on stderr, trimmed.
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
    /// `nft -c` refused a file that was about to be loaded.
    #[error("invalid candidate: {0}")]
    Invalid(Box<NftError>),
}

/// Runs a program and returns stdout, or its stderr in the error.
pub(super) async fn run(prog: &str, args: &[&str]) -> Result<String, NftError> {
    let out = Proc::new(prog)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| NftError::Spawn {
            prog: prog.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Failed {
            command: format!("{prog} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The live fleet table as nft prints it, or None when there is none.
pub(super) async fn listing() -> Option<String> {
    let (family, name) = TABLE.split_once(' ').expect("TABLE is 'family name'");
    run(NFT, &["list", "table", family, name]).await.ok()
}

/// True while `unit` is armed (a timer) or running (a service).
pub(super) async fn unit_busy(unit: &str) -> bool {
    let prop = if unit.ends_with(".timer") {
        "SubState"
    } else {
        "ActiveState"
    };
    match run("systemctl", &["show", "-p", prop, "--value", unit]).await {
        Ok(s) => matches!(
            s.trim(),
            "waiting" | "running" | "active" | "activating" | "deactivating" | "reloading"
        ),
        Err(_) => false,
    }
}

/// Checks then loads a whole-table file: a file nft rejects changes nothing.
pub(super) async fn load(path: &Path) -> Result<(), NftError> {
    let p = path.to_string_lossy();
    run(NFT, &["-c", "-f", &p])
        .await
        .map_err(|e| NftError::Invalid(Box::new(e)))?;
    run(NFT, &["-f", &p]).await.map(|_| ())
}
