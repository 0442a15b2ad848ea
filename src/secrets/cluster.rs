//! `vault/cluster`: the raft cluster taskctl initializes, unseals and sets up.

use super::*;

/// One Kubernetes auth role per agent: its service account (named as the
/// agent, in its namespace) and the Vault paths (under the mount) its env
/// references.
pub(crate) fn agent_roles(profile: &Profile) -> Vec<taskctl_vault::setup::AgentRole> {
    profile
        .agents
        .iter()
        .map(|a| {
            let mut paths: Vec<String> = a
                .env
                .iter()
                .filter_map(|v| v.secret.as_ref().and_then(|s| s.get()))
                .filter_map(|r| match r {
                    SecretRef::Vault { path, .. } => {
                        Some(split_mount(path, &profile.secrets.mount).1.to_string())
                    }
                    SecretRef::Env { .. } => None,
                })
                .collect();
            paths.sort();
            paths.dedup();
            taskctl_vault::setup::AgentRole {
                name: a.name.clone(),
                namespace: a.namespace.clone(),
                service_account: a.name.clone(),
                paths,
            }
        })
        .collect()
}

/// The output of a target's step that starts a server in this run
/// (`true`): a Vault server among them cannot be asked at plan time.
pub(crate) use taskctl_core::ops::STARTS_OUTPUT as STARTS;

/// The cluster step's output saying Vault can be asked (`true`/`false`).
pub(crate) const READY: &str = "ready";

/// `vault/cluster`: the profile's raft cluster is initialized and every
/// node unsealed (crates/vault's `sys`). A second run changes nothing; a
/// sealed node is named in the plan.
pub(crate) struct VaultClusterStep {
    pub(crate) id: StepId,
    pub(crate) spec: taskctl_vault::sys::ClusterSpec,
    /// Set up after initialization: KV mount, policy, AppRole file; then
    /// the root token is revoked.
    pub(crate) bootstrap: taskctl_vault::setup::Bootstrap,
    pub(crate) http: reqwest::Client,
    /// Nodes the target reaches itself (pods through port-forwards): the
    /// spec's `nodes` are then resolved at plan and apply time.
    pub(crate) nodes_from: Option<Arc<dyn PodPorts>>,
}

/// The spec with the nodes as reached now, and each node's name as the
/// user knows it (its address, or its pod's name).
struct Resolved {
    spec: taskctl_vault::sys::ClusterSpec,
    names: Vec<(String, String)>,
}

impl Resolved {
    /// The node's name for an address.
    fn name<'a>(&'a self, addr: &'a str) -> &'a str {
        self.names
            .iter()
            .find(|(_, a)| a == addr)
            .map_or(addr, |(n, _)| n.as_str())
    }

    /// An error of the cluster's, its forwarded addresses named by pod.
    fn error(&self, e: taskctl_vault::VaultError) -> StepError {
        let mut message = e.to_string();
        for (name, addr) in &self.names {
            if name != addr {
                message = message.replace(addr.as_str(), &format!("{name} (port-forward {addr})"));
            }
        }
        StepError::new(ErrorKind::Other, message)
    }
}

impl VaultClusterStep {
    /// The nodes as reached now; `None` when the target's nodes do not
    /// run yet.
    async fn resolve(&self) -> Result<Option<Resolved>, StepError> {
        let Some(source) = &self.nodes_from else {
            return Ok(Some(Resolved {
                spec: self.spec.clone(),
                names: self
                    .spec
                    .nodes
                    .iter()
                    .map(|n| (n.clone(), n.clone()))
                    .collect(),
            }));
        };
        let nodes = source
            .nodes()
            .await
            .map_err(|e| StepError::new(ErrorKind::Other, e.to_string()))?;
        if nodes.is_empty() {
            return Ok(None);
        }
        let mut spec = self.spec.clone();
        spec.nodes = nodes.iter().map(|(_, a)| a.clone()).collect();
        Ok(Some(Resolved { spec, names: nodes }))
    }

    /// Initialized, but taskctl's AppRole not set up yet (a run stopped
    /// between the two, or the first run).
    fn needs_bootstrap(&self) -> bool {
        self.spec.keys_file.exists() && !self.bootstrap.approle_file.exists()
    }
}

pub(crate) fn cluster_error(e: taskctl_vault::VaultError) -> StepError {
    StepError::new(ErrorKind::Other, e.to_string())
}

#[async_trait]
impl Step for VaultClusterStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "vault-cluster"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(180)
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        // A Vault server this run starts (the docker target's container)
        // cannot be asked yet: say what happens once it runs.
        let starts = ctx
            .dep_outputs()
            .any(|(_, o)| o.get(STARTS).map(String::as_str) == Some("true"));
        let resolved = if starts { None } else { self.resolve().await? };
        let Some(resolved) = resolved else {
            let mut outputs: Outputs =
                [("nodes".to_string(), self.spec.nodes.len().to_string())].into();
            outputs.insert(READY.into(), "false".into());
            let change = if self.spec.keys_file.exists() {
                Change::update(vec![FieldDiff::new(
                    "nodes",
                    "starting in this run",
                    "unsealed",
                )])
            } else {
                Change::create(format!(
                    "started in this run, then initialized: {} shares, {} needed, keys to {}",
                    self.spec.key_shares,
                    self.spec.key_threshold,
                    self.spec.keys_file.display()
                ))
            };
            return Ok(StepPlan { change, outputs });
        };
        let actions = taskctl_vault::sys::plan_cluster(&self.http, &resolved.spec)
            .await
            .map_err(|e| resolved.error(e))?;
        let mut outputs: Outputs =
            [("nodes".to_string(), resolved.spec.nodes.len().to_string())].into();
        let change = if actions.iter().any(|(_, a)| *a == "initialize") {
            let auto = actions
                .iter()
                .any(|(_, a)| *a == taskctl_vault::sys::PLAN_WAIT_AUTO_UNSEAL);
            Change::create(format!(
                "not initialized: {} {} shares, {} needed, keys to {}{}",
                self.spec.key_shares,
                if auto { "recovery key" } else { "unseal key" },
                self.spec.key_threshold,
                self.spec.keys_file.display(),
                match self.spec.recovery_pgp_keys.len() {
                    0 => String::new(),
                    n => format!(", encrypted to {n} PGP keys"),
                }
            ))
        } else {
            let diffs: Vec<FieldDiff> = actions
                .iter()
                .filter(|(_, a)| *a != "none")
                .map(|(node, _)| {
                    FieldDiff::new(
                        format!("node {}", resolved.name(node)),
                        "sealed",
                        "unsealed",
                    )
                })
                .collect();
            let mut diffs = diffs;
            if self.needs_bootstrap() {
                diffs.push(FieldDiff::new(
                    "taskctl's access",
                    "root token",
                    format!(
                        "AppRole in {}, root token revoked",
                        self.bootstrap.approle_file.display()
                    ),
                ));
            }
            if diffs.is_empty() {
                Change::none()
            } else {
                Change::update(diffs)
            }
        };
        // Until this step has run, the secrets' steps cannot ask Vault.
        outputs.insert(READY.into(), (!change.action.is_change()).to_string());
        Ok(StepPlan { change, outputs })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let resolved = self.resolve().await?.ok_or_else(|| {
            StepError::new(
                ErrorKind::Other,
                "no Vault node runs: the pods of the Vault StatefulSet are gone",
            )
        })?;
        let outcome = taskctl_vault::sys::ensure_cluster(&self.http, &resolved.spec)
            .await
            .map_err(|e| resolved.error(e))?;
        for (node, action) in &outcome.actions {
            let what = match action {
                taskctl_vault::sys::NodeAction::Initialized => "initialized and unsealed",
                taskctl_vault::sys::NodeAction::Unsealed => "unsealed",
                taskctl_vault::sys::NodeAction::AutoUnsealed => "unsealed itself (auto-unseal)",
                taskctl_vault::sys::NodeAction::AlreadyUnsealed => continue,
            };
            ctx.progress(&format!("{} {what}", resolved.name(node)));
        }
        if outcome.initialized {
            let file = taskctl_vault::sys::KeysFile::read(&self.spec.keys_file).ok();
            let recovery = file.as_ref().is_some_and(|k| k.recovery());
            match file.as_ref().map(|k| k.encrypted_to.as_slice()) {
                Some(to) if !to.is_empty() => ctx.progress(&format!(
                    "recovery keys are in {}, each encrypted to one PGP key ({}): hand share N to the holder of key N; the root token in it is revoked once taskctl's AppRole is set up",
                    self.spec.keys_file.display(),
                    to.join(", ")
                )),
                _ => ctx.progress(&format!(
                    "{} keys are in {} (mode 0600): keep them offline",
                    if recovery { "recovery" } else { "unseal" },
                    self.spec.keys_file.display()
                )),
            }
        }
        if self.needs_bootstrap() {
            let keys =
                taskctl_vault::sys::KeysFile::read(&self.spec.keys_file).map_err(cluster_error)?;
            taskctl_vault::setup::bootstrap(
                &self.http,
                &resolved.spec.nodes[0],
                &keys.root_token,
                &self.bootstrap,
            )
            .await
            .map_err(|e| resolved.error(e))?;
            ctx.progress(&format!(
                "policy `taskctl` and its AppRole set up ({}); the root token is revoked",
                self.bootstrap.approle_file.display()
            ));
        }
        let mut outputs = plan.outputs.clone();
        outputs.insert(READY.into(), "true".into());
        Ok(outputs)
    }

    /// The cluster holds data: destroy leaves it as it is.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}
