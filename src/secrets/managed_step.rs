//! `secrets/<name>`: one managed secret of the profile, created or rotated.

use super::cluster::READY;
use super::*;

pub(crate) fn age(since: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(since).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(secs - secs % 60)).to_string()
}

/// `secrets/<name>`: one managed secret of the profile.
pub(crate) struct ManagedSecretStep {
    pub(crate) id: StepId,
    /// The cluster step, when taskctl initializes Vault itself.
    pub(crate) deps: Vec<StepId>,
    pub(crate) entry: Entry,
    pub(crate) vault: Arc<LazyVault>,
    pub(crate) secrets: Arc<Secrets>,
    /// `taskctl secrets rotate NAME`.
    pub(crate) force: bool,
    /// The profile pins this path (a rollback): never rotate here.
    pub(crate) pinned: bool,
}

impl ManagedSecretStep {
    fn outputs(&self, version: Option<u64>) -> Outputs {
        let mut o: Outputs = [("path".to_string(), self.entry.path.clone())].into();
        if let Some(v) = version {
            o.insert("version".into(), v.to_string());
        }
        o
    }
}

#[async_trait]
impl Step for ManagedSecretStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "vault-secret"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        if self
            .deps
            .iter()
            .any(|d| ctx.dep_output(d, READY) == Some("false"))
        {
            // Vault is initialized or unsealed by this run: the secret is
            // looked at once it is (the engine plans again before applying).
            self.secrets.mark_pending(&self.entry.path);
            return Ok(StepPlan {
                change: Change::create(format!(
                    "{} once the Vault cluster is ready: created if absent",
                    self.entry.path
                )),
                outputs: self.outputs(None),
            });
        }
        let vault = self.vault.get().await.map_err(vault_error)?;
        let now = SystemTime::now();
        let status = managed::status(vault, &self.entry.managed, now)
            .await
            .map_err(|e| vault_error(e.to_string()))?;
        let change = match status.version {
            None => Change::create(format!(
                "no secret at {}: taskctl generates it",
                self.entry.path
            )),
            Some(v) if self.force && !self.pinned => Change::update(vec![FieldDiff::new(
                "version",
                v,
                format!("{} (rotation requested)", v + 1),
            )]),
            Some(v) if status.due && !self.pinned => Change::update(vec![FieldDiff::new(
                "version",
                format!(
                    "{v} ({} old)",
                    status.created.map(|c| age(c, now)).unwrap_or_default()
                ),
                format!("{} (rotation due)", v + 1),
            )]),
            Some(_) => Change::none(),
        };
        if change.action.is_change() {
            self.secrets.mark_pending(&self.entry.path);
        } else {
            // Marked when Vault could not be asked yet (a sealed node): the
            // version in Vault stays, and what reads it may read it now.
            self.secrets.settle(&self.entry.path).await;
        }
        Ok(StepPlan {
            change,
            outputs: self.outputs(status.version),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let vault = self.vault.get().await.map_err(vault_error)?;
        let status = managed::status(vault, &self.entry.managed, SystemTime::now())
            .await
            .map_err(|e| vault_error(e.to_string()))?;
        // A pinned run only creates what is missing.
        let rotate = !self.pinned && (self.force || status.due);
        let outcome = if status.version.is_none() || rotate {
            managed::ensure(
                vault,
                &self.entry.managed,
                SystemTime::now(),
                self.force && !self.pinned,
            )
            .await
            .map_err(|e| {
                let kind = if matches!(e, taskctl_vault::VaultError::CasConflict { .. }) {
                    ErrorKind::Conflict
                } else {
                    ErrorKind::Other
                };
                StepError::new(kind, e.to_string())
            })?
            .version
        } else {
            status.version.unwrap_or_default()
        };
        ctx.progress(&format!("{} at version {outcome}", self.entry.path));
        self.secrets.settle(&self.entry.path).await;
        Ok(self.outputs(Some(outcome)))
    }

    /// Secrets hold data: destroy keeps them (delete them in Vault by name).
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}
