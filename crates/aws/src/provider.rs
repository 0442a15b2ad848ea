//! The `aws` target as an engine [`Provider`]: preflight, and the
//! infrastructure layer (VPC to node groups) as one step.
//!
//! The step wraps [`stack::ensure`], which observes and makes every
//! resource in dependency order: its plan is `ensure` in plan mode (no
//! mutating call), its apply is `ensure` in apply mode, its destroy is
//! [`destroy::destroy`] followed by [`destroy::sweep`]. One step rather than
//! one per resource is a known limit of this first wiring: the journal
//! records the layer's intent and outcome, not each resource's, and the
//! resources are made one after another rather than in parallel where the
//! graph would allow. Every resource is found by its tags, so an interrupted
//! run is still resumed without duplicates.

use crate::Aws;
use crate::destroy::{DestroyOptions, destroy, sweep};
use crate::error::{AwsError, ErrorKind as AwsKind};
use crate::stack::{self, Action as AwsAction, EnsureOptions, Mode, StackSpec};
use crate::wait::Progress;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use taskctl_core::engine::{
    Action, Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::ops::{Finding, Layer, OpsError, Provider, Scope};
use taskctl_core::profile::Profile;

pub struct AwsProvider {
    aws: Arc<Aws>,
}

impl AwsProvider {
    /// Clients from the standard AWS environment (credential chain,
    /// `AWS_PROFILE`, `AWS_ENDPOINT_URL…`) for `region`.
    pub async fn from_env(region: &str) -> Result<Self, AwsError> {
        Ok(AwsProvider {
            aws: Arc::new(Aws::from_env(region).await?),
        })
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    fn layers(&self) -> Vec<Layer> {
        vec![Layer::Infrastructure]
    }

    async fn preflight(&self, profile: &Profile) -> Result<Vec<Finding>, OpsError> {
        Ok(crate::preflight(&self.aws, profile)
            .await
            .into_iter()
            .map(|f| Finding {
                severity: f.severity,
                check: f.check.to_string(),
                message: f.message,
            })
            .collect())
    }

    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        if !scope.includes(Layer::Infrastructure) {
            return Ok(Vec::new());
        }
        Ok(vec![Arc::new(Infrastructure {
            id: StepId::new("aws/infrastructure"),
            aws: self.aws.clone(),
            profile: profile.clone(),
        })])
    }
}

struct Infrastructure {
    id: StepId,
    aws: Arc<Aws>,
    profile: Profile,
}

fn step_error(e: AwsError) -> StepError {
    let kind = match e.kind {
        AwsKind::NotFound => ErrorKind::NotFound,
        AwsKind::AlreadyExists => ErrorKind::AlreadyExists,
        AwsKind::Throttled => ErrorKind::Throttled,
        AwsKind::Denied => ErrorKind::Denied,
        AwsKind::Conflict => ErrorKind::Conflict,
        AwsKind::Transient => ErrorKind::Transient,
        AwsKind::Invalid => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    };
    let request_id = e.request_id.clone();
    StepError {
        kind,
        message: e.to_string(),
        request_id,
    }
}

fn report(ctx: &StepContext) -> impl FnMut(&Progress) + Send + '_ {
    move |p: &Progress| {
        ctx.progress(&format!(
            "waiting for {}: {} ({}s)",
            p.resource,
            p.status,
            p.elapsed.as_secs()
        ))
    }
}

impl Infrastructure {
    fn spec(&self, ctx: &StepContext) -> Result<StackSpec, StepError> {
        StackSpec::from_profile(&self.profile, &ctx.run_id).map_err(step_error)
    }
}

#[async_trait]
impl Step for Infrastructure {
    fn id(&self) -> &StepId {
        &self.id
    }

    fn kind(&self) -> &str {
        "aws-infrastructure"
    }

    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }

    fn timeout(&self) -> Duration {
        // NAT gateways, then the cluster (up to 25 min), then node groups
        // (up to 20 min), with room for retries.
        Duration::from_secs(75 * 60)
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let mut spec = self.spec(ctx)?;
        let changes = stack::ensure(
            &self.aws,
            &mut spec,
            EnsureOptions::new(Mode::Plan),
            &mut report(ctx),
        )
        .await
        .map_err(step_error)?;
        let pending: Vec<_> = changes
            .iter()
            .filter(|c| c.action != AwsAction::NoOp)
            .collect();
        let outputs: Outputs = [("cluster".to_string(), spec.cluster.name.clone())].into();
        if pending.is_empty() {
            return Ok(StepPlan {
                change: Change::none(),
                outputs,
            });
        }
        let count = |a: AwsAction| pending.iter().filter(|c| c.action == a).count();
        let (create, update, replace) = (
            count(AwsAction::Create),
            count(AwsAction::Update),
            count(AwsAction::Replace),
        );
        let action = if create == changes.len() {
            Action::Create
        } else {
            Action::Update
        };
        let diffs = pending
            .iter()
            .map(|c| {
                let detail: Vec<String> = c.diffs.iter().map(|d| d.to_string()).collect();
                FieldDiff::new(
                    c.resource.clone(),
                    c.action,
                    if detail.is_empty() {
                        "as the profile says".to_string()
                    } else {
                        detail.join(", ")
                    },
                )
            })
            .collect();
        let mut reason = format!("{create} to create, {update} to update");
        if replace > 0 {
            reason += &format!(
                ", {replace} differ in ways AWS cannot change in place (left as they are)"
            );
        }
        Ok(StepPlan {
            change: Change {
                action,
                diffs,
                reason,
            },
            outputs,
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let mut spec = self.spec(ctx)?;
        stack::ensure(
            &self.aws,
            &mut spec,
            EnsureOptions::new(Mode::Apply),
            &mut report(ctx),
        )
        .await
        .map_err(step_error)?;
        Ok([("cluster".to_string(), spec.cluster.name.clone())].into())
    }

    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let spec = self.spec(ctx)?;
        let removed = destroy(&self.aws, &spec, DestroyOptions::new(), &mut report(ctx))
            .await
            .map_err(step_error)?;
        // Whatever in-cluster controllers or an interrupted run left with the
        // environment's tags.
        let swept = sweep(
            &self.aws,
            &spec.environment,
            DestroyOptions::new(),
            &mut report(ctx),
        )
        .await
        .map_err(step_error)?;
        ctx.progress(&format!(
            "removed {} resources, then {} more by tag",
            removed.len(),
            swept.len()
        ));
        Ok(())
    }
}
