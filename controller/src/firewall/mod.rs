//! The fleet firewall policy on the controller: validate, show the per-host diff, send it
//! to every host, and confirm each host's change over the same stream once the new rules
//! have carried that stream for `confirm_after`. A host that cannot be reached to confirm
//! reverts by itself (its own systemd timer), so the controller never has to reach a
//! host it has just cut off.
//!
//! A host that is down during an apply gets the stored policy when its next session
//! starts, unless that policy already reverted on it (a policy that cuts the host off
//! would otherwise be retried at every reconnect). Catch-ups are never forced: a policy
//! the agent finds locking out SSH or the controller is refused, as without `--force`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleet_proto::firewall::Policy;
use fleet_proto::spec::AppSpec;
use fleet_proto::v1::command::Kind;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::*;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::commands::{new_id, CommandError};
use crate::shared::{internal, Shared};
use crate::timefmt::now_ms;

/// Checking and applying takes the agent a few nft and systemctl runs.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_POLICY_BYTES: usize = 256 * 1024;

/// How long a new session has to report its firewall state before the catch-up compares
/// it with the stored policy (the agent sends it right after Welcome).
const CATCH_UP_AFTER: Duration = Duration::from_secs(2);

mod states;

pub use states::FirewallStates;

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Every app's listen port, from its stored spec: parsed once per apply, not once per
/// host and app.
fn listen_ports(shared: &Shared) -> HashMap<String, u16> {
    let apps = shared.store.apps().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read apps for the firewall's app ports");
        Vec::new()
    });
    apps.into_iter()
        .filter_map(|rec| {
            let spec = AppSpec::parse(&rec.spec_toml).ok()?;
            Some((rec.name, spec.listen.port()))
        })
        .collect()
}

/// The listen ports of the apps the host runs, as the host last reported them.
fn app_ports(shared: &Shared, host: &str, ports: &HashMap<String, u16>) -> Vec<AppPort> {
    let mut out = Vec::new();
    for state in shared.app_states.apps_on(host) {
        if let Some(port) = ports.get(&state.app) {
            out.push(AppPort {
                app: state.app.clone(),
                port: u32::from(*port),
            });
        }
    }
    out.sort_by(|a, b| a.app.cmp(&b.app));
    out.dedup();
    out
}

fn ports_tuple(p: &[AppPort]) -> Vec<(String, u16)> {
    p.iter()
        .filter_map(|p| Some((p.app.clone(), u16::try_from(p.port).ok()?)))
        .collect()
}

/// Lines only in `old` (-) and only in `new` (+); rule order inside one table matters
/// little for a reader, so this is a set difference kept in file order.
pub fn diff(old: &str, new: &str) -> String {
    let o: BTreeSet<&str> = old.lines().collect();
    let n: BTreeSet<&str> = new.lines().collect();
    let mut out = String::new();
    for l in old.lines().filter(|l| !n.contains(l)) {
        out.push_str(&format!("- {}\n", l.trim()));
    }
    for l in new.lines().filter(|l| !o.contains(l)) {
        out.push_str(&format!("+ {}\n", l.trim()));
    }
    if out.is_empty() {
        out.push_str("(no change)\n");
    }
    out
}

type Progress = mpsc::Sender<Result<HostProgress, Status>>;

async fn progress(tx: &Progress, host: &str, phase: &str, message: String) {
    let _ = tx
        .send(Ok(HostProgress {
            host: host.to_owned(),
            phase: phase.into(),
            message,
            state: None,
        }))
        .await;
}

pub async fn apply(
    shared: Arc<Shared>,
    actor: String,
    req: ApplyFirewallRequest,
) -> Result<ReceiverStream<Result<HostProgress, Status>>, Status> {
    // Keeps `firewall show` (the policy plus one host's rendering) far inside a client's
    // 4 MiB decode limit.
    if req.policy_toml.len() > MAX_POLICY_BYTES {
        return Err(Status::invalid_argument(format!(
            "the policy is {} bytes, over the limit of {MAX_POLICY_BYTES}; no host was touched",
            req.policy_toml.len()
        )));
    }
    let policy = Policy::parse(&req.policy_toml)
        .map_err(|e| Status::invalid_argument(format!("{e}; no host was touched")))?;
    let old = shared.store.firewall_policy().map_err(internal)?;
    let old_policy = old.as_ref().and_then(|(t, _)| Policy::parse(t).ok());
    let hosts: Vec<String> = shared.store.host_names().map_err(internal)?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _exclusive = shared.firewall_states.applying.write().await;
        let listen = Arc::new(listen_ports(&shared));
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let (toml, old_policy) = (Arc::new(req.policy_toml.clone()), Arc::new(old_policy));
        let policy = Arc::new(policy);
        let mut tasks = tokio::task::JoinSet::new();
        // One task per host, all at once: each spends most of its time waiting for
        // `confirm_after`, which costs nothing; `slots` bounds the sends at once.
        for host in hosts.clone() {
            let (shared, tx, toml, slots) =
                (shared.clone(), tx.clone(), toml.clone(), slots.clone());
            let (force, policy, old_policy, listen) = (
                req.force,
                policy.clone(),
                old_policy.clone(),
                listen.clone(),
            );
            tasks.spawn(async move {
                let ports = app_ports(&shared, &host, &listen);
                // Rendered only for the operator's diff, after the command is on its way:
                // the first hosts must not wait for the rendering of the last.
                let diff = {
                    let (policy, host, ports) = (policy.clone(), host.clone(), ports_tuple(&ports));
                    Box::new(move || {
                        let new_text = policy.render(&host, &ports);
                        let old_text = old_policy
                            .as_ref()
                            .as_ref()
                            .map(|p| p.render(&host, &ports))
                            .unwrap_or_default();
                        diff(&old_text, &new_text)
                    }) as Diff
                };
                let change = Change {
                    policy_toml: (*toml).clone(),
                    force,
                    app_ports: ports,
                    diff,
                };
                one_host(&shared, &tx, &slots, &host, change, &policy).await
            });
        }
        let mut outcomes = Vec::with_capacity(hosts.len());
        while let Some(done) = tasks.join_next().await {
            outcomes.push(done.unwrap_or("failed"));
        }
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for outcome in outcomes {
            *counts.entry(outcome).or_default() += 1;
        }
        let confirmed = counts.get("confirmed").copied().unwrap_or(0);
        let deferred = counts.get("deferred").copied().unwrap_or(0);
        // The stored policy is what confirmed hosts run and what hosts that were down get
        // when they come back; a policy that every reachable host rejected is not it.
        if confirmed > 0 || deferred == hosts.len() {
            if let Err(e) = shared.store.set_firewall_policy(&req.policy_toml, now_ms()) {
                tracing::error!(error = %e, "cannot store the firewall policy");
            }
        }
        let mut summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        summary.sort();
        drop(tx);
        let _ = shared.audit(
            &actor,
            "firewall.apply",
            &sha(&req.policy_toml)[..12],
            &format!(
                "{}{}",
                summary.join(", "),
                if req.force { " (forced)" } else { "" }
            ),
        );
    });
    Ok(ReceiverStream::new(rx))
}

/// Sends at once, per fleet-wide apply and for all catch-ups together.
const IN_FLIGHT: usize = 4096;

/// What one host is sent.
/// The per-host rule diff, made when it is shown.
type Diff = Box<dyn FnOnce() -> String + Send>;

struct Change {
    policy_toml: String,
    force: bool,
    app_ports: Vec<AppPort>,
    /// Shown to the operator once the change is on its way.
    diff: Diff,
}

/// Applies on one host and confirms it; returns the outcome word.
async fn one_host(
    shared: &Shared,
    tx: &Progress,
    slots: &Semaphore,
    host: &str,
    change: Change,
    policy: &Policy,
) -> &'static str {
    // A session that missed its heartbeats is down even before its timer ends it.
    let session = match shared.sessions.session_id(host) {
        Some(s) if shared.sessions.up(host).is_some() => s,
        _ => {
            progress(tx, host, "diff", (change.diff)()).await;
            return deferred(tx, host).await;
        }
    };
    let policy_sha = sha(&change.policy_toml);
    let outcome = apply_on(shared, tx, slots, host, session, change, policy).await;
    shared.firewall_states.outcome(host, &policy_sha, outcome);
    outcome
}

async fn deferred(tx: &Progress, host: &str) -> &'static str {
    progress(
        tx,
        host,
        "deferred",
        "host is down: it gets this policy when it reconnects".into(),
    )
    .await;
    "deferred"
}

/// Sends one command under a slot, runs `then`, and waits for its answer. The slot covers
/// only the send (which waits when the host's stream is full): holding it through the
/// answer made a fan-out to more hosts than slots go in waves of round trips, and holding
/// it through `then` let a slow reader of the progress stream hold back the sends.
async fn call_in_slot(
    shared: &Shared,
    slots: &Semaphore,
    host: &str,
    kind: Kind,
    timeout: Duration,
    then: impl std::future::Future<Output = ()>,
) -> Result<CommandResult, CommandError> {
    let sent = {
        let _slot = slots.acquire().await.expect("slots are never closed");
        shared.commands.start(&shared.sessions, host, kind).await
    };
    then.await;
    sent?.wait(&shared.commands, timeout).await
}

async fn apply_on(
    shared: &Shared,
    tx: &Progress,
    slots: &Semaphore,
    host: &str,
    session: u64,
    change: Change,
    policy: &Policy,
) -> &'static str {
    let started = Instant::now();
    let apply_id = new_id();
    let kind = Kind::ApplyFirewall(ApplyFirewall {
        apply_id: apply_id.clone(),
        policy_toml: change.policy_toml,
        force: change.force,
        app_ports: change.app_ports,
    });
    // The diff line goes out after the command: a slow reader of the progress stream
    // must not hold back the hosts.
    let r = call_in_slot(shared, slots, host, kind, APPLY_TIMEOUT, async {
        progress(tx, host, "diff", (change.diff)()).await
    })
    .await;
    match r {
        Ok(r) if r.status == CmdStatus::Ok as i32 => {
            progress(tx, host, "applied", r.message).await;
        }
        Ok(r) if r.message.starts_with("refused") => {
            progress(tx, host, "refused", r.message).await;
            return "refused";
        }
        Ok(r) if r.status == CmdStatus::Unsupported as i32 => {
            progress(
                tx,
                host,
                "failed",
                format!("the agent on this host is too old: {}", r.message),
            )
            .await;
            return "failed";
        }
        Ok(r) => {
            progress(tx, host, "failed", r.message).await;
            return "failed";
        }
        // Not sent at all: nothing changed on the host.
        Err(CommandError::HostDown) => return deferred(tx, host).await,
        Err(e) => {
            // The agent may have applied before the answer was lost: its timer reverts.
            let by = SystemTime::now() + policy.confirm_timeout;
            let reason = format!("no answer to apply ({e}); if it applied");
            return unconfirmed(shared, tx, host, started, by, &reason).await;
        }
    }
    // The agent armed its revert timer before it answered: the rules are back by then.
    let reverts_by = SystemTime::now() + policy.confirm_timeout;
    tokio::time::sleep(policy.confirm_after).await;
    // Another session means the old stream died under the new rules (or the agent
    // restarted): only the stream that carried the change may confirm it.
    if shared.sessions.session_id(host) != Some(session) || shared.sessions.up(host).is_none() {
        let reason = "lost the host's stream under the new rules";
        return unconfirmed(shared, tx, host, started, reverts_by, reason).await;
    }
    let r = call_in_slot(
        shared,
        slots,
        host,
        Kind::ConfirmFirewall(ConfirmFirewall { apply_id }),
        CONFIRM_TIMEOUT,
        async {},
    )
    .await;
    match r {
        Ok(r) if r.status == CmdStatus::Ok as i32 => {
            progress(tx, host, "confirmed", r.message).await;
            "confirmed"
        }
        Ok(r) => unconfirmed(shared, tx, host, started, reverts_by, &r.message).await,
        Err(e) => {
            let reason = format!("no confirmation ({e})");
            unconfirmed(shared, tx, host, started, reverts_by, &reason).await
        }
    }
}

/// How long after its revert deadline a host has to reconnect and report the revert.
const REVERT_REPORT_GRACE: Duration = Duration::from_secs(15);

/// A change the controller could not confirm: says so with the time the host's own timer
/// restores the previous rules, then waits (until a little past that time) for the host to
/// report the revert. Only that report makes the outcome `reverted`; without it the
/// outcome stays `unconfirmed`, because all the controller knows is that it stopped
/// waiting.
async fn unconfirmed(
    shared: &Shared,
    tx: &Progress,
    host: &str,
    since: Instant,
    reverts_by: SystemTime,
    reason: &str,
) -> &'static str {
    let by = clock(reverts_by);
    progress(
        tx,
        host,
        "unconfirmed",
        format!("reverts by {by}: {reason}"),
    )
    .await;
    let until = tokio::time::Instant::now()
        + reverts_by
            .duration_since(SystemTime::now())
            .unwrap_or_default()
        + REVERT_REPORT_GRACE;
    loop {
        if let Some(detail) = shared.firewall_states.reverted_since(host, since) {
            progress(tx, host, "reverted", format!("the host reports: {detail}")).await;
            return "reverted";
        }
        if tokio::time::Instant::now() >= until {
            progress(
                tx,
                host,
                "unconfirmed",
                format!(
                    "reverts by {by} (the host's own timer); no report from the host by {}: see `fleetctl firewall status`",
                    clock(SystemTime::now())
                ),
            )
            .await;
            return "unconfirmed";
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `HH:MM:SS UTC` of a wall-clock time.
fn clock(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.get(11..19).unwrap_or(&s))
}

/// Called when a host's session starts: if the stored policy is not the one the host
/// reports running, apply it there (not forced) and log the outcome.
pub async fn catch_up(shared: Arc<Shared>, host: String, session: u64) {
    tokio::time::sleep(CATCH_UP_AFTER).await;
    let _shared_with_other_catch_ups = shared.firewall_states.applying.read().await;
    if shared.sessions.session_id(&host) != Some(session) {
        return;
    }
    let Ok(Ok(Some((toml, _)))) = shared.off_workers(|s| s.store.firewall_policy()).await else {
        return;
    };
    let want = sha(&toml);
    let runs = shared
        .firewall_states
        .get(&host)
        .map(|s| s.policy_sha256)
        .unwrap_or_default();
    if runs == want {
        return;
    }
    if shared.firewall_states.reverted_here(&host, &want) {
        tracing::warn!(host = %host, policy = %&want[..12], "firewall policy reverted on this host before: not re-applied on reconnect");
        return;
    }
    let Ok(policy) = Policy::parse(&toml) else {
        tracing::error!(host = %host, "stored firewall policy no longer validates: not applied");
        return;
    };
    tracing::info!(host = %host, policy = %&want[..12], "host reconnected without the current firewall policy: applying it");
    // Nobody reads these progress lines but the log below.
    let (tx, mut rx): (Progress, _) = mpsc::channel(16);
    let drain = tokio::spawn(async move {
        let mut last = String::new();
        while let Some(Ok(p)) = rx.recv().await {
            last = format!("{}: {}", p.phase, p.message);
        }
        last
    });
    let change = Change {
        app_ports: app_ports(&shared, &host, &listen_ports(&shared)),
        policy_toml: toml,
        force: false,
        diff: Box::new(String::new),
    };
    let slots = shared.firewall_states.catch_up_slots.0.clone();
    let outcome = one_host(&shared, &tx, &slots, &host, change, &policy).await;
    drop(tx);
    let last = drain.await.unwrap_or_default();
    tracing::info!(host = %host, outcome, detail = %last, "firewall catch-up");
    let _ = shared.audit(
        "controller",
        "firewall.catch-up",
        &want[..12],
        &format!("{host}: {outcome}"),
    );
}

pub fn show(shared: &Shared, host: &str) -> Result<ShowFirewallResponse, Status> {
    let Some((toml, at)) = shared.store.firewall_policy().map_err(internal)? else {
        return Err(Status::not_found(
            "no firewall policy yet: apply one with `fleetctl firewall apply FILE`",
        ));
    };
    let rendered = if host.is_empty() {
        String::new()
    } else {
        if shared.store.host(host).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("unknown host {host}")));
        }
        let policy = Policy::parse(&toml)
            .map_err(|e| Status::internal(format!("stored policy no longer validates: {e}")))?;
        policy.render(
            host,
            &ports_tuple(&app_ports(shared, host, &listen_ports(shared))),
        )
    };
    Ok(ShowFirewallResponse {
        policy_toml: toml,
        rendered,
        applied_at_ms: at,
    })
}

pub fn status(
    shared: &Shared,
    req: FirewallStatusRequest,
) -> Result<FirewallStatusResponse, Status> {
    let policy = shared.store.firewall_policy().map_err(internal)?;
    let limit = crate::paging::limit(req.limit);
    let mut rows = Vec::new();
    for h in shared
        .store
        .hosts_page(&req.page_token, limit + 1)
        .map_err(internal)?
    {
        rows.push(HostFirewall {
            host_state: if shared.sessions.up(&h.name).is_some() {
                "up"
            } else {
                "down"
            }
            .into(),
            state: shared.firewall_states.get(&h.name),
            host: h.name,
        });
    }
    let (hosts, more) = crate::paging::fill(rows, limit);
    let next_page_token = match (more, hosts.last()) {
        (true, Some(last)) => last.host.clone(),
        _ => String::new(),
    };
    Ok(FirewallStatusResponse {
        policy_sha256: policy.map(|(t, _)| sha(&t)).unwrap_or_default(),
        hosts,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_removed_and_added_lines() {
        let d = diff("a\n\tb\nc\n", "a\nc\n\td\n");
        assert_eq!(d, "- b\n+ d\n");
        assert_eq!(diff("a\n", "a\n"), "(no change)\n");
    }
}
