//! Operations: what the commands do, knowing nothing of the CLI.
//!
//! One file per verb, each an options struct and a function, as in helm's
//! `pkg/action`. A [`Provider`] turns a profile into steps for its target;
//! the operation takes the lock, plans, asks for confirmation through a
//! callback, applies, journals and audits. Dry runs are plans: the same code
//! path, stopping before the first mutating call.

pub mod checklist;
mod deploy;
mod lock;
mod plan;
mod releases;
mod status;

pub use deploy::{DeployOptions, DeployOutcome, deploy, destroy};
pub use lock::{Broken, LockGuard, break_lock, lock_status};
pub use plan::{PlanOptions, plan};
pub use releases::{
    AfterFailure, AutomaticRollbackReport, ReleaseReport, RollbackOptions, RollbackOutcome,
    automatic_rollback_configured, history, rollback,
};
pub use status::{EnvironmentStatus, status};

use crate::engine::{GraphError, Step, StepId};
use crate::events::EventSink;
use crate::profile::Profile;
use crate::release::ReleaseStore;
use crate::state::{Lease, StateError};
use async_trait::async_trait;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
/// See [`Provider::secrets_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsOrder {
    /// Before anything asks Vault: the network, volumes, a Vault server's
    /// own container.
    Before,
    /// After Vault is initialized and the managed secrets exist, before
    /// the broker user is made: the services that take those secrets.
    AfterSecrets,
    /// After everything: the workloads.
    AfterAll,
}

/// The output a target's step sets to `true` when it starts a server in
/// this run (a Vault, a broker): such a server cannot be asked at plan
/// time, so the steps after it say what happens once it runs.
pub const STARTS_OUTPUT: &str = "starts";

/// One port of the pods of a server the target runs (a Vault's nodes, a
/// broker's management API), as taskctl reaches them now (on Kubernetes:
/// port-forwards through the API server).
#[async_trait]
pub trait PodPorts: Send + Sync {
    /// One entry per pod, in ordinal order: its name (`vault-0`) and the
    /// address taskctl uses for it (`http://127.0.0.1:PORT`). An empty
    /// list: none runs yet.
    async fn nodes(&self) -> Result<Vec<(String, String)>, OpsError>;
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// `aws`, `docker`, `kubernetes`.
    fn name(&self) -> &str;

    /// The layers this provider implements.
    fn layers(&self) -> Vec<Layer>;

    /// Checks the profile against the real target before anything changes,
    /// for the layers in `scope`.
    async fn preflight(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Finding>, OpsError>;

    /// The steps that make the target match the profile, within `scope`.
    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError>;

    /// Where `step` stands relative to the steps that make the profile's
    /// secrets (a Vault taskctl initializes, the managed secrets, the
    /// broker user): by default after all of them.
    fn secrets_order(&self, _step: &StepId) -> SecretsOrder {
        SecretsOrder::AfterAll
    }

    /// How to reach the nodes of the Vault this target runs for the profile
    /// when the profile leaves their addresses to the target
    /// (`services.vault.cluster` without `nodes`); `None` otherwise.
    fn vault_nodes(&self, _profile: &Profile) -> Option<Arc<dyn PodPorts>> {
        None
    }

    /// How to reach the management API of the broker this target runs for
    /// the profile (RabbitMQ in the cluster), to change its users'
    /// passwords; `None` when the target runs none or cannot reach it.
    fn broker_management(&self, _profile: &Profile) -> Option<Arc<dyn PodPorts>> {
        None
    }

    /// The layers a release holds, which a rollback restores: all of
    /// [`Provider::layers`] unless the target says otherwise (the `aws`
    /// target's releases are the cluster's contents; its infrastructure's
    /// history is the journal).
    fn release_layers(&self) -> Vec<Layer> {
        self.layers()
    }

    /// Where the target keeps its releases; `None` when it has none (the
    /// AWS infrastructure layer: its history is the journal).
    fn releases(&self, _profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        None
    }

    /// What the environment runs now, for the release record: images by
    /// digest, configuration hashes, secret references. Called after a
    /// successful apply.
    async fn observe_release(&self, _profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        Ok(ReleaseFacts::default())
    }

    /// Checks the environment after an apply: the profile's verification
    /// gates, then its automatic-rollback conditions. An empty list means
    /// the target has nothing to verify. The operation emits a
    /// `check_finished` event for every returned check, so providers only
    /// report progress in between; an `Err` counts as a failed check named
    /// `verification` (a release that cannot be verified is not a good one).
    async fn verify(
        &self,
        _profile: &Profile,
        _sink: Arc<dyn EventSink>,
        _cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        Ok(Vec::new())
    }

    /// Checks that the backups a manual rollback may need exist and can be
    /// read (`rollback.manual.prerequisites: backup_verification`), before
    /// anything changes. `Ok(Some(what))` says what was verified;
    /// `Ok(None)` means the target keeps no backups, so there is nothing to
    /// verify (the rollback says so and audits it); an error stops the
    /// rollback.
    async fn verify_backups(
        &self,
        _profile: &Profile,
        _target: &crate::release::Release,
    ) -> Result<Option<String>, OpsError> {
        Ok(None)
    }

    /// Checks a manual rollback's prerequisite that is not a built-in (a
    /// plugin's), before anything changes: `Ok(what it saw)` when it holds,
    /// an error saying why not otherwise.
    async fn prerequisite(
        &self,
        _profile: &Profile,
        name: &str,
        _target: &crate::release::Release,
    ) -> Result<String, OpsError> {
        Err(OpsError::Prerequisite(format!(
            "rollback prerequisite `{name}` is a plugin, and this provider runs none; the rollback cannot be allowed, nothing was changed"
        )))
    }

    /// What the deployment checklist can see of the running environment
    /// (`checklist::Probe`s: listeners, unauthenticated APIs, loaded alerts,
    /// whether the newest backup restores); `None` when nothing is deployed
    /// or the target has no such view.
    async fn checklist_probes(
        &self,
        _profile: &Profile,
    ) -> Result<Option<Vec<checklist::Probe>>, OpsError> {
        Ok(None)
    }

    /// What runs now, one entry per container (or pod), for `status`;
    /// `None` when the target has no such view.
    async fn workloads(&self, _profile: &Profile) -> Result<Option<Vec<Workload>>, OpsError> {
        Ok(None)
    }
}

/// One running unit of an environment (a container, a pod), as `status`
/// shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub name: String,
    /// `agent`, `service`.
    pub role: String,
    /// `running`, `exited`, `restarting`, …
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or `none` without a health check.
    pub health: String,
    /// The image id's first 12 hex digits.
    pub image: String,
    /// The release that runs it (its revision), or the run that made it
    /// when no kept release names that run; empty when the target cannot
    /// tell.
    pub release: String,
    /// Restarts of its containers.
    pub restarts: u32,
    /// Why its container last ended (`OOMKilled`, `Error`), when it did.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_termination: String,
    /// The node it runs on (Kubernetes).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

/// What a provider observed of a deployed environment (see
/// [`crate::release::Release`] for the meaning of each field).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReleaseFacts {
    pub images: BTreeMap<String, String>,
    pub config_hashes: BTreeMap<String, String>,
    pub secret_refs: Vec<String>,
    pub secret_versions: BTreeMap<String, u64>,
}

/// The result of one verification gate or rollback condition.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Check {
    /// `check_service_health/automated-task-executor-1`, `high_error_rate`.
    pub name: String,
    /// `tcp`, `http`, `metric`, `functional`, `condition`.
    pub kind: String,
    /// It was evaluated and found good. False both when it failed and when
    /// it could not be evaluated (see `evaluated`).
    pub passed: bool,
    /// Whether the check could look at what it checks at all. A check that
    /// was not evaluated is reported as such, never as passed, and does
    /// not fail the deploy either.
    pub evaluated: bool,
    /// The value the check saw, for people: `HTTP 503 "not ready"`.
    pub observed: String,
    #[serde(with = "humantime_serde_secs")]
    pub elapsed: Duration,
}

impl Check {
    /// Evaluated and found bad: what fails a deploy.
    pub fn failed(&self) -> bool {
        self.evaluated && !self.passed
    }
}

/// How a list of checks reads in one phrase: `3 check(s) passed`, with
/// `, 2 not evaluated` when some could not look at what they check.
pub fn checks_summary(checks: &[Check]) -> String {
    let not_evaluated = checks.iter().filter(|c| !c.evaluated).count();
    let passed = checks.iter().filter(|c| c.passed).count();
    match not_evaluated {
        0 => format!("{passed} check(s) passed"),
        n => format!("{passed} check(s) passed, {n} not evaluated"),
    }
}

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let secs = <f64 as serde::Deserialize>::deserialize(d)?;
        Ok(std::time::Duration::try_from_secs_f64(secs).unwrap_or_default())
    }
}

/// What identifies an environment's state: the profile's name and the
/// environment in force.
pub fn environment_key(profile: &Profile) -> String {
    profile.environment_key()
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Another deploy, destroy or rollback holds the environment's lock.
    #[error("{environment} is locked by {} (run {}, {} since {}, expires {})", .lease.holder, .lease.run_id, .lease.operation, .lease.started(), .lease.expires())]
    Locked {
        environment: String,
        // Boxed: the largest variant otherwise, and every Result<_, OpsError> pays for it.
        lease: Box<Lease>,
    },
    /// The run's lease was lost while it ran (broken, taken over, or not
    /// renewable): it stopped before its next change.
    #[error(
        "{environment}: {why}; the run stopped before its next change and its journal says where. Once the lock is yours again (`taskctl lock status`), run the command again to resume"
    )]
    LockLost { environment: String, why: String },
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
    /// The target keeps no releases, so there is no history to show or
    /// roll back to.
    #[error(
        "no releases on this target: the `{target}` target keeps none (its history is the journal: `taskctl status`), so there is nothing to list or roll back to"
    )]
    NoReleases { target: String },
    /// A release cannot be used as asked: unknown revision, unreadable
    /// profile, nothing earlier to roll back to.
    #[error("{0}")]
    Release(String),
    /// A prerequisite of a manual rollback does not hold.
    #[error("{0}")]
    Prerequisite(String),
}
