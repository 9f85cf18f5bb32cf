//! Two controllers on one PostgreSQL store (docs/ha.md), on loopback with a real agent
//! that knows both addresses: the leader serves, the standby relays every call it takes
//! to the leader (an agent behind it is served, commanded and cut off by the leader like
//! one on the leader, and a revocation counts on both within 2 s); killed,
//! the leader is replaced by the standby once its lease expires and the agent follows;
//! paused past its lease, the old leader is fenced and exits when it wakes; an agent that
//! joined knowing only one controller learns the other from `fleetctl controllers set`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::pg::Schema;
use support::{bin, free_port, wait_for, Fleet, Proc};

const LEASE: &str = "lease_ttl = \"2s\"";

struct Standby {
    proc: Proc,
    addr: String,
    data: std::path::PathBuf,
}

/// A second controller made by `init --replica-of` (the leader's CA and sealing key, a
/// serving certificate of its own), its own ports, the same settings file.
fn standby(fleet: &Fleet, config: &str) -> Standby {
    standby_named(fleet, config, "b")
}

fn standby_named(fleet: &Fleet, config: &str, name: &str) -> Standby {
    let data = fleet.dir.path().join(format!("controller-{name}"));
    let replica_of = || {
        Command::new(bin("fleet-controller"))
            .args(["init", "--replica-of"])
            .arg(fleet.data_dir())
            .arg("--data-dir")
            .arg(&data)
            .args(["--san", "127.0.0.1", "--config", config])
            .output()
            .unwrap()
    };
    let out = replica_of();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&fleet.pin));
    let own = |d: &Path| std::fs::read(d.join("controller.crt")).unwrap();
    assert_ne!(
        own(&data),
        own(&fleet.data_dir()),
        "a serving certificate of its own"
    );
    assert!(
        !data.join("admin").exists(),
        "the admin identity stays behind"
    );
    // Into a directory that holds something, it refuses and writes nothing.
    let out = replica_of();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin("fleet-controller"));
    cmd.arg("run")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &addr])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--config", config]);
    let proc = Proc::spawn(cmd, fleet.dir.path().join(format!("controller-{name}.log")));
    wait_for(
        "the standby to see the leader",
        Duration::from_secs(20),
        || {
            proc.log()
                .contains("standby: another controller leads")
                .then_some(())
        },
    );
    // A standby serves too: it relays what it accepts to the leader.
    let hosts = wait_for(
        "the standby to relay to the leader",
        Duration::from_secs(10),
        || fleetctl_at(&addr, &fleet.admin_dir(), &["hosts", "--output", "json"]),
    );
    assert!(hosts.starts_with('['), "{hosts}");
    Standby { proc, addr, data }
}

/// fleetctl against `addr` only, as `identity`, whatever the environment says.
fn fleetctl_run(addr: &str, identity: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("fleetctl"))
        .args(["--controller", addr])
        .arg("--identity")
        .arg(identity)
        .args(args)
        .env_remove("FLEET_CONTROLLER")
        .env_remove("FLEET_IDENTITY")
        .output()
        .unwrap()
}

fn fleetctl_at(addr: &str, identity: &Path, args: &[&str]) -> Option<String> {
    let out = fleetctl_run(addr, identity, args);
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

fn state_at(addr: &str, identity: &Path, host: &str) -> Option<String> {
    let hosts: Vec<serde_json::Value> = serde_json::from_str(&fleetctl_at(
        addr,
        identity,
        &["hosts", "--output", "json"],
    )?)
    .ok()?;
    hosts
        .into_iter()
        .find(|h| h["name"] == host)
        .map(|h| h["state"].as_str().unwrap().to_owned())
}

/// Leader A (from `Fleet::init`), standby B, and an agent joined with both addresses.
fn two_controllers(schema: &Schema) -> (Fleet, Standby, Proc) {
    two_controllers_joined(schema, Join::Both)
}

/// The addresses the agent joins with.
#[derive(Clone, Copy, PartialEq)]
enum Join {
    Both,
    OnlyA,
    OnlyB,
}

/// As `two_controllers`, the agent joined with the addresses `join` names.
fn two_controllers_joined(schema: &Schema, join: Join) -> (Fleet, Standby, Proc) {
    let scratch = tempfile::tempdir().unwrap();
    let config = schema.config(scratch.path(), "");
    let text = std::fs::read_to_string(&config).unwrap() + LEASE + "\n";
    let mut fleet = Fleet::init(&["--config", config.to_str().unwrap()], &[]);
    let config = fleet.dir.path().join("controller-pg.toml");
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap().to_owned();
    fleet.extra_args = vec!["--config".into(), config.clone()];
    fleet.run_controller();
    wait_for("A to lead", Duration::from_secs(10), || {
        fleet
            .controller_log()
            .contains("holds the leader lease")
            .then_some(())
    });
    let b = standby(&fleet, &config);

    let token = fleet.token(&[]);
    let state = fleet.dir.path().join("agent-web-1");
    let join_with = match join {
        Join::Both => format!("{},{}", fleet.addr(), b.addr),
        Join::OnlyA => fleet.addr(),
        Join::OnlyB => b.addr.clone(),
    };
    let out = Command::new(bin("fleet-agent"))
        .args([
            "join",
            "--controller",
            &join_with,
            "--token",
            &token,
            "--ca-pin",
            &fleet.pin,
        ])
        .arg("--state-dir")
        .arg(&state)
        .args(["--name", "web-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));
    (fleet, b, agent)
}

#[test]
fn the_standby_takes_over_a_killed_leader_and_the_agent_follows_it() {
    let Some(schema) = Schema::new() else { return };
    let (mut fleet, b, agent) = two_controllers(&schema);
    let identity = fleet.admin_dir();
    // fleetctl given both, standby first: the standby relays to the leader.
    let both = format!("{},{}", b.addr, fleet.addr());
    let hosts = fleetctl_at(&both, &identity, &["hosts", "--output", "json"]).expect("B relays");
    let hosts: Vec<serde_json::Value> = serde_json::from_str(&hosts).unwrap();
    assert_eq!(hosts[0]["name"], "web-1");
    assert!(
        hosts[0]["via"].is_null(),
        "connected to the leader itself: {hosts:?}"
    );
    // An operator revoked through the leader stays out on the controller that follows.
    let alice = fleet.dir.path().join("alice");
    fleetctl_at(
        &fleet.addr(),
        &identity,
        &[
            "admin",
            "add",
            "alice",
            "--role",
            "viewer",
            "--out",
            alice.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(fleetctl_at(&fleet.addr(), &alice, &["hosts"]).is_some());
    fleetctl_at(&fleet.addr(), &identity, &["admin", "revoke", "alice"]).unwrap();
    assert!(fleetctl_at(&fleet.addr(), &alice, &["hosts"]).is_none());

    fleet
        .controller
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let _ = fleet.controller.take().map(|mut c| c.child.wait());
    wait_for("the standby to lead", Duration::from_secs(15), || {
        b.proc
            .log()
            .contains("holds the leader lease")
            .then_some(())
    });
    let led = killed.elapsed();
    wait_for(
        "web-1 up on the new leader",
        Duration::from_secs(20),
        || (state_at(&b.addr, &identity, "web-1").as_deref() == Some("up")).then_some(()),
    );
    let back = killed.elapsed();
    eprintln!("kill -9 -> new leader {led:?}, agent streaming to it {back:?}");
    assert!(
        agent.log().contains(&b.addr),
        "the agent reconnected to the other address: {}",
        agent.log()
    );
    // The new leader serves from the shared records: the host, its token, the audit log;
    // fleetctl with both addresses moves past the dead one.
    let audit = fleetctl_at(&both, &identity, &["audit"]).unwrap();
    assert!(audit.contains("host.join"), "{audit}");
    assert!(
        fleetctl_at(&b.addr, &alice, &["hosts"]).is_none(),
        "a revoked operator is refused by the new leader"
    );
    assert!(fleetctl_at(&b.addr, &identity, &["hosts"]).is_some());
    // It serves joins too.
    let token = fleetctl_at(&b.addr, &identity, &["token", "create"]).unwrap();
    assert!(!token.trim().is_empty());
    drop(b.data);
}

#[test]
fn a_leader_paused_past_its_lease_is_fenced_and_exits_when_it_wakes() {
    let Some(schema) = Schema::new() else { return };
    let (mut fleet, b, _agent) = two_controllers(&schema);
    let a = fleet.controller.take().unwrap();
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_for("the standby to lead", Duration::from_secs(15), || {
        b.proc
            .log()
            .contains("holds the leader lease")
            .then_some(())
    });
    a.signal(nix::sys::signal::Signal::SIGCONT);
    let mut a = a;
    let status = wait_for("the old leader to exit", Duration::from_secs(15), || {
        a.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(75), "{}", a.log());
    assert!(a.log().contains("lost the leader lease"), "{}", a.log());
    // B goes on leading.
    assert!(fleetctl_at(&b.addr, &fleet.admin_dir(), &["hosts"]).is_some());
}

/// The `controller` line of an agent's agent.toml.
fn agent_controllers(state: &Path) -> String {
    let text = std::fs::read_to_string(state.join("agent.toml")).unwrap();
    let meta: toml::Table = text.parse().unwrap();
    meta["controller"].as_str().unwrap().to_owned()
}

#[test]
fn an_agent_learns_the_controller_list_and_fails_over_to_an_address_it_did_not_join_with() {
    let Some(schema) = Schema::new() else { return };
    let (mut fleet, b, agent) = two_controllers_joined(&schema, Join::OnlyA);
    let identity = fleet.admin_dir();
    let a_addr = fleet.addr();
    let state = fleet.dir.path().join("agent-web-1");
    assert_eq!(agent_controllers(&state), a_addr);
    let shown = fleetctl_at(&a_addr, &identity, &["controllers"]).unwrap();
    assert!(shown.contains("no controller addresses set"), "{shown}");

    // A bad list is refused with the entry named, and changes nothing.
    let out = Command::new(bin("fleetctl"))
        .args(["--controller", &a_addr])
        .arg("--identity")
        .arg(&identity)
        .args(["controllers", "set", &format!("{a_addr},c2")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"c2\" is not a controller address"), "{err}");
    let shown = fleetctl_at(&a_addr, &identity, &["controllers"]).unwrap();
    assert!(shown.contains("no controller addresses set"), "{shown}");

    // A list without the controller the agent reached: the agent keeps that one last.
    fleetctl_at(&a_addr, &identity, &["controllers", "set", &b.addr]).unwrap();
    let kept = format!("{},{a_addr}", b.addr);
    wait_for("the agent to learn B", Duration::from_secs(10), || {
        (agent_controllers(&state) == kept).then_some(())
    });
    // Then the whole list, in the operator's order.
    let both = format!("{a_addr},{}", b.addr);
    let shown = fleetctl_at(&a_addr, &identity, &["controllers", "set", &both]).unwrap();
    assert!(shown.contains(&b.addr), "{shown}");
    wait_for("the agent to learn both", Duration::from_secs(10), || {
        (agent_controllers(&state) == both).then_some(())
    });
    let json = fleetctl_at(&a_addr, &identity, &["controllers", "--output", "json"]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["addresses"], serde_json::json!([a_addr, b.addr]));
    assert_eq!(json["set_by"], "spiffe://fleet.local/admin/admin");
    let audit = fleetctl_at(&a_addr, &identity, &["audit"]).unwrap();
    assert_eq!(audit.matches("fleet.controllers").count(), 2, "{audit}");

    // A dies: the agent finds B, an address it did not join with.
    fleet
        .controller
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    let _ = fleet.controller.take().map(|mut c| c.child.wait());
    wait_for("web-1 up on B", Duration::from_secs(30), || {
        (state_at(&b.addr, &identity, "web-1").as_deref() == Some("up")).then_some(())
    });
    assert!(agent.log().contains(&b.addr), "{}", agent.log());
    // B hands out the same list (from the shared store): nothing to rewrite.
    assert_eq!(agent_controllers(&state), both);
}

const SPEC: &str = r#"
name = "shop"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
health = { path = "/health", timeout = "2s" }
"#;

fn fleetctl_err(addr: &str, identity: &Path, args: &[&str]) -> String {
    let out = fleetctl_run(addr, identity, args);
    assert!(
        !out.status.success(),
        "fleetctl {args:?} at {addr} succeeded"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn an_agent_behind_the_standby_is_served_commanded_and_cut_off_by_the_leader() {
    let Some(schema) = Schema::new() else { return };
    // Joined through B only: the join and then the stream are relayed to A.
    let (fleet, b, agent) = two_controllers_joined(&schema, Join::OnlyB);
    let identity = fleet.admin_dir();
    let a_addr = fleet.addr();
    let state = fleet.dir.path().join("agent-web-1");
    assert_eq!(agent_controllers(&state), b.addr);
    assert!(agent.log().contains(&b.addr), "{}", agent.log());
    assert!(
        fleet
            .controller_log()
            .contains("host up host=web-1 address=127.0.0.1"),
        "the leader holds the session, with the agent's own address: {}",
        fleet.controller_log()
    );
    assert_eq!(state_at(&b.addr, &identity, "web-1").as_deref(), Some("up"));
    // Which controller relays the host's stream is shown with it.
    let hosts = fleetctl_at(&a_addr, &identity, &["hosts", "--output", "json"]).unwrap();
    let hosts: Vec<serde_json::Value> = serde_json::from_str(&hosts).unwrap();
    assert_eq!(hosts[0]["via"], b.addr.as_str(), "{hosts:?}");
    let table = fleetctl_at(&b.addr, &identity, &["hosts"]).unwrap();
    assert!(
        table.contains(&format!("127.0.0.1 via {}", b.addr)),
        "{table}"
    );

    // A command through A reaches the agent behind B, and its answer comes back.
    let spec = fleet.dir.path().join("shop.toml");
    std::fs::write(&spec, SPEC).unwrap();
    fleetctl_at(
        &a_addr,
        &identity,
        &["app", "apply", spec.to_str().unwrap()],
    )
    .unwrap();
    for via in [&a_addr, &b.addr] {
        let e = fleetctl_err(
            via,
            &identity,
            &["exec", "shop", "--host", "web-1", "--", "id"],
        );
        assert!(
            e.contains("web-1: app shop is not deployed on this host"),
            "via {via}: {e}"
        );
    }

    // An operator added and revoked through B: refused by both within 2 s.
    let alice = fleet.dir.path().join("alice");
    let args = [
        "admin",
        "add",
        "alice",
        "--role",
        "viewer",
        "--out",
        alice.to_str().unwrap(),
    ];
    fleetctl_at(&b.addr, &identity, &args).unwrap();
    assert!(fleetctl_at(&b.addr, &alice, &["hosts"]).is_some());
    assert!(fleetctl_at(&a_addr, &alice, &["hosts"]).is_some());
    fleetctl_at(&b.addr, &identity, &["admin", "revoke", "alice"]).unwrap();
    let revoked = Instant::now();
    for via in [&a_addr, &b.addr] {
        wait_for("alice to be refused", Duration::from_secs(2), || {
            fleetctl_at(via, &alice, &["hosts"]).is_none().then_some(())
        });
    }
    eprintln!(
        "revoked operator refused everywhere after {:?}",
        revoked.elapsed()
    );
    // Within 2 s B itself refuses the certificate in the handshake (before that, the
    // leader refused what B relayed); the refusal says why.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(revoked.elapsed()));
    let e = fleetctl_err(&b.addr, &alice, &["hosts"]);
    assert!(e.contains("revoked"), "{e}");
    wait_for(
        "B to refuse alice in the handshake",
        Duration::from_secs(2),
        || {
            let log = b.proc.log();
            (log.contains("TLS handshake refused") && log.contains("Revoked")).then_some(())
        },
    );

    // Removing the host through B closes its stream, which B relays, at once, and the
    // agent is refused from then on.
    let start = Instant::now();
    let out = fleetctl_at(&b.addr, &identity, &["host", "remove", "web-1"]).unwrap();
    assert!(
        out.contains("1 certificate(s) revoked, its stream closed"),
        "{out}"
    );
    wait_for("the stream to close", Duration::from_secs(1), || {
        fleet
            .controller_log()
            .contains("host down host=web-1")
            .then_some(())
    });
    eprintln!(
        "stream behind B closed {:?} after host remove",
        start.elapsed()
    );
    wait_for(
        "the agent to report its revocation",
        Duration::from_secs(10),
        || agent.log().contains("revoked").then_some(()),
    );
    assert!(state_at(&b.addr, &identity, "web-1").is_none());
}

#[test]
fn a_standby_moves_the_agents_it_relays_to_a_new_leader_at_once() {
    let Some(schema) = Schema::new() else { return };
    let (mut fleet, b, agent) = two_controllers_joined(&schema, Join::OnlyB);
    let config = fleet.dir.path().join("controller-pg.toml");
    let c = standby_named(&fleet, config.to_str().unwrap(), "c");
    let identity = fleet.admin_dir();
    // A is paused: its relayed streams would hang until a keepalive gave up. Whichever
    // of B and C takes over, the agent behind B must stream to it soon after: B ends
    // what it relayed to A at once, and the agent comes back within its own reconnect
    // spread (5 s by default; it knows only B, so there is no failover sweep).
    let a = fleet.controller.take().unwrap();
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    let (next, took) = wait_for("B or C to lead", Duration::from_secs(15), || {
        [&b, &c]
            .into_iter()
            .find(|r| r.proc.log().contains("holds the leader lease"))
            .map(|r| (r, Instant::now()))
    });
    while state_at(&next.addr, &identity, "web-1").as_deref() != Some("up") {
        assert!(
            took.elapsed() < Duration::from_secs(8),
            "web-1 not up on {} within 8 s\nagent:\n{}\nB:\n{}\nC:\n{}",
            next.addr,
            agent.log(),
            b.proc.log(),
            c.proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{} leads; the agent behind B streams to it after {:?}",
        next.addr,
        took.elapsed()
    );
    if next.addr == c.addr {
        assert!(
            b.proc
                .log()
                .contains("relay: calls go to the leader at this address"),
            "{}",
            b.proc.log()
        );
        let hosts = fleetctl_at(&c.addr, &identity, &["hosts", "--output", "json"]).unwrap();
        assert!(hosts.contains(&b.addr), "still relayed by B: {hosts}");
    }
    assert!(agent.log().contains(&b.addr));
    a.signal(nix::sys::signal::Signal::SIGCONT);
    let mut a = a;
    let status = wait_for("the old leader to exit", Duration::from_secs(15), || {
        a.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(75), "{}", a.log());
}
