//! Running a step graph: plan, apply and destroy share one scheduler.
//!
//! Guarantees:
//! - A step starts only after all the steps it depends on (apply) or all
//!   the steps that depend on it (destroy) finished successfully; at most
//!   `parallelism` steps run at once.
//! - Plan and apply run the same code: apply observes each step again with
//!   its dependencies' fresh outputs and acts only where that finds a
//!   change. A dry run is a plan.
//! - Every change is journaled: intent before, outcome after.
//! - After a failure, or on cancellation, no new step starts; steps in
//!   flight get `grace` to finish, then are dropped and journaled as
//!   interrupted.
//! - Only retryable errors (throttling, transient) are retried, with
//!   exponential backoff and jitter; each step's whole apply, retries
//!   included, is bounded by the step's timeout.

use super::graph::Graph;
use super::step::{Action, Change, ErrorKind, Outputs, StepContext, StepError, StepId, StepPlan};
use crate::events::{Event, EventSink, Operation, RunOutcome, StepOutcome};
use crate::journal::{JournalEntry, Record, StepResult, operation_name, outcome_name};
use crate::state::StateStore;
use backon::{ExponentialBuilder, Retryable};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How retryable errors are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retries: 4,
        }
    }
}

/// A plan saved with `plan --out`: what each step was to do. Applying it
/// refuses to act where the world no longer matches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: u32,
    pub environment: String,
    pub created_at: String,
    pub steps: BTreeMap<StepId, Change>,
}

impl SavedPlan {
    pub const FORMAT: u32 = 1;

    pub fn from_report(environment: &str, report: &RunReport) -> Self {
        SavedPlan {
            format: Self::FORMAT,
            environment: environment.to_string(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            steps: report
                .steps
                .iter()
                .filter_map(|s| s.change.clone().map(|c| (s.id.clone(), c)))
                .collect(),
        }
    }
}

/// Everything a run needs besides the graph.
pub struct Run {
    pub run_id: String,
    pub environment: String,
    pub operation: Operation,
    pub parallelism: usize,
    pub grace: Duration,
    pub retry: RetryPolicy,
    pub store: Arc<dyn StateStore>,
    pub sink: Arc<dyn EventSink>,
    /// Stops launching steps when cancelled (Ctrl-C, SIGTERM).
    pub cancel: CancellationToken,
    pub saved_plan: Option<SavedPlan>,
    /// The unfinished run this one resumes, for the journal.
    pub resumes: Option<String>,
}

impl Run {
    pub fn new_id() -> String {
        format!("r-{}", uuid::Uuid::now_v7().simple())
    }
}

#[derive(Debug, Clone)]
pub struct StepReport {
    pub id: StepId,
    pub kind: String,
    pub change: Option<Change>,
    pub outcome: StepOutcome,
    pub duration: Duration,
    pub error: Option<StepError>,
    pub outputs: Outputs,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub outcome: RunOutcome,
    pub steps: Vec<StepReport>,
    pub duration: Duration,
}

impl RunReport {
    pub fn changes(&self) -> impl Iterator<Item = &StepReport> {
        self.steps
            .iter()
            .filter(|s| s.change.as_ref().is_some_and(|c| c.action.is_change()))
    }

    pub fn has_changes(&self) -> bool {
        self.changes().next().is_some()
    }

    pub fn first_error(&self) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.outcome == StepOutcome::Failed)
    }

    /// Durations of the steps that did work, for the critical path.
    pub fn durations(&self) -> BTreeMap<StepId, Duration> {
        self.steps
            .iter()
            .map(|s| (s.id.clone(), s.duration))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The journal could not be written: acting without it would lose track.
    #[error("cannot write the journal")]
    Journal(#[source] crate::state::StateError),
}

/// Observes every step and says what would change. Changes nothing.
pub async fn plan(graph: &Graph, run: &Run) -> RunReport {
    let started = Instant::now();
    run.sink.emit(&Event::RunStarted {
        run_id: run.run_id.clone(),
        operation: Operation::Plan,
        environment: run.environment.clone(),
        steps: graph.len(),
        resumes: None,
    });
    let steps = schedule(graph, run, Direction::Forward, |i, deps| {
        let step = graph.steps()[i].clone();
        let ctx = context(run, step.id(), deps);
        let sink = run.sink.clone();
        Box::pin(async move {
            let t = Instant::now();
            let result = step.plan(&ctx).await;
            let (change, outcome, error, outputs) = match result {
                Ok(p) => {
                    sink.emit(&Event::StepPlanned {
                        step: step.id().clone(),
                        kind: step.kind().to_string(),
                        depends_on: step.depends_on(),
                        action: p.change.action,
                        reason: p.change.reason.clone(),
                        diffs: p.change.diffs.clone(),
                    });
                    let outcome = if p.change.action.is_change() {
                        StepOutcome::Planned
                    } else {
                        StepOutcome::Unchanged
                    };
                    (Some(p.change), outcome, None, p.outputs)
                }
                Err(e) => (None, StepOutcome::Failed, Some(e), Outputs::new()),
            };
            StepReport {
                id: step.id().clone(),
                kind: step.kind().to_string(),
                change,
                outcome,
                duration: t.elapsed(),
                error,
                outputs,
            }
        })
    })
    .await;
    finish(run, steps, started)
}

/// Makes the world match the profile. `planned` is the plan the user saw
/// (from [`plan`]); steps it found unchanged, whose dependencies did not
/// change either, are not observed again.
pub async fn apply(
    graph: &Graph,
    run: &Run,
    planned: &RunReport,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    start(graph, run, Operation::Deploy).await?;
    let prior: BTreeMap<&StepId, &StepReport> = planned.steps.iter().map(|s| (&s.id, s)).collect();
    let steps = schedule(graph, run, Direction::Forward, |i, deps| {
        let step = graph.steps()[i].clone();
        let deps_changed = deps.iter().any(|d| d.outcome == StepOutcome::Changed);
        let reusable = prior
            .get(step.id())
            .filter(|p| p.outcome == StepOutcome::Unchanged && !deps_changed)
            .map(|p| (*p).clone());
        let saved = run.saved_plan.as_ref().map(|s| s.steps.get(step.id()).cloned());
        let ctx = context(run, step.id(), deps);
        Box::pin(async move {
            if let Some(mut unchanged) = reusable {
                unchanged.duration = Duration::ZERO;
                finished(run, &unchanged);
                return unchanged;
            }
            let t = Instant::now();
            let fresh = match step.plan(&ctx).await {
                Ok(p) => p,
                Err(e) => return failed(run, step.id(), step.kind(), None, e, t),
            };
            if let Some(saved) = saved {
                let matches = saved.as_ref().is_some_and(|s| s.action == fresh.change.action && s.diffs == fresh.change.diffs);
                if !matches {
                    let was = saved.map(|s| s.action.to_string()).unwrap_or_else(|| "nothing".into());
                    let err = StepError::new(
                        ErrorKind::Conflict,
                        format!(
                            "the world changed since the plan was made: planned {was}, now {} ({}); make a new plan",
                            fresh.change.action, fresh.change.reason
                        ),
                    );
                    return failed(run, step.id(), step.kind(), Some(fresh.change), err, t);
                }
            }
            if !fresh.change.action.is_change() {
                let report = StepReport {
                    id: step.id().clone(),
                    kind: step.kind().to_string(),
                    change: Some(fresh.change),
                    outcome: StepOutcome::Unchanged,
                    duration: t.elapsed(),
                    error: None,
                    outputs: fresh.outputs,
                };
                finished(run, &report);
                return report;
            }
            act(run, &step, &ctx, fresh, t, Act::Apply).await
        })
    })
    .await;
    let report = finish(run, steps, started);
    journal(
        run,
        Record::RunFinished {
            outcome: outcome_name(report.outcome).into(),
        },
    )
    .await?;
    Ok(report)
}

/// Removes everything the graph manages, dependents before what they
/// depend on. `planned` says what exists (from [`plan`]).
pub async fn destroy(
    graph: &Graph,
    run: &Run,
    planned: &RunReport,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    start(graph, run, Operation::Destroy).await?;
    let prior: BTreeMap<&StepId, &StepReport> = planned.steps.iter().map(|s| (&s.id, s)).collect();
    // Destroying needs the observed outputs of what a step depends on (the
    // VPC id to find a subnet), which the plan has.
    let observed: BTreeMap<StepId, Outputs> = planned
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.outputs.clone()))
        .collect();
    let steps = schedule(graph, run, Direction::Reverse, |i, _| {
        let step = graph.steps()[i].clone();
        let deps: Vec<DepState> = step
            .depends_on()
            .into_iter()
            .map(|d| DepState {
                outputs: observed.get(&d).cloned().unwrap_or_default(),
                id: d,
                outcome: StepOutcome::Unchanged,
            })
            .collect();
        let ctx = context(run, step.id(), deps);
        let prior = prior.get(step.id()).map(|p| (*p).clone());
        Box::pin(async move {
            let t = Instant::now();
            let Some(prior) = prior.filter(|p| {
                p.change
                    .as_ref()
                    .is_some_and(|c| c.action != Action::Create)
            }) else {
                // Not there (or never planned): nothing to remove.
                let report = StepReport {
                    id: step.id().clone(),
                    kind: step.kind().to_string(),
                    change: Some(Change::none()),
                    outcome: StepOutcome::Unchanged,
                    duration: Duration::ZERO,
                    error: None,
                    outputs: Outputs::new(),
                };
                finished(run, &report);
                return report;
            };
            let plan = StepPlan {
                change: Change::delete("destroy"),
                outputs: prior.outputs,
            };
            act(run, &step, &ctx, plan, t, Act::Destroy).await
        })
    })
    .await;
    let report = finish(run, steps, started);
    journal(
        run,
        Record::RunFinished {
            outcome: outcome_name(report.outcome).into(),
        },
    )
    .await?;
    Ok(report)
}

#[derive(Clone, Copy, PartialEq)]
enum Act {
    Apply,
    Destroy,
}

/// Journals intent, acts with retries under the step's timeout, journals
/// the outcome.
async fn act(
    run: &Run,
    step: &Arc<dyn super::step::Step>,
    ctx: &StepContext,
    plan: StepPlan,
    t: Instant,
    what: Act,
) -> StepReport {
    let id = step.id().clone();
    if let Err(e) = journal(
        run,
        Record::Intent {
            step: id.clone(),
            action: plan.change.action,
            diffs: plan.change.diffs.clone(),
        },
    )
    .await
    {
        let err = StepError::new(
            ErrorKind::Other,
            format!("{e}: refusing to act without a journal"),
        );
        return failed(run, &id, step.kind(), Some(plan.change), err, t);
    }
    run.sink.emit(&Event::StepStarted {
        step: id.clone(),
        kind: step.kind().to_string(),
        action: plan.change.action,
    });
    let attempts = AtomicUsize::new(0);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(run.retry.min_delay)
        .with_max_delay(run.retry.max_delay)
        .with_max_times(run.retry.max_retries)
        .with_jitter();
    let attempt = || async {
        match what {
            Act::Apply => step.apply(ctx, &plan).await,
            Act::Destroy => step.destroy(ctx, &plan).await.map(|()| Outputs::new()),
        }
    };
    let retried = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(StepError::is_retryable)
        .notify(|e: &StepError, delay: Duration| {
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            run.sink.emit(&Event::StepRetry {
                step: id.clone(),
                attempt: n,
                delay_ms: delay.as_millis() as u64,
                error: e.clone(),
            });
        });
    let result = match tokio::time::timeout(step.timeout(), retried).await {
        Ok(r) => r,
        Err(_) => Err(StepError::new(
            ErrorKind::Timeout,
            format!(
                "did not finish within {}",
                humantime::format_duration(step.timeout())
            ),
        )),
    };
    let duration = t.elapsed();
    let (result_kind, outputs, error) = match result {
        Ok(outputs) => (StepResult::Ok, outputs, None),
        Err(e) => (StepResult::Failed, Outputs::new(), Some(e)),
    };
    // An outcome that cannot be journaled still happened; the next run
    // re-observes it, so report the journal problem without failing the step.
    if let Err(e) = journal(
        run,
        Record::Outcome {
            step: id.clone(),
            result: result_kind,
            outputs: outputs.clone(),
            error: error.clone(),
            duration_ms: duration.as_millis() as u64,
        },
    )
    .await
    {
        tracing::warn!(step = %id, error = %e, "outcome not journaled");
    }
    let report = StepReport {
        id,
        kind: step.kind().to_string(),
        change: Some(plan.change),
        outcome: if error.is_some() {
            StepOutcome::Failed
        } else {
            StepOutcome::Changed
        },
        duration,
        error,
        outputs,
    };
    finished(run, &report);
    report
}

fn failed(
    run: &Run,
    id: &StepId,
    kind: &str,
    change: Option<Change>,
    error: StepError,
    t: Instant,
) -> StepReport {
    let report = StepReport {
        id: id.clone(),
        kind: kind.to_string(),
        change,
        outcome: StepOutcome::Failed,
        duration: t.elapsed(),
        error: Some(error),
        outputs: Outputs::new(),
    };
    finished(run, &report);
    report
}

fn finished(run: &Run, report: &StepReport) {
    run.sink.emit(&Event::StepFinished {
        step: report.id.clone(),
        outcome: report.outcome,
        duration_ms: report.duration.as_millis() as u64,
        error: report.error.clone(),
    });
}

/// Journals and announces the start of a run that changes things.
async fn start(graph: &Graph, run: &Run, operation: Operation) -> Result<(), EngineError> {
    journal(
        run,
        Record::RunStarted {
            operation: operation_name(operation).into(),
            environment: run.environment.clone(),
            resumes: run.resumes.clone(),
        },
    )
    .await?;
    run.sink.emit(&Event::RunStarted {
        run_id: run.run_id.clone(),
        operation,
        environment: run.environment.clone(),
        steps: graph.len(),
        resumes: run.resumes.clone(),
    });
    Ok(())
}

async fn journal(run: &Run, record: Record) -> Result<(), EngineError> {
    run.store
        .append_journal(&JournalEntry::now(&run.run_id, record))
        .await
        .map_err(EngineError::Journal)
}

fn finish(run: &Run, steps: Vec<StepReport>, started: Instant) -> RunReport {
    let count = |o: StepOutcome| steps.iter().filter(|s| s.outcome == o).count();
    let outcome = if steps.iter().any(|s| s.outcome == StepOutcome::Interrupted)
        || run.cancel.is_cancelled()
    {
        RunOutcome::Interrupted
    } else if steps
        .iter()
        .any(|s| matches!(s.outcome, StepOutcome::Failed | StepOutcome::Skipped))
    {
        RunOutcome::Failed
    } else {
        RunOutcome::Succeeded
    };
    let duration = started.elapsed();
    run.sink.emit(&Event::RunFinished {
        run_id: run.run_id.clone(),
        outcome,
        duration_ms: duration.as_millis() as u64,
        changed: count(StepOutcome::Changed) + count(StepOutcome::Planned),
        unchanged: count(StepOutcome::Unchanged),
        failed: count(StepOutcome::Failed),
        skipped: count(StepOutcome::Skipped) + count(StepOutcome::Interrupted),
    });
    RunReport {
        run_id: run.run_id.clone(),
        outcome,
        steps,
        duration,
    }
}

fn context(run: &Run, id: &StepId, deps: Vec<DepState>) -> StepContext {
    let sink = run.sink.clone();
    StepContext::new(
        id.clone(),
        run.run_id.clone(),
        deps.into_iter().map(|d| (d.id, d.outputs)).collect(),
        Arc::new(move |step: &StepId, message: &str| {
            sink.emit(&Event::StepProgress {
                step: step.clone(),
                message: message.to_string(),
            })
        }),
        run.cancel.child_token(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Forward,
    Reverse,
}

/// What a step learns of a finished step it waits for.
struct DepState {
    id: StepId,
    outputs: Outputs,
    outcome: StepOutcome,
}

enum Slot {
    Pending,
    Running,
    Done(Box<StepReport>),
}

/// Runs `launch` for every step once its prerequisites are done, at most
/// `run.parallelism` at a time; see the module's guarantees.
async fn schedule<'a>(
    graph: &'a Graph,
    run: &'a Run,
    direction: Direction,
    mut launch: impl FnMut(usize, Vec<DepState>) -> BoxFuture<'a, StepReport>,
) -> Vec<StepReport> {
    let n = graph.len();
    let prereqs = |i: usize| match direction {
        Direction::Forward => graph.deps_of(i),
        Direction::Reverse => graph.dependents_of(i),
    };
    let mut slots: Vec<Slot> = (0..n).map(|_| Slot::Pending).collect();
    let mut running: FuturesUnordered<BoxFuture<'a, (usize, StepReport)>> = FuturesUnordered::new();
    let mut in_flight: Vec<usize> = Vec::new();
    let mut stopping = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let parallelism = run.parallelism.max(1);
    let order: Vec<usize> = match direction {
        Direction::Forward => (0..n).collect(),
        Direction::Reverse => (0..n).rev().collect(),
    };
    loop {
        if !stopping {
            for &i in &order {
                if in_flight.len() >= parallelism {
                    break;
                }
                if !matches!(slots[i], Slot::Pending) {
                    continue;
                }
                let ready = prereqs(i).iter().all(|&p| {
                    matches!(&slots[p], Slot::Done(r) if !matches!(r.outcome, StepOutcome::Failed | StepOutcome::Skipped | StepOutcome::Interrupted))
                });
                if !ready {
                    continue;
                }
                let deps: Vec<DepState> = graph
                    .deps_of(i)
                    .iter()
                    .filter_map(|&d| match &slots[d] {
                        Slot::Done(r) => Some(DepState {
                            id: r.id.clone(),
                            outputs: r.outputs.clone(),
                            outcome: r.outcome,
                        }),
                        _ => None,
                    })
                    .collect();
                let fut = launch(i, deps);
                slots[i] = Slot::Running;
                in_flight.push(i);
                running.push(Box::pin(async move { (i, fut.await) }));
            }
        }
        if running.is_empty() {
            break;
        }
        let grace_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some((i, report)) = running.next() => {
                in_flight.retain(|&x| x != i);
                if report.outcome == StepOutcome::Failed && !stopping {
                    stopping = true;
                }
                slots[i] = Slot::Done(Box::new(report));
            }
            _ = run.cancel.cancelled(), if deadline.is_none() => {
                stopping = true;
                deadline = Some(tokio::time::Instant::now() + run.grace);
            }
            _ = grace_over => {
                break;
            }
        }
    }
    drop(running);
    let mut reports = Vec::with_capacity(n);
    for (i, slot) in slots.into_iter().enumerate() {
        let step = &graph.steps()[i];
        let report = match slot {
            Slot::Done(r) => *r,
            Slot::Running => {
                let r = StepReport {
                    id: step.id().clone(),
                    kind: step.kind().to_string(),
                    change: None,
                    outcome: StepOutcome::Interrupted,
                    duration: Duration::ZERO,
                    error: Some(StepError::new(
                        ErrorKind::Cancelled,
                        "interrupted before it finished",
                    )),
                    outputs: Outputs::new(),
                };
                if run.operation != Operation::Plan {
                    let _ = run
                        .store
                        .append_journal(&JournalEntry::now(
                            &run.run_id,
                            Record::Outcome {
                                step: r.id.clone(),
                                result: StepResult::Interrupted,
                                outputs: Outputs::new(),
                                error: r.error.clone(),
                                duration_ms: 0,
                            },
                        ))
                        .await;
                }
                finished(run, &r);
                r
            }
            Slot::Pending => {
                let r = StepReport {
                    id: step.id().clone(),
                    kind: step.kind().to_string(),
                    change: None,
                    outcome: StepOutcome::Skipped,
                    duration: Duration::ZERO,
                    error: None,
                    outputs: Outputs::new(),
                };
                finished(run, &r);
                r
            }
        };
        reports.push(report);
    }
    reports
}
