//! Operations: what the commands do, knowing nothing of the CLI.
//!
//! One file per verb, each an options struct and a function, as in helm's
//! `pkg/action`. A [`Provider`] turns a profile into steps for its target;
//! the operation takes the lock, plans, asks for confirmation through a
//! callback, applies, journals and audits. Dry runs are plans: the same code
//! path, stopping before the first mutating call.

mod deploy;
mod lock;
mod plan;
mod status;

pub use deploy::{DeployOptions, DeployOutcome, deploy, destroy};
pub use lock::{LockGuard, break_lock, lock_status};
pub use plan::{PlanOptions, plan};
pub use status::{EnvironmentStatus, status};

use crate::engine::{GraphError, Step};
use crate::profile::Profile;
use crate::state::{Lease, StateError};
use async_trait::async_trait;
use serde::Serialize;
use std::sync::Arc;

/// The layers of a deployment, in the order they are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Network, cluster and node groups.
    Infrastructure,
    /// In-cluster or on-host platform services.
    Services,
    /// The agents.
    Agents,
}

/// Which layers an operation covers (`--only`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(pub Vec<Layer>);

impl Scope {
    pub fn all() -> Self {
        Scope(vec![Layer::Infrastructure, Layer::Services, Layer::Agents])
    }

    pub fn includes(&self, layer: Layer) -> bool {
        self.0.contains(&layer)
    }
}

/// A preflight finding: something checked against the real target.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: crate::Severity,
    pub check: String,
    pub message: String,
}

/// A deployment target's implementation.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `aws`, `docker`, `kubernetes`.
    fn name(&self) -> &str;

    /// The layers this provider implements.
    fn layers(&self) -> Vec<Layer>;

    /// Checks the profile against the real target before anything changes.
    async fn preflight(&self, profile: &Profile) -> Result<Vec<Finding>, OpsError>;

    /// The steps that make the target match the profile, within `scope`.
    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError>;
}

/// What identifies an environment's state: the profile's name and the
/// environment in force.
pub fn environment_key(profile: &Profile) -> String {
    format!("{}/{}", profile.metadata.name, profile.metadata.environment)
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Another deploy, destroy or rollback holds the environment's lock.
    #[error("{environment} is locked by {} (run {}, {} since {}, expires {})", .lease.holder, .lease.run_id, .lease.operation, .lease.started(), .lease.expires())]
    Locked { environment: String, lease: Lease },
    /// The state backend failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The steps do not form a valid graph (a provider bug).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The journal could not be written.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// Preflight found errors.
    #[error("preflight failed: {0}")]
    Preflight(String),
    /// The provider cannot do what was asked.
    #[error("{0}")]
    Provider(String),
    /// The user declined the confirmation, or confirmation was needed where
    /// nobody can give it.
    #[error("{0}")]
    NotConfirmed(String),
    /// A saved plan is for another environment or format.
    #[error("{0}")]
    BadPlan(String),
}
