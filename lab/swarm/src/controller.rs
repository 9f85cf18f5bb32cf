//! The real release controller and fleetctl, run from the directory this binary lives in
//! (target/release): `fleet-controller init`, `run` on free loopback ports, kill -9 and a
//! restart on the same data dir, and fleetctl with the admin identity init made.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::process::{Child, Command};

#[derive(Clone, Debug)]
pub struct Bins {
    pub controller: PathBuf,
    pub fleetctl: PathBuf,
    pub swarm: PathBuf,
}

/// The binaries next to this executable.
pub fn bins() -> Result<Bins> {
    let me = std::env::current_exe().context("find this executable")?;
    let dir = me.parent().context("this executable has no directory")?;
    let b = Bins {
        controller: dir.join("fleet-controller"),
        fleetctl: dir.join("fleetctl"),
        swarm: me.clone(),
    };
    for p in [&b.controller, &b.fleetctl] {
        ensure!(
            p.exists(),
            "{} is missing: build the release binaries first with \
             `cargo build --workspace --release --locked --bins`",
            p.display()
        );
    }
    Ok(b)
}

/// A free TCP port on 127.0.0.1 (bound and released; the controller binds it next).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub struct Controller {
    bins: Bins,
    pub data: PathBuf,
    pub addr: String,
    http: String,
    pub pin: String,
    log: PathBuf,
    config: Option<PathBuf>,
    /// The admin identity fleetctl uses (a replica has none of its own).
    admin: PathBuf,
    child: Option<Child>,
    /// When `child` is strace running the controller: the controller's own PID.
    traced: Option<u32>,
    /// Bound on one fleetctl call (it is killed after it).
    pub call_timeout: Duration,
}

impl Controller {
    /// `fleet-controller init` into `data` (which must not exist yet).
    pub async fn init(
        bins: &Bins,
        data: &Path,
        log: &Path,
        config: Option<&Path>,
    ) -> Result<Controller> {
        if let Some(c) = config {
            ensure!(
                c.is_file(),
                "--controller-config {}: no such file",
                c.display()
            );
        }
        let mut init = Command::new(&bins.controller);
        init.args(["init", "--san", "127.0.0.1", "--data-dir"])
            .arg(data);
        // A `[store] url` there makes the fleet in that database, not in the data dir.
        if let Some(c) = config {
            init.arg("--config").arg(c);
        }
        let out = init
            .kill_on_drop(true)
            .output()
            .await
            .context("run fleet-controller init")?;
        ensure!(
            out.status.success(),
            "fleet-controller init failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let pin = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("ca-pin:")
                    .map(|p| p.trim().to_owned())
            })
            .context("fleet-controller init printed no `ca-pin:` line")?;
        Ok(Controller {
            bins: bins.clone(),
            data: data.to_owned(),
            addr: format!("127.0.0.1:{}", free_port()?),
            http: format!("127.0.0.1:{}", free_port()?),
            pin,
            log: log.to_owned(),
            config: config.map(Path::to_path_buf),
            admin: data.join("admin"),
            child: None,
            traced: None,
            call_timeout: Duration::from_secs(300),
        })
    }

    /// `fleet-controller run`, returning once it accepts TCP connections.
    pub async fn start(&mut self) -> Result<()> {
        self.spawn(None).await
    }

    /// [`Self::start`] under `strace -f --seccomp-bpf -e trace=fsync,fdatasync -o out`: only
    /// those calls stop the controller (seccomp), and strace writes each as it happens, so
    /// [`count_syncs`] of `out` is the number so far. Ok(false), and a plain start, when
    /// strace is not installed.
    pub async fn start_counting_syncs(&mut self, out: &Path) -> Result<bool> {
        let have_strace = std::process::Command::new("strace")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have_strace {
            self.spawn(None).await?;
            return Ok(false);
        }
        self.spawn(Some(out)).await?;
        Ok(true)
    }

    async fn spawn(&mut self, trace: Option<&Path>) -> Result<()> {
        ensure!(self.child.is_none(), "the controller is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = match trace {
            None => Command::new(&self.bins.controller),
            Some(out) => {
                let mut c = Command::new("strace");
                c.args(["-f", "--seccomp-bpf", "-qq", "-e", "trace=fsync,fdatasync"])
                    .args(["-e", "signal=none", "-o"])
                    .arg(out)
                    .arg("--")
                    .arg(&self.bins.controller);
                c
            }
        };
        cmd.arg("run");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", &self.addr, "--http-listen", &self.http])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn fleet-controller run")?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                break;
            }
            if let Some(st) = child.try_wait()? {
                bail!(
                    "fleet-controller run exited ({st}) before listening; log: {}",
                    self.log.display()
                );
            }
            if Instant::now() > end {
                bail!(
                    "fleet-controller did not listen on {} within 30 s; log: {}",
                    self.addr,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.traced = match trace {
            None => None,
            Some(_) => Some(
                child
                    .id()
                    .and_then(first_child)
                    .context("find the controller strace started")?,
            ),
        };
        self.child = Some(child);
        Ok(())
    }

    /// A second controller on `primary`'s shared store (`init --replica-of`), which
    /// relays what it accepts to the leader while `primary` leads; not started yet.
    pub async fn replica_of(primary: &Controller, data: &Path, log: &Path) -> Result<Controller> {
        let config = primary
            .config
            .clone()
            .context("--relay needs a shared store: a --controller-config with [store]")?;
        let out = Command::new(&primary.bins.controller)
            .args(["init", "--replica-of"])
            .arg(&primary.data)
            .arg("--data-dir")
            .arg(data)
            .args(["--san", "127.0.0.1", "--config"])
            .arg(&config)
            .kill_on_drop(true)
            .output()
            .await
            .context("run fleet-controller init --replica-of")?;
        ensure!(
            out.status.success(),
            "fleet-controller init --replica-of failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Controller {
            bins: primary.bins.clone(),
            data: data.to_owned(),
            addr: format!("127.0.0.1:{}", free_port()?),
            http: format!("127.0.0.1:{}", free_port()?),
            pin: primary.pin.clone(),
            log: log.to_owned(),
            config: Some(config),
            admin: primary.admin.clone(),
            child: None,
            traced: None,
            call_timeout: primary.call_timeout,
        })
    }

    /// Waits until the controller's log holds `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(needle) {
                return Ok(());
            }
            ensure!(
                Instant::now() < end,
                "{needle:?} not in {} within {timeout:?}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.traced
            .or_else(|| self.child.as_ref().and_then(|c| c.id()))
    }

    /// SIGKILL to the controller, then reap it (and strace, which ends with it).
    pub async fn kill9(&mut self) -> Result<()> {
        if let Some(pid) = self.traced.take() {
            kill9_pid(pid);
        }
        if let Some(mut c) = self.child.take() {
            c.start_kill().context("kill -9 the controller")?;
            c.wait().await.context("reap the controller")?;
        }
        Ok(())
    }

    pub fn identity(&self) -> PathBuf {
        self.admin.clone()
    }

    /// Runs fleetctl with the admin identity; returns stdout, failing on a non-zero exit.
    pub async fn fleetctl(&self, args: &[&str]) -> Result<String> {
        self.fleetctl_stdin(args, None).await
    }

    pub async fn fleetctl_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let (code, stdout, stderr) = self.fleetctl_exit(args, stdin).await?;
        if code != 0 {
            bail!(
                "fleetctl {} failed (exit {code}): {}",
                args.join(" "),
                stderr.trim()
            );
        }
        Ok(stdout)
    }

    /// Runs fleetctl; returns its exit code, stdout and stderr, whatever the code.
    pub async fn fleetctl_exit(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<(i32, String, String)> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = Command::new(&self.bins.fleetctl);
        cmd.arg("--controller")
            .arg(&self.addr)
            .arg("--identity")
            .arg(self.identity())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn fleetctl {}", args.join(" ")))?;
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(data).await.context("write fleetctl's stdin")?;
        }
        let out = tokio::time::timeout(self.call_timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "fleetctl {} did not finish within {:?}",
                    args.first().copied().unwrap_or_default(),
                    self.call_timeout
                )
            })??;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for Controller {
    /// On every exit path: kill the controller we started, by PID, and reap it before
    /// the data dir (and a slow-disk mount under it) is removed.
    fn drop(&mut self) {
        if let Some(pid) = self.traced.take() {
            kill9_pid(pid);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if !matches!(c.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn kill9_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The (lowest-numbered) child process of `ppid`, from /proc/*/stat.
fn first_child(ppid: u32) -> Option<u32> {
    let mut kids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| parent_of(&st))
                == Some(ppid)
        })
        .collect();
    kids.sort_unstable();
    kids.first().copied()
}

/// Field 4 (ppid) of a /proc/PID/stat line, counted after the `(comm)`.
fn parent_of(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Lines of strace output that start an fsync or fdatasync call ("<... resumed>" halves of
/// split lines are not counted twice).
pub fn count_syncs(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains("fdatasync(") || l.contains("fsync("))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_from_stat() {
        assert_eq!(parent_of("42 (a) b) S 7 42 42 0"), Some(7));
        let me = std::process::id();
        let st = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        assert_eq!(parent_of(&st), Some(std::os::unix::process::parent_id()));
    }

    #[test]
    fn strace_lines_counted_once() {
        let t = "123 fdatasync(9 <unfinished ...>\n124 fsync(3) = 0\n123 <... fdatasync resumed>) = 0\n125 +++ exited with 0 +++\n";
        assert_eq!(count_syncs(t), 2);
    }
}
