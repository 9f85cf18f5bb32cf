//! The fault matrix (issue 14): one test per fault, each asserting that the apps keep
//! serving and nothing is lost. Disk full on a host while staging, a corrupt artifact in
//! the controller's blob store, a power cut and a reboot with apps deployed, a host
//! frozen during a batch, and the controller's own disk full.

mod common;

use common::{ctl, wait};

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use fleet_lab::load;
use fleet_lab::{host_addr, release, Fault, Lab, LabOptions, Paths};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PORT: u16 = 8000;

fn lab(n: u32) -> Option<Lab> {
    common::init();
    let mut opts = LabOptions::fleet(n);
    opts.agent.heartbeat = Some("1s".into());
    fleet_lab::test_lab(&opts)
}

fn ctl_err(lab: &Lab, args: &[&str]) -> String {
    match lab.fleetctl(args) {
        Ok(out) => panic!("fleetctl {args:?} succeeded: {out}"),
        Err(e) => format!("{e:#}"),
    }
}

fn get(n: u32) -> String {
    let addr = format!("{}:{PORT}", host_addr(n)).parse().unwrap();
    match load::request(addr, "/", Duration::from_secs(3)) {
        load::Outcome::Ok(body) => body,
        load::Outcome::Failed(why) => format!("FAILED {why}"),
    }
}

fn serves(n: u32, version: &str) -> bool {
    get(n).starts_with(&format!("release={version} "))
}

struct Work(tempfile::TempDir);

impl Work {
    fn new() -> Work {
        Work(tempfile::tempdir().unwrap())
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        release::write(self.0.path(), name, bytes)
            .unwrap()
            .display()
            .to_string()
    }
}

/// Creates app `shop` (gunicorn) and deploys release 1.0 to every host.
fn deploy_shop(lab: &Lab, work: &Work) {
    let spec = release::spec("shop", "gunicorn", PORT, "");
    ctl(
        lab,
        &["app", "apply", &work.file("shop.toml", spec.as_bytes())],
    );
    upload(lab, work, "1.0", &[]);
    ctl(lab, &["deploy", "shop", "--version", "1.0"]);
    for &n in lab.hosts() {
        assert!(serves(n, "1.0"), "host{n}: {}", get(n));
    }
}

/// Uploads release `version` of shop; returns its sha256.
fn upload(lab: &Lab, work: &Work, version: &str, extra: &[(&str, Vec<u8>)]) -> String {
    let tar = release::sample_with("wsgi", version, extra).unwrap();
    let path = work.file(&format!("shop-{version}.tar.gz"), &tar);
    ctl(
        lab,
        &["release", "upload", "shop", &path, "--version", version],
    );
    hex::encode(Sha256::digest(&tar))
}

fn releases_on(lab: &Lab, n: u32) -> String {
    lab.sh(
        n,
        "readlink /var/lib/fleet/apps/shop/current; ls -a /var/lib/fleet/apps/shop /var/lib/fleet/apps/shop/releases",
    )
    .unwrap()
}

fn random(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

fn statuses(lab: &Lab) -> BTreeMap<String, Value> {
    let v: Vec<Value> =
        serde_json::from_str(&ctl(lab, &["status", "shop", "--output", "json"])).unwrap();
    v.into_iter()
        .map(|e| (e["host"].as_str().unwrap().to_owned(), e))
        .collect()
}

#[test]
fn host_disk_full_while_staging_refuses_cleanly() {
    let Some(lab) = lab(1) else { return };
    let work = Work::new();
    deploy_shop(&lab, &work);
    // The apps root moves onto a small filesystem of its own (copied, so what runs is
    // unchanged); the agent restarts to see it. 6 MiB free.
    lab.sh(
        1,
        "set -e; used=$(du -sm /var/lib/fleet/apps | cut -f1); \
         mkdir -p /run/fleet-full; mount -t tmpfs -o size=$((used + 6))m fleet-full /run/fleet-full; \
         cp -a /var/lib/fleet/apps/. /run/fleet-full/; mount --bind /run/fleet-full /var/lib/fleet/apps; \
         systemctl restart fleet-agent",
    )
    .unwrap();
    lab.wait_fleet_state(&["host1"], "up", Duration::from_secs(30))
        .unwrap();
    let free = || -> u64 {
        lab.sh(1, "df --output=avail -B1 /var/lib/fleet/apps | tail -1")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = releases_on(&lab, 1);
    let free_before = free();
    // 64 MiB of zeros: a small download that cannot be unpacked here.
    upload(&lab, &work, "2.0", &[("big.bin", vec![0u8; 64 << 20])]);
    let err = ctl_err(&lab, &["deploy", "shop", "--version", "2.0"]);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(serves(1, "1.0"), "{}", get(1));
    assert_eq!(releases_on(&lab, 1), before, "a partial release was left");
    // The partial unpack is gone; only the verified download stays, so a retry after
    // freeing space needs no new transfer.
    let kept: u64 = lab
        .sh(1, "du -sb /var/lib/fleet/apps/shop/.incoming | cut -f1")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let free_after = free();
    assert!(
        free_after + kept + (64 << 10) >= free_before,
        "space not freed: {free_before} bytes free before, {free_after} after ({kept} kept in .incoming)"
    );
    // Once it fits, the same host takes the next release.
    upload(&lab, &work, "3.0", &[]);
    ctl(&lab, &["deploy", "shop", "--version", "3.0"]);
    assert!(serves(1, "3.0"), "{}", get(1));
    // A successful deploy prunes the leftover download.
    let left = lab
        .sh(1, "ls -A /var/lib/fleet/apps/shop/.incoming")
        .unwrap();
    assert_eq!(left.trim(), "", "downloads left behind");
}

#[test]
fn corrupt_artifact_in_the_blob_store_is_refused_by_sha256() {
    let Some(lab) = lab(2) else { return };
    let work = Work::new();
    deploy_shop(&lab, &work);
    let sha = upload(&lab, &work, "2.0", &[]);
    let blob = Paths::from_env().controller_data().join("blobs").join(&sha);
    let mut bytes = std::fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let before: Vec<String> = lab.hosts().iter().map(|&n| releases_on(&lab, n)).collect();
    let err = ctl_err(&lab, &["deploy", "shop", "--version", "2.0"]);
    assert!(err.contains("sha256"), "{err}");
    for &n in lab.hosts() {
        assert!(serves(n, "1.0"), "host{n}: {}", get(n));
        assert_eq!(
            releases_on(&lab, n),
            before[n as usize - 1],
            "host{n} changed"
        );
    }
    // The store still works: a good upload of the next version deploys.
    upload(&lab, &work, "3.0", &[]);
    ctl(&lab, &["deploy", "shop", "--version", "3.0"]);
    for &n in lab.hosts() {
        assert!(serves(n, "3.0"), "host{n}: {}", get(n));
    }
}

#[test]
fn apps_come_back_after_a_power_cut_and_a_reboot() {
    let Some(mut lab) = lab(2) else { return };
    let work = Work::new();
    deploy_shop(&lab, &work);
    upload(&lab, &work, "2.0", &[]);
    ctl(&lab, &["deploy", "shop", "--version", "2.0"]);
    lab.fault(1, Fault::PowerCut).unwrap();
    assert!(serves(2, "2.0"), "host2 was disturbed: {}", get(2));
    lab.start_host(1).unwrap();
    lab.fault(2, Fault::Reboot).unwrap();
    for n in [1, 2] {
        wait(
            &format!("host{n} serving 2.0"),
            Duration::from_secs(60),
            || serves(n, "2.0"),
        );
    }
    lab.wait_fleet_state(&["host1", "host2"], "up", Duration::from_secs(60))
        .unwrap();
    wait("both hosts reporting 2.0", Duration::from_secs(30), || {
        let s = statuses(&lab);
        s.len() == 2 && s.values().all(|v| v["release"] == "2.0")
    });
    // Nothing lost: the previous release is still there to roll back to.
    for n in [1, 2] {
        let r = releases_on(&lab, n);
        assert!(r.contains("1.0") && r.contains("2.0"), "host{n}: {r}");
    }
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    assert!(serves(1, "1.0") && serves(2, "1.0"));
}

#[test]
fn a_host_frozen_during_a_batch_halts_the_rollout_and_others_keep_serving() {
    let Some(lab) = lab(3) else { return };
    let work = Work::new();
    deploy_shop(&lab, &work);
    upload(&lab, &work, "2.0", &[]);
    let bins = lab.binaries().unwrap().fleetctl.clone();
    let identity = Paths::from_env().admin_identity();
    // host1 is the canary; host2 freezes once the canary is healthy, before its batch.
    let rollout = std::thread::spawn(move || {
        std::process::Command::new(bins)
            .args(["--controller", "198.18.0.1:7443", "--identity"])
            .arg(identity)
            .args([
                "rollout",
                "shop",
                "--version",
                "2.0",
                "--canary",
                "1",
                "--max-parallel",
                "1",
                "--min-healthy",
                "1s",
                "--healthy-deadline",
                "10s",
                "--hosts",
                "host1,host2,host3",
            ])
            .output()
            .unwrap()
    });
    wait("the canary on 2.0", Duration::from_secs(60), || {
        serves(1, "2.0")
    });
    lab.fault(2, Fault::Freeze).unwrap();
    let t = Instant::now();
    let out = rollout.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("rollout after the freeze took {:?}:\n{text}", t.elapsed());
    assert!(
        !out.status.success(),
        "rollout succeeded with a frozen host: {text}"
    );
    // Reverted per its rules: the canary is back on 1.0, host3 never left it.
    assert!(serves(1, "1.0"), "canary: {}", get(1));
    assert!(serves(3, "1.0"), "host3: {}", get(3));
    assert!(
        !lab.sh(3, "ls /var/lib/fleet/apps/shop/releases")
            .unwrap()
            .contains("2.0")
            || lab
                .sh(3, "readlink /var/lib/fleet/apps/shop/current")
                .unwrap()
                .trim()
                == "releases/1.0"
    );
    lab.fault(2, Fault::Thaw).unwrap();
    // Thawed, host2 settles on what the fleet runs, whatever it had queued.
    wait("host2 back on 1.0", Duration::from_secs(90), || {
        serves(2, "1.0")
    });
    wait("host2 reporting 1.0", Duration::from_secs(60), || {
        statuses(&lab)
            .get("host2")
            .is_some_and(|v| v["release"] == "1.0")
    });
}

/// Unmounts the controller's small data filesystem even when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn controller_disk_full_gives_a_clear_error_and_keeps_the_store() {
    let Some(mut lab) = lab(1) else { return };
    let work = Work::new();
    deploy_shop(&lab, &work);
    let data = Paths::from_env().controller_data();
    let copy = work.0.path().join("controller-copy");
    let mut guard = None;
    lab.restart_controller_with(|| {
        let sh = |s: &str| {
            let st = std::process::Command::new("sh").arg("-c").arg(s).status()?;
            anyhow::ensure!(st.success(), "`{s}` failed");
            Ok(())
        };
        let (d, c) = (data.display(), copy.display());
        sh(&format!("cp -a {d}/. {c}/ 2>/dev/null || (mkdir -p {c} && cp -a {d}/. {c}/)"))?;
        sh(&format!(
            "used=$(du -sm {d} | cut -f1); mount -t tmpfs -o size=$((used + 4))m,mode=0700 fleet-ctl-full {d} && cp -a {c}/. {d}/"
        ))?;
        guard = Some(Unmount(data.clone()));
        Ok(())
    })
    .unwrap();
    let _guard = guard;
    let free: u64 = String::from_utf8(
        std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&data)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .last()
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    // Random bytes do not compress: this upload cannot fit.
    let tar = release::sample_with(
        "wsgi",
        "2.0",
        &[("noise.bin", random(free as usize + (1 << 20)))],
    )
    .unwrap();
    let path = work.file("shop-2.0.tar.gz", &tar);
    let err = ctl_err(
        &lab,
        &["release", "upload", "shop", &path, "--version", "2.0"],
    );
    eprintln!("upload on a full disk: {err}");
    assert!(
        err.to_lowercase().contains("space") || err.to_lowercase().contains("disk"),
        "not a clear error: {err}"
    );
    // Still serving, still answering, and a restart finds the store whole.
    assert!(serves(1, "1.0"), "{}", get(1));
    ctl(&lab, &["status"]);
    lab.restart_controller().unwrap();
    lab.wait_fleet_state(&["host1"], "up", Duration::from_secs(30))
        .unwrap();
    assert!(ctl(&lab, &["app", "list"]).contains("shop"));
    // The refused upload left no half-recorded release behind.
    let err = ctl_err(&lab, &["deploy", "shop", "--version", "2.0"]);
    assert!(err.contains("2.0"), "{err}");
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    assert!(serves(1, "1.0"), "{}", get(1));
}
