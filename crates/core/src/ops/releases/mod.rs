//! Releases after a deploy, verification, automatic and manual rollback,
//! and the history.
//!
//! A deploy that changed something (or the first one) records release N
//! and verifies it. When a check fails and the profile configures
//! `rollback.automatic`, the previous release's pinned profile is deployed
//! again through the same engine path, under the same lock, and recorded
//! as release N+1: a rollback is a new release, as in helm, so the history
//! only ever grows and every state the target was in keeps its number.
//!
//! `taskctl rollback` does the same on command, after the profile's
//! `rollback.manual.prerequisites` hold ([`rollback`](mod@rollback)).
//!
//! This file: the flow every release operation shares ([`Flow`]: record,
//! verify, converge, roll back automatically) and the history.

mod rollback;
pub use rollback::{RollbackOptions, RollbackOutcome, rollback};

use super::lock::LockGuard;
use super::{Check, OpsError, Provider, Scope, environment_key};
use crate::engine::{self, Graph, RetryPolicy, Run, RunReport};
use crate::events::{Event, EventSink, Operation, RunOutcome};
use crate::profile::Profile;
use crate::release::{Release, ReleaseStatus, ReleaseStore, next_revision, to_prune};
use crate::state::{AuditEntry, StateStore, unix_now};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a deploy recorded and what its verification found.
#[derive(Debug, Clone)]
pub struct ReleaseReport {
    /// The release the deploy recorded.
    pub revision: u32,
    pub checks: Vec<Check>,
    /// What was done because a check failed; `None` when every check
    /// passed.
    pub after_failure: Option<AfterFailure>,
    /// Releases removed by `rollback.keep_releases`.
    pub pruned: Vec<u32>,
}

/// What followed a failed verification.
#[derive(Debug, Clone)]
pub enum AfterFailure {
    /// `rollback.automatic` is not configured: the release stays.
    NotConfigured,
    /// The first release failed: there is nothing earlier to go back to.
    NoPrevious,
    /// Ctrl-C or SIGTERM arrived before the rollback could start; the
    /// user asked to stop, so nothing more was changed.
    Interrupted,
    RolledBack(AutomaticRollbackReport),
}

/// An automatic rollback.
#[derive(Debug, Clone)]
pub struct AutomaticRollbackReport {
    /// The release restored.
    pub to: u32,
    /// The engine run that restored it; `None` when it could not start.
    pub applied: Option<RunReport>,
    /// The release recording the rollback; `None` when it failed.
    pub revision: Option<u32>,
    /// Verification after the rollback.
    pub checks: Vec<Check>,
    /// Why the rollback itself failed.
    pub error: Option<String>,
}

impl ReleaseReport {
    /// The first check that failed.
    pub fn failed_check(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.failed())
    }

    /// Why the deploy failed, and what was done about it, in one sentence
    /// for people; `None` when verification passed.
    pub fn failure_message(&self) -> Option<String> {
        let check = self.failed_check()?;
        let failed = if check.kind == "rollout" {
            format!(
                "the rollout of release {} failed: {}: {}",
                self.revision, check.name, check.observed
            )
        } else {
            format!(
                "verification of release {} failed: {} ({}): {}",
                self.revision, check.name, check.kind, check.observed
            )
        };
        let then = match self.after_failure.as_ref()? {
            AfterFailure::NotConfigured => format!(
                "automatic rollback is not configured (rollback.automatic), so release {} stays; `taskctl rollback` restores the previous one",
                self.revision
            ),
            AfterFailure::NoPrevious => format!(
                "no rollback possible: release {} is the first release of this environment, there is nothing earlier to go back to",
                self.revision
            ),
            AfterFailure::Interrupted => {
                "interrupted before the automatic rollback could start; nothing more was changed"
                    .into()
            }
            AfterFailure::RolledBack(r) => match (&r.error, r.revision) {
                (Some(e), _) => format!(
                    "the automatic rollback to release {} failed: {e}; `taskctl rollback --to {}` retries it",
                    r.to, r.to
                ),
                (None, Some(revision)) => match r.checks.iter().find(|c| c.failed()) {
                    None => format!(
                        "rolled back automatically to release {} (now release {revision})",
                        r.to
                    ),
                    Some(c) => format!(
                        "rolled back automatically to release {} (now release {revision}), but its verification failed too: {}: {}",
                        r.to, c.name, c.observed
                    ),
                },
                (None, None) => format!("the automatic rollback to release {} failed", r.to),
            },
        };
        Some(format!("{failed}; {then}"))
    }
}

/// Whether the profile asks for automatic rollback: enabled, with at least
/// one condition or step. A profile that says nothing about it gets no
/// surprise rollback.
pub fn automatic_rollback_configured(profile: &Profile) -> bool {
    let auto = &profile.rollback.automatic;
    auto.enabled && !(auto.conditions.is_empty() && auto.steps.is_empty())
}

/// What every release operation needs, gathered once.
pub(super) struct Flow<'a> {
    pub profile: &'a Profile,
    pub provider: &'a dyn Provider,
    pub store: Arc<dyn StateStore>,
    pub sink: Arc<dyn EventSink>,
    pub releases: Arc<dyn ReleaseStore>,
    pub environment: String,
    pub scope: Scope,
    pub parallelism: usize,
    pub grace: Duration,
    pub retry: RetryPolicy,
    pub cancel: CancellationToken,
}

impl Flow<'_> {
    /// Records what runs now as a new release; the release that ran until
    /// now becomes superseded. The new one is written first, so a crash in
    /// between leaves two deployed releases (the newest counts) rather than
    /// none.
    async fn record(
        &self,
        profile: &Profile,
        run_id: &str,
        description: String,
    ) -> Result<Release, OpsError> {
        self.record_as(profile, run_id, description, ReleaseStatus::Deployed)
            .await
    }

    /// [`Self::record`] with a status. A `Failed` release never ran as a
    /// whole, so it supersedes nothing: the release before it stays the
    /// one to roll back to.
    async fn record_as(
        &self,
        profile: &Profile,
        run_id: &str,
        description: String,
        status: ReleaseStatus,
    ) -> Result<Release, OpsError> {
        let kept = self.releases.list().await?;
        let facts = self.provider.observe_release(profile).await?;
        let release = Release {
            revision: next_revision(&kept),
            environment: self.environment.clone(),
            run_id: run_id.to_string(),
            created_at: unix_now(),
            status,
            description,
            images: facts.images,
            config_hashes: facts.config_hashes,
            secret_refs: facts.secret_refs,
            secret_versions: facts.secret_versions,
            profile: serde_json::to_value(profile).map_err(|e| {
                OpsError::Release(format!("cannot serialize the profile for the release: {e}"))
            })?,
            checks: Vec::new(),
        };
        self.releases.put(&release).await?;
        for mut old in kept {
            if status == ReleaseStatus::Deployed && old.status == ReleaseStatus::Deployed {
                old.status = ReleaseStatus::Superseded;
                self.releases.put(&old).await?;
            }
        }
        self.sink.emit(&Event::ReleaseRecorded {
            revision: release.revision,
            status: release.status,
            description: release.description.clone(),
        });
        Ok(release)
    }

    async fn set_status(&self, release: &Release, status: ReleaseStatus) -> Result<(), OpsError> {
        // As stored now: its verification may have added checks since.
        let mut release = match self.releases.get(release.revision).await? {
            Some(stored) => stored,
            None => release.clone(),
        };
        release.status = status;
        self.releases.put(&release).await?;
        self.sink.emit(&Event::ReleaseRecorded {
            revision: release.revision,
            status,
            description: release.description.clone(),
        });
        Ok(())
    }

    /// Runs the provider's verification of `profile` as release `revision`
    /// and reports every check. A provider that cannot verify at all fails
    /// verification: an unverified release is not a good one.
    async fn verify(&self, profile: &Profile, revision: u32) -> Vec<Check> {
        self.sink.emit(&Event::VerificationStarted { revision });
        let checks = match self
            .provider
            .verify(profile, self.sink.clone(), &self.cancel)
            .await
        {
            Ok(checks) => checks,
            Err(e) => vec![Check {
                name: "verification".into(),
                kind: "error".into(),
                passed: false,
                evaluated: true,
                observed: e.to_string(),
                elapsed: Duration::ZERO,
            }],
        };
        for c in &checks {
            self.sink.emit(&Event::CheckFinished {
                name: c.name.clone(),
                kind: c.kind.clone(),
                passed: c.passed,
                evaluated: c.evaluated,
                observed: c.observed.clone(),
                elapsed_s: c.elapsed.as_secs_f64(),
            });
        }
        // Kept with the release, for `status`; a record that cannot be
        // written does not change the verdict.
        if let Ok(Some(mut release)) = self.releases.get(revision).await {
            release.checks = checks.clone();
            if let Err(e) = self.releases.put(&release).await {
                tracing::warn!(revision, error = %e, "the release's checks were not recorded");
            }
        }
        let failed = checks.iter().filter(|c| c.failed()).count();
        self.sink.emit(&Event::VerificationFinished {
            revision,
            passed: failed == 0,
            checks: checks.len(),
            failed,
            not_evaluated: checks.iter().filter(|c| !c.evaluated).count(),
        });
        checks
    }

    /// Deletes what `rollback.keep_releases` no longer keeps.
    async fn prune(&self) -> Result<Vec<u32>, OpsError> {
        let kept = self.releases.list().await?;
        let doomed = to_prune(&kept, self.profile.rollback.keep_releases as usize);
        for revision in &doomed {
            self.releases.delete(*revision).await?;
        }
        Ok(doomed)
    }

    /// Plans and applies `profile` as a new engine run, without asking:
    /// the caller has its consent already. `Err` carries why it failed.
    async fn converge(
        &self,
        profile: &Profile,
        confirm: Option<&(dyn Fn(&RunReport) -> bool + Sync)>,
    ) -> Result<(RunReport, Option<RunReport>), OpsError> {
        // A rollback restores what the release holds, nothing more (the
        // `aws` target's node groups are not shrunk back with the agents).
        let held = self.provider.release_layers();
        let scope = Scope(
            self.scope
                .0
                .iter()
                .copied()
                .filter(|l| held.contains(l))
                .collect(),
        );
        let graph = Graph::new(self.provider.steps(profile, &scope)?)?;
        let run = Run {
            run_id: Run::new_id(),
            environment: self.environment.clone(),
            operation: Operation::Deploy,
            parallelism: self.parallelism,
            grace: self.grace,
            retry: self.retry,
            store: self.store.clone(),
            sink: self.sink.clone(),
            cancel: self.cancel.clone(),
            saved_plan: None,
            resumes: None,
        };
        let planned = engine::plan(&graph, &run).await;
        if planned.outcome != RunOutcome::Succeeded || !planned.has_changes() {
            return Ok((planned, None));
        }
        if let Some(confirm) = confirm
            && !confirm(&planned)
        {
            return Err(OpsError::NotConfirmed(
                "rollback not confirmed; nothing was changed".into(),
            ));
        }
        let applied = engine::apply(&graph, &run, &planned).await?;
        Ok((planned, Some(applied)))
    }

    /// After a successful deploy: records the release, verifies it, and
    /// rolls back automatically when a check fails and the profile says so.
    /// Writes the audit entries of what it did.
    pub(super) async fn after_deploy(
        &self,
        run_id: &str,
        applied: &str,
    ) -> Result<ReleaseReport, OpsError> {
        let previous = self.releases.current().await?;
        let release = self.record(self.profile, run_id, "deploy".into()).await?;
        let checks = self.verify(self.profile, release.revision).await;
        let failed = checks.iter().find(|c| c.failed()).cloned();
        let after_failure = match &failed {
            None => None,
            Some(_) if !automatic_rollback_configured(self.profile) => {
                Some(AfterFailure::NotConfigured)
            }
            Some(_) if self.cancel.is_cancelled() => Some(AfterFailure::Interrupted),
            Some(_) => match &previous {
                None => Some(AfterFailure::NoPrevious),
                Some(_) => None,
            },
        };
        let mut detail = format!("{applied}; release {}", release.revision);
        match &failed {
            None => {
                detail += &format!(", verification passed ({})", super::checks_summary(&checks))
            }
            Some(c) => {
                detail += &format!(", verification failed: {}: {}", c.name, c.observed);
                if matches!(after_failure, Some(AfterFailure::NoPrevious)) {
                    detail += "; no earlier release to roll back to";
                }
            }
        }
        self.store
            .append_audit(&AuditEntry::now(
                "deploy",
                &self.environment,
                Some(run_id),
                detail,
            ))
            .await?;
        let mut report = ReleaseReport {
            revision: release.revision,
            checks,
            after_failure,
            pruned: Vec::new(),
        };
        if let (Some(check), Some(previous), None) = (&failed, previous, &report.after_failure) {
            let rolled = self.automatic_rollback(&release, &previous, check).await?;
            report.after_failure = Some(AfterFailure::RolledBack(rolled));
        }
        report.pruned = self.prune().await?;
        Ok(report)
    }

    /// After a deploy whose apply failed (a rollout that never became
    /// ready, a crash-looping pod, a replacement that exited): when the
    /// profile configures `rollback.automatic` and an earlier release
    /// exists, records the attempt as a failed release and restores the
    /// earlier one, as helm's `--atomic` does. A failed rollout is a failed
    /// health check, whatever the step. `None` when there is nothing to
    /// do: the caller audits the failure as before. Interrupted runs are
    /// never rolled back: the user asked to stop.
    pub(super) async fn after_failed_apply(
        &self,
        applied: &RunReport,
        detail: &str,
    ) -> Result<Option<ReleaseReport>, OpsError> {
        if applied.outcome != RunOutcome::Failed
            || self.cancel.is_cancelled()
            || !automatic_rollback_configured(self.profile)
        {
            return Ok(None);
        }
        let Some(previous) = self.releases.current().await? else {
            return Ok(None);
        };
        let (name, observed) = match applied.first_error() {
            Some(step) => (
                step.id.to_string(),
                step.error
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "failed".into()),
            ),
            None => ("deploy".to_string(), run_failure(applied)),
        };
        let check = Check {
            name,
            kind: "rollout".into(),
            passed: false,
            evaluated: true,
            observed,
            elapsed: applied.duration,
        };
        let release = self
            .record_as(
                self.profile,
                &applied.run_id,
                format!("deploy failed: {}: {}", check.name, check.observed),
                ReleaseStatus::Failed,
            )
            .await?;
        self.store
            .append_audit(&AuditEntry::now(
                "deploy",
                &self.environment,
                Some(&applied.run_id),
                format!(
                    "{detail}; release {} failed: {}: {}",
                    release.revision, check.name, check.observed
                ),
            ))
            .await?;
        let rolled = self.automatic_rollback(&release, &previous, &check).await?;
        let mut report = ReleaseReport {
            revision: release.revision,
            checks: vec![check],
            after_failure: Some(AfterFailure::RolledBack(rolled)),
            pruned: Vec::new(),
        };
        report.pruned = self.prune().await?;
        Ok(Some(report))
    }

    async fn automatic_rollback(
        &self,
        failed: &Release,
        previous: &Release,
        check: &Check,
    ) -> Result<AutomaticRollbackReport, OpsError> {
        let reason = format!("{}: {}", check.name, check.observed);
        self.set_status(failed, ReleaseStatus::Failed).await?;
        self.sink.emit(&Event::RollbackStarted {
            automatic: true,
            from: Some(failed.revision),
            to: previous.revision,
            reason: reason.clone(),
        });
        let mut report = AutomaticRollbackReport {
            to: previous.revision,
            applied: None,
            revision: None,
            checks: Vec::new(),
            error: None,
        };
        let restored = match previous.pinned_profile() {
            Ok(p) => Some(p),
            Err(e) => {
                report.error = Some(format!(
                    "the profile of release {} cannot be read: {e}",
                    previous.revision
                ));
                None
            }
        };
        let mut run_id = None;
        if let Some(profile) = &restored {
            match self.converge(profile, None).await {
                Ok((planned, applied)) => {
                    let done = applied.as_ref().unwrap_or(&planned);
                    run_id = Some(done.run_id.clone());
                    if done.outcome != RunOutcome::Succeeded {
                        report.error = Some(run_failure(done));
                    }
                    report.applied = applied;
                }
                Err(e) => report.error = Some(e.to_string()),
            }
        }
        if let (Some(profile), Some(run_id), None) = (&restored, &run_id, &report.error) {
            let release = self
                .record(
                    profile,
                    run_id,
                    format!("automatic rollback to {} ({reason})", previous.revision),
                )
                .await?;
            report.revision = Some(release.revision);
            report.checks = self.verify(profile, release.revision).await;
        }
        let outcome = if report.revision.is_some() {
            RunOutcome::Succeeded
        } else {
            RunOutcome::Failed
        };
        self.sink.emit(&Event::RollbackFinished {
            automatic: true,
            to: previous.revision,
            revision: report.revision,
            outcome,
        });
        let detail = match (&report.error, report.revision) {
            (None, Some(revision)) => format!(
                "rolled back release {} to release {} as release {revision} after {reason}{}",
                failed.revision,
                previous.revision,
                verification_note(&report.checks)
            ),
            (e, _) => format!(
                "automatic rollback of release {} to release {} after {reason} failed: {}",
                failed.revision,
                previous.revision,
                e.as_deref().unwrap_or("unknown")
            ),
        };
        self.store
            .append_audit(&AuditEntry::now(
                "automatic_rollback",
                &self.environment,
                run_id.as_deref(),
                detail,
            ))
            .await?;
        Ok(report)
    }
}

pub(super) fn run_failure(report: &RunReport) -> String {
    match report.first_error() {
        Some(s) => format!(
            "step {} failed: {}",
            s.id,
            s.error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
        None => format!(
            "the run ended {}",
            crate::journal::outcome_name(report.outcome)
        ),
    }
}

pub(super) fn verification_note(checks: &[Check]) -> String {
    match checks.iter().find(|c| c.failed()) {
        None => format!(", verification passed ({})", super::checks_summary(checks)),
        Some(c) => format!(", verification failed: {}: {}", c.name, c.observed),
    }
}

/// Every kept release of the environment, oldest first.
pub async fn history(profile: &Profile, provider: &dyn Provider) -> Result<Vec<Release>, OpsError> {
    let releases = provider
        .releases(profile)
        .ok_or_else(|| OpsError::NoReleases {
            target: provider.name().to_string(),
        })?;
    Ok(releases.list().await?)
}
