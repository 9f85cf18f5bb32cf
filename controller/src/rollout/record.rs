//! The rollout record, the state machine every step rewrites in the store: a leaf the
//! engine, convergence and metrics all read (it uses only `desired::Gate`).

use fleet_proto::spec::Analysis;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::{AnalysisSide, AnalysisVerdict, RolloutBatch, RolloutHost, RolloutInfo};
use serde::{Deserialize, Serialize};

use crate::commands::{CommandError, CommandFailed};
use crate::desired::Gate;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Staging,
    Running,
    Paused,
    /// Every batch passed; the fleet is judged for the analysis' bake.
    Baking,
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
            State::Baking => "baking",
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
    /// The thresholds every batch and the bake are judged with; `None`: health gate only.
    #[serde(default)]
    pub analysis: Option<Thresholds>,
    /// The latest verdict per judged batch (and the bake's last), in batch order.
    #[serde(default)]
    pub verdicts: Vec<VerdictRec>,
    /// While baking: when the bake ends (Unix ms); set once, so a restart keeps the end.
    #[serde(default)]
    pub bake_until_ms: i64,
    /// The previous release as the batches' baseline windows counted it, summed over the
    /// rollout: what the bake compares the fleet with, once no host is left on it.
    #[serde(default)]
    pub reference: Option<ReferenceRec>,
    /// The spec's PromQL gates when the rollout started, as `rollout status` shows them
    /// (the judge reads them from `spec_toml`, checked).
    #[serde(default)]
    pub gates: Vec<GateRec>,
}

/// A PromQL gate as the record keeps it for display.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateRec {
    pub name: String,
    pub prometheus: String,
    pub query: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
}

impl From<&fleet_proto::spec::PromGate> for GateRec {
    fn from(g: &fleet_proto::spec::PromGate) -> GateRec {
        let w = g.to_wire();
        GateRec {
            name: w.name,
            prometheus: w.prometheus,
            query: w.query,
            max: w.max,
            min: w.min,
        }
    }
}

impl GateRec {
    fn wire(&self) -> fleet_proto::v1::AnalysisGate {
        fleet_proto::v1::AnalysisGate {
            name: self.name.clone(),
            prometheus: self.prometheus.clone(),
            query: self.query.clone(),
            max: self.max,
            min: self.min,
        }
    }
}

/// Requests of the previous release summed over the baseline windows of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRec {
    /// The most baseline hosts counted in one window.
    pub hosts: u32,
    pub requests: u64,
    pub errors: u64,
    /// Cumulative per latency bound, then +Inf, as in a window's counts.
    pub buckets: Vec<u64>,
}

impl ReferenceRec {
    pub fn add(&mut self, hosts: u32, requests: u64, errors: u64, buckets: &[u64]) {
        self.hosts = self.hosts.max(hosts);
        self.requests += requests;
        self.errors += errors;
        if self.buckets.len() < buckets.len() {
            self.buckets.resize(buckets.len(), 0);
        }
        for (s, x) in self.buckets.iter_mut().zip(buckets) {
            *s += x;
        }
    }
}

/// `fleet_proto::spec::Analysis` as the record stores it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub window_ms: u64,
    pub min_requests: u64,
    pub max_error_ratio: f64,
    pub max_error_increase: f64,
    pub max_p99_increase: f64,
    pub bake_ms: u64,
}

impl From<Analysis> for Thresholds {
    fn from(a: Analysis) -> Thresholds {
        let w = a.to_wire();
        Thresholds {
            window_ms: w.window_ms,
            min_requests: w.min_requests,
            max_error_ratio: w.max_error_ratio,
            max_error_increase: w.max_error_increase,
            max_p99_increase: w.max_p99_increase,
            bake_ms: w.bake_ms,
        }
    }
}

impl Thresholds {
    pub fn analysis(&self) -> Analysis {
        Analysis {
            window: std::time::Duration::from_millis(self.window_ms),
            min_requests: self.min_requests,
            max_error_ratio: self.max_error_ratio,
            max_error_increase: self.max_error_increase,
            max_p99_increase: self.max_p99_increase,
            bake: std::time::Duration::from_millis(self.bake_ms),
        }
    }
}

/// One side of a judged window, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideRec {
    pub hosts: u32,
    pub requests: u64,
    pub errors: u64,
    pub p99_seconds: f64,
}

/// The latest verdict on a batch (`batch == batches.len()`: the bake).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictRec {
    pub batch: usize,
    pub verdict: String,
    pub message: String,
    pub canary: SideRec,
    pub baseline: Option<SideRec>,
    pub windows: u32,
    pub time_ms: i64,
}

impl From<AnalysisSide> for SideRec {
    fn from(s: AnalysisSide) -> SideRec {
        SideRec {
            hosts: s.hosts,
            requests: s.requests,
            errors: s.errors,
            p99_seconds: s.p99_seconds,
        }
    }
}

impl SideRec {
    fn wire(&self) -> AnalysisSide {
        AnalysisSide {
            hosts: self.hosts,
            requests: self.requests,
            errors: self.errors,
            p99_seconds: self.p99_seconds,
        }
    }
}

/// What the engine does next with a record (also what a restarted controller does).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Stage,
    Batch(usize),
    Finish,
    WaitResume,
    Bake,
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
            State::Baking => Step::Bake,
            State::Reverting => Step::Revert,
            _ => Step::Done,
        }
    }

    /// Records `v` as its batch's latest verdict (one per batch: the record stays
    /// O(batches), however many windows a batch took).
    pub fn set_verdict(&mut self, v: VerdictRec) {
        match self.verdicts.iter_mut().find(|o| o.batch == v.batch) {
            Some(o) => *o = v,
            None => {
                self.verdicts.push(v);
                self.verdicts.sort_by_key(|v| v.batch);
            }
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
            analysis: self.analysis.map(|t| fleet_proto::v1::AnalysisSettings {
                gates: self.gates.iter().map(GateRec::wire).collect(),
                ..t.analysis().to_wire()
            }),
            verdicts: self
                .verdicts
                .iter()
                .map(|v| AnalysisVerdict {
                    batch: v.batch as u32,
                    verdict: v.verdict.clone(),
                    message: v.message.clone(),
                    canary: Some(v.canary.wire()),
                    baseline: v.baseline.as_ref().map(SideRec::wire),
                    windows: v.windows,
                    time_ms: v.time_ms,
                })
                .collect(),
            bake_until_ms: self.bake_until_ms,
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
            analysis: None,
            verdicts: Vec::new(),
            bake_until_ms: 0,
            reference: None,
            gates: Vec::new(),
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
        r.state = State::Baking;
        assert_eq!(r.next_step(), Step::Bake);
        assert!(!r.state.terminal(), "a bake resumes after a restart");
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

#[cfg(test)]
mod verdict_tests {
    use super::tests::record;
    use super::*;

    fn verdict(batch: usize, v: &str) -> VerdictRec {
        VerdictRec {
            batch,
            verdict: v.into(),
            message: format!("batch {batch} {v}"),
            canary: SideRec {
                hosts: 1,
                requests: 300,
                errors: 1,
                p99_seconds: 0.02,
            },
            baseline: None,
            windows: 1,
            time_ms: 5,
        }
    }

    #[test]
    fn one_verdict_per_batch_in_batch_order() {
        let mut r = record(5);
        r.set_verdict(verdict(1, "wait"));
        r.set_verdict(verdict(0, "pass"));
        r.set_verdict(verdict(1, "pass"));
        let got: Vec<_> = r
            .verdicts
            .iter()
            .map(|v| (v.batch, v.verdict.as_str()))
            .collect();
        assert_eq!(got, [(0, "pass"), (1, "pass")]);
        assert_eq!(r.info().verdicts[1].message, "batch 1 pass");
    }

    #[test]
    fn analysis_fields_survive_the_store_and_old_records_read() {
        let mut r = record(3);
        r.analysis = Some(Analysis::default().into());
        r.set_verdict(verdict(0, "fail"));
        r.state = State::Baking;
        r.bake_until_ms = 42;
        let mut reference = ReferenceRec::default();
        reference.add(3, 100, 1, &[50, 100]);
        reference.add(2, 100, 2, &[60, 100]);
        assert_eq!((reference.hosts, reference.errors), (3, 3));
        assert_eq!(reference.buckets, [110, 200]);
        r.reference = Some(reference);
        r.gates = vec![GateRec {
            name: "errors".into(),
            prometheus: "http://p:9090".into(),
            query: "up".into(),
            max: Some(1.0),
            min: None,
        }];
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.analysis.unwrap().analysis(), Analysis::default());
        assert_eq!(r.info().state, "baking");
        assert_eq!(r.info().analysis.unwrap().min_requests, 200);
        assert_eq!(r.info().analysis.unwrap().gates[0].name, "errors");
        // A record written before analysis existed still reads.
        let mut old = serde_json::to_value(record(2)).unwrap();
        for k in [
            "analysis",
            "verdicts",
            "bake_until_ms",
            "reference",
            "gates",
        ] {
            old.as_object_mut().unwrap().remove(k);
        }
        let old: Record = serde_json::from_value(old).unwrap();
        assert_eq!(
            (old.analysis, old.verdicts.len(), old.bake_until_ms),
            (None, 0, 0)
        );
        assert_eq!((old.reference, old.gates.len()), (None, 0));
    }
}
