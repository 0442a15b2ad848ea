//! Plugins: external programs that take part in a deployment as checks,
//! steps, gates and rollback prerequisites, over a versioned JSON protocol
//! (`plugins/README.md`).
//!
//! - [`discover`]: where a plugin's executable is, and whether it is safe.
//! - [`protocol`]: the messages.
//! - [`run`]: one call, with its timeout, its output checked and redacted.
//! - [`WithPlugins`]: any target's provider with the profile's plugins in
//!   its step graph, preflight, verification and rollback prerequisites.
//!
//! A plugin receives only what it declares: the profile parts named in its
//! `profile`, the secret references named in its `secrets` (their values
//! only with `resolve_secrets`), and a state directory of its own.

pub mod discover;
mod error;
pub mod protocol;
mod provider;
pub mod run;

pub use discover::{Found, Search};
pub use error::{PluginError, PluginErrorKind};
pub use provider::{PluginStep, WithPlugins, checks, plugin_steps};
pub use run::Answer;

use protocol::{Action, Environment, PROTOCOL, Request, SecretField};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use taskctl_core::profile::Profile;
use taskctl_core::profile::model::{Plugin, PluginStep as StepSpec};
use taskctl_core::secrets::Secrets;
use tokio_util::sync::CancellationToken;

/// The profile's plugins, located once, with what their calls need.
pub struct Plugins {
    profile: Profile,
    found: BTreeMap<String, Result<Found, PluginError>>,
    secrets: Arc<Secrets>,
    state_root: PathBuf,
}

impl Plugins {
    /// Locates every plugin `profile` declares (a missing or unsafe one is
    /// an error when it is called, and in `preflight`).
    pub fn new(profile: &Profile, search: &Search, secrets: Arc<Secrets>) -> Self {
        let found = profile
            .plugins
            .iter()
            .map(|p| (p.name.clone(), discover::locate(p, search)))
            .collect();
        Plugins {
            profile: profile.clone(),
            found,
            secrets,
            state_root: PathBuf::from(&profile.state.path)
                .join(taskctl_core::ops::environment_key(profile))
                .join("plugins"),
        }
    }

    /// The declaration of `name` in the profile these plugins came from,
    /// or in `profile` (a release's).
    fn declaration<'a>(&'a self, profile: &'a Profile, name: &str) -> Option<&'a Plugin> {
        profile
            .plugins
            .iter()
            .find(|p| p.name == name)
            .or_else(|| self.profile.plugins.iter().find(|p| p.name == name))
    }

    /// Problems finding the declared plugins, by name.
    pub fn unavailable(&self) -> Vec<(String, PluginError)> {
        self.found
            .iter()
            .filter_map(|(n, f)| f.as_ref().err().map(|e| (n.clone(), e.clone())))
            .collect()
    }

    /// Calls plugin `name` (as declared in `profile`) with `action`.
    pub async fn call(
        &self,
        profile: &Profile,
        name: &str,
        action: Action,
        step: Option<&StepSpec>,
        context: CallContext<'_>,
    ) -> Result<Answer, PluginError> {
        let plugin = self.declaration(profile, name).ok_or_else(|| {
            PluginError::new(
                PluginErrorKind::Unavailable,
                format!("plugin `{name}` is not declared"),
            )
        })?;
        let found = match self.found.get(name) {
            Some(Ok(f)) => f.clone(),
            Some(Err(e)) => return Err(e.clone()),
            None => discover::locate(plugin, &Search::from_env(Vec::new()))?,
        };
        let request = self
            .request(profile, plugin, action, step, &context)
            .await?;
        run::call(
            &found,
            &request,
            plugin.call_timeout(step),
            self.secrets.redactor(),
            context.cancel,
            context.progress,
        )
        .await
    }

    async fn request(
        &self,
        profile: &Profile,
        plugin: &Plugin,
        action: Action,
        step: Option<&StepSpec>,
        context: &CallContext<'_>,
    ) -> Result<Request, PluginError> {
        let unavailable = |message: String| PluginError::new(PluginErrorKind::Unavailable, message);
        let whole = serde_json::to_value(profile).map_err(|e| {
            unavailable(format!(
                "the profile cannot be encoded for plugin `{}`: {e}",
                plugin.name
            ))
        })?;
        let mut parts = serde_json::Map::new();
        for part in &plugin.profile {
            let value = part
                .split('.')
                .try_fold(&whole, |v, key| v.get(key))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            parts.insert(part.clone(), value);
        }
        let mut secrets = BTreeMap::new();
        for (alias, reference) in &plugin.secrets {
            let value = match (plugin.resolve_secrets, reference.get()) {
                (true, Some(r)) => Some(
                    self.secrets
                        .resolve(r)
                        .await
                        .map_err(|e| {
                            unavailable(format!("plugin `{}` secret `{alias}`: {e}", plugin.name))
                        })?
                        .value
                        .expose()
                        .to_owned(),
                ),
                _ => None,
            };
            secrets.insert(
                alias.clone(),
                SecretField {
                    reference: reference.raw().to_owned(),
                    value,
                },
            );
        }
        let state_dir = self.state_root.join(&plugin.name);
        create_private_dir(&state_dir).map_err(|e| {
            unavailable(format!(
                "plugin `{}`: its state directory {} cannot be made: {e}",
                plugin.name,
                state_dir.display()
            ))
        })?;
        let state_dir = std::fs::canonicalize(&state_dir).unwrap_or(state_dir);
        Ok(Request {
            protocol: PROTOCOL,
            action,
            plugin: plugin.name.clone(),
            environment: Environment {
                name: profile.metadata.name.clone(),
                environment: profile.metadata.environment.clone(),
                target: profile.target.kind.as_str().to_owned(),
            },
            args: merged_args(plugin.args.as_ref(), step.and_then(|s| s.args.as_ref())),
            profile: parts,
            secrets,
            state_dir: state_dir.display().to_string(),
            step: context.step.map(str::to_owned),
            run_id: context.run_id.map(str::to_owned),
            change: context.change.cloned(),
        })
    }
}

/// What a call is part of.
#[derive(Clone, Copy)]
pub struct CallContext<'a> {
    pub step: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub change: Option<&'a protocol::PlannedChange>,
    pub cancel: &'a CancellationToken,
    pub progress: &'a (dyn Fn(&str) + Send + Sync),
}

impl<'a> CallContext<'a> {
    /// A call outside a step, whose progress goes to the log.
    pub fn outside(cancel: &'a CancellationToken) -> Self {
        CallContext {
            step: None,
            run_id: None,
            change: None,
            cancel,
            progress: &log_progress,
        }
    }
}

fn log_progress(message: &str) {
    tracing::info!(target: "taskctl::plugin", "{message}");
}

/// The plugin's `args` with the step's merged over them, key by key.
fn merged_args(
    plugin: Option<&serde_json::Value>,
    step: Option<&serde_json::Value>,
) -> serde_json::Value {
    match (plugin, step) {
        (Some(serde_json::Value::Object(base)), Some(serde_json::Value::Object(over))) => {
            let mut merged = base.clone();
            for (k, v) in over {
                merged.insert(k.clone(), v.clone());
            }
            serde_json::Value::Object(merged)
        }
        (_, Some(over)) => over.clone(),
        (Some(base), None) => base.clone(),
        (None, None) => serde_json::Value::Object(Default::default()),
    }
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// What `describe` says of a plugin executable.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    pub name: String,
    pub version: Option<String>,
    pub capabilities: Vec<String>,
    pub path: String,
    pub source: String,
    /// Why it cannot be used, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Asks `found` to describe itself (`taskctl plugins list`).
pub async fn describe(found: &Found, timeout: std::time::Duration) -> Description {
    let cancel = CancellationToken::new();
    let request = Request {
        protocol: PROTOCOL,
        action: Action::Describe,
        plugin: found.name.clone(),
        environment: Environment::default(),
        args: serde_json::Value::Object(Default::default()),
        profile: Default::default(),
        secrets: Default::default(),
        state_dir: String::new(),
        step: None,
        run_id: None,
        change: None,
    };
    let redactor = taskctl_secret::Redactor::new();
    let mut d = Description {
        name: found.name.clone(),
        version: None,
        capabilities: Vec::new(),
        path: found.path.display().to_string(),
        source: found.source.to_owned(),
        problem: None,
    };
    match run::call(found, &request, timeout, &redactor, &cancel, &|_| {}).await {
        Ok(answer) => {
            d.version = answer.reply.version;
            d.capabilities = answer.reply.capabilities.unwrap_or_default();
        }
        Err(e) => d.problem = Some(e.message),
    }
    d
}
