//! The profile's typed model: everything in the two seed documents.
//!
//! Doc comments here become the descriptions of `taskctl schema` and of
//! `profiles/schema.json`. Values with a syntax of their own are
//! [`Checked`](super::value::Checked) and are parsed by validation.

mod agents;
mod compute;
mod deployment;
mod environments;
mod network;
mod secrets;
mod services;
mod storage;
mod target;

pub use agents::*;
pub use compute::*;
pub use deployment::*;
pub use environments::*;
pub use network::*;
pub use secrets::*;
pub use services::*;
pub use storage::*;
pub use target::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `apiVersion` this build of taskctl reads.
pub const API_VERSION: &str = "taskctl.dev/v1";

/// A taskctl profile: one declarative description of an environment of the
/// Task Execution Layer, from network to agents.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Profile {
    /// Version of the profile format: `taskctl.dev/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `Profile`.
    pub kind: ProfileKind,
    pub metadata: Metadata,
    /// Profiles this one extends, relative to this file; they are merged
    /// first, in order, and this file overrides them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    pub target: Target,
    #[serde(default)]
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<Compute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    #[serde(default)]
    pub services: Services,
    /// The task-executor agents and the other workloads of the layer.
    #[serde(default)]
    pub agents: Vec<Agent>,
    /// The user's own services (seed 001's task router, manual task
    /// handler, integration executor): each an image with environment,
    /// ports, replicas, probes and `depends_on`, deployed beside the agents
    /// with the same rolling update, gates and rollback. Secrets reach them
    /// as files (`NAME_FILE`). Target `docker` only, for now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<Agent>,
    /// Per-environment settings (development, staging, production); the one
    /// named by `--env`, or else by `metadata.environment`, applies.
    #[serde(default)]
    pub environments: BTreeMap<String, Environment>,
    #[serde(default)]
    pub secrets: Secrets,
    #[serde(default)]
    pub deployment: Deployment,
    #[serde(default)]
    pub rollback: Rollback,
    /// External programs usable as checks, steps and gates.
    #[serde(default)]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ProfileKind {
    Profile,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// Name of the environment's deployment; used in resource names and tags.
    pub name: String,
    /// The environment applied when `--env` is not given.
    pub environment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Extra labels and tags put on every resource taskctl creates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The namespace and service account of the in-cluster Vault's pods
/// ([`Profile::vault_in_cluster`]): what the render names, and what the
/// `aws` target's IAM role for the Vault pods trusts.
pub const IN_CLUSTER_VAULT_ACCOUNT: (&str, &str) = ("vault", "vault");

/// The alias of the KMS key the `aws` target makes for the in-cluster
/// Vault's auto-unseal (`seal "awskms"`), by the environment's name and
/// environment: what the key is found by and what Vault's configuration
/// names.
pub fn vault_unseal_key_alias(name: &str, environment: &str) -> String {
    format!("alias/taskctl/{name}-{environment}/vault-unseal")
}

/// Which list of the profile a workload comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// `agents`: the task-executor, which taskctl configures (ports, agent
    /// id, bind address) and whose tasks the gates test.
    Agent,
    /// `components`: a user's service, run as its image says.
    Component,
}

impl WorkloadKind {
    /// The role label on what runs it, and its step ids' first segment
    /// in the singular: `agent`, `component`.
    pub fn role(self) -> &'static str {
        match self {
            WorkloadKind::Agent => "agent",
            WorkloadKind::Component => "component",
        }
    }

    /// The profile list, and the first segment of its step ids.
    pub fn list(self) -> &'static str {
        match self {
            WorkloadKind::Agent => "agents",
            WorkloadKind::Component => "components",
        }
    }
}

impl Profile {
    /// `<name>.<environment>`: the value of the environment label on what
    /// taskctl makes (containers, Kubernetes objects), usable in names.
    pub fn environment_label(&self) -> String {
        format!("{}.{}", self.metadata.name, self.metadata.environment)
    }

    /// `<name>/<environment>`: what identifies the environment's state,
    /// journal and releases.
    pub fn environment_key(&self) -> String {
        format!("{}/{}", self.metadata.name, self.metadata.environment)
    }

    /// Whether Vault runs in the cluster as the StatefulSet taskctl
    /// deploys, initializes and unseals itself (`services.vault.cluster`
    /// without `nodes`): its nodes are the pods `vault-0` … on target
    /// `kubernetes` and `aws`; on `aws` it auto-unseals through the KMS key
    /// the infrastructure makes for it.
    pub fn vault_in_cluster(&self) -> bool {
        self.services
            .vault
            .as_ref()
            .filter(|v| v.enabled && v.external.is_none())
            .and_then(|v| v.cluster.as_ref())
            .is_some_and(|c| c.nodes.is_empty())
            && self.target.kind != TargetKind::Docker
    }

    /// Every workload: the agents, then the components.
    pub fn workloads(&self) -> impl Iterator<Item = (WorkloadKind, &Agent)> {
        let agents = self.agents.iter().map(|a| (WorkloadKind::Agent, a));
        agents.chain(self.components.iter().map(|c| (WorkloadKind::Component, c)))
    }

    /// The settings of the environment in force.
    pub fn environment(&self) -> Option<&Environment> {
        self.environments.get(&self.metadata.environment)
    }
}
