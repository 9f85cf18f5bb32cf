//! The rollout record, the state machine every step rewrites in the store: a leaf the
//! engine, convergence and metrics all read (it uses only `desired::Gate`).

use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::{RolloutBatch, RolloutHost, RolloutInfo};
use serde::{Deserialize, Serialize};

use crate::commands::{CommandError, CommandFailed};
use crate::desired::Gate;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Staging,
    Running,
    Paused,
    Reverting,
    Succeeded,
    Reverted,
    Failed,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Staging => "staging",
            State::Running => "running",
            State::Paused => "paused",
            State::Reverting => "reverting",
            State::Succeeded => "succeeded",
            State::Reverted => "reverted",
            State::Failed => "failed",
            State::Aborted => "aborted",
        }
    }

    pub fn terminal(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Reverted | State::Failed | State::Aborted
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Staged,
    Switching,
    Healthy,
    Failed,
    Skipped,
    Reverting,
    Reverted,
    RevertFailed,
    Converged,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Staged => "staged",
            Phase::Switching => "switching",
            Phase::Healthy => "healthy",
            Phase::Failed => "failed",
            Phase::Skipped => "skipped",
            Phase::Reverting => "reverting",
            Phase::Reverted => "reverted",
            Phase::RevertFailed => "revert_failed",
            Phase::Converged => "converged",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStep {
    pub host: String,
    pub batch: usize,
    pub phase: Phase,
    /// Release the host ran when the rollout started.
    pub previous: Option<String>,
    /// An Activate of the new release was sent: the host needs a revert on failure.
    pub switched: bool,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub app: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// The spec at start: a spec change mid-rollout does not change what is rolled out.
    pub spec_toml: String,
    pub canary: usize,
    pub batches: Vec<Vec<String>>,
    pub hosts: Vec<HostStep>,
    pub current_batch: usize,
    pub state: State,
    pub min_healthy_ms: u64,
    pub healthy_deadline_ms: u64,
    pub auto_revert: bool,
    pub skip_down: bool,
    pub rollback: bool,
    /// Set by abort: the revert (if any) ends in `aborted`, not `reverted`.
    pub aborted: bool,
    /// The spec's pre-start hook ran (and succeeded): a resumed rollout does not rerun it.
    #[serde(default)]
    pub pre_start_done: bool,
    pub actor: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub message: String,
}

/// What the engine does next with a record (also what a restarted controller does).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Stage,
    Batch(usize),
    Finish,
    WaitResume,
    Revert,
    Done,
}

impl Record {
    pub fn host(&self, name: &str) -> Option<&HostStep> {
        self.hosts.iter().find(|h| h.host == name)
    }

    pub(crate) fn host_mut(&mut self, name: &str) -> &mut HostStep {
        self.hosts
            .iter_mut()
            .find(|h| h.host == name)
            .expect("host of this rollout")
    }

    /// The health gate every activation of this rollout uses.
    pub fn gate(&self) -> Gate {
        Gate {
            min_healthy_ms: self.min_healthy_ms,
            healthy_deadline_ms: self.healthy_deadline_ms,
        }
    }

    pub fn next_step(&self) -> Step {
        match self.state {
            State::Staging => Step::Stage,
            State::Running if self.current_batch < self.batches.len() => {
                Step::Batch(self.current_batch)
            }
            State::Running => Step::Finish,
            State::Paused => Step::WaitResume,
            State::Reverting => Step::Revert,
            _ => Step::Done,
        }
    }

    /// Hosts that still need to go back: switched and not yet reverted.
    pub fn to_revert(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.switched && h.phase != Phase::Reverted)
            .map(|h| h.host.clone())
            .collect()
    }

    /// Halts at a failure: revert what was switched, or end failed.
    pub fn halt(&mut self, why: String) {
        self.message = why;
        self.state = if self.auto_revert && self.hosts.iter().any(|h| h.switched) {
            State::Reverting
        } else if self.aborted {
            State::Aborted
        } else {
            State::Failed
        };
    }

    /// The end state once the revert has run.
    pub fn after_revert(&self) -> State {
        if self.aborted {
            State::Aborted
        } else if self.hosts.iter().any(|h| h.phase == Phase::RevertFailed) {
            State::Failed
        } else {
            State::Reverted
        }
    }

    pub fn info(&self) -> RolloutInfo {
        RolloutInfo {
            id: self.id.clone(),
            app: self.app.clone(),
            version: self.version.clone(),
            state: self.state.as_str().into(),
            batches: self
                .batches
                .iter()
                .map(|b| RolloutBatch { hosts: b.clone() })
                .collect(),
            hosts: self
                .hosts
                .iter()
                .map(|h| RolloutHost {
                    host: h.host.clone(),
                    batch: h.batch as u32,
                    phase: h.phase.as_str().into(),
                    previous: h.previous.clone().unwrap_or_default(),
                    message: h.message.clone(),
                })
                .collect(),
            current_batch: self.current_batch as u32,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            message: self.message.clone(),
            auto_revert: self.auto_revert,
            skip_down: self.skip_down,
            min_healthy_ms: self.min_healthy_ms,
            healthy_deadline_ms: self.healthy_deadline_ms,
            canary: self.canary as u32,
            actor: self.actor.clone(),
        }
    }
}

/// A command's result as the message on success or the reason it failed.
pub fn outcome(
    r: Result<fleet_proto::v1::CommandResult, CommandError>,
) -> Result<String, CommandFailed> {
    match r {
        Ok(r) if r.status == CmdStatus::Ok as i32 => Ok(r.message),
        Ok(r) if r.status == CmdStatus::Unsupported as i32 => {
            Err(CommandFailed::Unsupported(r.message))
        }
        Ok(r) => Err(CommandFailed::Agent(r.message)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rollout::plan::plan_batches;

    pub(crate) fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("host{i}")).collect()
    }

    pub(crate) fn record(n: usize) -> Record {
        let batches = plan_batches(&names(n), 1, 2);
        Record {
            id: "shop/1".into(),
            app: "shop".into(),
            version: "2.0".into(),
            sha256: String::new(),
            size: 0,
            spec_toml: String::new(),
            canary: 1,
            hosts: batches
                .iter()
                .enumerate()
                .flat_map(|(i, b)| {
                    b.iter().map(move |h| HostStep {
                        host: h.clone(),
                        batch: i,
                        phase: Phase::Pending,
                        previous: Some("1.0".into()),
                        switched: false,
                        message: String::new(),
                    })
                })
                .collect(),
            batches,
            current_batch: 0,
            state: State::Staging,
            min_healthy_ms: 2000,
            healthy_deadline_ms: 60000,
            auto_revert: true,
            skip_down: false,
            rollback: false,
            aborted: false,
            pre_start_done: false,
            actor: "admin".into(),
            started_ms: 1,
            ended_ms: 0,
            message: String::new(),
        }
    }

    #[test]
    fn steps_follow_the_record() {
        let mut r = record(5);
        assert_eq!(r.next_step(), Step::Stage);
        r.state = State::Running;
        assert_eq!(r.next_step(), Step::Batch(0));
        r.current_batch = 2;
        assert_eq!(r.next_step(), Step::Batch(2));
        r.current_batch = 3;
        assert_eq!(r.next_step(), Step::Finish);
        r.state = State::Paused;
        assert_eq!(r.next_step(), Step::WaitResume);
        r.state = State::Succeeded;
        assert_eq!(r.next_step(), Step::Done);
    }

    #[test]
    fn halt_reverts_only_switched_hosts() {
        let mut r = record(5);
        r.state = State::Running;
        for h in ["host1", "host2", "host3"] {
            r.host_mut(h).switched = true;
        }
        r.host_mut("host1").phase = Phase::Healthy;
        r.host_mut("host2").phase = Phase::Healthy;
        r.host_mut("host3").phase = Phase::Failed;
        r.halt("host3 failed".into());
        assert_eq!(r.state, State::Reverting);
        assert_eq!(r.next_step(), Step::Revert);
        assert_eq!(r.to_revert(), ["host1", "host2", "host3"]);
        // Resuming a half-done revert only redoes what is left.
        r.host_mut("host1").phase = Phase::Reverted;
        assert_eq!(r.to_revert(), ["host2", "host3"]);
        r.host_mut("host2").phase = Phase::Reverted;
        r.host_mut("host3").phase = Phase::Reverted;
        assert_eq!(r.after_revert(), State::Reverted);
        r.host_mut("host3").phase = Phase::RevertFailed;
        assert_eq!(r.after_revert(), State::Failed);
        r.aborted = true;
        assert_eq!(r.after_revert(), State::Aborted);
    }

    #[test]
    fn halt_without_switched_hosts_or_auto_revert_fails() {
        let mut r = record(3);
        r.halt("staging failed".into());
        assert_eq!(r.state, State::Failed);
        let mut r = record(3);
        r.auto_revert = false;
        r.host_mut("host1").switched = true;
        r.halt("canary failed".into());
        assert_eq!(r.state, State::Failed);
        let mut r = record(3);
        r.aborted = true;
        r.halt("aborted".into());
        assert_eq!(r.state, State::Aborted);
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = record(4);
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.info().hosts.len(), 4);
        assert_eq!(r.info().state, "staging");
    }
}
