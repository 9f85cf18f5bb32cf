//! Three controllers on one PostgreSQL store with six real hosts (issue 19, docs/ha.md):
//! the lab's redb fleet is migrated without re-enrolling, two more replicas stand by
//! (relaying what they accept to the leader), and the leader is killed with `kill -9`
//! while a batch of a rollout is switching. Another replica must take over and finish
//! the rollout, every agent must stream to it, each host must activate the new release
//! exactly once (counted in the agents' own journals), and every audit entry written
//! before the kill must still be there, once. Then the
//! PostgreSQL server restarts mid-rollout, and the rollout must still succeed. Last, a
//! host streaming through one standby is reached by a command through another, and
//! removing it there closes the stream the first one holds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::wait;
use fleet_lab::{release, Lab, LabOptions, Paths};
use serde_json::Value;

const HOSTS: u32 = 6;
const PORT: u16 = 8000;
const LEADER: &str = "198.18.0.1:7443";
const REPLICAS: [(&str, u16); 2] = [("198.18.0.1:7445", 7446), ("198.18.0.1:7447", 7448)];

/// A PostgreSQL cluster of the test's own (`lab/pg-test-cluster.sh`), not the shared
/// one of `FLEET_TEST_PG_URL`: this test restarts its server, which would cut every
/// other test's connections. Stopped and removed when dropped. None only under
/// `FLEET_PG=skip`.
struct Cluster {
    dir: String,
    url: String,
}

fn cluster_script(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/pg-test-cluster.sh");
    let out = Command::new("sh").arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pg-test-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    fn start() -> Option<Cluster> {
        if std::env::var("FLEET_PG").as_deref() == Ok("skip") {
            eprintln!("FLEET_PG=skip: HA lab test not run");
            return None;
        }
        let exports = cluster_script(&["start"]);
        let value = |name: &str| {
            let at = exports.find(&format!("{name}='")).expect("an export") + name.len() + 2;
            exports[at..].split('\'').next().unwrap().to_owned()
        };
        Some(Cluster {
            dir: value("FLEET_TEST_PG_DIR"),
            url: value("FLEET_TEST_PG_URL"),
        })
    }

    fn restart(&self) {
        cluster_script(&["restart", &self.dir]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        cluster_script(&["stop", &self.dir]);
    }
}

/// A standby replica this test started; killed (by its PID) when dropped.
struct Replica {
    child: Child,
    addr: &'static str,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether this replica leads now. Every replica answers once one leads (the others
    /// relay), so only its log tells; one that loses the lease logs so and exits.
    fn leads(&self) -> bool {
        let log = self.log();
        log.contains("holds the leader lease") && !log.contains("lost the leader lease")
    }
}

/// One more controller, made by `init --replica-of` the leader's data dir (its CA and
/// sealing key, a serving certificate of its own), on ports of its own.
fn replica(
    lab: &Lab,
    (data, config, work): (&Path, &Path, &Path),
    (addr, http): (&'static str, u16),
    n: usize,
) -> Replica {
    let dir = work.join(format!("controller-replica{n}"));
    let out = Command::new(&lab.binaries().unwrap().controller)
        .args(["init", "--replica-of"])
        .arg(data)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--san", "198.18.0.1", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init --replica-of: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.with_extension("log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(&lab.binaries().unwrap().controller)
        .arg("run")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", addr])
        .args(["--http-listen", &format!("198.18.0.1:{http}")])
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let r = Replica { child, addr, log };
    wait("a replica to stand by", Duration::from_secs(30), || {
        r.log().contains("standby: another controller leads")
    });
    r
}

fn ctl_at(lab: &Lab, addr: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(&lab.binaries().unwrap().fleetctl)
        .args(["--controller", addr, "--identity"])
        .arg(Paths::from_env().admin_identity())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json_at(lab: &Lab, addr: &str, args: &[&str]) -> Option<Value> {
    ctl_at(lab, addr, args).and_then(|s| serde_json::from_str(&s).ok())
}

/// Activations of `version` an agent logged since it started.
fn activations(lab: &Lab, n: u32, version: &str) -> usize {
    let out = lab
        .sh(n, "journalctl -u fleet-agent -o cat --no-pager")
        .unwrap();
    out.lines()
        .filter(|l| l.contains("release activated") && l.contains(&format!("version={version}")))
        .count()
}

#[test]
fn a_rollout_survives_the_kill_of_its_leader_among_three_replicas() {
    common::init();
    let mut opts = LabOptions::fleet(HOSTS);
    opts.agent.heartbeat = Some("1s".into());
    let Some(mut lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let Some(db) = Cluster::start() else { return };
    let paths = Paths::from_env();
    let data = paths.controller_data();
    let config = fleet_lab::fleet::controller_config(&paths);
    let controller = lab.binaries().unwrap().controller.clone();
    // The replicas' data dirs and logs, and the releases' files.
    let work = tempfile::tempdir().unwrap();

    // --- the lab's redb fleet moves onto PostgreSQL: no host re-enrolls
    lab.restart_controller_with(|| {
        std::fs::write(
            &config,
            format!("[store]\nurl = \"{}\"\nlease_ttl = \"2s\"\n", db.url),
        )?;
        let out = Command::new(&controller)
            .args(["migrate", "--from", "redb", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .unwrap();
    let names: Vec<String> = (1..=HOSTS).map(|n| format!("host{n}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.wait_fleet_state(&name_refs, "up", Duration::from_secs(60))
        .unwrap();
    let replicas: Vec<Replica> = REPLICAS
        .iter()
        .enumerate()
        .map(|(i, r)| replica(&lab, (&data, &config, work.path()), *r, i + 1))
        .collect();

    // --- every agent learns all three from the controller, on its open stream: nobody
    // edits agent.toml or restarts an agent
    let list = std::iter::once(LEADER)
        .chain(REPLICAS.iter().map(|r| r.0))
        .collect::<Vec<_>>()
        .join(",");
    common::ctl(&lab, &["controllers", "set", &list]);
    let line = format!("controller = \"{list}\"");
    for n in 1..=HOSTS {
        wait(
            &format!("host{n} to keep the controller list"),
            Duration::from_secs(15),
            || {
                lab.sh(n, "cat /var/lib/fleet-agent/agent.toml")
                    .is_ok_and(|t| t.contains(&line))
            },
        );
    }

    // --- a release uploaded to the leader: served by whichever replica leads next
    let spec = release::spec("shop", "gunicorn", PORT, "");
    let spec_path = release::write(work.path(), "shop.toml", spec.as_bytes()).unwrap();
    common::ctl(&lab, &["app", "apply", spec_path.to_str().unwrap()]);
    for v in ["1.0", "2.0"] {
        let tar = release::sample("wsgi", v, &[]).unwrap();
        let p = release::write(work.path(), &format!("shop-{v}.tar.gz"), &tar).unwrap();
        common::ctl(
            &lab,
            &[
                "release",
                "upload",
                "shop",
                p.to_str().unwrap(),
                "--version",
                v,
            ],
        );
    }
    common::ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    common::ctl(
        &lab,
        &[
            "rollout",
            "shop",
            "--version",
            "2.0",
            "--max-parallel",
            "2",
            "--min-healthy",
            "3s",
            "--healthy-deadline",
            "40s",
            "--detach",
        ],
    );
    wait(
        "the second batch to be switching",
        Duration::from_secs(90),
        || {
            let Some(s) = json_at(
                &lab,
                LEADER,
                &["rollout", "status", "shop", "--output", "json"],
            ) else {
                return false;
            };
            let s = &s["rollout"];
            s["current_batch"].as_u64() >= Some(1)
                && s["hosts"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|h| h["phase"] == "switching"))
        },
    );
    let audit_before: Vec<Value> =
        serde_json::from_str(&common::ctl(&lab, &["audit", "--output", "json"])).unwrap();

    // --- kill -9 of the leader mid-batch
    let leader = lab.controller().unwrap();
    leader.signal(nix::sys::signal::SIGKILL);
    let killed = Instant::now();
    assert!(leader.wait_gone(Duration::from_secs(10)));
    let (next, resumed) = loop {
        // Both replicas answer once one leads (the other relays to it): find the leader.
        let found = replicas.iter().find(|r| {
            r.leads()
                && json_at(
                    &lab,
                    r.addr,
                    &["rollout", "status", "shop", "--output", "json"],
                )
                .is_some()
        });
        if let Some(r) = found {
            break (r, killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no replica took over within 15 s:\n{}\n{}",
            replicas[0].log(),
            replicas[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Agents streaming to the other replica count: it relays them to the leader.
    let streaming = loop {
        let up = json_at(&lab, next.addr, &["hosts", "--output", "json"])
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|h| h.len() == HOSTS as usize && h.iter().all(|h| h["state"] == "up"));
        if up {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "agents did not all stream to {}",
            next.addr
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "leader killed: {} resumed after {:.1} s, every agent streaming to it after {:.1} s",
        next.addr,
        resumed.as_secs_f64(),
        streaming.as_secs_f64()
    );
    assert!(
        streaming < Duration::from_secs(5) + resumed,
        "agents took {streaming:?} to stream to the new leader (it served after {resumed:?})"
    );

    // --- PostgreSQL restarts mid-rollout: the replicas reconnect and it goes on
    let s = json_at(
        &lab,
        next.addr,
        &["rollout", "status", "shop", "--output", "json"],
    )
    .expect("the new leader answers");
    assert_eq!(s["rollout"]["state"], "running", "{s:#}");
    let outage = Instant::now();
    db.restart();
    eprintln!(
        "PostgreSQL restarted in {:.1} s",
        outage.elapsed().as_secs_f64()
    );

    // --- the rollout finishes, each host switched exactly once. A restart longer than the
    // lease's margin hands the lead on again, so ask whichever replica leads then.
    let serving = || {
        replicas.iter().filter(|r| r.leads()).find_map(|r| {
            json_at(
                &lab,
                r.addr,
                &["rollout", "status", "shop", "--output", "json"],
            )
            .map(|s| (r, s))
        })
    };
    wait("the rollout to end", Duration::from_secs(180), || {
        serving().is_some_and(|(_, s)| {
            matches!(
                s["rollout"]["state"].as_str(),
                Some("succeeded" | "reverted" | "failed" | "aborted")
            )
        })
    });
    let (next, s) = serving().unwrap();
    assert_eq!(
        s["rollout"]["state"],
        "succeeded",
        "{s:#}\n{}\n{}",
        replicas[0].log(),
        replicas[1].log()
    );
    let status = json_at(&lab, next.addr, &["status", "shop", "--output", "json"]).unwrap();
    for e in status.as_array().unwrap() {
        assert_eq!(
            e["release"], "2.0",
            "no host on a mix of releases: {status:#}"
        );
    }
    for n in 1..=HOSTS {
        assert_eq!(
            activations(&lab, n, "2.0"),
            1,
            "host{n} activated 2.0 other than once"
        );
    }
    // The step in flight at the kill was sent again under its id, and answered once.
    let resent: usize = (1..=HOSTS)
        .map(|n| {
            lab.sh(n, "journalctl -u fleet-agent -o cat --no-pager")
                .unwrap()
                .matches("command received again")
                .count()
        })
        .sum();
    assert!(resent >= 1, "no agent saw the step in flight again");
    let audit = ctl_at(&lab, next.addr, &["audit"]).unwrap_or_default();
    assert!(audit.contains("rollout.resume"), "{audit}");

    // --- every audit entry acknowledged before the kill is there, once
    let audit_after: Vec<Value> =
        serde_json::from_str(&ctl_at(&lab, next.addr, &["audit", "--output", "json"]).unwrap())
            .unwrap();
    for e in &audit_before {
        let n = audit_after.iter().filter(|a| *a == e).count();
        assert_eq!(
            n, 1,
            "audit entry {e} is there {n} times after the failover"
        );
    }

    // --- a host behind a standby: a command and a revocation through another standby
    // reach it. A new standby on the dead leader's address, first in every agent's list;
    // host6's agent restarted, so it connects there and is relayed to the leader.
    let front = replica(
        &lab,
        (&data, &config, work.path()),
        (LEADER, 7449),
        REPLICAS.len() + 1,
    );
    wait("the new standby to relay", Duration::from_secs(15), || {
        front.log().contains("relay: calls go to the leader")
    });
    let other = replicas.iter().find(|r| r.addr != next.addr).unwrap();
    lab.sh(6, "systemctl restart fleet-agent").unwrap();
    wait(
        "host6 streaming through the new standby",
        Duration::from_secs(30),
        || {
            json_at(&lab, other.addr, &["hosts", "--output", "json"]).is_some_and(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["name"] == "host6" && h["state"] == "up" && h["via"] == LEADER)
            })
        },
    );
    for via in [other.addr, next.addr, LEADER] {
        let out = ctl_at(
            &lab,
            via,
            &[
                "exec",
                "shop",
                "--host",
                "host6",
                "--",
                "cat",
                "/etc/hostname",
            ],
        );
        assert!(
            out.as_deref().is_some_and(|o| o.contains("host6")),
            "a command through {via} did not run on host6 behind {LEADER}: {out:?}"
        );
    }
    let removed = Instant::now();
    let out = ctl_at(&lab, other.addr, &["host", "remove", "host6"]).unwrap();
    assert!(out.contains("its stream closed"), "{out}");
    wait(
        "host6's relayed stream to close on the leader",
        Duration::from_secs(2),
        || next.log().contains("host down host=host6"),
    );
    eprintln!(
        "host6 behind {LEADER}: stream closed {:.2} s after its removal through {}",
        removed.elapsed().as_secs_f64(),
        other.addr
    );
    wait("host6 to be refused", Duration::from_secs(20), || {
        lab.sh(6, "journalctl -u fleet-agent -o cat --no-pager")
            .is_ok_and(|j| j.contains("revoked"))
    });
    drop(front);
    drop(replicas);
}
