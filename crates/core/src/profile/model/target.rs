use crate::profile::value::{Checked, Quantity, SecretRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the stack is deployed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Target {
    pub kind: TargetKind,
    /// Settings of the `aws` target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsTarget>,
    /// Settings of the `kubernetes` target (and of the in-cluster layers of `aws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesTarget>,
    /// Settings of the `docker` target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerTarget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// VPC, EKS cluster and node groups, then everything in the cluster.
    Aws,
    /// An existing cluster from kubeconfig; no infrastructure.
    Kubernetes,
    /// The containerized deployment on a local Docker engine.
    Docker,
}

impl TargetKind {
    /// The name a profile writes: `aws`, `kubernetes`, `docker`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Aws => "aws",
            TargetKind::Kubernetes => "kubernetes",
            TargetKind::Docker => "docker",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AwsTarget {
    /// AWS region, e.g. `us-west-2`; subnets' zones must be in it.
    pub region: String,
    /// Where taskctl reaches the cluster's API server instead of the
    /// endpoint EKS reports: a tunnel or proxy to a private endpoint, e.g.
    /// `https://127.0.0.1:8443`. An `https` address is verified with the
    /// cluster's CA and the EKS endpoint's host name; `http` is accepted on
    /// loopback only (a local test API server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    /// What ECR's scan of a pushed agent image may find (agents with
    /// `build: {}`): a finding at or above `fail_on` fails the deploy before
    /// the cluster runs the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_scan: Option<ImageScan>,
}

/// The image scan's gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ImageScan {
    /// The lowest severity that fails the deploy.
    pub fail_on: ScanSeverity,
}

/// ECR's finding severities, lowest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ScanSeverity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl ScanSeverity {
    /// ECR's name of it: `HIGH`.
    pub fn ecr_name(self) -> &'static str {
        match self {
            ScanSeverity::Informational => "INFORMATIONAL",
            ScanSeverity::Low => "LOW",
            ScanSeverity::Medium => "MEDIUM",
            ScanSeverity::High => "HIGH",
            ScanSeverity::Critical => "CRITICAL",
        }
    }

    /// Every severity at or above this one, by ECR's names.
    pub fn and_above(self) -> Vec<&'static str> {
        [
            ScanSeverity::Informational,
            ScanSeverity::Low,
            ScanSeverity::Medium,
            ScanSeverity::High,
            ScanSeverity::Critical,
        ]
        .into_iter()
        .filter(|s| *s >= self)
        .map(ScanSeverity::ecr_name)
        .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KubernetesTarget {
    /// kubeconfig context; the current context when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// A registry login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: Checked<SecretRef>,
    pub password: Checked<SecretRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DockerTarget {
    /// Docker engine address; `DOCKER_HOST` or the local socket when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Name of the bridge network the stack's containers share.
    #[serde(default = "default_docker_network")]
    pub network: String,
    /// Registry images missing on the engine are pulled from, e.g.
    /// `registry.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Registry the agent image is pushed to, e.g. `127.0.0.1:5000`
    /// (`deploy --push REGISTRY` for one run): replicas then run from the
    /// digest the registry stored, as a cluster would, and a redeploy is a
    /// no-op while the registry still serves that digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<String>,
    /// The login for `registry` and `push`, when the registry asks for one:
    /// both secret references (`vault:PATH#username`, `env:NAME`), resolved
    /// at deploy time and handed to the engine per request, never stored in
    /// Docker's config or shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// Directory a Prometheus `file_sd_configs` glob reads (`DIR/*.json`):
    /// taskctl writes one target file per agent replica there, so Prometheus
    /// scrapes every agent wherever the rollout put its metrics port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_file_sd: Option<String>,
    /// The image of a managed service (`rabbitmq`, `postgres`, `mongodb`,
    /// `prometheus`, `alertmanager`, `vault`), instead of its default
    /// official image: e.g. the ones `scripts/images.sh` builds offline
    /// from Debian packages (`taskctl/rabbitmq:bookworm`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// Ports of managed services published on 127.0.0.1 (and nowhere
    /// else), by name: `rabbitmq` (AMQP), `rabbitmq_management`,
    /// `postgres`, `mongodb`, `prometheus`, `alertmanager`, `vault`. The
    /// ones taskctl must reach itself (`vault`, `rabbitmq`,
    /// `rabbitmq_management`, `prometheus`, `alertmanager`) are published
    /// on their usual port unless named here; the databases only when
    /// named. `0` publishes nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub publish: BTreeMap<String, u16>,
    /// Limits of a managed service's container, by the names of `images`;
    /// each has defaults (see the docker target's documentation).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, ContainerLimits>,
}

/// CPU, memory and process limits of one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ContainerLimits {
    /// CPU cores, e.g. `1` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Checked<Quantity>>,
    /// Memory, e.g. `512Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Checked<Quantity>>,
    /// Most processes (threads included) the container may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl Default for DockerTarget {
    /// What an empty `target.docker: {}` means: every field's serde default.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({}))
            .expect("every field of DockerTarget has a default")
    }
}

fn default_docker_network() -> String {
    "taskctl".into()
}

/// Where taskctl keeps its journal, lock and infrastructure state.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub backend: StateBackend,
    /// Directory of the `local` backend, relative to the working directory.
    #[serde(default = "default_state_path")]
    pub path: String,
    /// Settings of the `s3` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3State>,
}

impl Default for State {
    fn default() -> Self {
        State {
            backend: StateBackend::Local,
            path: default_state_path(),
            s3: None,
        }
    }
}

fn default_state_path() -> String {
    ".taskctl".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    /// A directory on this machine; works with nothing else installed.
    #[default]
    Local,
    /// An S3 bucket shared by a team; the lock is a conditional write.
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct S3State {
    /// An existing bucket; taskctl never creates it.
    pub bucket: String,
    /// Key prefix; each environment's state is under
    /// `<prefix>/<name>/<environment>/`.
    #[serde(default)]
    pub prefix: String,
    /// The bucket's region [`target.aws.region`, else `AWS_REGION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}
