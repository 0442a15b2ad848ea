//! One apply level: its objects planned, applied by server-side apply, waited for.

use super::*;
use taskctl_core::ops::STARTS_OUTPUT as STARTS;

/// What one object of a level needs.
#[derive(Debug, Clone)]
pub(super) struct ObjectPlan {
    pub(super) action: Action,
    pub(super) diffs: Vec<FieldDiff>,
}

/// What a level's apply waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Every workload ready, as `kubectl rollout status` says.
    Ready,
    /// Every pod of the level's StatefulSets exists with its containers
    /// running, ready or not: a Vault server is ready only once taskctl has
    /// unsealed it, which the next step does. The step's outputs say
    /// `starts` (the server is started by this run, so it cannot be asked
    /// at plan time).
    Running,
}

pub(super) struct LevelStep {
    pub(super) id: StepId,
    pub(super) wait: Wait,
    pub(super) depends: Vec<StepId>,
    pub(super) environment: String,
    pub(super) manifests: Vec<Manifest>,
    pub(super) shared: Arc<Shared>,
    /// The last plan and the manifests it was made for, so `apply` patches
    /// what `plan` found different without reading every object again (the
    /// engine plans right before it applies).
    pub(super) planned: Mutex<Option<(Vec<Manifest>, Vec<ObjectPlan>)>>,
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
                    if let Some(live) = &live
                        && let Some(problem) = foreign(&m, live)
                    {
                        return Err(StepError::new(
                            ErrorKind::AlreadyExists,
                            format!("{problem}; refusing to take it over (remove or rename it, or deploy this environment elsewhere)"),
                        ));
                    }
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

    /// Polls the level's workloads until all are ready (or, with
    /// [`Wait::Running`], running); fails at the first that cannot become
    /// ready by waiting.
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
                let readiness = match self.wait {
                    Wait::Ready => readiness_of(client, m).await?,
                    Wait::Running => running_of(client, m).await?,
                };
                match readiness {
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
                "{} of {} {}; {}",
                waited.len() - still.len(),
                waited.len(),
                match self.wait {
                    Wait::Ready => "ready",
                    Wait::Running => "running",
                },
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

/// Whether every pod of a StatefulSet exists with all its containers
/// running (ready or not); a pod that will not start fails it. Other kinds
/// are waited for as [`readiness_of`] does.
pub(super) async fn running_of(client: &Client, m: &Manifest) -> Result<Readiness, StepError> {
    if m.kind != "StatefulSet" {
        return readiness_of(client, m).await;
    }
    let Some(live) = cluster::get(client, m).await? else {
        return Ok(Readiness::NotReady("not found yet".into()));
    };
    let replicas = live
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let pods = cluster::current_pods(client, m, &live).await?;
    if let Some(failure) = pods.iter().find_map(readiness::pod_failure) {
        return Ok(Readiness::Failed(failure.to_string()));
    }
    let running = pods
        .iter()
        .filter(|p| {
            let statuses = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref());
            statuses.is_some_and(|cs| {
                !cs.is_empty()
                    && cs
                        .iter()
                        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            })
        })
        .count() as i64;
    Ok(if running >= replicas {
        Readiness::Ready
    } else {
        Readiness::NotReady(format!("{running} of {replicas} pods running"))
    })
}

/// Readiness of one workload; for a workload not ready yet, the first of its
/// pods that will not start turns it into a failure.
pub(super) async fn readiness_of(client: &Client, m: &Manifest) -> Result<Readiness, StepError> {
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
        let mut outputs = Outputs::from([("objects".into(), self.manifests.len().to_string())]);
        if self.wait == Wait::Running {
            outputs.insert(STARTS.into(), change.action.is_change().to_string());
        }
        Ok(StepPlan { change, outputs })
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
        let mut outputs = Outputs::from([
            ("objects".into(), self.manifests.len().to_string()),
            ("applied".into(), changed.len().to_string()),
        ]);
        if self.wait == Wait::Running {
            outputs.insert(STARTS.into(), "false".into());
        }
        Ok(outputs)
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
            let options = &self.shared.options;
            let kept = if known.holds_data() {
                !options.delete_data
            } else {
                known.is_protected() && !options.prune_all
            };
            if kept {
                continue;
            }
            // Only what this environment owns: an object of the same name
            // made by someone else is named and left.
            let live = cluster::get(&client, m).await?;
            if let Some(problem) = live.as_ref().and_then(|live| foreign(m, live)) {
                return Err(StepError::new(
                    ErrorKind::AlreadyExists,
                    format!("{problem}; destroy leaves it"),
                ));
            }
            if live.is_some() {
                if known.holds_data() {
                    tracing::warn!(object = %m.id(), "deleting data (destroy --delete-data)");
                }
                cluster::delete(&client, &known, m.namespace.as_deref(), &m.name).await?;
            }
            // The claims a StatefulSet made from its templates are no
            // rendered object, and outlive it: with --delete-data they go,
            // also when the StatefulSet itself is already gone.
            if options.delete_data && m.kind == "StatefulSet" {
                crate::provider::claims::delete_of_statefulset(&client, m, &self.environment)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Why the live object of `m`'s name is not this environment's: it carries
/// another environment's label, or none (made by someone else). `None`
/// when it is ours.
pub(super) fn foreign(m: &Manifest, live: &Value) -> Option<String> {
    let label = |v: &Value| {
        v.pointer("/metadata/labels")
            .and_then(|l| l.get(ENVIRONMENT_LABEL))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let ours = label(&m.value)?;
    match label(live) {
        Some(theirs) if theirs == ours => None,
        Some(theirs) => Some(format!(
            "{} exists and belongs to environment `{theirs}`, not `{ours}`",
            m.id()
        )),
        None => Some(format!(
            "{} exists and was not made by taskctl (no `{ENVIRONMENT_LABEL}` label)",
            m.id()
        )),
    }
}
