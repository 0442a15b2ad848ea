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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskctl_core::Severity;
use taskctl_core::engine::{
    Action, Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::ops::{Check, Finding, Layer, OpsError, Provider, ReleaseFacts, Scope};
use taskctl_core::profile::Profile;
use taskctl_core::release::ReleaseStore;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How many more reads than writes are in flight at once.
pub const READS_PER_WRITE: usize = 4;

/// The first readiness poll's delay; later ones double up to
/// [`KubeOptions::poll_interval`].
const FIRST_POLL: Duration = Duration::from_millis(250);

/// The label every rendered object carries: `<name>.<env>`.
pub const ENVIRONMENT_LABEL: &str = "taskctl.dev/environment";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=taskctl";

/// How the provider applies.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The templates directory the manifests are rendered from.
    pub templates: PathBuf,
    /// Take over fields another field manager owns instead of failing
    /// with the conflict (`kubectl apply --server-side --force-conflicts`).
    pub force_conflicts: bool,
    /// Let prune delete PersistentVolumeClaims, PersistentVolumes, CRDs,
    /// Namespaces and Secrets too.
    pub prune_all: bool,
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
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            templates: PathBuf::from("templates"),
            force_conflicts: false,
            prune_all: false,
            parallelism: 8,
            step_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            lock_ttl: Duration::from_secs(120),
            holder: None,
            watch_window: None,
            secrets: None,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) client: ClientSource,
    pub(crate) options: KubeOptions,
    /// Environment label → the Lease held for it.
    locks: tokio::sync::Mutex<BTreeMap<String, LeaseGuard>>,
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
    shared: Arc<Shared>,
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
        let manifests = crate::render(profile, &self.shared.options.templates)
            .map_err(|e| OpsError::Provider(error_chain(&e)))?;
        for m in &manifests {
            crate::check(m).map_err(|e| OpsError::Provider(error_chain(&e)))?;
        }
        Ok(manifests)
    }
}

fn ops_error(e: StepError) -> OpsError {
    OpsError::Provider(e.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
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
    format!("{}.{}", profile.metadata.name, profile.metadata.environment)
}

/// The layer a rendered object belongs to: the agents' templates are the
/// agents layer, everything else the services.
fn layer_of(m: &Manifest) -> Layer {
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

    fn releases(&self, profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        Some(Arc::new(KubeReleaseStore::with_source(
            self.shared.client.clone(),
            &environment_label(profile),
        )))
    }

    /// The automatic-rollback conditions on the agents' pods (see
    /// [`crate::verify`]).
    async fn verify(
        &self,
        profile: &Profile,
        _sink: Arc<dyn taskctl_core::events::EventSink>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        let window = crate::verify::window(self.shared.options.watch_window)?;
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
        Ok(crate::verify::verify(&client, profile, workloads, window, cancel).await)
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
        // Applied after the config level, before storage and workloads.
        let mut secrets_step = (!needed.is_empty()
            || (self.shared.options.secrets.is_some() && !wanted.is_empty()))
        .then(|| crate::secrets::SecretsStep {
            id: StepId::new("kubernetes/secrets"),
            depends: Vec::new(),
            environment: environment.clone(),
            wanted,
            needed,
            labels: identity_labels(profile),
            environment_annotation: format!(
                "{}/{}",
                profile.metadata.name, profile.metadata.environment
            ),
            shared: self.shared.clone(),
        });
        let mut steps: Vec<Arc<dyn Step>> = Vec::new();
        let mut previous: Option<StepId> = None;
        let mut push_secrets = |steps: &mut Vec<Arc<dyn Step>>, previous: &mut Option<StepId>| {
            if let Some(mut s) = secrets_step.take() {
                s.depends = after.iter().cloned().chain(previous.clone()).collect();
                *previous = Some(s.id.clone());
                steps.push(Arc::new(s));
            }
        };
        for (level, manifests) in by_level {
            if level > ApplyLevel::Config {
                push_secrets(&mut steps, &mut previous);
            }
            let id = StepId::new(format!("kubernetes/{level}"));
            let mut depends = after.clone();
            depends.extend(previous.clone());
            steps.push(Arc::new(LevelStep {
                id: id.clone(),
                depends,
                environment: environment.clone(),
                manifests,
                shared: self.shared.clone(),
                planned: Mutex::new(None),
            }));
            previous = Some(id);
        }
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
fn identity_labels(profile: &Profile) -> BTreeMap<String, String> {
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
async fn bounded<I, T, F, Fut>(limit: usize, items: Vec<I>, f: F) -> Vec<T>
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

/// What one object of a level needs.
#[derive(Debug, Clone)]
struct ObjectPlan {
    action: Action,
    diffs: Vec<FieldDiff>,
}

struct LevelStep {
    id: StepId,
    depends: Vec<StepId>,
    environment: String,
    manifests: Vec<Manifest>,
    shared: Arc<Shared>,
    /// The last plan and the manifests it was made for, so `apply` patches
    /// what `plan` found different without reading every object again (the
    /// engine plans right before it applies).
    planned: Mutex<Option<(Vec<Manifest>, Vec<ObjectPlan>)>>,
}

impl LevelStep {
    /// The manifests as applied: with a resolver, each rolling workload
    /// that uses a secret carries `taskctl.dev/secret-checksum`.
    async fn prepared(&self) -> Result<Vec<Manifest>, StepError> {
        match &self.shared.options.secrets {
            Some(secrets) => crate::secrets::with_checksums(secrets, &self.manifests).await,
            None => Ok(self.manifests.clone()),
        }
    }

    async fn plan_objects(
        &self,
        client: &Client,
        manifests: &[Manifest],
    ) -> Result<Vec<ObjectPlan>, StepError> {
        let client = client.clone();
        let results = bounded(
            self.shared.options.parallelism * READS_PER_WRITE,
            manifests.to_vec(),
            move |m| {
                let client = client.clone();
                async move {
                    let live = cluster::get(&client, &m).await?;
                    Ok::<_, StepError>(match live {
                        None => ObjectPlan {
                            action: Action::Create,
                            diffs: Vec::new(),
                        },
                        Some(live) => {
                            let diffs = diff(&m.kind, &m.value, &live);
                            ObjectPlan {
                                action: if diffs.is_empty() {
                                    Action::NoOp
                                } else {
                                    Action::Update
                                },
                                diffs,
                            }
                        }
                    })
                }
            },
        )
        .await;
        results.into_iter().collect()
    }

    fn change(&self, plans: &[ObjectPlan]) -> Change {
        let created: Vec<&Manifest> = self
            .manifests
            .iter()
            .zip(plans)
            .filter(|(_, p)| p.action == Action::Create)
            .map(|(m, _)| m)
            .collect();
        let updated: Vec<(&Manifest, &ObjectPlan)> = self
            .manifests
            .iter()
            .zip(plans)
            .filter(|(_, p)| p.action == Action::Update)
            .collect();
        if created.is_empty() && updated.is_empty() {
            return Change {
                action: Action::NoOp,
                diffs: Vec::new(),
                reason: format!("{} objects up to date", self.manifests.len()),
            };
        }
        let mut diffs = Vec::new();
        for m in &created {
            diffs.push(FieldDiff::new(m.id(), "(absent)", "(created)"));
        }
        for (m, p) in &updated {
            for d in &p.diffs {
                diffs.push(FieldDiff::new(
                    format!("{}: {}", m.id(), d.field),
                    &d.from,
                    &d.to,
                ));
            }
        }
        let mut parts = Vec::new();
        if !created.is_empty() {
            parts.push(format!("{} to create", created.len()));
        }
        if !updated.is_empty() {
            let names: Vec<String> = updated.iter().map(|(m, _)| m.id()).collect();
            parts.push(format!(
                "{} to update ({})",
                updated.len(),
                names.join(", ")
            ));
        }
        Change {
            action: if updated.is_empty() && created.len() == self.manifests.len() {
                Action::Create
            } else {
                Action::Update
            },
            diffs,
            reason: format!("{} of {} objects", parts.join(", "), self.manifests.len()),
        }
    }

    /// Polls the level's workloads until all are ready; fails at the first
    /// that cannot become ready by waiting.
    async fn wait_ready(&self, client: &Client, ctx: &StepContext) -> Result<(), StepError> {
        let waited: Vec<&Manifest> = self
            .manifests
            .iter()
            .filter(|m| {
                matches!(
                    m.kind.as_str(),
                    "Deployment" | "StatefulSet" | "DaemonSet" | "Job"
                )
            })
            .collect();
        if waited.is_empty() {
            return Ok(());
        }
        let mut pending: Vec<&Manifest> = waited.clone();
        // Most objects are ready soon after they are applied: poll often at
        // first, then back off to the configured interval.
        let mut delay = self.shared.options.poll_interval.min(FIRST_POLL);
        loop {
            let mut still = Vec::new();
            let mut first_reason = None;
            for m in pending {
                match readiness_of(client, m).await? {
                    Readiness::Ready => {}
                    Readiness::Failed(why) => {
                        return Err(StepError::new(
                            ErrorKind::Other,
                            format!("{}: {why}", m.id()),
                        ));
                    }
                    Readiness::NotReady(why) => {
                        first_reason.get_or_insert_with(|| format!("{}: {why}", m.id()));
                        still.push(m);
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            ctx.progress(&format!(
                "{} of {} ready; {}",
                waited.len() - still.len(),
                waited.len(),
                first_reason.unwrap_or_default()
            ));
            pending = still;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = ctx.cancelled().cancelled() => {
                    return Err(StepError::new(ErrorKind::Cancelled, "interrupted while waiting for readiness"));
                }
            }
            delay = (delay * 2).min(self.shared.options.poll_interval);
        }
    }
}

/// Readiness of one workload; for a workload not ready yet, the first of its
/// pods that will not start turns it into a failure.
async fn readiness_of(client: &Client, m: &Manifest) -> Result<Readiness, StepError> {
    let Some(live) = cluster::get(client, m).await? else {
        return Ok(Readiness::NotReady("not found yet".into()));
    };
    let parse_error = |e: serde_json::Error| {
        StepError::new(
            ErrorKind::Other,
            format!("{}: unexpected object from the API server: {e}", m.id()),
        )
    };
    let readiness = match m.kind.as_str() {
        "Deployment" => readiness::deployment(
            &serde_json::from_value::<Deployment>(live.clone()).map_err(parse_error)?,
        ),
        "StatefulSet" => readiness::stateful_set(
            &serde_json::from_value::<StatefulSet>(live.clone()).map_err(parse_error)?,
        ),
        "DaemonSet" => readiness::daemon_set(
            &serde_json::from_value::<DaemonSet>(live.clone()).map_err(parse_error)?,
        ),
        "Job" => readiness::job(&serde_json::from_value::<Job>(live.clone()).map_err(parse_error)?),
        _ => Readiness::Ready,
    };
    if !matches!(readiness, Readiness::NotReady(_)) || m.kind == "Job" {
        return Ok(readiness);
    }
    if let Some(failure) = cluster::current_pods(client, m, &live)
        .await?
        .iter()
        .find_map(readiness::pod_failure)
    {
        return Ok(Readiness::Failed(failure.to_string()));
    }
    Ok(readiness)
}

#[async_trait]
impl Step for LevelStep {
    fn id(&self) -> &StepId {
        &self.id
    }

    fn kind(&self) -> &str {
        "kubernetes-level"
    }

    fn depends_on(&self) -> Vec<StepId> {
        self.depends.clone()
    }

    fn timeout(&self) -> Duration {
        self.shared.options.step_timeout
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let manifests = self.prepared().await?;
        let plans = match self.shared.client.get(Some(ctx)).await? {
            Some(client) => self.plan_objects(&client, &manifests).await?,
            // A cluster this run creates: every object is new.
            None => vec![
                ObjectPlan {
                    action: Action::Create,
                    diffs: Vec::new(),
                };
                self.manifests.len()
            ],
        };
        let change = self.change(&plans);
        *self.planned.lock().unwrap_or_else(|e| e.into_inner()) = Some((manifests, plans));
        Ok(StepPlan {
            change,
            outputs: Outputs::from([("objects".into(), self.manifests.len().to_string())]),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let client = self.shared.client.require(Some(ctx), &self.id.0).await?;
        self.shared
            .ensure_locked(&client, &self.environment)
            .await?;
        let cached = self
            .planned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A secret pending at plan time has its new version now.
        let manifests = self.prepared().await?;
        let plans = match cached {
            Some((planned, p))
                if planned.len() == manifests.len()
                    && planned
                        .iter()
                        .zip(&manifests)
                        .all(|(a, b)| a.value == b.value) =>
            {
                p
            }
            _ => self.plan_objects(&client, &manifests).await?,
        };
        let changed: Vec<Manifest> = manifests
            .iter()
            .zip(&plans)
            .filter(|(_, p)| p.action.is_change())
            .map(|(m, _)| m.clone())
            .collect();
        ctx.progress(&format!(
            "applying {} of {} objects",
            changed.len(),
            self.manifests.len()
        ));
        let force = self.shared.options.force_conflicts;
        let applier = client.clone();
        let results = bounded(self.shared.options.parallelism, changed.clone(), move |m| {
            let client = applier.clone();
            async move { cluster::apply(&client, &m, force).await }
        })
        .await;
        let errors: Vec<StepError> = results.into_iter().filter_map(Result::err).collect();
        if let Some(first) = errors.first() {
            let mut err = first.clone();
            if errors.len() > 1 {
                err.message = format!(
                    "{} (and {} more failed applies)",
                    err.message,
                    errors.len() - 1
                );
            }
            return Err(err);
        }
        self.wait_ready(&client, ctx).await?;
        Ok(Outputs::from([
            ("objects".into(), self.manifests.len().to_string()),
            ("applied".into(), changed.len().to_string()),
        ]))
    }

    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        // No cluster, nothing in it to delete.
        let Some(client) = self.shared.client.get(Some(ctx)).await? else {
            return Ok(());
        };
        self.shared
            .ensure_locked(&client, &self.environment)
            .await?;
        for m in self.manifests.iter().rev() {
            let Some(known) = resources::lookup(&m.api_version, &m.kind) else {
                continue;
            };
            if known.is_protected() && !self.shared.options.prune_all {
                continue;
            }
            cluster::delete(&client, &known, m.namespace.as_deref(), &m.name).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl ObjectKey {
    fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Deletes what the environment's label finds and the render no longer has.
struct PruneStep {
    id: StepId,
    depends: Vec<StepId>,
    environment: String,
    rendered: BTreeSet<ObjectKey>,
    shared: Arc<Shared>,
}

impl PruneStep {
    async fn candidates(&self, client: &Client) -> Result<Vec<(Known, ObjectKey)>, StepError> {
        let selector = format!("{ENVIRONMENT_LABEL}={},{MANAGED_BY}", self.environment);
        let kinds: Vec<Known> = resources::known()
            .into_iter()
            .filter(|k| self.shared.options.prune_all || !k.is_protected())
            .collect();
        let client = client.clone();
        let lists = bounded(
            self.shared.options.parallelism * READS_PER_WRITE,
            kinds,
            move |known| {
                let client = client.clone();
                let selector = selector.clone();
                async move {
                    let items = cluster::list(&client, &known, &selector).await;
                    (known, items)
                }
            },
        )
        .await;
        let mut out = Vec::new();
        for (known, items) in lists {
            let items = match items {
                Ok(i) => i,
                // A resource the cluster does not serve has nothing to prune.
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for o in items {
                // A release record is never a rendered object, whatever
                // labels it carries.
                if known.kind == "Secret"
                    && (o.data.get("type").and_then(Value::as_str)
                        == Some(crate::release::RELEASE_TYPE)
                        || o.metadata
                            .labels
                            .as_ref()
                            .is_some_and(|l| l.contains_key(crate::release::RELEASE_OF)))
                {
                    continue;
                }
                let key = ObjectKey {
                    api_version: known.api_version.to_string(),
                    kind: known.kind.to_string(),
                    namespace: if known.namespaced {
                        o.metadata.namespace.clone()
                    } else {
                        None
                    },
                    name: o.metadata.name.clone().unwrap_or_default(),
                };
                if !self.rendered.contains(&key) {
                    out.push((known.clone(), key));
                }
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }
}

#[async_trait]
impl Step for PruneStep {
    fn id(&self) -> &StepId {
        &self.id
    }

    fn kind(&self) -> &str {
        "kubernetes-prune"
    }

    fn depends_on(&self) -> Vec<StepId> {
        self.depends.clone()
    }

    fn timeout(&self) -> Duration {
        self.shared.options.step_timeout
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let candidates = match self.shared.client.get(Some(ctx)).await? {
            Some(client) => self.candidates(&client).await?,
            None => Vec::new(),
        };
        let change = if candidates.is_empty() {
            Change {
                action: Action::NoOp,
                diffs: Vec::new(),
                reason: "nothing left over from earlier renders".into(),
            }
        } else {
            let ids: Vec<String> = candidates.iter().map(|(_, k)| k.id()).collect();
            Change {
                action: Action::Delete,
                diffs: ids
                    .iter()
                    .map(|id| FieldDiff::new(id, "(present)", "(deleted)"))
                    .collect(),
                reason: format!("no longer rendered: {}", ids.join(", ")),
            }
        };
        Ok(StepPlan {
            change,
            outputs: Outputs::new(),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let client = self.shared.client.require(Some(ctx), &self.id.0).await?;
        self.shared
            .ensure_locked(&client, &self.environment)
            .await?;
        let candidates = self.candidates(&client).await?;
        for (known, key) in &candidates {
            ctx.progress(&format!("deleting {}", key.id()));
            cluster::delete(&client, known, key.namespace.as_deref(), &key.name).await?;
        }
        Ok(Outputs::from([(
            "pruned".into(),
            candidates.len().to_string(),
        )]))
    }

    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        // The level steps delete what is rendered; nothing of its own.
        Ok(())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the environment runs: each workload's first image, pinned by the
/// digest its pods report; a hash of each ConfigMap; the secret references
/// the pod templates name. The lists, then the pods of every workload, are
/// read at once.
pub async fn observe(client: &Client, environment: &str) -> Result<ReleaseFacts, StepError> {
    let selector = format!("{ENVIRONMENT_LABEL}={environment},{MANAGED_BY}");
    let known =
        |api_version: &str, kind: &str| resources::lookup(api_version, kind).expect("a known kind");
    let kinds = [
        known("apps/v1", "Deployment"),
        known("apps/v1", "StatefulSet"),
        known("apps/v1", "DaemonSet"),
        known("v1", "ConfigMap"),
    ];
    let (deployments, stateful_sets, daemon_sets, config_maps) = tokio::try_join!(
        cluster::list(client, &kinds[0], &selector),
        cluster::list(client, &kinds[1], &selector),
        cluster::list(client, &kinds[2], &selector),
        cluster::list(client, &kinds[3], &selector),
    )?;
    let mut facts = ReleaseFacts::default();
    let mut refs = BTreeSet::new();
    let mut workloads = Vec::new();
    let all = [
        ("Deployment", deployments),
        ("StatefulSet", stateful_sets),
        ("DaemonSet", daemon_sets),
    ];
    for (kind, w) in all
        .into_iter()
        .flat_map(|(kind, items)| items.into_iter().map(move |w| (kind, w)))
    {
        let template = w
            .data
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(sources) = template
            .pointer("/metadata/annotations")
            .and_then(|a| a.get("taskctl.dev/secret-sources"))
            .and_then(Value::as_str)
        {
            for pair in sources.split(',').filter(|p| !p.is_empty()) {
                if let Some((_, reference)) = pair.split_once('=') {
                    refs.insert(reference.to_string());
                }
            }
        }
        let container = template.pointer("/spec/containers/0");
        let field = |key: &str| {
            container
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let selector: Option<Vec<String>> = w
            .data
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            });
        workloads.push(ObservedWorkload {
            kind,
            name: w.metadata.name.clone().unwrap_or_default(),
            namespace: w.metadata.namespace.clone().unwrap_or_default(),
            image: field("image"),
            container: field("name"),
            selector,
        });
    }
    let client = client.clone();
    let pinned = bounded(32, workloads, move |w| {
        let client = client.clone();
        async move {
            let image = w.pinned_image(&client).await?;
            Ok::<_, StepError>((w.name, image))
        }
    })
    .await;
    for result in pinned {
        let (name, image) = result?;
        facts.images.insert(name, image);
    }
    for c in config_maps {
        let content = serde_json::json!({
            "data": c.data.get("data"),
            "binaryData": c.data.get("binaryData"),
        });
        facts.config_hashes.insert(
            format!(
                "configmap/{}/{}",
                c.metadata.namespace.unwrap_or_default(),
                c.metadata.name.unwrap_or_default()
            ),
            sha256_hex(content.to_string().as_bytes()),
        );
    }
    facts.secret_refs = refs.into_iter().collect();
    Ok(facts)
}

/// A workload as [`observe`] needs it.
struct ObservedWorkload {
    kind: &'static str,
    name: String,
    namespace: String,
    /// The first container's image as the spec names it.
    image: String,
    container: String,
    /// `key=value` of the pod selector.
    selector: Option<Vec<String>>,
}

impl ObservedWorkload {
    /// The image by the digest its pods report, else as the spec names it.
    async fn pinned_image(&self, client: &Client) -> Result<String, StepError> {
        let Some(selector) = &self.selector else {
            return Ok(self.image.clone());
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let pods = pods
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
            .map_err(|e| {
                step_error(
                    &format!("pods of {} {}/{}", self.kind, self.namespace, self.name),
                    e,
                )
            })?;
        let id = pods.items.iter().find_map(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == self.container)
                .map(|c| c.image_id.clone())
                .filter(|id| id.contains("@sha256:"))
        });
        Ok(match id {
            Some(id) => id.trim_start_matches("docker-pullable://").to_string(),
            None => self.image.clone(),
        })
    }
}
