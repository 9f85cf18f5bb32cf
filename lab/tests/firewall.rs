//! The fleet firewall on real hosts (issue 6): real nft, systemd timers and Debian's
//! nftables.service. One lab, the scenarios in order, because each needs the previous
//! policy in place and a lab boot is the slow part.

mod common;

use common::wait;

use std::time::{Duration, Instant};

use fleet_lab::{host_addr, Fault, Lab, LabOptions, Paths};
use serde_json::Value;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

fn lab(n: u32) -> Option<Lab> {
    common::init();
    let mut opts = LabOptions::fleet(n);
    opts.agent.heartbeat = Some("1s".into());
    fleet_lab::test_lab(&opts)
}

/// Like `wait`, but a timeout also prints what host `n` and the controller were doing.
fn wait_on(lab: &Lab, n: u32, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    if !common::eventually(timeout, &mut f) {
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            diagnostics(lab, n)
        );
    }
}

/// The agent's journal, the revert timers, the ruleset and the controller's log.
fn diagnostics(lab: &Lab, n: u32) -> String {
    let run = |script: &str| {
        lab.sh(n, script)
            .unwrap_or_else(|e| format!("({script} failed: {e:#})"))
    };
    let log = std::fs::read_to_string(Paths::from_env().controller_log()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    format!(
        "--- agent journal\n{}\n--- revert timers\n{}\n{}\n--- ruleset\n{}\n--- controller log (tail)\n{}",
        run("journalctl -u fleet-agent --no-pager -o short-precise -n 80"),
        run("systemctl list-timers --all --no-pager 'fleet-firewall-revert-*'"),
        run("journalctl --no-pager -o short-precise -u 'fleet-firewall-revert-*' -n 20"),
        run("nft list ruleset"),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    )
}

/// Port 8000 only from the outer machine (the controller's address), SSH from the lab
/// network, reject the rest. `extra` is appended (more rules).
fn policy(extra: &str) -> String {
    format!(
        r#"
default = "reject"
on_drift = "report"
confirm_timeout = "15s"
confirm_after = "1s"
drift_check = "2s"
admin_sources = ["198.18.0.1/32"]

[sets]
outer = ["198.18.0.1/32"]

[groups]
first = ["host1"]

[[allow]]
name = "ssh"
proto = "tcp"
ports = [22]
sources = ["198.18.0.0/24"]

[[allow]]
name = "web"
proto = "tcp"
ports = [8000]
sources = ["outer"]
{extra}"#
    )
}

fn write_policy(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn fleet_table(lab: &Lab, n: u32) -> Option<String> {
    lab.sh(n, "nft list table inet fleet").ok()
}

fn fw_state(lab: &Lab, host: &str) -> String {
    fw_field(lab, host, "firewall")
}

fn fw_detail(lab: &Lab, host: &str) -> String {
    fw_field(lab, host, "detail")
}

fn fw_field(lab: &Lab, host: &str, field: &str) -> String {
    let out = lab
        .fleetctl(&["firewall", "status", "--output", "json"])
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["host"] == host)
        .and_then(|h| h[field].as_str())
        .unwrap_or("")
        .to_owned()
}

fn outcomes(out: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["host"].as_str().unwrap().to_owned(),
                o["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn host_up(lab: &Lab, name: &str) -> bool {
    lab.fleet_hosts()
        .map(|hs| hs.iter().any(|h| h.name == name && h.state == "up"))
        .unwrap_or(false)
}

#[test]
fn firewall_cannot_lock_you_out() {
    let Some(lab) = lab(2) else { return };
    lab.wait_fleet_state(&["host1", "host2"], "up", Duration::from_secs(60))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h1 = host_addr(1).to_string();

    // Something to protect on host1, and a table fleet does not own.
    lab.sh(
        1,
        "systemd-run --unit=probe8000 python3 -m http.server 8000 && \
         nft add table inet handmade && nft add chain inet handmade keep",
    )
    .unwrap();
    wait("probe server", Duration::from_secs(10), || {
        common::tcp_ok(&h1, 8000)
    });

    // 1. 8000 only from the outer machine; SSH still reachable; other tables untouched.
    let base = write_policy(&dir, "base.toml", &policy(""));
    let out = lab
        .fleetctl(&["firewall", "apply", &base, "--output", "json"])
        .unwrap();
    let got = outcomes(&out);
    assert!(
        got.iter().all(|(_, r)| r == "confirmed") && got.len() == 2,
        "{out}"
    );
    let confirmed = fleet_table(&lab, 1).expect("fleet table on host1");
    assert!(common::tcp_ok(&h1, 8000), "8000 reachable from 198.18.0.1");
    let from_host2 = lab
        .exec_output(
            2,
            &["curl", "-sS", "-m", "3", &format!("http://{h1}:8000/")],
        )
        .unwrap();
    assert!(
        !from_host2.status.success(),
        "8000 must be refused from host2"
    );
    assert!(
        common::ssh_banner(&h1, Duration::from_secs(3)).is_some(),
        "SSH still reachable"
    );
    lab.sh(1, "nft list chain inet handmade keep")
        .expect("hand-made table untouched");
    assert_eq!(fw_state(&lab, "host1"), "confirmed");

    // 2. A valid policy that blocks SSH from the admin sources: refused, nothing changed.
    let no_ssh = policy("").replace(
        "sources = [\"198.18.0.0/24\"]",
        "sources = [\"10.0.0.0/8\"]",
    );
    let no_ssh = write_policy(&dir, "nossh.toml", &no_ssh);
    let err = format!(
        "{:#}",
        lab.fleetctl(&["firewall", "apply", &no_ssh]).unwrap_err()
    );
    assert!(err.contains("refused") && err.contains("SSH"), "{err}");
    assert_eq!(fleet_table(&lab, 1).as_deref(), Some(confirmed.as_str()));

    // 3. Debian's nftables.service flushes the ruleset: the fleet table comes back.
    lab.sh(1, "systemctl restart nftables").unwrap();
    wait("fleet table restored", Duration::from_secs(10), || {
        fleet_table(&lab, 1).as_deref() == Some(confirmed.as_str())
    });

    // A hand edit is drift (on_drift = report: reported, left alone).
    lab.sh(1, "nft add rule inet fleet input tcp dport 9999 accept")
        .unwrap();
    wait("drift reported", Duration::from_secs(15), || {
        fw_state(&lab, "host1") == "drift"
    });
    let out = lab
        .fleetctl(&["firewall", "apply", &base, "--output", "json"])
        .unwrap();
    assert!(
        outcomes(&out).iter().all(|(_, r)| r == "confirmed"),
        "{out}"
    );
    assert_eq!(fleet_table(&lab, 1).as_deref(), Some(confirmed.as_str()));

    // 4. Dropping the controller, forced: host1 goes down, then reverts and comes back.
    let cut = policy(
        "\n[[deny]]\nname = \"no-controller\"\nsources = [\"198.18.0.1/32\"]\ngroups = [\"first\"]\n",
    );
    let cut = write_policy(&dir, "cut.toml", &cut);
    let t0 = Instant::now();
    // fleetctl waits for the outcome while the host is cut off: watch from here meanwhile.
    let out = std::thread::scope(|s| {
        let lab = &lab;
        let cut = cut.as_str();
        let h = s.spawn(move || lab.fleetctl(&["firewall", "apply", cut, "--force"]));
        wait_on(lab, 1, "host1 down", CONFIRM_TIMEOUT, || {
            !host_up(lab, "host1")
        });
        eprintln!("host1 down {:?} after the apply", t0.elapsed());
        wait_on(
            lab,
            1,
            "host1 up again",
            (CONFIRM_TIMEOUT + Duration::from_secs(10)).saturating_sub(t0.elapsed()),
            || host_up(lab, "host1"),
        );
        eprintln!(
            "host1 up again {:?} after the apply (timeout {CONFIRM_TIMEOUT:?} + 10s)",
            t0.elapsed()
        );
        h.join().unwrap()
    });
    let msg = format!("{:#}", out.unwrap_err());
    assert!(msg.contains("host1: reverted"), "{msg}");
    assert_eq!(fleet_table(&lab, 1).as_deref(), Some(confirmed.as_str()));

    wait_on(
        &lab,
        1,
        "host1 reports the revert",
        Duration::from_secs(10),
        || fw_state(&lab, "host1") == "reverted",
    );
    // host2 confirmed that policy, so it is the stored one; it reverted on host1, so host1
    // does not get it again on reconnect. The window starts once host1 is back.
    wait_on(
        &lab,
        1,
        "host1 reconnected after the revert",
        Duration::from_secs(30),
        || host_up(&lab, "host1"),
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(fleet_table(&lab, 1).as_deref(), Some(confirmed.as_str()));

    // 5. Agent killed (SIGKILL) after apply, before confirm, and kept stopped: the systemd
    // timer still reverts; the agent, started again, reports it and does not re-apply.
    let marked = |port: u16| {
        let p = policy(&format!(
            "\n[[allow]]\nname = \"marker\"\nproto = \"tcp\"\nports = [{port}]\nsources = [\"outer\"]\ngroups = [\"first\"]\n"
        ))
        .replace("confirm_after = \"1s\"", "confirm_after = \"8s\"");
        write_policy(&dir, &format!("marked{port}.toml"), &p)
    };
    // `expect`: what fleetctl must say of host1. A stopped agent cannot report its revert,
    // so the controller only knows when the host's timer reverts; a restarted one reports.
    let kill_during_apply = |file: &str, then: &str, expect: &str| {
        std::thread::scope(|s| {
            let h = s.spawn(|| lab.fleetctl(&["firewall", "apply", file]));
            wait_on(
                &lab,
                1,
                "candidate applied on host1",
                Duration::from_secs(20),
                || fleet_table(&lab, 1).is_some_and(|t| t.contains("\"marker\"")),
            );
            lab.sh(1, &format!("systemctl kill -s KILL fleet-agent{then}"))
                .unwrap();
            let t = Instant::now();
            let out = h.join().unwrap();
            let msg = format!("{:#}", out.unwrap_err());
            assert!(msg.contains(expect), "{msg}");
            t
        })
    };
    let killed = kill_during_apply(
        &marked(7777),
        " && systemctl stop fleet-agent",
        "host1: unconfirmed; reverts by ",
    );
    wait_on(
        &lab,
        1,
        "revert by the timer with the agent stopped",
        CONFIRM_TIMEOUT + Duration::from_secs(5),
        || fleet_table(&lab, 1).as_deref() == Some(confirmed.as_str()),
    );
    assert!(
        killed.elapsed() > Duration::from_secs(3),
        "reverted before the timer could have fired: was the agent really stopped?"
    );
    lab.sh(1, "systemctl start fleet-agent").unwrap();
    wait_on(
        &lab,
        1,
        "host1 up after restart",
        Duration::from_secs(30),
        || host_up(&lab, "host1"),
    );
    wait_on(
        &lab,
        1,
        "host1 reports reverted after restart",
        Duration::from_secs(10),
        || fw_state(&lab, "host1") == "reverted",
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(fleet_table(&lab, 1).as_deref(), Some(confirmed.as_str()));

    // 5b. Killed and restarted by systemd (Restart=always) before the deadline: the new
    // agent reverts at once instead of running on rules nobody can confirm any more.
    let killed = kill_during_apply(&marked(7778), "", "host1: reverted");
    wait_on(
        &lab,
        1,
        "revert by the restarted agent before the timer",
        Duration::from_secs(8),
        || fleet_table(&lab, 1).as_deref() == Some(confirmed.as_str()),
    );
    assert!(
        killed.elapsed() < CONFIRM_TIMEOUT - Duration::from_secs(3),
        "the revert waited for the timer"
    );
    wait_on(
        &lab,
        1,
        "host1 up after the restart",
        Duration::from_secs(30),
        || {
            host_up(&lab, "host1")
                && fw_detail(&lab, "host1").contains("not confirmed before the agent restarted")
        },
    );
    assert!(
        lab.sh(1, "systemctl list-units --all --no-legend 'fleet-firewall-revert-*' | grep -c waiting || true")
            .unwrap()
            .trim()
            == "0",
        "no revert timer left armed"
    );

    // 6. A host that is down when a policy is applied gets it when it comes back.
    let everywhere = write_policy(
        &dir,
        "everywhere.toml",
        &policy("\n[[allow]]\nname = \"caught-up\"\nproto = \"tcp\"\nports = [7779]\nsources = [\"outer\"]\n"),
    );
    lab.fault(2, Fault::Cut).unwrap();
    wait("host2 down", Duration::from_secs(10), || {
        !host_up(&lab, "host2")
    });
    let out = lab
        .fleetctl(&["firewall", "apply", &everywhere, "--output", "json"])
        .unwrap_err();
    let out = format!("{out:#}");
    assert!(out.contains("host2: deferred"), "{out}");
    wait_on(
        &lab,
        1,
        "host1 confirmed the new policy",
        Duration::from_secs(5),
        || {
            fleet_table(&lab, 1).is_some_and(|t| t.contains("\"caught-up\""))
                && fw_state(&lab, "host1") == "confirmed"
        },
    );
    assert!(
        fleet_table(&lab, 2).is_some_and(|t| !t.contains("\"caught-up\"")),
        "host2 was down: nothing changed on it yet"
    );
    lab.fault(2, Fault::Heal).unwrap();
    wait_on(
        &lab,
        2,
        "host2 gets the policy on reconnect",
        Duration::from_secs(90),
        || {
            fleet_table(&lab, 2).is_some_and(|t| t.contains("\"caught-up\""))
                && fw_state(&lab, "host2") == "confirmed"
        },
    );

    // 7. on_drift = "reapply": a hand edit is reported and undone.
    let reapply = write_policy(
        &dir,
        "reapply.toml",
        &policy("").replace("on_drift = \"report\"", "on_drift = \"reapply\""),
    );
    let out = lab
        .fleetctl(&["firewall", "apply", &reapply, "--output", "json"])
        .unwrap();
    assert!(
        outcomes(&out).iter().all(|(_, r)| r == "confirmed"),
        "{out}"
    );
    let confirmed = fleet_table(&lab, 1).expect("fleet table on host1");
    lab.sh(1, "nft add rule inet fleet input tcp dport 9999 accept")
        .unwrap();
    wait_on(&lab, 1, "hand edit undone", Duration::from_secs(15), || {
        fleet_table(&lab, 1).as_deref() == Some(confirmed.as_str())
            && fw_detail(&lab, "host1").contains("re-applied after drift")
    });
    assert_eq!(fw_state(&lab, "host1"), "confirmed");
    lab.down().unwrap();
}
