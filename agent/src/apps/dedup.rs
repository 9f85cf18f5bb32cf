//! Commands by id, so one sent twice runs once. A controller that takes over a rollout
//! (a failover, or its own restart) re-sends the step that was in flight under the same id
//! (docs/ha.md); the first run may still be going, or its result may have gone to a
//! session that is gone. The copy then waits for the first run's result, or gets it at
//! once, and sends it through the live session.

use std::collections::VecDeque;
use std::sync::Mutex;

use fleet_proto::v1::CommandResult;
use tokio::sync::watch;

/// Ids remembered. A rollout has at most one step in flight per host, so a handful would
/// do; the bound keeps a long-lived agent's memory flat.
const REMEMBERED: usize = 128;

#[derive(Default)]
pub(super) struct Dedup {
    seen: Mutex<VecDeque<(String, watch::Sender<Option<CommandResult>>)>>,
}

/// What a command id's arrival means.
pub(super) enum Claim {
    /// First time seen: run it, then `finish`.
    Run,
    /// Seen before: its result once there is one (None if the first run was dropped
    /// unfinished, e.g. the agent is stopping).
    Repeat(watch::Receiver<Option<CommandResult>>),
}

impl Dedup {
    pub(super) fn claim(&self, id: &str) -> Claim {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, tx)) = seen.iter().find(|(k, _)| k == id) {
            return Claim::Repeat(tx.subscribe());
        }
        if seen.len() == REMEMBERED {
            seen.pop_front();
        }
        seen.push_back((id.to_owned(), watch::Sender::new(None)));
        Claim::Run
    }

    pub(super) fn finish(&self, result: &CommandResult) {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, tx)) = seen.iter().find(|(k, _)| *k == result.id) {
            tx.send_replace(Some(result.clone()));
        }
    }
}

/// The first run's result, once it has one.
pub(super) async fn wait(mut rx: watch::Receiver<Option<CommandResult>>) -> Option<CommandResult> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, message: &str) -> CommandResult {
        CommandResult {
            id: id.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_repeated_id_gets_the_first_runs_result_before_and_after_it_ends() {
        let d = Dedup::default();
        assert!(matches!(d.claim("a"), Claim::Run));
        let Claim::Repeat(while_running) = d.claim("a") else {
            panic!("a second claim must not run")
        };
        let waiting = tokio::spawn(wait(while_running));
        d.finish(&result("a", "done"));
        assert_eq!(waiting.await.unwrap().unwrap().message, "done");
        let Claim::Repeat(after) = d.claim("a") else {
            panic!("nor a third")
        };
        assert_eq!(wait(after).await.unwrap().message, "done");
        assert!(matches!(d.claim("b"), Claim::Run), "another id runs");
    }

    #[test]
    fn only_the_latest_ids_are_remembered() {
        let d = Dedup::default();
        for i in 0..=REMEMBERED {
            assert!(matches!(d.claim(&i.to_string()), Claim::Run));
        }
        assert!(
            matches!(d.claim("0"), Claim::Run),
            "the oldest was forgotten"
        );
        assert!(matches!(d.claim(&REMEMBERED.to_string()), Claim::Repeat(_)));
    }
}
