//! The `kubernetes` target: the rendered manifests applied to a cluster.
//!
//! One engine step per [`ApplyLevel`] (`kubernetes/namespaces`,
//! `kubernetes/rbac`, … `kubernetes/autoscalers`), each depending on the
//! previous one, then `kubernetes/prune`. Within a level, objects are
//! independent by construction, so a step applies them in parallel
//! (bounded by [`KubeOptions::parallelism`]) by server-side apply as field
//! manager `taskctl`, then waits until its workloads are ready, failing
//! fast on pods that will not heal by waiting (CrashLoopBackOff, image pull
//! errors) and on failed Jobs.
//!
//! `plan` reads every object and compares the rendered one with what is
//! live on the fields taskctl sets ([`crate::diff`]); only objects that
//! differ are applied, so an upgrade that changes one value sends one
//! PATCH.
//!
//! Before its first change, a step takes the environment's Lease in the
//! cluster ([`crate::lock`]); the provider keeps it (renewed) until
//! [`KubernetesProvider::release_locks`] or until it is dropped (which
//! releases it too, from a multi-threaded runtime); a killed process's lease
//! expires, or is taken over at once by the next run on the same machine.

use crate::cluster::{self, step_error};
use crate::connect::{ClientSource, Connect};
use crate::diff::diff;
use crate::lock::{ClusterLock, LeaseGuard, LockError};
use crate::manifest::{ApplyLevel, Manifest};
use crate::readiness::{self, Readiness};
use crate::release::KubeReleaseStore;
use crate::resources::{self, Known};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskctl_core::Severity;
use taskctl_core::engine::{
    Action, Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::ops::{
    Check, Finding, Layer, OpsError, Provider, ReleaseFacts, Scope, SecretsOrder,
};
use taskctl_core::profile::Profile;
use taskctl_core::release::ReleaseStore;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod claims;
mod level;
mod observe;
mod prune;
mod vault;

use level::*;
pub use observe::*;
use prune::*;
pub use vault::taskctl_unseals;

/// How many more reads than writes are in flight at once.
pub const READS_PER_WRITE: usize = 4;

/// The first readiness poll's delay; later ones double up to
/// [`KubeOptions::poll_interval`].
pub(super) const FIRST_POLL: Duration = Duration::from_millis(250);

/// The label every rendered object carries: `<name>.<env>`.
pub const ENVIRONMENT_LABEL: &str = "taskctl.dev/environment";
pub(super) const MANAGED_BY: &str = "app.kubernetes.io/managed-by=taskctl";

/// How the provider applies.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The templates the manifests are rendered from (built in unless a
    /// directory overrides them).
    pub templates: crate::render::Templates,
    /// Take over fields another field manager owns instead of failing
    /// with the conflict (`kubectl apply --server-side --force-conflicts`).
    pub force_conflicts: bool,
    /// Let prune (and destroy) delete CRDs and Secrets too. Never data:
    /// PersistentVolumeClaims, PersistentVolumes and Namespaces (which
    /// take their claims with them) are left by prune whatever this says.
    pub prune_all: bool,
    /// `destroy --delete-data`: destroy also deletes the environment's
    /// PersistentVolumeClaims (those rendered and those the StatefulSets
    /// made from their templates), PersistentVolumes and Namespaces,
    /// naming each. Only ever set by destroy.
    pub delete_data: bool,
    /// Objects applied at once within a level; reads (plans, prune's
    /// lists) go [`READS_PER_WRITE`] times as wide, being cheap for the
    /// API server and most of a no-op deploy's time.
    pub parallelism: usize,
    /// How long a level may take, readiness included.
    pub step_timeout: Duration,
    /// How often readiness is polled at most (the first polls come
    /// sooner, doubling up to this).
    pub poll_interval: Duration,
    /// How long the cluster Lease outlives its last renewal.
    pub lock_ttl: Duration,
    /// Who holds the Lease; `user@host/pid` when `None`.
    pub holder: Option<String>,
    /// How long the automatic-rollback conditions are watched after a
    /// rollout; `None`: `TASKCTL_WATCH_WINDOW`, else 10 s.
    pub watch_window: Option<Duration>,
    /// Resolves the secret references of the rendered workloads. With one,
    /// the deploy makes every Secret they reference (the
    /// `kubernetes/secrets` step, before the workloads) and stamps each
    /// rolling workload with `taskctl.dev/secret-checksum`; without one,
    /// nothing is made and a referenced Secret missing from the cluster
    /// fails the plan (see [`crate::secrets`]).
    pub secrets: Option<Arc<taskctl_core::secrets::Secrets>>,
    /// Annotations the target adds to rendered objects: the `aws` target's
    /// IAM role on the in-cluster Vault's service account
    /// (`eks.amazonaws.com/role-arn`), whose ARN holds an account id no
    /// profile names. Not in `render manifests`, which reads no account.
    pub annotations: Vec<ExtraAnnotation>,
}

/// One annotation on one rendered object ([`KubeOptions::annotations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraAnnotation {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub value: String,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            templates: crate::render::Templates::Embedded,
            force_conflicts: false,
            prune_all: false,
            delete_data: false,
            parallelism: 8,
            step_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            lock_ttl: Duration::from_secs(120),
            holder: None,
            watch_window: None,
            secrets: None,
            annotations: Vec::new(),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) client: ClientSource,
    pub(crate) options: KubeOptions,
    /// Environment label → the Lease held for it.
    pub(super) locks: tokio::sync::Mutex<BTreeMap<String, LeaseGuard>>,
}

impl Shared {
    fn lock_for(&self, client: Client, environment: &str) -> ClusterLock {
        match &self.options.holder {
            Some(h) => {
                ClusterLock::with_holder(client, environment, self.options.lock_ttl, h.clone())
            }
            None => ClusterLock::new(client, environment, self.options.lock_ttl),
        }
    }

    /// Takes the environment's Lease unless this provider holds it already.
    pub(crate) async fn ensure_locked(
        &self,
        client: &Client,
        environment: &str,
    ) -> Result<(), StepError> {
        let mut locks = self.locks.lock().await;
        if locks.contains_key(environment) {
            return Ok(());
        }
        match self.lock_for(client.clone(), environment).acquire().await {
            Ok(guard) => {
                locks.insert(environment.to_string(), guard);
                Ok(())
            }
            Err(e @ LockError::Held { .. }) => {
                Err(StepError::new(ErrorKind::Conflict, e.to_string()))
            }
            Err(LockError::Api(e)) => Err(e),
        }
    }
}

impl Drop for Shared {
    /// Releases the leases still held when the provider goes away, so the
    /// next deploy need not wait for their expiry. Only possible from a
    /// multi-threaded runtime (taskctl's); elsewhere the leases expire.
    fn drop(&mut self) {
        let held = std::mem::take(self.locks.get_mut());
        if held.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                for guard in held.into_values() {
                    if let Err(e) = guard.release().await {
                        tracing::warn!("cannot release the cluster lease: {e}");
                    }
                }
            })
        });
    }
}

/// The provider of the `kubernetes` target.
pub struct KubernetesProvider {
    pub(super) shared: Arc<Shared>,
}

impl KubernetesProvider {
    /// Connects with the kubeconfig (`KUBECONFIG` or `~/.kube/config`) and
    /// the profile's `target.kubernetes.context`.
    pub async fn connect(profile: &Profile, options: KubeOptions) -> Result<Self, OpsError> {
        let context = profile
            .target
            .kubernetes
            .as_ref()
            .and_then(|k| k.context.as_deref());
        let client = cluster::client_from_kubeconfig(None, context)
            .await
            .map_err(|e| OpsError::Provider(e.to_string()))?;
        Ok(Self::with_client(client, options))
    }

    pub fn with_client(client: Client, options: KubeOptions) -> Self {
        Self::with_source(ClientSource::fixed(client), options)
    }

    /// A provider for a cluster that may not exist yet (the `aws`
    /// target's): `connect` makes the client when a step first needs it.
    pub fn deferred(connect: Arc<dyn Connect>, options: KubeOptions) -> Self {
        Self::with_source(ClientSource::deferred(connect), options)
    }

    fn with_source(client: ClientSource, options: KubeOptions) -> Self {
        KubernetesProvider {
            shared: Arc::new(Shared {
                client,
                options,
                locks: tokio::sync::Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The client, or `None` while the cluster does not exist.
    pub async fn client(&self) -> Result<Option<Client>, OpsError> {
        self.shared.client.get(None).await.map_err(ops_error)
    }

    /// Releases every Lease this provider holds (at the end of a run).
    pub async fn release_locks(&self) -> Result<(), OpsError> {
        let held: Vec<LeaseGuard> = std::mem::take(&mut *self.shared.locks.lock().await)
            .into_values()
            .collect();
        for guard in held {
            guard
                .release()
                .await
                .map_err(|e| OpsError::Provider(e.to_string()))?;
        }
        Ok(())
    }

    /// The manifests of `profile`, rendered and schema-checked.
    pub fn manifests(&self, profile: &Profile) -> Result<Vec<Manifest>, OpsError> {
        let mut manifests = crate::render_from(profile, &self.shared.options.templates)
            .map_err(|e| OpsError::Provider(error_chain(&e)))?;
        for m in &mut manifests {
            crate::check(m).map_err(|e| OpsError::Provider(error_chain(&e)))?;
            for a in &self.shared.options.annotations {
                if m.kind == a.kind
                    && m.name == a.name
                    && m.namespace.as_deref() == Some(a.namespace.as_str())
                    && let Some(meta) = m.value.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    let annotations = meta
                        .entry("annotations")
                        .or_insert_with(|| Value::Object(Default::default()));
                    if let Some(map) = annotations.as_object_mut() {
                        map.insert(a.key.clone(), Value::String(a.value.clone()));
                    }
                }
            }
        }
        Ok(manifests)
    }
}

pub(super) fn ops_error(e: StepError) -> OpsError {
    OpsError::Provider(e.to_string())
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `<name>.<env>`, the value of [`ENVIRONMENT_LABEL`].
pub fn environment_label(profile: &Profile) -> String {
    profile.environment_label()
}

/// The layer a rendered object belongs to: the agents' templates are the
/// agents layer, everything else the services.
pub(super) fn layer_of(m: &Manifest) -> Layer {
    if m.template.starts_with("agent/") {
        Layer::Agents
    } else {
        Layer::Services
    }
}

#[async_trait]
impl Provider for KubernetesProvider {
    fn name(&self) -> &str {
        "kubernetes"
    }

    fn layers(&self) -> Vec<Layer> {
        vec![Layer::Services, Layer::Agents]
    }

    async fn preflight(&self, profile: &Profile, _scope: &Scope) -> Result<Vec<Finding>, OpsError> {
        let mut findings = Vec::new();
        let (severity, message) = match self.shared.client.get(None).await {
            Ok(None) => (
                Severity::Note,
                "the cluster does not exist yet; its API is checked once it does".to_string(),
            ),
            Ok(Some(client)) => match client.apiserver_version().await {
                Ok(v) => (
                    Severity::Note,
                    format!("API server {} answers", v.git_version),
                ),
                Err(e) => (
                    Severity::Error,
                    format!("the API server does not answer: {e}"),
                ),
            },
            Err(e) => (Severity::Error, format!("cannot reach the cluster: {e}")),
        };
        findings.push(Finding {
            severity,
            check: "kubernetes-api".into(),
            message,
        });
        if let Err(e) = self.manifests(profile) {
            findings.push(Finding {
                severity: Severity::Error,
                check: "manifests".into(),
                message: e.to_string(),
            });
        }
        Ok(findings)
    }

    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        self.steps_after(profile, scope, Vec::new())
    }

    /// The levels up to storage and a Vault taskctl unseals come before
    /// the secrets' steps (they hold no secret, and Vault must run before
    /// anything asks it); the Secrets and the workloads after all of them.
    fn secrets_order(&self, step: &StepId) -> SecretsOrder {
        let before = [
            ApplyLevel::Namespaces,
            ApplyLevel::Rbac,
            ApplyLevel::Config,
            ApplyLevel::Storage,
        ]
        .iter()
        .map(|l| format!("kubernetes/{l}"))
        .chain([vault::VAULT_STEP.to_string()]);
        if before.into_iter().any(|id| id == step.as_str()) {
            SecretsOrder::Before
        } else {
            SecretsOrder::AfterAll
        }
    }

    fn vault_nodes(&self, profile: &Profile) -> Option<Arc<dyn taskctl_core::ops::PodPorts>> {
        vault::taskctl_unseals(profile)
            .then(|| Arc::new(vault::PodNodes::vault(self.shared.clone(), profile)) as _)
    }

    /// The in-cluster RabbitMQ's management API (port 15672 of its pods).
    fn broker_management(&self, profile: &Profile) -> Option<Arc<dyn taskctl_core::ops::PodPorts>> {
        let mq = profile
            .services
            .rabbitmq
            .as_ref()
            .filter(|r| r.enabled && r.external.is_none())?;
        let replicas = if mq.clustering.enabled {
            mq.clustering.replicas.max(1)
        } else {
            1
        };
        Some(Arc::new(vault::PodNodes::broker(self.shared.clone(), replicas)) as _)
    }

    fn releases(&self, profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        Some(Arc::new(KubeReleaseStore::with_source(
            self.shared.client.clone(),
            &environment_label(profile),
        )))
    }

    /// The verification gates and the automatic-rollback conditions,
    /// through port-forwards to the pods (see [`crate::verify`]).
    async fn verify(
        &self,
        profile: &Profile,
        _sink: Arc<dyn taskctl_core::events::EventSink>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        let window = crate::verify::window(self.shared.options.watch_window, profile)?;
        let manifests = self.manifests(profile)?;
        let workloads = manifests
            .iter()
            .filter(|m| m.kind == "Deployment" && layer_of(m) == Layer::Agents)
            .collect();
        let client = self
            .shared
            .client
            .require(None, "verifying the rollout")
            .await
            .map_err(ops_error)?;
        // Without a resolver, only literal values reach the gates.
        let secrets = match &self.shared.options.secrets {
            Some(s) => s.clone(),
            None => Arc::new(taskctl_core::secrets::Secrets::new(
                None,
                Default::default(),
            )),
        };
        crate::verify::verify(
            &client, profile, &manifests, workloads, &secrets, window, cancel,
        )
        .await
    }

    /// Every pod of the environment (by its label): phase, readiness,
    /// restarts, the last termination's reason, the image digest and the
    /// node; agents first.
    async fn workloads(
        &self,
        profile: &Profile,
    ) -> Result<Option<Vec<taskctl_core::ops::Workload>>, OpsError> {
        let client = self
            .shared
            .client
            .require(None, "listing the pods")
            .await
            .map_err(ops_error)?;
        let agents: BTreeSet<&str> = profile.agents.iter().map(|a| a.name.as_str()).collect();
        observe::pods(&client, &environment_label(profile), &agents)
            .await
            .map(Some)
            .map_err(ops_error)
    }

    async fn observe_release(&self, profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        let client = self
            .shared
            .client
            .require(None, "observing the release")
            .await
            .map_err(ops_error)?;
        let mut facts = observe(&client, &environment_label(profile))
            .await
            .map_err(ops_error)?;
        // The KV versions this run's Secrets were made from: a rollback
        // pins them and so restores the credentials of that release.
        if let Some(secrets) = &self.shared.options.secrets {
            facts.secret_versions = secrets.versions_used();
        }
        Ok(facts)
    }
}

impl KubernetesProvider {
    /// The steps of [`Provider::steps`], each of which also waits for
    /// `after` (the `aws` target's cluster and node groups come first, and
    /// every level's context then holds the cluster step's outputs).
    pub fn steps_after(
        &self,
        profile: &Profile,
        scope: &Scope,
        after: Vec<StepId>,
    ) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        if !self.layers().iter().any(|l| scope.includes(*l)) {
            return Ok(Vec::new());
        }
        let manifests = self.manifests(profile)?;
        let environment = environment_label(profile);
        let mut by_level: BTreeMap<ApplyLevel, Vec<Manifest>> = BTreeMap::new();
        for m in manifests.iter().filter(|m| scope.includes(layer_of(m))) {
            by_level.entry(m.level).or_default().push(m.clone());
        }
        let in_scope: Vec<&Manifest> = manifests
            .iter()
            .filter(|m| scope.includes(layer_of(m)))
            .collect();
        let wanted =
            crate::secrets::wanted(in_scope.iter().copied()).map_err(OpsError::Provider)?;
        let needed: Vec<crate::secrets::Needed> = in_scope
            .iter()
            .flat_map(|m| crate::secrets::needed(m))
            .collect();
        let made: Vec<ObjectKey> = if self.shared.options.secrets.is_some() {
            wanted
                .iter()
                .map(|w| ObjectKey {
                    api_version: "v1".into(),
                    kind: "Secret".into(),
                    namespace: Some(w.namespace.clone()),
                    name: w.name.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        // Applied after the storage level, before the workloads.
        let mut secrets_step = (!needed.is_empty()
            || (self.shared.options.secrets.is_some() && !wanted.is_empty()))
        .then(|| crate::secrets::SecretsStep {
            id: StepId::new("kubernetes/secrets"),
            depends: Vec::new(),
            environment: environment.clone(),
            wanted,
            needed,
            labels: identity_labels(profile),
            environment_annotation: profile.environment_key(),
            shared: self.shared.clone(),
        });
        // A Vault taskctl unseals is applied on its own, before the Secrets
        // (made from it) and the other workloads.
        let mut vault_manifests = Vec::new();
        if vault::taskctl_unseals(profile)
            && let Some(workloads) = by_level.get_mut(&ApplyLevel::Workloads)
        {
            let (ours, rest) = std::mem::take(workloads)
                .into_iter()
                .partition(vault::is_vault_workload);
            *workloads = rest;
            vault_manifests = ours;
            if workloads.is_empty() {
                by_level.remove(&ApplyLevel::Workloads);
            }
        }
        let mut steps: Vec<Arc<dyn Step>> = Vec::new();
        let mut previous: Option<StepId> = None;
        // Applied after the storage level (the StorageClass its claims
        // name), before the Secrets and the workloads.
        let mut push_vault = |steps: &mut Vec<Arc<dyn Step>>, previous: &mut Option<StepId>| {
            if vault_manifests.is_empty() {
                return;
            }
            let id = StepId::new(vault::VAULT_STEP);
            steps.push(Arc::new(LevelStep {
                id: id.clone(),
                wait: Wait::Running,
                depends: after.iter().cloned().chain(previous.clone()).collect(),
                environment: environment.clone(),
                manifests: std::mem::take(&mut vault_manifests),
                shared: self.shared.clone(),
                planned: Mutex::new(None),
            }));
            *previous = Some(id);
        };
        let mut push_secrets = |steps: &mut Vec<Arc<dyn Step>>, previous: &mut Option<StepId>| {
            if let Some(mut s) = secrets_step.take() {
                s.depends = after.iter().cloned().chain(previous.clone()).collect();
                *previous = Some(s.id.clone());
                steps.push(Arc::new(s));
            }
        };
        for (level, manifests) in by_level {
            if level > ApplyLevel::Storage {
                push_vault(&mut steps, &mut previous);
                push_secrets(&mut steps, &mut previous);
            }
            let id = StepId::new(format!("kubernetes/{level}"));
            let mut depends = after.clone();
            depends.extend(previous.clone());
            steps.push(Arc::new(LevelStep {
                id: id.clone(),
                wait: Wait::Ready,
                depends,
                environment: environment.clone(),
                manifests,
                shared: self.shared.clone(),
                planned: Mutex::new(None),
            }));
            previous = Some(id);
        }
        push_vault(&mut steps, &mut previous);
        push_secrets(&mut steps, &mut previous);
        // Pruning needs the whole render: with `--only`, what is not
        // rendered may just be out of scope.
        if scope.includes(Layer::Services) && scope.includes(Layer::Agents) {
            let rendered = manifests
                .iter()
                .map(|m| ObjectKey {
                    api_version: m.api_version.clone(),
                    kind: m.kind.clone(),
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                })
                .chain(made)
                .collect();
            steps.push(Arc::new(PruneStep {
                id: StepId::new("kubernetes/prune"),
                depends: after.into_iter().chain(previous).collect(),
                environment,
                rendered,
                shared: self.shared.clone(),
            }));
        }
        Ok(steps)
    }
}

/// The labels the templates' `labels` helper gives every object, without
/// `app.kubernetes.io/name` (per object).
pub(super) fn identity_labels(profile: &Profile) -> BTreeMap<String, String> {
    let mut labels = profile.metadata.labels.clone();
    labels.insert(
        "app.kubernetes.io/instance".into(),
        profile.metadata.name.clone(),
    );
    labels.insert(
        "app.kubernetes.io/part-of".into(),
        "task-execution-layer".into(),
    );
    labels.insert("app.kubernetes.io/managed-by".into(), "taskctl".into());
    labels.insert(ENVIRONMENT_LABEL.into(), environment_label(profile));
    labels
}

/// Runs `f` on every item, at most `limit` at once; results in item order.
pub(super) async fn bounded<I, T, F, Fut>(limit: usize, items: Vec<I>, f: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let semaphore = Arc::new(Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let fut = f(item);
        let semaphore = semaphore.clone();
        set.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            (i, fut.await)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => out.push(r),
            // A panicking task is a bug; surface it rather than lose it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, t)| t).collect()
}
