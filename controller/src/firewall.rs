//! The fleet firewall policy on the controller: validate, show the per-host diff, send it
//! to every host, and confirm each host's change over the same stream once the new rules
//! have carried that stream for `confirm_after`. A host that cannot be reached to confirm
//! reverts by itself (its own systemd timer), so the controller never has to reach a
//! host it has just cut off.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::firewall::Policy;
use fleet_proto::spec::AppSpec;
use fleet_proto::v1::command::Kind;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::*;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::commands::new_id;
use crate::shared::{internal, Shared};
use crate::timefmt::now_ms;

/// Checking and applying takes the agent a few nft and systemctl runs.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Latest firewall state each host reported.
#[derive(Default)]
pub struct FirewallStates(Mutex<HashMap<String, FirewallState>>);

impl FirewallStates {
    pub fn update(&self, host: &str, state: FirewallState) {
        self.0
            .lock()
            .expect("firewall states lock")
            .insert(host.to_owned(), state);
    }

    fn get(&self, host: &str) -> Option<FirewallState> {
        self.0
            .lock()
            .expect("firewall states lock")
            .get(host)
            .cloned()
    }
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The listen ports of the apps the host runs, as the host last reported them.
fn app_ports(shared: &Shared, host: &str) -> Vec<AppPort> {
    let mut out = Vec::new();
    for (h, state) in shared.app_states.all() {
        if h != host {
            continue;
        }
        let spec = shared
            .store
            .app(&state.app)
            .ok()
            .flatten()
            .and_then(|rec| AppSpec::parse(&rec.spec_toml).ok());
        if let Some(spec) = spec {
            out.push(AppPort {
                app: state.app.clone(),
                port: u32::from(spec.listen.port()),
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
    let policy = Policy::parse(&req.policy_toml)
        .map_err(|e| Status::invalid_argument(format!("{e}; no host was touched")))?;
    let old = shared.store.firewall_policy().map_err(internal)?;
    let old_policy = old.as_ref().and_then(|(t, _)| Policy::parse(t).ok());
    let hosts: Vec<String> = shared
        .store
        .hosts()
        .map_err(internal)?
        .into_iter()
        .map(|h| h.name)
        .collect();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for host in hosts.clone() {
            let ports = app_ports(&shared, &host);
            let new_text = policy.render(&host, &ports_tuple(&ports));
            let old_text = old_policy
                .as_ref()
                .map(|p| p.render(&host, &ports_tuple(&ports)))
                .unwrap_or_default();
            progress(&tx, &host, "diff", diff(&old_text, &new_text)).await;
            let (shared, tx, toml) = (shared.clone(), tx.clone(), req.policy_toml.clone());
            let (force, policy) = (req.force, policy.clone());
            tasks.push(tokio::spawn(async move {
                one_host(&shared, &tx, &host, toml, force, ports, &policy).await
            }));
        }
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for t in tasks {
            let outcome = t.await.unwrap_or("failed");
            *counts.entry(outcome).or_default() += 1;
        }
        let confirmed = counts.get("confirmed").copied().unwrap_or(0);
        // The stored policy is what confirmed hosts run; a policy no host took is not it.
        if confirmed > 0 || hosts.is_empty() {
            if let Err(e) = shared.store.set_firewall_policy(&req.policy_toml, now_ms()) {
                tracing::error!(error = %e, "cannot store the firewall policy");
            }
        }
        let mut summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        summary.sort();
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

/// Applies on one host and confirms it; returns the outcome word.
async fn one_host(
    shared: &Shared,
    tx: &Progress,
    host: &str,
    policy_toml: String,
    force: bool,
    app_ports: Vec<AppPort>,
    policy: &Policy,
) -> &'static str {
    let Some(session) = shared.sessions.session_id(host) else {
        progress(
            tx,
            host,
            "failed",
            "host is down: nothing was changed on it".into(),
        )
        .await;
        return "failed";
    };
    let apply_id = new_id();
    let kind = Kind::ApplyFirewall(ApplyFirewall {
        apply_id: apply_id.clone(),
        policy_toml,
        force,
        app_ports,
    });
    let r = shared
        .commands
        .call(&shared.sessions, host, kind, APPLY_TIMEOUT)
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
        Err(e) => {
            // The agent may have applied before the answer was lost: its timer reverts.
            progress(
                tx,
                host,
                "reverted",
                format!(
                    "no answer to apply ({e}): if it applied, it reverts within {}",
                    humantime::format_duration(policy.confirm_timeout)
                ),
            )
            .await;
            return "reverted";
        }
    }
    tokio::time::sleep(policy.confirm_after).await;
    let reverting = format!(
        "previous rules come back within {} of the apply",
        humantime::format_duration(policy.confirm_timeout)
    );
    // Another session means the old stream died under the new rules (or the agent
    // restarted): only the stream that carried the change may confirm it.
    if shared.sessions.session_id(host) != Some(session) || shared.sessions.up(host).is_none() {
        progress(
            tx,
            host,
            "reverted",
            format!("lost the host's stream under the new rules: {reverting}"),
        )
        .await;
        return "reverted";
    }
    let r = shared
        .commands
        .call(
            &shared.sessions,
            host,
            Kind::ConfirmFirewall(ConfirmFirewall { apply_id }),
            CONFIRM_TIMEOUT,
        )
        .await;
    match r {
        Ok(r) if r.status == CmdStatus::Ok as i32 => {
            progress(tx, host, "confirmed", r.message).await;
            "confirmed"
        }
        Ok(r) => {
            progress(tx, host, "reverted", format!("{}: {reverting}", r.message)).await;
            "reverted"
        }
        Err(e) => {
            progress(
                tx,
                host,
                "reverted",
                format!("no confirmation ({e}): {reverting}"),
            )
            .await;
            "reverted"
        }
    }
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
        policy.render(host, &ports_tuple(&app_ports(shared, host)))
    };
    Ok(ShowFirewallResponse {
        policy_toml: toml,
        rendered,
        applied_at_ms: at,
    })
}

pub fn status(shared: &Shared) -> Result<FirewallStatusResponse, Status> {
    let policy = shared.store.firewall_policy().map_err(internal)?;
    let mut hosts = Vec::new();
    for h in shared.store.hosts().map_err(internal)? {
        hosts.push(HostFirewall {
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
    Ok(FirewallStatusResponse {
        policy_sha256: policy.map(|(t, _)| sha(&t)).unwrap_or_default(),
        hosts,
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
