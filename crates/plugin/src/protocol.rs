//! The wire protocol, version [`PROTOCOL`]: one JSON request on the
//! plugin's stdin, JSON lines on its stdout (progress messages, then one
//! result). `plugins/protocol.schema.json` is the same contract as a JSON
//! Schema; `plugins/README.md` explains it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protocol version taskctl speaks; a plugin answers with the same.
pub const PROTOCOL: u32 = 1;

/// What taskctl asks of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Name, version and capabilities (`taskctl plugins list`).
    Describe,
    /// A check at validation: findings, nothing changed.
    Check,
    /// A step's plan: what `apply` would change, nothing changed.
    Plan,
    /// A step's apply: make it so, idempotently; outputs.
    Apply,
    /// A step's destroy: undo what apply made, idempotently.
    Destroy,
    /// A verification gate: passed or not, and the value seen.
    Gate,
    /// A manual rollback's prerequisite: holds or not, and why.
    Prerequisite,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Describe => "describe",
            Action::Check => "check",
            Action::Plan => "plan",
            Action::Apply => "apply",
            Action::Destroy => "destroy",
            Action::Gate => "gate",
            Action::Prerequisite => "prerequisite",
        }
    }
}

/// The environment a call is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Environment {
    /// `metadata.name`.
    pub name: String,
    /// The environment in force (`development`, `production`).
    pub environment: String,
    /// The target kind (`docker`, `kubernetes`, `aws`).
    pub target: String,
}

/// A secret the plugin declared: its reference always, its value only when
/// the plugin declared `resolve_secrets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretField {
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The request, written to the plugin's stdin as one JSON document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub protocol: u32,
    pub action: Action,
    /// The plugin's name in the profile.
    pub plugin: String,
    pub environment: Environment,
    /// The plugin's `args` with the step's `args` merged over them.
    pub args: serde_json::Value,
    /// The profile parts the plugin declared, at their dotted paths.
    pub profile: serde_json::Map<String, serde_json::Value>,
    pub secrets: BTreeMap<String, SecretField>,
    /// A directory the plugin may keep its own state in (created for it).
    pub state_dir: String,
    /// The step (`plugin/<name>`), for step actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The engine run this call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// For `apply`: the change the plan reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<PlannedChange>,
}

/// A finding of a `check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `error`, `warning` or `note`.
    pub severity: String,
    pub message: String,
}

/// What a step's plan says it would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedChange {
    /// `create`, `update`, `delete` or `no_op`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One line of the plugin's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// What it is doing; shown as the step's progress.
    Progress { protocol: u32, message: String },
    /// The answer; the last line.
    Result(Box<Reply>),
}

/// The result message. Which fields an action needs is checked by
/// [`Reply::problem`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub protocol: u32,
    /// False: the call failed, and `error` says why.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `describe`: `check`, `step`, `gate`, `prerequisite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// `check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<Finding>>,
    /// `plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<PlannedChange>,
    /// `plan`, `apply`: what later steps and the journal see (no secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, String>>,
    /// `gate`, `prerequisite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// `gate`, `prerequisite`: the value seen, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
}

impl Reply {
    /// What is wrong with a successful reply to `action` (a field it
    /// lacks, a change it cannot mean); `None` when nothing is.
    pub fn problem(&self, action: Action) -> Option<String> {
        if !self.ok {
            return None;
        }
        if let Some(change) = self.change.as_ref().filter(|_| action == Action::Plan)
            && !["create", "update", "delete", "no_op"].contains(&change.action.as_str())
        {
            return Some(format!(
                "`change.action` is `{}`; expected one of create, update, delete, no_op",
                change.action
            ));
        }
        let missing = match action {
            Action::Describe if self.version.is_none() => Some("version"),
            Action::Describe if self.capabilities.is_none() => Some("capabilities"),
            Action::Plan if self.change.is_none() => Some("change"),
            Action::Gate | Action::Prerequisite if self.passed.is_none() => Some("passed"),
            _ => None,
        };
        missing.map(|field| format!("a successful `{}` result needs `{field}`", action.as_str()))
    }
}
