//! Pruning: objects of the environment the render no longer has.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ObjectKey {
    pub(super) api_version: String,
    pub(super) kind: String,
    pub(super) namespace: Option<String>,
    pub(super) name: String,
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
pub(super) struct PruneStep {
    pub(super) id: StepId,
    pub(super) depends: Vec<StepId>,
    pub(super) environment: String,
    pub(super) rendered: BTreeSet<ObjectKey>,
    pub(super) shared: Arc<Shared>,
}

impl PruneStep {
    async fn candidates(&self, client: &Client) -> Result<Vec<(Known, ObjectKey)>, StepError> {
        let selector = format!("{ENVIRONMENT_LABEL}={},{MANAGED_BY}", self.environment);
        let kinds: Vec<Known> = resources::known()
            .into_iter()
            // Data is never pruned, whatever the flags (see `holds_data`).
            .filter(|k| !k.holds_data() && (self.shared.options.prune_all || !k.is_protected()))
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
