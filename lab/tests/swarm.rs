//! The swarm simulator's CI-sized run (issue 16): 500 simulated agents in two worker
//! processes against the real release controller on loopback. Asserts behaviour (every
//! host enrolled, up, reached by a fleet-wide firewall apply and a deploy, back after a
//! kill -9 of the controller), never timings: those are benchmarks (docs/benchmarks.md).
//! Needs no lab hosts, only the release binaries.

use std::process::Command;

use serde_json::Value;

const AGENTS: u64 = 500;

#[test]
fn swarm_of_500_is_reached_by_fan_outs_and_comes_back_after_a_controller_kill() {
    if std::env::var("FLEET_LAB").as_deref() == Ok("skip") {
        eprintln!("lab test skipped on purpose (FLEET_LAB=skip)");
        return;
    }
    let bins = fleet_lab::fleet::binaries().unwrap_or_else(|e| {
        panic!("swarm test cannot run: {e:#}. Set FLEET_LAB=skip to skip lab tests on purpose.")
    });
    let swarm = bins.controller.with_file_name("fleet-swarm");
    assert!(
        swarm.exists(),
        "swarm test cannot run: {} is missing (cargo build --workspace --release --locked \
         --bins). Set FLEET_LAB=skip to skip lab tests on purpose.",
        swarm.display()
    );
    let out = Command::new(&swarm)
        .args([
            "run",
            "--agents",
            &AGENTS.to_string(),
            "--procs",
            "2",
            "--apps",
            "1",
        ])
        .args(["--scenarios", "firewall,deploy,hosts,reconnect"])
        .args(["--output", "json", "--timeout", "2m"])
        .output()
        .expect("run fleet-swarm");
    assert!(
        out.status.success(),
        "fleet-swarm failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let n = AGENTS;
    assert_eq!(r["agents"], n);
    assert_eq!(r["procs"], 2);
    assert_eq!(r["enroll"]["joins"], n, "{r:#}");
    assert_eq!(r["firewall"]["received"]["reached"], n, "{r:#}");
    assert_eq!(r["deploy"][0]["activate"]["reached"], n, "{r:#}");
    assert_eq!(r["hosts"]["listed"], n, "{r:#}");
    let wave = &r["reconnect_wave"];
    // Every stream came back (the run fails otherwise), each after at least one attempt.
    assert!(wave["attempts_mean"].as_f64().unwrap() >= 1.0, "{r:#}");
    assert!(wave["attempts_max"].as_u64().unwrap() >= 1, "{r:#}");
    // Scenarios not asked for are not reported.
    assert!(r["rollout"].is_null() && r["steady"].is_null(), "{r:#}");
    assert!(r["generator"]["cpu_s"].as_f64().unwrap() > 0.0, "{r:#}");
}

/// Issue 17 without real apps: simulated agents answer QueryRequests with counts per
/// release (a sick release answers 5 % with 500, a slow one takes 200 ms longer), and the
/// real controller judges rollouts of them on 10 hosts: the healthy release is promoted
/// and baked, the sick and the slow one reverted by the canary's analysis with the
/// numbers in the reason, exit 2, and the hosts after the canary never touched; a bake
/// cut by a kill -9 of the controller resumes and finishes; a second rollout during a bake
/// is refused, and supersedes it with --force.
#[test]
fn swarm_rollouts_are_judged_by_their_traffic() {
    if std::env::var("FLEET_LAB").as_deref() == Ok("skip") {
        eprintln!("lab test skipped on purpose (FLEET_LAB=skip)");
        return;
    }
    let bins = fleet_lab::fleet::binaries().unwrap_or_else(|e| {
        panic!("swarm test cannot run: {e:#}. Set FLEET_LAB=skip to skip lab tests on purpose.")
    });
    let swarm = bins.controller.with_file_name("fleet-swarm");
    assert!(
        swarm.exists(),
        "swarm test cannot run: {} is missing (cargo build --workspace --release --locked \
         --bins). Set FLEET_LAB=skip to skip lab tests on purpose.",
        swarm.display()
    );
    let out = Command::new(&swarm)
        .args(["run", "--agents", "12", "--procs", "1", "--apps", "1"])
        .args(["--scenarios", "analysis", "--traffic-rps", "50"])
        .args(["--output", "json", "--timeout", "2m"])
        .output()
        .expect("run fleet-swarm");
    assert!(
        out.status.success(),
        "fleet-swarm failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r:#}");
    let a = &r["analysis"];
    assert_eq!(a["hosts"], 10, "{r:#}");

    let healthy = &a["healthy"];
    assert_eq!(healthy["exit"], 0, "{r:#}");
    assert_eq!(healthy["state"], "succeeded", "{r:#}");
    assert_eq!(healthy["phases"]["healthy"], 10, "{r:#}");
    let verdicts = healthy["verdicts"].as_array().unwrap();
    // canary, batch 2, batch 3, then the bake.
    assert_eq!(verdicts.len(), 4, "{r:#}");
    for v in verdicts {
        assert_eq!(v[1], "pass", "{r:#}");
    }
    assert_eq!(verdicts[0][0], "canary");
    assert_eq!(verdicts[3][0], "bake");
    assert!(
        verdicts[0][2].as_str().unwrap().contains("vs baseline"),
        "the canary is compared with the hosts still on 1.0.0: {r:#}"
    );
    assert!(
        healthy["message"].as_str().unwrap().contains("baked 4s"),
        "{r:#}"
    );

    for (name, says) in [("sick", "> max 2.0 %"), ("slow", "> 1.5×")] {
        let j = &a[name];
        assert_eq!(j["exit"], 2, "{name}: {r:#}");
        assert_eq!(j["state"], "reverted", "{name}: {r:#}");
        let msg = j["message"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!(
                "canary {}",
                if name == "sick" { "5xx" } else { "p99" }
            )) && msg.contains(says)
                && msg.contains("vs baseline"),
            "{name}: the reason names the numbers: {msg}"
        );
        assert_eq!(
            j["phases"]["reverted"], 1,
            "{name}: only the canary went back: {r:#}"
        );
        assert_eq!(
            j["phases"]["staged"], 9,
            "{name}: the rest untouched: {r:#}"
        );
        assert_eq!(j["verdicts"][0][1], "fail", "{name}: {r:#}");
    }

    // Killed -9 and restarted mid-bake: the resumed rollout finishes its bake.
    let resumed = &a["resumed"];
    assert_eq!(resumed["state"], "succeeded", "{r:#}");
    assert!(
        resumed["message"].as_str().unwrap().contains("baked 6s"),
        "{r:#}"
    );

    // A second rollout during a bake is refused, and with --force ends the bake first.
    let s = &a["superseded"];
    assert_eq!(s["refused_exit"], 1, "{r:#}");
    assert!(
        s["refused"].as_str().unwrap().contains("is baking")
            && s["refused"].as_str().unwrap().contains("--force"),
        "{r:#}"
    );
    assert_eq!(s["forced_exit"], 0, "{r:#}");
    assert_eq!(s["audited"], true, "{r:#}");
}
