//! What a step is: one resource the engine manages.
//!
//! A step knows how to observe the world and compare it with the profile
//! ([`Step::plan`]), and how to make the world match ([`Step::apply`]) or go
//! away ([`Step::destroy`]). Steps are idempotent: calling `apply` again
//! after any interruption finds what exists (by the tags it put there) and
//! finishes the job instead of duplicating it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A step's stable identity, e.g. `network/subnet/public/us-west-2a`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(pub String);

impl StepId {
    pub fn new(id: impl Into<String>) -> Self {
        StepId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a step found or made that later steps need (ids, ARNs, endpoints).
/// Never secret values.
pub type Outputs = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
    NoOp,
}

impl Action {
    pub fn is_change(&self) -> bool {
        !matches!(self, Action::NoOp)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::NoOp => "no-op",
        })
    }
}

/// One attribute that differs. Values are printable: secrets appear as
/// references or hashes, never as values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    pub from: String,
    pub to: String,
}

impl FieldDiff {
    pub fn new(field: impl Into<String>, from: impl fmt::Display, to: impl fmt::Display) -> Self {
        FieldDiff {
            field: field.into(),
            from: from.to_string(),
            to: to.to_string(),
        }
    }
}

/// What a step would do, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<FieldDiff>,
    /// One line for people: "not found", "scaling differs", "up to date".
    pub reason: String,
}

impl Change {
    pub fn create(reason: impl Into<String>) -> Self {
        Change {
            action: Action::Create,
            diffs: Vec::new(),
            reason: reason.into(),
        }
    }

    pub fn update(diffs: Vec<FieldDiff>) -> Self {
        let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
        let reason = format!(
            "{} differ{}",
            fields.join(", "),
            if fields.len() == 1 { "s" } else { "" }
        );
        Change {
            action: Action::Update,
            diffs,
            reason,
        }
    }

    pub fn delete(reason: impl Into<String>) -> Self {
        Change {
            action: Action::Delete,
            diffs: Vec::new(),
            reason: reason.into(),
        }
    }

    pub fn none() -> Self {
        Change {
            action: Action::NoOp,
            diffs: Vec::new(),
            reason: "up to date".into(),
        }
    }
}

/// A step's plan: the change, and what it observed (outputs of an existing
/// resource, so dependents can be planned against it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub change: Change,
    pub outputs: Outputs,
}

/// Kinds of failure the engine reasons about; providers map their errors to
/// these once, at their edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    Throttled,
    Denied,
    Conflict,
    /// 5xx answers, connection errors: worth retrying.
    Transient,
    /// The request or the profile is wrong: retrying cannot help.
    Invalid,
    Timeout,
    Cancelled,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
    /// The provider's request id, for support tickets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl StepError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StepError {
            kind,
            message: message.into(),
            request_id: None,
        }
    }

    /// Only throttling and transient failures are retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }
}

/// Receives a step's progress messages.
pub type ProgressFn = Arc<dyn Fn(&StepId, &str) + Send + Sync>;

/// What a step sees while it runs: its dependencies' outputs, a way to
/// report progress, and the run's cancellation.
#[derive(Clone)]
pub struct StepContext {
    pub step: StepId,
    pub run_id: String,
    deps: Arc<BTreeMap<StepId, Outputs>>,
    progress: ProgressFn,
    cancel: CancellationToken,
}

impl StepContext {
    pub(crate) fn new(
        step: StepId,
        run_id: String,
        deps: BTreeMap<StepId, Outputs>,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Self {
        StepContext {
            step,
            run_id,
            deps: Arc::new(deps),
            progress,
            cancel,
        }
    }

    /// Whether `dep` is one of this step's dependencies in this run.
    /// Every dependency's outputs.
    pub fn dep_outputs(&self) -> impl Iterator<Item = (&StepId, &Outputs)> {
        self.deps.iter()
    }

    pub fn has_dep(&self, dep: &StepId) -> bool {
        self.deps.contains_key(dep)
    }

    /// An output of a dependency; `None` while the dependency does not exist
    /// yet (during a plan of something not yet created).
    pub fn dep_output(&self, dep: &StepId, key: &str) -> Option<&str> {
        self.deps.get(dep)?.get(key).map(String::as_str)
    }

    /// Reports what the step is doing or waiting for.
    pub fn progress(&self, message: &str) {
        (self.progress)(&self.step, message);
    }

    /// Cancelled when the run is interrupted and the grace period is over;
    /// long waits should stop at it.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// One resource the engine manages.
#[async_trait]
pub trait Step: Send + Sync {
    fn id(&self) -> &StepId;

    /// Kind of resource, for display: `vpc`, `subnet`, `eks-cluster`.
    fn kind(&self) -> &str;

    /// Steps whose outputs this one needs; they run first.
    fn depends_on(&self) -> Vec<StepId>;

    /// How long `apply` may take before the engine gives up on it.
    fn timeout(&self) -> Duration {
        Duration::from_secs(300)
    }

    /// Observes the current state and compares it with the profile. Must not
    /// change anything.
    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError>;

    /// Makes the world match the profile, as `plan` described; returns the
    /// outputs. Must be idempotent.
    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError>;

    /// Removes the resource if it exists. Must be idempotent.
    async fn destroy(&self, ctx: &StepContext, plan: &StepPlan) -> Result<(), StepError>;
}

/// A step that also waits for `extra` steps: how a layer added around a
/// target's steps (the secrets, plugins) puts itself before them.
pub struct After {
    pub inner: Arc<dyn Step>,
    pub extra: Vec<StepId>,
}

#[async_trait]
impl Step for After {
    fn id(&self) -> &StepId {
        self.inner.id()
    }
    fn kind(&self) -> &str {
        self.inner.kind()
    }
    fn depends_on(&self) -> Vec<StepId> {
        let mut deps = self.inner.depends_on();
        deps.extend(self.extra.iter().cloned());
        deps
    }
    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }
    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        self.inner.plan(ctx).await
    }
    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        self.inner.apply(ctx, plan).await
    }
    async fn destroy(&self, ctx: &StepContext, plan: &StepPlan) -> Result<(), StepError> {
        self.inner.destroy(ctx, plan).await
    }
}
