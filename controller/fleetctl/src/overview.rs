//! `fleetctl status` without an app: every app at a glance, then the hosts that need
//! attention, worst first (a host that is down, a crash loop, a failed unit, a failing
//! health probe, a release other than the one most of the app's hosts run).

use std::collections::BTreeMap;

use fleet_proto::v1::HostAppStatus;

/// Why a host's app needs a look, and how urgent that is (lower is worse).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attention {
    pub rank: u8,
    pub why: String,
}

/// The release most of each app's hosts run (ties: the greater version string).
pub fn usual_releases(entries: &[HostAppStatus]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in entries {
        if let Some(s) = &e.state {
            if !s.release.is_empty() {
                *counts
                    .entry((s.app.clone(), s.release.clone()))
                    .or_default() += 1;
            }
        }
    }
    let mut best: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for ((app, release), n) in counts {
        let slot = best.entry(app).or_insert((0, String::new()));
        if n >= slot.0 {
            *slot = (n, release);
        }
    }
    best.into_iter().map(|(app, (_, r))| (app, r)).collect()
}

pub fn attention(e: &HostAppStatus, usual: &BTreeMap<String, String>) -> Option<Attention> {
    let s = e.state.clone().unwrap_or_default();
    let hit = |rank: u8, why: String| Some(Attention { rank, why });
    if e.host_state != "up" {
        return hit(0, "host down (state as last reported)".into());
    }
    if s.crash_loop {
        return hit(1, format!("crash loop ({} restarts)", s.restarts));
    }
    // Down on purpose: listed, but after everything that is down by accident.
    if s.stopped {
        return hit(
            5,
            format!("stopped by an operator (`fleetctl app start {}`)", s.app),
        );
    }
    if s.active_state != "active" {
        let detail = if s.result.is_empty() || s.result == "success" {
            String::new()
        } else {
            format!(", result {}", s.result)
        };
        return hit(2, format!("unit {}{detail}", s.active_state));
    }
    if !s.healthy {
        let detail = if s.health_detail.is_empty() {
            "health probe failing".to_owned()
        } else {
            format!("health probe failing: {}", s.health_detail)
        };
        return hit(3, detail);
    }
    match usual.get(&s.app) {
        Some(r) if *r != s.release => {
            hit(4, format!("runs {} while most hosts run {r}", s.release))
        }
        _ => None,
    }
}

/// One app's line of the overview.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppSummary {
    pub app: String,
    /// Releases with their host counts, most hosts first.
    pub releases: Vec<(String, usize)>,
    pub hosts: usize,
    pub healthy: usize,
    pub down: usize,
    pub needs_attention: usize,
    pub restarts: u64,
}

pub fn summaries(entries: &[HostAppStatus]) -> Vec<AppSummary> {
    let usual = usual_releases(entries);
    let mut by_app: BTreeMap<String, (AppSummary, BTreeMap<String, usize>)> = BTreeMap::new();
    for e in entries {
        let s = e.state.clone().unwrap_or_default();
        let (sum, releases) = by_app.entry(s.app.clone()).or_default();
        sum.app = s.app.clone();
        sum.hosts += 1;
        sum.restarts += u64::from(s.restarts);
        if e.host_state != "up" {
            sum.down += 1;
        } else if s.healthy && !s.crash_loop && s.active_state == "active" {
            sum.healthy += 1;
        }
        if attention(e, &usual).is_some() {
            sum.needs_attention += 1;
        }
        *releases.entry(s.release).or_default() += 1;
    }
    by_app
        .into_values()
        .map(|(mut sum, releases)| {
            let mut r: Vec<(String, usize)> = releases.into_iter().collect();
            r.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            sum.releases = r;
            sum
        })
        .collect()
}

/// `entries` with the worst first, then by app and host; each with its reason.
pub fn by_urgency(entries: Vec<HostAppStatus>) -> Vec<(HostAppStatus, Option<Attention>)> {
    let usual = usual_releases(&entries);
    let mut out: Vec<(HostAppStatus, Option<Attention>)> = entries
        .into_iter()
        .map(|e| {
            let a = attention(&e, &usual);
            (e, a)
        })
        .collect();
    out.sort_by(|(a, aa), (b, ab)| {
        let rank = |x: &Option<Attention>| x.as_ref().map_or(u8::MAX, |x| x.rank);
        let app = |e: &HostAppStatus| e.state.as_ref().map(|s| s.app.clone()).unwrap_or_default();
        rank(aa)
            .cmp(&rank(ab))
            .then_with(|| app(a).cmp(&app(b)))
            .then_with(|| a.host.cmp(&b.host))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::AppState;

    fn entry(host: &str, up: bool, release: &str, f: impl FnOnce(&mut AppState)) -> HostAppStatus {
        let mut s = AppState {
            app: "shop".into(),
            release: release.into(),
            active_state: "active".into(),
            healthy: true,
            ..Default::default()
        };
        f(&mut s);
        HostAppStatus {
            host: host.into(),
            host_state: if up { "up" } else { "down" }.into(),
            state: Some(s),
        }
    }

    #[test]
    fn the_worst_come_first_with_their_reason() {
        let entries = vec![
            entry("a", true, "2", |_| {}),
            entry("b", true, "1", |_| {}),
            entry("c", true, "2", |s| s.healthy = false),
            entry("d", false, "2", |_| {}),
            entry("e", true, "2", |s| {
                s.crash_loop = true;
                s.restarts = 7
            }),
            entry("f", true, "2", |s| {
                s.active_state = "failed".into();
                s.result = "exit-code".into()
            }),
            entry("g", true, "2", |s| {
                s.active_state = "inactive".into();
                s.healthy = false;
                s.stopped = true
            }),
        ];
        let sorted = by_urgency(entries.clone());
        let order: Vec<(&str, Option<&str>)> = sorted
            .iter()
            .map(|(e, a)| (e.host.as_str(), a.as_ref().map(|a| a.why.as_str())))
            .collect();
        assert_eq!(
            order,
            [
                ("d", Some("host down (state as last reported)")),
                ("e", Some("crash loop (7 restarts)")),
                ("f", Some("unit failed, result exit-code")),
                ("c", Some("health probe failing")),
                ("b", Some("runs 1 while most hosts run 2")),
                (
                    "g",
                    Some("stopped by an operator (`fleetctl app start shop`)")
                ),
                ("a", None),
            ]
        );
        let sum = summaries(&entries);
        assert_eq!(sum.len(), 1);
        assert_eq!(sum[0].hosts, 7);
        assert_eq!(sum[0].healthy, 2);
        assert_eq!(sum[0].down, 1);
        assert_eq!(sum[0].needs_attention, 6);
        assert_eq!(sum[0].restarts, 7);
        assert_eq!(sum[0].releases, [("2".into(), 6), ("1".into(), 1)]);
    }
}
