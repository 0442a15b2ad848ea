//! `status`: who holds the lock and what the last run did.

use super::OpsError;
use crate::journal::{LastRun, last_run};
use crate::state::{Lease, StateStore};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct EnvironmentStatus {
    pub environment: String,
    pub state: String,
    pub lock: Option<Lease>,
    pub last_run: Option<LastRunView>,
    /// What runs, on targets that can say (the CLI asks the provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workloads: Option<Vec<super::Workload>>,
    /// Why the workloads could not be listed (the engine does not answer):
    /// the rest of the status still stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workloads_error: Option<String>,
    /// The release running now and what its verification saw, on targets
    /// that keep releases (the CLI asks the provider's release store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseView>,
}

/// The running release, as `status` shows it.
#[derive(Debug, Serialize)]
pub struct ReleaseView {
    pub revision: u32,
    pub status: crate::release::ReleaseStatus,
    pub description: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Every gate and condition of its verification with its last value.
    pub checks: Vec<super::Check>,
}

impl From<crate::release::Release> for ReleaseView {
    fn from(r: crate::release::Release) -> Self {
        ReleaseView {
            revision: r.revision,
            status: r.status,
            description: r.description,
            created_at: r.created_at,
            checks: r.checks,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LastRunView {
    pub run: String,
    pub operation: String,
    /// `succeeded`, `failed`, `interrupted`, or `unfinished` when the
    /// process died without saying.
    pub outcome: String,
    pub completed_steps: usize,
    /// Changes started and never finished: the next run re-observes them.
    pub in_flight: Vec<String>,
}

impl From<LastRun> for LastRunView {
    fn from(l: LastRun) -> Self {
        LastRunView {
            run: l.run,
            operation: l.operation,
            outcome: l.finished.unwrap_or_else(|| "unfinished".into()),
            completed_steps: l.completed,
            in_flight: l
                .in_flight
                .into_iter()
                .map(|(s, a)| format!("{a} {s}"))
                .collect(),
        }
    }
}

pub async fn status(
    store: &dyn StateStore,
    environment: &str,
) -> Result<EnvironmentStatus, OpsError> {
    let journal = store.journal().await?;
    Ok(EnvironmentStatus {
        environment: environment.to_string(),
        state: store.location(),
        lock: store.current_lock().await?,
        last_run: last_run(&journal).map(Into::into),
        workloads: None,
        workloads_error: None,
        release: None,
    })
}
