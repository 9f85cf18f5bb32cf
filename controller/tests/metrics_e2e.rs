//! Metrics end to end with the real binaries on loopback: an enrolled agent serves
//! /metrics on its configured port, the controller lists it for Prometheus discovery,
//! both outputs pass `promtool check metrics`, and node figures match this host's /proc.

mod support;

use std::time::Duration;

use support::{free_port, http_get, metric_problems, promtool, promtool_present, wait_for, Fleet};

const OPENMETRICS: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

/// The value of the unlabelled sample `name` in a text exposition.
fn value(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} sample in\n{text}"))
        .parse()
        .unwrap()
}

fn proc_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {file}"))
}

#[test]
fn agent_and_controller_metrics_are_valid_and_discoverable() {
    let fleet = Fleet::start(&[]);
    let state = fleet.join("metrics-1", &fleet.token(&[]));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _agent = fleet.run_agent_with("metrics-1", &state, &["--metrics-listen", &listen]);
    fleet.wait_state("metrics-1", "up", Duration::from_secs(15));

    // Discovery: the agent's address as the controller sees it, plus the port it reported.
    let sd = wait_for(
        "the metrics port in discovery",
        Duration::from_secs(10),
        || {
            let (status, body) = http_get(&fleet.http_addr(), "/v1/sd/prometheus", None);
            assert_eq!(status, 200, "{body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            (json.as_array().unwrap().len() == 1).then_some(json)
        },
    );
    assert_eq!(
        sd,
        serde_json::json!([{
            "targets": [listen],
            "labels": {"host": "metrics-1", "group": "", "apps": ""}
        }])
    );

    // The agent: the plain text format, as curl gets it.
    let (status, agent) = http_get(&listen, "/metrics", None);
    assert_eq!(status, 200, "{agent}");
    assert_eq!(value(&agent, "fleet_agent_controller_connected"), 1.0);
    let memtotal = proc_field("/proc/meminfo", "MemTotal");
    assert_eq!(
        value(&agent, "node_memory_MemTotal_bytes"),
        (memtotal * 1024) as f64
    );
    let btime = proc_field("/proc/stat", "btime ");
    assert_eq!(value(&agent, "node_boot_time_seconds"), btime as f64);
    let pem = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    let der = fleet_proto::transport::certs_from_pem(&pem, "agent cert").unwrap();
    let not_after = fleet_proto::peer::cert_info(&der[0]).unwrap().not_after;
    assert_eq!(
        value(&agent, "fleet_agent_certificate_expiry_timestamp_seconds"),
        not_after as f64
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((value(&agent, "node_time_seconds") - now).abs() < 30.0);
    assert!(agent.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}"));
    // Debian's node_exporter defaults: loopback is excluded, every other device is there.
    assert!(!agent.contains("node_network_receive_bytes_total{device=\"lo\"}"));
    for dev in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = dev.file_name().to_string_lossy().into_owned();
        // Lab tests running beside this one add and remove their bridge and veths.
        if name != "lo" && !name.starts_with("vb-") && !name.starts_with("fleetlab") {
            let series = format!("node_network_receive_bytes_total{{device=\"{name}\"}}");
            assert!(agent.contains(&series), "{series} missing");
        }
    }

    // What Prometheus asks for: OpenMetrics.
    let (status, om) = http_get(&listen, "/metrics", Some(OPENMETRICS));
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE node_cpu_seconds counter"));

    // The controller.
    let (status, controller) = http_get(&fleet.http_addr(), "/metrics", None);
    assert_eq!(status, 200, "{controller}");
    assert_eq!(value(&controller, "fleet_controller_agents_connected"), 1.0);
    assert!(
        controller.contains("fleet_controller_hosts{state=\"up\"} 1\n"),
        "{controller}"
    );
    assert!(controller.contains("fleet_controller_hosts{state=\"down\"} 0\n"));
    assert!(
        controller.contains("fleet_controller_rpc_duration_seconds_count{method=\"/fleet.v1.AgentChannel/Session\"}"),
        "{controller}"
    );

    if !promtool_present() {
        return;
    }
    let dir = fleet.dir.path();
    for (what, text) in [("agent", &agent), ("controller", &controller)] {
        let (_, out) = promtool(dir, &["check", "metrics"], Some(text));
        let problems = metric_problems(&out);
        assert!(
            problems.is_empty(),
            "promtool check metrics on the {what}'s output:\n{}\n--- output ---\n{text}",
            problems.join("\n")
        );
    }
}

#[test]
fn metrics_off_reports_no_port_and_no_target() {
    let fleet = Fleet::start(&[]);
    let state = fleet.join("quiet-1", &fleet.token(&[]));
    let _agent = fleet.run_agent("quiet-1", &state);
    fleet.wait_state("quiet-1", "up", Duration::from_secs(15));
    let (status, body) = http_get(&fleet.http_addr(), "/v1/sd/prometheus", None);
    assert_eq!(status, 200);
    assert_eq!(body, "[]");
    let (_, controller) = http_get(&fleet.http_addr(), "/metrics", None);
    assert!(
        controller.contains("fleet_controller_hosts{state=\"up\"} 1\n"),
        "{controller}"
    );
}
