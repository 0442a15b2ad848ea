//! `deploy` and `destroy`: lock, plan, confirm, act, audit.

use super::lock::LockGuard;
use super::releases::{Flow, ReleaseReport};
use super::{OpsError, Provider, Scope, environment_key};
use crate::Severity;
use crate::engine::{self, Graph, RetryPolicy, Run, RunReport, SavedPlan};
use crate::events::{EventSink, Operation, Recorder, RunOutcome};
use crate::journal::last_run;
use crate::profile::Profile;
use crate::state::{AuditEntry, StateStore};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct DeployOptions {
    pub scope: Scope,
    pub parallelism: usize,
    /// Plan only: the same path as a deploy, stopping before the first
    /// mutating call. Takes no lock.
    pub dry_run: bool,
    /// Apply exactly this plan, refusing where the world changed since.
    pub saved_plan: Option<SavedPlan>,
    /// How long steps in flight may finish after an interrupt.
    pub grace: Duration,
    pub retry: RetryPolicy,
    pub cancel: CancellationToken,
    pub skip_preflight: bool,
}

pub struct DeployOutcome {
    pub plan: RunReport,
    /// `None` for dry runs and when there was nothing to do.
    pub applied: Option<RunReport>,
    /// The unfinished run this one resumed.
    pub resumed: Option<String>,
    /// Preflight warnings and notes (errors stop the deploy instead).
    pub preflight: Vec<super::Finding>,
    /// The release the deploy recorded and its verification, on targets
    /// that keep releases; for a failed run, the failed release and its
    /// automatic rollback when the profile asks for one. `None` for dry
    /// runs, destroys, other failed runs and deploys that changed nothing
    /// once a release exists.
    pub release: Option<ReleaseReport>,
}

impl DeployOutcome {
    /// Failed too when the run succeeded but its release failed
    /// verification, even if it was rolled back: what was asked for is not
    /// what runs.
    pub fn outcome(&self) -> RunOutcome {
        let run = self
            .applied
            .as_ref()
            .map(|r| r.outcome)
            .unwrap_or(self.plan.outcome);
        match &self.release {
            Some(r) if run == RunOutcome::Succeeded && r.failed_check().is_some() => {
                RunOutcome::Failed
            }
            _ => run,
        }
    }
}

/// Deploys `profile` with `provider`. `confirm` sees the plan and says
/// whether to go on; it is not asked when there is nothing to change.
pub async fn deploy(
    profile: &Profile,
    provider: &dyn Provider,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn EventSink>,
    options: DeployOptions,
    confirm: &(dyn Fn(&RunReport) -> bool + Sync),
) -> Result<DeployOutcome, OpsError> {
    run_operation(
        Operation::Deploy,
        profile,
        provider,
        store,
        sink,
        options,
        confirm,
    )
    .await
}

/// Removes everything the profile's steps manage, within scope.
pub async fn destroy(
    profile: &Profile,
    provider: &dyn Provider,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn EventSink>,
    options: DeployOptions,
    confirm: &(dyn Fn(&RunReport) -> bool + Sync),
) -> Result<DeployOutcome, OpsError> {
    run_operation(
        Operation::Destroy,
        profile,
        provider,
        store,
        sink,
        options,
        confirm,
    )
    .await
}

async fn run_operation(
    operation: Operation,
    profile: &Profile,
    provider: &dyn Provider,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn EventSink>,
    options: DeployOptions,
    confirm: &(dyn Fn(&RunReport) -> bool + Sync),
) -> Result<DeployOutcome, OpsError> {
    let environment = environment_key(profile);
    if let Some(saved) = &options.saved_plan {
        if saved.format != SavedPlan::FORMAT {
            return Err(OpsError::BadPlan(format!(
                "the plan file has format {}, this taskctl reads {}",
                saved.format,
                SavedPlan::FORMAT
            )));
        }
        if saved.environment != environment {
            return Err(OpsError::BadPlan(format!(
                "the plan was made for {}, not {environment}",
                saved.environment
            )));
        }
    }
    let graph = Graph::new(provider.steps(profile, &options.scope)?)?;
    let run_id = Run::new_id();
    let op_name = crate::journal::operation_name(operation);
    // Cancelled by the caller (Ctrl-C), or when the lease is lost: either
    // way no new step starts.
    let cancel = options.cancel.child_token();
    let lock = if options.dry_run {
        None
    } else {
        Some(
            LockGuard::acquire_for(
                store.clone(),
                &environment,
                &run_id,
                op_name,
                super::lock::LEASE_TTL,
                cancel.clone(),
            )
            .await?,
        )
    };
    // The lock comes first: preflight and plan describe a world that only
    // this run may change until it is done.
    let mut warnings = Vec::new();
    let result = async {
        let resumed = match last_run(&store.journal().await?) {
            Some(last) if last.finished.is_none() || !last.in_flight.is_empty() => Some(last.run),
            _ => None,
        };
        let run = |sink: Arc<dyn EventSink>| Run {
            run_id: run_id.clone(),
            environment: environment.clone(),
            operation,
            parallelism: options.parallelism,
            grace: options.grace,
            retry: options.retry,
            store: store.clone(),
            sink,
            cancel: cancel.clone(),
            saved_plan: options.saved_plan.clone(),
            resumes: resumed.clone(),
        };
        let planned = if operation == Operation::Deploy && !options.skip_preflight {
            // Preflight and plan only read, so they run together; the plan's
            // events are held back until preflight has passed, so a failed
            // preflight shows no plan.
            let held = Arc::new(Recorder::default());
            let quiet = run(held.clone());
            let (findings, planned) = tokio::join!(
                provider.preflight(profile, &options.scope),
                engine::plan(&graph, &quiet)
            );
            let findings = findings?;
            let errors: Vec<String> = findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| format!("{}: {}", f.check, f.message))
                .collect();
            if !errors.is_empty() {
                return Err(OpsError::Preflight(errors.join("; ")));
            }
            warnings = findings;
            for event in held.events() {
                sink.emit(&event);
            }
            planned
        } else {
            engine::plan(&graph, &run(sink.clone())).await
        };
        let run = run(sink.clone());
        let to_do = match operation {
            Operation::Destroy => planned.steps.iter().any(|s| {
                s.change
                    .as_ref()
                    .is_some_and(|c| c.action != crate::engine::Action::Create)
            }),
            _ => planned.has_changes(),
        };
        // Releases are recorded only by real deploys on targets that keep
        // them; plans and dry runs never record or verify anything.
        let releases = match operation {
            // A release holds the layers the target keeps releases of; a
            // deploy of other layers alone (`--only infrastructure` of the
            // `aws` target) makes none.
            Operation::Deploy
                if !options.dry_run
                    && provider
                        .release_layers()
                        .iter()
                        .any(|l| options.scope.includes(*l)) =>
            {
                provider.releases(profile)
            }
            _ => None,
        };
        let flow = releases.map(|releases| Flow {
            profile,
            provider,
            store: store.clone(),
            sink: sink.clone(),
            releases,
            environment: environment.clone(),
            scope: options.scope.clone(),
            parallelism: options.parallelism,
            grace: options.grace,
            retry: options.retry,
            cancel: cancel.clone(),
        });
        if options.dry_run || planned.outcome != RunOutcome::Succeeded || !to_do {
            // Nothing to change, but nothing recorded either: what runs
            // becomes release 1, so there is something to roll back to.
            let release = match &flow {
                Some(flow)
                    if !options.dry_run
                        && planned.outcome == RunOutcome::Succeeded
                        && flow.releases.list().await?.is_empty() =>
                {
                    Some(
                        flow.after_deploy(&run_id, "nothing to change; recorded what runs")
                            .await?,
                    )
                }
                _ => None,
            };
            return Ok(DeployOutcome {
                plan: planned,
                applied: None,
                resumed,
                preflight: std::mem::take(&mut warnings),
                release,
            });
        }
        if !confirm(&planned) {
            return Err(OpsError::NotConfirmed(format!(
                "{op_name} not confirmed; nothing was changed"
            )));
        }
        let applied = match operation {
            Operation::Destroy => engine::destroy(&graph, &run, &planned).await?,
            _ => engine::apply(&graph, &run, &planned).await?,
        };
        let changed = applied
            .steps
            .iter()
            .filter(|s| s.outcome == crate::events::StepOutcome::Changed)
            .count();
        let detail = format!(
            "{} with {changed} change(s) in {:.1}s",
            crate::journal::outcome_name(applied.outcome),
            applied.duration.as_secs_f64()
        );
        // A failed rollout is recorded and rolled back when the profile
        // asks for automatic rollback (writing its own audit entry).
        let failed_release = match &flow {
            Some(flow) => flow.after_failed_apply(&applied, &detail).await?,
            None => None,
        };
        let release = match &flow {
            Some(flow)
                if applied.outcome == RunOutcome::Succeeded
                    && (changed > 0 || flow.releases.list().await?.is_empty()) =>
            {
                // Writes the deploy's audit entry itself, with the release.
                Some(flow.after_deploy(&run_id, &detail).await?)
            }
            _ if failed_release.is_some() => failed_release,
            _ => {
                store
                    .append_audit(&AuditEntry::now(
                        op_name,
                        &environment,
                        Some(&run_id),
                        detail,
                    ))
                    .await?;
                None
            }
        };
        Ok(DeployOutcome {
            plan: planned,
            applied: Some(applied),
            resumed,
            preflight: std::mem::take(&mut warnings),
            release,
        })
    }
    .await;
    match lock {
        Some(lock) => {
            lock.finish(environment, result, |o| {
                super::lock::interrupted(&o.plan, o.applied.as_ref())
            })
            .await
        }
        None => result,
    }
}
