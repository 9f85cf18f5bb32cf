//! The .deb packages and the apt repository (issue 12), proven the way an operator uses
//! them: lintian and the package contents on the outer machine; on bare lab hosts, the
//! agent installed with apt from the repository the lab serves, enrolled, upgraded and
//! purged under a running app; the controller package installed, initialised, started,
//! crashed and restarted by systemd, and its sandbox scored; and apt refusing a repository
//! whose signature, or a package whose hash, does not match.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleet_lab::packages::{self, Packages, DEB_VERSION};
use fleet_lab::{fleet, Lab, LabOptions};

/// The packages of this checkout, built by packaging/deb/build.sh if missing or stale.
fn built() -> Packages {
    let b = fleet::binaries().unwrap_or_else(|e| panic!("release binaries: {e:#}"));
    packages::ensure(&b).unwrap_or_else(|e| panic!("packages: {e:#}"))
}

fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run lab/setup.sh)"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `dpkg-deb -c`: path → mode string ("-rwxr-xr-x"), directories left out.
fn contents(deb: &Path) -> Vec<(String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.trim_start_matches('.');
            (!path.ends_with('/')).then(|| (path.to_owned(), f[0].to_owned()))
        })
        .collect()
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_owned()
}

fn control_file(deb: &Path, name: &str) -> Option<String> {
    let o = Command::new("dpkg-deb")
        .arg("--ctrl-tarfile")
        .arg(deb)
        .output()
        .expect("dpkg-deb");
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("control.tar");
    std::fs::write(&tar, o.stdout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.path()));
    std::fs::read_to_string(dir.path().join(name)).ok()
}

#[test]
fn packages_are_lintian_clean_and_hold_what_they_should() {
    common::init();
    let pk = built();
    let debs: Vec<PathBuf> = packages::PACKAGES
        .iter()
        .map(|p| pk.deb(p, DEB_VERSION))
        .collect();
    // lintian exits non-zero on errors; warnings must be looked for in its output.
    let o = Command::new("lintian")
        .args(["--pedantic", "--display-info", "--no-tag-display-limit"])
        .args(&debs)
        .output()
        .expect("lintian not found: run lab/setup.sh (apt-get install lintian)");
    let said = String::from_utf8_lossy(&o.stdout);
    let bad: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        o.status.success() && bad.is_empty(),
        "lintian: {bad:#?}\n{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let want: [(&str, &[(&str, &str)]); 3] = [
        (
            "fleet-agent",
            &[
                ("/usr/bin/fleet-agent", "-rwxr-xr-x"),
                ("/usr/lib/systemd/system/fleet-agent.service", "-rw-r--r--"),
                ("/usr/lib/tmpfiles.d/fleet-agent.conf", "-rw-r--r--"),
                ("/etc/fleet/agent.toml", "-rw-r--r--"),
                ("/usr/share/man/man1/fleet-agent.1.gz", "-rw-r--r--"),
                ("/usr/share/man/man1/fleet-agent-join.1.gz", "-rw-r--r--"),
                (
                    "/usr/share/bash-completion/completions/fleet-agent",
                    "-rw-r--r--",
                ),
                (
                    "/usr/share/zsh/vendor-completions/_fleet-agent",
                    "-rw-r--r--",
                ),
                (
                    "/usr/share/fish/vendor_completions.d/fleet-agent.fish",
                    "-rw-r--r--",
                ),
                ("/usr/share/doc/fleet-agent/copyright", "-rw-r--r--"),
                (
                    "/usr/share/doc/fleet-agent/changelog.Debian.gz",
                    "-rw-r--r--",
                ),
            ],
        ),
        (
            "fleet-controller",
            &[
                ("/usr/bin/fleet-controller", "-rwxr-xr-x"),
                (
                    "/usr/lib/systemd/system/fleet-controller.service",
                    "-rw-r--r--",
                ),
                (
                    "/usr/lib/systemd/system/fleet-controller-backup.service",
                    "-rw-r--r--",
                ),
                (
                    "/usr/lib/systemd/system/fleet-controller-backup.timer",
                    "-rw-r--r--",
                ),
                ("/usr/lib/sysusers.d/fleet-controller.conf", "-rw-r--r--"),
                ("/etc/fleet/controller.toml", "-rw-r--r--"),
                ("/usr/share/man/man1/fleet-controller.1.gz", "-rw-r--r--"),
                (
                    "/usr/share/man/man1/fleet-controller-init.1.gz",
                    "-rw-r--r--",
                ),
                (
                    "/usr/share/bash-completion/completions/fleet-controller",
                    "-rw-r--r--",
                ),
                (
                    "/usr/share/zsh/vendor-completions/_fleet-controller",
                    "-rw-r--r--",
                ),
                (
                    "/usr/share/fish/vendor_completions.d/fleet-controller.fish",
                    "-rw-r--r--",
                ),
                ("/usr/share/doc/fleet-controller/copyright", "-rw-r--r--"),
            ],
        ),
        (
            "fleetctl",
            &[
                ("/usr/bin/fleetctl", "-rwxr-xr-x"),
                ("/usr/share/man/man1/fleetctl.1.gz", "-rw-r--r--"),
                (
                    "/usr/share/man/man1/fleetctl-token-create.1.gz",
                    "-rw-r--r--",
                ),
                (
                    "/usr/share/bash-completion/completions/fleetctl",
                    "-rw-r--r--",
                ),
                ("/usr/share/zsh/vendor-completions/_fleetctl", "-rw-r--r--"),
                (
                    "/usr/share/fish/vendor_completions.d/fleetctl.fish",
                    "-rw-r--r--",
                ),
                ("/usr/share/doc/fleetctl/copyright", "-rw-r--r--"),
            ],
        ),
    ];
    for ((pkg, files), deb) in want.iter().zip(&debs) {
        let have = contents(deb);
        for (path, mode) in *files {
            let got = have.iter().find(|(p, _)| p == path);
            assert_eq!(
                got.map(|(_, m)| m.as_str()),
                Some(*mode),
                "{pkg}: {path} missing or with the wrong mode; contents: {have:#?}"
            );
        }
        // Nothing lands outside the FHS places a package may write to.
        for (path, _) in &have {
            assert!(
                ["/usr/bin/", "/usr/lib/", "/usr/share/", "/etc/fleet/"]
                    .iter()
                    .any(|p| path.starts_with(p)),
                "{pkg}: unexpected {path}"
            );
        }
        assert_eq!(field(deb, "Version"), DEB_VERSION);
        assert_eq!(field(deb, "Section"), "admin");
        let conffiles: BTreeSet<String> = control_file(deb, "conffiles")
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let etc: BTreeSet<String> = have
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| p.starts_with("/etc/"))
            .collect();
        assert_eq!(conffiles, etc, "{pkg}: every file in /etc is a conffile");
    }
    // The agent unit as packaged: the package's binary, its conffile, and skipped until
    // the host is enrolled; the controller's skipped until `init`.
    let agent_unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/fleet-agent.service"),
    )
    .unwrap();
    assert!(
        agent_unit.contains("ExecStart=/usr/bin/fleet-agent run --config /etc/fleet/agent.toml\n")
    );
    assert!(agent_unit.contains("ConditionPathExists=/var/lib/fleet-agent/agent.crt\n"));
    // Upgrades restart a running agent only (try-restart); removal stops the agent and
    // nothing else; no script deletes state.
    let agent = &debs[0];
    let postinst = control_file(agent, "postinst").expect("fleet-agent postinst");
    assert!(postinst.contains("deb-systemd-invoke try-restart fleet-agent.service"));
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        for deb in &debs {
            let text = control_file(deb, script).unwrap_or_default();
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                !code.contains("rm -") && !code.contains("fleet-app"),
                "{} {script} must not delete state or touch apps:\n{text}",
                deb.display()
            );
        }
    }
    // The repository is signed by the exported key, and lists all three packages.
    let repo = pk.repo();
    run(Command::new("gpgv")
        .arg("--keyring")
        .arg(pk.keyring())
        .arg(repo.join("InRelease")));
    run(Command::new("gpgv")
        .arg("--keyring")
        .arg(pk.keyring())
        .arg(repo.join("Release.gpg"))
        .arg(repo.join("Release")));
    let index = std::fs::read_to_string(repo.join("Packages")).unwrap();
    for p in packages::PACKAGES {
        assert!(
            index.contains(&format!("Package: {p}\n")),
            "{p} not in the repo index"
        );
    }
}

fn show(lab: &Lab, n: u32, unit: &str, prop: &str) -> String {
    lab.sh(n, &format!("systemctl show -p {prop} --value {unit}"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The app's main PID and its workers: what must not change while the agent package does.
fn app_pids(lab: &Lab, n: u32) -> Vec<String> {
    let main = show(lab, n, "fleet-app-shop.service", "MainPID");
    assert_ne!(main, "0", "the app is not running");
    let workers = lab
        .sh(n, &format!("pgrep -P {main} | sort"))
        .unwrap_or_default();
    std::iter::once(main)
        .chain(workers.lines().map(str::to_owned))
        .collect()
}

/// The same Gunicorn master, and every worker it had still alive. Gunicorn may still be
/// forking its last workers when the app first answers healthy, so new workers can appear.
fn untouched(before: &[String], after: &[String], what: &str) {
    assert_eq!(
        before[0], after[0],
        "{what} restarted the app: {before:?} -> {after:?}"
    );
    for w in &before[1..] {
        assert!(
            after.contains(w),
            "{what} touched the app: worker {w} gone ({before:?} -> {after:?})"
        );
    }
}

fn apt(lab: &Lab, n: u32, args: &str) -> String {
    lab.sh(
        n,
        &format!("DEBIAN_FRONTEND=noninteractive apt-get -q -y {args} 2>&1"),
    )
    .unwrap_or_else(|e| panic!("apt-get {args}: {e:#}"))
}

/// A second, newer fleet-agent package from the same source (what an upgrade installs).
fn newer_agent(pk: &Packages) -> (Packages, String) {
    let version = format!("{}+upgrade-1", env!("CARGO_PKG_VERSION"));
    let dir = pk.dir.with_file_name("debian-upgrade-test");
    let deb = Packages { dir: dir.clone() }.deb("fleet-agent", &version);
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if mtime(&deb) < mtime(&pk.deb("fleet-agent", DEB_VERSION)) {
        run(Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/build.sh"))
            .arg(&dir)
            .env("FLEET_DEB_VERSION", &version));
    }
    (Packages { dir }, version)
}

#[test]
fn agent_from_the_repo_waits_for_join_then_upgrades_and_purges_under_a_running_app() {
    common::init();
    let mut opts = LabOptions::no_agents(1);
    opts.agent.heartbeat = Some("1s".into());
    let Some(lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let pk = lab.packages().unwrap().clone();
    let b = lab.binaries().unwrap().clone();

    // Installed from the served, signed repository like on any Debian host.
    apt(&lab, 1, "update");
    let out = apt(&lab, 1, &format!("install fleet-agent={DEB_VERSION}"));
    assert!(
        out.contains("fleet-agent join"),
        "postinst names the next step: {out}"
    );
    let unit = "fleet-agent.service";
    assert_eq!(
        lab.sh(1, "systemctl is-enabled fleet-agent")
            .unwrap()
            .trim(),
        "enabled"
    );
    // Skipped, not failed: the condition on the certificate held it back.
    assert_eq!(show(&lab, 1, unit, "ActiveState"), "inactive");
    assert_eq!(show(&lab, 1, unit, "ConditionResult"), "no");
    assert_eq!(show(&lab, 1, unit, "Result"), "success");
    assert_eq!(
        lab.sh(1, "dpkg-query -W -f '${Version}' fleet-agent")
            .unwrap(),
        DEB_VERSION
    );

    let token = lab
        .fleetctl(&["token", "create", "--uses", "1", "--ttl", "10m"])
        .unwrap();
    let pin = lab.ca_pin().unwrap().to_owned();
    // The token travels by environment, as the docs say (argv is world-readable).
    let joined = lab
        .sh(
            1,
            &format!(
                "FLEET_JOIN_TOKEN={} fleet-agent join --controller 198.18.0.1:7443 --ca-pin {pin} --name host1",
                token.trim()
            ),
        )
        .unwrap();
    assert!(
        joined.contains("systemctl"),
        "join says how to start: {joined}"
    );
    lab.sh(1, "systemctl start fleet-agent").unwrap();
    lab.wait_fleet_state(&["host1"], "up", Duration::from_secs(30))
        .unwrap();
    assert_eq!(show(&lab, 1, unit, "ActiveState"), "active");

    fleet_lab::demo::deploy_sample(&lab.paths, &b, &[1]).unwrap();
    let before = app_pids(&lab, 1);
    let agent_before = show(&lab, 1, unit, "MainPID");

    // Upgrade: a newer package restarts the agent and leaves the app alone.
    let (newer, version) = newer_agent(&pk);
    packages::dpkg_install(&lab.paths, &newer, 1, "fleet-agent", &version).unwrap();
    assert_eq!(
        lab.sh(1, "dpkg-query -W -f '${Version}' fleet-agent")
            .unwrap(),
        version
    );
    assert!(
        common::eventually(Duration::from_secs(20), || {
            show(&lab, 1, unit, "ActiveState") == "active"
                && show(&lab, 1, unit, "MainPID") != agent_before
        }),
        "the upgrade did not restart the agent"
    );
    lab.wait_fleet_state(&["host1"], "up", Duration::from_secs(30))
        .unwrap();
    untouched(&before, &app_pids(&lab, 1), "the upgrade");

    // Purge: the agent goes, the app and its releases stay.
    let out = apt(&lab, 1, "purge fleet-agent");
    assert!(
        out.contains("Purging configuration files for fleet-agent"),
        "{out}"
    );
    assert_eq!(show(&lab, 1, unit, "LoadState"), "not-found");
    untouched(&before, &app_pids(&lab, 1), "the purge");
    lab.sh(
        1,
        "test -d /var/lib/fleet/apps/shop && test -e /var/lib/fleet-agent/agent.crt && ! test -e /etc/fleet/agent.toml",
    )
    .unwrap();
    let addr = format!("{}:{}", fleet_lab::host_addr(1), fleet_lab::demo::PORT)
        .parse()
        .unwrap();
    match fleet_lab::load::request(addr, "/", Duration::from_secs(5)) {
        fleet_lab::load::Outcome::Ok(body) => assert!(body.starts_with("release=1.0"), "{body}"),
        fleet_lab::load::Outcome::Failed(why) => {
            panic!("the app stopped serving after the purge: {why}")
        }
    }
}

#[test]
fn controller_package_inits_starts_and_is_restarted_after_a_crash() {
    common::init();
    let mut opts = LabOptions::hosts(1);
    opts.repo = true;
    let Some(lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    apt(&lab, 1, "update");
    apt(&lab, 1, "install fleet-controller fleetctl");
    let unit = "fleet-controller.service";
    assert_eq!(
        lab.sh(1, "systemctl is-enabled fleet-controller")
            .unwrap()
            .trim(),
        "enabled"
    );
    // Skipped until the operator creates the fleet.
    lab.sh(1, "systemctl start fleet-controller").unwrap();
    assert_eq!(show(&lab, 1, unit, "ActiveState"), "inactive");
    assert_eq!(show(&lab, 1, unit, "ConditionResult"), "no");
    lab.sh(1, "getent passwd fleet-controller").unwrap();

    let init = lab
        .sh(1, "fleet-controller init --san 198.18.0.11")
        .unwrap();
    assert!(init.starts_with("ca-pin: sha256:"), "{init}");
    lab.sh(1, "systemctl start fleet-controller").unwrap();
    // Type=notify: `start` returned after READY=1, so the controller already serves.
    assert_eq!(show(&lab, 1, unit, "ActiveState"), "active");
    assert!(show(&lab, 1, unit, "StatusText").starts_with("serving on"));
    assert_eq!(show(&lab, 1, unit, "LimitNOFILE"), "131072");
    let pid = show(&lab, 1, unit, "MainPID");
    // The data dir was created by root (init) and handed to the service user, 0700.
    assert_eq!(
        lab.sh(1, "stat -c '%U %a' /var/lib/fleet-controller")
            .unwrap()
            .trim(),
        "fleet-controller 700"
    );
    // The soft limit is the hard one: systemd's, or (inside this lab, where the outer
    // machine caps the hard limit) whatever the host allows.
    let limits = lab
        .sh(1, &format!("grep 'Max open files' /proc/{pid}/limits"))
        .unwrap();
    let f: Vec<&str> = limits.split_whitespace().collect();
    assert_eq!(f[3], f[4], "soft != hard: {limits}");
    // fleetctl from its own package talks to it with the first admin identity.
    lab.sh(
        1,
        "fleetctl --controller 127.0.0.1:7443 --identity /var/lib/fleet-controller/admin hosts",
    )
    .unwrap();

    // The packaged backup job: disabled until the operator enables its timer; run once
    // by hand it leaves one private archive that restores into a new data dir.
    let enabled = lab
        .sh(
            1,
            "systemctl is-enabled fleet-controller-backup.timer 2>&1 || true",
        )
        .unwrap();
    assert_eq!(
        enabled.trim(),
        "disabled",
        "installed units: {}",
        lab.sh(
            1,
            "ls /usr/lib/systemd/system/ /etc/systemd/system/ | grep fleet"
        )
        .unwrap_or_default()
    );
    lab.sh(1, "systemctl start fleet-controller-backup.service")
        .unwrap_or_else(|e| {
            panic!(
                "backup job failed: {e:#}\n{}",
                lab.sh(1, "journalctl -u fleet-controller-backup --no-pager -n 20")
                    .unwrap_or_default()
            )
        });
    let archives = lab
        .sh(
            1,
            "stat -c '%U %a %n' /var/lib/fleet-controller-backups/*.tar",
        )
        .unwrap();
    assert_eq!(archives.lines().count(), 1, "{archives}");
    assert!(archives.starts_with("fleet-controller 600 "), "{archives}");
    let restored = lab
        .sh(1, "fleet-controller restore /var/lib/fleet-controller-backups/*.tar --data-dir /root/restored 2>&1 && ls /root/restored")
        .unwrap();
    assert!(
        restored.contains("state.redb") && restored.contains("ca.key"),
        "{restored}"
    );

    // A crash is restarted by systemd (Restart=on-failure).
    lab.sh(1, "systemctl kill -s KILL fleet-controller")
        .unwrap();
    assert!(
        common::eventually(Duration::from_secs(20), || {
            show(&lab, 1, unit, "ActiveState") == "active" && show(&lab, 1, unit, "MainPID") != pid
        }),
        "not restarted after SIGKILL: {}",
        lab.sh(1, "journalctl -u fleet-controller --no-pager -n 20")
            .unwrap_or_default()
    );
    assert_eq!(show(&lab, 1, unit, "NRestarts"), "1");

    // Sandbox score and a clean verify on this real systemd.
    let sec = lab
        .sh(
            1,
            "systemd-analyze security --no-pager fleet-controller.service",
        )
        .unwrap();
    let score: f64 = sec
        .lines()
        .find_map(|l| l.split("fleet-controller.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{sec}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{sec}");
    // `--man=no`: the host has no man-db; the pages are checked in the package test.
    let o = lab
        .exec_output(
            1,
            &[
                "systemd-analyze",
                "verify",
                "--man=no",
                "fleet-controller.service",
            ],
        )
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && said.is_empty(), "verify: {said}");
}

/// A copy of the lab's signed repository in the share directory (bound read-only at
/// /opt/fleet in every host), for apt to read as a `file:` source: the same index,
/// signatures and agent package, each of which a case below then damages.
fn repo_copy(lab: &Lab, pk: &Packages, name: &str) -> (PathBuf, String) {
    let dir = lab.paths.share().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let deb = pk.deb("fleet-agent", DEB_VERSION);
    let deb_name = deb.file_name().unwrap().to_owned();
    for f in [
        "Packages",
        "Packages.gz",
        "Release",
        "InRelease",
        "Release.gpg",
    ] {
        std::fs::copy(pk.repo().join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(&deb, dir.join(&deb_name)).unwrap();
    (dir, format!("/opt/fleet/{name}"))
}

/// Points host 1's only apt source at `uri` (with the fleet keyring, as installed), runs
/// `apt-get update` and then the agent's install; returns both outputs with their exit codes.
fn update_and_install(lab: &Lab, uri: &str) -> (String, String) {
    lab.sh(
        1,
        &format!(
            "echo 'deb [signed-by={}] {uri} ./' > {}",
            packages::KEYRING_IN_HOST,
            packages::SOURCES_IN_HOST
        ),
    )
    .unwrap();
    let update = lab
        .sh(1, "apt-get -q update 2>&1; echo \"exit=$?\"")
        .unwrap();
    let install = lab
        .sh(
            1,
            &format!(
                "DEBIAN_FRONTEND=noninteractive apt-get -q -y install fleet-agent={DEB_VERSION} 2>&1; echo \"exit=$?\""
            ),
        )
        .unwrap();
    (update, install)
}

fn agent_installed(lab: &Lab) -> bool {
    lab.sh(
        1,
        "dpkg-query -W -f '${Status}' fleet-agent 2>/dev/null || true",
    )
    .unwrap()
    .contains("install ok installed")
}

/// The bad-input half of the apt path: an index whose signature does not match, and a
/// package whose bytes do not match the signed index, are refused by apt with its reason,
/// and nothing is installed; the same repository untouched then installs (the control that
/// shows the refusals come from the damage, not from the setup).
#[test]
fn apt_refuses_a_tampered_index_and_a_tampered_package() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::no_agents(1)) else {
        return;
    };
    let pk = lab.packages().unwrap().clone();

    // 1. The signed index altered after signing (both the inline-signed and the detached
    //    form, so apt has no untouched copy to fall back to).
    let (dir, uri) = repo_copy(&lab, &pk, "tampered-index");
    for f in ["InRelease", "Release"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.contains("Label: fleet\n"), "{f}: {text}");
        std::fs::write(dir.join(f), text.replace("Label: fleet\n", "Label: evil\n")).unwrap();
    }
    let (update, install) = update_and_install(&lab, &format!("file:{uri}"));
    assert!(
        !update.contains("exit=0"),
        "apt-get update accepted a tampered index:\n{update}"
    );
    assert!(
        update.contains("BADSIG") || update.contains("signatures were invalid"),
        "apt-get update does not say the signature is bad:\n{update}"
    );
    assert!(
        !install.contains("exit=0") && !agent_installed(&lab),
        "the agent was installed from a tampered index:\n{install}"
    );

    // 2. The package's bytes changed (same size), the signed index left as it was.
    let (dir, uri) = repo_copy(&lab, &pk, "tampered-package");
    let deb = dir.join(pk.deb("fleet-agent", DEB_VERSION).file_name().unwrap());
    let mut bytes = std::fs::read(&deb).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&deb, &bytes).unwrap();
    let (update, install) = update_and_install(&lab, &format!("file:{uri}"));
    assert!(update.contains("exit=0"), "{update}");
    assert!(
        !install.contains("exit=0"),
        "apt-get install accepted a package whose hash does not match the index:\n{install}"
    );
    assert!(
        install.contains("Hash Sum mismatch") || install.contains("Hashes of expected file"),
        "apt-get install does not say the hash does not match:\n{install}"
    );
    assert!(
        !agent_installed(&lab),
        "a tampered package got installed:\n{install}"
    );

    // 3. Control: the same copy, untouched, installs.
    let (_, uri) = repo_copy(&lab, &pk, "untouched");
    let (update, install) = update_and_install(&lab, &format!("file:{uri}"));
    assert!(update.contains("exit=0"), "{update}");
    assert!(install.contains("exit=0"), "{install}");
    assert!(agent_installed(&lab), "{install}");
}
