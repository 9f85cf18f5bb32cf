//! Enrollment, liveness, renewal and revocation end to end with the real binaries:
//! fleet-controller, fleetctl and fleet-agent, on loopback, with 1 s heartbeats.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{http_get, now_secs, wait_for, Fleet};

/// Three missed 1 s heartbeats, plus the controller's 200 ms liveness tick and fleetctl's
/// own round trip.
const DOWN_WITHIN: Duration = Duration::from_millis(4000);

fn serial(state: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    let der = fleet_proto::transport::certs_from_pem(&pem, "agent cert").unwrap();
    fleet_proto::peer::cert_info(&der[0]).unwrap().serial
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn enrolled_agent_is_up_goes_down_when_killed_and_survives_a_controller_restart() {
    let mut fleet = Fleet::start(&[]);
    let state = fleet.join("web-1", &fleet.token(&[]));
    let mut agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));

    let host = fleet
        .hosts()
        .into_iter()
        .find(|h| h["name"] == "web-1")
        .unwrap();
    assert_eq!(host["address"], "127.0.0.1");
    assert_eq!(host["version"], env!("CARGO_PKG_VERSION"));
    assert!(host["last_seen"].as_str().unwrap().ends_with('Z'), "{host}");
    assert!(
        host["cert_expires"].as_str().unwrap().ends_with('Z'),
        "{host}"
    );
    let table = fleet.ok(&["hosts"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web-1") && l.contains(" up ")),
        "{table}"
    );

    // kill -9: the kernel closes the connection, the stream ends, the host is down.
    agent.stop();
    let took = fleet.wait_state("web-1", "down", DOWN_WITHIN);
    eprintln!("down {took:?} after SIGKILL");

    let agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));

    // A frozen agent keeps its TCP connection open but stops heartbeating.
    agent.signal(Signal::SIGSTOP);
    let took = fleet.wait_state("web-1", "down", DOWN_WITHIN);
    assert!(
        took >= Duration::from_millis(1500),
        "down after {took:?}: before any heartbeat was missed"
    );
    agent.signal(Signal::SIGCONT);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));

    fleet.restart_controller();
    let took = fleet.wait_state("web-1", "up", Duration::from_secs(15));
    eprintln!("back up {took:?} after the controller restarted");
    // A graceful stop tells its agents over how long to spread their return.
    let log = agent.log();
    assert!(
        log.contains("controller is restarting: "),
        "the agent did not see the controller's return window:\n{log}"
    );
}

#[test]
fn certificate_renews_without_dropping_the_stream() {
    let fleet = Fleet::start(&["--agent-cert-lifetime", "6s"]);
    let state = fleet.join("renew-me", &fleet.token(&[]));
    let first = serial(&state);
    let first_key = std::fs::read(state.join("agent.key")).unwrap();
    let _agent = fleet.run_agent("renew-me", &state);
    fleet.wait_state("renew-me", "up", Duration::from_secs(15));

    // Two renewals (at 2/3 of 6 s each): the renewed certificate is itself renewed.
    let second = wait_for("first renewal", Duration::from_secs(10), || {
        let s = serial(&state);
        (s != first).then_some(s)
    });
    wait_for("second renewal", Duration::from_secs(10), || {
        (serial(&state) != second).then_some(())
    });
    // Each renewal rotated the key, and the pair on disk is whole.
    assert_ne!(std::fs::read(state.join("agent.key")).unwrap(), first_key);
    assert!(!state.join("agent.key.next").exists());

    assert_eq!(fleet.host_state("renew-me").as_deref(), Some("up"));
    let log = fleet.controller_log();
    assert_eq!(
        count(&log, "host up host=renew-me"),
        1,
        "the stream was re-opened:\n{log}"
    );
    assert_eq!(count(&log, "host down host=renew-me"), 0, "{log}");
    assert!(
        count(&log, "certificate renewed host=renew-me") >= 2,
        "{log}"
    );
}

/// Serial and expiry (Unix seconds) of the controller's certificate on disk.
fn controller_cert(fleet: &Fleet) -> (String, i64) {
    let pem = std::fs::read_to_string(fleet.data_dir().join("controller.crt")).unwrap();
    let der = fleet_proto::transport::certs_from_pem(&pem, "controller cert").unwrap();
    let info = fleet_proto::peer::cert_info(&der[0]).unwrap();
    (info.serial, info.not_after)
}

#[test]
fn controller_renews_its_certificate_before_listening_and_while_serving() {
    // The certificate expires while the controller is not running...
    let mut fleet = Fleet::init(
        &["--server-cert-lifetime", "3s"],
        &["--server-cert-lifetime", "6s"],
    );
    let (first, first_expiry) = controller_cert(&fleet);
    wait_for(
        "the first certificate to expire",
        Duration::from_secs(10),
        || (now_secs() > first_expiry).then_some(()),
    );
    // ...so the controller renews it before it accepts anyone: clients connect at once.
    fleet.run_controller();
    let (second, second_expiry) = controller_cert(&fleet);
    assert_ne!(first, second, "an expired certificate was kept");
    assert!(second_expiry > now_secs(), "renewed into the past");
    let state = fleet.join("web-1", &fleet.token(&[]));
    let mut agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));

    // While serving: renewed at 2/3 of its 6 s, and again, without a restart.
    let third = wait_for("a renewal while serving", Duration::from_secs(10), || {
        let (s, _) = controller_cert(&fleet);
        (s != second).then_some(s)
    });
    let (fourth, fourth_expiry) = wait_for("another renewal", Duration::from_secs(10), || {
        let c = controller_cert(&fleet);
        (c.0 != third).then_some(c)
    });
    // Past the expiry of the certificate the agent connected under, its stream lives on,
    // and new handshakes (fleetctl's, a restarted agent's) get the renewed certificate.
    wait_for(
        "the agent's first certificate to expire",
        Duration::from_secs(10),
        || (now_secs() > second_expiry).then_some(()),
    );
    assert_eq!(fleet.host_state("web-1").as_deref(), Some("up"));
    agent.stop();
    let _agent = fleet.run_agent("web-1", &state);
    wait_for(
        "the restarted agent to reconnect",
        Duration::from_secs(15),
        || (count(&fleet.controller_log(), "host up host=web-1") >= 2).then_some(()),
    );

    let log = fleet.controller_log();
    assert!(count(&log, "controller certificate renewed") >= 3, "{log}");
    let audit = fleet.ok(&["audit"]);
    assert!(audit.contains("controller.cert.renew"), "{audit}");
    assert!(audit.contains("(it had expired)"), "{audit}");
    // The gauge follows the certificate being served (or the one after it, if renewed
    // again meanwhile).
    let (_, metrics) = http_get(&fleet.http_addr(), "/metrics", None);
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fleet_controller_certificate_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        expiry >= fourth_expiry,
        "{expiry} < {fourth_expiry} ({fourth})"
    );
}

#[test]
fn removed_host_is_cut_off_at_once_and_stays_out_until_it_rejoins() {
    let mut fleet = Fleet::start(&[]);
    let state = fleet.join("web-2", &fleet.token(&[]));
    let agent = fleet.run_agent("web-2", &state);
    fleet.wait_state("web-2", "up", Duration::from_secs(15));

    let start = Instant::now();
    let out = fleet.ok(&["host", "remove", "web-2"]);
    assert!(
        out.contains("1 certificate(s) revoked, its stream closed"),
        "{out}"
    );
    wait_for("the stream to close", Duration::from_secs(1), || {
        fleet
            .controller_log()
            .contains("host down host=web-2")
            .then_some(())
    });
    eprintln!("stream closed {:?} after host remove", start.elapsed());
    assert!(fleet.hosts().iter().all(|h| h["name"] != "web-2"));

    // The agent keeps trying; every attempt is refused in the handshake.
    wait_for(
        "the agent to report its revocation",
        Duration::from_secs(10),
        || agent.log().contains("revoked").then_some(()),
    );
    wait_for("a refused handshake", Duration::from_secs(10), || {
        let log = fleet.controller_log();
        (log.contains("TLS handshake refused") && log.contains("Revoked")).then_some(())
    });

    fleet.restart_controller();
    wait_for(
        "a refused handshake after restart",
        Duration::from_secs(40),
        || {
            let log = fleet.controller_log();
            (log.contains("TLS handshake refused") && log.contains("Revoked")).then_some(())
        },
    );
    assert!(fleet.hosts().iter().all(|h| h["name"] != "web-2"));
    assert_eq!(count(&fleet.controller_log(), "host up host=web-2"), 0);

    // Only a new token brings it back; the running agent picks up the new certificate.
    let out = fleet.agent_join("web-2", &fleet.token(&[]), &state, &["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.wait_state("web-2", "up", Duration::from_secs(40));
    let audit = fleet.ok(&["audit", "--output", "json"]);
    let actions: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&audit)
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        [
            "fleet.init",
            "token.create",
            "host.join",
            "host.remove",
            "token.create",
            "host.join"
        ]
    );
}
