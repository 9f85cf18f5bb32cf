//! Metrics end to end (issue 7): a real Prometheus on the outer machine, configured like
//! the shipped example, discovers every lab agent through the controller and scrapes
//! node and app metrics whose values match the hosts.

mod common;

use common::{ctl, wait};

use common::prometheus::{api, query, start_prometheus};

use std::time::Duration;

use fleet_lab::release;
use fleet_lab::LabOptions;
use serde_json::Value;

fn hosts_of(series: &[Value]) -> Vec<String> {
    let mut h: Vec<String> = series
        .iter()
        .map(|s| s["metric"]["host"].as_str().unwrap_or("").to_owned())
        .collect();
    h.sort();
    h
}

#[test]
fn prometheus_discovers_and_scrapes_every_agent() {
    common::init();
    let mut opts = LabOptions::fleet(3);
    opts.agent.heartbeat = Some("1s".into());
    let Some(lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let spec = release::write(
        work.path(),
        "shop.toml",
        release::spec("shop", "gunicorn", 8000, "").as_bytes(),
    )
    .unwrap();
    ctl(&lab, &["app", "apply", spec.to_str().unwrap()]);
    for v in ["1.0", "2.0"] {
        let tar = release::write(
            work.path(),
            &format!("{v}.tar.gz"),
            &release::sample("wsgi", v, &[]).unwrap(),
        )
        .unwrap();
        ctl(
            &lab,
            &[
                "release",
                "upload",
                "shop",
                tar.to_str().unwrap(),
                "--version",
                v,
            ],
        );
    }
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);

    let _prom = start_prometheus();
    wait("3 agent targets up", Duration::from_secs(60), || {
        api("/api/v1/targets").is_some_and(|v| {
            let active = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            active
                .iter()
                .filter(|t| t["labels"]["job"] == "fleet-agents" && t["health"] == "up")
                .count()
                == 3
        })
    });
    // Discovery labels each target with the apps its host runs, so a query can select
    // one app's hosts: every host runs `shop`.
    wait(
        "every agent target labelled apps=\",shop,\"",
        Duration::from_secs(30),
        || {
            api("/api/v1/targets").is_some_and(|v| {
                v["data"]["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter(|t| t["labels"]["job"] == "fleet-agents")
                    .filter(|t| t["labels"]["apps"] == ",shop,")
                    .count()
                    == 3
            })
        },
    );
    let everyone = vec!["host1".to_string(), "host2".into(), "host3".into()];
    for q in [
        "node_memory_MemAvailable_bytes",
        "fleet_app_healthy",
        "fleet_app_release_info",
    ] {
        wait(
            &format!("{q}: one series per host"),
            Duration::from_secs(30),
            || hosts_of(&query(q)) == everyone,
        );
    }
    let healthy = query("fleet_app_healthy");
    assert!(healthy.iter().all(|s| s["value"][1] == "1"), "{healthy:?}");
    // The app's memory and CPU: from the unit's cgroup where systemd accounts it, else (as
    // on this machine's hybrid cgroups) summed over the unit's processes. A Gunicorn master
    // and its workers hold well over 5 MB.
    for q in ["fleet_app_memory_bytes", "fleet_app_cpu_seconds_total"] {
        wait(
            &format!("{q}: one series per host"),
            Duration::from_secs(30),
            || hosts_of(&query(q)) == everyone,
        );
    }
    for s in query("fleet_app_memory_bytes") {
        let bytes: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(bytes > 5e6, "implausible app memory: {s}");
    }

    // Node figures agree with /proc inside the host.
    let memtotal_kb: u64 = lab
        .sh(1, "awk '/^MemTotal:/ {print $2}' /proc/meminfo")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let scraped = query("node_memory_MemTotal_bytes{host=\"host1\"}");
    let value: f64 = scraped[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(value as u64, memtotal_kb * 1024);
    let btime: f64 = lab
        .sh(1, "awk '/^btime/ {print $2}' /proc/stat")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let boot = query("node_boot_time_seconds{host=\"host1\"}");
    let scraped: f64 = boot[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        (scraped - btime).abs() <= 1.0,
        "boot time {scraped} vs /proc {btime}"
    );

    // After a new release the release label follows.
    ctl(&lab, &["deploy", "shop", "--version", "2.0"]);
    wait("release 2.0 on every host", Duration::from_secs(30), || {
        hosts_of(&query("fleet_app_release_info{release=\"2.0\"}")) == everyone
    });

    // After kill -9 of the app the restart counter goes up.
    let before: f64 = query("fleet_app_restarts_total{host=\"host1\"}")[0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pid = lab
        .sh(1, "systemctl show -p MainPID --value fleet-app-shop")
        .unwrap();
    assert_eq!(lab.exec(1, &["kill", "-9", pid.trim()]).unwrap(), 0);
    wait(
        "fleet_app_restarts_total to increase",
        Duration::from_secs(30),
        || {
            query("fleet_app_restarts_total{host=\"host1\"}")
                .first()
                .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
                .is_some_and(|v| v > before)
        },
    );
}
