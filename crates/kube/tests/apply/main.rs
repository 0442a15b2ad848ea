//! The Kubernetes provider against `kube-double`, the named test double of
//! the API server (no real cluster can run here): fresh install in level
//! order, upgrades that patch only what changed, fail-fast on crash loops,
//! conflicts with other field managers, prune, releases, rollback and the
//! cluster lock. Each test starts its own double on a random loopback port
//! and reaches it through a kubeconfig file, as taskctl would.

use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_double::{Config, KubeDouble, RequestRecord};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskctl_core::engine::{Action, RetryPolicy, RunReport};
use taskctl_core::events::{Discard, RunOutcome};
use taskctl_core::ops::{self, AfterFailure, DeployOptions, DeployOutcome, Layer, Provider, Scope};
use taskctl_core::profile::value::SecretRef;
use taskctl_core::profile::{LoadOptions, Profile, load};
use taskctl_core::release::{Release, ReleaseStatus, to_prune};
use taskctl_core::secrets::{KvRead, Redactor, Secret, Secrets, VaultBackend};
use taskctl_core::state::LocalStore;
use taskctl_kube::lock::{ClusterLock, SYSTEM_NAMESPACE};
use taskctl_kube::{ApplyLevel, KubeOptions, KubernetesProvider, Manifest};
use tokio_util::sync::CancellationToken;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn production() -> Profile {
    let loaded = load(&LoadOptions {
        files: vec![workspace().join("profiles/production.yaml")],
        environment: Some("production".into()),
        vars: &|_| None,
    });
    let mut profile = loaded
        .valid_profile()
        .expect("the shipped production profile is valid")
        .clone();
    // The verification gates need real processes behind the pods' ports
    // (the double runs no containers); the CLI's kubernetes tests register
    // them and run the gates. Here, rollouts are judged by the conditions.
    profile.deployment.verification.clear();
    profile
}

struct Cluster {
    double: KubeDouble,
    client: Client,
    state: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let double = KubeDouble::start(Config {
            ready_delay: Duration::from_millis(20),
            ..Config::default()
        })
        .await
        .expect("the double listens on loopback");
        let state = tempfile::tempdir().expect("a temporary directory");
        let kubeconfig = state.path().join("kubeconfig");
        std::fs::write(&kubeconfig, double.kubeconfig()).expect("kubeconfig written");
        let client =
            taskctl_kube::cluster::client_from_kubeconfig(Some(&kubeconfig), Some("double"))
                .await
                .expect("a client from the kubeconfig");
        Cluster {
            double,
            client,
            state,
        }
    }

    fn provider(&self, options: KubeOptions) -> KubernetesProvider {
        KubernetesProvider::with_client(self.client.clone(), options)
    }

    async fn deploy(&self, provider: &KubernetesProvider, profile: &Profile) -> DeployOutcome {
        self.run(provider, profile, false).await
    }

    async fn destroy(&self, provider: &KubernetesProvider, profile: &Profile) -> DeployOutcome {
        let outcome = ops::destroy(
            profile,
            provider,
            self.store(profile),
            Arc::new(Discard),
            run_options(false, true),
            &|_| true,
        )
        .await
        .expect("the destroy runs");
        provider.release_locks().await.expect("locks released");
        outcome
    }

    fn store(&self, profile: &Profile) -> Arc<LocalStore> {
        Arc::new(LocalStore::new(
            self.state.path(),
            &ops::environment_key(profile),
        ))
    }

    /// The API paths of every PersistentVolumeClaim in the double.
    fn claims(&self) -> Vec<String> {
        self.double
            .paths()
            .into_iter()
            .filter(|p| p.contains("/persistentvolumeclaims/"))
            .collect()
    }

    async fn plan(&self, provider: &KubernetesProvider, profile: &Profile) -> RunReport {
        self.run(provider, profile, true).await.plan
    }

    async fn run(
        &self,
        provider: &KubernetesProvider,
        profile: &Profile,
        dry_run: bool,
    ) -> DeployOutcome {
        let outcome = ops::deploy(
            profile,
            provider,
            self.store(profile),
            Arc::new(Discard),
            run_options(dry_run, false),
            &|_| true,
        )
        .await
        .expect("the deploy runs");
        provider.release_locks().await.expect("locks released");
        outcome
    }

    /// PATCHes of the rendered objects (not of taskctl's own namespace).
    fn patches(&self) -> Vec<RequestRecord> {
        self.double
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && !r.path.contains(SYSTEM_NAMESPACE))
            .collect()
    }
}

/// A KV v2 store in memory: path → its versions (1 first). Each test has
/// its own, so tests running in parallel never see each other's writes.
#[derive(Default)]
struct MemoryKv(Mutex<BTreeMap<String, Vec<BTreeMap<String, String>>>>);

impl MemoryKv {
    /// Writes a new version of `path`; returns its number.
    fn write(&self, path: &str, data: &[(&str, &str)]) -> u64 {
        let mut kv = self.0.lock().unwrap();
        let versions = kv.entry(path.to_string()).or_default();
        versions.push(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        versions.len() as u64
    }

    /// The value a reference resolves to now.
    fn value(&self, r: &SecretRef) -> String {
        let SecretRef::Vault { path, key, version } = r else {
            panic!("only vault references in these profiles: {r}");
        };
        let kv = self.0.lock().unwrap();
        let versions = &kv[path];
        let data = match version {
            Some(v) => &versions[*v as usize - 1],
            None => versions.last().unwrap(),
        };
        data[key].clone()
    }

    /// Every value ever written.
    fn all_values(&self) -> Vec<String> {
        let kv = self.0.lock().unwrap();
        kv.values()
            .flatten()
            .flat_map(|d| d.values().cloned())
            .collect()
    }
}

#[async_trait::async_trait]
impl VaultBackend for MemoryKv {
    async fn read(&self, path: &str, version: Option<u64>) -> Result<KvRead, String> {
        let kv = self.0.lock().unwrap();
        let versions = kv.get(path).ok_or_else(|| format!("no secret at {path}"))?;
        let v = version.unwrap_or(versions.len() as u64);
        let data = versions
            .get((v as usize).wrapping_sub(1))
            .ok_or_else(|| format!("{path} has no version {v}"))?;
        Ok(KvRead {
            data: data
                .iter()
                .map(|(k, v)| (k.clone(), Secret::new(v.as_str())))
                .collect(),
            version: v,
        })
    }
}

/// The options every run of these tests uses.
fn run_options(dry_run: bool, skip_preflight: bool) -> DeployOptions {
    DeployOptions {
        scope: Scope(vec![Layer::Services, Layer::Agents]),
        parallelism: 4,
        dry_run,
        saved_plan: None,
        grace: Duration::from_secs(5),
        retry: RetryPolicy::default(),
        cancel: CancellationToken::new(),
        skip_preflight,
    }
}

/// The secrets the production profile references, version 1.
fn production_kv() -> Arc<MemoryKv> {
    let kv = MemoryKv::default();
    kv.write(
        "secret/messaging",
        &[
            ("username", "taskctl"),
            ("password", "amqp-pass-v1-Qw7Lz"),
            ("erlang_cookie", "erlang-cookie-v1-Xk9Pq"),
        ],
    );
    kv.write(
        "secret/database",
        &[
            ("keyfile", "mongo-keyfile-v1-Hs3Rt"),
            ("password", "mongo-root-v1-Vb8Nm"),
        ],
    );
    kv.write("secret/postgres", &[("password", "postgres-pass-v1-Jd2Fa")]);
    kv.write("secret/grafana", &[("password", "grafana-admin-v1-Mn4Rs")]);
    kv.write(
        "secret/signing",
        &[
            ("private_key", "signing-private-v1-Tq5Wc"),
            ("public_key", "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
            (
                "public_keys",
                "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            ),
        ],
    );
    kv.write(
        "secret/broker-tls",
        &[
            ("cert", "broker-cert-v1-Lp3Za"),
            ("key", "broker-key-v1-Wq8Ne"),
            ("ca_cert", "broker-ca-v1-Rt6Ym"),
            ("ca_certs", "broker-ca-v1-Rt6Ym"),
            ("hosts", "hosts-v1-Gh2Ks"),
        ],
    );
    Arc::new(kv)
}

/// A fresh resolver (an empty cache, as each taskctl run has) over `kv`.
fn resolver(kv: &Arc<MemoryKv>) -> Arc<Secrets> {
    Arc::new(Secrets::new(
        Some(kv.clone() as Arc<dyn VaultBackend>),
        Redactor::new(),
    ))
}

fn options() -> KubeOptions {
    options_with(&production_kv())
}

fn options_with(kv: &Arc<MemoryKv>) -> KubeOptions {
    KubeOptions {
        templates: taskctl_kube::Templates::Dir(workspace().join("templates")),
        poll_interval: Duration::from_millis(20),
        step_timeout: Duration::from_secs(120),
        // The conditions are watched in the test that trips one.
        watch_window: Some(Duration::ZERO),
        secrets: Some(resolver(kv)),
        ..KubeOptions::default()
    }
}

/// `(namespace, Secret name)` of every Secret the workloads reference.
fn referenced_secrets(manifests: &[Manifest]) -> BTreeSet<(String, String)> {
    manifests
        .iter()
        .flat_map(|m| {
            taskctl_kube::secrets::uses(m)
                .unwrap()
                .into_iter()
                .map(|u| (m.namespace.clone().unwrap(), u.secret))
        })
        .collect()
}

/// The API path of a rendered object, as the double stores it.
fn path_of(m: &Manifest) -> String {
    let known = taskctl_kube::resources::lookup(&m.api_version, &m.kind).expect("a known kind");
    let prefix = if m.api_version.contains('/') {
        format!("/apis/{}", m.api_version)
    } else {
        format!("/api/{}", m.api_version)
    };
    match &m.namespace {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{}/{}", known.plural, m.name),
        None => format!("{prefix}/{}/{}", known.plural, m.name),
    }
}

fn succeeded(outcome: &DeployOutcome) -> &RunReport {
    let applied = outcome.applied.as_ref().expect("something was applied");
    if let Some(failed) = applied.first_error() {
        panic!("step {} failed: {:?}", failed.id, failed.error);
    }
    assert_eq!(applied.outcome, RunOutcome::Succeeded);
    applied
}

fn agent_deployment(c: &Cluster) -> Value {
    c.double
        .object("/apis/apps/v1/namespaces/agent-system/deployments/task-executor")
        .expect("the agent Deployment exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_install_applies_every_object_level_by_level_and_waits_for_readiness() {
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let profile = production();
    let manifests = provider.manifests(&profile).expect("render");

    let applied = succeeded(&c.deploy(&provider, &profile).await).clone();
    let ids: Vec<&str> = applied.steps.iter().map(|s| s.id.0.as_str()).collect();
    assert_eq!(
        ids,
        [
            "kubernetes/namespaces",
            "kubernetes/rbac",
            "kubernetes/config",
            "kubernetes/storage",
            "kubernetes/secrets",
            "kubernetes/workloads",
            "kubernetes/autoscalers",
            "kubernetes/prune"
        ]
    );

    // Every object exists, and was applied exactly once; so was every
    // Secret the workloads reference.
    for m in &manifests {
        assert!(
            c.double.object(&path_of(m)).is_some(),
            "{} was not applied",
            m.id()
        );
    }
    let secrets: Vec<String> = referenced_secrets(&manifests)
        .into_iter()
        .map(|(ns, name)| format!("/api/v1/namespaces/{ns}/secrets/{name}"))
        .collect();
    let patches = c.patches();
    assert_eq!(patches.len(), manifests.len() + secrets.len());
    assert!(patches.iter().all(|p| p.content_type.as_deref()
        == Some("application/apply-patch+yaml")
        && p.query.contains("fieldManager=taskctl")));

    // Levels in order: the level of each PATCH never goes down (the
    // Secrets go after the storage level, before the workloads).
    let level_of = |path: &str| {
        if secrets.iter().any(|s| s == path) {
            return ApplyLevel::Storage;
        }
        manifests
            .iter()
            .find(|m| path_of(m) == path)
            .map(|m| m.level)
            .expect("a rendered object")
    };
    let levels: Vec<ApplyLevel> = patches.iter().map(|p| level_of(&p.path)).collect();
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
    let first_namespaced = levels
        .iter()
        .position(|l| *l > ApplyLevel::Namespaces)
        .unwrap();
    assert!(
        levels[..first_namespaced]
            .iter()
            .all(|l| *l == ApplyLevel::Namespaces)
    );

    // Every workload is ready by the same rules `kubectl rollout status` uses.
    for m in manifests.iter().filter(|m| m.kind == "Deployment") {
        let live = c.double.object(&path_of(m)).unwrap();
        let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(live).unwrap();
        assert!(
            taskctl_kube::readiness::deployment(&d).is_ready(),
            "{}",
            m.id()
        );
    }
    for m in manifests.iter().filter(|m| m.kind == "StatefulSet") {
        let live = c.double.object(&path_of(m)).unwrap();
        let s: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(live).unwrap();
        assert!(
            taskctl_kube::readiness::stateful_set(&s).is_ready(),
            "{}",
            m.id()
        );
    }

    // A second deploy finds nothing to do and sends no PATCH.
    c.double.clear_requests();
    let again = c.deploy(&provider, &profile).await;
    assert!(again.applied.is_none(), "nothing should change");
    assert!(!again.plan.has_changes());
    assert!(c.patches().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_patches_only_the_objects_it_changes() {
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let mut profile = production();
    succeeded(&c.deploy(&provider, &profile).await);

    profile.agents[0].replicas = 5;
    let plan = c.plan(&provider, &profile).await;
    let changes: Vec<_> = plan.changes().collect();
    assert_eq!(
        changes.len(),
        1,
        "only the workloads level changes: {changes:?}"
    );
    assert_eq!(changes[0].id.0, "kubernetes/workloads");
    let change = changes[0].change.as_ref().unwrap();
    assert_eq!(change.action, Action::Update);
    let fields: Vec<&str> = change.diffs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["Deployment agent-system/task-executor: spec.replicas"]
    );
    assert_eq!(
        (change.diffs[0].from.as_str(), change.diffs[0].to.as_str()),
        ("3", "5")
    );

    c.double.clear_requests();
    succeeded(&c.deploy(&provider, &profile).await);
    let patches: Vec<String> = c.patches().into_iter().map(|p| p.path).collect();
    assert_eq!(
        patches,
        ["/apis/apps/v1/namespaces/agent-system/deployments/task-executor"]
    );
    assert_eq!(agent_deployment(&c)["spec"]["replicas"], 5);
    assert_eq!(agent_deployment(&c)["status"]["readyReplicas"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_rollout_fails_fast_naming_the_pod_and_is_rolled_back() {
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let mut profile = production();
    succeeded(&c.deploy(&provider, &profile).await);

    profile.agents[0].image = "task-executor:1.0.1-crashloop".into();
    let outcome = c.deploy(&provider, &profile).await;
    let applied = outcome.applied.as_ref().expect("the upgrade was applied");
    assert_eq!(applied.outcome, RunOutcome::Failed);
    let failed = applied.first_error().expect("a failed step");
    assert_eq!(failed.id.0, "kubernetes/workloads");
    let message = &failed.error.as_ref().unwrap().message;
    assert!(message.contains("CrashLoopBackOff"), "{message}");
    assert!(
        message.contains("Deployment agent-system/task-executor"),
        "{message}"
    );
    assert!(message.contains("pod task-executor-"), "{message}");
    // Fail fast: the step did not run into its timeout.
    assert!(failed.duration < options().step_timeout);

    // The profile asks for automatic rollback (health_check_failure): the
    // failed rollout is release 2, and release 1 is restored as release 3.
    let report = outcome.release.as_ref().expect("the failed release");
    assert_eq!(report.revision, 2);
    let Some(AfterFailure::RolledBack(rolled)) = &report.after_failure else {
        panic!("not rolled back: {:?}", report.after_failure);
    };
    assert_eq!(rolled.to, 1);
    assert_eq!(rolled.revision, Some(3), "{:?}", rolled.error);
    let restored = rolled.applied.as_ref().expect("the rollback applied");
    assert_eq!(restored.outcome, RunOutcome::Succeeded);
    let message = outcome_message(&outcome);
    assert!(
        message.contains("rolled back automatically to release 1 (now release 3)"),
        "{message}"
    );
    let d = agent_deployment(&c);
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(image.starts_with("task-executor:1.0.0@sha256:"), "{image}");
    assert_eq!(d["status"]["readyReplicas"], 3);
    let store = provider.releases(&profile).expect("releases");
    let statuses: Vec<(u32, ReleaseStatus)> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|r| (r.revision, r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (1, ReleaseStatus::Superseded),
            (2, ReleaseStatus::Failed),
            (3, ReleaseStatus::Deployed)
        ]
    );
    // And the environment converged: nothing more to do.
    let pinned = store
        .get(3)
        .await
        .unwrap()
        .unwrap()
        .pinned_profile()
        .unwrap();
    assert!(!c.plan(&provider, &pinned).await.has_changes());
}

fn outcome_message(outcome: &DeployOutcome) -> String {
    outcome
        .release
        .as_ref()
        .and_then(|r| r.failure_message())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_owned_by_another_manager_is_a_conflict_unless_forced() {
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let profile = production();
    succeeded(&c.deploy(&provider, &profile).await);

    // Someone scales the agents by hand with server-side apply.
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.client.clone(), "agent-system");
    let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "task-executor"}, "spec": {"replicas": 7}});
    api.patch(
        "task-executor",
        &PatchParams::apply("kubectl-edit").force(),
        &Patch::Apply(&patch),
    )
    .await
    .expect("the hand edit");

    let outcome = c.deploy(&provider, &profile).await;
    let applied = outcome.applied.expect("applied");
    let failed = applied.first_error().expect("a conflict");
    let message = &failed.error.as_ref().unwrap().message;
    assert!(
        message.contains("conflict with \"kubectl-edit\""),
        "{message}"
    );
    assert!(message.contains(".spec.replicas"), "{message}");
    assert!(message.contains("--force-conflicts"), "{message}");
    assert_eq!(agent_deployment(&c)["spec"]["replicas"], 7);

    let forcing = c.provider(KubeOptions {
        force_conflicts: true,
        ..options()
    });
    succeeded(&c.deploy(&forcing, &profile).await);
    assert_eq!(agent_deployment(&c)["spec"]["replicas"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_what_the_render_dropped_but_never_a_volume_claim() {
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let profile = production();
    succeeded(&c.deploy(&provider, &profile).await);

    // Objects of an earlier render of this environment: a ConfigMap the
    // templates no longer produce, and a claim a StatefulSet made.
    let environment = taskctl_kube::provider::environment_label(&profile);
    let labels = json!({
        "taskctl.dev/environment": environment,
        "app.kubernetes.io/managed-by": "taskctl",
    });
    let params = PatchParams::apply("taskctl");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(c.client.clone(), "agent-system");
    config_maps
        .patch(
            "old-agent-config",
            &params,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "old-agent-config", "labels": labels},
                "data": {"a": "b"},
            })),
        )
        .await
        .expect("leftover ConfigMap");
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(c.client.clone(), "agent-system");
    claims
        .patch("data-old-0", &params, &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-old-0", "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        })))
        .await
        .expect("leftover claim");
    // Another environment's object is none of this one's business.
    config_maps
        .patch("staging-only", &params, &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "staging-only", "labels": {"taskctl.dev/environment": format!("{}.staging", profile.metadata.name), "app.kubernetes.io/managed-by": "taskctl"}},
        })))
        .await
        .expect("other environment's ConfigMap");

    let plan = c.plan(&provider, &profile).await;
    let changes: Vec<_> = plan.changes().collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let change = changes[0].change.as_ref().unwrap();
    assert_eq!(
        (changes[0].id.0.as_str(), change.action),
        ("kubernetes/prune", Action::Delete)
    );
    assert_eq!(change.diffs.len(), 1);
    assert_eq!(
        change.diffs[0].field,
        "ConfigMap agent-system/old-agent-config"
    );

    succeeded(&c.deploy(&provider, &profile).await);
    assert!(
        c.double
            .object("/api/v1/namespaces/agent-system/configmaps/old-agent-config")
            .is_none()
    );
    assert!(
        c.double
            .object("/api/v1/namespaces/agent-system/persistentvolumeclaims/data-old-0")
            .is_some()
    );
    assert!(
        c.double
            .object("/api/v1/namespaces/agent-system/configmaps/staging-only")
            .is_some()
    );

    // Not even with prune_all does the claim go: prune never deletes data.
    let all = c.provider(KubeOptions {
        prune_all: true,
        ..options()
    });
    let plan = c.plan(&all, &profile).await;
    let fields: Vec<String> = plan
        .changes()
        .filter(|s| s.id.0 == "kubernetes/prune")
        .flat_map(|s| {
            s.change
                .iter()
                .flat_map(|c| c.diffs.iter().map(|d| d.field.clone()))
        })
        .collect();
    assert!(
        !fields
            .iter()
            .any(|f| f.starts_with("PersistentVolumeClaim") || f.starts_with("Namespace")),
        "{fields:?}"
    );
    c.deploy(&all, &profile).await;
    assert!(
        c.double
            .object("/api/v1/namespaces/agent-system/persistentvolumeclaims/data-old-0")
            .is_some()
    );
}

/// The StatefulSets' claims (made by the double from their templates, as
/// the StatefulSet controller does) survive everything but
/// `destroy --delete-data`: a service removed from the profile and pruned
/// with `--prune-all`, and a plain destroy, leave every one; destroy with
/// `delete_data` removes them (and the namespaces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_survive_prune_all_and_destroy_and_go_only_with_delete_data() {
    let c = Cluster::start().await;
    let profile = production();
    let all = c.provider(KubeOptions {
        prune_all: true,
        ..options()
    });
    succeeded(&c.deploy(&all, &profile).await);
    let claims = c.claims();
    for want in [
        "/api/v1/namespaces/messaging/persistentvolumeclaims/data-rabbitmq-0",
        "/api/v1/namespaces/messaging/persistentvolumeclaims/data-rabbitmq-2",
    ] {
        assert!(claims.iter().any(|p| p == want), "{want} in {claims:?}");
    }

    // RabbitMQ taken out of the profile: its StatefulSet is pruned, its
    // three claims stay.
    let mut without = profile.clone();
    without.services.rabbitmq.as_mut().unwrap().enabled = false;
    succeeded(&c.deploy(&all, &without).await);
    assert!(
        c.double
            .object("/apis/apps/v1/namespaces/messaging/statefulsets/rabbitmq")
            .is_none(),
        "the StatefulSet is pruned"
    );
    assert_eq!(c.claims(), claims, "prune --prune-all kept every claim");

    // A plain destroy (even with prune_all) keeps the data.
    let outcome = c.destroy(&all, &profile).await;
    assert!(outcome.applied.is_some());
    assert_eq!(c.claims(), claims, "destroy kept every claim");
    assert!(c.double.object("/api/v1/namespaces/messaging").is_some());

    // destroy --delete-data: the claims of every rendered StatefulSet go,
    // with the namespaces, also those whose StatefulSet the plain destroy
    // already removed.
    let purge = c.provider(KubeOptions {
        delete_data: true,
        ..options()
    });
    let outcome = c.destroy(&purge, &profile).await;
    assert!(outcome.applied.is_some());
    let left = c.claims();
    assert!(
        !left.iter().any(|p| p.contains("/data-rabbitmq-")),
        "{left:?}"
    );
    assert!(c.double.object("/api/v1/namespaces/messaging").is_none());
}

async fn record(provider: &KubernetesProvider, profile: &Profile, revision: u32) -> Release {
    let facts = provider.observe_release(profile).await.expect("observed");
    Release {
        revision,
        environment: ops::environment_key(profile),
        run_id: format!("run-{revision}"),
        created_at: 1_700_000_000 + u64::from(revision),
        status: ReleaseStatus::Deployed,
        description: "deploy".into(),
        images: facts.images,
        config_hashes: facts.config_hashes,
        secret_refs: facts.secret_refs,
        secret_versions: facts.secret_versions,
        profile: serde_json::to_value(profile).unwrap(),
        checks: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_are_gzipped_secrets_and_rolling_back_applies_release_one() {
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let v1 = production();
    succeeded(&c.deploy(&provider, &v1).await);
    let store = provider.releases(&v1).expect("the cluster keeps releases");
    let r1 = record(&provider, &v1, 1).await;
    // The image is pinned by the digest the pods report.
    let image = &r1.images["task-executor"];
    assert!(image.starts_with("task-executor:1.0.0@sha256:"), "{image}");
    assert!(
        r1.config_hashes
            .contains_key("configmap/agent-system/agent-config"),
        "{:?}",
        r1.config_hashes
    );
    store.put(&r1).await.expect("release 1 stored");

    let mut v2 = v1.clone();
    v2.agents[0].replicas = 6;
    v2.agents[0].image = "task-executor:1.1.0".into();
    succeeded(&c.deploy(&provider, &v2).await);
    let mut superseded = r1.clone();
    superseded.status = ReleaseStatus::Superseded;
    store.put(&superseded).await.expect("release 1 superseded");
    store
        .put(&record(&provider, &v2, 2).await)
        .await
        .expect("release 2 stored");

    // One Secret per revision, of the release type, labelled, gzipped.
    let environment = taskctl_kube::provider::environment_label(&v1);
    let secret = c
        .double
        .object(&format!(
            "/api/v1/namespaces/taskctl-system/secrets/taskctl-release-{environment}-v1"
        ))
        .expect("release 1's Secret");
    assert_eq!(secret["type"], "taskctl.dev/release.v1");
    assert_eq!(
        secret["metadata"]["labels"]["taskctl.dev/release-of"],
        environment.as_str()
    );
    assert_eq!(secret["metadata"]["labels"]["taskctl.dev/revision"], "1");
    let data = secret["data"]["release"].as_str().expect("base64 data");
    let bytes = base64_decode(data);
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
    let back = taskctl_kube::release::decode("test", &bytes).expect("a release");
    assert_eq!(back, superseded);

    // Rollback to 1: deploy release 1's pinned profile.
    let current = store.current().await.unwrap().expect("a current release");
    assert_eq!(current.revision, 2);
    let pinned = store
        .get(1)
        .await
        .unwrap()
        .unwrap()
        .pinned_profile()
        .expect("a profile");
    succeeded(&c.deploy(&provider, &pinned).await);
    let d = agent_deployment(&c);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        image.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_ten_releases_are_kept() {
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let profile = production();
    let store = provider.releases(&profile).unwrap();
    for revision in 1..=12 {
        let mut r = record(&provider, &profile, revision).await;
        r.status = if revision == 12 {
            ReleaseStatus::Deployed
        } else {
            ReleaseStatus::Superseded
        };
        store.put(&r).await.unwrap();
    }
    let kept = store.list().await.unwrap();
    assert_eq!(kept.len(), 12);
    for revision in to_prune(&kept, 10) {
        store.delete(revision).await.unwrap();
    }
    let revisions: Vec<u32> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|r| r.revision)
        .collect();
    assert_eq!(revisions, (3..=12).collect::<Vec<_>>());
    let secrets: Vec<String> = c
        .double
        .paths()
        .into_iter()
        .filter(|p| p.contains("/secrets/taskctl-release-"))
        .collect();
    assert_eq!(secrets.len(), 10, "{secrets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deploy_is_refused_naming_the_lease_holder() {
    let c = Cluster::start().await;
    let profile = production();
    let environment = taskctl_kube::provider::environment_label(&profile);
    let alice = ClusterLock::with_holder(
        c.client.clone(),
        &environment,
        Duration::from_secs(60),
        "alice@ops-1/4242".into(),
    );
    let held = alice.acquire().await.expect("alice takes the lease");

    let bob = c.provider(KubeOptions {
        holder: Some("bob@ci-7/99".into()),
        ..options()
    });
    let outcome = c.deploy(&bob, &profile).await;
    let applied = outcome.applied.expect("bob's run started");
    let failed = applied.first_error().expect("refused");
    let message = &failed.error.as_ref().unwrap().message;
    assert!(message.contains("alice@ops-1/4242"), "{message}");
    assert!(message.contains("since"), "{message}");
    // Nothing of the environment was applied.
    assert!(c.patches().is_empty(), "{:?}", c.patches());

    // A plan needs no lock.
    assert!(c.plan(&bob, &profile).await.has_changes());

    held.release().await.expect("released");
    succeeded(&c.deploy(&bob, &profile).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over() {
    let c = Cluster::start().await;
    taskctl_kube::lock::ensure_system_namespace(&c.client)
        .await
        .unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), SYSTEM_NAMESPACE);
    let stale: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "taskctl-lock-x.production", "namespace": SYSTEM_NAMESPACE},
        "spec": {"holderIdentity": "gone@host/1", "acquireTime": "2020-01-01T00:00:00.000000Z",
                 "renewTime": "2020-01-01T00:00:00.000000Z", "leaseDurationSeconds": 60},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &stale).await.unwrap();
    let lock = ClusterLock::with_holder(
        c.client.clone(),
        "x.production",
        Duration::from_secs(60),
        "new@host/2".into(),
    );
    let guard = lock
        .acquire()
        .await
        .expect("the expired lease is taken over");
    let now = leases.get("taskctl-lock-x.production").await.unwrap();
    assert_eq!(
        now.spec.unwrap().holder_identity.as_deref(),
        Some("new@host/2")
    );
    guard.release().await.unwrap();
    assert!(
        leases
            .get_opt("taskctl-lock-x.production")
            .await
            .unwrap()
            .is_none()
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    // k8s-openapi's ByteString is base64 on the wire; reuse its decoder.
    let b: k8s_openapi::ByteString =
        serde_json::from_value(Value::String(s.into())).expect("base64");
    b.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_going_away_releases_its_lease_and_a_dead_holder_on_this_machine_is_taken_over()
{
    let c = Cluster::start().await;
    let profile = production();
    let environment = taskctl_kube::provider::environment_label(&profile);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), SYSTEM_NAMESPACE);
    let name = format!("taskctl-lock-{environment}");
    {
        let provider = c.provider(options());
        let store = Arc::new(LocalStore::new(
            c.state.path(),
            &ops::environment_key(&profile),
        ));
        let outcome = ops::deploy(
            &profile,
            &provider,
            store,
            Arc::new(Discard),
            DeployOptions {
                scope: Scope::all(),
                parallelism: 4,
                dry_run: false,
                saved_plan: None,
                grace: Duration::from_secs(5),
                retry: RetryPolicy::default(),
                cancel: CancellationToken::new(),
                skip_preflight: true,
            },
            &|_| true,
        )
        .await
        .unwrap();
        succeeded(&outcome);
        assert!(
            leases.get_opt(&name).await.unwrap().is_some(),
            "held during the run"
        );
    }
    assert!(
        leases.get_opt(&name).await.unwrap().is_none(),
        "released on drop"
    );

    // A lease of a process of this machine that is gone, renewed just now.
    let dead = format!("{}/999999999", taskctl_core::state::holder());
    let now = jiff::Timestamp::now().to_string();
    let lease: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE},
        "spec": {"holderIdentity": dead, "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 600},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let provider = c.provider(options());
    let mut changed = production();
    changed.agents[0].replicas = 4;
    succeeded(&c.deploy(&provider, &changed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_restarting_after_a_rollout_trip_resource_exhaustion_and_are_rolled_back() {
    let c = Cluster::start().await;
    let provider = c.provider(KubeOptions {
        watch_window: Some(Duration::from_secs(2)),
        ..options()
    });
    let mut profile = production();
    // Only the condition read from the pods' status: the other two reach
    // the agents and Prometheus through port-forwards, which the CLI's
    // kubernetes tests give real processes behind.
    profile
        .rollback
        .automatic
        .conditions
        .retain(|c| c.name() == "resource_exhaustion");
    let first = c.deploy(&provider, &profile).await;
    succeeded(&first);
    let checks = &first.release.as_ref().expect("release 1").checks;
    let exhaustion = checks
        .iter()
        .find(|c| c.name == "resource_exhaustion")
        .expect("resource_exhaustion watched");
    assert!(exhaustion.passed, "{exhaustion:?}");
    assert!(exhaustion.observed.contains("0 restarts"), "{exhaustion:?}");
    assert_eq!(checks.len(), 1, "{checks:?}");

    // The new version becomes ready, then its containers are OOM-killed.
    profile.agents[0].image = "task-executor:1.0.1-oomkilled".into();
    let outcome = c.deploy(&provider, &profile).await;
    succeeded(&outcome);
    let report = outcome.release.as_ref().expect("release 2");
    let failed = report.failed_check().expect("a failed condition");
    assert_eq!(failed.name, "resource_exhaustion");
    assert!(failed.observed.contains("OOM"), "{failed:?}");
    let Some(AfterFailure::RolledBack(rolled)) = &report.after_failure else {
        panic!("not rolled back: {:?}", report.after_failure);
    };
    assert_eq!(
        (rolled.to, rolled.revision),
        (1, Some(3)),
        "{:?}",
        rolled.error
    );
    assert!(
        rolled.checks.iter().all(|c| !c.failed()),
        "{:?}",
        rolled.checks
    );
    let image = agent_deployment(&c)["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image.starts_with("task-executor:1.0.0@sha256:"), "{image}");
}

/// Nothing listens behind the agents' pods (the double runs no
/// containers, and this test registers no process): the readiness gate,
/// reached through a port-forward, fails and says what the forward was
/// told, not only that a connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_through_a_port_forward_to_nothing_says_what_the_forward_was_told() {
    // SAFETY: nextest runs each test in a process of its own.
    unsafe { std::env::set_var("TASKCTL_GATE_TIMEOUT", "2s") };
    let c = Cluster::start().await;
    let provider = c.provider(options());
    let mut profile = production();
    profile.deployment.verification = vec![taskctl_core::profile::model::StepRef::Builtin(
        "check_service_health".into(),
    )];
    let outcome = c.deploy(&provider, &profile).await;
    succeeded(&outcome);
    let report = outcome.release.as_ref().expect("release 1");
    let failed = report.failed_check().expect("the readiness gate failed");
    assert!(
        failed
            .name
            .starts_with("check_service_health/agent-system/task-executor-"),
        "{failed:?}"
    );
    assert!(
        failed.observed.contains(
            "the port-forward says: error forwarding port 8080 to pod agent-system/task-executor-"
        ) && failed.observed.contains("no backend registered"),
        "{failed:?}"
    );
    // Through the API server, nothing else.
    assert!(
        c.double
            .requests()
            .iter()
            .any(|r| r.path.contains("/pods/task-executor-") && r.path.ends_with("/portforward"))
    );
}

/// The live object at `path`.
fn object(c: &Cluster, path: &str) -> Value {
    c.double
        .object(path)
        .unwrap_or_else(|| panic!("{path} does not exist"))
}

/// Every rolling workload that uses a secret → its checksum annotation.
fn checksums(c: &Cluster, manifests: &[Manifest]) -> BTreeMap<String, String> {
    manifests
        .iter()
        .filter(|m| taskctl_kube::secrets::rolls(&m.kind))
        .filter(|m| {
            !taskctl_kube::secrets::restarting_uses(m)
                .unwrap()
                .is_empty()
        })
        .map(|m| {
            let live = object(c, &path_of(m));
            let pointer = format!(
                "{}/metadata/annotations",
                taskctl_kube::secrets::pod_template(&m.kind).unwrap()
            );
            let sum = live
                .pointer(&pointer)
                .and_then(|a| a.get(taskctl_kube::secrets::SECRET_CHECKSUM))
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{} has no checksum annotation", m.id()))
                .to_string();
            (m.id(), sum)
        })
        .collect()
}

/// Every file under `dir`, as text (what a run left on disk).
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push_str(&all_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

fn assert_no_value(kv: &MemoryKv, what: &str, text: &str) {
    for value in kv.all_values().iter().filter(|v| v.len() >= 8) {
        assert!(
            !text.contains(value.as_str()),
            "{what} holds a secret value"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_secret_a_workload_references_is_made_from_the_resolver_before_the_workloads() {
    let c = Cluster::start().await;
    let kv = production_kv();
    let provider = c.provider(options_with(&kv));
    let profile = production();
    let manifests = provider.manifests(&profile).expect("render");
    succeeded(&c.deploy(&provider, &profile).await);

    let wanted = referenced_secrets(&manifests);
    assert!(
        wanted.contains(&("messaging".into(), "taskctl-messaging".into()))
            && wanted.contains(&("agent-system".into(), "taskctl-messaging".into()))
            && wanted.contains(&("database".into(), "taskctl-database".into())),
        "{wanted:?}"
    );
    let environment = taskctl_kube::provider::environment_label(&profile);
    let mut checked = 0;
    for m in &manifests {
        let ns = m.namespace.clone().unwrap_or_default();
        for u in taskctl_kube::secrets::uses(m).unwrap() {
            let secret = object(&c, &format!("/api/v1/namespaces/{ns}/secrets/{}", u.secret));
            assert_eq!(secret["type"], "Opaque");
            let labels = &secret["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/managed-by"], "taskctl");
            assert_eq!(labels["taskctl.dev/environment"], environment.as_str());
            assert_eq!(labels["app.kubernetes.io/part-of"], "task-execution-layer");
            assert_eq!(
                labels["app.kubernetes.io/instance"],
                profile.metadata.name.as_str()
            );
            assert_eq!(labels["app.kubernetes.io/name"], u.secret.as_str());
            let encoded = secret["data"][&u.key]
                .as_str()
                .unwrap_or_else(|| panic!("{ns}/{} has no key {}", u.secret, u.key));
            assert_eq!(
                String::from_utf8(base64_decode(encoded)).unwrap(),
                kv.value(&u.reference),
                "{ns}/{} key {} (for {})",
                u.secret,
                u.key,
                m.id()
            );
            // The annotation says where each key came from, never what it is.
            let sources = secret["metadata"]["annotations"]["taskctl.dev/secret-sources"]
                .as_str()
                .unwrap();
            assert!(sources.contains(&format!("{}=vault:", u.key)), "{sources}");
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} secret keys checked");

    // Applied after the config level and before the first workload.
    let patches: Vec<String> = c.patches().into_iter().map(|p| p.path).collect();
    let last_secret = patches
        .iter()
        .rposition(|p| p.contains("/secrets/"))
        .unwrap();
    let first_workload = patches
        .iter()
        .position(|p| p.contains("/statefulsets/") || p.contains("/deployments/"))
        .unwrap();
    let last_config = patches
        .iter()
        .rposition(|p| p.contains("/configmaps/"))
        .unwrap();
    assert!(last_config < last_secret && last_secret < first_workload);

    // Rolling workloads carry the checksum; the Job (immutable template) not.
    let sums = checksums(&c, &manifests);
    assert!(sums.values().all(|s| s.starts_with("sha256:")), "{sums:?}");
    for m in manifests.iter().filter(|m| m.kind == "Job") {
        let live = object(&c, &path_of(m));
        assert!(
            live.pointer("/spec/template/metadata/annotations/taskctl.dev~1secret-checksum")
                .is_none()
        );
    }
    // `render` (what `render manifests` prints) stays references only.
    assert!(manifests.iter().all(|m| m.kind != "Secret"));
    assert_no_value(
        &kv,
        "the rendered manifests",
        &taskctl_kube::to_yaml_stream(&manifests),
    );

    // Prune, even with prune_all, leaves the Secrets the workloads use and
    // the release records alone.
    let all = c.provider(KubeOptions {
        prune_all: true,
        ..options_with(&kv)
    });
    let plan = c.plan(&all, &profile).await;
    assert!(
        !plan.has_changes(),
        "{:?}",
        plan.changes().collect::<Vec<_>>()
    );
    succeeded_or_nothing(&c.deploy(&all, &profile).await);
    for (ns, name) in &wanted {
        object(&c, &format!("/api/v1/namespaces/{ns}/secrets/{name}"));
    }
    let releases = all.releases(&profile).unwrap().list().await.unwrap();
    assert!(!releases.is_empty());
}

fn succeeded_or_nothing(outcome: &DeployOutcome) {
    if outcome.applied.is_some() {
        succeeded(outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_of_one_secret_rolls_exactly_its_dependents_and_plans_show_no_value() {
    let c = Cluster::start().await;
    let kv = production_kv();
    let profile = production();
    let first = c.provider(options_with(&kv));
    let manifests = first.manifests(&profile).expect("render");
    succeeded(&c.deploy(&first, &profile).await);
    let before = checksums(&c, &manifests);

    // A rotation writes version 2 of the database secret.
    assert_eq!(
        kv.write(
            "secret/database",
            &[
                ("keyfile", "mongo-keyfile-v2-Ty6Ue"),
                ("password", "mongo-root-v2-Pl0Ok"),
            ],
        ),
        2
    );
    let dependents: BTreeSet<String> = manifests
        .iter()
        .filter(|m| before.contains_key(&m.id()))
        .filter(|m| {
            taskctl_kube::secrets::uses(m).unwrap().iter().any(
                |u| matches!(&u.reference, SecretRef::Vault { path, .. } if path == "secret/database"),
            )
        })
        .map(|m| m.id())
        .collect();
    assert!(!dependents.is_empty());
    assert!(
        dependents.len() < before.len(),
        "some workloads do not use it"
    );

    // The next run (a fresh resolver) plans the Secret's keys by reference
    // and version, never by value.
    let second = c.provider(options_with(&kv));
    let plan = c.plan(&second, &profile).await;
    let step = plan
        .changes()
        .find(|s| s.id.0 == "kubernetes/secrets")
        .expect("the Secrets change");
    let diffs = &step.change.as_ref().unwrap().diffs;
    let root = diffs
        .iter()
        .find(|d| d.field == "Secret database/taskctl-database: data[password]")
        .unwrap_or_else(|| panic!("{diffs:?}"));
    assert_eq!(
        root.from,
        "vault:secret/database?version=1#password (another value)"
    );
    assert_eq!(root.to, "vault:secret/database?version=2#password");
    assert!(
        diffs.iter().all(|d| d.field.contains("database/")),
        "{diffs:?}"
    );
    let workloads = plan
        .changes()
        .find(|s| s.id.0 == "kubernetes/workloads")
        .expect("the workloads change");
    let changed: BTreeSet<String> = workloads
        .change
        .as_ref()
        .unwrap()
        .diffs
        .iter()
        .map(|d| {
            assert!(d.field.ends_with("[taskctl.dev/secret-checksum]"), "{d:?}");
            d.field.split(':').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(changed, dependents);
    assert_no_value(&kv, "the plan", &format!("{plan:?}"));
    let changes: Vec<String> = plan
        .steps
        .iter()
        .map(|s| serde_json::to_string(&s.change).unwrap())
        .collect();
    assert_no_value(&kv, "the plan as JSON", &changes.join("\n"));

    // Deploying rolls exactly the dependents.
    let outcome = c.deploy(&second, &profile).await;
    succeeded(&outcome);
    let after = checksums(&c, &manifests);
    for (id, sum) in &before {
        assert_eq!(
            after[id] != *sum,
            dependents.contains(id),
            "{id}: before {sum}, after {}",
            after[id]
        );
    }
    let secret = object(&c, "/api/v1/namespaces/database/secrets/taskctl-database");
    assert_eq!(
        base64_decode(secret["data"]["password"].as_str().unwrap()),
        b"mongo-root-v2-Pl0Ok"
    );
    assert_no_value(
        &kv,
        "the deploy report",
        &format!("{:?} {:?}", outcome.plan, outcome.applied),
    );
    assert_no_value(&kv, "the journal and state", &all_text(c.state.path()));
    // The release record names the KV versions, for a rollback to pin.
    let facts = second.observe_release(&profile).await.unwrap();
    assert_eq!(facts.secret_versions["secret/database"], 2);
    assert_eq!(facts.secret_versions["secret/messaging"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_resolver_a_missing_secret_fails_the_plan_naming_it_and_its_reference() {
    let c = Cluster::start().await;
    let provider = c.provider(KubeOptions {
        secrets: None,
        ..options()
    });
    let profile = production();
    let plan = c.plan(&provider, &profile).await;
    let failed = plan.first_error().expect("the secrets step fails");
    assert_eq!(failed.id.0, "kubernetes/secrets");
    let message = &failed.error.as_ref().unwrap().message;
    assert!(
        message.contains("Deployment agent-system/task-executor needs key `password` of Secret agent-system/taskctl-messaging (from vault:secret/messaging#password), which does not exist"),
        "{message}"
    );
    assert!(
        message.contains("only with a secret resolver, and none is configured"),
        "{message}"
    );

    // Made by hand, they are used as they are: nothing is made.
    let with = c.provider(options());
    succeeded(&c.deploy(&with, &profile).await);
    c.double.clear_requests();
    let plan = c.plan(&provider, &profile).await;
    assert!(plan.first_error().is_none(), "{:?}", plan.first_error());
    let secrets = plan
        .steps
        .iter()
        .find(|s| s.id.0 == "kubernetes/secrets")
        .unwrap();
    assert_eq!(secrets.change.as_ref().unwrap().action, Action::NoOp);
}

/// An object of a rendered name that another environment (or someone
/// without taskctl) made is never taken over: the deploy fails naming it
/// and its owner, and the object is unchanged; destroy leaves it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_another_owner_is_refused_not_overwritten() {
    let c = Cluster::start().await;
    let profile = production();
    let provider = c.provider(options());
    let theirs = format!("{}.staging", profile.metadata.name);
    let ours = taskctl_kube::provider::environment_label(&profile);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
    namespaces
        .patch(
            "agent-system",
            &PatchParams::apply("taskctl"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "agent-system", "labels": {
                    "taskctl.dev/environment": ours, "app.kubernetes.io/managed-by": "taskctl"}},
            })),
        )
        .await
        .expect("the namespace, as an earlier deploy left it");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(c.client.clone(), "agent-system");
    config_maps
        .patch(
            "agent-config",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "agent-config", "labels": {
                    "taskctl.dev/environment": theirs, "app.kubernetes.io/managed-by": "taskctl"}},
                "data": {"broker_url": "amqps://theirs:5671/%2f"},
            })),
        )
        .await
        .expect("the other environment's ConfigMap");

    let outcome = c.deploy(&provider, &profile).await;
    let report = outcome.applied.as_ref().unwrap_or(&outcome.plan);
    let failed = report.first_error().expect("the deploy is refused");
    let message = failed.error.as_ref().unwrap().to_string();
    assert!(
        message.contains("ConfigMap agent-system/agent-config exists and belongs to environment")
            && message.contains(&theirs)
            && message.contains("refusing to take it over"),
        "{message}"
    );
    let live = c
        .double
        .object("/api/v1/namespaces/agent-system/configmaps/agent-config")
        .unwrap();
    assert_eq!(live["data"]["broker_url"], "amqps://theirs:5671/%2f");
    assert_eq!(
        live["metadata"]["labels"]["taskctl.dev/environment"],
        theirs
    );
}
