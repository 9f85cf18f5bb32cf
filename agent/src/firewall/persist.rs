//! Keeps the confirmed table across reboots and nftables restarts: owns
//! `/etc/systemd/system/fleet-firewall.service`.

use std::path::Path;

use fleet_proto::files::FileError;
use fleet_proto::firewall::TABLE;

use super::nft::{run, NftError, NFT};
use super::{write, Firewall};

#[derive(Debug, thiserror::Error)]
pub(super) enum PersistError {
    #[error(transparent)]
    Write(#[from] FileError),
    #[error(transparent)]
    Run(#[from] NftError),
}

const PERSIST_UNIT: &str = "fleet-firewall.service";
const PERSIST_PATH: &str = "/etc/systemd/system/fleet-firewall.service";

impl Firewall {
    /// Installs the oneshot that reloads the confirmed table after boot and whenever
    /// nftables.service (re)starts; PartOf makes a restart of nftables restart it too.
    pub(super) async fn persist(&self) -> Result<(), PersistError> {
        let unit = persist_unit(&self.path("desired.nft"));
        if std::fs::read_to_string(PERSIST_PATH).ok().as_deref() != Some(unit.as_str()) {
            write(Path::new(PERSIST_PATH), &unit)?;
            run("systemctl", &["daemon-reload"]).await?;
        }
        run("systemctl", &["enable", PERSIST_UNIT]).await?;
        // Active (RemainAfterExit) so that PartOf propagates nftables restarts to it.
        run("systemctl", &["start", PERSIST_UNIT]).await?;
        Ok(())
    }
}

pub(super) fn persist_unit(desired: &Path) -> String {
    format!(
        "# Written by fleet-agent: restores the confirmed `{TABLE}` table.\n\
         [Unit]\n\
         Description=fleet: restore the {TABLE} firewall table\n\
         After=nftables.service\n\
         PartOf=nftables.service\n\
         ConditionPathExists={p}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={NFT} -f {p}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target nftables.service\n",
        p = desired.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_unit_follows_nftables() {
        let u = persist_unit(Path::new("/var/lib/fleet-agent/firewall/desired.nft"));
        assert!(u.contains("After=nftables.service"));
        assert!(u.contains("PartOf=nftables.service"));
        assert!(u.contains("WantedBy=multi-user.target nftables.service"));
        assert!(u.contains("ExecStart=/usr/sbin/nft -f /var/lib/fleet-agent/firewall/desired.nft"));
    }
}
