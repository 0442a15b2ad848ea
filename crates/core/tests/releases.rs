//! Releases, verification and rollback, proven on an in-memory target.
//!
//! `MemoryTarget` is a named test double of a provider that keeps releases:
//! it "runs" each agent of the profile as an image reference in a map, one
//! engine step per agent, records every apply (which image, built or not),
//! pins images to a made-up digest when observed, keeps its releases in
//! memory, and fails verification while an image marked bad runs. That is
//! all the release flow depends on; the real targets (Docker, Kubernetes)
//! are tested against real engines in their own crates.

use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskctl_core::engine::*;
use taskctl_core::events::{Event, EventSink, Recorder, RunOutcome};
use taskctl_core::ops::{
    self, AfterFailure, Check, DeployOptions, DeployOutcome, Finding, Layer, OpsError, Provider,
    ReleaseFacts, RollbackOptions, RollbackOutcome, Scope,
};
use taskctl_core::profile::{LoadOptions, Profile};
use taskctl_core::release::{Release, ReleaseStatus, ReleaseStore};
use taskctl_core::state::{LocalStore, StateError, StateStore};
use tokio_util::sync::CancellationToken;

/// A value that must never leave the process: what `${TASKCTL_AMQP_CREDENTIALS}`
/// would hold. The profile only ever refers to it as `env:…`.
const SECRET: &str = "hunter2-never-in-a-record";

#[derive(Default)]
struct MemoryReleases(Mutex<BTreeMap<u32, Release>>);

#[async_trait]
impl ReleaseStore for MemoryReleases {
    async fn list(&self) -> Result<Vec<Release>, StateError> {
        Ok(self.0.lock().unwrap().values().cloned().collect())
    }
    async fn put(&self, release: &Release) -> Result<(), StateError> {
        self.0
            .lock()
            .unwrap()
            .insert(release.revision, release.clone());
        Ok(())
    }
    async fn delete(&self, revision: u32) -> Result<(), StateError> {
        self.0.lock().unwrap().remove(&revision);
        Ok(())
    }
}

/// One apply of one agent, as the double saw it.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    agent: String,
    image: String,
    built: bool,
}

#[derive(Default)]
struct World {
    /// Agent → the image reference running.
    running: Mutex<BTreeMap<String, String>>,
    applied: Mutex<Vec<Applied>>,
    /// Verification fails while one of these images (tag, without digest) runs.
    bad: Mutex<BTreeSet<String>>,
    verifications: AtomicUsize,
    /// When set, verification cannot run at all (its server is down).
    verify_error: Mutex<Option<String>>,
    /// When set, one more check that could not look at anything.
    not_evaluated: std::sync::atomic::AtomicBool,
    releases: Arc<MemoryReleases>,
}

struct MemoryTarget {
    world: Arc<World>,
}

impl MemoryTarget {
    fn new() -> Self {
        MemoryTarget {
            world: Arc::new(World::default()),
        }
    }

    fn mark_bad(&self, image: &str) {
        self.world.bad.lock().unwrap().insert(image.to_string());
    }

    fn last_applied(&self) -> Applied {
        self.world
            .applied
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("something was applied")
    }
}

/// The image a reference names, without its digest.
fn untagged_digest(image: &str) -> &str {
    image.split('@').next().unwrap_or(image)
}

/// A stable made-up digest, as a registry would give.
fn pinned(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut h);
    format!("{image}@sha256:{:064x}", h.finish())
}

/// One agent, in memory.
struct AgentStep {
    id: StepId,
    agent: String,
    image: String,
    built: bool,
    world: Arc<World>,
}

#[async_trait]
impl Step for AgentStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "memory-agent"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let running = self.world.running.lock().unwrap().get(&self.agent).cloned();
        let change = match running {
            None => Change::create("not running"),
            Some(image) if image == self.image => Change::none(),
            Some(image) => Change::update(vec![FieldDiff::new("image", image, &self.image)]),
        };
        Ok(StepPlan {
            change,
            outputs: Outputs::new(),
        })
    }
    async fn apply(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        self.world.applied.lock().unwrap().push(Applied {
            agent: self.agent.clone(),
            image: self.image.clone(),
            built: self.built,
        });
        self.world
            .running
            .lock()
            .unwrap()
            .insert(self.agent.clone(), self.image.clone());
        Ok(Outputs::new())
    }
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        self.world.running.lock().unwrap().remove(&self.agent);
        Ok(())
    }
}

#[async_trait]
impl Provider for MemoryTarget {
    fn name(&self) -> &str {
        "memory"
    }
    fn layers(&self) -> Vec<Layer> {
        vec![Layer::Agents]
    }
    async fn preflight(
        &self,
        _profile: &Profile,
        _scope: &Scope,
    ) -> Result<Vec<Finding>, OpsError> {
        Ok(Vec::new())
    }
    fn steps(&self, profile: &Profile, _scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        Ok(profile
            .agents
            .iter()
            .map(|a| {
                Arc::new(AgentStep {
                    id: StepId::new(format!("agent/{}", a.name)),
                    agent: a.name.clone(),
                    image: a.image.clone(),
                    built: a.build.is_some(),
                    world: self.world.clone(),
                }) as Arc<dyn Step>
            })
            .collect())
    }
    fn releases(&self, _profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        Some(self.world.releases.clone())
    }
    async fn observe_release(&self, _profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        Ok(ReleaseFacts {
            images: self
                .world
                .running
                .lock()
                .unwrap()
                .iter()
                .map(|(agent, image)| (agent.clone(), pinned(image)))
                .collect(),
            config_hashes: BTreeMap::new(),
            secret_refs: vec![
                "env:TASKCTL_AMQP_CREDENTIALS".into(),
                "vault:secret/postgres#password".into(),
            ],
            secret_versions: BTreeMap::new(),
        })
    }
    async fn verify(
        &self,
        _profile: &Profile,
        _sink: Arc<dyn EventSink>,
        _cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        self.world.verifications.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.world.verify_error.lock().unwrap().clone() {
            return Err(OpsError::Provider(e));
        }
        let bad = self.world.bad.lock().unwrap().clone();
        Ok(self
            .world
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(agent, image)| {
                let ok = !bad.contains(untagged_digest(image));
                Check {
                    name: format!("check_service_health/{agent}"),
                    kind: "http".into(),
                    passed: ok,
                    evaluated: true,
                    observed: if ok {
                        "HTTP 200".into()
                    } else {
                        "HTTP 503 \"not ready\"".into()
                    },
                    elapsed: Duration::from_millis(5),
                }
            })
            .chain(
                self.world
                    .not_evaluated
                    .load(Ordering::SeqCst)
                    .then(|| Check {
                        name: "high_error_rate".into(),
                        kind: "condition".into(),
                        passed: false,
                        evaluated: false,
                        observed: "no Prometheus address".into(),
                        elapsed: Duration::ZERO,
                    }),
            )
            .collect())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<LocalStore>,
    recorder: Arc<Recorder>,
    target: MemoryTarget,
    profile: Profile,
}

const AGENT: &str = "automated-task-executor";

impl Harness {
    /// The shipped local profile (automatic rollback configured, manual
    /// rollback needing a lead's approval), run on the in-memory target.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path(), "task-local/development"));
        let vars = |name: &str| (name == "TASKCTL_AMQP_CREDENTIALS").then(|| SECRET.to_string());
        let loaded = taskctl_core::profile::load(&LoadOptions {
            files: vec![
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../profiles/local-external.yaml"),
            ],
            environment: None,
            vars: &vars,
        });
        let profile = loaded
            .valid_profile()
            .expect("the shipped local profile is valid")
            .clone();
        assert!(ops::automatic_rollback_configured(&profile));
        Harness {
            _dir: dir,
            store,
            recorder: Arc::new(Recorder::default()),
            target: MemoryTarget::new(),
            profile,
        }
    }

    fn with_image(&self, image: &str) -> Profile {
        let mut p = self.profile.clone();
        p.agents[0].image = image.to_string();
        p
    }

    fn options(dry_run: bool) -> DeployOptions {
        DeployOptions {
            scope: Scope::all(),
            parallelism: 4,
            dry_run,
            saved_plan: None,
            grace: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            cancel: CancellationToken::new(),
            skip_preflight: false,
        }
    }

    async fn deploy(&self, image: &str) -> DeployOutcome {
        ops::deploy(
            &self.with_image(image),
            &self.target,
            self.store.clone(),
            self.recorder.clone(),
            Self::options(false),
            &|_| true,
        )
        .await
        .expect("the deploy runs")
    }

    async fn rollback(
        &self,
        to: Option<u32>,
        approver: Option<&str>,
        asked: Option<&str>,
    ) -> Result<RollbackOutcome, OpsError> {
        let asked = asked.map(str::to_string);
        ops::rollback(
            &self.profile,
            &self.target,
            self.store.clone(),
            self.recorder.clone(),
            RollbackOptions {
                to,
                approver: approver.map(str::to_string),
                parallelism: 4,
                grace: Duration::from_secs(5),
                retry: RetryPolicy::default(),
                cancel: CancellationToken::new(),
            },
            &|_| asked.clone(),
            &|_| true,
        )
        .await
    }

    async fn releases(&self) -> Vec<Release> {
        self.target.world.releases.list().await.unwrap()
    }

    fn statuses(releases: &[Release]) -> Vec<(u32, ReleaseStatus)> {
        releases.iter().map(|r| (r.revision, r.status)).collect()
    }
}

#[tokio::test]
async fn a_failed_verification_rolls_back_to_the_previous_release() {
    let h = Harness::new();
    let first = h.deploy("task-executor:v1").await;
    assert_eq!(first.outcome(), RunOutcome::Succeeded);
    let report = first.release.as_ref().expect("a release was recorded");
    assert_eq!(report.revision, 1);
    assert!(report.failure_message().is_none());
    assert_eq!(
        Harness::statuses(&h.releases().await),
        vec![(1, ReleaseStatus::Deployed)]
    );

    h.target.mark_bad("task-executor:v2");
    let second = h.deploy("task-executor:v2").await;
    assert_eq!(second.outcome(), RunOutcome::Failed);
    let report = second.release.as_ref().unwrap();
    assert_eq!(report.revision, 2);
    let failed = report.failed_check().unwrap();
    assert_eq!(failed.name, format!("check_service_health/{AGENT}"));
    let message = report.failure_message().unwrap();
    assert!(
        message.contains("HTTP 503 \"not ready\"") && message.contains(&failed.name),
        "{message}"
    );
    assert!(
        message.contains("rolled back automatically to release 1 (now release 3)"),
        "{message}"
    );
    match &report.after_failure {
        Some(AfterFailure::RolledBack(r)) => {
            assert_eq!((r.to, r.revision), (1, Some(3)));
            assert!(r.error.is_none());
            assert!(r.checks.iter().all(|c| c.passed), "{:?}", r.checks);
        }
        other => panic!("expected an automatic rollback, got {other:?}"),
    }

    let releases = h.releases().await;
    assert_eq!(
        Harness::statuses(&releases),
        vec![
            (1, ReleaseStatus::Superseded),
            (2, ReleaseStatus::Failed),
            (3, ReleaseStatus::Deployed)
        ]
    );
    assert!(
        releases[2].description.starts_with(&format!(
            "automatic rollback to 1 (check_service_health/{AGENT}: HTTP 503"
        )),
        "{}",
        releases[2].description
    );
    // What was restored is release 1's profile with its image pinned by
    // digest and no build.
    assert_eq!(
        h.target.last_applied(),
        Applied {
            agent: AGENT.into(),
            image: releases[0].images[AGENT].clone(),
            built: false,
        }
    );
    assert!(releases[0].images[AGENT].starts_with("task-executor:v1@sha256:"));
    assert_eq!(releases[2].images[AGENT], releases[0].images[AGENT]);

    let audit = h.store.audit().await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["deploy", "deploy", "automatic_rollback"]);
    assert!(
        audit[1].detail.contains("release 2") && audit[1].detail.contains("verification failed"),
        "{}",
        audit[1].detail
    );
    assert!(
        audit[2]
            .detail
            .contains("rolled back release 2 to release 1 as release 3"),
        "{}",
        audit[2].detail
    );

    let events = h.recorder.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::CheckFinished { passed: false, observed, .. } if observed.contains("503")
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::RollbackStarted {
            automatic: true,
            from: Some(2),
            to: 1,
            ..
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::RollbackFinished {
            automatic: true,
            to: 1,
            revision: Some(3),
            outcome: RunOutcome::Succeeded
        }
    )));
}

#[tokio::test]
async fn a_first_release_that_fails_verification_cannot_be_rolled_back() {
    let h = Harness::new();
    h.target.mark_bad("task-executor:v1");
    let outcome = h.deploy("task-executor:v1").await;
    assert_eq!(outcome.outcome(), RunOutcome::Failed);
    let report = outcome.release.unwrap();
    assert!(matches!(
        report.after_failure,
        Some(AfterFailure::NoPrevious)
    ));
    let message = report.failure_message().unwrap();
    assert!(
        message.contains("no rollback possible") && message.contains("HTTP 503"),
        "{message}"
    );
    // What runs is still recorded: the next deploy supersedes it.
    assert_eq!(
        Harness::statuses(&h.releases().await),
        vec![(1, ReleaseStatus::Deployed)]
    );
    assert_eq!(h.target.world.applied.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_release_that_cannot_be_verified_is_rolled_back() {
    let h = Harness::new();
    h.deploy("task-executor:v1").await;
    *h.target.world.verify_error.lock().unwrap() =
        Some("prometheus at 127.0.0.1:19090 refused the connection".into());
    let outcome = h.deploy("task-executor:v2").await;
    assert_eq!(outcome.outcome(), RunOutcome::Failed);
    let report = outcome.release.unwrap();
    let check = report.failed_check().unwrap();
    assert_eq!(
        (check.name.as_str(), check.kind.as_str()),
        ("verification", "error")
    );
    assert!(check.observed.contains("refused the connection"));
    match report.after_failure {
        Some(AfterFailure::RolledBack(r)) => assert_eq!((r.to, r.revision), (1, Some(3))),
        other => panic!("expected an automatic rollback, got {other:?}"),
    }
}

#[tokio::test]
async fn without_automatic_rollback_the_failed_release_stays() {
    let mut h = Harness::new();
    h.profile.rollback.automatic.conditions.clear();
    h.profile.rollback.automatic.steps.clear();
    h.deploy("task-executor:v1").await;
    h.target.mark_bad("task-executor:v2");
    let outcome = h.deploy("task-executor:v2").await;
    assert_eq!(outcome.outcome(), RunOutcome::Failed);
    let report = outcome.release.unwrap();
    assert!(matches!(
        report.after_failure,
        Some(AfterFailure::NotConfigured)
    ));
    assert_eq!(
        Harness::statuses(&h.releases().await),
        vec![(1, ReleaseStatus::Superseded), (2, ReleaseStatus::Deployed)]
    );
    assert_eq!(h.target.last_applied().image, "task-executor:v2");
}

/// A check that could not look is neither a failure (no rollback) nor a
/// pass: the report, the event and the audit say "not evaluated".
#[tokio::test]
async fn a_check_that_was_not_evaluated_is_never_reported_as_passed() {
    let h = Harness::new();
    h.target.world.not_evaluated.store(true, Ordering::SeqCst);
    let outcome = h.deploy("task-executor:v1").await;
    assert_eq!(outcome.outcome(), RunOutcome::Succeeded);
    let report = outcome.release.unwrap();
    assert!(report.failed_check().is_none(), "not a failure");
    let check = report
        .checks
        .iter()
        .find(|c| c.name == "high_error_rate")
        .unwrap();
    assert!(!check.passed && !check.evaluated, "{check:?}");
    assert!(
        ops::checks_summary(&report.checks).ends_with(", 1 not evaluated"),
        "{}",
        ops::checks_summary(&report.checks)
    );
    assert!(h.recorder.events().iter().any(|e| matches!(
        e,
        Event::CheckFinished { name, passed: false, evaluated: false, .. } if name == "high_error_rate"
    )));
    let audit = h.store.audit().await.unwrap();
    let last = &audit.last().unwrap().detail;
    assert!(last.contains("1 not evaluated"), "{last}");
}

#[tokio::test]
async fn dry_runs_and_deploys_without_changes_record_nothing() {
    let h = Harness::new();
    let dry = ops::deploy(
        &h.with_image("task-executor:v1"),
        &h.target,
        h.store.clone(),
        h.recorder.clone(),
        Harness::options(true),
        &|_| true,
    )
    .await
    .unwrap();
    assert!(dry.release.is_none());
    assert!(h.releases().await.is_empty());
    assert_eq!(h.target.world.verifications.load(Ordering::SeqCst), 0);

    h.deploy("task-executor:v1").await;
    assert_eq!(h.target.world.verifications.load(Ordering::SeqCst), 1);
    let again = h.deploy("task-executor:v1").await;
    assert!(again.applied.is_none() && again.release.is_none());
    assert_eq!(h.releases().await.len(), 1);
    assert_eq!(h.target.world.verifications.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn what_runs_before_any_release_becomes_release_one() {
    let h = Harness::new();
    h.target
        .world
        .running
        .lock()
        .unwrap()
        .insert(AGENT.into(), "task-executor:v1".into());
    let outcome = h.deploy("task-executor:v1").await;
    assert!(outcome.applied.is_none());
    assert_eq!(outcome.release.unwrap().revision, 1);
    assert_eq!(
        Harness::statuses(&h.releases().await),
        vec![(1, ReleaseStatus::Deployed)]
    );
}

#[tokio::test]
async fn a_manual_rollback_needs_an_approver_where_nobody_can_be_asked() {
    let h = Harness::new();
    h.deploy("task-executor:v1").await;
    h.deploy("task-executor:v2").await;
    let applied_before = h.target.world.applied.lock().unwrap().len();

    // In CI, or without a terminal, nobody can be asked: refused.
    let err = h.rollback(Some(1), None, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, OpsError::Prerequisite(_)) && text.contains("--approve"),
        "{text}"
    );
    assert_eq!(h.target.world.applied.lock().unwrap().len(), applied_before);
    assert_eq!(h.releases().await.len(), 2);

    // An unknown revision is refused with the kept ones.
    let err = h.rollback(Some(9), Some("lead"), None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "release 9 is not kept; kept releases: 1 (superseded), 2 (deployed)"
    );

    let outcome = h.rollback(Some(1), Some("dana"), None).await.unwrap();
    assert_eq!(outcome.outcome(), RunOutcome::Succeeded);
    assert_eq!(
        (outcome.from, outcome.to, outcome.revision),
        (Some(2), 1, Some(3))
    );
    let releases = h.releases().await;
    assert_eq!(releases[2].description, "rollback to 1 (approved by dana)");
    assert_eq!(releases[2].status, ReleaseStatus::Deployed);
    assert_eq!(h.target.last_applied().image, releases[0].images[AGENT]);
    let audit = h.store.audit().await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.action, "rollback");
    assert_eq!(last.approver.as_deref(), Some("dana"));
    assert!(
        last.detail
            .contains("rolled back from release 2 to release 1 as release 3 (approved by dana)"),
        "{}",
        last.detail
    );

    // On a terminal the approver is asked for; the default target is the
    // release before the running one.
    let outcome = h.rollback(None, None, Some("  erin ")).await.unwrap();
    assert_eq!((outcome.to, outcome.revision), (2, Some(4)));
    assert_eq!(outcome.approver.as_deref(), Some("erin"));
}

#[tokio::test]
async fn backup_verification_is_noted_when_the_target_keeps_none() {
    let mut h = Harness::new();
    h.profile.rollback.manual.prerequisites =
        vec!["backup_verification".into(), "approval_from_lead".into()];
    h.deploy("task-executor:v1").await;
    h.deploy("task-executor:v2").await;
    let outcome = h.rollback(None, Some("dana"), None).await.unwrap();
    let note = outcome.backups.unwrap();
    assert!(note.contains("keeps no backups"), "{note}");
    let audit = h.store.audit().await.unwrap();
    assert!(
        audit.last().unwrap().detail.contains("keeps no backups"),
        "{:?}",
        audit.last()
    );
}

#[tokio::test]
async fn retention_keeps_keep_releases() {
    let mut h = Harness::new();
    h.profile.rollback.keep_releases = 3;
    for v in 1..=5 {
        let outcome = h.deploy(&format!("task-executor:v{v}")).await;
        assert_eq!(outcome.outcome(), RunOutcome::Succeeded);
    }
    assert_eq!(
        Harness::statuses(&h.releases().await),
        vec![
            (3, ReleaseStatus::Superseded),
            (4, ReleaseStatus::Superseded),
            (5, ReleaseStatus::Deployed)
        ]
    );
}

#[tokio::test]
async fn history_and_rollback_refuse_a_target_without_releases() {
    struct NoReleases;
    #[async_trait]
    impl Provider for NoReleases {
        fn name(&self) -> &str {
            "aws"
        }
        fn layers(&self) -> Vec<Layer> {
            vec![Layer::Infrastructure]
        }
        async fn preflight(&self, _: &Profile, _: &Scope) -> Result<Vec<Finding>, OpsError> {
            Ok(Vec::new())
        }
        fn steps(&self, _: &Profile, _: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
            Ok(Vec::new())
        }
    }
    let h = Harness::new();
    let err = ops::history(&h.profile, &NoReleases).await.unwrap_err();
    assert!(matches!(err, OpsError::NoReleases { .. }));
    assert!(
        err.to_string().starts_with("no releases on this target"),
        "{err}"
    );
    let err = ops::rollback(
        &h.profile,
        &NoReleases,
        h.store.clone(),
        h.recorder.clone(),
        RollbackOptions {
            to: None,
            approver: Some("dana".into()),
            parallelism: 1,
            grace: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            cancel: CancellationToken::new(),
        },
        &|_| None,
        &|_| true,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpsError::NoReleases { .. }));
    // Nothing was locked or audited.
    assert!(h.store.current_lock().await.unwrap().is_none());
    assert!(h.store.audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn no_secret_value_reaches_a_release_the_audit_or_an_event() {
    let h = Harness::new();
    h.deploy("task-executor:v1").await;
    h.target.mark_bad("task-executor:v2");
    h.deploy("task-executor:v2").await;
    h.rollback(Some(1), Some("dana"), None).await.unwrap();

    let releases = serde_json::to_string(&h.releases().await).unwrap();
    let audit = serde_json::to_string(&h.store.audit().await.unwrap()).unwrap();
    let events: Vec<String> = h
        .recorder
        .events()
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    assert!(events.len() > 10);
    for text in std::iter::once(&releases)
        .chain(std::iter::once(&audit))
        .chain(&events)
    {
        assert!(!text.contains(SECRET), "a secret value leaked: {text}");
    }
    // The releases keep the references, which is all a restore needs.
    assert!(releases.contains("env:TASKCTL_AMQP_CREDENTIALS"));
    assert!(releases.contains("vault:secret/postgres#password"));
}
