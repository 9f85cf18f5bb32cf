//! A real Prometheus on the outer machine, configured like the shipped example
//! (packaging/prometheus), discovering the lab's agents through the controller and
//! scraping them every second; and the HTTP API calls the tests make of it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub const PROM_ADDR: &str = "127.0.0.1:19090";

/// Prometheus, started by us and ended by its PID.
pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_prometheus() -> Prometheus {
    let bin = Path::new("/usr/bin/prometheus");
    assert!(
        bin.exists(),
        "prometheus is not installed: run lab/setup.sh (apt-get install prometheus)"
    );
    let dir = tempfile::tempdir().unwrap();
    // The shipped example, pointed at the lab's controller and made fast for a test.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/prometheus/prometheus.yml"
    ))
    .unwrap();
    let config = shipped
        .replace("controller.example:7444", "198.18.0.1:7444")
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("refresh_interval: 30s", "refresh_interval: 1s");
    assert!(
        config.contains("198.18.0.1:7444/v1/sd/prometheus"),
        "the shipped config changed shape:\n{config}"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/prometheus/alerts.yml"
        ),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={PROM_ADDR}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Prometheus { child, _dir: dir }
}

pub fn api(path: &str) -> Option<Value> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://{PROM_ADDR}{path}"),
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

pub fn query(q: &str) -> Vec<Value> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    api(&format!("/api/v1/query?query={enc}"))
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}
