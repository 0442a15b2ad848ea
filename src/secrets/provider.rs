//! [`WithSecrets`]: a target's provider with the secrets' steps before its own.

use super::broker::{BrokerUser, BrokerUserStep};
use super::cluster::{VaultClusterStep, agent_roles};
use super::cluster_broker::ClusterBrokerStep;
use super::managed_step::ManagedSecretStep;
use super::*;
use taskctl_core::engine::After;

/// The step that initializes and unseals a Vault taskctl runs.
const CLUSTER_STEP: &str = "vault/cluster";
/// The step that makes the agents' broker user.
const BROKER_STEP: &str = "secrets/broker-user";

/// A provider with the profile's managed secrets and broker user.
pub struct WithSecrets {
    pub inner: Box<dyn Provider>,
    pub vault: Arc<LazyVault>,
    pub secrets: Arc<Secrets>,
    /// Names of `secrets.entries` to rotate now.
    pub rotate: Vec<String>,
    /// Destroy: no secret step (secrets are kept, and a destroy must not
    /// need Vault).
    pub destroying: bool,
    /// Which rotated secrets this target can move its consumers onto.
    pub rotation: Rotation,
}

/// Which managed secrets a target can rotate: the ones whose every
/// consumer follows a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Every one (docker: the broker user step, services restarted on new
    /// files, agents rolled one replica at a time).
    All,
    /// Targets kubernetes and aws: those the agents and the in-cluster RabbitMQ
    /// use (its own user's password is changed through its management
    /// API, its certificate rolls its pods, its Erlang cookie is kept);
    /// not those of MongoDB, PostgreSQL or Grafana, which take their
    /// password at first boot only.
    InCluster,
}

impl Rotation {
    /// Why `entry` cannot be rotated on this target, if it cannot.
    fn refusal(self, target: &str, profile: &Profile, entry: &Entry) -> Option<String> {
        match self {
            Rotation::All => None,
            Rotation::InCluster => {
                let services: Vec<String> = services_using(profile, &entry.path)
                    .into_iter()
                    .filter(|s| s != "rabbitmq")
                    .collect();
                (!services.is_empty()).then(|| {
                    format!(
                        "on target {target} the in-cluster {} take{} it at first boot only, and taskctl does not change it in them: a rotated value would lock them out",
                        services.join(" and "),
                        if services.len() == 1 { "s" } else { "" }
                    )
                })
            }
        }
    }
}

impl WithSecrets {
    fn refusal(&self, profile: &Profile, entry: &Entry) -> Option<String> {
        self.rotation.refusal(self.inner.name(), profile, entry)
    }

    /// The in-cluster RabbitMQ's own user, when the target runs the broker
    /// and can reach its management API (target kubernetes), and the
    /// profile gives its password as a Vault reference (targets kubernetes
    /// and aws).
    fn cluster_broker(
        &self,
        profile: &Profile,
        secret_steps: &[StepId],
    ) -> Result<Option<ClusterBrokerStep>, OpsError> {
        if self.rotation != Rotation::InCluster {
            return Ok(None);
        }
        let Some(password) = profile
            .services
            .rabbitmq
            .as_ref()
            .filter(|r| r.enabled && r.external.is_none())
            .and_then(|r| r.credentials.as_ref())
            .and_then(|c| c.get())
            .filter(|r| matches!(r, SecretRef::Vault { .. }))
        else {
            return Ok(None);
        };
        let Some(management) = self.inner.broker_management(profile) else {
            return Ok(None);
        };
        Ok(Some(ClusterBrokerStep {
            id: StepId::new(BROKER_STEP),
            deps: secret_steps.to_vec(),
            username: taskctl_kube::view::broker_default_user(profile),
            password: password.clone(),
            management,
            secrets: self.secrets.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .map_err(|e| OpsError::Provider(format!("HTTP client: {e}")))?,
        }))
    }

    fn secret_steps(
        &self,
        profile: &Profile,
        scope: &Scope,
    ) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        let mut steps: Vec<Arc<dyn Step>> = Vec::new();
        if self.destroying {
            return Ok(steps);
        }
        // A Vault in the cluster is part of the services: a run without
        // them (`--only infrastructure` on aws) cannot reach it, and the
        // infrastructure takes no secret.
        if in_cluster(profile) && !scope.includes(Layer::Services) {
            return Ok(steps);
        }
        for entry in entries(profile) {
            if self.rotate.contains(&entry.name)
                && let Some(why) = self.refusal(profile, &entry)
            {
                return Err(OpsError::Provider(format!(
                    "`secrets rotate {}`: {why}",
                    entry.name
                )));
            }
        }
        for name in &self.rotate {
            if !profile.secrets.entries.contains_key(name) {
                return Err(OpsError::Provider(format!(
                    "no secret `{name}` in the profile's secrets.entries (it has: {})",
                    profile
                        .secrets
                        .entries
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut ids = Vec::new();
        let cluster = profile
            .services
            .vault
            .as_ref()
            .and_then(|v| v.cluster.as_ref());
        let mut first = Vec::new();
        if let Some(c) = cluster {
            // A Vault the target runs: its nodes, through the target, for
            // this step and for the client the secrets' steps use.
            let nodes_from = c
                .nodes
                .is_empty()
                .then(|| self.inner.vault_nodes(profile))
                .flatten();
            if let Some(nodes) = &nodes_from {
                self.vault.set_nodes(nodes.clone());
            }
            let id = StepId::new(CLUSTER_STEP);
            first.push(id.clone());
            ids.push(id.clone());
            steps.push(Arc::new(VaultClusterStep {
                id,
                spec: taskctl_vault::sys::ClusterSpec {
                    nodes: c.nodes.clone(),
                    key_shares: c.key_shares,
                    key_threshold: c.key_threshold,
                    keys_file: c.keys_file.clone().into(),
                    recovery_pgp_keys: c
                        .recovery_pgp_keys
                        .iter()
                        .map(|f| taskctl_vault::sys::PgpKey::read(std::path::Path::new(f)))
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            OpsError::Provider(format!(
                                "services.vault.cluster.recovery_pgp_keys: {e}"
                            ))
                        })?,
                },
                bootstrap: taskctl_vault::setup::Bootstrap {
                    mount: profile.secrets.mount.clone(),
                    approle_file: c.approle_path(),
                    agents: match &c.kubernetes_host {
                        None => None,
                        Some(host) => Some(taskctl_vault::setup::AgentsAuth {
                            kubernetes_host: host.clone(),
                            kubernetes_ca_cert: match &c.kubernetes_ca_file {
                                None => None,
                                Some(f) => Some(std::fs::read_to_string(f).map_err(|e| {
                                    OpsError::Provider(format!(
                                        "services.vault.cluster.kubernetes_ca_file {f}: {e}"
                                    ))
                                })?),
                            },
                            roles: agent_roles(profile),
                        }),
                    },
                },
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| OpsError::Provider(format!("HTTP client: {e}")))?,
                nodes_from,
            }));
        }
        for entry in entries(profile) {
            let id = StepId::new(format!("secrets/{}", entry.name));
            ids.push(id.clone());
            steps.push(Arc::new(ManagedSecretStep {
                deps: first.clone(),
                id,
                force: self.rotate.contains(&entry.name),
                pinned: pinned(profile, &entry.path) || self.refusal(profile, &entry).is_some(),
                entry,
                vault: self.vault.clone(),
                secrets: self.secrets.clone(),
            }));
        }
        if let Some(user) = BrokerUser::from_profile(profile).map_err(OpsError::Provider)? {
            let id = StepId::new(BROKER_STEP);
            steps.push(Arc::new(BrokerUserStep {
                id,
                deps: ids,
                user,
                secrets: self.secrets.clone(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| OpsError::Provider(format!("HTTP client: {e}")))?,
            }));
        } else if scope.includes(Layer::Services)
            && let Some(step) = self.cluster_broker(profile, &ids)?
        {
            steps.push(Arc::new(step));
        }
        Ok(steps)
    }
}

#[async_trait]
impl Provider for WithSecrets {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn layers(&self) -> Vec<Layer> {
        self.inner.layers()
    }

    /// Vault first, when the profile needs it: an unreachable, sealed or
    /// uninitialized Vault, or a token that cannot read a referenced path,
    /// is reported before anything changes.
    async fn preflight(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Finding>, OpsError> {
        let needs_vault = !profile.secrets.entries.is_empty()
            || taskctl_core::secrets::references(profile)
                .iter()
                .any(|r| matches!(r, SecretRef::Vault { .. }));
        // A cluster taskctl unseals itself cannot be asked before its step.
        let own_cluster = profile
            .services
            .vault
            .as_ref()
            .is_some_and(|v| v.cluster.is_some());
        if needs_vault && !self.destroying && !own_cluster {
            let vault = match self.vault.get().await {
                Ok(v) => v,
                Err(e) => {
                    return Ok(vec![Finding {
                        severity: Severity::Error,
                        check: "vault".into(),
                        message: e,
                    }]);
                }
            };
            let now = SystemTime::now();
            let mut findings = Vec::new();
            for entry in entries(profile) {
                match managed::status(vault, &entry.managed, now).await {
                    Ok(s) => {
                        let rotate = self.refusal(profile, &entry).is_none()
                            && !pinned(profile, &entry.path)
                            && (s.due || self.rotate.contains(&entry.name));
                        if s.version.is_none() || rotate {
                            self.secrets.mark_pending(&entry.path);
                        }
                    }
                    Err(e) => findings.push(Finding {
                        severity: Severity::Error,
                        check: "secrets".into(),
                        message: format!("secrets.entries.{}: {e}", entry.name),
                    }),
                }
            }
            if !findings.is_empty() {
                return Ok(findings);
            }
        }
        self.inner.preflight(profile, scope).await
    }

    /// The secrets' steps ordered among the target's (see
    /// [`Provider::secrets_order`]): Vault's cluster step after the target's
    /// `Before` steps (a Vault container taskctl runs), the managed secrets
    /// after it, the services that take them next, then the broker user
    /// (on the broker those services may include), then everything else.
    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        let secret_steps = self.secret_steps(profile, scope)?;
        let inner = self.inner.steps(profile, scope)?;
        if secret_steps.is_empty() {
            return Ok(inner);
        }
        let order = |s: &Arc<dyn Step>| self.inner.secrets_order(s.id());
        let before: Vec<StepId> = inner
            .iter()
            .filter(|s| order(s) == SecretsOrder::Before)
            .map(|s| s.id().clone())
            .collect();
        let services: Vec<StepId> = inner
            .iter()
            .filter(|s| order(s) == SecretsOrder::AfterSecrets)
            .map(|s| s.id().clone())
            .collect();
        let broker = StepId::new(BROKER_STEP);
        let made: Vec<StepId> = secret_steps
            .iter()
            .map(|s| s.id().clone())
            .filter(|id| *id != broker)
            .collect();
        let all: Vec<StepId> = secret_steps.iter().map(|s| s.id().clone()).collect();
        let mut steps: Vec<Arc<dyn Step>> = Vec::new();
        for step in secret_steps {
            let extra = if step.id().as_str() == CLUSTER_STEP {
                before.clone()
            } else if *step.id() == broker {
                services.clone()
            } else {
                Vec::new()
            };
            steps.push(if extra.is_empty() {
                step
            } else {
                Arc::new(After { inner: step, extra })
            });
        }
        for step in inner {
            let extra = match order(&step) {
                SecretsOrder::Before => Vec::new(),
                SecretsOrder::AfterSecrets => made.clone(),
                SecretsOrder::AfterAll => all.clone(),
            };
            steps.push(if extra.is_empty() {
                step
            } else {
                Arc::new(After { inner: step, extra })
            });
        }
        Ok(steps)
    }

    fn vault_nodes(&self, profile: &Profile) -> Option<Arc<dyn taskctl_core::ops::PodPorts>> {
        self.inner.vault_nodes(profile)
    }

    fn broker_management(&self, profile: &Profile) -> Option<Arc<dyn taskctl_core::ops::PodPorts>> {
        self.inner.broker_management(profile)
    }

    fn release_layers(&self) -> Vec<Layer> {
        self.inner.release_layers()
    }

    fn releases(&self, profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        self.inner.releases(profile).map(|inner| {
            Arc::new(RedactingReleases {
                inner,
                redactor: crate::redact::registry().clone(),
            }) as Arc<dyn ReleaseStore>
        })
    }

    async fn observe_release(&self, profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        let mut facts = self.inner.observe_release(profile).await?;
        for (path, version) in self.secrets.versions_used() {
            facts.secret_versions.entry(path).or_insert(version);
        }
        Ok(facts)
    }

    async fn verify(
        &self,
        profile: &Profile,
        sink: Arc<dyn EventSink>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        self.inner.verify(profile, sink, cancel).await
    }

    async fn verify_backups(
        &self,
        profile: &Profile,
        target: &Release,
    ) -> Result<Option<String>, OpsError> {
        self.inner.verify_backups(profile, target).await
    }

    async fn prerequisite(
        &self,
        profile: &Profile,
        name: &str,
        target: &Release,
    ) -> Result<String, OpsError> {
        self.inner.prerequisite(profile, name, target).await
    }

    async fn workloads(&self, profile: &Profile) -> Result<Option<Vec<Workload>>, OpsError> {
        self.inner.workloads(profile).await
    }

    async fn checklist_probes(
        &self,
        profile: &Profile,
    ) -> Result<Option<Vec<taskctl_core::ops::checklist::Probe>>, OpsError> {
        self.inner.checklist_probes(profile).await
    }
}

/// `inner` with the profile's managed secrets and broker user.
pub fn wrap(
    inner: Box<dyn Provider>,
    secrets: Arc<Secrets>,
    vault: Arc<LazyVault>,
    rotate: Vec<String>,
    destroying: bool,
) -> Box<dyn Provider> {
    Box::new(WithSecrets {
        inner,
        vault,
        secrets,
        rotate,
        destroying,
        rotation: Rotation::All,
    })
}
