//! `--slow-disk`: the controller's data dir on ext4 over dm-delay over a loop device, so that
//! every flush costs ~2 ms like a busy cloud volume (reads and writes are not delayed).
//! Needs root, `losetup`, `dmsetup` (Debian: dmsetup) and the kernel's dm-delay target;
//! every step is undone when the guard drops, on every exit path.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const SIZE_MIB: u64 = 512;
const FLUSH_DELAY_MS: u32 = 2;

pub struct SlowDisk {
    image: PathBuf,
    loop_dev: Option<String>,
    dm_name: Option<String>,
    mount: PathBuf,
    mounted: bool,
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Why this machine cannot make the device, if it cannot.
pub fn precheck() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("--slow-disk needs root (loop and device-mapper devices)");
    }
    let targets = run("dmsetup", &["targets"]).context(
        "--slow-disk needs the kernel's device-mapper (CONFIG_BLK_DEV_DM) with the delay \
         target (dm_delay) and dmsetup (apt-get install dmsetup)",
    )?;
    if !targets.lines().any(|l| l.starts_with("delay")) {
        bail!(
            "--slow-disk needs the dm-delay target: `modprobe dm_delay` (this kernel lists only: {})",
            targets.replace('\n', ", ")
        );
    }
    Ok(())
}

impl SlowDisk {
    pub fn create(dir: &Path) -> Result<SlowDisk> {
        precheck()?;
        let mut d = SlowDisk {
            image: dir.join("slow.img"),
            loop_dev: None,
            dm_name: None,
            mount: dir.join("slow"),
            mounted: false,
        };
        let f = std::fs::File::create(&d.image).context("create the slow-disk image")?;
        f.set_len(SIZE_MIB << 20)?;
        drop(f);
        let image = d.image.display().to_string();
        let dev = run("losetup", &["--find", "--show", &image])?;
        d.loop_dev = Some(dev.clone());
        let name = format!("fleet-swarm-{}", std::process::id());
        let sectors = (SIZE_MIB << 20) / 512;
        // read group, write group, flush group: only flushes are delayed.
        let table = format!("0 {sectors} delay {dev} 0 0 {dev} 0 0 {dev} 0 {FLUSH_DELAY_MS}");
        run("dmsetup", &["create", &name, "--table", &table])?;
        d.dm_name = Some(name.clone());
        let mapped = format!("/dev/mapper/{name}");
        run("mkfs.ext4", &["-q", "-F", &mapped])?;
        std::fs::create_dir_all(&d.mount)?;
        run("mount", &[&mapped, &d.mount.display().to_string()])?;
        d.mounted = true;
        Ok(d)
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run("umount", &[&self.mount.display().to_string()]);
        }
        if let Some(n) = self.dm_name.take() {
            let _ = run("dmsetup", &["remove", "--retry", &n]);
        }
        if let Some(dev) = self.loop_dev.take() {
            let _ = run("losetup", &["-d", &dev]);
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
