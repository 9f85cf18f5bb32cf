//! The engine's judging steps (`after_batch` once a batch's health gate passed,
//! `bake_step` after the last batch) and how they ask the hosts: QueryRequests to the judged hosts
//! and to a bounded baseline sample, in parallel with a bound, at both ends of each window;
//! `analysis` turns the two answers into a verdict. The next window starts from the last
//! answers, so each window costs one query per host.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::spec::{Analysis, AppSpec, PromGate};
use fleet_proto::v1::command::Kind;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::{QueryRequests, RequestStats};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::analysis::{
    judge_against, spread, window, CannotJudge, Counts, Judgement, Side, Verdict,
};
use super::drive::{abort, finished_message};
use super::gates;
use super::live::{Control, Live};
use super::record::{HostStep, Phase, SideRec, State, VerdictRec};
use crate::shared::Shared;
use crate::timefmt::now_ms;

/// Queries in flight at once: each is one small message each way.
const QUERY_PARALLEL: usize = 256;
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Hosts of one batch judged at most: a 10 % batch of a big fleet is thousands of hosts,
/// and a ratio over 500 of them is as good as over all (each window queries them all).
const MAX_JUDGED: usize = 500;
/// Hosts still on the previous release compared against, at most: enough traffic for a
/// stable ratio and p99, and a bounded fan-out however large the fleet.
const MAX_BASELINE: usize = 50;
/// A batch without a verdict (too little traffic, unanswered queries) fails after
/// max(healthy-deadline, this many windows): never promoted blind.
const DEADLINE_WINDOWS: u32 = 5;

/// Hosts and the release each is judged on.
type Group = Vec<(String, String)>;

enum Outcome {
    Pass,
    Fail(String),
    /// An operator aborted.
    Aborted,
    /// A newer rollout ended the bake (`--force`).
    Superseded,
}

async fn query(shared: &Shared, app: &str, host: &str) -> Result<RequestStats, CannotJudge> {
    let kind = Kind::QueryRequests(QueryRequests { app: app.into() });
    let r = shared
        .commands
        .call(&shared.sessions, host, kind, QUERY_TIMEOUT)
        .await
        .map_err(|e| CannotJudge::Query(e.to_string()))?;
    if r.status == CmdStatus::Unsupported as i32 {
        return Err(CannotJudge::Query(format!(
            "its agent is too old to count requests ({})",
            r.message
        )));
    }
    if r.status != CmdStatus::Ok as i32 {
        return Err(CannotJudge::Query(r.message));
    }
    r.request_stats
        .ok_or_else(|| CannotJudge::Query("its answer carried no request counts".into()))
}

/// Each host's answer, in its group's order.
type Answers = Vec<Result<RequestStats, CannotJudge>>;

/// Every host's answer, in `group`'s order.
async fn snapshot(shared: &Arc<Shared>, app: &str, group: &Group) -> Answers {
    let slots = Arc::new(Semaphore::new(QUERY_PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (host, _)) in group.iter().enumerate() {
        let (shared, slots, app, host) =
            (shared.clone(), slots.clone(), app.to_owned(), host.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (i, query(&shared, &app, &host).await)
        });
    }
    let mut out: Answers = (0..group.len())
        .map(|_| Err(CannotJudge::Query("no answer".into())))
        .collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, r)) = joined {
            out[i] = r;
        }
    }
    out
}

/// The group's counts over the window, and the hosts that could not be measured.
fn sum(
    group: &Group,
    before: &[Result<RequestStats, CannotJudge>],
    after: &[Result<RequestStats, CannotJudge>],
) -> (Side, Vec<String>) {
    let mut counts = Counts::empty();
    let (mut hosts, mut failed) = (0, Vec::new());
    for (((host, release), b), a) in group.iter().zip(before).zip(after) {
        let w = match (b, a) {
            (Ok(b), Ok(a)) => window(b, a, release),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        match w {
            Ok(c) => {
                counts.add(&c);
                hosts += 1;
            }
            Err(e) => failed.push(format!("{host}: {e}")),
        }
    }
    (Side { hosts, counts }, failed)
}

/// What is judged: the batch's hosts (or the baked fleet's sample) and the baseline.
struct Judged {
    pub app: String,
    pub who: String,
    pub batch: usize,
    pub judged: Group,
    /// Empty: nothing left on the previous release.
    pub baseline: Group,
    pub bake: bool,
    /// Without a baseline (a bake): the previous release as the rollout's baseline
    /// windows counted it, when they counted enough.
    pub reference: Option<Side>,
    /// The release the PromQL gates are asked about, and the gates.
    pub release: String,
    pub gates: Vec<PromGate>,
}

/// What the bake compares the fleet with: the previous release as the batches' baseline
/// windows counted it, if they counted at least `min_requests` (a rollout of one batch,
/// or a record from before references, has none: absolute thresholds only).
fn reference_of(rec: &super::record::Record, min_requests: u64) -> Option<Side> {
    let r = rec
        .reference
        .as_ref()
        .filter(|r| r.requests >= min_requests)?;
    let mut counts = Counts::empty();
    if r.buckets.len() != counts.buckets.len() {
        return None;
    }
    counts.requests = r.requests;
    counts.errors = r.errors;
    counts.buckets.clone_from(&r.buckets);
    Some(Side {
        hosts: r.hosts as usize,
        counts,
    })
}

/// The PromQL gates of the spec the rollout started with (a spec changed since does not
/// change how this rollout is judged).
fn gates_of(spec_toml: &str) -> Vec<PromGate> {
    match AppSpec::parse(spec_toml) {
        Ok(s) => s.gates,
        Err(e) => {
            // It validated when the rollout started; the built-in thresholds still judge.
            tracing::error!(error = %e, "a rollout's stored spec no longer validates: judging without its PromQL gates");
            Vec::new()
        }
    }
}

/// Waits one window; `Some` when an operator (or a newer rollout) stopped it, also by a
/// signal sent before the wait began.
async fn wait_window(live: &Live, d: Duration, bake: bool) -> Option<Outcome> {
    let mut control = live.control.subscribe();
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        match *control.borrow_and_update() {
            Control::Abort => return Some(Outcome::Aborted),
            Control::EndBake if bake => return Some(Outcome::Superseded),
            _ => {}
        }
        tokio::select! {
            _ = &mut sleep => return None,
            changed = control.changed() => {
                if changed.is_err() {
                    (&mut sleep).await;
                    return None;
                }
            }
        }
    }
}

struct Windows<'a> {
    shared: &'a Arc<Shared>,
    live: &'a Live,
    app: String,
    t: Analysis,
    j: Judged,
    /// The last answers of the judged hosts and of the baseline.
    before: (Answers, Answers),
    windows: u32,
}

impl<'a> Windows<'a> {
    async fn start(shared: &'a Arc<Shared>, live: &'a Live, t: Analysis, j: Judged) -> Windows<'a> {
        let app = j.app.clone();
        // Both sides at once: their windows must cover the same time.
        let before = tokio::join!(
            snapshot(shared, &app, &j.judged),
            snapshot(shared, &app, &j.baseline)
        );
        Windows {
            shared,
            live,
            app,
            t,
            j,
            before,
            windows: 0,
        }
    }

    /// Judges the window that just ended and records the verdict; the next window starts
    /// from these answers.
    async fn judge(&mut self) -> Judgement {
        let (judged, baseline, gated) = tokio::join!(
            snapshot(self.shared, &self.app, &self.j.judged),
            snapshot(self.shared, &self.app, &self.j.baseline),
            gates::ask(&self.j.gates, &self.app, &self.j.release, self.t.window)
        );
        let after = (judged, baseline);
        self.windows += 1;
        let (canary, failed) = sum(&self.j.judged, &self.before.0, &after.0);
        let baseline = (!self.j.baseline.is_empty())
            .then(|| sum(&self.j.baseline, &self.before.1, &after.1).0);
        self.before = after;
        let who = &self.j.who;
        // A bake judges the sample hosts that answered: the release already runs
        // everywhere, and one host down must not blind it. A batch is judged whole.
        let (base, base_name) = match (&baseline, &self.j.reference) {
            (Some(b), _) => (Some(b), "baseline"),
            (None, Some(r)) => (Some(r), "rollout baseline"),
            (None, None) => (None, "baseline"),
        };
        let builtin = if failed.is_empty() || (self.j.bake && canary.hosts > 0) {
            judge_against(&self.t, who, &canary, base, base_name)
        } else {
            let more = failed.len().saturating_sub(3);
            Judgement {
                verdict: Verdict::Unknown,
                message: format!(
                    "cannot judge {who} this window: {}{}",
                    failed
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; "),
                    if more > 0 {
                        format!(" (and {more} more hosts)")
                    } else {
                        String::new()
                    }
                ),
            }
        };
        // A failed PromQL gate is evidence on its own, even from a window whose traffic
        // could not be measured.
        let mut judgement = gates::combine(who, builtin, &gated);
        if self.j.bake && judgement.verdict == Verdict::Pass {
            // Nothing is promoted in a bake: the release stays where it is.
            judgement.message = judgement.message.replace(": promoting", ": holds");
        }
        let v = VerdictRec {
            batch: self.j.batch,
            verdict: judgement.verdict.as_str().into(),
            message: judgement.message.clone(),
            canary: SideRec::from(canary.to_wire()),
            baseline: base.map(|b| SideRec::from(b.to_wire())),
            windows: self.windows,
            time_ms: now_ms(),
        };
        // A baseline window with enough traffic is what the bake will compare with.
        let counted = baseline.filter(|b| b.counts.requests >= self.t.min_requests);
        self.live
            .step("analysis", "", self.j.batch, &judgement.message, |r| {
                r.set_verdict(v);
                if let Some(b) = counted {
                    let c = &b.counts;
                    r.reference.get_or_insert_with(Default::default).add(
                        b.hosts as u32,
                        c.requests,
                        c.errors,
                        &c.buckets,
                    );
                }
            });
        judgement
    }
}

/// Judges a batch window after window until it passes or fails; without a verdict by
/// max(`healthy_deadline`, DEADLINE_WINDOWS windows) it fails.
async fn batch(
    shared: &Arc<Shared>,
    live: &Live,
    t: Analysis,
    j: Judged,
    healthy_deadline: Duration,
) -> Outcome {
    let deadline = healthy_deadline.max(t.window * DEADLINE_WINDOWS);
    let started = Instant::now();
    let mut w = Windows::start(shared, live, t, j).await;
    loop {
        if let Some(stopped) = wait_window(live, t.window, false).await {
            return stopped;
        }
        let judgement = w.judge().await;
        match judgement.verdict {
            Verdict::Pass => return Outcome::Pass,
            Verdict::Fail => return Outcome::Fail(judgement.message),
            Verdict::Wait | Verdict::Unknown => {}
        }
        if started.elapsed() + t.window > deadline {
            return Outcome::Fail(format!(
                "no verdict within the analysis deadline of {} ({} windows; never promoted blind): {}",
                humantime::format_duration(deadline),
                w.windows,
                judgement.message.trim_end_matches(": waiting for more traffic")
            ));
        }
    }
}

/// Judges the fleet window after window until one ends past `until` (whole windows only:
/// a short last one would judge too little traffic); only a failed window ends it early.
/// Windows without enough traffic or answers are recorded and do not fail the bake: the
/// release already runs everywhere, and reverting the fleet takes evidence.
async fn bake(
    shared: &Arc<Shared>,
    live: &Live,
    t: Analysis,
    j: Judged,
    until: Instant,
) -> (Outcome, u32, u32) {
    let mut w = Windows::start(shared, live, t, j).await;
    let mut judged = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (Outcome::Pass, judged, w.windows);
        }
        if let Some(stopped) = wait_window(live, t.window, true).await {
            return (stopped, judged, w.windows);
        }
        let judgement = w.judge().await;
        match judgement.verdict {
            Verdict::Fail => return (Outcome::Fail(judgement.message), judged + 1, w.windows),
            Verdict::Pass => judged += 1,
            Verdict::Wait | Verdict::Unknown => {}
        }
    }
}

/// Judges batch `b`'s traffic after its health gate passed. Returns whether the rollout
/// goes on (false: it halted, to revert as a failed health gate does, or was aborted).
pub(super) async fn after_batch(
    shared: &Arc<Shared>,
    live: &Arc<Live>,
    b: usize,
    label: &str,
) -> bool {
    let rec = live.rec();
    let Some(t) = rec.analysis.map(|t| t.analysis()) else {
        return true;
    };
    // References first, names cloned only for the sample: a batch scans the record once,
    // as the engine already does, and copies at most MAX_JUDGED + MAX_BASELINE names.
    let judged: Vec<&HostStep> = rec
        .hosts
        .iter()
        .filter(|h| h.batch == b && h.phase == Phase::Healthy)
        .collect();
    if judged.is_empty() {
        // Every host of the batch was skipped while down: nothing serves the release yet.
        return true;
    }
    // The baseline: hosts of later batches, still on the release they ran before.
    let baseline: Vec<(&str, &str)> = rec
        .hosts
        .iter()
        .filter(|h| h.batch > b && !h.switched && matches!(h.phase, Phase::Staged | Phase::Pending))
        .filter_map(|h| {
            h.previous
                .as_deref()
                .filter(|p| *p != rec.version)
                .map(|p| (h.host.as_str(), p))
        })
        .collect();
    let judged: Group = spread(&judged, MAX_JUDGED)
        .into_iter()
        .map(|h| (h.host.clone(), rec.version.clone()))
        .collect();
    let baseline: Group = spread(&baseline, MAX_BASELINE)
        .into_iter()
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .collect();
    let gates = gates_of(&rec.spec_toml);
    let against = if baseline.is_empty() {
        "no host left on the previous release: absolute thresholds only".to_owned()
    } else {
        format!("against {} hosts on the previous release", baseline.len())
    };
    live.step(
        "analysis",
        "",
        b,
        &format!(
            "judging {label} ({} hosts) every {} {against}{}",
            judged.len(),
            humantime::format_duration(t.window),
            match gates.len() {
                0 => String::new(),
                1 => ", and 1 PromQL query".to_owned(),
                n => format!(", and {n} PromQL queries"),
            }
        ),
        |_| {},
    );
    let j = Judged {
        app: rec.app.clone(),
        who: label.to_owned(),
        batch: b,
        judged,
        baseline,
        bake: false,
        reference: None,
        release: rec.version.clone(),
        gates,
    };
    match batch(
        shared,
        live,
        t,
        j,
        Duration::from_millis(rec.healthy_deadline_ms),
    )
    .await
    {
        Outcome::Pass => true,
        Outcome::Fail(why) => {
            live.step("halted", "", b, &why.clone(), |r| r.halt(why));
            false
        }
        Outcome::Aborted | Outcome::Superseded => {
            abort(live);
            false
        }
    }
}

/// After the last batch: judges a sample of the fleet every window until the bake ends
/// (also after a controller restart: the end is in the record). A failed window reverts
/// every switched host, through the same revert as a failed batch.
pub(super) async fn bake_step(shared: &Arc<Shared>, live: &Arc<Live>) {
    let rec = live.rec();
    let n = rec.batches.len();
    let Some(t) = rec.analysis.map(|t| t.analysis()) else {
        let msg = finished_message(&rec);
        live.step("succeeded", "", n, &msg.clone(), |r| {
            r.state = State::Succeeded;
            r.message = msg;
        });
        return;
    };
    let left = Duration::from_millis((rec.bake_until_ms - now_ms()).max(0) as u64);
    let on_new: Vec<&HostStep> = rec
        .hosts
        .iter()
        .filter(|h| matches!(h.phase, Phase::Healthy | Phase::Converged))
        .collect();
    let sample: Group = spread(&on_new, MAX_BASELINE)
        .into_iter()
        .map(|h| (h.host.clone(), rec.version.clone()))
        .collect();
    let j = Judged {
        app: rec.app.clone(),
        who: "fleet".into(),
        batch: n,
        judged: sample,
        baseline: Vec::new(),
        bake: true,
        reference: reference_of(&rec, t.min_requests),
        release: rec.version.clone(),
        gates: gates_of(&rec.spec_toml),
    };
    let until = tokio::time::Instant::now() + left;
    let (outcome, judged, windows) = bake(shared, live, t, j, until).await;
    let bake = humantime::format_duration(t.bake);
    match outcome {
        Outcome::Pass => {
            let msg = if judged == 0 {
                format!(
                    "{}; baked {bake}: none of {windows} windows could be judged (under {} requests, or no answers)",
                    finished_message(&rec),
                    t.min_requests
                )
            } else {
                format!(
                    "{}; baked {bake}: {judged} of {windows} windows judged, all within the thresholds",
                    finished_message(&rec)
                )
            };
            live.step("succeeded", "", n, &msg.clone(), |r| {
                r.state = State::Succeeded;
                r.message = msg;
            });
        }
        Outcome::Fail(why) => {
            let why = format!("bake: {why}");
            live.step("halted", "", n, &why.clone(), |r| r.halt(why));
        }
        Outcome::Aborted => abort(live),
        Outcome::Superseded => {
            let msg = format!(
                "{}; bake ended early after {windows} windows: superseded by a newer rollout (--force)",
                finished_message(&rec)
            );
            live.step("superseded", "", n, &msg.clone(), |r| {
                r.state = State::Succeeded;
                r.message = msg;
            });
        }
    }
}
