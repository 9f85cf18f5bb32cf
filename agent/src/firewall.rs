//! The agent's firewall: it owns exactly the `inet fleet` nftables table.
//!
//! A change is commit-confirmed. The agent checks the candidate (`nft -c`), saves the live
//! table, arms a transient systemd timer that loads the saved table back, applies the
//! candidate in one transaction and answers; only a ConfirmFirewall for the same apply id
//! stops the timer. The timer belongs to systemd, not to us, so a crashed or killed agent
//! cannot leave the host on unconfirmed rules, and rules that cut the controller off undo
//! themselves.
//!
//! Confirmed rules are kept in the state dir and restored on start, by a oneshot unit
//! ordered after Debian's `nftables.service` (which flushes the whole ruleset when it
//! starts or stops), and by the periodic drift check.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::firewall::{OnDrift, Policy, DEFAULT_DRIFT_CHECK, TABLE};
use fleet_proto::v1::{
    agent_message, command, command_result, AgentMessage, ApplyFirewall, Command, CommandResult,
    ConfirmFirewall, Event, FirewallState,
};
use sha2::{Digest, Sha256};
use tokio::process::Command as Proc;
use tokio::sync::mpsc;

use crate::journal::now_ms;
use crate::outbox::{self, Outbox};

const NFT: &str = "/usr/sbin/nft";
const PERSIST_UNIT: &str = "fleet-firewall.service";
const PERSIST_PATH: &str = "/etc/systemd/system/fleet-firewall.service";
/// Extra time before the agent itself calls an unconfirmed change reverted: the timer
/// fires at the deadline and nft takes a moment.
const REVERT_SLACK: Duration = Duration::from_secs(2);

pub fn handles(c: &Command) -> bool {
    matches!(
        c.kind,
        Some(command::Kind::ApplyFirewall(_) | command::Kind::ConfirmFirewall(_))
    )
}

#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    host: String,
    controller: String,
    outbox: Outbox,
    st: Mutex<St>,
}

struct St {
    pending: Option<Pending>,
    state: FirewallState,
    on_drift: OnDrift,
    drift_check: Duration,
}

struct Pending {
    apply_id: String,
    timer: String,
    policy_toml: String,
    candidate: String,
    /// `nft list table` right after applying, for the post-confirm drift baseline.
    listing: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Runs a program and returns stdout, or stderr (trimmed) as the error.
async fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Proc::new(prog)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The live fleet table as nft prints it, or None when there is none.
async fn listing() -> Option<String> {
    let (family, name) = TABLE.split_once(' ').expect("TABLE is 'family name'");
    run(NFT, &["list", "table", family, name]).await.ok()
}

/// Checks then loads a whole-table file: a file nft rejects changes nothing.
async fn load(path: &Path) -> Result<(), String> {
    let p = path.to_string_lossy();
    run(NFT, &["-c", "-f", &p])
        .await
        .map_err(|e| format!("invalid candidate: {e}"))?;
    run(NFT, &["-f", &p]).await.map(|_| ())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl Firewall {
    pub fn new(agent_state: &Path, host: &str, controller: &str) -> Firewall {
        Firewall {
            inner: Arc::new(Inner {
                dir: agent_state.join("firewall"),
                host: host.to_owned(),
                controller: controller.to_owned(),
                outbox: Outbox::default(),
                st: Mutex::new(St {
                    pending: None,
                    state: FirewallState {
                        state: "none".into(),
                        ..Default::default()
                    },
                    on_drift: OnDrift::Reapply,
                    drift_check: DEFAULT_DRIFT_CHECK,
                }),
            }),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.inner.dir.join(name)
    }

    pub fn attach(&self, tx: mpsc::Sender<AgentMessage>) -> outbox::Attached {
        self.inner.outbox.attach(tx)
    }

    pub fn resync(&self) {
        // A host that never had a fleet firewall has nothing to report; older controllers
        // and the protocol tests see no new message kind then.
        if lock(&self.inner.st).state.state == "none" {
            return;
        }
        let fw = self.clone();
        tokio::spawn(async move { fw.push().await });
    }

    async fn push(&self) {
        let state = lock(&self.inner.st).state.clone();
        self.inner
            .outbox
            .send(agent_message::Body::Firewall(state))
            .await;
    }

    async fn set_state(&self, state: &str, detail: String) {
        {
            let mut st = lock(&self.inner.st);
            st.state.state = state.into();
            st.state.detail = detail;
            st.state.time_ms = now_ms();
        }
        self.push().await;
    }

    async fn event(&self, kind: &str, message: String) {
        self.inner
            .outbox
            .event(Event {
                time_ms: now_ms(),
                kind: kind.into(),
                subject: "firewall".into(),
                message,
                fields: Default::default(),
            })
            .await;
    }

    /// Restores the confirmed table if it is missing or differs, then checks for drift
    /// forever. Called once at start.
    pub fn start(&self) {
        let fw = self.clone();
        tokio::spawn(async move {
            if let Ok(toml) = std::fs::read_to_string(fw.path("policy.toml")) {
                if let Ok(p) = Policy::parse(&toml) {
                    let mut st = lock(&fw.inner.st);
                    st.on_drift = p.on_drift;
                    st.drift_check = p.drift_check;
                    st.state.policy_sha256 = sha(&toml);
                    st.state.state = "confirmed".into();
                    st.state.time_ms = now_ms();
                }
            }
            loop {
                fw.check_drift().await;
                // Re-read the period every second: a newly confirmed policy may shorten it,
                // and a long sleep taken under the old period must not hide drift meanwhile.
                let start = tokio::time::Instant::now();
                while start.elapsed() < lock(&fw.inner.st).drift_check {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }

    async fn check_drift(&self) {
        let desired = self.path("desired.nft");
        if !desired.exists() || lock(&self.inner.st).pending.is_some() {
            return;
        }
        let expected = std::fs::read_to_string(self.path("expected.txt")).unwrap_or_default();
        let live = listing().await;
        if live.as_deref() == Some(expected.as_str()) {
            return;
        }
        let what = if live.is_none() {
            "the fleet table is missing (ruleset flushed?)"
        } else {
            "the fleet table differs from the confirmed policy (edited by hand?)"
        };
        let on_drift = lock(&self.inner.st).on_drift;
        tracing::warn!(?on_drift, "firewall drift: {what}");
        self.event("firewall.drift", what.to_owned()).await;
        match on_drift {
            OnDrift::Report => self.set_state("drift", what.to_owned()).await,
            OnDrift::Reapply => match load(&desired).await {
                Ok(()) => {
                    if let Some(l) = listing().await {
                        let _ = write(&self.path("expected.txt"), &l);
                    }
                    self.set_state("confirmed", format!("re-applied after drift: {what}"))
                        .await;
                }
                Err(e) => {
                    tracing::error!("cannot re-apply the firewall: {e}");
                    self.set_state("drift", format!("{what}; re-apply failed: {e}"))
                        .await;
                }
            },
        }
    }

    pub fn dispatch(&self, c: Command) {
        let fw = self.clone();
        tokio::spawn(async move {
            let outcome = match c.kind {
                Some(command::Kind::ApplyFirewall(a)) => fw.apply(a).await,
                Some(command::Kind::ConfirmFirewall(cf)) => fw.confirm(cf).await,
                _ => Err("not a firewall command".into()),
            };
            let (status, message) = match outcome {
                Ok(m) => (command_result::Status::Ok, m),
                Err(m) => (command_result::Status::Failed, m),
            };
            fw.inner
                .outbox
                .send(agent_message::Body::Result(CommandResult {
                    id: c.id,
                    status: status as i32,
                    message,
                }))
                .await;
        });
    }

    fn controller_ip(&self) -> Option<IpAddr> {
        self.inner
            .controller
            .to_socket_addrs()
            .ok()?
            .next()
            .map(|a| a.ip())
    }

    async fn apply(&self, a: ApplyFirewall) -> Result<String, String> {
        if let Some(p) = &lock(&self.inner.st).pending {
            return Err(format!(
                "failed: change {} is still waiting for confirmation",
                p.apply_id
            ));
        }
        if a.apply_id.is_empty() || !a.apply_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("failed: apply id must be hex".into());
        }
        let policy = Policy::parse(&a.policy_toml).map_err(|e| format!("invalid: {e}"))?;
        let lockouts = policy.lockouts(&self.inner.host, self.controller_ip());
        if !lockouts.is_empty() && !a.force {
            return Err(format!(
                "refused: {} (nothing changed; use --force to apply anyway)",
                lockouts.join("; ")
            ));
        }
        let apps: Vec<(String, u16)> = a
            .app_ports
            .iter()
            .filter_map(|p| Some((p.app.clone(), u16::try_from(p.port).ok()?)))
            .collect();
        let candidate = policy.render(&self.inner.host, &apps);
        std::fs::create_dir_all(&self.inner.dir)
            .map_err(|e| format!("failed: cannot create {}: {e}", self.inner.dir.display()))?;
        let cand_path = self.path("candidate.nft");
        write(&cand_path, &candidate).map_err(|e| format!("failed: {e}"))?;
        run(NFT, &["-c", "-f", &cand_path.to_string_lossy()])
            .await
            .map_err(|e| format!("invalid: nft rejected the rendered table: {e}"))?;

        // What to go back to: the live table exactly as it is now (or none at all).
        let mut rollback = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
        if let Some(live) = listing().await {
            rollback.push_str(&live);
        }
        let rb_path = self.path("rollback.nft");
        write(&rb_path, &rollback).map_err(|e| format!("failed: {e}"))?;
        run(NFT, &["-c", "-f", &rb_path.to_string_lossy()])
            .await
            .map_err(|e| format!("failed: the saved table does not reload: {e}"))?;

        let short = &a.apply_id[..a.apply_id.len().min(12)];
        let timer = format!("fleet-firewall-revert-{short}");
        let secs = policy.confirm_timeout.as_secs().to_string();
        run(
            "systemd-run",
            &[
                &format!("--unit={timer}"),
                "--description=fleet: restore the firewall unless the change is confirmed",
                &format!("--on-active={secs}s"),
                "--timer-property=AccuracySec=100ms",
                NFT,
                "-f",
                &rb_path.to_string_lossy(),
            ],
        )
        .await
        .map_err(|e| format!("failed: cannot arm the revert timer, nothing changed: {e}"))?;

        if let Err(e) = load(&cand_path).await {
            let _ = run("systemctl", &["stop", &format!("{timer}.timer")]).await;
            return Err(format!("failed: {e}"));
        }
        let listing = listing().await.unwrap_or_default();
        lock(&self.inner.st).pending = Some(Pending {
            apply_id: a.apply_id.clone(),
            timer,
            policy_toml: a.policy_toml.clone(),
            candidate,
            listing,
        });
        self.set_state(
            "pending",
            format!(
                "applied {}; reverts in {secs}s unless confirmed",
                &sha(&a.policy_toml)[..12]
            ),
        )
        .await;
        // The timer does the revert; this only keeps our own state honest.
        let fw = self.clone();
        let id = a.apply_id.clone();
        let wait = policy.confirm_timeout + REVERT_SLACK;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let expired = {
                let mut st = lock(&fw.inner.st);
                if st.pending.as_ref().is_some_and(|p| p.apply_id == id) {
                    st.pending = None;
                    true
                } else {
                    false
                }
            };
            if expired {
                let msg = format!("change {id} was not confirmed: previous rules restored");
                tracing::warn!("{msg}");
                fw.event("firewall.reverted", msg.clone()).await;
                fw.set_state("reverted", msg).await;
            }
        });
        let mut msg = format!("applied; reverts in {secs}s unless confirmed");
        if !lockouts.is_empty() {
            msg.push_str(&format!(" (forced past: {})", lockouts.join("; ")));
        }
        tracing::info!(apply_id = %a.apply_id, "firewall change applied, waiting for confirmation");
        Ok(msg)
    }

    async fn confirm(&self, c: ConfirmFirewall) -> Result<String, String> {
        let pending = {
            let mut st = lock(&self.inner.st);
            match &st.pending {
                Some(p) if p.apply_id == c.apply_id => st.pending.take(),
                _ => None,
            }
        };
        let Some(p) = pending else {
            return Err(format!(
                "change {} is not waiting for confirmation (already reverted?)",
                c.apply_id
            ));
        };
        let timer = format!("{}.timer", p.timer);
        // A timer that is no longer waiting has fired (or is firing): too late.
        let active = run("systemctl", &["is-active", &timer]).await;
        if active.map(|s| s.trim() == "active").unwrap_or(false) {
            run("systemctl", &["stop", &timer])
                .await
                .map_err(|e| format!("cannot disarm the revert timer: {e}"))?;
        } else {
            return Err("the revert timer already fired: previous rules restored".into());
        }
        let live = listing().await.unwrap_or_default();
        if live != p.listing {
            return Err("the table changed before confirmation: not confirmed".into());
        }
        write(&self.path("desired.nft"), &p.candidate)?;
        write(&self.path("expected.txt"), &p.listing)?;
        write(&self.path("policy.toml"), &p.policy_toml)?;
        if let Ok(policy) = Policy::parse(&p.policy_toml) {
            let mut st = lock(&self.inner.st);
            st.on_drift = policy.on_drift;
            st.drift_check = policy.drift_check;
            st.state.policy_sha256 = sha(&p.policy_toml);
        }
        if let Err(e) = self.persist().await {
            tracing::warn!("firewall confirmed but not persisted across nftables restarts: {e}");
        }
        self.set_state("confirmed", String::new()).await;
        tracing::info!(apply_id = %c.apply_id, "firewall change confirmed");
        Ok("confirmed".into())
    }

    /// Installs the oneshot that reloads the confirmed table after boot and whenever
    /// nftables.service (re)starts; PartOf makes a restart of nftables restart it too.
    async fn persist(&self) -> Result<(), String> {
        let unit = persist_unit(&self.path("desired.nft"));
        if std::fs::read_to_string(PERSIST_PATH).ok().as_deref() != Some(unit.as_str()) {
            write(Path::new(PERSIST_PATH), &unit)?;
            run("systemctl", &["daemon-reload"]).await?;
        }
        run("systemctl", &["enable", PERSIST_UNIT]).await?;
        // Active (RemainAfterExit) so that PartOf propagates nftables restarts to it.
        run("systemctl", &["start", PERSIST_UNIT]).await.map(|_| ())
    }
}

fn persist_unit(desired: &Path) -> String {
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

    #[test]
    fn only_firewall_commands_are_handled_here() {
        let c = Command {
            id: "1".into(),
            kind: Some(command::Kind::ConfirmFirewall(ConfirmFirewall::default())),
        };
        assert!(handles(&c));
        let c = Command {
            id: "1".into(),
            kind: Some(command::Kind::Ping(Default::default())),
        };
        assert!(!handles(&c));
    }
}
