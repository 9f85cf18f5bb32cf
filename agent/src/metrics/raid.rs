//! `mdadm` (/proc/mdstat) and `bonding` (/sys/class/net/*/bonding) collectors: the
//! series node-mixin's RAID and bond alerts use, present only where the host has them.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Gauge;

use super::source::{fam, Collected, Outcome, Reader, Source};

#[derive(Debug, Default, PartialEq)]
pub struct Md {
    pub device: String,
    /// active, inactive, recovering, resync, check.
    pub state: &'static str,
    pub required: f64,
    pub active: f64,
    pub failed: f64,
    pub spare: f64,
    pub blocks: f64,
    pub blocks_synced: f64,
}

/// /proc/mdstat: `mdN : active raid1 sdb1[1] sda1[0](F)` then a status line with
/// `blocks ... [n/m] [UU]`, maybe a recovery line. Malformed arrays are skipped.
pub fn parse_mdstat(text: &str) -> Vec<Md> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((dev, rest)) = line.split_once(" : ") else {
            continue;
        };
        let dev = dev.trim();
        if !dev.starts_with("md") {
            continue;
        }
        let mut words = rest.split_whitespace();
        let Some(state) = words.next() else { continue };
        let mut md = Md {
            device: dev.to_owned(),
            state: if state == "inactive" {
                "inactive"
            } else {
                "active"
            },
            ..Md::default()
        };
        for w in words.filter(|w| w.contains('[')) {
            if w.ends_with("(F)") {
                md.failed += 1.0;
            } else if w.ends_with("(S)") {
                md.spare += 1.0;
            }
        }
        let status = lines.get(i + 1).copied().unwrap_or("");
        let mut sw = status.split_whitespace();
        md.blocks = sw.next().and_then(|b| b.parse::<u64>().ok()).unwrap_or(0) as f64;
        md.blocks_synced = md.blocks;
        if let Some(counts) = status
            .split_whitespace()
            .find(|w| w.starts_with('[') && w.contains('/') && w.ends_with(']'))
        {
            let inner = &counts[1..counts.len() - 1];
            if let Some((n, m)) = inner.split_once('/') {
                md.required = n.parse::<u64>().unwrap_or(0) as f64;
                md.active = m.parse::<u64>().unwrap_or(0) as f64;
            }
        } else {
            // raid0/linear/inactive: no [n/m]; every member listed is active.
            let members = rest.split_whitespace().filter(|w| w.contains('[')).count() as f64;
            md.active = members - md.failed - md.spare;
            md.required = md.active;
        }
        if let Some(progress) = lines.get(i + 2).filter(|l| l.contains('%')) {
            for op in ["recovery", "resync", "check", "reshape"] {
                if progress.contains(op) {
                    md.state = match op {
                        "recovery" | "reshape" => "recovering",
                        "resync" => "resync",
                        _ => "check",
                    };
                }
            }
            // `(12345/67890)` blocks done of total.
            if let Some(done) = progress
                .split_once('(')
                .and_then(|(_, r)| r.split_once('/'))
                .and_then(|(d, _)| d.parse::<u64>().ok())
            {
                md.blocks_synced = done as f64;
            }
        }
        out.push(md);
    }
    out
}

#[derive(Debug)]
pub struct Mdadm;

impl Source for Mdadm {
    fn name(&self) -> &'static str {
        "mdadm"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        // No md driver loaded: nothing to report, and not an error (node_exporter logs
        // it at debug level).
        let text = io.proc("mdstat");
        let ok = text.is_ok();
        let mds = parse_mdstat(text.unwrap_or_default());
        let mut f = fam(
            enc,
            "node_md_disks",
            "Number of active/failed/spare disks of device.",
            None,
            Gauge,
        )?;
        for md in &mds {
            for (state, v) in [
                ("active", md.active),
                ("failed", md.failed),
                ("spare", md.spare),
            ] {
                f.sample(&[("device", md.device.as_str()), ("state", state)], v)?;
            }
        }
        let mut f = fam(
            enc,
            "node_md_disks_required",
            "Total number of disks of device.",
            None,
            Gauge,
        )?;
        for md in &mds {
            f.sample(&[("device", md.device.as_str())], md.required)?;
        }
        let mut f = fam(
            enc,
            "node_md_state",
            "Indicates the state of md-device.",
            None,
            Gauge,
        )?;
        for md in &mds {
            for s in ["active", "inactive", "recovering", "resync", "check"] {
                f.sample(
                    &[("device", md.device.as_str()), ("state", s)],
                    if md.state == s { 1.0 } else { 0.0 },
                )?;
            }
        }
        let mut f = fam(
            enc,
            "node_md_blocks",
            "Total number of blocks on device.",
            None,
            Gauge,
        )?;
        for md in &mds {
            f.sample(&[("device", md.device.as_str())], md.blocks)?;
        }
        let mut f = fam(
            enc,
            "node_md_blocks_synced",
            "Number of blocks synced on device.",
            None,
            Gauge,
        )?;
        for md in &mds {
            f.sample(&[("device", md.device.as_str())], md.blocks_synced)?;
        }
        Ok(Outcome::from_ok(ok))
    }
}

#[derive(Debug)]
pub struct Bonding;

impl Source for Bonding {
    fn name(&self) -> &'static str {
        "bonding"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        // (master, slaves, active)
        let mut bonds: Vec<(String, f64, f64)> = Vec::new();
        let masters = io
            .sys("class/net/bonding_masters")
            .map(|t| t.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
        let ok = masters.is_ok();
        let mut state = String::new();
        for master in masters.unwrap_or_default().into_iter().take(64) {
            if !master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                continue;
            }
            let slaves: Vec<String> = io
                .sys(&format!("class/net/{master}/bonding/slaves"))
                .map(|t| t.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            let mut active = 0.0;
            for s in &slaves {
                if io.sys_value(
                    &format!("class/net/{master}/lower_{s}/bonding_slave/mii_status"),
                    &mut state,
                ) && state == "up"
                {
                    active += 1.0;
                }
            }
            bonds.push((master, slaves.len() as f64, active));
        }
        let mut f = fam(
            enc,
            "node_bonding_slaves",
            "Number of configured slaves per bonding interface.",
            None,
            Gauge,
        )?;
        for (m, s, _) in &bonds {
            f.sample(&[("master", m.as_str())], *s)?;
        }
        let mut f = fam(
            enc,
            "node_bonding_active",
            "Number of active slaves per bonding interface.",
            None,
            Gauge,
        )?;
        for (m, _, a) in &bonds {
            f.sample(&[("master", m.as_str())], *a)?;
        }
        Ok(Outcome::from_ok(ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const MDSTAT: &str = "\
Personalities : [raid1] [raid0]
md0 : active raid1 sdb1[1] sda1[0](F) sdc1[2](S)
      1046528 blocks super 1.2 [2/1] [U_]
      [==>..................]  recovery = 12.6% (131072/1046528) finish=0.1min speed=131072K/sec

md1 : active raid0 sdd1[1] sde1[0]
      2093056 blocks super 1.2 512k chunks

md2 : inactive sdf1[0](S)
      1046528 blocks super 1.2

garbage : line
unused devices: <none>
";

    #[test]
    fn mdstat_arrays() {
        let m = parse_mdstat(MDSTAT);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            (m[0].required, m[0].active, m[0].failed, m[0].spare),
            (2.0, 1.0, 1.0, 1.0)
        );
        assert_eq!(m[0].state, "recovering");
        assert_eq!(m[0].blocks_synced, 131072.0);
        assert_eq!(
            (m[1].required, m[1].active, m[1].state),
            (2.0, 2.0, "active")
        );
        assert_eq!((m[2].state, m[2].spare), ("inactive", 1.0));
        let fx = Fixture::new(&[("mdstat", MDSTAT)]);
        let page = render(Mdadm, fx.path(), fx.path());
        assert!(
            has(&page, "node_md_disks{device=\"md0\",state=\"failed\"} 1.0"),
            "{page}"
        );
        assert!(has(&page, "node_md_disks_required{device=\"md0\"} 2.0"));
        assert!(has(
            &page,
            "node_md_state{device=\"md0\",state=\"recovering\"} 1.0"
        ));
    }

    #[test]
    fn bonds() {
        let fx = Fixture::new(&[
            ("class/net/bonding_masters", "bond0\n"),
            ("class/net/bond0/bonding/slaves", "eth0 eth1\n"),
            (
                "class/net/bond0/lower_eth0/bonding_slave/mii_status",
                "up\n",
            ),
            (
                "class/net/bond0/lower_eth1/bonding_slave/mii_status",
                "down\n",
            ),
        ]);
        let page = render(Bonding, fx.path(), fx.path());
        assert!(
            has(&page, "node_bonding_slaves{master=\"bond0\"} 2.0"),
            "{page}"
        );
        assert!(has(&page, "node_bonding_active{master=\"bond0\"} 1.0"));
        let none = Fixture::new(&[]);
        let page = render(Bonding, none.path(), none.path());
        assert!(page.contains("# TYPE node_bonding_active gauge"));
        let page = render(Mdadm, none.path(), none.path());
        assert!(page.contains("# TYPE node_md_disks_required gauge"));
    }
}
