//! Runs the real `fleet-agent` binary for behaviour that needs no controller. A loopback
//! listener stands in for the controller address and proves that refused commands never
//! opened a connection.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use fleet_agent::state::{Meta, NewEnrollment, StateDir};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");
const GOOD_PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn agent(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FLEET_CONTROLLER")
        .env_remove("FLEET_AGENT_STATE_DIR")
        .env_remove("FLEET_AGENT_HEARTBEAT_INTERVAL")
        .env_remove("FLEET_AGENT_METRICS_LISTEN")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run fleet-agent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loopback port that records whether anything connected to it.
struct Witness(TcpListener);

impl Witness {
    fn new() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Witness(l)
    }

    fn addr(&self) -> String {
        self.0.local_addr().unwrap().to_string()
    }

    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("fleet-agent connected to the controller address: {other:?}"),
        }
    }
}

/// Writes a real enrollment for `web-1` into `dir`.
fn enroll(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://fleet.local/agent/web-1".try_into().unwrap(),
    )];
    let cert = params.signed_by(&key, &issuer).unwrap();
    StateDir::new(dir)
        .write_enrollment(&NewEnrollment {
            meta: &Meta {
                controller: "127.0.0.1:7443".parse().unwrap(),
                name: "web-1".parse().unwrap(),
                trust_domain: "fleet.local".parse().unwrap(),
            },
            key_pem: &key.serialize_pem(),
            cert_pem: &cert.pem(),
            ca_pem: &ca.pem(),
        })
        .unwrap();
}

fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (fs::read(e.path()).unwrap(), meta.modified().unwrap()),
            )
        })
        .collect()
}

#[test]
fn join_refuses_an_enrolled_state_dir_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    enroll(&state);
    let before = snapshot(&state);
    let controller = Witness::new();

    let out = agent(&[
        "join",
        "--controller",
        &controller.addr(),
        "--token",
        "tok-secret",
        "--ca-pin",
        GOOD_PIN,
        "--state-dir",
        state.to_str().unwrap(),
        "--name",
        "web-2",
    ]);

    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("already enrolled as web-1 with 127.0.0.1:7443 (certificate expires ")
            && err.contains("pass --force to enroll again with a new token"),
        "{err}"
    );
    assert!(!err.contains("tok-secret"), "token leaked: {err}");
    assert!(out.stdout.is_empty());
    assert_eq!(snapshot(&state), before, "state dir changed");
    controller.assert_untouched();
}

#[test]
fn join_with_bad_input_fails_before_any_network_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let controller = Witness::new();
    let addr = controller.addr();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--ca-pin",
                "sha256:abc",
                "--name",
                "h1",
                "--controller",
                &addr,
            ],
            "invalid CA pin",
        ),
        (
            &["--ca-pin", "md5:00", "--name", "h1", "--controller", &addr],
            "invalid CA pin",
        ),
        (
            &[
                "--ca-pin",
                GOOD_PIN,
                "--name",
                "Web_1",
                "--controller",
                &addr,
            ],
            "invalid name \"Web_1\"",
        ),
        (
            &[
                "--ca-pin",
                GOOD_PIN,
                "--name",
                "../etc",
                "--controller",
                &addr,
            ],
            "invalid name",
        ),
        (
            &[
                "--ca-pin",
                GOOD_PIN,
                "--name",
                "h1",
                "--controller",
                "127.0.0.1",
            ],
            "invalid --controller \"127.0.0.1\"",
        ),
        (
            &[
                "--ca-pin",
                GOOD_PIN,
                "--name",
                "h1",
                "--controller",
                "host:port",
            ],
            "expected HOST:PORT",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec![
            "join",
            "--token",
            "tok-secret",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = agent(&all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err}"
        );
        assert!(!err.contains("tok-secret"), "token leaked: {err}");
    }
    assert!(!state.exists(), "a failed join created the state dir");
    controller.assert_untouched();
}

#[test]
fn join_to_a_dead_controller_says_unreachable_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // Bind then drop: nothing listens there any more.
    let addr = Witness::new().addr();
    let out = agent(&[
        "join",
        "--controller",
        &addr,
        "--token",
        "tok-secret",
        "--ca-pin",
        GOOD_PIN,
        "--state-dir",
        state.to_str().unwrap(),
        "--name",
        "h1",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("controller unreachable at {addr}")),
        "{err}"
    );
    assert!(!err.contains("tok-secret"), "token leaked: {err}");
    assert!(!state.join("agent.key").exists());
}

#[test]
fn run_without_state_says_not_enrolled() {
    let tmp = tempfile::tempdir().unwrap();
    let out = agent(&[
        "run",
        "--state-dir",
        tmp.path().join("none").to_str().unwrap(),
        "--heartbeat-interval",
        "1s",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not enrolled: run fleet-agent join --controller"),
        "{err}"
    );
}

#[test]
fn run_with_a_bad_config_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    enroll(&state);
    let config = tmp.path().join("agent.toml");
    fs::write(&config, "max_backoff = \"forever\"\n").unwrap();
    let out = agent(&[
        "run",
        "--state-dir",
        state.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("max_backoff") && err.contains("forever"),
        "{err}"
    );
}

#[test]
fn run_with_a_bad_metrics_listen_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = agent(&[
        "run",
        "--state-dir",
        tmp.path().to_str().unwrap(),
        "--metrics-listen",
        "9437",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--metrics-listen") && err.contains("IP:PORT"),
        "{err}"
    );
}
