//! The manual rollback: choose the release, check the profile's
//! `rollback.manual.prerequisites` (a lead's approval, the backups, plugin
//! prerequisites) before anything changes, then restore it through the
//! shared [`Flow`] as a new release.

use super::*;

/// The prerequisite that needs a named approver.
const APPROVAL: &str = "approval_from_lead";
/// The prerequisite that asks the provider to check its backups.
const BACKUPS: &str = "backup_verification";

pub struct RollbackOptions {
    /// The revision to restore; by default the newest release before the
    /// one running now that did not fail.
    pub to: Option<u32>,
    /// Who approved the rollback (`--approve NAME`).
    pub approver: Option<String>,
    pub parallelism: usize,
    pub grace: Duration,
    pub retry: RetryPolicy,
    pub cancel: CancellationToken,
}

/// What a manual rollback did.
#[derive(Debug, Clone)]
pub struct RollbackOutcome {
    /// The release running before.
    pub from: Option<u32>,
    /// The release restored.
    pub to: u32,
    pub approver: Option<String>,
    /// What `backup_verification` found, when the profile requires it.
    pub backups: Option<String>,
    /// What each plugin prerequisite saw (`name: observed`).
    pub prerequisites: Vec<String>,
    pub plan: RunReport,
    /// `None` when the plan found nothing to change or failed.
    pub applied: Option<RunReport>,
    /// The release recording the rollback; `None` when it failed.
    pub revision: Option<u32>,
    /// The system validation after the rollback.
    pub checks: Vec<Check>,
    pub pruned: Vec<u32>,
}

impl RollbackOutcome {
    pub fn failed_check(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.failed())
    }

    /// Failed when the engine run failed or a check failed afterwards.
    pub fn outcome(&self) -> RunOutcome {
        let run = self.applied.as_ref().unwrap_or(&self.plan).outcome;
        match run {
            RunOutcome::Succeeded if self.failed_check().is_some() => RunOutcome::Failed,
            other => other,
        }
    }

    /// Why the engine run failed, for people.
    pub fn run_failure(&self) -> Option<String> {
        let run = self.applied.as_ref().unwrap_or(&self.plan);
        (run.outcome != RunOutcome::Succeeded).then(|| run_failure(run))
    }
}

/// Restores a kept release: checks the profile's manual-rollback
/// prerequisites, deploys the release's pinned profile under the lock,
/// validates the system and records the result as a new release.
///
/// `ask_approver` is called when the profile requires a lead's approval and
/// `options.approver` is empty; it returns the approver's name, or `None`
/// when nobody can be asked (CI, no terminal), which refuses the rollback.
/// `confirm` sees the plan, as for a deploy.
pub async fn rollback(
    profile: &Profile,
    provider: &dyn Provider,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn EventSink>,
    options: RollbackOptions,
    ask_approver: &(dyn Fn(&Release) -> Option<String> + Sync),
    confirm: &(dyn Fn(&RunReport) -> bool + Sync),
) -> Result<RollbackOutcome, OpsError> {
    let releases = provider
        .releases(profile)
        .ok_or_else(|| OpsError::NoReleases {
            target: provider.name().to_string(),
        })?;
    let environment = environment_key(profile);
    let run_id = Run::new_id();
    let cancel = options.cancel.child_token();
    let lock = LockGuard::acquire_for(
        store.clone(),
        &environment,
        &run_id,
        "rollback",
        crate::ops::lock::LEASE_TTL,
        cancel.clone(),
    )
    .await?;
    let flow = Flow {
        profile,
        provider,
        store: store.clone(),
        sink,
        releases,
        environment: environment.clone(),
        scope: Scope::all(),
        parallelism: options.parallelism,
        grace: options.grace,
        retry: options.retry,
        cancel,
    };
    let result = manual_rollback(&flow, &options, ask_approver, confirm).await;
    lock.finish(environment, result, |o| {
        crate::ops::lock::interrupted(&o.plan, o.applied.as_ref())
    })
    .await
}

async fn manual_rollback(
    flow: &Flow<'_>,
    options: &RollbackOptions,
    ask_approver: &(dyn Fn(&Release) -> Option<String> + Sync),
    confirm: &(dyn Fn(&RunReport) -> bool + Sync),
) -> Result<RollbackOutcome, OpsError> {
    let kept = flow.releases.list().await?;
    let current = flow.releases.current().await?;
    let target = choose_target(&kept, current.as_ref(), options.to)?;

    // Prerequisites, before anything changes.
    let prerequisites = &flow.profile.rollback.manual.prerequisites;
    let given = options
        .approver
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string);
    let mut approver = given;
    let mut backups = None;
    let mut plugins = Vec::new();
    for prerequisite in prerequisites {
        match prerequisite.as_str() {
            APPROVAL => {
                if approver.is_none() {
                    approver = ask_approver(&target)
                        .map(|a| a.trim().to_string())
                        .filter(|a| !a.is_empty());
                }
                if approver.is_none() {
                    return Err(OpsError::Prerequisite(format!(
                        "rolling back {} needs a lead's approval (rollback.manual.prerequisites: {APPROVAL}): pass --approve NAME with the approving lead's name; nothing was changed",
                        flow.environment
                    )));
                }
            }
            BACKUPS => {
                let found = flow
                    .provider
                    .verify_backups(flow.profile, &target)
                    .await
                    .map_err(|e| {
                        OpsError::Prerequisite(format!(
                            "backup verification failed ({BACKUPS}): {e}; nothing was changed"
                        ))
                    })?;
                backups = Some(found.unwrap_or_else(|| {
                    format!(
                        "the {} target keeps no backups, so there were none to verify",
                        flow.provider.name()
                    )
                }));
            }
            other => {
                let held = flow
                    .provider
                    .prerequisite(flow.profile, other, &target)
                    .await?;
                plugins.push(format!("{other}: {held}"));
            }
        }
    }

    let restored = target.pinned_profile().map_err(|e| {
        OpsError::Release(format!(
            "the profile of release {} cannot be read: {e}",
            target.revision
        ))
    })?;
    let reason = match &approver {
        Some(a) => format!("on command, approved by {a}"),
        None => "on command".into(),
    };
    flow.sink.emit(&Event::RollbackStarted {
        automatic: false,
        from: current.as_ref().map(|c| c.revision),
        to: target.revision,
        reason,
    });
    let (plan, applied) = flow.converge(&restored, Some(confirm)).await?;
    let done = applied.as_ref().unwrap_or(&plan);
    let mut outcome = RollbackOutcome {
        from: current.as_ref().map(|c| c.revision),
        to: target.revision,
        approver: approver.clone(),
        backups: backups.clone(),
        prerequisites: plugins.clone(),
        plan: plan.clone(),
        applied: applied.clone(),
        revision: None,
        checks: Vec::new(),
        pruned: Vec::new(),
    };
    let from = outcome
        .from
        .map(|f| format!("release {f}"))
        .unwrap_or_else(|| "no running release".into());
    let approved = approver
        .as_ref()
        .map(|a| format!(" (approved by {a})"))
        .unwrap_or_default();
    let mut backups_note = backups
        .as_ref()
        .map(|b| format!("; backups: {b}"))
        .unwrap_or_default();
    for held in &plugins {
        backups_note.push_str(&format!("; {held}"));
    }
    let detail = if done.outcome == RunOutcome::Succeeded {
        let release = flow
            .record(
                &restored,
                &done.run_id,
                format!("rollback to {}{approved}", target.revision),
            )
            .await?;
        outcome.revision = Some(release.revision);
        outcome.checks = flow.verify(&restored, release.revision).await;
        outcome.pruned = flow.prune().await?;
        format!(
            "rolled back from {from} to release {} as release {}{approved}{backups_note}{}",
            target.revision,
            release.revision,
            verification_note(&outcome.checks)
        )
    } else {
        format!(
            "rollback from {from} to release {} failed{approved}{backups_note}: {}",
            target.revision,
            run_failure(done)
        )
    };
    flow.sink.emit(&Event::RollbackFinished {
        automatic: false,
        to: target.revision,
        revision: outcome.revision,
        outcome: outcome.outcome(),
    });
    flow.store
        .append_audit(
            &AuditEntry::now("rollback", &flow.environment, Some(&done.run_id), detail)
                .approved_by(approver.as_deref()),
        )
        .await?;
    Ok(outcome)
}

/// The release to restore: `to` if it is kept, otherwise the newest release
/// before the running one that did not fail.
fn choose_target(
    kept: &[Release],
    current: Option<&Release>,
    to: Option<u32>,
) -> Result<Release, OpsError> {
    let list = || {
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.iter()
                .map(|r| format!("{} ({})", r.revision, r.status))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    match to {
        Some(n) => {
            let Some(target) = kept.iter().find(|r| r.revision == n) else {
                return Err(OpsError::Release(format!(
                    "release {n} is not kept; kept releases: {}",
                    list()
                )));
            };
            if current.is_some_and(|c| c.revision == n) {
                return Err(OpsError::Release(format!(
                    "release {n} is the one running now; kept releases: {}",
                    list()
                )));
            }
            Ok(target.clone())
        }
        None => {
            let before = current.map(|c| c.revision).unwrap_or(u32::MAX);
            kept.iter()
                .rev()
                .find(|r| r.revision < before && r.status != ReleaseStatus::Failed)
                .cloned()
                .ok_or_else(|| {
                    OpsError::Release(format!(
                        "there is no earlier release to roll back to; kept releases: {}",
                        list()
                    ))
                })
        }
    }
}
