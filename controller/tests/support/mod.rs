//! Runs the real fleet-controller (and fleetctl, fleet-agent) binaries on loopback in a
//! temp dir. Every process started here is killed by PID when its guard drops.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub mod pg;
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    let controller = PathBuf::from(env!("CARGO_BIN_EXE_fleet-controller"));
    let path = controller.with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build -p fleet-agent` first)",
        path.display()
    );
    path
}

/// Wall clock, Unix seconds: certificate validity is in these.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL, by its own PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .env("FLEET_LOG", "info")
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub http_port: u16,
    pub pin: String,
    pub controller: Option<Proc>,
    pub extra_args: Vec<String>,
    starts: usize,
}

impl Fleet {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("controller")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.data_dir().join("admin")
    }

    /// `fleet-controller init` + `run`, waiting until the controller accepts connections.
    pub fn start(extra_args: &[&str]) -> Fleet {
        let mut fleet = Fleet::init(&[], extra_args);
        fleet.run_controller();
        fleet
    }

    /// `fleet-controller init` with `init_args`; `run` (later) gets `run_args`.
    pub fn init(init_args: &[&str], run_args: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(bin("fleet-controller"))
            .args(["init", "--data-dir"])
            .arg(dir.path().join("controller"))
            .args(init_args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let pin = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ca-pin: "))
            .expect("init prints ca-pin")
            .to_owned();
        Fleet {
            dir,
            port: free_port(),
            http_port: free_port(),
            pin,
            controller: None,
            extra_args: run_args.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        }
    }

    pub fn run_controller(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(bin("fleet-controller"));
        cmd.arg("run")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", &self.addr()])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http_port)])
            .args(&self.extra_args);
        let log = self
            .dir
            .path()
            .join(format!("controller-{}.log", self.starts));
        let proc = Proc::spawn(cmd, log);
        let addr = self.addr();
        wait_for("controller to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).ok()
        });
        self.controller = Some(proc);
    }

    pub fn restart_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = c.child.wait();
        }
        self.run_controller();
    }

    pub fn controller_log(&self) -> String {
        self.controller.as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn fleetctl(&self, args: &[&str]) -> Output {
        Command::new(bin("fleetctl"))
            .args(["--controller", &self.addr()])
            .arg("--identity")
            .arg(self.admin_dir())
            .args(args)
            .env_remove("FLEET_CONTROLLER")
            .env_remove("FLEET_IDENTITY")
            .output()
            .unwrap()
    }

    /// Runs fleetctl expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.fleetctl(args);
        assert!(
            out.status.success(),
            "fleetctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_owned()
    }

    pub fn hosts(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["hosts", "--output", "json"])).unwrap()
    }

    pub fn host_state(&self, name: &str) -> Option<String> {
        self.hosts()
            .into_iter()
            .find(|h| h["name"] == name)
            .map(|h| h["state"].as_str().unwrap().to_owned())
    }

    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        wait_for(&format!("{name} to be {state}"), timeout, || {
            (self.host_state(name).as_deref() == Some(state)).then_some(())
        });
        start.elapsed()
    }

    /// Enrolls a host with the real agent binary; returns its state dir.
    pub fn join(&self, name: &str, token: &str) -> PathBuf {
        let state = self.dir.path().join(format!("agent-{name}"));
        let out = self.agent_join(name, token, &state, &[]);
        assert!(
            out.status.success(),
            "join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        state
    }

    pub fn agent_join(&self, name: &str, token: &str, state: &Path, extra: &[&str]) -> Output {
        Command::new(bin("fleet-agent"))
            .args([
                "join",
                "--controller",
                &self.addr(),
                "--token",
                token,
                "--ca-pin",
                &self.pin,
            ])
            .arg("--state-dir")
            .arg(state)
            .args(["--name", name])
            .args(extra)
            .output()
            .unwrap()
    }

    pub fn run_agent(&self, name: &str, state: &Path) -> Proc {
        // Metrics off unless a test asks: parallel tests must not fight over port 9437.
        self.run_agent_with(name, state, &["--metrics-listen", "off"])
    }

    pub fn run_agent_with(&self, name: &str, state: &Path, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("fleet-agent"));
        cmd.arg("run")
            .arg("--state-dir")
            .arg(state)
            .args(["--heartbeat-interval", "1s"])
            .args(extra);
        Proc::spawn(cmd, self.dir.path().join(format!("agent-{name}.log")))
    }

    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.stop();
        }
    }
}

/// A minimal HTTP/1.1 GET (what `curl` would do), returning status and body. The servers
/// under test send a Content-Length, so reading to EOF after `Connection: close` is
/// enough.
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {raw:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked response not expected: {head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_owned())
}

/// Whether promtool can be run. Missing promtool fails the test (CI installs Debian's
/// `prometheus` package) unless FLEET_LAB=skip says this machine cannot have it.
pub fn promtool_present() -> bool {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("FLEET_LAB").as_deref() == Ok("skip") {
        eprintln!("promtool not found and FLEET_LAB=skip: skipping the promtool checks");
        return false;
    }
    panic!("promtool not found: install prometheus (apt-get install prometheus), or set FLEET_LAB=skip");
}

/// Runs `promtool ARGS` with `stdin` (if any) in `dir`; returns (success, stdout+stderr).
pub fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The only `promtool check metrics` findings accepted: node_exporter's own meminfo names
/// (`node_memory_MemTotal_bytes`, ...), kept verbatim so existing dashboards work, trip
/// its camelCase lint. Returns every other problem line.
pub fn metric_problems(promtool_output: &str) -> Vec<String> {
    promtool_output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            // node_exporter's own names (meminfo, netstat, sockstat fields) are camelCase;
            // fleet's must not be.
            !(l.starts_with("node_")
                && l.ends_with("metric names should be written in 'snake_case' not 'camelCase'"))
        })
        .map(str::to_owned)
        .collect()
}

/// A real release: a gzip-compressed tarball holding `app.py` with `content`.
pub fn tarball(content: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "app.py", content).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// A real Prometheus on loopback scraping itself every second, started by the test and
/// ended by its PID. `None` only when FLEET_LAB=skip says this machine cannot have it.
pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start() -> Option<Prometheus> {
        let bin = Path::new("/usr/bin/prometheus");
        if !bin.exists() {
            if std::env::var("FLEET_LAB").as_deref() == Ok("skip") {
                eprintln!("prometheus not found and FLEET_LAB=skip: skipping");
                return None;
            }
            panic!("/usr/bin/prometheus not found: install prometheus (apt-get install prometheus, or run lab/setup.sh), or set FLEET_LAB=skip");
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    \
                 static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let proc = Proc::spawn(cmd, dir.path().join("prometheus.log"));
        let addr = format!("127.0.0.1:{port}");
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            std::net::TcpStream::connect(&addr)
                .ok()
                .and_then(|_| (http_get(&addr, "/-/ready", None).0 == 200).then_some(()))
        });
        Some(Prometheus {
            proc,
            port,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Fleet {
    /// Applies `spec` (TOML) and uploads release `version` of `app`: a tarball whose
    /// `app.py` holds `content`.
    pub fn app_with_release(&self, spec: &str, app: &str, version: &str, content: &[u8]) {
        let dir = self.dir.path();
        let spec_path = dir.join(format!("{app}.toml"));
        fs::write(&spec_path, spec).unwrap();
        self.ok(&["app", "apply", spec_path.to_str().unwrap()]);
        let tar = dir.join(format!("{app}-{version}.tar.gz"));
        fs::write(&tar, tarball(content)).unwrap();
        self.ok(&[
            "release",
            "upload",
            app,
            tar.to_str().unwrap(),
            "--version",
            version,
        ]);
    }

    /// `fleetctl secret set APP KEY` with `value` on its stdin.
    pub fn secret_set(&self, app: &str, key: &str, value: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin("fleetctl"))
            .args(["--controller", &self.addr()])
            .arg("--identity")
            .arg(self.admin_dir())
            .args(["secret", "set", app, key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}
