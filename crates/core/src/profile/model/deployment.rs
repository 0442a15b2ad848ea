use crate::profile::value::{Checked, Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
}

impl Default for AutomaticRollback {
    fn default() -> Self {
        AutomaticRollback {
            enabled: true,
            conditions: Vec::new(),
            steps: Vec::new(),
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

/// An external program speaking taskctl's plugin protocol.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Plugin {
    /// Found as `plugins/<name>` or `taskctl-<name>` on PATH unless `path` is set.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What it may be used as.
    pub provides: Vec<PluginRole>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginRole {
    Check,
    Step,
    Gate,
}
