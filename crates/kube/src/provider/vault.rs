//! The Vault StatefulSet taskctl initializes and unseals
//! (`services.vault.cluster` without `nodes`): its objects apply in their
//! own step (`kubernetes/vault`, waited for until its pods run, since a
//! sealed server is never ready), and its nodes are its pods, reached
//! through port-forwards of the API server ([`PodNodes`], which also
//! reaches the in-cluster broker's management API).

use super::*;
use crate::forward::Forward;
use crate::view::VAULT;
use taskctl_core::ops::PodPorts;

/// The step that applies the Vault StatefulSet and its Services.
pub(super) const VAULT_STEP: &str = "kubernetes/vault";

/// The label value of the Vault objects (`app.kubernetes.io/name`).
const VAULT_NAME: &str = "vault";

/// The API port of every Vault pod.
const API_PORT: u16 = 8200;

/// Whether taskctl deploys Vault into the cluster and initializes and
/// unseals it itself (its nodes are the pods): [`Profile::vault_in_cluster`].
pub fn taskctl_unseals(profile: &Profile) -> bool {
    profile.vault_in_cluster()
}

/// The StatefulSet's replicas, as the view renders them.
fn replicas(profile: &Profile) -> u32 {
    profile
        .services
        .vault
        .as_ref()
        .map(|v| {
            if v.ha.enabled {
                v.ha.replicas.max(1)
            } else {
                1
            }
        })
        .unwrap_or(1)
}

/// A workload-level object of the in-cluster Vault (its StatefulSet and
/// Services), which `kubernetes/vault` applies.
pub(super) fn is_vault_workload(m: &Manifest) -> bool {
    m.level == ApplyLevel::Workloads
        && m.namespace.as_deref() == Some(VAULT)
        && m.value
            .pointer("/metadata/labels/app.kubernetes.io~1name")
            .and_then(Value::as_str)
            == Some(VAULT_NAME)
}

/// The pods `<set>-0` … `<set>-N` of a StatefulSet, one port of each
/// through a port-forward opened on first use and kept for the run.
pub(super) struct PodNodes {
    pub(super) shared: Arc<Shared>,
    namespace: String,
    set: String,
    replicas: u32,
    port: u16,
    /// Every pod must run (a Vault's nodes, all unsealed together); else
    /// the pods that run are enough (any broker node changes a user).
    all: bool,
    forwards: tokio::sync::Mutex<BTreeMap<String, Forward>>,
}

impl PodNodes {
    /// The Vault StatefulSet's pods, port 8200.
    pub(super) fn vault(shared: Arc<Shared>, profile: &Profile) -> PodNodes {
        PodNodes {
            shared,
            namespace: VAULT.into(),
            set: VAULT_NAME.into(),
            replicas: replicas(profile),
            port: API_PORT,
            all: true,
            forwards: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The RabbitMQ StatefulSet's pods, the management port.
    pub(super) fn broker(shared: Arc<Shared>, replicas: u32) -> PodNodes {
        PodNodes {
            shared,
            namespace: crate::view::MESSAGING.into(),
            set: "rabbitmq".into(),
            replicas,
            port: 15672,
            all: false,
            forwards: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }
}

#[async_trait]
impl PodPorts for PodNodes {
    /// The pods that run, once all do (or, when not all are needed, any);
    /// none while none does (a cluster or a StatefulSet this run creates);
    /// an error naming the pods missing when all are needed and only some
    /// run.
    async fn nodes(&self) -> Result<Vec<(String, String)>, OpsError> {
        let Some(client) = self.shared.client.get(None).await.map_err(ops_error)? else {
            return Ok(Vec::new());
        };
        let ns = self.namespace.as_str();
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let mut running = Vec::new();
        let mut missing = Vec::new();
        for i in 0..self.replicas {
            let name = format!("{}-{i}", self.set);
            let pod = pods.get_opt(&name).await.map_err(|e| {
                OpsError::Provider(format!("reading pod {ns}/{name}: {}", error_chain(&e)))
            })?;
            let phase = pod
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.clone());
            match phase.as_deref() {
                Some("Running") => running.push(name),
                Some(other) => missing.push(format!("{name} ({other})")),
                None => missing.push(format!("{name} (absent)")),
            }
        }
        if running.is_empty() {
            return Ok(Vec::new());
        }
        if self.all && !missing.is_empty() {
            return Err(OpsError::Provider(format!(
                "the StatefulSet {} in namespace {ns} runs {} of {} pods: {} not running; see `kubectl -n {ns} describe pod`",
                self.set,
                running.len(),
                self.replicas,
                missing.join(", ")
            )));
        }
        let mut forwards = self.forwards.lock().await;
        let mut nodes = Vec::new();
        for name in running {
            if !forwards.contains_key(&name) {
                let f = Forward::open(&client, ns, &name, self.port)
                    .await
                    .map_err(|e| {
                        OpsError::Provider(format!(
                            "cannot listen on loopback for a port-forward to pod {ns}/{name}:{}: {e}",
                            self.port
                        ))
                    })?;
                forwards.insert(name.clone(), f);
            }
            let addr = forwards[&name].addr();
            nodes.push((name, format!("http://{addr}")));
        }
        Ok(nodes)
    }
}
