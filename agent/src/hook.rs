//! The spec's `pre_start` hook (migrations): one run of an argv with a staged release, as
//! a transient systemd unit with the app's user, env file and sandbox, bounded in time.
//!
//! A transient unit rather than a child of the agent: systemd applies the same `User=`
//! and hardening as the app's own service (the agent runs as root), kills the whole
//! process tree at `RuntimeMaxSec=`, and the run is visible in the journal as a unit.
//! `systemd-run --wait --pipe` hands the hook's stdout/stderr to us, so its output
//! reaches the rollout without a journal query.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::spec::AppSpec;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::units;

/// Output lines quoted back to the controller, and their bound.
const TAIL_LINES: usize = 20;
const LINE_CHARS: usize = 300;
/// For systemd to stop the unit after `RuntimeMaxSec=` before the agent gives up on it.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// Looked up in this order after the release's venv, for a program named without a path.
const SYSTEM_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// Why the hook did not succeed. Every variant that ran the program carries its command
/// line and the tail of its output: that is what the operator needs to fix the hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("program {program:?} not found (looked at {looked_at})")]
    NotFound { program: String, looked_at: String },
    #[error("cannot run systemd-run for the pre-start hook: {0}")]
    Spawn(std::io::Error),
    #[error(
        "pre-start `{argv}` did not finish within pre_start_timeout {timeout} and was \
         stopped ({status}); output:\n{output}"
    )]
    TimedOut {
        argv: String,
        timeout: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("pre-start `{argv}` failed after {took} ({status}); output:\n{output}")]
    Failed {
        argv: String,
        took: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("pre-start hook: waiting for systemd-run: {0}")]
    Wait(std::io::Error),
    /// systemd did not stop it at `RuntimeMaxSec=`; the agent stopped the unit.
    #[error(
        "pre-start `{argv}` did not finish within {timeout} and was stopped; output:\n{output}"
    )]
    Stuck {
        argv: String,
        timeout: String,
        output: String,
    },
}

/// Where the program comes from: a bare name is looked up in the release's venv, then the
/// system; a relative path is inside the release.
pub fn resolve_program(program: &str, release_dir: &Path) -> Result<PathBuf, HookError> {
    let candidates: Vec<PathBuf> = if program.starts_with('/') {
        vec![PathBuf::from(program)]
    } else if program.contains('/') {
        vec![release_dir.join(program)]
    } else {
        crate::releases::venv_bin(release_dir)
            .into_iter()
            .chain(SYSTEM_PATH.iter().map(PathBuf::from))
            .map(|dir| dir.join(program))
            .collect()
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| HookError::NotFound {
            program: program.to_owned(),
            looked_at: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// One transient run of a program as an app: what differs between the pre-start hook and
/// `exec`; the user, env file, sandbox and PATH are always the app's.
pub struct Transient<'a> {
    pub spec: &'a AppSpec,
    pub unit: &'a str,
    pub description: String,
    pub release_dir: &'a Path,
    pub env_file: &'a Path,
    pub timeout: Duration,
    /// `--collect`: unload the unit even when it failed. Off when the caller reads how
    /// the main process ended from the failed unit (and resets it itself).
    pub collect: bool,
}

/// The argv as systemd must get it to run it as typed: systemd substitutes `$NAME` and
/// `${NAME}` from the unit's environment in every ExecStart argument (systemd 252 has no
/// way to turn that off for a transient unit), and `$$` is its literal `$`.
pub fn literal_args(args: &[String]) -> impl Iterator<Item = String> + '_ {
    args.iter().map(|a| a.replace('$', "$$"))
}

/// The `systemd-run` arguments for one run (pure: what lands on the command line). `args`
/// reach the program as written: no shell, and no systemd `$VAR` substitution either.
pub fn transient_args(t: &Transient<'_>, program: &Path, args: &[String]) -> Vec<String> {
    let mut path = String::new();
    if let Some(venv) = crate::releases::venv_bin(t.release_dir) {
        path.push_str(&venv.to_string_lossy());
        path.push(':');
    }
    path.push_str(&SYSTEM_PATH.join(":"));
    let mut out = vec![
        format!("--unit={}", t.unit),
        format!("--description={}", t.description),
        "--wait".into(),
        "--pipe".into(),
        "--quiet".into(),
    ];
    if t.collect {
        out.push("--collect".into());
    }
    out.extend([
        "--service-type=exec".into(),
        format!("--working-directory={}", t.release_dir.display()),
        format!("--property=User={}", t.spec.user),
        format!("--property=EnvironmentFile={}", t.env_file.display()),
        format!("--property=RuntimeMaxSec={}ms", t.timeout.as_millis()),
        format!("--setenv=PATH={path}"),
        "--setenv=PYTHONUNBUFFERED=1".into(),
        "--setenv=PYTHONDONTWRITEBYTECODE=1".into(),
    ]);
    // The app's own sandbox, setting by setting.
    for line in units::HARDENING.lines().filter(|l| !l.trim().is_empty()) {
        out.push(format!("--property={line}"));
    }
    out.push("--".into());
    out.push(program.to_string_lossy().into_owned());
    out.extend(literal_args(args));
    out
}

/// The pre-start hook's `systemd-run` arguments.
pub fn systemd_run_args(
    spec: &AppSpec,
    unit: &str,
    release_dir: &Path,
    env_file: &Path,
    program: &Path,
) -> Vec<String> {
    let t = Transient {
        spec,
        unit,
        description: format!("fleet: pre-start hook of {}", spec.name),
        release_dir,
        env_file,
        timeout: spec.pre_start_timeout,
        collect: true,
    };
    let rest: Vec<String> = spec.pre_start.iter().skip(1).cloned().collect();
    transient_args(&t, program, &rest)
}

/// The last lines of the hook's output, each cut to a bounded length.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    total: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        self.total += 1;
        let mut l: String = line.chars().take(LINE_CHARS).collect();
        if l.len() < line.len() {
            l.push('…');
        }
        self.lines.push_back(l);
        if self.lines.len() > TAIL_LINES {
            self.lines.pop_front();
        }
    }

    fn render(&self) -> String {
        if self.total == 0 {
            return "(no output)".into();
        }
        let skipped = self.total - self.lines.len();
        let mut out = String::new();
        if skipped > 0 {
            out.push_str(&format!("  … {skipped} earlier lines\n"));
        }
        for l in &self.lines {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        out.trim_end().to_owned()
    }
}

async fn collect(r: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut lines = BufReader::new(r).lines();
    // A line that is not UTF-8 ends the copy; the exit status still decides.
    while let Ok(Some(l)) = lines.next_line().await {
        tail.lock().unwrap_or_else(|e| e.into_inner()).push(&l);
    }
}

/// Runs the hook; Ok and Err both carry a one-line summary and the output's tail.
pub async fn run(spec: &AppSpec, release_dir: &Path, env_file: &Path) -> Result<String, HookError> {
    let argv_text = spec.pre_start.join(" ");
    let program = resolve_program(&spec.pre_start[0], release_dir)?;
    let unit = format!(
        "fleet-prestart-{}-{:08x}.service",
        spec.name,
        rand::random::<u32>()
    );
    let args = systemd_run_args(spec, &unit, release_dir, env_file, &program);
    let mut child = Command::new("systemd-run")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(HookError::Spawn)?;
    let tail = Arc::new(Mutex::new(Tail::default()));
    let out = child.stdout.take().map(|o| collect(o, tail.clone()));
    let err = child.stderr.take().map(|e| collect(e, tail.clone()));
    let started = Instant::now();
    let limit = spec.pre_start_timeout + STOP_SLACK;
    let waited = tokio::time::timeout(limit, async {
        let (status, _, _) = tokio::join!(
            child.wait(),
            async {
                if let Some(o) = out {
                    o.await
                }
            },
            async {
                if let Some(e) = err {
                    e.await
                }
            }
        );
        status
    })
    .await;
    let took =
        humantime::format_duration(Duration::from_millis(started.elapsed().as_millis() as u64));
    let output = tail.lock().unwrap_or_else(|e| e.into_inner()).render();
    match waited {
        Ok(Ok(s)) if s.success() => Ok(format!(
            "pre-start `{argv_text}` succeeded in {took}; output:\n{output}"
        )),
        Ok(Ok(status)) if started.elapsed() >= spec.pre_start_timeout => Err(HookError::TimedOut {
            argv: argv_text,
            timeout: humantime::format_duration(spec.pre_start_timeout).to_string(),
            status,
            output,
        }),
        Ok(Ok(status)) => Err(HookError::Failed {
            argv: argv_text,
            took: took.to_string(),
            status,
            output,
        }),
        Ok(Err(e)) => Err(HookError::Wait(e)),
        Err(_) => {
            // systemd did not stop it at RuntimeMaxSec=: stop the unit ourselves.
            let _ = Command::new("systemctl")
                .args(["stop", "--", &unit])
                .stdin(Stdio::null())
                .output()
                .await;
            Err(HookError::Stuck {
                argv: argv_text,
                timeout: humantime::format_duration(spec.pre_start_timeout).to_string(),
                output,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::units::tests::spec;

    #[test]
    fn runs_as_the_app_in_its_sandbox_with_the_release() {
        let s = spec("pre_start = [\"python3\", \"-m\", \"migrate\", \"--to=$HEAD\"]\npre_start_timeout = \"90s\"");
        let args = systemd_run_args(
            &s,
            "fleet-prestart-shop-1.service",
            Path::new("/var/lib/fleet/apps/shop/releases/2.0"),
            Path::new("/etc/fleet/apps/shop.prestart.env"),
            Path::new("/usr/bin/python3"),
        );
        for want in [
            "--wait",
            "--pipe",
            "--collect",
            "--property=User=shop",
            "--property=EnvironmentFile=/etc/fleet/apps/shop.prestart.env",
            "--working-directory=/var/lib/fleet/apps/shop/releases/2.0",
            "--property=RuntimeMaxSec=90000ms",
            "--property=ProtectSystem=strict",
            "--property=NoNewPrivileges=yes",
            "--property=SystemCallFilter=@system-service",
        ] {
            assert!(args.iter().any(|a| a == want), "missing {want}: {args:?}");
        }
        // The argv follows `--`, no shell; `$` is doubled so that systemd's `$VAR`
        // substitution hands the program the `$` that was written.
        let dash = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            &args[dash + 1..],
            ["/usr/bin/python3", "-m", "migrate", "--to=$$HEAD"]
        );
    }

    #[test]
    fn dollars_reach_the_program_as_typed() {
        let args = [
            "$HOME;".to_owned(),
            "${X}".to_owned(),
            "a$$b".to_owned(),
            "plain".to_owned(),
        ];
        let got: Vec<String> = literal_args(&args).collect();
        assert_eq!(got, ["$$HOME;", "$${X}", "a$$$$b", "plain"]);
    }

    #[test]
    fn programs_resolve_in_the_release_or_the_system() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/migrate"), "").unwrap();
        assert_eq!(
            resolve_program("bin/migrate", dir.path()).unwrap(),
            dir.path().join("bin/migrate")
        );
        // No venv in this release: the system's.
        let sh = resolve_program("sh", dir.path()).unwrap();
        assert!(sh.starts_with("/usr") || sh.starts_with("/bin"), "{sh:?}");
        let e = resolve_program("no-such-program-here", dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("\"no-such-program-here\" not found"),
            "{e}"
        );
        assert!(resolve_program("bin/nothing", dir.path()).is_err());
    }

    #[test]
    fn output_tail_is_bounded() {
        let mut t = Tail::default();
        assert_eq!(t.render(), "(no output)");
        for i in 0..50 {
            t.push(&format!("line {i}"));
        }
        t.push(&"x".repeat(5000));
        let r = t.render();
        assert!(r.starts_with("  … 31 earlier lines"), "{r}");
        assert!(r.contains("line 49"));
        assert!(!r.contains("line 30\n"));
        assert!(r.len() < TAIL_LINES * (LINE_CHARS + 8) + 40);
    }
}
