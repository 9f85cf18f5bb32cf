//! `fleet-lab demo`: what a new user sees first. Boots three hosts with enrolled agents,
//! deploys the sample WSGI app to all of them through fleetctl, as an operator would, then
//! rolls a new release of it out live across them, and leaves everything running.

use anyhow::{Context, Result};

use crate::config::{host_addr, Paths};
use crate::fleet::{self, Binaries};
use crate::release;

pub const APP: &str = "shop";
pub const PORT: u16 = 8000;
/// The release the demo rolls out after deploying 1.0.
pub const NEXT: &str = "1.1";

fn step(paths: &Paths, b: &Binaries, what: &str, args: &[&str]) -> Result<String> {
    println!("$ fleetctl {}", args.join(" "));
    let out = fleet::fleetctl(paths, b, args).with_context(|| format!("demo step: {what}"))?;
    print!("{out}");
    Ok(out)
}

/// Deploys release 1.0 of the sample app to every lab host.
pub fn deploy_sample(paths: &Paths, b: &Binaries, hosts: &[u32]) -> Result<()> {
    let work = tempdir()?;
    let spec = release::write(
        &work,
        "shop.toml",
        release::spec(APP, "gunicorn", PORT, "").as_bytes(),
    )?;
    let tar = release::write(
        &work,
        "shop-1.0.tar.gz",
        &release::sample("wsgi", "1.0", &[])?,
    )?;
    step(
        paths,
        b,
        "create the app",
        &["app", "apply", &spec.display().to_string()],
    )?;
    step(
        paths,
        b,
        "upload release 1.0",
        &[
            "release",
            "upload",
            APP,
            &tar.display().to_string(),
            "--version",
            "1.0",
        ],
    )?;
    step(paths, b, "deploy 1.0", &["deploy", APP, "--version", "1.0"])?;
    step(paths, b, "show status", &["status", APP])?;
    let _ = std::fs::remove_dir_all(&work);
    show_served(hosts, "1.0")
}

/// Uploads release [`NEXT`] of the sample app and rolls it out across `hosts` with
/// fleetctl's live output (bars on a terminal, a line per host step otherwise): the canary
/// first, then two hosts at a time, each held healthy for 2 s.
pub fn roll_out_next(paths: &Paths, b: &Binaries, hosts: &[u32]) -> Result<()> {
    let work = tempdir()?;
    let tar = release::write(
        &work,
        &format!("shop-{NEXT}.tar.gz"),
        &release::sample("wsgi", NEXT, &[])?,
    )?;
    step(
        paths,
        b,
        "upload the new release",
        &[
            "release",
            "upload",
            APP,
            &tar.display().to_string(),
            "--version",
            NEXT,
        ],
    )?;
    let _ = std::fs::remove_dir_all(&work);
    let args = [
        "rollout",
        APP,
        "--version",
        NEXT,
        "--canary",
        "1",
        "--max-parallel",
        "2",
        "--min-healthy",
        "2s",
    ];
    println!("$ fleetctl {}", args.join(" "));
    fleet::fleetctl_live(paths, b, &args).context("demo step: roll out the new release")?;
    step(paths, b, "show status", &["status", APP])?;
    show_served(hosts, NEXT)
}

/// Asks every host for `/` and shows the answer; each must serve `version`.
fn show_served(hosts: &[u32], version: &str) -> Result<()> {
    for &n in hosts {
        let addr = format!("{}:{PORT}", host_addr(n)).parse()?;
        match crate::load::request(addr, "/", std::time::Duration::from_secs(5)) {
            crate::load::Outcome::Ok(body) => {
                println!("$ curl http://{addr}/  ->  {body}");
                if !body.starts_with(&format!("release={version}")) {
                    anyhow::bail!("{addr} serves {body:?}, not release {version}");
                }
            }
            crate::load::Outcome::Failed(why) => {
                anyhow::bail!("{addr} does not serve the sample app: {why}")
            }
        }
    }
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleet-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
