//! [`WithPlugins`]: a target's provider with the profile's plugins as
//! checks (preflight), steps (in the step graph), gates (verification) and
//! prerequisites (manual rollback).

use crate::protocol::{Action as Call, PlannedChange};
use crate::{CallContext, PluginError, PluginErrorKind, Plugins};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskctl_core::Severity;
use taskctl_core::engine::{
    Action, After, Change, ErrorKind, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::events::EventSink;
use taskctl_core::ops::{
    Check, Finding, Layer, OpsError, Provider, ReleaseFacts, Scope, SecretsOrder, Workload,
};
use taskctl_core::profile::model::{PluginRole, PluginStep as StepSpec, StepRef};
use taskctl_core::profile::{Profile, builtins};
use taskctl_core::release::{Release, ReleaseStore};
use tokio_util::sync::CancellationToken;

/// A provider with the profile's plugins.
pub struct WithPlugins {
    pub inner: Box<dyn Provider>,
    pub plugins: Arc<Plugins>,
}

/// One use of a plugin in a phase: its name and the step's own settings.
fn uses(profile: &Profile, list: &[StepRef], role: PluginRole) -> Vec<(String, StepSpec)> {
    list.iter()
        .filter_map(|s| match s {
            StepRef::Plugin(p) => Some((p.plugin.clone(), p.clone())),
            StepRef::Builtin(name) => profile
                .plugins
                .iter()
                .find(|p| &p.name == name && p.provides.contains(&role))
                .map(|p| {
                    (
                        p.name.clone(),
                        StepSpec {
                            plugin: p.name.clone(),
                            args: None,
                            timeout: None,
                        },
                    )
                }),
        })
        .collect()
}

/// The layer a built-in deployment step names.
fn builtin_layer(name: &str) -> Option<Layer> {
    match name {
        "deploy_infrastructure" => Some(Layer::Infrastructure),
        "deploy_core_services" | "configure_monitoring" => Some(Layer::Services),
        "deploy_agents" => Some(Layer::Agents),
        _ => None,
    }
}

/// The plugin steps of `profile`'s `deployment.deployment`, each with the
/// layers it comes after (built-ins named before it) and before (those
/// named after it, beyond the last layer it follows).
pub struct Placed {
    pub step: PluginStep,
    pub after: Vec<Layer>,
    pub before: Vec<Layer>,
}

/// The plugin steps of the profile's deployment list, placed.
pub fn plugin_steps(profile: &Profile, plugins: &Arc<Plugins>) -> Vec<Placed> {
    let list = &profile.deployment.deployment;
    let mut placed: Vec<Placed> = Vec::new();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, entry) in list.iter().enumerate() {
        let Some((name, spec)) = uses(profile, std::slice::from_ref(entry), PluginRole::Step)
            .into_iter()
            .next()
        else {
            continue;
        };
        let n = seen.entry(name.clone()).or_default();
        *n += 1;
        let id = match *n {
            1 => format!("plugin/{name}"),
            k => format!("plugin/{name}/{k}"),
        };
        let layers = |range: &[StepRef]| -> Vec<Layer> {
            let mut l: Vec<Layer> = range
                .iter()
                .filter_map(|s| match s {
                    StepRef::Builtin(b) if builtins::DEPLOYMENT_STEPS.contains(&b.as_str()) => {
                        builtin_layer(b)
                    }
                    _ => None,
                })
                .collect();
            l.sort();
            l.dedup();
            l
        };
        let after = layers(&list[..i]);
        let last = after.iter().max().copied();
        let before = layers(&list[i + 1..])
            .into_iter()
            .filter(|l| last.is_none_or(|last| *l > last))
            .collect();
        let previous = placed.last().map(|p| p.step.id.clone());
        placed.push(Placed {
            step: PluginStep {
                id: StepId::new(id),
                name,
                spec,
                profile: profile.clone(),
                plugins: plugins.clone(),
                deps: previous.into_iter().collect(),
            },
            after,
            before,
        });
    }
    placed
}

/// A plugin as an engine step: plan and apply through the plugin.
#[derive(Clone)]
pub struct PluginStep {
    pub id: StepId,
    pub name: String,
    pub spec: StepSpec,
    profile: Profile,
    plugins: Arc<Plugins>,
    deps: Vec<StepId>,
}

fn step_error(e: PluginError) -> StepError {
    let kind = match e.kind {
        PluginErrorKind::Timeout => ErrorKind::Timeout,
        PluginErrorKind::Unavailable | PluginErrorKind::Malformed => ErrorKind::Invalid,
        PluginErrorKind::Unsafe => ErrorKind::Denied,
        PluginErrorKind::Crashed | PluginErrorKind::Failed => ErrorKind::Other,
    };
    StepError::new(kind, e.message)
}

impl PluginStep {
    async fn call(
        &self,
        ctx: &StepContext,
        action: Call,
        change: Option<&PlannedChange>,
    ) -> Result<crate::Answer, StepError> {
        let progress = |m: &str| ctx.progress(m);
        self.plugins
            .call(
                &self.profile,
                &self.name,
                action,
                Some(&self.spec),
                CallContext {
                    step: Some(self.id.as_str()),
                    run_id: Some(&ctx.run_id),
                    change,
                    cancel: ctx.cancelled(),
                    progress: &progress,
                },
            )
            .await
            .map_err(step_error)
    }

    /// Outputs as the journal may keep them: redacted.
    fn outputs(&self, answer: &crate::Answer) -> Outputs {
        let redactor = self.plugins.secrets.redactor();
        answer
            .reply
            .outputs
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, redactor.redact(&v).into_owned()))
            .collect()
    }
}

#[async_trait]
impl Step for PluginStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "plugin"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }
    fn timeout(&self) -> Duration {
        self.plugins
            .declaration(&self.profile, &self.name)
            .map(|p| p.call_timeout(Some(&self.spec)))
            .unwrap_or(taskctl_core::profile::model::PLUGIN_TIMEOUT)
            + Duration::from_secs(5)
    }
    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let answer = self.call(ctx, Call::Plan, None).await?;
        let planned = answer.reply.change.clone().unwrap_or(PlannedChange {
            action: "no_op".into(),
            reason: None,
        });
        let action = match planned.action.as_str() {
            "create" => Action::Create,
            "update" => Action::Update,
            "delete" => Action::Delete,
            _ => Action::NoOp,
        };
        let redactor = self.plugins.secrets.redactor();
        let reason = planned
            .reason
            .map(|r| redactor.redact(&r).into_owned())
            .unwrap_or_else(|| match action {
                Action::NoOp => "up to date".into(),
                _ => format!("plugin `{}` says {}", self.name, planned.action),
            });
        Ok(StepPlan {
            change: Change {
                action,
                diffs: Vec::new(),
                reason,
            },
            outputs: self.outputs(&answer),
        })
    }
    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let change = PlannedChange {
            action: match plan.change.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Delete => "delete",
                Action::NoOp => "no_op",
            }
            .into(),
            reason: Some(plan.change.reason.clone()),
        };
        let answer = self.call(ctx, Call::Apply, Some(&change)).await?;
        Ok(self.outputs(&answer))
    }
    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        self.call(ctx, Call::Destroy, None).await.map(|_| ())
    }
}

/// Every declared plugin that cannot be found or is unsafe to run, then
/// the findings of each `check` plugin of `deployment.preparation` (a
/// check that fails to run is an error finding with its output).
pub async fn checks(plugins: &Plugins, profile: &Profile) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (name, why) in plugins.unavailable() {
        findings.push(Finding {
            severity: Severity::Error,
            check: format!("plugin/{name}"),
            message: why.message,
        });
    }
    let cancel = CancellationToken::new();
    for (name, spec) in uses(profile, &profile.deployment.preparation, PluginRole::Check) {
        if plugins.unavailable().iter().any(|(n, _)| *n == name) {
            continue;
        }
        let check = format!("plugin/{name}");
        match plugins
            .call(
                profile,
                &name,
                Call::Check,
                Some(&spec),
                CallContext::outside(&cancel),
            )
            .await
        {
            Ok(answer) => {
                let said = answer.reply.findings.unwrap_or_default();
                if said.is_empty() {
                    findings.push(Finding {
                        severity: Severity::Note,
                        check: check.clone(),
                        message: "passed".into(),
                    });
                }
                for f in said {
                    let severity = match f.severity.as_str() {
                        "error" => Severity::Error,
                        "warning" => Severity::Warning,
                        _ => Severity::Note,
                    };
                    findings.push(Finding {
                        severity,
                        check: check.clone(),
                        message: plugins.secrets.redactor().redact(&f.message).into_owned(),
                    });
                }
            }
            Err(e) => findings.push(Finding {
                severity: Severity::Error,
                check,
                message: e.message,
            }),
        }
    }
    findings
}

impl WithPlugins {
    /// Which of the inner steps belong to which layer: each id to the
    /// first layer whose scope lists it.
    fn layer_of(
        &self,
        profile: &Profile,
        scope: &Scope,
    ) -> Result<std::collections::BTreeMap<StepId, Layer>, OpsError> {
        let mut map = std::collections::BTreeMap::new();
        for layer in self.inner.layers() {
            if !scope.includes(layer) {
                continue;
            }
            for step in self.inner.steps(profile, &Scope(vec![layer]))? {
                map.entry(step.id().clone()).or_insert(layer);
            }
        }
        Ok(map)
    }

    async fn gate(
        &self,
        profile: &Profile,
        name: &str,
        spec: &StepSpec,
        cancel: &CancellationToken,
    ) -> Check {
        let started = Instant::now();
        let result = self
            .plugins
            .call(
                profile,
                name,
                Call::Gate,
                Some(spec),
                CallContext::outside(cancel),
            )
            .await;
        let (passed, observed) = match result {
            Ok(a) => (
                a.reply.passed.unwrap_or(false),
                a.reply.observed.unwrap_or_default(),
            ),
            Err(e) => (false, e.message),
        };
        Check {
            name: format!("plugin/{name}"),
            kind: "plugin".into(),
            passed,
            evaluated: true,
            observed,
            elapsed: started.elapsed(),
        }
    }
}

#[async_trait]
impl Provider for WithPlugins {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn layers(&self) -> Vec<Layer> {
        self.inner.layers()
    }

    /// The target's preflight, then each `check` plugin of
    /// `deployment.preparation`, and any declared plugin that cannot be
    /// found or is unsafe to run.
    async fn preflight(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Finding>, OpsError> {
        let mut findings = self.inner.preflight(profile, scope).await?;
        findings.extend(checks(&self.plugins, profile).await);
        Ok(findings)
    }

    /// The target's steps with the plugin steps of `deployment.deployment`
    /// placed where the list puts them: after every step of the layers
    /// named before them, before every step of the later layers named after
    /// them. Only when the operation covers every layer (`--only` runs the
    /// target's steps alone).
    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        let inner = self.inner.steps(profile, scope)?;
        let placed = plugin_steps(profile, &self.plugins);
        let whole = self.inner.layers().iter().all(|l| scope.includes(*l));
        if placed.is_empty() || !whole {
            return Ok(inner);
        }
        let layer_of = self.layer_of(profile, scope)?;
        let mut steps: Vec<Arc<dyn Step>> = Vec::new();
        for step in inner {
            let layer = layer_of.get(step.id()).copied();
            let extra: Vec<StepId> = placed
                .iter()
                .filter(|p| layer.is_some_and(|l| p.before.contains(&l)))
                .map(|p| p.step.id.clone())
                .collect();
            steps.push(match extra.is_empty() {
                true => step,
                false => Arc::new(After { inner: step, extra }),
            });
        }
        for p in placed {
            let mut step = p.step;
            step.deps.extend(
                layer_of
                    .iter()
                    .filter(|(_, l)| p.after.contains(l))
                    .map(|(id, _)| id.clone()),
            );
            steps.push(Arc::new(step));
        }
        Ok(steps)
    }

    fn secrets_order(&self, step: &StepId) -> SecretsOrder {
        self.inner.secrets_order(step)
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
        self.inner.releases(profile)
    }

    async fn observe_release(&self, profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        self.inner.observe_release(profile).await
    }

    /// The target's verification, then each `gate` plugin of
    /// `deployment.verification`: a gate that fails, crashes or times out
    /// is a failed check with what it printed.
    async fn verify(
        &self,
        profile: &Profile,
        sink: Arc<dyn EventSink>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        let mut checks = self.inner.verify(profile, sink, cancel).await?;
        for (name, spec) in uses(profile, &profile.deployment.verification, PluginRole::Gate) {
            checks.push(self.gate(profile, &name, &spec, cancel).await);
        }
        Ok(checks)
    }

    async fn verify_backups(
        &self,
        profile: &Profile,
        target: &Release,
    ) -> Result<Option<String>, OpsError> {
        self.inner.verify_backups(profile, target).await
    }

    /// A `prerequisite` plugin: it must answer `passed: true`.
    async fn prerequisite(
        &self,
        profile: &Profile,
        name: &str,
        target: &Release,
    ) -> Result<String, OpsError> {
        if self.plugins.declaration(profile, name).is_none() {
            return self.inner.prerequisite(profile, name, target).await;
        }
        let cancel = CancellationToken::new();
        let spec = StepSpec {
            plugin: name.to_owned(),
            args: None,
            timeout: None,
        };
        let answer = self
            .plugins
            .call(
                profile,
                name,
                Call::Prerequisite,
                Some(&spec),
                CallContext::outside(&cancel),
            )
            .await
            .map_err(|e| {
                OpsError::Prerequisite(format!(
                    "rollback prerequisite `{name}` could not be checked: {}; nothing was changed",
                    e.message
                ))
            })?;
        let observed = answer.reply.observed.unwrap_or_default();
        match answer.reply.passed {
            Some(true) => Ok(observed),
            _ => Err(OpsError::Prerequisite(format!(
                "rollback prerequisite `{name}` does not hold: {observed}; nothing was changed"
            ))),
        }
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
