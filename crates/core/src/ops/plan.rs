//! `plan`: what a deploy would change, per resource, with reasons.

use super::{OpsError, Provider, Scope, environment_key};
use crate::engine::{self, Graph, RetryPolicy, Run, RunReport};
use crate::events::{EventSink, Operation};
use crate::profile::Profile;
use crate::state::StateStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct PlanOptions {
    pub scope: Scope,
    pub parallelism: usize,
}

/// Observes every resource in scope and returns the planned changes. Makes
/// no mutating call and takes no lock.
pub async fn plan(
    profile: &Profile,
    provider: &dyn Provider,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn EventSink>,
    options: &PlanOptions,
) -> Result<RunReport, OpsError> {
    let graph = Graph::new(provider.steps(profile, &options.scope)?)?;
    let run = Run {
        run_id: Run::new_id(),
        environment: environment_key(profile),
        operation: Operation::Plan,
        parallelism: options.parallelism,
        grace: Duration::ZERO,
        retry: RetryPolicy::default(),
        store,
        sink,
        cancel: CancellationToken::new(),
        saved_plan: None,
        resumes: None,
    };
    Ok(engine::plan(&graph, &run).await)
}
