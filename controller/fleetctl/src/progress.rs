//! Live bars for a rollout watched on a terminal: one for the whole rollout and one for
//! what runs now (staging, the canary or a batch, the revert). The per-host lines are
//! printed above the bars, so the scrollback tells the same story as the plain output.

use std::time::Duration;

use fleet_proto::v1::{RolloutEvent, RolloutInfo};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::rollout::batch_label;

/// What the second bar counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub label: String,
    pub done: u64,
    pub total: u64,
    /// Hosts of the stage still under way, with their phase.
    pub busy: String,
}

/// Hosts on the new release (converged ones came back after being skipped).
pub fn updated(info: &RolloutInfo) -> u64 {
    info.hosts
        .iter()
        .filter(|h| matches!(h.phase.as_str(), "healthy" | "converged"))
        .count() as u64
}

/// The stage the rollout is in, or `None` once nothing runs.
pub fn stage_of(info: &RolloutInfo) -> Option<Stage> {
    let busy = |hosts: &mut dyn Iterator<Item = &fleet_proto::v1::RolloutHost>| {
        hosts
            .map(|h| format!("{} {}", h.host, h.phase))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match info.state.as_str() {
        "staging" => Some(Stage {
            label: "staging".into(),
            done: info.hosts.iter().filter(|h| h.phase != "pending").count() as u64,
            total: info.hosts.len() as u64,
            busy: String::new(),
        }),
        "reverting" => {
            let back: Vec<_> = info
                .hosts
                .iter()
                .filter(|h| matches!(h.phase.as_str(), "reverting" | "reverted" | "revert_failed"))
                .collect();
            Some(Stage {
                label: "revert".into(),
                done: back.iter().filter(|h| h.phase != "reverting").count() as u64,
                total: back.len() as u64,
                busy: busy(&mut back.iter().copied().filter(|h| h.phase == "reverting")),
            })
        }
        "running" | "paused" if (info.current_batch as usize) < info.batches.len() => {
            let b = info.current_batch;
            let hosts: Vec<_> = info.hosts.iter().filter(|h| h.batch == b).collect();
            let finished = |p: &str| matches!(p, "healthy" | "skipped" | "failed");
            Some(Stage {
                label: batch_label(info, b),
                done: hosts.iter().filter(|h| finished(&h.phase)).count() as u64,
                total: hosts.len() as u64,
                busy: busy(
                    &mut hosts
                        .iter()
                        .copied()
                        .filter(|h| h.phase != "pending" && !finished(&h.phase)),
                ),
            })
        }
        _ => None,
    }
}

pub struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    overall: Option<ProgressBar>,
    stage: Option<(String, ProgressBar)>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            style: ProgressStyle::with_template(
                "{prefix:>9} [{bar:30.cyan/blue}] {pos}/{len} {msg}",
            )
            .expect("a valid bar template")
            .progress_chars("=> "),
            overall: None,
            stage: None,
        }
    }

    /// Prints `lines` above the bars, then redraws them from the event's rollout.
    pub fn show(&mut self, ev: &RolloutEvent, lines: Vec<String>) {
        for l in lines {
            if self.multi.is_hidden() {
                // indicatif drops lines it would not draw; the lines must never be lost.
                println!("{l}");
            } else {
                // A terminal that went away is not worth failing the rollout watch for.
                let _ = self.multi.println(l);
            }
        }
        let Some(info) = &ev.info else { return };
        let overall = self.overall.get_or_insert_with(|| {
            // Elapsed since the rollout started, also when re-attached to a running one.
            let since = Duration::from_millis((ev.time_ms - info.started_ms).max(0) as u64);
            let bar = ProgressBar::new(info.hosts.len() as u64)
                .with_style(
                    ProgressStyle::with_template(
                        "{prefix:>9} [{bar:30.green/blue}] {pos}/{len} updated  {elapsed} {msg}",
                    )
                    .expect("a valid bar template")
                    .progress_chars("=> "),
                )
                .with_prefix("overall")
                .with_elapsed(since);
            let bar = self.multi.add(bar);
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        overall.set_length(info.hosts.len() as u64);
        overall.set_position(updated(info));
        overall.set_message(info.state.clone());
        let stage = stage_of(info);
        if self.stage.as_ref().map(|(l, _)| l) != stage.as_ref().map(|s| &s.label) {
            if let Some((_, old)) = self.stage.take() {
                old.finish_and_clear();
                self.multi.remove(&old);
            }
            if let Some(s) = &stage {
                let bar = ProgressBar::new(s.total)
                    .with_style(self.style.clone())
                    .with_prefix(s.label.clone());
                self.stage = Some((s.label.clone(), self.multi.add(bar)));
            }
        }
        if let (Some(s), Some((_, bar))) = (stage, &self.stage) {
            bar.set_length(s.total);
            bar.set_position(s.done);
            bar.set_message(s.busy);
        }
    }

    /// Takes the bars off the screen (the summary follows as plain text).
    pub fn clear(self) {
        if let Some((_, b)) = &self.stage {
            b.finish_and_clear();
        }
        if let Some(b) = &self.overall {
            b.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::{RolloutBatch, RolloutHost};

    fn info(state: &str, current: u32, phases: &[(&str, u32, &str)]) -> RolloutInfo {
        let mut batches: Vec<RolloutBatch> = Vec::new();
        for (host, b, _) in phases {
            if batches.len() <= *b as usize {
                batches.resize(*b as usize + 1, RolloutBatch::default());
            }
            batches[*b as usize].hosts.push((*host).into());
        }
        RolloutInfo {
            state: state.into(),
            current_batch: current,
            canary: 1,
            batches,
            hosts: phases
                .iter()
                .map(|(host, batch, phase)| RolloutHost {
                    host: (*host).into(),
                    batch: *batch,
                    phase: (*phase).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn staging_counts_every_staged_host() {
        let i = info(
            "staging",
            0,
            &[
                ("h1", 0, "staged"),
                ("h2", 1, "pending"),
                ("h3", 1, "staged"),
            ],
        );
        let s = stage_of(&i).unwrap();
        assert_eq!((s.label.as_str(), s.done, s.total), ("staging", 2, 3));
    }

    #[test]
    fn a_batch_counts_its_own_hosts_and_names_the_busy_ones() {
        let i = info(
            "running",
            1,
            &[
                ("h1", 0, "healthy"),
                ("h2", 1, "healthy"),
                ("h3", 1, "switching"),
                ("h4", 2, "staged"),
            ],
        );
        let s = stage_of(&i).unwrap();
        assert_eq!(
            s,
            Stage {
                label: "batch 2".into(),
                done: 1,
                total: 2,
                busy: "h3 switching".into()
            }
        );
        assert_eq!(updated(&i), 2);
        let canary = stage_of(&info("running", 0, &[("h1", 0, "switching")])).unwrap();
        assert_eq!((canary.label.as_str(), canary.done), ("canary", 0));
    }

    #[test]
    fn a_revert_counts_only_the_hosts_going_back() {
        let i = info(
            "reverting",
            1,
            &[
                ("h1", 0, "reverted"),
                ("h2", 1, "reverting"),
                ("h3", 1, "reverting"),
                ("h4", 2, "staged"),
            ],
        );
        let s = stage_of(&i).unwrap();
        assert_eq!((s.label.as_str(), s.done, s.total), ("revert", 1, 3));
        assert_eq!(s.busy, "h2 reverting, h3 reverting");
    }

    #[test]
    fn nothing_runs_after_the_last_batch_or_the_end() {
        let done = [("h1", 0, "healthy")];
        assert_eq!(stage_of(&info("running", 1, &done)), None);
        assert_eq!(stage_of(&info("succeeded", 1, &done)), None);
    }
}
