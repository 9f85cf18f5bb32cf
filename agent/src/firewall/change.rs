//! A commit-confirmed change: apply with a revert timer armed, confirm, or revert (by the
//! deadline, or at start for a change the agent can no longer confirm). Owns the
//! `pending` file in the firewall state dir.

use std::time::Duration;

use fleet_proto::files::FileError;
use fleet_proto::firewall::{Policy, PolicyError, TABLE};
use fleet_proto::v1::{ApplyFirewall, ConfirmFirewall};

use super::nft::{listing, load, run, unit_busy, NftError, NFT};
use super::{lock, sha, write, Firewall};

/// Why a change was not applied or not confirmed; the text is what the operator reads.
/// The `failed:` / `invalid:` / `refused:` prefixes tell fleetctl's user which kind it was.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChangeError {
    #[error("not a firewall command")]
    NotFirewall,
    #[error("failed: change {apply_id} is still waiting for confirmation")]
    StillWaiting { apply_id: String },
    #[error("failed: apply id must be hex")]
    BadApplyId,
    #[error("invalid: {0}")]
    Policy(PolicyError),
    #[error("refused: {lockouts} (nothing changed; use --force to apply anyway)")]
    Lockout { lockouts: String },
    #[error("failed: cannot create {}: {source}", dir.display())]
    StateDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("failed: {0}")]
    Write(FileError),
    #[error("invalid: nft rejected the rendered table: {0}")]
    Rendered(NftError),
    #[error("failed: the saved table does not reload: {0}")]
    Rollback(NftError),
    #[error("failed: cannot arm the revert timer, nothing changed: {0}")]
    ArmTimer(NftError),
    #[error("failed: {0}")]
    Load(NftError),
    #[error("change {apply_id} is not waiting for confirmation (already reverted?)")]
    NotWaiting { apply_id: String },
    /// The revert's own report (the timer fired before the confirmation came).
    #[error("{0}")]
    TooLate(String),
    #[error("cannot disarm the revert timer: {0}")]
    Disarm(NftError),
    #[error("change {apply_id}: the table changed before confirmation: not confirmed")]
    ChangedBeforeConfirm { apply_id: String },
    #[error("{0}")]
    Save(FileError),
}

/// In the firewall state dir: "APPLY_ID\nTIMER\n" while a change waits for confirmation.
const PENDING_FILE: &str = "pending";

/// How long after the deadline the agent waits for the timer's `nft -f` to finish before
/// it reloads the saved table itself.
const REVERT_SLACK: Duration = Duration::from_secs(5);

pub(super) struct Pending {
    apply_id: String,
    timer: String,
    policy_toml: String,
    candidate: String,
    /// `nft list table` right after applying, for the post-confirm drift baseline.
    listing: String,
    /// The table before the change (None: there was none), to check the revert.
    previous: Option<String>,
}

impl Firewall {
    pub(super) async fn apply(&self, a: ApplyFirewall) -> Result<String, ChangeError> {
        let _one_at_a_time = self.inner.applying.lock().await;
        if let Some(p) = &lock(&self.inner.st).pending {
            return Err(ChangeError::StillWaiting {
                apply_id: p.apply_id.clone(),
            });
        }
        if a.apply_id.is_empty() || !a.apply_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ChangeError::BadApplyId);
        }
        let policy = Policy::parse(&a.policy_toml).map_err(ChangeError::Policy)?;
        // Every controller the agent may connect to must stay reachable, not just one.
        let ips = self.controller_ips();
        let mut lockouts = policy.lockouts(&self.inner.host, ips.first().copied());
        for ip in ips.iter().skip(1) {
            for l in policy.lockouts(&self.inner.host, Some(*ip)) {
                if !lockouts.contains(&l) {
                    lockouts.push(l);
                }
            }
        }
        if !lockouts.is_empty() && !a.force {
            return Err(ChangeError::Lockout {
                lockouts: lockouts.join("; "),
            });
        }
        let apps: Vec<(String, u16)> = a
            .app_ports
            .iter()
            .filter_map(|p| Some((p.app.clone(), u16::try_from(p.port).ok()?)))
            .collect();
        let candidate = policy.render(&self.inner.host, &apps);
        std::fs::create_dir_all(&self.inner.dir).map_err(|source| ChangeError::StateDir {
            dir: self.inner.dir.clone(),
            source,
        })?;
        let cand_path = self.path("candidate.nft");
        write(&cand_path, &candidate).map_err(ChangeError::Write)?;
        run(NFT, &["-c", "-f", &cand_path.to_string_lossy()])
            .await
            .map_err(ChangeError::Rendered)?;

        // What to go back to: the live table exactly as it is now (or none at all), as one
        // transaction like every other load.
        let mut rollback = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
        let previous = listing().await;
        if let Some(live) = &previous {
            rollback.push_str(live);
        }
        let rb_path = self.path("rollback.nft");
        write(&rb_path, &rollback).map_err(ChangeError::Write)?;
        run(NFT, &["-c", "-f", &rb_path.to_string_lossy()])
            .await
            .map_err(ChangeError::Rollback)?;

        let short = &a.apply_id[..a.apply_id.len().min(12)];
        let timer = format!("fleet-firewall-revert-{short}");
        let secs = policy.confirm_timeout.as_secs().to_string();
        // Written before the timer is armed: an agent that dies from here on reverts on start.
        write(
            &self.path(PENDING_FILE),
            &format!("{}\n{timer}\n", a.apply_id),
        )
        .map_err(ChangeError::Write)?;
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
            return Err(ChangeError::ArmTimer(e));
        }

        if let Err(e) = load(&cand_path).await {
            let _ = run("systemctl", &["stop", &format!("{timer}.timer")]).await;
            let _ = std::fs::remove_file(self.path(PENDING_FILE));
            return Err(ChangeError::Load(e));
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

    pub(super) async fn confirm(&self, c: ConfirmFirewall) -> Result<String, ChangeError> {
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
            return Err(ChangeError::NotWaiting {
                apply_id: c.apply_id,
            });
        };
        let timer = format!("{}.timer", p.timer);
        // A timer that is no longer waiting has fired (or is firing): too late.
        if !unit_busy(&timer).await {
            let msg = self.finish_revert(p, "was confirmed too late", false).await;
            return Err(ChangeError::TooLate(msg));
        }
        if let Err(e) = run("systemctl", &["stop", &timer]).await {
            let e = ChangeError::Disarm(e);
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
            let e = ChangeError::ChangedBeforeConfirm {
                apply_id: p.apply_id,
            };
            self.set_state("reverted", e.to_string()).await;
            return Err(e);
        }
        write(&self.path("desired.nft"), &p.candidate).map_err(ChangeError::Save)?;
        write(&self.path("expected.txt"), &p.listing).map_err(ChangeError::Save)?;
        write(&self.path("policy.toml"), &p.policy_toml).map_err(ChangeError::Save)?;
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
    pub(super) async fn finish_revert(&self, p: Pending, why: &str, reconnect: bool) -> String {
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
    pub(super) async fn revert_now(&self, timer: &str) -> Result<(), NftError> {
        let _ = run("systemctl", &["stop", &format!("{timer}.timer")]).await;
        load(&self.path("rollback.nft")).await.map_err(|e| {
            tracing::error!("cannot restore the previous firewall table: {e}");
            e
        })
    }

    /// At start: a change that was waiting for confirmation when the agent stopped (crash,
    /// kill, reboot) can no longer be confirmed, so it is reverted now rather than left to
    /// cut the new session off until the timer fires.
    pub(super) async fn recover_unconfirmed(&self) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nft_failed() -> NftError {
        NftError::Failed {
            command: "/usr/sbin/nft -c -f candidate.nft".into(),
            stderr: "syntax error".into(),
        }
    }

    #[test]
    fn errors_keep_the_texts_the_operator_reads() {
        assert_eq!(
            ChangeError::BadApplyId.to_string(),
            "failed: apply id must be hex"
        );
        assert_eq!(
            ChangeError::Lockout {
                lockouts: "no ssh; no controller".into()
            }
            .to_string(),
            "refused: no ssh; no controller (nothing changed; use --force to apply anyway)"
        );
        assert_eq!(
            ChangeError::Rendered(nft_failed()).to_string(),
            "invalid: nft rejected the rendered table: /usr/sbin/nft -c -f candidate.nft: \
             syntax error"
        );
        assert_eq!(
            ChangeError::Load(NftError::Invalid(Box::new(nft_failed()))).to_string(),
            "failed: invalid candidate: /usr/sbin/nft -c -f candidate.nft: syntax error"
        );
    }
}
