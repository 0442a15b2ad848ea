//! The engine's guarantees, proven on an in-memory world of resources.
//!
//! `InMemoryResource` is a test double of a provider step: a named value in
//! a shared map. It counts calls and concurrency, can fail on demand and can
//! take time, which is all the scheduler's logic depends on. Real providers
//! are tested against real servers in their own crates.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskctl_core::engine::*;
use taskctl_core::events::{Event, Operation, Recorder, RunOutcome, StepOutcome};
use taskctl_core::journal::{Record, last_run};
use taskctl_core::state::{LocalStore, StateStore};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct World {
    values: Mutex<BTreeMap<String, u32>>,
    mutations: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
    order: Mutex<Vec<String>>,
}

struct InMemoryResource {
    id: StepId,
    deps: Vec<StepId>,
    desired: u32,
    world: Arc<World>,
    delay: Duration,
    failures: AtomicUsize,
    failure_kind: ErrorKind,
    timeout: Duration,
}

impl InMemoryResource {
    fn new(world: &Arc<World>, id: &str, deps: &[&str], desired: u32) -> Self {
        InMemoryResource {
            id: StepId::new(id),
            deps: deps.iter().map(|d| StepId::new(*d)).collect(),
            desired,
            world: world.clone(),
            delay: Duration::from_millis(10),
            failures: AtomicUsize::new(0),
            failure_kind: ErrorKind::Transient,
            timeout: Duration::from_secs(60),
        }
    }
}

#[async_trait]
impl Step for InMemoryResource {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "in-memory"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        for d in &self.deps {
            // A dependency that exists has published its id.
            if ctx.dep_output(d, "id").is_none()
                && self.world.values.lock().unwrap().contains_key(&d.0)
            {
                return Err(StepError::new(
                    ErrorKind::Other,
                    format!("{d} exists but gave no id"),
                ));
            }
        }
        let current = self.world.values.lock().unwrap().get(&self.id.0).copied();
        Ok(match current {
            None => StepPlan {
                change: Change::create("not found"),
                outputs: Outputs::new(),
            },
            Some(v) => StepPlan {
                change: if v == self.desired {
                    Change::none()
                } else {
                    Change::update(vec![FieldDiff::new("value", v, self.desired)])
                },
                outputs: [("id".to_string(), self.id.0.clone())].into(),
            },
        })
    }
    async fn apply(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let now = self.world.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.world.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.world.running.fetch_sub(1, Ordering::SeqCst);
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(StepError::new(self.failure_kind, "injected failure"));
        }
        self.world.mutations.fetch_add(1, Ordering::SeqCst);
        self.world.order.lock().unwrap().push(self.id.0.clone());
        self.world
            .values
            .lock()
            .unwrap()
            .insert(self.id.0.clone(), self.desired);
        Ok([("id".to_string(), self.id.0.clone())].into())
    }
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        tokio::time::sleep(self.delay).await;
        self.world.mutations.fetch_add(1, Ordering::SeqCst);
        self.world
            .order
            .lock()
            .unwrap()
            .push(format!("-{}", self.id.0));
        self.world.values.lock().unwrap().remove(&self.id.0);
        Ok(())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<LocalStore>,
    recorder: Arc<Recorder>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path(), "test"));
        Harness {
            _dir: dir,
            store,
            recorder: Arc::new(Recorder::default()),
        }
    }

    fn run(&self, operation: Operation, parallelism: usize) -> Run {
        Run {
            run_id: Run::new_id(),
            environment: "test".into(),
            operation,
            parallelism,
            grace: Duration::from_secs(5),
            retry: RetryPolicy {
                min_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(1),
                max_retries: 3,
            },
            store: self.store.clone(),
            sink: self.recorder.clone(),
            cancel: CancellationToken::new(),
            saved_plan: None,
            resumes: None,
        }
    }
}

/// vpc -> 4 subnets -> cluster -> 2 node groups: the shape of the AWS graph.
fn network(world: &Arc<World>, desired: u32) -> Vec<InMemoryResource> {
    let mut steps = vec![InMemoryResource::new(world, "vpc", &[], desired)];
    for s in ["s1", "s2", "s3", "s4"] {
        steps.push(InMemoryResource::new(world, s, &["vpc"], desired));
    }
    steps.push(InMemoryResource::new(
        world,
        "cluster",
        &["s1", "s2", "s3", "s4"],
        desired,
    ));
    steps.push(InMemoryResource::new(
        world,
        "workers",
        &["cluster"],
        desired,
    ));
    steps.push(InMemoryResource::new(world, "gpu", &["cluster"], desired));
    steps
}

fn graph(steps: Vec<InMemoryResource>) -> Graph {
    Graph::new(
        steps
            .into_iter()
            .map(|s| Arc::new(s) as Arc<dyn Step>)
            .collect(),
    )
    .unwrap()
}

async fn deploy(g: &Graph, run: &Run) -> RunReport {
    let planned = plan(g, run).await;
    apply(g, run, &planned).await.unwrap()
}

#[tokio::test]
async fn plan_changes_nothing_and_apply_converges() {
    let world = Arc::new(World::default());
    let g = graph(network(&world, 1));
    let h = Harness::new();
    let planned = plan(&g, &h.run(Operation::Plan, 10)).await;
    assert_eq!(
        planned.changes().count(),
        8,
        "every resource is to be created"
    );
    assert_eq!(
        world.mutations.load(Ordering::SeqCst),
        0,
        "plan mutates nothing"
    );

    let report = deploy(&g, &h.run(Operation::Deploy, 10)).await;
    assert_eq!(report.outcome, RunOutcome::Succeeded);
    assert_eq!(world.mutations.load(Ordering::SeqCst), 8);

    // Dependencies first.
    let order = world.order.lock().unwrap().clone();
    let pos = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(pos("vpc") < pos("s1") && pos("s4") < pos("cluster") && pos("cluster") < pos("gpu"));

    let again = plan(&g, &h.run(Operation::Plan, 10)).await;
    assert!(!again.has_changes(), "re-plan after deploy says no changes");
    deploy(&g, &h.run(Operation::Deploy, 10)).await;
    assert_eq!(
        world.mutations.load(Ordering::SeqCst),
        8,
        "re-deploy makes zero mutating calls"
    );
}

#[tokio::test]
async fn an_update_touches_only_what_changed() {
    let world = Arc::new(World::default());
    let h = Harness::new();
    deploy(&graph(network(&world, 1)), &h.run(Operation::Deploy, 10)).await;
    let mut steps = network(&world, 1);
    steps[6].desired = 7; // the workers node group's scaling
    let g = graph(steps);
    let planned = plan(&g, &h.run(Operation::Plan, 10)).await;
    let changes: Vec<_> = planned
        .changes()
        .map(|s| (s.id.0.clone(), s.change.clone().unwrap()))
        .collect();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, "workers");
    assert_eq!(changes[0].1.action, Action::Update);
    assert_eq!(changes[0].1.diffs, vec![FieldDiff::new("value", 1, 7)]);
    let before = world.mutations.load(Ordering::SeqCst);
    deploy(&g, &h.run(Operation::Deploy, 10)).await;
    assert_eq!(world.mutations.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn parallelism_is_bounded() {
    let world = Arc::new(World::default());
    let mut steps = vec![InMemoryResource::new(&world, "root", &[], 1)];
    for i in 0..20 {
        steps.push(InMemoryResource::new(
            &world,
            &format!("leaf{i}"),
            &["root"],
            1,
        ));
    }
    let h = Harness::new();
    deploy(&graph(steps), &h.run(Operation::Deploy, 4)).await;
    assert_eq!(world.max_running.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn independent_branches_run_in_parallel_so_wall_time_is_the_critical_path() {
    let world = Arc::new(World::default());
    let mut steps = network(&world, 1);
    for s in &mut steps {
        s.delay = Duration::from_secs(10);
    }
    let g = graph(steps);
    let h = Harness::new();
    let report = deploy(&g, &h.run(Operation::Deploy, 10)).await;
    // vpc -> subnet -> cluster -> node group: four steps of 10 s in a chain.
    assert_eq!(
        g.critical_path(&report.durations()),
        Duration::from_secs(40)
    );
    assert!(
        report.duration < Duration::from_secs(41),
        "{:?}",
        report.duration
    );
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_are_retried_and_others_are_not() {
    let world = Arc::new(World::default());
    let flaky = InMemoryResource::new(&world, "flaky", &[], 1);
    flaky.failures.store(2, Ordering::SeqCst);
    let h = Harness::new();
    let report = deploy(&graph(vec![flaky]), &h.run(Operation::Deploy, 1)).await;
    assert_eq!(report.outcome, RunOutcome::Succeeded);
    let retries = h
        .recorder
        .events()
        .iter()
        .filter(|e| matches!(e, Event::StepRetry { .. }))
        .count();
    assert_eq!(retries, 2);

    let world = Arc::new(World::default());
    let mut broken = InMemoryResource::new(&world, "broken", &[], 1);
    broken.failures.store(1, Ordering::SeqCst);
    broken.failure_kind = ErrorKind::Invalid;
    let h = Harness::new();
    let report = deploy(&graph(vec![broken]), &h.run(Operation::Deploy, 1)).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(
        !h.recorder
            .events()
            .iter()
            .any(|e| matches!(e, Event::StepRetry { .. }))
    );
}

#[tokio::test]
async fn a_failure_skips_dependents_and_stops_new_work() {
    let world = Arc::new(World::default());
    let mut steps = network(&world, 1);
    steps[1].failures.store(1, Ordering::SeqCst);
    steps[1].failure_kind = ErrorKind::Denied;
    let h = Harness::new();
    let report = deploy(&graph(steps), &h.run(Operation::Deploy, 10)).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    let outcome = |id: &str| report.steps.iter().find(|s| s.id.0 == id).unwrap().outcome;
    assert_eq!(outcome("s1"), StepOutcome::Failed);
    assert_eq!(outcome("cluster"), StepOutcome::Skipped);
    assert_eq!(outcome("workers"), StepOutcome::Skipped);
    assert!(!world.values.lock().unwrap().contains_key("cluster"));
}

#[tokio::test(start_paused = true)]
async fn a_step_that_runs_too_long_times_out() {
    let world = Arc::new(World::default());
    let mut slow = InMemoryResource::new(&world, "slow", &[], 1);
    slow.delay = Duration::from_secs(120);
    slow.timeout = Duration::from_secs(30);
    let h = Harness::new();
    let report = deploy(&graph(vec![slow]), &h.run(Operation::Deploy, 1)).await;
    let err = report.first_error().unwrap().error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.contains("30s"), "{}", err.message);
}

#[tokio::test(start_paused = true)]
async fn cancellation_lets_in_flight_steps_finish_and_starts_no_new_ones() {
    let world = Arc::new(World::default());
    let mut steps = network(&world, 1);
    for s in &mut steps {
        s.delay = Duration::from_secs(2);
    }
    let g = graph(steps);
    let h = Harness::new();
    let run = h.run(Operation::Deploy, 10);
    let cancel = run.cancel.clone();
    tokio::spawn(async move {
        // While the subnets are being made.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cancel.cancel();
    });
    let planned = plan(&g, &run).await;
    let report = apply(&g, &run, &planned).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Interrupted);
    let values = world.values.lock().unwrap().clone();
    assert!(
        values.contains_key("vpc") && values.contains_key("s4"),
        "in-flight subnets finished: {values:?}"
    );
    assert!(
        !values.contains_key("cluster"),
        "nothing new started after the interrupt"
    );

    // The journal records the run as interrupted with no step left in flight,
    // and a new run finishes the job.
    let journal = h.store.journal().await.unwrap();
    let last = last_run(&journal).unwrap();
    assert_eq!(last.finished.as_deref(), Some("interrupted"));
    assert!(last.in_flight.is_empty(), "{:?}", last.in_flight);
    let report = deploy(&g, &h.run(Operation::Deploy, 10)).await;
    assert_eq!(report.outcome, RunOutcome::Succeeded);
    assert_eq!(world.values.lock().unwrap().len(), 8);
}

#[tokio::test(start_paused = true)]
async fn steps_still_running_after_the_grace_period_are_journaled_as_interrupted() {
    let world = Arc::new(World::default());
    let mut slow = InMemoryResource::new(&world, "slow", &[], 1);
    slow.delay = Duration::from_secs(600);
    let g = graph(vec![slow]);
    let h = Harness::new();
    let run = h.run(Operation::Deploy, 1);
    let cancel = run.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let planned = plan(&g, &run).await;
    let report = apply(&g, &run, &planned).await.unwrap();
    assert_eq!(report.steps[0].outcome, StepOutcome::Interrupted);
    let journal = h.store.journal().await.unwrap();
    assert!(
        journal
            .iter()
            .any(|e| matches!(&e.record, Record::Intent { step, .. } if step.0 == "slow"))
    );
    assert!(journal.iter().any(|e| matches!(&e.record, Record::Outcome { step, result: taskctl_core::journal::StepResult::Interrupted, .. } if step.0 == "slow")));
}

#[tokio::test]
async fn a_saved_plan_is_refused_when_the_world_changed() {
    let world = Arc::new(World::default());
    let h = Harness::new();
    let g = graph(network(&world, 1));
    let planned = plan(&g, &h.run(Operation::Plan, 10)).await;
    let saved = SavedPlan::from_report("test", &planned);
    // Someone creates the VPC between plan and apply.
    world.values.lock().unwrap().insert("vpc".into(), 3);
    let mut run = h.run(Operation::Deploy, 10);
    run.saved_plan = Some(saved);
    let fresh = plan(&g, &run).await;
    let report = apply(&g, &run, &fresh).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Failed);
    let err = report.first_error().unwrap().error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert!(
        err.message.contains("planned create, now update"),
        "{}",
        err.message
    );
    assert_eq!(world.mutations.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn destroy_removes_dependents_first() {
    let world = Arc::new(World::default());
    let h = Harness::new();
    let g = graph(network(&world, 1));
    deploy(&g, &h.run(Operation::Deploy, 10)).await;
    let run = h.run(Operation::Destroy, 10);
    let planned = plan(&g, &run).await;
    let report = destroy(&g, &run, &planned).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Succeeded);
    assert!(world.values.lock().unwrap().is_empty());
    let order = world.order.lock().unwrap().clone();
    let pos = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(
        pos("-gpu") < pos("-cluster") && pos("-cluster") < pos("-s1") && pos("-s1") < pos("-vpc")
    );
    // Destroying nothing is a no-op.
    let before = world.mutations.load(Ordering::SeqCst);
    let planned = plan(&g, &run).await;
    destroy(&g, &run, &planned).await.unwrap();
    assert_eq!(world.mutations.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn journal_pairs_every_intent_with_an_outcome() {
    let world = Arc::new(World::default());
    let h = Harness::new();
    deploy(&graph(network(&world, 1)), &h.run(Operation::Deploy, 10)).await;
    let journal = h.store.journal().await.unwrap();
    let intents = journal
        .iter()
        .filter(|e| matches!(e.record, Record::Intent { .. }))
        .count();
    let outcomes = journal
        .iter()
        .filter(|e| matches!(e.record, Record::Outcome { .. }))
        .count();
    assert_eq!((intents, outcomes), (8, 8));
    let last = last_run(&journal).unwrap();
    assert_eq!(last.finished.as_deref(), Some("succeeded"));
    assert_eq!(last.completed, 8);
}

#[test]
fn cycles_and_missing_dependencies_are_rejected() {
    let world = Arc::new(World::default());
    let steps: Vec<Arc<dyn Step>> = vec![
        Arc::new(InMemoryResource::new(&world, "a", &["b"], 1)),
        Arc::new(InMemoryResource::new(&world, "b", &["a"], 1)),
    ];
    assert!(matches!(Graph::new(steps), Err(GraphError::Cycle(_))));
    let steps: Vec<Arc<dyn Step>> = vec![Arc::new(InMemoryResource::new(&world, "a", &["zzz"], 1))];
    assert!(matches!(
        Graph::new(steps),
        Err(GraphError::MissingDependency { .. })
    ));
}
