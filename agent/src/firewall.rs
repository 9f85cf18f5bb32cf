//! The agent's firewall: it owns exactly the `inet fleet` nftables table.
//!
//! A change is commit-confirmed. The agent checks the candidate (`nft -c`), saves the live
//! table, arms a transient systemd timer that loads the saved table back, applies the
//! candidate in one transaction and answers; only a ConfirmFirewall for the same apply id
//! stops the timer. The timer belongs to systemd, not to us, so a crashed or killed agent
//! cannot leave the host on unconfirmed rules, and rules that cut the controller off undo
//! themselves.
//!
//! The change waiting for confirmation is also written to the state dir: an agent that
//! restarts has lost the stream that carried the change, so it can never be confirmed; the
//! agent then reverts it at once instead of waiting for the timer (and never re-applies it).
//! After a revert the agent starts a new session right away: a stream that lived under rules
//! that cut it is stuck in TCP retransmission backoff long after the rules are gone.
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
use tokio::sync::{mpsc, Notify};

use crate::clock::now_ms;
use crate::metrics::Flag;
use crate::outbox::{self, Outbox};

const NFT: &str = "/usr/sbin/nft";
const PERSIST_UNIT: &str = "fleet-firewall.service";
const PERSIST_PATH: &str = "/etc/systemd/system/fleet-firewall.service";
/// In the firewall state dir: "APPLY_ID\nTIMER\n" while a change waits for confirmation.
const PENDING_FILE: &str = "pending";
/// How long after the deadline the agent waits for the timer's `nft -f` to finish before
/// it reloads the saved table itself.
const REVERT_SLACK: Duration = Duration::from_secs(5);

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
    drift: Flag,
    dir: PathBuf,
    host: String,
    controller: String,
    outbox: Outbox,
    st: Mutex<St>,
    /// One apply at a time: two interleaved applies would each save the other's rules.
    applying: tokio::sync::Mutex<()>,
    /// Signalled when an unconfirmed change was reverted by its deadline.
    reverted: Notify,
}

struct St {
    pending: Option<Pending>,
    /// A revert is being finished: the table is not the confirmed one, and that is no drift.
    reverting: bool,
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
    /// The table before the change (None: there was none), to check the revert.
    previous: Option<String>,
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

/// True while `unit` is armed (a timer) or running (a service).
async fn unit_busy(unit: &str) -> bool {
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
async fn load(path: &Path) -> Result<(), String> {
    let p = path.to_string_lossy();
    run(NFT, &["-c", "-f", &p])
        .await
        .map_err(|e| format!("invalid candidate: {e}"))?;
    run(NFT, &["-f", &p]).await.map(|_| ())
}

/// Through the fsync'ing atomic write: the pending file decides a revert after a crash, so
/// a power cut must leave the old file or the new one, never an empty one.
fn write(path: &Path, text: &str) -> Result<(), String> {
    fleet_proto::files::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| e.to_string())
}

impl Firewall {
    /// `drift` is raised while the state is `drift` (the `fleet_firewall_drift` metric).
    pub fn new(agent_state: &Path, host: &str, controller: &str, drift: Flag) -> Firewall {
        Firewall {
            inner: Arc::new(Inner {
                drift,
                dir: agent_state.join("firewall"),
                host: host.to_owned(),
                controller: controller.to_owned(),
                outbox: Outbox::default(),
                applying: tokio::sync::Mutex::new(()),
                reverted: Notify::new(),
                st: Mutex::new(St {
                    pending: None,
                    reverting: false,
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

    /// Resolves once an unconfirmed change was reverted by its deadline: the stream that
    /// carried it may have been cut, and a fresh one should be opened right away. A revert
    /// while nobody waits is remembered for the next caller.
    pub async fn reverted(&self) {
        self.inner.reverted.notified().await
    }

    pub fn resync(&self) {
        // A host that never had a fleet firewall has nothing to report; older controllers
        // and the protocol tests see no new message kind then.
        if lock(&self.inner.st).state.state == "none" {
            return;
        }
        let fw = self.clone();
        tokio::spawn(async move {
            // Drift and revert events from while we were cut off, then the state.
            fw.inner.outbox.flush_events().await;
            fw.push().await
        });
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
        self.inner.drift.set(state == "drift");
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
            fw.recover_unconfirmed().await;
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
        {
            let st = lock(&self.inner.st);
            if !desired.exists() || st.pending.is_some() || st.reverting {
                return;
            }
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
        let _one_at_a_time = self.inner.applying.lock().await;
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

        // What to go back to: the live table exactly as it is now (or none at all), as one
        // transaction like every other load.
        let mut rollback = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
        let previous = listing().await;
        if let Some(live) = &previous {
            rollback.push_str(live);
        }
        let rb_path = self.path("rollback.nft");
        write(&rb_path, &rollback).map_err(|e| format!("failed: {e}"))?;
        run(NFT, &["-c", "-f", &rb_path.to_string_lossy()])
            .await
            .map_err(|e| format!("failed: the saved table does not reload: {e}"))?;

        let short = &a.apply_id[..a.apply_id.len().min(12)];
        let timer = format!("fleet-firewall-revert-{short}");
        let secs = policy.confirm_timeout.as_secs().to_string();
        // Written before the timer is armed: an agent that dies from here on reverts on start.
        write(
            &self.path(PENDING_FILE),
            &format!("{}\n{timer}\n", a.apply_id),
        )
        .map_err(|e| format!("failed: {e}"))?;
        let armed = run(
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
        .await;
        if let Err(e) = armed {
            let _ = std::fs::remove_file(self.path(PENDING_FILE));
            return Err(format!(
                "failed: cannot arm the revert timer, nothing changed: {e}"
            ));
        }

        if let Err(e) = load(&cand_path).await {
            let _ = run("systemctl", &["stop", &format!("{timer}.timer")]).await;
            let _ = std::fs::remove_file(self.path(PENDING_FILE));
            return Err(format!("failed: {e}"));
        }
        let listing = listing().await.unwrap_or_default();
        lock(&self.inner.st).pending = Some(Pending {
            apply_id: a.apply_id.clone(),
            timer,
            policy_toml: a.policy_toml.clone(),
            candidate,
            listing,
            previous,
        });
        self.set_state(
            "pending",
            format!(
                "applied {}; reverts in {secs}s unless confirmed",
                &sha(&a.policy_toml)[..12]
            ),
        )
        .await;
        // The timer does the revert; this checks it happened and reports it.
        let fw = self.clone();
        let id = a.apply_id.clone();
        let deadline = policy.confirm_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            let expired = {
                let mut st = lock(&fw.inner.st);
                match &st.pending {
                    Some(p) if p.apply_id == id => {
                        st.reverting = true;
                        st.pending.take()
                    }
                    _ => None,
                }
            };
            if let Some(p) = expired {
                // The stream that carried the change was probably cut by it.
                fw.finish_revert(p, "was not confirmed in time", true).await;
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
                Some(p) if p.apply_id == c.apply_id => {
                    st.reverting = true;
                    st.pending.take()
                }
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
        if !unit_busy(&timer).await {
            let msg = self.finish_revert(p, "was confirmed too late", false).await;
            return Err(msg);
        }
        if let Err(e) = run("systemctl", &["stop", &timer]).await {
            let e = format!("cannot disarm the revert timer: {e}");
            let mut st = lock(&self.inner.st);
            st.pending = Some(p);
            st.reverting = false;
            return Err(e);
        }
        lock(&self.inner.st).reverting = false;
        let _ = std::fs::remove_file(self.path(PENDING_FILE));
        let live = listing().await.unwrap_or_default();
        if live != p.listing {
            // The timer fired while we stopped it, or someone edited the table meanwhile.
            let msg = format!(
                "change {}: the table changed before confirmation: not confirmed",
                p.apply_id
            );
            self.set_state("reverted", msg.clone()).await;
            return Err(msg);
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

    /// After the deadline of an unconfirmed change: waits for the timer's revert to finish,
    /// reloads the saved table itself if the timer did not (nft -f is one transaction, and
    /// loading the same table twice changes nothing), then reports `reverted`.
    async fn finish_revert(&self, p: Pending, why: &str, reconnect: bool) -> String {
        let timer = format!("{}.timer", p.timer);
        let service = format!("{}.service", p.timer);
        let start = tokio::time::Instant::now();
        while (unit_busy(&timer).await || unit_busy(&service).await)
            && start.elapsed() < REVERT_SLACK
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let msg = if listing().await == p.previous {
            format!("change {} {why}: previous rules restored", p.apply_id)
        } else {
            let _ = self.revert_now(&p.timer).await;
            if listing().await == p.previous {
                format!(
                    "change {} {why}: previous rules restored by the agent (the timer did not)",
                    p.apply_id
                )
            } else {
                format!(
                    "change {} {why}, but the previous rules could not be restored: check `nft list table {TABLE}`",
                    p.apply_id
                )
            }
        };
        // Normally gone by now; a timer that outlived REVERT_SLACK must not fire later.
        let _ = run("systemctl", &["stop", &timer]).await;
        let _ = std::fs::remove_file(self.path(PENDING_FILE));
        lock(&self.inner.st).reverting = false;
        tracing::warn!("{msg}");
        // Before reporting: reports queue on the current stream, which may be the cut one;
        // the new session re-sends the state anyway.
        if reconnect {
            self.inner.reverted.notify_one();
        }
        self.event("firewall.reverted", msg.clone()).await;
        self.set_state("reverted", msg.clone()).await;
        msg
    }

    /// Disarms the timer and loads the saved table now.
    async fn revert_now(&self, timer: &str) -> Result<(), String> {
        let _ = run("systemctl", &["stop", &format!("{timer}.timer")]).await;
        load(&self.path("rollback.nft")).await.map_err(|e| {
            tracing::error!("cannot restore the previous firewall table: {e}");
            e
        })
    }

    /// At start: a change that was waiting for confirmation when the agent stopped (crash,
    /// kill, reboot) can no longer be confirmed, so it is reverted now rather than left to
    /// cut the new session off until the timer fires.
    async fn recover_unconfirmed(&self) {
        let Ok(text) = std::fs::read_to_string(self.path(PENDING_FILE)) else {
            return;
        };
        let mut lines = text.lines();
        let valid = |id: &str, timer: &str| {
            !id.is_empty()
                && id.chars().all(|c| c.is_ascii_hexdigit())
                && timer
                    .strip_prefix("fleet-firewall-revert-")
                    .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
        };
        let (Some(apply_id), Some(timer)) = (lines.next(), lines.next()) else {
            let _ = std::fs::remove_file(self.path(PENDING_FILE));
            return;
        };
        if !valid(apply_id, timer) {
            tracing::error!("ignoring a malformed {PENDING_FILE} file in the firewall state dir");
            let _ = std::fs::remove_file(self.path(PENDING_FILE));
            return;
        }
        let service = format!("{timer}.service");
        // A revert already running finishes first; then the saved table is loaded again,
        // which is the same table (or none) either way.
        let start = tokio::time::Instant::now();
        while unit_busy(&service).await && start.elapsed() < REVERT_SLACK {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let msg = match self.revert_now(timer).await {
            Ok(()) => format!(
                "change {apply_id} was not confirmed before the agent restarted: previous rules restored"
            ),
            Err(e) => format!(
                "change {apply_id} was not confirmed before the agent restarted, and the previous rules could not be restored: {e}"
            ),
        };
        let _ = std::fs::remove_file(self.path(PENDING_FILE));
        tracing::warn!("{msg}");
        self.event("firewall.reverted", msg.clone()).await;
        // Pushed too: the first session may have started (and resynced) meanwhile.
        self.set_state("reverted", msg).await;
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
