//! Who may replace a running replica, and when.
//!
//! The replica steps of an agent do not depend on one another: replicas
//! with no running container to protect (a first deploy, a scale-up, a
//! stopped container) start at once, side by side. Replacing a *running*
//! replica takes a turn from the agent's [`Rollout`]: one replacement at a
//! time, in replica order, each healthy before the container it replaces
//! is stopped, so at least N−1 replicas serve throughout a rolling update.
//!
//! A replica announces that it will need a turn when it plans (every step
//! is planned in the process before the engine applies anything, and again
//! before it acts), so a later replica cannot overtake an earlier one that
//! has not reached its apply yet. The first replica of the agent that fails
//! (a replacement that never became healthy, a new container that exited)
//! stops the rollout: replicas still waiting for a turn keep their running
//! containers and fail with the name of the replica that failed.

use std::collections::BTreeMap;
use taskctl_core::engine::{ErrorKind, StepError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Will replace a running container: needs a turn.
    Rolling,
    /// Replacing a running container now.
    Active,
    /// Needs no turn, or is done with it.
    Settled,
}

#[derive(Debug, Default)]
struct State {
    status: BTreeMap<u32, Status>,
    /// The first replica that failed, and why.
    failed: Option<(u32, String)>,
}

impl State {
    /// Whether replica `index` may take its turn now.
    fn may_go(&self, index: u32) -> bool {
        !self.status.values().any(|s| *s == Status::Active)
            && self
                .status
                .range(..index)
                .all(|(_, s)| *s == Status::Settled)
    }
}

/// The rolling-update coordinator of one agent, shared by its replica
/// steps.
#[derive(Debug)]
pub struct Rollout {
    agent: String,
    state: watch::Sender<State>,
}

impl Rollout {
    pub fn new(agent: &str) -> Self {
        Rollout {
            agent: agent.to_string(),
            state: watch::Sender::new(State::default()),
        }
    }

    /// What replica `index` found when it planned or applied: whether it
    /// will replace a running container. A replica that is taking its turn
    /// keeps it.
    pub fn announce(&self, index: u32, rolling: bool) {
        self.state.send_modify(|s| {
            let status = s.status.entry(index).or_insert(Status::Settled);
            if *status != Status::Active {
                *status = if rolling {
                    Status::Rolling
                } else {
                    Status::Settled
                };
            }
        });
    }

    /// Replica `index` failed: no running replica of the agent is replaced
    /// after this.
    pub fn fail(&self, index: u32, reason: &str) {
        self.state.send_modify(|s| {
            s.status.insert(index, Status::Settled);
            if s.failed.is_none() {
                s.failed = Some((index, reason.to_string()));
            }
        });
    }

    /// The reason no more replacements happen, when a replica failed.
    fn stopped(&self, index: u32, failed: &(u32, String)) -> StepError {
        StepError::new(
            ErrorKind::Other,
            format!(
                "{}-{index} was not replaced, so the running one was kept: the rollout of agent `{}` stopped when replica {} failed",
                self.agent, self.agent, failed.0
            ),
        )
    }

    /// Waits for replica `index`'s turn to replace its running container:
    /// every earlier replica that needed a turn has had it, and no other
    /// replacement is in progress. Fails when a replica of the agent failed
    /// first, or when the run is cancelled. `progress` is told once when
    /// the replica has to wait.
    pub async fn turn(
        &self,
        index: u32,
        cancel: &CancellationToken,
        progress: impl Fn(&str),
    ) -> Result<Turn<'_>, StepError> {
        self.announce(index, true);
        let mut rx = self.state.subscribe();
        let mut told = false;
        loop {
            let mut outcome: Option<Result<(), (u32, String)>> = None;
            self.state.send_if_modified(|s| {
                if let Some(f) = &s.failed {
                    outcome = Some(Err(f.clone()));
                    false
                } else if s.may_go(index) {
                    s.status.insert(index, Status::Active);
                    outcome = Some(Ok(()));
                    true
                } else {
                    false
                }
            });
            match outcome {
                Some(Ok(())) => {
                    return Ok(Turn {
                        rollout: self,
                        index,
                        done: false,
                    });
                }
                Some(Err(failed)) => {
                    self.announce(index, false);
                    return Err(self.stopped(index, &failed));
                }
                None => {}
            }
            if !told {
                told = true;
                progress("waiting for the replicas before it to be replaced (one at a time)");
            }
            rx.mark_unchanged();
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(StepError::new(ErrorKind::Other, "the rollout coordinator is gone"));
                    }
                }
                _ = cancel.cancelled() => {
                    self.announce(index, false);
                    return Err(StepError::new(ErrorKind::Cancelled, "interrupted while waiting for a turn to replace the running replica"));
                }
            }
        }
    }
}

/// A replica's turn to replace its running container. Dropped without
/// [`Turn::done`] (a failure, a timeout, an interruption), it stops the
/// rollout.
pub struct Turn<'a> {
    rollout: &'a Rollout,
    index: u32,
    done: bool,
}

impl Turn<'_> {
    /// The replacement is healthy and the old container gone: the next
    /// replica may go.
    pub fn done(mut self) {
        self.done = true;
        self.rollout.state.send_modify(|s| {
            s.status.insert(self.index, Status::Settled);
        });
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rollout
                .fail(self.index, "its replacement did not finish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn earlier_rolling_replicas_go_first_and_one_at_a_time() {
        let mut s = State::default();
        s.status.insert(1, Status::Settled);
        s.status.insert(2, Status::Rolling);
        s.status.insert(3, Status::Rolling);
        assert!(s.may_go(2), "replica 1 needs no turn");
        assert!(!s.may_go(3), "2 goes before 3");
        s.status.insert(2, Status::Active);
        assert!(!s.may_go(3), "one replacement at a time");
        s.status.insert(2, Status::Settled);
        assert!(s.may_go(3));
        s.status.insert(3, Status::Active);
        assert!(!s.may_go(1), "nor beside a later one that already goes");
    }

    #[tokio::test]
    async fn a_failure_stops_the_replicas_waiting_for_a_turn() {
        let rollout = Arc::new(Rollout::new("a"));
        rollout.announce(1, true);
        rollout.announce(2, true);
        let cancel = CancellationToken::new();
        let waiting = {
            let (rollout, cancel) = (rollout.clone(), cancel.clone());
            tokio::spawn(async move { rollout.turn(2, &cancel, |_| {}).await.map(|t| t.done()) })
        };
        let turn = rollout.turn(1, &cancel, |_| {}).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "2 waits while 1 is replaced");
        drop(turn); // 1 never finished
        let err = waiting.await.unwrap().unwrap_err();
        assert!(
            err.message.contains("stopped when replica 1 failed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_interrupted_wait_gives_up_its_place() {
        let rollout = Rollout::new("a");
        rollout.announce(1, true);
        let waiting = CancellationToken::new();
        waiting.cancel();
        let err = match rollout.turn(2, &waiting, |_| {}).await {
            Ok(_) => panic!("replica 2 went before replica 1"),
            Err(e) => e,
        };
        assert_eq!(err.kind, ErrorKind::Cancelled);
        // Replica 2 no longer holds up replica 3 once 1 is done.
        let turn = rollout
            .turn(1, &CancellationToken::new(), |_| {})
            .await
            .unwrap();
        turn.done();
        rollout
            .turn(3, &CancellationToken::new(), |_| {})
            .await
            .unwrap()
            .done();
    }

    #[tokio::test]
    async fn the_next_replica_goes_when_the_previous_is_done() {
        let rollout = Arc::new(Rollout::new("a"));
        rollout.announce(1, true);
        rollout.announce(2, true);
        let cancel = CancellationToken::new();
        let waiting = {
            let (rollout, cancel) = (rollout.clone(), cancel.clone());
            tokio::spawn(async move { rollout.turn(2, &cancel, |_| {}).await.map(|t| t.done()) })
        };
        let turn = rollout.turn(1, &cancel, |_| {}).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        turn.done();
        waiting.await.unwrap().unwrap();
    }
}
