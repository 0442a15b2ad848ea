use crate::profile::value::{Checked, Duration, SecretRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The deployment procedure: built-in or plugin steps in three phases.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Deployment {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub preparation: Vec<StepRef>,
    #[serde(default)]
    pub deployment: Vec<StepRef>,
    #[serde(default)]
    pub verification: Vec<StepRef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Start new replicas, wait until healthy, then stop old ones.
    #[default]
    Rolling,
    /// Bring up a full new set beside the old, switch, then remove the old.
    /// No target builds it yet: refused at validation.
    BlueGreen,
}

/// A step: a built-in's name, or a plugin with arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a built-in step name, or a map with `plugin` (and optionally `args`, `timeout`)"
)]
pub enum StepRef {
    Builtin(String),
    Plugin(PluginStep),
}

impl StepRef {
    pub fn name(&self) -> &str {
        match self {
            StepRef::Builtin(name) => name,
            StepRef::Plugin(p) => &p.plugin,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginStep {
    /// Name of a plugin declared under `plugins`.
    pub plugin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Rollback: automatic when a condition holds after a deploy, manual on command.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Rollback {
    #[serde(default)]
    pub automatic: AutomaticRollback,
    #[serde(default)]
    pub manual: ManualRollback,
    /// Releases kept for rollback.
    #[serde(default = "ten")]
    pub keep_releases: u32,
}

fn ten() -> u32 {
    10
}

impl Default for Rollback {
    fn default() -> Self {
        Rollback {
            automatic: AutomaticRollback::default(),
            manual: ManualRollback::default(),
            keep_releases: ten(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AutomaticRollback {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub steps: Vec<StepRef>,
    /// How long the conditions are watched after a rollout, e.g. `2m`.
    /// Default: long enough for the longest `for` to trip (that `for` plus
    /// 5 s), at least 10 s. A condition whose `for` does not fit is refused
    /// at validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Checked<Duration>>,
}

/// The watch when no condition asks for longer and none is set.
pub const MIN_WATCH: std::time::Duration = std::time::Duration::from_secs(10);
/// Time beyond a condition's `for` for the polls that see it start and hold.
pub const WATCH_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

impl AutomaticRollback {
    /// The longest `for` among the conditions.
    pub fn longest_for(&self) -> std::time::Duration {
        self.conditions
            .iter()
            .filter_map(|c| match c {
                Condition::Detailed(spec) => spec.for_.as_ref().and_then(|f| f.get()).map(|d| d.0),
                Condition::Named(_) => None,
            })
            .max()
            .unwrap_or_default()
    }

    /// How long the conditions are watched: `watch` when set, else the
    /// longest `for` plus [`WATCH_MARGIN`], at least [`MIN_WATCH`].
    pub fn watch_window(&self) -> std::time::Duration {
        match self.watch.as_ref().and_then(|w| w.get()) {
            Some(w) => w.0,
            None => (self.longest_for() + WATCH_MARGIN).max(MIN_WATCH),
        }
    }
}

impl Default for AutomaticRollback {
    fn default() -> Self {
        AutomaticRollback {
            enabled: true,
            conditions: Vec::new(),
            steps: Vec::new(),
            watch: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// A rollback condition: a built-in's name, or a map with the name and its
/// parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a condition name, or a map with `name` and its parameters (`threshold`, `for`, `query`, `max_restarts`)"
)]
pub enum Condition {
    Named(String),
    Detailed(ConditionSpec),
}

impl Condition {
    pub fn name(&self) -> &str {
        match self {
            Condition::Named(n) => n,
            Condition::Detailed(d) => &d.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub name: String,
    /// PromQL query whose value is compared with `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// How long the condition must hold, e.g. `5m`.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<Checked<Duration>>,
    /// Container restarts (or OOM kills) that count as resource exhaustion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ManualRollback {
    /// What must hold before a manual rollback runs.
    #[serde(default)]
    pub prerequisites: Vec<String>,
    #[serde(default)]
    pub steps: Vec<StepRef>,
}

/// An external program speaking taskctl's plugin protocol
/// (`plugins/README.md`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Plugin {
    /// Found as `plugins/<name>` beside the profile file that declares it,
    /// then as `taskctl-<name>` on `PATH`, unless `path` is set.
    pub name: String,
    /// The executable, relative to the profile file that declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What it may be used as.
    pub provides: Vec<PluginRole>,
    /// The parts of the profile it receives, as dotted paths
    /// (`services.postgresql`, `metadata`); it sees nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<String>,
    /// The secrets it receives, by the names it knows them by:
    /// `NAME: vault:PATH#KEY` (or `env:VAR`). Only the references, unless
    /// `resolve_secrets`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Checked<SecretRef>>,
    /// Hand it the values of `secrets` too, not only their references.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolve_secrets: bool,
    /// Arguments of every call (a step's own `args` are merged over them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    /// Longest a call may take [30s]; a step's `timeout` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Checked<Duration>>,
    /// The directory of the profile file that declares it (set by the
    /// loader; `path` and `plugins/` are looked up from there).
    #[serde(skip)]
    #[schemars(skip)]
    pub declared_in: Option<std::path::PathBuf>,
}

/// How long a plugin call may take when neither the plugin nor the step
/// says.
pub const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Plugin {
    /// The time a call may take: the step's `timeout`, else the plugin's,
    /// else [`PLUGIN_TIMEOUT`].
    pub fn call_timeout(&self, step: Option<&PluginStep>) -> std::time::Duration {
        step.and_then(|s| s.timeout.as_deref())
            .and_then(|t| Duration::parse_str(t).ok())
            .map(|d| d.0)
            .or_else(|| self.timeout.as_ref().and_then(|t| t.get()).map(|d| d.0))
            .unwrap_or(PLUGIN_TIMEOUT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginRole {
    /// Run at validation (`deployment.preparation`), before anything changes.
    Check,
    /// A deployment step with plan and apply (`deployment.deployment`).
    Step,
    /// A verification after the rollout (`deployment.verification`).
    Gate,
    /// What must hold before a manual rollback
    /// (`rollback.manual.prerequisites`).
    Prerequisite,
}

impl PluginRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginRole::Check => "check",
            PluginRole::Step => "step",
            PluginRole::Gate => "gate",
            PluginRole::Prerequisite => "prerequisite",
        }
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    fn conditions(fors: &[&str]) -> AutomaticRollback {
        AutomaticRollback {
            conditions: fors
                .iter()
                .map(|f| {
                    Condition::Detailed(ConditionSpec {
                        name: "high_error_rate".into(),
                        query: None,
                        threshold: None,
                        for_: Some(f.parse().unwrap()),
                        max_restarts: None,
                    })
                })
                .chain([Condition::Named("health_check_failure".into())])
                .collect(),
            ..AutomaticRollback::default()
        }
    }

    #[test]
    fn the_watch_follows_the_longest_for_unless_set() {
        let secs = std::time::Duration::from_secs;
        assert_eq!(AutomaticRollback::default().watch_window(), MIN_WATCH);
        assert_eq!(conditions(&["2s"]).watch_window(), MIN_WATCH);
        assert_eq!(conditions(&["1m", "5m"]).watch_window(), secs(305));
        let mut set = conditions(&["5m"]);
        set.watch = Some("2m".parse().unwrap());
        assert_eq!(set.watch_window(), secs(120));
    }
}
