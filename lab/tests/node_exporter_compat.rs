//! The agent as a node_exporter replacement (issue 15), on one real systemd host: its
//! page against Debian's prometheus-node-exporter 1.5 (preinstalled in the lab image,
//! started here as a transient unit with its default collectors) name by name for the
//! checked-in node-mixin / dashboard 1860 list; the shipped alerts firing (promtool, on
//! the scraped samples) for a nearly full and a read-only ext4 filesystem mounted in the
//! host; a bad textfile setting `node_textfile_scrape_error` and changing nothing else;
//! and `promtool check metrics` clean apart from node_exporter's own camelCase names.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use fleet_lab::{Lab, LabOptions};

type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
struct Page {
    /// name → (labels, value) per series.
    series: BTreeMap<String, Vec<(Labels, f64)>>,
    types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> Labels {
    let mut out = Labels::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
        rest = &rest[end..];
    }
    out
}

fn parse(text: &str) -> Page {
    let mut p = Page::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            if let Some((n, k)) = t.split_once(' ') {
                p.types.insert(n.to_owned(), k.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').unwrap_or(l))),
            None => (head, Labels::new()),
        };
        p.series
            .entry(name.to_owned())
            .or_default()
            .push((labels, value));
    }
    p
}

fn names_list() -> Vec<String> {
    include_str!("../../agent/tests/fixtures/node_exporter_names.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn scrape(lab: &Lab, port: u16) -> String {
    lab.sh(
        1,
        &format!("curl -sf --max-time 10 http://127.0.0.1:{port}/metrics"),
    )
    .unwrap_or_else(|e| panic!("scrape :{port}: {e:#}"))
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Two small ext4 images on loop devices of the outer machine, mounted in host1 through
/// device nodes made there: /srv/fleet-full (filled) and /srv/fleet-ro (read-only).
/// Unmounted and detached on drop, pass or fail.
struct Mounts<'a> {
    lab: &'a Lab,
    loops: Vec<String>,
    _dir: tempfile::TempDir,
}

impl<'a> Mounts<'a> {
    fn new(lab: &'a Lab) -> Mounts<'a> {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mounts {
            lab,
            loops: Vec::new(),
            _dir: dir,
        };
        for (name, opts) in [("full", "rw"), ("ro", "ro")] {
            let img = m._dir.path().join(format!("{name}.img"));
            let img = img.to_str().unwrap();
            sh(&format!("truncate -s 64M {img} && mkfs.ext4 -q -F {img}"));
            let dev = sh(&format!("losetup --find --show {img}"));
            m.loops.push(dev.clone());
            let (maj, min) = {
                let hex = sh(&format!("stat -c '%t %T' {dev}"));
                let (a, b) = hex.split_once(' ').unwrap();
                (
                    u32::from_str_radix(a, 16).unwrap(),
                    u32::from_str_radix(b, 16).unwrap(),
                )
            };
            lab.sh(
                1,
                &format!(
                    "mknod /dev/fleet-test-{name} b {maj} {min} && mkdir -p /srv/fleet-{name} \
                     && mount -o {opts} /dev/fleet-test-{name} /srv/fleet-{name}"
                ),
            )
            .unwrap_or_else(|e| panic!("mounting a test filesystem in host1: {e:#}"));
        }
        // Fill to the last block available to non-root users and beyond (ENOSPC is fine).
        let _ = lab.sh(
            1,
            "dd if=/dev/zero of=/srv/fleet-full/fill bs=1M count=100 2>/dev/null; sync",
        );
        m
    }
}

impl Drop for Mounts<'_> {
    fn drop(&mut self) {
        for name in ["full", "ro"] {
            let _ = self.lab.sh(
                1,
                &format!("umount /srv/fleet-{name}; rm -f /dev/fleet-test-{name}"),
            );
        }
        for dev in &self.loops {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// Gauges that must be equal on both pages (same moment is not needed: they are static).
const EXACT: &[&str] = &[
    "node_memory_MemTotal_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_HardwareCorrupted_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_files",
    "node_filesystem_readonly",
    "node_filefd_maximum",
    "node_nf_conntrack_entries_limit",
    "node_network_speed_bytes",
    "node_md_disks_required",
    "node_timex_sync_status",
    "node_uname_info",
];

/// Gauges that move: equal within a relative tolerance (or an absolute one near 0).
const TOLERANT: &[(&str, f64, f64)] = &[
    ("node_memory_MemAvailable_bytes", 0.05, 0.0),
    ("node_memory_MemFree_bytes", 0.05, 0.0),
    ("node_memory_Cached_bytes", 0.05, 1e6),
    ("node_memory_Buffers_bytes", 0.05, 1e6),
    ("node_memory_Slab_bytes", 0.05, 1e6),
    ("node_memory_SReclaimable_bytes", 0.05, 1e6),
    ("node_memory_PageTables_bytes", 0.2, 1e6),
    ("node_memory_SwapFree_bytes", 0.05, 1e6),
    ("node_memory_SwapCached_bytes", 0.05, 1e6),
    ("node_filesystem_avail_bytes", 0.01, 1e6),
    ("node_filesystem_free_bytes", 0.01, 1e6),
    ("node_filesystem_files_free", 0.01, 100.0),
    ("node_filefd_allocated", 0.2, 200.0),
    ("node_nf_conntrack_entries", 0.5, 50.0),
    ("node_load1", 0.0, 1.5),
    ("node_load5", 0.0, 1.5),
    ("node_load15", 0.0, 1.5),
    ("node_time_seconds", 0.0, 30.0),
    ("node_boot_time_seconds", 0.0, 1.0),
    ("node_timex_offset_seconds", 0.0, 0.01),
    ("node_timex_maxerror_seconds", 0.0, 1.0),
];

fn find<'a>(series: &'a [(Labels, f64)], labels: &Labels) -> Option<&'a f64> {
    series.iter().find(|(l, _)| l == labels).map(|(_, v)| v)
}

#[test]
fn agent_page_replaces_node_exporter_on_one_host() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::fleet(1)) else {
        return;
    };
    let mounts = Mounts::new(&lab);
    lab.sh(
        1,
        "systemd-run --unit fleet-test-node-exporter -q /usr/bin/prometheus-node-exporter \
         --web.listen-address=127.0.0.1:9100 && \
         for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:9100/metrics && exit 0; sleep 0.1; done; exit 1",
    )
    .expect("Debian's node_exporter starts in host1");
    for i in 0..100 {
        if lab
            .sh(1, "curl -sf -o /dev/null http://127.0.0.1:9437/metrics")
            .is_ok()
        {
            break;
        }
        assert!(i < 99, "the agent's /metrics never answered");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // node_exporter first: the agent's counters, read after, must be at least as high.
    let ne_text = scrape(&lab, 9100);
    let agent_text = scrape(&lab, 9437);
    let ne = parse(&ne_text);
    let agent = parse(&agent_text);

    // 1. Name by name over the checked-in list.
    let mut compared = 0;
    let mut not_in_ne = Vec::new();
    let mut problems = Vec::new();
    for name in names_list() {
        let Some(theirs) = ne.series.get(&name) else {
            not_in_ne.push(name);
            continue;
        };
        compared += 1;
        let Some(ours) = agent.series.get(&name) else {
            problems.push(format!(
                "{name}: on node_exporter's page, not on the agent's"
            ));
            continue;
        };
        let keys = |s: &[(Labels, f64)]| -> BTreeSet<Vec<String>> {
            s.iter().map(|(l, _)| l.keys().cloned().collect()).collect()
        };
        // node_exporter labels unit states of non-service units with type=""; the agent
        // exports fewer units (bounded default) but the same keys.
        if keys(ours) != keys(theirs) && !ours.is_empty() {
            problems.push(format!(
                "{name}: label keys {:?} vs node_exporter's {:?}",
                keys(ours),
                keys(theirs)
            ));
            continue;
        }
        let ne_type = ne.types.get(&name).map(String::as_str);
        let our_type = agent.types.get(&name).map(String::as_str);
        if ne_type != our_type {
            problems.push(format!("{name}: type {our_type:?} vs {ne_type:?}"));
        }
        if name == "node_exporter_build_info" {
            continue;
        }
        let exact = EXACT.contains(&name.as_str());
        let tolerance = TOLERANT.iter().find(|(n, _, _)| *n == name);
        for (labels, v) in theirs {
            let Some(ours) = find(ours, labels) else {
                if name.starts_with("node_systemd_unit_state") {
                    continue;
                }
                problems.push(format!("{name}{labels:?}: missing on the agent's page"));
                continue;
            };
            let ok = if exact {
                ours == v
            } else if let Some((_, rel, abs)) = tolerance {
                (ours - v).abs() <= (v.abs() * rel).max(*abs)
            } else if ne_type == Some("counter") {
                // Read later than node_exporter's: not lower, and not wildly higher.
                *ours >= *v - 1e-9 && *ours <= v * 1.5 + 1e4
            } else {
                true
            };
            if !ok {
                problems.push(format!(
                    "{name}{labels:?}: agent {ours} vs node_exporter {v}"
                ));
            }
        }
    }
    eprintln!("compared {compared} names; not exported by node_exporter 1.5 here: {not_in_ne:?}");
    assert!(compared >= 45, "too few names compared: {compared}");
    // Debian's default selection: the same devices and mounts on both pages.
    for name in [
        "node_filesystem_size_bytes",
        "node_network_receive_bytes_total",
        "node_disk_read_bytes_total",
        "node_network_up",
        "node_cpu_seconds_total",
    ] {
        let set = |p: &Page| -> BTreeSet<Labels> {
            p.series
                .get(name)
                .map(|s| s.iter().map(|(l, _)| l.clone()).collect())
                .unwrap_or_default()
        };
        if set(&agent) != set(&ne) {
            problems.push(format!(
                "{name}: series {:?} vs node_exporter's {:?}",
                set(&agent),
                set(&ne)
            ));
        }
    }
    // Failed units: every one node_exporter reports failed is failed on the agent's page.
    for (labels, v) in ne
        .series
        .get("node_systemd_unit_state")
        .into_iter()
        .flatten()
    {
        if labels.get("state").map(String::as_str) == Some("failed") && *v == 1.0 {
            let ours = agent
                .series
                .get("node_systemd_unit_state")
                .and_then(|s| find(s, labels));
            if ours != Some(&1.0) {
                problems.push(format!(
                    "failed unit {labels:?} not failed on the agent's page"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // 2. The shipped alerts fire for the test filesystems, evaluated by promtool on the
    // agent's scraped samples.
    let fs = |name: &str, mp: &str| -> (Labels, f64) {
        agent.series[name]
            .iter()
            .find(|(l, _)| l["mountpoint"] == mp)
            .cloned()
            .unwrap_or_else(|| panic!("{name} of {mp} not on the agent's page"))
    };
    let (full_labels, avail) = fs("node_filesystem_avail_bytes", "/srv/fleet-full");
    let (_, size) = fs("node_filesystem_size_bytes", "/srv/fleet-full");
    assert!(
        avail / size < 0.1,
        "the test filesystem is not nearly full: {avail}/{size}"
    );
    let (ro_labels, ro) = fs("node_filesystem_readonly", "/srv/fleet-ro");
    assert_eq!(ro, 1.0);
    assert_eq!(fs("node_filesystem_readonly", "/srv/fleet-full").1, 0.0);
    let mut input = String::new();
    for name in [
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_filesystem_readonly",
        "node_filesystem_files",
        "node_filesystem_files_free",
        "node_filesystem_device_error",
    ] {
        for (labels, v) in &agent.series[name] {
            if !labels["mountpoint"].starts_with("/srv/fleet-") {
                continue;
            }
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .chain(["instance=\"host1:9437\"".into(), "host=\"host1\"".into()])
                .collect();
            input.push_str(&format!(
                "      - series: '{name}{{{}}}'\n        values: \"{v}x15\"\n",
                l.join(",")
            ));
        }
    }
    let pct = avail / size * 100.0;
    let test = format!(
        "rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{input}    \
    alert_rule_test:\n      \
      - eval_time: 10m\n        alertname: FleetDiskAlmostFull\n        exp_alerts:\n          \
          - exp_labels: {{severity: warning, instance: \"host1:9437\", host: host1, device: \"{fdev}\", fstype: ext4, mountpoint: /srv/fleet-full}}\n            \
            exp_annotations:\n              summary: \"host1: /srv/fleet-full has less than 10 % free\"\n              \
              description: \"{pct:.1} % of /srv/fleet-full ({fdev}) is available.\"\n      \
      - eval_time: 10m\n        alertname: FleetFilesystemReadOnly\n        exp_alerts:\n          \
          - exp_labels: {{severity: critical, instance: \"host1:9437\", host: host1, device: \"{rdev}\", fstype: ext4, mountpoint: /srv/fleet-ro}}\n            \
            exp_annotations:\n              summary: \"host1: /srv/fleet-ro is read-only\"\n              \
              description: \"/srv/fleet-ro ({rdev}) is mounted read-only; an ext4 remount after I/O errors looks like this. Check the kernel log; mounts that are read-only on purpose can be excluded with the agent setting filesystem_mount_points_exclude.\"\n      \
      - eval_time: 10m\n        alertname: FleetInodesAlmostExhausted\n        exp_alerts: []\n      \
      - eval_time: 10m\n        alertname: FleetFilesystemDeviceError\n        exp_alerts: []\n",
        rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/alerts.yml"),
        fdev = full_labels["device"],
        rdev = ro_labels["device"],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scraped_test.yml");
    std::fs::write(&path, &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", path.to_str().unwrap()])
        .output()
        .expect("promtool is installed (lab/setup.sh installs prometheus)");
    assert!(
        out.status.success(),
        "the shipped alerts did not fire as expected on the scraped samples:\n{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. `promtool check metrics`: only node_exporter's own camelCase names.
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(agent_text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let other: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("'snake_case' not 'camelCase'"))
        .collect();
    assert!(
        other.is_empty(),
        "promtool check metrics:\n{}",
        other.join("\n")
    );

    // 4. A bad textfile: the error series goes to 1, its content stays out, the rest of
    // the page keeps its names.
    let before: BTreeSet<String> = parse(&scrape(&lab, 9437)).types.into_keys().collect();
    lab.sh(
        1,
        "mkdir -p /var/lib/prometheus/node-exporter && \
         printf 'lab_test_good 1\\n' > /var/lib/prometheus/node-exporter/good.prom && \
         printf 'lab_test_bad{{ 1\\nnode_load1 5\\n' > /var/lib/prometheus/node-exporter/bad.prom && \
         printf 'node_load1 99\\n' > /var/lib/prometheus/node-exporter/clash.prom",
    )
    .unwrap();
    let after_text = scrape(&lab, 9437);
    let after = parse(&after_text);
    let _ = lab.sh(
        1,
        "rm -f /var/lib/prometheus/node-exporter/{good,bad,clash}.prom",
    );
    assert_eq!(
        after.series["node_textfile_scrape_error"][0].1, 1.0,
        "{after_text}"
    );
    assert_ne!(after.series["node_load1"][0].1, 99.0);
    assert_eq!(after.series["node_load1"].len(), 1);
    let added: Vec<String> = after
        .types
        .keys()
        .filter(|n| !before.contains(*n))
        .cloned()
        .collect();
    // lab_test_good is a good file in the same directory: it is served.
    assert_eq!(added, ["lab_test_good"], "{after_text}");
    let files: Vec<&str> = after.series["node_textfile_mtime_seconds"]
        .iter()
        .map(|(l, _)| l["file"].as_str())
        .collect();
    assert_eq!(files, ["good.prom"]);
    drop(mounts);
}
